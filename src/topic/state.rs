//! A topic: one shared poll's versioned document (its current version, error and the body
//! and validators it came from, under one lock), its history (`history`), its subscribers
//! (`audience`), the channel that fans events out, and what it tells `/status` (`status`).
//! The refreshes asked of it follow the rules of `refresh`.

use crate::config::Format;
use crate::diff::{scan::Text, Delta, DiffOptions, Wanted};
use crate::metrics::{Metrics, Savings};
use crate::route_table::StreamRoute;
use crate::topic::audience::{Audience, Left};
use crate::topic::compute::{DiffJob, Diffed};
use crate::topic::direct::{Counters, Lanes};
use crate::topic::fetch::Validators;
use crate::topic::history::History;
use crate::topic::key::{PollRequest, TopicKey};
use crate::wire::encode::Protocol;
use crate::wire::event::{ErrorEvent, Event, Msg, ResumeId};
use arc_swap::ArcSwap;
use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

#[path = "replica.rs"]
mod replica;
pub use replica::{Received, Stored};
#[path = "status.rs"]
mod status;
pub use status::{Report, TopicStatus};

struct State {
    /// The first half of every event id: a new one means the versions start over (a new
    /// topic, or in a cluster a switch to or from polling alone).
    epoch: String,
    current: Option<Arc<Event>>,
    history: History,
    error: Option<Arc<ErrorEvent>>,
    /// The last JSON document's compact text, shared so that the poller can diff against it
    /// unlocked.
    doc: Option<Text>,
    last_body: Option<Bytes>,
    validators: Validators,
    idle_since: Option<Instant>,
    /// When the poll being settled was answered: the next event's birth.
    answered: Option<Instant>,
    /// Per format, when its last subscriber left: its patches are still computed for `linger`
    /// after, so that the subscriber reconnecting gets only what it missed.
    format_left: [Option<Instant>; 3],
}

/// One shared poll. Held by the hub's map and by its poller; stream handlers hold only a
/// `Weak`, so removing the topic drops its sender and ends every subscriber's queue.
pub struct Topic {
    pub key: TopicKey,
    /// The topic's route as the configuration now has it (replaced on reload).
    route: ArcSwap<StreamRoute>,
    pub request: PollRequest,
    /// When its first subscriber came.
    pub created: Instant,
    /// Set when the topic was closed from outside (route removed or changed): its poller stops.
    closed: AtomicBool,
    state: Mutex<State>,
    tx: broadcast::Sender<Msg>,
    /// Its ring's length, in events.
    queue: usize,
    /// Its subscribers on plain TCP sockets, written to directly while they sleep.
    pub lanes: Lanes,
    /// What its subscribers' deliveries are counted in, per protocol (shared by them all).
    pub counters: [OnceLock<Arc<Counters>>; 2],
    /// Its subscribers, by format and protocol.
    audience: Audience,
    /// The client that made it, while the topic still counts against it.
    creator: Mutex<Option<IpAddr>>,
    /// The offsets of the latest event, per format, readable without the topic (see
    /// [`Event::offsets`]).
    pub published: Arc<[AtomicU64; 3]>,
    /// Wakes the poller when the last subscriber leaves.
    pub(crate) wake: Notify,
    /// Whether its first state is known: at once in one process; in a cluster once the
    /// document and history were read from Redis (subscribers wait for it, see
    /// [`Topic::primed`]).
    primed: watch::Sender<bool>,
    /// Compute the patches of every format, read here or not (a cluster's leader publishes
    /// for the readers of every node).
    all_formats: AtomicBool,
    fanout_lag: Histogram,
    /// Its route's savings counters.
    pub savings: Arc<Savings>,
    /// Its last poll and this node's role, for `/status`.
    report: Mutex<Report>,
    /// A refresh asked for and not yet begun (see `refresh`).
    refresh: Mutex<super::refresh::Requested>,
}

/// A topic's own metrics, resolved once.
pub struct TopicMetrics {
    pub history_bytes: IntGauge,
    pub history_trimmed: IntCounter,
    /// `unpoll_fanout_lag_seconds{route}`.
    pub fanout_lag: Histogram,
    pub savings: Arc<Savings>,
}

impl TopicMetrics {
    /// The metrics of a topic of `route`.
    pub fn of(metrics: &Metrics, route: &str) -> TopicMetrics {
        TopicMetrics {
            history_bytes: metrics.history_bytes.with_label_values(&[route]),
            history_trimmed: metrics.history_trimmed.with_label_values(&[route]),
            fanout_lag: metrics.fanout_lag.with_label_values(&[route]),
            savings: metrics.savings(route),
        }
    }
}

/// What the poller learned from one poll, when it brought no new body.
pub enum Outcome {
    /// Nothing changed (304).
    Unchanged,
    /// The upstream failed; subscribers are told (`message`, plain words) and the poller
    /// retries. `detail`, for the operator, is logged when this failure begins.
    Failed { status: u16, error: &'static str, message: String, detail: Option<String> },
    /// The upstream refused the resource for good; subscribers are told and the streams end.
    Terminal { status: u16, error: &'static str },
}

/// What [`Topic::apply`] did, for metrics and scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// The same bytes (or a 304): nothing was parsed.
    Unchanged,
    /// Different bytes, the same JSON.
    Equivalent,
    Failed,
    Terminal,
}

impl Topic {
    pub fn new(
        key: TopicKey,
        route: Arc<StreamRoute>,
        request: PollRequest,
        queue: usize,
        metrics: TopicMetrics,
        creator: Option<IpAddr>,
    ) -> Topic {
        Topic {
            key,
            route: ArcSwap::new(route),
            request,
            created: Instant::now(),
            closed: AtomicBool::new(false),
            state: Mutex::new(State {
                epoch: new_epoch(),
                current: None,
                history: History::new(metrics.history_bytes, metrics.history_trimmed),
                error: None,
                doc: None,
                last_body: None,
                validators: Validators::default(),
                idle_since: None,
                answered: None,
                format_left: [None; 3],
            }),
            tx: broadcast::channel(queue).0,
            queue,
            lanes: Lanes::default(),
            counters: Default::default(),
            audience: Audience::default(),
            creator: Mutex::new(creator),
            published: Arc::default(),
            wake: Notify::new(),
            primed: watch::Sender::new(true),
            all_formats: AtomicBool::new(false),
            fanout_lag: metrics.fanout_lag,
            savings: metrics.savings,
            report: Mutex::default(),
            refresh: Mutex::default(),
        }
    }

    /// Sends a message on the ring and offers it to the parked lanes. Always under the state
    /// lock, so the lanes see messages in the ring's order.
    fn send(&self, msg: Msg) {
        let _ = self.tx.send(msg.clone());
        self.lanes.send(&msg, self.queue);
    }

    /// The ring's length, in events.
    pub fn queue(&self) -> usize {
        self.queue
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current epoch.
    pub fn epoch(&self) -> String {
        self.state().epoch.clone()
    }

    /// The current version's epoch and number, if it has one.
    pub fn position(&self) -> Option<(String, u64)> {
        let state = self.state();
        state.current.as_ref().map(|c| (state.epoch.clone(), c.version))
    }

    /// Marks the topic as waiting for its first state from elsewhere: subscribers wait (see
    /// [`Topic::primed`]) until [`Topic::prime`].
    pub fn unprime(&self) {
        self.primed.send_replace(false);
    }

    /// Its first state is known: subscribers waiting for it go on.
    pub fn prime(&self) {
        self.primed.send_replace(true);
    }

    pub fn is_primed(&self) -> bool {
        *self.primed.borrow()
    }

    /// Waits until the topic's first state is known.
    pub async fn primed(&self) {
        let mut rx = self.primed.subscribe();
        let _ = rx.wait_for(|p| *p).await;
    }

    /// Computes the patches of every format, whoever reads here.
    pub fn want_all_formats(&self) {
        self.all_formats.store(true, Ordering::Relaxed);
    }

    /// The topic's route as the configuration now has it.
    pub fn route(&self) -> Arc<StreamRoute> {
        self.route.load_full()
    }

    /// Follows a reloaded route whose changes keep the topic's key meaningful.
    pub fn set_route(&self, route: Arc<StreamRoute>) {
        self.route.store(route);
        self.wake.notify_one();
    }

    /// Asks for a refresh of this topic: `true` when the poll loop was woken for it, `false`
    /// when one was pending already (coalesced).
    pub fn refresh(&self, cause: super::refresh::Cause) -> bool {
        let new = self.refresh_state().ask(cause);
        if new {
            self.wake.notify_one();
        }
        new
    }

    /// Whether a refresh is pending.
    pub fn refresh_pending(&self) -> bool {
        self.refresh_state().is_pending()
    }

    /// A poll begins: the refresh it answers, if one was pending.
    pub fn begin_poll(&self) -> Option<super::refresh::Cause> {
        self.refresh_state().begin()
    }

    fn refresh_state(&self) -> std::sync::MutexGuard<'_, super::refresh::Requested> {
        self.refresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the topic was closed from outside.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends every subscriber's stream with `error` and stops the poller.
    pub fn close(&self, error: ErrorEvent) {
        let error = Arc::new(error);
        let mut state = self.state();
        state.error = Some(error.clone());
        self.send(Msg::Error(error));
        self.closed.store(true, Ordering::Release);
        drop(state);
        self.wake.notify_one();
    }

    pub fn subscribers(&self) -> usize {
        self.audience.count()
    }

    /// Whether it ever had more than one subscription.
    pub fn shared(&self) -> bool {
        self.audience.shared()
    }

    /// Whether it still counts against the client that made it.
    pub fn counted(&self) -> bool {
        self.creator.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The client it counts against, which it no longer does. Called under the hub's lock.
    pub(crate) fn take_creator(&self) -> Option<IpAddr> {
        self.creator.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Counts a new subscriber, reading `format`. Called under the hub's lock.
    pub(crate) fn join(&self, format: Format, protocol: Protocol) {
        self.audience.join(format, protocol);
        self.state().idle_since = None;
    }

    /// Counts a departed subscriber of `format` out, and wakes the poller when it was the
    /// last. The format's patches go on being computed for `linger` after its last reader
    /// left, so that one reconnecting gets only what it missed.
    pub(crate) fn leave(&self, format: Format, protocol: Protocol) {
        let Left { last_reader, last } = self.audience.leave(format, protocol);
        if last_reader || last {
            let mut state = self.state();
            let now = Instant::now();
            if last_reader {
                state.format_left[format.index()] = Some(now);
            }
            if last {
                state.idle_since = Some(now);
            }
        }
        if last {
            self.wake.notify_one();
        }
    }

    /// When the topic has been without subscribers since, if it has.
    pub fn idle_since(&self) -> Option<Instant> {
        let state = self.state();
        if self.subscribers() == 0 {
            Some(state.idle_since.unwrap_or_else(Instant::now))
        } else {
            None
        }
    }

    /// The validators of the last body, for a conditional poll.
    pub fn validators(&self) -> Validators {
        self.state().validators.clone()
    }

    /// A receiver plus the messages a new subscriber starts with: the current snapshot, or
    /// only what it missed when `resume` names a version still in history; then the current
    /// error, if the upstream is failing. Taken under the state lock, so nothing published
    /// concurrently is lost or duplicated.
    /// A resume that would need a patch nobody computed (no subscriber in `format` at the
    /// time) gets the current snapshot instead: one message, not a snapshot per missed event.
    pub fn open(&self, resume: Option<&ResumeId>, format: Format) -> (Vec<Msg>, broadcast::Receiver<Msg>) {
        let state = self.state();
        let rx = self.tx.subscribe();
        let mut initial = Vec::new();
        if let Some(current) = &state.current {
            match resume.filter(|r| r.epoch == state.epoch) {
                Some(r) if r.version == current.version => {}
                // Only what was missed, as patches: history keeps no whole documents, so a missed
                // version without a patch in this format means the current snapshot instead.
                resume => match resume.and_then(|r| state.history.missed_since(r.version, current.version, format)) {
                    Some(missed) => initial.extend(missed.into_iter().map(Msg::Event)),
                    None => initial.push(Msg::Snapshot(current.clone())),
                },
            }
        }
        if let Some(err) = &state.error {
            initial.push(Msg::Error(err.clone()));
        }
        (initial, rx)
    }

    /// Applies a failed poll's outcome: publishes and records the error, and returns it when it
    /// is news to subscribers (for a cluster's other nodes). Only the topic's poller calls
    /// this, one poll at a time. (An unchanged document is [`Topic::unchanged`].)
    pub fn apply(&self, outcome: Outcome) -> (Applied, Option<Arc<ErrorEvent>>) {
        match outcome {
            Outcome::Unchanged => (Applied::Unchanged, None),
            Outcome::Failed { status, error, message, detail } => {
                let mut state = self.state();
                // The same failure again is not repeated to subscribers (nor logged).
                if state.error.as_ref().is_some_and(|e| e.status == status && e.error == error) {
                    return (Applied::Failed, None);
                }
                if let Some(detail) = detail {
                    log::warn!("route {}: {error}: {detail}; retrying with backoff", self.key.route);
                }
                let e = Arc::new(ErrorEvent::new(status, error, &message, false));
                state.error = Some(e.clone());
                self.send(Msg::Error(e.clone()));
                (Applied::Failed, Some(e))
            }
            Outcome::Terminal { status, error } => {
                let message = super::sentence::sentence(error, status).unwrap_or_default();
                let e = Arc::new(ErrorEvent::new(status, error, &message, true));
                self.tell(e.clone());
                (Applied::Terminal, Some(e))
            }
        }
    }

    /// Records and sends an error that came from elsewhere (a cluster's leader).
    pub fn tell(&self, error: Arc<ErrorEvent>) {
        let mut state = self.state();
        state.error = Some(error.clone());
        self.send(Msg::Error(error));
    }

    /// The first step with a new body: the same bytes as last time are settled at once (as
    /// [`Topic::unchanged`]); anything else becomes a [`DiffJob`] to run off the async
    /// workers, and then to [`Topic::stage`]. The document cannot change in between (one
    /// poller): subscribers joining or resynchronising meanwhile never wait for the diff.
    pub fn prepare(&self, body: Bytes, validators: Validators, json: bool) -> Prepared {
        let (previous, recently) = {
            let mut state = self.state();
            state.validators = validators;
            state.answered = Some(Instant::now());
            if state.last_body.as_ref() == Some(&body) {
                return Prepared::Settled(self.unchanged_locked(&state));
            }
            let linger = self.route().stream.linger;
            let recently = state.format_left.map(|left| left.is_some_and(|t| t.elapsed() < linger));
            (state.doc.clone(), recently)
        };
        let options = DiffOptions::of(&self.route().stream);
        // Formats someone reads, or read within `linger`. A subscriber joining meanwhile gets
        // this event as a snapshot, which is correct.
        let all = self.all_formats.load(Ordering::Relaxed);
        let wants = |f: Format| all || self.audience.reads(f) || recently[f.index()];
        let wanted = Wanted { json_patch: wants(Format::JsonPatch), merge_patch: wants(Format::MergePatch) };
        Prepared::Diff(DiffJob { body, json, previous, options, wanted })
    }

    /// What a poll that brought nothing new publishes: nothing, or after an error the whole
    /// document again.
    pub fn unchanged(&self) -> Pending {
        let state = self.state();
        self.unchanged_locked(&state)
    }

    fn unchanged_locked(&self, state: &State) -> Pending {
        let republish = state.error.as_ref().and(state.current.as_ref()).and_then(|c| c.snapshot());
        let applied = if state.error.is_some() { Applied::Changed } else { Applied::Unchanged };
        self.pending(state, None, republish.map(Delta::whole), applied)
    }

    /// What a [`DiffJob`]'s result would publish, held back until [`Topic::settle`], so that
    /// whoever gates publication (a cluster's lease) can refuse it first.
    pub fn stage(&self, diffed: Diffed) -> Pending {
        let Diffed { body, doc, change } = diffed;
        let state = self.state();
        let had_error = state.error.is_some();
        let (delta, applied) = match change {
            Some(delta) => (Some(if had_error { whole(delta) } else { delta }), Applied::Changed),
            None if had_error => {
                (state.current.as_ref().and_then(|c| c.snapshot()).map(Delta::whole), Applied::Changed)
            }
            None => (None, Applied::Equivalent),
        };
        self.pending(&state, Some((body, doc)), delta, applied)
    }

    fn pending(
        &self,
        state: &State,
        body: Option<(Bytes, Option<Text>)>,
        delta: Option<Delta>,
        applied: Applied,
    ) -> Pending {
        let version = state.current.as_ref().map_or(1, |c| c.version + 1);
        Pending { body, delta, version, epoch: state.epoch.clone(), applied }
    }

    /// Publishes what was staged. Nothing else publishes in between: one poller.
    pub fn settle(&self, pending: Pending) -> Applied {
        let Pending { body, delta, version, applied, .. } = pending;
        let mut state = self.state();
        let state = &mut *state;
        if let Some((body, doc)) = body {
            state.last_body = Some(body);
            state.doc = doc;
        }
        if let Some(delta) = delta {
            state.error = None;
            self.publish(state, delta, version);
        } else if applied == Applied::Changed {
            // An error is over, and there is no document yet to send again.
            state.error = None;
        }
        // The poll's answer counts for its own version only.
        state.answered = None;
        applied
    }

    /// Drops the history: it belongs to another epoch.
    fn forget(&self, state: &mut State) {
        state.history.clear();
    }

    fn publish(&self, state: &mut State, delta: Delta, version: u64) {
        let event = self.record(state, delta, version);
        self.send(Msg::Event(event));
    }

    /// Makes `version` current and keeps it in the history, without sending it.
    fn record(&self, state: &mut State, delta: Delta, version: u64) -> Arc<Event> {
        let previous = state.current.as_ref().map_or([0; 3], |c| c.offsets);
        let born = state.answered.take().unwrap_or_else(Instant::now);
        let event = Arc::new(Event::born_at(&state.epoch, version, delta, previous, born.into_std()));
        for (slot, offset) in self.published.iter().zip(event.offsets) {
            slot.store(offset, Ordering::Release);
        }
        if let Some(previous) = state.current.replace(event.clone()) {
            previous.release();
            // Superseded: whoever was to get it has had it (or resynchronises past it).
            if let Some(lag) = previous.fanout_lag() {
                self.fanout_lag.observe(lag.as_secs_f64());
            }
        }
        let (count, bytes) = {
            let s = &self.route().stream;
            (s.history, s.max_history_bytes)
        };
        state.history.push(event.clone(), count, bytes);
        event
    }
}

/// A version staged for publication (see [`Topic::stage`]).
pub struct Pending {
    body: Option<(Bytes, Option<Text>)>,
    /// What is published as `version` of `epoch`, if anything.
    pub delta: Option<Delta>,
    pub version: u64,
    pub epoch: String,
    applied: Applied,
}

/// What a new body needs (see [`Topic::prepare`]).
pub enum Prepared {
    /// A diff, off the async workers.
    Diff(DiffJob),
    /// Nothing more: the same bytes as last time.
    Settled(Pending),
}

fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The same change, sent whole in every format.
fn whole(delta: Delta) -> Delta {
    Delta::whole(delta.snapshot)
}
