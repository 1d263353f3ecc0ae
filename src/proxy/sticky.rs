//! Which server of its upstream a proxied request goes to: the one its sticky cookie names
//! (while that server is healthy), the one its hashed attribute maps to, or the next in
//! weighted round robin.

use crate::config::{HashOn, Sticky, StickyCookie};
use crate::upstream::balance::Server;
use crate::upstream::Upstream;
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
            let id = named.and_then(|id| std::str::from_utf8(id).ok());
            if let Some(server) = id.and_then(|id| balancer.by_id(id)).filter(|s| Some(s.addr) != avoid) {
                return Choice { server: server.clone(), set_cookie: None, result: Some("hit") };
            }
            let server = balancer.round_robin(avoid).clone();
            let set_cookie = Some(set_cookie(cookie, &server.id));
            let result = if named.is_some() { "reassigned" } else { "assigned" };
            Choice { server, set_cookie, result: Some(result) }
        }
        Some(Sticky::Hash(on)) => {
            let server = match key(on, headers, query, client) {
                Some(key) => balancer.by_hash(&key, avoid).clone(),
                None => balancer.round_robin(avoid).clone(),
            };
            Choice { server, set_cookie: None, result: None }
        }
    }
}

/// The value a request hashes on, if it has one: header and cookie values as the bytes they
/// are (a value that is not UTF-8 still pins its client).
pub fn key(on: &HashOn, headers: &HeaderMap, query: Option<&str>, client: Option<IpAddr>) -> Option<Vec<u8>> {
    match on {
        HashOn::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
        HashOn::Cookie(name) => cookie_value(headers, name).map(<[u8]>::to_vec),
        HashOn::Query(name) => query?
            .split('&')
            .filter_map(|p| p.split_once('=').or(Some((p, ""))))
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes().to_vec()),
        HashOn::SourceIp => client.map(|ip| ip.to_string().into_bytes()),
    }
}

/// The `name=value` pairs of one `Cookie` header, as bytes: browsers send whatever bytes a
/// cookie was set with, UTF-8 or not, and a header is never read as text here.
fn pairs(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    header.split(|b| *b == b';').map(<[u8]>::trim_ascii).filter(|pair| !pair.is_empty())
}

/// A pair's name (all of it, for a pair without `=`).
fn pair_name(pair: &[u8]) -> &[u8] {
    pair.split(|b| *b == b'=').next().unwrap_or(pair).trim_ascii()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| pairs(v.as_bytes()))
        .find(|pair| pair_name(pair) == name.as_bytes())
        .and_then(|pair| pair.iter().position(|b| *b == b'=').map(|at| pair[at + 1..].trim_ascii()))
}

/// `headers` without cookie `name` in their `Cookie` headers (every other cookie kept, byte
/// for byte).
pub fn strip(headers: &HeaderMap, name: &str) -> HeaderMap {
    let mut out = headers.clone();
    if cookie_value(headers, name).is_none() {
        return out;
    }
    out.remove(http::header::COOKIE);
    for value in headers.get_all(http::header::COOKIE) {
        if let Some(kept) = without_cookie(value, name) {
            out.append(http::header::COOKIE, kept);
        }
    }
    out
}

/// The `Cookie` header without cookie `name`; `None` when nothing else is left. What is kept
/// is the header's own bytes (joined by `; `), so it is always a valid header value.
pub fn without_cookie(header: &http::HeaderValue, name: &str) -> Option<http::HeaderValue> {
    let rest: Vec<&[u8]> = pairs(header.as_bytes()).filter(|pair| pair_name(pair) != name.as_bytes()).collect();
    if rest.is_empty() {
        return None;
    }
    // Pieces of a valid value joined by `; ` are a valid value; were they ever not, the header
    // goes on whole rather than a credential being lost.
    Some(http::HeaderValue::from_bytes(&rest.join(&b"; "[..])).unwrap_or_else(|_| header.clone()))
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
        assert_eq!(cookie_value(&h, "unpoll_server"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(&h, "c"), None);
        let value = |s: &str| http::HeaderValue::from_str(s).unwrap();
        let kept = without_cookie(&value("a=1; unpoll_server=abc; c=3"), "unpoll_server");
        assert_eq!(kept.unwrap(), "a=1; c=3");
        assert_eq!(without_cookie(&value("unpoll_server=abc"), "unpoll_server"), None);
    }

    #[test]
    fn cookies_that_are_not_utf8_are_kept_byte_for_byte() {
        let raw = http::HeaderValue::from_bytes(b"session=caf\xc3\xa9-\xff42; unpoll_server=abc; theme=d\xe9").unwrap();
        let mut h = HeaderMap::new();
        h.append("cookie", raw.clone());
        assert_eq!(cookie_value(&h, "session"), Some(&b"caf\xc3\xa9-\xff42"[..]));
        assert_eq!(cookie_value(&h, "unpoll_server"), Some(&b"abc"[..]), "the sticky id is found beside them");
        let kept = without_cookie(&raw, "unpoll_server").unwrap();
        assert_eq!(kept.as_bytes(), b"session=caf\xc3\xa9-\xff42; theme=d\xe9");
        let stripped = strip(&h, "unpoll_server");
        assert_eq!(
            stripped.get_all("cookie").iter().map(|v| v.as_bytes().to_vec()).collect::<Vec<_>>(),
            [kept.as_bytes().to_vec()]
        );
        let on = HashOn::Cookie("session".into());
        assert_eq!(key(&on, &h, None, None).as_deref(), Some(&b"caf\xc3\xa9-\xff42"[..]));
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
        assert_eq!(key(&on, &HeaderMap::new(), Some("a=1&tenant=acme"), None).as_deref(), Some(&b"acme"[..]));
        assert_eq!(key(&on, &HeaderMap::new(), Some("a=1"), None), None);
    }
}
