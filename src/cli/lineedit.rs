//! The line being typed: editing keys, input history, and how it is drawn below the output.
//!
//! Pure state and pure drawing, so the screen thread stays a thin loop and the tests can check
//! layouts without a terminal.

use unicode_width::UnicodeWidthChar;

use super::keys::Key;

/// What a key asks of the screen, beyond changing the line.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond a redraw.
    None,
    /// A line was entered.
    Submit(String),
    /// Clear the screen, then draw the prompt at the top.
    ClearScreen,
    /// Complete the word before the cursor.
    Complete,
}

/// The half-typed line and the lines typed before.
#[derive(Default)]
pub struct LineEditor {
    line: String,
    /// Byte offset of the cursor, always on a character boundary.
    pos: usize,
    history: Vec<String>,
    /// While browsing history: which entry is shown, and the line that was being typed.
    browsing: Option<(usize, String)>,
    /// Most entries kept in `history`.
    history_limit: usize,
}

impl LineEditor {
    /// An empty line with an empty history of at most `history_limit` entries.
    pub fn new(history_limit: usize) -> Self {
        Self {
            history_limit,
            ..Self::default()
        }
    }

    /// The line as typed so far.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Where the cursor is, as a byte offset into [`LineEditor::line`].
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Replaces `range` of the line with `text` and puts the cursor after it (completion).
    pub fn replace(&mut self, range: std::ops::Range<usize>, text: &str) {
        let text = printable(text);
        self.line.replace_range(range.clone(), &text);
        self.pos = range.start + text.len();
    }

    /// Adds a line to the input history (the caller decides which lines may be kept).
    pub fn remember(&mut self, line: &str) {
        if line.trim().is_empty() || self.history.last().is_some_and(|l| l == line) {
            return;
        }
        self.history.push(line.to_string());
        if self.history.len() > self.history_limit {
            let extra = self.history.len() - self.history_limit;
            self.history.drain(..extra);
        }
    }

    /// Applies one key. A paste is handled by [`LineEditor::paste`], which may submit several lines.
    pub fn key(&mut self, key: &Key) -> Action {
        match key {
            Key::Char(c) => self.insert(&c.to_string()),
            Key::Enter => return Action::Submit(self.take()),
            Key::Tab => return Action::Complete,
            Key::Backspace => {
                if let Some(c) = self.line[..self.pos].chars().next_back() {
                    self.pos -= c.len_utf8();
                    self.line.remove(self.pos);
                }
            }
            Key::Delete | Key::Ctrl('d') => {
                if self.pos < self.line.len() {
                    self.line.remove(self.pos);
                }
            }
            Key::Left | Key::Ctrl('b') => {
                if let Some(c) = self.line[..self.pos].chars().next_back() {
                    self.pos -= c.len_utf8();
                }
            }
            Key::Right | Key::Ctrl('f') => {
                if let Some(c) = self.line[self.pos..].chars().next() {
                    self.pos += c.len_utf8();
                }
            }
            Key::Home | Key::Ctrl('a') => self.pos = 0,
            Key::End | Key::Ctrl('e') => self.pos = self.line.len(),
            Key::WordLeft => self.pos = self.word_start(),
            Key::WordRight => self.pos = self.word_end(),
            Key::Ctrl('w') | Key::DeleteWordBack => {
                let start = self.word_start();
                self.line.replace_range(start..self.pos, "");
                self.pos = start;
            }
            Key::Ctrl('u') => {
                self.line.replace_range(..self.pos, "");
                self.pos = 0;
            }
            Key::Ctrl('k') => self.line.truncate(self.pos),
            Key::Ctrl('l') => return Action::ClearScreen,
            Key::Up | Key::Ctrl('p') => self.older(),
            Key::Down | Key::Ctrl('n') => self.newer(),
            Key::Paste(_) | Key::Ctrl(_) | Key::Unknown => {}
        }
        Action::None
    }

    /// Inserts pasted text: every line ended by a newline is submitted, in order, the rest is
    /// left on the line to be finished.
    pub fn paste(&mut self, text: &str) -> Vec<String> {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut parts = text.split('\n').peekable();
        let mut done = Vec::new();
        while let Some(part) = parts.next() {
            self.insert(part);
            if parts.peek().is_some() {
                done.push(self.take());
            }
        }
        done
    }

    /// Empties the line (Ctrl-C on a half-typed line).
    pub fn clear(&mut self) {
        self.line.clear();
        self.pos = 0;
        self.browsing = None;
    }

    fn take(&mut self) -> String {
        self.pos = 0;
        self.browsing = None;
        std::mem::take(&mut self.line)
    }

    fn insert(&mut self, text: &str) {
        let text = printable(text);
        self.line.insert_str(self.pos, &text);
        self.pos += text.len();
    }

    fn word_start(&self) -> usize {
        let before = self.line[..self.pos].trim_end();
        before.rfind(char::is_whitespace).map_or(0, |i| {
            i + before[i..].chars().next().map_or(1, char::len_utf8)
        })
    }

    fn word_end(&self) -> usize {
        let after = &self.line[self.pos..];
        let skip = after.len() - after.trim_start().len();
        let word = after[skip..]
            .find(char::is_whitespace)
            .unwrap_or(after.len() - skip);
        self.pos + skip + word
    }

    fn older(&mut self) {
        let next = match &self.browsing {
            None if self.history.is_empty() => return,
            None => self.history.len() - 1,
            Some((0, _)) => return,
            Some((i, _)) => i - 1,
        };
        let typed = match self.browsing.take() {
            Some((_, typed)) => typed,
            None => std::mem::take(&mut self.line),
        };
        self.line = self.history[next].clone();
        self.pos = self.line.len();
        self.browsing = Some((next, typed));
    }

    fn newer(&mut self) {
        let Some((i, typed)) = self.browsing.take() else {
            return;
        };
        if i + 1 < self.history.len() {
            self.line = self.history[i + 1].clone();
            self.browsing = Some((i + 1, typed));
        } else {
            self.line = typed;
        }
        self.pos = self.line.len();
    }
}

/// Text as it may stand on the line: tabs become spaces, other control characters are dropped.
fn printable(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Where text ends up on a terminal `cols` wide, starting at the left edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Rows below the first.
    pub row: usize,
    /// Column in that row.
    pub col: usize,
}

/// The place after `text` (plain, no escapes) on a terminal `cols` wide, starting at `from`.
/// A character that does not fit on the row goes to the next, as terminals wrap it; a text that
/// fills its last row exactly ends at the start of the next row.
pub fn place(text: &str, from: Place, cols: usize) -> Place {
    let cols = cols.max(2);
    let mut at = from;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if at.col + w > cols {
            at.row += 1;
            at.col = 0;
        }
        at.col += w;
        if at.col == cols {
            at.row += 1;
            at.col = 0;
        }
    }
    at
}

/// What the prompt area looks like: the prompt, the line with the cursor in it, and a hint.
pub struct Frame<'a> {
    /// The prompt as shown (may hold colour escapes).
    pub prompt: &'a str,
    /// The prompt without escapes, for measuring.
    pub prompt_plain: &'a str,
    /// The line being typed.
    pub line: &'a str,
    /// Byte offset of the cursor in `line`.
    pub pos: usize,
    /// Shown dimmed after the line (a completion the Right key would take).
    pub hint: &'a str,
}

impl Frame<'_> {
    /// The bytes that draw this frame from the left edge of an empty row, and the row (below the
    /// first) where the cursor is left.
    pub fn draw(&self, cols: usize, colour: bool) -> (String, usize) {
        let start = Place { row: 0, col: 0 };
        let after_prompt = place(self.prompt_plain, start, cols);
        let cursor = place(&self.line[..self.pos], after_prompt, cols);
        let after_line = place(self.line, after_prompt, cols);
        let end = place(self.hint, after_line, cols);
        let mut out = String::new();
        out.push_str(self.prompt);
        out.push_str(self.line);
        if !self.hint.is_empty() {
            if colour {
                out.push_str(&format!("\x1b[2m{}\x1b[0m", self.hint));
            } else {
                out.push_str(self.hint);
            }
        }
        if end.col == 0 && end.row > 0 {
            // The text filled its last row: the terminal waits at the right edge; move down so
            // that the cursor is where `place` says.
            out.push_str("\r\n");
        }
        if end.row > cursor.row {
            out.push_str(&format!("\x1b[{}A", end.row - cursor.row));
        }
        out.push('\r');
        if cursor.col > 0 {
            out.push_str(&format!("\x1b[{}C", cursor.col));
        }
        (out, cursor.row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(editor: &mut LineEditor, text: &str) {
        for c in text.chars() {
            editor.key(&Key::Char(c));
        }
    }

    #[test]
    fn a_paste_submits_each_finished_line_in_order_and_keeps_the_rest() {
        let mut e = LineEditor::new(10);
        typed(&mut e, "> ");
        let sent = e.paste("one\r\ntwo\rthree\nfour");
        assert_eq!(sent, vec!["> one", "two", "three"]);
        assert_eq!(e.line(), "four");
    }

    #[test]
    fn editing_keys_move_and_delete_by_character_and_word() {
        let mut e = LineEditor::new(10);
        typed(&mut e, "héllo big wörld");
        e.key(&Key::WordLeft);
        e.key(&Key::Ctrl('w'));
        assert_eq!(e.line(), "héllo wörld");
        e.key(&Key::Home);
        e.key(&Key::Delete);
        e.key(&Key::End);
        e.key(&Key::Backspace);
        assert_eq!(e.line(), "éllo wörl");
        e.key(&Key::Left);
        e.key(&Key::Ctrl('k'));
        assert_eq!(e.line(), "éllo wör");
        e.key(&Key::Ctrl('u'));
        assert_eq!(e.line(), "");
    }

    #[test]
    fn history_browses_back_and_returns_to_the_half_typed_line() {
        let mut e = LineEditor::new(2);
        for l in ["a", "b", "c"] {
            e.remember(l);
        }
        typed(&mut e, "draft");
        e.key(&Key::Up);
        e.key(&Key::Up);
        e.key(&Key::Up);
        assert_eq!(e.line(), "b");
        e.key(&Key::Down);
        e.key(&Key::Down);
        assert_eq!(e.line(), "draft");
    }

    #[test]
    fn places_follow_terminal_wrapping() {
        let start = Place { row: 0, col: 0 };
        assert_eq!(place("abcd", start, 4), Place { row: 1, col: 0 });
        assert_eq!(place("abc漢", start, 4), Place { row: 1, col: 2 });
        assert_eq!(place("abcde", start, 4), Place { row: 1, col: 1 });
    }

    #[test]
    fn a_frame_leaves_the_cursor_in_the_line() {
        let f = Frame {
            prompt: "> ",
            prompt_plain: "> ",
            line: "abcdef",
            pos: 1,
            hint: "",
        };
        let (bytes, row) = f.draw(4, false);
        // "> ab" fills row 0, "cdef" row 1 exactly: down a row, then back up two to row 0.
        assert_eq!(bytes, "> abcdef\r\n\x1b[2A\r\x1b[3C");
        assert_eq!(row, 0);
    }
}
