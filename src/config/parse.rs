//! YAML text → validated [`Config`], reporting every problem at once with its key path.
//!
//! The YAML crate is used in one place only, [`parse_yaml`], so it can be swapped.

use super::duration::parse_duration;
use super::model::*;
use super::pattern::Pattern;
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::net::ToSocketAddrs;
use std::time::Duration;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `routes[0].stream.interval`; empty for the whole document.
    pub path: String,
    /// Line in the file, where the parser gives one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(document)" } else { &self.path };
        match self.line {
            Some(line) => write!(f, "{path} (line {line}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the configuration:", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// Parses YAML into a generic tree. The only function that names the YAML crate.
fn parse_yaml(text: &str) -> Result<Value, Problem> {
    serde_yaml::from_str::<Value>(text).map_err(|e| Problem {
        path: String::new(),
        line: e.location().map(|l| l.line()),
        message: format!("YAML syntax: {e}"),
    })
}

/// Parses and validates a whole configuration file.
pub fn parse_config(text: &str) -> Result<Config, ConfigErrors> {
    let root = parse_yaml(text).map_err(|p| ConfigErrors(vec![p]))?;
    let mut w = Walker::default();
    let config = w.config(&root);
    match config {
        Some(c) if w.problems.is_empty() => Ok(c),
        _ => Err(ConfigErrors(w.problems)),
    }
}

#[derive(Default)]
struct Walker {
    problems: Vec<Problem>,
}

impl Walker {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem { path: path.to_string(), line: None, message: message.into() });
    }

    /// A mapping with only the allowed keys; unknown keys are reported.
    fn mapping<'a>(&mut self, v: &'a Value, path: &str, allowed: &[&str]) -> Option<&'a Mapping> {
        let Value::Mapping(m) = v else {
            self.problem(path, format!("expected a mapping, found {}", kind(v)));
            return None;
        };
        for key in m.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => {
                    self.problem(&join(path, k), format!("unknown key `{k}` (expected one of: {})", allowed.join(", ")))
                }
                None => self.problem(path, format!("keys must be strings, found {}", kind(key))),
            }
        }
        Some(m)
    }

    fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.problem(path, format!("expected a string, found {}", kind(v)));
                None
            }
        }
    }

    fn strings(&mut self, v: &Value, path: &str) -> Option<Vec<String>> {
        let Value::Sequence(items) = v else {
            self.problem(path, format!("expected a list, found {}", kind(v)));
            return None;
        };
        let out: Vec<_> =
            items.iter().enumerate().filter_map(|(i, v)| self.string(v, &format!("{path}[{i}]"))).collect();
        (out.len() == items.len()).then_some(out)
    }

    fn duration(&mut self, v: &Value, path: &str, min: Duration) -> Option<Duration> {
        let text = self.string(v, path)?;
        match parse_duration(&text) {
            Ok(d) if d >= min => Some(d),
            Ok(_) => {
                self.problem(path, format!("`{text}` is too short (at least {}ms)", min.as_millis()));
                None
            }
            Err(e) => {
                self.problem(path, e);
                None
            }
        }
    }

    fn count(&mut self, v: &Value, path: &str, min: u64, max: u64) -> Option<usize> {
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n as usize),
            _ => {
                self.problem(path, format!("expected a whole number from {min} to {max}, found {}", show(v)));
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value, path: &str) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            _ => {
                self.problem(path, format!("expected true or false, found {}", show(v)));
                None
            }
        }
    }

    fn address(&mut self, v: &Value, path: &str) -> Option<String> {
        let text = self.string(v, path)?;
        match text.to_socket_addrs() {
            Ok(_) => Some(text),
            Err(e) => {
                self.problem(path, format!("`{text}` is not a usable `host:port` address: {e}"));
                None
            }
        }
    }

    fn config(&mut self, root: &Value) -> Option<Config> {
        let m = self.mapping(root, "", &["server", "upstreams", "routes"])?;
        let server = match m.get("server") {
            Some(v) => self.server(v, "server"),
            None => Some(ServerSettings::default()),
        };
        let upstreams = match m.get("upstreams") {
            Some(v) => self.upstreams(v, "upstreams"),
            None => {
                self.problem("upstreams", "missing: at least one upstream is needed");
                None
            }
        };
        // Route upstreams are checked against the names in the file, even when some upstream's
        // own definition has problems, so that every problem is reported at once.
        let names: Option<Vec<String>> = m
            .get("upstreams")
            .and_then(Value::as_mapping)
            .map(|ups| ups.keys().filter_map(|k| k.as_str().map(str::to_string)).collect());
        let routes = match m.get("routes") {
            Some(v) => self.routes(v, "routes", names.as_deref()),
            None => {
                self.problem("routes", "missing: at least one route is needed");
                None
            }
        };
        Some(Config { server: server?, upstreams: upstreams?, routes: routes? })
    }

    fn server(&mut self, v: &Value, path: &str) -> Option<ServerSettings> {
        let m = self.mapping(
            v,
            path,
            &[
                "listen",
                "admin",
                "threads",
                "grace_period",
                "write_timeout",
                "max_subscribers",
                "max_topics",
                "websocket_max_message",
                "upgrade_sock",
                "max_request_header",
                "max_connections",
                "header_timeout",
                "diff_threads",
                "max_topics_per_client",
                "trusted_proxies",
            ],
        )?;
        let mut s_limits = {
            let d = ServerSettings::default();
            (d.max_subscribers, d.max_topics, d.websocket_max_message)
        };
        let mut limits_ok = true;
        for (key, min, max) in [
            ("max_subscribers", 1, 10_000_000),
            ("max_topics", 1, 10_000_000),
            ("websocket_max_message", 125, 16 << 20),
        ] {
            if let Some(v) = m.get(key) {
                match self.count(v, &join(path, key), min, max) {
                    Some(n) if key == "max_subscribers" => s_limits.0 = n,
                    Some(n) if key == "max_topics" => s_limits.1 = n,
                    Some(n) => s_limits.2 = n,
                    None => limits_ok = false,
                }
            }
        }
        let mut s = ServerSettings::default();
        (s.max_subscribers, s.max_topics, s.websocket_max_message) = s_limits;
        let mut ok = limits_ok;
        if let Some(v) = m.get("listen") {
            let p = join(path, "listen");
            match self.strings(v, &p) {
                Some(list) if list.is_empty() => {
                    self.problem(&p, "at least one listen address is needed");
                    ok = false;
                }
                Some(list) => {
                    let checked: Vec<_> = list
                        .iter()
                        .enumerate()
                        .filter_map(|(i, a)| self.address(&Value::from(a.as_str()), &format!("{p}[{i}]")))
                        .collect();
                    ok &= checked.len() == list.len();
                    s.listen = checked;
                }
                None => ok = false,
            }
        }
        if let Some(v) = m.get("header_timeout") {
            match self.duration(v, &join(path, "header_timeout"), Duration::from_millis(100)) {
                Some(d) => s.header_timeout = d,
                None => ok = false,
            }
        }
        if let Some(v) = m.get("max_connections") {
            let p = join(path, "max_connections");
            match self.count(v, &p, 1, 10_000_000) {
                Some(n) => match super::host::open_files_limit() {
                    Some(limit) if n as u64 > super::host::connection_ceiling(limit) => {
                        self.problem(
                            &p,
                            format!(
                                "{n} is more than this process can hold open: its open-files limit is {limit}, of which \
                                 {} are kept for upstream connections, the admin listener and files (at most {}; raise \
                                 the limit, e.g. LimitNOFILE= or ulimit -n, or lower max_connections)",
                                super::host::reserved(limit),
                                super::host::connection_ceiling(limit)
                            ),
                        );
                        ok = false;
                    }
                    _ => s.max_connections = n,
                },
                None => ok = false,
            }
        }
        if let Some(v) = m.get("max_request_header") {
            // pingora itself refuses heads over 1 MiB.
            match self.count(v, &join(path, "max_request_header"), 1024, 1_048_575) {
                Some(n) => s.max_request_header = n,
                None => ok = false,
            }
        }
        if let Some(v) = m.get("upgrade_sock") {
            match self.string(v, &join(path, "upgrade_sock")) {
                Some(p) if p.starts_with('/') => s.upgrade_sock = p,
                Some(p) => {
                    self.problem(&join(path, "upgrade_sock"), format!("`{p}` must be an absolute path"));
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(v) = m.get("admin") {
            s.admin = self.address(v, &join(path, "admin"));
            ok &= s.admin.is_some();
            // Pingora retries a port in use for a while instead of failing at once, so a
            // shared address would leave one service answering the other's connections.
            if let Some(admin) = &s.admin {
                if let Some(i) = s.listen.iter().position(|l| same_socket(l, admin)) {
                    self.problem(
                        &join(path, "admin"),
                        format!("`{admin}` is also a listen address (server.listen[{i}]); use another port"),
                    );
                    ok = false;
                }
            }
        }
        if let Some(v) = m.get("max_topics_per_client") {
            match self.count(v, &join(path, "max_topics_per_client"), 1, 10_000_000) {
                Some(n) => s.max_topics_per_client = n,
                None => ok = false,
            }
        }
        if let Some(v) = m.get("trusted_proxies") {
            let p = join(path, "trusted_proxies");
            match self.strings(v, &p) {
                Some(list) => {
                    for (i, text) in list.iter().enumerate() {
                        match Cidr::parse(text) {
                            Some(c) => s.trusted_proxies.push(c),
                            None => {
                                self.problem(
                                    &format!("{p}[{i}]"),
                                    format!("`{text}` is not an address or a range such as `10.0.0.0/8`"),
                                );
                                ok = false;
                            }
                        }
                    }
                }
                None => ok = false,
            }
        }
        if let Some(v) = m.get("diff_threads") {
            match self.count(v, &join(path, "diff_threads"), 1, 256) {
                Some(n) => s.diff_threads = n,
                None => ok = false,
            }
        }
        if let Some(v) = m.get("threads") {
            match self.count(v, &join(path, "threads"), 1, 256) {
                Some(n) => s.threads = n,
                None => ok = false,
            }
        }
        if let Some(v) = m.get("grace_period") {
            // Pingora gives streams `grace_period - 1s` to close before it cancels tasks: at
            // least a second, so that every stream can end cleanly.
            match self.duration(v, &join(path, "grace_period"), Duration::from_secs(2)) {
                Some(d) => s.grace_period = d,
                None => ok = false,
            }
        }
        if let Some(v) = m.get("write_timeout") {
            match self.duration(v, &join(path, "write_timeout"), Duration::from_millis(100)) {
                Some(d) => s.write_timeout = d,
                None => ok = false,
            }
        }
        ok.then_some(s)
    }

    fn upstreams(&mut self, v: &Value, path: &str) -> Option<BTreeMap<String, UpstreamSettings>> {
        let Value::Mapping(m) = v else {
            self.problem(path, format!("expected a mapping of upstream names, found {}", kind(v)));
            return None;
        };
        if m.is_empty() {
            self.problem(path, "at least one upstream is needed");
            return None;
        }
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (name, value) in m {
            let Some(name) = name.as_str() else {
                self.problem(path, format!("upstream names must be strings, found {}", kind(name)));
                ok = false;
                continue;
            };
            match self.upstream(value, &join(path, name)) {
                Some(u) => {
                    out.insert(name.to_string(), u);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn upstream(&mut self, v: &Value, path: &str) -> Option<UpstreamSettings> {
        let m = self.mapping(
            v,
            path,
            &["servers", "connect_timeout", "timeout", "max_body", "max_concurrent_polls", "reuse"],
        )?;
        let servers_path = join(path, "servers");
        let servers = match m.get("servers") {
            None => {
                self.problem(&servers_path, "missing: list the upstream's `host:port` servers");
                None
            }
            Some(v) => self.strings(v, &servers_path).and_then(|list| {
                if list.is_empty() {
                    self.problem(&servers_path, "the server list is empty");
                    return None;
                }
                let mut addrs = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    let p = format!("{servers_path}[{i}]");
                    if s.contains("://") {
                        self.problem(
                            &p,
                            format!("`{s}`: write `host:port` without a scheme (upstreams are plain HTTP)"),
                        );
                        continue;
                    }
                    match s.to_socket_addrs().map(|mut a| a.next()) {
                        Ok(Some(a)) => addrs.push(a),
                        Ok(None) => self.problem(&p, format!("`{s}` resolves to no address")),
                        Err(e) => self.problem(&p, format!("`{s}` is not a usable `host:port`: {e}")),
                    }
                }
                (addrs.len() == list.len()).then_some(addrs)
            }),
        };
        let connect_timeout = match m.get("connect_timeout") {
            Some(v) => self.duration(v, &join(path, "connect_timeout"), Duration::from_millis(1)),
            None => Some(Duration::from_secs(2)),
        };
        let timeout = match m.get("timeout") {
            Some(v) => self.duration(v, &join(path, "timeout"), Duration::from_millis(1)),
            None => Some(Duration::from_secs(10)),
        };
        let max_body = match m.get("max_body") {
            Some(v) => self.count(v, &join(path, "max_body"), 1, 1 << 30),
            None => Some(8 * 1024 * 1024),
        };
        let max_concurrent_polls = match m.get("max_concurrent_polls") {
            Some(v) => self.count(v, &join(path, "max_concurrent_polls"), 1, 100_000),
            None => Some(32),
        };
        let reuse = match m.get("reuse") {
            Some(v) => self.string(v, &join(path, "reuse")).and_then(|name| {
                let reuse = Reuse::parse(&name);
                if reuse.is_none() {
                    self.problem(
                        &join(path, "reuse"),
                        format!("unknown reuse mode `{name}` (use per_credential, shared or off)"),
                    );
                }
                reuse
            }),
            None => Some(Reuse::PerCredential),
        };
        Some(UpstreamSettings {
            servers: servers?,
            connect_timeout: connect_timeout?,
            timeout: timeout?,
            max_body: max_body?,
            max_concurrent_polls: max_concurrent_polls?,
            reuse: reuse?,
        })
    }

    fn routes(&mut self, v: &Value, path: &str, upstreams: Option<&[String]>) -> Option<Vec<RouteSettings>> {
        let Value::Sequence(items) = v else {
            self.problem(path, format!("expected a list of routes, found {}", kind(v)));
            return None;
        };
        if items.is_empty() {
            self.problem(path, "at least one route is needed");
            return None;
        }
        let routes: Vec<_> =
            items.iter().enumerate().filter_map(|(i, r)| self.route(r, &format!("{path}[{i}]"), upstreams)).collect();
        (routes.len() == items.len()).then_some(routes)
    }

    fn route(&mut self, v: &Value, path: &str, upstreams: Option<&[String]>) -> Option<RouteSettings> {
        let m = self.mapping(v, path, &["match", "upstream", "stream"])?;
        let pattern = match m.get("match") {
            None => {
                self.problem(&join(path, "match"), "missing: give a path pattern such as `/orders/{id}`");
                None
            }
            Some(v) => self.string(v, &join(path, "match")).and_then(|s| match Pattern::parse(&s) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.problem(&join(path, "match"), e);
                    None
                }
            }),
        };
        let upstream = match m.get("upstream") {
            None => {
                self.problem(&join(path, "upstream"), "missing: name one of the `upstreams`");
                None
            }
            Some(v) => self.string(v, &join(path, "upstream")).and_then(|name| match upstreams {
                Some(ups) if !ups.contains(&name) => {
                    self.problem(
                        &join(path, "upstream"),
                        format!("unknown upstream `{name}` (defined: {})", ups.join(", ")),
                    );
                    None
                }
                _ => Some(name),
            }),
        };
        let stream = match m.get("stream") {
            None => Some(None),
            Some(v) => self.stream(v, &join(path, "stream")).map(Some),
        };
        Some(RouteSettings { pattern: pattern?, upstream: upstream?, stream: stream? })
    }

    fn stream(&mut self, v: &Value, path: &str) -> Option<StreamSettings> {
        const KEYS: [&str; 22] = [
            "patch_floor",
            "linger_unshared",
            "query_params",
            "diff_budget",
            "max_history_bytes",
            "max_subscribers",
            "origins",
            "allow_missing_origin",
            "queue_bytes",
            "interval",
            "format",
            "share",
            "vary",
            "heartbeat",
            "history",
            "linger",
            "queue",
            "max_backoff",
            "respect_cache_control",
            "array_id",
            "max_patch_ratio",
            "max_body",
        ];
        let m = self.mapping(v, path, &KEYS)?;
        let mut s = StreamSettings::default();
        let mut ok = true;
        let ms = Duration::from_millis;
        macro_rules! set {
            ($key:literal, $field:ident, $parse:expr) => {
                if let Some(v) = m.get($key) {
                    #[allow(clippy::redundant_closure_call)]
                    match $parse(self, v, &join(path, $key)) {
                        Some(x) => s.$field = x,
                        None => ok = false,
                    }
                }
            };
        }
        set!("interval", interval, |w: &mut Walker, v, p: &str| w.duration(v, p, ms(10)));
        set!("heartbeat", heartbeat, |w: &mut Walker, v, p: &str| w.duration(v, p, ms(100)));
        set!("linger", linger, |w: &mut Walker, v, p: &str| w.duration(v, p, ms(0)));
        set!("linger_unshared", linger_unshared, |w: &mut Walker, v, p: &str| w.duration(v, p, ms(0)));
        set!("query_params", query_params, |w: &mut Walker, v, p: &str| {
            let names = w.strings(v, p)?;
            let mut ok = true;
            for (i, name) in names.iter().enumerate() {
                if name.is_empty() || name.starts_with(RESERVED_QUERY_PREFIX) || name.contains(['&', '=']) {
                    w.problem(
                        &format!("{p}[{i}]"),
                        format!("`{name}` is not a query parameter name a route can keep (unpoll_* are unpoll's own)"),
                    );
                    ok = false;
                }
            }
            ok.then_some(Some(names))
        });
        set!("history", history, |w: &mut Walker, v, p: &str| w.count(v, p, 0, 100_000));
        set!("queue", queue, |w: &mut Walker, v, p: &str| w.count(v, p, 1, 1_000_000));
        set!("max_subscribers", max_subscribers, |w: &mut Walker, v, p: &str| w.count(v, p, 1, 10_000_000));
        set!("allow_missing_origin", allow_missing_origin, |w: &mut Walker, v, p: &str| w.boolean(v, p));
        set!("origins", origins, |w: &mut Walker, v, p: &str| {
            let list = w.strings(v, p)?;
            let mut ok = true;
            for (i, o) in list.iter().enumerate() {
                let valid = o == "*" || ((o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/'));
                if !valid {
                    w.problem(
                        &format!("{p}[{i}]"),
                        format!("`{o}` is not an origin such as `https://app.example.com` (or `*`)"),
                    );
                    ok = false;
                }
            }
            ok.then_some(Some(list))
        });
        set!("patch_floor", patch_floor, |w: &mut Walker, v, p: &str| w.count(v, p, 0, 1 << 20));
        set!("max_history_bytes", max_history_bytes, |w: &mut Walker, v, p: &str| w.count(v, p, 0, 1 << 34));
        set!("diff_budget", diff_budget, |w: &mut Walker, v, p: &str| w.count(v, p, 1000, 1 << 40));
        set!("queue_bytes", queue_bytes, |w: &mut Walker, v, p: &str| w.count(v, p, 1024, 1 << 30));
        set!("max_backoff", max_backoff, |w: &mut Walker, v, p: &str| w.duration(v, p, ms(10)));
        set!("respect_cache_control", respect_cache_control, |w: &mut Walker, v, p: &str| w.boolean(v, p));
        if m.contains_key("max_body") {
            self.problem(&join(path, "max_body"), "`max_body` is set on the upstream (upstreams.<name>.max_body)");
            ok = false;
        }
        set!("array_id", array_id, |w: &mut Walker, v, p: &str| {
            let field = w.string(v, p)?;
            if field.is_empty() {
                w.problem(p, "give the name of the field that identifies array elements, e.g. `id`");
                return None;
            }
            Some(Some(field))
        });
        set!("max_patch_ratio", max_patch_ratio, |w: &mut Walker, v: &Value, p: &str| match v.as_f64() {
            Some(r) if r > 0.0 && r <= 1.0 => Some(r),
            _ => {
                w.problem(p, format!("expected a number above 0 and at most 1, found {}", show(v)));
                None
            }
        });
        set!("format", format, |w: &mut Walker, v, p: &str| {
            let name = w.string(v, p)?;
            let f = Format::parse(&name);
            if f.is_none() {
                w.problem(p, format!("unknown format `{name}` (use json-patch, merge-patch or snapshot)"));
            }
            f
        });
        set!("share", share, |w: &mut Walker, v, p: &str| match w.string(v, p)?.as_str() {
            "credentials" => Some(Share::Credentials),
            "public" => Some(Share::Public),
            other => {
                w.problem(p, format!("unknown share mode `{other}` (use credentials or public)"));
                None
            }
        });
        if s.share == Share::Public && !m.contains_key("vary") {
            s.vary.clear();
        }
        if let Some(v) = m.get("vary") {
            let p = join(path, "vary");
            match self.strings(v, &p) {
                Some(names) => {
                    let mut vary = Vec::new();
                    for (i, name) in names.iter().enumerate() {
                        let lower = name.to_ascii_lowercase();
                        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                            self.problem(&format!("{p}[{i}]"), format!("`{name}` is not a valid header name"));
                            ok = false;
                        } else if s.share == Share::Public && CREDENTIAL_HEADERS.contains(&lower.as_str()) {
                            self.problem(
                                &format!("{p}[{i}]"),
                                format!("`{name}` carries credentials, which `share: public` never sends upstream"),
                            );
                            ok = false;
                        } else if !vary.contains(&lower) {
                            vary.push(lower);
                        }
                    }
                    // On a credentialed route the list adds to the credentials; it never
                    // replaces them (a route that wants none says `share: public`).
                    if s.share == Share::Credentials {
                        for c in CREDENTIAL_HEADERS.iter().rev() {
                            if !vary.iter().any(|v| v == c) {
                                vary.insert(0, c.to_string());
                            }
                        }
                    }
                    s.vary = vary;
                }
                None => ok = false,
            }
        }
        ok.then_some(s)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("`{s}`"),
        other => kind(other).to_string(),
    }
}

/// Whether two listen addresses would take the same port (the same address, or the same
/// port where either is a wildcard).
pub(crate) fn same_socket(a: &str, b: &str) -> bool {
    match (a.parse::<std::net::SocketAddr>(), b.parse::<std::net::SocketAddr>()) {
        (Ok(a), Ok(b)) => {
            a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server:
  listen: ["127.0.0.1:8080"]
  admin: "127.0.0.1:9090"
upstreams:
  legacy:
    servers: ["127.0.0.1:3000", "127.0.0.1:3001"]
    max_body: 1024
    max_concurrent_polls: 4
    reuse: shared
routes:
  - match: /orders/{id}
    upstream: legacy
    stream:
      interval: 250ms
      format: merge-patch
      vary: [Authorization, X-Tenant]
      array_id: id
      max_patch_ratio: 0.25
      max_backoff: 1m
      respect_cache_control: true
  - match: /board
    upstream: legacy
    stream: { share: public }
  - match: /*
    upstream: legacy
"#;

    #[test]
    fn parses_a_good_file_with_defaults() {
        let c = parse_config(GOOD).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080"]);
        assert_eq!(c.upstreams["legacy"].servers.len(), 2);
        let s = c.routes[0].stream.as_ref().unwrap();
        assert_eq!(s.interval, Duration::from_millis(250));
        assert_eq!(s.format, Format::MergePatch);
        assert_eq!(s.vary, vec!["cookie", "authorization", "x-tenant"], "vary adds to the credentials");
        assert_eq!(s.heartbeat, Duration::from_secs(15));
        assert_eq!(s.history, 64);
        assert_eq!(s.linger, Duration::from_secs(5));
        assert_eq!(s.array_id.as_deref(), Some("id"));
        assert_eq!(s.max_patch_ratio, 0.25);
        assert_eq!(s.max_backoff, Duration::from_secs(60));
        assert!(s.respect_cache_control);
        assert_eq!(c.upstreams["legacy"].max_body, 1024);
        assert_eq!(c.upstreams["legacy"].max_concurrent_polls, 4);
        assert_eq!(c.upstreams["legacy"].reuse, Reuse::Shared);
        let public_defaults = c.routes[1].stream.as_ref().unwrap();
        assert_eq!((public_defaults.array_id.as_ref(), public_defaults.max_patch_ratio), (None, 1.0));
        assert!(!public_defaults.respect_cache_control);
        let public = c.routes[1].stream.as_ref().unwrap();
        assert_eq!(public.share, Share::Public);
        assert!(public.vary.is_empty(), "public streams do not vary on credentials by default");
        assert!(c.routes[2].stream.is_none());
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let bad = r#"
server:
  listen: []
  colour: blue
upstreams:
  legacy:
    servers: []
  other:
    servers: ["http://x:1"]
    reuse: sometimes
routes:
  - match: orders
    upstream: nowhere
    stream:
      interval: 5 parsecs
      format: xml
      share: everyone
      histroy: 3
  - upstream: legacy
"#;
        let errs = parse_config(bad).unwrap_err().0;
        let paths: Vec<_> = errs.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "server.listen",
            "server.colour",
            "upstreams.legacy.servers",
            "upstreams.other.servers[0]",
            "upstreams.other.reuse",
            "routes[0].match",
            "routes[0].stream.interval",
            "routes[0].stream.format",
            "routes[0].stream.share",
            "routes[0].stream.histroy",
            "routes[0].upstream",
            "routes[1].match",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn unknown_upstream_is_reported_when_upstreams_are_valid() {
        let text = "upstreams: {a: {servers: ['127.0.0.1:1']}}\nroutes: [{match: /x, upstream: b}]\n";
        let errs = parse_config(text).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "routes[0].upstream");
        assert!(errs[0].message.contains("unknown upstream `b`"));
    }

    #[test]
    fn admin_may_not_share_a_listen_address() {
        let routes = "upstreams: {a: {servers: ['127.0.0.1:1']}}\nroutes: [{match: /x, upstream: a}]\n";
        for (listen, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
        ] {
            let text = format!("server: {{listen: ['127.0.0.1:7000', '{listen}'], admin: '{admin}'}}\n{routes}");
            let errs = parse_config(&text).unwrap_err().0;
            assert_eq!(errs[0].path, "server.admin", "{listen} / {admin}");
            assert!(errs[0].message.contains("server.listen[1]"), "{}", errs[0].message);
        }
        let text = format!("server: {{listen: ['127.0.0.1:8080'], admin: '127.0.0.2:8080'}}\n{routes}");
        assert!(parse_config(&text).is_ok(), "another address on the same port is fine");
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let errs = parse_config("routes:\n  - match: /x\n   upstream: [\n").unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].line.is_some(), "{errs:?}");
    }

    #[test]
    fn public_share_refuses_credential_vary() {
        let text = "upstreams: {a: {servers: ['127.0.0.1:1']}}\nroutes: [{match: /x, upstream: a, stream: {share: public, vary: [Cookie]}}]\n";
        let errs = parse_config(text).unwrap_err().0;
        assert_eq!(errs[0].path, "routes[0].stream.vary[0]");
    }

    #[test]
    fn missing_sections_are_reported() {
        let errs = parse_config("server: {}\n").unwrap_err().0;
        let paths: Vec<_> = errs.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, vec!["upstreams", "routes"]);
    }
}
