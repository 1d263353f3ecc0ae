//! Live reload: the configuration file is watched, with the files it names for upstream TLS
//! (and reloaded on SIGHUP), parsed and validated off to the side, and swapped in atomically;
//! anything wrong keeps the running configuration.

use crate::config::{parse_config, Config, ConfigErrors, ServerSettings};
use crate::metrics::Metrics;
use crate::route_table::RouteTable;
use crate::topic::hub::Hub;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// How often the file is looked at.
pub const WATCH_PERIOD: Duration = Duration::from_millis(250);
/// How long a changed file must stay the same before it is loaded, so that an editor that
/// writes in several steps is read once it has finished.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Why a reload did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("{0}; restart unpoll to change it (nothing in this file was applied)")]
    NeedsRestart(String),
    #[error("validating the file failed inside the proxy (a bug; see the log above)")]
    Failed,
}

/// Listener addresses, the admin address, threads and the grace period are fixed when the
/// process starts. Returns what differs, if anything.
pub fn restart_needed(running: &ServerSettings, new: &ServerSettings) -> Option<String> {
    let mut changed = Vec::new();
    if running.listen != new.listen {
        changed.push("server.listen");
    }
    if running.admin != new.admin {
        changed.push("server.admin");
    }
    if running.admin_max_connections != new.admin_max_connections {
        changed.push("server.admin_max_connections");
    }
    if running.threads != new.threads {
        changed.push("server.threads");
    }
    if running.diff_threads != new.diff_threads {
        changed.push("server.diff_threads");
    }
    if running.diff_inline_max != new.diff_inline_max {
        changed.push("server.diff_inline_max");
    }
    if running.poll_idle_connections != new.poll_idle_connections {
        changed.push("server.poll_idle_connections");
    }
    if running.grace_period != new.grace_period {
        changed.push("server.grace_period");
    }
    if running.upgrade_sock != new.upgrade_sock {
        changed.push("server.upgrade_sock");
    }
    // The TLS listeners' addresses and names; their certificates and keys reload.
    let listeners = |s: &ServerSettings| -> Vec<(String, Vec<Vec<String>>)> {
        s.tls.iter().map(|t| (t.listen.clone(), t.sni.iter().map(|e| e.names.clone()).collect())).collect()
    };
    if listeners(running) != listeners(new) {
        changed.push("server.tls (listen addresses or sni names)");
    }
    if running.h2c != new.h2c {
        changed.push("server.h2c");
    }
    if running.h2_max_streams != new.h2_max_streams {
        changed.push("server.h2_max_streams");
    }
    if running.h2_idle_timeout != new.h2_idle_timeout {
        changed.push("server.h2_idle_timeout");
    }
    (!changed.is_empty()).then(|| format!("{} changed", changed.join(", ")))
}

/// Watches the configuration file and applies valid changes.
pub struct Reloader {
    pub path: PathBuf,
    /// Watch the file (else reload on SIGHUP only).
    pub watch: bool,
    pub table: Arc<ArcSwap<RouteTable>>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    fn read(&self) -> Result<String, ReloadError> {
        std::fs::read_to_string(&self.path)
            .map_err(|source| ReloadError::Read { path: self.path.display().to_string(), source })
    }

    /// What a change of is a reason to reload: the file, and the files of the running
    /// configuration's upstream TLS settings (a renewed certificate or CA is read again).
    fn snapshot(&self) -> Option<(String, Vec<Option<Vec<u8>>>)> {
        let text = self.read().ok()?;
        let table = self.table.load();
        let files =
            table
                .upstreams()
                .iter()
                .filter_map(|u| u.settings.tls.as_ref())
                .flat_map(|t| [&t.ca, &t.client_cert, &t.client_key])
                .flatten()
                // The certificates and keys served to clients, renewed in place (certbot,
                // cert-manager): a change reloads, and new handshakes get the new pair.
                .chain(
                    table.server.tls.iter().flat_map(|t| {
                        [&t.cert, &t.key].into_iter().chain(t.sni.iter().flat_map(|e| [&e.cert, &e.key]))
                    }),
                )
                // The admin token, replaced in place.
                .chain(table.server.admin_token_file.as_ref())
                .map(|path| std::fs::read(path).ok())
                .collect();
        Some((text, files))
    }

    /// Reads, parses and validates the file, resolving its names on a blocking thread (DNS
    /// never runs on the async workers).
    async fn load(&self) -> Result<Config, ReloadError> {
        let text = self.read()?;
        match tokio::task::spawn_blocking(move || parse_config(&text)).await {
            Ok(parsed) => parsed.map_err(ReloadError::Invalid),
            Err(_) => Err(ReloadError::Failed),
        }
    }

    /// Applies a validated configuration, unless it changes what needs a restart; on any
    /// problem the running configuration stays.
    pub fn apply(&self, config: Config) -> Result<(), ReloadError> {
        let running = self.table.load();
        if let Some(what) = restart_needed(&running.server, &config.server) {
            return Err(ReloadError::NeedsRestart(what));
        }
        // The Redis connections and this node's leases are made once, at start.
        if running.cluster != config.cluster {
            return Err(ReloadError::NeedsRestart("cluster changed".to_string()));
        }
        let next = Arc::new(RouteTable::new(&config, &self.metrics, Some(&running)));
        self.metrics.prepare(&config);
        self.table.store(next.clone());
        crate::redact::install(&config);
        self.hub.reconcile(&next);
        Ok(())
    }

    async fn reload(&self, why: &str) {
        let result = match self.load().await {
            Ok(config) => self.apply(config),
            Err(e) => Err(e),
        };
        let label = match &result {
            Ok(()) => {
                self.metrics.generation.inc();
                log::info!("configuration reloaded ({why}): generation {}", self.metrics.generation.get());
                "applied"
            }
            Err(ReloadError::NeedsRestart(_)) => "rejected",
            Err(_) => "invalid",
        };
        if let Err(e) = result {
            log::error!("configuration reload ({why}) refused, the running configuration stays: {e}");
        }
        self.metrics.reloads.with_label_values(&[label]).inc();
        self.metrics.reload_ok.set(i64::from(label == "applied"));
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}; the configuration will not reload on it");
                return;
            }
        };
        let mut seen = self.snapshot();
        let mut tick = tokio::time::interval(WATCH_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangup.recv() => {
                    seen = self.snapshot();
                    self.reload("SIGHUP").await;
                }
                _ = tick.tick(), if self.watch => {
                    let now = self.snapshot();
                    if now == seen {
                        continue;
                    }
                    // Changed: wait until it stays the same for SETTLE, then load it once.
                    let mut settled = now;
                    loop {
                        tokio::time::sleep(SETTLE).await;
                        let again = self.snapshot();
                        if again == settled {
                            break;
                        }
                        settled = again;
                    }
                    self.reload("file changed").await;
                    // The text that was settled on (a save landing during the reload is still
                    // a change, seen at the next tick), with the files of the configuration
                    // now in force (it may name other files).
                    seen = match (self.snapshot(), settled) {
                        (Some((_, files)), Some((text, _))) => Some((text, files)),
                        (fresh, settled) => fresh.or(settled),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_settings_need_a_restart() {
        let running = ServerSettings::default();
        assert_eq!(restart_needed(&running, &running.clone()), None);
        let moved = ServerSettings { listen: vec!["127.0.0.1:1".into()], threads: 9, ..running.clone() };
        assert_eq!(restart_needed(&running, &moved).as_deref(), Some("server.listen, server.threads changed"));
        let live = ServerSettings { write_timeout: Duration::from_secs(1), ..running.clone() };
        assert_eq!(restart_needed(&running, &live), None, "write_timeout applies live");
    }
}
