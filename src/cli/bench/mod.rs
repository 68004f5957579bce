//! `confab bench`: load scenarios against a real coordinator and the session servers it starts.
//!
//! Every scenario drives the server through the paths real users take (the [`confab::client`] API,
//! or the wire protocol itself where thousands of full clients would measure the load generator
//! instead of the server) and reports correctness beside speed: a broker that is fast because it
//! loses or reorders messages is not fast. Senders and receivers live in this one process, so a
//! message can carry its send instant in its text and be timed against the same monotonic clock
//! when it arrives.
//!
//! Where the server runs is a [`ServerChoice`]: by default a child process (the real `confab
//! coordinator` binary), so that its CPU time and memory can be read from `/proc` apart from the
//! load generator's; in this process (what the tests use, no server figures); or a coordinator
//! that is already running.
//!
//! Every wait is bounded by [`BenchEnv::timeout`]: a scenario that stalls ends and reports what
//! went missing rather than hanging.
//!
//! # Scenarios
//! - [`fanout`] and [`sessions`]: group messages, one session or many at once, on lean
//!   raw-protocol members (accounts and tokens from the client API).
//! - [`join`]: thousands of members arriving at once, on lean raw-protocol members.
//! - [`dm`]: peer-to-peer private messages with acknowledgements.
//! - [`requests`]: coordinator `list` and `join` requests per second.

mod args;
mod dm;
mod fanout;
mod irc;
mod join;
mod lean;
mod logins;
mod report;
mod requests;
mod server;
mod stats;
mod tally;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use confab::client::{Client, ClientConfig, ClientError, Event};

pub use args::{BenchArgs, run};
pub use dm::{DmOpts, DmReport, dm};
pub use fanout::{FanoutOpts, FanoutReport, SessionsOpts, fanout, sessions};
pub use irc::{IrcOpts, IrcReport, irc};
pub use join::{JoinOpts, JoinReport, join};
pub use logins::{LoginsOpts, LoginsReport, logins};
pub use report::render;
pub use requests::{RequestsOpts, RequestsReport, requests};
pub use server::{Layout, ProcUsage, Server, ServerChoice, raise_fd_limit};

/// What every scenario needs besides its own options.
#[derive(Debug, Clone)]
pub struct BenchEnv {
    /// Where the coordinator runs.
    pub server: ServerChoice,
    /// Longest any one phase (connecting, sending, draining) may take before it is reported as
    /// failed.
    pub timeout: Duration,
    /// Rewrite a progress line on stderr while running; off in tests.
    pub progress: bool,
}

impl Default for BenchEnv {
    fn default() -> Self {
        Self {
            server: ServerChoice::Child(Layout::default()),
            timeout: Duration::from_secs(120),
            progress: false,
        }
    }
}

/// Why a scenario could not produce a report at all (losses and timeouts of single messages are
/// not errors: they are figures in the report).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The coordinator child process could not be started or did not say where it listens.
    #[error("cannot start the coordinator: {0}")]
    Spawn(String),
    /// A member could not be set up.
    #[error("member {user}: {source}")]
    Member {
        /// The member's user name.
        user: String,
        /// What the client said.
        source: ClientError,
    },
    /// A member could not take its seat on the bare protocol (connection refused or closed,
    /// hello refused).
    #[error("setting up: {0}")]
    Setup(String),
    /// A phase did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Socket trouble in the load generator itself.
    #[error("benchmark I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand for scenario results.
pub type Result<T> = std::result::Result<T, BenchError>;

/// How a member enters its session.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Entry<'a> {
    /// Create the session with this name and join it.
    Create(&'a str),
    /// Join the session with this name.
    Join(&'a str),
}

/// One participant on the real client API, with the event stream it must keep reading.
pub(crate) struct Member {
    pub(crate) client: Client,
    pub(crate) events: mpsc::Receiver<Event>,
}

/// Every benchmark account has this password (the bench's server hashes it at the cheapest cost).
pub(crate) const PASSWORD: &str = "bench-password";

/// Registers `client`'s user if it is new, and logs in.
pub(crate) async fn account(client: &Client) -> std::result::Result<(), ClientError> {
    match client.register(PASSWORD).await {
        Ok(_) => {}
        Err(ClientError::Refused(e)) if e.code == confab::protocol::ErrorCode::NameTaken => {}
        Err(e) => return Err(e),
    }
    client.login(PASSWORD).await.map(|_| ())
}

/// A client of `user`, registered if new and logged in: the one place a benchmark account is
/// set up.
pub(crate) async fn logged_in(coordinator: SocketAddr, user: &str) -> Result<Member> {
    logged_in_behind(coordinator, user, None).await
}

/// Like [`logged_in`]; `behind` is an endpoint to announce that swallows everything (as a NAT
/// that no probe gets through), with no local addresses, so that its private messages can only
/// be relayed.
pub(crate) async fn logged_in_behind(
    coordinator: SocketAddr,
    user: &str,
    behind: Option<SocketAddr>,
) -> Result<Member> {
    let failed = |source| BenchError::Member {
        user: user.to_string(),
        source,
    };
    let mut config = ClientConfig::new(user, coordinator);
    if let Some(hole) = behind {
        config.advertise = Some(hole);
        config.share_local = false;
    }
    let (client, events) = Client::start(config).await.map_err(failed)?;
    account(&client).await.map_err(failed)?;
    Ok(Member { client, events })
}

/// A benchmark member on the client API, in its session.
pub(crate) async fn connect_member(
    coordinator: SocketAddr,
    user: &str,
    entry: Entry<'_>,
    behind: Option<SocketAddr>,
) -> Result<Member> {
    let failed = |source| BenchError::Member {
        user: user.to_string(),
        source,
    };
    let Member { client, events } = logged_in_behind(coordinator, user, behind).await?;
    match entry {
        Entry::Create(name) => client.start_session(Some(name)).await,
        Entry::Join(name) => client.join(name).await,
    }
    .map_err(failed)?;
    Ok(Member { client, events })
}

/// Joining members one after another is slow and not what the join scenario measures; this many
/// set-ups run at once in the other scenarios.
pub(crate) const CONNECT_CONCURRENCY: usize = 64;

/// A short random tag, so that session names of two runs against one coordinator never collide.
pub(crate) fn run_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A progress bar on stderr while a phase runs (indicatif draws nothing when stderr is not a
/// terminal, so logs and CI output stay free of escape codes).
pub(crate) struct Progress {
    done: Arc<AtomicU64>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `label: done/total`, if `enabled`.
    pub(crate) fn start(enabled: bool, label: &str, total: u64) -> Self {
        Self::with_counter(enabled, label, total, Arc::new(AtomicU64::new(0)))
    }

    /// Like [`Progress::start`], on a counter the workers already advance. Workers bump a plain
    /// atomic on their hot path; the bar reads it four times a second.
    pub(crate) fn with_counter(
        enabled: bool,
        label: &str,
        total: u64,
        done: Arc<AtomicU64>,
    ) -> Self {
        let stop = CancellationToken::new();
        let task = enabled.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::stderr(),
            )
            .with_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix}: {pos}/{len} ({msg}/s, {elapsed}) {wide_bar}",
                )
                .expect("the template is valid"),
            )
            .with_prefix(label.to_string());
            let done = done.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let period = Duration::from_millis(250);
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let n = done.load(Ordering::Relaxed);
                            let secs = bar.elapsed().as_secs_f64().max(1e-3);
                            bar.set_position(n);
                            bar.set_message(format!("{:.0}", n as f64 / secs));
                        }
                        _ = stop.cancelled() => break,
                    }
                }
                bar.finish_and_clear();
            })
        });
        Self { done, stop, task }
    }

    /// The counter the workers advance.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Clears the bar.
    pub(crate) async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
