//! A fixed pool of threads for password hashing, with a bounded queue in front.
//!
//! Each argon2 hash at the default cost holds 19 MiB while it runs, and anyone may ask for one
//! (`register`, `login`) without an account. Run on tokio's blocking pool, a burst of such
//! requests became hundreds of threads and gigabytes; here at most `workers` hashes run at once,
//! at most `queue` more wait, and anything beyond gets an honest `busy` at once. The number of
//! workers follows the machine: more than the cores would only share the same CPU time.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// The coordinator's side of the pool: admits work and hands it to the workers.
pub(super) struct HashPool {
    jobs: std_mpsc::Sender<Job>,
    /// Workers plus queue places; a request holds one from admission until its answer is ready.
    places: Arc<Semaphore>,
}

/// The worker threads, joined at shutdown once every [`Ticket`] and the pool are gone.
pub(super) struct Workers(Vec<JoinHandle<()>>);

/// One admitted request: its place in the pool, held until dropped.
pub(super) struct Ticket {
    jobs: std_mpsc::Sender<Job>,
    _place: OwnedSemaphorePermit,
}

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
        };
        Ok((pool, Workers(handles)))
    }

    /// A place for one more request, or `None` when every worker and queue place is taken.
    pub(super) fn admit(&self) -> Option<Ticket> {
        let place = self.places.clone().try_acquire_owned().ok()?;
        Some(Ticket {
            jobs: self.jobs.clone(),
            _place: place,
        })
    }
}

impl Ticket {
    /// Runs `work` on a worker and returns its result; `None` if it panicked or the pool is gone.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
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
}
