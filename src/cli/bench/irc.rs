//! `confab bench irc`: the fan-out scenario against an IRC server (ngIRCd, InspIRCd), with the
//! same load shape and the same bookkeeping as `fanout --open-loop`, so that confab can be
//! compared with the servers people already run, side by side on one machine.
//!
//! Every member registers (`NICK`, `USER`), joins one channel and waits until all have joined;
//! then every sender writes all its `PRIVMSG` lines at once (open loop), each carrying
//! `"<sender> <index> <send-nanos>"`, and every member counts what it receives. IRC servers do
//! not echo a line to its sender, so a delivery is one line to one *other* member.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use super::stats::LatencySummary;
use super::tally::{Tally, parse};
use super::{BenchError, ProcUsage, Result};

const CHANNEL: &str = "#bench";

/// What an IRC run does. These are also `confab bench irc`'s flags.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
pub struct IrcOpts {
    /// The IRC server to measure (`host:port`).
    #[arg(long)]
    pub server: SocketAddr,
    /// Members in the channel.
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Members that send (the first ones); every member receives.
    #[arg(long, default_value_t = 50)]
    pub senders: usize,
    /// Lines each sender sends, all at once.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// The server's process id, for its CPU time and peak memory (from /proc).
    #[arg(long)]
    pub pid: Option<u32>,
}

/// The figures of one IRC run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IrcReport {
    /// What was asked.
    pub opts: IrcOpts,
    /// Deliveries that should happen: senders × messages × (members − 1).
    pub expected: u64,
    /// Distinct deliveries that happened.
    pub delivered: u64,
    /// Deliveries that never came.
    pub lost: u64,
    /// Extra copies.
    pub duplicated: u64,
    /// Lines that came after a later line of the same sender.
    pub out_of_order: u64,
    /// Members whose connection the server closed.
    pub disconnected: u64,
    /// Seconds to register and join every member.
    pub setup_secs: f64,
    /// Seconds from the first send to the last delivery.
    pub secs: f64,
    /// Deliveries per second over `secs`.
    pub deliveries_per_sec: f64,
    /// Send to receive, over every delivery.
    pub latency: LatencySummary,
    /// The server process's CPU seconds during the sending phase and its memory after the run
    /// (as `bench fanout` reports its own server's), when `--pid` was given.
    pub server_usage: Option<ProcUsage>,
}

/// Runs the scenario against `opts.server`; `timeout` bounds each phase.
pub async fn irc(opts: &IrcOpts, timeout: Duration) -> Result<IrcReport> {
    let senders = opts.senders.min(opts.members);
    let setup_start = Instant::now();
    // Every member, and this task, meet here twice: all joined, then all done.
    let joined = Arc::new(Barrier::new(opts.members + 1));
    let epoch = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.members {
        let joined = joined.clone();
        let opts = opts.clone();
        tasks.spawn(async move { member(i, senders, &opts, joined, epoch, timeout).await });
    }
    tokio::time::timeout(timeout, joined.wait())
        .await
        .map_err(|_| BenchError::Timeout(format!("not every member joined {CHANNEL}")))?;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let server_before = opts.pid.and_then(ProcUsage::of);
    let start = Instant::now();
    let mut total = Tally::new(senders, opts.messages);
    while let Some(done) = tasks.join_next().await {
        let tally = done.map_err(|e| BenchError::Setup(format!("a member failed: {e}")))??;
        total.merge_counts(&tally);
        total.merge(tally);
    }
    let expected = (senders * opts.messages * (opts.members.saturating_sub(1))) as u64;
    let delivered: u64 = total.senders.iter().map(|s| s.distinct).sum();
    let secs = total
        .last
        .map_or(0.0, |l| l.saturating_duration_since(start).as_secs_f64());
    Ok(IrcReport {
        opts: opts.clone(),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicated: total.senders.iter().map(|s| s.duplicated).sum(),
        out_of_order: total.senders.iter().map(|s| s.out_of_order).sum(),
        disconnected: total.disconnected,
        setup_secs,
        secs,
        deliveries_per_sec: if secs > 0.0 {
            delivered as f64 / secs
        } else {
            0.0
        },
        latency: total.latency.summary(),
        server_usage: match (server_before, opts.pid.and_then(ProcUsage::of)) {
            (Some(before), Some(after)) => Some(ProcUsage {
                cpu_seconds: after.cpu_seconds - before.cpu_seconds,
                ..after
            }),
            _ => None,
        },
    })
}

/// One member: registers, joins, waits for everyone, sends (if a sender) and counts.
async fn member(
    i: usize,
    senders: usize,
    opts: &IrcOpts,
    joined: Arc<Barrier>,
    epoch: Instant,
    timeout: Duration,
) -> Result<Tally> {
    let nick = format!("b{i}");
    let stream = TcpStream::connect(opts.server)
        .await
        .map_err(|e| BenchError::Setup(format!("{nick} cannot connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let io = |e: std::io::Error| BenchError::Setup(format!("{nick}: {e}"));
    write
        .write_all(
            format!("NICK {nick}\r\nUSER {nick} 0 * :bench\r\nJOIN {CHANNEL}\r\n").as_bytes(),
        )
        .await
        .map_err(io)?;
    // Registered and in the channel once the end of its name list (366) arrives.
    let mut line = Vec::with_capacity(256);
    let phase = Instant::now() + timeout;
    loop {
        line.clear();
        let n = tokio::time::timeout_at(phase.into(), read.read_until(b'\n', &mut line))
            .await
            .map_err(|_| BenchError::Setup(format!("{nick} was not seated in time")))?
            .map_err(io)?;
        if n == 0 {
            return Err(BenchError::Setup(format!(
                "{nick}: the server closed the connection"
            )));
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(rest) = text.strip_prefix("PING ") {
            write
                .write_all(format!("PONG {}\r\n", rest.trim_end()).as_bytes())
                .await
                .map_err(io)?;
        } else if text.split(' ').nth(1) == Some("366") {
            break;
        } else if text.starts_with("ERROR")
            || matches!(
                text.split(' ').nth(1),
                Some("433" | "465" | "471" | "473" | "474")
            )
        {
            return Err(BenchError::Setup(format!(
                "{nick} refused: {}",
                text.trim_end()
            )));
        }
    }
    joined.wait().await;
    let opts_messages = opts.messages;
    let mut tally = Tally::new(senders, opts.messages);
    let expect = if i < senders {
        (senders - 1) * opts.messages
    } else {
        senders * opts.messages
    };
    // Sent by a task of its own, so that this member reads while its lines go out; the write
    // half comes back at the end, so the connection stays open until the member has counted.
    let sending = tokio::spawn(async move {
        if i < senders {
            // Open loop: every line in one write, however slow the readers.
            let mut burst = String::with_capacity(opts_messages * 48);
            for index in 0..opts_messages {
                let nanos = epoch.elapsed().as_nanos();
                burst.push_str(&format!("PRIVMSG {CHANNEL} :{i} {index} {nanos}\r\n"));
            }
            let _ = write.write_all(burst.as_bytes()).await;
        }
        write
    });
    let mut counted = 0;
    while counted < expect {
        line.clear();
        // Quiet for a while after the burst: whatever has not come is lost.
        match tokio::time::timeout(Duration::from_secs(5), read.read_until(b'\n', &mut line)).await
        {
            Err(_) => {
                tally.timed_out += 1;
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                tally.disconnected += 1;
                break;
            }
            Ok(Ok(_)) => {}
        }
        let Some(text) = privmsg_text(&line) else {
            continue;
        };
        match parse(text) {
            Some((sender, index, sent)) => {
                tally.note(sender, index, sent, epoch);
                counted += 1;
            }
            None => tally.note_other(Instant::now()),
        }
    }
    sending.abort();
    let _ = sending.await;
    Ok(tally)
}

/// The text of a channel `PRIVMSG` line (`:nick!user@host PRIVMSG #chan :text\r\n`).
fn privmsg_text(line: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches(['\r', '\n']);
    let rest = line.strip_prefix(':')?;
    let (_, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("PRIVMSG ")?;
    let (_, text) = rest.split_once(" :")?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_line_gives_its_text_and_nothing_else_does() {
        assert_eq!(
            privmsg_text(b":b1!~b1@localhost PRIVMSG #bench :1 7 123\r\n"),
            Some("1 7 123")
        );
        assert_eq!(privmsg_text(b":irc.example 366 b1 #bench :End\r\n"), None);
        assert_eq!(privmsg_text(b"PING :irc.example\r\n"), None);
    }
}
