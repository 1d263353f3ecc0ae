//! The CPU-heavy part of a poll, parsing a new body and diffing it, runs on tokio's blocking
//! threads: a document that is expensive to diff never holds up the async workers that proxy
//! requests and feed streams. Bodies of [`LARGE_BODY`] bytes or more take their own lane, so a
//! large document never delays the diffs of small ones; each lane runs at most
//! `server.diff_threads` diffs at once. Each JSON Patch diff is also bounded by the route's
//! `diff_budget` (see [`crate::diff::delta_for`]).
//!
//! Bodies under `server.diff_inline_max` bytes are first parsed and diffed on the worker that
//! fetched them, with the JSON Patch search held to [`INLINE_BUDGET`] (well under a
//! millisecond): handing a small body to a diff thread and back costs more than its diff (two
//! thread wake-ups, and a queue when thousands of topics poll). A small body whose diff
//! needs more work than that is done again from the start on a diff thread, with the route's
//! whole budget, so an expensive small document still never holds up a worker for long.

use crate::diff::scan::{self, Text};
use crate::diff::{delta_for, delta_text, Delta, DiffOptions, Wanted};
use crate::metrics::Metrics;
use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use serde_json::Value;
use tokio::sync::Semaphore;

/// A new body to parse and diff against the topic's document.
#[derive(Clone)]
pub struct DiffJob {
    pub body: Bytes,
    /// The upstream said the body is JSON (or said nothing).
    pub json: bool,
    /// The compact text of the document the new one is diffed against.
    pub previous: Option<Text>,
    pub options: DiffOptions,
    /// The patches someone will read.
    pub wanted: Wanted,
}

/// What a [`DiffJob`] found: the document's compact text (if the body is JSON) and the change.
pub struct Diffed {
    pub body: Bytes,
    pub doc: Option<Text>,
    /// `None`: the same JSON as before.
    pub change: Option<Delta>,
}

/// JSON nested deeper than this is refused: serde_json's parser stops at 128 levels (it
/// recurses), and a body it cannot parse is not to be passed off as text.
pub const MAX_DEPTH: usize = 127;

/// A body that is neither JSON unpoll can parse nor text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl DiffJob {
    /// Parses and diffs. Pure CPU work: run it through [`Compute::run`].
    ///
    /// JSON is diffed as text ([`delta_text`]): only what changed is parsed. Text the raw path
    /// does not take is parsed whole and diffed the parsed way ([`delta_for`]).
    pub fn run(self) -> Result<Diffed, BodyError> {
        if self.json {
            if let Some(text) = scan::compact_after(&self.body, self.previous.as_ref()) {
                if let Ok(change) = delta_text(self.previous.as_ref(), text.clone(), &self.options, self.wanted) {
                    return Ok(Diffed { body: self.body, doc: Some(text), change });
                }
            }
        }
        self.run_parsed()
    }

    fn run_parsed(self) -> Result<Diffed, BodyError> {
        let doc = if self.json {
            match serde_json::from_slice::<Value>(&self.body) {
                Ok(doc) => Some(doc),
                Err(_) if depth(&self.body) > MAX_DEPTH => return Err(BodyError::TooDeep),
                Err(_) => None,
            }
        } else {
            None
        };
        let Some(doc) = doc else {
            // Not JSON: sent whole, as a JSON string.
            let text = Value::String(String::from_utf8_lossy(&self.body).into_owned());
            let change = Some(Delta::whole(Bytes::from(serde_json::to_vec(&text).expect("a string serialises"))));
            return Ok(Diffed { body: self.body, doc: None, change });
        };
        let previous = self.previous.as_deref().and_then(|text| serde_json::from_slice::<Value>(text).ok());
        let change = delta_for(previous.as_ref(), &doc, &self.options, self.wanted);
        // The new document's text: the snapshot, or when nothing changed the previous one's.
        let text = match &change {
            Some(change) => Text::unindexed(change.snapshot.clone()),
            None => self.previous.clone().expect("no change from no document"),
        };
        Ok(Diffed { body: self.body, doc: Some(text), change })
    }
}

/// How deeply arrays and objects nest in JSON text (strings skipped), for a body that failed
/// to parse.
fn depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Bodies this large or larger are diffed in the large lane.
pub const LARGE_BODY: usize = 256 * 1024;

/// The JSON Patch work (in `diff_budget` units) an inline diff may do before it is handed
/// over to a diff thread: about 0.2 to 0.5 ms. A change of a few rows in a 10 KB document uses
/// a few hundred.
pub const INLINE_BUDGET: usize = 20_000;

/// One lane of diff threads.
struct Lane {
    permits: Semaphore,
    /// `unpoll_diff_waits_total{lane}`.
    waits: IntCounter,
}

/// The diff threads: two lanes with a bound each on how many diffs run at once.
pub struct Compute {
    small: Lane,
    large: Lane,
    /// `unpoll_diffs_running`.
    running: IntGauge,
    /// `server.diff_inline_max`.
    inline_max: usize,
    /// `unpoll_diffs_total{lane}` for `inline`, `small` and `large`.
    places: [IntCounter; 3],
    /// `unpoll_diff_handovers_total`.
    handovers: IntCounter,
}

impl Compute {
    /// At most `threads` diffs at once in each lane (`server.diff_threads`); bodies under
    /// `inline_max` bytes tried inline first (`server.diff_inline_max`).
    pub fn new(threads: usize, inline_max: usize, metrics: &Metrics) -> Compute {
        let lane =
            |name| Lane { permits: Semaphore::new(threads), waits: metrics.diff_waits.with_label_values(&[name]) };
        Compute {
            small: lane("small"),
            large: lane("large"),
            running: metrics.diffs_running.clone(),
            inline_max: inline_max.min(LARGE_BODY),
            places: crate::metrics::DIFF_PLACES.map(|place| metrics.diffs.with_label_values(&[place])),
            handovers: metrics.diff_handovers.clone(),
        }
    }

    /// Parses and diffs `job`: inline if its body is small and its diff cheap, else on a diff
    /// thread of its lane.
    pub async fn diff(&self, job: DiffJob) -> Result<Diffed, BodyError> {
        let size = job.body.len();
        if size < self.inline_max {
            let budget = job.options.budget;
            let mut quick = job.clone();
            quick.options.budget = budget.min(INLINE_BUDGET);
            let done = quick.run();
            let cut_short = matches!(&done, Ok(d) if d.change.as_ref().is_some_and(|c| c.cut_short));
            if !cut_short || budget <= INLINE_BUDGET {
                self.places[0].inc();
                return done;
            }
            self.handovers.inc();
        }
        self.places[if size >= LARGE_BODY { 2 } else { 1 }].inc();
        self.run(size, move || job.run()).await
    }

    /// Runs `job`, the diff of a body of `size` bytes, on a blocking thread once its lane has
    /// a free place. A panic in the job is raised again here, in the caller's task.
    pub async fn run<T: Send + 'static>(&self, size: usize, job: impl FnOnce() -> T + Send + 'static) -> T {
        let lane = if size >= LARGE_BODY { &self.large } else { &self.small };
        let permit = match lane.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                lane.waits.inc();
                lane.permits.acquire().await.expect("the semaphore is never closed")
            }
        };
        self.running.inc();
        let result = tokio::task::spawn_blocking(job).await;
        self.running.dec();
        drop(permit);
        match result {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a diff was cancelled: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn job(body: &str) -> DiffJob {
        DiffJob {
            body: Bytes::from(body.to_string()),
            json: true,
            previous: None,
            options: DiffOptions::default(),
            wanted: Wanted::NONE,
        }
    }

    #[test]
    fn json_too_deep_to_parse_is_an_error_not_text() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(job(&deep).run().err(), Some(BodyError::TooDeep));
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(job(&fine).run().unwrap().doc.is_some());
        // Brackets inside strings do not count; broken JSON is still text.
        let text = format!("{{\"a\":\"{}\"", "[".repeat(300));
        let diffed = job(&text).run().unwrap();
        assert!(diffed.doc.is_none() && diffed.change.is_some());
    }

    fn diffing(previous: &serde_json::Value, next: &serde_json::Value) -> DiffJob {
        DiffJob {
            body: Bytes::from(serde_json::to_vec(next).unwrap()),
            json: true,
            previous: Some(Text::unindexed(Bytes::from(serde_json::to_vec(previous).unwrap()))),
            options: DiffOptions::default(),
            wanted: Wanted { json_patch: true, merge_patch: false },
        }
    }

    #[tokio::test]
    async fn small_cheap_diffs_run_inline_and_expensive_ones_are_handed_over() {
        let metrics = Metrics::new();
        let compute = Compute::new(1, 16 * 1024, &metrics);
        let place = |p: &str| metrics.diffs.with_label_values(&[p]).get();
        // One changed row of a small document: inline, never on a diff thread.
        let rows: Vec<_> = (0..100).map(|i| serde_json::json!({"id": i, "v": 0})).collect();
        let mut changed = rows.clone();
        changed[50]["v"] = serde_json::json!(1);
        let (a, b) = (serde_json::json!({"rows": rows}), serde_json::json!({"rows": changed}));
        let diffed = compute.diff(diffing(&a, &b)).await.unwrap();
        assert_eq!(
            &diffed.change.unwrap().json_patch.unwrap()[..],
            br#"[{"op":"replace","path":"/rows/50/v","value":1}]"#
        );
        assert_eq!((place("inline"), place("small"), metrics.diff_handovers.get()), (1, 0, 0));
        assert_eq!(metrics.diff_waits.with_label_values(&["small"]).get() + metrics.diffs_running.get() as u64, 0);
        // A small body whose diff needs more than the inline budget: done again on a diff
        // thread with the route's whole budget, with the result a diff thread alone gives.
        let numbers: Vec<u32> = (0..2000).collect();
        let reversed: Vec<u32> = numbers.iter().rev().copied().collect();
        let (a, b) = (serde_json::json!(numbers), serde_json::json!(reversed));
        let job = diffing(&a, &b);
        assert!(job.body.len() < 16 * 1024);
        let mut quick = job.clone();
        quick.options.budget = INLINE_BUDGET;
        assert!(quick.run().unwrap().change.unwrap().cut_short, "the inline budget is too small for this one");
        let whole = job.clone().run().unwrap().change.unwrap();
        let diffed = compute.diff(job).await.unwrap().change.unwrap();
        assert_eq!(diffed, whole);
        assert!(!diffed.cut_short);
        assert_eq!((place("inline"), place("small"), metrics.diff_handovers.get()), (1, 1, 1));
        // Bodies of diff_inline_max bytes or more, and everything with it at 0, go to a thread.
        let never = Compute::new(1, 0, &metrics);
        never.diff(diffing(&serde_json::json!(1), &serde_json::json!(2))).await.unwrap();
        assert_eq!((place("inline"), place("small")), (1, 2));
    }

    #[tokio::test]
    async fn runs_off_the_async_workers_and_bounds_concurrency() {
        let metrics = Metrics::new();
        let compute = Arc::new(Compute::new(1, 0, &metrics));
        let worker = std::thread::current().id();
        let ran_on = compute.run(10, || std::thread::current().id()).await;
        assert_ne!(ran_on, worker, "the job ran on a blocking thread");
        // A large body's diff holds the large lane; a small one still runs at once.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let large = tokio::spawn({
            let compute = compute.clone();
            async move { compute.run(LARGE_BODY, move || rx.recv().ok()).await }
        });
        while metrics.diffs_running.get() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(compute.run(10, || 1).await, 1);
        // Another large one waits its turn.
        let second = tokio::spawn({
            let compute = compute.clone();
            async move { compute.run(LARGE_BODY + 1, || 2).await }
        });
        let waits = metrics.diff_waits.with_label_values(&["large"]);
        while waits.get() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.diff_waits.with_label_values(&["small"]).get(), 0);
        tx.send(()).unwrap();
        assert_eq!(large.await.unwrap(), Some(()));
        assert_eq!(second.await.unwrap(), 2);
        assert_eq!(metrics.diffs_running.get(), 0);
    }
}
