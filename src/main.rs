//! `confab`: argument parsing and wiring only; everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod cli;

use cli::{process, repl};
use confab::client::ClientConfig;
use confab::coordinator::{self, CoordinatorConfig};
use confab::store::Database;

/// A chat system: a UDP coordinator, one TCP server per session, and a terminal client whose
/// private messages go peer to peer.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator (and the session servers it starts).
    Coordinator {
        /// UDP address to listen on.
        #[arg(long, default_value = "127.0.0.1:7500", env = "CONFAB_LISTEN")]
        listen: SocketAddr,
        #[command(flatten)]
        session: SessionArgs,
        /// File that gets one line per login, join and leave.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// MiB the --log-file may reach before it is renamed to FILE.1 and a new one begun.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
        log_max_mib: u64,
        /// Old --log-file files kept (FILE.1 … FILE.N); older ones are deleted.
        #[arg(long, default_value_t = 4)]
        log_keep: usize,
        /// Where the data lives: a SQLite file (created if missing), or a PostgreSQL database
        /// by its `postgres://user:password@host/dbname` URL; `:memory:` keeps nothing.
        #[arg(long, env = "CONFAB_DB")]
        db: Option<String>,
        /// Seconds a session's claim lasts unrenewed: with several coordinators on one
        /// PostgreSQL database, how soon another serves the sessions of one that died.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..))]
        lease_secs: u64,
        /// Hours a login token stays valid.
        #[arg(long, default_value_t = 24)]
        token_hours: u64,
        /// IP address session servers listen on and announce (default: the --listen address,
        /// or 127.0.0.1 when that is 0.0.0.0).
        #[arg(long)]
        session_host: Option<std::net::IpAddr>,
        /// Print the bound UDP address as the first line on stdout, so a parent process that
        /// asked for port 0 (the benchmark) learns where to send requests.
        #[arg(long)]
        print_addr: bool,
        /// Hash new passwords at the cheapest argon2 cost. For benchmarks and tests that register
        /// thousands of accounts; never for real ones.
        #[arg(long)]
        fast_passwords: bool,
        #[command(flatten)]
        abuse: AbuseArgs,
        /// Print the coordinator's public key (its identity, kept in --db; made now if the
        /// database has none) and exit, so that it can be published for clients to pin.
        #[arg(long)]
        print_key: bool,
        /// Also take plain (unsealed) requests, as typed into `nc`. For debugging only:
        /// passwords and tokens sent that way cross the network readable.
        #[arg(long)]
        insecure: bool,
        /// Run no session servers here: place every session on a `confab host` of the group
        /// (needs a PostgreSQL --db shared with the hosts).
        #[arg(long)]
        no_local_sessions: bool,
    },
    /// Run session servers for a coordinator group, on another machine, sharing its PostgreSQL
    /// database: coordinators place new sessions on the least-loaded live host.
    Host {
        /// The group's database: `postgres://user:password@host/dbname`.
        #[arg(long, env = "CONFAB_DB")]
        db: String,
        /// Where session servers listen, and clients are sent: `IP`, `IP:PORT` or
        /// `IP:FIRST-LAST` (the ports a firewall lets through).
        #[arg(long, value_parser = parse_listen)]
        listen: (std::net::IpAddr, Option<std::ops::RangeInclusive<u16>>),
        /// Seconds this host's heartbeat and claims last unrenewed: how soon its sessions are
        /// served elsewhere if it dies. The same as the coordinators' --lease-secs.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..))]
        lease_secs: u64,
        #[command(flatten)]
        session: SessionArgs,
        /// Most session servers at once.
        #[arg(long, default_value_t = 10_000)]
        max_sessions: usize,
        /// Take plaintext session connections too (a group whose coordinators run
        /// --insecure). For debugging only.
        #[arg(long)]
        insecure: bool,
    },
    /// Measure the server: throughput, latency, joins, private messages, coordinator requests.
    Bench(cli::bench::BenchArgs),
    /// Run the terminal client.
    Client {
        /// Your user name.
        #[arg(long, env = "CONFAB_USER")]
        user: String,
        /// The coordinator: host name or IP address, with `:port` unless it is 7500. Several,
        /// comma-separated (or a name with several addresses), are a group sharing one
        /// database: the next is asked when one stops answering.
        #[arg(long, default_value = "127.0.0.1:7500", env = "CONFAB_COORDINATOR")]
        coordinator: String,
        /// Local UDP address for private messages (default: any, port chosen by the OS).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Endpoint to announce to peers instead of the one the coordinator sees.
        #[arg(long)]
        advertise: Option<SocketAddr>,
        /// Create the account first.
        #[arg(long)]
        register: bool,
        /// Join this session (id, id prefix or name) on start.
        #[arg(long, value_name = "NAME")]
        join: Option<String>,
        /// The coordinator's key (`confab coordinator --print-key`), to trust only that one
        /// instead of the one it shows on first use.
        #[arg(long, value_name = "KEY", value_parser = parse_key)]
        coordinator_key: Option<[u8; 32]>,
    },
}

/// How session servers treat their members: the same flags for a coordinator and a host, so a
/// group can serve its sessions alike wherever they run.
#[derive(clap::Args)]
struct SessionArgs {
    /// Seconds an empty session stays open before its server stops.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Let members send as fast as they like: benchmarks at full speed need this.
    #[arg(long)]
    no_rate_limit: bool,
    /// MiB the server may hold for one member that is not reading (queued lines, a replay, a
    /// history answer) before dropping it as too slow: bounds what a member that never reads
    /// costs.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    member_budget_mib: u64,
    /// Seconds a member's queue may stay past its high-water mark (the room holds the
    /// senders back meanwhile) before the member is dropped as too slow.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=60))]
    drain_secs: u64,
}

impl SessionArgs {
    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout)
    }

    fn member_budget(&self) -> usize {
        (self.member_budget_mib as usize) << 20
    }

    fn member_limits(&self) -> confab::session::MemberLimits {
        let mut limits = confab::session::MemberLimits {
            drain_timeout: Duration::from_secs(self.drain_secs),
            ..Default::default()
        };
        if self.no_rate_limit {
            limits.rate = None;
        }
        limits
    }
}

/// What strangers may ask of the coordinator (README, "Limits and abuse"). 0 turns a limit off.
#[derive(clap::Args)]
struct AbuseArgs {
    /// Requests without a valid token (register, login, list, garbage) per second per address,
    /// in bursts of as many; more are dropped unanswered.
    #[arg(long, default_value_t = 50, value_name = "N")]
    requests_per_sec: u32,
    /// Accounts registered per hour per address.
    #[arg(long, default_value_t = 5, value_name = "N")]
    registrations_per_hour: u32,
    /// Sessions created per hour per account.
    #[arg(long, default_value_t = 20, value_name = "N")]
    sessions_per_hour: u32,
    /// Sessions created per hour per address, whatever the accounts.
    #[arg(long, default_value_t = 50, value_name = "N")]
    sessions_per_address_per_hour: u32,
    /// Private datagrams per second one account may have the coordinator relay (for peers no
    /// direct path reaches).
    #[arg(long, default_value_t = 20, value_name = "N")]
    relays_per_sec: u32,
    /// Sessions one account may have at once (created and not closed).
    #[arg(long, default_value_t = 100, value_name = "N")]
    live_sessions: usize,
    /// Turn the five limits above off, and the hold on parallel logins per address: for
    /// benchmarks and tests that drive thousands of accounts from one address; never for a
    /// coordinator strangers can reach.
    #[arg(long)]
    no_abuse_limits: bool,
    /// Threads hashing passwords (default: two per core).
    #[arg(long, value_name = "N")]
    hash_workers: Option<usize>,
    /// Logins and registrations waiting for a hashing thread; more are answered `busy`.
    #[arg(long, default_value_t = 256, value_name = "N")]
    hash_queue: usize,
    /// File descriptors kept free for members of running sessions (default: a quarter of the
    /// open-file limit); no new session server starts when fewer would be left.
    #[arg(long, value_name = "N")]
    fd_reserve: Option<usize>,
}

impl AbuseArgs {
    /// Applies the flags to `config`.
    fn apply(self, config: &mut CoordinatorConfig) {
        use coordinator::{AbuseLimits, Rate};
        let on = |n: u32, rate: fn(u32) -> Rate| (n > 0).then(|| rate(n));
        config.abuse = if self.no_abuse_limits {
            AbuseLimits::off()
        } else {
            AbuseLimits {
                requests: on(self.requests_per_sec, Rate::per_second),
                registrations: on(self.registrations_per_hour, Rate::per_hour),
                sessions_per_user: on(self.sessions_per_hour, Rate::per_hour),
                sessions_per_address: on(self.sessions_per_address_per_hour, Rate::per_hour),
                relays_per_user: on(self.relays_per_sec, Rate::per_second),
                live_sessions_per_user: (self.live_sessions > 0).then_some(self.live_sessions),
                hold_parallel_logins: true,
            }
        };
        if let Some(n) = self.hash_workers {
            config.hash_workers = n.max(1);
        }
        config.hash_queue = self.hash_queue;
        config.fd_reserve = self.fd_reserve;
    }
}

/// Errors are printed as one readable chain, `confab: what: why`, and never as a `Debug` dump
/// with a backtrace, whatever `RUST_BACKTRACE` says: they are answers for a person, not bugs.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("confab: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confab: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn parse_listen(
    text: &str,
) -> Result<(std::net::IpAddr, Option<std::ops::RangeInclusive<u16>>), String> {
    confab::host::parse_listen(text)
}

fn parse_key(text: &str) -> Result<[u8; 32], confab::identity::BadFingerprint> {
    confab::identity::parse_fingerprint(text)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Coordinator {
            listen,
            session,
            log_file,
            log_max_mib,
            log_keep,
            session_host,
            db,
            lease_secs,
            token_hours,
            print_addr,
            fast_passwords,
            abuse,
            print_key,
            insecure,
            no_local_sessions,
        } => {
            let db = match db.as_deref() {
                Some(":memory:") => None,
                Some(text) => Some(Database::parse(text)),
                None => Some(Database::Sqlite(coordinator::default_db_path())),
            };
            if print_key {
                println!(
                    "{}",
                    coordinator::identity(db.as_ref()).await?.fingerprint()
                );
                return Ok(());
            }
            process::init_tracing("info");
            match coordinator::raise_fd_limit() {
                Ok(limit) => tracing::info!(limit, "open-file limit"),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
            }
            let socket = tokio::net::UdpSocket::bind(listen)
                .await
                .with_context(|| format!("cannot listen on UDP {listen}"))?;
            if print_addr {
                println!("{}", socket.local_addr()?);
            }
            let mut config = CoordinatorConfig {
                idle_timeout: session.idle_timeout(),
                presence_log: log_file,
                presence_log_rotation: confab::presence_log::Rotation {
                    max_bytes: log_max_mib << 20,
                    keep: log_keep,
                },
                session_host,
                db,
                token_ttl: Duration::from_secs(token_hours * 3600),
                lease: Duration::from_secs(lease_secs),
                member_budget: session.member_budget(),
                member_limits: session.member_limits(),
                ..CoordinatorConfig::default()
            };
            config.insecure = insecure;
            config.local_sessions = !no_local_sessions;
            if no_local_sessions && !matches!(config.db, Some(Database::Postgres(_))) {
                anyhow::bail!(
                    "--no-local-sessions places sessions on `confab host` processes, which share a PostgreSQL --db with the coordinator"
                );
            }
            if fast_passwords {
                config.password_cost = confab::auth::PasswordCost::INSECURE_FAST;
            }
            abuse.apply(&mut config);
            let shutdown = CancellationToken::new();
            process::stop_on_signals(shutdown.clone())?;
            coordinator::run(socket, config, shutdown).await?;
        }
        Command::Client {
            user,
            coordinator,
            bind,
            advertise,
            register,
            join,
            coordinator_key,
        } => {
            // Logs would garble the prompt; only warnings, and only if asked for with RUST_LOG.
            process::init_tracing("off");
            let mut coordinators = cli::address::resolve_all(&coordinator).await?.into_iter();
            let coordinator = coordinators.next().expect("at least one address");
            let password = std::env::var("CONFAB_PASSWORD").ok();
            // The user's identity key and the peers' pinned keys live beside the known
            // coordinator keys (`$XDG_DATA_HOME/confab`).
            let identity = cli::identities::load_or_make(coordinator, &user)
                .map_err(|e| anyhow::anyhow!("cannot keep the identity key: {e}"))?;
            let mut config = ClientConfig::new(user, coordinator);
            config.identity = Some(identity);
            config.known_peers = confab::dirs::data_dir().map(|d| d.join("known_peers"));
            config.bind = bind;
            config.advertise = advertise;
            config.more_coordinators = coordinators.collect();
            let credentials = repl::Credentials { password, register };
            let start = repl::Start {
                join,
                coordinator_key,
            };
            repl::run(config, credentials, start).await?;
        }
        Command::Host {
            db,
            listen: (ip, ports),
            lease_secs,
            session,
            max_sessions,
            insecure,
        } => {
            process::init_tracing("info");
            if let Err(e) = coordinator::raise_fd_limit() {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
            }
            let mut config = confab::host::HostConfig::new(Database::parse(&db), ip);
            config.ports = ports;
            config.lease = Duration::from_secs(lease_secs);
            config.idle_timeout = session.idle_timeout();
            config.member_limits = session.member_limits();
            config.member_budget = session.member_budget();
            config.max_sessions = max_sessions;
            config.insecure = insecure;
            let shutdown = CancellationToken::new();
            process::stop_on_signals(shutdown.clone())?;
            confab::host::run(config, shutdown).await?;
        }
        Command::Bench(args) => {
            process::init_tracing("warn");
            cli::bench::run(args).await?;
        }
    }
    Ok(())
}
