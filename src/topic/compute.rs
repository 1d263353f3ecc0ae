//! The CPU-heavy part of a poll, parsing a new body and diffing it, runs on tokio's blocking
//! threads: a document that is expensive to diff never holds up the async workers that proxy
//! requests and feed streams. Bodies of [`LARGE_BODY`] bytes or more take their own lane, so a
//! large document never delays the diffs of small ones; each lane runs at most
//! `server.diff_threads` diffs at once. Each JSON Patch diff is also bounded by the route's
//! `diff_budget` (see [`crate::diff::delta_for`]).

use crate::diff::{delta_for, Delta, DiffOptions, Wanted};
use crate::metrics::Metrics;
use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// A new body to parse and diff against the topic's document.
pub struct DiffJob {
    pub body: Bytes,
    /// The upstream said the body is JSON (or said nothing).
    pub json: bool,
    /// The document the new one is diffed against.
    pub previous: Option<Arc<Value>>,
    pub options: DiffOptions,
    /// The patches someone will read.
    pub wanted: Wanted,
}

/// What a [`DiffJob`] found: the parsed document (if the body is JSON) and the change.
pub struct Diffed {
    pub body: Bytes,
    pub doc: Option<Arc<Value>>,
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
    pub fn run(self) -> Result<Diffed, BodyError> {
        let doc = if self.json {
            match serde_json::from_slice::<Value>(&self.body) {
                Ok(doc) => Some(Arc::new(doc)),
                Err(_) if depth(&self.body) > MAX_DEPTH => return Err(BodyError::TooDeep),
                Err(_) => None,
            }
        } else {
            None
        };
        let change = match &doc {
            Some(doc) => delta_for(self.previous.as_deref(), doc, &self.options, self.wanted),
            None => {
                // Not JSON: sent whole, as a JSON string.
                let text = Value::String(String::from_utf8_lossy(&self.body).into_owned());
                Some(Delta::whole(Bytes::from(serde_json::to_vec(&text).expect("a string serialises"))))
            }
        };
        Ok(Diffed { body: self.body, doc, change })
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
}

impl Compute {
    /// At most `threads` diffs at once in each lane (`server.diff_threads`).
    pub fn new(threads: usize, metrics: &Metrics) -> Compute {
        let lane =
            |name| Lane { permits: Semaphore::new(threads), waits: metrics.diff_waits.with_label_values(&[name]) };
        Compute { small: lane("small"), large: lane("large"), running: metrics.diffs_running.clone() }
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

    #[tokio::test]
    async fn runs_off_the_async_workers_and_bounds_concurrency() {
        let metrics = Metrics::new();
        let compute = Arc::new(Compute::new(1, &metrics));
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
