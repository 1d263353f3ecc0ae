//! The hub: one [`Topic`] per [`TopicKey`], created by its first subscriber.

use super::feed::{self, Feed, Retire, Stopped};
use super::key::{PollRequest, TopicKey};
use super::refresh::{Cause, PathHash, PathHasher, Paths, Relay};
use super::state::{Topic, TopicMetrics};
use crate::config::Format;
use crate::metrics::Metrics;
use crate::route_table::{RouteTable, StreamRoute};
use crate::wire::encode::Protocol;
use crate::wire::event::ErrorEvent;
use crate::wire::event::{Msg, ResumeId};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::broadcast;

/// The live topics, and who made them.
#[derive(Default)]
struct Table {
    topics: HashMap<TopicKey, Arc<Topic>>,
    /// Per client address, the topics it made that still count against it.
    creators: HashMap<IpAddr, usize>,
    /// The topics by the path they poll (no query, no trailing `/`), for refreshes.
    by_path: BTreeMap<String, Vec<Arc<Topic>>>,
    /// In a cluster, the same by the hash of that path, and by the hash of every prefix that
    /// reaches it (see [`Paths::prefixes_of`]), for refreshes from other nodes.
    by_hash: HashMap<PathHash, Vec<Arc<Topic>>>,
    under_hash: HashMap<PathHash, Vec<Arc<Topic>>>,
}

/// Adds `topic` to `index` under `hash`.
fn index(index: &mut HashMap<PathHash, Vec<Arc<Topic>>>, hash: PathHash, topic: &Arc<Topic>) {
    index.entry(hash).or_default().push(topic.clone());
}

/// Takes `topic` out of `index` under `hash`.
fn unindex(index: &mut HashMap<PathHash, Vec<Arc<Topic>>>, hash: PathHash, topic: &Arc<Topic>) {
    if let Some(list) = index.get_mut(&hash) {
        list.retain(|t| !Arc::ptr_eq(t, topic));
        if list.is_empty() {
            index.remove(&hash);
        }
    }
}

/// All live topics.
pub struct Hub {
    table: Mutex<Table>,
    /// Open subscriptions, all topics together.
    total: Arc<AtomicUsize>,
    /// Where each new topic's events come from (its own poll loop, in one process).
    feed: Arc<dyn Feed>,
    metrics: Arc<Metrics>,
    /// In a cluster: how paths are named between nodes, and what carries refreshes to them.
    relay: std::sync::OnceLock<(PathHasher, Arc<dyn Relay>)>,
}

/// A subscriber's end of a topic. Dropping it counts the subscriber out.
pub struct Subscription {
    pub topic: Weak<Topic>,
    /// The format it reads, counted in the topic while it lasts.
    pub format: Format,
    /// Its protocol, counted in the topic too.
    pub protocol: Protocol,
    pub initial: Vec<Msg>,
    pub rx: broadcast::Receiver<Msg>,
    total: Arc<AtomicUsize>,
}

impl Subscription {
    /// Waits for a topic whose first state comes from elsewhere (a cluster's Redis), and then
    /// starts from it: the current snapshot, or only what `resume` missed.
    pub async fn settle(&mut self, resume: Option<&ResumeId>) {
        let Some(topic) = self.topic.upgrade() else { return };
        if topic.is_primed() {
            return;
        }
        topic.primed().await;
        let (initial, rx) = topic.open(resume, self.format);
        self.initial = initial;
        self.rx = rx;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::SeqCst);
        if let Some(topic) = self.topic.upgrade() {
            topic.leave(self.format, self.protocol);
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
    /// A hub whose topics are fed by `feed`.
    pub fn new(metrics: Arc<Metrics>, feed: Arc<dyn Feed>) -> Hub {
        Hub { table: Mutex::default(), total: Arc::default(), feed, metrics, relay: Default::default() }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the topic for `key`, creating it (and polling at once) if it does not exist, on
    /// behalf of `client` (see `proxy::client`), against whom a new topic counts.
    /// Must be called inside a tokio runtime: a new topic spawns its feed.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        self: &Arc<Self>,
        key: TopicKey,
        request: PollRequest,
        route: &StreamRoute,
        resume: Option<&ResumeId>,
        format: Format,
        protocol: Protocol,
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
                let queue = route.stream.queue;
                let metrics = TopicMetrics::of(&self.metrics, &key.route);
                let topic = Arc::new(Topic::new(key, Arc::new(route.clone()), request, queue, metrics, client));
                if !self.feed.starts_primed() {
                    topic.unprime();
                }
                if let Some(c) = client {
                    *table.creators.entry(c).or_insert(0) += 1;
                    self.metrics.topic_creators.set(table.creators.len() as i64);
                }
                self.metrics.topics.inc();
                let path = polled_path(&topic.key.target);
                if let Some((hasher, _)) = self.relay.get() {
                    index(&mut table.by_hash, hasher(&path), &topic);
                    for prefix in Paths::prefixes_of(&path) {
                        index(&mut table.under_hash, hasher(prefix), &topic);
                    }
                }
                table.by_path.entry(path).or_default().push(topic.clone());
                tokio::spawn(self.clone().feed(topic.clone()));
                topic
            });
            topic.join(format, protocol);
            self.total.fetch_add(1, Ordering::SeqCst);
            topic.clone()
        };
        let (initial, rx) = topic.open(resume, format);
        Ok(Subscription { topic: Arc::downgrade(&topic), format, protocol, initial, rx, total: self.total.clone() })
    }

    /// Runs a topic's feed, and retires the topic when it stops.
    async fn feed(self: Arc<Self>, topic: Arc<Topic>) {
        let stopped = feed::supervise(self.feed.clone().run(topic.clone(), self.clone())).await;
        // Nobody waits for a first state that will not come.
        topic.prime();
        match stopped {
            // Removed already, in the same step that found it idle.
            Stopped::Idle => {}
            Stopped::Failed => {
                log::error!(
                    "topic {} {}: its feed failed; the topic is retired",
                    topic.key.route,
                    crate::redact::target(&topic.key.target)
                );
                self.remove(&topic);
                topic.close(ErrorEvent::going_away(
                    500,
                    "internal_error",
                    "the proxy could not poll this resource; reconnect to try again",
                    "internal error",
                ));
            }
            Stopped::Terminal | Stopped::Closed | Stopped::Shutdown | Stopped::Demoted => self.remove(&topic),
        }
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
        let path = polled_path(&topic.key.target);
        if let Some((hasher, _)) = self.relay.get() {
            unindex(&mut table.by_hash, hasher(&path), topic);
            for prefix in Paths::prefixes_of(&path) {
                unindex(&mut table.under_hash, hasher(prefix), topic);
            }
        }
        if let Some(list) = table.by_path.get_mut(&path) {
            list.retain(|t| !Arc::ptr_eq(t, topic));
            if list.is_empty() {
                table.by_path.remove(&path);
            }
        }
        self.uncount_locked(table, topic);
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
            let new = table.routes.iter().find(|r| r.label() == topic.key.route);
            let closing = match new.map(StreamRoute::of) {
                Some(Some(new)) if same_key(&old, &new) => {
                    topic.set_route(Arc::new(new));
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

    /// Refreshes go to every node through `relay` from now on, paths named by `hasher`. Set
    /// once, before any topic is made.
    pub fn relay_through(&self, hasher: PathHasher, relay: Arc<dyn Relay>) {
        let _ = self.relay.set((hasher, relay));
    }

    /// A refresh seen here (a write, a hint): in a cluster, sent to every node, so that the
    /// one polling each topic refreshes it; else (or while Redis is away) applied here. How
    /// many of this node's topics it reaches.
    pub fn refresh_everywhere(&self, paths: &[Paths], cause: Cause) -> usize {
        match self.relay.get() {
            Some((_, relay)) if relay.relay(paths, cause) => self.reached(paths).len(),
            _ => self.refresh(paths, cause),
        }
    }

    /// A refresh from another node (or this one, through the cluster), paths hashed: applied
    /// to the topics this node polls (not those it follows: their leader has it too).
    pub fn refresh_hashed(&self, exact: &[PathHash], prefixes: &[PathHash], cause: Cause) -> usize {
        let reached: Vec<Arc<Topic>> = {
            let table = self.table();
            let mut seen = std::collections::HashSet::new();
            let found = exact
                .iter()
                .flat_map(|h| table.by_hash.get(h))
                .chain(prefixes.iter().flat_map(|h| table.under_hash.get(h)));
            found.flatten().filter(|t| seen.insert(Arc::as_ptr(t))).filter(|t| t.polls_here()).cloned().collect()
        };
        self.ask(&reached, cause)
    }

    /// Asks every live topic polling one of `paths` (whatever its query, route or
    /// subscribers' credentials: each polls with its own) for a refresh, on this node; how
    /// many it reached. One already pending, or a topic in backoff, is counted as coalesced.
    pub fn refresh(&self, paths: &[Paths], cause: Cause) -> usize {
        let reached = self.reached(paths);
        self.ask(&reached, cause)
    }

    fn ask(&self, reached: &[Arc<Topic>], cause: Cause) -> usize {
        for topic in reached {
            if !topic.refresh(cause) {
                self.metrics.refreshes_coalesced.inc();
            }
        }
        reached.len()
    }

    /// The live topics polling one of `paths`.
    fn reached(&self, paths: &[Paths]) -> Vec<Arc<Topic>> {
        {
            let table = self.table();
            let mut reached: Vec<Arc<Topic>> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for spec in paths {
                let found: Box<dyn Iterator<Item = (&String, &Vec<Arc<Topic>>)>> = match spec {
                    Paths::Exact(path) => Box::new(table.by_path.get_key_value(path).into_iter()),
                    Paths::Prefix(prefix) => Box::new(
                        table
                            .by_path
                            .range(prefix.clone()..)
                            .take_while(|(path, _)| path.starts_with(prefix.as_str()))
                            .filter(|(path, _)| spec.reaches(path)),
                    ),
                };
                for topic in found.flat_map(|(_, list)| list) {
                    if seen.insert(Arc::as_ptr(topic)) {
                        reached.push(topic.clone());
                    }
                }
            }
            reached
        }
    }

    /// Every live topic.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.table().topics.values().cloned().collect()
    }

    /// Number of live topics.
    pub fn len(&self) -> usize {
        self.table().topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Retire for Hub {
    fn retire_if_idle(&self, topic: &Arc<Topic>) -> bool {
        let mut table = self.table();
        if topic.subscribers() > 0 {
            return false;
        }
        self.remove_locked(&mut table, topic);
        true
    }

    fn uncount(&self, topic: &Topic) {
        let mut table = self.table();
        self.uncount_locked(&mut table, topic);
    }
}

/// The path a topic polls, as refreshes name it: its target without the query or a trailing
/// `/`.
fn polled_path(target: &str) -> String {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match path.trim_end_matches('/') {
        "" => "/".to_string(),
        p => p.to_string(),
    }
}

/// Whether topics keyed under `old` may carry on under `new`: the same rules for which
/// requests share a poll (and so which headers the poller sends).
fn same_key(old: &StreamRoute, new: &StreamRoute) -> bool {
    old.stream.share == new.stream.share && old.stream.vary == new.stream.vary
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;

    /// A feed with a bug.
    struct Panics;

    impl Feed for Panics {
        fn run(self: Arc<Self>, _: Arc<Topic>, _: Arc<dyn Retire>) -> BoxFuture<'static, Stopped> {
            Box::pin(async { panic!("a bug") })
        }
    }

    #[tokio::test]
    async fn a_feed_that_panics_retires_its_topic_and_tells_subscribers() {
        let config = crate::config::parse_config(
            "upstreams: {a: {servers: ['127.0.0.1:9']}}\nroutes: [{match: /x, upstream: a, stream: {interval: 1h}}]\n",
        )
        .unwrap();
        let table = RouteTable::new(&config, &Metrics::default(), None);
        let hub = Arc::new(Hub::new(Arc::default(), Arc::new(Panics)));
        let route = StreamRoute::of(&table.routes[0]).unwrap();
        let (key, poll, _) = crate::topic::key::derive("/x", &route.stream, "/x", None, &Default::default());
        let limits = Limits { subscribers: 10, topics: 10, per_topic: 10, per_client: 10 };
        let mut sub =
            hub.subscribe(key, poll, &route, None, Format::JsonPatch, Protocol::Sse, limits, None).ok().unwrap();
        loop {
            match sub.rx.recv().await.expect("a message before the end") {
                Msg::Error(e) if e.error == "internal_error" => {
                    assert!(e.terminal && e.going_away.is_some(), "the stream ends");
                    break;
                }
                _ => continue,
            }
        }
        assert!(hub.is_empty(), "the topic no longer counts against max_topics");
    }
}
