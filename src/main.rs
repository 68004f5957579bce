//! `confab`: argument parsing and wiring only; everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use confab::client::{ClientConfig, repl};
use confab::coordinator::{self, CoordinatorConfig};

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
        /// Seconds an empty session stays open before it is closed.
        #[arg(long, default_value_t = 300)]
        idle_timeout: u64,
        /// File that gets one line per login, join and leave.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// MiB the --log-file may reach before it is renamed to FILE.1 and a new one begun.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
        log_max_mib: u64,
        /// Old --log-file files kept (FILE.1 … FILE.N); older ones are deleted.
        #[arg(long, default_value_t = 4)]
        log_keep: usize,
        /// SQLite database file (created if missing); `:memory:` keeps nothing.
        #[arg(long, env = "CONFAB_DB")]
        db: Option<String>,
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
        /// Let members send as fast as they like: benchmarks at full speed need this.
        #[arg(long)]
        no_rate_limit: bool,
        /// Hash new passwords at the cheapest argon2 cost. For benchmarks and tests that register
        /// thousands of accounts; never for real ones.
        #[arg(long)]
        fast_passwords: bool,
        /// MiB the server may hold for one member that is not reading (queued lines, a replay, a
        /// history answer) before dropping it as too slow: bounds what a member that never reads
        /// costs.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
        member_budget_mib: u64,
    },
    /// Measure the server: throughput, latency, joins, private messages, coordinator requests.
    Bench(BenchArgs),
    /// Run the terminal client.
    Client {
        /// Your user name.
        #[arg(long, env = "CONFAB_USER")]
        user: String,
        /// The coordinator's UDP address.
        #[arg(long, default_value = "127.0.0.1:7500", env = "CONFAB_COORDINATOR")]
        coordinator: SocketAddr,
        /// Local UDP address for private messages (default: any, port chosen by the OS).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Endpoint to announce to peers instead of the one the coordinator sees.
        #[arg(long)]
        advertise: Option<SocketAddr>,
        /// Create the account first.
        #[arg(long)]
        register: bool,
    },
}

/// Where the server runs and how results are shown; scenario options follow the scenario name.
#[derive(clap::Args)]
struct BenchArgs {
    /// Use this running coordinator instead of starting one (no server CPU or memory figures).
    #[arg(long, global = true, conflicts_with = "in_process")]
    coordinator: Option<SocketAddr>,
    /// Run the coordinator inside the benchmark process (no server CPU or memory figures).
    #[arg(long, global = true)]
    in_process: bool,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds any one phase may take before it is reported as failed.
    #[arg(long, global = true, default_value_t = 120)]
    timeout: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// One session: every member receives what the senders send.
    Fanout {
        /// Members in the session.
        #[arg(long, default_value_t = 50)]
        members: usize,
        /// Members that send (every member receives).
        #[arg(long, default_value_t = 50)]
        senders: usize,
        /// Messages per sender.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Messages per second per sender (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Most messages a sender has on the way before it waits for its own to come back
        /// (0: no limit, and the server drops whoever falls 4096 lines behind).
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Many members joining one session.
    Join {
        /// Members that join.
        #[arg(long, default_value_t = 2000)]
        members: usize,
        /// Members connecting at the same time (default: all).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Many sessions at once, every member sending.
    Sessions {
        /// Sessions.
        #[arg(long, default_value_t = 200)]
        sessions: usize,
        /// Members per session.
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Senders per session (default: every member).
        #[arg(long)]
        senders: Option<usize>,
        /// Messages per sender.
        #[arg(long, default_value_t = 50)]
        messages: usize,
        /// Messages per second per sender (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Most messages a sender has on the way before it waits for its own to come back.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Pairs of members exchanging private messages peer to peer.
    Dm {
        /// Pairs.
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Messages each member sends its partner.
        #[arg(long, default_value_t = 200)]
        messages: usize,
    },
    /// Coordinator `list` and `join` requests per second.
    Coordinator {
        /// Requests of each kind.
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        /// Sockets sending at once.
        #[arg(long, default_value_t = 4)]
        sockets: usize,
        /// Requests in flight per socket.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Sessions in the directory.
        #[arg(long, default_value_t = 20)]
        sessions: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Coordinator {
            listen,
            idle_timeout,
            log_file,
            log_max_mib,
            log_keep,
            session_host,
            db,
            token_hours,
            print_addr,
            no_rate_limit,
            fast_passwords,
            member_budget_mib,
        } => {
            init_tracing("info");
            let socket = tokio::net::UdpSocket::bind(listen)
                .await
                .with_context(|| format!("cannot listen on UDP {listen}"))?;
            if print_addr {
                println!("{}", socket.local_addr()?);
            }
            let mut config = CoordinatorConfig {
                idle_timeout: Duration::from_secs(idle_timeout),
                presence_log: log_file,
                presence_log_rotation: confab::presence_log::Rotation {
                    max_bytes: log_max_mib << 20,
                    keep: log_keep,
                },
                session_host,
                db: match db.as_deref() {
                    Some(":memory:") => None,
                    Some(path) => Some(PathBuf::from(path)),
                    None => Some(coordinator::default_db_path()),
                },
                token_ttl: Duration::from_secs(token_hours * 3600),
                member_budget: (member_budget_mib as usize) << 20,
                ..CoordinatorConfig::default()
            };
            if no_rate_limit {
                config.member_limits.rate = None;
            }
            if fast_passwords {
                config.password_cost = confab::auth::PasswordCost::INSECURE_FAST;
            }
            let shutdown = CancellationToken::new();
            stop_on_signals(shutdown.clone())?;
            coordinator::run(socket, config, shutdown).await?;
        }
        Command::Client {
            user,
            coordinator,
            bind,
            advertise,
            register,
        } => {
            // Logs would garble the prompt; only warnings, and only if asked for with RUST_LOG.
            init_tracing("off");
            let password = password_for(&user)?;
            let mut config = ClientConfig::new(user, coordinator);
            config.bind = bind;
            config.advertise = advertise;
            repl::run(config, repl::Credentials { password, register }).await?;
        }
        Command::Bench(args) => {
            init_tracing("warn");
            bench(args).await?;
        }
    }
    Ok(())
}

/// `CONFAB_PASSWORD`, or asked for without echo when a person is at the terminal.
fn password_for(user: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if let Ok(password) = std::env::var("CONFAB_PASSWORD") {
        return Ok(password);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(format!("password for {user}: "))
            .context("cannot read the password");
    }
    anyhow::bail!("no password: set CONFAB_PASSWORD, or run in a terminal to be asked")
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use confab::bench;
    bench::raise_fd_limit().context("cannot raise the open-file limit")?;
    let env = bench::BenchEnv {
        server: match (args.coordinator, args.in_process) {
            (Some(addr), _) => bench::ServerChoice::External(addr),
            (None, true) => bench::ServerChoice::InProcess,
            (None, false) => bench::ServerChoice::Child,
        },
        timeout: Duration::from_secs(args.timeout),
        progress: true,
    };
    let output = match args.scenario {
        Scenario::Fanout {
            members,
            senders,
            messages,
            rate,
            window,
        } => {
            let opts = bench::FanoutOpts {
                sessions: 1,
                members,
                senders,
                messages,
                rate,
                window,
            };
            bench::render(&bench::fanout(&env, &opts).await?, args.json)
        }
        Scenario::Sessions {
            sessions,
            members,
            senders,
            messages,
            rate,
            window,
        } => {
            let opts = bench::FanoutOpts {
                sessions,
                members,
                senders: senders.unwrap_or(members),
                messages,
                rate,
                window,
            };
            bench::render(&bench::sessions(&env, &opts).await?, args.json)
        }
        Scenario::Join {
            members,
            concurrency,
        } => {
            let opts = bench::JoinOpts {
                members,
                concurrency: concurrency.unwrap_or(members),
            };
            bench::render(&bench::join(&env, &opts).await?, args.json)
        }
        Scenario::Dm { pairs, messages } => bench::render(
            &bench::dm(&env, &bench::DmOpts { pairs, messages }).await?,
            args.json,
        ),
        Scenario::Coordinator {
            requests,
            sockets,
            window,
            sessions,
        } => {
            let opts = bench::RequestsOpts {
                requests,
                sockets,
                window,
                sessions,
            };
            bench::render(&bench::requests(&env, &opts).await?, args.json)
        }
    };
    print!("{output}");
    Ok(())
}

/// Ctrl-C or SIGTERM (how systemd and container runtimes stop a service) starts a clean
/// shutdown: members are told, history is written. A second one exits at once, for a shutdown
/// stuck on something (a member whose socket does not drain holds it for up to 10 s).
fn stop_on_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        // Shutdown first: logging may fail or block (a closed pipe), and must not hold it up.
        shutdown.cancel();
        tracing::info!(
            signal = name,
            "shutting down; send it again to exit at once"
        );
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::warn!(
            signal = name,
            "second signal: exiting without finishing the shutdown"
        );
        std::process::exit(130);
    });
    Ok(())
}

fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, not in files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| Stderr)
        .log_internal_errors(false)
        .init();
}

/// Standard error for logs, where a failed write is dropped: when the reader of a pipe (`| tee
/// log`) goes away, the server must keep serving, not stop at its next log line.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
