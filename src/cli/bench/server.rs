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
    /// The `confab coordinator` binary as a child process (with `confab host` children, as
    /// the layout says): the only choice with server CPU and memory figures, because only then
    /// are the server's resources apart from ours.
    Child(Layout),
    /// A task in this process; what the tests use, since a test binary cannot start `confab`.
    InProcess,
    /// A coordinator already running at this address (it must have its rate limit off for
    /// full-speed scenarios).
    External(SocketAddr),
}

/// What runs as children: a coordinator alone in memory (the default), or on a throwaway
/// PostgreSQL database, with session hosts beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// A PostgreSQL URL: each run makes a database of its own on that server, and drops it
    /// afterwards.
    pub db: Option<String>,
    /// `confab host` processes (on 127.0.0.2, .3, …); the coordinator only directs. Needs `db`.
    pub hosts: usize,
}

/// The coordinator of one scenario run.
pub struct Server {
    addr: SocketAddr,
    kind: Kind,
}

/// A `confab host` child.
struct HostChild {
    child: Child,
    pid: u32,
    ip: std::net::IpAddr,
}

enum Kind {
    Child {
        child: Box<Child>,
        pid: u32,
        /// Kept open: the child must not get EPIPE should it print again.
        _stdout: ChildStdout,
        hosts: Vec<HostChild>,
        db: Option<BenchDb>,
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
            ServerChoice::Child(layout) => {
                let exe = std::env::current_exe()
                    .map_err(|e| BenchError::Spawn(format!("cannot find own executable: {e}")))?;
                if layout.hosts > 0 && layout.db.is_none() {
                    return Err(BenchError::Spawn(
                        "--hosts needs --db postgres://… (hosts share the coordinator's database)"
                            .into(),
                    ));
                }
                let db = match &layout.db {
                    Some(url) => Some(BenchDb::create(url).await?),
                    None => None,
                };
                let url = db.as_ref().map_or(":memory:", |d| d.url.as_str());
                let mut hosts = Vec::new();
                for i in 0..layout.hosts {
                    let ip = std::net::IpAddr::from([127, 0, 0, 2 + i as u8]);
                    let child = Command::new(&exe)
                        .args(["host", "--db", url, "--listen", &ip.to_string()])
                        .args(["--no-rate-limit", "--insecure"])
                        .env("RUST_LOG", "warn")
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .map_err(|e| BenchError::Spawn(format!("{}: {e}", exe.display())))?;
                    let pid = child
                        .id()
                        .ok_or_else(|| BenchError::Spawn("a host exited at once".into()))?;
                    hosts.push(HostChild { child, pid, ip });
                }
                let mut child = Command::new(&exe)
                    .args([
                        "coordinator",
                        "--listen",
                        "127.0.0.1:0",
                        "--print-addr",
                        "--no-rate-limit",
                        "--db",
                        url,
                        "--no-abuse-limits",
                        // `bench coordinator --plain` sends plain requests (see requests.rs).
                        "--insecure",
                    ])
                    .args((layout.hosts > 0).then_some("--no-local-sessions"))
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
                if let Some(db) = &db {
                    db.await_hosts(layout.hosts).await?;
                }
                Ok(Server {
                    addr,
                    kind: Kind::Child {
                        child: Box::new(child),
                        pid,
                        _stdout: lines.into_inner(),
                        hosts,
                        db,
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
        match &self.kind {
            Kind::Child { hosts, .. } if !hosts.is_empty() => {
                "child processes: coordinator and hosts"
            }
            Kind::Child { .. } => "child process",
            Kind::InProcess { .. } => "in process",
            Kind::External => "external",
        }
    }

    /// The server's resource use so far, when it runs as our child (with its hosts: the sum).
    pub fn usage(&self) -> Option<ProcUsage> {
        let each = self.usage_each();
        (!each.is_empty()).then(|| {
            each.iter()
                .fold(ProcUsage::default(), |sum, (_, u)| ProcUsage {
                    cpu_seconds: sum.cpu_seconds + u.cpu_seconds,
                    rss_bytes: sum.rss_bytes + u.rss_bytes,
                    peak_rss_bytes: sum.peak_rss_bytes + u.peak_rss_bytes,
                })
        })
    }

    /// Each child process's resource use so far: the coordinator, then each host.
    pub fn usage_each(&self) -> Vec<(String, ProcUsage)> {
        let Kind::Child { pid, hosts, .. } = &self.kind else {
            return Vec::new();
        };
        let mut each: Vec<_> = ProcUsage::of(*pid)
            .map(|u| ("coordinator".to_string(), u))
            .into_iter()
            .collect();
        for h in hosts {
            if let Some(u) = ProcUsage::of(h.pid) {
                each.push((format!("host {}", h.ip), u));
            }
        }
        each
    }

    /// The hosts' own word on their load (their last heartbeat): where the sessions and members
    /// went. Empty without hosts.
    pub async fn host_loads(&self) -> Vec<(String, u32, u32)> {
        match &self.kind {
            Kind::Child {
                db: Some(db),
                hosts,
                ..
            } if !hosts.is_empty() => db.loads().await.unwrap_or_default(),
            _ => Vec::new(),
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
            Kind::Child {
                mut child,
                hosts,
                db,
                ..
            } => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                for mut h in hosts {
                    let _ = h.child.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(5), h.child.wait()).await;
                }
                if let Some(db) = db {
                    db.drop_it().await;
                }
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

/// A database of the run's own on the PostgreSQL server the bench was given, so that runs
/// never meet each other's accounts and sessions; dropped at the end.
struct BenchDb {
    /// The URL given (its database is where `CREATE DATABASE` runs).
    admin: String,
    name: String,
    url: String,
}

impl BenchDb {
    async fn create(admin: &str) -> Result<BenchDb> {
        let name = format!(
            "confab_bench_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        let client = connect(admin).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| BenchError::Spawn(format!("cannot make the bench database: {e}")))?;
        Ok(BenchDb {
            url: with_database(admin, &name),
            admin: admin.to_string(),
            name,
        })
    }

    /// Waits until `n` hosts have a live heartbeat (they are started before the coordinator,
    /// and take a moment to connect).
    async fn await_hosts(&self, n: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if self.loads().await.map_or(0, |l| l.len()) >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BenchError::Spawn(format!(
                    "{n} hosts did not all start within {START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each live host's address, members and sessions.
    async fn loads(&self) -> Result<Vec<(String, u32, u32)>> {
        let client = connect(&self.url).await?;
        let rows = client
            .query(
                "SELECT address, members, sessions FROM hosts
                 WHERE kind = 'host' AND lease_until > now() ORDER BY address",
                &[],
            )
            .await
            .unwrap_or_default();
        Ok(rows
            .iter()
            .map(|r| {
                let n = |i| r.get::<_, i32>(i).max(0) as u32;
                (r.get(0), n(1), n(2))
            })
            .collect())
    }

    async fn drop_it(self) {
        match connect(&self.admin).await {
            Ok(client) => {
                let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                if let Err(e) = client.batch_execute(&drop).await {
                    tracing::warn!(error = %e, database = %self.name, "bench database left behind");
                }
            }
            Err(e) => tracing::warn!(error = %e, "bench database left behind"),
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    confab::store::postgres::connect_client(url)
        .await
        .map_err(|e| BenchError::Spawn(e.to_string()))
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bench_database_replaces_the_one_in_the_url() {
        let w = super::with_database;
        assert_eq!(w("postgres://u@h:5/postgres", "b"), "postgres://u@h:5/b");
        assert_eq!(w("postgres://u@h:5", "b"), "postgres://u@h:5/b");
        assert_eq!(
            w("postgresql://u:p@h/db?sslmode=disable", "b"),
            "postgresql://u:p@h/b?sslmode=disable"
        );
    }
}
