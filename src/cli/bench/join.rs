//! Many members arriving in one session at once.
//!
//! Members here speak the wire protocol directly: a full [`confab::client::Client`] costs a UDP
//! socket, a hub task and a roster per member, so 10,000 of them would measure this process and
//! exhaust its descriptors before the server. A lean member costs one TCP socket and one task; it
//! says hello, waits for its welcome, then keeps reading presence notices (counting the roster)
//! and pings, as the real client does, so that the server neither drops it as slow nor as dead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::stats::{Histogram, LatencySummary};
use super::{BenchEnv, BenchError, ProcUsage, Progress, Result, Server, run_tag};
use confab::codec::{Frame, LineCodec, encode_line};
use confab::protocol::{ClientMsg, SessionInfo, limits};

/// What a join run does.
///
/// These are also `confab bench join`'s flags.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
pub struct JoinOpts {
    /// Members that join the one session.
    #[arg(long, default_value_t = 2000)]
    pub members: usize,
    /// Members connecting at the same time; the rest wait for a free slot (default: all).
    #[arg(long)]
    pub concurrency: Option<usize>,
}

impl JoinOpts {
    fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(self.members).max(1)
    }
}

impl Default for JoinOpts {
    /// The first join case: 2,000 members all at once.
    fn default() -> Self {
        Self {
            members: 2000,
            concurrency: None,
        }
    }
}

/// The figures of one join run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JoinReport {
    /// Always `join`.
    pub scenario: String,
    /// Where the server ran.
    pub server: String,
    /// What was asked.
    pub opts: JoinOpts,
    /// Members that got a welcome.
    pub welcomed: u64,
    /// Members whose roster reached every member.
    pub seated: u64,
    /// Members that could not join (refused, connection failed, no welcome in time).
    pub failures: u64,
    /// One line per kind of failure, with its count.
    pub failure_kinds: Vec<String>,
    /// Members dropped after their welcome.
    pub dropped: u64,
    /// Seconds from the start until the last welcome.
    pub all_welcomed_secs: f64,
    /// Seconds from the start until every member saw a full roster.
    pub all_seated_secs: f64,
    /// Connect to welcome, per member (waiting for a concurrency slot excluded).
    pub welcome_latency: LatencySummary,
    /// Server resident memory added per seated member, once everyone is in and quiet.
    pub server_bytes_per_member: Option<f64>,
    /// Server figures at the end (CPU seconds are those of the join phase).
    pub server_usage: Option<ProcUsage>,
    /// CPU seconds of the benchmark process during the join phase.
    pub bench_cpu_secs: Option<f64>,
}

/// Members join one session; measures how long until everyone is in with a full roster.
pub async fn join(env: &BenchEnv, opts: &JoinOpts) -> Result<JoinReport> {
    Server::with(&env.server, async |server| run_on(env, opts, server).await).await
}

/// How long a stalled run (some members failed, the rest will never see a full roster) waits
/// for any further change before it ends.
const STALL: Duration = Duration::from_secs(5);
/// Connect plus welcome, per member.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

async fn run_on(env: &BenchEnv, opts: &JoinOpts, server: &Server) -> Result<JoinReport> {
    let n = opts.members;
    let super::Member {
        client: creator,
        events: _events,
    } = super::logged_in(server.addr(), "bench-creator").await?;
    let info: SessionInfo = creator
        .create(Some(&format!("bench-{}-join", run_tag())))
        .await
        .map_err(|source| BenchError::Member {
            user: "bench-creator".into(),
            source,
        })?;
    // Accounts and tokens first: logging in is not what this scenario times.
    let tokens = tokens(env, server.addr(), n).await?;
    // Let the new session server settle so its baseline memory is not counted per member.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.usage();
    let bench_before = ProcUsage::own();

    let progress = Progress::start(env.progress, "join (seated)", n as u64);
    let shared = Arc::new(Shared {
        seated: progress.counter(),
        failed: AtomicU64::new(0),
        slots: Semaphore::new(opts.concurrency()),
        stop: CancellationToken::new(),
        start: Instant::now(),
        size: n as u64,
    });
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            tokio::spawn(lean_member(
                info.clone(),
                format!("j{i}"),
                token,
                shared.clone(),
            ))
        })
        .collect();

    let deadline = Instant::now() + env.timeout;
    let mut last_change = Instant::now();
    let mut last_seen = (0, 0);
    loop {
        let now = (
            shared.seated.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
        );
        if now.0 >= n as u64 || now.1 >= n as u64 {
            break;
        }
        if now != last_seen {
            last_seen = now;
            last_change = Instant::now();
        } else if now.1 > 0 && last_change.elapsed() > STALL {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    progress.finish().await;
    let bench_after = ProcUsage::own();
    // Queues drained, buffers returned: what is left is what idle members cost.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = server.usage();
    shared.stop.cancel();

    let mut welcome = Histogram::default();
    let mut outcomes = Vec::with_capacity(n);
    for task in tasks {
        outcomes.push(task.await.expect("member task does not panic"));
    }
    let mut failure_kinds: Vec<(String, u64)> = Vec::new();
    let (mut all_welcomed, mut all_seated) = (Duration::ZERO, Duration::ZERO);
    let (mut welcomed, mut seated, mut dropped) = (0, 0, 0);
    for o in &outcomes {
        if let Some(w) = o.welcomed_at {
            welcomed += 1;
            all_welcomed = all_welcomed.max(w);
        }
        if let Some(latency) = o.welcome_latency {
            welcome.record(latency.as_nanos() as u64);
        }
        if let Some(s) = o.seated_at {
            seated += 1;
            all_seated = all_seated.max(s);
        }
        if o.welcomed_at.is_some() && o.failure.is_some() {
            dropped += 1;
        }
        if let Some(f) = &o.failure {
            match failure_kinds.iter_mut().find(|(k, _)| k == f) {
                Some((_, c)) => *c += 1,
                None => failure_kinds.push((f.clone(), 1)),
            }
        }
    }
    let failures = n as u64 - welcomed;
    let server_bytes_per_member = match (before, after) {
        (Some(b), Some(a)) if seated > 0 => {
            Some((a.rss_bytes as f64 - b.rss_bytes as f64) / seated as f64)
        }
        _ => None,
    };
    let server_usage = match (before, after) {
        (Some(b), Some(a)) => Some(ProcUsage {
            cpu_seconds: a.cpu_seconds - b.cpu_seconds,
            ..a
        }),
        _ => None,
    };
    Ok(JoinReport {
        scenario: "join".into(),
        server: server.mode().into(),
        opts: opts.clone(),
        welcomed,
        seated,
        failures,
        failure_kinds: failure_kinds
            .into_iter()
            .map(|(k, c)| format!("{c} × {k}"))
            .collect(),
        dropped,
        all_welcomed_secs: all_welcomed.as_secs_f64(),
        all_seated_secs: if seated == n as u64 {
            all_seated.as_secs_f64()
        } else {
            f64::NAN
        },
        welcome_latency: welcome.summary(),
        server_bytes_per_member,
        server_usage,
        bench_cpu_secs: match (bench_before, bench_after) {
            (Some(b), Some(a)) => Some(a.cpu_seconds - b.cpu_seconds),
            _ => None,
        },
    })
}

struct Shared {
    seated: Arc<AtomicU64>,
    failed: AtomicU64,
    slots: Semaphore,
    stop: CancellationToken,
    start: Instant,
    size: u64,
}

#[derive(Debug, Default)]
struct Outcome {
    welcomed_at: Option<Duration>,
    welcome_latency: Option<Duration>,
    seated_at: Option<Duration>,
    failure: Option<String>,
}

/// Just what a lean member needs of a server line: its type and the member count.
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    member_count: Option<usize>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// Registers and logs in users `j0`…`j{n-1}` (many at once) and returns their tokens in order.
async fn tokens(
    env: &BenchEnv,
    coordinator: SocketAddr,
    n: usize,
) -> Result<Vec<super::lean::Credentials>> {
    let progress = Progress::start(env.progress, "join (accounts)", n as u64);
    let done = progress.counter();
    let results: Vec<Result<super::lean::Credentials>> = futures::stream::iter(0..n)
        .map(|i| {
            let done = done.clone();
            async move {
                let user = format!("j{i}");
                let super::Member {
                    client,
                    events: _events,
                } = super::logged_in(coordinator, &user).await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok(super::lean::Credentials::of(&client))
            }
        })
        .buffered(super::CONNECT_CONCURRENCY)
        .collect()
        .await;
    progress.finish().await;
    results.into_iter().collect()
}

/// A member on the bare protocol: hello with a token, then read and ping.
async fn lean_member(
    session: SessionInfo,
    user: String,
    credentials: super::lean::Credentials,
    shared: Arc<Shared>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let failed = |outcome: &mut Outcome, why: String| {
        if outcome.welcomed_at.is_none() {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        outcome.failure = Some(why);
    };
    let permit = tokio::select! {
        p = shared.slots.acquire() => p.expect("semaphore is never closed"),
        _ = shared.stop.cancelled() => {
            failed(&mut outcome, "never got a slot".into());
            return outcome;
        }
    };
    let began = Instant::now();
    let connect = async {
        let (read, write) = super::lean::open(&session, &user, credentials).await?;
        Ok::<_, std::io::Error>((
            FramedRead::new(read, LineCodec::new(limits::MAX_SERVER_LINE)),
            write,
        ))
    };
    let (mut reader, mut write) = match tokio::time::timeout(JOIN_TIMEOUT, connect).await {
        Ok(Ok(halves)) => halves,
        Ok(Err(e)) => {
            failed(&mut outcome, format!("connect: {}", e.kind()));
            return outcome;
        }
        Err(_) => {
            failed(&mut outcome, "connect timed out".into());
            return outcome;
        }
    };
    let ping = encode_line(&ClientMsg::Ping);
    let mut roster: i64 = 0;
    let mut heartbeat = tokio::time::interval(super::lean::PING_EVERY);
    heartbeat.tick().await;
    let welcome_deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut permit = Some(permit);
    loop {
        let next = tokio::select! {
            n = reader.next() => n,
            _ = heartbeat.tick() => {
                if write.write_all(&ping).await.is_err() {
                    failed(&mut outcome, "ping failed".into());
                    return outcome;
                }
                continue;
            }
            _ = tokio::time::sleep_until(welcome_deadline), if outcome.welcomed_at.is_none() => {
                failed(&mut outcome, "no welcome in time".into());
                return outcome;
            }
            _ = shared.stop.cancelled() => return outcome,
        };
        let line = match next {
            Some(Ok(Frame::Line(line))) => line,
            Some(Ok(Frame::Oversized)) => continue,
            Some(Err(e)) => {
                failed(&mut outcome, format!("read: {}", e.kind()));
                return outcome;
            }
            None => {
                failed(&mut outcome, "server closed the connection".into());
                return outcome;
            }
        };
        let Ok(line) = serde_json::from_slice::<Line>(&line) else {
            continue;
        };
        match line.kind.as_str() {
            "welcome" => {
                roster = line.member_count.unwrap_or_default() as i64;
                outcome.welcomed_at = Some(shared.start.elapsed());
                outcome.welcome_latency = Some(began.elapsed());
                // The slot is for connecting; a seated member waits without one.
                permit.take();
            }
            "presence" => roster = line.member_count.unwrap_or_default() as i64,
            "error" if outcome.welcomed_at.is_none() => {
                failed(
                    &mut outcome,
                    format!("refused: {}", line.message.unwrap_or_default()),
                );
                return outcome;
            }
            "bye" => {
                failed(
                    &mut outcome,
                    format!("bye: {}", line.reason.unwrap_or_default()),
                );
                return outcome;
            }
            _ => {}
        }
        if outcome.seated_at.is_none() && roster >= shared.size as i64 {
            outcome.seated_at = Some(shared.start.elapsed());
            shared.seated.fetch_add(1, Ordering::Relaxed);
        }
    }
}
