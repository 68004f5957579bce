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
            print_addr,
            no_rate_limit,
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
                session_host,
                ..CoordinatorConfig::default()
            };
            if no_rate_limit {
                config.member_limits.rate = None;
            }
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
        } => {
            // Logs would garble the prompt; only warnings, and only if asked for with RUST_LOG.
            init_tracing("off");
            let mut config = ClientConfig::new(user, coordinator);
            config.bind = bind;
            config.advertise = advertise;
            repl::run(config).await?;
        }
    }
    Ok(())
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
