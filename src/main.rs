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
        /// File that gets one line per join and leave.
        #[arg(long)]
        log_file: Option<PathBuf>,
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
    },
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Coordinator {
            listen,
            idle_timeout,
            log_file,
            session_host,
            db,
            token_hours,
        } => {
            init_tracing("info");
            let socket = tokio::net::UdpSocket::bind(listen)
                .await
                .with_context(|| format!("cannot listen on UDP {listen}"))?;
            let config = CoordinatorConfig {
                idle_timeout: Duration::from_secs(idle_timeout),
                presence_log: log_file,
                session_host,
                db: match db.as_deref() {
                    Some(":memory:") => None,
                    Some(path) => Some(PathBuf::from(path)),
                    None => Some(coordinator::default_db_path()),
                },
                token_ttl: Duration::from_secs(token_hours * 3600),
                ..CoordinatorConfig::default()
            };
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("Ctrl-C: shutting down");
                on_signal.cancel();
            });
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

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
