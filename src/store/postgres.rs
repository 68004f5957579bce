//! The PostgreSQL engine: the same data and the same numbered schema steps as the SQLite one,
//! in a database that several coordinators and session hosts share.
//!
//! One task owns one connection and runs the calls in the order they were made, as the SQLite
//! thread does, batching queued group messages into one statement per batch (an `INSERT …
//! SELECT FROM UNNEST(…)`: one round trip and one commit for up to 10,000 lines). A connection
//! that breaks is opened again before the next call; the calls in between fail with the error.
//! A second connection carries the heartbeat and the claims' renewal, and a third `LISTEN`s to
//! the group. How they connect (TLS when the URL names a CA) is `pgconn.rs`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::Claimed;
use super::pgconn::Target;
use super::storage::{
    HostKind, HostLoad, HostRecord, Members, Opened, PlacedHere, Placement, Serve, Stalled, Storage,
};
use super::{Result, SessionRecord, StoreError, StoredMessage, UserRecord, name_key};
use crate::session::Committed;

/// Calls and messages waiting for the connection; beyond this an append waits for room (see
/// `Storage::append`).
const QUEUE: usize = 100_000;
/// Most messages written in one statement.
const BATCH: usize = 10_000;

/// Schema steps, in the same numbering as SQLite's (`store::migrations`): step `i` brings the
/// schema from version `i` to `i + 1`. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE users (
         id            BIGSERIAL PRIMARY KEY,
         name          TEXT NOT NULL,
         name_key      TEXT NOT NULL UNIQUE,
         password_hash TEXT NOT NULL,
         created       TIMESTAMPTZ NOT NULL
     );
     CREATE TABLE sessions (
         id       UUID PRIMARY KEY,
         name     TEXT,
         name_key TEXT UNIQUE,
         creator  TEXT NOT NULL,
         created  TIMESTAMPTZ NOT NULL
     );
     CREATE TABLE messages (
         session_id UUID NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
         seq        BIGINT NOT NULL,
         time       TIMESTAMPTZ NOT NULL,
         sender     TEXT NOT NULL,
         text       TEXT NOT NULL,
         PRIMARY KEY (session_id, seq)
     );
     CREATE TABLE meta (
         key   TEXT PRIMARY KEY,
         value BYTEA NOT NULL
     );",
    // 2: the sender's own id for each line.
    "ALTER TABLE messages ADD COLUMN client_id BIGINT;",
    // 3: who serves each session, and until when.
    "ALTER TABLE sessions ADD COLUMN host UUID, ADD COLUMN server TEXT,
                         ADD COLUMN server_key TEXT, ADD COLUMN lease_until TIMESTAMPTZ;",
    // 4: requests done, by digest (see SQLite's step 4).
    "CREATE TABLE done_requests (
         digest BYTEA PRIMARY KEY,
         at     TIMESTAMPTZ NOT NULL DEFAULT now(),
         result TEXT NOT NULL
     );",
    // 5: session hosts and their load (see SQLite's step 5).
    "CREATE TABLE hosts (
         id          UUID PRIMARY KEY,
         kind        TEXT NOT NULL,
         address     TEXT NOT NULL,
         members     INTEGER NOT NULL,
         sessions    INTEGER NOT NULL,
         lease_until TIMESTAMPTZ NOT NULL
     );",
];

/// The channel sessions' creation and closing are announced on, to every coordinator of the
/// group.
const CHANNEL: &str = "confab_sessions";

/// Any lock number of our own: taken for the whole of a migration, so coordinators starting
/// together on a fresh database run each step once.
const MIGRATION_LOCK: i64 = 0x636f_6e66_6162; // "confab"

type Call = Box<dyn for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a, ()> + Send>;

enum Job {
    Call(Call),
    Append(StoredMessage, Option<Committed>),
}

/// Cheap to clone; the task ends when the last handle is dropped, after finishing its queue.
#[derive(Clone)]
pub struct Postgres {
    tx: mpsc::Sender<Job>,
    /// A second connection for the heartbeat and the claims' renewal: behind a backlog of
    /// history writes on the first, they would be late, and a host that is only busy would
    /// give up its sessions (see fencing).
    control: mpsc::Sender<Job>,
    /// This process as a host of session servers (see `Storage::host`).
    host: Uuid,
    target: Target,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

impl Postgres {
    /// Connects to `url`, brings the schema up to date, and starts the task that owns the
    /// connection; returns the handle and the task, so that shutdown can wait for the last
    /// writes.
    pub async fn connect(url: &str) -> Result<(Postgres, tokio::task::JoinHandle<()>)> {
        let target = Target::parse(url)?;
        let mut client = open(&target).await?;
        migrate(&mut client).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let host = Uuid::new_v4();
        let task = tokio::spawn(work(target.clone(), client, rx, host));
        let (control, control_rx) = mpsc::channel(64);
        let control_client = open(&target).await?;
        tokio::spawn(work(target.clone(), control_client, control_rx, host));
        Ok((
            Postgres {
                tx,
                control,
                host,
                target,
            },
            task,
        ))
    }

    /// Runs `f` on the connection, after everything queued before it.
    fn call<T: Send + 'static>(
        &self,
        f: impl for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a, Result<T>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        queue_on(&self.tx, f)
    }

    /// Runs `f` on the control connection (heartbeats, renewals, the hosts table), which no
    /// history write waits in front of.
    fn control<T: Send + 'static>(
        &self,
        f: impl for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a, Result<T>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        queue_on(&self.control, f)
    }
}

/// Queues `f` for the connection task behind `tx`.
fn queue_on<T: Send + 'static>(
    tx: &mpsc::Sender<Job>,
    f: impl for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a, Result<T>> + Send + 'static,
) -> BoxFuture<'static, Result<T>> {
    let (reply, result) = oneshot::channel();
    let job = Job::Call(Box::new(move |client| {
        Box::pin(async move {
            let _ = reply.send(f(client).await);
        })
    }));
    let tx = tx.clone();
    // Queued now, so calls keep the order they were made in (unless the queue is full).
    let queued = tx.try_send(job);
    Box::pin(async move {
        match queued {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                tx.send(job).await.map_err(|_| StoreError::Gone)?
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::Gone),
        }
        result.await.map_err(|_| StoreError::Gone)?
    })
}

/// A plain client connection to `url`, as confab makes them (TLS when the URL names a CA), for
/// tools beside the engine: the benchmark making and dropping its throwaway database.
pub async fn connect_client(url: &str) -> Result<Client> {
    open(&Target::parse(url)?).await
}

/// `url` with its password replaced, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:…{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn open(target: &Target) -> Result<Client> {
    Ok(target.connect().await?.0)
}

async fn migrate(client: &mut Client) -> Result<()> {
    let supported = MIGRATIONS.len() as u32;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Every start after the first would log PostgreSQL's notice that the table exists.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS confab_schema (version INTEGER NOT NULL)",
    )
    .await?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM confab_schema", &[])
        .await?
        .map(|r| r.get(0));
    let found = found.unwrap_or(0) as u32;
    if found > supported {
        return Err(StoreError::TooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Schema {
                version: i as u32 + 1,
                message: e.to_string(),
            })?;
    }
    tx.execute("DELETE FROM confab_schema", &[]).await?;
    tx.execute(
        "INSERT INTO confab_schema (version) VALUES ($1)",
        &[&(supported as i32)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn work(target: Target, mut client: Client, mut rx: mpsc::Receiver<Job>, host: Uuid) {
    let mut batch = Vec::new();
    while let Some(job) = rx.recv().await {
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Append(m, done) => {
                    batch.push((m, done));
                    if batch.len() < BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                Job::Call(f) => {
                    // Earlier appends first, so a read sees every message queued before it.
                    reconnect_if_closed(&target, &mut client).await;
                    flush(&client, &mut batch, host).await;
                    f(&mut client).await;
                    next = rx.try_recv().ok();
                }
            }
        }
        reconnect_if_closed(&target, &mut client).await;
        flush(&client, &mut batch, host).await;
    }
    flush(&client, &mut batch, host).await;
    tracing::debug!("PostgreSQL task finished");
}

/// Opens the connection again if it broke (the server restarted, the network failed): one try
/// per call, so a database that is down costs each call one connect timeout at most.
async fn reconnect_if_closed(target: &Target, client: &mut Client) {
    if !client.is_closed() {
        return;
    }
    match open(target).await {
        Ok(fresh) => {
            tracing::info!("PostgreSQL connection opened again");
            *client = fresh;
        }
        Err(e) => tracing::error!(error = %e, "PostgreSQL is unreachable"),
    }
}

async fn flush(client: &Client, batch: &mut Vec<(StoredMessage, Option<Committed>)>, host: Uuid) {
    if batch.is_empty() {
        return;
    }
    let messages: Vec<&StoredMessage> = batch.iter().map(|(m, _)| m).collect();
    if let Err(e) = append_messages(client, &messages, host).await {
        tracing::error!(error = %e, count = batch.len(), "could not store messages");
    }
    crate::db::mark_done(batch.drain(..));
}

/// One statement for the whole batch. As in SQLite: a message already stored is skipped (a
/// batch written again after an error), and so is one whose session is gone or served by
/// another host now (this one lost its claim).
async fn append_messages(client: &Client, batch: &[&StoredMessage], host: Uuid) -> Result<()> {
    let mut sessions = Vec::with_capacity(batch.len());
    let mut seqs = Vec::with_capacity(batch.len());
    let mut times = Vec::with_capacity(batch.len());
    let mut senders = Vec::with_capacity(batch.len());
    let mut texts = Vec::with_capacity(batch.len());
    let mut ids = Vec::with_capacity(batch.len());
    for m in batch {
        sessions.push(m.session);
        seqs.push(seq_to_sql(m.seq)?);
        times.push(m.time);
        senders.push(m.sender.as_str());
        texts.push(m.text.as_str());
        ids.push(m.client_id.map(|id| id as i64));
    }
    client
        .execute(
            "INSERT INTO messages (session_id, seq, time, sender, text, client_id)
             SELECT m.* FROM UNNEST($1::uuid[], $2::bigint[], $3::timestamptz[], $4::text[],
                                    $5::text[], $6::bigint[])
                  AS m(session_id, seq, time, sender, text, client_id)
             WHERE EXISTS (SELECT 1 FROM sessions s WHERE s.id = m.session_id AND s.host = $7)
             ON CONFLICT (session_id, seq) DO NOTHING",
            &[&sessions, &seqs, &times, &senders, &texts, &ids, &host],
        )
        .await?;
    Ok(())
}

fn seq_to_sql(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| StoreError::SeqOutOfRange(seq))
}

fn seq_from_sql(seq: i64) -> Result<u64> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("negative sequence number {seq}")))
}

/// A unique violation is a name in use (the only unique columns written are the name keys).
fn unique(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::NameTaken
    } else {
        StoreError::Postgres(e)
    }
}

fn message(session: Uuid, row: &tokio_postgres::Row) -> Result<StoredMessage> {
    Ok(StoredMessage {
        session,
        seq: seq_from_sql(row.get(0))?,
        time: row.get(1),
        sender: row.get(2),
        text: row.get(3),
        client_id: row.get::<_, Option<i64>>(4).map(|id| id as u64),
    })
}

async fn secret(client: &Client, key: &'static str) -> Result<[u8; 32]> {
    let mut fresh = [0u8; 32];
    rand::fill(&mut fresh[..]);
    client
        .execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &&fresh[..]],
        )
        .await?;
    let stored: Vec<u8> = client
        .query_one("SELECT value FROM meta WHERE key = $1", &[&key])
        .await?
        .get(0);
    stored
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{key} has {} bytes, expected 32", stored.len())))
}

async fn history(
    client: &Client,
    session: Uuid,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredMessage>> {
    let max_seq = match before.map(i64::try_from) {
        Some(Ok(before)) => before - 1,
        None | Some(Err(_)) => i64::MAX,
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT seq, time, sender, text, client_id FROM messages
             WHERE session_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT $3",
            &[&session, &max_seq, &limit],
        )
        .await?;
    let mut out = rows
        .iter()
        .map(|r| message(session, r))
        .collect::<Result<Vec<_>>>()?;
    out.reverse();
    Ok(out)
}

async fn last_seq(client: &Client, session: Uuid) -> Result<u64> {
    let max: Option<i64> = client
        .query_one(
            "SELECT MAX(seq) FROM messages WHERE session_id = $1",
            &[&session],
        )
        .await?
        .get(0);
    max.map_or(Ok(0), seq_from_sql)
}

async fn done_result(
    c: &impl tokio_postgres::GenericClient,
    digest: &[u8; 32],
) -> Result<Option<String>> {
    Ok(c.query_opt(
        "SELECT result FROM done_requests WHERE digest = $1",
        &[&&digest[..]],
    )
    .await?
    .map(|r| r.get(0)))
}

async fn done_before(tx: &tokio_postgres::Transaction<'_>, digest: &[u8; 32]) -> Result<bool> {
    Ok(done_result(tx, digest).await?.is_some())
}

async fn mark_done(
    tx: &tokio_postgres::Transaction<'_>,
    digest: &[u8; 32],
    result: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO done_requests (digest, result) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&&digest[..], &result],
    )
    .await?;
    Ok(())
}

/// Claims session `id` for `host` (see `Store::claim_session`); the lease is counted on the
/// database's clock, so hosts on machines whose clocks differ agree on when it runs out. A
/// claim taken is announced (`served`), for a coordinator waiting on a host it placed the
/// session on.
async fn claim(client: &Client, id: Uuid, host: Uuid, serve: &Serve) -> Result<Claimed> {
    let served = serde_json::json!({
        "id": id,
        "host": host,
        "server": serve.server.to_string(),
        "server_key": serve.server_key,
    });
    let taken = client
        .query(
            "WITH taken AS (
                 UPDATE sessions SET host = $2, server = $3, server_key = $4,
                        lease_until = now() + $5 * interval '1 millisecond'
                 WHERE id = $1 AND (host IS NULL OR host = $2 OR lease_until < now())
                 RETURNING id)
             SELECT pg_notify($6, $7) FROM taken",
            &[
                &id,
                &host,
                &serve.server.to_string(),
                &serve.server_key,
                &(serve.lease.as_millis() as f64),
                &CHANNEL,
                &format!("served {served}"),
            ],
        )
        .await?;
    if !taken.is_empty() {
        return Ok(Claimed::Here);
    }
    holder(client, id).await
}

/// Who serves session `id` now, as far as the table says.
async fn holder(client: &Client, id: Uuid) -> Result<Claimed> {
    let holder = client
        .query_opt(
            "SELECT server, server_key FROM sessions WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(match holder {
        None => Claimed::Gone,
        Some(row) => Claimed::Elsewhere {
            server: row.get::<_, Option<String>>(0).unwrap_or_default(),
            server_key: row.get::<_, Option<String>>(1).unwrap_or_default(),
        },
    })
}

/// The least-loaded live host that `me` may place a session on: a dedicated host, or `me`;
/// none of `avoid`.
async fn least_loaded(client: &Client, me: Uuid, avoid: &[Uuid]) -> Result<Option<Uuid>> {
    Ok(client
        .query_opt(
            "SELECT id FROM hosts WHERE lease_until > now() AND (kind = 'host' OR id = $1)
                 AND id <> ALL($2)
             ORDER BY members, sessions, random() LIMIT 1",
            &[&me, &avoid],
        )
        .await?
        .map(|row| row.get(0)))
}

/// Places session `id`, which nobody serves on a live lease, on `host` for `lease` (the host
/// claims it when it starts the server; a placement it never takes up runs out like a
/// claim), counts it in the host's load at once (so a burst of sessions spreads before the
/// next heartbeat), and tells the host. `None` if someone serves (or was placed) already.
async fn place(client: &Client, id: Uuid, host: Uuid, lease: Duration) -> Result<Option<()>> {
    let placed = client
        .query(
            "WITH placed AS (
                 UPDATE sessions SET host = $2, server = NULL, server_key = NULL,
                        lease_until = now() + $3 * interval '1 millisecond'
                 WHERE id = $1 AND (host IS NULL OR lease_until < now())
                 RETURNING id, name),
             counted AS (
                 UPDATE hosts SET sessions = sessions + 1
                 WHERE id = $2 AND EXISTS (SELECT 1 FROM placed))
             SELECT pg_notify($4, 'placed ' || json_build_object(
                        'host', $2::uuid, 'id', placed.id, 'name', placed.name)::text)
             FROM placed",
            &[&id, &host, &(lease.as_millis() as f64), &CHANNEL],
        )
        .await?;
    Ok((!placed.is_empty()).then_some(()))
}

/// What a holder found by [`holder`] means (never this host: it did not claim).
fn elsewhere(claimed: Claimed) -> Result<Opened> {
    Opened::from_claim(claimed, || {
        Err(StoreError::Corrupt(
            "a session's holder read as this host".into(),
        ))
    })
}

/// Opens session `id` for `me` to serve, or places it on the least-loaded host (see
/// `Storage::open_session`).
async fn open_session(
    c: &mut Client,
    id: Uuid,
    new: Option<SessionRecord>,
    recent: usize,
    serve: Serve,
    once: Option<[u8; 32]>,
    me: Uuid,
) -> Result<Opened> {
    let target = match &serve.placement {
        Placement::Here => me,
        Placement::Spread { local, avoid } => match least_loaded(c, me, avoid).await? {
            Some(host) => host,
            None if *local => me,
            // A session served already is served, host or no host.
            None if new.is_none() => {
                return Ok(match holder(c, id).await? {
                    Claimed::Gone => Opened::Gone,
                    Claimed::Elsewhere { server, server_key } if !server.is_empty() => {
                        elsewhere(Claimed::Elsewhere { server, server_key })?
                    }
                    _ => Opened::NoHost,
                });
            }
            None => return Ok(Opened::NoHost),
        },
    };
    if let Some(rec) = &new {
        insert_session(c, rec, once).await?;
    }
    if target != me {
        if place(c, id, target, serve.lease).await?.is_some() {
            return Ok(Opened::Placed { host: target });
        }
        return elsewhere(holder(c, id).await?);
    }
    let claimed = claim(c, id, me, &serve).await?;
    let read = match claimed {
        Claimed::Here => Some((last_seq(c, id).await?, history(c, id, None, recent).await?)),
        _ => None,
    };
    Opened::from_claim(claimed, || Ok(read.expect("read when ours")))
}

async fn insert_session(
    client: &mut Client,
    rec: &SessionRecord,
    once: Option<[u8; 32]>,
) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO sessions (id, name, name_key, creator, created)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &rec.id,
            &rec.name,
            &rec.name.as_deref().map(name_key),
            &rec.creator,
            &rec.created,
        ],
    )
    .await
    .map_err(unique)?;
    let payload = serde_json::json!({
        "id": rec.id,
        "name": rec.name,
        "creator": rec.creator,
        "created": rec.created,
    });
    if let Some(digest) = &once {
        mark_done(&tx, digest, &rec.id.to_string()).await?;
    }
    // Delivered to the listeners when the transaction commits, not before.
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("created {payload}")],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Forwards the group's session changes from a connection of its own that `LISTEN`s, opened
/// again (after a second) whenever it breaks, until nobody reads the changes.
async fn listen(target: Target, tx: mpsc::Sender<super::Change>, catch_up: bool) {
    loop {
        match target.connect().await {
            Ok((client, mut notes)) => {
                // Notifications come while the statement runs, and after.
                let statement = if catch_up {
                    format!("LISTEN {CHANNEL}; NOTIFY {CHANNEL}, 'resend'")
                } else {
                    format!("LISTEN {CHANNEL}")
                };
                let listening = client.batch_execute(&statement);
                tokio::pin!(listening);
                let mut listened = false;
                loop {
                    tokio::select! {
                        done = &mut listening, if !listened => {
                            listened = true;
                            if let Err(e) = done {
                                tracing::warn!(error = %e, "cannot listen for the group's session changes");
                                break;
                            }
                        }
                        note = notes.recv() => match note {
                            Some(n) => {
                                if let Some(change) = parse_change(n.payload())
                                    && tx.send(change).await.is_err()
                                {
                                    return;
                                }
                            }
                            None => {
                                tracing::warn!("the listening connection broke");
                                break;
                            }
                        },
                        _ = tx.closed() => return,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open the listening connection"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// A notification's payload: `created {json}`, `closed <id> [<by>]`, `placed {json}`,
/// `served {json}`, `released <id>`, `members {json}` or `resend`.
fn parse_change(payload: &str) -> Option<super::Change> {
    #[derive(serde::Deserialize)]
    struct Created {
        id: Uuid,
        name: Option<String>,
        creator: String,
        created: DateTime<Utc>,
    }
    if payload == "resend" {
        return Some(super::Change::Resend);
    }
    match payload.split_once(' ')? {
        ("created", json) => {
            let c: Created = serde_json::from_str(json).ok()?;
            Some(super::Change::Created(SessionRecord {
                id: c.id,
                name: c.name,
                creator: c.creator,
                created: c.created,
            }))
        }
        ("closed", rest) => {
            let (id, by) = match rest.split_once(' ') {
                Some((id, by)) => (id, Some(by.to_string())),
                None => (rest, None),
            };
            Some(super::Change::Closed {
                id: id.parse().ok()?,
                by,
            })
        }
        ("released", id) => Some(super::Change::Released(id.parse().ok()?)),
        ("members", json) => Some(super::Change::Members(serde_json::from_str(json).ok()?)),
        ("placed", json) => {
            #[derive(serde::Deserialize)]
            struct Placed {
                host: Uuid,
                id: Uuid,
                name: Option<String>,
            }
            let p: Placed = serde_json::from_str(json).ok()?;
            Some(super::Change::Placed {
                host: p.host,
                session: p.id,
                name: p.name,
            })
        }
        ("served", json) => {
            #[derive(serde::Deserialize)]
            struct Served {
                id: Uuid,
                host: Uuid,
                server: String,
                server_key: String,
            }
            let s: Served = serde_json::from_str(json).ok()?;
            Some(super::Change::Served {
                session: s.id,
                host: s.host,
                server: s.server.parse().ok()?,
                server_key: s.server_key,
            })
        }
        _ => None,
    }
}

impl Storage for Postgres {
    fn create_user(
        &self,
        name: String,
        password_hash: String,
        created: DateTime<Utc>,
        once: Option<[u8; 32]>,
    ) -> BoxFuture<'static, Result<UserRecord>> {
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                if let Some(digest) = &once
                    && done_before(&tx, digest).await?
                {
                    let row = tx
                        .query_opt(
                            "SELECT id, name, password_hash, created FROM users
                             WHERE name_key = $1",
                            &[&name_key(&name)],
                        )
                        .await?
                        .ok_or(StoreError::NameTaken)?;
                    return Ok(UserRecord {
                        id: row.get(0),
                        name: row.get(1),
                        password_hash: row.get(2),
                        created: row.get(3),
                    });
                }
                let row = tx
                    .query_one(
                        "INSERT INTO users (name, name_key, password_hash, created)
                         VALUES ($1, $2, $3, $4) RETURNING id",
                        &[&name, &name_key(&name), &password_hash, &created],
                    )
                    .await
                    .map_err(unique)?;
                if let Some(digest) = &once {
                    mark_done(&tx, digest, &name).await?;
                }
                tx.commit().await?;
                Ok(UserRecord {
                    id: row.get(0),
                    name,
                    password_hash,
                    created,
                })
            })
        })
    }

    fn user(&self, name: String) -> BoxFuture<'static, Result<Option<UserRecord>>> {
        self.call(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT id, name, password_hash, created FROM users WHERE name_key = $1",
                        &[&name_key(&name)],
                    )
                    .await?;
                Ok(row.map(|r| UserRecord {
                    id: r.get(0),
                    name: r.get(1),
                    password_hash: r.get(2),
                    created: r.get(3),
                }))
            })
        })
    }

    fn token_secret(&self) -> BoxFuture<'static, Result<[u8; 32]>> {
        self.call(|c| Box::pin(secret(c, super::users::TOKEN_SECRET_KEY)))
    }

    fn identity_secret(&self) -> BoxFuture<'static, Result<[u8; 32]>> {
        self.call(|c| Box::pin(secret(c, super::users::IDENTITY_KEY)))
    }

    fn sessions(&self) -> BoxFuture<'static, Result<Vec<SessionRecord>>> {
        self.call(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT id, name, creator, created FROM sessions ORDER BY created, id",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| SessionRecord {
                        id: r.get(0),
                        name: r.get(1),
                        creator: r.get(2),
                        created: r.get(3),
                    })
                    .collect())
            })
        })
    }

    fn host(&self) -> Uuid {
        self.host
    }

    fn open_session(
        &self,
        id: Uuid,
        new: Option<SessionRecord>,
        recent: usize,
        serve: Serve,
        once: Option<[u8; 32]>,
    ) -> BoxFuture<'static, Result<Opened>> {
        let host = self.host;
        self.call(move |c| Box::pin(open_session(c, id, new, recent, serve, once, host)))
    }

    fn done_result(&self, digest: [u8; 32]) -> BoxFuture<'static, Result<Option<String>>> {
        self.call(move |c| Box::pin(async move { done_result(&*c, &digest).await }))
    }

    fn shared(&self) -> bool {
        true
    }

    fn changes(&self, catch_up: bool) -> Option<mpsc::Receiver<super::Change>> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(listen(self.target.clone(), tx, catch_up));
        Some(rx)
    }

    fn renew(&self, lease: Duration) -> BoxFuture<'static, Result<usize>> {
        let host = self.host;
        self.control(move |c| {
            Box::pin(async move {
                c.execute(
                    "DELETE FROM done_requests WHERE at < now() - $1 * interval '1 millisecond'",
                    &[&(super::sessions::DONE_TTL.as_millis() as f64)],
                )
                .await?;
                let n = c
                    .execute(
                        "UPDATE sessions SET lease_until = now() + $2 * interval '1 millisecond'
                         WHERE host = $1",
                        &[&host, &(lease.as_millis() as f64)],
                    )
                    .await?;
                Ok(n as usize)
            })
        })
    }

    fn release_session(&self, id: Uuid) -> BoxFuture<'static, Result<()>> {
        let host = self.host;
        self.call(move |c| {
            Box::pin(async move {
                c.execute(
                    "WITH released AS (
                         UPDATE sessions SET host = NULL, server = NULL, server_key = NULL,
                                lease_until = NULL
                         WHERE id = $1 AND host = $2 RETURNING id)
                     SELECT pg_notify($3, 'released ' || id::text) FROM released",
                    &[&id, &host, &CHANNEL],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn delete_session(&self, id: Uuid, once: Option<[u8; 32]>) -> BoxFuture<'static, Result<bool>> {
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                if let Some(digest) = &once {
                    if done_before(&tx, digest).await? {
                        return Ok(true);
                    }
                    mark_done(&tx, digest, &id.to_string()).await?;
                }
                tx.execute("DELETE FROM messages WHERE session_id = $1", &[&id])
                    .await?;
                // Only its creator may close a session: who closed it, for the members' bye.
                let gone = tx
                    .query_opt(
                        "DELETE FROM sessions WHERE id = $1 RETURNING creator",
                        &[&id],
                    )
                    .await?;
                let by: Option<String> = gone.as_ref().map(|row| row.get(0));
                let payload = match &by {
                    Some(by) => format!("closed {id} {by}"),
                    None => format!("closed {id}"),
                };
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                    .await?;
                tx.commit().await?;
                Ok(by.is_some())
            })
        })
    }

    fn append(&self, message: StoredMessage, done: Option<Committed>) -> Option<Stalled> {
        match self.tx.try_send(Job::Append(message, done)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(job)) => {
                let tx = self.tx.clone();
                Some(Box::pin(async move {
                    if let Err(mpsc::error::SendError(Job::Append(m, done))) = tx.send(job).await {
                        super::storage::unstored(&m, done);
                    }
                }))
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                if let Job::Append(m, done) = job {
                    super::storage::unstored(&m, done);
                }
                None
            }
        }
    }

    fn history(
        &self,
        session: Uuid,
        before: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<StoredMessage>>> {
        self.call(move |c| Box::pin(history(c, session, before, limit)))
    }

    fn messages_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<StoredMessage>>> {
        self.call(move |c| {
            Box::pin(async move {
                let Ok(after) = i64::try_from(after) else {
                    return Ok(Vec::new());
                };
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let rows = c
                    .query(
                        "SELECT seq, time, sender, text, client_id FROM messages
                         WHERE session_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3",
                        &[&session, &after, &limit],
                    )
                    .await?;
                rows.iter().map(|r| message(session, r)).collect()
            })
        })
    }

    fn last_seq(&self, session: Uuid) -> BoxFuture<'static, Result<u64>> {
        self.call(move |c| Box::pin(last_seq(c, session)))
    }

    fn schema_version(&self) -> BoxFuture<'static, Result<u32>> {
        self.call(|c| {
            Box::pin(async move {
                let v: i32 = c
                    .query_one("SELECT version FROM confab_schema", &[])
                    .await?
                    .get(0);
                Ok(v as u32)
            })
        })
    }

    fn heartbeat(&self, load: HostLoad, lease: Duration) -> BoxFuture<'static, Result<()>> {
        let host = self.host;
        self.control(move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO hosts (id, kind, address, members, sessions, lease_until)
                     VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond')
                     ON CONFLICT (id) DO UPDATE SET kind = $2, address = $3, members = $4,
                         sessions = $5, lease_until = now() + $6 * interval '1 millisecond'",
                    &[
                        &host,
                        &load.kind.as_str(),
                        &load.address,
                        &(load.members.min(i32::MAX as u32) as i32),
                        &(load.sessions.min(i32::MAX as u32) as i32),
                        &(lease.as_millis() as f64),
                    ],
                )
                .await?;
                // Hosts dead for a while are only clutter (a dead one is never picked anyway).
                c.execute(
                    "DELETE FROM hosts WHERE lease_until < now() - interval '1 hour'",
                    &[],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn retire(&self) -> BoxFuture<'static, Result<()>> {
        let host = self.host;
        self.control(move |c| {
            Box::pin(async move {
                c.execute("DELETE FROM hosts WHERE id = $1", &[&host])
                    .await?;
                Ok(())
            })
        })
    }

    fn unplace(&self, id: Uuid, host: Uuid) -> BoxFuture<'static, Result<()>> {
        self.control(move |c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE sessions SET host = NULL, lease_until = NULL
                     WHERE id = $1 AND host = $2 AND server IS NULL",
                    &[&id, &host],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn publish_members(&self, members: Vec<Members>) -> BoxFuture<'static, Result<()>> {
        self.control(move |c| {
            Box::pin(async move {
                let payloads: Vec<String> = members
                    .iter()
                    .filter_map(|m| serde_json::to_string(m).ok())
                    .map(|json| format!("members {json}"))
                    .collect();
                c.execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                    &[&CHANNEL, &payloads],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn placed_here(&self) -> BoxFuture<'static, Result<Vec<PlacedHere>>> {
        let host = self.host;
        self.control(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT id, name FROM sessions
                         WHERE host = $1 AND server IS NULL AND lease_until > now()",
                        &[&host],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| PlacedHere {
                        id: r.get(0),
                        name: r.get(1),
                    })
                    .collect())
            })
        })
    }

    fn hosts(&self) -> BoxFuture<'static, Result<Vec<HostRecord>>> {
        self.control(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT id, kind, address, members, sessions FROM hosts
                         WHERE lease_until > now() ORDER BY members, sessions, id",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| HostRecord {
                        id: r.get(0),
                        load: HostLoad {
                            kind: if r.get::<_, &str>(1) == "host" {
                                HostKind::Host
                            } else {
                                HostKind::Coordinator
                            },
                            address: r.get(2),
                            members: r.get::<_, i32>(3).max(0) as u32,
                            sessions: r.get::<_, i32>(4).max(0) as u32,
                        },
                    })
                    .collect())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Database;

    #[test]
    fn urls_select_postgresql_and_lose_their_password_in_logs() {
        let url = "postgres://confab:s3cret@db.example:5432/chat";
        assert_eq!(Database::parse(url), Database::Postgres(url.into()));
        assert_eq!(
            Database::parse("postgresql://h/db"),
            Database::Postgres("postgresql://h/db".into())
        );
        assert_eq!(
            Database::parse("chat.db"),
            Database::Sqlite("chat.db".into())
        );
        assert_eq!(redact(url), "postgres://confab:…@db.example:5432/chat");
        assert_eq!(redact("postgres://confab@h/db"), "postgres://confab@h/db");
        assert!(!Database::parse(url).describe().contains("s3cret"));
    }
}
