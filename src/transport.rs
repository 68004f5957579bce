//! The session TCP connection, encrypted: Noise `IK` (`snow`), then the line protocol inside.
//!
//! The client learns the session server's static key from the coordinator's sealed join answer
//! (`server_key`), so it knows it reached the server the coordinator named; the server learns
//! the client's static key (the one the client seals coordinator requests with), and admits a
//! hello only when its token was issued to that key: a token copied off a disk or a log is of no
//! use without the private key it is bound to. `IK` costs one round trip before the hello.
//!
//! After the handshake the connection is a byte stream cut into Noise transport messages, each
//! with a two-byte big-endian length, as the Noise specification suggests; the JSON lines inside
//! are exactly those of the plaintext protocol, so the rest of the server and client do not know
//! the difference. A writer seals what it has in as few messages as fit (65,519 bytes of text
//! each), so a batch of lines costs one authentication tag, not one per line. protocol.md
//! ("Encrypted session connections") gives the bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The Noise protocol name: pattern IK, X25519, ChaCha20-Poly1305, BLAKE2s.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Mixed into the handshake, so a handshake made for anything else never completes here.
pub const PROLOGUE: &[u8] = b"confab session 1";
/// Longest Noise message (the specification's limit).
const MAX_MESSAGE: usize = 65535;
const TAG: usize = 16;
/// Most text in one transport message.
const MAX_TEXT: usize = MAX_MESSAGE - TAG;
/// The first handshake message with an empty payload is 96 bytes; nothing else is read before
/// the client has proved anything.
const MAX_FIRST: usize = 256;
/// A buffer larger than this is let go once used: a server holds thousands of idle members,
/// and each keeping the size of its largest message would double what an idle member costs.
const KEEP: usize = 2 * 1024;

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket failed or closed during the handshake.
    #[error("connection failed during the encrypted handshake: {0}")]
    Io(#[from] io::Error),
    /// The handshake did not complete: a wrong key, or not Noise at all.
    #[error(
        "encrypted handshake failed ({0}); the session server's key is not the one the coordinator named"
    )]
    Noise(#[from] snow::Error),
    /// The other side spoke something else.
    #[error("{0}")]
    Protocol(String),
    /// Too slow.
    #[error("the encrypted handshake took too long")]
    Timeout,
}

/// A static key pair for Noise (X25519).
#[derive(Clone)]
pub struct StaticKey {
    secret: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StaticKey({})",
            crate::identity::fingerprint(&self.public)
        )
    }
}

impl StaticKey {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Self {
        let secret: [u8; 32] = rand::random();
        Self::from_secret(secret)
    }

    /// The key pair of a private key.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret));
        Self {
            secret,
            public: *public.as_bytes(),
        }
    }

    /// The public half.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The public half as people and join answers show it (standard base64).
    pub fn fingerprint(&self) -> String {
        crate::identity::fingerprint(&self.public)
    }
}

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("a valid Noise protocol name")
}

/// The client's side: runs the handshake with the server whose static key is `server`.
pub async fn connect(
    stream: TcpStream,
    mine: &StaticKey,
    server: &[u8; 32],
) -> Result<(WireRead, WireWrite), TransportError> {
    let mut hs = snow::Builder::new(params())
        .prologue(PROLOGUE)?
        .local_private_key(&mine.secret)?
        .remote_public_key(server)?
        .build_initiator()?;
    let (mut read, mut write) = stream.into_split();
    let mut buf = [0u8; MAX_FIRST];
    let n = hs.write_message(&[], &mut buf)?;
    write_frame(&mut write, &buf[..n]).await?;
    let mut first = [0u8; 2];
    read.read_exact(&mut first).await?;
    if first[0] == b'{' {
        // The server speaks the plaintext protocol: show what it said.
        let mut line = first.to_vec();
        let mut rest = [0u8; 512];
        let n = read.read(&mut rest).await.unwrap_or(0);
        line.extend_from_slice(&rest[..n]);
        return Err(TransportError::Protocol(format!(
            "the session server does not speak the encrypted protocol; it said: {}",
            String::from_utf8_lossy(&line).trim()
        )));
    }
    let msg = read_handshake(&mut read, first, "the session server's handshake answer").await?;
    hs.read_message(&msg, &mut buf)?;
    let noise = Arc::new(hs.into_stateless_transport_mode()?);
    Ok(wrap(read, write, noise))
}

/// Whether a connection whose first byte is `first` starts a handshake: the first message's
/// length is below 256, so its first byte is zero, which a JSON line's never is. A server that
/// also takes plaintext tells the two apart by it.
pub fn starts_handshake(first: u8) -> bool {
    first == 0
}

/// The server's side: answers the client's first message within `timeout`, and returns the
/// connection and the client's static key (what its token must be bound to).
pub async fn accept(
    stream: TcpStream,
    key: &StaticKey,
    timeout: Duration,
) -> Result<(WireRead, WireWrite, [u8; 32]), TransportError> {
    tokio::time::timeout(timeout, accept_now(stream, key))
        .await
        .unwrap_or(Err(TransportError::Timeout))
}

async fn accept_now(
    stream: TcpStream,
    key: &StaticKey,
) -> Result<(WireRead, WireWrite, [u8; 32]), TransportError> {
    let mut hs = snow::Builder::new(params())
        .prologue(PROLOGUE)?
        .local_private_key(&key.secret)?
        .build_responder()?;
    let (mut read, mut write) = stream.into_split();
    let mut len = [0u8; 2];
    read.read_exact(&mut len).await?;
    let msg = read_handshake(&mut read, len, "the first handshake message").await?;
    let mut buf = [0u8; MAX_FIRST];
    hs.read_message(&msg, &mut buf)?;
    let n = hs.write_message(&[], &mut buf)?;
    write_frame(&mut write, &buf[..n]).await?;
    let noise = hs.into_stateless_transport_mode()?;
    let client: [u8; 32] = noise
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| TransportError::Protocol("no client key in the handshake".into()))?;
    let (read, write) = wrap(read, write, Arc::new(noise));
    Ok((read, write, client))
}

/// The handshake message whose two length bytes were `len`, at most `MAX_FIRST` long: nothing
/// larger is read before the handshake has proved anything.
async fn read_handshake(
    read: &mut OwnedReadHalf,
    len: [u8; 2],
    what: &str,
) -> Result<Vec<u8>, TransportError> {
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_FIRST {
        return Err(TransportError::Protocol(format!(
            "{what} is too long ({len} bytes, at most {MAX_FIRST})"
        )));
    }
    let mut msg = vec![0u8; len];
    read.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_frame(write: &mut OwnedWriteHalf, msg: &[u8]) -> io::Result<()> {
    let mut framed = Vec::with_capacity(2 + msg.len());
    framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    framed.extend_from_slice(msg);
    write.write_all(&framed).await
}

fn wrap(
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    noise: Arc<StatelessTransportState>,
) -> (WireRead, WireWrite) {
    (
        WireRead::Noise(NoiseRead {
            inner: read,
            noise: noise.clone(),
            nonce: 0,
            sealed: BytesMut::new(),
            text: BytesMut::new(),
        }),
        WireWrite::Noise(NoiseWrite {
            inner: write,
            noise,
            nonce: 0,
            buf: Vec::new(),
        }),
    )
}

/// The reading half of a session connection, in clear or encrypted; reads the line protocol's
/// bytes either way.
pub enum WireRead {
    /// In clear (`--insecure`, or a bare session server in tests).
    Plain(OwnedReadHalf),
    /// Noise transport messages.
    Noise(NoiseRead),
}

/// The writing half of a session connection.
pub enum WireWrite {
    /// In clear.
    Plain(OwnedWriteHalf),
    /// Noise transport messages.
    Noise(NoiseWrite),
}

/// Splits a plaintext connection.
pub fn plain(stream: TcpStream) -> (WireRead, WireWrite) {
    let (read, write) = stream.into_split();
    (WireRead::Plain(read), WireWrite::Plain(write))
}

/// Decrypts transport messages as they arrive.
pub struct NoiseRead {
    inner: OwnedReadHalf,
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    /// Received bytes not yet a whole message.
    sealed: BytesMut,
    /// Decrypted bytes not yet read.
    text: BytesMut,
}

/// Encrypts what is written into transport messages.
pub struct NoiseWrite {
    inner: OwnedWriteHalf,
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    buf: Vec<u8>,
}

impl AsyncRead for WireRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WireRead::Plain(read) => Pin::new(read).poll_read(cx, out),
            WireRead::Noise(noise) => noise.poll_read(cx, out),
        }
    }
}

impl NoiseRead {
    fn poll_read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.text.is_empty() {
                let n = self.text.len().min(out.remaining());
                out.put_slice(&self.text[..n]);
                self.text.advance(n);
                if self.text.is_empty() && self.text.capacity() > KEEP {
                    self.text = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if self.sealed.len() >= 2 {
                let len = u16::from_be_bytes([self.sealed[0], self.sealed[1]]) as usize;
                if self.sealed.len() >= 2 + len {
                    if len >= TAG && out.remaining() >= len - TAG {
                        // Room for the whole text: decrypt straight into the reader's buffer,
                        // one copy fewer for every message.
                        let n = self.open_into(len, out.initialize_unfilled_to(len - TAG))?;
                        out.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    self.open(len)?;
                    continue;
                }
                self.sealed.reserve(2 + len - self.sealed.len());
            } else {
                // Most messages from a member are a ping or a line: small.
                self.sealed.reserve(128);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.inner),
                cx,
                &mut self.sealed
            ))?;
            if n == 0 {
                if self.sealed.is_empty() {
                    return Poll::Ready(Ok(())); // closed between messages
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of an encrypted message",
                )));
            }
        }
    }

    /// Decrypts the whole message of `len` bytes at the front of `sealed` into `text`.
    fn open(&mut self, len: usize) -> io::Result<()> {
        if len < TAG {
            return Err(forged());
        }
        let mut text = std::mem::take(&mut self.text);
        text.resize(len - TAG, 0);
        let n = self.open_into(len, &mut text)?;
        text.truncate(n);
        self.text = text;
        Ok(())
    }

    /// Decrypts the whole message of `len` bytes at the front of `sealed` into `out` (at least
    /// `len - TAG` long), and returns the length of the text.
    fn open_into(&mut self, len: usize, out: &mut [u8]) -> io::Result<usize> {
        let n = self
            .noise
            .read_message(self.nonce, &self.sealed[2..2 + len], out)
            .map_err(|_| forged())?;
        // What nc can no longer show: `RUST_LOG=confab::transport=trace` prints it.
        tracing::trace!(nonce = self.nonce, text = %String::from_utf8_lossy(&out[..n]), "received");
        self.nonce += 1;
        self.sealed.advance(2 + len);
        if self.sealed.is_empty() && self.sealed.capacity() > KEEP {
            self.sealed = BytesMut::new();
        }
        Ok(n)
    }
}

fn forged() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "an encrypted message failed authentication (altered on the way, or not from the peer)",
    )
}

impl WireWrite {
    /// The socket and the bytes to put on it for `text`: the text itself in clear, or its
    /// transport messages (kept in a buffer of this writer until the next call).
    pub fn prepare<'a>(&'a mut self, text: &'a [u8]) -> (&'a mut OwnedWriteHalf, &'a [u8]) {
        match self {
            WireWrite::Plain(write) => (write, text),
            WireWrite::Noise(w) => {
                tracing::trace!(nonce = w.nonce, text = %String::from_utf8_lossy(text), "sending");
                w.buf.clear();
                for chunk in text.chunks(MAX_TEXT) {
                    let at = w.buf.len();
                    w.buf.resize(at + 2 + chunk.len() + TAG, 0);
                    let n = w
                        .noise
                        .write_message(w.nonce, chunk, &mut w.buf[at + 2..])
                        .expect("a chunk within the Noise limit seals");
                    w.buf[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
                    w.nonce += 1;
                }
                (&mut w.inner, &w.buf)
            }
        }
    }

    /// Writes all of `text`.
    pub async fn write_all(&mut self, text: &[u8]) -> io::Result<()> {
        let (socket, bytes) = self.prepare(text);
        let written = socket.write_all(bytes).await;
        self.release();
        written
    }

    /// Lets go of the buffer of sealed bytes once they are written, unless it is small: call it
    /// after writing what [`WireWrite::prepare`] gave.
    pub fn release(&mut self) {
        if let WireWrite::Noise(w) = self
            && w.buf.capacity() > KEEP
        {
            w.buf = Vec::new();
        }
    }

    /// Closes the writing side.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            WireWrite::Plain(w) => w.shutdown().await,
            WireWrite::Noise(w) => w.inner.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    type Accepted = (WireRead, WireWrite, [u8; 32]);

    async fn pair(
        server_key: &StaticKey,
        told: [u8; 32],
    ) -> (
        Result<(WireRead, WireWrite), TransportError>,
        Result<Accepted, TransportError>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = StaticKey::generate();
        let server_key = server_key.clone();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            accept(s, &server_key, Duration::from_secs(5)).await
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let c = connect(stream, &client, &told).await;
        (c, server.await.unwrap())
    }

    #[tokio::test]
    async fn lines_cross_both_ways_and_large_writes_are_cut_into_messages() {
        let key = StaticKey::generate();
        let (c, s) = pair(&key, key.public_key()).await;
        let (cr, mut cw) = c.unwrap();
        let (sr, mut sw, _client) = s.unwrap();
        let big = "x".repeat(200_000) + "\n";
        cw.write_all(b"hello\n").await.unwrap();
        cw.write_all(big.as_bytes()).await.unwrap();
        sw.write_all(b"welcome\n").await.unwrap();
        let mut sr = tokio::io::BufReader::new(sr);
        let mut line = String::new();
        sr.read_line(&mut line).await.unwrap();
        assert_eq!(line, "hello\n");
        line.clear();
        sr.read_line(&mut line).await.unwrap();
        assert_eq!(line, big);
        let mut cr = tokio::io::BufReader::new(cr);
        line.clear();
        cr.read_line(&mut line).await.unwrap();
        assert_eq!(line, "welcome\n");
    }

    #[tokio::test]
    async fn a_server_with_another_key_fails_the_handshake() {
        let key = StaticKey::generate();
        let other = StaticKey::generate();
        let (c, s) = pair(&key, other.public_key()).await;
        assert!(c.is_err() && s.is_err(), "{:?}", c.err());
    }

    #[tokio::test]
    async fn an_oversized_first_message_and_a_plaintext_server_are_refused_with_reasons() {
        // A "handshake" longer than any real first message: refused before it is read.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let key = StaticKey::generate();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            accept(s, &key, Duration::from_secs(5)).await
        });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&[0x01, 0x2c]).await.unwrap(); // 300 bytes announced
        let Err(TransportError::Protocol(why)) = server.await.unwrap() else {
            panic!("accepted an oversized handshake")
        };
        assert!(why.contains("too long"), "{why}");

        // A server that answers in JSON: the client says so, with what it said.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"type\":\"error\",\"code\":\"not_sealed\"}\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let server_key = StaticKey::generate().public_key();
        let Err(TransportError::Protocol(why)) =
            connect(stream, &StaticKey::generate(), &server_key).await
        else {
            panic!("a plaintext server passed for an encrypted one")
        };
        assert!(why.contains("not_sealed"), "{why}");
    }

    #[tokio::test]
    async fn an_altered_byte_is_an_error_not_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let key = StaticKey::generate();
        let k2 = key.clone();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (mut r, _w, _) = accept(s, &k2, Duration::from_secs(5)).await.unwrap();
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).await
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let (_r, mut w) = connect(stream, &StaticKey::generate(), &key.public_key())
            .await
            .unwrap();
        let (socket, bytes) = w.prepare(b"secret line\n");
        let mut bytes = bytes.to_vec();
        bytes[5] ^= 1;
        socket.write_all(&bytes).await.unwrap();
        socket.shutdown().await.unwrap();
        let e = server.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
