//! Who holds the admin listener's connections, and who gives one up when it is full.
//!
//! The listener serves probes (`/healthz`, `/readyz`) that must always answer: a liveness
//! probe that cannot connect gets the pod restarted. So a full listener does not refuse the
//! newcomer; it closes an **idle** connection (one waiting for its next request, a partial
//! request head included) to make room:
//! - a peer address that already holds its share (half of `server.admin_max_connections`)
//!   gives up its own longest-idle connection;
//! - otherwise, at the cap, the peer holding the most connections gives up its longest-idle
//!   one.
//!
//! Among a peer's idle connections, one that was answered and waits for its next request gives
//! way before one that has not sent its first: a probe's fresh connection, in the moment before
//! its request arrives, is not closed to keep another's kept-alive one.
//!
//! Only when every connection that could give way is busy writing an answer (bounded by the
//! write timeout) is the newcomer refused. Each eviction and refusal is counted in
//! `unpoll_admin_connections_closed_total{reason}`, and `unpoll_admin_connections` shows the
//! connections held.

use prometheus::{IntCounterVec, IntGauge};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// The listener's connections.
pub struct Slots {
    max: usize,
    per_peer: usize,
    held: Mutex<Held>,
    open: IntGauge,
    closed: IntCounterVec,
}

#[derive(Default)]
struct Held {
    next: u64,
    by_id: HashMap<u64, Holder>,
}

struct Holder {
    peer: IpAddr,
    /// Since when it has waited for a request; `None` while it answers one.
    idle_since: Option<Instant>,
    /// Whether it has been answered at least once.
    served: bool,
    evict: Arc<Notify>,
}

/// One connection's place; given back when dropped.
pub struct Slot {
    id: u64,
    slots: Arc<Slots>,
    /// Notified when the connection must close to make room for another.
    pub evicted: Arc<Notify>,
}

impl Slots {
    /// `max` connections at once, a peer at most half of them (at least one).
    pub fn new(max: usize, open: IntGauge, closed: IntCounterVec) -> Arc<Slots> {
        let max = max.max(1);
        Arc::new(Slots { max, per_peer: (max / 2).max(1), held: Mutex::default(), open, closed })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection from `peer`, made by evicting an idle one if need be;
    /// `None` when none can give way.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let mut held = self.held();
        let of_peer = held.by_id.values().filter(|h| h.peer == peer).count();
        if of_peer >= self.per_peer {
            if !self.evict(&mut held, Some(peer)) {
                self.closed.with_label_values(&["refused"]).inc();
                return None;
            }
        } else if held.by_id.len() >= self.max && !self.evict(&mut held, None) {
            self.closed.with_label_values(&["refused"]).inc();
            return None;
        }
        held.next += 1;
        let id = held.next;
        let evicted = Arc::new(Notify::new());
        held.by_id.insert(id, Holder { peer, idle_since: Some(Instant::now()), served: false, evict: evicted.clone() });
        self.open.set(held.by_id.len() as i64);
        Some(Slot { id, slots: self.clone(), evicted })
    }

    /// Closes the longest-idle connection of `peer`, or of the peer holding the most with one
    /// idle. Whether one was.
    fn evict(&self, held: &mut Held, peer: Option<IpAddr>) -> bool {
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for h in held.by_id.values() {
            *counts.entry(h.peer).or_default() += 1;
        }
        let victim = held
            .by_id
            .iter()
            .filter(|(_, h)| h.idle_since.is_some() && peer.is_none_or(|p| p == h.peer))
            // The biggest holder first, then its answered connections, then its longest idle.
            .min_by_key(|(_, h)| (std::cmp::Reverse(counts[&h.peer]), !h.served, h.idle_since))
            .map(|(id, _)| *id);
        let Some(holder) = victim.and_then(|id| held.by_id.remove(&id)) else { return false };
        holder.evict.notify_one();
        self.closed.with_label_values(&["evicted"]).inc();
        self.open.set(held.by_id.len() as i64);
        true
    }

    fn set_idle(&self, id: u64, idle: bool) {
        if let Some(h) = self.held().by_id.get_mut(&id) {
            h.idle_since = idle.then(Instant::now);
            h.served |= !idle;
        }
    }
}

impl Slot {
    /// Counts the connection closed because it sent no request in time.
    pub fn timed_out(&self) {
        self.slots.closed.with_label_values(&["timeout"]).inc();
    }

    /// It waits for a request: it may be evicted.
    pub fn idle(&self) {
        self.slots.set_idle(self.id, true);
    }

    /// It answers a request: it is not evicted meanwhile.
    pub fn busy(&self) {
        self.slots.set_idle(self.id, false);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held();
        if held.by_id.remove(&self.id).is_some() {
            self.slots.open.set(held.by_id.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn slots(max: usize) -> Arc<Slots> {
        let open = IntGauge::new("open", "open").unwrap();
        let closed = IntCounterVec::new(Opts::new("closed", "closed"), &["reason"]).unwrap();
        Slots::new(max, open, closed)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_full_listener_evicts_the_biggest_holders_longest_idle_connection() {
        let s = slots(4);
        let a1 = s.take(ip(1)).unwrap();
        let a2 = s.take(ip(1)).unwrap();
        let b1 = s.take(ip(2)).unwrap();
        let _b2 = s.take(ip(2)).unwrap();
        a1.busy();
        b1.busy();
        // Full: a third peer gets in, at the cost of the longest-idle connection of a biggest
        // holder (a2 or b2 are idle; both peers hold two: the older, a2).
        let c = s.take(ip(3)).unwrap();
        assert!(a2.evicted.notified().now_or_never_ready(), "a2 was told to close");
        assert_eq!(s.open.get(), 4);
        assert_eq!(s.closed.with_label_values(&["evicted"]).get(), 1);
        // A peer at its share (2 of 4) gives up its own idle connection, never another's.
        let b3 = s.take(ip(2)).unwrap();
        assert_eq!(s.closed.with_label_values(&["evicted"]).get(), 2);
        assert!(!c.evicted.notified().now_or_never_ready(), "the newest peer kept its place");
        // Nothing idle left to give way: refused.
        b3.busy();
        let all_busy = s.take(ip(2));
        assert!(all_busy.is_none() && s.closed.with_label_values(&["refused"]).get() == 1);
        drop(c);
        assert_eq!(s.open.get(), 3, "a dropped slot is given back");
    }

    #[test]
    fn a_fresh_connection_outlasts_kept_alive_ones_that_were_answered() {
        let s = slots(4);
        let fresh = s.take(ip(1)).unwrap();
        let kept = s.take(ip(1)).unwrap();
        kept.busy();
        kept.idle();
        // ip(1) is at its share: the answered one gives way, though the fresh one is older.
        let _next = s.take(ip(1)).unwrap();
        assert!(kept.evicted.notified().now_or_never_ready(), "the answered connection was told to close");
        assert!(!fresh.evicted.notified().now_or_never_ready(), "the one yet to send its request kept its place");
    }

    trait NowOrNever {
        fn now_or_never_ready(self) -> bool;
    }

    impl<F: std::future::Future> NowOrNever for F {
        fn now_or_never_ready(self) -> bool {
            futures_util::FutureExt::now_or_never(self).is_some()
        }
    }
}
