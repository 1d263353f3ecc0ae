//! The poll loop of one topic: poll at once, then every `interval`; back off while the
//! upstream fails; stop `linger` after the last subscriber leaves (`linger_unshared` if it
//! never had a second one).
//!
//! Scheduling, in order of precedence:
//! - a failing upstream is polled after an exponential backoff from the interval (doubling,
//!   up to `max_backoff`, with up to 10 % jitter), or after its `Retry-After` if that is longer
//!   (at most [`MAX_RETRY_AFTER`]);
//! - with `respect_cache_control`, a `Cache-Control: max-age` longer than the interval is
//!   waited out;
//! - otherwise every `interval`, measured from the start of the previous poll. The second poll
//!   is shifted by a random phase of up to half the interval, so that topics created together
//!   (a proxy restart, a burst of clients) spread their polls over half of each interval
//!   instead of sending them in lock-step.
//!
//! A topic has one loop, so it never has more than one poll in flight; the upstream's
//! `max_concurrent_polls` bounds the polls of all its topics together.

use super::compute::{BodyError, Compute, MAX_DEPTH};
use super::feed::{Always, Feed, Gate, Retire, Stopped};
use super::fetch::{Fetch, Fetched, HttpFetch, Validators};
use super::state::{Applied, Outcome, Prepared, Topic};
use crate::config::ServerSettings;
use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A topic's own poll loop, as its [`Feed`]: what every loop needs from around it.
pub struct Poller {
    pub fetch: Arc<dyn Fetch>,
    /// Where bodies are parsed and diffed (`server.diff_threads`, `server.diff_inline_max`).
    pub compute: Compute,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
}

impl Poller {
    /// Polls over HTTP, keeping at most `server.poll_idle_connections` connections between
    /// polls, and diffs on at most `server.diff_threads` threads at once, bodies under
    /// `server.diff_inline_max` bytes inline when their diff is cheap.
    pub fn new(metrics: Arc<Metrics>, shutdown: watch::Receiver<bool>, server: &ServerSettings) -> Poller {
        let fetch =
            HttpFetch::new(metrics.reuse_refused.clone(), server.poll_idle_connections, metrics.poll_idle.clone());
        Poller {
            fetch: Arc::new(fetch),
            compute: Compute::new(server.diff_threads, server.diff_inline_max, &metrics),
            metrics,
            shutdown,
        }
    }
}

impl Feed for Poller {
    fn run(self: Arc<Self>, topic: Arc<Topic>, retire: Arc<dyn Retire>) -> BoxFuture<'static, Stopped> {
        Box::pin(async move { run(&self, &topic, &*retire, &Always).await })
    }
}

/// Runs until the topic is idle for `linger` (and `retire` removed it), the upstream refuses
/// it for good, the topic is closed, `gate` stops it, or shutdown; says which. Every new
/// version goes past `gate` before it is published.
pub async fn run(poller: &Poller, topic: &Arc<Topic>, retire: &dyn Retire, gate: &dyn Gate) -> Stopped {
    log::debug!(
        "topic {} {} polls (epoch {})",
        topic.key.route,
        crate::redact::target(&topic.key.target),
        topic.epoch()
    );
    let mut schedule = Schedule::default();
    let mut woke = Woke { due: None, refresh: false };
    loop {
        let polled = match poll_once(poller, topic, gate, woke).await {
            Ok(polled) => polled,
            Err(stopped) => return stopped,
        };
        if polled.applied == Applied::Terminal {
            return Stopped::Terminal;
        }
        let delay = schedule.next_delay(&polled.route.stream, polled.applied, polled.hint);
        woke = match wait(poller, topic, retire, gate, &polled, polled.started + delay).await {
            Ok(woke) => woke,
            Err(stopped) => return stopped,
        };
    }
}

/// What the loop carries from one poll to the next.
#[derive(Default)]
struct Schedule {
    /// Failed polls in a row.
    failures: u32,
    /// Whether the one-off phase was added.
    phased: bool,
}

impl Schedule {
    /// How long after the start of a poll the next one is due, by the poll's outcome: the
    /// backoff (or `Retry-After`) after a failure, the interval (or a longer `max-age`) after a
    /// success, the phase added once.
    fn next_delay(
        &mut self,
        settings: &crate::config::StreamSettings,
        applied: Applied,
        hint: Option<Duration>,
    ) -> Duration {
        let mut delay = if applied == Applied::Failed {
            self.failures = self.failures.saturating_add(1);
            let wait = backoff(settings.interval, self.failures, settings.max_backoff, rand::random());
            hint.map_or(wait, |retry_after| wait.max(retry_after.min(MAX_RETRY_AFTER)))
        } else {
            self.failures = 0;
            match hint {
                Some(max_age) if settings.respect_cache_control => settings.interval.max(max_age),
                _ => settings.interval,
            }
        };
        if !self.phased {
            delay += phase(settings.interval, rand::random());
            self.phased = true;
        }
        delay
    }
}

/// Why the wait ended: the poll was due then (`None`: at once, the first), and whether a
/// refresh made it due early.
#[derive(Clone, Copy)]
struct Woke {
    due: Option<Instant>,
    refresh: bool,
}

/// One poll, done.
struct Done {
    /// When it began (waiting for a place among the upstream's polls included).
    started: Instant,
    applied: Applied,
    /// `Retry-After` after a failure, `max-age` after a success.
    hint: Option<Duration>,
    /// The route it was made under.
    route: Arc<crate::route_table::StreamRoute>,
}

/// Polls once: a place among the upstream's polls, the fetch, the diff, past `gate`, and the
/// result applied to the topic and counted.
async fn poll_once(poller: &Poller, topic: &Arc<Topic>, gate: &dyn Gate, woke: Woke) -> Result<Done, Stopped> {
    if topic.is_closed() {
        return Err(Stopped::Closed);
    }
    if !gate.polling() {
        return Err(Stopped::Demoted);
    }
    let metrics = &poller.metrics;
    let route = &topic.key.route;
    // The route as the configuration has it now: a reload changes interval, upstream
    // servers, limits and diff options of live topics.
    let current = topic.route();
    let settings = &current.stream;
    let upstream = current.upstream();
    let in_flight = metrics.polls_in_flight.with_label_values(&[&upstream.name]);
    let started = Instant::now();
    let permit = match upstream.polls.try_acquire() {
        Ok(p) => p,
        Err(_) => {
            metrics.poll_waits.with_label_values(&[&upstream.name]).inc();
            let mut shutdown = poller.shutdown.clone();
            tokio::select! {
                p = upstream.polls.acquire() => p.expect("the semaphore is never closed"),
                _ = shutdown.changed() => return Err(Stopped::Shutdown),
            }
        }
    };
    in_flight.inc();
    let validators = topic.validators();
    let sent = Instant::now();
    let allowed = (settings.interval / 4).max(Duration::from_millis(10));
    if woke.due.is_some_and(|d| sent.saturating_duration_since(d) > allowed) {
        metrics.polls_late.with_label_values(&[route]).inc();
    }
    // This poll answers any refresh asked for before it is sent; one asked for later gets a
    // poll of its own.
    match (topic.begin_poll(), woke.refresh) {
        (Some(cause), true) => {
            metrics.refreshes.with_label_values(&[route, cause.name()]).inc();
            topic.refreshed(cause);
        }
        (Some(_), false) => metrics.refreshes_coalesced.inc(),
        (None, _) => {}
    }
    let poll = poller.fetch.fetch(upstream, &topic.request, &validators);
    // A panic inside the HTTP client (an answer it cannot read) is a failed poll, not a
    // dead topic.
    let fetched = AssertUnwindSafe(poll).catch_unwind().await.unwrap_or(Fetched::Unreadable);
    in_flight.dec();
    drop(permit);
    metrics.poll_duration.with_label_values(&[&upstream.name]).observe(sent.elapsed().as_secs_f64());
    let (polled, mut label, hint) = classify(fetched);
    let staged = match polled {
        Polled::Body { body, validators, json } => match topic.prepare(body, validators, json) {
            Prepared::Diff(job) => match poller.compute.diff(job).await {
                Ok(diffed) => {
                    if diffed.change.as_ref().is_some_and(|d| d.cut_short) {
                        metrics.diff_exhausted.with_label_values(&[route]).inc();
                    }
                    Ok(topic.stage(diffed))
                }
                Err(BodyError::TooDeep) => {
                    label = "too_deep";
                    let detail = Some(format!("JSON nested deeper than {MAX_DEPTH} levels"));
                    Err(failed(502, "upstream_body_too_deep", detail))
                }
            },
            Prepared::Settled(pending) => Ok(pending),
        },
        Polled::Settled(Outcome::Unchanged) => Ok(topic.unchanged()),
        Polled::Settled(outcome) => Err(outcome),
    };
    let applied = match staged {
        Ok(pending) => {
            if pending.delta.is_some() && !gate.admit(topic, &pending).await {
                return Err(Stopped::Demoted);
            }
            topic.settle(pending)
        }
        Err(outcome) => {
            let (applied, told) = topic.apply(outcome);
            if let Some(error) = told {
                gate.told(topic, &error).await;
            }
            applied
        }
    };
    let label = match (applied, label) {
        (Applied::Unchanged, "changed") => "unchanged",
        (Applied::Equivalent, _) => "equivalent",
        (_, l) => l,
    };
    metrics.polls.with_label_values(&[route, label]).inc();
    topic.polled(label);
    let body = if applied == Applied::Failed || applied == Applied::Terminal { 0 } else { topic.body_len() };
    topic.savings.count(topic.subscribers() as u64, 1, body as u64);
    Ok(Done { started, applied, hint, route: current })
}

/// Waits until the next poll is due at `next_poll`, or at once for a refresh (see
/// [`super::refresh::due`]), watching for the last subscriber to leave, a reload, the topic
/// closing and shutdown.
async fn wait(
    poller: &Poller,
    topic: &Arc<Topic>,
    retire: &dyn Retire,
    gate: &dyn Gate,
    last: &Done,
    mut next_poll: Instant,
) -> Result<Woke, Stopped> {
    let settings = &last.route.stream;
    let failing = last.applied == Applied::Failed;
    let mut scheduled_for = last.route.clone();
    let mut shutdown = poller.shutdown.clone();
    loop {
        let idle_since = topic.idle_since();
        // A topic nobody shared, whose one subscriber left soon after it came (a client
        // opening and closing streams, perhaps on purpose), stops sooner; a subscriber who
        // stayed a while gets the whole linger to reconnect in. An idle topic soon stops
        // counting against its maker either way.
        let brief = idle_since.is_some_and(|t| t.duration_since(topic.created) < settings.linger);
        let linger =
            if topic.shared() || !brief { settings.linger } else { settings.linger.min(settings.linger_unshared) };
        let idle_deadline = idle_since.map(|t| t + linger);
        let now = Instant::now();
        if idle_deadline.is_some_and(|d| d <= now) && retire.retire_if_idle(topic) {
            log::debug!("topic {} {} stops: no subscribers", topic.key.route, crate::redact::target(&topic.key.target));
            return Err(Stopped::Idle);
        }
        let uncount_at = idle_since.filter(|_| topic.counted()).map(|t| t + settings.linger_unshared);
        if uncount_at.is_some_and(|d| d <= now) {
            retire.uncount(topic);
        }
        let due = super::refresh::due(next_poll, topic.refresh_pending(), failing, now);
        if now >= due {
            return Ok(Woke { due: Some(due), refresh: due < next_poll });
        }
        // A deadline passed without retiring (a subscriber came back, or in a cluster
        // another node still has some) is looked at again after the next poll.
        let until = [idle_deadline, uncount_at].into_iter().flatten().filter(|d| *d > now).fold(due, Instant::min);
        tokio::select! {
            _ = sleep_until(until) => {}
            _ = topic.wake.notified() => {}
            _ = shutdown.changed() => return Err(Stopped::Shutdown),
        }
        if topic.is_closed() {
            return Err(Stopped::Closed);
        }
        if !gate.polling() {
            return Err(Stopped::Demoted);
        }
        // A reload changed the route: a healthy topic moves to the new interval at once.
        let latest = topic.route();
        if !Arc::ptr_eq(&latest, &scheduled_for) {
            if !failing {
                next_poll = last.started + latest.stream.interval;
            }
            scheduled_for = latest;
        }
    }
}

/// What one poll brought: a body to diff, or an outcome settled at once.
enum Polled {
    Body { body: Bytes, validators: Validators, json: bool },
    Settled(Outcome),
}

/// The outcome, its metric label, and a scheduling hint: `Retry-After` for failures,
/// `max-age` for successes.
fn classify(fetched: Fetched) -> (Polled, &'static str, Option<Duration>) {
    let (outcome, label, hint) = match fetched {
        Fetched::Body { body, validators, json, max_age } => {
            return (Polled::Body { body, validators, json }, "changed", max_age)
        }
        Fetched::NotModified { max_age } => (Outcome::Unchanged, "not_modified", max_age),
        Fetched::Status { status: status @ (401 | 403 | 404 | 410), .. } => {
            let error = match status {
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                _ => "gone",
            };
            (Outcome::Terminal { status, error }, "terminal_status", None)
        }
        Fetched::Status { status, retry_after } => {
            let error = if status >= 500 { "upstream_unavailable" } else { "upstream_status" };
            // Retry-After is honoured on 429 and 503, as RFC 9110 defines it for them.
            let hint = retry_after.filter(|_| status == 429 || status == 503);
            (failed(status, error, None), "error_status", hint)
        }
        Fetched::Unreachable(_) => {
            // The detail (addresses, OS errors) is logged by `fetch`, never sent to clients.
            (failed(502, "upstream_unreachable", None), "unreachable", None)
        }
        Fetched::Tls(_) => {
            // Why (the certificate, the alert) is logged by `fetch`, never sent to clients.
            (failed(502, "upstream_tls", None), "tls", None)
        }
        Fetched::TimedOut => (failed(504, "upstream_timeout", None), "timeout", None),
        Fetched::BadEncoding(coding) => {
            let detail = Some(format!("a content coding that is not decoded: {coding}"));
            (failed(502, "upstream_encoding", detail), "bad_encoding", None)
        }
        Fetched::Unreadable => {
            let detail = Some("the HTTP client failed reading the answer (see the panic above)".to_string());
            (failed(502, "upstream_unreadable", detail), "unreadable", None)
        }
        Fetched::TooLarge(n) => {
            let detail = Some(format!("a body over the upstream's max_body ({n}+ bytes)"));
            (failed(502, "upstream_body_too_large", detail), "too_large", None)
        }
    };
    (Polled::Settled(outcome), label, hint)
}

/// A failed poll's outcome: the error's name, its sentence, and the detail for the log.
fn failed(status: u16, error: &'static str, detail: Option<String>) -> Outcome {
    let message = super::sentence::sentence(error, status).expect("a name of its table");
    Outcome::Failed { status, error, message, detail }
}

/// Exponential backoff from the interval after `failures` failed polls, capped at
/// `max` (or the interval, if longer), plus up to 10 % jitter (`unit` in 0..1).
pub fn backoff(interval: Duration, failures: u32, max: Duration, unit: f64) -> Duration {
    let cap = max.max(interval);
    let base = interval.saturating_mul(1u32 << failures.min(16)).min(cap);
    (base + base.mul_f64(unit.clamp(0.0, 1.0) * 0.1)).min(cap)
}

/// The random phase added once, before a topic's second poll (`unit` in 0..1): up to half
/// the interval. A tenth was too little: 1,000 topics made in one burst still started up to
/// 173 polls in one 10 ms (benches/topics.sh), where an even spread is 10.
pub fn phase(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(unit.clamp(0.0, 1.0) * 0.5)
}

#[cfg(test)]
#[path = "poller_tests.rs"]
mod schedule_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let (i, max) = (Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(backoff(i, 1, max, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(i, 1, max, 1.0), Duration::from_millis(2200));
        assert_eq!(backoff(i, 3, max, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(i, 30, max, 0.5), max);
        assert_eq!(backoff(i, 4, Duration::from_secs(10), 0.0), Duration::from_secs(10));
        assert_eq!(backoff(Duration::from_secs(60), 5, max, 0.9), Duration::from_secs(60));
    }

    #[test]
    fn phase_is_within_half_the_interval() {
        let i = Duration::from_secs(1);
        assert_eq!(phase(i, 0.0), Duration::ZERO);
        assert_eq!(phase(i, 1.0), Duration::from_millis(500));
        assert_eq!(phase(i, 0.5), Duration::from_millis(250));
    }

    #[test]
    fn an_unreadable_answer_is_a_failed_poll_that_retries() {
        let (outcome, label, _) = classify(Fetched::Unreadable);
        assert_eq!(label, "unreadable");
        assert!(matches!(outcome, Polled::Settled(Outcome::Failed { status: 502, error: "upstream_unreadable", .. })));
    }

    #[test]
    fn a_tls_failure_is_its_own_error_that_retries() {
        let (outcome, label, _) = classify(Fetched::Tls("invalid peer certificate: UnknownIssuer".into()));
        assert_eq!(label, "tls");
        let Polled::Settled(Outcome::Failed { status: 502, error: "upstream_tls", message, .. }) = outcome else {
            panic!("not an upstream_tls failure")
        };
        assert!(!message.contains("UnknownIssuer"), "clients are not told the detail: {message}");
    }

    #[test]
    fn retry_after_counts_only_for_429_and_503() {
        let secs = Some(Duration::from_secs(7));
        for (status, expect) in [(429, secs), (503, secs), (500, None), (502, None)] {
            let (_, _, hint) = classify(Fetched::Status { status, retry_after: secs });
            assert_eq!(hint, expect, "{status}");
        }
    }
}
