//! The coordinators this person has met, and their keys: trust on first use, as SSH's
//! `known_hosts`.
//!
//! One file, `$XDG_DATA_HOME/confab/known_coordinators` (else
//! `~/.local/share/confab/known_coordinators`), readable by its owner only, one line per
//! coordinator address: `<address> <key in base64>`. The first time an address is met its key is
//! written down; from then on a different key at that address stops the client before it sends
//! a password, naming both keys and this file. `--coordinator-key` pins the key up front.

use std::fs;
use std::path::{Path, PathBuf};

use confab::identity::fingerprint;

/// Where the known keys live, if a home or data directory is known.
pub fn path() -> Option<PathBuf> {
    Some(confab::dirs::data_dir()?.join("known_coordinators"))
}

/// How a coordinator's key was found.
#[derive(Debug, PartialEq, Eq)]
pub enum Trust {
    /// The key on file for this address.
    Known,
    /// First meeting: the key is now on file.
    New,
    /// The key given with `--coordinator-key`, now on file (replacing any other).
    Pinned,
}

/// Why the client must not go on.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The coordinator at this address has another key than the one on file or pinned.
    #[error(
        "the coordinator at {addr} has changed its key!\n  expected: {expected} ({from})\n  \
         got:      {got}\nSomeone may be impersonating it, or it was set up again with a new \
         database. If you know the new key is right, remove the line for {addr} from {file} \
         (or run with --coordinator-key {got})."
    )]
    Changed {
        addr: String,
        expected: String,
        got: String,
        /// Where the expected key came from.
        from: String,
        file: String,
    },
    /// The file could not be read or written.
    #[error("{}: {source}", file.display())]
    File {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// Checks `key`, the key the coordinator at `addr` says it has, against `pinned` (from
/// `--coordinator-key`) and the file, and writes it down when it is new or pinned.
pub fn check(
    file: &Path,
    addr: &str,
    key: &[u8; 32],
    pinned: Option<&[u8; 32]>,
) -> Result<Trust, KeyError> {
    let got = fingerprint(key);
    let io = |source| KeyError::File {
        file: file.to_path_buf(),
        source,
    };
    let changed = |expected: String, from: String| KeyError::Changed {
        addr: addr.to_string(),
        expected,
        got: got.clone(),
        from,
        file: file.display().to_string(),
    };
    if let Some(pin) = pinned
        && pin != key
    {
        return Err(changed(fingerprint(pin), "--coordinator-key".into()));
    }
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let on_file = text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(addr)).then(|| words.next().unwrap_or("").to_string())
    });
    match on_file {
        Some(known) if known == got => Ok(Trust::Known),
        Some(known) if pinned.is_none() => {
            Err(changed(known, format!("on file in {}", file.display())))
        }
        _ => {
            // New, or pinned over another: the file gets this address's key, and keeps the rest.
            let mut kept: Vec<&str> = text
                .lines()
                .filter(|l| l.split_whitespace().next() != Some(addr))
                .collect();
            let line = format!("{addr} {got}");
            kept.push(&line);
            confab::private_file::write_lines(file, &kept).map_err(io)?;
            Ok(if pinned.is_some() {
                Trust::Pinned
            } else {
                Trust::New
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_use_is_remembered_the_same_key_passes_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("confab/known_coordinators");
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(
            check(&file, "127.0.0.1:7500", &a, None).unwrap(),
            Trust::New
        );
        assert_eq!(
            check(&file, "127.0.0.1:7500", &a, None).unwrap(),
            Trust::Known
        );
        assert_eq!(
            check(&file, "127.0.0.1:7600", &b, None).unwrap(),
            Trust::New
        );
        let err = check(&file, "127.0.0.1:7500", &b, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&fingerprint(&a)) && err.contains(&fingerprint(&b)),
            "{err}"
        );
        assert!(err.contains(&file.display().to_string()), "{err}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().unwrap()), 0o700);
    }

    #[test]
    fn a_pinned_key_must_match_and_then_replaces_the_one_on_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known");
        let (a, b) = ([1u8; 32], [2u8; 32]);
        check(&file, "h:1", &a, None).unwrap();
        check(&file, "h:2", &a, None).unwrap();
        assert!(
            check(&file, "h:1", &a, Some(&b)).is_err(),
            "the pin is not what it says"
        );
        assert_eq!(check(&file, "h:1", &b, Some(&b)).unwrap(), Trust::Pinned);
        assert_eq!(check(&file, "h:1", &b, None).unwrap(), Trust::Known);
        assert_eq!(
            check(&file, "h:2", &a, None).unwrap(),
            Trust::Known,
            "the others stay"
        );
    }
}
