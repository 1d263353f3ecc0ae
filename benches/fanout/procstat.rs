//! What the server costs, read from /proc: CPU time of all its threads and its proportional
//! memory (Pss, so nginx's worker processes are not counted twice for shared pages).

/// CPU seconds used so far by these processes (all threads), or by this process when empty.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    if pids.is_empty() {
        return process_cpu("self");
    }
    pids.iter().map(|p| process_cpu(&p.to_string())).sum()
}

fn process_cpu(pid: &str) -> f64 {
    // schedstat has nanoseconds on a CPU per thread; stat's utime + stime only 10 ms ticks.
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total as f64 / 1e9
}

/// Proportional set size in KiB, summed over the processes; None if one can't be read.
pub fn pss_kib(pids: &[u32]) -> Option<f64> {
    sum_kib(pids, "smaps_rollup", "Pss:")
}

/// Resident set size in KiB, summed over the processes (pages shared between nginx's
/// processes are counted in each).
pub fn rss_kib(pids: &[u32]) -> Option<f64> {
    sum_kib(pids, "status", "VmRSS:")
}

fn sum_kib(pids: &[u32], file: &str, field: &str) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        let line = text.lines().find(|l| l.starts_with(field))?;
        total += line.split_whitespace().nth(1)?.parse::<f64>().ok()?;
    }
    Some(total)
}
