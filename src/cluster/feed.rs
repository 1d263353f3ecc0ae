//! A topic's life in a cluster: as the follower of another node's polls, as the leader that
//! polls for every node, or alone while Redis is away; and the moves between them.
//!
//! - **Follower**: events come from the topic's channel and are published here as they are
//!   (same epoch, same version); a version missed (a dropped message, a reconnection) is read
//!   back from the stored history. Every third of the lease it renews its interest and takes
//!   the lease if nobody holds it.
//! - **Leader**: it continues the stored epoch and version from the stored document, and runs
//!   the topic's poll loop behind a [`Gate`] that publishes each version through Redis first
//!   (fenced by the lease token); a refused version is dropped, and the node follows again.
//!   A keeper renews the lease every third of it.
//! - **Alone**: Redis does not answer. The node polls the topic itself under an epoch of its
//!   own (subscribers get the document whole once), and tries Redis again twice a second.
//!   Back, it keeps its own document until the cluster's moves on past what Redis held when it
//!   left: it never goes back to a document older than its own.

use super::gate::{keep, retain, Alone, Leading, Shared};
use super::message::{Keys, Message};
use super::scripts::{self, text, Refreshed, LEAVE, READ};
use super::seal::Seal;
use super::{Cluster, Down};
use crate::diff::Delta;
use crate::topic::feed::{Feed, Gate, Retire, Stopped};
use crate::topic::poller::{self, Poller};
use crate::topic::sentence;
use crate::topic::state::{Received, Stored, Topic};
use crate::wire::event::ErrorEvent;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::time::{sleep_until, Instant};

/// Topics fed through the cluster.
pub struct ClusterFeed {
    pub poller: Arc<Poller>,
    pub cluster: Arc<Cluster>,
}

impl Feed for ClusterFeed {
    fn run(self: Arc<Self>, topic: Arc<Topic>, retire: Arc<dyn Retire>) -> BoxFuture<'static, Stopped> {
        Box::pin(async move {
            let cluster = self.cluster.clone();
            let keys = cluster.keys(&topic.key);
            let token = format!("{}:{:016x}", cluster.settings.node, rand::random::<u64>());
            let inbox = cluster.inbox.register(&keys.channel);
            let mut life = Life { feed: self, topic, retire, keys, token, inbox, own: false, held: None };
            let stopped = life.run().await;
            let _: Result<i64, Down> = cluster
                .run(
                    "leave",
                    LEAVE
                        .key(&life.keys.lease)
                        .key(&life.keys.nodes)
                        .key(&life.keys.state)
                        .arg(&life.token)
                        .arg(&cluster.settings.node),
                )
                .await;
            stopped
        })
    }

    fn starts_primed(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Follower,
    Leader { failover: bool, others: bool },
    Alone,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Leader { .. } => "leader",
            Role::Alone => "local",
        }
    }
}

enum Next {
    Be(Role),
    Stop(Stopped),
}

/// The stored state and history.
struct Read {
    epoch: String,
    version: u64,
    document: Bytes,
    history: Vec<Stored>,
}

struct Life {
    feed: Arc<ClusterFeed>,
    topic: Arc<Topic>,
    retire: Arc<dyn Retire>,
    keys: Keys,
    token: String,
    inbox: super::inbox::Registration,
    /// The topic's document is this node's own (polled alone), not yet the cluster's.
    own: bool,
    /// Where the stored state was when this node came back from polling alone: it is not
    /// restored over the node's own document until it moves.
    held: Option<(String, u64)>,
}

impl Life {
    fn cluster(&self) -> &Cluster {
        &self.feed.cluster
    }

    async fn run(&mut self) -> Stopped {
        self.topic.want_all_formats();
        self.cluster().connected().await;
        let mut role = Role::Follower;
        loop {
            let gauge = self.cluster().metrics.topics.with_label_values(&[role.label()]);
            gauge.inc();
            self.topic.set_role(role.label());
            let next = match role {
                Role::Follower => self.follow().await,
                Role::Leader { failover, others } => self.lead(failover, others).await,
                Role::Alone => self.alone().await,
            };
            gauge.dec();
            match next {
                Next::Be(next) => role = next,
                Next::Stop(stopped) => {
                    // Subscribers waiting for a first state go on (to the error, if any).
                    self.topic.prime();
                    return stopped;
                }
            }
        }
    }

    async fn refresh(&self, want_lead: bool) -> Result<Refreshed, Down> {
        let retain = retain(&self.topic, self.cluster().settings.lease);
        scripts::refresh(self.cluster(), &self.keys, &self.token, want_lead, retain).await
    }

    /// The stored state, as far as it is authentic: a document whose tag does not match is as
    /// if nothing were stored (a leader then starts a new epoch over it), and a history with an
    /// entry whose tag does not match is dropped whole (the document is sent whole instead).
    async fn read(&self) -> Result<Read, Down> {
        let reply: Vec<Value> =
            self.cluster().run("read", READ.key(&self.keys.state).key(&self.keys.stream).arg(0)).await?;
        let nothing = Read { epoch: String::new(), version: 0, document: Bytes::new(), history: Vec::new() };
        let epoch = text(reply.first());
        if epoch.is_empty() {
            return Ok(nothing);
        }
        let version = text(reply.get(1)).parse().unwrap_or(0);
        let document = bulk(reply.get(2)).unwrap_or_default();
        let (c, id) = (self.cluster(), &self.keys.id);
        let tag = bulk(reply.get(4)).unwrap_or_default();
        if !Seal::matches(&c.seal.document(id, &epoch, version, &document), &tag) {
            c.unauthenticated("document");
            return Ok(nothing);
        }
        let mut history = Vec::new();
        if let Some(Value::Array(entries)) = reply.get(3) {
            for entry in entries {
                let Some((s, tag)) = stored(entry) else { continue };
                let expected = c.seal.patches(id, &epoch, s.version, s.json_patch.as_deref(), s.merge_patch.as_deref());
                if !tag.is_some_and(|t| Seal::matches(&expected, &t)) {
                    c.unauthenticated("history");
                    history.clear();
                    break;
                }
                history.push(s);
            }
        }
        Ok(Read { epoch, version, document, history })
    }

    /// Brings the topic to the stored state: only the versions it missed when it can, else the
    /// stored document whole. Not over this node's own document while the stored state is
    /// still where it was when the node came back (it is older).
    async fn catch_up(&mut self) -> Result<(), Down> {
        let read = self.read().await?;
        if read.epoch.is_empty() || read.document.is_empty() {
            return Ok(());
        }
        if self.own && self.held.as_ref() == Some(&(read.epoch.clone(), read.version)) {
            return Ok(());
        }
        let missed: Vec<Stored> = match self.topic.position() {
            Some((epoch, version)) if epoch == read.epoch => {
                if version >= read.version {
                    return Ok(());
                }
                read.history.into_iter().filter(|s| s.version > version).collect()
            }
            _ => read.history,
        };
        self.own = false;
        self.held = None;
        if missed.last().is_some_and(|s| s.version == read.version) {
            self.topic.restore(&read.epoch, missed, read.document);
        } else {
            self.topic.receive(&read.epoch, read.version, Delta::whole(read.document));
        }
        Ok(())
    }

    /// Whether the stored state is ahead of the topic.
    fn behind(&self, r: &Refreshed) -> bool {
        if r.epoch.is_empty() {
            return false;
        }
        match self.topic.position() {
            None => true,
            Some((epoch, version)) if epoch == r.epoch => version < r.version,
            Some(_) => !(self.own && self.held.as_ref() == Some(&(r.epoch.clone(), r.version))),
        }
    }

    /// When the topic, idle, may retire.
    fn idle_deadline(&self) -> Option<Instant> {
        self.topic.idle_since().map(|t| t + self.topic.route().stream.linger)
    }

    async fn follow(&mut self) -> Next {
        let timeout = self.cluster().settings.timeout;
        if self.cluster().inbox.subscribe(&self.keys.channel, timeout).await.is_err() {
            self.cluster().metrics.errors.with_label_values(&["subscribe"]).inc();
            return Next::Be(Role::Alone);
        }
        let mut shutdown = self.feed.poller.shutdown.clone();
        let tick = self.cluster().settings.lease / 3;
        let mut counted = Instant::now();
        loop {
            let r = match self.refresh(true).await {
                Ok(r) => r,
                Err(Down) => return Next::Be(Role::Alone),
            };
            // Polls this node's subscribers would have made, one per interval each.
            let interval = self.topic.route().stream.interval.max(std::time::Duration::from_millis(1));
            let passed = (counted.elapsed().as_nanos() / interval.as_nanos()) as u32;
            if passed > 0 {
                counted += interval * passed;
                let clients = self.topic.subscribers() as u64 * u64::from(passed);
                self.topic.savings.count(clients, 0, self.topic.body_len() as u64);
            }
            if r.leading {
                return Next::Be(Role::Leader { failover: r.failover, others: r.others });
            }
            if self.behind(&r) && self.catch_up().await.is_err() {
                return Next::Be(Role::Alone);
            }
            self.topic.prime();
            let next_refresh = Instant::now() + tick;
            loop {
                let now = Instant::now();
                let idle = self.idle_deadline();
                let until = idle.filter(|d| *d > now).map_or(next_refresh, |d| d.min(next_refresh));
                tokio::select! {
                    msg = self.inbox.rx.recv() => {
                        if let Some(payload) = msg {
                            match self.take(payload).await {
                                Ok(Some(stopped)) => return Next::Stop(stopped),
                                Ok(None) => {}
                                Err(Down) => return Next::Be(Role::Alone),
                            }
                        }
                    }
                    _ = self.inbox.lost.notified() => {
                        if self.catch_up().await.is_err() {
                            return Next::Be(Role::Alone);
                        }
                    }
                    _ = sleep_until(until) => {}
                    _ = self.topic.wake.notified() => {}
                    _ = shutdown.changed() => return Next::Stop(Stopped::Shutdown),
                }
                if self.topic.is_closed() {
                    return Next::Stop(Stopped::Closed);
                }
                if self.idle_deadline().is_some_and(|d| d <= Instant::now()) && self.retire.retire_if_idle(&self.topic)
                {
                    return Next::Stop(Stopped::Idle);
                }
                if Instant::now() >= next_refresh {
                    break;
                }
            }
        }
    }

    /// One message from the channel, if it is authentic; a terminal error ends the topic.
    async fn take(&mut self, payload: Bytes) -> Result<Option<Stopped>, Down> {
        let c = self.cluster();
        let Some(message) = Message::decode(payload) else {
            c.metrics.dropped.inc();
            return Ok(None);
        };
        let id = &self.keys.id;
        match message {
            Message::Event { epoch, version, document, json_patch, merge_patch, document_tag, patches_tag } => {
                let authentic = Seal::matches(&c.seal.document(id, &epoch, version, &document), &document_tag)
                    && Seal::matches(
                        &c.seal.patches(id, &epoch, version, json_patch.as_deref(), merge_patch.as_deref()),
                        &patches_tag,
                    );
                if !authentic {
                    c.unauthenticated("message");
                    return Ok(None);
                }
                let delta = Delta { snapshot: document, json_patch, merge_patch, cut_short: false };
                match self.topic.receive(&epoch, version, delta) {
                    Received::Published => {
                        c.metrics.received.with_label_values(&[&self.topic.key.route]).inc();
                        self.own = false;
                        self.held = None;
                    }
                    Received::Stale => {}
                    Received::Gap => self.catch_up().await?,
                }
                Ok(None)
            }
            Message::Error { epoch, version, status, error, terminal, tag } => {
                // Only a name this node knows, told with this node's own sentence for it: no
                // text from Redis reaches a subscriber.
                let authentic = Seal::matches(&c.seal.error(id, &epoch, version, status, &error, terminal), &tag)
                    && terminal == sentence::terminal(&error);
                let Some(said) = sentence::sentence(&error, status).filter(|_| authentic) else {
                    c.unauthenticated("message");
                    return Ok(None);
                };
                // Told at the leader's position: one told before this node's (a replay) is not
                // told again.
                let current = match self.topic.position() {
                    None => true,
                    Some((e, v)) => e == epoch && version >= v,
                };
                if !current {
                    return Ok(None);
                }
                self.topic.tell(Arc::new(ErrorEvent::new(status, &error, &said, terminal)));
                Ok(terminal.then_some(Stopped::Terminal))
            }
        }
    }

    async fn lead(&mut self, failover: bool, others: bool) -> Next {
        let c = self.feed.cluster.clone();
        if failover {
            c.metrics.failovers.inc();
        }
        self.inbox.leading.store(true, Ordering::Relaxed);
        let next = self.lead_inner(&c, failover, others).await;
        self.inbox.leading.store(false, Ordering::Relaxed);
        while self.inbox.rx.try_recv().is_ok() {}
        next
    }

    async fn lead_inner(&mut self, c: &Arc<Cluster>, failover: bool, others: bool) -> Next {
        let read = match self.read().await {
            Ok(read) => read,
            Err(Down) => return Next::Be(Role::Alone),
        };
        // Nothing stored, or this node's own document is newer than what is: the cluster
        // continues from this node's; otherwise this node continues the stored state.
        let reset = read.epoch.is_empty()
            || read.document.is_empty()
            || (self.own && self.held.as_ref() == Some(&(read.epoch.clone(), read.version)));
        if !reset {
            if self.catch_up().await.is_err() {
                return Next::Be(Role::Alone);
            }
            let document = read.document.clone();
            match tokio::task::spawn_blocking(move || crate::diff::document_text(&document)).await {
                Ok(Some(doc)) => self.topic.adopt(&read.epoch, read.version, doc, read.document),
                _ => log::warn!(
                    "topic {}: the stored document is not JSON; its next poll is sent whole",
                    self.topic.key.route
                ),
            }
            if failover {
                log::info!(
                    "topic {} {}: took over polling, continuing version {} (epoch {})",
                    self.topic.key.route,
                    crate::redact::target(&self.topic.key.target),
                    read.version,
                    read.epoch
                );
            }
        }
        let gate = Arc::new(Leading {
            cluster: c.clone(),
            keys: self.keys.clone(),
            token: self.token.clone(),
            demoted: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            reset: AtomicBool::new(reset),
            others: AtomicBool::new(others),
        });
        // This node's own document, published now under its own epoch: the cluster's state
        // becomes it at once, not at the next change.
        if reset {
            if let Some(pending) = self.topic.current_as_pending() {
                if !gate.admit(&self.topic, &pending).await {
                    return self.demoted(&gate);
                }
                self.own = false;
                self.held = None;
            }
        }
        self.topic.prime();
        let keeper = tokio::spawn(keep(gate.clone(), self.topic.clone(), self.topic_retain()));
        let retire = Shared { inner: self.retire.clone(), gate: gate.clone() };
        let stopped = poller::run(&self.feed.poller, &self.topic, &retire, &*gate).await;
        keeper.abort();
        match stopped {
            Stopped::Demoted => self.demoted(&gate),
            stopped => Next::Stop(stopped),
        }
    }

    fn topic_retain(&self) -> u64 {
        retain(&self.topic, self.cluster().settings.lease)
    }

    fn demoted(&self, gate: &Leading) -> Next {
        if gate.fenced.load(Ordering::Relaxed) || self.cluster().is_up() {
            Next::Be(Role::Follower)
        } else {
            Next::Be(Role::Alone)
        }
    }

    async fn alone(&mut self) -> Next {
        let c = self.feed.cluster.clone();
        c.metrics.fallbacks.inc();
        if !self.own {
            // Versions polled here do not follow the cluster's: a new epoch.
            self.topic.rebase();
            self.own = true;
        }
        self.topic.prime();
        let gate = Alone { cluster: c.clone() };
        // Redis coming back wakes the poll loop, however long its interval.
        let mut changes = c.changes();
        let topic = self.topic.clone();
        let waker = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                topic.wake.notify_one();
            }
        });
        let stopped = poller::run(&self.feed.poller, &self.topic, &*self.retire, &gate).await;
        waker.abort();
        match stopped {
            Stopped::Demoted => {
                // Back: where the stored state is now (before this node publishes anything).
                self.held = self.refresh(false).await.ok().map(|r| (r.epoch, r.version));
                Next::Be(Role::Follower)
            }
            stopped => Next::Stop(stopped),
        }
    }
}

/// A bulk string of a script's reply.
fn bulk(v: Option<&Value>) -> Option<Bytes> {
    match v {
        Some(Value::BulkString(b)) => Some(Bytes::from(b.clone())),
        _ => None,
    }
}

/// One history entry, `[id, [field, value, …]]` (RESP2) or `[id, {field: value}]` (RESP3),
/// and its tag.
fn stored(entry: &Value) -> Option<(Stored, Option<Bytes>)> {
    let Value::Array(parts) = entry else { return None };
    let id = text(parts.first());
    let version = id.split_once('-')?.0.parse().ok()?;
    let pairs: Vec<(String, Bytes)> = match parts.get(1)? {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, Value::BulkString(v)] => Some((text(Some(k)), Bytes::from(v.clone()))),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map
            .iter()
            .filter_map(|(k, v)| match v {
                Value::BulkString(v) => Some((text(Some(k)), Bytes::from(v.clone()))),
                _ => None,
            })
            .collect(),
        _ => return None,
    };
    let field = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Some((Stored { version, json_patch: field("j"), merge_patch: field("m") }, field("t")))
}
