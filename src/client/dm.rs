//! Private messages, peer to peer over the client's UDP socket, and the hub that reads it.
//!
//! One socket serves both the coordinator requests and the private messages, so the address the
//! coordinator observes for our requests is exactly the address peers must send private messages
//! to (that is what makes the STUN-like `observed` field useful behind a NAT). The hub reads that
//! socket and sorts each datagram: coordinator answers to the request that waits for them (see
//! `rpc`), acknowledgements to the private message that waits for them, and private messages to
//! the application as [`Event::Private`], each shown once and acknowledged every time.
//!
//! Every private datagram, message or acknowledgement, is sealed between the two users'
//! identity keys (`seal::PeerBoxes`), whose public halves travel in the roster: the session
//! server and the coordinator can neither read nor forge one. A datagram that does not open,
//! whose sender's key is not the one the roster gives the name inside, that is not for us, or
//! that is too old or too far ahead to be told from a replay, is dropped without an answer and
//! counted in a log line. Each peer's key is pinned on first contact (`pins`).

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::backoff::Retry;
use super::contacts::Contacts;
use super::error::ClientError;
use super::event::Event;
use super::paths::{ACTIVE, KEEPALIVE, Path, Paths, PeerKey, learn, sealed_probe};
use super::pins::{PinState, Pins};
use super::rpc::{Coord, Waiters};
use crate::expiring::ExpiringMap;
use crate::identity::fingerprint;
use crate::protocol::{Member, PeerMsg, Push, limits};
use crate::seal::{PEER_MARK, PeerBoxes};

/// Proof that a private message arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmReceipt {
    /// The message id.
    pub id: Uuid,
    /// The recipient's name as the session spells it.
    pub to: String,
    /// The timestamp the message carried.
    pub time: DateTime<Utc>,
    /// How the acknowledgement came back: straight from the peer, or through the session server.
    pub via: Via,
}

/// The way a private datagram travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Peer to peer over UDP, from this endpoint.
    Direct(SocketAddr),
    /// Through the session server both are in (`relay`), when the direct path did not answer.
    Relayed,
}

/// Direct sends before the session server is asked to relay copies too: about 1.4 s of the
/// retry schedule, time enough for a direct path that works to answer.
const DIRECT_FIRST: usize = 3;
/// After a message to a peer went relayed, the next ones to that peer are relayed from their
/// first copy (direct copies still go beside, and a direct ack ends it) for this long: behind a
/// symmetric NAT every message would otherwise wait `DIRECT_FIRST` tries for nothing.
const RELAYED_LATELY: Duration = Duration::from_secs(120);

/// A private message the client gave up on, kept so that a late acknowledgement can still be
/// reported rather than leave the sender believing it was never shown.
#[derive(Debug)]
struct LateDm {
    to: String,
    time: DateTime<Utc>,
    text: String,
}

/// Given-up messages by (id, the key they were sealed for); taken out by the first late ack.
type LateDms = Arc<Mutex<ExpiringMap<(Uuid, PeerKey), Option<LateDm>>>>;
/// A message whose timestamp is further than this from our clock is not shown: seen ids are
/// remembered for `SEEN_TTL`, so an older copy could not be told from a replay.
const FRESH: Duration = Duration::from_secs(300);
/// Peers whose boxes are kept (the key agreement is the costly part of sealing).
const BOXES: usize = 4096;
/// How long a given-up message listens for a late ack: as long as receivers remember the ids
/// they have shown, so that any copy shown at all is shown within it.
const LATE_TTL: Duration = Duration::from_secs(600);
/// Most given-up messages listened for at once (each keeps its text, at most 800 bytes).
const LATE_CAP: usize = 1000;
/// Datagrams waiting for their sender's card at most (one per lookup, and lookups are few).
const HELD: usize = 16;
/// How long, and for how many messages, shown private-message ids are remembered.
const SEEN_TTL: Duration = Duration::from_secs(600);
const SEEN_CAP: usize = 100_000;

/// The sending side of private messages; the hub completes its waits.
pub(super) struct Dms {
    udp: Arc<UdpSocket>,
    user: String,
    retry: Retry,
    /// Acks are accepted only sealed by the key the message was sealed for.
    acks: Waiters<(Uuid, PeerKey), Via>,
    late: LateDms,
    boxes: Arc<Mutex<PeerBoxes>>,
    pins: Arc<Pins>,
    paths: Paths,
    contacts: Contacts,
    /// Peers whose last message went relayed (see `RELAYED_LATELY`).
    relayed: Mutex<ExpiringMap<PeerKey, ()>>,
}

impl Dms {
    pub(super) fn new(
        udp: Arc<UdpSocket>,
        user: String,
        retry: Retry,
        identity: &crate::identity::Identity,
        pins: Arc<Pins>,
        contacts: Contacts,
    ) -> Self {
        Self {
            udp,
            user,
            retry,
            contacts,
            relayed: Mutex::new(ExpiringMap::new(RELAYED_LATELY, BOXES)),
            acks: Waiters::new(),
            late: Arc::new(Mutex::new(ExpiringMap::new(LATE_TTL, LATE_CAP))),
            boxes: Arc::new(Mutex::new(PeerBoxes::new(identity.secret(), BOXES))),
            pins,
            paths: Arc::new(Mutex::new(Default::default())),
        }
    }

    /// Sends `text` to `member`'s endpoint and waits for its acknowledgement, retrying with
    /// backoff; stops at once when `ended` is cancelled (the session is over for us).
    ///
    /// Copies go straight to the peer's endpoint; when that has not been answered after the
    /// first few, through a relay too (the session server we share, else the coordinator): a
    /// peer behind a NAT that drops our datagrams still gets the message, once (receivers show
    /// each id once).
    pub(super) async fn send(
        &self,
        member: Member,
        text: &str,
        ended: CancellationToken,
    ) -> Result<DmReceipt, ClientError> {
        if text.trim().is_empty() {
            return Err(ClientError::Invalid("empty message".into()));
        }
        if text.len() > limits::MAX_DM_TEXT {
            return Err(ClientError::Invalid(format!(
                "private message too long: {} bytes, limit {}",
                text.len(),
                limits::MAX_DM_TEXT
            )));
        }
        let id = Uuid::new_v4();
        let time = Utc::now().trunc_subsecs(0);
        let msg = PeerMsg::Dm {
            id,
            from: self.user.clone(),
            to: member.user.clone(),
            time,
            text: text.to_string(),
        };
        let Some(to) = member.udp else {
            return Err(ClientError::NoPrivateMessages(member.user));
        };
        let Some(their_key) = member.public_key() else {
            return Err(ClientError::NoPeerKey(member.user));
        };
        if let PinState::Changed { pinned } = self.pins.check(&member.user, &their_key) {
            return Err(ClientError::PeerKeyChanged {
                user: member.user,
                pinned: fingerprint(&pinned),
                now: fingerprint(&their_key),
            });
        }
        let bytes = serde_json::to_vec(&msg).expect("protocol types serialize");
        let bytes = self.boxes.lock().seal(&their_key, &bytes);
        if bytes.len() > limits::MAX_DATAGRAM {
            // Escaping can make a text within MAX_DM_TEXT too big for one datagram.
            return Err(ClientError::Invalid(format!(
                "private message too long once encoded: {} bytes, limit {}",
                bytes.len(),
                limits::MAX_DATAGRAM
            )));
        }
        let key = (id, their_key);
        let mut acked = self.acks.register(key);
        let learned = self.paths.lock().get(&their_key).map(|p| p.addr);
        let relay_from = match self.relayed.lock().get(&their_key) {
            Some(()) if learned.is_none() => 0,
            _ => DIRECT_FIRST,
        };
        if learned.is_none() {
            // No direct path known: a connectivity check before the first copy. Our probe goes
            // straight to the peer (opening our NAT towards it) and through the session server;
            // the peer answers the relayed one with a probe of its own straight back, which our
            // NAT now lets in. Copies after the first then go the way that probe came.
            let probe = self.probe(&their_key, &member.user);
            for candidate in std::iter::once(to).chain(member.local.iter().copied()) {
                let _ = self.udp.send_to(&probe, candidate).await;
            }
            self.contacts.relay(&member.user, &probe);
        }
        for (attempt, delay) in self.retry.delays().enumerate() {
            // A path that reached us from this peer first (learned again at every try: the
            // check above may have just found one), then the announced endpoint, then its
            // addresses on its own network (a peer behind our own NAT). A path that works is
            // tried alone first: every copy that arrives costs the peer an open and an ack.
            let path = self.paths.lock().get(&their_key).map(|p| p.addr);
            let mut targets: Vec<SocketAddr> = path.into_iter().collect();
            if attempt > 0 || targets.is_empty() {
                for candidate in std::iter::once(to).chain(member.local.iter().copied()) {
                    if !targets.contains(&candidate) {
                        targets.push(candidate);
                    }
                }
            }
            for target in &targets {
                if let Err(e) = self.udp.send_to(&bytes, target).await {
                    tracing::debug!(error = %e, to = %member.user, "private message send failed");
                }
            }
            if attempt >= relay_from {
                self.contacts.relay(&member.user, &bytes);
            }
            let answered = tokio::select! {
                ack = tokio::time::timeout(delay, &mut acked) => match ack {
                    Ok(Ok(via)) => Some(via),
                    _ => None,
                },
                _ = ended.cancelled() => {
                    self.acks.forget(&key);
                    return Err(ClientError::SessionEnded { to: member.user });
                }
            };
            if let Some(via) = answered {
                match via {
                    Via::Relayed => self.relayed.lock().replace(their_key, ()),
                    Via::Direct(_) => {
                        self.relayed.lock().remove(&their_key);
                    }
                }
                if via == Via::Relayed
                    && let Some(stale) = learned
                {
                    // The learned path no longer answers (a NAT mapping expired): forget it,
                    // unless a newer one was learned meanwhile (a probe answering this message).
                    let mut paths = self.paths.lock();
                    if paths.get(&their_key).map(|p| p.addr) == Some(stale) {
                        paths.remove(&their_key);
                    }
                }
                return Ok(DmReceipt {
                    id,
                    to: member.user,
                    time,
                    via,
                });
            }
        }
        // Listen on for a late ack before we stop waiting, so none falls between the two.
        let late = LateDm {
            to: member.user.clone(),
            time,
            text: text.to_string(),
        };
        self.late.lock().insert(key, Some(late));
        self.acks.forget(&key);
        if let Ok(via) = acked.try_recv() {
            if let Some(slot) = self.late.lock().get_mut(&key) {
                slot.take();
            }
            return Ok(DmReceipt {
                id,
                to: member.user,
                time,
                via,
            });
        }
        Err(ClientError::NotDelivered {
            to: member.user,
            attempts: self.retry.attempts,
            id,
        })
    }

    /// A sealed `probe` for `user`, whose key is `key`.
    fn probe(&self, key: &PeerKey, user: &str) -> Vec<u8> {
        sealed_probe(&self.boxes, &self.user, user, key)
    }

    /// Starts the task that reads the socket until `stop`.
    pub(super) fn spawn_hub(
        &self,
        coord: Coord,
        events: mpsc::Sender<Event>,
        stop: CancellationToken,
    ) {
        // Datagrams the session server relays to us arrive through the roster's inbox.
        let (inbox_tx, inbox) = mpsc::channel(256);
        self.contacts.roster().set_inbox(inbox_tx);
        // Datagrams held while their unknown sender is looked up come back through this.
        let (held_tx, held) = mpsc::channel(HELD);
        let hub = Hub {
            udp: self.udp.clone(),
            user: self.user.clone(),
            coord,
            acks: self.acks.clone(),
            late: self.late.clone(),
            contacts: self.contacts.clone(),
            held: held_tx,
            events,
            seen: ExpiringMap::new(SEEN_TTL, SEEN_CAP),
            boxes: self.boxes.clone(),
            pins: self.pins.clone(),
            warned: ExpiringMap::new(SEEN_TTL, 1000),
            dropped: 0,
            looked_up: false,
            paths: self.paths.clone(),
        };
        tokio::spawn(hub.run(inbox, held, stop));
    }
}

/// Where a private datagram came from.
#[derive(Debug, Clone)]
enum Source {
    /// Over UDP, from this endpoint.
    Udp(SocketAddr),
    /// Relayed by the session server or the coordinator, from the user of this name.
    Relay(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Udp(addr) => write!(f, "{addr}"),
            Source::Relay(user) => write!(f, "{user} (relayed)"),
        }
    }
}

/// Reads the client's UDP socket and routes every datagram.
struct Hub {
    udp: Arc<UdpSocket>,
    user: String,
    coord: Coord,
    acks: Waiters<(Uuid, PeerKey), Via>,
    late: LateDms,
    contacts: Contacts,
    /// Where a datagram from a sender being looked up goes once its card is known.
    held: mpsc::Sender<(Source, Vec<u8>)>,
    events: mpsc::Sender<Event>,
    /// Private messages already shown, by sender and id.
    seen: ExpiringMap<(String, Uuid), ()>,
    boxes: Arc<Mutex<PeerBoxes>>,
    pins: Arc<Pins>,
    /// Changed keys already warned about, by user and key.
    warned: ExpiringMap<(String, PeerKey), ()>,
    /// Datagrams dropped as forged, altered, replayed, unsealed or misaddressed.
    dropped: u64,
    /// The datagram being routed was held for a lookup that has been done: it is not held again.
    looked_up: bool,
    paths: Paths,
}

impl Hub {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<(String, Vec<u8>)>,
        mut held: mpsc::Receiver<(Source, Vec<u8>)>,
        stop: CancellationToken,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                r = self.udp.recv_from(&mut buf) => r,
                _ = keepalive.tick() => {
                    self.keep_paths_open().await;
                    continue;
                }
                Some((from, datagram)) = inbox.recv() => {
                    self.route(&datagram, Source::Relay(from)).await;
                    continue;
                }
                Some((from, datagram)) = held.recv() => {
                    // Looked up once: whatever the card says now is final for this datagram.
                    self.looked_up = true;
                    self.route(&datagram, from).await;
                    self.looked_up = false;
                    continue;
                }
                _ = stop.cancelled() => break,
            };
            match received {
                Ok((len, from)) if self.coord.is_coordinator(from) => {
                    if let Some(Push::Relayed { from, data }) = self.coord.deliver(&buf[..len]) {
                        match base64::engine::general_purpose::STANDARD.decode(&data) {
                            Ok(datagram) => self.route(&datagram, Source::Relay(from)).await,
                            Err(_) => self.reject(Source::Relay(from), "relayed, but not base64"),
                        }
                    }
                }
                Ok((len, from)) => self.route(&buf[..len], Source::Udp(from)).await,
                // ICMP "port unreachable" from an earlier send to a vanished peer lands here.
                Err(e) => tracing::debug!(error = %e, "udp receive failed"),
            }
        }
    }

    /// Sends a sealed datagram back the way `to` reached us.
    async fn reply(&self, to: &Source, datagram: &[u8]) {
        match to {
            Source::Udp(addr) => {
                let _ = self.udp.send_to(datagram, addr).await;
            }
            Source::Relay(user) => {
                self.contacts.relay(user, datagram);
            }
        }
    }

    async fn route(&mut self, datagram: &[u8], from: Source) {
        if datagram.len() > limits::MAX_DATAGRAM {
            tracing::debug!(%from, len = datagram.len(), "oversized peer datagram dropped");
            return;
        }
        if datagram.first() != Some(&PEER_MARK) {
            return self.reject(from, "not sealed");
        }
        let opened = self.boxes.lock().open(datagram);
        let Ok((sender_key, plain)) = opened else {
            return self.reject(from, "does not open: forged, altered, or not for us");
        };
        tracing::trace!(%from, text = %String::from_utf8_lossy(&plain), "private datagram opened");
        match serde_json::from_slice::<PeerMsg>(&plain) {
            Ok(PeerMsg::Ack { id, from: acker }) => {
                // Our own ack reflected back to us opens too (one key per pair of users).
                if acker.eq_ignore_ascii_case(&self.user) {
                    return self.reject(from, "our own acknowledgement, reflected");
                }
                let via = match &from {
                    Source::Udp(addr) => {
                        learn(&self.paths, sender_key, *addr, &acker, true);
                        Via::Direct(*addr)
                    }
                    Source::Relay(_) => Via::Relayed,
                };
                if !self.acks.complete(&(id, sender_key), via) {
                    let late = self
                        .late
                        .lock()
                        .get_mut(&(id, sender_key))
                        .and_then(Option::take);
                    if let Some(LateDm { to, time, text }) = late {
                        let event = Event::DeliveredLate { id, to, time, text };
                        let _ = self.events.try_send(event);
                    }
                }
            }
            Ok(PeerMsg::Dm {
                id,
                from: sender,
                to,
                time,
                text,
            }) => {
                if !to.eq_ignore_ascii_case(&self.user) {
                    return self.reject(from, "for someone else");
                }
                let Some(member) = self.known_sender(datagram, &from, &sender, &sender_key) else {
                    return;
                };
                // Which endpoint it came from proves nothing (a NAT may change the port); the
                // key does. Relayed, the server's word on who passed it must agree.
                if let Source::Relay(passed_by) = &from
                    && !passed_by.eq_ignore_ascii_case(&sender)
                {
                    return self.reject(from, "relayed by someone else than its sender");
                }
                let age = Utc::now().signed_duration_since(time);
                if age.abs() > chrono::Duration::from_std(FRESH).unwrap_or_default() {
                    return self.reject(from, "too old or too far ahead (a replay?)");
                }
                if let PinState::Changed { pinned } = self.pins.check(&sender, &sender_key)
                    && self
                        .warned
                        .get(&(sender.to_lowercase(), sender_key))
                        .is_none()
                {
                    let warning = Event::PeerKeyChanged {
                        user: member.user.clone(),
                        pinned: fingerprint(&pinned),
                        now: fingerprint(&sender_key),
                    };
                    if self.events.try_send(warning).is_err() {
                        return; // said first, or not at all: the sender retries
                    }
                    self.warned.insert((sender.to_lowercase(), sender_key), ());
                }
                if self.seen.get(&(sender.clone(), id)).is_none() {
                    let event = Event::Private {
                        id,
                        from: sender.clone(),
                        time,
                        text,
                    };
                    if self.events.try_send(event).is_err() {
                        // The application is not keeping up; without an ack the sender retries.
                        return;
                    }
                    self.seen.insert((sender, id), ());
                }
                let ack = PeerMsg::Ack {
                    id,
                    from: self.user.clone(),
                };
                let bytes = serde_json::to_vec(&ack).expect("protocol types serialize");
                let bytes = self.boxes.lock().seal(&sender_key, &bytes);
                self.reply(&from, &bytes).await;
                self.learn_or_punch(&from, sender_key, &member).await;
            }
            Ok(PeerMsg::Probe { from: sender, to }) => {
                if !to.eq_ignore_ascii_case(&self.user) {
                    return self.reject(from, "for someone else");
                }
                let Some(member) = self.known_sender(datagram, &from, &sender, &sender_key) else {
                    return;
                };
                match &from {
                    Source::Udp(addr) => {
                        tracing::debug!(peer = %sender, %addr, "direct path opened by a probe");
                        learn(&self.paths, sender_key, *addr, &sender, false);
                    }
                    // A check the peer started: probe straight back, which opens our NAT to it.
                    Source::Relay(passed_by) if passed_by.eq_ignore_ascii_case(&sender) => {
                        self.learn_or_punch(&from, sender_key, &member).await;
                    }
                    Source::Relay(_) => {
                        self.reject(from, "relayed by someone else than its sender")
                    }
                }
            }
            Err(_) => self.reject(from, "sealed, but not a private message"),
        }
    }

    /// The card of `sender`, if its key is the one that sealed the datagram. A sender we do not
    /// know (a member of a large session we were not told about, or someone outside our
    /// session), or whose card from the coordinator names another key (it may have changed
    /// since we asked), is looked up and the datagram routed again then, once; `None` means
    /// the datagram was held or dropped.
    fn known_sender(
        &mut self,
        datagram: &[u8],
        from: &Source,
        sender: &str,
        key: &PeerKey,
    ) -> Option<Member> {
        match self.contacts.card(sender) {
            Some(member) if member.public_key() == Some(*key) => Some(member),
            Some(_) if self.looked_up || self.contacts.roster().get(sender).is_some() => {
                self.reject(from.clone(), "sealed with a key that is not the sender's");
                None
            }
            Some(_) => {
                self.contacts.forget(sender);
                self.hold(datagram, from.clone(), sender);
                None
            }
            None if self.looked_up => {
                self.reject(from.clone(), "from someone the coordinator does not know");
                None
            }
            None => {
                self.hold(datagram, from.clone(), sender);
                None
            }
        }
    }

    /// Keeps a datagram from `sender`, whom we do not know yet, until a lookup finds their
    /// card, then routes it again (its key is checked then). Unacked meanwhile: should the
    /// lookup fail, the sender's next copy asks again.
    fn hold(&mut self, datagram: &[u8], from: Source, sender: &str) {
        tracing::debug!(%from, %sender, "private datagram from someone unknown; looking them up");
        let (held, datagram) = (self.held.clone(), datagram.to_vec());
        self.contacts.want(sender, move || {
            let _ = held.try_send((from, datagram));
        });
    }

    /// Sends a probe along every path a private message used lately, so that the NAT mappings
    /// on both sides stay open while there is reason to talk; paths quiet for long are dropped
    /// (the next message finds its way again, relayed and punched if need be).
    async fn keep_paths_open(&self) {
        let now = tokio::time::Instant::now();
        let active: Vec<(PeerKey, Path)> = {
            let mut paths = self.paths.lock();
            paths.retain(|_, p| now.duration_since(p.used) < ACTIVE);
            paths.iter().map(|(k, p)| (*k, p.clone())).collect()
        };
        for (key, path) in active {
            let bytes = self.probe(&key, &path.user);
            let _ = self.udp.send_to(&bytes, path.addr).await;
        }
    }

    /// A sealed `probe` for `user`, whose key is `key`.
    fn probe(&self, key: &PeerKey, user: &str) -> Vec<u8> {
        sealed_probe(&self.boxes, &self.user, user, key)
    }

    /// After a message from `member`: a direct one shows a path that reaches them; a relayed one
    /// means their datagrams do not reach us, so we send a probe straight to their announced
    /// endpoint, which opens our NAT to them (hole punching: their next copies get in) and, if
    /// it arrives, shows them a path to us.
    async fn learn_or_punch(&self, from: &Source, key: PeerKey, member: &Member) {
        match from {
            Source::Udp(addr) => learn(&self.paths, key, *addr, &member.user, true),
            Source::Relay(_) => {
                let bytes = self.probe(&key, &member.user);
                for endpoint in member.udp.iter().chain(member.local.iter()) {
                    let _ = self.udp.send_to(&bytes, endpoint).await;
                }
            }
        }
    }

    /// Drops a datagram without an answer, counted: each drop in the debug log, and the count
    /// in a warning at 1, 2, 4, 8, … so that a flood costs a few lines, not one per datagram.
    fn reject(&mut self, from: Source, why: &str) {
        self.dropped += 1;
        tracing::debug!(%from, why, "private datagram dropped");
        if self.dropped.is_power_of_two() {
            tracing::warn!(
                dropped = self.dropped,
                last = why,
                %from,
                "private datagrams dropped (forged, altered, replayed, unsealed or misaddressed)"
            );
        }
    }
}
