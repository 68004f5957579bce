//! The terminal, owned by one thread: it reads every key and draws every line.
//!
//! rustyline 19 cannot be made reliable for a chat: its external printer writes straight to the
//! terminal without a newline whenever the editor is between two `readline` calls (the next
//! prompt then wipes the text), and its raw-mode reader buffers input per `readline` call and
//! drops the buffer when the call returns, so keys typed ahead of a slow command are lost (the
//! `buffer-redux` feature keeps them, but the terminal still goes back to cooked mode, echoing,
//! between calls). Both races are in how rustyline owns the terminal, not in how it is called.
//!
//! So the terminal program owns it itself. The terminal stays in raw mode from start to finish.
//! A reader thread turns every byte into keys ([`super::keys`]); one screen thread receives those
//! keys and every line to print, in one channel and so in one order, and is the only writer to
//! the terminal: to print, it clears the prompt rows, writes whole lines, and draws the prompt
//! and the half-typed line again below them ([`super::lineedit`]). Nothing can interleave, so
//! nothing is lost or garbled, however keys and output are timed. rustyline still supplies the
//! completion and hint interfaces ([`super::complete`]).

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use rustyline::Context;
use rustyline::completion::Completer;
use rustyline::hint::Hinter;
use rustyline::history::MemHistory;

use super::complete::{Completion, common_prefix};
use super::history;
use super::keys::{Key, KeyParser};
use super::lineedit::{Action, Frame, LineEditor, Place, place};

/// Input history entries kept in memory.
const HISTORY: usize = 1000;
/// Messages waiting for the screen at most. A terminal that stops reading holds up whoever
/// prints (and so, in the end, the session, which drops a member that falls too far behind)
/// instead of filling memory.
const QUEUE: usize = 4096;
/// Most messages drawn in one frame: under a flood the prompt is still redrawn now and then.
const BATCH: usize = 256;

/// What the screen thread is asked to do, in the order it must happen.
pub enum ToScreen {
    /// Keys from the reader thread.
    Keys(Vec<Key>),
    /// Whole lines to print above the prompt (may contain newlines).
    Print(String),
    /// A new prompt (plain text).
    Prompt(String),
    /// Clear the terminal, then draw the prompt at the top.
    Clear,
    /// The terminal's input ended.
    InputClosed,
    /// The terminal changed size: draw the prompt again.
    Resized,
    /// Erase the prompt, give the terminal back as it was, and say so on the channel.
    Stop(mpsc::Sender<()>),
}

/// A running screen: the sender for messages, and the thread to wait for.
pub struct Screen {
    /// Messages for the screen thread.
    pub tx: mpsc::SyncSender<ToScreen>,
    thread: Option<JoinHandle<()>>,
    stop_reader: Arc<AtomicBool>,
}

impl Screen {
    /// Puts the terminal in raw mode and starts the reader and screen threads. Lines the person
    /// enters go to `typed`, in order.
    pub fn start(typed: UnboundedSender<String>, options: Options) -> std::io::Result<Screen> {
        let mut editor = LineEditor::new(HISTORY);
        if let Some(path) = &options.history {
            // A history that cannot be read or made private is not kept; chatting goes on.
            match history::load(path, HISTORY) {
                Ok(lines) => lines.iter().for_each(|l| editor.remember(l)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "no input history"),
            }
        }
        let saved = RawMode::enter()?;
        // A panic may leave with other threads still holding the screen: give the terminal
        // back first, so the message is readable and the shell usable.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            RawMode::restore();
            previous(info);
        }));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stop_reader = Arc::new(AtomicBool::new(false));
        {
            let tx = tx.clone();
            let stop = stop_reader.clone();
            std::thread::Builder::new()
                .name("confab-keys".into())
                .spawn(move || read_keys(tx, stop))?;
        }
        let state = State {
            editor,
            prompt: options.prompt,
            cursor_row: 0,
            drawn: (String::new(), 0),
            typed,
            colour: options.colour,
            completion: options.completion,
            history_file: options.history,
            interrupt: options.interrupt,
            no_history: MemHistory::new(),
        };
        let thread = std::thread::Builder::new()
            .name("confab-screen".into())
            .spawn(move || state.run(rx, saved))?;
        Ok(Screen {
            tx,
            thread: Some(thread),
            stop_reader,
        })
    }

    /// Draws what was sent before, erases the prompt and restores the terminal.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.thread.is_none() {
            return;
        }
        self.stop_reader.store(true, Ordering::Relaxed);
        let (done, wait) = mpsc::channel();
        if self.tx.send(ToScreen::Stop(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whatever way the program leaves (an error returned early, say), the terminal is given back.
impl Drop for Screen {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Ctrl-C while a command waits (on a coordinator that does not answer, say) cancels the
/// command and gives the prompt back, instead of queueing a `/quit` behind it; a second
/// Ctrl-C, on an idle prompt, quits as usual.
#[derive(Default)]
pub struct Interrupt {
    running: AtomicBool,
    cancel: tokio::sync::Notify,
}

impl Interrupt {
    /// Runs a command; `None` if Ctrl-C cancelled it.
    pub async fn run<F: std::future::Future>(&self, command: F) -> Option<F::Output> {
        let cancelled = self.cancel.notified();
        tokio::pin!(cancelled);
        // Registered before the command starts, so a Ctrl-C at once is not missed.
        cancelled.as_mut().enable();
        self.running.store(true, Ordering::SeqCst);
        let result = tokio::select! {
            out = command => Some(out),
            () = &mut cancelled => None,
        };
        self.running.store(false, Ordering::SeqCst);
        result
    }

    /// Ctrl-C on an empty line: true if it cancelled a running command.
    fn press(&self) -> bool {
        if !self.running.load(Ordering::SeqCst) {
            return false;
        }
        // Wakes only a command waiting now: nothing is left over to cancel the next one.
        self.cancel.notify_waiters();
        true
    }
}

/// How the screen starts.
pub struct Options {
    /// The first prompt.
    pub prompt: String,
    /// Whether the hint may be dimmed with an escape.
    pub colour: bool,
    /// Tab completion and hints.
    pub completion: Completion,
    /// The input history file, if one is kept.
    pub history: Option<PathBuf>,
    /// Shared with the command loop, which runs each command through it.
    pub interrupt: Arc<Interrupt>,
}

struct State {
    editor: LineEditor,
    prompt: String,
    /// Rows from the top of the prompt area down to the cursor.
    cursor_row: usize,
    /// What stood before the cursor when the prompt was last drawn, and how wide the terminal
    /// was then.
    drawn: (String, usize),
    typed: UnboundedSender<String>,
    colour: bool,
    completion: Completion,
    history_file: Option<PathBuf>,
    interrupt: Arc<Interrupt>,
    /// rustyline's completer and hinter are handed the editor's history; ours lives in the
    /// line editor, so they get an empty one (they do not use it).
    no_history: MemHistory,
}

impl State {
    fn run(mut self, rx: mpsc::Receiver<ToScreen>, saved: RawMode) {
        let mut out = String::new();
        self.draw(&mut out);
        flush(&mut out);
        while let Ok(first) = rx.recv() {
            self.erase(&mut out);
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(msg) = next.take() {
                match msg {
                    ToScreen::Stop(done) => {
                        flush(&mut out);
                        drop(saved);
                        let _ = done.send(());
                        return;
                    }
                    msg => self.handle(msg, &mut out),
                }
                handled += 1;
                if handled < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.draw(&mut out);
            flush(&mut out);
        }
    }

    fn handle(&mut self, msg: ToScreen, out: &mut String) {
        match msg {
            ToScreen::Print(text) => {
                for line in text.split('\n') {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
            }
            ToScreen::Prompt(prompt) => self.prompt = prompt,
            ToScreen::Clear => out.push_str("\x1b[H\x1b[2J\x1b[3J"),
            ToScreen::Keys(keys) => {
                for key in keys {
                    self.key(key, out);
                }
            }
            ToScreen::InputClosed => self.enter("/quit".into()),
            ToScreen::Resized => {}
            ToScreen::Stop(_) => {}
        }
    }

    fn key(&mut self, key: Key, out: &mut String) {
        match key {
            Key::Paste(text) => {
                for line in self.editor.paste(&text) {
                    self.enter(line);
                }
            }
            // Ctrl-C clears a half-typed line, cancels a command that is waiting, and quits from
            // an empty prompt; Ctrl-D quits.
            Key::Ctrl('c') if !self.editor.line().is_empty() => self.editor.clear(),
            Key::Ctrl('c') if self.interrupt.press() => {}
            Key::Ctrl('c' | 'd') if self.editor.line().is_empty() => self.enter("/quit".into()),
            // At the end of the line, Right and End take the hint.
            Key::Right | Key::End | Key::Ctrl('f' | 'e')
                if self.editor.pos() == self.editor.line().len() =>
            {
                let hint = self.hint();
                let end = self.editor.pos();
                self.editor.replace(end..end, &hint);
            }
            key => match self.editor.key(&key) {
                Action::Submit(line) => self.enter(line),
                Action::ClearScreen => out.push_str("\x1b[H\x1b[2J"),
                Action::Complete => self.complete(out),
                Action::None => {}
            },
        }
    }

    /// A line was entered: it leaves the prompt, and the command loop shows it where it belongs
    /// (a command above its answer, a message when it comes back from the session or the peer).
    fn enter(&mut self, line: String) {
        if !line.trim().is_empty() {
            self.editor.remember(&line);
            if let Some(path) = self.history_file.as_ref().filter(|_| history::keep(&line))
                && let Err(e) = history::append(path, &line)
            {
                tracing::warn!(error = %e, "input history not written");
            }
        }
        let _ = self.typed.send(line);
    }

    /// Tab: the only candidate, or what all candidates share, or else the list of them.
    fn complete(&mut self, out: &mut String) {
        let (line, pos) = (self.editor.line().to_string(), self.editor.pos());
        let ctx = Context::new(&self.no_history);
        let Ok((start, found)) = self.completion.complete(&line, pos, &ctx) else {
            return;
        };
        match found.as_slice() {
            [] => {}
            [only] => self.editor.replace(start..pos, only),
            many => {
                let shared = common_prefix(many);
                if shared.chars().count() > line[start..pos].chars().count() {
                    self.editor.replace(start..pos, &shared);
                } else {
                    let list: Vec<&str> = many.iter().map(|c| c.trim_end()).collect();
                    out.push_str(&list.join("  "));
                    out.push_str("\r\n");
                }
            }
        }
    }

    /// The hint, shown dimmed; without colour it would look typed, so there is none.
    fn hint(&self) -> String {
        if !self.colour {
            return String::new();
        }
        let ctx = Context::new(&self.no_history);
        self.completion
            .hint(self.editor.line(), self.editor.pos(), &ctx)
            .unwrap_or_default()
    }

    /// Moves to the top of the prompt area and clears it and everything below.
    ///
    /// After a resize the prompt's rows are unknown: a terminal that reflows has rewrapped them
    /// to the new width, one that does not has kept them. Going up the smaller of the two counts
    /// never erases a printed line; at worst a remnant of the old prompt stays above.
    fn erase(&mut self, out: &mut String) {
        let cols = columns();
        let mut up = self.cursor_row;
        if cols != self.drawn.1 {
            up = up.min(place(&self.drawn.0, Place { row: 0, col: 0 }, cols).row);
        }
        out.push('\r');
        if up > 0 {
            out.push_str(&format!("\x1b[{up}A"));
        }
        out.push_str("\x1b[J");
        self.cursor_row = 0;
    }

    fn draw(&mut self, out: &mut String) {
        let hint = self.hint();
        let frame = Frame {
            prompt: &self.prompt,
            prompt_plain: &self.prompt,
            line: self.editor.line(),
            pos: self.editor.pos(),
            hint: &hint,
        };
        let cols = columns();
        let (bytes, row) = frame.draw(cols, self.colour);
        out.push_str(&bytes);
        self.cursor_row = row;
        let before_cursor = format!(
            "{}{}",
            self.prompt,
            &self.editor.line()[..self.editor.pos()]
        );
        self.drawn = (before_cursor, cols);
    }
}

fn flush(out: &mut String) {
    if out.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    out.clear();
}

/// The terminal's width in columns (80 if it cannot be asked).
fn columns() -> usize {
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass and nothing else.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

/// Reads stdin until it ends or the screen stops, and sends every key in order.
fn read_keys(tx: mpsc::SyncSender<ToScreen>, stop: Arc<AtomicBool>) {
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    let mut parser = KeyParser::default();
    let mut buf = [0u8; 4096];
    let mut cols = columns();
    while !stop.load(Ordering::Relaxed) {
        // A lone ESC is a key of its own once nothing followed it for a moment.
        let timeout = if parser.waiting() { 30 } else { 200 };
        let mut fds = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, and its count.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout) };
        if ready == 0 {
            let keys = parser.flush();
            if !keys.is_empty() && tx.send(ToScreen::Keys(keys)).is_err() {
                return;
            }
            // Checked at each pause rather than on SIGWINCH: no signal handler to share.
            if columns() != cols {
                cols = columns();
                if tx.send(ToScreen::Resized).is_err() {
                    return;
                }
            }
            continue;
        }
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            let _ = tx.send(ToScreen::InputClosed);
            return;
        }
        // SAFETY: reads into our buffer, at most its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            let _ = tx.send(ToScreen::InputClosed);
            return;
        }
        if n == 0 {
            let _ = tx.send(ToScreen::InputClosed);
            return;
        }
        let keys = parser.feed(&buf[..n as usize]);
        if !keys.is_empty() && tx.send(ToScreen::Keys(keys)).is_err() {
            return;
        }
    }
}

/// The terminal in raw mode, for as long as this lives; dropping it restores the settings it
/// found and turns bracketed paste off again.
struct RawMode;

/// The settings the terminal had before raw mode, for [`RawMode::restore`].
static SAVED: std::sync::OnceLock<libc::termios> = std::sync::OnceLock::new();

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: tcgetattr fills the struct for a descriptor we own for the process's life.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // No echo, no line editing by the kernel, no signals from keys (Ctrl-C is ours), no CR
        // to NL, no flow control; output processing stays on, so "\n" still returns the carriage.
        raw.c_iflag &= !(libc::BRKINT | libc::ICRNL | libc::INPCK | libc::ISTRIP | libc::IXON);
        raw.c_cflag |= libc::CS8;
        raw.c_lflag &= !(libc::ECHO | libc::ICANON | libc::IEXTEN | libc::ISIG);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // TCSADRAIN, not TCSAFLUSH: keys typed before this point are kept.
        if unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(b"\x1b[?2004h")?;
        stdout.flush()?;
        let _ = SAVED.set(saved);
        Ok(RawMode)
    }

    /// Turns bracketed paste off and puts back the settings raw mode found; harmless twice.
    fn restore() {
        let Some(saved) = SAVED.get() else { return };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(b"\x1b[?2004l\x1b[?25h");
        let _ = stdout.flush();
        // SAFETY: restores the settings read from the same descriptor.
        let fd = unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) };
        unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSADRAIN, saved) };
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        RawMode::restore();
    }
}
