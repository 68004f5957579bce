//! One fan-out member's task and the set-up around it: accounts on the real client API, then the
//! bare protocol ([`super::super::lean`]) for everything measured.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab::transport::WireWrite;
use futures::{StreamExt, TryStreamExt, stream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::FanoutOpts;
use crate::cli::bench::tally::{Tally, parse, user_name};
use crate::cli::bench::{
    BenchEnv, BenchError, CONNECT_CONCURRENCY, Progress, Result, Server, lean, logged_in, run_tag,
};

/// What every member task of one run shares.
pub(super) struct Shared {
    pub(super) opts: FanoutOpts,
    /// Send instants in message texts are nanoseconds since this.
    pub(super) epoch: Instant,
    /// Longest wait of any phase.
    pub(super) timeout: Duration,
    /// Members that have seen a full roster.
    pub(super) seated: AtomicU64,
    /// Why the first member that failed before the start failed.
    pub(super) failure: Mutex<Option<String>>,
    /// Cancelled when every member is seated: senders start.
    pub(super) go: CancellationToken,
    /// Senders still sending; the last one to finish cancels `senders_done`.
    pub(super) senders_left: AtomicUsize,
    /// Cancelled when every sender is done; from then on a receiver stops waiting once nobody in
    /// the run has heard anything for [`QUIET`] (its missing messages are lost, and counted so).
    pub(super) senders_done: CancellationToken,
    /// Deliveries so far, for the progress line.
    pub(super) delivered: Arc<AtomicU64>,
    /// Cancelled when the run ends for any reason.
    pub(super) stop: CancellationToken,
}

impl Shared {
    pub(super) fn new(opts: &FanoutOpts, timeout: Duration) -> Self {
        Self {
            opts: opts.clone(),
            epoch: Instant::now(),
            timeout,
            seated: AtomicU64::new(0),
            failure: Mutex::new(None),
            go: CancellationToken::new(),
            senders_left: AtomicUsize::new(opts.sessions * opts.senders),
            senders_done: CancellationToken::new(),
            delivered: Arc::new(AtomicU64::new(0)),
            stop: CancellationToken::new(),
        }
    }

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
pub(super) async fn connect_members(
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
            let crate::cli::bench::Member {
                client,
                events: _events,
            } = logged_in(coordinator, &user).await?;
            let info = if i == 0 {
                client.create(Some(name)).await
            } else {
                client.find(name).await
            }
            .map_err(failed)?;
            let credentials = lean::Credentials::of(&client);
            let (lines, write) = lean::connect(&info, &user, credentials)
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
pub(super) async fn await_seated(shared: &Shared, size: u64) -> Result<()> {
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

/// What one member did and saw.
pub(super) struct Outcome {
    pub(super) session: usize,
    pub(super) index: usize,
    pub(super) tally: Tally,
    /// Messages it sent (0 unless it is a sender).
    pub(super) sent: u64,
    /// 1 if its sending broke off.
    pub(super) send_failed: u64,
    /// Kept open until the run's figures are taken.
    pub(super) conn: Option<(lean::Lines, WireWrite)>,
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
    mut write: WireWrite,
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
    let mut heard_at_quiet_check = u64::MAX;
    let (mut sent, mut in_flight, mut send_failed) = (0u64, 0usize, 0u64);
    let mut sending = false;
    let window = if opts.window == 0 || opts.open_loop {
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
                // Quiet for us, but if anyone in the run still hears lines the server is busy
                // (flow control paces the room to its slowest reader, and a loaded machine can
                // deschedule it for seconds): keep waiting until the whole run is quiet.
                let heard = shared.delivered.load(Ordering::Relaxed);
                if quiet && heard != heard_at_quiet_check && tokio::time::Instant::now() < deadline
                {
                    heard_at_quiet_check = heard;
                    last_read = tokio::time::Instant::now();
                    continue;
                }
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
