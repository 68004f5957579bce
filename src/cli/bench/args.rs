//! `confab bench`'s own arguments: where the server runs and how results are shown.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use super::{DmOpts, FanoutOpts, IrcOpts, JoinOpts, LoginsOpts, RequestsOpts, SessionsOpts};

/// Where the server runs and how results are shown; scenario options follow the scenario name.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Use this running coordinator instead of starting one (no server CPU or memory figures).
    #[arg(long, global = true, conflicts_with = "in_process")]
    coordinator: Option<SocketAddr>,
    /// Run the coordinator inside the benchmark process (no server CPU or memory figures).
    #[arg(long, global = true)]
    in_process: bool,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Run the coordinator on PostgreSQL: a throwaway database made on the server this URL
    /// names (`postgres://user@host:port/postgres`), dropped afterwards.
    #[arg(long, global = true, value_name = "URL", conflicts_with_all = ["in_process", "coordinator"])]
    db: Option<String>,
    /// Run N `confab host` processes (on 127.0.0.2, .3, …) beside a coordinator that only
    /// directs; needs --db.
    #[arg(
        long,
        global = true,
        default_value_t = 0,
        value_name = "N",
        requires = "db"
    )]
    hosts: usize,
    /// Seconds any one phase may take before it is reported as failed.
    #[arg(long, global = true, default_value_t = 120)]
    timeout: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

/// The measurement to run.
#[derive(Subcommand)]
pub enum Scenario {
    /// One session: every member receives what the senders send.
    Fanout(FanoutOpts),
    /// Many members joining one session.
    Join(JoinOpts),
    /// Many sessions at once, every member sending.
    Sessions(SessionsOpts),
    /// Pairs of members exchanging private messages peer to peer.
    Dm(DmOpts),
    /// Coordinator `list` and `join` requests per second.
    Coordinator(RequestsOpts),
    /// Many clients logging in at the same moment, at the real password-hashing cost.
    Logins(LoginsOpts),
    /// The open-loop fan-out against an IRC server (ngIRCd, InspIRCd), for a side-by-side
    /// comparison.
    Irc(IrcOpts),
}

/// Runs the chosen scenario and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::raise_fd_limit().context("cannot raise the open-file limit")?;
    let env = super::BenchEnv {
        server: match (args.coordinator, args.in_process) {
            (Some(addr), _) => super::ServerChoice::External(addr),
            (None, true) => super::ServerChoice::InProcess,
            (None, false) => super::ServerChoice::Child(super::Layout {
                db: args.db,
                hosts: args.hosts,
            }),
        },
        timeout: Duration::from_secs(args.timeout),
        progress: true,
    };
    let output = match args.scenario {
        Scenario::Fanout(opts) => super::render(&super::fanout(&env, &opts).await?, args.json),
        Scenario::Sessions(opts) => {
            super::render(&super::sessions(&env, &opts.into()).await?, args.json)
        }
        Scenario::Join(opts) => super::render(&super::join(&env, &opts).await?, args.json),
        Scenario::Dm(opts) => super::render(&super::dm(&env, &opts).await?, args.json),
        Scenario::Logins(opts) => super::render(&super::logins(&env, &opts).await?, args.json),
        Scenario::Irc(opts) => super::render(&super::irc(&opts, env.timeout).await?, args.json),
        Scenario::Coordinator(opts) => {
            super::render(&super::requests(&env, &opts).await?, args.json)
        }
    };
    print!("{output}");
    Ok(())
}
