//! Cross-origin reads of a stream route (its `origins`): a page from an allowed origin may
//! read its subscriptions and its plain GETs; a preflight `OPTIONS` is answered here. A refusal
//! of a request from an allowed origin (a bad token or format, a limit's 503 or 429) carries
//! the same headers, so that the page can read why. Without `origins`, nothing of this is sent.
//!
//! Two kinds of grant:
//! - an origin **listed by name** may read with the user's credentials: the answer carries
//!   `Access-Control-Allow-Origin: <that origin>` and `Access-Control-Allow-Credentials: true`
//!   (an `EventSource` with `withCredentials`, a `fetch` with `credentials: "include"`);
//! - any other origin, when the list holds `*`, and the origin `null` (sandboxed frames, local
//!   files) only when the list holds `null` literally, may read **without credentials**:
//!   `Access-Control-Allow-Origin: *` (or `null`) and no `Allow-Credentials`, so a browser
//!   neither exposes an answer made with the user's cookies nor lets the page send them. A
//!   WebSocket has no CORS (browsers open it with the user's cookies whatever the server
//!   answers), so a subscription from such an origin is served as if it came with no ambient
//!   credential: its `Cookie` and `Authorization` headers are dropped before anything reads
//!   them (a token in the URL or the first message still works: the page chose to send it).
//!
//! Every answer on a route with `origins` says `Vary: Origin`, whether or not the request had
//! one, so that a shared cache never serves one origin's copy to another.

use crate::config::StreamSettings;
use http::HeaderMap;
use pingora::http::RequestHeader;

/// What a request's origin may do with the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `Access-Control-Allow-Origin`: the origin itself, `*` or `null`.
    pub allow: String,
    /// Whether it may read with the user's credentials.
    pub credentials: bool,
}

/// What CORS adds to the answers of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cors {
    /// The route lists no origins: nothing.
    #[default]
    Off,
    /// The route lists origins, and this request is not let read across origins (it has no
    /// `Origin`, or one not allowed): only `Vary: Origin`.
    Vary,
    /// The origin may read it.
    Granted(Grant),
}

impl Cors {
    /// What the route's `origins` allow the request with `headers`.
    pub fn of(headers: &HeaderMap, settings: &StreamSettings) -> Cors {
        match &settings.origins {
            None => Cors::Off,
            Some(list) => match grant(headers.get(http::header::ORIGIN).map(|v| v.as_bytes()), list) {
                Some(g) => Cors::Granted(g),
                None => Cors::Vary,
            },
        }
    }

    /// The grant, if the origin may read.
    pub fn granted(&self) -> Option<&Grant> {
        match self {
            Cors::Granted(g) => Some(g),
            _ => None,
        }
    }

    /// The header lines (each ending in CRLF) for a head written by hand; `None` when off.
    pub fn head_lines(&self) -> Option<String> {
        match self {
            Cors::Off => None,
            Cors::Vary => Some("vary: Origin\r\n".to_string()),
            Cors::Granted(g) if g.credentials => Some(format!(
                "access-control-allow-origin: {}\r\naccess-control-allow-credentials: true\r\nvary: Origin\r\n",
                g.allow
            )),
            Cors::Granted(g) => Some(format!("access-control-allow-origin: {}\r\nvary: Origin\r\n", g.allow)),
        }
    }

    /// The same, on a response pingora writes.
    pub fn add_headers(&self, response: &mut pingora::http::ResponseHeader) -> pingora::Result<()> {
        if let Cors::Granted(g) = self {
            response.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, g.allow.as_str())?;
            if g.credentials {
                response.insert_header(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")?;
            } else {
                // Whatever the upstream said: this origin reads without credentials.
                response.remove_header(&http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
            }
        }
        if *self != Cors::Off {
            response.append_header(http::header::VARY, "Origin")?;
        }
        Ok(())
    }

    /// Whether the request may use ambient credentials (cookies, a browser's cached HTTP
    /// authentication): not when its origin is let read only without them.
    pub fn keeps_credentials(&self) -> bool {
        self.granted().is_none_or(|g| g.credentials)
    }
}

/// The grant `list` gives `origin` (see the module's rules).
pub fn grant(origin: Option<&[u8]>, list: &[String]) -> Option<Grant> {
    let origin = std::str::from_utf8(origin?).ok()?.trim();
    if origin.is_empty() {
        return None;
    }
    let listed = |name: &str| list.iter().any(|a| a != "*" && a.eq_ignore_ascii_case(name));
    if origin.eq_ignore_ascii_case("null") {
        // Opaque origins are all `null`: listing it lets any of them read, never with cookies.
        return listed("null").then(|| Grant { allow: "null".to_string(), credentials: false });
    }
    if listed(origin) {
        return Some(Grant { allow: origin.to_string(), credentials: true });
    }
    list.iter().any(|a| a == "*").then(|| Grant { allow: "*".to_string(), credentials: false })
}

/// Drops what a browser sends on its own (`Cookie`, and `Authorization` from its cache of
/// HTTP authentication) from a subscription whose origin may read only without credentials.
pub fn drop_ambient_credentials(req: &mut RequestHeader) {
    req.remove_header(&http::header::COOKIE);
    req.remove_header(&http::header::AUTHORIZATION);
}

/// How long a browser may keep a preflight's answer.
pub const PREFLIGHT_MAX_AGE: u32 = 600;

/// Request headers a preflight may ask for: what a stream subscription or its GET sends.
pub const ALLOWED_HEADERS: &str = "authorization, last-event-id, cache-control, content-type";

/// Whether the request is a preflight for a route with origins (answered by unpoll: with the
/// grant, or `403 origin_not_allowed`), not a plain `OPTIONS` to proxy.
pub fn is_preflight(method: &http::Method, headers: &HeaderMap, cors: &Cors) -> bool {
    method == http::Method::OPTIONS && *cors != Cors::Off && headers.contains_key("access-control-request-method")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    fn listing(origins: &[&str]) -> StreamSettings {
        StreamSettings { origins: Some(origins.iter().map(|o| o.to_string()).collect()), ..StreamSettings::default() }
    }

    fn with_credentials(origin: &str) -> Cors {
        Cors::Granted(Grant { allow: origin.into(), credentials: true })
    }

    fn without_credentials(allow: &str) -> Cors {
        Cors::Granted(Grant { allow: allow.into(), credentials: false })
    }

    #[test]
    fn only_listed_origins_are_let_read_with_credentials() {
        let from_app = headers(&[("origin", "https://app.example")]);
        assert_eq!(Cors::of(&from_app, &StreamSettings::default()), Cors::Off, "no origins: no CORS headers");
        let listed = listing(&["https://app.example"]);
        assert_eq!(Cors::of(&from_app, &listed), with_credentials("https://app.example"));
        assert_eq!(Cors::of(&headers(&[("origin", "https://evil.example")]), &listed), Cors::Vary);
        assert_eq!(Cors::of(&HeaderMap::new(), &listed), Cors::Vary, "no Origin: Vary all the same");
        let options = http::Method::OPTIONS;
        let ask = headers(&[("origin", "https://evil.example"), ("access-control-request-method", "GET")]);
        assert!(is_preflight(&options, &ask, &Cors::of(&ask, &listed)), "answered (refused) here");
        assert_eq!(Cors::of(&ask, &listed).granted(), None);
        let ask = headers(&[("origin", "https://app.example"), ("access-control-request-method", "GET")]);
        assert!(is_preflight(&options, &ask, &Cors::of(&ask, &listed)));
        let answered = Cors::of(&ask, &listed).granted().cloned();
        assert_eq!(answered, Some(Grant { allow: "https://app.example".into(), credentials: true }));
        assert!(!is_preflight(&options, &from_app, &Cors::of(&from_app, &listed)), "a plain OPTIONS is proxied");
        assert!(!is_preflight(&options, &ask, &Cors::of(&ask, &StreamSettings::default())), "no origins");
        let lines = with_credentials("https://app.example").head_lines().unwrap();
        assert!(lines.contains("access-control-allow-credentials: true\r\n") && lines.contains("vary: Origin"));
    }

    #[test]
    fn a_star_lets_any_origin_read_without_credentials_and_never_null() {
        let star = listing(&["*"]);
        let evil = headers(&[("origin", "https://evil.example")]);
        let cors = Cors::of(&evil, &star);
        assert_eq!(cors, without_credentials("*"));
        assert!(!cors.keeps_credentials(), "its subscriptions lose their cookies");
        let lines = cors.head_lines().unwrap();
        assert_eq!(lines, "access-control-allow-origin: *\r\nvary: Origin\r\n", "no Allow-Credentials");
        assert_eq!(Cors::of(&headers(&[("origin", "null")]), &star), Cors::Vary, "`*` does not cover null");
        // A listed origin beside `*` keeps its credentials; the others read without.
        let both = listing(&["*", "https://app.example"]);
        assert_eq!(
            Cors::of(&headers(&[("origin", "https://app.example")]), &both),
            with_credentials("https://app.example")
        );
        assert_eq!(Cors::of(&evil, &both), without_credentials("*"));
        // `null` listed literally: allowed, without credentials.
        let null = listing(&["null"]);
        assert_eq!(Cors::of(&headers(&[("origin", "null")]), &null), without_credentials("null"));
        assert_eq!(Cors::of(&evil, &null), Cors::Vary);
        let raw =
            HeaderMap::from_iter([(http::header::ORIGIN, http::HeaderValue::from_bytes(b"https://\xff").unwrap())]);
        assert_eq!(Cors::of(&raw, &star), Cors::Vary, "an origin that is not text is no origin");
    }

    #[test]
    fn ambient_credentials_go_and_an_upstreams_allow_credentials_is_overridden() {
        let mut req = RequestHeader::build("GET", b"/me", None).unwrap();
        req.insert_header("cookie", "sid=alice").unwrap();
        req.insert_header("authorization", "Basic YWxpY2U6cHc=").unwrap();
        req.insert_header("accept", "text/event-stream").unwrap();
        drop_ambient_credentials(&mut req);
        assert!(req.headers.get("cookie").is_none() && req.headers.get("authorization").is_none());
        assert!(req.headers.get("accept").is_some());
        let mut resp = pingora::http::ResponseHeader::build(200, None).unwrap();
        resp.insert_header("access-control-allow-credentials", "true").unwrap();
        without_credentials("*").add_headers(&mut resp).unwrap();
        assert!(resp.headers.get("access-control-allow-credentials").is_none());
        assert_eq!(resp.headers["access-control-allow-origin"], "*");
        let mut plain = pingora::http::ResponseHeader::build(200, None).unwrap();
        Cors::Vary.add_headers(&mut plain).unwrap();
        assert_eq!(plain.headers["vary"], "Origin");
        assert!(plain.headers.get("access-control-allow-origin").is_none());
    }
}
