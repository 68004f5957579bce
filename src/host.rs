//! A session host (`confab host`): runs the session servers that a coordinator group places on
//! it, on another machine than the coordinators, sharing their PostgreSQL database.
//!
//! Nothing but the database connects a host to the coordinators. It says it is alive, with its
//! load, in a heartbeat (a row in `hosts` with a lease); a coordinator that starts a session
//! picks the least-loaded live host and places the session there (the `sessions` row names the
//! host, with no server yet), which tells the host through `NOTIFY`; the host binds a listener,
//! claims the session as any server does (reading its last `seq` and newest lines), and the
//! claim's own `NOTIFY` tells the waiting coordinator where it is served. From then on the host
//! renews its claims with its heartbeat and writes history fenced by its claim, exactly as a
//! coordinator serving its own sessions: a host that dies (or is cut off) stops renewing, and
//! the members, rejoining through a coordinator, are served on another host once the lease is
//! over; a host that cannot renew for half a lease stops serving at once, so two hosts never
//! both serve a session.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::auth::TokenKey;
use crate::protocol::Member;
use crate::session::{self, MemberLimits, SessionConfig, SessionObserver, Stop};
use crate::store::feed::MemberFeed;
use crate::store::{
    Change, Database, History, HostKind, HostLoad, Opened, PlacedHere, Placement, Serve, Storage,
    StoreError, to_line,
};
use crate::transport::StaticKey;

/// How a host runs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The group's database: PostgreSQL, as the coordinators have it.
    pub db: Database,
    /// The address its session servers listen on, which clients are sent to.
    pub listen: IpAddr,
    /// Ports session servers may take (a firewall's opening); `None`: any the system gives.
    pub ports: Option<RangeInclusive<u16>>,
    /// How long its claims and its heartbeat last unrenewed (renewed every third of it).
    pub lease: Duration,
    /// A session nobody is in has its server stopped after this long.
    pub idle_timeout: Duration,
    /// Group lines each session keeps in memory.
    pub recent_messages: usize,
    /// Most session servers at once; placements beyond it are left to run out.
    pub max_sessions: usize,
    /// Take plaintext session connections too (a group whose coordinators run `--insecure`).
    pub insecure: bool,
    /// What each member may send (as a coordinator's sessions: keep the group's alike).
    pub member_limits: MemberLimits,
    /// Bytes held per member before it is dropped as too slow (see
    /// `SessionConfig::member_budget`).
    pub member_budget: usize,
}

impl HostConfig {
    /// Defaults for a host of the group on `db`, listening on `listen`.
    pub fn new(db: Database, listen: IpAddr) -> HostConfig {
        HostConfig {
            db,
            listen,
            ports: None,
            lease: Duration::from_secs(6),
            idle_timeout: Duration::from_secs(300),
            recent_messages: 1000,
            max_sessions: 10_000,
            insecure: false,
            member_limits: MemberLimits::default(),
            member_budget: session::DEFAULT_MEMBER_BUDGET,
        }
    }
}

/// Why a host could not run.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Hosts and coordinators meet only in a database they share.
    #[error(
        "a session host shares its coordinators' PostgreSQL database: --db must be a postgres:// URL"
    )]
    NotShared,
    /// Clients are sent to the listen address, so it must be one they can reach.
    #[error(
        "--listen {0}: clients are sent to this address, so it must be the host's own, not any"
    )]
    Unspecified(IpAddr),
    /// The database could not be opened or read.
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// Reads `--listen`: `IP`, `IP:PORT` or `IP:FIRST-LAST` (IPv6 in brackets with a port).
pub fn parse_listen(text: &str) -> Result<(IpAddr, Option<RangeInclusive<u16>>), String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    let (ip, ports) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not IP, IP:PORT or IP:FIRST-LAST"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
    };
    let range = match ports.split_once('-') {
        Some((first, last)) => port(first)?..=port(last)?,
        None => port(ports)?..=port(ports)?,
    };
    if range.is_empty() {
        return Err(format!("port range {ports} is empty"));
    }
    Ok((ip, Some(range)))
}

/// Runs a host until `shutdown` is cancelled; then stops its sessions (members rejoin through a
/// coordinator, to another host), leaves the hosts table, gives up its claims and returns.
///
/// # Examples
///
/// A host for the group on a shared database, its session servers on 10.0.0.21:
///
/// ```no_run
/// use confab::host::{self, HostConfig};
/// use confab::store::Database;
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let db = Database::parse("postgres://confab:secret@10.0.0.10/confab");
/// let mut config = HostConfig::new(db, "10.0.0.21".parse()?);
/// config.ports = Some(7600..=7699); // what the firewall lets through
/// let shutdown = CancellationToken::new();
/// host::run(config, shutdown).await?;
/// # Ok(())
/// # }
/// ```
pub async fn run(config: HostConfig, shutdown: CancellationToken) -> Result<(), HostError> {
    if !matches!(config.db, Database::Postgres(_)) {
        return Err(HostError::NotShared);
    }
    if config.listen.is_unspecified() {
        return Err(HostError::Unspecified(config.listen));
    }
    let (db, finished) = crate::store::open(Some(&config.db)).await?;
    let tracker = TaskTracker::new();
    // Everything this host runs stops with it, whyever its loop ends.
    let stopping = shutdown.child_token();
    let feed = MemberFeed::start(db.clone(), &tracker, stopping.clone());
    let mut host = Host {
        keys: Arc::new(TokenKey::new(db.token_secret().await?)),
        key: Arc::new(StaticKey::generate()),
        running: Running {
            sessions: Default::default(),
            feed,
        },
        tracker,
        shutdown: stopping.clone(),
        config,
        db,
        generation: 0,
    };
    let mut changes = host.db.changes(false).ok_or(HostError::NotShared)?;
    tracing::info!(
        host = %host.db.host(),
        listen = %host.config.listen,
        db = %host.config.db.describe(),
        "session host running"
    );
    let lease = host.config.lease;
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let attempt = tokio::time::Instant::now();
                match tokio::time::timeout(lease / 6, host.heartbeat()).await {
                    Ok(Ok(placed)) => {
                        renewed = attempt;
                        for PlacedHere { id, name } in placed {
                            host.start(id, name);
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat failed"),
                    Err(_) => tracing::warn!("the database did not answer the heartbeat"),
                }
                // Fencing, as in the coordinator: another host may take these sessions once
                // the lease is over, so stop serving them well before.
                if renewed.elapsed() >= lease / 2 {
                    let dropped = host.running.crash_all();
                    if dropped > 0 {
                        tracing::error!(
                            sessions = dropped,
                            "claims not renewed for half a lease; stopped serving them"
                        );
                    }
                }
            }
            change = changes.recv() => match change {
                Some(Change::Placed { host: on, session, name }) if on == host.db.host() => {
                    host.start(session, name);
                }
                Some(Change::Resend) => host.running.republish(),
                Some(Change::Closed { id, by }) => {
                    if host.running.close(id, by.as_deref()) {
                        tracing::info!(session = %id, "session closed through a coordinator");
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!("session host shutting down");
    stopping.cancel();
    if let Err(e) = host.db.retire().await {
        tracing::warn!(error = %e, "could not leave the hosts table");
    }
    let Host { tracker, db, .. } = host;
    drop(changes);
    tracker.close();
    tracker.wait().await;
    drop(db);
    finished.wait().await;
    tracing::info!("session host stopped");
    Ok(())
}

struct Host {
    config: HostConfig,
    db: Arc<dyn Storage>,
    keys: Arc<TokenKey>,
    /// The Noise static key of this host's session servers, made afresh at each start (the
    /// coordinator passes its public half on with each join answer, from the claim).
    key: Arc<StaticKey>,
    running: Running,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    generation: u64,
}

impl Host {
    /// Says this host is alive with its load, renews its claims, and reads what was placed on
    /// it meanwhile.
    async fn heartbeat(&self) -> crate::store::Result<Vec<PlacedHere>> {
        let (members, sessions) = self.running.load();
        let load = HostLoad {
            kind: HostKind::Host,
            address: self.config.listen.to_string(),
            members: members.try_into().unwrap_or(u32::MAX),
            sessions: sessions.try_into().unwrap_or(u32::MAX),
        };
        self.db.heartbeat(load, self.config.lease).await?;
        self.db.renew(self.config.lease).await?;
        self.db.placed_here().await
    }

    /// Starts the server of a session placed here, unless it runs here already.
    fn start(&mut self, id: Uuid, name: Option<String>) {
        if self.running.len() >= self.config.max_sessions {
            tracing::warn!(session = %id, "at the session limit; placement left to run out");
            return;
        }
        if self.running.serves(id) {
            return;
        }
        let listener = match self.bind() {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot bind a session server");
                return;
            }
        };
        let server = match listener.local_addr() {
            Ok(server) => server,
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "session listener has no address");
                return;
            }
        };
        self.generation += 1;
        let generation = self.generation;
        let stop = Stop {
            shutdown: self.shutdown.clone(),
            ..Stop::default()
        };
        self.running.begin(id, generation, stop.clone(), server);
        let serve = Serve {
            server,
            server_key: self.key.fingerprint(),
            lease: self.config.lease,
            placement: Placement::Here,
        };
        let opened = self
            .db
            .open_session(id, None, self.config.recent_messages, serve, None);
        let mut config = SessionConfig::new(id, name);
        config.idle_timeout = self.config.idle_timeout;
        config.recent_messages = self.config.recent_messages;
        config.observer = Some(Arc::new(self.running.clone()));
        config.history = Some(Arc::new(History(self.db.clone())));
        config.tokens = Some(self.keys.clone());
        config.noise = Some(self.key.clone());
        config.plain = self.config.insecure;
        config.member_limits = self.config.member_limits.clone();
        config.member_budget = self.config.member_budget;
        let db = self.db.clone();
        let running = self.running.clone();
        self.tracker.spawn(async move {
            match opened.await {
                Ok(Opened::Here { seq, recent }) => {
                    config.start_seq = seq;
                    config.start_recent = recent.into_iter().map(to_line).collect();
                    let ended = session::run(listener, config, stop).await;
                    tracing::info!(session = %id, ?ended, "session server stopped");
                    // Queued after its last lines: another host may serve it now.
                    if let Err(e) = db.release_session(id).await {
                        tracing::warn!(session = %id, error = %e, "could not give up the claim");
                    }
                }
                Ok(other) => tracing::info!(session = %id, ?other, "placement not ours any more"),
                Err(e) => tracing::warn!(session = %id, error = %e, "cannot open the session"),
            }
            running.end(id, generation);
        });
    }

    /// A listener on the listen address, in the port range if there is one.
    fn bind(&self) -> std::io::Result<tokio::net::TcpListener> {
        let Some(ports) = &self.config.ports else {
            return session::bind(SocketAddr::new(self.config.listen, 0));
        };
        let mut last = None;
        for port in ports.clone() {
            match session::bind(SocketAddr::new(self.config.listen, port)) {
                Ok(listener) => return Ok(listener),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no port in the range")))
    }
}

/// The sessions this host runs: started and closed by the loop, joined and left by their
/// members, counted by the heartbeat.
#[derive(Clone)]
struct Running {
    sessions: Arc<Mutex<HashMap<Uuid, Entry>>>,
    /// Where who is in them is told to the group's coordinators.
    feed: MemberFeed,
}

struct Entry {
    /// Tells one run of a session from the next, so a server that ended late does not take
    /// its successor out.
    generation: u64,
    stop: Stop,
    server: SocketAddr,
    members: BTreeSet<String>,
}

impl Running {
    /// Whether `id` is served here (or starting).
    fn serves(&self, id: Uuid) -> bool {
        self.sessions.lock().contains_key(&id)
    }

    /// Marks `id` as served here, at `server`.
    fn begin(&self, id: Uuid, generation: u64, stop: Stop, server: SocketAddr) {
        let entry = Entry {
            generation,
            stop,
            server,
            members: BTreeSet::new(),
        };
        self.sessions.lock().insert(id, entry);
    }

    /// Tells the group again who is in each session served here.
    fn republish(&self) {
        for (id, entry) in self.sessions.lock().iter() {
            self.feed
                .changed(*id, entry.server, entry.members.len(), entry.members.iter());
        }
    }

    fn end(&self, id: Uuid, generation: u64) {
        let mut map = self.sessions.lock();
        if map.get(&id).is_some_and(|e| e.generation == generation) {
            map.remove(&id);
        }
    }

    /// Closes a session for good (its members are told, and by whom if known); whether it ran
    /// here.
    fn close(&self, id: Uuid, by: Option<&str>) -> bool {
        match self.sessions.lock().get(&id) {
            Some(entry) => {
                match by {
                    Some(user) => entry.stop.close_by(user),
                    None => entry.stop.close.cancel(),
                }
                true
            }
            None => false,
        }
    }

    /// Stops every session at once, without a word (the claims are lost: see fencing).
    fn crash_all(&self) -> usize {
        let map = self.sessions.lock();
        for entry in map.values() {
            entry.stop.crash.cancel();
        }
        map.len()
    }

    fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Members connected, sessions run.
    fn load(&self) -> (usize, usize) {
        let map = self.sessions.lock();
        (map.values().map(|e| e.members.len()).sum(), map.len())
    }
}

impl SessionObserver for Running {
    fn member_joined(&self, session: Uuid, member: &Member) {
        if let Some(entry) = self.sessions.lock().get_mut(&session)
            && entry.members.insert(member.user.clone())
        {
            self.feed.changed(
                session,
                entry.server,
                entry.members.len(),
                entry.members.iter(),
            );
        }
    }

    fn member_left(&self, session: Uuid, user: &str) {
        if let Some(entry) = self.sessions.lock().get_mut(&session)
            && entry.members.remove(user)
        {
            self.feed.changed(
                session,
                entry.server,
                entry.members.len(),
                entry.members.iter(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_an_address_with_a_port_or_a_range() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(parse_listen("10.0.0.5").unwrap(), (ip, None));
        assert_eq!(
            parse_listen("10.0.0.5:7600").unwrap(),
            (ip, Some(7600..=7600))
        );
        assert_eq!(
            parse_listen("10.0.0.5:7600-7699").unwrap(),
            (ip, Some(7600..=7699))
        );
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(parse_listen("::1").unwrap(), (v6, None));
        assert_eq!(
            parse_listen("[::1]:7600-7601").unwrap(),
            (v6, Some(7600..=7601))
        );
        for bad in [
            "",
            "host",
            "10.0.0.5:",
            "10.0.0.5:0",
            "10.0.0.5:7699-7600",
            "10.0.0.5:x",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad:?} taken");
        }
    }
}
