//! Cluster mode (`cluster:`): several unpoll instances, one upstream poll per topic among
//! them all, through Redis. Per topic one node holds a lease and polls; it publishes each
//! version (fenced by its lease) to Redis, which keeps the topic's document, epoch, version
//! and history; every node with subscribers of the topic fans the events out locally. While
//! Redis is away, every node polls its own topics. See docs/cluster.md.
//!
//! - [`seal`]: the cluster's secret: topic ids (keyed hashes, never a path or credential) and
//!   the tags that authenticate every message and stored entry;
//! - [`message`]: key names and the channel's messages;
//! - [`scripts`]: the Lua scripts, each one atomic step;
//! - [`inbox`]: the subscription connection, and handing each message to its topic;
//! - [`feed`]: a topic's life as leader, follower, or alone;
//! - [`gate`]: what lets the leader publish (its lease), and the keeper that renews it;
//! - [`relay`]: refreshes (writes, hints) carried to the node that polls each topic.

pub mod feed;
pub mod gate;
pub mod inbox;
pub mod message;
pub mod metrics;
pub mod relay;
pub mod scripts;
pub mod seal;

use crate::config::ClusterSettings;
use metrics::ClusterMetrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, ScriptInvocation};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// A Redis call that failed, timed out, or could not be made (not connected yet).
#[derive(Debug, Clone, Copy)]
pub struct Down;

/// This node's part of the cluster: its Redis connections and whether Redis answers.
pub struct Cluster {
    pub settings: ClusterSettings,
    pub metrics: ClusterMetrics,
    /// The secret every node shares (`cluster.secret_file`).
    pub seal: seal::Seal,
    /// Commands (made once the cluster service runs, see [`Cluster::connect`]).
    commands: OnceLock<ConnectionManager>,
    pub inbox: inbox::Inbox,
    /// Bounds calls in flight (`cluster.max_in_flight`).
    in_flight: Semaphore,
    /// Whether Redis accepts writes: set by [`Cluster::watch`] only (a write succeeded, and
    /// the backoff passed), cleared by any call that fails.
    up: AtomicBool,
    /// Bumped on every change of `up`: wakes topics polling alone when Redis comes back.
    changed: watch::Sender<u64>,
    /// Set once the connections are made.
    connected: watch::Sender<bool>,
    /// When an unauthenticated read was last logged.
    warned: std::sync::Mutex<Option<Instant>>,
    /// Outages and recoveries, for the backoff.
    health: std::sync::Mutex<Health>,
}

impl Cluster {
    pub fn new(settings: ClusterSettings, registry: &prometheus::Registry) -> Arc<Cluster> {
        let metrics = ClusterMetrics::new(registry);
        metrics.node.with_label_values(&[&settings.node]).set(1);
        Arc::new(Cluster {
            seal: seal::Seal::new(settings.secret.0.as_bytes()),
            in_flight: Semaphore::new(settings.max_in_flight),
            inbox: inbox::Inbox::new(settings.inbox, metrics.dropped.clone()),
            settings,
            metrics,
            commands: OnceLock::new(),
            up: AtomicBool::new(false),
            changed: watch::Sender::new(0),
            connected: watch::Sender::new(false),
            warned: std::sync::Mutex::new(None),
            health: std::sync::Mutex::default(),
        })
    }

    /// The Redis client for `cluster.redis`, with the password of `password_file`.
    fn client(&self) -> Result<redis::Client, RedisError> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(self.settings.redis.0.as_str())?;
        let mut redis = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        if let Some(password) = &self.settings.password {
            redis = redis.set_password(&password.0);
        }
        info = info.set_redis_settings(redis);
        redis::Client::open(info)
    }

    /// Makes the connections (lazily: Redis may be down at start). Runs in the cluster
    /// service's runtime, which keeps them.
    pub fn connect(self: &Arc<Self>) -> Result<(), RedisError> {
        if self.settings.redis.0.starts_with("rediss://") {
            // rustls needs its cryptography chosen once per process; ring is what unpoll builds.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = self.client()?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.settings.timeout))
            .set_connection_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        let _ = self.commands.set(commands);
        self.inbox.connect(client, config)?;
        self.connected.send_replace(true);
        Ok(())
    }

    /// Waits (at most `timeout`) for the connections to be made at start.
    pub async fn connected(&self) {
        let mut rx = self.connected.subscribe();
        let _ = tokio::time::timeout(self.settings.timeout, rx.wait_for(|c| *c)).await;
    }

    /// The Redis names of the topic `key`.
    pub fn keys(&self, key: &crate::topic::key::TopicKey) -> message::Keys {
        message::Keys::of(&self.settings.prefix, self.seal.topic_id(key))
    }

    /// Whether Redis accepts writes (see [`Cluster::watch`]).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever Redis comes or goes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Redis accepts writes again (the watch's ping wrote).
    fn set_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.redis_up.set(1);
            self.health().up_since = Some(Instant::now());
            log::info!("cluster: Redis accepts writes; topics share their polls again");
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// A call failed: Redis is down until a write succeeds again, after a backoff that grows
    /// while Redis keeps coming and going. Logged once per outage, with its reason.
    fn set_down(&self, reason: Outage, detail: &str) {
        if !self.up.swap(false, Ordering::AcqRel) {
            return;
        }
        self.metrics.redis_up.set(0);
        self.metrics.outages.with_label_values(&[reason.label()]).inc();
        let backoff = {
            let mut h = self.health();
            // Down again soon after coming back: wait longer before the next try.
            let flapping = h.up_since.is_some_and(|at| at.elapsed() < FLAP_WINDOW);
            h.flaps = if flapping { (h.flaps + 1).min(16) } else { 0 };
            h.down_at = Some(Instant::now());
            backoff(h.flaps)
        };
        log::warn!(
            "cluster: Redis {} ({detail}); each topic polls on this node alone until a write to Redis succeeds again \
             (next try in {} ms)",
            reason.sentence(),
            backoff.as_millis()
        );
        self.changed.send_modify(|n| *n += 1);
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a script, bounded by `max_in_flight` and `timeout`, timed and counted. A failure
    /// marks Redis as down.
    pub async fn run<T: FromRedisValue>(
        &self,
        call: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Down> {
        let Some(conn) = self.commands.get() else { return Err(Down) };
        let mut conn = conn.clone();
        let permit = match self.in_flight.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.metrics.waits.inc();
                self.in_flight.acquire().await.map_err(|_| Down)?
            }
        };
        self.metrics.in_flight.inc();
        let started = Instant::now();
        let result = tokio::time::timeout(self.settings.timeout, invocation.invoke_async::<T>(&mut conn)).await;
        self.metrics.in_flight.dec();
        drop(permit);
        self.metrics.duration.with_label_values(&[call]).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                log::debug!("cluster: Redis call {call} failed: {e}");
                let detail: String = e.to_string().chars().take(200).collect();
                self.failed(call, Outage::of(&e), &detail)
            }
            Err(_) => {
                log::debug!("cluster: Redis call {call} timed out");
                self.failed(call, Outage::Timeout, "no answer within cluster.timeout")
            }
        }
    }

    /// Counts what was read from Redis and dropped because its tag did not match, and says
    /// so in the log (at most once a minute: whoever forges messages should not fill it).
    pub fn unauthenticated(&self, what: &'static str) {
        self.metrics.unauthenticated.with_label_values(&[what]).inc();
        let mut last = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            log::warn!(
                "cluster: dropped a {what} read from Redis whose tag does not match: forged, altered, or written \
                 with another cluster.secret_file (unpoll_cluster_unauthenticated_total counts them)"
            );
        }
    }

    fn failed<T>(&self, call: &'static str, reason: Outage, detail: &str) -> Result<T, Down> {
        self.metrics.errors.with_label_values(&[call]).inc();
        self.set_down(reason, detail);
        Err(Down)
    }

    /// Asks Redis, every lease while it is up and every half second while it is not, whether
    /// it accepts a **write** (a key of this node's, expiring after a lease): a Redis that
    /// answers `PING` but refuses writes (out of memory under `noeviction`, a read-only
    /// replica) is down. Topics polling alone go back to sharing once it accepts one, and
    /// not before the backoff since it went down has passed.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let ping = redis::Script::new("redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1");
        let key = format!("{}node:{}", self.settings.prefix, self.settings.node);
        let lease = self.settings.lease.as_millis() as u64;
        loop {
            let wrote: Result<i64, Down> = self.run("ping", ping.key(&key).arg(1).arg(lease)).await;
            if wrote.is_ok() && !self.is_up() {
                let h = *self.health();
                if h.down_at.is_none_or(|at| at.elapsed() >= backoff(h.flaps)) {
                    self.set_up();
                }
            }
            let every = if self.is_up() { self.settings.lease } else { Duration::from_millis(500) };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Down again within this long of coming back counts as flapping: the next wait doubles.
const FLAP_WINDOW: Duration = Duration::from_secs(30);

/// How long Redis stays down before a successful write brings it back, after `flaps` outages
/// that each began soon after the last recovery: half a second, doubling, at most 30 s.
pub fn backoff(flaps: u32) -> Duration {
    Duration::from_millis(500).saturating_mul(1 << flaps.min(6)).min(Duration::from_secs(30))
}

/// Where this node is with Redis's outages.
#[derive(Debug, Clone, Copy, Default)]
struct Health {
    /// When the current (or last) outage began.
    down_at: Option<Instant>,
    /// When Redis last came back.
    up_since: Option<Instant>,
    /// Outages in a row that began within [`FLAP_WINDOW`] of a recovery.
    flaps: u32,
}

/// Why Redis is counted down (`unpoll_cluster_redis_outages_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// No answer within `cluster.timeout`.
    Timeout,
    /// No connection: refused, dropped, or not made yet.
    Connection,
    /// Out of memory: it answers, but refuses writes.
    OutOfMemory,
    /// Any other error a call returned (a read-only replica, a script error).
    Error,
}

impl Outage {
    /// The `reason` label.
    pub const LABELS: [&'static str; 4] = ["timeout", "connection", "out_of_memory", "error"];

    fn of(e: &RedisError) -> Outage {
        if e.code() == Some("OOM") || e.to_string().contains("OOM ") {
            Outage::OutOfMemory
        } else if e.is_timeout() {
            Outage::Timeout
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            Outage::Connection
        } else {
            Outage::Error
        }
    }

    pub fn label(self) -> &'static str {
        Outage::LABELS[self as usize]
    }

    fn sentence(self) -> &'static str {
        match self {
            Outage::Timeout => "does not answer in time",
            Outage::Connection => "cannot be reached",
            Outage::OutOfMemory => "refuses writes: it is out of memory (maxmemory with noeviction)",
            Outage::Error => "refuses a call",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_before_redis_counts_up_again_doubles_while_it_flaps() {
        let waits: Vec<u128> = (0..9).map(|f| backoff(f).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}
