//! `confab bench logins`: many people logging in at the same moment (after a coordinator
//! restart, say), at the real password-hashing cost.
//!
//! Accounts are registered first, a few at a time (not measured); then every client sends its
//! `login` at once through the real client API, retries and all, and the run reports how long the
//! last one took against how long the hashing alone needs (the server's CPU time for the phase
//! spread over the machine's cores), which is the floor any server must pay.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;

use confab::client::{Client, ClientConfig};

use super::stats::{Histogram, LatencySummary};
use super::{BenchEnv, BenchError, CONNECT_CONCURRENCY, PASSWORD, ProcUsage, Progress, Result};
use super::{Server, run_tag};

/// What a logins run does. These are also `confab bench logins`'s flags.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
pub struct LoginsOpts {
    /// Clients logging in at once.
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    /// Hash at the cheapest cost instead of the real one (measures the coordinator's request
    /// path alone).
    #[arg(long)]
    pub fast_passwords: bool,
}

/// The figures of one logins run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoginsReport {
    /// What was asked.
    pub opts: LoginsOpts,
    /// Where the server ran.
    pub server: String,
    /// Logins that succeeded.
    pub logged_in: u64,
    /// Logins that failed, with the first error.
    pub failed: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Seconds from the first login sent to the last answered.
    pub secs: f64,
    /// Per-client time from sending `login` to holding a token.
    pub latency: LatencySummary,
    /// Server CPU seconds spent in the login phase, when the server is our child.
    pub server_cpu_secs: Option<f64>,
    /// That CPU time spread over the machine's cores: how long the hashing alone needs.
    pub hashing_floor_secs: Option<f64>,
    /// The server's resources after the run.
    pub server_usage: Option<ProcUsage>,
}

/// Runs the scenario.
pub async fn logins(env: &BenchEnv, opts: &LoginsOpts) -> Result<LoginsReport> {
    let server = Server::start_hashing(&env.server, opts.fast_passwords).await?;
    let result = run(env, opts, &server).await;
    server.stop().await;
    result
}

async fn run(env: &BenchEnv, opts: &LoginsOpts, server: &Server) -> Result<LoginsReport> {
    let tag = run_tag();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let progress = Progress::start(env.progress, "registering", opts.clients as u64);
    let mut setup = tokio::task::JoinSet::new();
    for i in 0..opts.clients {
        let (gate, addr, done) = (gate.clone(), server.addr(), progress.counter());
        let user = format!("l{tag}{i}");
        setup.spawn(async move {
            let _slot = gate.acquire_owned().await;
            let failed = |source| BenchError::Member {
                user: user.clone(),
                source,
            };
            // Logins alone are measured: a client that announces itself (the default) sends
            // an `announce` after each, a cheap request that is not what this bench is about.
            let mut config = ClientConfig::new(&user, addr);
            config.announce = false;
            let (client, events) = Client::start(config).await.map_err(failed)?;
            client.register(PASSWORD).await.map_err(failed)?;
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, BenchError>((client, events))
        });
    }
    let mut clients = Vec::with_capacity(opts.clients);
    let setup_all = async {
        while let Some(done) = setup.join_next().await {
            let member = done.map_err(|e| BenchError::Setup(format!("a client failed: {e}")))??;
            clients.push(member);
        }
        Ok::<_, BenchError>(())
    };
    tokio::time::timeout(env.timeout, setup_all)
        .await
        .map_err(|_| BenchError::Timeout("registering the accounts".into()))??;
    progress.finish().await;

    let cpu_before = server.usage().map(|u| u.cpu_seconds);
    let progress = Progress::start(env.progress, "logging in", opts.clients as u64);
    let start = Instant::now();
    let mut logins = tokio::task::JoinSet::new();
    for (client, _events) in &clients {
        let (client, done) = (client.clone(), progress.counter());
        logins.spawn(async move {
            let sent = Instant::now();
            let result = client.login(PASSWORD).await;
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (
                sent.elapsed(),
                result.map(|_| ()).map_err(|e| e.to_string()),
            )
        });
    }
    let mut latency = Histogram::default();
    let (mut logged_in, mut failed, mut first_error) = (0, 0, None);
    let collect = async {
        while let Some(done) = logins.join_next().await {
            let (took, result) =
                done.map_err(|e| BenchError::Setup(format!("a login task failed: {e}")))?;
            latency.record(took.as_nanos() as u64);
            match result {
                Ok(()) => logged_in += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        Ok::<_, BenchError>(())
    };
    tokio::time::timeout(env.timeout, collect)
        .await
        .map_err(|_| BenchError::Timeout("logging in".into()))??;
    let secs = start.elapsed().as_secs_f64();
    progress.finish().await;
    let usage = server.usage();
    let server_cpu_secs = cpu_before.zip(usage).map(|(b, u)| u.cpu_seconds - b);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Ok(LoginsReport {
        opts: opts.clone(),
        server: server.mode().to_string(),
        logged_in,
        failed,
        first_error,
        secs,
        latency: latency.summary(),
        server_cpu_secs,
        hashing_floor_secs: server_cpu_secs.map(|c| c / cores),
        server_usage: usage,
    })
}
