//! File descriptors: every session server holds a listener and every member a socket, so the
//! process's open-file limit is the real limit on sessions and members.

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
///
/// The usual soft limit (1024) is far below what a coordinator with thousands of members needs,
/// while the hard limit is usually much higher and ours to take. Children inherit the raised
/// limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// Descriptors open now and the soft limit, where the system tells (Linux `/proc`); `None`
/// elsewhere, and then no reserve is kept.
pub(super) fn usage() -> Option<(usize, usize)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let limit = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
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
