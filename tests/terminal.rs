//! The real `confab` binary in a real terminal: tmux runs it in a pseudo-terminal, `send-keys`
//! and `paste-buffer` type and paste as a person would, and `capture-pane` reads the screen.
//!
//! Every wait polls the screen (or the other client's events) until a condition holds, with a
//! generous bound, so a loaded machine makes the test slower, never wrong. Each test has its own
//! tmux server on a private socket in a temporary folder, killed when the test ends, pass or
//! fail.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use confab::client::Event;
use tokio::process::Command;

/// Bound for anything on screen; generous because tmux, the binary and the coordinator share
/// two loaded cores.
const SCREEN_WAIT: Duration = Duration::from_secs(20);

/// A tmux server on a private socket with one pane running `confab client`.
struct Term {
    /// The socket, in `_dir`, which goes with the server.
    socket: String,
    _dir: tempfile::TempDir,
}

impl Term {
    /// Starts `confab client --user <user>` (registering it, password from the environment) in
    /// a 150×50 terminal, keeping its input history under `state`.
    async fn client(user: &str, coordinator: std::net::SocketAddr, state: &Path) -> Term {
        let args = format!("--user {user} --coordinator {coordinator} --register");
        let env = format!("CONFAB_PASSWORD={}", password(user));
        Term::start(&args, &env, state).await
    }

    /// Starts `confab client <args>` with `env` (`NAME=value …`) in a 150×50 terminal. When the
    /// program ends the pane stays, with `[exited N]` below its last line.
    async fn start(args: &str, env: &str, state: &Path) -> Term {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux").to_str().unwrap().to_string();
        let program = format!(
            "env -u CONFAB_PASSWORD -u NO_COLOR XDG_STATE_HOME={0} XDG_DATA_HOME={0} {env} {1} client --bind 127.0.0.1:0 {args}; \
             echo \"[exited $?]\"; sleep 3600",
            state.display(),
            env!("CARGO_BIN_EXE_confab"),
        );
        let term = Term { socket, _dir: dir };
        term.tmux(&[
            "start-server",
            ";",
            "set-option",
            "-g",
            "history-limit",
            "100000",
            ";",
            "new-session",
            "-d",
            "-x",
            "150",
            "-y",
            "50",
            "-s",
            "t",
            &program,
        ])
        .await;
        term
    }

    async fn tmux(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(
            SCREEN_WAIT,
            Command::new("tmux")
                .args(["-S", &self.socket, "-f", "/dev/null"])
                .args(args)
                .env_remove("TMUX")
                .env("TERM", "xterm-256color")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("tmux answers")
        .expect("tmux runs (is it installed?)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` and presses Enter after each line of it, all in one go: what arrives is
    /// type-ahead, however fast the program is.
    async fn type_lines(&self, lines: &[&str]) {
        let mut args = Vec::new();
        for line in lines {
            args.extend(["send-keys", "-t", "t", "-l", line, ";"]);
            args.extend(["send-keys", "-t", "t", "Enter", ";"]);
        }
        args.pop();
        self.tmux(&args).await;
    }

    /// Types `text` without pressing Enter.
    async fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]).await;
    }

    async fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "t", key]).await;
    }

    /// Pastes `text`, inside bracketed-paste markers if `bracketed` (tmux adds them only when the
    /// program asked for them, as terminals do).
    async fn paste(&self, text: &str, bracketed: bool) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let path = file.path().to_str().unwrap();
        let mut args = vec![
            "load-buffer",
            "-b",
            "p",
            path,
            ";",
            "paste-buffer",
            "-b",
            "p",
        ];
        if bracketed {
            args.push("-p");
        }
        args.extend(["-t", "t"]);
        self.tmux(&args).await;
    }

    /// The whole screen and its scrollback, one string per row, trailing blanks trimmed.
    async fn screen(&self) -> Vec<String> {
        let text = self
            .tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"])
            .await;
        let mut rows: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
        while rows.last().is_some_and(|l| l.is_empty()) {
            rows.pop();
        }
        rows
    }

    /// Polls the screen until `done` holds; panics with the screen after `SCREEN_WAIT`.
    async fn wait(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + SCREEN_WAIT;
        loop {
            let rows = self.screen().await;
            if done(&rows) {
                return rows;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; the screen:\n{}",
                    rows.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Waits until the last row is the prompt with `typed` after it.
    async fn wait_typed(&self, typed: &str) -> Vec<String> {
        self.wait(&format!("the prompt with {typed:?}"), |rows| {
            rows.last().is_some_and(|r| is_prompt_with(r, typed))
        })
        .await
    }

    /// Waits until a row contains `part`.
    async fn wait_for(&self, part: &str) -> Vec<String> {
        self.wait(&format!("a row containing {part:?}"), |rows| {
            rows.iter().any(|r| r.contains(part))
        })
        .await
    }

    /// Waits until the program is idle at an empty prompt with `parts` on rows above it, in
    /// this order.
    async fn wait_order(&self, parts: &[&str]) -> Vec<String> {
        self.wait(&format!("the prompt below {parts:?}"), |rows| {
            rows.last().is_some_and(|r| is_prompt_with(r, "")) && ordered(rows, parts)
        })
        .await
    }

    /// Waits until the program is idle at an empty prompt with `expected` shown above it.
    async fn wait_prompt_after(&self, expected: &str) -> Vec<String> {
        self.wait(&format!("the prompt below {expected:?}"), |rows| {
            rows.last().is_some_and(|r| is_prompt_with(r, ""))
                && rows.iter().any(|r| r.contains(expected))
        })
        .await
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-S", &self.socket, "kill-server"])
            .env_remove("TMUX")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Whether `row` is the prompt (`[lobby 2] > `, `[no session] > `) followed by `typed`.
fn is_prompt_with(row: &str, typed: &str) -> bool {
    if !row.starts_with('[') {
        return false;
    }
    match typed {
        "" => row.ends_with("] >"),
        typed => row
            .split_once("] > ")
            .is_some_and(|(_, rest)| rest == typed),
    }
}

/// Whether each of `parts` is on a row, in this order.
fn ordered(rows: &[String], parts: &[&str]) -> bool {
    let mut at = 0;
    parts.iter().all(|part| match row_of(rows, at, part) {
        Some(i) => {
            at = i + 1;
            true
        }
        None => false,
    })
}

/// Index of the first row at or after `from` containing `part`.
fn row_of(rows: &[String], from: usize, part: &str) -> Option<usize> {
    rows.iter()
        .skip(from)
        .position(|r| r.contains(part))
        .map(|i| i + from)
}

/// Asserts that each of `parts` is on a row of its own, in this order.
fn in_order(rows: &[String], parts: &[&str]) {
    let mut at = 0;
    for part in parts {
        match row_of(rows, at, part) {
            Some(i) => at = i + 1,
            None => panic!(
                "{part:?} missing or out of order; the screen:\n{}",
                rows.join("\n")
            ),
        }
    }
}

async fn texts(events: &mut tokio::sync::mpsc::Receiver<Event>, n: usize) -> Vec<String> {
    messages(events, n)
        .await
        .into_iter()
        .map(|l| l.text)
        .collect()
}

fn no_rate_limit() -> confab::coordinator::CoordinatorConfig {
    let mut config = test_config();
    config.member_limits.rate = None;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_on_screen_and_type_ahead_is_never_lost() {
    let coord = TestCoordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let alice = Term::client("alice", coord.addr, state.path()).await;
    alice.wait_prompt_after("logged in as alice").await;

    // /help: every line of it, the last one too, and the prompt back below it.
    alice.type_lines(&["/help"]).await;
    let rows = alice.wait_prompt_after("Ctrl-W/U/K delete word").await;
    in_order(
        &rows,
        &[
            "> /help",
            "commands:",
            "/start [name]",
            "/join <id|name>",
            "/leave",
            "/sessions",
            "/who ",
            "/whois <name>",
            "/history [n]",
            "/close [id|name]",
            "/me <action>",
            "/clear",
            "/help [command]",
            "/quit",
            "text               say text",
            "@name text",
            "keys: Tab completes",
            "Ctrl-W/U/K delete word",
        ],
    );

    alice.type_lines(&["/sessions"]).await;
    alice.wait_prompt_after("no sessions").await;
    alice.type_lines(&["/start lobby"]).await;
    alice.wait_prompt_after("members (1): alice").await;

    let (bob, mut b_ev) = client("bob", coord.addr).await;
    bob.join("lobby").await.unwrap();
    alice.wait_prompt_after("* bob joined").await;

    // Three lines typed ahead in one burst: all three are sent, in order.
    alice
        .type_lines(&["typeahead A", "typeahead B", "typeahead C"])
        .await;
    assert_eq!(
        texts(&mut b_ev, 3).await,
        ["typeahead A", "typeahead B", "typeahead C"]
    );
    alice.wait_prompt_after("<alice> typeahead C").await;

    // Every other command, typed ahead while the ones before it run; answers and errors all
    // arrive, each under its command, in the order typed.
    alice
        .type_lines(&[
            "/sessions",
            "/who",
            "after who",
            "/history",
            "/nonsense",
            "@nobody hi",
            "@bob psst",
            "last of the burst",
        ])
        .await;
    let rows = alice.wait_prompt_after("<alice> last of the burst").await;
    in_order(
        &rows,
        &[
            "> /sessions",
            "2: alice, bob",
            "> /who",
            "members (2)",
            "> /history",
            "> /nonsense",
            "! unknown command /nonsense",
        ],
    );
    // Lines said and history come back from the session server, in their own time.
    in_order(&rows, &["<alice> after who", "<alice> last of the burst"]);
    in_order(&rows, &["> /history", "* no earlier messages"]);
    // Private messages go in the background: their outcome comes when it comes.
    alice.wait_for("! no one named nobody").await;
    alice.wait_prompt_after("[private] you → bob: psst").await;
    let (mut said, mut private) = (Vec::new(), None);
    while said.len() < 2 || private.is_none() {
        let event = expect(
            &mut b_ev,
            "alice's lines and private message",
            |e| match e {
                Event::Message(_) | Event::Private { .. } => Some(e.clone()),
                _ => None,
            },
        )
        .await;
        match event {
            Event::Message(l) => said.push(l.text),
            Event::Private { text, .. } => private = Some(text),
            _ => {}
        }
    }
    assert_eq!(said, ["after who", "last of the burst"]);
    assert_eq!(private.as_deref(), Some("psst"));
    // Said lines are shown once: as they came back from the session, not also as typed.
    let rows = alice.screen().await;
    assert_eq!(rows.iter().filter(|r| r.contains("after who")).count(), 1);

    // On a join: "joined" first, then the roster, then the history.
    alice.type_lines(&["/leave", "/join lobby"]).await;
    alice
        .wait_order(&[
            "> /leave",
            "* left session lobby",
            "> /join lobby",
            "* joined session lobby",
            "members (2)",
            "earlier message(s):",
            "<alice> last of the burst",
        ])
        .await;
    alice
        .type_lines(&["/close", "/start other", "said in other"])
        .await;
    alice
        .wait_order(&[
            "> /close",
            "* closed session",
            "> /start other",
            "* joined session other",
            "<alice> said in other",
        ])
        .await;

    // /quit: whatever was said is shown first, then the goodbye, each on a row of its own.
    alice.type_lines(&["last words", "/quit"]).await;
    let rows = alice.wait_for("[exited 0]").await;
    let bye = rows.iter().position(|r| r == "* bye").expect("* bye row");
    let left = rows
        .iter()
        .position(|r| r.starts_with("* left session other"))
        .expect("* left row");
    let said = rows
        .iter()
        .position(|r| r.ends_with("<alice> last words"))
        .expect("last words echoed");
    assert!(said < left && left < bye, "{}", rows.join("\n"));
    assert_eq!(rows[bye + 1], "[exited 0]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pastes_and_output_while_typing_lose_nothing() {
    let coord = TestCoordinator::start_with(no_rate_limit()).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    bob.start_session(Some("room")).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let alice = Term::client("alice", coord.addr, state.path()).await;
    alice.wait_prompt_after("logged in as alice").await;
    alice.type_lines(&["/join room"]).await;
    alice.wait_prompt_after("members (2)").await;

    // A paste without brackets is keys and Enters: three lines, each sent.
    alice
        .paste("plain one\nplain two\nplain three\n", false)
        .await;
    assert_eq!(
        texts(&mut b_ev, 3).await,
        ["plain one", "plain two", "plain three"]
    );
    // A bracketed paste is several lines too, not one message with the newlines in it; the
    // unfinished last line stays on the prompt to be finished. Its tab is text, not a Tab key
    // (which would complete, here to nothing): proof that the paste came bracketed.
    alice
        .paste("bracketed\tone\nbracketed two\nbracketed three", true)
        .await;
    assert_eq!(
        texts(&mut b_ev, 2).await,
        ["bracketed one", "bracketed two"]
    );
    alice.wait_typed("bracketed three").await;
    alice.type_lines(&[" finished"]).await;
    assert_eq!(texts(&mut b_ev, 1).await, ["bracketed three finished"]);
    alice
        .wait_prompt_after("<alice> bracketed three finished")
        .await;

    // Output arriving while a line is half typed: shown above it at once, without a key, and
    // the half-typed line stays intact below.
    alice.type_text("half typed").await;
    alice.wait_typed("half typed").await;
    let asked = Instant::now();
    bob.say("while you type").await.unwrap();
    bob.dm("alice", "a private word").await.unwrap();
    alice
        .wait("both lines above the half-typed one", |rows| {
            rows.last().is_some_and(|r| is_prompt_with(r, "half typed"))
                && rows.iter().any(|r| r.ends_with("<bob> while you type"))
                && rows
                    .iter()
                    .any(|r| r.ends_with("[private] bob → you: a private word"))
        })
        .await;
    eprintln!(
        "lines shown {:?} after they were sent (bound {SCREEN_WAIT:?})",
        asked.elapsed()
    );
    alice.type_lines(&[" and done"]).await;
    assert_eq!(texts(&mut b_ev, 2).await[1], "half typed and done");

    // 50 lines a second arrive while alice types, a key at a time.
    let flood = tokio::spawn({
        let bob = bob.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..100 {
                tick.tick().await;
                bob.say(&format!("flood {i:03}")).await.unwrap();
            }
        }
    });
    let typed = "typing through the flood";
    for c in typed.chars() {
        alice.type_text(&c.to_string()).await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    flood.await.unwrap();
    let rows = alice
        .wait("the whole flood above the typed line", |rows| {
            rows.last().is_some_and(|r| is_prompt_with(r, typed))
                && rows.iter().any(|r| r.ends_with("<bob> flood 099"))
        })
        .await;
    let flood_rows: Vec<&String> = rows.iter().filter(|r| r.contains("flood ")).collect();
    let expected: Vec<String> = (0..100).map(|i| format!("<bob> flood {i:03}")).collect();
    assert_eq!(flood_rows.len(), 100, "{}", rows.join("\n"));
    for (row, want) in flood_rows.iter().zip(&expected) {
        assert!(
            row.ends_with(want.as_str()),
            "{row:?} should end with {want:?}"
        );
    }
    alice.key("Enter").await;
    let got = expect(&mut b_ev, "alice's typed line", |e| match e {
        Event::Message(l) if l.from == "alice" => Some(l.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(got, typed);

    // Ctrl-C clears a half-typed line; on an empty line it quits.
    alice.type_text("never sent").await;
    alice.wait_typed("never sent").await;
    alice.key("C-c").await;
    alice
        .wait("an empty prompt", |rows| {
            rows.last().is_some_and(|r| is_prompt_with(r, ""))
        })
        .await;
    alice.key("C-c").await;
    let rows = alice.wait_for("[exited 0]").await;
    assert!(!rows.iter().any(|r| r.contains("<alice> never sent")));
    assert!(rows.iter().any(|r| r == "* bye"), "{}", rows.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_completes_explains_and_remembers_what_was_typed() {
    let coord = TestCoordinator::start().await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    bob.start_session(Some("other")).await.unwrap();
    bob.leave().await;
    bob.start_session(Some("lobby")).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    // A host name for the coordinator, and a session to join on start.
    let args = format!(
        "--user alice --coordinator localhost:{} --register --join lobby",
        coord.addr.port()
    );
    let env = format!("CONFAB_PASSWORD={}", password("alice"));
    let alice = Term::start(&args, &env, state.path()).await;
    alice
        .wait_order(&["* joined session lobby", "members (2)"])
        .await;
    alice
        .wait("the prompt naming the session and its size", |rows| {
            rows.last().is_some_and(|r| r == "[lobby 2] >")
        })
        .await;

    // Tab completes a command, a member after @, and a session after /join.
    alice.type_text("/sess").await;
    alice.key("Tab").await;
    alice.wait_typed("/sessions").await;
    alice.key("Enter").await;
    alice.wait_order(&["> /sessions", "2: alice, bob"]).await;
    alice.type_text("@b").await;
    alice.key("Tab").await;
    alice.wait_typed("@bob").await;
    alice.type_lines(&["psst"]).await;
    let private = expect(&mut b_ev, "alice's private message", |e| match e {
        Event::Private { text, .. } => Some(text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(private, "psst");

    // /me, /whois, /msg, /help <command>: each answers on screen.
    alice
        .type_lines(&[
            "/me waves",
            "/whois bob",
            "/msg bob hello there",
            "/help whois",
        ])
        .await;
    alice
        .wait_order(&[
            "> /whois bob",
            &format!("* bob: udp {}", bob.endpoint()),
            "> /help whois",
            "/whois <name>: a member's (or anyone online's) UDP endpoint",
        ])
        .await;
    alice.wait_for("* alice waves").await;
    alice.wait_for("[private] you → bob: hello there").await;
    let waves = expect(&mut b_ev, "alice's action", |e| match e {
        Event::Message(l) if l.from == "alice" => Some(l.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(waves, "/me waves");
    bob.say("/me waves back").await.unwrap();
    alice.wait_for("* bob waves back").await;

    alice.type_text("/join ot").await;
    alice.key("Tab").await;
    alice.wait_typed("/join other").await;
    alice.key("Enter").await;
    alice
        .wait("the prompt in the other session", |rows| {
            rows.last().is_some_and(|r| r == "[other 1] >")
        })
        .await;

    // /clear leaves only the prompt.
    alice.type_lines(&["/clear"]).await;
    alice
        .wait("a clear screen", |rows| {
            rows.len() == 1 && is_prompt_with(&rows[0], "")
        })
        .await;

    // Up browses what was typed.
    alice.key("Up").await;
    alice.wait_typed("/clear").await;
    alice.key("Up").await;
    alice.wait_typed("/join other").await;
    alice.key("C-u").await;
    alice.type_lines(&["/quit"]).await;
    alice.wait_for("[exited 0]").await;
    drop(alice);

    // The history file: private, without private messages, and there after a restart.
    let file = state.path().join("confab/history-alice");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(
        kept.contains("/whois bob\n") && kept.contains("/me waves\n"),
        "{kept}"
    );
    assert!(
        !kept.contains("psst") && !kept.contains("hello there"),
        "{kept}"
    );
    let args = format!("--user alice --coordinator {}", coord.addr);
    let again = Term::start(&args, &env, state.path()).await;
    again.wait_prompt_after("logged in as alice").await;
    again.key("Up").await;
    again.wait_typed("/quit").await;
    again.key("Up").await;
    again.wait_typed("/clear").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_asked_twice_to_register_and_again_when_wrong() {
    let coord = TestCoordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let args = format!("--user dan --coordinator {} --register", coord.addr);
    let dan = Term::start(&args, "", state.path()).await;
    dan.wait_for("new password for dan:").await;
    dan.type_lines(&["right-pw-9"]).await;
    dan.wait_for("the same password again:").await;
    dan.type_lines(&["a typo"]).await;
    dan.wait_for("the two passwords differ; try again").await;
    dan.type_lines(&["right-pw-9"]).await;
    dan.wait("the second confirmation", |rows| {
        rows.iter()
            .filter(|r| r.contains("the same password again:"))
            .count()
            == 2
    })
    .await;
    dan.type_lines(&["right-pw-9"]).await;
    dan.wait_prompt_after("logged in as dan").await;
    dan.type_lines(&["/quit"]).await;
    dan.wait_for("[exited 0]").await;
    drop(dan);

    let args = format!("--user dan --coordinator {}", coord.addr);
    let dan = Term::start(&args, "", state.path()).await;
    dan.wait_for("password for dan:").await;
    dan.type_lines(&["bad-pw-7"]).await;
    dan.wait_for("try again").await;
    dan.type_lines(&["right-pw-9"]).await;
    let rows = dan.wait_prompt_after("logged in as dan").await;
    // Nothing typed at a password prompt is ever shown.
    assert!(
        !rows
            .iter()
            .any(|r| r.contains("right-pw-9") || r.contains("bad-pw-7"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_a_command_left_waiting_and_a_second_ctrl_c_quits() {
    let coord = TestCoordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let alice = Term::client("alice", coord.addr, state.path()).await;
    alice.wait_for("logged in as alice").await;
    // The coordinator goes away: `/sessions` would wait through every retry (13 s and more).
    coord.stop().await;
    alice.type_lines(&["/sessions"]).await;
    alice.wait_for("/sessions").await;
    let pressed = Instant::now();
    alice.key("C-c").await;
    alice.wait_for("cancelled: /sessions").await;
    assert!(
        pressed.elapsed() < Duration::from_secs(10),
        "cancelled only after {:?}",
        pressed.elapsed()
    );
    // The prompt is back and takes keys.
    alice.type_text("still here").await;
    alice.wait_typed("still here").await;
    alice.key("C-u").await;
    alice
        .wait("an empty prompt", |rows| {
            rows.last().is_some_and(|r| is_prompt_with(r, ""))
        })
        .await;
    alice.key("C-c").await;
    alice.wait_for("[exited 0]").await;
}
