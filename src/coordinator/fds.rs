//! File descriptors: every session server holds a listener and every member a socket, so the
//! process's open-file limit is the real limit on sessions and members.

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
///
/// The usual soft limit (1024) is far below what a coordinator with thousands of members needs,
/// while the hard limit is usually much higher and ours to take. Children inherit the raised
/// limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// Descriptors open now and the soft limit, where the system tells (Linux `/proc`); `None`
/// elsewhere, and then no reserve is kept.
pub(super) fn usage() -> Option<(usize, usize)> {
    let (soft, _) = rlimit::Resource::NOFILE.get().ok()?;
    let limit = usize::try_from(soft).unwrap_or(usize::MAX);
    // The directory being read holds one descriptor of its own while it is counted.
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .count()
        .saturating_sub(1);
    Some((open, limit))
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_sees_open_descriptors_under_the_limit() {
        if let Some((open, limit)) = super::usage() {
            assert!(open >= 3 && open < limit, "{open} of {limit}");
        }
    }
}
