//! Accounts: `register` and `login`, whose password hashing runs on the hashing pool in jobs of
//! their own.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use tracing::Instrument;

use super::hashing::Ticket;
use super::jobs::{Done, Reply};
use super::{Coordinator, err, internal, quota, refuse};
use crate::auth;
use crate::protocol::{ErrorBody, ErrorCode, Password, ResponseBody, limits};
use crate::store::StoreError;

impl Coordinator {
    /// A place in the hashing pool for valid credentials, or the answer refusing them.
    fn admit(&self, reply: &Reply, user: &str, password: &Password) -> Result<Ticket, Bytes> {
        check_credentials(user, password).map_err(|e| refuse(reply, e))?;
        self.hashing.admit().ok_or_else(|| {
            tracing::debug!(from = %reply.from, "hashing pool full; answered busy");
            let e = ErrorBody::busy(
                "too many logins and registrations at once; try again in a moment",
                self.hashing.retry_hint(),
            );
            refuse(reply, e)
        })
    }

    pub(super) fn register(
        &mut self,
        reply: Reply,
        user: String,
        password: Password,
    ) -> Option<Bytes> {
        // Admitted first, so that a `busy` answer costs the address none of its quota.
        let ticket = match self.admit(&reply, &user, &password) {
            Ok(t) => t,
            Err(refused) => return Some(refused),
        };
        if let Err(wait) = self
            .registrations
            .take(&auth::ip_key(reply.from.ip()), Instant::now())
        {
            let e = err(
                ErrorCode::Quota,
                format!(
                    "too many registrations from this address; try again in {}",
                    quota::in_words(wait)
                ),
            );
            return Some(refuse(&reply, e));
        }
        let (db, cost) = (self.db.clone(), self.config.password_cost);
        let once = reply.once();
        let span = tracing::info_span!("register", request = reply.id, %user);
        self.replies.pending(reply.key);
        self.spawn_job(
            async move {
                let body = async {
                    let hash = ticket
                        .run(move || auth::hash_password_with(&password.0, cost))
                        .await
                        .ok_or_else(|| internal("hashing thread failed"))?
                        .map_err(internal)?;
                    let name = user.clone();
                    match db.create_user(name, hash, Utc::now(), once).await {
                        Ok(rec) => {
                            tracing::info!(user = %rec.name, "registered");
                            Ok(ResponseBody::Registered { user: rec.name })
                        }
                        Err(StoreError::NameTaken) => Err(err(
                            ErrorCode::NameTaken,
                            format!("the name {user} is already registered"),
                        )),
                        Err(e) => Err(internal(e)),
                    }
                }
                .await;
                Done::Account {
                    reply,
                    body: body.unwrap_or_else(ResponseBody::Error),
                    login: None,
                }
            }
            .instrument(span),
        );
        None
    }

    pub(super) fn login(
        &mut self,
        reply: Reply,
        user: String,
        password: Password,
    ) -> Option<Bytes> {
        let from = reply.from;
        if let Err(e) = check_credentials(&user, &password) {
            return Some(refuse(&reply, e));
        }
        // One login per name at a time: the throttle learns of a failure only when its hash is
        // checked, so parallel guesses would otherwise all pass the check before the first fails.
        let name_key = user.to_lowercase();
        if self.logins_in_flight.contains(&name_key) {
            let e = err(
                ErrorCode::Throttled,
                "another login for this name is in progress; try again in a moment",
            );
            return Some(refuse(&reply, e));
        }
        let now = Instant::now();
        if self.config.abuse.hold_parallel_logins && !self.throttle.may_start(from.ip(), now) {
            // Its own logins end one hash from now.
            let e = ErrorBody::busy(
                "too many logins from this address at once; try again in a moment",
                self.hashing.hash_time(),
            );
            return Some(refuse(&reply, e));
        }
        if let Err(wait) = self.throttle.check(&user, from.ip(), now) {
            let e = err(
                ErrorCode::Throttled,
                format!(
                    "too many failed logins; try again in {} s",
                    wait.as_secs().max(1)
                ),
            );
            return Some(refuse(&reply, e));
        }
        let ticket = match self.admit(&reply, &user, &password) {
            Ok(t) => t,
            Err(refused) => return Some(refused),
        };
        let (db, keys, ttl) = (self.db.clone(), self.keys.clone(), self.config.token_ttl);
        // Bound to the key the login was sealed with: the token is of no use without it.
        let bound = reply.seal.as_ref().map(|s| s.client_key());
        self.logins_in_flight.insert(name_key);
        self.throttle.started(from.ip());
        let span = tracing::info_span!("login", request = reply.id, %user);
        self.replies.pending(reply.key);
        self.spawn_job(
            async move {
                let result = async {
                    let name = user.clone();
                    let rec = db.user(name).await.map_err(internal)?;
                    let checked = ticket
                        .run(move || match rec {
                            Some(rec) => auth::verify_password(&password.0, &rec.password_hash)
                                .then_some(rec.name),
                            None => {
                                auth::dummy_verify(&password.0);
                                None
                            }
                        })
                        .await
                        .ok_or_else(|| internal("hashing thread failed"))?;
                    let name = checked.ok_or_else(|| {
                        err(
                            ErrorCode::InvalidCredentials,
                            "unknown user or wrong password",
                        )
                    })?;
                    let expires = Utc::now().trunc_subsecs(0)
                        + chrono::Duration::from_std(ttl).unwrap_or_default();
                    let token = keys.issue(&name, expires, bound.as_ref());
                    tracing::info!(user = %name, "logged in");
                    Ok::<_, ErrorBody>(ResponseBody::LoggedIn {
                        user: name,
                        token,
                        expires,
                    })
                }
                .await;
                let ok = result.is_ok();
                // Internal errors say nothing about the password; do not count them against
                // anyone.
                let counted =
                    ok || matches!(&result, Err(e) if e.code == ErrorCode::InvalidCredentials);
                Done::Account {
                    reply,
                    body: result.unwrap_or_else(ResponseBody::Error),
                    login: Some((user, counted.then_some(ok))),
                }
            }
            .instrument(span),
        );
        None
    }

    /// Records an account job's result (the throttle, the presence log) and encodes its answer.
    pub(super) fn finish_account(
        &mut self,
        reply: Reply,
        body: ResponseBody,
        login: Option<(String, Option<bool>)>,
    ) -> (Bytes, SocketAddr) {
        let from = reply.from;
        if let Some((name, _)) = &login {
            self.logins_in_flight.remove(&name.to_lowercase());
            self.throttle.finished(from.ip());
        }
        if let Some((name, Some(ok))) = &login {
            if *ok {
                if let (Some(log), ResponseBody::LoggedIn { user, .. }) =
                    (&self.presence_log, &body)
                {
                    log.login(user, from);
                }
                self.throttle.record_success(name, from.ip());
            } else {
                self.throttle
                    .record_failure(name, from.ip(), Instant::now());
            }
        }
        // A wrong password is kept too (keyed by the datagram, password included), so that a
        // retry after a lost answer is not hashed, and counted against the throttle, twice.
        let keep = match &body {
            ResponseBody::Error(e) => e.code == ErrorCode::InvalidCredentials,
            _ => true,
        };
        self.settle(reply, Ok(body), keep)
    }
}

fn check_credentials(user: &str, password: &Password) -> Result<(), ErrorBody> {
    auth::validate_user_name(user).map_err(|e| err(ErrorCode::InvalidName, e.to_string()))?;
    if password.0.is_empty() {
        return Err(err(ErrorCode::InvalidPassword, "password is empty"));
    }
    if password.0.len() > limits::MAX_PASSWORD {
        return Err(err(
            ErrorCode::InvalidPassword,
            format!("password is longer than {} bytes", limits::MAX_PASSWORD),
        ));
    }
    Ok(())
}
