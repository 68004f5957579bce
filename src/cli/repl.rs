//! The terminal program: login, then slash commands over the client API.
//!
//! Three parts run side by side: the screen ([`super::screen`]), which owns the terminal, reads
//! every key and draws every line; a printer task that shows events as they come
//! ([`super::show`]); and the command loop that runs what the person typed, one command at a
//! time and in order. Everything printed goes through one [`Output`], so the screen is the only
//! writer while it runs. When stdin or stdout is not a terminal (a script, a pipe, a test), lines
//! are read plainly and output goes straight to stdout, without colour.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::complete::{Completion, Names};
use super::history;
use super::known;
use super::output::{Output, Style};
use super::screen::{Interrupt, Options, Screen};
use super::show::{
    Shown, print_events, prompt_for, session_label, show_joined, show_roster_upto, show_sessions,
};
use super::text::clean;
use confab::client::{Client, ClientConfig, ClientError};
use confab::protocol::ErrorCode;

/// Most names `/online` shows.
const ONLINE_SHOWN: usize = 500;

/// Password prompts before giving up.
const LOGIN_TRIES: usize = 3;

const HELP: &str = "\
commands:
  /start [name]      create a session (optionally named) and join it
  /join <id|name>    join a session by id, id prefix or name
  /leave             leave the current session
  /sessions          list all sessions: id, name, server, members
  /who               show who is in this session, with their UDP endpoints
  /online            show who is online: logged in, in any session or none
  /whois <name>      one user: endpoint, key fingerprint, when they came, how messages reach them
  /trust <name>      accept a member's new identity key, after comparing it by other means
  /history [n]       show n more earlier group messages (default 50)
  /close [id|name]   remove a session you created, with its history (default: this one)
  /me <action>       say an action: /me waves shows as * you waves
  /clear             clear the screen
  /help [command]    this text, or more about one command
  /quit              leave and exit (also /exit, Ctrl-D, Ctrl-C on an empty line)
  text               say text to everyone in the session
  @name text         say text to name only (anyone online), peer to peer; also /msg name text
keys: Tab completes commands, @names and sessions; Up/Down browse what you typed;
  Ctrl-C clears the line, or cancels a command still waiting; Ctrl-A/E start/end, Ctrl-W/U/K delete word/to start/to end";

/// More about one command, for `/help <command>`.
fn help_for(command: &str) -> Option<&'static str> {
    Some(match command.trim_start_matches('/') {
        "start" => {
            "/start [name]: create a session and join it. Without a name it is known by its id only."
        }
        "join" => {
            "/join <id|name>: join a session by name, id, or an id prefix of 4 characters or more; you leave the current one first. Tab completes names and ids."
        }
        "leave" => "/leave: leave the current session; you stay logged in.",
        "sessions" => {
            "/sessions: list every session: id, name, server address (or (idle)), member count and names."
        }
        "who" => {
            "/who: everyone in this session with the UDP endpoint their private messages go to."
        }
        "whois" => {
            "/whois <name>: a member's (or anyone online's) UDP endpoint, identity key fingerprint (compare it with them by other means: it is what private messages are sealed for), whether it is the key pinned for them, when they came (as this client saw it), and how private messages reach them."
        }
        "online" => {
            "/online: who is online, by name: everyone logged in now (in any session, or none), whom @name reaches; at most 500 are shown, with the total."
        }
        "trust" => {
            "/trust <name>: pin the identity key the session now gives name, replacing the one pinned before. Only after comparing it with them by other means: a changed key may mean someone else, or a server lying about the roster."
        }
        "history" => {
            "/history [n]: show n (default 50, at most 500) group messages from before the earliest one on screen."
        }
        "close" => {
            "/close [id|name]: remove a session you created, with its history, for good (default: the current one)."
        }
        "me" => "/me <action>: say an action; everyone sees * yourname action.",
        "msg" => {
            "/msg <name> <text>: say text to name only (a member of your session or anyone online), straight to them over UDP, or relayed sealed when no direct path works; the same as @name text. Never written to the input history."
        }
        "clear" => "/clear: clear the screen; nothing is lost from the session.",
        "help" => "/help [command]: list the commands, or tell more about one.",
        "quit" | "exit" => {
            "/quit: leave the session and exit, after private messages still being sent are acknowledged (also /exit, Ctrl-D, or Ctrl-C on an empty line)."
        }
        _ => return None,
    })
}

/// How the terminal client proves who it is.
pub struct Credentials {
    /// The password, if given (from `CONFAB_PASSWORD`); otherwise it is asked for at the
    /// terminal, again after a wrong one.
    pub password: Option<String>,
    /// Create the account before logging in (an asked-for password is asked twice).
    pub register: bool,
}

/// What to do once logged in.
#[derive(Default)]
pub struct Start {
    /// Join this session (id, id prefix or name) before reading commands.
    pub join: Option<String>,
    /// Trust only this coordinator key (`--coordinator-key`), not the one met first.
    pub coordinator_key: Option<[u8; 32]>,
}

/// Runs the terminal client until `/quit`, Ctrl-D or the end of input.
pub async fn run(
    config: ClientConfig,
    credentials: Credentials,
    start: Start,
) -> Result<(), ClientError> {
    let (client, events) = Client::start(config).await?;
    // Before any password goes out: is this the coordinator we met before?
    trust_coordinator(&client, start.coordinator_key.as_ref()).await?;
    let user = log_in(&client, credentials).await?;
    println!("* logged in as {user}; type /help for commands");
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let names = Names::default();
    let interrupt = Arc::new(Interrupt::default());
    let out = if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        let options = Options {
            prompt: prompt_for(&client),
            colour: Style::new(true).colour(),
            completion: Completion {
                names: names.clone(),
            },
            history: history::path(&user),
            interrupt: interrupt.clone(),
        };
        Output::screen(Screen::start(lines_tx, options)?)
    } else {
        start_plain_reader(lines_tx);
        Output::plain()
    };
    out.prompt(prompt_for(&client));
    let pending = TaskTracker::new();
    let shown = Arc::new(Shown::default());
    let (joining, joining_rx) = watch::channel(false);
    let finish = CancellationToken::new();
    let printer = tokio::spawn(print_events(
        client.clone(),
        events,
        out.clone(),
        (shown.clone(), names.clone()),
        joining_rx,
        finish.clone(),
    ));
    let ctx = Ctx {
        client: &client,
        out: &out,
        pending: &pending,
        shown: &shown,
        joining: &joining,
        names: &names,
    };
    // Names for Tab after /join, without waiting for them.
    tokio::spawn({
        let (client, names) = (client.clone(), names.clone());
        async move {
            if let Ok(list) = client.list().await {
                names.sessions(&list);
            }
        }
    });
    if let Some(session) = start.join {
        command(&ctx, &format!("/join {session}")).await;
    }

    // Killed politely (SIGTERM) or the terminal went away (SIGHUP): leave as /quit would, so
    // the terminal is restored and the session told.
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = term.recv() => None,
            _ = hangup.recv() => None,
        };
        let Some(line) = line else { break };
        let line = line.trim().to_string();
        // A command is shown above its answer; /me and /msg are shown as what they say.
        if line.starts_with('/') && !line.starts_with("/me ") && !line.starts_with("/msg ") {
            out.command(&line);
        }
        if line == "/quit" || line == "/exit" {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if interrupt.run(command(&ctx, &line)).await.is_none() {
            out.notice(&format!("cancelled: {line}"));
        }
        out.prompt(prompt_for(&client));
    }

    pending.close();
    if !pending.is_empty() {
        out.notice("waiting for private messages to be acknowledged…");
        let _ = tokio::time::timeout(client.config().dm_retry.total(), pending.wait()).await;
    }
    let left = client.leave().await;
    // What arrived before we left (our own echoes among it) is shown before the goodbye.
    finish.cancel();
    let _ = printer.await;
    out.close();
    if let Some(info) = left {
        out.notice(&format!(
            "left {}",
            session_label(&info.id.to_string(), info.name.as_deref())
        ));
    }
    out.notice("bye");
    Ok(())
}

/// Registers if asked, then logs in. A password typed at the terminal is asked for again after
/// a wrong one (three tries), and twice when registering, so a typo cannot lock you out.
async fn log_in(client: &Client, credentials: Credentials) -> Result<String, ClientError> {
    let user = client.user().to_string();
    let interactive = credentials.password.is_none();
    let mut password = match credentials.password {
        Some(p) => Some(p),
        None if credentials.register => Some(ask_new_password(&user).await?),
        None => None,
    };
    if credentials.register {
        let pw = password.as_deref().unwrap_or_default();
        let name = patiently(client, client.register(pw)).await?;
        println!("* registered {name}");
    }
    for attempt in 1..=LOGIN_TRIES {
        let pw = match password.take() {
            Some(p) => p,
            None => ask_password(&format!("password for {user}: ")).await?,
        };
        match patiently(client, client.login(&pw)).await {
            Err(ClientError::Refused(e))
                if e.code == ErrorCode::InvalidCredentials
                    && interactive
                    && attempt < LOGIN_TRIES =>
            {
                eprintln!("! {}; try again", clean(&e.message));
            }
            result => return result,
        }
    }
    unreachable!("the last try returns")
}

/// Checks the coordinator's key against the one pinned or on file (see `known.rs`), and says
/// so when it is met for the first time.
async fn trust_coordinator(client: &Client, pinned: Option<&[u8; 32]>) -> Result<(), ClientError> {
    let key = patiently(client, client.coordinator_key()).await?;
    // A group's coordinators share one key: it is remembered under the whole list.
    let addr = coordinators(client);
    let Some(file) = known::path() else {
        // Nowhere to remember it: only a pin can be checked.
        return match pinned {
            Some(pin) if pin != &key => Err(ClientError::Invalid(format!(
                "the coordinator at {addr} has key {}, not the one given with --coordinator-key",
                confab::identity::fingerprint(&key)
            ))),
            _ => Ok(()),
        };
    };
    match known::check(&file, &addr, &key, pinned) {
        Ok(known::Trust::Known) => Ok(()),
        Ok(known::Trust::New) => {
            println!(
                "* first contact with the coordinator{} {addr}: its key {} is now remembered in {}",
                if client.config().more_coordinators.is_empty() {
                    " at"
                } else {
                    " group"
                },
                confab::identity::fingerprint(&key),
                file.display()
            );
            Ok(())
        }
        Ok(known::Trust::Pinned) => Ok(()),
        Err(e) => Err(ClientError::Invalid(e.to_string())),
    }
}

/// Awaits a request to the coordinator, saying so when it takes more than a second: before the
/// prompt exists, a person staring at nothing through 13 s of retries cannot tell a coordinator
/// that does not answer from a program that hangs.
async fn patiently<T>(client: &Client, request: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(request);
    tokio::select! {
        out = &mut request => return out,
        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
    }
    eprintln!("* contacting the coordinator at {}…", coordinators(client));
    request.await
}

/// The coordinator, or the coordinators of its group, as `--coordinator` names them.
fn coordinators(client: &Client) -> String {
    let config = client.config();
    std::iter::once(&config.coordinator)
        .chain(&config.more_coordinators)
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

async fn ask_password(prompt: &str) -> Result<String, ClientError> {
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Invalid(
            "no password: set CONFAB_PASSWORD, or run in a terminal to be asked".into(),
        ));
    }
    let prompt = prompt.to_string();
    tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt))
        .await
        .map_err(|e| ClientError::Io(std::io::Error::other(e)))?
        .map_err(ClientError::Io)
}

/// A new account's password, typed twice until both agree (three tries).
async fn ask_new_password(user: &str) -> Result<String, ClientError> {
    for _ in 0..LOGIN_TRIES {
        let first = ask_password(&format!("new password for {user}: ")).await?;
        let again = ask_password("the same password again: ").await?;
        if first == again {
            return Ok(first);
        }
        eprintln!("! the two passwords differ; try again");
    }
    Err(ClientError::Invalid("the passwords did not match".into()))
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
    names: &'a Names,
}

impl Ctx<'_> {
    /// Joins (through `join`) and shows the answer before any event of the new session.
    async fn join(
        &self,
        join: impl std::future::Future<Output = Result<confab::client::Joined, ClientError>>,
    ) -> Result<(), ClientError> {
        self.shown.earliest.store(0, Ordering::Relaxed);
        self.joining.send_replace(true);
        let result = join.await.map(|j| {
            show_joined(self.client, &j, self.out, self.shown);
            self.names.members(self.client);
            self.out.prompt(prompt_for(self.client));
        });
        self.joining.send_replace(false);
        result
    }
}

async fn command(ctx: &Ctx<'_>, line: &str) {
    let Ctx {
        client, out, shown, ..
    } = *ctx;
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    fn usage<T>(text: &str) -> Result<T, ClientError> {
        Err(ClientError::Invalid(format!("usage: {text}")))
    }
    let result = match word {
        "/help" if rest.is_empty() => {
            out.line(HELP);
            Ok(())
        }
        "/help" => match help_for(rest) {
            Some(text) => {
                out.line(text);
                Ok(())
            }
            None => Err(ClientError::Invalid(format!(
                "no command {}; /help lists them",
                clean(rest)
            ))),
        },
        "/start" => {
            let name = (!rest.is_empty()).then_some(rest);
            ctx.join(client.start_session(name)).await
        }
        "/join" if rest.is_empty() => usage("/join <id or name>"),
        "/join" => ctx.join(client.join(rest)).await,
        "/leave" => {
            shown.earliest.store(0, Ordering::Relaxed);
            match client.leave().await {
                Some(info) => out.notice(&format!(
                    "left {}",
                    session_label(&info.id.to_string(), info.name.as_deref())
                )),
                None => out.notice("you are not in a session"),
            }
            Ok(())
        }
        "/sessions" => client.list().await.map(|list| {
            ctx.names.sessions(&list);
            show_sessions(&list, out);
        }),
        "/close" => {
            let target = match (rest, client.session()) {
                ("", Some(s)) => Ok(s.id.to_string()),
                ("", None) => usage("/close <id or name>"),
                (r, _) => Ok(r.to_string()),
            };
            match target {
                Ok(t) => client
                    .close_session(&t)
                    .await
                    .map(|id| out.notice(&format!("closed session {id} for good"))),
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
        "/online" => client.online(ONLINE_SHOWN).await.map(|(users, total)| {
            let names: Vec<String> = users.iter().map(|u| clean(u)).collect();
            let more = match total.saturating_sub(names.len()) {
                0 => String::new(),
                n => format!(" … and {n} more"),
            };
            out.notice(&format!("online ({total}): {}{more}", names.join(", ")));
        }),
        "/whois" if rest.is_empty() => usage("/whois <name>"),
        "/trust" if rest.is_empty() => usage("/trust <name>"),
        "/trust" => client.trust(rest).await.map(|key| {
            out.notice(&format!("{}'s key {key} is trusted now", clean(rest)));
        }),
        "/whois" => whois(ctx, rest).await,
        "/history" => {
            // Page backwards from the earliest line on screen.
            let before = match shown.earliest.load(Ordering::Relaxed) {
                0 => None,
                seq => Some(seq),
            };
            shown.asked.store(true, Ordering::Relaxed);
            match rest.parse::<usize>() {
                Ok(n) if n > 0 => client.history(before, n).await,
                _ if rest.is_empty() => client.history(before, 50).await,
                _ => usage("/history [n]"),
            }
        }
        "/me" if rest.is_empty() => usage("/me <action>"),
        "/me" => client.say(&format!("/me {rest}")).await,
        "/clear" => {
            out.clear();
            Ok(())
        }
        "/msg" => match rest.split_once(char::is_whitespace) {
            Some((to, text)) => {
                private(ctx, to, text.trim());
                Ok(())
            }
            None => usage("/msg <name> <text>"),
        },
        w if w.starts_with('/') => Err(ClientError::Invalid(format!(
            "unknown command {}; /help lists them",
            clean(w)
        ))),
        w if w.starts_with('@') && w.len() > 1 => {
            private(ctx, &w[1..], rest);
            Ok(())
        }
        _ => client.say(line).await,
    };
    if let Err(e) = result {
        out.error(&e.to_string());
    }
}

/// `/whois name`: the endpoint, when they came, and how private messages reach them; for
/// someone online outside our session, what the coordinator says of them.
async fn whois(ctx: &Ctx<'_>, name: &str) -> Result<(), ClientError> {
    let client = ctx.client;
    let in_session = client
        .members()
        .into_iter()
        .find(|m| m.user.eq_ignore_ascii_case(name));
    let member = match in_session.clone() {
        Some(member) => member,
        None => client.member(name).await?,
    };
    let arrived = ctx
        .shown
        .arrived
        .lock()
        .get(&member.user.to_lowercase())
        .copied();
    let when = match arrived {
        _ if in_session.is_none() => "online, not in your session".into(),
        Some(Some(t)) => format!(
            "joined at {}",
            t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S")
        ),
        _ => "was here when you joined".into(),
    };
    let me = member.user.eq_ignore_ascii_case(client.user());
    let relay = match in_session {
        Some(_) => "the session server",
        None => "the coordinator",
    };
    let how = match (member.udp, client.reached_by(&member.user)) {
        _ if me => "that is you".to_string(),
        (None, _) => "takes no private messages".to_string(),
        (Some(_), Some(confab::client::Via::Direct(at))) => {
            format!("reached direct at {at} (peer to peer, sealed for their key)")
        }
        (Some(_), Some(confab::client::Via::Relayed)) => {
            format!(
                "reached relayed through {relay} (the direct path did not answer; still sealed for their key)"
            )
        }
        (Some(udp), None) => format!(
            "private messages go straight to {udp} over UDP, peer to peer, sealed for their key (relayed through {relay} if that does not answer)"
        ),
    };
    let key = match (&member.key, client.key_state(&member)) {
        (None, _) => "no identity key (private messages cannot be sealed for it)".to_string(),
        (Some(k), _) if me => format!("key {k} (yours)"),
        (Some(k), Some(confab::client::PinState::Pinned)) => format!("key {k} (pinned)"),
        (Some(k), Some(confab::client::PinState::Changed { pinned })) => format!(
            "key {k} — CHANGED: pinned {}; compare by other means, then /trust {}",
            confab::identity::fingerprint(&pinned),
            clean(&member.user)
        ),
        (Some(k), _) => format!("key {k} (not met yet: pinned at the first private message)"),
    };
    ctx.out.notice(&format!(
        "{}: udp {}, {key}, {when}; {how}",
        clean(&member.user),
        super::show::endpoint(member.udp)
    ));
    Ok(())
}

/// Sends a private message in the background: the prompt stays free while it is retried.
fn private(ctx: &Ctx<'_>, to: &str, text: &str) {
    if text.is_empty() {
        ctx.out.error("usage: @name text");
        return;
    }
    let (client, to, text, out) = (
        ctx.client.clone(),
        to.to_string(),
        text.to_string(),
        ctx.out.clone(),
    );
    ctx.pending.spawn(async move {
        match client.dm(&to, &text).await {
            Ok(receipt) => {
                let via = match receipt.via {
                    confab::client::Via::Direct(_) => "",
                    confab::client::Via::Relayed => " (relayed)",
                };
                let body = format!(
                    "[private] you → {}{via}: {}",
                    clean(&receipt.to),
                    clean(&text)
                );
                out.stamped(receipt.time, &out.style().dim(&body));
            }
            Err(ClientError::PeerKeyChanged { user, pinned, now }) => {
                let user = clean(&user);
                out.error(&format!(
                    "not sent: {user}'s identity key has changed (pinned {pinned}, now {now}). \
                     It may be someone else. Compare it with {user} by other means (/whois \
                     {user}), then /trust {user} and send again."
                ));
            }
            Err(e) => out.error(&e.to_string()),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::complete::COMMANDS;

    #[test]
    fn every_command_has_its_own_help() {
        for c in COMMANDS {
            assert!(help_for(c).is_some(), "{c}");
            assert!(HELP.contains(c), "{c} is listed");
        }
        assert!(help_for("msg").is_some());
        assert!(help_for("nonsense").is_none());
    }
}
