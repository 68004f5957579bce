//! The group scenarios' members on the bare wire protocol.
//!
//! A receiver in `fanout` handles every line of the run: 500,000 of them in the default case.
//! Through the full [`confab::client::Client`] each line is parsed into an owned
//! [`confab::protocol::ServerMsg`] (timestamps, strings) and forwarded over a channel, which cost
//! the load generator five times the server's CPU. A lean member reads its socket into one
//! buffer, parses each line in place into a [`ServerLine`] that borrows its strings and skips
//! what the bench does not read, and writes pre-formatted `say` lines: no allocation per line.
//!
//! Accounts and tokens still come from the real client API; only the session connection is
//! spoken here, with the same `hello` a real client sends.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use confab::client::Client;
use confab::codec::encode_line;
use confab::protocol::{ClientMsg, SessionInfo, limits};
use confab::transport::{self, StaticKey, WireRead, WireWrite};

/// How often a lean member pings: the server drops a member it has not heard from for 6 s.
pub(super) const PING_EVERY: Duration = Duration::from_secs(2);

/// The `ping` line.
pub(super) const PING: &[u8] = b"{\"type\":\"ping\"}\n";

/// One server line, parsed in place: just the fields the bench reads, strings borrowed from the
/// read buffer. A borrowed `&str` cannot hold a JSON escape, so a line whose type or text has one
/// does not parse; the bench's own texts (digits and spaces) never do. Explanations, which may,
/// are [`Cow`]s (owned, but they come once per run at most).
#[derive(Debug, Deserialize)]
pub(super) struct ServerLine<'a> {
    /// `msg`, `welcome`, `presence`, `pong`, `error`, `bye`, …
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    /// A `msg`'s text.
    #[serde(default)]
    pub(super) text: Option<&'a str>,
    /// A `welcome`'s roster (only counted).
    #[serde(default)]
    pub(super) members: Vec<IgnoredAny>,
    /// A `presence` notice's arrivals (only counted).
    #[serde(default)]
    pub(super) joined: Vec<IgnoredAny>,
    /// A `presence` notice's departures (only counted).
    #[serde(default)]
    pub(super) left: Vec<IgnoredAny>,
    /// An `error`'s or `bye`'s explanation.
    #[serde(default, borrow)]
    pub(super) message: Option<Cow<'a, str>>,
}

impl<'a> ServerLine<'a> {
    /// Parses one line (without its newline); `None` if it is not JSON the bench understands.
    pub(super) fn parse(line: &'a [u8]) -> Option<ServerLine<'a>> {
        serde_json::from_slice(line).ok()
    }
}

/// Appends `{"type":"say","text":"<sender> <index> <nanos>"}` and a newline (no `id`: the
/// server accepts lines without one, and the bench never resends).
pub(super) fn push_say(out: &mut Vec<u8>, sender: usize, index: usize, nanos: u64) {
    // Writing into a Vec cannot fail.
    let _ = writeln!(
        out,
        "{{\"type\":\"say\",\"text\":\"{sender} {index} {nanos}\"}}"
    );
}

/// What a lean member says hello with: a logged-in client's token, and the key pair the token
/// is bound to, which the encrypted handshake proves.
#[derive(Clone)]
pub(super) struct Credentials {
    token: String,
    key: Option<StaticKey>,
}

impl Credentials {
    /// Those of a logged-in client.
    pub(super) fn of(client: &Client) -> Self {
        Self {
            token: client.session_token().unwrap_or_default(),
            key: client.static_key(),
        }
    }
}

/// Opens a member's connection to its session server and says hello with its token.
pub(super) async fn connect(
    session: &SessionInfo,
    user: &str,
    credentials: Credentials,
) -> std::io::Result<(Lines, WireWrite)> {
    let (read, write) = open(session, user, credentials).await?;
    Ok((Lines::new(read), write))
}

/// Connects to a session server as a real client does (encrypted when the coordinator named
/// the server's key) and says hello; the caller reads as it likes.
pub(super) async fn open(
    session: &SessionInfo,
    user: &str,
    credentials: Credentials,
) -> std::io::Result<(WireRead, WireWrite)> {
    let stream = TcpStream::connect(session.server).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = match (&session.server_key, &credentials.key) {
        (Some(server), Some(mine)) => {
            let server = confab::identity::parse_fingerprint(server)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            transport::connect(stream, mine, &server)
                .await
                .map_err(std::io::Error::other)?
        }
        _ => transport::plain(stream),
    };
    let token = credentials.token;
    let hello = ClientMsg::Hello {
        user: user.to_string(),
        token,
        // Nobody sends these members private messages; any endpoint will do.
        udp: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
        key: None,
        local: Vec::new(),
        since: None,
        history: None,
    };
    write.write_all(&encode_line(&hello)).await?;
    Ok((read, write))
}

/// The read half of a connection and one growable buffer of what has arrived.
pub(super) struct Lines {
    read: WireRead,
    buf: Vec<u8>,
    /// Start of the first line not handed out yet.
    start: usize,
    /// End of the bytes read.
    end: usize,
    /// Bytes after `start` already known to hold no newline.
    scanned: usize,
}

/// Enough for a few hundred `msg` lines per read.
const INITIAL_BUF: usize = 64 * 1024;

impl Lines {
    fn new(read: WireRead) -> Self {
        Self {
            read,
            buf: vec![0; INITIAL_BUF],
            start: 0,
            end: 0,
            scanned: 0,
        }
    }

    /// Reads what the socket has (at least one byte, or end of stream: `Ok(false)`).
    ///
    /// Cancel-safe: the only await is one `read`, so in a `select!` nothing is lost.
    pub(super) async fn fill(&mut self) -> std::io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // One line fills the buffer: a large roster. Grow up to the protocol's line limit.
            if self.buf.len() > limits::MAX_SERVER_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "server line over the protocol limit",
                ));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.read.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next complete line in the buffer, without its newline (or `\r\n`).
    pub(super) fn next_line(&mut self) -> Option<&[u8]> {
        let from = self.start + self.scanned;
        let Some(i) = self.buf[from..self.end].iter().position(|&b| b == b'\n') else {
            self.scanned = self.end - self.start;
            return None;
        };
        let line_end = from + i;
        let line = &self.buf[self.start..line_end];
        self.start = line_end + 1;
        self.scanned = 0;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_msg_line_parses_in_place() {
        let line = br#"{"type":"msg","seq":7,"time":"2024-01-01T00:00:00.123456Z","from":"s0m3","text":"3 17 123456789"}"#;
        let l = ServerLine::parse(line).unwrap();
        assert_eq!(l.kind, "msg");
        assert_eq!(l.text, Some("3 17 123456789"));
        assert!(l.members.is_empty());
    }

    #[test]
    fn rosters_and_presence_are_counted() {
        let welcome =
            br#"{"type":"welcome","session":"x","members":[{"user":"a"},{"user":"b"}],"seq":0}"#;
        assert_eq!(ServerLine::parse(welcome).unwrap().members.len(), 2);
        let presence = br#"{"type":"presence","joined":[{"user":"c"}],"left":[]}"#;
        let p = ServerLine::parse(presence).unwrap();
        assert_eq!((p.joined.len(), p.left.len()), (1, 0));
    }

    #[test]
    fn a_say_line_is_what_the_server_reads() {
        let mut out = Vec::new();
        push_say(&mut out, 4, 12, 99);
        assert_eq!(out.last(), Some(&b'\n'));
        let msg: ClientMsg = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
        assert_eq!(
            msg,
            ClientMsg::Say {
                text: "4 12 99".into(),
                id: None
            }
        );
        let ping: ClientMsg = serde_json::from_slice(&PING[..PING.len() - 1]).unwrap();
        assert_eq!(ping, ClientMsg::Ping);
    }
}
