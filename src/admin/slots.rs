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
//! its request arrives, is not closed to keep another's kept-alive one. And a connection whose
//! request has already arrived (bytes wait in the kernel's buffer, seen with a peek, not yet
//! read because the listener's task has not run) never gives way: it is about to be answered,
//! so a burst of reconnecting clients cannot close a probe's connection between its arrival
//! and its answer, however busy the machine.
//!
//! Only when every connection that could give way is busy writing an answer (bounded by the
//! write timeout) is the newcomer refused. Each eviction and refusal is counted in
//! `unpoll_admin_connections_closed_total{reason}`, and `unpoll_admin_connections` shows the
//! connections held.

use crate::sys;
use prometheus::{IntCounterVec, IntGauge};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
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
    /// Its socket, peeked for a request waiting to be read. The listener drops the slot before
    /// it closes the socket, so the number is the connection's for as long as it is held.
    fd: Option<RawFd>,
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

    /// A place for a new connection from `peer` on socket `fd`, made by evicting an idle one
    /// if need be; `None` when none can give way.
    pub fn take(self: &Arc<Self>, peer: IpAddr, fd: Option<RawFd>) -> Option<Slot> {
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
        held.by_id
            .insert(id, Holder { peer, idle_since: Some(Instant::now()), served: false, fd, evict: evicted.clone() });
        self.open.set(held.by_id.len() as i64);
        Some(Slot { id, slots: self.clone(), evicted })
    }

    /// Closes the longest-idle connection of `peer`, or of the peer holding the most with one
    /// idle, passing over those whose request has arrived. Whether one was.
    fn evict(&self, held: &mut Held, peer: Option<IpAddr>) -> bool {
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for h in held.by_id.values() {
            *counts.entry(h.peer).or_default() += 1;
        }
        let mut idle: Vec<_> = held
            .by_id
            .iter()
            .filter(|(_, h)| h.idle_since.is_some() && peer.is_none_or(|p| p == h.peer))
            .map(|(id, h)| ((std::cmp::Reverse(counts[&h.peer]), !h.served, h.idle_since), *id, h.fd))
            .collect();
        // The biggest holder first, then its answered connections, then its longest idle; the
        // first with no request waiting (one peek each, in that order, until one is found).
        idle.sort_unstable_by_key(|(key, id, _)| (*key, *id));
        let victim = idle
            .into_iter()
            .find(|(_, _, fd)| fd.is_none_or(|fd| sys::pending_fd(fd) != sys::Pending::Data))
            .map(|(_, id, _)| id);
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
    use std::os::fd::AsRawFd;

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
        let a1 = s.take(ip(1), None).unwrap();
        let a2 = s.take(ip(1), None).unwrap();
        let b1 = s.take(ip(2), None).unwrap();
        let _b2 = s.take(ip(2), None).unwrap();
        a1.busy();
        b1.busy();
        // Full: a third peer gets in, at the cost of the longest-idle connection of a biggest
        // holder (a2 or b2 are idle; both peers hold two: the older, a2).
        let c = s.take(ip(3), None).unwrap();
        assert!(a2.evicted.notified().now_or_never_ready(), "a2 was told to close");
        assert_eq!(s.open.get(), 4);
        assert_eq!(s.closed.with_label_values(&["evicted"]).get(), 1);
        // A peer at its share (2 of 4) gives up its own idle connection, never another's.
        let b3 = s.take(ip(2), None).unwrap();
        assert_eq!(s.closed.with_label_values(&["evicted"]).get(), 2);
        assert!(!c.evicted.notified().now_or_never_ready(), "the newest peer kept its place");
        // Nothing idle left to give way: refused.
        b3.busy();
        let all_busy = s.take(ip(2), None);
        assert!(all_busy.is_none() && s.closed.with_label_values(&["refused"]).get() == 1);
        drop(c);
        assert_eq!(s.open.get(), 3, "a dropped slot is given back");
    }

    #[test]
    fn a_fresh_connection_outlasts_kept_alive_ones_that_were_answered() {
        let s = slots(4);
        let fresh = s.take(ip(1), None).unwrap();
        let kept = s.take(ip(1), None).unwrap();
        kept.busy();
        kept.idle();
        // ip(1) is at its share: the answered one gives way, though the fresh one is older.
        let _next = s.take(ip(1), None).unwrap();
        assert!(kept.evicted.notified().now_or_never_ready(), "the answered connection was told to close");
        assert!(!fresh.evicted.notified().now_or_never_ready(), "the one yet to send its request kept its place");
    }

    #[test]
    fn a_connection_whose_request_has_arrived_is_not_closed_to_make_room() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = |request: bool| {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            if request {
                client.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
            }
            let (server, _) = listener.accept().unwrap();
            (client, server)
        };
        let (_c1, asked) = connect(true);
        let (_c2, silent) = connect(false);
        let s = slots(4);
        let waiting = s.take(ip(1), Some(asked.as_raw_fd())).unwrap();
        let quiet = s.take(ip(1), Some(silent.as_raw_fd())).unwrap();
        // The request is in the kernel's buffer: the peek sees it (loopback delivers at once,
        // but give it a moment on a loaded machine).
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while sys::pending_fd(asked.as_raw_fd()) != sys::Pending::Data && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // ip(1) is at its share (2 of 4): the older connection has its request waiting, so the
        // newer, silent one gives way.
        let _next = s.take(ip(1), None).unwrap();
        assert!(quiet.evicted.notified().now_or_never_ready(), "the silent connection was told to close");
        assert!(!waiting.evicted.notified().now_or_never_ready(), "the one with its request waiting kept its place");
        // Only connections with a request waiting (or busy) are left: the newcomer is refused.
        _next.busy();
        assert!(s.take(ip(1), None).is_none(), "nothing could give way");
        assert!(!waiting.evicted.notified().now_or_never_ready());
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
