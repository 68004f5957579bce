//! The coordinator's UDP door, tried as a stranger would: the reply cache, the password-hashing
//! pool, amplification, per-address limits, session quotas, descriptors and strict parsing.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::net::UdpSocket;

use super::common::*;

/// Sends `request` padded as the client library pads it, and returns the parsed answer.
async fn ask(socket: &UdpSocket, to: SocketAddr, request: &str) -> Value {
    socket.send_to(&padded(request), to).await.unwrap();
    answer(socket).await
}

/// The next answer on `socket`, parsed.
async fn answer(socket: &UdpSocket) -> Value {
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    serde_json::from_slice(&buf[..n]).unwrap()
}

/// `request` with spaces after it up to the size the protocol asks of requests.
fn padded(request: &str) -> Vec<u8> {
    let mut bytes = request.as_bytes().to_vec();
    confab::protocol::pad_request(&mut bytes);
    bytes
}

#[tokio::test]
async fn a_reused_port_never_gets_another_requests_cached_answer() {
    let coord = TestCoordinator::start().await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = a.local_addr().unwrap();
    let v = ask(
        &a,
        coord.addr,
        r#"{"id":1,"op":"register","user":"alice","password":"alice-secret"}"#,
    )
    .await;
    assert_eq!(v["type"], "registered", "{v}");
    let v = ask(
        &a,
        coord.addr,
        r#"{"id":2,"op":"login","user":"alice","password":"alice-secret"}"#,
    )
    .await;
    assert!(v["token"].is_string(), "{v}");
    drop(a);

    // Another program gets the same port and numbers its requests from 1 too.
    let b = UdpSocket::bind(port).await.unwrap();
    let v = ask(
        &b,
        coord.addr,
        r#"{"id":1,"op":"register","user":"bob","password":"bob-secret"}"#,
    )
    .await;
    assert_eq!(v["type"], "registered", "{v}");
    assert_eq!(v["user"], "bob", "bob got alice's answer: {v}");
    let v = ask(
        &b,
        coord.addr,
        r#"{"id":2,"op":"login","user":"mallory","password":"guess"}"#,
    )
    .await;
    assert!(
        v.get("token").is_none(),
        "a token without the password: {v}"
    );
    assert_eq!(v["code"], "invalid_credentials", "{v}");
    // Alice's login with a wrong password on her own id gets no token either.
    let v = ask(
        &b,
        coord.addr,
        r#"{"id":2,"op":"login","user":"alice","password":"guess"}"#,
    )
    .await;
    assert!(v.get("token").is_none(), "{v}");

    // A true retry (the same bytes from the same address) is still answered from the cache.
    let create =
        |token: &str| format!(r#"{{"id":9,"op":"create","name":"once","token":"{token}"}}"#);
    let token = token_for("carol", coord.addr).await;
    let first = ask(&b, coord.addr, &create(&token)).await;
    let again = ask(&b, coord.addr, &create(&token)).await;
    assert_eq!(first, again);
    assert_eq!(first["type"], "session", "{first}");
}

#[tokio::test]
async fn refusals_are_not_cached() {
    let coord = TestCoordinator::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let token = token_for("alice", coord.addr).await;
    // A refusal changes nothing, so it is not kept: the same bytes sent again once the session
    // exists find it (a cached refusal would hide it, and strangers could fill the cache with
    // refusals that quote their long names).
    let close = format!(r#"{{"id":5,"op":"close","session":"later","token":"{token}"}}"#);
    let v = ask(&socket, coord.addr, &close).await;
    assert_eq!(v["code"], "session_not_found", "{v}");
    let create = format!(r#"{{"id":6,"op":"create","name":"later","token":"{token}"}}"#);
    assert_eq!(ask(&socket, coord.addr, &create).await["type"], "session");
    let v = ask(&socket, coord.addr, &close).await;
    assert_eq!(v["type"], "closed", "a refusal was replayed: {v}");
}

#[tokio::test]
async fn integers_are_not_op_names() {
    let coord = TestCoordinator::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (i, op) in ["0", "1", "5"].into_iter().enumerate() {
        let request = format!(r#"{{"id":{i},"op":{op},"user":"zed","password":"pw"}}"#);
        let v = ask(&socket, coord.addr, &request).await;
        assert_eq!(v["code"], "malformed", "op {op} was taken as a name: {v}");
        assert_eq!(v["id"], i, "{v}");
    }
}

/// A `confab coordinator` process, killed when dropped.
struct Process {
    child: tokio::process::Child,
    addr: SocketAddr,
    pid: u32,
}

impl Process {
    /// Starts the binary on 127.0.0.1:0 with `args`, optionally with an open-file limit of
    /// (soft, hard) set before it runs.
    async fn start(args: &[&str], nofile: Option<(u64, u64)>) -> Process {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--print-addr",
            "--insecure",
        ])
        .args(["--db", ":memory:"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
        if let Some((soft, hard)) = nofile {
            // SAFETY: setrlimit is async-signal-safe and touches nothing but the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("confab coordinator starts");
        let pid = child.id().unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(WAIT, out.next_line())
            .await
            .expect("the address in time")
            .unwrap()
            .expect("the address");
        Process {
            child,
            addr: line.trim().parse().unwrap(),
            pid,
        }
    }

    /// Resident memory, in MiB.
    fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn a_burst_of_password_checks_holds_memory_to_the_hashing_pool() {
    // The real password cost (19 MiB per hash): the attack is the memory.
    // A queue smaller than the burst, so that the burst also meets `busy`.
    let coord = Process::start(
        &[
            "--no-abuse-limits",
            "--hash-workers",
            "4",
            "--hash-queue",
            "64",
        ],
        None,
    )
    .await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let v = ask(
        &socket,
        coord.addr,
        r#"{"id":1,"op":"register","user":"real","password":"real-password"}"#,
    )
    .await;
    assert_eq!(v["type"], "registered", "{v}");
    // One login first, so that lazily made things (the dummy hash) are in the baseline.
    let v = ask(
        &socket,
        coord.addr,
        r#"{"id":2,"op":"login","user":"nobody","password":"x"}"#,
    )
    .await;
    assert_eq!(v["code"], "invalid_credentials", "{v}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = coord.rss_mib();

    // From four addresses, so that the login throttle (20 free failures per address) lets every
    // guess through to the hashing pool.
    let mut flood = Vec::new();
    for a in 10..14 {
        flood.push(UdpSocket::bind(format!("127.0.0.{a}:0")).await.unwrap());
    }
    let n = 128;
    for i in 0..n {
        let request = if i % 2 == 0 {
            format!(r#"{{"id":{i},"op":"login","user":"guess{i}","password":"pw"}}"#)
        } else {
            format!(r#"{{"id":{i},"op":"register","user":"new{i}","password":"pw"}}"#)
        };
        flood[i % 4]
            .send_to(&padded(&request), coord.addr)
            .await
            .unwrap();
    }
    // A real user logs in meanwhile (the client library retries while the pool is busy).
    let real = tokio::spawn({
        let addr = coord.addr;
        async move {
            let mut config = client_config("real", addr);
            config.bind = Some("127.0.0.2:0".parse().unwrap());
            let (c, _ev) = confab::client::Client::start(config).await.unwrap();
            let started = std::time::Instant::now();
            c.login("real-password").await.map(|_| started.elapsed())
        }
    });
    let mut peak = baseline;
    let mut answers = std::collections::HashMap::<String, usize>::new();
    let mut buf = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut next = 0;
    while answers.values().sum::<usize>() < n {
        peak = peak.max(coord.rss_mib());
        next = (next + 1) % flood.len();
        match tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(5)),
            flood[next].recv_from(&mut buf),
        )
        .await
        {
            Ok(Ok((len, _))) => {
                let v: Value = serde_json::from_slice(&buf[..len]).unwrap();
                let kind = v["code"].as_str().unwrap_or(v["type"].as_str().unwrap());
                *answers.entry(kind.to_string()).or_default() += 1;
            }
            _ if tokio::time::Instant::now() >= deadline => panic!("answers: {answers:?}"),
            _ => {}
        }
    }
    let took = real.await.unwrap().expect("the real login succeeds");
    assert!(took < WAIT, "the real login took {took:?}");
    assert!(answers.contains_key("busy"), "{answers:?}");
    // Four workers at 19 MiB each, and some slack for the queue and the allocator.
    assert!(
        peak <= baseline + 4 * 19 + 60,
        "RSS {baseline} MiB → peak {peak} MiB ({answers:?})"
    );
    let mut after = coord.rss_mib();
    for _ in 0..50 {
        if after <= baseline + 24 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = coord.rss_mib();
    }
    assert!(
        after <= baseline + 24,
        "RSS {baseline} MiB → {after} MiB after the burst (peak {peak})"
    );
    eprintln!(
        "RSS {baseline} MiB → peak {peak} MiB → {after} MiB; {answers:?}; real login {took:?}"
    );
}

#[tokio::test]
async fn a_busy_answer_says_when_to_come_back_and_costs_the_client_no_tries() {
    // One hashing thread and two places in its queue, at the real password cost.
    let coord = Process::start(
        &[
            "--no-abuse-limits",
            "--hash-workers",
            "1",
            "--hash-queue",
            "2",
        ],
        None,
    )
    .await;

    // Six registrations at once: three find places, the rest are told how long to wait.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..6 {
        let request = format!(r#"{{"id":{i},"op":"register","user":"raw{i}","password":"pw"}}"#);
        socket.send_to(&padded(&request), coord.addr).await.unwrap();
    }
    let mut hints = Vec::new();
    for _ in 0..6 {
        let v = answer(&socket).await;
        if v["code"] == "busy" {
            hints.push(
                v["retry_after_ms"]
                    .as_u64()
                    .expect("a busy answer names its wait"),
            );
        } else {
            assert_eq!(v["type"], "registered", "{v}");
        }
    }
    assert_eq!(hints.len(), 3, "{hints:?}");
    assert!(
        hints.iter().all(|&ms| (20..=5000).contains(&ms)),
        "{hints:?}"
    );

    // Forty clients at once, each allowed only two tries (time enough for the queue ahead of it
    // on loopback): a busy answer must not spend them (before, each spent one, and any client
    // refused twice gave up).
    let clients: Vec<_> = (0..40)
        .map(|i| {
            let addr = coord.addr;
            tokio::spawn(async move {
                let mut config = client_config(&format!("many{i}"), addr);
                config.request_retry.first = Duration::from_millis(500);
                config.request_retry.max_delay = Duration::from_millis(500);
                config.request_retry.attempts = 2;
                let (c, _ev) = confab::client::Client::start(config).await.unwrap();
                c.register("a password").await
            })
        })
        .collect();
    let mut refused = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        if let Err(e) = c.await.unwrap() {
            refused.push(format!("many{i}: {e}"));
        }
    }
    assert!(refused.is_empty(), "{refused:?}");
}

/// Sends every request in `requests` at once from `socket`, then collects answers until `quiet`
/// passes without one; returns them.
async fn burst(
    socket: &UdpSocket,
    to: SocketAddr,
    requests: impl IntoIterator<Item = Vec<u8>>,
    quiet: Duration,
) -> Vec<Value> {
    for r in requests {
        socket.send_to(&r, to).await.unwrap();
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((n, _))) = tokio::time::timeout(quiet, socket.recv_from(&mut buf)).await {
        got.push(serde_json::from_slice(&buf[..n]).unwrap());
    }
    got
}

fn count(answers: &[Value], code: &str) -> usize {
    answers
        .iter()
        .filter(|v| v["code"] == code || v["type"] == code)
        .count()
}

#[tokio::test]
async fn one_address_gets_a_bounded_number_of_answers_per_second() {
    let mut config = test_config();
    config.abuse.requests = Some(confab::coordinator::Rate::per_second(50));
    let coord = TestCoordinator::start_with(config).await;
    let token = token_for("alice", coord.addr).await;
    // Not 127.0.0.1, whose requests for the token above already took some of its burst.
    let socket = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let started = std::time::Instant::now();
    let lists = (0..2000).map(|i| padded(&format!(r#"{{"id":{i},"op":"list"}}"#)));
    let answers = burst(&socket, coord.addr, lists, Duration::from_millis(300)).await;
    let secs = started.elapsed().as_secs_f64();
    let bound = 50.0 + 50.0 * secs;
    assert!(
        answers.len() as f64 <= bound,
        "{} answers in {secs:.2} s to one address (bound {bound:.0})",
        answers.len()
    );
    assert!(answers.len() >= 50, "the burst is answered");
    // Another address is not held back by this one...
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    assert_eq!(
        ask(&other, coord.addr, r#"{"id":1,"op":"list"}"#).await["type"],
        "sessions"
    );
    // ...nor is a request with a valid token from the same address.
    let create = format!(r#"{{"id":99999,"op":"create","token":"{token}"}}"#);
    assert_eq!(ask(&socket, coord.addr, &create).await["type"], "session");
}

#[tokio::test]
async fn password_guesses_from_one_address_across_many_names_are_held_to_the_free_allowance() {
    let mut config = test_config();
    config.abuse.hold_parallel_logins = true;
    let coord = TestCoordinator::start_with(config).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let names = 100;
    for i in 0..names {
        let v = ask(
            &socket,
            coord.addr,
            &format!(r#"{{"id":{i},"op":"register","user":"user{i}","password":"right"}}"#),
        )
        .await;
        assert_eq!(v["type"], "registered", "{v}");
    }
    let guess = |i: usize, round: usize| {
        padded(&format!(
            r#"{{"id":{},"op":"login","user":"user{i}","password":"guess{round}"}}"#,
            1000 * (round + 1) + i
        ))
    };
    // Two parallel bursts, a second apart: every name once per burst.
    let mut checked = 0;
    for round in 0..2 {
        let answers = burst(
            &socket,
            coord.addr,
            (0..names).map(|i| guess(i, round)),
            Duration::from_millis(700),
        )
        .await;
        assert_eq!(count(&answers, "logged_in"), 0);
        checked += count(&answers, "invalid_credentials");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // 20 free failures per address, then one at a time with a delay of 1 s, 2 s, …
    assert!(
        checked >= confab::auth::IP_FREE_FAILURES as usize,
        "{checked} checked"
    );
    assert!(
        checked <= confab::auth::IP_FREE_FAILURES as usize + 2,
        "{checked} guesses checked in about 2 s"
    );
}

#[tokio::test]
async fn registrations_per_address_are_limited() {
    let mut config = test_config();
    config.abuse.registrations = Some(confab::coordinator::Rate::per_hour(5));
    let coord = TestCoordinator::start_with(config).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let register =
        |i: usize| format!(r#"{{"id":{i},"op":"register","user":"bot{i}","password":"pw"}}"#);
    let mut codes = Vec::new();
    for i in 0..8 {
        let v = ask(&socket, coord.addr, &register(i)).await;
        codes.push(
            v["code"]
                .as_str()
                .unwrap_or(v["type"].as_str().unwrap())
                .to_string(),
        );
    }
    assert_eq!(codes[..5], ["registered"; 5], "{codes:?}");
    assert_eq!(codes[5..], ["quota"; 3], "{codes:?}");
    let v = ask(&socket, coord.addr, &register(9)).await;
    assert!(v["message"].as_str().unwrap().contains("min"), "{v}");
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    assert_eq!(
        ask(&other, coord.addr, &register(10)).await["type"],
        "registered"
    );
}

#[tokio::test]
async fn no_answer_is_more_than_three_times_its_request() {
    let coord = TestCoordinator::start().await;
    let token = token_for("alice", coord.addr).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A directory whose first page fills a datagram.
    for i in 0..12 {
        let create = format!(
            r#"{{"id":{i},"op":"create","name":"a-long-session-name-for-a-large-listing-{i}","token":"{token}"}}"#
        );
        assert_eq!(ask(&socket, coord.addr, &create).await["type"], "session");
    }
    let probes: Vec<Vec<u8>> = vec![
        b"x".to_vec(),
        br#"{"id":4,"op":"list"}"#.to_vec(),
        br#"{"id":5,"op":"list","cursor":0,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.to_vec(),
        vec![b'z'; 100],
        vec![0xff; 399],
        format!(r#"{{"id":6,"op":"join","session":"x","token":"{token}"}}"#).into_bytes(),
    ];
    let mut buf = vec![0u8; 65536];
    for probe in &probes {
        socket.send_to(probe, coord.addr).await.unwrap();
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
        {
            assert!(
                n <= 3 * probe.len(),
                "{n} bytes answered to {} bytes: {}",
                probe.len(),
                String::from_utf8_lossy(&buf[..n])
            );
            let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(v["code"], "too_small", "{v}");
        }
    }
    // A padded request is answered in full.
    let page = ask(&socket, coord.addr, r#"{"id":7,"op":"list"}"#).await;
    assert!(page["sessions"].as_array().unwrap().len() > 1, "{page}");
    assert!(page["next"].is_number(), "a full page: {page}");
    // Garbage that is large enough to answer gets a short error.
    let garbage = vec![b'?'; confab::protocol::limits::MIN_REQUEST];
    socket.send_to(&garbage, coord.addr).await.unwrap();
    let n = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap()
        .0;
    assert!(n <= 200, "{}", String::from_utf8_lossy(&buf[..n]));
}

#[tokio::test]
async fn one_account_cannot_take_every_session_server() {
    use confab::coordinator::Rate;
    let mut config = test_config();
    config.max_sessions = 60;
    config.abuse.live_sessions_per_user = Some(15);
    config.abuse.sessions_per_user = Some(Rate::per_hour(20));
    config.abuse.sessions_per_address = Some(Rate::per_hour(25));
    let coord = TestCoordinator::start_with(config).await;
    let (mallory, _m) = client("mallory", coord.addr).await;
    let mut made = Vec::new();
    let refusal = loop {
        match mallory.create(None).await {
            Ok(info) => made.push(info.id),
            Err(confab::client::ClientError::Refused(e)) => break e,
            Err(e) => panic!("{e}"),
        }
        assert!(made.len() <= 60, "no limit");
    };
    assert_eq!(made.len(), 15, "{refusal:?}");
    assert_eq!(refusal.code, confab::protocol::ErrorCode::Quota);
    assert!(refusal.message.contains("close one"), "{}", refusal.message);
    // Closing makes room again, until the hourly quota is spent.
    for id in &made[..8] {
        mallory.close_session(&id.to_string()).await.unwrap();
    }
    let mut more = 0;
    let refusal = loop {
        match mallory.create(None).await {
            Ok(_) => more += 1,
            Err(confab::client::ClientError::Refused(e)) => break e,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(more, 5, "20 per hour: {refusal:?}");
    assert!(refusal.message.contains("last hour"), "{}", refusal.message);
    // Another account on the same address has what is left of the address's 25 per hour.
    let (bob, _b) = client("bob", coord.addr).await;
    for _ in 0..5 {
        bob.create(None).await.unwrap();
    }
    let refusal = bob.create(None).await.unwrap_err();
    assert!(refusal.to_string().contains("address"), "{refusal}");
    // Someone elsewhere still gets a session: the global limit was never reached.
    let mut carol = client_config("carol", coord.addr);
    carol.bind = Some("127.0.0.2:0".parse().unwrap());
    let (carol, _c) = logged_in(carol).await;
    carol.create(None).await.unwrap();
}

#[tokio::test]
async fn sessions_are_refused_cleanly_before_descriptors_run_out() {
    let coord = Process::start(&["--no-abuse-limits", "--fast-passwords"], Some((128, 256))).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", coord.pid)).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["256", "256"],
        "the soft limit is raised to the hard one: {open_files}"
    );
    let (alice, _a) = client("alice", coord.addr).await;
    let mut made = Vec::new();
    let refusal = loop {
        match alice.create(None).await {
            Ok(info) => made.push(info),
            Err(confab::client::ClientError::Refused(e)) => break e,
            Err(e) => panic!("{e}"),
        }
        assert!(made.len() < 256, "never refused");
    };
    assert_eq!(
        refusal.code,
        confab::protocol::ErrorCode::Full,
        "{refusal:?}"
    );
    assert!(
        refusal.message.contains("descriptors"),
        "{}",
        refusal.message
    );
    assert!(made.len() >= 100, "only {} sessions", made.len());
    // Nothing that failed is listed; everything listed runs.
    let listed = alice.list().await.unwrap();
    assert_eq!(listed.len(), made.len());
    assert!(listed.iter().all(|e| e.server.is_some()));
    // The sessions that run still admit members.
    let mut members = Vec::new();
    for i in 0..30 {
        let mut m = RawMember::joined(made[i % 3].server, coord.addr, &format!("m{i}")).await;
        let welcome = m.json().await;
        assert_eq!(welcome["type"], "welcome", "member {i}: {welcome}");
        members.push(m);
    }
}
