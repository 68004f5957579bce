//! The terminal program: a `rustyline` prompt over the client API.
//!
//! Three parts run side by side: the line editor on its own thread (it blocks), a printer task that
//! shows events as they come, and the command loop that runs what the person typed, one command at
//! a time and in order. Output goes through rustyline's external printer, which redraws the prompt
//! and the half-typed line below each message instead of garbling them. When stdin is not a
//! terminal (a script, a pipe, a test), lines are read plainly and output goes straight to stdout.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::text::{clean, stamp};
use super::{Client, ClientConfig, ClientError, Event, Joined};
use crate::protocol::DirectoryEntry;

/// Roster lines printed at most; the rest are summarised.
const ROSTER_SHOWN: usize = 20;

const HELP: &str = "\
commands:
  /start [name]     create a session (optionally named) and join it
  /join <id|name>   join a session by id, id prefix or name
  /leave            leave the current session
  /sessions         list all sessions: id, name, server, members
  /who              show who is in this session, with their UDP endpoints
  /history [n]      show n more earlier group messages (default 50)
  /close [id|name]  remove a session you created, with its history (default: this one)
  /help             this text
  /quit             leave and exit (also Ctrl-D)
  text              say text to everyone in the session
  @name text        say text to name only, peer to peer (private)";

/// Where output goes: above the prompt when a person is typing, else plain stdout.
#[derive(Clone)]
pub struct Output {
    printer: Option<Arc<Mutex<Box<dyn ExternalPrinter + Send>>>>,
}

impl Output {
    /// Prints one line (or several, separated by newlines).
    pub fn line(&self, text: impl Into<String>) {
        let text = text.into();
        if let Some(p) = &self.printer {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            if p.print(text.clone()).is_ok() {
                return;
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// One line typed by the person; the editor waits for `go_on` before prompting again, so the
/// program can stop it cleanly (restoring the terminal) after `/quit`.
struct Typed {
    line: String,
    go_on: Option<oneshot::Sender<bool>>,
}

/// How the terminal client proves who it is.
pub struct Credentials {
    /// The password (from `CONFAB_PASSWORD` or asked for without echo).
    pub password: String,
    /// Create the account before logging in.
    pub register: bool,
}

/// Runs the terminal client until `/quit`, Ctrl-D or the end of input.
pub async fn run(config: ClientConfig, credentials: Credentials) -> Result<(), ClientError> {
    let (client, events) = Client::start(config).await?;
    if credentials.register {
        let user = client.register(&credentials.password).await?;
        println!("* registered {user}");
    }
    let user = client.login(&credentials.password).await?;
    drop(credentials);
    println!("* logged in as {user}; type /help for commands");
    let (lines_tx, mut lines) = mpsc::channel::<Typed>(64);
    let out = if std::io::stdin().is_terminal() {
        start_editor(lines_tx)?
    } else {
        start_plain_reader(lines_tx);
        Output { printer: None }
    };
    // Sequence number of the earliest group line shown, so /history pages further back.
    let earliest = Arc::new(AtomicU64::new(0));
    // Whether the person asked for history (and so wants to hear if there is none).
    let asked = Arc::new(AtomicBool::new(false));
    let printer = tokio::spawn(print_events(
        events,
        out.clone(),
        earliest.clone(),
        asked.clone(),
    ));
    let pending = TaskTracker::new();

    while let Some(Typed { line, go_on }) = lines.recv().await {
        let line = line.trim().to_string();
        let quit = line == "/quit" || line == "/exit";
        if let Some(go_on) = go_on {
            let _ = go_on.send(!quit);
        }
        if quit {
            break;
        }
        if line.is_empty() {
            continue;
        }
        command(&client, &line, &out, &pending, (&earliest, &asked)).await;
    }

    pending.close();
    if !pending.is_empty() {
        out.line("* waiting for private messages to be acknowledged…");
        let _ = tokio::time::timeout(client.inner.config.dm_retry.total(), pending.wait()).await;
    }
    if let Some(info) = client.leave().await {
        out.line(format!(
            "* left {}",
            session_label(&info.id.to_string(), info.name.as_deref())
        ));
    }
    printer.abort();
    out.line("* bye");
    Ok(())
}

fn start_editor(lines: mpsc::Sender<Typed>) -> Result<Output, ClientError> {
    let io = |e: ReadlineError| ClientError::Io(std::io::Error::other(e.to_string()));
    let mut editor = DefaultEditor::new().map_err(io)?;
    let printer = editor.create_external_printer().map_err(io)?;
    std::thread::Builder::new()
        .name("confab-readline".into())
        .spawn(move || {
            loop {
                let line = match editor.readline("> ") {
                    Ok(line) => line,
                    Err(ReadlineError::Interrupted) | Err(ReadlineError::Eof) => "/quit".into(),
                    Err(e) => {
                        tracing::error!(error = %e, "terminal input failed");
                        "/quit".into()
                    }
                };
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let (go_on, answer) = oneshot::channel();
                let typed = Typed {
                    line,
                    go_on: Some(go_on),
                };
                if lines.blocking_send(typed).is_err() || !answer.blocking_recv().unwrap_or(false) {
                    break;
                }
            }
        })?;
    Ok(Output {
        printer: Some(Arc::new(Mutex::new(Box::new(printer)))),
    })
}

fn start_plain_reader(lines: mpsc::Sender<Typed>) {
    tokio::spawn(async move {
        let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = match input.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => "/quit".to_string(),
            };
            let quit = line.trim() == "/quit";
            if lines.send(Typed { line, go_on: None }).await.is_err() || quit {
                break;
            }
        }
    });
}

async fn command(
    client: &Client,
    line: &str,
    out: &Output,
    pending: &TaskTracker,
    (earliest, asked): (&AtomicU64, &AtomicBool),
) {
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    let result = match word {
        "/help" => {
            out.line(HELP);
            Ok(())
        }
        "/start" => {
            earliest.store(0, Ordering::Relaxed);
            let name = (!rest.is_empty()).then_some(rest);
            client
                .start_session(name)
                .await
                .map(|j| show_joined(client, &j, out))
        }
        "/join" if rest.is_empty() => Err(ClientError::Invalid("usage: /join <id or name>".into())),
        "/join" => {
            earliest.store(0, Ordering::Relaxed);
            client
                .join(rest)
                .await
                .map(|j| show_joined(client, &j, out))
        }
        "/leave" => {
            earliest.store(0, Ordering::Relaxed);
            match client.leave().await {
                Some(info) => out.line(format!(
                    "* left {}",
                    session_label(&info.id.to_string(), info.name.as_deref())
                )),
                None => out.line("* you are not in a session"),
            }
            Ok(())
        }
        "/sessions" => client.list().await.map(|list| show_sessions(&list, out)),
        "/close" => {
            let target = match (rest, client.session()) {
                ("", Some(s)) => Ok(s.id.to_string()),
                ("", None) => Err(ClientError::Invalid("usage: /close <id or name>".into())),
                (r, _) => Ok(r.to_string()),
            };
            match target {
                Ok(t) => client
                    .close_session(&t)
                    .await
                    .map(|id| out.line(format!("* closed session {id} for good"))),
                Err(e) => Err(e),
            }
        }
        "/who" => match client.session() {
            Some(_) => {
                show_roster_upto(client, out, usize::MAX);
                Ok(())
            }
            None => Err(ClientError::NotInSession),
        },
        "/history" => {
            // Page backwards from the earliest line on screen.
            let before = match earliest.load(Ordering::Relaxed) {
                0 => None,
                seq => Some(seq),
            };
            asked.store(true, Ordering::Relaxed);
            match rest.parse::<usize>() {
                Ok(n) if n > 0 => client.history(before, n).await,
                _ if rest.is_empty() => client.history(before, 50).await,
                _ => Err(ClientError::Invalid("usage: /history [n]".into())),
            }
        }
        w if w.starts_with('/') => Err(ClientError::Invalid(format!(
            "unknown command {w}; /help lists them"
        ))),
        w if w.starts_with('@') && w.len() > 1 => {
            private(client, &w[1..], rest, out, pending);
            Ok(())
        }
        _ => client.say(line).await,
    };
    if let Err(e) = result {
        out.line(format!("! {e}"));
    }
}

/// Sends a private message in the background: the prompt stays free while it is retried.
fn private(client: &Client, to: &str, text: &str, out: &Output, pending: &TaskTracker) {
    if text.is_empty() {
        out.line("! usage: @name text");
        return;
    }
    let (client, to, text, out) = (
        client.clone(),
        to.to_string(),
        text.to_string(),
        out.clone(),
    );
    pending.spawn(async move {
        match client.dm(&to, &text).await {
            Ok(receipt) => out.line(format!(
                "{} [private] you → {}: {}",
                stamp(receipt.time),
                clean(&receipt.to),
                clean(&text)
            )),
            Err(e) => out.line(format!("! {e}")),
        }
    });
}

async fn print_events(
    mut events: mpsc::Receiver<Event>,
    out: Output,
    earliest: Arc<AtomicU64>,
    earliest_asked: Arc<AtomicBool>,
) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Message(l) => {
                let _ = earliest.compare_exchange(0, l.seq, Ordering::Relaxed, Ordering::Relaxed);
                out.line(format!(
                    "{} <{}> {}",
                    stamp(l.time),
                    clean(&l.from),
                    clean(&l.text)
                ));
            }
            Event::History(lines) => {
                let asked = earliest_asked.swap(false, Ordering::Relaxed);
                let Some(first) = lines.first() else {
                    // On joining an empty session there is nothing to say.
                    if asked {
                        out.line("* no earlier messages");
                    }
                    continue;
                };
                let seq = first.seq;
                let _ = earliest.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                    (e == 0 || seq < e).then_some(seq)
                });
                out.line(format!("* {} earlier message(s):", lines.len()));
                for l in lines {
                    out.line(format!(
                        "{} <{}> {}",
                        stamp(l.time),
                        clean(&l.from),
                        clean(&l.text)
                    ));
                }
            }
            Event::Presence {
                joined,
                left,
                member_count,
                members,
            } => {
                if joined.is_empty() && left.is_empty() {
                    out.line(format!("* {member_count} members"));
                    continue;
                }
                let now = stamp(chrono::Utc::now());
                // Departures first: a user in both lists left and came back.
                for d in &left {
                    let how = match d.reason {
                        crate::protocol::LeaveReason::Left => "left",
                        crate::protocol::LeaveReason::Disconnected => "disconnected",
                        crate::protocol::LeaveReason::TooSlow => "was dropped (too slow)",
                    };
                    out.line(format!("{now} * {} {how}", clean(&d.user)));
                }
                for m in &joined {
                    out.line(format!("{now} * {} joined ({})", clean(&m.user), m.udp));
                }
                // The roster as of this notice, not as of now: later notices may be applied.
                show_members(&members, member_count, &out, ROSTER_SHOWN);
            }
            Event::Private {
                from, time, text, ..
            } => out.line(format!(
                "{} [private] {} → you: {}",
                stamp(time),
                clean(&from),
                clean(&text)
            )),
            Event::ServerError(e) => {
                if e.code == crate::protocol::ErrorCode::Gap {
                    // The replay that follows starts after the gap: page back from there.
                    earliest.store(0, Ordering::Relaxed);
                }
                out.line(format!("! {}", clean(&e.message)));
            }
            Event::Disconnected { reason, retrying } => out.line(format!(
                "! disconnected from the session: {}{}",
                clean(&reason),
                if retrying { "; reconnecting…" } else { "" }
            )),
            Event::Reconnected {
                members,
                member_count,
            } => {
                out.line("* reconnected; missed messages follow");
                show_members(&members, member_count, &out, ROSTER_SHOWN);
            }
            Event::DeliveredLate { time, to, text, .. } => out.line(format!(
                "{} [private] you → {}: {} (delivered late, after it was reported not delivered)",
                stamp(time),
                clean(&to),
                clean(&text)
            )),
            Event::Closed { session, by } => {
                let label = session.name.unwrap_or_else(|| session.id.to_string());
                let by = by.map_or(String::new(), |b| format!(" by {}", clean(&b)));
                out.line(format!("* session {} was closed{by}", clean(&label)));
            }
        }
    }
}

fn show_joined(client: &Client, joined: &Joined, out: &Output) {
    let s = &joined.session;
    out.line(format!(
        "* joined {} at {} as {} (udp {})",
        session_label(&s.id.to_string(), s.name.as_deref()),
        s.server,
        client.user(),
        client.endpoint()
    ));
    show_roster(client, out);
}

fn show_roster(client: &Client, out: &Output) {
    show_roster_upto(client, out, ROSTER_SHOWN);
}

fn show_roster_upto(client: &Client, out: &Output, shown: usize) {
    show_members(&client.members(), client.member_count(), out, shown);
}

fn show_members(members: &[crate::protocol::Member], count: usize, out: &Output, shown: usize) {
    if members.len() < count {
        // A large session: the server sends counts, not names.
        out.line(format!(
            "  {count} members (a large session: members are looked up when you write to them)"
        ));
        return;
    }
    let mut text = format!("  members ({}):", members.len());
    for m in members.iter().take(shown) {
        text.push_str(&format!(" {} {},", clean(&m.user), m.udp));
    }
    if text.ends_with(',') {
        text.pop();
    }
    if members.len() > ROSTER_SHOWN {
        text.push_str(&format!(
            " … and {} more (/who)",
            members.len() - ROSTER_SHOWN
        ));
    }
    out.line(text);
}

fn show_sessions(list: &[DirectoryEntry], out: &Output) {
    if list.is_empty() {
        out.line("* no sessions; /start [name] makes one");
        return;
    }
    let mut text = format!("{:<36}  {:<16}  {:<21}  MEMBERS", "ID", "NAME", "SERVER");
    for s in list {
        let mut members = s
            .members
            .iter()
            .map(|m| clean(m))
            .collect::<Vec<_>>()
            .join(", ");
        if s.member_count > s.members.len() {
            members.push_str(&format!(", … ({} more)", s.member_count - s.members.len()));
        }
        text.push_str(&format!(
            "\n{:<36}  {:<16}  {:<21}  {}: {}",
            s.id,
            clean(s.name.as_deref().unwrap_or("-")),
            s.server
                .map_or_else(|| "(idle)".to_string(), |a| a.to_string()),
            s.member_count,
            members
        ));
    }
    out.line(text);
}

fn session_label(id: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("session {} ({id})", clean(n)),
        None => format!("session {id}"),
    }
}
