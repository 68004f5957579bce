//! Private messages, peer to peer over UDP with acknowledgements, on the real client API.
//!
//! Members pair up (0 with 1, 2 with 3, …) in one session, which is only there so that each
//! knows the other's endpoint; the server carries none of this traffic. Each member sends its
//! partner `messages` private messages one after another, each waiting for its ack, as a person
//! typing would.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::{Histogram, LatencySummary};
use super::tally::{Tally, parse, user_name};
use super::{
    BenchEnv, BenchError, CONNECT_CONCURRENCY, Entry, Member, ProcUsage, Progress, Result, Server,
    connect_member, run_tag,
};
use confab::client::{Client, Event};

/// What a private-message run does.
///
/// These are also `confab bench dm`'s flags.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
pub struct DmOpts {
    /// Pairs of members.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Messages each member sends its partner.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// The way the messages go: `direct` (peer to peer), `server` (every member announces an
    /// endpoint that swallows everything, so the session server relays) or `coordinator` (the
    /// same, and the pairs share no session, so the coordinator relays).
    #[arg(long, value_enum, default_value_t = DmPath::Direct)]
    pub via: DmPath,
}

/// How the private messages of a run travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DmPath {
    /// Peer to peer over UDP.
    Direct,
    /// Relayed by the session server both are in.
    Server,
    /// Relayed by the coordinator; the members are in no session.
    Coordinator,
}

impl Default for DmOpts {
    fn default() -> Self {
        Self {
            pairs: 50,
            messages: 200,
            via: DmPath::Direct,
        }
    }
}

/// The figures of one private-message run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DmReport {
    /// Always `dm`.
    pub scenario: String,
    /// Where the coordinator ran.
    pub server: String,
    /// What was asked.
    pub opts: DmOpts,
    /// Messages sent (each once, however often it was retried).
    pub sent: u64,
    /// Messages whose ack came back.
    pub acked: u64,
    /// Messages given up after every retry.
    pub not_delivered: u64,
    /// Messages shown to receivers.
    pub received: u64,
    /// Messages shown twice (the client should dedupe retries).
    pub duplicated: u64,
    /// Messages shown after a later one from the same sender.
    pub out_of_order: u64,
    /// Seconds from the first send to the last ack.
    pub secs: f64,
    /// Acknowledged messages per second.
    pub acked_per_sec: f64,
    /// Send to ack, as the sender waits for it.
    pub ack_latency: LatencySummary,
    /// Send to shown, on the receiver.
    pub one_way_latency: LatencySummary,
    /// CPU seconds of the benchmark process (senders and receivers both) during the run.
    pub bench_cpu_secs: Option<f64>,
}

/// Pairs of members exchange private messages.
pub async fn dm(env: &BenchEnv, opts: &DmOpts) -> Result<DmReport> {
    Server::with(&env.server, async |server| run_on(env, opts, server).await).await
}

/// After the last sender is done, how long receivers wait for stragglers.
const GRACE: Duration = Duration::from_millis(500);

async fn run_on(env: &BenchEnv, opts: &DmOpts, server: &Server) -> Result<DmReport> {
    let members = opts.pairs * 2;
    // An endpoint that reads nothing: datagrams announced to go there are lost, as behind a NAT
    // that no probe gets through.
    let hole = tokio::net::UdpSocket::bind((server.addr().ip(), 0))
        .await
        .map_err(|e| BenchError::Setup(format!("binding the unreachable endpoint: {e}")))?;
    let behind = hole
        .local_addr()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let room = match opts.via {
        DmPath::Direct => connect_rooms(env, server, 1, members, None).await?,
        DmPath::Server => connect_rooms(env, server, 1, members, Some(behind)).await?,
        DmPath::Coordinator => vec![log_in_apart(env, server, members, behind).await?],
    }
    .pop()
    .unwrap_or_default();
    let progress = Progress::start(env.progress, "dm (acked)", (members * opts.messages) as u64);
    let acked_counter = progress.counter();
    let epoch = Instant::now();
    let deadline = tokio::time::Instant::now() + env.timeout;
    let senders_done = CancellationToken::new();
    let bench_before = ProcUsage::own();

    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (i, Member { client, events }) in room.into_iter().enumerate() {
        receivers.push(tokio::spawn(receive(
            events,
            opts.messages,
            epoch,
            deadline,
            senders_done.clone(),
        )));
        let partner = user_name(0, i ^ 1);
        let messages = opts.messages;
        let acked_counter = acked_counter.clone();
        senders.push(tokio::spawn(async move {
            let mut s = SendTally::default();
            let work = async {
                for m in 0..messages {
                    let began = Instant::now();
                    let text = format!("{i} {m} {}", epoch.elapsed().as_nanos());
                    s.sent += 1;
                    match client.dm(&partner, &text).await {
                        Ok(_) => {
                            s.acked += 1;
                            s.latency.record(began.elapsed().as_nanos() as u64);
                            s.last = Some(Instant::now());
                            acked_counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(_) => s.failed += 1,
                    }
                }
            };
            let _ = tokio::time::timeout_at(deadline, work).await;
            (s, client)
        }));
    }

    let mut total = SendTally::default();
    let mut clients: Vec<Client> = Vec::new();
    for task in senders {
        let (s, client) = task.await.expect("sender task does not panic");
        total.sent += s.sent;
        total.acked += s.acked;
        total.failed += s.failed;
        total.latency.merge(&s.latency);
        total.last = total.last.max(s.last);
        clients.push(client);
    }
    senders_done.cancel();
    let mut seen = Tally::new(1, opts.messages);
    let (mut received, mut duplicated, mut out_of_order) = (0, 0, 0);
    for task in receivers {
        let t = task.await.expect("receiver task does not panic");
        received += t.received;
        duplicated += t.senders[0].duplicated;
        out_of_order += t.senders[0].out_of_order;
        seen.latency.merge(&t.latency);
    }
    progress.finish().await;
    let bench_after = ProcUsage::own();
    drop(clients);

    let secs = total
        .last
        .map_or(0.0, |l| l.duration_since(epoch).as_secs_f64());
    Ok(DmReport {
        scenario: "dm".into(),
        server: server.mode().into(),
        opts: opts.clone(),
        sent: total.sent,
        acked: total.acked,
        not_delivered: total.failed,
        received,
        duplicated,
        out_of_order,
        secs,
        acked_per_sec: if secs > 0.0 {
            total.acked as f64 / secs
        } else {
            0.0
        },
        ack_latency: total.latency.summary(),
        one_way_latency: seen.latency.summary(),
        bench_cpu_secs: match (bench_before, bench_after) {
            (Some(b), Some(a)) => Some(a.cpu_seconds - b.cpu_seconds),
            _ => None,
        },
    })
}

#[derive(Default)]
struct SendTally {
    sent: u64,
    acked: u64,
    failed: u64,
    latency: Histogram,
    last: Option<Instant>,
}

/// Counts private messages from the partner until all arrived, or the senders are done and a
/// grace period has passed, or the deadline.
async fn receive(
    mut events: mpsc::Receiver<Event>,
    messages: usize,
    epoch: Instant,
    deadline: tokio::time::Instant,
    senders_done: CancellationToken,
) -> Tally {
    let mut tally = Tally::new(1, messages);
    let mut until = deadline;
    while tally.received < messages as u64 {
        let event = tokio::select! {
            e = tokio::time::timeout_at(until, events.recv()) => e,
            _ = senders_done.cancelled(), if until == deadline => {
                until = tokio::time::Instant::now() + GRACE;
                continue;
            }
        };
        match event {
            Ok(Some(Event::Private { text, .. })) => match parse(&text) {
                // One sender per receiver: its partner, slot 0.
                Some((_, index, sent)) => tally.note(0, index, sent, epoch),
                None => tally.received += 1,
            },
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    tally
}

/// `members` members logged in (and so announced) but in no session, named as the members of
/// session 0 would be, all announcing `behind`.
async fn log_in_apart(
    env: &BenchEnv,
    server: &Server,
    members: usize,
    behind: std::net::SocketAddr,
) -> Result<Vec<Member>> {
    let progress = Progress::start(env.progress, "logging in", members as u64);
    let done = progress.counter();
    let setup = stream::iter(0..members)
        .map(|i| {
            let done = done.clone();
            async move {
                let member =
                    super::logged_in_behind(server.addr(), &user_name(0, i), Some(behind)).await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, BenchError>(member)
            }
        })
        .buffered(CONNECT_CONCURRENCY)
        .try_collect();
    let members = tokio::time::timeout(env.timeout, setup)
        .await
        .map_err(|_| BenchError::Timeout("logging members in".into()))??;
    progress.finish().await;
    Ok(members)
}

/// Connects `members` members to each of `sessions` new sessions and waits until each has seen a
/// full roster, so the measured phase measures messages and not joins. `behind`: see
/// `logged_in_behind`.
pub(super) async fn connect_rooms(
    env: &BenchEnv,
    server: &Server,
    sessions: usize,
    members: usize,
    behind: Option<std::net::SocketAddr>,
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
            let member = connect_member(coordinator, &user_name(s, i), entry, behind).await?;
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
