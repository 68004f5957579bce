//! Who we can send private messages to, and how a datagram gets to them when no direct path
//! does: members of our session (the roster), and anyone else online, whom the coordinator
//! looks up (`peer`) and relays to (`relay`).
//!
//! A session member is reached through the session server we share; anyone else through the
//! coordinator. Cards the coordinator gave are kept for a few minutes: a conversation does not
//! ask for each message, and a peer whose address changed is found again by the next lookup
//! after the card expires (or at once, when it writes to us).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::error::ClientError;
use super::roster::Roster;
use super::rpc::Coord;
use crate::expiring::ExpiringMap;
use crate::protocol::{ErrorCode, Member, RequestBody, ResponseBody};

/// How long a card from the coordinator is used before it is asked for again.
const CARD_TTL: Duration = Duration::from_secs(120);
/// Most cards kept.
const CARDS: usize = 4096;
/// Most lookups the hub runs at once for senders it does not know: anyone can seal a datagram
/// to us under any name, and each costs a request.
const LOOKUPS: usize = 8;

/// Cards of online users, the roster, and the ways to relay to either.
#[derive(Clone)]
pub(super) struct Contacts {
    roster: Roster,
    coord: Coord,
    /// The login token (shared with the client, which replaces it at each login).
    token: Arc<Mutex<Option<String>>>,
    cards: Arc<Mutex<ExpiringMap<String, Member>>>,
    /// Names being looked up for the hub.
    looking: Arc<Mutex<HashSet<String>>>,
    /// The client's end: background lookups stop with it.
    stop: CancellationToken,
}

impl Contacts {
    pub(super) fn new(
        roster: Roster,
        coord: Coord,
        token: Arc<Mutex<Option<String>>>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            roster,
            coord,
            token,
            cards: Arc::new(Mutex::new(ExpiringMap::new(CARD_TTL, CARDS))),
            looking: Arc::new(Mutex::new(HashSet::new())),
            stop,
        }
    }

    pub(super) fn roster(&self) -> &Roster {
        &self.roster
    }

    /// `user`'s card if known now: from the roster, else from the coordinator earlier.
    pub(super) fn card(&self, user: &str) -> Option<Member> {
        self.roster
            .get(user)
            .or_else(|| self.cards.lock().get(&user.to_lowercase()).cloned())
    }

    /// Drops the card the coordinator gave for `user` (it named a key the user no longer has).
    pub(super) fn forget(&self, user: &str) {
        self.cards.lock().remove(&user.to_lowercase());
    }

    /// `user`'s card: a member of our session (looked up with the server in a large one), else
    /// anyone online, as the coordinator knows them.
    pub(super) async fn find(&self, user: &str) -> Result<Member, ClientError> {
        if let Some(member) = self.roster.find(user, Duration::from_secs(3)).await {
            return Ok(member);
        }
        if let Some(card) = self.cards.lock().get(&user.to_lowercase()) {
            return Ok(card.clone());
        }
        self.look_up(user).await
    }

    /// Asks the coordinator for `user`'s card, and keeps it.
    async fn look_up(&self, user: &str) -> Result<Member, ClientError> {
        let token = self.token.lock().clone().ok_or(ClientError::NotLoggedIn)?;
        let body = RequestBody::Peer {
            user: user.to_string(),
            token,
        };
        let answer = match self.coord.request(body).await {
            Err(ClientError::Refused(e)) if e.code == ErrorCode::NotOnline => {
                return Err(ClientError::NoSuchMember(user.to_string()));
            }
            answer => answer?,
        };
        match answer {
            ResponseBody::Peer { member } if member.user.eq_ignore_ascii_case(user) => {
                self.cards
                    .lock()
                    .replace(member.user.to_lowercase(), member.clone());
                Ok(member)
            }
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Looks `user` up in the background, for a datagram from a sender we do not know, and
    /// calls `then` once the card is known (the hub routes the datagram again); if the lookup
    /// fails, or one for `user` is already running, the datagram is dropped and the sender's
    /// next copy finds the card. At most `LOOKUPS` at once.
    pub(super) fn want(&self, user: &str, then: impl FnOnce() + Send + 'static) {
        if self.roster.is_partial() {
            self.roster.want(user);
        }
        let name = user.to_lowercase();
        {
            let mut looking = self.looking.lock();
            if looking.len() >= LOOKUPS || !looking.insert(name.clone()) {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = this.look_up(&name) => match result {
                    Ok(_) => then(),
                    Err(e) => tracing::debug!(user = %name, error = %e, "peer lookup failed"),
                },
                _ = this.stop.cancelled() => {}
            }
            this.looking.lock().remove(&name);
        });
    }

    /// Passes a sealed private datagram to `to` without a direct path: through the session
    /// server if `to` is in our session, else through the coordinator. False when it could not
    /// be handed on (the datagram is lost, as UDP may lose it).
    pub(super) fn relay(&self, to: &str, datagram: &[u8]) -> bool {
        if self.roster.get(to).is_some() {
            return self.roster.relay(to, datagram);
        }
        let Some(token) = self.token.lock().clone() else {
            return false;
        };
        let data = base64::engine::general_purpose::STANDARD.encode(datagram);
        self.coord.post(RequestBody::Relay {
            to: to.to_string(),
            data,
            token,
        })
    }
}
