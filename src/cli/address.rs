//! The coordinator address a person types, in any of the forms they would expect to work.

use std::net::SocketAddr;

use anyhow::Context;

/// The coordinator's port when none is given.
const COORDINATOR_PORT: u16 = 7500;

/// `host:port`, `host`, `ip`, `[v6]:port` or `v6` to one address.
pub async fn resolve(coordinator: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = coordinator.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = coordinator
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(SocketAddr::new(ip, COORDINATOR_PORT));
    }
    let with_port = match coordinator.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => coordinator.to_string(),
        _ => format!("{coordinator}:{COORDINATOR_PORT}"),
    };
    let found: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve the coordinator address {coordinator}"))?
        .collect();
    // IPv4 first: the coordinator listens on 127.0.0.1 by default, and `localhost` often
    // resolves to ::1 as well.
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .with_context(|| format!("the coordinator address {coordinator} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_written_form_names_one_address() {
        for (written, expected) in [
            ("127.0.0.1:9000", "127.0.0.1:9000"),
            ("127.0.0.1", "127.0.0.1:7500"),
            ("[::1]:9000", "[::1]:9000"),
            ("::1", "[::1]:7500"),
            ("[::1]", "[::1]:7500"),
            ("localhost:9000", "127.0.0.1:9000"),
            ("localhost", "127.0.0.1:7500"),
        ] {
            let got = resolve(written).await.unwrap();
            assert_eq!(got, expected.parse::<SocketAddr>().unwrap(), "{written}");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_nowhere_is_a_clear_error() {
        let e = resolve("no-such-host.invalid").await.unwrap_err();
        assert!(
            format!("{e:#}")
                .contains("cannot resolve the coordinator address no-such-host.invalid"),
            "{e:#}"
        );
    }
}
