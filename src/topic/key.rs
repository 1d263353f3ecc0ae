//! TopicKey derivation: which subscribers may share one poll. Pure, no I/O.
//!
//! Two subscribers share a topic only when the upstream request made on their behalf would
//! be byte-for-byte the same: same route (which names one upstream), same normalised target,
//! and the same values of the `Host` header and of every `vary` header. The upstream's name is
//! not part of the key, so a reload that points a route at other servers keeps its topics. The poller sends exactly
//! those headers and no others, so nothing outside the key can change the upstream's answer.

use crate::config::{Share, StreamSettings, CREDENTIAL_HEADERS, RESERVED_QUERY_PREFIX};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

/// Query parameters starting with this prefix belong to unpoll: they are stripped before the
/// upstream request and never part of a key.
pub const RESERVED_PREFIX: &str = RESERVED_QUERY_PREFIX;

/// Identity of a shared poll.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    /// The route's `match` pattern.
    pub route: String,
    /// Normalised path and query, as sent upstream.
    pub target: String,
    /// SHA-256 over `Host` and the `vary` headers' names and values.
    pub headers_hash: [u8; 32],
}

/// What the poller sends for a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    pub target: String,
    /// `Host` and the `vary` headers, in a fixed order; nothing else.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Whose pooled upstream connections the poll may use (see `pool::identity`): taken from
    /// the hash of exactly the headers it sends.
    pub identity: u64,
    /// Which server the polls go to, on a sticky upstream (see [`pin`]).
    pub pin: Option<Pin>,
}

/// The server a sticky subscriber's polls go to, as its plain requests would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The server a sticky cookie names (its opaque id).
    Server(String),
    /// The attribute a hashed upstream hashes on (its bytes, as the request carried them).
    Hash(Vec<u8>),
}

/// Pins a topic's polls: on a credentialed route the pin becomes part of the key, so that
/// subscribers pinned to different servers never share a poll; a public route's answer is
/// the same from every server, so its topics are not split and its polls are balanced.
pub fn pin(key: &mut TopicKey, poll: &mut PollRequest, settings: &StreamSettings, pin: Pin) {
    if settings.share == Share::Public {
        return;
    }
    let (kind, value) = match &pin {
        Pin::Server(id) => (b"server", id.as_bytes()),
        Pin::Hash(attribute) => (b"hashed", &attribute[..]),
    };
    let mut hasher = Sha256::new();
    hasher.update(key.headers_hash);
    hash_field(&mut hasher, kind);
    hash_field(&mut hasher, value);
    key.headers_hash = hasher.finalize().into();
    poll.pin = Some(pin);
}

/// The `unpoll_*` parameters a subscriber gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    pub format: Option<String>,
    pub last_event_id: Option<String>,
}

/// Splits a query into the upstream's normalised part (parameters sorted stably by name,
/// `unpoll_*` removed, and, with `keep`, only the parameters it names) and the reserved
/// parameters.
pub fn split_query(query: Option<&str>, keep: Option<&[String]>) -> (Option<String>, Reserved) {
    let mut reserved = Reserved::default();
    let mut kept: Vec<&str> = Vec::new();
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if let Some(own) = name.strip_prefix(RESERVED_PREFIX) {
            let value = percent_decode(value);
            match own {
                "format" => reserved.format = Some(value),
                "last_event_id" => reserved.last_event_id = Some(value),
                _ => {}
            }
        } else if keep.is_none_or(|names| names.iter().any(|n| n == name)) {
            kept.push(param);
        }
    }
    kept.sort_by_key(|p| p.split_once('=').map_or(*p, |(n, _)| n));
    let query = (!kept.is_empty()).then(|| kept.join("&"));
    (query, reserved)
}

/// Derives the key and the upstream request of a subscription.
pub fn derive(
    route: &str,
    settings: &StreamSettings,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> (TopicKey, PollRequest, Reserved) {
    let (query, reserved) = split_query(query, settings.query_params.as_deref());
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut names: Vec<&str> = vec!["host"];
    // A credentialed route always varies on the credentials, whatever `vary` lists (the
    // configuration already adds them; this is defence in depth).
    if settings.share == Share::Credentials {
        names.extend(CREDENTIAL_HEADERS);
    }
    for name in &settings.vary {
        let credential = CREDENTIAL_HEADERS.contains(&name.as_str());
        // Validation already refuses this combination; the check here is defence in depth.
        let withheld = settings.share == Share::Public && credential;
        if !withheld && !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names.sort_unstable();
    let mut hasher = Sha256::new();
    let mut sent = Vec::new();
    for name in names {
        let values: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        hash_field(&mut hasher, name.as_bytes());
        hasher.update((values.len() as u64).to_be_bytes());
        for v in values {
            hash_field(&mut hasher, v.as_bytes());
            sent.push((HeaderName::from_bytes(name.as_bytes()).expect("validated header name"), v.clone()));
        }
    }
    let headers_hash: [u8; 32] = hasher.finalize().into();
    let identity = u64::from_be_bytes(headers_hash[..8].try_into().expect("32 bytes"));
    let key = TopicKey { route: route.to_string(), target: target.clone(), headers_hash };
    (key, PollRequest { target, headers: sent, identity, pin: None }, reserved)
}

/// Length-prefixed, so that no two different header lists hash the same input.
fn hash_field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// Decodes a query value as forms do: `+` is a space, then percent escapes (a malformed
/// escape is kept as it is, bytes that are not UTF-8 become U+FFFD).
fn percent_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn key(settings: &StreamSettings, query: Option<&str>, h: &[(&str, &str)]) -> (TopicKey, PollRequest) {
        let (k, r, _) = derive("/orders/{id}", settings, "/orders/1", query, &headers(h));
        (k, r)
    }

    #[test]
    fn different_credentials_never_share() {
        let s = StreamSettings::default();
        let (alice, _) = key(&s, None, &[("host", "h"), ("authorization", "Bearer alice")]);
        let (bob, _) = key(&s, None, &[("host", "h"), ("authorization", "Bearer bob")]);
        let (nobody, _) = key(&s, None, &[("host", "h")]);
        let (empty, _) = key(&s, None, &[("host", "h"), ("authorization", "")]);
        let (cookie, _) = key(&s, None, &[("host", "h"), ("cookie", "sid=1")]);
        let all = [&alice, &bob, &nobody, &empty, &cookie];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let (alice_again, _) = key(&s, None, &[("authorization", "Bearer alice"), ("host", "h"), ("x-other", "1")]);
        assert_eq!(alice, alice_again, "headers outside vary do not split topics");
    }

    #[test]
    fn a_vary_list_never_drops_the_credentials() {
        let s = StreamSettings { vary: vec!["x-tenant".into()], ..Default::default() };
        let (alice, req) = key(&s, None, &[("host", "h"), ("x-tenant", "t1"), ("authorization", "Bearer alice")]);
        let (bob, _) = key(&s, None, &[("host", "h"), ("x-tenant", "t1"), ("authorization", "Bearer bob")]);
        assert_ne!(alice, bob, "two users of one tenant do not share");
        let names: Vec<_> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["authorization", "host", "x-tenant"]);
    }

    #[test]
    fn host_always_splits_topics() {
        let s = StreamSettings::default();
        assert_ne!(key(&s, None, &[("host", "a")]).0, key(&s, None, &[("host", "b")]).0);
    }

    #[test]
    fn header_boundaries_cannot_be_forged() {
        let s = StreamSettings { vary: vec!["a".into(), "b".into()], ..Default::default() };
        let one = key(&s, None, &[("a", "xb"), ("b", "")]).0;
        let two = key(&s, None, &[("a", "x"), ("b", "b")]).0;
        assert_ne!(one, two);
        let repeated = key(&s, None, &[("a", "1"), ("a", "2")]).0;
        let joined = key(&s, None, &[("a", "1, 2")]).0;
        assert_ne!(repeated, joined);
    }

    #[test]
    fn only_key_headers_are_sent() {
        let s = StreamSettings::default();
        let (_, req) = key(&s, None, &[("host", "h"), ("authorization", "Bearer a"), ("x-secret", "1")]);
        let names: Vec<_> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["authorization", "host"]);
    }

    #[test]
    fn public_share_drops_credentials_from_key_and_request() {
        let s = StreamSettings { share: Share::Public, vary: vec![], ..Default::default() };
        let (a, req) = key(&s, None, &[("host", "h"), ("authorization", "Bearer a"), ("cookie", "c=1")]);
        let (b, _) = key(&s, None, &[("host", "h"), ("authorization", "Bearer b")]);
        assert_eq!(a, b);
        assert!(req.headers.iter().all(|(n, _)| n != "authorization" && n != "cookie"));
        // Even a vary list that names credentials (refused by validation) sends none.
        let forced = StreamSettings { share: Share::Public, vary: vec!["cookie".into()], ..Default::default() };
        let (_, req) = key(&forced, None, &[("host", "h"), ("cookie", "c=1")]);
        assert!(req.headers.iter().all(|(n, _)| n != "cookie"));
    }

    #[test]
    fn query_is_normalised_and_reserved_params_removed() {
        let s = StreamSettings::default();
        let (a, req) = key(&s, Some("b=2&a=1&unpoll_format=snapshot&a=0"), &[]);
        let (b, _) = key(&s, Some("a=1&unpoll_last_event_id=x-1&a=0&b=2"), &[]);
        assert_eq!(a, b);
        assert_eq!(req.target, "/orders/1?a=1&a=0&b=2");
        let (c, _) = key(&s, Some("a=0&a=1&b=2"), &[]);
        assert_ne!(a, c, "the order of repeated parameters is kept");
        let (none, req) = key(&s, Some("unpoll_format=snapshot"), &[]);
        assert_eq!(req.target, "/orders/1");
        assert_eq!(none, key(&s, None, &[]).0);
    }

    #[test]
    fn only_the_listed_query_parameters_make_a_topic() {
        let s = StreamSettings { query_params: Some(vec!["page".into()]), ..Default::default() };
        let (a, req) = key(&s, Some("page=2&_=1712345&x=y"), &[]);
        let (b, _) = key(&s, Some("page=2&_=999"), &[]);
        assert_eq!(a, b, "unlisted parameters neither split topics nor reach the upstream");
        assert_eq!(req.target, "/orders/1?page=2");
        assert_ne!(a, key(&s, Some("page=3"), &[]).0);
        let (_, none) = key(&s, Some("cachebust=1"), &[]);
        assert_eq!(none.target, "/orders/1");
    }

    #[test]
    fn reserved_params_are_read() {
        let (_, r) =
            split_query(Some("x=1&unpoll_format=merge-patch&unpoll_last_event_id=ab%2Dc-4&unpoll_future=1"), None);
        assert_eq!(r.format.as_deref(), Some("merge-patch"));
        assert_eq!(r.last_event_id.as_deref(), Some("ab-c-4"));
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
