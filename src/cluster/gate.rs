//! The gates of a cluster's topic (see [`crate::topic::feed::Gate`]): the leader's, which
//! publishes each version through Redis first, fenced by its lease, with the keeper that
//! renews the lease; and that of a node polling alone.

use super::message::{Keys, Message};
use super::scripts::{self, PUBLISH, TELL};
use super::{Cluster, Down};
use crate::topic::feed::{Always, Gate, Retire};
use crate::topic::state::{Pending, Topic};
use crate::wire::event::ErrorEvent;
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a topic's stored state outlives its last renewal: its linger, the lease, and a
/// minute.
pub fn retain(topic: &Topic, lease: Duration) -> u64 {
    (topic.route().stream.linger + lease + Duration::from_secs(60)).as_millis() as u64
}

/// The leader's gate: each version is published through Redis first, fenced by the lease.
pub struct Leading {
    pub cluster: Arc<Cluster>,
    pub keys: Keys,
    pub token: String,
    /// The lease is gone (or Redis): the poll loop ends.
    pub demoted: AtomicBool,
    /// It went to another node.
    pub fenced: AtomicBool,
    /// The next version starts a new stored epoch.
    pub reset: AtomicBool,
    /// Other nodes have the topic too (so it polls on when this node has no subscribers).
    pub others: AtomicBool,
}

impl Leading {
    /// Stops the poll loop: the lease went to another node (`moved`), or Redis is away.
    fn demote(&self, moved: bool) {
        if moved {
            self.fenced.store(true, Ordering::Relaxed);
        }
        self.demoted.store(true, Ordering::Relaxed);
    }
}

impl Gate for Leading {
    fn admit<'a>(&'a self, topic: &'a Topic, pending: &'a Pending) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some(delta) = &pending.delta else { return true };
            let (seal, id, epoch, version) = (&self.cluster.seal, &self.keys.id, &pending.epoch, pending.version);
            let (json_patch, merge_patch) = (delta.json_patch.as_deref(), delta.merge_patch.as_deref());
            let document_tag = seal.document(id, epoch, version, &delta.snapshot);
            let patches_tag = seal.patches(id, epoch, version, json_patch, merge_patch);
            let message = Message::Event {
                epoch: epoch.clone(),
                version,
                document: delta.snapshot.clone(),
                json_patch: delta.json_patch.clone(),
                merge_patch: delta.merge_patch.clone(),
                document_tag,
                patches_tag,
            };
            let (payload, spans) = message.encode();
            let Some(spans) = spans else { return false };
            let reset = self.reset.load(Ordering::Relaxed);
            let history = topic.route().stream.history.max(1);
            let result: Result<i64, Down> = self
                .cluster
                .run(
                    "publish",
                    PUBLISH
                        .key(&self.keys.lease)
                        .key(&self.keys.state)
                        .key(&self.keys.stream)
                        .key(&self.keys.channel)
                        .arg(&self.token)
                        .arg(&pending.epoch)
                        .arg(pending.version)
                        .arg(&payload[..])
                        .arg(spans.document.0)
                        .arg(spans.document.1)
                        .arg(spans.json_patch.0)
                        .arg(spans.json_patch.1)
                        .arg(spans.merge_patch.0)
                        .arg(spans.merge_patch.1)
                        .arg(history)
                        .arg(retain(topic, self.cluster.settings.lease))
                        .arg(if reset { "1" } else { "0" })
                        .arg(&document_tag[..])
                        .arg(&patches_tag[..]),
                )
                .await;
            match result {
                Ok(1) => {
                    self.reset.store(false, Ordering::Relaxed);
                    true
                }
                Ok(refused) => {
                    self.cluster.metrics.fenced.inc();
                    log::info!(
                        "topic {} {}: version {} not published: {}; following the node that polls it now",
                        topic.key.route,
                        crate::redact::target(&topic.key.target),
                        pending.version,
                        if refused == 0 { "the lease moved on" } else { "the stored version moved on" }
                    );
                    self.demote(true);
                    false
                }
                Err(Down) => {
                    self.demote(false);
                    false
                }
            }
        })
    }

    fn told<'a>(&'a self, topic: &'a Topic, error: &'a ErrorEvent) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // Told at the leader's position: a follower takes it only at that position or after.
            let (epoch, version) = topic.position().unwrap_or_default();
            let (status, name, terminal) = (error.status, error.error.clone(), error.terminal);
            let tag = self.cluster.seal.error(&self.keys.id, &epoch, version, status, &name, terminal);
            let message = Message::Error { epoch, version, status, error: name, terminal, tag };
            let (payload, _) = message.encode();
            let mut invocation = TELL.key(&self.keys.lease);
            invocation.key(&self.keys.channel).arg(&self.token).arg(&payload[..]);
            let _: Result<i64, Down> = self.cluster.run("tell", &invocation).await;
        })
    }

    fn polling(&self) -> bool {
        !self.demoted.load(Ordering::Relaxed)
    }
}

/// Renews the leader's lease every third of it, and notes whether other nodes have the
/// topic; wakes the poll loop when the lease is lost or Redis is.
pub async fn keep(gate: Arc<Leading>, topic: Arc<Topic>, retain: u64) {
    let c = gate.cluster.clone();
    let every = c.settings.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        match scripts::refresh(&c, &gate.keys, &gate.token, false, retain).await {
            Ok(r) if r.leading => gate.others.store(r.others, Ordering::Relaxed),
            Ok(_) => {
                log::info!(
                    "topic {} {}: the lease moved to another node",
                    topic.key.route,
                    crate::redact::target(&topic.key.target)
                );
                gate.demote(true);
                topic.wake.notify_one();
                return;
            }
            Err(Down) => {
                gate.demote(false);
                topic.wake.notify_one();
                return;
            }
        }
    }
}

/// The leader retires its topic only when no other node has it either.
pub struct Shared {
    pub inner: Arc<dyn Retire>,
    pub gate: Arc<Leading>,
}

impl Retire for Shared {
    fn retire_if_idle(&self, topic: &Arc<Topic>) -> bool {
        !self.gate.others.load(Ordering::Relaxed) && self.inner.retire_if_idle(topic)
    }

    fn uncount(&self, topic: &Topic) {
        self.inner.uncount(topic);
    }
}

/// The gate of a node polling alone: it publishes, until Redis answers again.
pub struct Alone {
    pub cluster: Arc<Cluster>,
}

impl Gate for Alone {
    fn admit<'a>(&'a self, topic: &'a Topic, pending: &'a Pending) -> BoxFuture<'a, bool> {
        Always.admit(topic, pending)
    }

    fn told<'a>(&'a self, topic: &'a Topic, error: &'a ErrorEvent) -> BoxFuture<'a, ()> {
        Always.told(topic, error)
    }

    fn polling(&self) -> bool {
        !self.cluster.is_up()
    }
}
