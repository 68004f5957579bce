//! The presence log: one plain-text line per join and leave, for people to read with `tail -f`.
//!
//! It is kept apart from `tracing` output on purpose: operators want a stable, greppable record of
//! who was where and when, without the noise of debug logs. Writes go through a bounded queue to one
//! writer task, so a slow disk never stalls a session; if the queue is full the line is dropped and
//! a warning is logged instead.

use std::path::Path;

use chrono::Local;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const QUEUE: usize = 4096;

/// Cheap to clone; every session server holds one.
#[derive(Debug, Clone)]
pub struct PresenceLog {
    tx: mpsc::Sender<String>,
}

impl PresenceLog {
    /// Opens (appending) or creates the file and starts its writer on `tracker`.
    pub async fn open(
        path: &Path,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        // Who was where, from which address: for the operator only.
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .await?;
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        tracker.spawn(async move {
            let mut out = tokio::io::BufWriter::new(file);
            loop {
                let line = tokio::select! {
                    line = rx.recv() => line,
                    // Drain what is queued, then stop.
                    _ = shutdown.cancelled() => { rx.close(); rx.recv().await }
                };
                let Some(line) = line else { break };
                let mut ok = out.write_all(line.as_bytes()).await.is_ok();
                while let Ok(line) = rx.try_recv() {
                    ok &= out.write_all(line.as_bytes()).await.is_ok();
                }
                if !ok || out.flush().await.is_err() {
                    tracing::warn!("presence log write failed");
                }
            }
            let _ = out.flush().await;
        });
        Ok(Self { tx })
    }

    /// Records one event: `2026-11-22 14:03:07 session=lobby(<id>) joined user=alice udp=127.0.0.1:5000`.
    pub fn record(&self, session: &str, event: &str, user: &str, udp: std::net::SocketAddr) {
        let line = format!(
            "{} session={session} {event} user={user} udp={udp}\n",
            Local::now().format("%Y-%m-%d %H:%M:%S")
        );
        if self.tx.try_send(line).is_err() {
            tracing::warn!(%session, %user, event, "presence log queue full; line dropped");
        }
    }
}
