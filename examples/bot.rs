//! A small bot built on confab's client API.
//!
//! It logs in as `bot` (registering first if the name is free), joins a session (starting it if
//! there is none of that name), answers the private message `ping` with a private `pong`, and
//! answers group lines starting with `!time` with the time.
//!
//! ```text
//! cargo run --release -- coordinator                      # in one terminal
//! cargo run --example bot -- --coordinator 127.0.0.1:7500 --session lobby
//! ```
//!
//! Then, from a terminal client in the same session, type `@bot ping` or `!time`.
//! The password comes from `CONFAB_PASSWORD`, or is a fixed one good enough for an example.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use confab::client::{Client, ClientConfig, ClientError, Event};
use confab::protocol::ErrorCode;

/// Password used when `CONFAB_PASSWORD` is not set. Fine for a demo; set your own otherwise.
const DEMO_PASSWORD: &str = "bot-demo-password";

/// Answers `@bot ping` and `!time` in one confab session.
#[derive(Parser)]
struct Args {
    /// The coordinator's UDP address.
    #[arg(long, default_value = "127.0.0.1:7500")]
    coordinator: SocketAddr,
    /// Session to join (by name, id or id prefix); a name that does not exist yet is created.
    #[arg(long, default_value = "lobby")]
    session: String,
    /// The bot's user name.
    #[arg(long, default_value = "bot")]
    user: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let password = std::env::var("CONFAB_PASSWORD").unwrap_or_else(|_| DEMO_PASSWORD.into());
    let (client, mut events) =
        Client::start(ClientConfig::new(&args.user, args.coordinator)).await?;

    // Register once; on later runs the name is taken by ourselves, which is fine.
    match client.register(&password).await {
        Ok(user) => println!("* registered {user}"),
        Err(ClientError::Refused(e)) if e.code == ErrorCode::NameTaken => {}
        Err(e) => return Err(e).context("cannot register"),
    }
    let me = client.login(&password).await.context("cannot log in")?;

    let joined = match client.join(&args.session).await {
        Ok(joined) => joined,
        Err(ClientError::Refused(e)) if e.code == ErrorCode::SessionNotFound => {
            client.start_session(Some(&args.session)).await?
        }
        Err(e) => return Err(e).context("cannot join"),
    };
    println!(
        "* {me} joined {} ({}) with {} member(s); private messages reach me at {}",
        args.session,
        joined.session.id,
        joined.members.len(),
        client.endpoint()
    );

    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(event) = event else { break };
        match event {
            Event::Private { from, text, .. } if text.trim().eq_ignore_ascii_case("ping") => {
                println!("* {from} pinged me privately; answering pong");
                // A private message waits for its acknowledgement (with retries), so it runs on
                // its own task and the bot keeps reading events meanwhile.
                let client = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = client.dm(&from, "pong").await {
                        println!("! pong to {from}: {e}");
                    }
                });
            }
            Event::Message(line) if line.text.starts_with("!time") && line.from != me => {
                let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
                println!("* {} asked for the time (seq {})", line.from, line.seq);
                if let Err(e) = client.say(&format!("{}: it is {now}", line.from)).await {
                    println!("! cannot answer: {e}");
                }
            }
            Event::Presence { joined, left, .. } => {
                for m in joined {
                    println!("* {} joined", m.user);
                }
                for d in left {
                    println!("* {} left", d.user);
                }
            }
            Event::ServerError(e) => println!("! server: {e}"),
            Event::Disconnected {
                reason, retrying, ..
            } => {
                println!("! disconnected: {reason}");
                if !retrying {
                    break;
                }
            }
            Event::Reconnected { .. } => println!("* reconnected"),
            Event::Closed { by, .. } => {
                println!(
                    "* the session was closed by {}",
                    by.as_deref().unwrap_or("its creator")
                );
                break;
            }
            _ => {}
        }
    }
    client.leave().await;
    println!("* bye");
    Ok(())
}
