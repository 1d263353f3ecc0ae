//! A topic whose versions come from elsewhere: a cluster's leader, through Redis (events as
//! they come, or a stored history), and the moves between following and polling.

use super::{new_epoch, whole, Applied, Pending, Topic};
use crate::diff::Delta;
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

/// What [`Topic::receive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Published,
    /// Not newer than the current version.
    Stale,
    /// Newer than the next version: the ones between are missing.
    Gap,
}

/// One version from a stored history: its patches (`None` where it went out whole).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub version: u64,
    pub json_patch: Option<Bytes>,
    pub merge_patch: Option<Bytes>,
}

impl Topic {
    /// The current version as if it were about to be published: for a cluster's leader that
    /// makes the stored state its own.
    pub fn current_as_pending(&self) -> Option<Pending> {
        let state = self.state();
        let current = state.current.as_ref()?;
        let delta = Some(Delta::whole(current.snapshot()?));
        Some(Pending {
            body: None,
            delta,
            version: current.version,
            epoch: state.epoch.clone(),
            applied: Applied::Unchanged,
        })
    }

    /// An event from elsewhere (a cluster's leader, through Redis): published as it is when it
    /// is the next version, sent whole when it starts a new epoch; older versions are
    /// ignored. A version past the next is refused: the events between are missing
    /// ([`Received::Gap`]).
    pub fn receive(&self, epoch: &str, version: u64, delta: Delta) -> Received {
        let mut state = self.state();
        let state = &mut *state;
        let current = state.current.as_ref().map(|c| c.version);
        if state.epoch != epoch || current.is_none() {
            state.epoch = epoch.to_string();
            self.forget(state);
            state.error = None;
            self.publish(state, whole(delta), version);
            return Received::Published;
        }
        let current = current.unwrap_or(0);
        if version <= current {
            return Received::Stale;
        }
        if version > current + 1 {
            return Received::Gap;
        }
        state.error = None;
        self.publish(state, delta, version);
        Received::Published
    }

    /// Fills a topic from a stored history (a cluster's, in Redis): events `from` on, each a
    /// pair of patches, the last one with `document`. What the topic had is replaced when the
    /// history does not continue it.
    pub fn restore(&self, epoch: &str, events: Vec<Stored>, document: Bytes) {
        let mut state = self.state();
        let state = &mut *state;
        let continues = state.epoch == epoch
            && events.first().is_some_and(|first| state.current.as_ref().map_or(0, |c| c.version) + 1 == first.version);
        if !continues {
            state.epoch = epoch.to_string();
            self.forget(state);
        }
        state.error = None;
        let last = events.len().saturating_sub(1);
        for (i, stored) in events.into_iter().enumerate() {
            let snapshot = if i == last { document.clone() } else { Bytes::new() };
            let delta =
                Delta { snapshot, json_patch: stored.json_patch, merge_patch: stored.merge_patch, cut_short: false };
            self.publish(state, delta, stored.version);
        }
    }

    /// Takes over as the source of this topic's versions from a stored state: the current
    /// document (parsed, to diff the next poll against) at `version` of `epoch`. When the topic
    /// is at another version, that document is published whole first.
    pub fn adopt(&self, epoch: &str, version: u64, doc: Arc<Value>, snapshot: Bytes) {
        let mut state = self.state();
        let state = &mut *state;
        let here = state.current.as_ref().map(|c| c.version);
        if state.epoch != epoch || here != Some(version) {
            if state.epoch != epoch {
                state.epoch = epoch.to_string();
                self.forget(state);
            }
            self.publish(state, Delta::whole(snapshot), version);
        }
        state.doc = Some(doc);
        state.last_body = None;
    }

    /// Starts a new epoch from the current document: subscribers get it whole, under a new id
    /// (a cluster node that switches to polling alone, whose versions no longer follow the
    /// cluster's).
    pub fn rebase(&self) {
        let mut state = self.state();
        let state = &mut *state;
        state.epoch = new_epoch();
        let Some(current) = state.current.clone() else { return };
        self.forget(state);
        if let Some(snapshot) = current.snapshot() {
            self.publish(state, Delta::whole(snapshot), current.version + 1);
        }
    }
}
