//! The terminal program: slash commands over the client API.
//!
//! Three parts run side by side: the screen ([`super::screen`]), which owns the terminal, reads
//! every key and draws every line; a printer task that shows events as they come; and the command
//! loop that runs what the person typed, one command at a time and in order. Everything printed
//! goes through [`Output`], so the screen is the only writer while it runs. When stdin or stdout
//! is not a terminal (a script, a pipe, a test), lines are read plainly and output goes straight
//! to stdout.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::screen::{Screen, ToScreen};
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

/// Where output goes: above the prompt while the screen runs, else plain stdout. Every line
/// printed by the program passes through here, so nothing writes past the screen.
#[derive(Clone)]
pub struct Output {
    screen: Arc<Mutex<Option<Screen>>>,
}

impl Output {
    fn plain() -> Self {
        Output {
            screen: Arc::new(Mutex::new(None)),
        }
    }

    /// Prints one line (or several, separated by newlines).
    pub fn line(&self, text: impl Into<String>) {
        let text = text.into();
        let screen = self.screen.lock().unwrap_or_else(|e| e.into_inner());
        let text = match screen.as_ref() {
            Some(s) => match s.tx.send(ToScreen::Print(text)) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(ToScreen::Print(text))) => text,
                Err(_) => return,
            },
            None => text,
        };
        // Still under the lock: plain lines keep their order too.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// Shows a command above its answer, where a person typed it; a script's commands are not
    /// repeated to it.
    fn command(&self, line: &str) {
        let on_screen = self
            .screen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if on_screen {
            self.line(format!("> {line}"));
        }
    }

    /// Gives the terminal back (after drawing everything printed so far); later lines go to
    /// stdout as they are.
    fn close(&self) {
        let mut screen = self.screen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = screen.take() {
            s.stop();
        }
    }
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
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let out = if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        let screen = Screen::start(lines_tx, "> ")?;
        Output {
            screen: Arc::new(Mutex::new(Some(screen))),
        }
    } else {
        start_plain_reader(lines_tx);
        Output::plain()
    };
    // Sequence number of the earliest group line shown, so /history pages further back.
    let earliest = Arc::new(AtomicU64::new(0));
    // Whether the person asked for history (and so wants to hear if there is none).
    let asked = Arc::new(AtomicBool::new(false));
    let finish = CancellationToken::new();
    let printer = tokio::spawn(print_events(
        client.clone(),
        events,
        out.clone(),
        (earliest.clone(), asked.clone()),
        finish.clone(),
    ));
    let pending = TaskTracker::new();

    while let Some(line) = lines.recv().await {
        let line = line.trim().to_string();
        if line.starts_with('/') {
            out.command(&line);
        }
        if line == "/quit" || line == "/exit" {
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
    let left = client.leave().await;
    // What arrived before we left (our own echoes among it) is shown before the goodbye.
    finish.cancel();
    let _ = printer.await;
    out.close();
    if let Some(info) = left {
        out.line(format!(
            "* left {}",
            session_label(&info.id.to_string(), info.name.as_deref())
        ));
    }
    out.line("* bye");
    Ok(())
}

fn start_plain_reader(lines: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = match input.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => "/quit".to_string(),
            };
            let quit = line.trim() == "/quit";
            if lines.send(line).is_err() || quit {
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
    client: Client,
    mut events: mpsc::Receiver<Event>,
    out: Output,
    (earliest, earliest_asked): (Arc<AtomicU64>, Arc<AtomicBool>),
    finish: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            biased;
            event = events.recv() => event,
            // Asked to finish: show what is queued already, then stop.
            _ = finish.cancelled() => events.try_recv().ok(),
        };
        let Some(event) = event else { break };
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
            } => {
                if joined.is_empty() && left.is_empty() {
                    out.line(format!("* {member_count} members"));
                    continue;
                }
                let now = stamp(chrono::Utc::now());
                for m in &joined {
                    out.line(format!("{now} * {} joined ({})", clean(&m.user), m.udp));
                }
                for d in &left {
                    let how = match d.reason {
                        crate::protocol::LeaveReason::Left => "left",
                        crate::protocol::LeaveReason::Disconnected => "disconnected",
                        crate::protocol::LeaveReason::TooSlow => "was dropped (too slow)",
                    };
                    out.line(format!("{now} * {} {how}", clean(&d.user)));
                }
                show_roster(&client, &out);
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
            Event::Reconnected { .. } => {
                out.line("* reconnected; missed messages follow");
                show_roster(&client, &out);
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
    let members = client.members();
    let count = client.member_count();
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
