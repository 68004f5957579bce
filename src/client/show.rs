//! What the terminal program prints: every line goes through [`Output`], and events become
//! lines in [`print_events`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::screen::{Screen, ToScreen};
use super::text::{clean, stamp};
use super::{Client, Event, Joined};
use crate::protocol::DirectoryEntry;

/// Roster lines printed at most; the rest are summarised.
const ROSTER_SHOWN: usize = 20;

/// Where output goes: above the prompt while the screen runs, else plain stdout. Every line
/// printed by the program passes through here, so nothing writes past the screen.
#[derive(Clone)]
pub struct Output {
    screen: Arc<Mutex<Option<Screen>>>,
}

impl Output {
    /// Output straight to stdout, for a script or a pipe.
    pub fn plain() -> Self {
        Output {
            screen: Arc::new(Mutex::new(None)),
        }
    }

    /// Output through the screen, above the prompt.
    pub fn screen(screen: Screen) -> Self {
        Output {
            screen: Arc::new(Mutex::new(Some(screen))),
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
    pub fn command(&self, line: &str) {
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
    pub fn close(&self) {
        let mut screen = self.screen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = screen.take() {
            s.stop();
        }
    }
}

/// What the printer and the commands share about the screen.
#[derive(Default)]
pub struct Shown {
    /// Sequence number of the earliest group line shown, so /history pages further back.
    pub earliest: AtomicU64,
    /// Whether the person asked for history (and so wants to hear if there is none).
    pub asked: AtomicBool,
}

/// Shows events as they come, in the order they came, until `finish` (then what is queued
/// already is shown too). While `joining` is true, the session's events wait, so that a join
/// shows "joined" first, then the roster, then the history; private messages do not wait.
pub async fn print_events(
    client: Client,
    mut events: mpsc::Receiver<Event>,
    out: Output,
    shown: Arc<Shown>,
    mut joining: watch::Receiver<bool>,
    finish: CancellationToken,
) {
    let mut held = std::collections::VecDeque::new();
    loop {
        let event = if !*joining.borrow() && !held.is_empty() {
            held.pop_front()
        } else {
            tokio::select! {
                biased;
                event = events.recv() => event,
                _ = joining.changed() => continue,
                // Asked to finish: show what is queued already, then stop.
                _ = finish.cancelled() => events.try_recv().ok(),
            }
        };
        let Some(event) = event else { break };
        if *joining.borrow() && !matches!(event, Event::Private { .. }) {
            held.push_back(event);
            continue;
        }
        show_event(&client, &out, &shown, event);
    }
    for event in held {
        show_event(&client, &out, &shown, event);
    }
}

fn show_event(client: &Client, out: &Output, shown: &Shown, event: Event) {
    let (earliest, earliest_asked) = (&shown.earliest, &shown.asked);
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
                return;
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
                return;
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
            show_roster(client, out);
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
            show_roster(client, out);
        }
    }
}

pub fn show_joined(client: &Client, joined: &Joined, out: &Output) {
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

pub fn show_roster(client: &Client, out: &Output) {
    show_roster_upto(client, out, ROSTER_SHOWN);
}

pub fn show_roster_upto(client: &Client, out: &Output, shown: usize) {
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

pub fn show_sessions(list: &[DirectoryEntry], out: &Output) {
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

pub fn session_label(id: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("session {} ({id})", clean(n)),
        None => format!("session {id}"),
    }
}
