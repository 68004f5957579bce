//! The user's identity keys: one X25519 key pair per user and coordinator, made the first time
//! that user runs the terminal client against that coordinator and kept for good, since peers
//! pin it and a new one makes them warn.
//!
//! One file, `$XDG_DATA_HOME/confab/identities` (else `~/.local/share/confab/identities`),
//! readable by its owner only: `COORDINATOR USER PRIVATE-KEY` per line, the key in standard
//! base64. Losing it costs nothing but a warning at each peer; anyone who copies it can read
//! that user's private messages.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use confab::identity::{Identity, fingerprint, parse_fingerprint};

/// The file, where the environment names a data folder.
pub fn file() -> Option<PathBuf> {
    Some(confab::dirs::data_dir()?.join("identities"))
}

/// The private key of `user` at `coordinator`, made and saved if there is none yet. Without a
/// file (no data folder) a key for this run only.
pub fn load_or_make(coordinator: SocketAddr, user: &str) -> std::io::Result<[u8; 32]> {
    match file() {
        Some(file) => load_or_make_in(&file, coordinator, user),
        None => Ok(Identity::generate().secret()),
    }
}

fn load_or_make_in(file: &Path, coordinator: SocketAddr, user: &str) -> std::io::Result<[u8; 32]> {
    let (here, name) = (coordinator.to_string(), user.to_lowercase());
    let mut lines: Vec<String> = match std::fs::read_to_string(file) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    for line in &lines {
        let mut words = line.split_whitespace();
        if words.next() == Some(here.as_str())
            && words.next() == Some(name.as_str())
            && let Some(Ok(secret)) = words.next().map(parse_fingerprint)
        {
            return Ok(secret);
        }
    }
    let made = Identity::generate();
    lines.push(format!("{here} {name} {}", fingerprint(&made.secret())));
    confab::private_file::write_lines(file, &lines)?;
    Ok(made.secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_per_user_and_coordinator_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("confab/identities");
        let here: SocketAddr = "127.0.0.1:7500".parse().unwrap();
        let alice = load_or_make_in(&file, here, "Alice").unwrap();
        assert_eq!(load_or_make_in(&file, here, "alice").unwrap(), alice);
        let bob = load_or_make_in(&file, here, "bob").unwrap();
        let elsewhere = load_or_make_in(&file, "127.0.0.1:7501".parse().unwrap(), "alice").unwrap();
        assert!(alice != bob && alice != elsewhere);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
