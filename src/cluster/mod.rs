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
//! - [`gate`]: what lets the leader publish (its lease), and the keeper that renews it.

pub mod feed;
pub mod gate;
pub mod inbox;
pub mod message;
pub mod metrics;
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
    up: AtomicBool,
    /// Bumped on every change of `up`: wakes topics polling alone when Redis comes back.
    changed: watch::Sender<u64>,
    /// Set once the connections are made.
    connected: watch::Sender<bool>,
    /// When an unauthenticated read was last logged.
    warned: std::sync::Mutex<Option<Instant>>,
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

    /// Whether Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever Redis comes or goes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.metrics.redis_up.set(i64::from(up));
            if up {
                log::info!("cluster: Redis answers; topics share their polls again");
            } else {
                log::warn!("cluster: Redis does not answer; each topic polls on this node alone until it does");
            }
            self.changed.send_modify(|n| *n += 1);
        }
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
            Ok(Ok(value)) => {
                self.set_up(true);
                Ok(value)
            }
            Ok(Err(e)) => {
                log::debug!("cluster: Redis call {call} failed: {e}");
                self.failed(call)
            }
            Err(_) => {
                log::debug!("cluster: Redis call {call} timed out");
                self.failed(call)
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

    fn failed<T>(&self, call: &'static str) -> Result<T, Down> {
        self.metrics.errors.with_label_values(&[call]).inc();
        self.set_up(false);
        Err(Down)
    }

    /// Asks Redis whether it answers, every half second while it does not: topics polling
    /// alone go back to sharing once it does.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let ping = redis::Script::new("return 1");
        loop {
            let every = if self.is_up() { self.settings.lease } else { Duration::from_millis(500) };
            let _: Result<i64, Down> = self.run("ping", &ping.prepare_invoke()).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
