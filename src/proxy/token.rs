//! `stream.token`: a credential a browser can send without setting a header. A token in the
//! subscription's URL (`?access_token=…`) becomes the request header it stands for before
//! anything else reads the request: it splits topics, and reaches the upstream, exactly as
//! that header would, and the parameter is gone from the target (so from the upstream request,
//! topic keys and every log line). A request that carries the header itself keeps it.

use super::subscribe::Reject;
use crate::config::TokenSettings;
use http::{HeaderName, HeaderValue};
use percent_encoding::percent_decode_str;
use pingora::http::RequestHeader;

/// Moves the token parameter of `req`'s query into its header. Whether it found one.
pub fn from_query(req: &mut RequestHeader, token: &TokenSettings) -> Result<bool, Reject> {
    let (Some(name), Some(query)) = (&token.query, req.uri.query()) else { return Ok(false) };
    let mut found = None;
    let mut kept = Vec::new();
    for part in query.split('&') {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        if percent_decode_str(key).decode_utf8().is_ok_and(|k| k == name.as_str()) {
            found.get_or_insert(value);
        } else {
            kept.push(part);
        }
    }
    let Some(value) = found else { return Ok(false) };
    let bad = || Reject { status: 400, reason: "bad_token", message: format!("the `{name}` parameter is not a token") };
    let target = match kept.is_empty() {
        true => req.uri.path().to_string(),
        false => format!("{}?{}", req.uri.path(), kept.join("&")),
    };
    let uri = target.parse::<http::Uri>().map_err(|_| bad())?;
    let header = HeaderName::from_bytes(token.header.as_bytes()).map_err(|_| bad())?;
    let decoded = percent_decode_str(value).decode_utf8().map_err(|_| bad())?;
    if !req.headers.contains_key(&header) && !decoded.is_empty() {
        let value = HeaderValue::from_str(&format!("{}{decoded}", token.prefix)).map_err(|_| bad())?;
        req.insert_header(header, value).map_err(|_| bad())?;
    }
    req.set_uri(uri);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn settings() -> TokenSettings {
        TokenSettings { query: Some("access_token".into()), ..TokenSettings::default() }
    }

    #[test]
    fn the_parameter_becomes_the_header_and_leaves_the_target() {
        let mut req = request("/me?b=2&access_token=abc%2Edef&a=1", &[]);
        assert!(from_query(&mut req, &settings()).unwrap());
        assert_eq!(req.uri.to_string(), "/me?b=2&a=1");
        assert_eq!(req.headers["authorization"], "Bearer abc.def");
        let mut only = request("/me?access_token=t", &[]);
        from_query(&mut only, &settings()).unwrap();
        assert_eq!(only.uri.to_string(), "/me");
        let custom = TokenSettings { header: "x-api-key".into(), prefix: String::new(), ..settings() };
        let mut req = request("/me?access_token=k1", &[]);
        from_query(&mut req, &custom).unwrap();
        assert_eq!(req.headers["x-api-key"], "k1");
    }

    #[test]
    fn a_real_header_wins_and_the_parameter_still_goes() {
        let mut req = request("/me?access_token=from-url", &[("authorization", "Bearer real")]);
        assert!(from_query(&mut req, &settings()).unwrap());
        assert_eq!(req.headers["authorization"], "Bearer real");
        assert_eq!(req.uri.to_string(), "/me");
    }

    #[test]
    fn no_parameter_changes_nothing_and_a_bad_one_is_refused() {
        let mut req = request("/me?access=1", &[]);
        assert!(!from_query(&mut req, &settings()).unwrap());
        assert_eq!(req.uri.to_string(), "/me?access=1");
        let mut bad = request("/me?access_token=%0d%0aX:1", &[]);
        assert_eq!(from_query(&mut bad, &settings()).unwrap_err().reason, "bad_token");
        let mut invalid = request("/me?access_token=%ff", &[]);
        assert_eq!(from_query(&mut invalid, &settings()).unwrap_err().status, 400);
    }
}
