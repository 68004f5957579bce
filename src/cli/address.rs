//! The coordinator address a person types, in any of the forms they would expect to work.

use std::net::SocketAddr;

use anyhow::Context;

/// The coordinator's port when none is given.
const COORDINATOR_PORT: u16 = 7500;

/// A comma-separated list of coordinators (a group sharing one database), each in any form
/// [`resolve`] takes, to every address they name: a host name with several addresses gives
/// them all (IPv4 first), the order written kept, each address once.
pub async fn resolve_all(coordinators: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let mut all = Vec::new();
    for one in coordinators
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        for addr in lookup(one).await? {
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
    }
    anyhow::ensure!(
        !all.is_empty(),
        "no coordinator address in {coordinators:?}"
    );
    Ok(all)
}

/// Every address `coordinator` (`host:port`, `host`, `ip`, `[v6]:port` or `v6`) names, IPv4
/// first: the coordinator listens on 127.0.0.1 by default, and `localhost` often resolves to
/// ::1 as well.
async fn lookup(coordinator: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(addr) = coordinator.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if let Ok(ip) = coordinator
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(vec![SocketAddr::new(ip, COORDINATOR_PORT)]);
    }
    let with_port = match coordinator.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => coordinator.to_string(),
        _ => format!("{coordinator}:{COORDINATOR_PORT}"),
    };
    let mut found: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve the coordinator address {coordinator}"))?
        .collect();
    found.sort_by_key(|a| !a.is_ipv4()); // stable: the resolver's order within each family
    found.dedup();
    anyhow::ensure!(
        !found.is_empty(),
        "the coordinator address {coordinator} resolves to nothing"
    );
    Ok(found)
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
            let got = lookup(written).await.unwrap()[0];
            assert_eq!(got, expected.parse::<SocketAddr>().unwrap(), "{written}");
        }
    }

    #[tokio::test]
    async fn a_list_names_a_group_in_the_order_written() {
        let got = resolve_all("127.0.0.1:9000, 127.0.0.2 ,127.0.0.1:9000")
            .await
            .unwrap();
        let want: Vec<SocketAddr> = ["127.0.0.1:9000", "127.0.0.2:7500"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert!(resolve_all(" , ").await.is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_nowhere_is_a_clear_error() {
        let e = resolve_all("no-such-host.invalid").await.unwrap_err();
        assert!(
            format!("{e:#}")
                .contains("cannot resolve the coordinator address no-such-host.invalid"),
            "{e:#}"
        );
    }
}
