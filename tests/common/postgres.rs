//! A throwaway PostgreSQL server for tests: `initdb` into a temporary folder, `pg_ctl start` on a
//! loopback port, stopped and deleted when dropped. The server binaries come from Debian's
//! `postgresql` package (`.ci/run` installs it when missing). PostgreSQL refuses to run as root,
//! so under root (as CI runs) the cluster belongs to `nobody` and its commands run through
//! `runuser`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A cluster for a test, or a loud skip where there are no server binaries (`None`); under
/// `CI` they are required, and their absence fails the test.
pub fn cluster() -> Option<TestPostgres> {
    match TestPostgres::start() {
        Ok(pg) => Some(pg),
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED (needs PostgreSQL's server binaries; CI has them): {why}");
            None
        }
        Err(why) => panic!("PostgreSQL is needed in CI: {why}"),
    }
}

/// The test coordinator's configuration, on database `db`.
pub fn config_on(db: &confab::store::Database) -> confab::coordinator::CoordinatorConfig {
    let mut c = super::test_config();
    c.db = Some(db.clone());
    c
}

/// Where a test's processes write their logs: inherited with `CONFAB_TEST_LOGS` set (to see
/// why a test failed), else nowhere.
fn logs() -> Stdio {
    if std::env::var_os("CONFAB_TEST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// `confab coordinator` on the shared database, as a process that can be killed, with the
/// default lease (6 s: what the 15 s promise is made with).
pub fn coordinator_process(
    listen: std::net::SocketAddr,
    url: &str,
    more: &[&str],
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["coordinator", "--listen", &listen.to_string(), "--db", url])
        .args(["--fast-passwords", "--no-rate-limit"])
        .args(more)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logs())
        .kill_on_drop(true)
        .spawn()
        .expect("confab coordinator starts")
}

/// `confab host` on the shared database, its session servers on `ip`.
pub fn host_process(url: &str, ip: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["host", "--db", url, "--listen", ip, "--no-rate-limit"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logs())
        .kill_on_drop(true)
        .spawn()
        .expect("confab host starts")
}

/// A CA of its own (`NAME.pem`, `NAME.key`) in `dir`, by `openssl`; its certificate file.
pub fn make_ca(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
        ])
        .arg(format!("/CN=confab test {name}"))
        .arg("-keyout")
        .arg(format!("{name}.key"))
        .arg("-out")
        .arg(format!("{name}.pem"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(dir.join(format!("{name}.pem")))
}

pub fn free_udp_port() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running cluster. Each test takes its own database from it ([`TestPostgres::database`]).
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Run the server's commands as this user (when we are root).
    as_user: Option<&'static str>,
    port: u16,
    databases: AtomicU32,
}

/// Where the server binaries are: `pg_config --bindir`, else the newest Debian install.
fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TestPostgres {
    /// Starts a cluster, or says why it cannot (no server binaries: the caller reports the test
    /// as skipped, loudly; CI has them).
    pub fn start() -> Result<TestPostgres, String> {
        let bin = bindir().ok_or("no PostgreSQL server binaries (Debian package postgresql)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // SAFETY: geteuid has no preconditions.
        let as_user = (unsafe { libc::geteuid() } == 0).then_some("nobody");
        if let Some(user) = as_user {
            let out = Command::new("id").args(["-u", user]).output();
            let uid: u32 = out
                .ok()
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
                .ok_or(format!("no user {user} to run PostgreSQL as"))?;
            std::os::unix::fs::chown(dir.path(), Some(uid), None).map_err(|e| e.to_string())?;
        }
        let mut pg = TestPostgres {
            dir,
            bin,
            as_user,
            port: 0,
            databases: AtomicU32::new(0),
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "confab",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        // A port taken between our look and the server's bind fails the start; try another.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            match pg.run_server() {
                Ok(()) => return Ok(pg),
                Err(e) => last = e,
            }
        }
        Err(format!("pg_ctl start failed: {last}"))
    }

    /// `pg_ctl start` on the cluster's port.
    fn run_server(&self) -> Result<(), String> {
        let data = self.data();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c max_connections=200",
            self.port
        );
        let log = format!("{data}/server.log");
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
            ],
        )
        .map_err(|e| format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
    }

    /// Starts the server again after [`TestPostgres::kill`], on the same port.
    pub fn start_again(&self) {
        self.run_server().expect("the cluster starts again");
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The URL of the cluster's database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://confab@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database of its own, by URL.
    pub async fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("test{n}");
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
        let conn = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        drop(client);
        let _ = conn.await;
        self.url(&name)
    }

    /// Stops the server at once, as a crash or a lost network would look to its clients.
    pub fn kill(&self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// From now on takes only TLS connections (plaintext ones are refused), with a server
    /// certificate for 127.0.0.1 signed by a CA of its own; returns that CA's certificate
    /// file. Needs `openssl`.
    pub fn require_tls(&self) -> Result<PathBuf, String> {
        let dir = self.dir.path();
        let data = self.data();
        let ca = make_ca(dir, "ca")?;
        let openssl = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("openssl: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
            .map_err(|e| e.to_string())?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ])?;
        for (file, to) in [("server.crt", "server.crt"), ("server.key", "server.key")] {
            let target = format!("{data}/{to}");
            std::fs::copy(dir.join(file), &target).map_err(|e| e.to_string())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            if self.as_user.is_some() {
                let meta = std::fs::metadata(&data).map_err(|e| e.to_string())?;
                use std::os::unix::fs::MetadataExt;
                std::os::unix::fs::chown(&target, Some(meta.uid()), None)
                    .map_err(|e| e.to_string())?;
            }
        }
        let conf = format!("{data}/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        std::fs::write(
            format!("{data}/pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .map_err(|e| e.to_string())?;
        self.run("pg_ctl", &["-D", &data, "-w", "reload"])?;
        // The reload takes effect a moment later: the caller waits for plaintext to fail.
        Ok(ca)
    }

    /// Kills the server, and asserts that the member whose `events` these are is dropped by
    /// its session server before a `lease` could run out (another process could take the
    /// session then: fencing), with a little for the client to notice.
    pub async fn kill_and_expect_fenced(
        &self,
        events: &mut tokio::sync::mpsc::Receiver<confab::client::Event>,
        lease: std::time::Duration,
    ) {
        self.kill();
        let cut = tokio::time::Instant::now();
        super::expect(events, "the server dropping its member", |e| {
            matches!(e, confab::client::Event::Disconnected { .. }).then_some(())
        })
        .await;
        let took = cut.elapsed();
        assert!(
            took <= lease + std::time::Duration::from_millis(300),
            "stopped {took:?} after the database went away"
        );
        eprintln!("stopped serving {took:?} after the database went away");
    }

    /// The folder the cluster lives in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}
