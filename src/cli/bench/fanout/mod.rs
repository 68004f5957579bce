//! Group messages: `fanout` (one session, everyone hears every sender) and `sessions` (many such
//! rooms at once, to see the server spread over its cores).
//!
//! Each message's text is `"<sender> <index> <send-nanos>"`; a receiver checks, per sender, that
//! it saw every index exactly once and in increasing order, and times each from its send instant.
//!
//! Members get their accounts and tokens from the real client API and then speak to their session
//! on the bare protocol ([`super::lean`]): one task per member reads, counts, pings and, if it is
//! a sender, writes its `say` lines, so the load generator costs less than the server it measures.

mod member;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::stats::LatencySummary;
use super::tally::Tally;
use super::{BenchEnv, ProcUsage, Progress, Result, Server};
use member::{Shared, await_seated, connect_members};

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
    /// A window keeps the run closed-loop, as a real sender that waits to see its own line
    /// would be; without one (`--open-loop`) every sender writes all its lines at once and the
    /// server's flow control is what keeps every reader seated.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Every sender writes all its lines at once, with no window (the same as `--window 0`).
    #[arg(long, conflicts_with = "window")]
    pub open_loop: bool,
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
            open_loop: false,
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
            open_loop: false,
        }
    }
}

/// One server process's part of a run: its CPU over the sending phase and, for a host, the
/// sessions and members its heartbeat reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Share {
    /// `coordinator` or `host <ip>`.
    pub process: String,
    /// CPU seconds spent during the sending phase.
    pub cpu_seconds: f64,
    /// Sessions it served (hosts only).
    pub sessions: Option<u32>,
    /// Members connected to it (hosts only).
    pub members: Option<u32>,
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
    /// With session hosts: each server process's part of the work.
    pub spread: Vec<Share>,
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
    Server::with(&env.server, async |server| {
        run_on(scenario, env, &opts, server).await
    })
    .await
}

/// How the work went over the server's processes, when there are hosts (the members are still
/// connected, so the hosts' last heartbeats count them).
async fn spread(server: &Server, before: &[(String, ProcUsage)]) -> Vec<Share> {
    if server.host_loads().await.is_empty() {
        return Vec::new();
    }
    let after = server.usage_each();
    // A heartbeat from every host after the members all joined (they renew every third of
    // the default 6 s lease): the counts are then the run's, not the setup's.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let loads = server.host_loads().await;
    after
        .into_iter()
        .map(|(process, after)| {
            let was = before
                .iter()
                .find(|(p, _)| *p == process)
                .map_or(0.0, |(_, u)| u.cpu_seconds);
            let load = loads
                .iter()
                .find(|(address, _, _)| process == format!("host {address}"));
            Share {
                cpu_seconds: after.cpu_seconds - was,
                sessions: load.map(|l| l.2),
                members: load.map(|l| l.1),
                process,
            }
        })
        .collect()
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
    let shared = Arc::new(Shared::new(opts, env.timeout));
    // Whatever way this function ends, no member task outlives it.
    let _stop = shared.stop.clone().drop_guard();

    let setup_start = Instant::now();
    let members = connect_members(env, server, &shared).await?;
    await_seated(&shared, size as u64).await?;
    let setup_secs = setup_start.elapsed().as_secs_f64();

    let progress = Progress::with_counter(env.progress, scenario, total, shared.delivered.clone());
    let server_before = server.usage();
    let each_before = server.usage_each();
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
    let spread = spread(server, &each_before).await;
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
        spread,
    })
}
