//! A fixed pool of threads for password hashing, with a bounded queue in front.
//!
//! Each argon2 hash at the default cost holds 19 MiB while it runs, and anyone may ask for one
//! (`register`, `login`) without an account. Run on tokio's blocking pool, a burst of such
//! requests became hundreds of threads and gigabytes; here at most `workers` hashes run at once,
//! at most `queue` more wait, and anything beyond gets an honest `busy` at once. The number of
//! workers follows the machine: more than the cores would only share the same CPU time.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// The coordinator's side of the pool: admits work and hands it to the workers.
pub(super) struct HashPool {
    jobs: std_mpsc::Sender<Job>,
    /// Workers plus queue places; a request holds one from admission until its answer is ready.
    places: Arc<Semaphore>,
    workers: usize,
    queue: usize,
    /// How long one hash takes here, in nanoseconds (a moving average), for the wait a `busy`
    /// answer suggests.
    hash_nanos: Arc<AtomicU64>,
}

/// The worker threads, joined at shutdown once every [`Ticket`] and the pool are gone.
pub(super) struct Workers(Vec<JoinHandle<()>>);

/// One admitted request: its place in the pool, held until dropped.
pub(super) struct Ticket {
    jobs: std_mpsc::Sender<Job>,
    hash_nanos: Arc<AtomicU64>,
    _place: OwnedSemaphorePermit,
}

/// What one hash is assumed to take before any has been timed (argon2 at the default cost on one
/// core of a small machine).
const FIRST_GUESS: Duration = Duration::from_millis(20);

/// Bounds on the wait a `busy` answer suggests.
const MIN_HINT: Duration = Duration::from_millis(20);
const MAX_HINT: Duration = Duration::from_secs(5);

/// Two workers per core: enough to keep every core busy while some wait for the database.
pub fn default_workers() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl HashPool {
    /// Starts `workers` threads (at least one) behind a queue of `queue` waiting requests.
    pub(super) fn start(workers: usize, queue: usize) -> std::io::Result<(HashPool, Workers)> {
        return_large_allocations_to_the_system();
        let workers = workers.max(1);
        let (tx, rx) = std_mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("confab-hash-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        let Ok(job) = job else { break };
                        // A panicking hash fails its own request (its answer channel is dropped),
                        // not the worker.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })?;
            handles.push(handle);
        }
        let pool = HashPool {
            jobs: tx,
            places: Arc::new(Semaphore::new(workers + queue)),
            workers,
            queue,
            hash_nanos: Arc::new(AtomicU64::new(FIRST_GUESS.as_nanos() as u64)),
        };
        Ok((pool, Workers(handles)))
    }

    /// A place for one more request, or `None` when every worker and queue place is taken.
    pub(super) fn admit(&self) -> Option<Ticket> {
        let place = self.places.clone().try_acquire_owned().ok()?;
        Some(Ticket {
            jobs: self.jobs.clone(),
            hash_nanos: self.hash_nanos.clone(),
            _place: place,
        })
    }

    /// How long one hash takes here (a moving average of the last few).
    pub(super) fn hash_time(&self) -> Duration {
        Duration::from_nanos(self.hash_nanos.load(Ordering::Relaxed))
    }

    /// The wait to suggest to a request refused because every place is taken: the time the
    /// workers need to work through half the queue. Clients that come back then find places
    /// freeing while the other half still keeps every worker busy, so the pool neither idles
    /// nor sends them straight back.
    pub(super) fn retry_hint(&self) -> Duration {
        let half_queue = (self.queue as u32 / 2).max(1);
        (self.hash_time() * half_queue / self.workers as u32).clamp(MIN_HINT, MAX_HINT)
    }
}

impl Ticket {
    /// Runs `work` on a worker and returns its result; `None` if it panicked or the pool is gone.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let hash_nanos = self.hash_nanos.clone();
        let job: Job = Box::new(move || {
            let started = Instant::now();
            let result = work();
            let took = started.elapsed().as_nanos() as u64;
            // An average over about the last eight: it follows a change of cost or of load
            // quickly, and one slow hash does not swing it. Lost updates between workers only
            // drop a sample.
            let old = hash_nanos.load(Ordering::Relaxed);
            hash_nanos.store(old - old / 8 + took / 8, Ordering::Relaxed);
            let _ = tx.send(result);
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

impl Workers {
    /// Waits for the threads, which end once every sender is dropped.
    pub(super) fn join(self) {
        for handle in self.0 {
            let _ = handle.join();
        }
    }
}

/// Makes glibc give memory blocks of 1 MiB and more back to the system when they are freed.
///
/// By default glibc raises its mmap threshold after the first large block is freed, up to 32 MiB,
/// so every later 19 MiB argon2 block comes from a thread's heap and stays there after the hash
/// is done: the process keeps its peak forever. A fixed threshold turns that adjustment off, so
/// each block is mapped and unmapped and memory returns to its baseline after a burst.
fn return_large_allocations_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; any value is valid for M_MMAP_THRESHOLD.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_workers_plus_queue_then_refuses() {
        let (pool, workers) = HashPool::start(2, 3).unwrap();
        let tickets: Vec<_> = (0..5).map(|_| pool.admit().expect("a place")).collect();
        assert!(pool.admit().is_none(), "a sixth place");
        assert_eq!(tickets[0].run(|| 6 * 7).await, Some(42));
        drop(tickets);
        assert!(pool.admit().is_some(), "places come back");
        assert_eq!(
            pool.admit().unwrap().run(|| panic!("boom")).await,
            None::<()>
        );
        assert_eq!(
            pool.admit().unwrap().run(|| 1).await,
            Some(1),
            "the worker survived"
        );
        drop(pool);
        workers.join();
    }

    #[tokio::test]
    async fn the_busy_hint_follows_how_long_hashes_take() {
        let (pool, workers) = HashPool::start(2, 8).unwrap();
        assert_eq!(pool.retry_hint(), FIRST_GUESS * 4 / 2);
        for _ in 0..20 {
            let ticket = pool.admit().unwrap();
            ticket
                .run(|| std::thread::sleep(Duration::from_millis(40)))
                .await
                .unwrap();
        }
        let took = pool.hash_time();
        assert!(
            took > Duration::from_millis(35) && took < Duration::from_millis(80),
            "{took:?}"
        );
        // Half the queue (4) shared by two workers: two hashes' time.
        assert_eq!(pool.retry_hint(), took * 2);
        drop(pool);
        workers.join();
    }
}
