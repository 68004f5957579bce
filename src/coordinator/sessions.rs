//! Sessions: `create`, `join`, `close` and `list`, and starting a session's server.
//!
//! A server starts in two steps. The loop binds its listener and marks the session `Starting`
//! in the directory; a job then reads the session's history (storing the session first, for a
//! `create`), and the loop spawns the server when the job reports back, answering every request
//! that waited for it. A `join` of a session that is starting waits for that start, so two joins
//! of an idle session start one server and both are told its address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::directory::{Listed, name_taken};
use super::jobs::{Done, Reply, Start, Started};
use super::{Coordinator, encode, err, fds, internal, quota};
use crate::auth;
use crate::protocol::{ErrorBody, ErrorCode, ResponseBody, SessionInfo};
use crate::session::{self, SessionConfig, Stop};
use crate::store::{History, Opened, Placement, Serve, SessionRecord, StoreError, to_line};

/// What a request for the loop leads to: an answer now (`Some`), or later, from a job (`None`).
type Now = Result<Option<ResponseBody>, ErrorBody>;

impl Coordinator {
    pub(super) fn create(&mut self, reply: Reply, name: Option<String>, token: &str) -> Now {
        let claims = self.verify(token, reply.seal.as_ref())?;
        self.room_for_job()?;
        // A sealed create may be a retry of one another coordinator of the group did (its
        // answer lost): the database is asked first, and the answer is then that session.
        if let Some(digest) = reply.once() {
            let done = self.db.done_result(digest);
            self.replies.pending(reply.key);
            let token = token.to_string();
            self.spawn_job(async move {
                let found = match done.await {
                    Ok(found) => Ok(found.and_then(|id| id.parse().ok())),
                    Err(e) => Err(internal(e)),
                };
                Done::CreateChecked {
                    reply,
                    name,
                    token,
                    found,
                }
            });
            return Ok(None);
        }
        self.create_now(reply, name, claims)
    }

    /// What a `create` asked for, once the group has not done it already: the session made and
    /// its server started.
    pub(super) fn create_now(
        &mut self,
        reply: Reply,
        name: Option<String>,
        claims: auth::Claims,
    ) -> Now {
        if let Some(name) = &name {
            auth::validate_session_name(name)
                .map_err(|e| err(ErrorCode::InvalidName, e.to_string()))?;
            if self.directory.name_taken(name) {
                return Err(name_taken(name));
            }
        }
        self.check_session_quotas(reply.from, &claims.user)?;
        // The server's port first: a session whose server cannot start is never listed.
        let listener = self.local_listener()?;
        let listed = Listed {
            id: Uuid::new_v4(),
            name,
            creator: claims.user,
            created: Utc::now().trunc_subsecs(3),
            server: None,
        };
        // Listed at once (its name is taken from now on); taken out again if it cannot be stored.
        self.directory.insert(listed.clone())?;
        tracing::info!(session = %listed.id, name = ?listed.name, creator = %listed.creator, "session created");
        let creator = listed.creator.clone();
        self.start(reply, &creator, true, listed, listener);
        Ok(None)
    }

    /// Refuses a `create` beyond the creator's or the address's quota, taking one of each
    /// otherwise.
    fn check_session_quotas(&mut self, from: SocketAddr, user: &str) -> Result<(), ErrorBody> {
        let limits = &self.config.abuse;
        if let Some(cap) = limits.live_sessions_per_user
            && self.directory.created_by(user) >= cap
        {
            return Err(err(
                ErrorCode::Quota,
                format!("you have {cap} sessions, the most one account may have; close one first"),
            ));
        }
        let now = Instant::now();
        if let Err(wait) = self.created_by_user.take(&user.to_lowercase(), now) {
            return Err(err(
                ErrorCode::Quota,
                format!(
                    "you created too many sessions in the last hour; try again in {}",
                    quota::in_words(wait)
                ),
            ));
        }
        if let Err(wait) = self.created_by_address.take(&auth::ip_key(from.ip()), now) {
            return Err(err(
                ErrorCode::Quota,
                format!(
                    "too many sessions created from this address; try again in {}",
                    quota::in_words(wait)
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn join(&mut self, reply: Reply, key: &str, token: &str) -> Now {
        let claims = self.verify(token, reply.seal.as_ref())?;
        let listed = self.directory.find(key)?;
        if let Some(session) = listed.info(&self.session_key.fingerprint()) {
            return Ok(Some(ResponseBody::Session { session }));
        }
        if let Some(waiting) = self.starting.get_mut(&listed.id) {
            self.replies.pending(reply.key);
            waiting.push((reply, false));
            return Ok(None);
        }
        self.room_for_job()?;
        let listener = self.local_listener()?;
        self.start(reply, &claims.user, false, listed, listener);
        Ok(None)
    }

    /// Marks `listed` as starting and reads (for a new session: first stores) it in a job;
    /// `reply` (from `user`) waits for the start, its answer kept for retries when `keep`.
    fn start(
        &mut self,
        reply: Reply,
        user: &str,
        keep: bool,
        listed: Listed,
        listener: Option<TcpListener>,
    ) {
        let id = listed.id;
        let new = keep.then(|| SessionRecord {
            id,
            name: listed.name.clone(),
            creator: listed.creator.clone(),
            created: listed.created,
        });
        let created = new.is_some();
        let once = if created { reply.once() } else { None };
        let recent = self.config.recent_messages;
        let serve = Serve {
            server: listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .unwrap_or_else(|| SocketAddr::new(self.session_host, 0)),
            server_key: self.session_key.fingerprint(),
            lease: self.config.lease,
            placement: Placement::Spread {
                local: listener.is_some(),
                avoid: self.passed_over.now(),
            },
        };
        // Subscribed before the placement is asked for, so the host's answer cannot be missed.
        let mut served = self.served.subscribe();
        let db = self.db.clone();
        // Queued now, in the loop, so it reaches the database before anything asked after it
        // (a `close` of the new session above all).
        let stored = self.db.open_session(id, new, recent, serve, once);
        self.directory.set_starting(id);
        self.replies.pending(reply.key);
        let span = tracing::info_span!("start", request = reply.id, %user, session = %id);
        self.starting.insert(id, vec![(reply, keep)]);
        self.spawn_job(
            async move {
                let mut created = created;
                let mut unresponsive = None;
                let result = match stored.await {
                    Ok(Opened::Here { seq, recent }) => match listener {
                        Some(listener) => Ok(Start::Here(Started {
                            listed,
                            listener,
                            seq,
                            recent,
                        })),
                        None => Err(internal("a session claimed with no local listener")),
                    },
                    Ok(Opened::Placed { host }) => {
                        // Stored whatever happens next: never taken out of the directory.
                        created = false;
                        match wait_served(&mut served, id).await {
                            Some((server, server_key)) => {
                                Ok(Start::Elsewhere(listed.served_at(server, server_key)))
                            }
                            None => {
                                tracing::warn!(%host, "the session host did not start the session in time; passed over a while");
                                unresponsive = Some(host);
                                if let Err(e) = db.unplace(id, host).await {
                                    tracing::warn!(error = %e, "could not undo the placement");
                                }
                                Err(ErrorBody::busy(
                                    "the session's host did not start it; try again",
                                    PLACE_RETRY,
                                ))
                            }
                        }
                    }
                    Ok(Opened::Starting) => Err(ErrorBody::busy(
                        "the session is starting on a host of the group; try again",
                        PLACE_RETRY,
                    )),
                    Ok(Opened::NoHost) => Err(err(
                        ErrorCode::Full,
                        "no session host of the group is running; try again later",
                    )),
                    // Another coordinator of the group serves it: send the client there.
                    Ok(Opened::Elsewhere { server, server_key }) => {
                        Ok(Start::Elsewhere(listed.served_at(server, server_key)))
                    }
                    Ok(Opened::Gone) => Err(err(
                        ErrorCode::SessionNotFound,
                        format!("session not found: {id}"),
                    )),
                    Err(StoreError::NameTaken) => {
                        Err(name_taken(listed.name.as_deref().unwrap_or_default()))
                    }
                    Err(e) => Err(internal(e)),
                };
                Done::Started {
                    session: id,
                    created,
                    result,
                    unresponsive,
                }
            }
            .instrument(span),
        );
    }

    /// Starts the server of a session whose start job finished, and answers whoever waited.
    pub(super) fn launch(
        &mut self,
        id: Uuid,
        created: bool,
        result: Result<Start, ErrorBody>,
    ) -> Vec<(Bytes, SocketAddr)> {
        let waiting = self.starting.remove(&id).unwrap_or_default();
        let body = match result {
            Ok(Start::Here(started)) if self.directory.is_starting(id) => self
                .spawn_server(started)
                .map(|session| ResponseBody::Session { session }),
            Ok(Start::Elsewhere(session)) if self.directory.is_starting(id) => {
                tracing::info!(%id, server = %session.server, "served elsewhere in the group");
                self.directory.set_start_failed(id);
                Ok(ResponseBody::Session { session })
            }
            // Closed while it was starting.
            Ok(_) => Err(err(
                ErrorCode::SessionNotFound,
                format!("session not found: {id}"),
            )),
            Err(e) => Err(e),
        };
        if body.is_err() && self.directory.is_starting(id) {
            if created {
                // Never stored, so it does not exist (and has no members to tell).
                self.directory.remove(id, "");
            } else {
                self.directory.set_start_failed(id);
            }
        }
        let ok = body.is_ok();
        waiting
            .into_iter()
            .map(|(reply, keep)| self.settle(reply, body.clone(), keep && ok))
            .collect()
    }

    pub(super) fn close(&mut self, reply: Reply, key: &str, token: &str) -> Now {
        let claims = self.verify(token, reply.seal.as_ref())?;
        let listed = match (self.directory.find(key), reply.once()) {
            (Ok(listed), _) => listed,
            // Perhaps closed by this very request, through another coordinator of the group
            // whose answer was lost: then it is answered as done.
            (Err(e), Some(digest)) if e.code == ErrorCode::SessionNotFound => {
                self.room_for_job()?;
                let done = self.db.done_result(digest);
                self.replies.pending(reply.key);
                self.spawn_job(async move {
                    let result = match done.await {
                        Ok(Some(id)) => id.parse().map_err(internal),
                        Ok(None) => Err(e),
                        Err(failed) => Err(internal(failed)),
                    };
                    let session = result.as_ref().copied().unwrap_or_default();
                    Done::Closed {
                        reply,
                        session,
                        by: claims.user,
                        result: result.map(drop),
                    }
                });
                return Ok(None);
            }
            (Err(e), _) => return Err(e),
        };
        if !listed.creator.eq_ignore_ascii_case(&claims.user) {
            return Err(err(
                ErrorCode::Forbidden,
                format!("only {} may close this session", listed.creator),
            ));
        }
        self.room_for_job()?;
        let id = listed.id;
        let deleted = self.db.delete_session(id, reply.once());
        self.replies.pending(reply.key);
        let span =
            tracing::info_span!("close", request = reply.id, user = %claims.user, session = %id);
        self.spawn_job(
            async move {
                Done::Closed {
                    reply,
                    session: id,
                    by: claims.user,
                    result: deleted.await.map(drop).map_err(internal),
                }
            }
            .instrument(span),
        );
        Ok(None)
    }

    /// A listener for one more session server of this process, or `None` when it serves no
    /// sessions itself (`--no-local-sessions`: they are placed on the group's hosts).
    fn local_listener(&self) -> Result<Option<TcpListener>, ErrorBody> {
        if self.config.local_sessions {
            self.open_listener().map(Some)
        } else {
            Ok(None)
        }
    }

    /// A listener for one more session server, unless that would leave too few descriptors for
    /// the members of the sessions already running (or the server limit is reached).
    fn open_listener(&self) -> Result<TcpListener, ErrorBody> {
        let running = self.directory.running();
        if running >= self.config.max_sessions {
            return Err(err(
                ErrorCode::Full,
                format!(
                    "the coordinator already runs {} sessions, its limit",
                    self.config.max_sessions
                ),
            ));
        }
        if let Some((open, limit)) = fds::usage() {
            let reserve = self.config.fd_reserve.unwrap_or(limit / 4);
            if open.saturating_add(reserve) >= limit {
                tracing::warn!(
                    open,
                    limit,
                    reserve,
                    running,
                    "no descriptors to spare for a new session"
                );
                return Err(err(
                    ErrorCode::Full,
                    "the coordinator has no file descriptors to spare for another session; \
                     try again later",
                ));
            }
        }
        session::bind(SocketAddr::new(self.session_host, 0)).map_err(|e| {
            tracing::warn!(error = %e, "cannot bind a session server");
            err(
                ErrorCode::Full,
                format!("the coordinator cannot start another session server: {e}"),
            )
        })
    }

    /// Spawns the server of a session on its listener, with its stored history.
    fn spawn_server(&mut self, started: Started) -> Result<SessionInfo, ErrorBody> {
        let Started {
            listed,
            listener,
            seq,
            recent,
        } = started;
        let id = listed.id;
        let server = listener.local_addr().map_err(internal)?;
        let mut config = SessionConfig::new(id, listed.name.clone());
        config.idle_timeout = self.config.idle_timeout;
        config.max_members = self.config.max_members;
        config.member_queue = self.config.member_queue;
        config.member_budget = self.config.member_budget;
        config.full_roster_max = self.config.full_roster_max;
        config.recent_messages = self.config.recent_messages;
        config.member_limits = self.config.member_limits.clone();
        config.presence_log = self.presence_log.clone();
        config.observer = Some(Arc::new(self.directory.clone()));
        config.history = Some(Arc::new(History(self.db.clone())));
        config.tokens = Some(self.keys.clone());
        config.noise = Some(self.session_key.clone());
        config.plain = self.config.insecure;
        config.start_seq = seq;
        config.start_recent = recent.into_iter().map(to_line).collect();

        self.generation += 1;
        let generation = self.generation;
        let stop = Stop {
            shutdown: self.shutdown.clone(),
            close: CancellationToken::new(),
            crash: CancellationToken::new(),
            closed_by: Default::default(),
        };
        self.directory
            .set_running(id, server, generation, stop.clone());
        let directory = self.directory.clone();
        let db = self.db.clone();
        self.tracker.spawn(async move {
            let ended = session::run(listener, config, stop).await;
            tracing::info!(session = %id, ?ended, "session server stopped");
            directory.set_stopped(id, generation);
            // Queued after the last of its lines: another coordinator may serve it now.
            if let Err(e) = db.release_session(id).await {
                tracing::warn!(session = %id, error = %e, "could not give up the session's claim");
            }
        });
        Ok(SessionInfo {
            id,
            name: listed.name,
            server,
            server_key: Some(self.session_key.fingerprint()),
            creator: listed.creator,
            created: listed.created,
        })
    }

    pub(super) fn online(&self, cursor: usize, from: SocketAddr) -> ResponseBody {
        let budget = room_beside(
            from,
            ResponseBody::Online {
                users: Vec::new(),
                next: Some(usize::MAX),
                total: usize::MAX,
            },
        );
        let (users, next, total) = self.directory.online(cursor, budget);
        ResponseBody::Online { users, next, total }
    }

    pub(super) fn list(&self, cursor: usize, from: SocketAddr) -> ResponseBody {
        let budget = room_beside(
            from,
            ResponseBody::Sessions {
                sessions: Vec::new(),
                next: Some(usize::MAX),
                total: usize::MAX,
            },
        );
        let (sessions, next, total) = self.directory.page(cursor, budget);
        ResponseBody::Sessions {
            sessions,
            next,
            total,
        }
    }
}

/// How long a coordinator waits for the host it placed a session on to serve it: starting a
/// server takes the host one database call, so this is a host that died or is overloaded.
const PLACE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// The wait a client is asked for when a placement did not work out (or is under way).
const PLACE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// The server and key of session `id` once a host says it serves it, or `None` after
/// `PLACE_WAIT`.
async fn wait_served(
    served: &mut tokio::sync::broadcast::Receiver<Served>,
    id: Uuid,
) -> Option<(SocketAddr, String)> {
    let waiting = async {
        loop {
            match served.recv().await {
                Ok(s) if s.session == id => return Some((s.server, s.server_key)),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    };
    tokio::time::timeout(PLACE_WAIT, waiting)
        .await
        .ok()
        .flatten()
}

/// How long a host that did not serve a placement is left out of this coordinator's
/// placements: long enough not to send every session to a host that is wedged (or cannot hear
/// the group), short enough to use it again soon after it recovers.
const PASS_OVER: std::time::Duration = std::time::Duration::from_secs(30);

/// Hosts left out of placements for now (see `PASS_OVER`); as many as the group has hosts.
#[derive(Default)]
pub(super) struct PassedOver(std::collections::HashMap<Uuid, Instant>);

impl PassedOver {
    pub(super) fn pass_over(&mut self, host: Uuid) {
        let now = Instant::now();
        self.0.retain(|_, until| *until > now);
        self.0.insert(host, now + PASS_OVER);
    }

    /// The hosts to leave out now.
    fn now(&self) -> Vec<Uuid> {
        let now = Instant::now();
        self.0
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(host, _)| *host)
            .collect()
    }
}

/// A host's word that it serves a session (from the group's `served` notifications).
#[derive(Debug, Clone)]
pub(super) struct Served {
    pub(super) session: Uuid,
    pub(super) server: SocketAddr,
    pub(super) server_key: String,
}

/// Bytes left in one answer datagram beside `empty`, a page answer without items and with the
/// widest numbers it could hold.
fn room_beside(from: SocketAddr, empty: ResponseBody) -> usize {
    super::ANSWER_ROOM.saturating_sub(encode(Some(u64::MAX), from, empty).len())
}
