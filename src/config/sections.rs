//! The first pass: each section read through its table of keys into a [`Draft`], every
//! problem collected. Checks between keys come after ([`super::check`]); names are resolved
//! last ([`super::resolve`]).

use super::model::*;
use super::pattern::Pattern;
use super::walk::{join, set, show, Key, Walker};
use super::yaml::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A configuration as written, before the checks between keys. Every section that is there
/// holds its defaults where a key is absent or had a problem.
#[derive(Debug, Default)]
pub struct Draft {
    pub server: ServerSettings,
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    pub routes: Vec<RouteDraft>,
    pub cluster: Option<ClusterSettings>,
}

/// `routes[i]` as written.
#[derive(Debug, Default)]
pub struct RouteDraft {
    pub pattern: Option<Pattern>,
    pub upstream: Option<String>,
    pub stream: Option<StreamSettings>,
    pub refreshes: Option<Vec<Pattern>>,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The keys of the document's top level.
const ROOT: [Key<Draft>; 4] = [
    Key::new("server", |w, v, p, d| w.section(v, p, &SERVER, &mut d.server).map(|_| ())),
    Key::required("upstreams", "at least one upstream is needed", |w, v, p, d| {
        set(&mut d.upstreams, upstreams(w, v, p))
    }),
    Key::required("routes", "at least one route is needed", |w, v, p, d| set(&mut d.routes, routes(w, v, p))),
    Key::new("cluster", |w, v, p, d| set(&mut d.cluster, cluster(w, v, p).map(Some))),
];

/// `cluster:`: its `redis` is required.
fn cluster(w: &mut Walker, v: &Value, p: &str) -> Option<ClusterSettings> {
    let mut c = ClusterSettings::new("");
    w.section(v, p, &CLUSTER, &mut c)?;
    Some(c)
}

const CLUSTER: [Key<ClusterSettings>; 9] = [
    Key::required("redis", "the Redis to share polls through, e.g. redis://127.0.0.1:6379/0", |w, v, p, c| {
        let url = w.string(v, p)?;
        let well_formed = (url.starts_with("redis://") || url.starts_with("rediss://"))
            && redis::IntoConnectionInfo::into_connection_info(url.as_str()).is_ok();
        if !well_formed {
            // The URL is never repeated: it may hold a password.
            w.problem(p, "expected a redis://[user:password@]host:port[/db] or rediss:// URL");
            return None;
        }
        set(&mut c.redis, Some(Secret(url)))
    }),
    Key::new("password_file", |w, v, p, c| {
        let path = w.string(v, p)?;
        if !path.starts_with('/') {
            w.problem(p, format!("`{path}` must be an absolute path"));
            return None;
        }
        set(&mut c.password_file, Some(Some(path)))
    }),
    Key::required(
        "secret_file",
        "every node needs the same secret to authenticate what it reads from Redis: a file of at least 32 \
         characters, e.g. `openssl rand -hex 32 > /etc/unpoll/cluster.secret`",
        |w, v, p, c| {
            let path = w.string(v, p)?;
            if !path.starts_with('/') {
                w.problem(p, format!("`{path}` must be an absolute path"));
                return None;
            }
            set(&mut c.secret_file, Some(path))
        },
    ),
    Key::new("node", |w, v, p, c| {
        let node = w.string(v, p)?;
        if node.is_empty() || node.len() > 64 || !node.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            w.problem(p, format!("`{node}`: use 1 to 64 letters, digits, `.`, `_` or `-`"));
            return None;
        }
        set(&mut c.node, Some(node))
    }),
    Key::new("lease", |w, v, p, c| set(&mut c.lease, w.duration(v, p, ms(500)))),
    Key::new("prefix", |w, v, p, c| {
        let prefix = w.string(v, p)?;
        if prefix.len() > 64 || prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            w.problem(p, "use at most 64 characters and no spaces");
            return None;
        }
        set(&mut c.prefix, Some(prefix))
    }),
    Key::new("timeout", |w, v, p, c| set(&mut c.timeout, w.duration(v, p, ms(10)))),
    Key::new("max_in_flight", |w, v, p, c| set(&mut c.max_in_flight, w.count(v, p, 1, 100_000))),
    Key::new("inbox", |w, v, p, c| set(&mut c.inbox, w.count(v, p, 16, 10_000_000))),
];

/// `server:`.
const SERVER: [Key<ServerSettings>; 25] = [
    Key::new("listen", |w, v, p, s| {
        let list = w.each(v, p, |w, a, p| w.address(a, p))?;
        if list.is_empty() {
            w.problem(p, "at least one listen address is needed");
            return None;
        }
        set(&mut s.listen, Some(list))
    }),
    Key::new("tls", |w, v, p, s| set(&mut s.tls, super::listener_tls::listeners(w, v, p))),
    Key::new("h2c", |w, v, p, s| set(&mut s.h2c, w.boolean(v, p))),
    Key::new("h2_max_streams", |w, v, p, s| set(&mut s.h2_max_streams, w.count(v, p, 1, 10_000).map(|n| n as u32))),
    Key::new("h2_idle_timeout", |w, v, p, s| set(&mut s.h2_idle_timeout, w.duration(v, p, ms(100)))),
    Key::new("admin", |w, v, p, s| {
        let text = w.string(v, p)?;
        set(&mut s.admin, w.address(&text, p).map(Some))
    }),
    Key::new("admin_token_file", |w, v, p, s| set(&mut s.admin_token_file, w.string(v, p).map(Some))),
    Key::new("admin_max_connections", |w, v, p, s| set(&mut s.admin_max_connections, w.count(v, p, 2, 10_000))),
    Key::new("threads", |w, v, p, s| set(&mut s.threads, w.count(v, p, 1, 256))),
    // Pingora gives streams `grace_period - 1s` to close before it cancels tasks: at least a
    // second, so that every stream can end cleanly.
    Key::new("grace_period", |w, v, p, s| set(&mut s.grace_period, w.duration(v, p, ms(2000)))),
    Key::new("write_timeout", |w, v, p, s| set(&mut s.write_timeout, w.duration(v, p, ms(100)))),
    Key::new("max_subscribers", |w, v, p, s| set(&mut s.max_subscribers, w.count(v, p, 1, 10_000_000))),
    Key::new("max_topics", |w, v, p, s| set(&mut s.max_topics, w.count(v, p, 1, 10_000_000))),
    Key::new("websocket_max_message", |w, v, p, s| set(&mut s.websocket_max_message, w.count(v, p, 125, 16 << 20))),
    Key::new("upgrade_sock", |w, v, p, s| {
        let path = w.string(v, p)?;
        if !path.starts_with('/') {
            w.problem(p, format!("`{path}` must be an absolute path"));
            return None;
        }
        set(&mut s.upgrade_sock, Some(path))
    }),
    // pingora itself refuses heads over 1 MiB.
    Key::new("max_request_header", |w, v, p, s| set(&mut s.max_request_header, w.count(v, p, 1024, 1_048_575))),
    // What the host's open-files limit allows is checked when resolving.
    Key::new("max_connections", |w, v, p, s| set(&mut s.max_connections, w.count(v, p, 1, 10_000_000))),
    Key::new("header_timeout", |w, v, p, s| set(&mut s.header_timeout, w.duration(v, p, ms(100)))),
    Key::new("diff_threads", |w, v, p, s| set(&mut s.diff_threads, w.count(v, p, 1, 256))),
    // Past 256 KiB a body belongs to the large lane whatever this says.
    Key::new("diff_inline_max", |w, v, p, s| set(&mut s.diff_inline_max, w.count(v, p, 0, 256 * 1024))),
    // A full list looks through every key for its oldest connection: a bound keeps that short.
    Key::new("poll_idle_connections", |w, v, p, s| set(&mut s.poll_idle_connections, w.count(v, p, 0, 10_000))),
    Key::new("access_log", |w, v, p, s| set(&mut s.access_log, w.boolean(v, p))),
    Key::new("redact_params", |w, v, p, s| {
        let list = w.each(v, p, |w, part, p| {
            if part.trim().is_empty() {
                w.problem(p, "an empty part would hide every parameter; remove it");
                return None;
            }
            Some(part.to_string())
        });
        set(&mut s.redact_params, list)
    }),
    Key::new("max_topics_per_client", |w, v, p, s| set(&mut s.max_topics_per_client, w.count(v, p, 1, 10_000_000))),
    Key::new("trusted_proxies", |w, v, p, s| {
        let list = w.each(v, p, |w, text, p| {
            let cidr = Cidr::parse(text);
            if cidr.is_none() {
                w.problem(p, format!("`{text}` is not an address or a range such as `10.0.0.0/8`"));
            }
            cidr
        });
        set(&mut s.trusted_proxies, list)
    }),
];

/// `upstreams.<name>:`.
const UPSTREAM: [Key<UpstreamSettings>; 10] = [
    Key::required("servers", "list the upstream's `host:port` servers", |w, v, p, u| {
        let Value::Sequence(items) = v else {
            w.problem(p, format!("expected a list, found {}", super::walk::kind(v)));
            return None;
        };
        if items.is_empty() {
            w.problem(p, "the server list is empty");
            return None;
        }
        let list: Vec<ServerEntry> =
            items.iter().enumerate().filter_map(|(i, item)| server(w, item, &format!("{p}[{i}]"))).collect();
        (list.len() == items.len()).then_some(())?;
        set(&mut u.addresses, Some(list))
    }),
    Key::new("connect_timeout", |w, v, p, u| set(&mut u.connect_timeout, w.duration(v, p, ms(1)))),
    Key::new("timeout", |w, v, p, u| set(&mut u.timeout, w.duration(v, p, ms(1)))),
    Key::new("max_body", |w, v, p, u| set(&mut u.max_body, w.count(v, p, 1, 1 << 30))),
    Key::new("max_concurrent_polls", |w, v, p, u| set(&mut u.max_concurrent_polls, w.count(v, p, 1, 100_000))),
    Key::new("reuse", |w, v, p, u| {
        set(&mut u.reuse, w.choice(v, p, "reuse mode", "per_credential, shared or off", Reuse::parse))
    }),
    Key::new("sticky", |w, v, p, u| set(&mut u.sticky, sticky(w, v, p).map(Some))),
    Key::new("resolve_interval", |w, v, p, u| set(&mut u.resolve_interval, w.duration(v, p, ms(1000)))),
    Key::new("health", |w, v, p, u| {
        let mut health = HealthSettings::default();
        w.section(v, p, &HEALTH, &mut health)?;
        set(&mut u.health, Some(Some(health)))
    }),
    Key::new("tls", |w, v, p, u| {
        let mut tls = super::tls::UpstreamTls::default();
        w.section(v, p, &super::tls::TLS, &mut tls)?;
        set(&mut u.tls, Some(Some(tls)))
    }),
];

const HEALTH: [Key<HealthSettings>; 5] = [
    Key::new("path", |w, v, p, h| {
        let path = w.string(v, p)?;
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            w.problem(p, format!("`{path}` is not a path such as `/healthz`"));
            return None;
        }
        set(&mut h.path, Some(path))
    }),
    Key::new("interval", |w, v, p, h| set(&mut h.interval, w.duration(v, p, ms(100)))),
    Key::new("timeout", |w, v, p, h| set(&mut h.timeout, w.duration(v, p, ms(10)))),
    Key::new("healthy_after", |w, v, p, h| set(&mut h.healthy_after, w.count(v, p, 1, 100).map(|n| n as u32))),
    Key::new("unhealthy_after", |w, v, p, h| set(&mut h.unhealthy_after, w.count(v, p, 1, 100).map(|n| n as u32))),
];

/// `servers[i]`: `host:port` or `https://host[:port]`, or `{addr: …, weight: n}`.
fn server(w: &mut Walker, v: &Value, p: &str) -> Option<ServerEntry> {
    if let Value::String(text) = v {
        let (address, scheme) = server_address(w, text, p)?;
        return Some(ServerEntry { address, weight: 1, scheme });
    }
    let mut entry = ServerEntry { address: String::new(), weight: 1, scheme: None };
    w.section(v, p, &SERVER_ENTRY, &mut entry)?;
    (!entry.address.is_empty()).then_some(entry)
}

/// A server's `host:port`, and the scheme it was written with.
fn server_address(w: &mut Walker, text: &str, p: &str) -> Option<(String, Option<super::tls::Scheme>)> {
    let Some((address, scheme)) = super::tls::strip_scheme(text) else {
        w.problem(p, format!("`{text}`: write `host:port` or `https://host[:port]`, without a path"));
        return None;
    };
    Some((w.address(&address, p)?, scheme))
}

const SERVER_ENTRY: [Key<ServerEntry>; 2] = [
    Key::required("addr", "give the server's `host:port`", |w, v, p, e| {
        let text = w.string(v, p)?;
        let (address, scheme) = server_address(w, &text, p)?;
        e.scheme = scheme;
        set(&mut e.address, Some(address))
    }),
    Key::new("weight", |w, v, p, e| set(&mut e.weight, w.count(v, p, 1, 1000).map(|n| n as u32))),
];

/// `sticky:` one of `cookie` and `hash`.
fn sticky(w: &mut Walker, v: &Value, p: &str) -> Option<Sticky> {
    let m = w.mapping(v, p, &["cookie", "hash"])?;
    match (m.get("cookie"), m.get("hash")) {
        (Some(_), Some(_)) => {
            w.problem(p, "give one of `cookie` and `hash`, not both");
            None
        }
        (Some(c), None) => {
            let mut cookie = StickyCookie::default();
            // `cookie: {}` (or `cookie: true`) takes every default.
            if !matches!(c, Value::Bool(true) | Value::Null) {
                w.section(c, &join(p, "cookie"), &STICKY_COOKIE, &mut cookie)?;
            }
            // Browsers drop a `SameSite=None` cookie that is not `Secure`: every request would
            // then come without it and be assigned a server again.
            if cookie.same_site == "none" && !cookie.secure {
                w.problem(
                    &join(p, "cookie.same_site"),
                    "`none` needs `secure: true` (browsers reject a SameSite=None cookie without Secure)",
                );
                return None;
            }
            Some(Sticky::Cookie(cookie))
        }
        (None, Some(h)) => hash_on(w, h, &join(p, "hash")).map(Sticky::Hash),
        (None, None) => {
            w.problem(p, "give `cookie` (unpoll sets a cookie naming the server) or `hash` (an attribute to hash)");
            None
        }
    }
}

const STICKY_COOKIE: [Key<StickyCookie>; 5] = [
    Key::new("name", |w, v, p, c| {
        let name = w.string(v, p)?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            w.problem(p, format!("`{name}` is not a cookie name (letters, digits, `_` and `-`)"));
            return None;
        }
        set(&mut c.name, Some(name))
    }),
    Key::new("max_age", |w, v, p, c| set(&mut c.max_age, w.duration(v, p, ms(1000)).map(Some))),
    Key::new("secure", |w, v, p, c| set(&mut c.secure, w.boolean(v, p))),
    Key::new("http_only", |w, v, p, c| set(&mut c.http_only, w.boolean(v, p))),
    Key::new("same_site", |w, v, p, c| {
        let parse = |n: &str| ["lax", "strict", "none"].contains(&n).then(|| n.to_string());
        set(&mut c.same_site, w.choice(v, p, "same_site", "lax, strict or none", parse))
    }),
];

/// `sticky.hash`: exactly one of `header`, `cookie`, `query`, `source_ip: true`.
fn hash_on(w: &mut Walker, v: &Value, p: &str) -> Option<HashOn> {
    let m = w.mapping(v, p, &["header", "cookie", "query", "source_ip"])?;
    if m.len() != 1 {
        w.problem(p, "give one of `header`, `cookie`, `query` or `source_ip: true`");
        return None;
    }
    let (key, value) = m.iter().next()?;
    let key = key.as_str()?;
    let path = join(p, key);
    if key == "source_ip" {
        return match w.boolean(value, &path)? {
            true => Some(HashOn::SourceIp),
            false => {
                w.problem(&path, "`source_ip: false` hashes nothing; remove `sticky` for no affinity");
                None
            }
        };
    }
    let name = w.string(value, &path)?;
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        w.problem(&path, format!("`{name}` is not a name to hash on"));
        return None;
    }
    Some(match key {
        "header" => HashOn::Header(name.to_ascii_lowercase()),
        "cookie" => HashOn::Cookie(name),
        _ => HashOn::Query(name),
    })
}

/// `routes[i]:`.
const ROUTE: [Key<RouteDraft>; 4] = [
    Key::required("match", "give a path pattern such as `/orders/{id}`", |w, v, p, r| {
        let text = w.string(v, p)?;
        match Pattern::parse(&text) {
            Ok(pattern) => set(&mut r.pattern, Some(Some(pattern))),
            Err(e) => {
                w.problem(p, e);
                None
            }
        }
    }),
    Key::required("upstream", "name one of the `upstreams`", |w, v, p, r| {
        set(&mut r.upstream, w.string(v, p).map(Some))
    }),
    Key::new("stream", |w, v, p, r| {
        let mut s = StreamSettings::default();
        w.section(v, p, &STREAM, &mut s)?;
        set(&mut r.stream, Some(Some(s)))
    }),
    Key::new("refreshes", |w, v, p, r| {
        let patterns = w.each(v, p, |w, text, p| Pattern::parse(text).map_err(|e| w.problem(p, e)).ok())?;
        set(&mut r.refreshes, Some(Some(patterns)))
    }),
];

/// `routes[i].stream.token:`.
const TOKEN: [Key<TokenSettings>; 5] = [
    Key::new("query", |w, v, p, t| {
        let name = w.string(v, p)?;
        let fine = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !fine || name.starts_with(RESERVED_QUERY_PREFIX) {
            w.problem(p, format!("`{name}` is not a query parameter name a token can use (unpoll_* are unpoll's own)"));
            return None;
        }
        set(&mut t.query, Some(Some(name)))
    }),
    Key::new("header", |w, v, p, t| {
        let name = w.string(v, p)?.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            w.problem(p, format!("`{name}` is not a valid header name"));
            return None;
        }
        set(&mut t.header, Some(name))
    }),
    Key::new("prefix", |w, v, p, t| {
        let prefix = w.string(v, p)?;
        if http::HeaderValue::from_str(&prefix).is_err() {
            w.problem(p, "the prefix must be printable text");
            return None;
        }
        set(&mut t.prefix, Some(prefix))
    }),
    Key::new("first_message", |w, v, p, t| set(&mut t.first_message, w.boolean(v, p))),
    Key::new("timeout", |w, v, p, t| set(&mut t.timeout, w.duration(v, p, ms(100)))),
];

/// `routes[i].stream:`.
const STREAM: [Key<StreamSettings>; 23] = [
    Key::new("token", |w, v, p, s| {
        let mut t = TokenSettings::default();
        w.section(v, p, &TOKEN, &mut t)?;
        set(&mut s.token, Some(Some(t)))
    }),
    Key::new("interval", |w, v, p, s| set(&mut s.interval, w.duration(v, p, ms(10)))),
    Key::new("format", |w, v, p, s| {
        set(&mut s.format, w.choice(v, p, "format", "json-patch, merge-patch or snapshot", Format::parse))
    }),
    Key::new("share", |w, v, p, s| {
        let parse = |name: &str| match name {
            "credentials" => Some(Share::Credentials),
            "public" => Some(Share::Public),
            _ => None,
        };
        set(&mut s.share, w.choice(v, p, "share mode", "credentials or public", parse))
    }),
    // As written (lower-cased, each once): how it combines with `share` is checked after.
    Key::new("vary", |w, v, p, s| {
        let names = w.each(v, p, |w, name, p| {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                w.problem(p, format!("`{name}` is not a valid header name"));
                return None;
            }
            Some(lower)
        })?;
        let mut vary: Vec<String> = Vec::new();
        for name in names {
            if !vary.contains(&name) {
                vary.push(name);
            }
        }
        set(&mut s.vary, Some(vary))
    }),
    Key::new("heartbeat", |w, v, p, s| set(&mut s.heartbeat, w.duration(v, p, ms(100)))),
    Key::new("history", |w, v, p, s| set(&mut s.history, w.count(v, p, 0, 100_000))),
    Key::new("max_history_bytes", |w, v, p, s| set(&mut s.max_history_bytes, w.count(v, p, 0, 1 << 34))),
    Key::new("linger", |w, v, p, s| set(&mut s.linger, w.duration(v, p, ms(0)))),
    Key::new("linger_unshared", |w, v, p, s| set(&mut s.linger_unshared, w.duration(v, p, ms(0)))),
    Key::new("query_params", |w, v, p, s| {
        let names = w.each(v, p, |w, name, p| {
            if name.is_empty() || name.starts_with(RESERVED_QUERY_PREFIX) || name.contains(['&', '=']) {
                w.problem(
                    p,
                    format!("`{name}` is not a query parameter name a route can keep (unpoll_* are unpoll's own)"),
                );
                return None;
            }
            Some(name.to_string())
        });
        set(&mut s.query_params, names.map(Some))
    }),
    Key::new("queue", |w, v, p, s| set(&mut s.queue, w.count(v, p, 1, 1_000_000))),
    Key::new("queue_bytes", |w, v, p, s| set(&mut s.queue_bytes, w.count(v, p, 1024, 1 << 30))),
    Key::new("max_subscribers", |w, v, p, s| set(&mut s.max_subscribers, w.count(v, p, 1, 10_000_000))),
    Key::new("origins", |w, v, p, s| {
        let list = w.each(v, p, |w, o, p| {
            // `*` and `null` read without credentials (see `proxy::cors`); a named origin with them.
            let valid = o == "*"
                || o == "null"
                || ((o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/'));
            if !valid {
                w.problem(p, format!("`{o}` is not an origin such as `https://app.example.com` (or `*`, or `null`)"));
                return None;
            }
            Some(o.to_string())
        });
        set(&mut s.origins, list.map(Some))
    }),
    Key::new("allow_missing_origin", |w, v, p, s| set(&mut s.allow_missing_origin, w.boolean(v, p))),
    Key::new("max_backoff", |w, v, p, s| set(&mut s.max_backoff, w.duration(v, p, ms(10)))),
    Key::new("respect_cache_control", |w, v, p, s| set(&mut s.respect_cache_control, w.boolean(v, p))),
    Key::new("array_id", |w, v, p, s| {
        let field = w.string(v, p)?;
        if field.is_empty() {
            w.problem(p, "give the name of the field that identifies array elements, e.g. `id`");
            return None;
        }
        set(&mut s.array_id, Some(Some(field)))
    }),
    Key::new("max_patch_ratio", |w, v, p, s| match v.as_f64() {
        Some(r) if r > 0.0 && r <= 1.0 => set(&mut s.max_patch_ratio, Some(r)),
        _ => {
            w.problem(p, format!("expected a number above 0 and at most 1, found {}", show(v)));
            None
        }
    }),
    Key::new("patch_floor", |w, v, p, s| set(&mut s.patch_floor, w.count(v, p, 0, 1 << 20))),
    Key::new("diff_budget", |w, v, p, s| set(&mut s.diff_budget, w.count(v, p, 1000, 1 << 40))),
    // A key that moved: say where it lives now.
    Key::new("max_body", |w, _, p, _| {
        w.problem(p, "`max_body` is set on the upstream (upstreams.<name>.max_body)");
        None
    }),
];

/// Reads the whole document.
pub fn draft(w: &mut Walker, root: &Value) -> Draft {
    let mut draft = Draft::default();
    w.section(root, "", &ROOT, &mut draft);
    draft
}

fn upstreams(w: &mut Walker, v: &Value, path: &str) -> Option<BTreeMap<String, UpstreamSettings>> {
    let Value::Mapping(m) = v else {
        w.problem(path, format!("expected a mapping of upstream names, found {}", super::walk::kind(v)));
        return None;
    };
    if m.is_empty() {
        w.problem(path, "at least one upstream is needed");
        return None;
    }
    let mut out = BTreeMap::new();
    for (name, value) in m {
        let Some(name) = name.as_str() else {
            w.problem(path, format!("upstream names must be strings, found {}", super::walk::kind(name)));
            continue;
        };
        // Kept even when it has problems, so that routes naming it are not reported too.
        let mut u = UpstreamSettings::default();
        w.section(value, &join(path, name), &UPSTREAM, &mut u);
        out.insert(name.to_string(), u);
    }
    Some(out)
}

fn routes(w: &mut Walker, v: &Value, path: &str) -> Option<Vec<RouteDraft>> {
    let Value::Sequence(items) = v else {
        w.problem(path, format!("expected a list of routes, found {}", super::walk::kind(v)));
        return None;
    };
    if items.is_empty() {
        w.problem(path, "at least one route is needed");
        return None;
    }
    let routes = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut r = RouteDraft::default();
            w.section(item, &format!("{path}[{i}]"), &ROUTE, &mut r);
            // A refresh pattern may name only captures of the route's `match`.
            if let (Some(pattern), Some(refreshes)) = (&r.pattern, &r.refreshes) {
                for (j, refresh) in refreshes.iter().enumerate() {
                    for name in refresh.params().filter(|n| !pattern.params().any(|m| m == *n)) {
                        let known: Vec<String> = pattern.params().map(|m| format!("{{{m}}}")).collect();
                        let has = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                        w.problem(
                            &format!("{path}[{i}].refreshes[{j}]"),
                            format!("`{{{name}}}` is not a capture of `{pattern}` (its captures: {has})"),
                        );
                    }
                }
            }
            r
        })
        .collect();
    Some(routes)
}

/// The names of every key a section allows, by section: `server`, `upstreams.<name>`,
/// `routes[i]`, `routes[i].stream` (the documentation test holds the example file to them).
#[cfg(test)]
pub fn keys() -> [(&'static str, Vec<&'static str>); 12] {
    [
        ("server.tls[i]", super::listener_tls::LISTENER.iter().map(|k| k.name).collect()),
        ("server.tls[i].sni[j]", super::listener_tls::SNI.iter().map(|k| k.name).collect()),
        ("cluster", CLUSTER.iter().map(|k| k.name).collect()),
        ("routes[i].stream.token", TOKEN.iter().map(|k| k.name).collect()),
        ("upstreams.<name>.health", HEALTH.iter().map(|k| k.name).collect()),
        ("upstreams.<name>.tls", super::tls::TLS.iter().map(|k| k.name).collect()),
        ("upstreams.<name>.servers[i]", SERVER_ENTRY.iter().map(|k| k.name).collect()),
        ("upstreams.<name>.sticky.cookie", STICKY_COOKIE.iter().map(|k| k.name).collect()),
        ("server", SERVER.iter().map(|k| k.name).collect()),
        ("upstreams.<name>", UPSTREAM.iter().map(|k| k.name).collect()),
        ("routes[i]", ROUTE.iter().map(|k| k.name).collect()),
        ("routes[i].stream", STREAM.iter().map(|k| k.name).collect()),
    ]
}
