//! The process's own figures for `/metrics`, read from `/proc` when scraped: the standard
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_max_fds` and `process_start_time_seconds`, and `unpoll_build_info{version,commit}`.

use prometheus::{Counter, Gauge, IntGauge, IntGaugeVec, Opts, Registry};
use std::sync::Mutex;

pub struct Process {
    cpu: Counter,
    /// The CPU time already counted, to add only what was used since.
    counted: Mutex<f64>,
    resident: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: Gauge,
}

impl Process {
    pub fn register(registry: &Registry) -> Process {
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("unique metric");
        let cpu = Counter::new("process_cpu_seconds_total", "User and system CPU time spent, in seconds")
            .expect("valid metric");
        let resident =
            IntGauge::new("process_resident_memory_bytes", "Resident memory, in bytes").expect("valid metric");
        let open_fds = IntGauge::new("process_open_fds", "Open file descriptors").expect("valid metric");
        let max_fds = IntGauge::new("process_max_fds", "The open-files limit").expect("valid metric");
        let start_time = Gauge::new("process_start_time_seconds", "Start time, in seconds since the Unix epoch")
            .expect("valid metric");
        let build = IntGaugeVec::new(
            Opts::new("unpoll_build_info", "1, labelled with the version and commit"),
            &["version", "commit"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("UNPOLL_COMMIT")]).set(1);
        for c in [
            Box::new(cpu.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(resident.clone()),
            Box::new(open_fds.clone()),
            Box::new(max_fds.clone()),
            Box::new(start_time.clone()),
            Box::new(build),
        ] {
            reg(c);
        }
        let p = Process { cpu, counted: Mutex::new(0.0), resident, open_fds, max_fds, start_time };
        if let Some(start) = start_time_seconds() {
            p.start_time.set(start);
        }
        p.refresh();
        p
    }

    /// Reads the figures again (at every scrape).
    pub fn refresh(&self) {
        if let Some((cpu, resident)) = stat() {
            let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
            if cpu > *counted {
                self.cpu.inc_by(cpu - *counted);
                *counted = cpu;
            }
            self.resident.set(resident);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Some(limit) = crate::config::host::open_files_limit() {
            self.max_fds.set(limit as i64);
        }
    }
}

/// Clock ticks per second of `/proc/self/stat`'s times (Linux's USER_HZ).
const TICKS: f64 = 100.0;
/// Bytes per page of its resident set.
const PAGE: i64 = 4096;

/// CPU seconds and resident bytes, from `/proc/self/stat`.
fn stat() -> Option<(f64, i64)> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    let rss: i64 = fields.get(21)?.parse().ok()?;
    Some(((utime + stime) / TICKS, rss * PAGE))
}

/// When the process started: the boot time plus its start, in ticks after boot.
fn start_time_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let started: f64 = fields.get(19)?.parse().ok()?;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + started / TICKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_are_read() {
        let registry = Registry::new();
        let p = Process::register(&registry);
        p.refresh();
        assert!(p.resident.get() > 1 << 20, "{}", p.resident.get());
        assert!(p.open_fds.get() >= 3);
        assert!(p.start_time.get() > 1.7e9);
        let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_string()).collect();
        assert!(names.contains(&"unpoll_build_info".to_string()), "{names:?}");
    }
}
