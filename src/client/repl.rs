//! The terminal program: slash commands over the client API.
//!
//! Three parts run side by side: the screen ([`super::screen`]), which owns the terminal, reads
//! every key and draws every line; a printer task that shows events as they come; and the command
//! loop that runs what the person typed, one command at a time and in order. Everything printed
//! goes through [`Output`], so the screen is the only writer while it runs. When stdin or stdout
//! is not a terminal (a script, a pipe, a test), lines are read plainly and output goes straight
//! to stdout.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::screen::Screen;
use super::show::{
    Output, Shown, print_events, session_label, show_joined, show_roster_upto, show_sessions,
};
use super::text::{clean, stamp};
use super::{Client, ClientConfig, ClientError};

const HELP: &str = "\
commands:
  /start [name]     create a session (optionally named) and join it
  /join <id|name>   join a session by id, id prefix or name
  /leave            leave the current session
  /sessions         list all sessions: id, name, server, members
  /who              show who is in this session, with their UDP endpoints
  /history [n]      show n more earlier group messages (default 50)
  /close [id|name]  remove a session you created, with its history (default: this one)
  /help             this text
  /quit             leave and exit (also Ctrl-D)
  text              say text to everyone in the session
  @name text        say text to name only, peer to peer (private)";

/// How the terminal client proves who it is.
pub struct Credentials {
    /// The password (from `CONFAB_PASSWORD` or asked for without echo).
    pub password: String,
    /// Create the account before logging in.
    pub register: bool,
}

/// Runs the terminal client until `/quit`, Ctrl-D or the end of input.
pub async fn run(config: ClientConfig, credentials: Credentials) -> Result<(), ClientError> {
    let (client, events) = Client::start(config).await?;
    if credentials.register {
        let user = client.register(&credentials.password).await?;
        println!("* registered {user}");
    }
    let user = client.login(&credentials.password).await?;
    drop(credentials);
    println!("* logged in as {user}; type /help for commands");
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let out = if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        Output::screen(Screen::start(lines_tx, "> ")?)
    } else {
        start_plain_reader(lines_tx);
        Output::plain()
    };
    let pending = TaskTracker::new();
    let shown = Arc::new(Shown::default());
    let (joining, joining_rx) = watch::channel(false);
    let finish = CancellationToken::new();
    let printer = tokio::spawn(print_events(
        client.clone(),
        events,
        out.clone(),
        shown.clone(),
        joining_rx,
        finish.clone(),
    ));
    let ctx = Ctx {
        client: &client,
        out: &out,
        pending: &pending,
        shown: &shown,
        joining: &joining,
    };

    while let Some(line) = lines.recv().await {
        let line = line.trim().to_string();
        if line.starts_with('/') {
            out.command(&line);
        }
        if line == "/quit" || line == "/exit" {
            break;
        }
        if line.is_empty() {
            continue;
        }
        command(&ctx, &line).await;
    }

    pending.close();
    if !pending.is_empty() {
        out.line("* waiting for private messages to be acknowledged…");
        let _ = tokio::time::timeout(client.inner.config.dm_retry.total(), pending.wait()).await;
    }
    let left = client.leave().await;
    // What arrived before we left (our own echoes among it) is shown before the goodbye.
    finish.cancel();
    let _ = printer.await;
    out.close();
    if let Some(info) = left {
        out.line(format!(
            "* left {}",
            session_label(&info.id.to_string(), info.name.as_deref())
        ));
    }
    out.line("* bye");
    Ok(())
}

fn start_plain_reader(lines: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = match input.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => "/quit".to_string(),
            };
            let quit = line.trim() == "/quit";
            if lines.send(line).is_err() || quit {
                break;
            }
        }
    });
}

/// What a command can reach.
struct Ctx<'a> {
    client: &'a Client,
    out: &'a Output,
    /// Private messages still being sent.
    pending: &'a TaskTracker,
    shown: &'a Shown,
    /// True while a join runs: the printer holds the new session's events until its answer is
    /// shown.
    joining: &'a watch::Sender<bool>,
}

impl Ctx<'_> {
    /// Joins (through `join`) and shows the answer before any event of the new session.
    async fn join(
        &self,
        join: impl std::future::Future<Output = Result<super::Joined, ClientError>>,
    ) -> Result<(), ClientError> {
        self.shown.earliest.store(0, Ordering::Relaxed);
        self.joining.send_replace(true);
        let result = join.await.map(|j| show_joined(self.client, &j, self.out));
        self.joining.send_replace(false);
        result
    }
}

async fn command(ctx: &Ctx<'_>, line: &str) {
    let Ctx {
        client,
        out,
        pending,
        shown,
        ..
    } = *ctx;
    let (earliest, asked) = (&shown.earliest, &shown.asked);
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    let result = match word {
        "/help" => {
            out.line(HELP);
            Ok(())
        }
        "/start" => {
            let name = (!rest.is_empty()).then_some(rest);
            ctx.join(client.start_session(name)).await
        }
        "/join" if rest.is_empty() => Err(ClientError::Invalid("usage: /join <id or name>".into())),
        "/join" => ctx.join(client.join(rest)).await,
        "/leave" => {
            earliest.store(0, Ordering::Relaxed);
            match client.leave().await {
                Some(info) => out.line(format!(
                    "* left {}",
                    session_label(&info.id.to_string(), info.name.as_deref())
                )),
                None => out.line("* you are not in a session"),
            }
            Ok(())
        }
        "/sessions" => client.list().await.map(|list| show_sessions(&list, out)),
        "/close" => {
            let target = match (rest, client.session()) {
                ("", Some(s)) => Ok(s.id.to_string()),
                ("", None) => Err(ClientError::Invalid("usage: /close <id or name>".into())),
                (r, _) => Ok(r.to_string()),
            };
            match target {
                Ok(t) => client
                    .close_session(&t)
                    .await
                    .map(|id| out.line(format!("* closed session {id} for good"))),
                Err(e) => Err(e),
            }
        }
        "/who" => match client.session() {
            Some(_) => {
                show_roster_upto(client, out, usize::MAX);
                Ok(())
            }
            None => Err(ClientError::NotInSession),
        },
        "/history" => {
            // Page backwards from the earliest line on screen.
            let before = match earliest.load(Ordering::Relaxed) {
                0 => None,
                seq => Some(seq),
            };
            asked.store(true, Ordering::Relaxed);
            match rest.parse::<usize>() {
                Ok(n) if n > 0 => client.history(before, n).await,
                _ if rest.is_empty() => client.history(before, 50).await,
                _ => Err(ClientError::Invalid("usage: /history [n]".into())),
            }
        }
        w if w.starts_with('/') => Err(ClientError::Invalid(format!(
            "unknown command {w}; /help lists them"
        ))),
        w if w.starts_with('@') && w.len() > 1 => {
            private(client, &w[1..], rest, out, pending);
            Ok(())
        }
        _ => client.say(line).await,
    };
    if let Err(e) = result {
        out.line(format!("! {e}"));
    }
}

/// Sends a private message in the background: the prompt stays free while it is retried.
fn private(client: &Client, to: &str, text: &str, out: &Output, pending: &TaskTracker) {
    if text.is_empty() {
        out.line("! usage: @name text");
        return;
    }
    let (client, to, text, out) = (
        client.clone(),
        to.to_string(),
        text.to_string(),
        out.clone(),
    );
    pending.spawn(async move {
        match client.dm(&to, &text).await {
            Ok(receipt) => out.line(format!(
                "{} [private] you → {}: {}",
                stamp(receipt.time),
                clean(&receipt.to),
                clean(&text)
            )),
            Err(e) => out.line(format!("! {e}")),
        }
    });
}
