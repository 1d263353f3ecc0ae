//! Deciding whether a request is a subscription, and validating it. Pure: no I/O.

use crate::config::{Format, StreamSettings};
use crate::topic::key::split_query;
use crate::wire::encode::Protocol;
use crate::wire::event::ResumeId;
use http::{HeaderMap, Method, Version};
use pingora::http::RequestHeader;

/// Subprotocol names a WebSocket client may offer, one per format.
pub const SUBPROTOCOL_PREFIX: &str = "unpoll.";

/// A validated subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub protocol: Protocol,
    pub format: Format,
    pub resume: Option<ResumeId>,
    /// WebSocket only: the client's `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// WebSocket only: the subprotocol we answer with.
    pub subprotocol: Option<&'static str>,
}

/// Why a subscription request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    /// Short machine-readable reason; also the metric label.
    pub reason: &'static str,
    pub message: String,
}

fn reject(status: u16, reason: &'static str, message: impl Into<String>) -> Reject {
    Reject { status, reason, message: message.into() }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(token)))
}

/// Whether the request asks for a subscription (a GET upgrading to WebSocket, or accepting an
/// event stream), valid or not.
pub fn asks(req: &RequestHeader) -> bool {
    req.method == Method::GET
        && (has_token(&req.headers, "upgrade", "websocket") || has_token(&req.headers, "accept", "text/event-stream"))
}

/// `None` when the request is not a subscription (it is proxied); otherwise the validated
/// subscription or the reason it is refused.
pub fn classify(req: &RequestHeader, settings: &StreamSettings) -> Option<Result<SubscribeRequest, Reject>> {
    if !asks(req) {
        return None;
    }
    let websocket = has_token(&req.headers, "upgrade", "websocket");
    Some(validate(req, settings, websocket))
}

/// The route's `origins` allowlist: a browser page from another site must not be able to open a
/// stream with the user's cookies (cross-site WebSocket hijacking). An origin let read only
/// without credentials (see [`super::cors`]) may subscribe, with its ambient credentials gone.
fn check_origin(headers: &HeaderMap, settings: &StreamSettings) -> Result<(), Reject> {
    let Some(allowed) = &settings.origins else {
        return Ok(());
    };
    let origin = headers.get(http::header::ORIGIN);
    match origin {
        None if settings.allow_missing_origin => Ok(()),
        None => Err(reject(403, "origin_not_allowed", "this stream needs an Origin header")),
        Some(o) if super::cors::grant(Some(o.as_bytes()), allowed).is_some() => Ok(()),
        Some(o) => {
            let shown = String::from_utf8_lossy(o.as_bytes());
            Err(reject(403, "origin_not_allowed", format!("origin `{shown}` may not subscribe here")))
        }
    }
}

fn validate(req: &RequestHeader, settings: &StreamSettings, websocket: bool) -> Result<SubscribeRequest, Reject> {
    let headers = &req.headers;
    check_origin(headers, settings)?;
    let (_, reserved) = split_query(req.uri.query(), None);
    let mut format = match reserved.format.as_deref() {
        None => settings.format,
        Some(name) => Format::parse(name).ok_or_else(|| {
            reject(
                400,
                "unknown_format",
                format!("unknown unpoll_format `{name}` (use json-patch, merge-patch or snapshot)"),
            )
        })?,
    };
    let resume_text = header(headers, "last-event-id").map(str::to_string).or(reserved.last_event_id);
    let resume = match resume_text.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => Some(ResumeId::parse(text).ok_or_else(|| {
            reject(400, "bad_last_event_id", format!("`{text}` is not an event id (`<epoch>-<version>`)"))
        })?),
    };
    if !websocket {
        return Ok(SubscribeRequest { protocol: Protocol::Sse, format, resume, ws_key: None, subprotocol: None });
    }
    if req.version != Version::HTTP_11 {
        return Err(reject(400, "bad_upgrade", "WebSocket upgrades need HTTP/1.1"));
    }
    if !has_token(headers, "connection", "upgrade") {
        return Err(reject(400, "bad_upgrade", "`Upgrade: websocket` needs `Connection: Upgrade`"));
    }
    if header(headers, "sec-websocket-version").map(str::trim) != Some("13") {
        return Err(reject(426, "bad_upgrade", "only WebSocket version 13 is supported (Sec-WebSocket-Version: 13)"));
    }
    if headers.get_all("sec-websocket-key").iter().count() > 1 {
        return Err(reject(400, "bad_upgrade", "exactly one Sec-WebSocket-Key, please"));
    }
    let key = header(headers, "sec-websocket-key").map(str::trim).unwrap_or("");
    if !valid_ws_key(key) {
        return Err(reject(400, "bad_upgrade", "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    let offered: Vec<&str> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let mut subprotocol = None;
    if !offered.is_empty() {
        let known = offered.iter().find_map(|p| {
            let f = Format::parse(p.strip_prefix(SUBPROTOCOL_PREFIX)?)?;
            Some(f)
        });
        let f = known.ok_or_else(|| {
            reject(
                400,
                "unknown_format",
                format!(
                    "no supported subprotocol in `{}` (use unpoll.json-patch, unpoll.merge-patch or unpoll.snapshot)",
                    offered.join(", ")
                ),
            )
        })?;
        format = f;
        subprotocol = Some(subprotocol_name(f));
    }
    Ok(SubscribeRequest { protocol: Protocol::WebSocket, format, resume, ws_key: Some(key.to_string()), subprotocol })
}

/// The subprotocol name of a format.
pub fn subprotocol_name(format: Format) -> &'static str {
    match format {
        Format::JsonPatch => "unpoll.json-patch",
        Format::MergePatch => "unpoll.merge-patch",
        Format::Snapshot => "unpoll.snapshot",
    }
}

/// 16 bytes in base64 are 22 characters and `==`.
fn valid_ws_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24 && b[22..] == *b"==" && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const WS: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn classify_default(r: &RequestHeader) -> Option<Result<SubscribeRequest, Reject>> {
        classify(r, &StreamSettings::default())
    }

    #[test]
    fn plain_requests_are_not_subscriptions() {
        assert!(classify_default(&req("/x", &[("accept", "application/json")])).is_none());
        let mut post = req("/x", &[("accept", "text/event-stream")]);
        post.set_method(Method::POST);
        assert!(classify_default(&post).is_none());
    }

    #[test]
    fn sse_with_format_and_resume() {
        let r = req("/x?unpoll_format=merge-patch", &[("accept", "text/event-stream"), ("last-event-id", "ab-3")]);
        let s = classify_default(&r).unwrap().unwrap();
        assert_eq!(s.protocol, Protocol::Sse);
        assert_eq!(s.format, Format::MergePatch);
        assert_eq!(s.resume, Some(ResumeId { epoch: "ab".into(), version: 3 }));
        let q = req("/x?unpoll_last_event_id=cd-9", &[("accept", "text/event-stream")]);
        assert_eq!(classify_default(&q).unwrap().unwrap().resume.unwrap().version, 9);
    }

    #[test]
    fn bad_format_and_resume_are_400() {
        let r = req("/x?unpoll_format=xml", &[("accept", "text/event-stream")]);
        assert_eq!(classify_default(&r).unwrap().unwrap_err().status, 400);
        let r = req("/x", &[("accept", "text/event-stream"), ("last-event-id", "garbage")]);
        assert_eq!(classify_default(&r).unwrap().unwrap_err().reason, "bad_last_event_id");
    }

    #[test]
    fn websocket_subprotocols_choose_the_format() {
        let mut h = WS.to_vec();
        h.push(("sec-websocket-protocol", "chat, unpoll.snapshot"));
        let s = classify_default(&req("/x", &h)).unwrap().unwrap();
        assert_eq!(s.protocol, Protocol::WebSocket);
        assert_eq!(s.format, Format::Snapshot);
        assert_eq!(s.subprotocol, Some("unpoll.snapshot"));
        let plain = classify_default(&req("/x", &WS)).unwrap().unwrap();
        assert_eq!((plain.format, plain.subprotocol), (Format::JsonPatch, None));
        let mut bad = WS.to_vec();
        bad.push(("sec-websocket-protocol", "unpoll.xml"));
        assert_eq!(classify_default(&req("/x", &bad)).unwrap().unwrap_err().reason, "unknown_format");
    }

    #[test]
    fn origins_are_checked_against_the_allowlist() {
        let open = StreamSettings::default();
        let sse = |origin: Option<&str>| {
            let mut h = vec![("accept", "text/event-stream")];
            if let Some(o) = origin {
                h.push(("origin", o));
            }
            req("/x", &h)
        };
        assert!(classify(&sse(Some("https://evil.example")), &open).unwrap().is_ok(), "no allowlist: any origin");
        let strict = StreamSettings {
            origins: Some(vec!["https://app.example".into()]),
            allow_missing_origin: false,
            ..Default::default()
        };
        assert!(classify(&sse(Some("https://app.example")), &strict).unwrap().is_ok());
        assert_eq!(classify(&sse(Some("https://evil.example")), &strict).unwrap().unwrap_err().status, 403);
        assert_eq!(classify(&sse(None), &strict).unwrap().unwrap_err().reason, "origin_not_allowed");
        let lenient = StreamSettings { allow_missing_origin: true, ..strict.clone() };
        assert!(classify(&sse(None), &lenient).unwrap().is_ok());
        let mut ws = WS.to_vec();
        ws.push(("origin", "https://evil.example"));
        assert_eq!(classify(&req("/x", &ws), &strict).unwrap().unwrap_err().status, 403);
        let star = StreamSettings { origins: Some(vec!["*".into()]), ..strict.clone() };
        assert!(classify(&sse(Some("https://evil.example")), &star).unwrap().is_ok(), "`*`: any origin");
        assert_eq!(classify(&sse(Some("null")), &star).unwrap().unwrap_err().status, 403, "but not null");
        let null = StreamSettings { origins: Some(vec!["null".into()]), ..strict.clone() };
        assert!(classify(&sse(Some("null")), &null).unwrap().is_ok(), "null listed literally");
    }

    #[test]
    fn malformed_upgrades_are_refused() {
        for (drop, status) in [("connection", 400), ("sec-websocket-version", 426), ("sec-websocket-key", 400)] {
            let h: Vec<_> = WS.iter().copied().filter(|(k, _)| *k != drop).collect();
            let err = classify_default(&req("/x", &h)).unwrap().unwrap_err();
            assert_eq!(err.status, status, "without {drop}");
        }
        let mut short = WS.to_vec();
        short[3] = ("sec-websocket-key", "c2hvcnQ=");
        assert_eq!(classify_default(&req("/x", &short)).unwrap().unwrap_err().status, 400);
        let mut two = WS.to_vec();
        two.push(("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA=="));
        assert_eq!(classify_default(&req("/x", &two)).unwrap().unwrap_err().reason, "bad_upgrade", "two keys");
    }
}
