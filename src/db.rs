//! The SQLite engine of [`Storage`]: the database on its own thread, with an async handle.
//!
//! SQLite calls block, so they never run on the async runtime: one thread owns the [`Store`] and
//! works through a bounded queue of jobs. Group messages are queued without waiting and written in
//! batches, one transaction per batch, which is what lets history keep up with a busy session.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use futures::future::BoxFuture;
use tokio::sync::oneshot;
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::session::Committed;
use crate::store::{
    Opened, Placement, Result, Serve, SessionRecord, Stalled, Storage, Store, StoreError,
    StoredMessage, UserRecord,
};

/// Jobs waiting for the database thread; beyond this an append waits for room (see
/// `Storage::append`).
const QUEUE: usize = 100_000;
/// Most messages written in one transaction.
const BATCH: usize = 10_000;

type Call = Box<dyn FnOnce(&Store) + Send>;

enum Job {
    Call(Call),
    Append(StoredMessage, Option<Committed>),
}

/// Cheap to clone; the thread ends when the last handle is dropped, after finishing its queue.
#[derive(Clone)]
pub struct Db {
    tx: SyncSender<Job>,
    /// This process as a host of session servers (see `Storage::host`).
    host: Uuid,
}

impl Db {
    /// Moves `store` to a new thread and returns the handle and the thread, so that shutdown can
    /// wait for the last writes.
    pub fn start(store: Store) -> std::io::Result<(Db, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let host = Uuid::new_v4();
        let thread = std::thread::Builder::new()
            .name("confab-db".into())
            .spawn(move || work(store, rx, host))?;
        Ok((Db { tx, host }, thread))
    }

    /// Runs `f` on the database thread and returns its result; a thread that is gone is one more
    /// storage error ([`StoreError::Gone`]), so callers handle every failure with one `?`.
    ///
    /// The job is queued when `call` is called, not when the future is first polled, so the jobs
    /// one task hands to other tasks reach the database in the order it made them (unless the
    /// queue is full).
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + 'static {
        let (reply, result) = oneshot::channel();
        let job = Job::Call(Box::new(move |store| {
            let _ = reply.send(f(store));
        }));
        let tx = self.tx.clone();
        let queued = tx.try_send(job);
        async move {
            match queued {
                Ok(()) => {}
                // The queue is bounded; waiting for room must not block the runtime.
                Err(TrySendError::Full(job)) => tokio::task::spawn_blocking(move || tx.send(job))
                    .await
                    .map_err(|_| StoreError::Gone)?
                    .map_err(|_| StoreError::Gone)?,
                Err(TrySendError::Disconnected(_)) => return Err(StoreError::Gone),
            }
            result.await.map_err(|_| StoreError::Gone)?
        }
    }
}

impl Storage for Db {
    fn create_user(
        &self,
        name: String,
        password_hash: String,
        created: DateTime<Utc>,
        once: Option<[u8; 32]>,
    ) -> BoxFuture<'static, Result<UserRecord>> {
        Box::pin(self.call(move |s| {
            if let Some(digest) = &once
                && s.done_before(digest)?
            {
                return s.user(&name)?.ok_or(StoreError::NameTaken);
            }
            let rec = s.create_user(&name, &password_hash, created)?;
            if let Some(digest) = &once {
                s.mark_done(digest, &name)?;
            }
            Ok(rec)
        }))
    }

    fn user(&self, name: String) -> BoxFuture<'static, Result<Option<UserRecord>>> {
        Box::pin(self.call(move |s| s.user(&name)))
    }

    fn token_secret(&self) -> BoxFuture<'static, Result<[u8; 32]>> {
        Box::pin(self.call(|s| s.token_secret()))
    }

    fn identity_secret(&self) -> BoxFuture<'static, Result<[u8; 32]>> {
        Box::pin(self.call(|s| s.identity_secret()))
    }

    fn sessions(&self) -> BoxFuture<'static, Result<Vec<SessionRecord>>> {
        Box::pin(self.call(|s| s.sessions()))
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
        Box::pin(self.call(move |s| {
            // One process owns the file: there are no other hosts to place a session on.
            if matches!(serve.placement, Placement::Spread { local: false, .. }) {
                return Ok(Opened::NoHost);
            }
            if let Some(rec) = &new {
                s.insert_session(rec)?;
                if let Some(digest) = &once {
                    s.mark_done(digest, &rec.id.to_string())?;
                }
            }
            let server = serve.server.to_string();
            let claimed = s.claim_session(id, host, &server, &serve.server_key, serve.lease)?;
            Opened::from_claim(claimed, || {
                Ok((s.last_seq(id)?, s.history(id, None, recent)?))
            })
        }))
    }

    fn done_result(&self, digest: [u8; 32]) -> BoxFuture<'static, Result<Option<String>>> {
        Box::pin(self.call(move |s| s.done_result(&digest)))
    }

    fn renew(&self, lease: std::time::Duration) -> BoxFuture<'static, Result<usize>> {
        let host = self.host;
        Box::pin(self.call(move |s| {
            s.forget_done()?;
            s.renew_claims(host, lease)
        }))
    }

    fn release_session(&self, id: Uuid) -> BoxFuture<'static, Result<()>> {
        let host = self.host;
        Box::pin(self.call(move |s| s.release_session(id, host)))
    }

    fn delete_session(&self, id: Uuid, once: Option<[u8; 32]>) -> BoxFuture<'static, Result<bool>> {
        Box::pin(self.call(move |s| {
            if let Some(digest) = &once
                && s.done_before(digest)?
            {
                return Ok(true);
            }
            let existed = s.delete_session(id)?;
            if let Some(digest) = &once {
                s.mark_done(digest, &id.to_string())?;
            }
            Ok(existed)
        }))
    }

    fn append(&self, message: StoredMessage, done: Option<Committed>) -> Option<Stalled> {
        match self.tx.try_send(Job::Append(message, done)) {
            Ok(()) => None,
            Err(TrySendError::Full(job)) => {
                let tx = self.tx.clone();
                Some(Box::pin(async move {
                    // The thread's queue is a std one: wait for room off the runtime.
                    let sent = tokio::task::spawn_blocking(move || tx.send(job)).await;
                    if let Ok(Err(mpsc::SendError(Job::Append(m, done)))) = sent {
                        crate::store::storage::unstored(&m, done);
                    }
                }))
            }
            Err(TrySendError::Disconnected(job)) => {
                if let Job::Append(m, done) = job {
                    crate::store::storage::unstored(&m, done);
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
        Box::pin(self.call(move |s| s.history(session, before, limit)))
    }

    fn messages_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<StoredMessage>>> {
        Box::pin(self.call(move |s| s.messages_after(session, after, limit)))
    }

    fn last_seq(&self, session: Uuid) -> BoxFuture<'static, Result<u64>> {
        Box::pin(self.call(move |s| s.last_seq(session)))
    }

    fn schema_version(&self) -> BoxFuture<'static, Result<u32>> {
        Box::pin(self.call(|s| Ok(s.schema_version())))
    }
}

fn work(store: Store, rx: Receiver<Job>, host: Uuid) {
    let mut batch = Vec::new();
    while let Ok(job) = rx.recv() {
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
                    flush(&store, &mut batch, host);
                    f(&store);
                    next = rx.try_recv().ok();
                }
            }
        }
        flush(&store, &mut batch, host);
    }
    flush(&store, &mut batch, host);
    tracing::debug!("database thread finished");
}

fn flush(store: &Store, batch: &mut Vec<(StoredMessage, Option<Committed>)>, host: Uuid) {
    if batch.is_empty() {
        return;
    }
    let messages: Vec<StoredMessage> = batch.iter().map(|(m, _)| m.clone()).collect();
    #[cfg(feature = "test-util")]
    if let Some(delay) = write_delay() {
        std::thread::sleep(delay);
    }
    if let Err(e) = store.append_messages(&messages, Some(host)) {
        tracing::error!(error = %e, count = batch.len(), "could not store messages");
    }
    mark_done(batch.drain(..));
}

/// Fault injection: `CONFAB_FAULT_WRITE_DELAY_MS` makes every history batch take that much
/// longer to write, as a slow disk would (tests only: the hook is not in a normal build).
#[cfg(feature = "test-util")]
fn write_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("CONFAB_FAULT_WRITE_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis)
    })
}

/// Tells the rooms that their lines in a finished batch are written.
pub(crate) fn mark_done(batch: impl Iterator<Item = (StoredMessage, Option<Committed>)>) {
    for (m, done) in batch {
        if let Some(done) = done {
            done.mark(m.seq);
        }
    }
}
