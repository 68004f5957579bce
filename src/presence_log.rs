//! The presence log: one plain-text line per login, join and leave, for people to read with
//! `tail -f`.
//!
//! It is kept apart from `tracing` output on purpose: operators want a stable, greppable record of
//! who was where and when, without the noise of debug logs. Every `joined` line is followed, for
//! the same session and user, by one `left` line with a reason, whatever ended the visit (the
//! member left, went silent, was too slow, the session was closed, the server shut down, the
//! session server crashed). The log itself keeps the open visits, so that pairing holds by
//! construction: a `left` is written only for an open visit, and a session server that ends
//! closes whatever its room left open. Only a killed process leaves some unmatched, and then
//! the next `started` line says so.
//!
//! Writes go through a bounded queue to one writer task, so a slow disk never stalls a session;
//! if the queue is full the line is dropped and a warning is logged instead. The file is rotated
//! by size (`log`, `log.1`, … `log.N`), so no amount of churn can fill the disk: the log takes at
//! most `(keep + 1) × max_bytes`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use chrono::Local;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

const QUEUE: usize = 4096;

/// How large the log may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file that would pass this many bytes is renamed to `.1` and a new one begun.
    pub max_bytes: u64,
    /// Old files kept (`.1` is the newest); the oldest beyond are deleted. 0 keeps none.
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            keep: 4,
        }
    }
}

/// Cheap to clone; every session server holds one. The writer ends, after writing everything
/// queued, when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PresenceLog {
    tx: mpsc::Sender<String>,
    /// (session, user) → endpoint, for every `joined` without its `left` yet.
    open: Arc<Mutex<Visits>>,
}

impl PresenceLog {
    /// Opens (appending) or creates the file, readable by its owner only, writes a `started`
    /// line, and starts its writer on `tracker`.
    pub async fn open(
        path: &Path,
        rotation: Rotation,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        let file = open_private(path).await?;
        let written = file.metadata().await?.len();
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        let mut out = Writer {
            path: path.to_path_buf(),
            rotation,
            file: tokio::io::BufWriter::new(file),
            written,
        };
        tracker.spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut ok = out.write(&line).await.is_ok();
                while let Ok(line) = rx.try_recv() {
                    ok &= out.write(&line).await.is_ok();
                }
                if !ok || out.file.flush().await.is_err() {
                    tracing::warn!("presence log write failed");
                }
            }
            let _ = out.write(&line("coordinator stopped")).await;
            let _ = out.file.flush().await;
        });
        let log = Self {
            tx,
            open: Default::default(),
        };
        log.send(line(
            "coordinator started (a joined line before this one without its left: that member was disconnected when the coordinator stopped unexpectedly)",
        ));
        Ok(log)
    }

    /// Records a join: `2026-11-22 14:03:07 session=lobby(<id>) joined user=alice
    /// udp=127.0.0.1:5000` (`udp=none` for a member that takes no private messages).
    pub fn joined(&self, session: &str, user: &str, udp: Option<SocketAddr>) {
        let replaced = self.visits().insert((session.into(), user.into()), udp);
        if let Some(old) = replaced {
            // Not expected (a name is in a session once), but the pairing must hold.
            self.write_left(session, user, old, "replaced");
        }
        let udp = Udp(udp);
        self.send(line(&format!(
            "session={session} joined user={user} udp={udp}"
        )));
    }

    /// Records a departure and why (`left`, `disconnected`, `too_slow`, `closed`, `shutdown`):
    /// `… session=lobby(<id>) left user=alice udp=127.0.0.1:5000 reason=closed`. Nothing if the
    /// visit was not logged as joined, or its departure already was.
    pub fn left(&self, session: &str, user: &str, reason: &str) {
        let visit = self
            .visits()
            .remove(&(session.to_string(), user.to_string()));
        if let Some(udp) = visit {
            self.write_left(session, user, udp, reason);
        }
    }

    /// Records the departure of everyone still logged in `session`: its server has stopped.
    pub fn session_ended(&self, session: &str, reason: &str) {
        let gone: Vec<((String, String), Option<SocketAddr>)> = {
            let mut open = self.visits();
            let keys: Vec<_> = open.keys().filter(|(s, _)| s == session).cloned().collect();
            keys.into_iter()
                .filter_map(|k| open.remove(&k).map(|udp| (k, udp)))
                .collect()
        };
        for ((session, user), udp) in gone {
            self.write_left(&session, &user, udp, reason);
        }
    }

    fn visits(&self) -> parking_lot::MutexGuard<'_, Visits> {
        self.open.lock()
    }

    fn write_left(&self, session: &str, user: &str, udp: Option<SocketAddr>, reason: &str) {
        let udp = Udp(udp);
        self.send(line(&format!(
            "session={session} left user={user} udp={udp} reason={reason}"
        )));
    }

    /// Records a successful login: `2026-11-22 14:03:07 login user=alice from=127.0.0.1:5000`.
    pub fn login(&self, user: &str, from: SocketAddr) {
        self.send(line(&format!("login user={user} from={from}")));
    }

    fn send(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            tracing::warn!("presence log queue full; line dropped");
        }
    }
}

/// Members logged as joined and not yet as left: (session, user) → their endpoint.
type Visits = HashMap<(String, String), Option<SocketAddr>>;

/// A member's endpoint in a log line: the address, or `none`.
struct Udp(Option<SocketAddr>);

impl std::fmt::Display for Udp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("none"),
        }
    }
}

fn line(text: &str) -> String {
    format!("{} {text}\n", Local::now().format("%Y-%m-%d %H:%M:%S"))
}

/// Who was where, from which address: for the operator only.
async fn open_private(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await
}

struct Writer {
    path: PathBuf,
    rotation: Rotation,
    file: tokio::io::BufWriter<tokio::fs::File>,
    /// Bytes in the current file.
    written: u64,
}

impl Writer {
    async fn write(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.written > 0 && self.written + len > self.rotation.max_bytes {
            self.rotate().await?;
        }
        self.file.write_all(line.as_bytes()).await?;
        self.written += len;
        Ok(())
    }

    /// `log.N-1` → `log.N`, …, `log` → `log.1`, and a new `log`.
    async fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        let numbered = |n: usize| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.rotation.keep == 0 {
            tokio::fs::remove_file(&self.path).await?;
        } else {
            for n in (1..self.rotation.keep).rev() {
                match tokio::fs::rename(numbered(n), numbered(n + 1)).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            tokio::fs::rename(&self.path, numbered(1)).await?;
        }
        self.file = tokio::io::BufWriter::new(open_private(&self.path).await?);
        self.written = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_log_rotates_by_size_and_keeps_what_it_was_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("presence.log");
        let tracker = TaskTracker::new();
        let rotation = Rotation {
            max_bytes: 1000,
            keep: 2,
        };
        let log = PresenceLog::open(&path, rotation, &tracker).await.unwrap();
        let udp = Some("127.0.0.1:9".parse().unwrap());
        for i in 0..200 {
            log.joined("lobby", &format!("user{i}"), udp);
            // Through the queue at its pace: the test is about files, not about a full queue.
            tokio::task::yield_now().await;
        }
        drop(log);
        tracker.close();
        tracker.wait().await;
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len());
        let with = |n: &str| dir.path().join(format!("presence.log{n}"));
        for file in [with(""), with(".1"), with(".2")] {
            let len = size(&file).unwrap();
            assert!(len > 0 && len <= 1000, "{}: {len}", file.display());
        }
        assert!(size(&with(".3")).is_err(), "only two old files are kept");
        let newest = std::fs::read_to_string(with("")).unwrap();
        assert!(newest.contains("user199"), "{newest}");
        assert!(newest.ends_with("coordinator stopped\n"), "{newest}");
    }

    #[tokio::test]
    async fn every_joined_gets_exactly_one_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("presence.log");
        let tracker = TaskTracker::new();
        let log = PresenceLog::open(&path, Rotation::default(), &tracker)
            .await
            .unwrap();
        let udp = Some("127.0.0.1:9".parse().unwrap());
        log.left("a", "ghost", "left"); // never joined: nothing
        log.joined("a", "alice", udp);
        log.joined("a", "bob", udp);
        log.joined("b", "carol", udp);
        log.left("a", "alice", "left");
        log.left("a", "alice", "disconnected"); // already gone: nothing
        log.session_ended("a", "crashed");
        log.session_ended("a", "crashed");
        drop(log);
        tracker.close();
        tracker.wait().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lefts: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(" left ").map(|(_, rest)| rest))
            .collect();
        assert_eq!(
            lefts,
            vec![
                "user=alice udp=127.0.0.1:9 reason=left",
                "user=bob udp=127.0.0.1:9 reason=crashed"
            ],
            "{text}"
        );
    }
}
