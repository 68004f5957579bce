//! What every run of the `confab` program sets up before it calls into the library: log output
//! and the signals that stop a server.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Ctrl-C or SIGTERM (how systemd and container runtimes stop a service) starts a clean
/// shutdown: members are told, history is written. A second one exits at once, for a shutdown
/// stuck on something (a member whose socket does not drain holds it for up to 10 s).
pub fn stop_on_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        // Shutdown first: logging may fail or block (a closed pipe), and must not hold it up.
        shutdown.cancel();
        tracing::info!(
            signal = name,
            "shutting down; send it again to exit at once"
        );
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::warn!(
            signal = name,
            "second signal: exiting without finishing the shutdown"
        );
        std::process::exit(130);
    });
    Ok(())
}

pub fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, not in files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| Stderr)
        .log_internal_errors(false)
        .init();
}

/// Standard error for logs, where a failed write is dropped: when the reader of a pipe (`| tee
/// log`) goes away, the server must keep serving, not stop at its next log line.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
