//! Cross-origin reads of a stream route (its `origins`): a page from an allowed origin may
//! read its subscriptions (an `EventSource` with `withCredentials`) and its plain GETs, so
//! their answers carry `Access-Control-Allow-Origin: <that origin>` with credentials allowed;
//! a preflight `OPTIONS` is answered here. A refusal of a request from an allowed origin (a
//! bad token or format, a limit's 503 or 429) carries them too, so that the page can read why.
//! Without `origins`, nothing of this is sent.

use super::subscribe::Reject;
use crate::config::StreamSettings;
use http::HeaderMap;

/// The request's `Origin`, if the route lists origins and allows this one.
pub fn allowed<'a>(headers: &'a HeaderMap, settings: &StreamSettings) -> Option<&'a str> {
    let list = settings.origins.as_ref()?;
    let origin = headers.get("origin")?.to_str().ok()?;
    list.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)).then_some(origin)
}

/// The header lines (each ending in CRLF) that let `origin` read the answer.
pub fn head_lines(origin: &str) -> String {
    format!("access-control-allow-origin: {origin}\r\naccess-control-allow-credentials: true\r\nvary: Origin\r\n")
}

/// The same, on a response pingora writes: the origin, credentials, and `Vary: Origin`.
pub fn add_headers(response: &mut pingora::http::ResponseHeader, origin: &str) -> pingora::Result<()> {
    response.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
    response.insert_header(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")?;
    response.append_header(http::header::VARY, "Origin")?;
    Ok(())
}

/// How long a browser may keep a preflight's answer.
pub const PREFLIGHT_MAX_AGE: u32 = 600;

/// Request headers a preflight may ask for: what a stream subscription or its GET sends.
pub const ALLOWED_HEADERS: &str = "authorization, last-event-id, cache-control, content-type";

/// A preflight for the route: `None` when the request is not one (or the route lists no
/// origins); otherwise the origin it is answered for, or the refusal.
pub fn preflight<'a>(
    method: &http::Method,
    headers: &'a HeaderMap,
    settings: &StreamSettings,
) -> Option<Result<&'a str, Reject>> {
    if method != http::Method::OPTIONS
        || settings.origins.is_none()
        || !headers.contains_key("access-control-request-method")
    {
        return None;
    }
    Some(allowed(headers, settings).ok_or_else(|| Reject {
        status: 403,
        reason: "origin_not_allowed",
        message: "this origin may not read this route".to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn only_listed_origins_are_let_read() {
        let open = StreamSettings::default();
        let listed = StreamSettings { origins: Some(vec!["https://app.example".into()]), ..StreamSettings::default() };
        let from_app = headers(&[("origin", "https://app.example")]);
        assert_eq!(allowed(&from_app, &open), None, "no origins: no CORS headers");
        assert_eq!(allowed(&from_app, &listed), Some("https://app.example"));
        assert_eq!(allowed(&headers(&[("origin", "https://evil.example")]), &listed), None);
        let ask = headers(&[("origin", "https://evil.example"), ("access-control-request-method", "GET")]);
        assert_eq!(preflight(&http::Method::OPTIONS, &ask, &listed).unwrap().unwrap_err().status, 403);
        let ask = headers(&[("origin", "https://app.example"), ("access-control-request-method", "GET")]);
        assert_eq!(preflight(&http::Method::OPTIONS, &ask, &listed).unwrap().unwrap(), "https://app.example");
        assert!(preflight(&http::Method::OPTIONS, &from_app, &listed).is_none(), "a plain OPTIONS is proxied");
        assert!(head_lines("https://app.example").contains("access-control-allow-credentials: true\r\n"));
    }
}
