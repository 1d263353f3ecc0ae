//! What the host allows the process: the open-files limit, which bounds `max_connections`;
//! and its name, which names a cluster node by default.

/// The host's name (from the kernel), or `unpoll` where it cannot be read.
pub fn name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unpoll".to_string())
}

/// The process's open-files limit (soft), read from `/proc/self/limits`; `None` where there is
/// no such file.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Descriptors kept out of `max_connections`: a tenth of the limit, and at least 320: upstream
/// connections (the proxy's and the poller's pools keep up to 128 idle ones each, and polls
/// and proxied requests hold more while in flight), the listeners, the admin listener's
/// clients, the configuration file and logs.
pub fn reserved(limit: u64) -> u64 {
    (limit / 10).max(320)
}

/// The most connections the proxy listener may hold with `limit` open files.
pub fn connection_ceiling(limit: u64) -> u64 {
    limit.saturating_sub(reserved(limit))
}

/// `server.max_connections` when the file does not set it: the ceiling, up to 100,000.
pub fn default_max_connections(limit: Option<u64>) -> usize {
    limit.map_or(100_000, |l| connection_ceiling(l).clamp(1, 100_000)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenth_is_kept_for_everything_else() {
        assert_eq!(connection_ceiling(20_000), 18_000);
        assert_eq!(connection_ceiling(1024), 704);
        assert_eq!(connection_ceiling(300), 0);
        assert_eq!(default_max_connections(Some(300)), 1);
        assert_eq!(default_max_connections(Some(1 << 20)), 100_000);
        assert_eq!(default_max_connections(None), 100_000);
        assert!(open_files_limit().is_some_and(|l| l > 0), "Linux has /proc/self/limits");
    }
}
