//! Group messages: `fanout` (one session, everyone hears every sender) and `sessions` (many such
//! rooms at once, to see the server spread over its cores).
//!
//! Each message's text is `"<sender> <index> <send-nanos>"`; a receiver checks, per sender, that
//! it saw every index exactly once and in increasing order, and times each from its send instant.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::stats::{Histogram, LatencySummary};
use super::{
    BenchEnv, BenchError, CONNECT_CONCURRENCY, Entry, Member, ProcUsage, Progress, Result, Server,
    connect_member, run_tag,
};
use crate::client::{Client, Event};

/// What a group-message run does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutOpts {
    /// Sessions at once; each gets the same members and senders.
    pub sessions: usize,
    /// Members per session.
    pub members: usize,
    /// Members per session that send (the first ones); every member receives.
    pub senders: usize,
    /// Messages each sender sends.
    pub messages: usize,
    /// Messages per second per sender; `None` sends as fast as the server keeps up.
    pub rate: Option<f64>,
    /// Most messages one sender has on the way (sent, not yet back to itself); 0 for no limit.
    ///
    /// Nothing in the protocol slows a sender down for the sake of slow receivers: the server
    /// drops a member whose queue (4096 lines) overflows. Unlimited senders at full speed thus
    /// measure how many members get dropped, not throughput; a window keeps the run closed-loop,
    /// as a real sender that waits to see its own line would be.
    pub window: usize,
}

impl Default for FanoutOpts {
    /// The fanout case: 50 members, all sending 200 messages, at full speed.
    fn default() -> Self {
        Self {
            sessions: 1,
            members: 50,
            senders: 50,
            messages: 200,
            rate: None,
            window: 64,
        }
    }
}

/// One sender's messages as all receivers together saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SenderStats {
    /// Session index.
    pub session: usize,
    /// Sender index within the session.
    pub sender: usize,
    /// Messages it sent.
    pub sent: u64,
    /// (receiver, message) pairs that never arrived.
    pub lost: u64,
    /// Extra copies received.
    pub duplicated: u64,
    /// Messages that arrived after a later message of the same sender.
    pub out_of_order: u64,
}

/// The figures of one group-message run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutReport {
    /// `fanout` or `sessions`.
    pub scenario: String,
    /// Where the server ran.
    pub server: String,
    /// What was asked.
    pub opts: FanoutOpts,
    /// Deliveries that should happen: sessions × senders × messages × members.
    pub expected: u64,
    /// Deliveries that happened (duplicates included).
    pub delivered: u64,
    /// Seconds to connect every member and see full rosters.
    pub setup_secs: f64,
    /// Seconds from the first send to the last delivery.
    pub secs: f64,
    /// Deliveries per second over `secs`.
    pub deliveries_per_sec: f64,
    /// Messages accepted by the server per second over `secs`.
    pub messages_per_sec: f64,
    /// Send to receive.
    pub latency: LatencySummary,
    /// Sum over senders.
    pub lost: u64,
    /// Sum over senders.
    pub duplicated: u64,
    /// Sum over senders.
    pub out_of_order: u64,
    /// Members whose connection ended during the run (dropped as too slow, for instance).
    pub disconnected: u64,
    /// Error lines from the server (a rate limit left on, say).
    pub server_errors: u64,
    /// `say` calls that failed.
    pub send_failures: u64,
    /// Receivers that gave up waiting at the timeout.
    pub timed_out_receivers: u64,
    /// Per sender, in session and sender order.
    pub per_sender: Vec<SenderStats>,
    /// Server CPU seconds spent during the sending phase, and its memory (child process only).
    pub server_usage: Option<ProcUsage>,
    /// CPU seconds of the benchmark process during the sending phase.
    pub bench_cpu_secs: Option<f64>,
}

impl FanoutReport {
    /// True when every message reached every member once, in order.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.delivered == self.expected
            && self.disconnected == 0
            && self.send_failures == 0
    }
}

/// One session, all members hearing all senders.
pub async fn fanout(env: &BenchEnv, opts: &FanoutOpts) -> Result<FanoutReport> {
    run("fanout", env, opts).await
}

/// Many sessions at once.
pub async fn sessions(env: &BenchEnv, opts: &FanoutOpts) -> Result<FanoutReport> {
    run("sessions", env, opts).await
}

async fn run(scenario: &str, env: &BenchEnv, opts: &FanoutOpts) -> Result<FanoutReport> {
    let opts = FanoutOpts {
        senders: opts.senders.min(opts.members),
        ..opts.clone()
    };
    let server = Server::start(&env.server).await?;
    let result = run_on(scenario, env, &opts, &server).await;
    server.stop().await;
    result
}

async fn run_on(
    scenario: &str,
    env: &BenchEnv,
    opts: &FanoutOpts,
    server: &Server,
) -> Result<FanoutReport> {
    let setup_start = Instant::now();
    let rooms = connect_rooms(env, server, opts.sessions, opts.members).await?;
    let setup_secs = setup_start.elapsed().as_secs_f64();

    let expected_per_receiver = (opts.senders * opts.messages) as u64;
    let total = expected_per_receiver * (opts.sessions * opts.members) as u64;
    let progress = Progress::start(env.progress, scenario, total);
    let delivered = progress.counter();
    let epoch = Instant::now();
    let deadline = tokio::time::Instant::now() + env.timeout;
    let server_before = server.usage();
    let bench_before = ProcUsage::own();

    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut clients = Vec::new();
    let senders_done = CancellationToken::new();
    for (s, room) in rooms.into_iter().enumerate() {
        for (i, member) in room.into_iter().enumerate() {
            let Member { client, events } = member;
            let window = (i < opts.senders && opts.window > 0)
                .then(|| Arc::new(Semaphore::new(opts.window)));
            let listen = Listen {
                senders: opts.senders,
                messages: opts.messages,
                epoch,
                deadline,
                delivered: delivered.clone(),
                own: window.clone().map(|w| (i, w)),
                senders_done: senders_done.clone(),
            };
            receivers.push(tokio::spawn(receive(events, listen)));
            if i < opts.senders {
                // Senders at a fixed rate start spread over one period, as independent people
                // would; all ticking at the same instant would measure a burst, not a rate.
                let offset = opts.rate.map_or(Duration::ZERO, |r| {
                    Duration::from_secs_f64(i as f64 / opts.senders as f64 / r)
                });
                senders.push(tokio::spawn(send(
                    client.clone(),
                    (s, i),
                    opts.messages,
                    (opts.rate, offset, window),
                    epoch,
                    deadline,
                )));
            }
            // Receivers hold the event stream; the client must live until they are done.
            clients.push(client);
        }
    }

    let mut send_failures = 0;
    let mut sent = vec![vec![0u64; opts.senders]; opts.sessions];
    for task in senders {
        let (s, i, n, failed) = task.await.expect("sender task does not panic");
        sent[s][i] = n;
        send_failures += failed;
    }
    senders_done.cancel();
    let mut tally = Tally::new(opts.senders, opts.messages);
    let mut per_session = vec![Tally::new(opts.senders, opts.messages); opts.sessions];
    for (n, task) in receivers.into_iter().enumerate() {
        let t = task.await.expect("receiver task does not panic");
        per_session[n / opts.members].merge_counts(&t);
        tally.merge(t);
    }
    progress.finish().await;
    let server_usage = match (server_before, server.usage()) {
        (Some(before), Some(after)) => Some(ProcUsage {
            cpu_seconds: after.cpu_seconds - before.cpu_seconds,
            ..after
        }),
        _ => None,
    };
    let bench_cpu_secs = match (bench_before, ProcUsage::own()) {
        (Some(b), Some(a)) => Some(a.cpu_seconds - b.cpu_seconds),
        _ => None,
    };
    drop(clients);

    let mut per_sender = Vec::new();
    for (s, t) in per_session.iter().enumerate() {
        for (i, seen) in t.senders.iter().enumerate() {
            per_sender.push(SenderStats {
                session: s,
                sender: i,
                sent: sent[s][i],
                lost: (opts.members as u64 * opts.messages as u64).saturating_sub(seen.distinct),
                duplicated: seen.duplicated,
                out_of_order: seen.out_of_order,
            });
        }
    }
    let secs = tally
        .last
        .map_or(0.0, |l| l.duration_since(epoch).as_secs_f64());
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let sum = |f: fn(&SenderStats) -> u64| per_sender.iter().map(f).sum::<u64>();
    Ok(FanoutReport {
        scenario: scenario.to_string(),
        server: server.mode().to_string(),
        opts: opts.clone(),
        expected: total,
        delivered: tally.received,
        setup_secs,
        secs,
        deliveries_per_sec: per_sec(tally.received),
        messages_per_sec: per_sec(sent.iter().flatten().sum()),
        latency: tally.latency.summary(),
        lost: sum(|s| s.lost),
        duplicated: sum(|s| s.duplicated),
        out_of_order: sum(|s| s.out_of_order),
        disconnected: tally.disconnected,
        server_errors: tally.server_errors,
        send_failures,
        timed_out_receivers: tally.timed_out,
        per_sender,
        server_usage,
        bench_cpu_secs,
    })
}

/// Connects `members` members to each of `sessions` new sessions and waits until each has seen a
/// full roster, so the measured phase measures messages and not joins.
pub(super) async fn connect_rooms(
    env: &BenchEnv,
    server: &Server,
    sessions: usize,
    members: usize,
) -> Result<Vec<Vec<Member>>> {
    let coordinator = server.addr();
    let tag = run_tag();
    let names: Vec<String> = (0..sessions).map(|s| format!("bench-{tag}-{s}")).collect();
    let progress = Progress::start(env.progress, "connecting", (sessions * members) as u64);
    let done = progress.counter();
    let connect = |s: usize, i: usize| {
        let names = &names;
        let done = done.clone();
        async move {
            let entry = if i == 0 {
                Entry::Create(&names[s])
            } else {
                Entry::Join(&names[s])
            };
            let member = connect_member(coordinator, &user_name(s, i), entry).await?;
            done.fetch_add(1, Ordering::Relaxed);
            Ok::<_, BenchError>(member)
        }
    };
    let setup = async {
        // Creators first: nobody can join a session that does not exist yet.
        let creators: Vec<Member> = stream::iter(0..sessions)
            .map(|s| connect(s, 0))
            .buffered(CONNECT_CONCURRENCY)
            .try_collect()
            .await?;
        let mut rooms: Vec<Vec<Member>> = creators.into_iter().map(|m| vec![m]).collect();
        let joiners: Vec<Member> =
            stream::iter((0..sessions).flat_map(|s| (1..members).map(move |i| (s, i))))
                .map(|(s, i)| connect(s, i))
                .buffered(CONNECT_CONCURRENCY)
                .try_collect()
                .await?;
        let mut joiners = joiners.into_iter();
        for room in &mut rooms {
            room.extend(joiners.by_ref().take(members - 1));
        }
        Ok::<_, BenchError>(rooms)
    };
    let rooms = tokio::time::timeout(env.timeout, setup)
        .await
        .map_err(|_| BenchError::Timeout("connecting members".into()))??;
    progress.finish().await;
    await_full_rosters(&rooms, members, env.timeout).await?;
    Ok(rooms)
}

/// The user name of member `i` of session `s`.
pub(super) fn user_name(s: usize, i: usize) -> String {
    format!("s{s}m{i}")
}

async fn await_full_rosters(rooms: &[Vec<Member>], size: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let short = rooms
            .iter()
            .flatten()
            .filter(|m| m.client.members().len() < size)
            .count();
        if short == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Timeout(format!(
                "{short} members never saw all {size} members of their session"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Returns (session, sender, messages sent, failures).
async fn send(
    client: Client,
    (session, sender): (usize, usize),
    messages: usize,
    (rate, offset, window): (Option<f64>, Duration, Option<Arc<Semaphore>>),
    epoch: Instant,
    deadline: tokio::time::Instant,
) -> (usize, usize, u64, u64) {
    let work = async {
        let mut sent = 0;
        let mut ticker = rate.map(|r| {
            tokio::time::interval_at(
                tokio::time::Instant::now() + offset,
                Duration::from_secs_f64(1.0 / r),
            )
        });
        for m in 0..messages {
            if let Some(t) = &mut ticker {
                t.tick().await;
            }
            if let Some(w) = &window {
                // Given back by our own receiver when the line comes back from the server.
                match w.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return (sent, 1),
                }
            }
            let text = format!("{sender} {m} {}", epoch.elapsed().as_nanos());
            if client.say(&text).await.is_err() {
                return (sent, 1);
            }
            sent += 1;
        }
        (sent, 0)
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok((sent, failed)) => (session, sender, sent, failed),
        Err(_) => (session, sender, 0, 1),
    }
}

/// One sender's messages as one receiver (or, merged, all receivers) saw them.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen {
    got: Vec<bool>,
    pub(super) distinct: u64,
    pub(super) duplicated: u64,
    pub(super) out_of_order: u64,
    last: Option<usize>,
}

/// Splits a bench message text into sender, index and send instant.
pub(super) fn parse(text: &str) -> Option<(usize, usize, u64)> {
    let mut parts = text.split(' ').map(|p| p.parse::<u64>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(sender)), Some(Some(index)), Some(Some(sent))) => {
            Some((sender as usize, index as usize, sent))
        }
        _ => None,
    }
}

/// What receivers saw; one per receiver, merged at the end.
#[derive(Debug, Clone)]
pub(super) struct Tally {
    pub(super) senders: Vec<Seen>,
    pub(super) latency: Histogram,
    pub(super) received: u64,
    pub(super) last: Option<Instant>,
    disconnected: u64,
    server_errors: u64,
    timed_out: u64,
}

impl Tally {
    pub(super) fn new(senders: usize, messages: usize) -> Self {
        Self {
            senders: vec![
                Seen {
                    got: vec![false; messages],
                    ..Seen::default()
                };
                senders
            ],
            latency: Histogram::default(),
            received: 0,
            last: None,
            disconnected: 0,
            server_errors: 0,
            timed_out: 0,
        }
    }

    /// Counts a message whose text is `"<sender> <index> <send-nanos>"`.
    pub(super) fn record(&mut self, text: &str, epoch: Instant) {
        match parse(text) {
            Some((sender, index, sent)) => self.note(sender, index, sent, epoch),
            None => {
                self.received += 1;
                self.last = Some(Instant::now());
            }
        }
    }

    /// Counts message `index` of sender slot `sender`, sent at `sent` nanoseconds after `epoch`.
    pub(super) fn note(&mut self, sender: usize, index: usize, sent: u64, epoch: Instant) {
        let now = epoch.elapsed().as_nanos() as u64;
        self.received += 1;
        self.last = Some(Instant::now());
        let Some(seen) = self.senders.get_mut(sender) else {
            return;
        };
        let Some(got) = seen.got.get_mut(index) else {
            return;
        };
        self.latency.record(now.saturating_sub(sent));
        if *got {
            seen.duplicated += 1;
            return;
        }
        *got = true;
        seen.distinct += 1;
        if seen.last.is_some_and(|l| index < l) {
            seen.out_of_order += 1;
        }
        seen.last = Some(seen.last.map_or(index, |l| l.max(index)));
    }

    /// Adds per-sender counts only (for the per-session view).
    fn merge_counts(&mut self, other: &Tally) {
        for (a, b) in self.senders.iter_mut().zip(&other.senders) {
            a.distinct += b.distinct;
            a.duplicated += b.duplicated;
            a.out_of_order += b.out_of_order;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency.merge(&other.latency);
        self.received += other.received;
        self.last = self.last.max(other.last);
        self.disconnected += other.disconnected;
        self.server_errors += other.server_errors;
        self.timed_out += other.timed_out;
    }
}

/// What a receiver needs to know.
struct Listen {
    senders: usize,
    messages: usize,
    epoch: Instant,
    deadline: tokio::time::Instant,
    delivered: Arc<AtomicU64>,
    /// If this member also sends: its sender index, and the window its own lines refill.
    own: Option<(usize, Arc<Semaphore>)>,
    /// Cancelled when every sender is done; from then on a receiver that hears nothing for
    /// [`QUIET`] stops waiting (its missing messages are lost, and counted so).
    senders_done: CancellationToken,
}

/// See [`Listen::senders_done`].
const QUIET: Duration = Duration::from_secs(2);

async fn receive(mut events: mpsc::Receiver<Event>, listen: Listen) -> Tally {
    let expected = (listen.senders * listen.messages) as u64;
    let mut tally = Tally::new(listen.senders, listen.messages);
    let handle = |tally: &mut Tally, event: Event| -> bool {
        match event {
            Event::Message(line) => {
                tally.record(&line.text, listen.epoch);
                listen.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some((me, window)) = &listen.own
                    && parse(&line.text).is_some_and(|(from, _, _)| from == *me)
                {
                    window.add_permits(1);
                }
            }
            Event::ServerError(_) => tally.server_errors += 1,
            Event::Disconnected { .. } => {
                tally.disconnected += 1;
                return false;
            }
            _ => {}
        }
        true
    };
    let mut quiet = false;
    while tally.received < expected {
        let until = if quiet {
            listen.deadline.min(tokio::time::Instant::now() + QUIET)
        } else {
            listen.deadline
        };
        let event = tokio::select! {
            e = tokio::time::timeout_at(until, events.recv()) => e,
            _ = listen.senders_done.cancelled(), if !quiet => {
                quiet = true;
                continue;
            }
        };
        match event {
            Ok(Some(event)) => {
                if !handle(&mut tally, event) {
                    return tally;
                }
            }
            Ok(None) => return tally,
            Err(_) => {
                tally.timed_out += 1;
                return tally;
            }
        }
    }
    // Anything already queued past the expected count is a duplicate we must not miss.
    while let Ok(event) = events.try_recv() {
        if !handle(&mut tally, event) {
            break;
        }
    }
    tally
}
