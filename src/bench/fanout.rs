//! Group messages: `fanout` (one session, everyone hears every sender) and `sessions` (many such
//! rooms at once, to see the server spread over its cores).
//!
//! Each message's text is `"<sender> <index> <send-nanos>"`; a receiver checks, per sender, that
//! it saw every index exactly once and in increasing order, and times each from its send instant.
//!
//! Members get their accounts and tokens from the real client API and then speak to their session
//! on the bare protocol ([`super::lean`]): one task per member reads, counts, pings and, if it is
//! a sender, writes its `say` lines, so the load generator costs less than the server it measures.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::stats::{Histogram, LatencySummary};
use super::{
    BenchEnv, BenchError, CONNECT_CONCURRENCY, ProcUsage, Progress, Result, Server, lean, run_tag,
};
use crate::client::{Client, ClientConfig};

/// What a group-message run does.
///
/// These are also `confab bench fanout`'s flags: one session (`sessions` is not a flag).
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
pub struct FanoutOpts {
    /// Sessions at once; each gets the same members and senders.
    #[arg(skip = 1usize)]
    pub sessions: usize,
    /// Members per session.
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Members per session that send (the first ones); every member receives.
    #[arg(long, default_value_t = 50)]
    pub senders: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Messages per second per sender (default: as fast as the server keeps up).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Most messages one sender has on the way (sent, not yet back to itself); 0 for no limit.
    ///
    /// Nothing in the protocol slows a sender down for the sake of slow receivers: the server
    /// drops a member whose queue (4096 lines) overflows. Unlimited senders at full speed thus
    /// measure how many members get dropped, not throughput; a window keeps the run closed-loop,
    /// as a real sender that waits to see its own line would be.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
}

/// `confab bench sessions`: the fan-out run over many sessions at once, with smaller defaults.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SessionsOpts {
    /// Sessions at once; each gets the same members and senders.
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Members per session.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Senders per session (default: every member).
    #[arg(long)]
    pub senders: Option<usize>,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
    /// Messages per second per sender (default: as fast as the server keeps up).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Most messages one sender has on the way before it waits for its own to come back.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
}

impl From<SessionsOpts> for FanoutOpts {
    fn from(o: SessionsOpts) -> Self {
        Self {
            sessions: o.sessions,
            members: o.members,
            senders: o.senders.unwrap_or(o.members),
            messages: o.messages,
            rate: o.rate,
            window: o.window,
        }
    }
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
    let expected_per_receiver = (opts.senders * opts.messages) as u64;
    let size = opts.sessions * opts.members;
    let total = expected_per_receiver * size as u64;
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        epoch: Instant::now(),
        timeout: env.timeout,
        seated: AtomicU64::new(0),
        failure: Mutex::new(None),
        go: CancellationToken::new(),
        senders_left: AtomicUsize::new(opts.sessions * opts.senders),
        senders_done: CancellationToken::new(),
        delivered: Arc::new(AtomicU64::new(0)),
        stop: CancellationToken::new(),
    });
    // Whatever way this function ends, no member task outlives it.
    let _stop = shared.stop.clone().drop_guard();

    let setup_start = Instant::now();
    let members = connect_members(env, server, &shared).await?;
    await_seated(&shared, size as u64).await?;
    let setup_secs = setup_start.elapsed().as_secs_f64();

    let progress = Progress::with_counter(env.progress, scenario, total, shared.delivered.clone());
    let server_before = server.usage();
    let bench_before = ProcUsage::own();
    let start = Instant::now();
    shared.go.cancel();
    if opts.senders == 0 {
        shared.senders_done.cancel();
    }

    let mut outcomes = Vec::with_capacity(members.len());
    for task in members {
        outcomes.push(task.await.expect("member task does not panic"));
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

    let mut tally = Tally::new(opts.senders, opts.messages);
    let mut per_session = vec![Tally::new(opts.senders, opts.messages); opts.sessions];
    let mut sent = vec![vec![0u64; opts.senders]; opts.sessions];
    let mut send_failures = 0;
    for o in outcomes {
        if let Some(n) = sent[o.session].get_mut(o.index) {
            *n = o.sent;
        }
        send_failures += o.send_failed;
        per_session[o.session].merge_counts(&o.tally);
        tally.merge(o.tally);
        // Connections close only now, so that nobody's departure is work inside the run.
        drop(o.conn);
    }

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
        .map_or(0.0, |l| l.saturating_duration_since(start).as_secs_f64());
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

/// What every member task of one run shares.
struct Shared {
    opts: FanoutOpts,
    /// Send instants in message texts are nanoseconds since this.
    epoch: Instant,
    /// Longest wait of any phase.
    timeout: Duration,
    /// Members that have seen a full roster.
    seated: AtomicU64,
    /// Why the first member that failed before the start failed.
    failure: Mutex<Option<String>>,
    /// Cancelled when every member is seated: senders start.
    go: CancellationToken,
    /// Senders still sending; the last one to finish cancels `senders_done`.
    senders_left: AtomicUsize,
    /// Cancelled when every sender is done; from then on a receiver that hears nothing for
    /// [`QUIET`] stops waiting (its missing messages are lost, and counted so).
    senders_done: CancellationToken,
    /// Deliveries so far, for the progress line.
    delivered: Arc<AtomicU64>,
    /// Cancelled when the run ends for any reason.
    stop: CancellationToken,
}

impl Shared {
    fn sender_finished(&self) {
        if self.senders_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.senders_done.cancel();
        }
    }

    fn fail(&self, user: &str, why: impl std::fmt::Display) {
        let mut failure = self
            .failure
            .lock()
            .expect("no panic while holding the lock");
        failure.get_or_insert_with(|| format!("member {user}: {why}"));
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .expect("no panic while holding the lock")
            .clone()
    }
}

/// See [`Shared::senders_done`].
const QUIET: Duration = Duration::from_secs(2);

/// Gets every member an account and a token on the real client API, connects it to its session
/// on the bare protocol and starts its task (which from then on reads and pings, so nobody is
/// dropped as silent while the others connect).
async fn connect_members(
    env: &BenchEnv,
    server: &Server,
    shared: &Arc<Shared>,
) -> Result<Vec<JoinHandle<Outcome>>> {
    let coordinator = server.addr();
    let opts = &shared.opts;
    let tag = run_tag();
    let names: Vec<String> = (0..opts.sessions)
        .map(|s| format!("bench-{tag}-{s}"))
        .collect();
    let progress = Progress::start(
        env.progress,
        "connecting",
        (opts.sessions * opts.members) as u64,
    );
    let done = progress.counter();
    let connect = |s: usize, i: usize| {
        let name = names[s].as_str();
        let done = done.clone();
        let shared = shared.clone();
        async move {
            let user = user_name(s, i);
            let failed = |source| BenchError::Member {
                user: user.clone(),
                source,
            };
            let (client, _events) = Client::start(ClientConfig::new(user.clone(), coordinator))
                .await
                .map_err(failed)?;
            super::account(&client).await.map_err(failed)?;
            let info = if i == 0 {
                client.create(Some(name)).await
            } else {
                client.find(name).await
            }
            .map_err(failed)?;
            let token = client.session_token().unwrap_or_default();
            let (lines, write) = lean::connect(info.server, &user, token)
                .await
                .map_err(|e| BenchError::Setup(format!("member {user}: connect: {e}")))?;
            done.fetch_add(1, Ordering::Relaxed);
            Ok::<_, BenchError>(tokio::spawn(member(lines, write, s, i, shared)))
        }
    };
    let setup = async {
        // Creators first: nobody can join a session that does not exist yet.
        let mut tasks: Vec<_> = stream::iter(0..opts.sessions)
            .map(|s| connect(s, 0))
            .buffered(CONNECT_CONCURRENCY)
            .try_collect()
            .await?;
        let joiners = (0..opts.sessions).flat_map(|s| (1..opts.members).map(move |i| (s, i)));
        let more: Vec<_> = stream::iter(joiners)
            .map(|(s, i)| connect(s, i))
            .buffered(CONNECT_CONCURRENCY)
            .try_collect()
            .await?;
        tasks.extend(more);
        Ok::<_, BenchError>(tasks)
    };
    let tasks = tokio::time::timeout(env.timeout, setup)
        .await
        .map_err(|_| BenchError::Timeout("connecting members".into()))??;
    progress.finish().await;
    Ok(tasks)
}

/// Waits until every member has seen a full roster, so the measured phase measures messages and
/// not joins.
async fn await_seated(shared: &Shared, size: u64) -> Result<()> {
    let deadline = Instant::now() + shared.timeout;
    loop {
        if let Some(why) = shared.failure() {
            return Err(BenchError::Setup(why));
        }
        let seated = shared.seated.load(Ordering::Acquire);
        if seated >= size {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Timeout(format!(
                "{} members never saw all {} members of their session",
                size - seated,
                shared.opts.members
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The user name of member `i` of session `s`.
pub(super) fn user_name(s: usize, i: usize) -> String {
    format!("s{s}m{i}")
}

/// What one member did and saw.
struct Outcome {
    session: usize,
    index: usize,
    tally: Tally,
    /// Messages it sent (0 unless it is a sender).
    sent: u64,
    /// 1 if its sending broke off.
    send_failed: u64,
    /// Kept open until the run's figures are taken.
    conn: Option<(lean::Lines, OwnedWriteHalf)>,
}

/// What woke a member up.
enum Wake {
    Read(std::io::Result<bool>),
    Ping,
    Tick,
    Go,
    SendersDone,
    Timeout,
    Stop,
}

/// Waits for the next tick of a fixed-rate sender.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One member, from its hello to the end of the run: counts rosters until seated, then (if it is
/// one of the first `senders`) sends its messages within its window and at its rate, and counts
/// every group message it receives until it has them all or the run is over.
async fn member(
    mut lines: lean::Lines,
    mut write: OwnedWriteHalf,
    session: usize,
    index: usize,
    shared: Arc<Shared>,
) -> Outcome {
    let opts = &shared.opts;
    let user = user_name(session, index);
    let expected = (opts.senders * opts.messages) as u64;
    let sends = index < opts.senders;
    let mut tally = Tally::new(opts.senders, opts.messages);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + lean::PING_EVERY,
        lean::PING_EVERY,
    );
    let (mut welcomed, mut seated, mut started, mut quiet) = (false, false, false, false);
    let mut roster: i64 = 0;
    let mut ticker = None;
    let mut deadline = tokio::time::Instant::now() + shared.timeout;
    let mut last_read = tokio::time::Instant::now();
    let (mut sent, mut in_flight, mut send_failed) = (0u64, 0usize, 0u64);
    let mut sending = false;
    let window = if opts.window == 0 {
        usize::MAX
    } else {
        opts.window
    };
    let finish_sending = |sending: &mut bool| {
        if std::mem::take(sending) {
            shared.sender_finished();
        }
    };
    let mut alive = true;
    while alive {
        if sending && ticker.is_none() {
            // Full speed: fill the window; one write takes it all.
            while sent < opts.messages as u64 && in_flight < window {
                let nanos = shared.epoch.elapsed().as_nanos() as u64;
                lean::push_say(&mut out, index, sent as usize, nanos);
                sent += 1;
                in_flight += 1;
            }
        }
        if sending && sent == opts.messages as u64 {
            finish_sending(&mut sending);
        }
        if !out.is_empty() {
            if let Err(e) = write.write_all(&out).await {
                if !started {
                    shared.fail(&user, format_args!("write: {e}"));
                }
                if sending {
                    send_failed = 1;
                    finish_sending(&mut sending);
                }
                tally.disconnected += 1;
                break;
            }
            out.clear();
        }
        if started && !sending && tally.received >= expected {
            break;
        }
        let until = if quiet {
            deadline.min(last_read + QUIET)
        } else {
            deadline
        };
        let can_tick = sending && in_flight < window;
        let wake = tokio::select! {
            r = lines.fill() => Wake::Read(r),
            _ = ping.tick() => Wake::Ping,
            _ = tick(&mut ticker), if can_tick => Wake::Tick,
            _ = shared.go.cancelled(), if !started => Wake::Go,
            _ = shared.senders_done.cancelled(), if started && !quiet => Wake::SendersDone,
            _ = tokio::time::sleep_until(until), if started || !seated => Wake::Timeout,
            _ = shared.stop.cancelled() => Wake::Stop,
        };
        match wake {
            Wake::Read(Ok(true)) => last_read = tokio::time::Instant::now(),
            Wake::Read(r) => {
                if !started {
                    let why = r
                        .err()
                        .map_or("connection closed".into(), |e| e.to_string());
                    shared.fail(&user, why);
                }
                tally.disconnected += 1;
                break;
            }
            Wake::Ping => {
                out.extend_from_slice(lean::PING);
                continue;
            }
            Wake::Tick => {
                let nanos = shared.epoch.elapsed().as_nanos() as u64;
                lean::push_say(&mut out, index, sent as usize, nanos);
                sent += 1;
                in_flight += 1;
                continue;
            }
            Wake::Go => {
                started = true;
                sending = sends;
                deadline = tokio::time::Instant::now() + shared.timeout;
                // Senders at a fixed rate start spread over one period, as independent people
                // would; all ticking at the same instant would measure a burst, not a rate.
                ticker = opts.rate.map(|r| {
                    let offset = index as f64 / opts.senders as f64 / r;
                    tokio::time::interval_at(
                        tokio::time::Instant::now() + Duration::from_secs_f64(offset),
                        Duration::from_secs_f64(1.0 / r),
                    )
                });
                continue;
            }
            Wake::SendersDone => {
                quiet = true;
                continue;
            }
            Wake::Timeout => {
                if started {
                    tally.timed_out += 1;
                } else {
                    shared.fail(&user, "no full roster in time");
                }
                break;
            }
            Wake::Stop => break,
        }

        // One clock reading per read: every line in it arrived at the same instant.
        let now = Instant::now();
        let now_nanos = now.saturating_duration_since(shared.epoch).as_nanos() as u64;
        let mut msgs = 0;
        while let Some(line) = lines.next_line() {
            let Some(line) = lean::ServerLine::parse(line) else {
                continue;
            };
            match line.kind {
                "msg" => {
                    msgs += 1;
                    match line.text.and_then(parse) {
                        Some((from, i, sent_at)) => {
                            tally.note_at(from, i, sent_at, now_nanos, now);
                            if sends && from == index {
                                in_flight = in_flight.saturating_sub(1);
                            }
                        }
                        None => tally.note_other(now),
                    }
                }
                "welcome" => {
                    welcomed = true;
                    roster = line.members.len() as i64;
                }
                "presence" => roster += line.joined.len() as i64 - line.left.len() as i64,
                "error" if !welcomed => {
                    shared.fail(
                        &user,
                        format_args!("refused: {}", line.message.unwrap_or_default()),
                    );
                    alive = false;
                }
                "error" => tally.server_errors += 1,
                "bye" => {
                    if !started {
                        shared.fail(
                            &user,
                            format_args!("bye: {}", line.message.unwrap_or_default()),
                        );
                    }
                    tally.disconnected += 1;
                    alive = false;
                }
                _ => {}
            }
        }
        if msgs > 0 {
            shared.delivered.fetch_add(msgs, Ordering::Relaxed);
        }
        if welcomed && !seated && roster >= opts.members as i64 {
            seated = true;
            shared.seated.fetch_add(1, Ordering::AcqRel);
        }
    }
    if sending {
        send_failed = 1;
        finish_sending(&mut sending);
    }
    Outcome {
        session,
        index,
        tally,
        sent: if sends { sent } else { 0 },
        send_failed,
        conn: Some((lines, write)),
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

    /// Counts a message that is not one of the bench's, received at `now`.
    pub(super) fn note_other(&mut self, now: Instant) {
        self.received += 1;
        self.last = Some(now);
    }

    /// Counts message `index` of sender slot `sender`, sent at `sent` nanoseconds after `epoch`.
    pub(super) fn note(&mut self, sender: usize, index: usize, sent: u64, epoch: Instant) {
        let now = Instant::now();
        let now_nanos = now.saturating_duration_since(epoch).as_nanos() as u64;
        self.note_at(sender, index, sent, now_nanos, now);
    }

    /// [`Tally::note`] with the clock already read: `now`, which is `now_nanos` after the epoch.
    pub(super) fn note_at(
        &mut self,
        sender: usize,
        index: usize,
        sent: u64,
        now_nanos: u64,
        now: Instant,
    ) {
        self.received += 1;
        self.last = Some(now);
        let Some(seen) = self.senders.get_mut(sender) else {
            return;
        };
        let Some(got) = seen.got.get_mut(index) else {
            return;
        };
        self.latency.record(now_nanos.saturating_sub(sent));
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
