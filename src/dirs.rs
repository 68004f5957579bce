//! Where confab keeps its files, by the XDG base directory rules, so the coordinator's database,
//! the client's known keys and its input history land where a person looks for them.

use std::path::PathBuf;

/// `$XDG_DATA_HOME/confab`, else `~/.local/share/confab`: what must not be lost (the database,
/// the keys met).
pub fn data_dir() -> Option<PathBuf> {
    base("XDG_DATA_HOME", ".local/share")
}

/// `$XDG_STATE_HOME/confab`, else `~/.local/state/confab`: what is nice to keep (input history).
pub fn state_dir() -> Option<PathBuf> {
    base("XDG_STATE_HOME", ".local/state")
}

/// The folder `var` names, else `fallback` under the home folder; `None` when neither is known.
fn base(var: &str, fallback: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(var)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(fallback))
        })?;
    Some(dir.join("confab"))
}
