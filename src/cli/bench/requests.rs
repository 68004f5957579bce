//! Coordinator requests per second: `list` and `join`, many in flight, as raw datagrams.
//!
//! The client API waits for each answer before it asks again; to load the coordinator's single
//! request loop we keep a window of requests outstanding on each of several sockets instead.
//! Every request has a fresh id, so none is answered from the retry cache. Requests are sealed
//! as every client seals them (sealed before the clock starts: the figures are the server's);
//! `--plain` sends them in the open instead (the bench's coordinator takes both), to show what
//! sealing costs the coordinator.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use super::stats::{Histogram, LatencySummary};
use super::{BenchEnv, BenchError, ProcUsage, Progress, Result, Server, run_tag};
use confab::protocol::limits;
use confab::seal::{self, Opener};

/// What a coordinator run does.
///
/// These are also `confab bench coordinator`'s flags.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
pub struct RequestsOpts {
    /// Requests of each kind.
    #[arg(long, default_value_t = 100_000)]
    pub requests: usize,
    /// Sockets sending at once.
    #[arg(long, default_value_t = 4)]
    pub sockets: usize,
    /// Requests outstanding per socket.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Sessions in the directory (what `list` pages through, what `join` looks up).
    #[arg(long, default_value_t = 20)]
    pub sessions: usize,
    /// Send requests in the open, not sealed.
    #[arg(long)]
    pub plain: bool,
}

impl Default for RequestsOpts {
    fn default() -> Self {
        Self {
            requests: 100_000,
            sockets: 4,
            window: 32,
            sessions: 20,
            plain: false,
        }
    }
}

/// The figures for one kind of request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpStats {
    /// `list` or `join`.
    pub op: String,
    /// Requests sent.
    pub sent: u64,
    /// Answers received.
    pub answered: u64,
    /// Answers that were errors.
    pub errors: u64,
    /// Requests whose answer never came (counted after a quiet spell).
    pub lost: u64,
    /// Seconds from first send to last answer.
    pub secs: f64,
    /// Answers per second.
    pub per_sec: f64,
    /// Send to answer.
    pub latency: LatencySummary,
    /// Server CPU seconds for this kind (child process only).
    pub server_cpu_secs: Option<f64>,
}

/// The figures of one coordinator run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestsReport {
    /// Always `coordinator`.
    pub scenario: String,
    /// Where the coordinator ran.
    pub server: String,
    /// What was asked.
    pub opts: RequestsOpts,
    /// One entry per kind of request.
    pub ops: Vec<OpStats>,
    /// Server memory at the end (child process only).
    pub server_usage: Option<ProcUsage>,
}

/// Measures `list` and then `join` requests per second.
pub async fn requests(env: &BenchEnv, opts: &RequestsOpts) -> Result<RequestsReport> {
    Server::with(&env.server, async |server| run_on(env, opts, server).await).await
}

/// With no answer for this long, a socket's outstanding requests count as lost.
const QUIET: Duration = Duration::from_millis(500);

async fn run_on(env: &BenchEnv, opts: &RequestsOpts, server: &Server) -> Result<RequestsReport> {
    let super::Member {
        client: creator,
        events: _events,
    } = super::logged_in(server.addr(), "bench-creator").await?;
    let token = creator.session_token().unwrap_or_default();
    let key = match opts.plain {
        true => None,
        false => Some(
            creator
                .coordinator_key()
                .await
                .map_err(|source| BenchError::Member {
                    user: "bench-creator".into(),
                    source,
                })?,
        ),
    };
    let tag = run_tag();
    let first = format!("bench-{tag}-0");
    for s in 0..opts.sessions.max(1) {
        creator
            .create(Some(&format!("bench-{tag}-{s}")))
            .await
            .map_err(|source| BenchError::Member {
                user: "bench-creator".into(),
                source,
            })?;
    }
    // Padded as every client pads its requests (`limits::MIN_REQUEST`).
    let pad = |r: String| format!("{r:<width$}", width = limits::MIN_REQUEST);
    let list = |id: u64| pad(format!(r#"{{"id":{id},"op":"list","cursor":0}}"#));
    let join = |id: u64| {
        pad(format!(
            r#"{{"id":{id},"op":"join","session":"{first}","token":"{token}"}}"#
        ))
    };
    let mut ops = Vec::new();
    ops.push(run_op(env, opts, server, "list", &list, key).await?);
    ops.push(run_op(env, opts, server, "join", &join, key).await?);
    Ok(RequestsReport {
        scenario: "coordinator".into(),
        server: server.mode().into(),
        opts: opts.clone(),
        ops,
        server_usage: server.usage(),
    })
}

async fn run_op(
    env: &BenchEnv,
    opts: &RequestsOpts,
    server: &Server,
    op: &str,
    request: &(dyn Fn(u64) -> String + Sync),
    key: Option<[u8; 32]>,
) -> Result<OpStats> {
    let sockets = opts.sockets.max(1);
    let progress = Progress::start(env.progress, op, opts.requests as u64);
    let before = server.usage();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + env.timeout;
    let mut workers = Vec::new();
    for k in 0..sockets {
        // Split the requests evenly; the first sockets take the remainder.
        let quota = opts.requests / sockets + usize::from(k < opts.requests % sockets);
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(server.addr()).await?;
        // One key pair per socket, as each client keeps one.
        let sealer = key.map(|key| seal::Sealer::new(&key));
        let requests: Vec<(Vec<u8>, Option<Opener>)> = (0..quota as u64)
            .map(|id| {
                let plain = request(id).into_bytes();
                match &sealer {
                    Some(sealer) => {
                        let (sealed, opener) = sealer.seal(&plain);
                        (sealed, Some(opener))
                    }
                    None => (plain, None),
                }
            })
            .collect();
        let done = progress.counter();
        let window = opts.window.max(1);
        workers.push(tokio::spawn(async move {
            let work = drive(&socket, &requests, window, &done);
            match tokio::time::timeout_at(deadline, work).await {
                Ok(result) => result,
                Err(_) => Worker {
                    sent: requests.len() as u64,
                    ..Worker::default()
                },
            }
        }));
    }
    let mut total = Worker::default();
    for w in workers {
        let w = w.await.expect("request worker does not panic");
        total.sent += w.sent;
        total.answered += w.answered;
        total.errors += w.errors;
        total.lost += w.lost;
        total.latency.merge(&w.latency);
        total.last = total.last.max(w.last);
    }
    progress.finish().await;
    let secs = total
        .last
        .map_or(0.0, |l| l.duration_since(start).as_secs_f64());
    Ok(OpStats {
        op: op.into(),
        sent: total.sent,
        answered: total.answered,
        errors: total.errors,
        lost: total.sent - total.answered,
        secs,
        per_sec: if secs > 0.0 {
            total.answered as f64 / secs
        } else {
            0.0
        },
        latency: total.latency.summary(),
        server_cpu_secs: match (before, server.usage()) {
            (Some(b), Some(a)) => Some(a.cpu_seconds - b.cpu_seconds),
            _ => None,
        },
    })
}

#[derive(Default)]
struct Worker {
    sent: u64,
    answered: u64,
    errors: u64,
    lost: u64,
    latency: Histogram,
    last: Option<Instant>,
}

/// Just the parts of an answer the benchmark checks.
#[derive(Deserialize)]
struct Answer {
    id: Option<u64>,
    #[serde(rename = "type")]
    kind: String,
}

async fn drive(
    socket: &UdpSocket,
    requests: &[(Vec<u8>, Option<Opener>)],
    window: usize,
    done: &std::sync::atomic::AtomicU64,
) -> Worker {
    let mut w = Worker::default();
    let mut outstanding: HashMap<u64, Instant> = HashMap::new();
    // Sealed answers name no request outside the box: try the oldest outstanding first, since
    // answers come back mostly in the order asked.
    let mut order: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let mut next = 0;
    let mut buf = vec![0u8; limits::MAX_DATAGRAM + 1];
    loop {
        while outstanding.len() < window && next < requests.len() {
            if socket.send(&requests[next].0).await.is_ok() {
                outstanding.insert(next as u64, Instant::now());
                order.push_back(next as u64);
            } else {
                w.lost += 1;
            }
            w.sent += 1;
            next += 1;
        }
        if outstanding.is_empty() {
            return w;
        }
        match tokio::time::timeout(QUIET, socket.recv(&mut buf)).await {
            Ok(Ok(len)) => {
                let opened = match buf.first() {
                    Some(&seal::ANSWER_MARK) => order.iter().find_map(|id| {
                        let opener = requests[*id as usize].1.as_ref()?;
                        opener.open(&buf[..len]).ok()
                    }),
                    _ => Some(buf[..len].to_vec()),
                };
                let Some(answer) = opened else { continue };
                let Ok(answer) = serde_json::from_slice::<Answer>(&answer) else {
                    continue;
                };
                if let Some(id) = answer.id {
                    order.retain(|o| *o != id);
                }
                let Some(sent) = answer.id.and_then(|id| outstanding.remove(&id)) else {
                    continue;
                };
                w.latency.record(sent.elapsed().as_nanos() as u64);
                w.answered += 1;
                w.last = Some(Instant::now());
                if answer.kind == "error" {
                    w.errors += 1;
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(Err(_)) => {}
            Err(_) => {
                w.lost += outstanding.len() as u64;
                outstanding.clear();
                order.clear();
            }
        }
    }
}
