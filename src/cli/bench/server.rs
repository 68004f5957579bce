//! Starting, measuring and stopping the coordinator a scenario runs against.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BenchError, Result};
use confab::coordinator::{self, CoordinatorConfig};

/// Where the coordinator under test runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerChoice {
    /// The `confab coordinator` binary as a child process: the only choice with server CPU and
    /// memory figures, because only then are the server's resources apart from ours.
    Child,
    /// A task in this process; what the tests use, since a test binary cannot start `confab`.
    InProcess,
    /// A coordinator already running at this address (it must have its rate limit off for
    /// full-speed scenarios).
    External(SocketAddr),
}

/// The coordinator of one scenario run.
pub struct Server {
    addr: SocketAddr,
    kind: Kind,
}

enum Kind {
    Child {
        child: Box<Child>,
        pid: u32,
        /// Kept open: the child must not get EPIPE should it print again.
        _stdout: ChildStdout,
    },
    InProcess {
        stop: CancellationToken,
        task: JoinHandle<()>,
    },
    External,
}

/// How long a child coordinator may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// Starts (or, for [`ServerChoice::External`], just names) the coordinator, hashing
    /// passwords at the cheapest cost: thousands of bench accounts, and the hash cost is not
    /// what most scenarios measure.
    pub async fn start(choice: &ServerChoice) -> Result<Server> {
        Self::start_hashing(choice, true).await
    }

    /// [`Server::start`], hashing at the real cost unless `fast_passwords`: for the scenario
    /// that measures logins.
    pub async fn start_hashing(choice: &ServerChoice, fast_passwords: bool) -> Result<Server> {
        match choice {
            ServerChoice::External(addr) => Ok(Server {
                addr: *addr,
                kind: Kind::External,
            }),
            ServerChoice::InProcess => {
                let socket = UdpSocket::bind("127.0.0.1:0").await?;
                let addr = socket.local_addr()?;
                let mut config = CoordinatorConfig::default();
                config.member_limits.rate = None;
                if fast_passwords {
                    config.password_cost = confab::auth::PasswordCost::INSECURE_FAST;
                }
                config.abuse = coordinator::AbuseLimits::off();
                // `bench coordinator --plain` sends plain requests (see requests.rs).
                config.insecure = true;
                let stop = CancellationToken::new();
                let task = tokio::spawn({
                    let stop = stop.clone();
                    async move {
                        if let Err(e) = coordinator::run(socket, config, stop).await {
                            tracing::error!(error = %e, "in-process coordinator failed");
                        }
                    }
                });
                Ok(Server {
                    addr,
                    kind: Kind::InProcess { stop, task },
                })
            }
            ServerChoice::Child => {
                let exe = std::env::current_exe()
                    .map_err(|e| BenchError::Spawn(format!("cannot find own executable: {e}")))?;
                let mut child = Command::new(&exe)
                    .args([
                        "coordinator",
                        "--listen",
                        "127.0.0.1:0",
                        "--print-addr",
                        "--no-rate-limit",
                        "--db",
                        ":memory:",
                        "--no-abuse-limits",
                        // `bench coordinator --plain` sends plain requests (see requests.rs).
                        "--insecure",
                    ])
                    .args(fast_passwords.then_some("--fast-passwords"))
                    // Info logs cost the server a line per join; the bench measures the server,
                    // not its logging.
                    .env("RUST_LOG", "warn")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| BenchError::Spawn(format!("{}: {e}", exe.display())))?;
                let pid = child
                    .id()
                    .ok_or_else(|| BenchError::Spawn("child exited at once".into()))?;
                let stdout = child.stdout.take().expect("stdout is piped");
                let mut lines = BufReader::new(stdout);
                let mut first = String::new();
                match tokio::time::timeout(START_TIMEOUT, lines.read_line(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        return Err(BenchError::Spawn(
                            "the child did not print its address".into(),
                        ));
                    }
                }
                let addr = first.trim().parse().map_err(|e| {
                    BenchError::Spawn(format!("child printed {first:?}, not an address: {e}"))
                })?;
                Ok(Server {
                    addr,
                    kind: Kind::Child {
                        child: Box::new(child),
                        pid,
                        _stdout: lines.into_inner(),
                    },
                })
            }
        }
    }

    /// The coordinator's UDP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How the server runs, for reports.
    pub fn mode(&self) -> &'static str {
        match self.kind {
            Kind::Child { .. } => "child process",
            Kind::InProcess { .. } => "in process",
            Kind::External => "external",
        }
    }

    /// The server's resource use so far, when it runs as our child.
    pub fn usage(&self) -> Option<ProcUsage> {
        match &self.kind {
            Kind::Child { pid, .. } => ProcUsage::of(*pid),
            _ => None,
        }
    }

    /// Runs `scenario` against a coordinator started as `choice` says, and stops it afterwards
    /// whatever the outcome.
    pub async fn with<T>(
        choice: &ServerChoice,
        scenario: impl AsyncFnOnce(&Server) -> Result<T>,
    ) -> Result<T> {
        let server = Server::start(choice).await?;
        let result = scenario(&server).await;
        server.stop().await;
        result
    }

    /// Stops a server we started; leaves an external one alone.
    pub async fn stop(self) {
        match self.kind {
            Kind::Child { mut child, .. } => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            }
            Kind::InProcess { stop, task } => {
                stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
            Kind::External => {}
        }
    }
}

/// CPU time and memory of one process, as `/proc` tells them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcUsage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory now, in bytes.
    pub rss_bytes: u64,
    /// Largest resident memory so far (VmHWM), in bytes.
    pub peak_rss_bytes: u64,
}

impl ProcUsage {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` where there is no `/proc`.
    pub fn of(pid: u32) -> Option<ProcUsage> {
        Self::read(&format!("/proc/{pid}"))
    }

    /// The benchmark process itself, to show whether the load generator was the bottleneck.
    pub fn own() -> Option<ProcUsage> {
        Self::read("/proc/self")
    }

    fn read(dir: &str) -> Option<ProcUsage> {
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        // The command name may hold spaces and parentheses; the fields start after the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); here 0 is field 3.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Some(ProcUsage {
            cpu_seconds: (utime + stime) as f64 / ticks,
            rss_bytes: kib("VmRSS:"),
            peak_rss_bytes: kib("VmHWM:"),
        })
    }
}

/// Raises the soft limit on open files to the hard limit (every benchmark member holds one or
/// two sockets in this process); a child coordinator inherits the raised limit.
pub use confab::coordinator::raise_fd_limit;
