//! A topic's history: the versions it keeps for subscribers resuming with `Last-Event-ID`,
//! each with its patches (never a whole document), within the route's `history` events and
//! `max_history_bytes` bytes, oldest dropped first. What it holds counts in
//! `unpoll_history_bytes{route}`, and versions dropped for the byte budget in
//! `unpoll_history_trimmed_total{route}`.

use crate::config::Format;
use crate::wire::event::Event;
use prometheus::{IntCounter, IntGauge};
use std::collections::VecDeque;
use std::sync::Arc;

pub struct History {
    events: VecDeque<Arc<Event>>,
    /// What it holds, by [`Event::retained_bytes`].
    bytes: usize,
    /// `unpoll_history_bytes{route}`: this history's share of it.
    gauge: IntGauge,
    /// `unpoll_history_trimmed_total{route}`.
    trimmed: IntCounter,
}

impl History {
    pub fn new(gauge: IntGauge, trimmed: IntCounter) -> History {
        History { events: VecDeque::new(), bytes: 0, gauge, trimmed }
    }

    /// Keeps `event`, dropping the oldest past `count` events or `max_bytes` bytes.
    pub fn push(&mut self, event: Arc<Event>, count: usize, max_bytes: usize) {
        let size = event.retained_bytes();
        self.events.push_back(event);
        self.bytes += size;
        self.gauge.add(size as i64);
        while self.events.len() > count || self.bytes > max_bytes {
            if self.events.len() <= count {
                // Dropped for the byte budget, not the count: say so.
                self.trimmed.inc();
            }
            let Some(oldest) = self.events.pop_front() else { break };
            let size = oldest.retained_bytes();
            self.bytes -= size;
            self.gauge.sub(size as i64);
        }
    }

    /// Drops every version (they belong to another epoch).
    pub fn clear(&mut self) {
        self.gauge.sub(self.bytes as i64);
        self.events.clear();
        self.bytes = 0;
    }

    /// The versions after `version` up to `current`, each with its patch in `format`: what a
    /// subscriber who had `version` missed. `None` when the history does not reach back to
    /// it, or one of them has no such patch (a snapshot format, a patch too large or never
    /// computed): that subscriber needs the current snapshot instead.
    pub fn missed_since(&self, version: u64, current: u64, format: Format) -> Option<Vec<Arc<Event>>> {
        let reaches = self.events.front().is_some_and(|oldest| oldest.version <= version + 1);
        if version >= current || !reaches {
            return None;
        }
        let missed: Vec<Arc<Event>> = self.events.iter().filter(|e| e.version > version).cloned().collect();
        missed.iter().all(|e| e.patch(format).is_some()).then_some(missed)
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes as i64);
    }
}
