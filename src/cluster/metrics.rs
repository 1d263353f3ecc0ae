//! The cluster's metrics, registered beside the others only when `cluster:` is configured.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Roles a topic has on this node.
pub const ROLES: [&str; 3] = ["leader", "follower", "local"];

/// `what` of `unpoll_cluster_unauthenticated_total`.
pub const UNAUTHENTICATED: [&str; 4] = ["message", "document", "history", "refresh"];

/// Redis calls, by the label of their histogram.
pub const CALLS: [&str; 8] = ["refresh", "publish", "tell", "read", "leave", "subscribe", "ping", "relay"];

pub struct ClusterMetrics {
    /// `unpoll_cluster_redis_up`: 1 while Redis accepts writes, 0 while this node polls alone.
    pub redis_up: IntGauge,
    /// `unpoll_cluster_topics{role}`: this node's topics by role: `leader` (it polls and
    /// publishes), `follower` (events come from the leader), `local` (Redis is away: it polls
    /// alone).
    pub topics: IntGaugeVec,
    /// `unpoll_cluster_failovers_total`: leases this node took over from a node that never
    /// let go of them (it died, stalled or lost Redis).
    pub failovers: IntCounter,
    /// `unpoll_cluster_fenced_total`: versions this node polled but was not let publish (its
    /// lease had passed to another node).
    pub fenced: IntCounter,
    /// `unpoll_cluster_redis_duration_seconds{call}`: Redis round trips.
    pub duration: HistogramVec,
    /// `unpoll_cluster_redis_errors_total{call}`: calls that failed or timed out.
    pub errors: IntCounterVec,
    /// `unpoll_cluster_redis_outages_total{reason}`: times Redis was counted down (topics then
    /// poll alone until a write succeeds again): `timeout`, `connection`, `out_of_memory`,
    /// `error`.
    pub outages: IntCounterVec,
    /// `unpoll_cluster_redis_in_flight`: calls waiting for their answer (at most
    /// `cluster.max_in_flight`).
    pub in_flight: IntGauge,
    /// `unpoll_cluster_redis_waits_total`: calls that waited for a free slot first.
    pub waits: IntCounter,
    /// `unpoll_cluster_events_received_total{route}`: events from other nodes, fanned out here.
    pub received: IntCounterVec,
    /// `unpoll_cluster_inbox_dropped_total`: messages dropped at `cluster.inbox` (or
    /// unreadable); their topics catch up from the stored history.
    pub dropped: IntCounter,
    /// `unpoll_cluster_unauthenticated_total{what}`: what this node read from Redis and
    /// dropped because its tag did not match (forged, altered, another topic's, or another
    /// secret's): a channel `message`, the stored `document`, or `history` entries.
    pub unauthenticated: IntCounterVec,
    /// `unpoll_cluster_local_fallbacks_total`: times a topic fell back to polling alone.
    pub fallbacks: IntCounter,
    /// `unpoll_cluster_node_info{node}`: 1, naming this node.
    pub node: IntGaugeVec,
}

impl ClusterMetrics {
    pub fn new(registry: &Registry) -> ClusterMetrics {
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        // A Redis on the same network answers in well under a millisecond; the top buckets
        // are for one that struggles, up to the largest `cluster.timeout` worth showing.
        let buckets = vec![0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
        let duration = HistogramVec::new(
            HistogramOpts::new("unpoll_cluster_redis_duration_seconds", "Redis round trips").buckets(buckets),
            &["call"],
        )
        .expect("valid metric");
        reg(Box::new(duration.clone()));
        let m = ClusterMetrics {
            redis_up: gauge("unpoll_cluster_redis_up", "1 while Redis answers"),
            topics: gauge_vec("unpoll_cluster_topics", "Topics by role on this node", &["role"]),
            failovers: counter("unpoll_cluster_failovers_total", "Leases taken over from a node that never let go"),
            fenced: counter("unpoll_cluster_fenced_total", "Versions not published: the lease had moved on"),
            duration,
            errors: counter_vec("unpoll_cluster_redis_errors_total", "Redis calls failed or timed out", &["call"]),
            outages: counter_vec(
                "unpoll_cluster_redis_outages_total",
                "Times Redis was counted down, by reason",
                &["reason"],
            ),
            in_flight: gauge("unpoll_cluster_redis_in_flight", "Redis calls waiting for their answer"),
            waits: counter("unpoll_cluster_redis_waits_total", "Redis calls that waited for a free slot"),
            received: counter_vec("unpoll_cluster_events_received_total", "Events from other nodes", &["route"]),
            dropped: counter("unpoll_cluster_inbox_dropped_total", "Messages from Redis dropped"),
            unauthenticated: counter_vec(
                "unpoll_cluster_unauthenticated_total",
                "What was read from Redis and dropped: its tag did not match",
                &["what"],
            ),
            fallbacks: counter("unpoll_cluster_local_fallbacks_total", "Topics that fell back to polling alone"),
            node: gauge_vec("unpoll_cluster_node_info", "This cluster node", &["node"]),
        };
        for role in ROLES {
            m.topics.with_label_values(&[role]);
        }
        for reason in super::Outage::LABELS {
            m.outages.with_label_values(&[reason]);
        }
        for what in UNAUTHENTICATED {
            m.unauthenticated.with_label_values(&[what]);
        }
        for call in CALLS {
            m.duration.with_label_values(&[call]);
            m.errors.with_label_values(&[call]);
        }
        m
    }
}
