//! What the terminal program prints: events become lines in [`print_events`], in the order
//! they came; the answers of commands are shaped here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::complete::Names;
use super::output::Output;
use super::text::clean;
use confab::client::{Client, Event, Joined};
use confab::protocol::{ChatLine, DirectoryEntry};

/// Roster lines printed at most; the rest are summarised.
const ROSTER_SHOWN: usize = 20;

/// What the printer and the commands share about the screen.
#[derive(Default)]
pub struct Shown {
    /// Sequence number of the earliest group line shown, so /history pages further back.
    pub earliest: AtomicU64,
    /// Whether the person asked for history (and so wants to hear if there is none).
    pub asked: AtomicBool,
    /// When each member was seen arriving (lowercase name); `None`: already there when we
    /// joined. For /whois.
    pub arrived: Mutex<HashMap<String, Option<DateTime<Utc>>>>,
}

impl Shown {
    fn arrived(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Option<DateTime<Utc>>>> {
        self.arrived.lock()
    }
}

/// Shows events as they come, in the order they came, until `finish` (then what is queued
/// already is shown too). While `joining` is true, the session's events wait, so that a join
/// shows "joined" first, then the roster, then the history; private messages do not wait.
pub async fn print_events(
    client: Client,
    mut events: mpsc::Receiver<Event>,
    out: Output,
    (shown, names): (Arc<Shown>, Names),
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
        names.members(&client);
        out.prompt(prompt_for(&client));
    }
    for event in held {
        show_event(&client, &out, &shown, event);
    }
}

/// `[lobby 5] > ` in a session, `[no session] > ` outside.
pub fn prompt_for(client: &Client) -> String {
    match client.session() {
        Some(s) => {
            let id = s.id.to_string();
            let name = s.name.as_deref().map_or_else(|| id[..8].to_string(), clean);
            format!("[{name} {}] > ", client.member_count())
        }
        None => "[no session] > ".into(),
    }
}

/// Whether `text` names `me` as a word (`bob`, `@bob`, `Bob:`), whatever the case.
pub fn mentions(text: &str, me: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .any(|word| word.trim_end_matches('.').eq_ignore_ascii_case(me))
}

/// A group line as shown: `<nick> text` (`* nick text` for `/me`); one's own dimmed, one that
/// mentions us highlighted, with a bell when it is `live` (not history).
pub fn said(client: &Client, out: &Output, line: &ChatLine, live: bool) {
    let style = out.style();
    let alert = |text: &str| match live {
        true => style.alert(text),
        false => style.highlight(text),
    };
    let (from, text) = (clean(&line.from), clean(&line.text));
    let mine = line.from.eq_ignore_ascii_case(client.user());
    let body = match text.strip_prefix("/me ") {
        Some(action) if mine => style.dim(&format!("* {from} {action}")),
        Some(action) if mentions(action, client.user()) => alert(&format!("* {from} {action}")),
        Some(action) => format!("* {} {action}", style.nick(&from)),
        None if mine => style.dim(&format!("<{from}> {text}")),
        None if mentions(&text, client.user()) => alert(&format!("<{from}> {text}")),
        None => format!("<{}> {text}", style.nick(&from)),
    };
    out.stamped(line.time, &body);
}

fn show_event(client: &Client, out: &Output, shown: &Shown, event: Event) {
    let style = out.style();
    match event {
        Event::Message(l) => {
            let _ = shown
                .earliest
                .compare_exchange(0, l.seq, Ordering::Relaxed, Ordering::Relaxed);
            said(client, out, &l, true);
        }
        Event::History(lines) => {
            let asked = shown.asked.swap(false, Ordering::Relaxed);
            let Some(first) = lines.first() else {
                // On joining an empty session there is nothing to say.
                if asked {
                    out.notice("no earlier messages");
                }
                return;
            };
            let seq = first.seq;
            let _ = shown
                .earliest
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                    (e == 0 || seq < e).then_some(seq)
                });
            out.notice(&format!("{} earlier message(s):", lines.len()));
            for l in &lines {
                said(client, out, l, false);
            }
        }
        Event::Presence {
            joined,
            left,
            member_count,
            members,
        } => {
            if joined.is_empty() && left.is_empty() {
                out.notice(&format!("{member_count} members"));
                return;
            }
            let now = Utc::now();
            // Departures first: a user in both lists left and came back.
            for d in &left {
                shown.arrived().remove(&d.user.to_lowercase());
                let text = format!("* {} {}", clean(&d.user), d.reason);
                out.stamped(now, &style.notice(&text));
            }
            for m in &joined {
                shown.arrived().insert(m.user.to_lowercase(), Some(now));
                let text = format!("* {} joined ({})", clean(&m.user), endpoint(m.udp));
                out.stamped(now, &style.notice(&text));
            }
            // The roster as of this notice, not as of now: later notices may be applied already.
            show_members(&members, member_count, out, ROSTER_SHOWN);
        }
        Event::Private {
            from, time, text, ..
        } => {
            let body = format!("[private] {} → you: {}", clean(&from), clean(&text));
            out.stamped(time, &style.alert(&body));
        }
        Event::PeerKeyChanged { user, pinned, now } => {
            let user = clean(&user);
            out.error(&format!(
                "WARNING: {user}'s identity key has changed: pinned {pinned}, now {now}. It may \
                 be someone else, or the server may be lying. Compare it with {user} by other \
                 means (/whois {user}); nothing is sent to {user} until you /trust {user}."
            ));
        }
        Event::ServerError(e) => {
            if e.code == confab::protocol::ErrorCode::Gap {
                // The replay that follows starts after the gap: page back from there.
                shown.earliest.store(0, Ordering::Relaxed);
            }
            out.error(&clean(&e.message));
        }
        Event::Disconnected {
            reason,
            retrying,
            unsent,
        } => {
            out.error(&format!(
                "disconnected from the session: {}{}",
                clean(&reason),
                if retrying { "; reconnecting…" } else { "" }
            ));
            // Nothing said may vanish unseen: what the session may not have had is shown.
            for text in unsent {
                out.error(&format!("not sent: {}", clean(&text)));
            }
        }
        Event::Reconnected {
            members,
            member_count,
        } => {
            out.notice("reconnected; missed messages follow");
            show_members(&members, member_count, out, ROSTER_SHOWN);
        }
        Event::DeliveredLate { time, to, text, .. } => {
            let body = format!(
                "[private] you → {}: {} (delivered late, after it was reported not delivered)",
                clean(&to),
                clean(&text)
            );
            out.stamped(time, &style.dim(&body));
        }
        Event::Closed { session, by } => {
            let label = session.name.unwrap_or_else(|| session.id.to_string());
            let by = by.map_or(String::new(), |b| format!(" by {}", clean(&b)));
            out.notice(&format!("session {} was closed{by}", clean(&label)));
        }
    }
}

/// Shows a join's answer and roster, and notes who was there already (for /whois).
pub fn show_joined(client: &Client, joined: &Joined, out: &Output, shown: &Shown) {
    let s = &joined.session;
    {
        let mut arrived = shown.arrived();
        arrived.clear();
        for m in &joined.members {
            arrived.insert(m.user.to_lowercase(), None);
        }
    }
    out.notice(&format!(
        "joined {} at {} as {} (udp {})",
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
    show_members(&client.members(), client.member_count(), out, shown);
}

/// Shows a roster: up to `shown` names, or only the count in a large session.
fn show_members(members: &[confab::protocol::Member], count: usize, out: &Output, shown: usize) {
    if members.len() < count {
        // A large session: the server sends counts, not names.
        out.line(out.style().notice(&format!(
            "  {count} members (a large session: members are looked up when you write to them)"
        )));
        return;
    }
    let mut text = format!("  members ({}):", members.len());
    for m in members.iter().take(shown) {
        text.push_str(&format!(" {} {},", clean(&m.user), endpoint(m.udp)));
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
    out.line(out.style().notice(&text));
}

pub fn show_sessions(list: &[DirectoryEntry], out: &Output) {
    if list.is_empty() {
        out.notice("no sessions; /start [name] makes one");
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

/// Where a member takes private messages, for the screen.
pub(crate) fn endpoint(udp: Option<std::net::SocketAddr>) -> String {
    udp.map_or_else(|| "no private messages".to_string(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::mentions;

    #[test]
    fn a_mention_is_the_name_as_a_word() {
        assert!(mentions("hey bob, look", "bob"));
        assert!(mentions("@Bob: look", "bob"));
        assert!(mentions("thanks bob.", "bob"));
        assert!(!mentions("bobby is here", "bob"));
        assert!(!mentions("kebob", "bob"));
    }
}
