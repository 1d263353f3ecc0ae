//! The poll loop's scheduling, in virtual time: a scripted [`Fetch`] answers each poll and
//! notes when it came, and tokio's paused clock runs hours of schedule in milliseconds.

use super::*;
use crate::config::{parse_config, Format};
use crate::route_table::{RouteTable, StreamRoute};
use crate::topic::hub::{Hub, Limits, Subscription};
use crate::topic::key::PollRequest;
use crate::upstream::Upstream;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Answers polls from a script (the last answer repeats) and notes when each came.
#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Fetched>>,
    last: Mutex<Option<fn() -> Fetched>>,
    calls: Mutex<Vec<Instant>>,
    /// How long each answer takes.
    delay: Mutex<Duration>,
}

impl Fetch for Script {
    fn fetch<'a>(&'a self, _: &'a Upstream, _: &'a PollRequest, _: &'a Validators) -> BoxFuture<'a, Fetched> {
        self.calls.lock().unwrap().push(Instant::now());
        let next = self.answers.lock().unwrap().pop_front();
        let answer = next.unwrap_or_else(|| (self.last.lock().unwrap().expect("a script has a last answer"))());
        let delay = *self.delay.lock().unwrap();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            answer
        })
    }
}

fn body(n: u32) -> Fetched {
    let body = Bytes::from(format!("{{\"n\":{n}}}"));
    Fetched::Body { body, validators: Validators::default(), json: true, max_age: None }
}

fn failing(status: u16) -> Fetched {
    Fetched::Status { status, retry_after: None }
}

struct Rig {
    hub: Arc<Hub>,
    script: Arc<Script>,
    table: RouteTable,
    start: Instant,
    /// Kept open: a closed channel reads as shutdown.
    _shutdown: watch::Sender<bool>,
}

impl Rig {
    /// A hub whose topics poll through `script`, on a route with `stream` settings.
    fn new(stream: &str, answers: Vec<Fetched>, last: fn() -> Fetched) -> Rig {
        let text = format!(
            "upstreams: {{a: {{servers: ['127.0.0.1:9']}}}}\nroutes: [{{match: /x, upstream: a, stream: {stream}}}]\n"
        );
        let table = RouteTable::new(&parse_config(&text).unwrap(), &Metrics::default(), None);
        let script = Arc::new(Script::default());
        *script.answers.lock().unwrap() = answers.into();
        *script.last.lock().unwrap() = Some(last);
        let metrics: Arc<Metrics> = Arc::default();
        let (tx, shutdown) = watch::channel(false);
        let poller = Poller {
            fetch: script.clone(),
            compute: Compute::new(1, 16 * 1024, &metrics),
            metrics: metrics.clone(),
            shutdown,
        };
        let hub = Arc::new(Hub::new(metrics, Arc::new(poller)));
        Rig { hub, script, table, start: Instant::now(), _shutdown: tx }
    }

    fn route(&self) -> StreamRoute {
        StreamRoute::of(&self.table.routes[0]).unwrap()
    }

    fn subscribe(&self) -> Subscription {
        let route = self.route();
        let (key, poll, _) = crate::topic::key::derive("/x", &route.stream, "/x", None, &Default::default());
        let limits = Limits { subscribers: 10, topics: 10, per_topic: 10, per_client: 10 };
        self.hub
            .subscribe(key, poll, &route, None, Format::JsonPatch, crate::wire::encode::Protocol::Sse, limits, None)
            .ok()
            .unwrap()
    }

    /// When each poll came, in milliseconds from the start.
    fn polls(&self) -> Vec<u128> {
        self.script.calls.lock().unwrap().iter().map(|t| (*t - self.start).as_millis()).collect()
    }

    /// The gaps between polls, in milliseconds.
    fn gaps(&self) -> Vec<u128> {
        self.polls().windows(2).map(|w| w[1] - w[0]).collect()
    }
}

fn within(value: u128, low: u128, high: u128) -> bool {
    (low..=high).contains(&value)
}

#[tokio::test(start_paused = true)]
async fn a_failing_upstream_is_polled_after_a_doubling_capped_backoff_and_then_every_interval_again() {
    let answers = vec![body(1), failing(500), failing(500), failing(500), failing(500), failing(500)];
    let rig = Rig::new("{interval: 1s, max_backoff: 8s}", answers, || body(2));
    let _sub = rig.subscribe();
    tokio::time::sleep(Duration::from_secs(40)).await;
    let gaps = rig.gaps();
    assert!(gaps.len() >= 8, "{gaps:?}");
    // Poll 1 succeeds: the interval, plus the one-off phase of up to half of it.
    assert!(within(gaps[0], 1000, 1500), "{gaps:?}");
    // Failures 1..5: 2 s, 4 s, then the 8 s cap (each with up to 10 % jitter, never past the cap).
    assert!(within(gaps[1], 2000, 2200), "{gaps:?}");
    assert!(within(gaps[2], 4000, 4400), "{gaps:?}");
    assert_eq!(&gaps[3..6], &[8000, 8000, 8000], "{gaps:?}");
    // Recovered: every interval again.
    assert!(gaps[6..].iter().all(|g| *g == 1000), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_out_on_503_and_429_but_not_on_500() {
    let retry = |status| Fetched::Status { status, retry_after: Some(Duration::from_secs(30)) };
    let rig = Rig::new("{interval: 1s, max_backoff: 8s}", vec![retry(503), retry(429), retry(500)], || body(1));
    let _sub = rig.subscribe();
    tokio::time::sleep(Duration::from_secs(70)).await;
    let gaps = rig.gaps();
    assert!(within(gaps[0], 30_000, 30_500), "503's Retry-After (and the phase), not the 2 s backoff: {gaps:?}");
    assert_eq!(gaps[1], 30_000, "429's Retry-After: {gaps:?}");
    assert!(within(gaps[2], 8000, 8000), "500 ignores Retry-After: the third backoff, capped at 8 s: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_longer_max_age_is_waited_out_only_with_respect_cache_control() {
    let cached = || Fetched::NotModified { max_age: Some(Duration::from_secs(5)) };
    for (respect, expected) in [(true, 5000), (false, 1000)] {
        let rig = Rig::new(&format!("{{interval: 1s, respect_cache_control: {respect}}}"), vec![body(1)], cached);
        let _sub = rig.subscribe();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let gaps = rig.gaps();
        assert!(gaps.len() >= 3 && gaps[1..].iter().all(|g| *g == expected), "respect {respect}: {gaps:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_topic_keeps_polling_for_linger_after_its_last_subscriber_and_then_retires() {
    let rig = Rig::new("{interval: 1s, linger: 5s, linger_unshared: 1s}", vec![], || body(1));
    let sub = rig.subscribe();
    // A subscriber that stayed a while gets the whole linger to come back in.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    drop(sub);
    let left = (Instant::now() - rig.start).as_millis();
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert_eq!(rig.hub.len(), 1, "still there within linger");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rig.hub.is_empty(), "retired at linger");
    let last = *rig.polls().last().unwrap();
    assert!(last > left && last <= left + 5000, "it polled during linger ({left} ms, polls {:?})", rig.polls());
    let before = rig.polls().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rig.polls().len(), before, "no poll after it retired");
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_leaves_at_once_leaves_only_linger_unshared_behind() {
    let rig = Rig::new("{interval: 1s, linger: 5s, linger_unshared: 1s}", vec![], || body(1));
    drop(rig.subscribe());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(rig.hub.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rig.hub.is_empty(), "a topic nobody shared, left at once, goes after linger_unshared");
}

#[tokio::test(start_paused = true)]
async fn a_reload_moves_a_healthy_topic_to_the_new_interval_at_once() {
    let rig = Rig::new("{interval: 10s}", vec![], || body(1));
    let sub = rig.subscribe();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let faster = Rig::new("{interval: 1s}", vec![], || body(1));
    let topic = sub.topic.upgrade().unwrap();
    topic.set_route(Arc::new(faster.route()));
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(rig.polls(), vec![0, 1000, 2000, 3000], "the next poll is 1 s after the last one began, not 10 s");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_polls_at_once_and_the_schedule_restarts_from_it() {
    let rig = Rig::new("{interval: 10s}", vec![], || body(1));
    let sub = rig.subscribe();
    let topic = sub.topic.upgrade().unwrap();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert!(topic.refresh(crate::topic::refresh::Cause::Write));
    tokio::time::sleep(Duration::from_millis(12_500)).await;
    let polls = rig.polls();
    assert_eq!(polls[..2], [0, 3000], "{polls:?}");
    assert_eq!(polls.len(), 3, "{polls:?}");
    assert!(
        within(polls[2], 13_000, 15_000),
        "the next regular poll is an interval (and the phase) after the refresh: {polls:?}"
    );
    let status = topic.status();
    assert_eq!(status.report.refreshed.map(|(_, cause)| cause), Some(crate::topic::refresh::Cause::Write));
}

#[tokio::test(start_paused = true)]
async fn refreshes_while_a_poll_is_in_flight_cost_one_more_poll_and_a_burst_costs_one() {
    use crate::topic::refresh::Cause;
    let rig = Rig::new("{interval: 10s}", vec![], || body(1));
    *rig.script.delay.lock().unwrap() = Duration::from_millis(500);
    let sub = rig.subscribe();
    let topic = sub.topic.upgrade().unwrap();
    // During the first poll (0 to 500 ms): five writes land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let woke: Vec<bool> = (0..5).map(|_| topic.refresh(Cause::Write)).collect();
    assert_eq!(woke, [true, false, false, false, false], "the first asks, the others are coalesced");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(rig.polls(), vec![0, 500], "exactly one more poll, once the one in flight is answered");
    // A burst of twenty at once, nothing in flight: one poll.
    for _ in 0..20 {
        topic.refresh(Cause::Hint);
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(rig.polls(), vec![0, 500, 2100]);
}

#[tokio::test(start_paused = true)]
async fn a_topic_in_backoff_is_not_refreshed_early() {
    let rig = Rig::new("{interval: 1s, max_backoff: 8s}", vec![body(1), failing(500)], || failing(500));
    let sub = rig.subscribe();
    let topic = sub.topic.upgrade().unwrap();
    // Poll 0 succeeds, poll 1 (about 1 s) fails: the next is 2 s of backoff later.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(rig.polls().len(), 2);
    topic.refresh(crate::topic::refresh::Cause::Write);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(rig.polls().len(), 2, "the backoff holds: {:?}", rig.polls());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(rig.polls().len(), 3, "the retry answers the refresh: {:?}", rig.polls());
    assert!(topic.status().report.refreshed.is_none(), "no poll was made for it");
}
