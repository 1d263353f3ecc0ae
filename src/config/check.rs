//! The second pass: checks between keys, on the [`Draft`] the first pass read (which holds
//! every section, so a route naming an upstream with problems of its own is not reported too).

use super::model::*;
use super::sections::Draft;
use super::tls::Scheme;
use super::walk::Walker;

/// Checks and completes what depends on more than one key.
pub fn check(w: &mut Walker, draft: &mut Draft) {
    let server = &draft.server;
    // Pingora retries a port in use for a while instead of failing at once, so a shared
    // address would leave one service answering the other's connections.
    if let Some(admin) = &server.admin {
        if let Some(i) = server.listen.iter().position(|l| same_socket(l, admin)) {
            w.problem(
                "server.admin",
                format!("`{admin}` is also a listen address (server.listen[{i}]); use another port"),
            );
        }
    }
    listeners(w, server);
    for (name, upstream) in &mut draft.upstreams {
        tls(w, &format!("upstreams.{name}"), upstream);
        if let Some(h) = &upstream.health {
            // One check of a server at a time: each ends before the next is due.
            if h.timeout >= h.interval {
                w.problem(&format!("upstreams.{name}.health.timeout"), "must be shorter than health.interval");
            }
        }
    }
    if let Some(c) = &draft.cluster {
        // A lease renewed every third of it must survive one call timing out.
        if c.timeout * 3 > c.lease {
            w.problem("cluster.timeout", "must be at most a third of cluster.lease");
        }
        let in_url = redis::IntoConnectionInfo::into_connection_info(c.redis.0.as_str())
            .is_ok_and(|info| info.redis_settings().password().is_some());
        if in_url && c.password_file.is_some() {
            w.problem("cluster.password_file", "the redis URL holds a password already; give one or the other");
        }
    }
    let names: Vec<&str> = draft.upstreams.keys().map(String::as_str).collect();
    for (i, route) in draft.routes.iter_mut().enumerate() {
        let path = format!("routes[{i}]");
        if let Some(name) = &route.upstream {
            if !names.contains(&name.as_str()) {
                w.problem(
                    &format!("{path}.upstream"),
                    format!("unknown upstream `{name}` (defined: {})", names.join(", ")),
                );
            }
        }
        if let Some(stream) = &mut route.stream {
            let given = w.given(&format!("{path}.stream.vary"));
            vary(w, stream, given, &format!("{path}.stream.vary"));
            token(w, stream, &format!("{path}.stream.token"));
        }
    }
}

/// Checks `upstreams.<name>.tls` against the servers of `upstreams.<name>` (at `path`) for what depends on both its servers and its `tls`,
/// and turns TLS on when a server is written `https://…`.
fn tls(w: &mut Walker, path: &str, upstream: &mut UpstreamSettings) {
    let schemes: Vec<(usize, Scheme)> =
        upstream.addresses.iter().enumerate().filter_map(|(i, e)| e.scheme.map(|s| (i, s))).collect();
    let https = schemes.iter().any(|(_, s)| *s == Scheme::Https);
    if upstream.tls.is_none() && https {
        upstream.tls = Some(super::tls::UpstreamTls::default());
    }
    if let Some((i, _)) = schemes.iter().find(|(_, s)| *s == Scheme::Http).filter(|_| upstream.tls.is_some()) {
        let why = if https { "other servers of this upstream are `https://`" } else { "the upstream has `tls`" };
        w.problem(
            &format!("{path}.servers[{i}]"),
            format!("`http://` here, but {why}: one upstream speaks one of them"),
        );
    }
    let Some(tls) = &upstream.tls else { return };
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        let (missing, given) = if tls.client_cert.is_some() { ("key", "cert") } else { ("cert", "key") };
        w.problem(&format!("{path}.tls.client_{missing}"), format!("`client_{given}` needs `client_{missing}` too"));
    }
    if tls.sni.is_some() || tls.insecure_skip_verify {
        return;
    }
    for (i, entry) in upstream.addresses.iter().enumerate() {
        if super::tls::host_of(&entry.address).parse::<std::net::IpAddr>().is_ok() {
            let at = if w.given(&format!("{path}.tls")) {
                format!("{path}.tls.sni")
            } else {
                format!("{path}.servers[{i}]")
            };
            w.problem(
                &at,
                format!(
                    "server `{}` is an IP address, which names no certificate: give `tls.sni`, the name its \
                     certificate is for (or `tls.insecure_skip_verify: true`, to accept any certificate)",
                    entry.address
                ),
            );
            return;
        }
    }
}

/// A token stands for a request header: that header must split topics (a credential on a
/// credentialed route, or one `vary` lists), or one user's token would poll for everyone.
fn token(w: &mut Walker, stream: &StreamSettings, path: &str) {
    let Some(token) = &stream.token else { return };
    if token.query.is_none() && !token.first_message {
        w.problem(path, "give `query` (a URL parameter) or `first_message: true` (WebSocket), or both");
    }
    let splits = match stream.share {
        Share::Credentials => {
            CREDENTIAL_HEADERS.contains(&token.header.as_str()) || stream.vary.contains(&token.header)
        }
        Share::Public => false,
    };
    if !splits {
        let why = match stream.share {
            Share::Public => "a `share: public` stream sends no credentials upstream: a token makes no sense there",
            Share::Credentials => "the token's header must split topics: list it in `vary`",
        };
        w.problem(&format!("{path}.header"), why);
    }
}

/// `vary` with `share`: a public stream varies on nothing unless told, and never on
/// credentials; on a credentialed stream the list adds to the credentials, never replaces
/// them (a route that wants none says `share: public`).
fn vary(w: &mut Walker, stream: &mut StreamSettings, given: bool, path: &str) {
    match stream.share {
        Share::Public if !given => stream.vary.clear(),
        Share::Public => {
            for (i, name) in stream.vary.iter().enumerate() {
                if CREDENTIAL_HEADERS.contains(&name.as_str()) {
                    w.problem(
                        &format!("{path}[{i}]"),
                        format!("`{name}` carries credentials, which `share: public` never sends upstream"),
                    );
                }
            }
        }
        Share::Credentials => {
            for c in CREDENTIAL_HEADERS.iter().rev() {
                if !stream.vary.iter().any(|v| v == c) {
                    stream.vary.insert(0, c.to_string());
                }
            }
        }
    }
}

/// TLS listeners take ports of their own: none of a plain listener's, the admin's or another's.
fn listeners(w: &mut Walker, server: &ServerSettings) {
    for (i, tls) in server.tls.iter().enumerate() {
        let path = format!("server.tls[{i}].listen");
        let taken = if let Some(j) = server.listen.iter().position(|l| same_socket(l, &tls.listen)) {
            Some(format!("server.listen[{j}]"))
        } else if server.admin.as_ref().is_some_and(|a| same_socket(a, &tls.listen)) {
            Some("server.admin".to_string())
        } else {
            server.tls[..i]
                .iter()
                .position(|t| same_socket(&t.listen, &tls.listen))
                .map(|j| format!("server.tls[{j}].listen"))
        };
        if let Some(other) = taken {
            w.problem(&path, format!("`{}` is also {other}; use another port", tls.listen));
        }
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
