//! The fixed label values of the metrics (see `metrics`).

/// The `cause` labels of `unpoll_refreshes_total` (see `topic::refresh::Cause`).
pub const REFRESH_CAUSES: [&str; 2] = ["write", "hint"];

/// `outcome` of `unpoll_upstream_polls_total`.
pub const POLL_OUTCOMES: [&str; 13] = [
    "changed",
    "unchanged",
    "equivalent",
    "not_modified",
    "error_status",
    "terminal_status",
    "unreachable",
    "tls",
    "timeout",
    "too_large",
    "unreadable",
    "too_deep",
    "bad_encoding",
];
/// `reason` of `unpoll_admin_connections_closed_total`.
pub const ADMIN_CLOSE_REASONS: [&str; 3] = ["evicted", "refused", "timeout"];
/// `reason` of `unpoll_requests_rejected_total`.
pub const REJECT_REASONS: [&str; 12] = [
    "unknown_format",
    "bad_token",
    "bad_last_event_id",
    "bad_upgrade",
    "origin_not_allowed",
    "bad_path",
    "header_too_large",
    "too_many_connections",
    "too_many_subscribers",
    "too_many_topics",
    "topic_full",
    "too_many_topics_for_client",
];
/// `reason` of `unpoll_subscribers_dropped_total`.
pub const DROP_REASONS: [&str; 5] =
    ["ping_timeout", "write_timeout", "write_error", "protocol_error", "unauthenticated"];
/// `status` of `unpoll_proxy_request_duration_seconds` (`none`: no answer reached the client).
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// `result` of `unpoll_config_reloads_total`.
pub const RELOAD_RESULTS: [&str; 3] = ["applied", "invalid", "rejected"];
/// `protocol` of the per-subscriber families.
pub const PROTOCOLS: [&str; 2] = ["sse", "websocket"];
/// `kind` of `unpoll_events_sent_total`.
pub const EVENT_KINDS: [&str; 3] = ["snapshot", "patch", "error"];
/// `reason` of `unpoll_subscriber_lagged_total`.
pub const LAG_REASONS: [&str; 2] = ["events", "bytes"];
/// `reason` of `unpoll_direct_handbacks_total`, in the order of `topic::direct::Handed`.
pub const HANDBACK_REASONS: [&str; 5] = ["full", "budget", "message", "backlog", "error"];
/// `kind` of `unpoll_upstream_requests_total`.
pub const SERVER_REQUEST_KINDS: [&str; 2] = ["proxy", "poll"];
/// `result` of `unpoll_sticky_total`.
pub const STICKY_RESULTS: [&str; 3] = ["hit", "assigned", "reassigned"];
/// `reason` of `unpoll_upstream_reuse_refused_total`.
pub const REUSE_REASONS: [&str; 2] = ["stray_bytes", "doubtful_framing"];
/// `kind` of `unpoll_upstream_tls_failures_total`.
pub const TLS_FAILURE_KINDS: [&str; 3] = ["proxy", "poll", "health"];
/// `result` of `unpoll_tls_handshakes_total`: `ok`, or why a client's handshake failed.
pub const HANDSHAKE_RESULTS: [&str; 8] =
    ["ok", "timeout", "plaintext", "not_tls", "no_certificate", "rejected_by_client", "incompatible", "closed"];
/// `version` of `unpoll_client_connections_total` and `unpoll_client_streams`.
pub const HTTP_VERSIONS: [&str; 3] = ["1.0", "1.1", "2"];
/// `lane` of `unpoll_diff_waits_total`.
pub const LANES: [&str; 2] = ["small", "large"];
/// `lane` of `unpoll_diffs_total`: on the worker, or on a diff thread of either lane.
pub const DIFF_PLACES: [&str; 3] = ["inline", "small", "large"];
/// `kind` of `unpoll_http_requests_total`, for a route (`no_route` has the route `""`).
pub const REQUEST_KINDS: [&str; 2] = ["proxy", "subscribe"];
