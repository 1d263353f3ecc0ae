//! The hub: one [`Topic`] per [`TopicKey`], created by its first subscriber.

use super::topic::{Msg, ResumeId, Topic};
use crate::metrics::Metrics;
use crate::poll::key::{PollRequest, TopicKey};
use crate::poll::poller;
use crate::proxy::routing::Route;
use pingora::connectors::http::Connector;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{broadcast, watch};

/// All live topics.
pub struct Hub {
    topics: Mutex<HashMap<TopicKey, Arc<Topic>>>,
    pub connector: Connector,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
}

/// A subscriber's end of a topic. Dropping it counts the subscriber out.
pub struct Subscription {
    pub topic: Weak<Topic>,
    pub initial: Vec<Msg>,
    pub rx: broadcast::Receiver<Msg>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(topic) = self.topic.upgrade() {
            topic.leave();
        }
    }
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, shutdown: watch::Receiver<bool>) -> Hub {
        Hub { topics: Mutex::default(), connector: Connector::new(None), metrics, shutdown }
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<TopicKey, Arc<Topic>>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the topic for `key`, creating it (and polling at once) if it does not exist.
    /// Must be called inside a tokio runtime: a new topic spawns its poller.
    pub fn subscribe(
        self: &Arc<Self>,
        key: TopicKey,
        request: PollRequest,
        route: &Arc<Route>,
        resume: Option<&ResumeId>,
    ) -> Subscription {
        let topic = {
            let mut topics = self.topics();
            let topic = topics.entry(key.clone()).or_insert_with(|| {
                let queue = route.stream.as_ref().map_or(1, |s| s.queue);
                let topic = Arc::new(Topic::new(key, route.clone(), request, queue));
                self.metrics.topics.inc();
                tokio::spawn(poller::run(self.clone(), topic.clone()));
                topic
            });
            topic.join();
            topic.clone()
        };
        let (initial, rx) = topic.open(resume);
        Subscription { topic: Arc::downgrade(&topic), initial, rx }
    }

    /// Removes a topic if it still has no subscribers. Returns whether it was removed.
    pub fn remove_if_idle(&self, topic: &Arc<Topic>) -> bool {
        let mut topics = self.topics();
        if topic.subscribers() > 0 {
            return false;
        }
        self.remove_locked(&mut topics, topic);
        true
    }

    /// Removes a topic whatever its subscribers (terminal upstream status, shutdown).
    pub fn remove(&self, topic: &Arc<Topic>) {
        let mut topics = self.topics();
        self.remove_locked(&mut topics, topic);
    }

    fn remove_locked(&self, topics: &mut HashMap<TopicKey, Arc<Topic>>, topic: &Arc<Topic>) {
        if topics.get(&topic.key).is_some_and(|t| Arc::ptr_eq(t, topic)) {
            topics.remove(&topic.key);
            self.metrics.topics.dec();
        }
    }

    /// Number of live topics.
    pub fn len(&self) -> usize {
        self.topics().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
