//! Shared test scaffolding: real coordinators on 127.0.0.1:0, clients, and a lossy UDP relay.
#![allow(dead_code)]

pub mod postgres;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use confab::client::{Client, ClientConfig, Event};
use confab::coordinator::{self, CoordinatorConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen "at once" on a loaded CI machine.
pub const WAIT: Duration = Duration::from_secs(10);

/// A coordinator running as a task; stopped when dropped.
pub struct TestCoordinator {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
}

impl TestCoordinator {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: CoordinatorConfig) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), config).await
    }

    /// Starts on a given address, so a restarted coordinator can take its predecessor's port.
    pub async fn start_on(addr: SocketAddr, config: CoordinatorConfig) -> Self {
        let socket = UdpSocket::bind(addr).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            coordinator::run(socket, config, stop).await.unwrap();
        });
        Self {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the coordinator and waits until every session server has finished.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("coordinator stops")
                .unwrap();
        }
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Defaults for tests: an in-memory database, cheap password hashes (tests register many
/// accounts; the real default cost is tested in the accounts tests) and no per-address quotas
/// (every test client comes from 127.0.0.1; the abuse tests turn them on one by one).
pub fn test_config() -> CoordinatorConfig {
    CoordinatorConfig {
        password_cost: confab::auth::PasswordCost::INSECURE_FAST,
        abuse: coordinator::AbuseLimits::off(),
        // Many tests type requests by hand, as `nc` would; the library seals its own anyway.
        insecure: true,
        ..CoordinatorConfig::default()
    }
}

/// The password every test user gets.
pub fn password(user: &str) -> String {
    format!("pw-of-{}", user.to_lowercase())
}

/// Client config with quicker retries, so lossy tests finish fast.
pub fn client_config(user: &str, coordinator: SocketAddr) -> ClientConfig {
    let mut c = ClientConfig::new(user, coordinator);
    c.bind = Some("127.0.0.1:0".parse().unwrap());
    c.request_retry.first = Duration::from_millis(100);
    c.request_retry.max_delay = Duration::from_millis(400);
    c.request_retry.attempts = 30;
    c.dm_retry.first = Duration::from_millis(100);
    c.dm_retry.max_delay = Duration::from_millis(400);
    c.dm_retry.attempts = 30;
    c
}

/// A client that is registered (if it was not yet) and logged in.
pub async fn client(user: &str, coordinator: SocketAddr) -> (Client, mpsc::Receiver<Event>) {
    logged_in(client_config(user, coordinator)).await
}

/// Starts a client with `config`, registers its user if needed, and logs in.
pub async fn logged_in(config: ClientConfig) -> (Client, mpsc::Receiver<Event>) {
    let user = config.user.clone();
    let (c, ev) = Client::start(config).await.unwrap();
    match c.register(&password(&user)).await {
        Ok(_) => {}
        Err(confab::client::ClientError::Refused(e))
            if e.code == confab::protocol::ErrorCode::NameTaken => {}
        Err(e) => panic!("register {user}: {e}"),
    }
    c.login(&password(&user)).await.unwrap();
    (c, ev)
}

/// A valid token for `user` (registered if needed), for tests that speak the protocol by hand.
/// The login is sealed (as every client's is), so it works whether the coordinator takes plain
/// requests or not.
pub async fn token_for(user: &str, coordinator: SocketAddr) -> String {
    credentials_for(user, coordinator).await.0
}

/// A valid token for `user` and the key pair it is bound to (the one its login was sealed
/// with), which an encrypted session connection must prove.
pub async fn credentials_for(
    user: &str,
    coordinator: SocketAddr,
) -> (String, confab::transport::StaticKey) {
    let raw = SealedRaw::login(user, coordinator).await;
    (raw.token.clone(), raw.sealer.static_key())
}

/// A client by hand: its own UDP socket and sealer, logged in (its token bound to the sealer's
/// key), for tests that send coordinator requests a library client would not.
pub struct SealedRaw {
    pub socket: UdpSocket,
    pub sealer: confab::seal::Sealer,
    pub token: String,
    coordinator: SocketAddr,
}

impl SealedRaw {
    /// Registers `user` if needed and logs in.
    pub async fn login(user: &str, coordinator: SocketAddr) -> Self {
        // Registered by a library client that does not announce itself: the user is online
        // only if this one says so.
        let mut config = client_config(user, coordinator);
        config.announce = false;
        let (c, _) = logged_in(config).await;
        let key = c.coordinator_key().await.unwrap();
        drop(c);
        let mut raw = SealedRaw {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            sealer: confab::seal::Sealer::new(&key),
            token: String::new(),
            coordinator,
        };
        let login = format!(
            r#"{{"id":1,"op":"login","user":"{user}","password":"{}"}}"#,
            password(user)
        );
        let answer = raw.request(&login).await;
        raw.token = answer["token"]
            .as_str()
            .expect("login answer has a token")
            .to_string();
        raw
    }

    /// `body` padded and sealed, as it goes on the wire.
    pub fn seal(&self, body: &str) -> (Vec<u8>, confab::seal::Opener) {
        let mut req = body.as_bytes().to_vec();
        confab::protocol::pad_request(&mut req);
        self.sealer.seal(&req)
    }

    /// Sends `body` sealed and returns its answer, opened (retrying on loss).
    pub async fn request(&self, body: &str) -> serde_json::Value {
        let (sealed, opener) = self.seal(body);
        self.send_sealed(self.coordinator, &sealed, &opener).await
    }

    /// Sends bytes sealed earlier to `to` (one coordinator of a group, say) and returns the
    /// answer, opened (retrying on loss).
    pub async fn send_sealed(
        &self,
        to: SocketAddr,
        sealed: &[u8],
        opener: &confab::seal::Opener,
    ) -> serde_json::Value {
        for _ in 0..50 {
            self.socket.send_to(sealed, to).await.unwrap();
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(500), self.socket.recv_from(&mut buf))
                    .await
            {
                let answer = opener.open(&buf[..n]).expect("the answer is sealed for us");
                return serde_json::from_slice(&answer).unwrap();
            }
        }
        panic!("no answer from {to}");
    }
}

/// A member on the bare line protocol over the encrypted transport, as a real client connects
/// (handshake with the key the join answer named, then `hello`); `recv_buffer` shrinks its
/// socket's receive buffer, for members that are not meant to keep up.
pub async fn encrypted_member(
    session: &confab::protocol::SessionInfo,
    coordinator: SocketAddr,
    user: &str,
    recv_buffer: Option<u32>,
) -> (confab::transport::WireRead, confab::transport::WireWrite) {
    let (token, key) = credentials_for(user, coordinator).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(session.server).await.unwrap();
    let server = confab::identity::parse_fingerprint(
        session
            .server_key
            .as_deref()
            .expect("the join answer names the server's key"),
    )
    .unwrap();
    let (read, mut write) = confab::transport::connect(stream, &key, &server)
        .await
        .expect("encrypted handshake");
    write
        .write_all(hello(user, &token, "127.0.0.1:9".parse().unwrap()).as_bytes())
        .await
        .unwrap();
    (read, write)
}

/// Sends one request by hand (padded) and waits for its answer, which must fit a safe datagram.
pub async fn raw_request(
    socket: &UdpSocket,
    coordinator: std::net::SocketAddr,
    body: &str,
) -> confab::protocol::Response {
    let mut body = body.as_bytes().to_vec();
    confab::protocol::pad_request(&mut body);
    socket.send_to(&body, coordinator).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        n <= 1200,
        "answer of {n} bytes is larger than one safe datagram"
    );
    serde_json::from_slice(&buf[..n]).unwrap()
}

/// The first line a raw TCP member sends.
pub fn hello(user: &str, token: &str, udp: SocketAddr) -> String {
    let key = RAW_IDENTITY_PUBLIC;
    format!(r#"{{"type":"hello","user":"{user}","token":"{token}","udp":"{udp}","key":"{key}"}}"#)
        + "\n"
}

/// The identity key every hand-made `hello` announces (the public half of 32 bytes of 7), so
/// that library clients will seal private messages for such members.
pub const RAW_IDENTITY_PUBLIC: &str = "E75P6uryBMf9M1j8nAByGIHRdCeBKCJ+xnTzf3/pe20=";

/// Waits for the first event `pick` accepts, skipping others; panics after `WAIT`.
pub async fn expect<T>(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(e) = events.recv().await {
            if let Some(t) = pick(&e) {
                return Some(t);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(t)) => t,
        Ok(None) => panic!("event stream ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Collects group messages until `n` have arrived.
pub async fn messages(
    events: &mut mpsc::Receiver<Event>,
    n: usize,
) -> Vec<confab::protocol::ChatLine> {
    let mut out = Vec::new();
    while out.len() < n {
        let line = expect(events, "a group message", |e| match e {
            Event::Message(l) => Some(l.clone()),
            _ => None,
        })
        .await;
        out.push(line);
    }
    out
}

/// Asserts that nothing matching `pick` arrives within `quiet`.
pub async fn expect_none(
    events: &mut mpsc::Receiver<Event>,
    quiet: Duration,
    mut pick: impl FnMut(&Event) -> bool,
) {
    let _ = tokio::time::timeout(quiet, async {
        while let Some(e) = events.recv().await {
            assert!(!pick(&e), "unexpected event {e:?}");
        }
    })
    .await;
}

/// Polls `check` until it is true or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A small deterministic random source, so a failing lossy run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    /// xorshift64*
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }
}

/// What a relay did, to prove the faults really happened.
#[derive(Default)]
pub struct RelayStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub delayed: AtomicU64,
}

/// How a relay mistreats datagrams: drop `drop` in `den`, duplicate `dup` in `den`, and delay
/// `delay` in `den` by a few milliseconds (which reorders them).
#[derive(Clone, Copy)]
pub struct Faults {
    pub drop: u64,
    pub dup: u64,
    pub delay: u64,
    pub den: u64,
    pub seed: u64,
}

impl Faults {
    /// A third dropped, a sixth duplicated, a sixth delayed.
    pub fn harsh(seed: u64) -> Self {
        Self {
            drop: 2,
            dup: 1,
            delay: 1,
            den: 6,
            seed,
        }
    }
}

/// Sends `data` to `to` from `socket`, mistreated according to `faults`.
async fn forward(
    socket: &Arc<UdpSocket>,
    data: &[u8],
    to: SocketAddr,
    rng: &mut Rng,
    faults: Faults,
    stats: &Arc<RelayStats>,
) {
    if rng.chance(faults.drop, faults.den) {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let copies = if rng.chance(faults.dup, faults.den) {
        stats.duplicated.fetch_add(1, Ordering::Relaxed);
        2
    } else {
        1
    };
    if rng.chance(faults.delay, faults.den) {
        stats.delayed.fetch_add(1, Ordering::Relaxed);
        let (socket, data) = (socket.clone(), data.to_vec());
        let ms = 5 + rng.next() % 40;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            for _ in 0..copies {
                let _ = socket.send_to(&data, to).await;
            }
        });
    } else {
        for _ in 0..copies {
            let _ = socket.send_to(data, to).await;
        }
    }
    stats.forwarded.fetch_add(1, Ordering::Relaxed);
}

/// A lossy relay in front of a UDP server, like a NAT: clients talk to `addr`; each client gets
/// its own upstream socket, so the server sees one stable address per client.
pub struct LossyNat {
    pub addr: SocketAddr,
    pub stats: Arc<RelayStats>,
    stop: CancellationToken,
}

impl Drop for LossyNat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LossyNat {
    pub async fn start(server: SocketAddr, faults: Faults) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let stats = Arc::new(RelayStats::default());
        let stop = CancellationToken::new();
        let (st, stop2) = (stats.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = Rng::new(faults.seed);
            let mut uplinks: std::collections::HashMap<SocketAddr, Arc<UdpSocket>> =
                Default::default();
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = tokio::select! {
                    r = front.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
                    _ = stop2.cancelled() => break,
                };
                let up = match uplinks.get(&from) {
                    Some(up) => up.clone(),
                    None => {
                        let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        uplinks.insert(from, up.clone());
                        // Answers coming back to this uplink go to the client, just as lossy.
                        let (front, up2, st2, stop3) =
                            (front.clone(), up.clone(), st.clone(), stop2.clone());
                        let mut rng_back = Rng::new(faults.seed ^ from.port() as u64);
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            loop {
                                let n = tokio::select! {
                                    r = up2.recv_from(&mut buf) => match r { Ok((n, _)) => n, Err(_) => continue },
                                    _ = stop3.cancelled() => break,
                                };
                                forward(&front, &buf[..n], from, &mut rng_back, faults, &st2).await;
                            }
                        });
                        up
                    }
                };
                forward(&up, &buf[..n], server, &mut rng, faults, &st).await;
            }
        });
        Self { addr, stats, stop }
    }
}

/// A lossy relay between two peers A and B that keeps source addresses consistent: A is known to
/// everyone as `a_face`, B as `b_face`. A datagram sent to `b_face` reaches B from `a_face`, and one
/// sent to `a_face` reaches A from `b_face`. Clients advertise their face as their endpoint.
pub struct LossyPair {
    pub a_face: SocketAddr,
    pub b_face: SocketAddr,
    pub stats: Arc<RelayStats>,
    stop: CancellationToken,
}

impl Drop for LossyPair {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LossyPair {
    pub async fn start(a_real: SocketAddr, b_real: SocketAddr, faults: Faults) -> Self {
        let a_face = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let b_face = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let stats = Arc::new(RelayStats::default());
        let stop = CancellationToken::new();
        let pair = Self {
            a_face: a_face.local_addr().unwrap(),
            b_face: b_face.local_addr().unwrap(),
            stats: stats.clone(),
            stop: stop.clone(),
        };
        // Into b_face (meant for B) → out of a_face to B; into a_face (meant for A) → out of b_face to A.
        for (inbound, outbound, target, seed) in [
            (b_face.clone(), a_face.clone(), b_real, faults.seed),
            (
                a_face.clone(),
                b_face.clone(),
                a_real,
                faults.seed.wrapping_add(7),
            ),
        ] {
            let (stats, stop) = (stats.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(seed);
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = tokio::select! {
                        r = inbound.recv_from(&mut buf) => match r { Ok((n, _)) => n, Err(_) => continue },
                        _ = stop.cancelled() => break,
                    };
                    forward(&outbound, &buf[..n], target, &mut rng, faults, &stats).await;
                }
            });
        }
        pair
    }
}

/// A member speaking the session protocol by hand, for tests of what the library never sends.
pub struct RawMember {
    pub write: tokio::net::tcp::OwnedWriteHalf,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
}

impl RawMember {
    /// Connects without saying anything yet.
    pub async fn connect(server: SocketAddr) -> Self {
        use tokio::io::AsyncBufReadExt;
        let stream = tokio::net::TcpStream::connect(server).await.unwrap();
        let (read, write) = stream.into_split();
        Self {
            write,
            lines: tokio::io::BufReader::new(read).lines(),
        }
    }

    /// Connects and says hello as `user`, with a real token.
    pub async fn joined(server: SocketAddr, coordinator: SocketAddr, user: &str) -> Self {
        let token = token_for(user, coordinator).await;
        let mut m = Self::connect(server).await;
        m.send(hello(user, &token, "127.0.0.1:9".parse().unwrap()).as_bytes())
            .await;
        m
    }

    /// Sends raw bytes (a line should end in `\n`).
    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.write.write_all(bytes).await.unwrap();
    }

    /// The next line from the server; `None` when it closed the connection. Panics after `WAIT`.
    pub async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line from the server in time")
            .unwrap()
    }

    /// The next line, parsed.
    pub async fn json(&mut self) -> serde_json::Value {
        let line = self.line().await.expect("the server sent a line");
        serde_json::from_str(&line).unwrap()
    }
}

/// Reads a program's output until a line contains `needle`, within `limit`; returns that line,
/// keeping every line read in `seen` (shown when it never comes).
pub async fn output_line_with(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    needle: &str,
    limit: Duration,
) -> String {
    let found = tokio::time::timeout(limit, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        _ => panic!("no output containing {needle:?}; saw:\n{}", seen.join("\n")),
    }
}
