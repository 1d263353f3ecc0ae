//! A topic whose versions come from elsewhere: a cluster's leader, through Redis (events as
//! they come, or a stored history), and the moves between following and polling.

use super::{new_epoch, whole, Applied, Pending, Topic};
use crate::diff::Delta;
use crate::wire::event::Msg;
use bytes::Bytes;

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
    /// pair of patches, the last one with `document`. When the history continues the topic's
    /// current version, subscribers are sent the missed patches; otherwise what the topic had
    /// is replaced, and subscribers are sent the last document whole (their documents are not
    /// what those patches apply to), while the history is kept for resumes.
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
            if continues {
                self.publish(state, delta, stored.version);
                continue;
            }
            let event = self.record(state, delta, stored.version);
            if i == last {
                self.send(Msg::Snapshot(event));
            }
        }
    }

    /// Takes over as the source of this topic's versions from a stored state: the current
    /// document (its compact text, to diff the next poll against) at `version` of `epoch`.
    /// When the topic is at another version, that document is published whole first.
    pub fn adopt(&self, epoch: &str, version: u64, doc: crate::diff::scan::Text, snapshot: Bytes) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::metrics::Metrics;
    use crate::route_table::{RouteTable, StreamRoute};
    use crate::topic::state::TopicMetrics;
    use crate::wire::event::ResumeId;
    use std::sync::Arc;

    fn topic() -> Topic {
        let config = crate::config::parse_config(
            "upstreams: {a: {servers: ['127.0.0.1:9']}}\nroutes: [{match: /x, upstream: a, stream: {history: 8}}]\n",
        )
        .unwrap();
        let metrics = Metrics::default();
        let table = RouteTable::new(&config, &metrics, None);
        let route = StreamRoute::of(&table.routes[0]).unwrap();
        let (key, poll, _) = crate::topic::key::derive("/x", &route.stream, "/x", None, &Default::default());
        let m = TopicMetrics::of(&metrics, "/x");
        Topic::new(key, Arc::new(route), poll, 16, m, None)
    }

    fn stored(version: u64) -> Stored {
        let patch = format!(r#"[{{"op":"replace","path":"/v","value":{version}}}]"#);
        Stored { version, json_patch: Some(Bytes::from(patch)), merge_patch: None }
    }

    fn kinds(msgs: &[Msg]) -> Vec<&'static str> {
        msgs.iter()
            .map(|m| match m {
                Msg::Event(e) if e.patch(Format::JsonPatch).is_some() => "patch",
                Msg::Event(_) | Msg::Snapshot(_) => "snapshot",
                Msg::Error(_) => "error",
            })
            .collect()
    }

    #[test]
    fn a_restored_history_serves_resumes_with_only_the_missed_patches() {
        let t = topic();
        t.restore("ep", (3..=6).map(stored).collect(), Bytes::from_static(br#"{"v":6}"#));
        assert_eq!(t.position(), Some(("ep".to_string(), 6)));
        let (initial, _) = t.open(Some(&ResumeId { epoch: "ep".into(), version: 4 }), Format::JsonPatch);
        assert_eq!(kinds(&initial), ["patch", "patch"]);
        let (initial, _) = t.open(Some(&ResumeId { epoch: "ep".into(), version: 1 }), Format::JsonPatch);
        assert_eq!(kinds(&initial), ["snapshot"], "older than the history");
    }

    #[test]
    fn subscribers_get_missed_patches_only_when_the_history_continues_their_document() {
        let t = topic();
        t.restore("ep", vec![stored(1)], Bytes::from_static(br#"{"v":1}"#));
        let (_, mut rx) = t.open(None, Format::JsonPatch);
        t.restore("ep", (2..=3).map(stored).collect(), Bytes::from_static(br#"{"v":3}"#));
        let got: Vec<Msg> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(kinds(&got), ["patch", "patch"]);
        // Another epoch: the patches are not for the document subscribers have.
        t.restore("other", (7..=9).map(stored).collect(), Bytes::from_static(br#"{"v":9}"#));
        let got: Vec<Msg> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(kinds(&got), ["snapshot"]);
        assert_eq!(t.position(), Some(("other".to_string(), 9)));
    }

    #[test]
    fn received_events_follow_on_are_ignored_when_old_and_refused_past_a_gap() {
        let t = topic();
        let delta = |v: u64| Delta {
            snapshot: Bytes::from(format!(r#"{{"v":{v}}}"#)),
            json_patch: stored(v).json_patch,
            merge_patch: None,
            cut_short: false,
        };
        assert_eq!(t.receive("ep", 5, delta(5)), Received::Published, "the first one is taken whole");
        assert_eq!(t.receive("ep", 6, delta(6)), Received::Published);
        assert_eq!(t.receive("ep", 6, delta(6)), Received::Stale);
        assert_eq!(t.receive("ep", 9, delta(9)), Received::Gap);
        let (_, mut rx) = t.open(None, Format::JsonPatch);
        assert_eq!(t.receive("new", 2, delta(2)), Received::Published, "a new epoch");
        let got: Vec<Msg> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(kinds(&got), ["snapshot"], "sent whole");
    }
}
