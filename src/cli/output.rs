//! Where the terminal program's lines go, and how they look.
//!
//! Every line passes through one [`Output`]: above the prompt while the screen runs, plain
//! stdout otherwise (a script, a pipe, and after the screen stopped). It also owns what depends
//! on the order of lines: the `--- 2026-12-03 ---` line when the day changes, and the prompt.
//! Colours are added here, around text that [`super::text::clean`] already made inert; nothing
//! others send can colour or move anything.

use std::io::Write;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use chrono::{DateTime, Local, NaiveDate, Utc};

use super::screen::{Screen, ToScreen};

/// Colours for nicks, picked by a hash of the name so each keeps its colour everywhere.
const NICK_COLOURS: [&str; 10] = ["31", "32", "33", "34", "35", "36", "91", "92", "94", "95"];

/// How lines are decorated: colours and the bell only on a terminal, and not under `NO_COLOR`.
#[derive(Clone)]
pub struct Style {
    colour: bool,
    bell: bool,
}

impl Style {
    /// For a terminal (colour unless `NO_COLOR` is set to something), or for anything else.
    pub fn new(terminal: bool) -> Self {
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            colour: terminal && !no_colour,
            bell: terminal,
        }
    }

    /// Whether escapes are written at all.
    pub fn colour(&self) -> bool {
        self.colour
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// A nick in its own colour.
    pub fn nick(&self, name: &str) -> String {
        let hash = name.to_lowercase().bytes().fold(2166136261u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(16777619)
        });
        self.paint(NICK_COLOURS[hash as usize % NICK_COLOURS.len()], name)
    }

    /// One's own lines, dimmed: the eye goes to the others.
    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    /// Private messages and mentions: bold yellow, and the terminal bell.
    pub fn alert(&self, text: &str) -> String {
        let mut s = self.highlight(text);
        if self.bell {
            s.push('\x07');
        }
        s
    }

    /// Bold yellow without the bell: a mention in history is worth seeing, not hearing (a join
    /// that shows twenty old mentions must not ring twenty times).
    pub fn highlight(&self, text: &str) -> String {
        self.paint("1;33", text)
    }

    /// Notices (`* …`): grey.
    pub fn notice(&self, text: &str) -> String {
        self.paint("90", text)
    }

    /// Errors (`! …`): red.
    pub fn error(&self, text: &str) -> String {
        self.paint("31", text)
    }
}

struct State {
    screen: Option<Screen>,
    /// The day of the last stamped line, so a line from another day is preceded by its date.
    day: NaiveDate,
    prompt: String,
}

/// Where output goes; cheap to clone, one order for all clones.
#[derive(Clone)]
pub struct Output {
    state: Arc<Mutex<State>>,
    style: Style,
}

impl Output {
    fn new(screen: Option<Screen>, style: Style) -> Self {
        Output {
            state: Arc::new(Mutex::new(State {
                screen,
                day: Local::now().date_naive(),
                prompt: "> ".into(),
            })),
            style,
        }
    }

    /// Output straight to stdout, for a script or a pipe: no colour, no bell.
    pub fn plain() -> Self {
        Self::new(None, Style::new(false))
    }

    /// Output through the screen, above the prompt.
    pub fn screen(screen: Screen) -> Self {
        Self::new(Some(screen), Style::new(true))
    }

    /// How to decorate lines.
    pub fn style(&self) -> &Style {
        &self.style
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Prints one line (or several, separated by newlines).
    pub fn line(&self, text: impl Into<String>) {
        let state = self.lock();
        print(&state, text.into());
    }

    /// Prints a line that happened at `time` (`body` follows the `HH:MM:SS` it gets), preceded
    /// by a `--- YYYY-MM-DD ---` line when its day is not the day of the line before.
    pub fn stamped(&self, time: DateTime<Utc>, body: &str) {
        let local = time.with_timezone(&Local);
        let mut state = self.lock();
        if let Some(day) = day_line(&mut state.day, local) {
            print(&state, self.style.notice(&day));
        }
        let clock = self.style.dim(&local.format("%H:%M:%S").to_string());
        print(&state, format!("{clock} {body}"));
    }

    /// A notice, `* text`.
    pub fn notice(&self, text: &str) {
        self.line(self.style.notice(&format!("* {text}")));
    }

    /// An error, `! text`.
    pub fn error(&self, text: &str) {
        self.line(self.style.error(&format!("! {text}")));
    }

    /// Shows a command above its answer, after the prompt it was typed at; a script's commands
    /// are not repeated to it.
    pub fn command(&self, line: &str) {
        let state = self.lock();
        if state.screen.is_some() {
            let shown = self.style.dim(&format!("{}{line}", state.prompt));
            print(&state, shown);
        }
    }

    /// Sets the prompt (plain text; it is shown as it is).
    pub fn prompt(&self, prompt: String) {
        let mut state = self.lock();
        if state.prompt == prompt {
            return;
        }
        state.prompt = prompt.clone();
        if let Some(s) = &state.screen {
            let _ = s.tx.send(ToScreen::Prompt(prompt));
        }
    }

    /// Clears the terminal (nothing to do without one).
    pub fn clear(&self) {
        let state = self.lock();
        if let Some(s) = &state.screen {
            let _ = s.tx.send(ToScreen::Clear);
        }
    }

    /// Gives the terminal back (after drawing everything printed so far); later lines go to
    /// stdout as they are.
    pub fn close(&self) {
        let mut state = self.lock();
        if let Some(s) = state.screen.take() {
            s.stop();
        }
    }
}

/// The `--- YYYY-MM-DD ---` line due before a line at `time`, if its day is not `*day`, the day
/// of the line before (which becomes `time`'s).
fn day_line(day: &mut NaiveDate, time: DateTime<Local>) -> Option<String> {
    let today = time.date_naive();
    (today != *day).then(|| {
        *day = today;
        format!("--- {today} ---")
    })
}

/// Prints under the lock, so that screen and plain lines keep one order.
fn print(state: &State, text: String) {
    let text = match &state.screen {
        Some(s) => match s.tx.send(ToScreen::Print(text)) {
            Ok(()) => return,
            Err(std::sync::mpsc::SendError(ToScreen::Print(text))) => text,
            Err(_) => return,
        },
        None => text,
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_day_line_comes_only_when_the_day_changes() {
        let at = |d, h| Local.with_ymd_and_hms(2026, 12, d, h, 0, 0).unwrap();
        let mut day = at(3, 9).date_naive();
        assert_eq!(day_line(&mut day, at(3, 10)), None);
        assert_eq!(
            day_line(&mut day, at(2, 23)).as_deref(),
            Some("--- 2026-12-02 ---")
        );
        assert_eq!(day_line(&mut day, at(2, 23)), None);
        assert_eq!(
            day_line(&mut day, at(3, 0)).as_deref(),
            Some("--- 2026-12-03 ---")
        );
    }

    #[test]
    fn no_colour_means_no_escapes_and_each_nick_keeps_its_colour() {
        let plain = Style {
            colour: false,
            bell: false,
        };
        assert_eq!(plain.alert("x"), "x");
        assert_eq!(plain.nick("bob"), "bob");
        let colour = Style {
            colour: true,
            bell: true,
        };
        let code = |s: String| s.split('m').next().unwrap().to_string();
        assert_eq!(code(colour.nick("Bob")), code(colour.nick("bob")));
        assert!(colour.alert("x").ends_with('\x07'));
        // History is highlighted the same, without the bell.
        assert_eq!(format!("{}\x07", colour.highlight("x")), colour.alert("x"));
    }
}
