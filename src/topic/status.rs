//! What a topic tells `/status`: its subscribers, its last poll, its version and its error.
//! Nothing of its request: no header, and so no credential.

use super::Topic;
use std::time::SystemTime;

/// A topic's last poll and this node's part in it.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// When its last poll was answered, and its outcome (as `unpoll_upstream_polls_total`).
    pub polled: Option<(SystemTime, &'static str)>,
    /// When its last refresh poll began, and why (see `refresh`).
    pub refreshed: Option<(SystemTime, crate::topic::refresh::Cause)>,
    /// `local` (it polls here: one process, or a cluster node while Redis is away), or in a
    /// cluster `leader` or `follower`.
    pub role: &'static str,
}

impl Default for Report {
    fn default() -> Report {
        Report { polled: None, refreshed: None, role: "local" }
    }
}

/// A topic's state, read at once.
#[derive(Debug, Clone)]
pub struct TopicStatus {
    /// Subscribers by `Protocol::index`.
    pub protocols: [usize; 2],
    /// Subscribers by `Format::index`.
    pub formats: [usize; 3],
    pub report: Report,
    /// The current version's event id, `<epoch>-<version>`.
    pub version: Option<String>,
    /// The error subscribers were last told, while the upstream fails.
    pub error: Option<String>,
}

impl Topic {
    /// Records a poll's outcome.
    pub fn polled(&self, outcome: &'static str) {
        self.report().polled = Some((SystemTime::now(), outcome));
    }

    /// Records a refresh poll beginning.
    pub fn refreshed(&self, cause: crate::topic::refresh::Cause) {
        self.report().refreshed = Some((SystemTime::now(), cause));
    }

    /// Whether this node polls the topic (alone, or as a cluster's leader), not only follows
    /// another node's polls.
    pub fn polls_here(&self) -> bool {
        self.report().role != "follower"
    }

    /// Records this node's role for the topic.
    pub fn set_role(&self, role: &'static str) {
        self.report().role = role;
    }

    fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The length of the body the current document came from; of the document as compact
    /// JSON when it came from elsewhere (a cluster's leader); 0 before the first.
    pub fn body_len(&self) -> usize {
        let state = self.state();
        match (&state.last_body, &state.current) {
            (Some(body), _) => body.len(),
            (None, Some(current)) => current.snapshot().map_or(0, |s| s.len()),
            (None, None) => 0,
        }
    }

    pub fn status(&self) -> TopicStatus {
        let report = *self.report();
        let state = self.state();
        TopicStatus {
            protocols: self.audience.by_protocol(),
            formats: self.audience.by_format(),
            report,
            version: state.current.as_ref().map(|c| format!("{}-{}", state.epoch, c.version)),
            error: state.error.as_ref().map(|e| e.error.clone()),
        }
    }
}
