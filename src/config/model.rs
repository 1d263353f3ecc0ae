//! The validated configuration, and every default (the `Default` impls). Every value here
//! has passed validation; see `parse.rs`.

use super::pattern::Pattern;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    pub routes: Vec<RouteSettings>,
    /// `cluster:`, when several unpoll instances share their polls through Redis.
    pub cluster: Option<ClusterSettings>,
}

/// `cluster:` — instances sharing one poll per topic, its document and history, through
/// Redis (see docs/cluster.md).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// `redis`: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. A secret: it
    /// may carry the password.
    pub redis: Secret,
    /// `password_file`: a file holding Redis's password instead of the URL (read when the
    /// configuration is loaded).
    pub password_file: Option<String>,
    /// What `password_file` holds.
    pub password: Option<Secret>,
    /// `secret_file`: a file holding the cluster's secret, the same on every node (read when
    /// the configuration is loaded). Every message and stored entry is authenticated with it,
    /// and Redis key names are derived from it.
    pub secret_file: String,
    /// What `secret_file` holds (at least [`MIN_CLUSTER_SECRET`] bytes).
    pub secret: Secret,
    /// `node`: this instance's name in logs, metrics and leases. By default the host name and
    /// the process id.
    pub node: String,
    /// `lease`: how long a topic's poller may be silent before another node takes it over.
    pub lease: Duration,
    /// `prefix`: what every Redis key starts with.
    pub prefix: String,
    /// `timeout`: the longest any Redis call may take (under half the lease).
    pub timeout: Duration,
    /// `max_in_flight`: Redis calls waiting for their answer at once; more wait their turn.
    pub max_in_flight: usize,
    /// `inbox`: events from Redis waiting to be handed to this node's topics; past it they
    /// are dropped and the topics catch up from the stored history.
    pub inbox: usize,
}

impl ClusterSettings {
    /// The settings with their defaults for a Redis at `url`.
    pub fn new(url: &str) -> ClusterSettings {
        ClusterSettings {
            redis: Secret(url.to_string()),
            password_file: None,
            password: None,
            secret_file: String::new(),
            secret: Secret(String::new()),
            node: String::new(),
            lease: Duration::from_secs(5),
            prefix: "unpoll:".to_string(),
            timeout: Duration::from_secs(1),
            max_in_flight: 256,
            inbox: 4096,
        }
    }
}

/// The shortest `cluster.secret_file` content accepted, in bytes (256 bits of hex digits).
pub const MIN_CLUSTER_SECRET: usize = 32;

/// The shortest `server.admin_token_file` token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// A value never shown: its `Debug` prints `<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// `server.redact_params` by default: the parts of a query parameter's name that make its
/// value a credential in logs and `/status`.
pub const REDACT_PARAMS: [&str; 6] = ["token", "key", "secret", "password", "auth", "signature"];

/// `server:` — listeners and process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// `listen`: addresses of the proxy's plain listeners (HTTP/1.1, and HTTP/2 with `h2c`).
    pub listen: Vec<String>,
    /// `tls`: the proxy's TLS listeners (HTTP/1.1 and HTTP/2, chosen by ALPN).
    pub tls: Vec<super::listener_tls::ListenerTls>,
    /// `h2c`: HTTP/2 with prior knowledge (cleartext) on the plain listeners, beside HTTP/1.1.
    pub h2c: bool,
    /// `h2_max_streams`: concurrent streams (requests and subscriptions) on one HTTP/2
    /// connection.
    pub h2_max_streams: u32,
    /// `h2_idle_timeout`: an HTTP/2 connection with no stream open (no request, no
    /// subscription) this long is closed.
    pub h2_idle_timeout: Duration,
    /// `admin`: address of the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: Option<String>,
    /// `admin_token_file`: a file holding the bearer token that `POST /refresh` and `/status`
    /// on the admin listener require; without it they are open (the listener is private).
    pub admin_token_file: Option<String>,
    /// The token read from `admin_token_file` (in the resolve step, and again on reload).
    pub admin_token: Option<Secret>,
    /// `admin_max_connections`: connections the admin listener holds at once (one peer at
    /// most half); when full, an idle one is closed to make room for a newcomer.
    pub admin_max_connections: usize,
    /// `threads`: worker threads of the proxy.
    pub threads: usize,
    /// `grace_period`: the longest a SIGTERM shutdown takes.
    pub grace_period: Duration,
    /// `write_timeout`: a stream client that accepts no bytes for this long is dropped.
    pub write_timeout: Duration,
    /// `max_connections`: open connections on the proxy listener (subscriptions included). By
    /// default what the open-files limit leaves (see [`super::host`]).
    pub max_connections: usize,
    /// `max_subscribers`: open subscriptions, all routes together.
    pub max_subscribers: usize,
    /// `max_topics`: topics (shared polls), all routes together.
    pub max_topics: usize,
    /// `max_topics_per_client`: topics one client address may have made that still count
    /// against it (see `stream.linger_unshared`).
    pub max_topics_per_client: usize,
    /// `trusted_proxies`: peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// `websocket_max_message`: largest message (and frame) a WebSocket client may send.
    pub websocket_max_message: usize,
    /// `header_timeout`: the longest a client may take to send a whole request head.
    pub header_timeout: Duration,
    /// `max_request_header`: largest request head (request line and headers), in bytes.
    pub max_request_header: usize,
    /// `diff_threads`: parses and diffs of new bodies running at once, off the async workers.
    pub diff_threads: usize,
    /// `diff_inline_max`: bodies under this many bytes are parsed and diffed on the worker that
    /// fetched them, within a small work budget (0: never).
    pub diff_inline_max: usize,
    /// `poll_idle_connections`: upstream connections kept open between polls, in all.
    pub poll_idle_connections: usize,
    /// `upgrade_sock`: the Unix socket over which a new process (`run --upgrade`) takes over
    /// the listening sockets from this one on SIGQUIT.
    pub upgrade_sock: String,
    /// `access_log`: log a line per proxied request, refused request and ended subscription
    /// (target `unpoll::access`, at info).
    pub access_log: bool,
    /// `redact_params`: parts of query parameter names (any case, after decoding) whose
    /// values every log line and `/status` write `redacted`; every route's token parameter
    /// is hidden too, whatever this says.
    pub redact_params: Vec<String>,
}

/// `upstreams.<name>:` — a group of servers.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    /// `servers`: each server as written (`host:port`, or `{addr, weight}`).
    pub addresses: Vec<ServerEntry>,
    /// The servers: `addresses` resolved, in a step of its own after parsing (see
    /// `resolve.rs`). A name becomes one server per address it resolves to.
    pub servers: Vec<ServerAddr>,
    /// `sticky`: which server a client's requests (and its streams' polls) go to.
    pub sticky: Option<Sticky>,
    /// `health`: active checks of each server; absent, only passive marking.
    pub health: Option<HealthSettings>,
    /// `resolve_interval`: how often server names are resolved again.
    pub resolve_interval: Duration,

    /// `connect_timeout`: TCP connect timeout.
    pub connect_timeout: Duration,
    /// `timeout`: the longest one poll (connect, request and whole response) may take.
    pub timeout: Duration,
    /// `max_body`: largest body a poll accepts, in bytes; larger is an error event.
    pub max_body: usize,
    /// `max_concurrent_polls`: polls of this upstream in flight at once; more wait their turn.
    pub max_concurrent_polls: usize,
    /// `reuse`: which requests may share a pooled connection to one of the servers.
    pub reuse: Reuse,
    /// `tls`: HTTPS to every server (also when a server is written `https://…`).
    pub tls: Option<super::tls::UpstreamTls>,
}

/// `upstreams.<name>.servers[i]` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// `host:port`.
    pub address: String,
    /// `weight`: its share of new clients, against the others' (default 1).
    pub weight: u32,
    /// The scheme it was written with (`https://host`), if any.
    pub scheme: Option<super::tls::Scheme>,
}

/// A server with its address resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// `host:port` as configured.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

impl ServerAddr {
    /// How metrics and logs name it: as configured, plus the address when a name resolved.
    pub fn label(&self) -> String {
        if self.name == self.addr.to_string() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.addr)
        }
    }
}

/// `upstreams.<name>.health`: active HTTP checks of each server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// `path`: what is asked for (`GET`); a 2xx or 3xx answer is a success.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a server that failed its checks back.
    pub healthy_after: u32,
    /// Consecutive failures (checks, or requests and polls that cannot reach it) that take a
    /// server out.
    pub unhealthy_after: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
        }
    }
}

/// `upstreams.<name>.sticky`: client affinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// `cookie:` unpoll sets a cookie naming the chosen server (opaquely).
    Cookie(StickyCookie),
    /// `hash:` consistent hashing of one attribute of the request.
    Hash(HashOn),
}

/// `sticky.cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    pub name: String,
    /// `max_age`; absent: a session cookie.
    pub max_age: Option<Duration>,
    pub secure: bool,
    pub http_only: bool,
    /// `same_site`: `lax`, `strict` or `none`.
    pub same_site: String,
}

impl Default for StickyCookie {
    fn default() -> Self {
        StickyCookie {
            name: "unpoll_server".into(),
            max_age: None,
            secure: false,
            http_only: true,
            same_site: "lax".into(),
        }
    }
}

/// `sticky.hash`: what a request is hashed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header (lower-case name).
    Header(String),
    Cookie(String),
    Query(String),
    /// The client's address (see `server.trusted_proxies`).
    SourceIp,
}

/// `upstreams.<name>.reuse`: which requests may be sent on a connection that carried another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Only requests with the same credentials (`Authorization`, `Cookie`; for a poll, the
    /// headers of its topic key) share a connection: bytes a broken server leaves behind on a
    /// connection can only reach the user they belong to.
    PerCredential,
    /// Any request may reuse any pooled connection: for servers known to frame their
    /// responses exactly.
    Shared,
    /// A new connection for every request, closed after it.
    Off,
}

impl Reuse {
    pub fn parse(name: &str) -> Option<Reuse> {
        match name {
            "per_credential" => Some(Reuse::PerCredential),
            "shared" => Some(Reuse::Shared),
            "off" => Some(Reuse::Off),
            _ => None,
        }
    }
}

/// `routes[i]:` — a path pattern and what to do with matching requests.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub pattern: Pattern,
    pub upstream: String,
    pub stream: Option<StreamSettings>,
    /// `refreshes`: the paths a successful write to this route refreshes, as patterns over
    /// its `match` captures; `None`: the written path and its parent (see `topic::refresh`).
    pub refreshes: Option<Vec<Pattern>>,
}

/// How a subscriber receives changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// RFC 6902 JSON Patch.
    JsonPatch,
    /// RFC 7396 JSON Merge Patch.
    MergePatch,
    /// Every change sent whole.
    Snapshot,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::JsonPatch, Format::MergePatch, Format::Snapshot];

    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "json-patch" => Some(Format::JsonPatch),
            "merge-patch" => Some(Format::MergePatch),
            "snapshot" => Some(Format::Snapshot),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::JsonPatch => "json-patch",
            Format::MergePatch => "merge-patch",
            Format::Snapshot => "snapshot",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whether subscribers with different credentials may share a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Credentials (and every `vary` header) are part of the topic key and sent upstream.
    Credentials,
    /// The resource is the same for everyone: `Authorization` and `Cookie` are neither
    /// part of the key nor sent upstream.
    Public,
}

/// `routes[i].stream:` — present when GETs on the route can be subscribed to.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    pub interval: Duration,
    pub format: Format,
    pub share: Share,
    /// Lower-case request header names whose values split topics and are sent upstream.
    pub vary: Vec<String>,
    pub heartbeat: Duration,
    /// Events kept per topic for `Last-Event-ID` resume.
    pub history: usize,
    /// Bytes the history may hold (its events' patches); the oldest events go first.
    pub max_history_bytes: usize,
    pub linger: Duration,
    /// The linger of a topic that never had a second subscriber; also how long an idle topic
    /// still counts against the client that made it.
    pub linger_unshared: Duration,
    /// The query parameters that make a topic (and are sent upstream); `None` keeps all.
    pub query_params: Option<Vec<String>>,
    /// Events a subscriber may fall behind before it is resynchronised with a snapshot.
    pub queue: usize,
    /// Bytes of events a subscriber may fall behind before it is resynchronised.
    pub queue_bytes: usize,
    /// Subscribers of one topic.
    pub max_subscribers: usize,
    /// Allowed `Origin` values; `None` allows any.
    pub origins: Option<Vec<String>>,
    /// Whether a request without `Origin` (not from a browser page) may subscribe.
    pub allow_missing_origin: bool,
    /// `token`: credentials a browser can send without setting headers.
    pub token: Option<TokenSettings>,
    /// The longest wait between polls of a failing upstream (or the interval, if longer).
    pub max_backoff: Duration,
    /// Let the upstream's `Cache-Control: max-age` lengthen the interval.
    pub respect_cache_control: bool,
    /// Match array elements that are objects by this field when diffing.
    pub array_id: Option<String>,
    /// A patch larger than this fraction of the snapshot is sent as a snapshot...
    pub max_patch_ratio: f64,
    /// ...unless it is at most this many bytes.
    pub patch_floor: usize,
    /// Work one JSON Patch diff may do; past it the change is sent as a snapshot.
    pub diff_budget: usize,
}

/// `routes[i].stream.token:` — a credential in the subscription's URL (or, on WebSocket, its
/// first message) that becomes a request header before anything else looks at the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// `query`: the query parameter that carries the token (removed from the request).
    pub query: Option<String>,
    /// `header`: the request header it becomes, lower-case (default `authorization`).
    pub header: String,
    /// `prefix`: put before the token in the header (default `Bearer `).
    pub prefix: String,
    /// `first_message`: a WebSocket may send it as its first text frame instead.
    pub first_message: bool,
    /// `timeout`: how long a WebSocket may take to send that frame.
    pub timeout: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            query: None,
            header: "authorization".to_string(),
            prefix: "Bearer ".to_string(),
            first_message: false,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The default `stream.patch_floor`, in bytes: a change of one or two fields of a small
/// document (`[{"op":"replace","path":"/status","value":"shipped"}]` is 53).
pub const DEFAULT_PATCH_FLOOR: usize = 64;
/// The default `stream.diff_budget`: some tens of milliseconds of work.
pub const DEFAULT_DIFF_BUDGET: usize = 2_000_000;
pub const DEFAULT_VARY: [&str; 2] = ["authorization", "cookie"];
/// Query parameters starting with this prefix belong to unpoll: they are stripped before the
/// upstream request and never part of a topic.
pub const RESERVED_QUERY_PREFIX: &str = "unpoll_";
/// Headers that carry credentials: never sent upstream by a `share: public` poll.
pub const CREDENTIAL_HEADERS: [&str; 2] = ["authorization", "cookie"];
/// [`CREDENTIAL_HEADERS`] as header names, for lookups on every request without parsing.
pub const CREDENTIAL_HEADER_NAMES: [http::HeaderName; 2] = [http::header::AUTHORIZATION, http::header::COOKIE];

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            interval: Duration::from_secs(1),
            format: Format::JsonPatch,
            share: Share::Credentials,
            vary: DEFAULT_VARY.iter().map(|s| s.to_string()).collect(),
            heartbeat: Duration::from_secs(15),
            history: 64,
            max_history_bytes: 1024 * 1024,
            linger: Duration::from_secs(5),
            linger_unshared: Duration::from_secs(1),
            query_params: None,
            queue: 256,
            queue_bytes: 1024 * 1024,
            max_subscribers: 10_000,
            origins: None,
            allow_missing_origin: true,
            token: None,
            max_backoff: Duration::from_secs(30),
            respect_cache_control: false,
            array_id: None,
            max_patch_ratio: 1.0,
            patch_floor: DEFAULT_PATCH_FLOOR,
            diff_budget: DEFAULT_DIFF_BUDGET,
        }
    }
}

impl Default for UpstreamSettings {
    /// Every default but the servers, which must be given.
    fn default() -> Self {
        UpstreamSettings {
            addresses: Vec::new(),
            servers: Vec::new(),
            sticky: None,
            health: None,
            resolve_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            max_body: 8 * 1024 * 1024,
            max_concurrent_polls: 32,
            reuse: Reuse::PerCredential,
            tls: None,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: vec!["0.0.0.0:8080".into()],
            tls: Vec::new(),
            h2c: false,
            h2_max_streams: 100,
            h2_idle_timeout: Duration::from_secs(60),
            admin_token_file: None,
            admin_token: None,
            admin: None,
            admin_max_connections: 64,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            diff_threads: std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
            diff_inline_max: 16 * 1024,
            poll_idle_connections: 128,
            grace_period: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_connections: super::host::default_max_connections(super::host::open_files_limit()),
            max_subscribers: 100_000,
            max_topics: 10_000,
            max_topics_per_client: 64,
            trusted_proxies: Vec::new(),
            websocket_max_message: 64 * 1024,
            upgrade_sock: "/tmp/unpoll_upgrade.sock".into(),
            access_log: false,
            redact_params: REDACT_PARAMS.map(String::from).to_vec(),
            max_request_header: 16 * 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let max = if matches!(addr, std::net::IpAddr::V4(_)) { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let bits = |a: u128, b: u128, width: u32| {
            let shift = width - self.prefix as u32;
            shift >= width || (a >> shift) == (b >> shift)
        };
        match (self.addr, ip) {
            (V4(a), V4(b)) => bits(u32::from(a) as u128, u32::from(b) as u128, 32),
            (V6(a), V6(b)) => bits(u128::from(a), u128::from(b), 128),
            (V4(a), V6(b)) => b.to_ipv4_mapped().is_some_and(|b| bits(u32::from(a) as u128, u32::from(b) as u128, 32)),
            (V6(_), V4(_)) => false,
        }
    }
}
