//! Sealed coordinator requests: each request and its answer in NaCl's public-key box
//! (`crypto_box`: X25519 key agreement, XChaCha20-Poly1305), between a key pair the client makes
//! when it first talks to the coordinator (kept for the client's life, like a session key) and
//! the coordinator's identity key (`identity.rs`). Each box has its own random 24-byte nonce.
//!
//! The key agreement is the expensive part (about 100 µs of the coordinator's one request loop),
//! so both ends keep the box per peer key: the client one per coordinator, the coordinator a
//! bounded table of its recent clients' (`Opening`). A stranger with a fresh key per request still
//! costs an agreement each, within the per-address request rate.
//!
//! Only the coordinator's private key opens a request, and only the client that made the request
//! opens its answer, so a password or a token on the wire is readable by nobody else, and an
//! answer that opens came from the coordinator the client pinned. It is one datagram each way,
//! with nothing for the coordinator to remember between them: UDP stays stateless, and a retry
//! (the same bytes) is answered from the reply cache as before. The construction is the
//! `crypto_box` crate's `ChaChaBox`, unchanged; protocol.md ("Sealed requests") gives the bytes.
//!
//! Not forward secret: whoever later learns the coordinator's private key can open recorded
//! requests and answers. Session traffic has its own channel (`transport.rs`); private messages
//! are sealed the same way between two users' identity keys ([`PeerBoxes`]).

use std::collections::HashMap;
use std::sync::Arc;

use crypto_box::aead::{Aead, AeadCore, OsRng};
use crypto_box::{ChaChaBox, PublicKey, SecretKey};

/// First byte of a sealed request. Not `{` nor white space, so never JSON.
pub const REQUEST_MARK: u8 = 0xC5;
/// First byte of a sealed answer.
pub const ANSWER_MARK: u8 = 0xC6;
/// First byte of a sealed private datagram between two users (see [`PeerBoxes`]).
pub const PEER_MARK: u8 = 0xC7;
/// The direction byte inside a private datagram's box: the same shared key seals both ways
/// between two users, so what is inside names its sender and recipient too (checked by the
/// receiver), and this byte keeps these boxes apart from the coordinator's.
const PEER_TAG: u8 = b'P';
/// What sealing adds to a private datagram: mark, the sender's key, nonce, direction, tag.
pub const PEER_OVERHEAD: usize = 1 + KEY + NONCE + 1 + TAG;
const KEY: usize = 32;
const NONCE: usize = 24;
const TAG: usize = 16;
/// What sealing adds to a request: mark, the client's key, nonce, direction, tag.
pub const REQUEST_OVERHEAD: usize = 1 + KEY + NONCE + 1 + TAG;
/// What sealing adds to an answer: mark, nonce, direction, tag.
pub const ANSWER_OVERHEAD: usize = 1 + NONCE + 1 + TAG;
/// The first byte inside each box says which way it goes (NaCl's box has no associated data),
/// so a request can never be taken for an answer or back.
const REQUEST_TAG: u8 = b'Q';
const ANSWER_TAG: u8 = b'A';

/// A datagram that is not a sealed request or answer, or does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a sealed datagram for this key")]
pub struct SealError;

/// Whether a datagram is a sealed request (rather than plain JSON).
pub fn is_sealed_request(datagram: &[u8]) -> bool {
    datagram.first() == Some(&REQUEST_MARK)
}

/// The client's side of one request: opens its answer.
pub struct Opener {
    shared: Arc<ChaChaBox>,
}

/// A client's key pair for one coordinator, and the box they share: seals any number of
/// requests.
pub struct Sealer {
    mine: [u8; KEY],
    secret: [u8; KEY],
    shared: Arc<ChaChaBox>,
}

impl Sealer {
    /// A fresh key pair for the coordinator whose public key is `coordinator`.
    pub fn new(coordinator: &[u8; 32]) -> Self {
        let mine = SecretKey::generate(&mut OsRng);
        let shared = ChaChaBox::new(&PublicKey::from(*coordinator), &mine);
        Self {
            mine: *mine.public_key().as_bytes(),
            secret: mine.to_bytes(),
            shared: Arc::new(shared),
        }
    }

    /// The key pair as a Noise static key: the client proves it in each session handshake, since
    /// its login token is bound to it.
    pub fn static_key(&self) -> crate::transport::StaticKey {
        crate::transport::StaticKey::from_secret(self.secret)
    }

    /// Seals one request; the opener opens its answer.
    pub fn seal(&self, request: &[u8]) -> (Vec<u8>, Opener) {
        let mut out = Vec::with_capacity(request.len() + REQUEST_OVERHEAD);
        out.push(REQUEST_MARK);
        out.extend_from_slice(&self.mine);
        out.extend(seal(&self.shared, REQUEST_TAG, request));
        let opener = Opener {
            shared: self.shared.clone(),
        };
        (out, opener)
    }
}

/// Seals `request` with a key pair made for it alone.
pub fn seal_request(coordinator: &[u8; 32], request: &[u8]) -> (Vec<u8>, Opener) {
    Sealer::new(coordinator).seal(request)
}

impl Opener {
    /// The answer inside a sealed answer to this request.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, SealError> {
        match datagram.split_first() {
            Some((&ANSWER_MARK, rest)) => open(&self.shared, ANSWER_TAG, rest),
            _ => Err(SealError),
        }
    }
}

/// The coordinator's side of one request: seals its answer. Cheap to clone (the box is shared),
/// so it can travel with the request into the job that answers it.
#[derive(Clone)]
pub struct Answerer {
    shared: Arc<ChaChaBox>,
    client: [u8; KEY],
}

impl std::fmt::Debug for Answerer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answerer(<key>)")
    }
}

/// Opens a sealed request with the coordinator's private key.
pub fn open_request(secret: &[u8; 32], datagram: &[u8]) -> Result<(Vec<u8>, Answerer), SealError> {
    Opening::new(*secret, 1).open(datagram)
}

/// What opening a keyed datagram gives: the sender's key, the box shared with it, the message.
type Opened = ([u8; KEY], Arc<ChaChaBox>, Vec<u8>);

/// Our private key and the boxes it shares with the keys we met lately, at most `cap` of them
/// (then the table starts over: memory stays bounded). The key agreement is the costly part of
/// a box, so it is paid once per peer key, not per datagram.
struct BoxTable {
    secret: [u8; KEY],
    boxes: HashMap<[u8; KEY], Arc<ChaChaBox>>,
    cap: usize,
}

impl BoxTable {
    fn new(secret: [u8; KEY], cap: usize) -> Self {
        Self {
            secret,
            boxes: HashMap::new(),
            cap: cap.max(1),
        }
    }

    fn make(&self, theirs: &[u8; KEY]) -> Arc<ChaChaBox> {
        Arc::new(ChaChaBox::new(
            &PublicKey::from(*theirs),
            &SecretKey::from(self.secret),
        ))
    }

    fn keep(&mut self, theirs: [u8; KEY], shared: Arc<ChaChaBox>) {
        if !self.boxes.contains_key(&theirs) {
            if self.boxes.len() >= self.cap {
                self.boxes.clear();
            }
            self.boxes.insert(theirs, shared);
        }
    }

    /// The box for sealing to `theirs`, made and kept if new.
    fn shared(&mut self, theirs: &[u8; KEY]) -> Arc<ChaChaBox> {
        if let Some(b) = self.boxes.get(theirs) {
            return b.clone();
        }
        let b = self.make(theirs);
        self.keep(*theirs, b.clone());
        b
    }

    /// Opens `datagram` = `mark` · the sender's key · box (with direction byte `direction`):
    /// the sender's key, its box, and the message. A box for an unknown key is kept only once
    /// it opened something, so garbage keys take no place.
    fn open(&mut self, datagram: &[u8], mark: u8, direction: u8) -> Result<Opened, SealError> {
        let rest = match datagram.split_first() {
            Some((&m, rest)) if m == mark => rest,
            _ => return Err(SealError),
        };
        if rest.len() < KEY + NONCE + 1 + TAG {
            return Err(SealError);
        }
        let (theirs, sealed) = rest.split_at(KEY);
        let theirs: [u8; KEY] = theirs.try_into().map_err(|_| SealError)?;
        let shared = match self.boxes.get(&theirs) {
            Some(b) => b.clone(),
            None => self.make(&theirs),
        };
        let msg = open(&shared, direction, sealed)?;
        self.keep(theirs, shared.clone());
        Ok((theirs, shared, msg))
    }
}

/// The coordinator's side: its private key, and the boxes of the clients it heard from lately.
pub struct Opening {
    table: BoxTable,
}

impl Opening {
    /// Keeps the boxes of at most `cap` clients (then starts over: memory stays bounded).
    pub fn new(secret: [u8; 32], cap: usize) -> Self {
        Self {
            table: BoxTable::new(secret, cap),
        }
    }

    /// Opens a sealed request; the answerer seals its answer.
    pub fn open(&mut self, datagram: &[u8]) -> Result<(Vec<u8>, Answerer), SealError> {
        let (theirs, shared, request) = self.table.open(datagram, REQUEST_MARK, REQUEST_TAG)?;
        Ok((
            request,
            Answerer {
                shared,
                client: theirs,
            },
        ))
    }
}

impl Answerer {
    /// The public key the request was sealed with: the client's, which a login token is bound
    /// to (see `auth::token`).
    pub fn client_key(&self) -> [u8; 32] {
        self.client
    }

    /// Seals an answer for the client that sent the request.
    pub fn seal(&self, answer: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(answer.len() + ANSWER_OVERHEAD);
        out.push(ANSWER_MARK);
        out.extend(seal(&self.shared, ANSWER_TAG, answer));
        out
    }
}

/// Private datagrams between users, sealed with their identity keys: NaCl's box again
/// (X25519 between the sender's identity key and the recipient's, XChaCha20-Poly1305, random
/// 24-byte nonce), so only the two of them can open one, and one that opens was made by one of
/// them. The sender's public key travels in clear after the mark, so the receiver knows which
/// box to try; the receiver checks it is the key the roster gives the name inside.
///
/// Keeps the box per peer key (the agreement is the costly part), at most `cap` of them.
pub struct PeerBoxes {
    public: [u8; KEY],
    table: BoxTable,
}

impl std::fmt::Debug for PeerBoxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PeerBoxes({}, {} peers)",
            crate::identity::fingerprint(&self.public),
            self.table.boxes.len()
        )
    }
}

impl PeerBoxes {
    /// For the user whose identity key pair has the private half `secret`.
    pub fn new(secret: [u8; 32], cap: usize) -> Self {
        let public = *SecretKey::from(secret).public_key().as_bytes();
        Self {
            public,
            table: BoxTable::new(secret, cap),
        }
    }

    /// Seals `msg` for the user whose identity key is `theirs`.
    pub fn seal(&mut self, theirs: &[u8; 32], msg: &[u8]) -> Vec<u8> {
        let shared = self.table.shared(theirs);
        let mut out = Vec::with_capacity(msg.len() + PEER_OVERHEAD);
        out.push(PEER_MARK);
        out.extend_from_slice(&self.public);
        out.extend(seal(&shared, PEER_TAG, msg));
        out
    }

    /// Opens a sealed private datagram: the sender's key, and what it said. Only a datagram
    /// sealed for us by the holder of that key opens; anything else is a [`SealError`].
    pub fn open(&mut self, datagram: &[u8]) -> Result<([u8; 32], Vec<u8>), SealError> {
        let (theirs, _, msg) = self.table.open(datagram, PEER_MARK, PEER_TAG)?;
        Ok((theirs, msg))
    }
}

/// A random nonce, then the box of the direction byte and `msg`.
fn seal(shared: &ChaChaBox, direction: u8, msg: &[u8]) -> Vec<u8> {
    let nonce = ChaChaBox::generate_nonce(&mut OsRng);
    let mut plain = Vec::with_capacity(1 + msg.len());
    plain.push(direction);
    plain.extend_from_slice(msg);
    let sealed = shared
        .encrypt(&nonce, plain.as_slice())
        .expect("sealing in memory does not fail");
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend(sealed);
    out
}

fn open(shared: &ChaChaBox, direction: u8, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < NONCE + 1 + TAG {
        return Err(SealError);
    }
    let (nonce, msg) = sealed.split_at(NONCE);
    let mut plain = shared.decrypt(nonce.into(), msg).map_err(|_| SealError)?;
    if plain.first() != Some(&direction) {
        return Err(SealError);
    }
    plain.remove(0);
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn a_private_datagram_opens_only_for_its_recipient_and_names_its_sender() {
        let (alice, bob, eve) = ([1; 32], [2; 32], [3; 32]);
        let public = |s: [u8; 32]| Identity::from_secret(s).public_key();
        let mut a = PeerBoxes::new(alice, 8);
        let mut b = PeerBoxes::new(bob, 8);
        let mut e = PeerBoxes::new(eve, 8);
        let sealed = a.seal(&public(bob), b"hello bob");
        assert_eq!(sealed.len(), 9 + PEER_OVERHEAD);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(b.open(&sealed), Ok((public(alice), b"hello bob".to_vec())));
        assert_eq!(e.open(&sealed), Err(SealError), "eve cannot open it");
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(b.open(&altered), Err(SealError));
        // Claiming to be eve with alice's box does not open either.
        let mut claimed = sealed.clone();
        claimed[1..33].copy_from_slice(&public(eve));
        assert_eq!(b.open(&claimed), Err(SealError));
        // A coordinator box is not a private one.
        let (req, _) = seal_request(&public(bob), b"x");
        assert_eq!(b.open(&req), Err(SealError));
    }

    #[test]
    fn a_request_and_its_answer_open_only_for_the_two_ends() {
        let coordinator = Identity::from_secret([9; 32]);
        let (sealed, opener) = seal_request(&coordinator.public_key(), b"{\"op\":\"login\"}");
        assert!(is_sealed_request(&sealed));
        assert_eq!(sealed.len(), 14 + REQUEST_OVERHEAD);
        assert!(
            !sealed.windows(5).any(|w| w == b"login"),
            "the request is not readable"
        );
        let (request, answerer) = open_request(&coordinator.secret(), &sealed).unwrap();
        assert_eq!(request, b"{\"op\":\"login\"}");
        let answer = answerer.seal(b"token");
        assert_eq!(answer.len(), 5 + ANSWER_OVERHEAD);
        assert_eq!(opener.open(&answer).unwrap(), b"token");

        // Another coordinator's key opens nothing; another request's opener opens no answer.
        let other = Identity::from_secret([8; 32]);
        assert_eq!(
            open_request(&other.secret(), &sealed).unwrap_err(),
            SealError
        );
        let (_, stranger) = seal_request(&coordinator.public_key(), b"x");
        assert_eq!(stranger.open(&answer), Err(SealError));
    }

    #[test]
    fn one_client_key_seals_many_requests_and_the_coordinator_keeps_a_bounded_table() {
        let coordinator = Identity::from_secret([9; 32]);
        let sealer = Sealer::new(&coordinator.public_key());
        let mut opening = Opening::new(coordinator.secret(), 2);
        for i in 0..3u8 {
            let (sealed, opener) = sealer.seal(&[i]);
            let (request, answerer) = opening.open(&sealed).unwrap();
            assert_eq!(request, [i]);
            assert_eq!(opener.open(&answerer.seal(b"ok")).unwrap(), b"ok");
        }
        assert_eq!(opening.table.boxes.len(), 1, "one client, one box");
        for _ in 0..5 {
            let (sealed, _) = seal_request(&coordinator.public_key(), b"x");
            opening.open(&sealed).unwrap();
            assert!(opening.table.boxes.len() <= 2);
        }
        let (garbage, _) = seal_request(&Identity::from_secret([1; 32]).public_key(), b"x");
        let before = opening.table.boxes.len();
        assert!(opening.open(&garbage).is_err());
        assert_eq!(
            opening.table.boxes.len(),
            before,
            "a key that opens nothing takes no place"
        );
    }

    #[test]
    fn altered_truncated_or_reflected_datagrams_do_not_open() {
        let coordinator = Identity::from_secret([9; 32]);
        let (sealed, opener) = seal_request(&coordinator.public_key(), b"request");
        for i in [1, 40, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                open_request(&coordinator.secret(), &bad).is_err(),
                "byte {i}"
            );
        }
        assert!(open_request(&coordinator.secret(), &sealed[..40]).is_err());
        assert!(open_request(&coordinator.secret(), b"{\"id\":1}").is_err());
        // The request's own box bytes, sent back as an answer, are not an answer.
        let mut reflected = vec![ANSWER_MARK];
        reflected.extend_from_slice(&sealed[1 + KEY..]);
        assert_eq!(opener.open(&reflected), Err(SealError));
    }
}
