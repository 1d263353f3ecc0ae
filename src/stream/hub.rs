//! The hub: one [`Topic`] per [`TopicKey`], created by its first subscriber.

use super::topic::{Msg, ResumeId, Topic, TopicMetrics};
use crate::config::Format;
use crate::metrics::Metrics;
use crate::poll::compute::Compute;
use crate::poll::key::{PollRequest, TopicKey};
use crate::poll::poller;
use crate::route_table::{Route, RouteTable};
use crate::stream::event::ErrorEvent;
use pingora::connectors::http::Connector;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{broadcast, watch};

/// The live topics, and who made them.
#[derive(Default)]
struct Table {
    topics: HashMap<TopicKey, Arc<Topic>>,
    /// Per client address, the topics it made that still count against it.
    creators: HashMap<IpAddr, usize>,
}

/// All live topics.
pub struct Hub {
    table: Mutex<Table>,
    /// Open subscriptions, all topics together.
    total: Arc<AtomicUsize>,
    pub connector: Connector,
    /// The diff threads (`server.diff_threads`).
    pub compute: Compute,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
}

/// A subscriber's end of a topic. Dropping it counts the subscriber out.
pub struct Subscription {
    pub topic: Weak<Topic>,
    pub initial: Vec<Msg>,
    pub rx: broadcast::Receiver<Msg>,
    total: Arc<AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::SeqCst);
        if let Some(topic) = self.topic.upgrade() {
            topic.leave();
        }
    }
}

/// Limits a new subscription must fit in.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `server.max_subscribers`.
    pub subscribers: usize,
    /// `server.max_topics`.
    pub topics: usize,
    /// The route's `stream.max_subscribers`, per topic.
    pub per_topic: usize,
    /// `server.max_topics_per_client`.
    pub per_client: usize,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooManySubscribers,
    TooManyTopics,
    TopicFull,
    /// The client has made `max_topics_per_client` topics that still count.
    TooManyTopicsForClient,
}

impl Refused {
    /// The metric label and the error name clients see.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::TooManySubscribers => "too_many_subscribers",
            Refused::TooManyTopics => "too_many_topics",
            Refused::TopicFull => "topic_full",
            Refused::TooManyTopicsForClient => "too_many_topics_for_client",
        }
    }
}

impl Hub {
    /// A hub whose topics diff on at most `diff_threads` threads at once.
    pub fn new(metrics: Arc<Metrics>, shutdown: watch::Receiver<bool>, diff_threads: usize) -> Hub {
        Hub {
            table: Mutex::default(),
            total: Arc::default(),
            connector: Connector::new(None),
            compute: Compute::new(diff_threads, &metrics),
            metrics,
            shutdown,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the topic for `key`, creating it (and polling at once) if it does not exist, on
    /// behalf of `client` (see `proxy::client`), against whom a new topic counts.
    /// Must be called inside a tokio runtime: a new topic spawns its poller.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        self: &Arc<Self>,
        key: TopicKey,
        request: PollRequest,
        route: &Arc<Route>,
        resume: Option<&ResumeId>,
        format: Format,
        limits: Limits,
        client: Option<IpAddr>,
    ) -> Result<Subscription, Refused> {
        let topic = {
            let mut table = self.table();
            let table = &mut *table;
            if self.total.load(Ordering::SeqCst) >= limits.subscribers {
                return Err(Refused::TooManySubscribers);
            }
            match table.topics.get(&key) {
                Some(t) if t.subscribers() >= limits.per_topic => return Err(Refused::TopicFull),
                None if table.topics.len() >= limits.topics => return Err(Refused::TooManyTopics),
                None if client.is_some_and(|c| table.creators.get(&c).is_some_and(|n| *n >= limits.per_client)) => {
                    return Err(Refused::TooManyTopicsForClient)
                }
                _ => {}
            }
            let topic = table.topics.entry(key.clone()).or_insert_with(|| {
                let queue = route.stream.as_ref().map_or(1, |s| s.queue);
                let metrics = TopicMetrics {
                    history_bytes: self.metrics.history_bytes.with_label_values(&[&key.route]),
                    history_trimmed: self.metrics.history_trimmed.with_label_values(&[&key.route]),
                };
                let topic = Arc::new(Topic::new(key, route.clone(), request, queue, metrics, client));
                if let Some(c) = client {
                    *table.creators.entry(c).or_insert(0) += 1;
                    self.metrics.topic_creators.set(table.creators.len() as i64);
                }
                self.metrics.topics.inc();
                tokio::spawn(poller::supervise(self.clone(), topic.clone(), poller::run(self.clone(), topic.clone())));
                topic
            });
            topic.join();
            self.total.fetch_add(1, Ordering::SeqCst);
            topic.clone()
        };
        let (initial, rx) = topic.open(resume, format);
        Ok(Subscription { topic: Arc::downgrade(&topic), initial, rx, total: self.total.clone() })
    }

    /// Removes a topic if it still has no subscribers. Returns whether it was removed.
    pub fn remove_if_idle(&self, topic: &Arc<Topic>) -> bool {
        let mut table = self.table();
        if topic.subscribers() > 0 {
            return false;
        }
        self.remove_locked(&mut table, topic);
        true
    }

    /// Removes a topic whatever its subscribers (terminal upstream status, shutdown).
    pub fn remove(&self, topic: &Arc<Topic>) {
        let mut table = self.table();
        self.remove_locked(&mut table, topic);
    }

    fn remove_locked(&self, table: &mut Table, topic: &Arc<Topic>) {
        if table.topics.get(&topic.key).is_some_and(|t| Arc::ptr_eq(t, topic)) {
            table.topics.remove(&topic.key);
            self.metrics.topics.dec();
        }
        self.uncount_locked(table, topic);
    }

    /// Stops counting `topic` against the client that made it (it has been idle a while).
    pub fn uncount(&self, topic: &Topic) {
        let mut table = self.table();
        self.uncount_locked(&mut table, topic);
    }

    fn uncount_locked(&self, table: &mut Table, topic: &Topic) {
        let Some(client) = topic.take_creator() else { return };
        if let Some(n) = table.creators.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                table.creators.remove(&client);
            }
        }
        self.metrics.topic_creators.set(table.creators.len() as i64);
    }

    /// Brings live topics in line with a reloaded configuration. A topic whose route is gone
    /// is closed; so is one whose sharing rules changed (`share` or `vary`), so that its
    /// subscribers resubscribe under the new rules. Every other topic follows its new route
    /// (upstream and its servers, interval, limits, diff options) without a disconnection.
    pub fn reconcile(&self, table: &RouteTable) {
        let topics: Vec<Arc<Topic>> = self.table().topics.values().cloned().collect();
        for topic in topics {
            let old = topic.route();
            let closing = match table.routes.iter().find(|r| r.label() == topic.key.route) {
                Some(new) if same_key(&old, new) => {
                    topic.set_route(new.clone());
                    continue;
                }
                Some(_) => ErrorEvent::going_away(
                    503,
                    "route_changed",
                    "the route's sharing rules changed; reconnect to resubscribe",
                    "route changed",
                ),
                None => ErrorEvent::going_away(
                    404,
                    "route_removed",
                    "the route was removed from the configuration",
                    "route removed",
                ),
            };
            self.remove(&topic);
            topic.close(closing);
        }
    }

    /// Number of live topics.
    pub fn len(&self) -> usize {
        self.table().topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether topics keyed under `old` may carry on under `new`: the same rules for which
/// requests share a poll (and so which headers the poller sends).
fn same_key(old: &Route, new: &Route) -> bool {
    match (&old.stream, &new.stream) {
        (Some(a), Some(b)) => a.share == b.share && a.vary == b.vary,
        _ => false,
    }
}
