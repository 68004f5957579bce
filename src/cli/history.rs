//! The input history file: what a person typed, kept across restarts.
//!
//! One file per user, `$XDG_STATE_HOME/confab/history-<user>` (else
//! `~/.local/state/confab/history-<user>`), readable by its owner only, one line per entry,
//! cut to the newest entries at each start. Private messages are never written: the file keeps
//! commands and group lines, which the session keeps anyway. Passwords never reach the line
//! editor, so they cannot reach the file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Where `user`'s history lives, if a home or state directory is known.
pub fn path(user: &str) -> Option<PathBuf> {
    Some(confab::dirs::state_dir()?.join(format!("history-{}", user.to_lowercase())))
}

/// Whether a typed line may be kept: not a private message.
pub fn keep(line: &str) -> bool {
    let line = line.trim_start();
    !(line.starts_with('@') || line.starts_with("/msg ") || line.trim().is_empty())
}

/// Reads the newest `limit` entries and rewrites the file with just those (mode 0600), so it
/// stays bounded.
pub fn load(path: &PathBuf, limit: usize) -> std::io::Result<Vec<String>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut lines: Vec<String> = text.lines().filter(|l| keep(l)).map(String::from).collect();
    let extra = lines.len().saturating_sub(limit);
    lines.drain(..extra);
    confab::private_file::write_lines(path, &lines)?;
    Ok(lines)
}

/// Adds one entry at the end of the file.
pub fn append(path: &PathBuf, line: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_messages_are_never_kept() {
        assert!(!keep("@bob secret"));
        assert!(!keep("/msg bob secret"));
        assert!(keep("/join lobby"));
        assert!(keep("hello all"));
    }

    #[test]
    fn the_file_is_private_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confab/history-alice");
        assert!(load(&path, 3).unwrap().is_empty());
        for l in ["a", "@bob x", "b", "c", "d"] {
            if keep(l) {
                append(&path, l).unwrap();
            }
        }
        assert_eq!(load(&path, 3).unwrap(), ["b", "c", "d"]);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\nc\nd\n");
    }
}
