//! Issue 13 across real NATs: Linux network namespaces on this machine, joined by veth pairs,
//! with nftables masquerading on each client's router, and the real `confab` binaries inside.
//!
//! ```text
//!   alice (198.51.100.2)          coordinator 203.0.113.1 / .5          bob (198.51.100.130)
//!        |                          (ns "pub", routes between)                 |
//!   router A: 198.51.100.1 | 203.0.113.2  ----  pub  ----  203.0.113.6 | 198.51.100.129: router B
//!             masquerade                                               masquerade
//! ```
//!
//! Only documentation addresses, inside namespaces the test makes and always deletes; nothing
//! is routed off the machine. Needs root, `ip` and `nft` (`.ci/run` installs nftables); without
//! them the tests say SKIPPED loudly and pass.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{output_line_with, password};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long a step may take inside the namespaces.
const STEP: Duration = Duration::from_secs(30);

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why these tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "nft", "conntrack"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "no `{tool}` (Debian package {})",
                match tool {
                    "nft" => "nftables",
                    "conntrack" => "conntrack",
                    _ => "iproute2",
                }
            ));
        }
    }
    None
}

/// How a router maps its inside endpoints to its public address.
#[derive(Clone, Copy)]
enum Nat {
    /// `masquerade`: keeps the source port when it can (endpoint-independent mapping, as most
    /// home routers), filtering what does not answer a mapping.
    PortPreserving,
    /// `masquerade random,fully-random`: a new random public port per destination (symmetric).
    Symmetric,
}

/// The namespaces of one test, deleted when dropped.
struct Topology {
    names: Vec<String>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

impl Topology {
    /// pub (coordinator), two routers and two clients; names made unique per test.
    fn build(tag: &str, a: Nat, b: Nat) -> Result<Topology, String> {
        let id = format!("{}{}", tag, std::process::id() % 100_000);
        let ns = |n: &str| format!("cf{n}{id}");
        let topo = Topology {
            names: ["pub", "ra", "rb", "ca", "cb"]
                .iter()
                .map(|n| ns(n))
                .collect(),
        };
        for n in &topo.names {
            let _ = run(&["ip", "netns", "del", n]);
            run(&["ip", "netns", "add", n])?;
            run(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        }
        let [pubns, ra, rb, ca, cb] = [ns("pub"), ns("ra"), ns("rb"), ns("ca"), ns("cb")];
        // veth pairs, each end moved into its namespace.
        let link =
            |x: &str, xi: &str, xa: &str, y: &str, yi: &str, ya: &str| -> Result<(), String> {
                run(&[
                    "ip", "link", "add", xi, "netns", x, "type", "veth", "peer", "name", yi,
                    "netns", y,
                ])?;
                run(&["ip", "-n", x, "addr", "add", xa, "dev", xi])?;
                run(&["ip", "-n", y, "addr", "add", ya, "dev", yi])?;
                run(&["ip", "-n", x, "link", "set", xi, "up"])?;
                run(&["ip", "-n", y, "link", "set", yi, "up"])
            };
        link(&pubns, "pa", "203.0.113.1/30", &ra, "wan", "203.0.113.2/30")?;
        link(&pubns, "pb", "203.0.113.5/30", &rb, "wan", "203.0.113.6/30")?;
        link(
            &ra,
            "lan",
            "198.51.100.1/25",
            &ca,
            "eth0",
            "198.51.100.2/25",
        )?;
        link(
            &rb,
            "lan",
            "198.51.100.129/25",
            &cb,
            "eth0",
            "198.51.100.130/25",
        )?;
        for (n, via) in [
            (&ra, "203.0.113.1"),
            (&rb, "203.0.113.5"),
            (&ca, "198.51.100.1"),
            (&cb, "198.51.100.129"),
        ] {
            run(&["ip", "-n", n, "route", "add", "default", "via", via])?;
        }
        for n in [&pubns, &ra, &rb] {
            run(&[
                "ip",
                "netns",
                "exec",
                n,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])?;
        }
        for (router, nat) in [(&ra, a), (&rb, b)] {
            let nft = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", router.as_str(), "nft"];
                all.extend_from_slice(args);
                run(&all)
            };
            nft(&["add", "table", "ip", "nat"])?;
            nft(&[
                "add",
                "chain",
                "ip",
                "nat",
                "post",
                "{ type nat hook postrouting priority 100 ; }",
            ])?;
            let mut rule = vec![
                "add",
                "rule",
                "ip",
                "nat",
                "post",
                "oifname",
                "wan",
                "masquerade",
            ];
            if let Nat::Symmetric = nat {
                rule.push("random,fully-random");
            }
            nft(&rule)?;
            // As a home router's firewall: nothing new comes in from outside to the router
            // itself. (Without it, a stray datagram to a port with no mapping would leave a
            // conntrack entry behind that makes the NAT pick another port for the next mapping
            // to that peer, which no real router's firewall lets happen.)
            nft(&["add", "table", "inet", "fw"])?;
            nft(&[
                "add",
                "chain",
                "inet",
                "fw",
                "input",
                "{ type filter hook input priority 0 ; }",
            ])?;
            nft(&[
                "add", "rule", "inet", "fw", "input", "iifname", "wan", "ct", "state", "new",
                "drop",
            ])?;
        }
        Ok(topo)
    }

    fn ns(&self, which: &str) -> &str {
        let i = ["pub", "ra", "rb", "ca", "cb"]
            .iter()
            .position(|n| *n == which)
            .expect("a namespace of the topology");
        &self.names[i]
    }
}

/// The real binary in a namespace, driven through its stdin.
struct Program {
    _data: tempfile::TempDir,
    _child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Program {
    fn start(ns: &str, args: &[&str], user: Option<&str>) -> Program {
        let data = tempfile::tempdir().unwrap();
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_confab")])
            .args(args)
            .env("XDG_DATA_HOME", data.path())
            .env("XDG_STATE_HOME", data.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        match user {
            Some(user) => cmd.env("CONFAB_PASSWORD", password(user)),
            None => cmd.env("RUST_LOG", "warn"),
        };
        let mut child = cmd.spawn().expect("ip netns exec confab starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Program {
            _data: data,
            _child: child,
            stdin,
            stdout,
            seen: Vec::new(),
        }
    }

    fn client(ns: &str, user: &str) -> Program {
        Program::start(
            ns,
            &[
                "client",
                "--user",
                user,
                "--coordinator",
                "203.0.113.1:7500",
                "--register",
            ],
            Some(user),
        )
    }

    async fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    async fn wait_for(&mut self, needle: &str) -> String {
        output_line_with(&mut self.stdout, &mut self.seen, needle, STEP).await
    }

    /// Everything printed so far and within `quiet` more.
    async fn drain(&mut self, quiet: Duration) -> Vec<String> {
        let _ = tokio::time::timeout(quiet, async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                self.seen.push(line);
            }
        })
        .await;
        self.seen.clone()
    }
}

/// Alice behind NAT `a` and bob in namespace `bob_ns`, both in session `room`.
async fn two_behind_nats(topo: &Topology) -> (Program, Program, Program) {
    two_in(topo, "cb").await
}

/// The coordinator, in the public namespace, listening.
async fn coordinator(topo: &Topology) -> Program {
    let mut coordinator = Program::start(
        topo.ns("pub"),
        &[
            "coordinator",
            "--listen",
            "203.0.113.1:7500",
            "--db",
            ":memory:",
            "--fast-passwords",
        ],
        None,
    );
    // The coordinator logs to stderr; give it a moment to bind.
    let _ = coordinator.drain(Duration::from_millis(500)).await;
    coordinator
}

async fn two_in(topo: &Topology, bob_ns: &str) -> (Program, Program, Program) {
    let coordinator = coordinator(topo).await;
    let mut alice = Program::client(topo.ns("ca"), "alice");
    alice.wait_for("logged in as alice").await;
    alice.type_line("/start room").await;
    alice.wait_for("joined session room").await;
    let mut bob = Program::client(topo.ns(bob_ns), "bob");
    bob.wait_for("logged in as bob").await;
    bob.type_line("/join room").await;
    bob.wait_for("joined session room").await;
    alice.wait_for("bob joined").await;
    (coordinator, alice, bob)
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn behind_two_port_preserving_nats_private_messages_go_direct_after_a_connectivity_check() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED (needs root, ip and nft; CI runs it): {why}");
        return;
    }
    let topo = Topology::build("pp", Nat::PortPreserving, Nat::PortPreserving).unwrap();
    let (_coordinator, mut alice, mut bob) = two_behind_nats(&topo).await;
    // Each announces the address the coordinator saw: its router's public side.
    bob.type_line("/whois alice").await;
    let whois = bob.wait_for("alice: udp").await;
    assert!(whois.contains("203.0.113.2:"), "{whois}");
    alice.type_line("@bob hello across two NATs").await;
    let sent = alice.wait_for("you → bob").await;
    // Each router drops what the other peer sends before its own side has sent anything to it;
    // the connectivity check before the first message (alice's probe straight to bob and
    // through the server, bob's probe straight back) opens both, so even the first goes direct.
    assert!(!sent.contains("(relayed)"), "{sent}");
    bob.wait_for("alice → you: hello across two NATs").await;
    alice.type_line("@bob through the hole").await;
    let sent = alice.wait_for("through the hole").await;
    assert!(!sent.contains("(relayed)"), "{sent}");
    bob.type_line("@alice and back, direct").await;
    let back = bob.wait_for("you → alice").await;
    assert!(!back.contains("(relayed)"), "{back}");
    alice.wait_for("bob → you: and back, direct").await;
    alice.type_line("/whois bob").await;
    let how = alice.wait_for("bob: udp").await;
    assert!(how.contains("reached direct at 203.0.113.6:"), "{how}");
    // Group chat crosses too.
    bob.type_line("hi all").await;
    alice.wait_for("<bob> hi all").await;
    // Both routers forget their mappings mid-conversation (as when they time out): the next
    // message still arrives, relayed while the hole is punched again, and the one after goes
    // direct once more.
    for router in ["ra", "rb"] {
        run(&["ip", "netns", "exec", topo.ns(router), "conntrack", "-F"]).unwrap();
    }
    alice.type_line("@bob after the flush").await;
    alice.wait_for("after the flush").await;
    bob.wait_for("alice → you: after the flush").await;
    alice.type_line("@bob direct again").await;
    let sent = alice.wait_for("direct again").await;
    assert!(!sent.contains("(relayed)"), "{sent}");
    // Each message shown once.
    let seen = bob.drain(Duration::from_secs(2)).await;
    for text in [
        "hello across two NATs",
        "alice → you: through the hole",
        "alice → you: after the flush",
        "alice → you: direct again",
    ] {
        assert_eq!(count(&seen, text), 1, "{text}: {seen:#?}");
    }
}

#[tokio::test]
async fn behind_a_symmetric_nat_messages_arrive_relayed_in_order_exactly_once() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED (needs root, ip and nft; CI runs it): {why}");
        return;
    }
    let topo = Topology::build("sy", Nat::Symmetric, Nat::PortPreserving).unwrap();
    let (_coordinator, mut alice, mut bob) = two_behind_nats(&topo).await;
    // One after another, as a person types them: each is acknowledged before the next.
    for i in 1..=3 {
        alice.type_line(&format!("@bob symmetric {i}")).await;
        let sent = alice.wait_for(&format!("symmetric {i}")).await;
        assert!(sent.contains("you → bob (relayed)"), "{sent}");
    }
    let seen = bob.drain(Duration::from_secs(2)).await;
    let got: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("alice → you: symmetric"))
        .collect();
    assert_eq!(got.len(), 3, "{seen:#?}");
    for (i, line) in got.iter().enumerate() {
        assert!(line.ends_with(&format!("symmetric {}", i + 1)), "{got:#?}");
    }
}

#[tokio::test]
async fn two_clients_behind_the_same_nat_reach_each_other_directly_on_their_local_addresses() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED (needs root, ip and nft; CI runs it): {why}");
        return;
    }
    let topo = Topology::build("sn", Nat::PortPreserving, Nat::PortPreserving).unwrap();
    // Both behind router A: each announces A's public address, which A does not forward to
    // itself (no hairpin); their local addresses reach each other.
    let (_coordinator, mut alice, mut bob) = two_in(&topo, "ca").await;
    bob.type_line("/whois alice").await;
    let whois = bob.wait_for("alice: udp").await;
    assert!(whois.contains("udp 203.0.113.2:"), "{whois}");
    alice.type_line("@bob next door").await;
    let sent = alice.wait_for("next door").await;
    assert!(!sent.contains("(relayed)"), "{sent}");
    bob.wait_for("alice → you: next door").await;
    alice.type_line("/whois bob").await;
    let how = alice.wait_for("bob: udp").await;
    assert!(how.contains("reached direct at 198.51.100.2:"), "{how}");
}

/// Alice in session `room` behind router A, bob behind router B in no session at all: only
/// the coordinator knows them both.
async fn two_apart(topo: &Topology) -> (Program, Program, Program) {
    let coordinator = coordinator(topo).await;
    let mut alice = Program::client(topo.ns("ca"), "alice");
    alice.wait_for("logged in as alice").await;
    alice.type_line("/start room").await;
    alice.wait_for("joined session room").await;
    let mut bob = Program::client(topo.ns("cb"), "bob");
    bob.wait_for("logged in as bob").await;
    bob.type_line("/online").await;
    let online = bob.wait_for("online (").await;
    assert!(
        online.contains("alice") && online.contains("bob"),
        "{online}"
    );
    (coordinator, alice, bob)
}

#[tokio::test]
async fn outside_a_shared_session_the_coordinator_starts_the_check_and_messages_go_direct() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED (needs root, ip and nft; CI runs it): {why}");
        return;
    }
    let topo = Topology::build("op", Nat::PortPreserving, Nat::PortPreserving).unwrap();
    let (_coordinator, mut alice, mut bob) = two_apart(&topo).await;
    // Bob is in no session: alice finds him through the coordinator, whose relay carries the
    // check's probe; bob looks alice up, probes straight back, and even the first message goes
    // direct.
    alice.type_line("@bob found you outside").await;
    let sent = alice.wait_for("found you outside").await;
    assert!(sent.contains("you → bob:"), "{sent}");
    bob.wait_for("alice → you: found you outside").await;
    alice.type_line("@bob second, direct").await;
    let sent = alice.wait_for("second, direct").await;
    assert!(!sent.contains("(relayed)"), "{sent}");
    bob.type_line("@alice answered from nowhere").await;
    let back = bob.wait_for("answered from nowhere").await;
    assert!(!back.contains("(relayed)"), "{back}");
    alice.wait_for("bob → you: answered from nowhere").await;
    bob.type_line("/whois alice").await;
    let how = bob.wait_for("alice: udp").await;
    assert!(
        how.contains("online, not in your session")
            && how.contains("reached direct at 203.0.113.2:"),
        "{how}"
    );
}

#[tokio::test]
async fn outside_a_shared_session_behind_a_symmetric_nat_the_coordinator_relays_in_order_once() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED (needs root, ip and nft; CI runs it): {why}");
        return;
    }
    let topo = Topology::build("os", Nat::Symmetric, Nat::PortPreserving).unwrap();
    let (_coordinator, mut alice, mut bob) = two_apart(&topo).await;
    for i in 1..=3 {
        alice
            .type_line(&format!("@bob via the coordinator {i}"))
            .await;
        let sent = alice.wait_for(&format!("via the coordinator {i}")).await;
        assert!(sent.contains("you → bob (relayed)"), "{sent}");
    }
    bob.type_line("@alice and back").await;
    let back = bob.wait_for("and back").await;
    assert!(back.contains("you → alice (relayed)"), "{back}");
    alice.wait_for("bob → you: and back").await;
    let seen = bob.drain(Duration::from_secs(2)).await;
    let got: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("alice → you: via the coordinator"))
        .collect();
    assert_eq!(got.len(), 3, "{seen:#?}");
    for (i, line) in got.iter().enumerate() {
        assert!(
            line.ends_with(&format!("via the coordinator {}", i + 1)),
            "{got:#?}"
        );
    }
}
