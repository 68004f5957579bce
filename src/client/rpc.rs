//! Requests to the coordinator over the client's UDP socket: numbering, padding, retries, and
//! handing each answer to the request that waits for it.
//!
//! The socket is shared with the private messages (see `dm`), so this module does not read it:
//! the hub that does passes coordinator datagrams to [`Coord::deliver`].
//!
//! Every request but `key` is sealed for the coordinator's key (`crate::seal`): the one the
//! application pinned, or else the one the coordinator gave when first asked, which is then kept
//! for the client's life (trust on first use). A sealed answer says nothing outside its box, not
//! even the request id, so it is tried against the requests waiting for one.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::backoff::Retry;
use super::error::ClientError;
use crate::protocol::{ErrorCode, Push, Request, RequestBody, Response, ResponseBody};
use crate::seal::{self, Opener};

/// Waiters keyed by id: whoever registered gets the first value delivered for it.
pub(super) struct Waiters<K, V> {
    map: Arc<Mutex<HashMap<K, oneshot::Sender<V>>>>,
}

impl<K, V> Clone for Waiters<K, V> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<K: Hash + Eq, V> Waiters<K, V> {
    pub(super) fn new() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub(super) fn register(&self, key: K) -> oneshot::Receiver<V> {
        let (tx, rx) = oneshot::channel();
        self.map.lock().insert(key, tx);
        rx
    }

    /// Hands `value` to whoever waits for `key`; false if nobody does.
    pub(super) fn complete(&self, key: &K, value: V) -> bool {
        match self.map.lock().remove(key) {
            Some(tx) => {
                let _ = tx.send(value);
                true
            }
            None => false,
        }
    }

    pub(super) fn forget(&self, key: &K) {
        self.map.lock().remove(key);
    }
}

/// Sends requests to the coordinator over the client's UDP socket and waits for the answers,
/// retrying with backoff. Shared by the client and its session links (which rejoin through it).
#[derive(Clone)]
pub(super) struct Coord {
    udp: Arc<UdpSocket>,
    /// The coordinators of one group (sharing a database, so one key and one set of
    /// accounts), in the order to try them; `current` is the one asked now.
    addrs: Arc<[SocketAddr]>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    retry: Retry,
    next_id: Arc<AtomicU64>,
    requests: Waiters<u64, Response>,
    observed: Arc<Mutex<Option<SocketAddr>>>,
    /// The coordinator's public key, once pinned or first heard.
    key: Arc<Mutex<Option<[u8; 32]>>>,
    /// The coordinator has said its key since we started: a pinned key is checked against it
    /// before anything is sealed for it (else a wrong pin would look like a silent coordinator).
    heard_key: Arc<std::sync::atomic::AtomicBool>,
    /// Our key pair for that key, made at the first sealed request and kept (see `seal.rs`).
    sealer: Arc<Mutex<Option<KeyedSealer>>>,
    /// Requests waiting for a sealed answer, and what opens it.
    openers: Arc<Mutex<Vec<(u64, Opener)>>>,
}

impl Coord {
    pub(super) fn new(
        udp: Arc<UdpSocket>,
        addrs: Vec<SocketAddr>,
        retry: Retry,
        key: Option<[u8; 32]>,
    ) -> Self {
        assert!(!addrs.is_empty(), "at least one coordinator");
        // Random start: a restarted client on a reused port must not hit cached answers.
        let first_id = Uuid::new_v4().as_u64_pair().0 >> 12;
        Self {
            udp,
            addrs: addrs.into(),
            current: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            retry,
            next_id: Arc::new(AtomicU64::new(first_id)),
            requests: Waiters::new(),
            observed: Arc::new(Mutex::new(None)),
            key: Arc::new(Mutex::new(key)),
            heard_key: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            sealer: Arc::new(Mutex::new(None)),
            openers: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The coordinator's key as the coordinator gives it, in the open (there is nothing to seal
    /// for yet). Kept for sealing if none was pinned; a pinned key that differs is an error.
    pub(super) async fn fetch_key(&self) -> Result<[u8; 32], ClientError> {
        let given = match self.send(RequestBody::Key, None).await? {
            ResponseBody::Key { key } => crate::identity::parse_fingerprint(&key)
                .map_err(|e| ClientError::Invalid(format!("the coordinator's key: {e}")))?,
            _ => return Err(ClientError::Unexpected),
        };
        let mut key = self.key.lock();
        match *key {
            Some(pinned) if pinned != given => Err(ClientError::Invalid(format!(
                "the coordinator at {} has key {}, not the pinned {}",
                self.addr(),
                crate::identity::fingerprint(&given),
                crate::identity::fingerprint(&pinned)
            ))),
            _ => {
                *key = Some(given);
                self.heard_key.store(true, Ordering::Relaxed);
                Ok(given)
            }
        }
    }

    /// The coordinator asked now.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addrs[self.current.load(Ordering::Relaxed) % self.addrs.len()]
    }

    /// Whether `from` is one of our coordinators: datagrams from them are answers (or relayed
    /// datagrams), never private messages.
    pub(super) fn is_coordinator(&self, from: SocketAddr) -> bool {
        self.addrs.contains(&from)
    }

    /// After `FAILOVER_AFTER` unanswered tries to `from`, the next coordinator of the group
    /// (unless another request moved on already).
    fn fail_over(&self, from: SocketAddr) {
        let n = self.addrs.len();
        let Some(i) = self.addrs.iter().position(|a| *a == from) else {
            return;
        };
        if n > 1
            && self
                .current
                .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let to = self.addrs[(i + 1) % n];
            tracing::info!(%from, %to, "the coordinator does not answer; trying the next");
        }
    }

    /// The address the coordinator last saw our requests come from.
    pub(super) fn observed(&self) -> Option<SocketAddr> {
        *self.observed.lock()
    }

    /// Hands a datagram from the coordinator to the request it answers; one the coordinator
    /// sent unasked (a datagram relayed to us) is returned for the hub.
    pub(super) fn deliver(&self, datagram: &[u8]) -> Option<Push> {
        let sealed = datagram.first() == Some(&seal::ANSWER_MARK);
        let opened = sealed.then(|| {
            self.openers
                .lock()
                .iter()
                .find_map(|(id, opener)| opener.open(datagram).ok().map(|plain| (*id, plain)))
        });
        let (plain, sealed_for) = match opened {
            Some(Some((id, plain))) => (plain, Some(id)),
            Some(None) => {
                tracing::debug!("sealed answer that no waiting request opens");
                return None;
            }
            None => (datagram.to_vec(), None),
        };
        match serde_json::from_slice::<Response>(&plain) {
            Ok(resp) => {
                let id = resp.id?;
                // A sealed request takes only the answer sealed for it: anyone on the path can
                // write a plain one with its id.
                let was_sealed = self.openers.lock().iter().any(|(i, _)| *i == id);
                if sealed_for.is_some_and(|s| s != id) || (sealed_for.is_none() && was_sealed) {
                    tracing::debug!(id, "answer not sealed for the request it names; dropped");
                    return None;
                }
                self.requests.complete(&id, resp);
                None
            }
            Err(e) => match serde_json::from_slice::<Push>(&plain) {
                Ok(push) if sealed_for.is_none() => Some(push),
                _ => {
                    tracing::debug!(error = %e, "unreadable coordinator answer");
                    None
                }
            },
        }
    }

    /// Sends one request once, sealed, and waits for nothing: for `relay`, which is answered
    /// only when refused, and which stands for a datagram that may be lost anyway. False when
    /// it could not be sent (no coordinator key heard yet, or the socket's buffer is full).
    pub(super) fn post(&self, body: RequestBody) -> bool {
        self.post_to(&body, self.addr())
    }

    /// [`Coord::post`] to every coordinator of the group but the one asked now: for
    /// `announce`, so that each of them can find us (and relay to us: each sees the way through
    /// our NAT that our announcements to it keep open), whichever one a peer asks.
    pub(super) fn post_to_others(&self, body: &RequestBody) {
        let asked = self.addr();
        for to in self.addrs.iter().filter(|a| **a != asked) {
            self.post_to(body, *to);
        }
    }

    fn post_to(&self, body: &RequestBody, to: SocketAddr) -> bool {
        let key = match *self.key.lock() {
            Some(key) if self.heard_key.load(Ordering::Relaxed) => key,
            _ => return false,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            id,
            body: body.clone(),
        };
        let mut bytes = serde_json::to_vec(&request).expect("protocol types serialize");
        crate::protocol::pad_request(&mut bytes);
        let (sealed, _opener) = self.sealer_for(&key).seal(&bytes);
        self.udp.try_send_to(&sealed, to).is_ok()
    }

    /// Sends one request, retrying with backoff until the coordinator answers.
    ///
    /// A `busy` answer is not a lost one: the coordinator is there and says when to come back, so
    /// the wait it asks for (spread by up to half again, so that clients refused together do not
    /// return together) costs none of the tries, only time, up to [`BUSY_PATIENCE`].
    pub(super) async fn request(&self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        let known = *self.key.lock();
        let key = match known {
            Some(key) if self.heard_key.load(Ordering::Relaxed) => key,
            _ => self.fetch_key().await?,
        };
        self.send(body, Some(key)).await
    }

    /// Our key pair as a Noise static key, once a request has been sealed: the key our login
    /// token is bound to, which each session handshake proves.
    pub(super) fn static_key(&self) -> Option<crate::transport::StaticKey> {
        self.sealer.lock().as_ref().map(|k| k.sealer.static_key())
    }

    /// Our sealer for `key`, made on first use (and again should the key ever change).
    fn sealer_for(&self, key: &[u8; 32]) -> Arc<seal::Sealer> {
        let mut sealer = self.sealer.lock();
        match &*sealer {
            Some(k) if k.key == *key => k.sealer.clone(),
            _ => {
                let s = Arc::new(seal::Sealer::new(key));
                *sealer = Some(KeyedSealer {
                    key: *key,
                    sealer: s.clone(),
                });
                s
            }
        }
    }

    /// Sends one request, sealed for `key` if given, and waits for its answer.
    async fn send(
        &self,
        body: RequestBody,
        key: Option<[u8; 32]>,
    ) -> Result<ResponseBody, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut bytes =
            serde_json::to_vec(&Request { id, body }).expect("protocol types serialize");
        crate::protocol::pad_request(&mut bytes);
        let mut answer = self.requests.register(id);
        let sealed = key.map(|key| {
            let (sealed, opener) = self.sealer_for(&key).seal(&bytes);
            self.openers.lock().push((id, opener));
            sealed
        });
        let _opened = OpenerGuard {
            openers: &self.openers,
            id,
        };
        let bytes = sealed.unwrap_or(bytes);
        let mut delays = self.retry.delays();
        let mut delay = delays.next();
        let patience = tokio::time::Instant::now() + BUSY_PATIENCE;
        let mut unanswered = 0;
        while let Some(wait) = delay {
            let to = self.addr();
            if let Err(e) = self.udp.send_to(&bytes, to).await {
                tracing::debug!(error = %e, "request send failed");
            }
            let Ok(Ok(resp)) = tokio::time::timeout(wait, &mut answer).await else {
                delay = delays.next();
                unanswered += 1;
                if unanswered % FAILOVER_AFTER == 0 {
                    self.fail_over(to);
                }
                continue;
            };
            *self.observed.lock() = Some(resp.observed);
            match resp.body {
                // Nothing was done; the same request after the wait asked for may find room.
                ResponseBody::Error(e) if e.code == ErrorCode::Busy => {
                    let asked = e.retry_after().unwrap_or(wait);
                    let back = tokio::time::Instant::now() + spread(asked);
                    if back > patience {
                        self.requests.forget(&id);
                        return Err(ClientError::Refused(e));
                    }
                    tokio::time::sleep_until(back).await;
                    answer = self.requests.register(id);
                }
                ResponseBody::Error(e) => return Err(ClientError::Refused(e)),
                body => return Ok(body),
            }
        }
        self.requests.forget(&id);
        Err(ClientError::CoordinatorTimeout {
            addr: self.addr(),
            attempts: self.retry.attempts,
        })
    }
}

/// Unanswered tries (about 0.6 s of the retry schedule) before a request goes to the next
/// coordinator of the group, and again after as many there.
const FAILOVER_AFTER: usize = 2;

/// Longest a request keeps coming back to a coordinator that answers `busy`; then the client
/// reports the `busy` answer (its message says to try again in a moment).
const BUSY_PATIENCE: Duration = Duration::from_secs(60);

/// `wait` lengthened by a random part of up to half of it.
fn spread(wait: Duration) -> Duration {
    wait.mul_f64(1.0 + rand::random::<f64>() / 2.0)
}

/// A sealer and the coordinator key it seals for.
struct KeyedSealer {
    key: [u8; 32],
    sealer: Arc<seal::Sealer>,
}

/// Takes a request's opener off the list however its wait ends.
struct OpenerGuard<'a> {
    openers: &'a Mutex<Vec<(u64, Opener)>>,
    id: u64,
}

impl Drop for OpenerGuard<'_> {
    fn drop(&mut self) {
        self.openers.lock().retain(|(id, _)| *id != self.id);
    }
}
