//! Reusing upstream connections without letting one response reach another request.
//!
//! A pooled connection is only as trustworthy as the server's framing. A legacy server that
//! writes bytes after the end of a response (a body longer than its `Content-Length`, sent a
//! little later) leaves them on the connection, and the next request sent on it reads them as
//! its own answer: with one pool for everyone, another user's document. Pingora checks a
//! pooled connection before reuse through tokio's readiness, which lags the kernel, and bytes
//! that arrive after the next request was sent cannot be told from its answer at all. So:
//!
//! - with `reuse: per_credential` (the default) a connection is only reused by requests with
//!   the same credentials (pingora's `group_key`): whatever a server leaves behind can only
//!   reach the user it was meant for;
//! - right before a pooled connection carries a request, the kernel is asked whether anything
//!   waits on it ([`crate::sys::pending`]); a connection with bytes waiting is dropped. On a
//!   TLS connection the socket holds ciphertext, which may be the protocol's own (a session
//!   ticket, a key update, a close): where the TLS stream is at hand (polls), it is read
//!   through ([`look_through_tls`]) to tell stray application bytes from those; where only the
//!   socket is (proxied requests), bytes waiting refuse reuse without counting against the
//!   server ([`reusable_by_socket`]). Bytes already decrypted and held by the TLS layer are
//!   found by a read before the connection is kept (pingora's own for proxied requests,
//!   unpoll's own for polls, in `topic::idle`), which drops such a connection;
//! - a response whose framing is in doubt ([`doubtful_framing`]) is not followed by reuse;
//! - a poll's response that announced keep-alive ([`keeps_alive`]) but whose connection
//!   pingora will not keep is one whose server sent more than it framed (bytes read past its
//!   end): evidence, as bytes waiting are;
//! - a server caught leaving bytes behind is quarantined for [`QUARANTINE`]: every request to
//!   it gets a new connection, closed after it.

use crate::config::Reuse;
use crate::sys::Pending;
use http::{HeaderMap, StatusCode};
use pingora::protocols::Stream;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How long a server caught leaving bytes behind gets no connection reuse (renewed each time).
pub const QUARANTINE: Duration = Duration::from_secs(300);

/// How one request gets its upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Pingora's `HttpPeer::group_key`: only connections made under the same key are reused.
    pub group_key: u64,
    /// Send `Connection: close` and never pool the connection.
    pub close: bool,
}

/// The plan for a request to a server of an upstream with `reuse`, made on behalf of
/// `identity` (see [`identity`]).
pub fn plan(reuse: Reuse, quarantined: bool, identity: u64) -> Plan {
    match reuse {
        Reuse::Off => fresh(),
        _ if quarantined => fresh(),
        Reuse::Shared => Plan { group_key: 0, close: false },
        Reuse::PerCredential => Plan { group_key: identity, close: false },
    }
}

/// A key no pooled connection has: a new connection, used once.
fn fresh() -> Plan {
    Plan { group_key: rand::random(), close: true }
}

/// Whose connection a request may use: a hash of the values of the headers `names`, so that
/// requests with different credentials never share one.
///
/// The hash is SipHash under a key drawn at random when the process starts (the key lives only
/// in memory, as the pool does): without the key nobody can choose credentials whose hash meets
/// another user's, and a chance meeting of two 64-bit hashes is negligible. It is computed for
/// every proxied request, where a cryptographic digest would cost more than it adds.
pub fn identity<N: http::header::AsHeaderName>(headers: &HeaderMap, names: impl IntoIterator<Item = N>) -> u64 {
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    let mut hasher = KEY.get_or_init(std::hash::RandomState::new).build_hasher();
    // Each header's values are told apart by the header's place in `names` (a list fixed for
    // the process: `CREDENTIAL_HEADERS`), which costs less to hash than its name.
    for (place, name) in names.into_iter().enumerate() {
        hasher.write_usize(place);
        for value in headers.get_all(name) {
            hasher.write_usize(value.len());
            hasher.write(value.as_bytes());
        }
        hasher.write_u64(u64::MAX);
    }
    hasher.finish()
}

/// Why a connection must not carry another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distrust {
    /// Bytes were waiting on the connection when nothing should have been.
    StrayBytes,
    /// The response's framing leaves doubt about where it ends.
    DoubtfulFraming,
}

impl Distrust {
    /// The `reason` label of `unpoll_upstream_reuse_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Distrust::StrayBytes => "stray_bytes",
            Distrust::DoubtfulFraming => "doubtful_framing",
        }
    }
}

/// Whether a pooled connection, with `pending` waiting on it, may carry a new request. A
/// closed one may not (the server let it go); one with bytes waiting is evidence against the
/// server.
pub fn reusable(pending: Pending) -> Result<bool, Distrust> {
    match pending {
        Pending::Nothing => Ok(true),
        Pending::Closed => Ok(false),
        Pending::Data => Err(Distrust::StrayBytes),
    }
}

/// [`reusable`] for a connection seen only through its socket's descriptor: on a TLS one
/// (`tls`), bytes waiting are ciphertext that may be the protocol's own, so they refuse reuse
/// without being evidence against the server.
pub fn reusable_by_socket(pending: Pending, tls: bool) -> Result<bool, Distrust> {
    match pending {
        Pending::Data if tls => Ok(false),
        _ => reusable(pending),
    }
}

/// How long [`look_through_tls`] waits for the records the socket holds to be read.
pub const TLS_LOOK: Duration = Duration::from_millis(50);

/// What the records waiting on TLS `stream`'s socket hold, read through TLS: application
/// bytes ([`Pending::Data`], consumed: the connection is not to be used again), a close
/// ([`Pending::Closed`]), or only the protocol's own records, which leave nothing to read
/// ([`Pending::Nothing`]).
pub async fn look_through_tls(stream: &mut Stream) -> Pending {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(TLS_LOOK, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Pending::Closed,
        Ok(Ok(_)) => Pending::Data,
        Err(_) => Pending::Nothing,
    }
}

/// Whether a response (of HTTP `version`, with `headers`) to a request that did not ask to
/// close (`request_close`) leaves its connection open by its own framing: HTTP/1.1, no
/// `Connection: close`, and a body delimited by `Content-Length` or chunked coding. Pingora
/// keeps such a connection unless it read bytes past the response's end.
pub fn keeps_alive(version: http::Version, headers: &HeaderMap, request_close: bool) -> bool {
    let close = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
    let framed =
        headers.contains_key(http::header::CONTENT_LENGTH) || headers.contains_key(http::header::TRANSFER_ENCODING);
    version == http::Version::HTTP_11 && !close && !request_close && framed
}

/// Whether a response's framing leaves doubt about where it ends, so its connection must not
/// be reused: a body announced on a status that has none (1xx, 204), a transfer coding on a
/// status without a body, and, where the raw head is at hand, more than one `Content-Length`
/// or both `Content-Length` and `Transfer-Encoding` (pingora keeps only one of them).
pub fn doubtful_framing(status: StatusCode, headers: &HeaderMap, raw_head: Option<&[u8]>) -> bool {
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let announced = headers.get_all(http::header::CONTENT_LENGTH).iter().any(|v| v.as_bytes() != b"0");
    if bodiless && headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    if bodiless && status != StatusCode::NOT_MODIFIED && announced {
        return true;
    }
    let Some(raw) = raw_head else {
        return false;
    };
    let count = |name: &[u8]| {
        raw.split(|&b| b == b'\n')
            .filter(|line| line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name))
            .count()
    };
    let lengths = count(b"content-length:");
    lengths > 1 || (lengths == 1 && count(b"transfer-encoding:") > 0)
}

/// Servers of one upstream whose connections are not reused for now.
#[derive(Debug, Default)]
pub struct Quarantine {
    until: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Quarantine {
    fn until(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether connections to `server` are not to be reused now.
    pub fn holds(&self, server: SocketAddr) -> bool {
        self.until().get(&server).is_some_and(|t| *t > Instant::now())
    }

    /// Stops reusing connections to `server` for [`QUARANTINE`] from now. Returns whether this
    /// begins a quarantine (rather than renewing one), so that it is logged once.
    pub fn begin(&self, server: SocketAddr) -> bool {
        let now = Instant::now();
        let previous = self.until().insert(server, now + QUARANTINE);
        previous.is_none_or(|t| t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn credentials_partition_connections() {
        let names = ["authorization", "cookie"];
        let alice = identity(&headers(&[("authorization", "Bearer alice")]), names);
        let bob = identity(&headers(&[("authorization", "Bearer bob")]), names);
        let nobody = identity(&headers(&[]), names);
        let moved = identity(&headers(&[("cookie", "Bearer alice")]), names);
        assert!(alice != bob && alice != nobody && alice != moved);
        assert_eq!(alice, identity(&headers(&[("authorization", "Bearer alice"), ("x-other", "1")]), names));
        // The proxy looks the credential headers up by name, parsed once: the same list.
        use crate::config::{CREDENTIAL_HEADERS, CREDENTIAL_HEADER_NAMES};
        assert_eq!(CREDENTIAL_HEADER_NAMES.each_ref().map(|n| n.as_str()), CREDENTIAL_HEADERS);
        assert_eq!(identity(&headers(&[("authorization", "Bearer alice")]), &CREDENTIAL_HEADER_NAMES), alice);
        assert_eq!(plan(Reuse::PerCredential, false, alice), Plan { group_key: alice, close: false });
        assert_eq!(plan(Reuse::Shared, false, alice), plan(Reuse::Shared, false, bob));
        for (reuse, quarantined) in [(Reuse::Off, false), (Reuse::PerCredential, true), (Reuse::Shared, true)] {
            let (a, b) = (plan(reuse, quarantined, alice), plan(reuse, quarantined, alice));
            assert!(a.close && a.group_key != b.group_key, "{reuse:?} quarantined={quarantined}");
        }
    }

    #[test]
    fn only_a_quiet_connection_is_reused() {
        assert_eq!(reusable(Pending::Nothing), Ok(true));
        assert_eq!(reusable(Pending::Closed), Ok(false));
        assert_eq!(reusable(Pending::Data), Err(Distrust::StrayBytes));
        assert_eq!(reusable_by_socket(Pending::Data, false), Err(Distrust::StrayBytes));
        assert_eq!(reusable_by_socket(Pending::Data, true), Ok(false), "ciphertext: not reused, no evidence");
        assert_eq!(reusable_by_socket(Pending::Nothing, true), Ok(true));
        assert_eq!(reusable_by_socket(Pending::Closed, true), Ok(false));
    }

    #[test]
    fn doubtful_framing_is_recognised() {
        let ok = StatusCode::OK;
        assert!(!doubtful_framing(
            ok,
            &headers(&[("content-length", "5")]),
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        ));
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\n";
        assert!(doubtful_framing(ok, &headers(&[("content-length", "5")]), Some(two)));
        let both = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert!(doubtful_framing(ok, &headers(&[("transfer-encoding", "chunked")]), Some(both)));
        assert!(doubtful_framing(StatusCode::NO_CONTENT, &headers(&[("content-length", "3")]), None));
        assert!(!doubtful_framing(StatusCode::NO_CONTENT, &headers(&[("content-length", "0")]), None));
        assert!(!doubtful_framing(StatusCode::NOT_MODIFIED, &headers(&[("content-length", "30")]), None));
        assert!(doubtful_framing(StatusCode::NOT_MODIFIED, &headers(&[("transfer-encoding", "chunked")]), None));
    }

    #[test]
    fn only_a_framed_http11_answer_without_close_keeps_its_connection() {
        let v11 = http::Version::HTTP_11;
        assert!(keeps_alive(v11, &headers(&[("content-length", "5")]), false));
        assert!(keeps_alive(v11, &headers(&[("transfer-encoding", "chunked")]), false));
        assert!(!keeps_alive(v11, &headers(&[("content-length", "5")]), true), "the request asked to close");
        assert!(!keeps_alive(v11, &headers(&[("content-length", "5"), ("connection", "keep-alive, Close")]), false));
        assert!(!keeps_alive(v11, &headers(&[]), false), "close-delimited");
        assert!(!keeps_alive(http::Version::HTTP_10, &headers(&[("content-length", "5")]), false));
    }

    #[test]
    fn quarantine_begins_once_and_holds() {
        let q = Quarantine::default();
        let server: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!q.holds(server));
        assert!(q.begin(server));
        assert!(!q.begin(server), "renewing is not a new quarantine");
        assert!(q.holds(server));
        assert!(!q.holds("127.0.0.1:2".parse().unwrap()));
    }
}
