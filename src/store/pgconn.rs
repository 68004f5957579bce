//! Connecting to PostgreSQL: the URL as tokio-postgres reads it, and TLS when the URL asks.
//!
//! TLS is rustls, verifying the server's certificate (name or IP address included) against the
//! CA certificate the URL names (`sslrootcert=FILE`), as libpq's `sslmode=verify-full` does.
//! Asking for TLS without a CA to check against (`sslmode=require` alone) is refused rather than
//! quietly trusting any certificate: the database holds the group's identity key and token
//! secret, and an unchecked server is one a man in the middle can be.

use std::sync::Arc;
use std::time::Duration;

use futures::future::poll_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Notification, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Result, StoreError};

/// How long a connection may take to open before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Notifications a connection may hold for its reader before it waits for it.
const NOTES: usize = 1024;

/// Where the database is and how to talk to it.
#[derive(Clone)]
pub(super) struct Target {
    /// The URL for tokio-postgres: confab's own parameters taken out, `sslmode` as it reads it.
    url: String,
    /// For logs: the URL as given, without its password.
    shown: String,
    tls: Option<MakeRustlsConnect>,
}

impl Target {
    /// Reads a `postgres://` URL, loading the CA certificate if it names one.
    pub(super) fn parse(url: &str) -> Result<Target> {
        let shown = super::postgres::redact(url);
        let bad = |why: String| StoreError::Unreachable(format!("{shown}: {why}"));
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let (mut mode, mut root) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = Some(v.to_string()),
                Some(("sslrootcert", v)) => root = Some(v.to_string()),
                _ => kept.push(pair.to_string()),
            }
        }
        let tls = match (mode.as_deref(), root) {
            (Some("disable"), Some(_)) => {
                return Err(bad("sslmode=disable with sslrootcert: which is it?".into()));
            }
            (_, Some(file)) => Some(connector(&file).map_err(bad)?),
            (Some("require" | "verify-ca" | "verify-full"), None) => {
                return Err(bad(
                    "TLS needs sslrootcert=FILE, the CA certificate that signed the server's: confab does not talk to a server it cannot check"
                        .into(),
                ));
            }
            // Without a CA there is no TLS worth having (the URL below says so to tokio-postgres).
            (Some("disable" | "prefer" | "allow"), None) => None,
            (Some(other), None) => return Err(bad(format!("unknown sslmode {other:?}"))),
            (None, None) => None,
        };
        kept.push(
            if tls.is_some() {
                "sslmode=require"
            } else {
                "sslmode=disable"
            }
            .into(),
        );
        Ok(Target {
            url: format!("{base}?{}", kept.join("&")),
            shown,
            tls,
        })
    }

    /// Opens a connection; its notifications (for a connection that `LISTEN`s) come out of the
    /// receiver, which may be dropped by one that does not.
    pub(super) async fn connect(&self) -> Result<(Client, mpsc::Receiver<Notification>)> {
        match &self.tls {
            Some(tls) => self.connect_with(tls.clone()).await,
            None => self.connect_with(NoTls).await,
        }
    }

    async fn connect_with<T>(&self, tls: T) -> Result<(Client, mpsc::Receiver<Notification>)>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let connecting = tokio_postgres::connect(&self.url, tls);
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| StoreError::Unreachable(format!("{} did not answer", self.shown)))?
            .map_err(|e| StoreError::Unreachable(format!("{}: {}", self.shown, full(&e))))?;
        let (tx, rx) = mpsc::channel(NOTES);
        drive(connection, tx);
        Ok((client, rx))
    }
}

/// An error with its causes: a TLS failure says only "error performing TLS handshake" at the
/// top, and why (an unknown issuer, a name mismatch) below.
fn full(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Runs a connection until it ends, passing its notifications on (while anyone takes them).
fn drive<S, T>(mut connection: Connection<S, T>, notes: mpsc::Sender<Notification>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut notes = Some(notes);
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some(tx) = &notes
                        && tx.send(n).await.is_err()
                    {
                        notes = None;
                    }
                }
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::debug!(notice = %n, "PostgreSQL notice");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "PostgreSQL connection ended");
                    break;
                }
                None => break,
            }
        }
    });
}

/// A TLS connector trusting only the CA certificates in PEM file `file`.
fn connector(file: &str) -> std::result::Result<MakeRustlsConnect, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(file).map_err(|e| format!("sslrootcert {file}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {file}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {file}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {file}: no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_asked_for_with_a_ca_or_not_at_all() {
        let plain = Target::parse("postgres://u:pw@h/db").unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.url, "postgres://u:pw@h/db?sslmode=disable");
        let kept = Target::parse("postgres://u@h/db?application_name=x&sslmode=prefer").unwrap();
        assert_eq!(
            kept.url,
            "postgres://u@h/db?application_name=x&sslmode=disable"
        );
        for unchecked in [
            "sslmode=require",
            "sslmode=verify-full",
            "sslmode=verify-ca",
        ] {
            let refused = Target::parse(&format!("postgres://u:pw@h/db?{unchecked}"));
            let Err(e) = refused else {
                panic!("{unchecked} without a CA taken")
            };
            assert!(e.to_string().contains("sslrootcert"), "{e}");
            assert!(!e.to_string().contains("pw"), "password in {e}");
        }
        let missing = Target::parse("postgres://u@h/db?sslrootcert=/nonexistent/ca.pem");
        assert!(missing.is_err());
        assert!(Target::parse("postgres://u@h/db?sslmode=bogus").is_err());
    }
}
