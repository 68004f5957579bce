//! Files only their owner may read: the input history, the known coordinator and peer keys and
//! the identity key say who someone talks to, and where (and the last is a secret).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `lines` as the whole file, mode 0600 (its folder, if made, 0700), whatever the umask.
pub fn write_lines(path: &Path, lines: &[impl AsRef<str>]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // A file made by an older version, or by hand, may be more open than it should be.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    for line in lines {
        writeln!(file, "{}", line.as_ref())?;
    }
    file.flush()
}
