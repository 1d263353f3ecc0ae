//! Which server of its upstream a proxied request goes to: the one its sticky cookie names
//! (while that server is healthy), the one its hashed attribute maps to, or the next in
//! weighted round robin.

use crate::balance::Server;
use crate::config::{HashOn, Sticky, StickyCookie};
use crate::route_table::Upstream;
use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The server chosen, and the cookie to set on the response when the client is (re)assigned.
pub struct Choice {
    pub server: Arc<Server>,
    pub set_cookie: Option<String>,
    /// `unpoll_sticky_total`'s `result`, on a sticky upstream.
    pub result: Option<&'static str>,
}

/// Chooses for a request with `headers` and `query`, from `client`, avoiding `avoid` (a server
/// that just failed to connect) when another will do.
pub fn choose(
    upstream: &Upstream,
    headers: &HeaderMap,
    query: Option<&str>,
    client: Option<IpAddr>,
    avoid: Option<SocketAddr>,
) -> Choice {
    let balancer = upstream.balancer();
    match &upstream.settings.sticky {
        None => Choice { server: balancer.round_robin(avoid).clone(), set_cookie: None, result: None },
        Some(Sticky::Cookie(cookie)) => {
            let named = cookie_value(headers, &cookie.name);
            if let Some(server) = named.and_then(|id| balancer.by_id(id)).filter(|s| Some(s.addr) != avoid) {
                return Choice { server: server.clone(), set_cookie: None, result: Some("hit") };
            }
            let server = balancer.round_robin(avoid).clone();
            let set_cookie = Some(set_cookie(cookie, &server.id));
            let result = if named.is_some() { "reassigned" } else { "assigned" };
            Choice { server, set_cookie, result: Some(result) }
        }
        Some(Sticky::Hash(on)) => {
            let server = match key(on, headers, query, client) {
                Some(key) => balancer.by_hash(key.as_bytes(), avoid).clone(),
                None => balancer.round_robin(avoid).clone(),
            };
            Choice { server, set_cookie: None, result: None }
        }
    }
}

/// The value a request hashes on, if it has one.
pub fn key(on: &HashOn, headers: &HeaderMap, query: Option<&str>, client: Option<IpAddr>) -> Option<String> {
    match on {
        HashOn::Header(name) => headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string),
        HashOn::Cookie(name) => cookie_value(headers, name).map(str::to_string),
        HashOn::Query(name) => query?
            .split('&')
            .filter_map(|p| p.split_once('=').or(Some((p, ""))))
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_string()),
        HashOn::SourceIp => client.map(|ip| ip.to_string()),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// `headers` without cookie `name` in their `Cookie` headers.
pub fn strip(headers: &HeaderMap, name: &str) -> HeaderMap {
    let mut out = headers.clone();
    if cookie_value(headers, name).is_none() {
        return out;
    }
    out.remove(http::header::COOKIE);
    for value in headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()) {
        if let Some(kept) = without_cookie(value, name).and_then(|k| http::HeaderValue::from_str(&k).ok()) {
            out.append(http::header::COOKIE, kept);
        }
    }
    out
}

/// The `Cookie` header without cookie `name`; `None` when nothing else is left.
pub fn without_cookie(header: &str, name: &str) -> Option<String> {
    let rest: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(n, _)| n) != name)
        .collect();
    (!rest.is_empty()).then(|| rest.join("; "))
}

fn set_cookie(cookie: &StickyCookie, id: &str) -> String {
    let mut out = format!("{}={id}; Path=/", cookie.name);
    if let Some(age) = cookie.max_age {
        out.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if cookie.http_only {
        out.push_str("; HttpOnly");
    }
    if cookie.secure {
        out.push_str("; Secure");
    }
    let same_site = match cookie.same_site.as_str() {
        "strict" => "Strict",
        "none" => "None",
        _ => "Lax",
    };
    out.push_str(&format!("; SameSite={same_site}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_and_stripped_by_name() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; unpoll_server=abc".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        assert_eq!(cookie_value(&h, "unpoll_server"), Some("abc"));
        assert_eq!(cookie_value(&h, "b"), Some("2"));
        assert_eq!(cookie_value(&h, "c"), None);
        assert_eq!(without_cookie("a=1; unpoll_server=abc; c=3", "unpoll_server").as_deref(), Some("a=1; c=3"));
        assert_eq!(without_cookie("unpoll_server=abc", "unpoll_server"), None);
    }

    #[test]
    fn the_cookie_carries_its_attributes() {
        let c =
            StickyCookie { max_age: Some(std::time::Duration::from_secs(3600)), secure: true, ..Default::default() };
        assert_eq!(set_cookie(&c, "0123"), "unpoll_server=0123; Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=Lax");
        let plain = StickyCookie { http_only: false, same_site: "strict".into(), ..Default::default() };
        assert_eq!(set_cookie(&plain, "9"), "unpoll_server=9; Path=/; SameSite=Strict");
    }

    #[test]
    fn a_query_parameter_is_found_by_name() {
        let on = HashOn::Query("tenant".into());
        assert_eq!(key(&on, &HeaderMap::new(), Some("a=1&tenant=acme"), None).as_deref(), Some("acme"));
        assert_eq!(key(&on, &HeaderMap::new(), Some("a=1"), None), None);
    }
}
