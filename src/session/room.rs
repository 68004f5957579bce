//! The room: one task that owns a session's members and its order of messages.
//!
//! Member handlers never touch each other; they send [`RoomEvent`]s here. Because one task applies
//! every join, leave and line, all members see the same order, and no lock is ever held across an
//! `.await`. Broadcasts are encoded once and the same `Bytes` go to every member's queue; a queue
//! past its mark holds the senders back (`gate.rs`), and only a member that does not drain for the
//! drain timeout, or passes its byte budget, is dropped.
//!
//! The room keeps the actor's state and its sending; plain parts it owns do the rest:
//! `history.rs` the lines in memory (paging, replays, gaps), `presence.rs` the batching and
//! throttling of joins and leaves (at most a few notices a second, each the net of what changed,
//! however fast members churn). New members get their welcome at a flush, and their `hello` is
//! answered only then, so everyone's picture of the roster changes at the same point in the order.

use futures::future::BoxFuture;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::expiring::ExpiringMap;
use crate::protocol::{
    ByeReason, ChatLine, ErrorBody, ErrorCode, LeaveReason, Member, RateLimit, ServerMsg, limits,
};

use super::events::{ConnId, JoinRequest, Replay, RoomEvent};
use super::gate::Gate;
use super::history::{self, Page, Recent};
use super::members::{MemberSlot, Members};
use super::outbox::{Full, Line, Outbox, shared};
use super::presence::{Notice, Presence};
use super::{Committed, SessionConfig, Stop};
use crate::bucket::TokenBucket;

/// A member admitted to the room but not yet welcomed.
struct Pending {
    conn: ConnId,
    replay: Replay,
    older: Vec<ChatLine>,
    reply: oneshot::Sender<Result<(), ErrorBody>>,
}

/// Most events applied before presence is flushed, so a flood cannot postpone notices forever.
const BATCH: usize = 512;
/// Most bytes of one answer: the missed lines replayed to a rejoining member (older ones are left
/// to `history`), or one `history` answer (older lines are left to the next request). At most
/// half the member's byte budget, so that an answer always leaves room for live lines.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// How often the room looks for members that have gone silent.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Longest shutdown waits for the store to write lines members have not been sent yet.
const SHUTDOWN_WRITE_WAIT: Duration = Duration::from_secs(5);
/// How long, and for how many lines, resent lines are recognised.
const LINE_ID_TTL: Duration = Duration::from_secs(3600);
const LINE_ID_CAP: usize = 100_000;

pub(crate) struct Room {
    config: Arc<SessionConfig>,
    members: Members,
    /// The newest lines and the order's sequence number.
    recent: Recent,
    /// Joined since the last flush: they get a welcome then, and their hello is answered.
    pending_joined: Vec<Pending>,
    /// Joins and leaves since the last flush, and when the next may go.
    presence: Presence,
    /// Line ids seen per sender, to drop lines a reconnecting client resends.
    line_ids: ExpiringMap<(Arc<str>, u64), ()>,
    /// The room's own inbox, for work finished elsewhere (reads from storage) to come back in
    /// order. Weak, so it does not keep the room alive.
    self_tx: mpsc::WeakSender<RoomEvent>,
    /// Closed by members' queues past their mark; the room only reads it (see `gate.rs`).
    gate: Arc<Gate>,
    /// How far the store has written this session's lines (none without a store).
    committed: Option<Committed>,
    /// Lines in the order but not yet written, oldest first: members get each once it is
    /// stored, so that a line anyone has seen outlives a crash of this process.
    unwritten: VecDeque<ChatLine>,
    /// Members who said `leave` while lines were being written, and the newest of those lines:
    /// their goodbye comes after the echo of everything they sent.
    leaving: Vec<(ConnId, u64)>,
    /// A line the store had no room for yet: the room takes nothing more until it is queued
    /// (see `HistoryStore::append`), so the lines go to the store in order and a store that
    /// falls behind holds the senders back instead of losing lines.
    stalled: Option<BoxFuture<'static, ()>>,
}

impl Room {
    pub(crate) fn new(
        config: Arc<SessionConfig>,
        seq: u64,
        recent: Vec<ChatLine>,
        self_tx: mpsc::WeakSender<RoomEvent>,
        gate: Arc<Gate>,
    ) -> Self {
        let config_recent = config.recent_messages;
        let committed = config.history.is_some().then(|| Committed::new(seq));
        let mut line_ids = ExpiringMap::new(LINE_ID_TTL, LINE_ID_CAP);
        for line in &recent {
            if let Some(id) = line.id {
                line_ids.insert((Arc::from(line.from.as_str()), id), ());
            }
        }
        Self {
            line_ids,
            self_tx,
            gate,
            config,
            members: Members::default(),
            recent: Recent::new(seq, recent, config_recent),
            pending_joined: Vec::new(),
            presence: Presence::default(),
            committed,
            unwritten: VecDeque::new(),
            leaving: Vec::new(),
            stalled: None,
        }
    }

    /// Runs until shutdown, or until the room has been empty for the idle timeout.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<RoomEvent>, stop: Stop) {
        let idle = self.config.idle_timeout;
        let mut count_tick = tokio::time::interval(limits::LARGE_PRESENCE_INTERVAL);
        count_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep_tick = tokio::time::interval(SWEEP_EVERY);
        sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut written = self.committed.as_ref().map(Committed::subscribe);
        // The stalled append (see `Room::stalled`), moved here for the select to wait on.
        let mut stalled: Option<BoxFuture<'static, ()>> = None;
        loop {
            let idle_sleep = idle_deadline(self.members.is_empty(), idle);
            let event = tokio::select! {
                () = async { stalled.as_mut().expect("checked").await }, if stalled.is_some() => {
                    stalled = None;
                    continue;
                }
                event = rx.recv(), if stalled.is_none() => event,
                upto = wait_written(&mut written), if !self.unwritten.is_empty() => {
                    self.release(upto);
                    continue;
                }
                _ = count_tick.tick(), if self.presence.count_dirty() => {
                    self.flush_count();
                    continue;
                }
                _ = sweep_tick.tick(), if !self.members.is_empty() => {
                    self.sweep_silent();
                    self.flush_presence(false);
                    continue;
                }
                () = self.presence.flush_due() => {
                    self.flush_presence(false);
                    continue;
                }
                _ = idle_sleep => {
                    tracing::info!(session = %self.config.id, "closing idle session");
                    break;
                }
                _ = stop.shutdown.cancelled() => {
                    // What members already sent is still applied (and stored) before goodbye.
                    let _ = tokio::time::timeout(SHUTDOWN_WRITE_WAIT, async {
                        if let Some(wait) = stalled.take() {
                            wait.await;
                        }
                        while let Ok(event) = rx.try_recv() {
                            self.apply(event);
                            if let Some(wait) = self.stalled.take() {
                                wait.await;
                            }
                        }
                    })
                    .await;
                    // And sent, once written (a store that takes longer than this still
                    // writes them; members get them when they come back).
                    let _ = tokio::time::timeout(SHUTDOWN_WRITE_WAIT, async {
                        while !self.unwritten.is_empty() {
                            let upto = wait_written(&mut written).await;
                            self.release(upto);
                        }
                    })
                    .await;
                    self.flush_presence(true);
                    self.close_all(ByeReason::Shutdown, "the server is shutting down", None);
                    break;
                }
                _ = stop.close.cancelled() => {
                    let by = stop.closed_by.get().cloned();
                    let message = match &by {
                        Some(user) => format!("this session was closed by {user}"),
                        None => "this session was closed by its creator".to_string(),
                    };
                    self.close_all(ByeReason::Closed, &message, by);
                    break;
                }
            };
            let Some(event) = event else { break };
            self.apply(event);
            for _ in 1..BATCH {
                if self.stalled.is_some() {
                    break;
                }
                match rx.try_recv() {
                    Ok(event) => self.apply(event),
                    Err(_) => break,
                }
            }
            stalled = self.stalled.take();
            self.flush_presence(false);
        }
    }

    fn apply(&mut self, event: RoomEvent) {
        match event {
            RoomEvent::Join(request) => self.begin_join(request),
            RoomEvent::CaughtUp(request, older) => self.finish_join(request, older),
            RoomEvent::Say { conn, text, id } => self.say(conn, text, id),
            RoomEvent::History {
                conn,
                before,
                limit,
            } => self.history(conn, before, limit),
            RoomEvent::HistoryRead { conn, messages } => self.answer_history(conn, messages),
            RoomEvent::Leave { conn, reason } => match self.unwritten.back() {
                Some(last) if reason == LeaveReason::Left => self.leaving.push((conn, last.seq)),
                _ => self.leave(conn, reason),
            },
            RoomEvent::Lookup { conn, user } => {
                let member = self.members.named(&user).map(MemberSlot::member);
                self.send_to(conn, shared(&ServerMsg::Member { user, member }));
            }
            RoomEvent::Relay { conn, to, data } => self.relay(conn, &to, data),
        }
    }

    /// Forwards a sealed private datagram, as UDP would: within the sender's rate limit, to a
    /// member present, if its queue has room; otherwise dropped without a word (the sender's
    /// retries and acknowledgements sort it out). Nothing is kept.
    fn relay(&mut self, conn: ConnId, to: &str, data: String) {
        let Some(sender) = self.members.get_mut(conn) else {
            return;
        };
        if sender.bucket.take().is_err() {
            return;
        }
        let from = sender.user.to_string();
        if let Some(recipient) = self.members.named(to) {
            let _ = recipient
                .tx
                .try_send(shared(&ServerMsg::Relayed { from, data }));
        }
    }

    /// A rejoin that missed lines memory no longer holds waits (outside the room) for storage to
    /// give them back; everyone else joins at once. The lines that arrive meanwhile are in memory
    /// and follow in order, so the member sees no gap.
    fn begin_join(&mut self, mut request: JoinRequest) {
        // A `since` from the future (or u64::MAX from a hostile client) means "nothing missed".
        request.replay.since = request.replay.since.map(|s| s.min(self.recent.seq()));
        let wanted = request.replay.since.and_then(|s| self.recent.catch_up(s));
        match (wanted, &self.config.history) {
            (Some((below, missed)), Some(store)) => {
                let fetch = store.before(self.config.id, below, missed);
                let me = self.self_tx.clone();
                tokio::spawn(async move {
                    let older = fetch.await;
                    if let Some(room) = me.upgrade() {
                        let _ = room.send(RoomEvent::CaughtUp(request, older)).await;
                    }
                });
            }
            _ => self.finish_join(request, Vec::new()),
        }
    }

    fn finish_join(&mut self, request: JoinRequest, older: Vec<ChatLine>) {
        let JoinRequest {
            conn,
            user,
            udp,
            key,
            local,
            replay,
            tx,
            kick,
            reply,
        } = request;
        // Waiting for storage is not the member's silence.
        tx.heard();
        match self.join(conn, user, (udp, key, local), tx, kick) {
            // Answered with the welcome, at the next flush.
            Ok(()) => self.pending_joined.push(Pending {
                conn,
                replay,
                older,
                reply,
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn join(
        &mut self,
        conn: ConnId,
        user: String,
        (udp, key, local): (Option<SocketAddr>, Option<Arc<str>>, Box<[SocketAddr]>),
        tx: Arc<Outbox>,
        kick: CancellationToken,
    ) -> Result<(), ErrorBody> {
        let user: Arc<str> = user.into();
        let limits = &self.config.member_limits;
        let bucket = TokenBucket::new(limits.rate, limits.burst);
        let slot = MemberSlot::new(user.clone(), udp, (key, local), tx, kick, bucket);
        let member = slot.member();
        self.members.add(conn, slot, self.config.max_members)?;
        if let Some(obs) = &self.config.observer {
            obs.member_joined(self.config.id, &member);
        }
        tracing::info!(session = %self.config.id, user = %user, udp = ?udp, "member joined");
        self.presence.joined(&user.to_lowercase(), member);
        Ok(())
    }

    fn leave(&mut self, conn: ConnId, reason: LeaveReason) {
        let Some(slot) = self.members.remove(conn) else {
            return;
        };
        if reason == LeaveReason::Left {
            // Through the room, so it comes after every line the member sent before leaving.
            let _ = slot.tx.try_send(shared(&ServerMsg::Bye {
                reason: ByeReason::Left,
                message: "you left the session".into(),
                by: None,
            }));
        }
        if let Some(log) = &self.config.presence_log
            && slot.welcomed
        {
            let reason = match reason {
                LeaveReason::Left => "left",
                LeaveReason::Disconnected => "disconnected",
                LeaveReason::TooSlow => "too_slow",
            };
            log.left(&self.config.label(), &slot.user, reason);
        }
        if let Some(obs) = &self.config.observer {
            obs.member_left(self.config.id, &slot.user);
        }
        tracing::info!(session = %self.config.id, user = %slot.user, ?reason, "member left");
        if reason == LeaveReason::TooSlow {
            slot.kick.cancel();
        }
        // The writer sends what is queued (the goodbye last) and ends.
        slot.tx.close();
        if let Some(i) = self.pending_joined.iter().position(|p| p.conn == conn) {
            // Never welcomed: its hello goes unanswered, and the connection closes.
            self.pending_joined.swap_remove(i);
        }
        self.presence
            .left(&slot.user.to_lowercase(), slot.member(), reason);
    }

    fn say(&mut self, conn: ConnId, text: String, id: Option<u64>) {
        let Some(slot) = self.members.get_mut(conn) else {
            return;
        };
        let user = slot.user.clone();
        if let Some(id) = id
            && self.line_ids.get(&(user.clone(), id)).is_some()
        {
            return; // a resend of a line already in the order: free, and dropped
        }
        if let Err(wait) = slot.bucket.take() {
            let limits = &self.config.member_limits;
            let msg = format!(
                "slow down: at most {} messages per second (burst {}); try again in {} ms; this message was not sent",
                limits.rate.unwrap_or_default(),
                limits.burst,
                wait.as_millis()
            );
            let _ = slot.tx.try_send(shared(&ServerMsg::Error(ErrorBody::new(
                ErrorCode::RateLimited,
                msg,
            ))));
            return;
        }
        if let Some(id) = id {
            self.line_ids.insert((user.clone(), id), ());
        }
        let line = self.recent.assign(user.to_string(), text, id);
        match (&self.config.history, &self.committed) {
            // Sent once stored (see `release`).
            (Some(store), Some(done)) => {
                self.stalled = store.append(self.config.id, &line, done);
                self.unwritten.push_back(line);
            }
            _ => self.send_line(line),
        }
    }

    /// Sends the lines the store has written, up to `upto`, in their order.
    fn release(&mut self, upto: u64) {
        while self.unwritten.front().is_some_and(|l| l.seq <= upto) {
            let line = self.unwritten.pop_front().expect("just looked");
            let seq = line.seq;
            self.send_line(line);
            while let Some(i) = self.leaving.iter().position(|(_, last)| *last <= seq) {
                let (conn, _) = self.leaving.swap_remove(i);
                self.leave(conn, LeaveReason::Left);
            }
        }
    }

    /// Puts a line in the room's memory and sends it to every member. Members not yet welcomed
    /// do not get it: their welcome's `seq` and history will.
    fn send_line(&mut self, line: ChatLine) {
        let line = self.recent.keep(line);
        let bytes = shared(&ServerMsg::Msg(line.clone()));
        self.broadcast(&bytes, |_| true);
    }

    fn history(&mut self, conn: ConnId, before: Option<u64>, limit: usize) {
        let store = self.config.history.as_ref();
        match self.recent.page(before, limit, store.is_some()) {
            Page::Ready(messages) => self.answer_history(conn, messages),
            // Older than memory reaches: ask the store, answer when it has looked (through the
            // room, which keeps the member's budget).
            Page::NeedsStorage {
                mut have,
                older_than,
                missing,
            } => {
                let store = store.expect("a page needs storage only when there is one");
                let fetch = store.before(self.config.id, older_than, missing);
                let me = self.self_tx.clone();
                tokio::spawn(async move {
                    let mut messages = fetch.await;
                    messages.append(&mut have);
                    if let Some(room) = me.upgrade() {
                        let _ = room.send(RoomEvent::HistoryRead { conn, messages }).await;
                    }
                });
            }
        }
    }

    /// Sends a history answer: the newest of `messages` that fit in one answer.
    fn answer_history(&mut self, conn: ConnId, mut messages: Vec<ChatLine>) {
        history::fit(&mut messages, self.answer_cap());
        self.answer_to(conn, shared(&ServerMsg::History { messages }));
    }

    /// The most bytes one answer (a replay or a history page) may take.
    fn answer_cap(&self) -> usize {
        MAX_ANSWER_BYTES.min(self.config.member_budget / 2)
    }

    /// Sends a rejoining member the lines it missed, as ordinary `msg` lines in their place in the
    /// order (the client drops any it already has), and says how many it cannot have.
    fn replay_after(&mut self, conn: ConnId, since: u64, older: &[ChatLine]) {
        let replay = self.recent.replay(since, older, self.answer_cap());
        if replay.missed > 0 {
            let notice = ErrorBody::new(
                ErrorCode::Gap,
                format!(
                    "{} earlier message(s) are not replayed; use history to read them",
                    replay.missed
                ),
            );
            self.send_to(conn, shared(&ServerMsg::Error(notice)));
        }
        if let Some(bytes) = replay.bytes {
            // One queue entry for the whole replay: it must not look like a backlog.
            self.answer_to(conn, Line::new(bytes));
        }
    }

    /// Pings the quiet, and drops members that sent nothing, not even a ping, within the
    /// heartbeat limit (their process died without closing the socket, or the path to them is
    /// gone) and members whose queue stayed past its mark for the drain timeout (they hold every
    /// sender back, and one that cannot catch up in that time is not going to).
    fn sweep_silent(&mut self) {
        let found = self
            .members
            .sweep(&self.config.member_limits, self.gate.open_for_ms());
        for conn in found.stuck {
            tracing::info!(
                session = %self.config.id,
                conn,
                "dropping a member whose queue did not drain within the drain timeout"
            );
            self.leave(conn, LeaveReason::TooSlow);
        }
        for conn in found.silent {
            if let Some(slot) = self.members.get(conn) {
                let _ = slot.tx.try_send(shared(&ServerMsg::Bye {
                    reason: ByeReason::Silent,
                    message: "no message or ping within the heartbeat limit".into(),
                    by: None,
                }));
            }
            // Closing the queue lets the writer send the goodbye and end, which ends the reader.
            self.leave(conn, LeaveReason::Disconnected);
        }
    }

    /// Whether the session is past the size where rosters are sent whole.
    fn large(&self) -> bool {
        self.members.len() > self.config.full_roster_max
    }

    /// Welcomes the members that joined and tells the others what changed, unless the last
    /// flush was less than `presence::PRESENCE_INTERVAL` ago (then one is due at the end of it) and not
    /// `now`.
    fn flush_presence(&mut self, now: bool) {
        if !self
            .presence
            .may_flush(!self.pending_joined.is_empty(), now)
        {
            return;
        }
        let joiners = std::mem::take(&mut self.pending_joined);
        let changes = self.presence.take();
        let large = self.large();
        let mut new = HashSet::new();
        if !joiners.is_empty() {
            let welcome = self.welcome(!large);
            for Pending {
                conn,
                replay,
                older,
                reply,
            } in joiners
            {
                let Some(slot) = self.members.get_mut(conn) else {
                    continue;
                };
                slot.welcomed = true;
                slot.tx.heard();
                // Logged once welcomed: a hello never answered is no visit, and gets no `left`.
                if let Some(log) = &self.config.presence_log {
                    log.joined(&self.config.label(), &slot.user, slot.udp);
                }
                new.insert(conn);
                self.send_to(conn, welcome.clone());
                if let Some(since) = replay.since {
                    self.replay_after(conn, since, &older);
                } else if let Some(last) = replay.last {
                    self.history(conn, None, last);
                }
                if reply.send(Ok(())).is_err() {
                    // Its handler is gone (the server is stopping): nobody will read for it.
                    self.leave(conn, LeaveReason::Disconnected);
                }
            }
        }
        let notice = match self.presence.notice(large, changes) {
            // Counts only, and at most every LARGE_PRESENCE_INTERVAL: see `flush_count`.
            Notice::Nothing => return,
            // Everyone gets the whole roster again (clients take a welcome mid-stream as a
            // fresh roster).
            Notice::Roster => self.welcome(true),
            Notice::Changes(joined, left) => {
                let joined: Vec<Member> = joined
                    .into_iter()
                    .filter(|m| self.members.named(&m.user).is_some())
                    .collect();
                if joined.is_empty() && left.is_empty() {
                    return;
                }
                shared(&ServerMsg::Presence {
                    joined,
                    left,
                    member_count: self.members.len(),
                })
            }
        };
        self.broadcast(&notice, |conn| !new.contains(&conn));
    }

    /// The welcome as it stands now; without the roster in a large session.
    fn welcome(&self, with_roster: bool) -> Line {
        let members = match with_roster {
            true => self.members.iter().map(|(_, s)| s.member()).collect(),
            false => Vec::new(),
        };
        shared(&ServerMsg::Welcome {
            session: self.config.id,
            name: self.config.name.clone(),
            members,
            member_count: self.members.len(),
            seq: self.recent.seq(),
            rate_limit: self.config.member_limits.rate.map(|per_second| RateLimit {
                per_second,
                burst: self.config.member_limits.burst as u32,
            }),
        })
    }

    /// Tells every member of a large session how many are present now.
    fn flush_count(&mut self) {
        self.presence.count_told();
        let notice = shared(&ServerMsg::Presence {
            joined: Vec::new(),
            left: Vec::new(),
            member_count: self.members.len(),
        });
        self.broadcast(&notice, |_| true);
    }

    /// Queues `bytes` for every member that `to` selects, dropping members whose queue is full.
    fn broadcast(&mut self, bytes: &Line, to: impl Fn(ConnId) -> bool) {
        let mut slow = Vec::new();
        for (&conn, slot) in self.members.iter() {
            if !slot.welcomed || !to(conn) {
                continue;
            }
            if slot.tx.try_send(bytes.clone()).is_err() {
                slow.push(conn);
            }
        }
        for conn in slow {
            self.leave(conn, LeaveReason::TooSlow);
        }
    }

    fn send_to(&mut self, conn: ConnId, bytes: impl Into<Line>) {
        let bytes = bytes.into();
        let full = match self.members.get(conn) {
            Some(slot) => matches!(slot.tx.try_send(bytes), Err(Full)),
            None => false,
        };
        if full {
            self.leave(conn, LeaveReason::TooSlow);
        }
    }

    /// Like `send_to`, for the answer to a request: the member's next request waits for it.
    fn answer_to(&mut self, conn: ConnId, bytes: Line) {
        let full = match self.members.get(conn) {
            Some(slot) => matches!(slot.tx.try_send_answer(bytes), Err(Full)),
            None => false,
        };
        if full {
            self.leave(conn, LeaveReason::TooSlow);
        }
    }

    fn close_all(&mut self, reason: ByeReason, message: &str, by: Option<String>) {
        let bye = shared(&ServerMsg::Bye {
            reason,
            message: message.to_string(),
            by,
        });
        let label = self.config.label();
        let log = self.config.presence_log.clone();
        for slot in self.members.drain() {
            let _ = slot.tx.try_send(bye.clone());
            slot.tx.close();
            if let Some(log) = &log
                && slot.welcomed
            {
                let why = match reason {
                    ByeReason::Closed => "closed",
                    _ => "shutdown",
                };
                log.left(&label, &slot.user, why);
            }
        }
    }
}

/// The newest sequence number the store has written, once it moves (never without a store).
async fn wait_written(written: &mut Option<tokio::sync::watch::Receiver<u64>>) -> u64 {
    match written {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The store is gone: nothing more will be written, so nothing is held back.
                return u64::MAX;
            }
            *rx.borrow_and_update()
        }
        None => std::future::pending().await,
    }
}

async fn idle_deadline(empty: bool, idle: Duration) {
    if empty {
        tokio::time::sleep(idle).await
    } else {
        std::future::pending().await
    }
}
