//! Every metric name and label in one place. All names start with `unpoll_`; counters end
//! in `_total`, after their unit. Every family is there from the start: [`Metrics::prepare`]
//! creates, at 0, each label set the configuration and the fixed lists below allow, so that
//! `rate()` and `absent()` work before the first event.

use crate::config::Config;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[path = "labels.rs"]
mod labels;
pub use labels::*;

/// The proxy's metrics, registered in their own registry and served on the admin listener.
pub struct Metrics {
    registry: Registry,
    /// `unpoll_subscribers{route,protocol}`: open subscriptions.
    pub subscribers: IntGaugeVec,
    /// `unpoll_topics`: topics with a running poller.
    pub topics: IntGauge,
    /// `unpoll_topic_creators`: client addresses with topics that count against them.
    pub topic_creators: IntGauge,
    /// `unpoll_poll_idle_connections`: upstream connections waiting for their next poll.
    pub poll_idle: IntGauge,
    /// `unpoll_connections`: open downstream connections on the proxy listener.
    pub connections: IntGauge,
    /// `unpoll_admin_connections`: open connections on the admin listener (at most
    /// `server.admin_max_connections`).
    pub admin_connections: IntGauge,
    /// `unpoll_admin_connections_closed_total{reason}`: admin connections closed by unpoll:
    /// `evicted` (idle, to make room for a newcomer), `refused` (full, none idle), `timeout`
    /// (no request in time).
    pub admin_closed: IntCounterVec,
    /// `unpoll_upstream_polls_total{route,outcome}`: outcome is `changed`, `unchanged`,
    /// `equivalent` (new bytes, same JSON), `not_modified`, `error_status`, `terminal_status`, `unreachable`, `timeout`, `too_large`, `unreadable`, `too_deep`, `bad_encoding`.
    pub polls: IntCounterVec,
    /// `unpoll_upstream_polls_late_total{route}`: polls sent more than a quarter of their
    /// interval (at least 10 ms) after they were due: waiting for `max_concurrent_polls`, a
    /// previous poll that took longer than the interval, or a starved runtime.
    pub polls_late: IntCounterVec,
    /// `unpoll_refreshes_total{route,cause}`: polls made ahead of schedule for a refresh, by
    /// `cause` (`write`: a write through unpoll; `hint`: `POST /refresh`).
    pub refreshes: IntCounterVec,
    /// `unpoll_refreshes_coalesced_total`: refreshes asked for that made no poll of their own
    /// (one was pending already, or the topic's next poll came on schedule, in backoff say,
    /// and answered it). Every refresh asked of a topic is counted once, here or in
    /// `refreshes`.
    pub refreshes_coalesced: IntCounter,
    /// `unpoll_upstream_polls_in_flight{upstream}`: polls waiting for their answer.
    pub polls_in_flight: IntGaugeVec,
    /// `unpoll_upstream_poll_waits_total{upstream}`: polls that waited for a free slot
    /// because `max_concurrent_polls` were in flight.
    pub poll_waits: IntCounterVec,
    /// `unpoll_upstream_reuse_refused_total{upstream,reason}`: upstream connections not reused
    /// because bytes waited on them (`stray_bytes`) or a response's framing was in doubt
    /// (`doubtful_framing`); each also quarantines the server (see `pool`).
    pub reuse_refused: IntCounterVec,
    /// `unpoll_upstream_server_up{upstream,server}`: 1 while a server is in rotation.
    pub server_up: IntGaugeVec,
    /// `unpoll_upstream_requests_total{upstream,server,kind}`: requests sent to each server
    /// (`proxy`: proxied requests; `poll`: polls).
    pub server_requests: IntCounterVec,
    /// `unpoll_upstream_tls_failures_total{upstream,server,kind}`: requests (`proxy`), polls
    /// (`poll`) and health checks (`health`) to a TLS upstream that failed in TLS: a
    /// certificate that does not verify, a client certificate refused, a failed handshake.
    pub tls_failures: IntCounterVec,
    /// `unpoll_tls_handshakes_total{listen,result}`: TLS handshakes of clients on each
    /// `server.tls` listener, `ok` or why they failed (see [`HANDSHAKE_RESULTS`]).
    pub handshakes: IntCounterVec,
    /// `unpoll_tls_cert_expiry_seconds{listen,name}`: when each certificate in force expires
    /// (Unix time; `name` is `default` or the `sni` entry's first name).
    pub cert_expiry: IntGaugeVec,
    /// `unpoll_client_connections_total{transport,version}`: client connections by transport
    /// (`tcp`, `tls`) and the HTTP version they speak (`1.1` or `2`; HTTP/1.0 is told per
    /// request).
    pub client_connections: IntCounterVec,
    /// `unpoll_client_streams{version}`: open subscriptions by the HTTP version they are
    /// served over (`1.0`, `1.1`, `2`).
    pub client_streams: IntGaugeVec,
    /// `unpoll_sticky_total{upstream,result}`: sticky choices: `hit` (the client's server),
    /// `assigned` (a client without one), `reassigned` (its server is gone or down).
    pub sticky: IntCounterVec,
    /// `unpoll_health_checks_total{upstream,server,result}`: active checks, `ok` or `failed`.
    pub health_checks: IntCounterVec,
    /// `unpoll_diff_waits_total{lane}`: diffs that waited because `server.diff_threads` of
    /// their lane (`small`, or `large` for bodies of 256 KiB and more) were busy.
    pub diff_waits: IntCounterVec,
    /// `unpoll_diffs_running`: diffs running on the diff threads.
    pub diffs_running: IntGauge,
    /// `unpoll_diffs_total{lane}`: where parses and diffs ran (`inline`: on the worker).
    pub diffs: IntCounterVec,
    /// `unpoll_diff_handovers_total`: inline diffs that used up the inline budget and were
    /// done again on a diff thread.
    pub diff_handovers: IntCounter,
    /// `unpoll_diff_budget_exhausted_total{route}`: changes sent as a snapshot because their
    /// JSON Patch diff used up `stream.diff_budget`.
    pub diff_exhausted: IntCounterVec,
    /// `unpoll_history_bytes{route}`: bytes the topics' resume histories hold (their patches).
    pub history_bytes: IntGaugeVec,
    /// `unpoll_history_trimmed_total{route}`: events dropped from a history early because it
    /// was over `stream.max_history_bytes`.
    pub history_trimmed: IntCounterVec,
    /// `unpoll_events_sent_total{route,protocol,kind}`: kind is `snapshot`, `patch`, `error`.
    pub events: IntCounterVec,
    /// `unpoll_sent_bytes_total{route,protocol}`: event bytes written to subscribers.
    pub bytes: IntCounterVec,
    /// `unpoll_subscriber_lagged_total{route,reason}`: subscribers that fell more than `queue`
    /// events (reason `events`) or `queue_bytes` bytes (`bytes`) behind and were
    /// resynchronised with a snapshot.
    pub lagged: IntCounterVec,
    /// `unpoll_direct_writes_total{route}`: events the topic wrote to a sleeping subscriber's
    /// socket itself (see `topic::direct`).
    pub direct_writes: IntCounterVec,
    /// `unpoll_direct_handbacks_total{route,reason}`: times the topic woke a sleeping
    /// subscriber's task to write in its place (`HANDBACK_REASONS`).
    pub handbacks: IntCounterVec,
    /// `unpoll_subscribers_dropped_total{route,reason}`: reason is `ping_timeout`,
    /// `write_timeout`, `write_error`, `protocol_error`, `unauthenticated`.
    pub dropped: IntCounterVec,
    /// `unpoll_requests_rejected_total{reason}`: requests and connections the proxy refused (bad
    /// subscriptions, oversized heads, limits); reason is the error name clients see.
    pub rejected: IntCounterVec,
    /// `unpoll_config_reloads_total{result}`: result is `applied`, `invalid` (the file has
    /// problems) or `rejected` (a change that needs a restart).
    pub reloads: IntCounterVec,
    /// `unpoll_config_last_reload_successful`: 0 while the file's last change was refused (its
    /// problems, or a change that needs a restart), 1 otherwise (and at start).
    pub reload_ok: IntGauge,
    /// `unpoll_config_generation`: 1 for the configuration loaded at start, +1 per applied reload.
    pub generation: IntGauge,
    /// `unpoll_http_requests_total{route,kind}`: kind is `proxy`, `subscribe`, `no_route`.
    pub requests: IntCounterVec,
    /// `unpoll_upstream_poll_duration_seconds{upstream}`: from sending a poll to its answer read.
    pub poll_duration: HistogramVec,
    /// `unpoll_fanout_lag_seconds{route}`: per event, from its poll's answer to its last
    /// hand-over to a subscriber's socket (observed when the next version supersedes it).
    pub fanout_lag: HistogramVec,
    /// `unpoll_subscribe_duration_seconds{route}`: from a subscription's request to its first
    /// events (the snapshot) handed to the socket.
    pub subscribe_duration: HistogramVec,
    /// `unpoll_proxy_request_duration_seconds{route,status}`: proxied requests, from their head
    /// read to their answer sent; status is the class (`2xx`, …, `5xx`).
    pub proxy_duration: HistogramVec,
    /// `unpoll_upstream_requests_saved_total{route}`: see [`Savings`].
    pub requests_saved: IntCounterVec,
    /// `unpoll_bytes_saved_total{route}`: see [`Savings`].
    pub bytes_saved: IntCounterVec,
    /// Per route, its savings' running sums.
    savings: Mutex<HashMap<String, Arc<Savings>>>,
    /// The process's own figures (`process_*`) and `unpoll_build_info`.
    process: crate::procstat::Process,
}

/// What one route's subscribers would have cost the upstream had they polled it themselves,
/// once per interval each, less what unpoll cost it: the two savings counters.
///
/// - `unpoll_upstream_requests_saved_total`: at each poll this node makes, the topic's
///   subscribers on this node minus 1 (none when it has none, lingering); in a cluster a
///   follower adds its subscribers for each interval that passed, since it polls nothing.
/// - `unpoll_bytes_saved_total`: the bodies those polling clients would have downloaded (the
///   document's length for each of them, at each poll answered with a document: changed,
///   unchanged or `304`), minus the event bytes unpoll sent the route's subscribers
///   (`unpoll_sent_bytes_total`). A counter cannot go down: it is the largest that difference
///   has been, so a stretch where unpoll sent more than polling would have (many snapshots
///   to reconnecting clients) is made up before it grows again.
pub struct Savings {
    requests: IntCounter,
    bytes: IntCounter,
    sent: [IntCounter; 2],
    /// Bytes polling clients would have downloaded, all together.
    would: AtomicU64,
    /// The largest `would - sent` so far: what `bytes` holds.
    mark: AtomicU64,
}

impl Savings {
    /// `clients` requests polling clients would have made, each downloading `body` bytes,
    /// where unpoll made `made`.
    pub fn count(&self, clients: u64, made: u64, body: u64) {
        self.requests.inc_by(clients.saturating_sub(made));
        let would = self.would.fetch_add(clients * body, Ordering::Relaxed) + clients * body;
        let sent: u64 = self.sent.iter().map(IntCounter::get).sum();
        let saved = would.saturating_sub(sent);
        let before = self.mark.fetch_max(saved, Ordering::Relaxed);
        if saved > before {
            self.bytes.inc_by(saved - before);
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        // A gauge without labels, starting at `start`.
        let gauge = |name: &str, help: &str, start: i64| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g.set(start);
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let topics = gauge("unpoll_topics", "Topics with a running poller", 0);
        let connections = gauge("unpoll_connections", "Open downstream connections", 0);
        let topic_creators = gauge("unpoll_topic_creators", "Clients with topics counted against them", 0);
        let poll_idle = gauge("unpoll_poll_idle_connections", "Upstream connections waiting for their next poll", 0);
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let process = crate::procstat::Process::register(&registry);
        Metrics {
            process,
            // Polls of a nearby API take milliseconds; a struggling one, up to its timeout.
            poll_duration: histogram(
                "unpoll_upstream_poll_duration_seconds",
                "Upstream polls, request to answer",
                &["upstream"],
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            // 10,000 subscribed in about half a second (docs/benchmarks.md): one takes well under
            // a millisecond unless the topic is new (its first poll) or comes from Redis.
            // p99 of 10,000 deliveries is tens of milliseconds (docs/benchmarks.md).
            fanout_lag: histogram(
                "unpoll_fanout_lag_seconds",
                "Events, poll answered to last subscriber written",
                &["route"],
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            subscribe_duration: histogram(
                "unpoll_subscribe_duration_seconds",
                "Subscriptions, request to first events written",
                &["route"],
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            ),
            proxy_duration: histogram(
                "unpoll_proxy_request_duration_seconds",
                "Proxied requests, head read to answer sent",
                &["route", "status"],
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            topic_creators,
            poll_idle,
            subscribers: gauge_vec("unpoll_subscribers", "Open subscriptions", &["route", "protocol"]),
            topics,
            connections,
            admin_connections: gauge("unpoll_admin_connections", "Open connections on the admin listener", 0),
            admin_closed: counter_vec(
                "unpoll_admin_connections_closed_total",
                "Admin connections closed by unpoll: evicted, refused, timeout",
                &["reason"],
            ),
            polls: counter_vec("unpoll_upstream_polls_total", "Upstream polls by outcome", &["route", "outcome"]),
            polls_late: counter_vec(
                "unpoll_upstream_polls_late_total",
                "Polls sent over a quarter of their interval after they were due",
                &["route"],
            ),
            refreshes: counter_vec(
                "unpoll_refreshes_total",
                "Polls made ahead of schedule for a refresh, by cause (write, hint)",
                &["route", "cause"],
            ),
            refreshes_coalesced: counter(
                "unpoll_refreshes_coalesced_total",
                "Refreshes asked for that made no poll of their own",
            ),
            reload_ok: gauge("unpoll_config_last_reload_successful", "0 while the last reload was refused", 1),
            polls_in_flight: gauge_vec("unpoll_upstream_polls_in_flight", "Upstream polls in flight", &["upstream"]),
            poll_waits: counter_vec(
                "unpoll_upstream_poll_waits_total",
                "Polls that waited for max_concurrent_polls",
                &["upstream"],
            ),
            diff_waits: counter_vec("unpoll_diff_waits_total", "Diffs that waited for a diff thread", &["lane"]),
            diffs_running: gauge("unpoll_diffs_running", "Diffs running on the diff threads", 0),
            diffs: counter_vec("unpoll_diffs_total", "Parses and diffs of new bodies, by where they ran", &["lane"]),
            diff_handovers: counter(
                "unpoll_diff_handovers_total",
                "Inline diffs that used up the inline budget and were done again on a diff thread",
            ),
            diff_exhausted: counter_vec(
                "unpoll_diff_budget_exhausted_total",
                "Changes sent as a snapshot because the diff used up its budget",
                &["route"],
            ),
            history_bytes: gauge_vec("unpoll_history_bytes", "Bytes held by resume histories", &["route"]),
            history_trimmed: counter_vec(
                "unpoll_history_trimmed_total",
                "Events dropped from a history over max_history_bytes",
                &["route"],
            ),
            reuse_refused: counter_vec(
                "unpoll_upstream_reuse_refused_total",
                "Upstream connections not reused: stray bytes or doubtful framing",
                &["upstream", "reason"],
            ),
            server_up: gauge_vec(
                "unpoll_upstream_server_up",
                "1 while a server is in rotation",
                &["upstream", "server"],
            ),
            server_requests: counter_vec(
                "unpoll_upstream_requests_total",
                "Requests sent to each upstream server, proxied or polls",
                &["upstream", "server", "kind"],
            ),
            tls_failures: counter_vec(
                "unpoll_upstream_tls_failures_total",
                "Requests, polls and health checks to TLS upstreams that failed in TLS",
                &["upstream", "server", "kind"],
            ),
            handshakes: counter_vec(
                "unpoll_tls_handshakes_total",
                "TLS handshakes of clients by listener and result",
                &["listen", "result"],
            ),
            cert_expiry: gauge_vec(
                "unpoll_tls_cert_expiry_seconds",
                "When each certificate served to clients expires (Unix time)",
                &["listen", "name"],
            ),
            client_connections: counter_vec(
                "unpoll_client_connections_total",
                "Client connections by transport and HTTP version",
                &["transport", "version"],
            ),
            client_streams: gauge_vec(
                "unpoll_client_streams",
                "Open subscriptions by the HTTP version they are served over",
                &["version"],
            ),
            health_checks: counter_vec(
                "unpoll_health_checks_total",
                "Active health checks by result",
                &["upstream", "server", "result"],
            ),
            sticky: counter_vec("unpoll_sticky_total", "Sticky server choices by result", &["upstream", "result"]),
            events: counter_vec(
                "unpoll_events_sent_total",
                "Events sent to subscribers",
                &["route", "protocol", "kind"],
            ),
            bytes: counter_vec("unpoll_sent_bytes_total", "Event bytes sent to subscribers", &["route", "protocol"]),
            lagged: counter_vec(
                "unpoll_subscriber_lagged_total",
                "Subscribers resynchronised after falling behind",
                &["route", "reason"],
            ),
            direct_writes: counter_vec(
                "unpoll_direct_writes_total",
                "Events written by the topic straight to a waiting subscriber's socket",
                &["route"],
            ),
            handbacks: counter_vec(
                "unpoll_direct_handbacks_total",
                "Times the topic woke a waiting subscriber's task to write in its place",
                &["route", "reason"],
            ),
            dropped: counter_vec(
                "unpoll_subscribers_dropped_total",
                "Subscribers disconnected by the proxy",
                &["route", "reason"],
            ),
            rejected: counter_vec("unpoll_requests_rejected_total", "Requests and connections refused", &["reason"]),
            reloads: counter_vec("unpoll_config_reloads_total", "Configuration reloads by result", &["result"]),
            generation: gauge("unpoll_config_generation", "Configuration generation in force", 1),
            requests: counter_vec("unpoll_http_requests_total", "Requests by route and kind", &["route", "kind"]),
            requests_saved: counter_vec(
                "unpoll_upstream_requests_saved_total",
                "Upstream requests polling subscribers would have made, minus those made",
                &["route"],
            ),
            bytes_saved: counter_vec(
                "unpoll_bytes_saved_total",
                "Body bytes polling subscribers would have downloaded, minus event bytes sent",
                &["route"],
            ),
            savings: Mutex::default(),
            registry,
        }
    }

    /// Creates, at 0, every label set of `config`'s routes and upstreams and of the fixed
    /// lists, so that each family is exported before anything has happened. Called at start
    /// and after each applied reload (label sets of removed routes stay).
    pub fn prepare(&self, config: &Config) {
        for reason in REJECT_REASONS {
            self.rejected.with_label_values(&[reason]);
        }
        for result in RELOAD_RESULTS {
            self.reloads.with_label_values(&[result]);
        }
        for lane in LANES {
            self.diff_waits.with_label_values(&[lane]);
        }
        for place in DIFF_PLACES {
            self.diffs.with_label_values(&[place]);
        }
        for reason in ADMIN_CLOSE_REASONS {
            self.admin_closed.with_label_values(&[reason]);
        }
        self.requests.with_label_values(&["", "no_route"]);
        for version in HTTP_VERSIONS {
            self.client_streams.with_label_values(&[version]);
        }
        for transport in ["tcp", "tls"] {
            for version in &HTTP_VERSIONS[1..] {
                self.client_connections.with_label_values(&[transport, version]);
            }
        }
        // The certificates in force: those a reload replaced, or whose listener went, are gone.
        self.cert_expiry.reset();
        for listener in &config.server.tls {
            for result in HANDSHAKE_RESULTS {
                self.handshakes.with_label_values(&[&listener.listen, result]);
            }
            for pair in listener.pairs.all() {
                self.cert_expiry.with_label_values(&[&listener.listen, &pair.name]).set(pair.not_after);
            }
        }
        for (name, upstream) in &config.upstreams {
            for server in &upstream.servers {
                let label = server.label();
                for kind in SERVER_REQUEST_KINDS {
                    self.server_requests.with_label_values(&[name, &label, kind]);
                }
                for kind in TLS_FAILURE_KINDS {
                    self.tls_failures.with_label_values(&[name, &label, kind]);
                }
                if upstream.health.is_some() {
                    for result in ["ok", "failed"] {
                        self.health_checks.with_label_values(&[name, &label, result]);
                    }
                }
            }
            if upstream.sticky.is_some() {
                for result in STICKY_RESULTS {
                    self.sticky.with_label_values(&[name, result]);
                }
            }
            self.polls_in_flight.with_label_values(&[name]);
            self.poll_duration.with_label_values(&[name]);
            self.poll_waits.with_label_values(&[name]);
            for reason in REUSE_REASONS {
                self.reuse_refused.with_label_values(&[name, reason]);
            }
        }
        for route in &config.routes {
            let label = route.pattern.as_str();
            for class in STATUS_CLASSES {
                self.proxy_duration.with_label_values(&[label, class]);
            }
            for kind in REQUEST_KINDS {
                self.requests.with_label_values(&[label, kind]);
            }
            if route.stream.is_none() {
                continue;
            }
            for protocol in PROTOCOLS {
                self.subscribers.with_label_values(&[label, protocol]);
                self.bytes.with_label_values(&[label, protocol]);
                for kind in EVENT_KINDS {
                    self.events.with_label_values(&[label, protocol, kind]);
                }
            }
            for outcome in POLL_OUTCOMES {
                self.polls.with_label_values(&[label, outcome]);
            }
            self.polls_late.with_label_values(&[label]);
            for cause in REFRESH_CAUSES {
                self.refreshes.with_label_values(&[label, cause]);
            }
            for reason in LAG_REASONS {
                self.lagged.with_label_values(&[label, reason]);
            }
            self.direct_writes.with_label_values(&[label]);
            for reason in HANDBACK_REASONS {
                self.handbacks.with_label_values(&[label, reason]);
            }
            for reason in DROP_REASONS {
                self.dropped.with_label_values(&[label, reason]);
            }
            self.diff_exhausted.with_label_values(&[label]);
            self.requests_saved.with_label_values(&[label]);
            self.bytes_saved.with_label_values(&[label]);
            self.subscribe_duration.with_label_values(&[label]);
            self.fanout_lag.with_label_values(&[label]);
            self.history_bytes.with_label_values(&[label]);
            self.history_trimmed.with_label_values(&[label]);
        }
    }

    /// The savings of `route`, shared by its topics.
    pub fn savings(&self, route: &str) -> Arc<Savings> {
        let mut all = self.savings.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(route.to_string())
            .or_insert_with(|| {
                Arc::new(Savings {
                    requests: self.requests_saved.with_label_values(&[route]),
                    bytes: self.bytes_saved.with_label_values(&[route]),
                    sent: PROTOCOLS.map(|p| self.bytes.with_label_values(&[route, p])),
                    would: AtomicU64::new(0),
                    mark: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Where metrics of other parts (a cluster's) are registered too.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.process.refresh();
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
