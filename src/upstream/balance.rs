//! Choosing one server of an upstream: weighted round robin, consistent hashing on a Ketama
//! ring, the opaque ids a sticky cookie names servers by, and each server's health.
//!
//! Health is passive on every upstream: a server that fails `unhealthy_after` requests or polls
//! in a row (refused, reset, timed out) is out for a while (`health.interval`, or `OUT_FOR`),
//! then tried again. With `health` configured, active checks ([`super::health`]) also take a
//! server out after `unhealthy_after` failed checks, and only `healthy_after` passed checks in
//! a row bring it back. With every server out, a request still goes to one (fail open):
//! refusing would be worse than trying.

use crate::config::ServerAddr;
use crate::metrics::Metrics;
use prometheus::{IntCounter, IntGauge};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Consecutive failures that take a server out, without `health`.
pub const UNHEALTHY_AFTER: u32 = 3;
/// How long a server that failed requests stays out before it is tried again, without `health`.
pub const OUT_FOR: Duration = Duration::from_secs(5);

/// When a server is taken out and brought back (from `upstreams.<name>.health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    pub out_for: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { unhealthy_after: UNHEALTHY_AFTER, healthy_after: 1, out_for: OUT_FOR }
    }
}
/// Points on the ring per unit of weight.
const POINTS: u32 = 160;

/// One server of an upstream.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// `host:port` as configured.
    pub name: String,
    /// How metrics and logs name it (`host:port` as configured, plus the address).
    pub label: String,
    pub weight: u32,
    /// What a sticky cookie says for it: a hash of the upstream, the configured name and the
    /// address, which names it without revealing its address, and stays the same across
    /// reloads and restarts (and across instances).
    pub id: String,
    /// Requests and polls in a row that could not reach it (passive health).
    failures: AtomicU32,
    /// Active checks in a row that failed: counted apart from `failures`, so that traffic
    /// the server still answers never undoes what its checks say.
    check_failures: AtomicU32,
    /// Passed checks in a row while it is out.
    passes: AtomicU32,
    out_until: Mutex<Option<Instant>>,
    /// Out because its checks failed: only passed checks bring it back.
    checked_out: AtomicBool,
    /// When its next active check is due.
    pub next_check: Mutex<Option<Instant>>,
    /// Whether it was last seen up, for logging each transition once.
    up: AtomicBool,
    /// Whether it is failing (polls, or requests in TLS): an outage is logged once, and its end.
    outage: AtomicBool,
    /// `unpoll_upstream_server_up{upstream,server}`.
    up_gauge: IntGauge,
    /// `unpoll_upstream_requests_total{upstream,server,kind}`, for `proxy` and `poll`.
    pub proxied: IntCounter,
    pub polled: IntCounter,
}

/// A change in a server's health, to be logged and counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Down,
    Up,
}

impl Server {
    fn new(upstream: &str, s: &ServerAddr, metrics: &Metrics) -> Server {
        let digest = Sha256::new()
            .chain_update(upstream.as_bytes())
            .chain_update([0])
            .chain_update(s.name.as_bytes())
            .chain_update([0])
            .chain_update(s.addr.to_string().as_bytes())
            .finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let label = s.label();
        let up_gauge = metrics.server_up.with_label_values(&[upstream, &label]);
        up_gauge.set(1);
        for kind in crate::metrics::TLS_FAILURE_KINDS {
            metrics.tls_failures.with_label_values(&[upstream, &label, kind]);
        }
        Server {
            addr: s.addr,
            name: s.name.clone(),
            proxied: metrics.server_requests.with_label_values(&[upstream, &label, "proxy"]),
            polled: metrics.server_requests.with_label_values(&[upstream, &label, "poll"]),
            up_gauge,
            label,
            weight: s.weight,
            id,
            failures: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            out_until: Mutex::new(None),
            checked_out: AtomicBool::new(false),
            next_check: Mutex::new(None),
            up: AtomicBool::new(true),
            outage: AtomicBool::new(false),
        }
    }

    /// The server as configured, with its address.
    pub fn configured(&self) -> ServerAddr {
        ServerAddr { name: self.name.clone(), addr: self.addr, weight: self.weight }
    }

    /// Marks it failing; whether this begins an outage.
    pub fn outage_begins(&self) -> bool {
        !self.outage.swap(true, Ordering::Relaxed)
    }

    /// Marks it answering; whether this ends an outage.
    pub fn outage_ends(&self) -> bool {
        self.outage.swap(false, Ordering::Relaxed)
    }

    /// Whether it may be chosen now.
    pub fn healthy(&self) -> bool {
        if self.checked_out.load(Ordering::Relaxed) {
            return false;
        }
        match *self.out_until.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(until) => Instant::now() >= until,
            None => true,
        }
    }

    /// A request or poll could not reach it.
    pub fn failed(&self, rules: Rules) -> Option<Transition> {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < rules.unhealthy_after {
            return None;
        }
        *self.out_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + rules.out_for);
        self.down()
    }

    /// It answered a request or poll. A server its checks took out stays out until they pass.
    pub fn answered(&self) -> Option<Transition> {
        self.failures.store(0, Ordering::Relaxed);
        if self.up.load(Ordering::Relaxed) || self.checked_out.load(Ordering::Relaxed) {
            return None;
        }
        *self.out_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.back()
    }

    /// An active check failed: `unhealthy_after` in a row take it out, whatever requests and
    /// polls meanwhile say.
    pub fn check_failed(&self, rules: Rules) -> Option<Transition> {
        self.passes.store(0, Ordering::Relaxed);
        let failures = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < rules.unhealthy_after {
            return None;
        }
        self.checked_out.store(true, Ordering::Relaxed);
        self.down()
    }

    /// An active check passed: a server that is out comes back after `healthy_after` in a row.
    pub fn check_passed(&self, rules: Rules) -> Option<Transition> {
        self.check_failures.store(0, Ordering::Relaxed);
        if self.up.load(Ordering::Relaxed) {
            return None;
        }
        if self.passes.fetch_add(1, Ordering::Relaxed) + 1 < rules.healthy_after {
            return None;
        }
        self.passes.store(0, Ordering::Relaxed);
        self.checked_out.store(false, Ordering::Relaxed);
        *self.out_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.back()
    }

    fn down(&self) -> Option<Transition> {
        self.up_gauge.set(0);
        self.up.swap(false, Ordering::Relaxed).then_some(Transition::Down)
    }

    fn back(&self) -> Option<Transition> {
        self.up_gauge.set(1);
        (!self.up.swap(true, Ordering::Relaxed)).then_some(Transition::Up)
    }

    /// Whether it is counted up (for `unpoll_upstream_server_up`).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// The servers of one upstream and the ways to choose among them.
#[derive(Debug)]
pub struct Balancer {
    servers: Vec<Arc<Server>>,
    /// Indexes into `servers`, each as often as its weight, interleaved (smooth weighted
    /// round robin, worked out once).
    order: Vec<usize>,
    next: AtomicUsize,
    /// The Ketama ring: (point, index into `servers`), sorted by point.
    ring: Vec<(u32, usize)>,
}

impl Balancer {
    /// The balancer of `upstream`'s `servers`. A server `previous` already had (the same id
    /// and weight) is carried over with its health, so a reload keeps what was learnt about
    /// it; a server that is gone leaves the metrics.
    pub fn new(upstream: &str, servers: &[ServerAddr], metrics: &Metrics, previous: Option<&Balancer>) -> Balancer {
        let servers: Vec<Arc<Server>> = servers
            .iter()
            .map(|s| {
                let fresh = Server::new(upstream, s, metrics);
                let kept =
                    previous.and_then(|p| p.servers.iter().find(|o| o.id == fresh.id && o.weight == fresh.weight));
                match kept {
                    Some(old) => {
                        old.up_gauge.set(i64::from(old.is_up()));
                        old.clone()
                    }
                    None => Arc::new(fresh),
                }
            })
            .collect();
        for old in previous.map_or(&[][..], |p| &p.servers[..]) {
            if !servers.iter().any(|s| s.label == old.label) {
                let _ = metrics.server_up.remove_label_values(&[upstream, &old.label]);
                for kind in crate::metrics::SERVER_REQUEST_KINDS {
                    let _ = metrics.server_requests.remove_label_values(&[upstream, &old.label, kind]);
                }
                for result in ["ok", "failed"] {
                    let _ = metrics.health_checks.remove_label_values(&[upstream, &old.label, result]);
                }
                for kind in crate::metrics::TLS_FAILURE_KINDS {
                    let _ = metrics.tls_failures.remove_label_values(&[upstream, &old.label, kind]);
                }
            }
        }
        let order = smooth_order(&servers.iter().map(|s| s.weight).collect::<Vec<_>>());
        let mut ring = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            for k in 0..POINTS * s.weight {
                ring.push((point(format!("{}-{k}", s.id).as_bytes()), i));
            }
        }
        ring.sort_unstable();
        Balancer { servers, order, next: AtomicUsize::new(0), ring }
    }

    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// The next healthy server in weighted round-robin order, avoiding `avoid` when another
    /// will do; with none healthy, the next one anyway.
    pub fn round_robin(&self, avoid: Option<SocketAddr>) -> &Arc<Server> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.order.len();
        let at = |k: usize| &self.servers[self.order[(start + k) % n]];
        (0..n)
            .map(at)
            .find(|s| s.healthy() && Some(s.addr) != avoid)
            .or_else(|| (0..n).map(at).find(|s| s.healthy()))
            .unwrap_or_else(|| at(0))
    }

    /// The server `key` hashes to on the ring: the first healthy one from its point on.
    pub fn by_hash(&self, key: &[u8], avoid: Option<SocketAddr>) -> &Arc<Server> {
        let p = point(key);
        let start = self.ring.partition_point(|(q, _)| *q < p);
        let n = self.ring.len();
        let at = |k: usize| &self.servers[self.ring[(start + k) % n].1];
        (0..n)
            .map(at)
            .find(|s| s.healthy() && Some(s.addr) != avoid)
            .or_else(|| (0..n).map(at).find(|s| s.healthy()))
            .unwrap_or_else(|| at(0))
    }

    /// The server a sticky cookie names, if it is still configured and healthy.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.id == id && s.healthy())
    }

    /// The server at `addr`, if it is one of these.
    pub fn find(&self, addr: SocketAddr) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    /// Whether every server is out.
    pub fn all_down(&self) -> bool {
        !self.servers.iter().any(|s| s.healthy())
    }
}

fn point(bytes: &[u8]) -> u32 {
    let d = Sha256::digest(bytes);
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Smooth weighted round robin (as nginx does it), worked out for one whole cycle.
fn smooth_order(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += *w as i64;
            }
            let best = (0..weights.len()).max_by_key(|i| (current[*i], std::cmp::Reverse(*i))).unwrap_or(0);
            current[best] -= total;
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(upstream: &str, servers: &[ServerAddr]) -> Balancer {
        Balancer::new(upstream, servers, &Metrics::default(), None)
    }

    fn servers(n: u16, weight: impl Fn(u16) -> u32) -> Vec<ServerAddr> {
        (1..=n)
            .map(|i| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 8000 + i).parse().unwrap();
                ServerAddr { name: addr.to_string(), addr, weight: weight(i) }
            })
            .collect()
    }

    #[test]
    fn round_robin_honours_weights_interleaved() {
        let b = balancer("app", &servers(3, |i| if i == 3 { 2 } else { 1 }));
        let picks: Vec<u16> = (0..8).map(|_| b.round_robin(None).addr.port() - 8000).collect();
        assert_eq!(picks, vec![3, 1, 2, 3, 3, 1, 2, 3], "weight 2 gets half, spread out");
    }

    #[test]
    fn removing_one_of_four_servers_moves_only_its_keys() {
        let four = balancer("app", &servers(4, |_| 1));
        let three = balancer("app", &servers(3, |_| 1));
        let keys: Vec<String> = (0..1000).map(|k| format!("session-{k}")).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|k| four.by_hash(k.as_bytes(), None).addr).collect();
        let after: Vec<SocketAddr> = keys.iter().map(|k| three.by_hash(k.as_bytes(), None).addr).collect();
        let gone: SocketAddr = "127.0.0.1:8004".parse().unwrap();
        let surviving: Vec<usize> = (0..keys.len()).filter(|i| before[*i] != gone).collect();
        let stayed = surviving.iter().filter(|i| before[**i] == after[**i]).count();
        let share = stayed as f64 / surviving.len() as f64;
        eprintln!("4 → 3 servers: {stayed} of {} surviving keys stayed ({:.1} %)", surviving.len(), share * 100.0);
        assert!(share >= 0.95, "{share}");
        let per_server =
            |b: &Balancer, addr: SocketAddr| keys.iter().filter(|k| b.by_hash(k.as_bytes(), None).addr == addr).count();
        for s in four.servers() {
            let n = per_server(&four, s.addr);
            assert!((150..=350).contains(&n), "{} holds {n} of 1000 keys", s.label);
        }
    }

    #[test]
    fn a_failing_server_is_left_out_then_tried_again_and_all_down_fails_open() {
        let b = balancer("app", &servers(2, |_| 1));
        let first = b.servers()[0].clone();
        let rules = Rules::default();
        assert_eq!(first.failed(rules), None);
        assert_eq!(first.failed(rules), None);
        assert_eq!(first.failed(rules), Some(Transition::Down), "out after {UNHEALTHY_AFTER} in a row");
        assert_eq!(first.failed(rules), None, "the transition is told once");
        assert!((0..6).all(|_| b.round_robin(None).addr != first.addr));
        assert!(b.by_id(&first.id).is_none(), "a cookie naming it is re-picked");
        assert_eq!(first.answered(), Some(Transition::Up));
        assert!(b.by_id(&first.id).is_some());
        for s in b.servers() {
            (0..UNHEALTHY_AFTER).for_each(|_| {
                s.failed(rules);
            });
        }
        assert!(b.all_down());
        let _ = b.round_robin(None);
    }

    #[test]
    fn ids_are_opaque_and_stable() {
        let a = balancer("app", &servers(2, |_| 1));
        let b = balancer("app", &servers(3, |_| 1));
        assert_eq!(a.servers()[1].id, b.servers()[1].id, "the same server keeps its id when others change");
        assert!(!a.servers()[0].id.contains("8001") && a.servers()[0].id.len() == 16);
        assert_ne!(a.servers()[0].id, balancer("other", &servers(1, |_| 1)).servers()[0].id);
    }

    #[test]
    fn checks_take_a_server_out_and_only_passed_checks_bring_it_back() {
        let b = balancer("app", &servers(2, |_| 1));
        let s = b.servers()[0].clone();
        let rules = Rules { unhealthy_after: 2, healthy_after: 3, out_for: Duration::from_secs(60) };
        assert_eq!(s.check_failed(rules), None);
        assert_eq!(s.check_failed(rules), Some(Transition::Down));
        assert!(!s.healthy());
        assert_eq!(s.answered(), None, "a request that reached it does not override its checks");
        assert_eq!(s.check_passed(rules), None);
        assert_eq!(s.check_passed(rules), None);
        assert_eq!(s.check_passed(rules), Some(Transition::Up), "after healthy_after passes in a row");
        assert!(s.healthy());
    }

    #[test]
    fn traffic_that_is_answered_does_not_undo_failed_checks() {
        let b = balancer("app", &servers(2, |_| 1));
        let s = b.servers()[0].clone();
        let rules = Rules { unhealthy_after: 3, healthy_after: 1, out_for: Duration::from_secs(60) };
        for _ in 0..2 {
            assert_eq!(s.check_failed(rules), None);
            assert_eq!(s.answered(), None, "a request it answered between two checks");
        }
        assert_eq!(s.check_failed(rules), Some(Transition::Down), "the third failed check in a row");
        assert!(!s.healthy());
        // Nor do failed requests count towards its checks, or passed checks clear them.
        let t = b.servers()[1].clone();
        assert_eq!(t.failed(rules), None);
        assert_eq!(t.check_failed(rules), None);
        assert_eq!(t.check_passed(rules), None);
        assert_eq!(t.failed(rules), None);
        assert_eq!(t.failed(rules), Some(Transition::Down), "three failed requests in a row");
    }
}
