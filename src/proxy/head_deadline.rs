//! The request head's guard: a stream wrapper that watches each request head as it arrives.
//!
//! - **Deadline (slowloris).** Reads fail once `server.header_timeout` has passed without a
//!   whole head (up to its blank line). Pingora's own read timeout restarts with every read, so
//!   a client sending a byte at a time could otherwise hold a connection for ever.
//! - **Size.** Pingora buffers a head up to 1 MiB before anything looks at it; here a head
//!   longer than `server.max_request_header` is answered `431` and the connection closed as
//!   soon as the limit is passed, so an unfinished head never costs more than the limit.
//!
//! A head ends at its first empty line, whether lines end in CRLF or in a bare LF (as the
//! HTTP parser accepts both); empty lines before the request line are skipped, as RFC 9112
//! allows. The guard stands down once the head is in (request bodies and streams are not
//! limited by it) and is re-armed for each request on a keep-alive connection, so an idle
//! keep-alive connection is also closed after `header_timeout`. Pingora serves a kept-alive
//! connection's requests in a loop of its own, so the proxy says when a request is over
//! ([`HeadDeadline::next_head`], from its last step, once the request's body was read); a
//! connection whose request body was left unread is not kept alive, so that no body byte is
//! ever taken for a head.
//!
//! It guards HTTP/1 only: a connection whose TLS handshake chose HTTP/2 (ALPN `h2`) carries
//! frames, not heads, and is left unwrapped. A wrapped stream reports what the stream inside
//! it says of its TLS (ALPN, digest), so that pingora picks the HTTP version the handshake
//! chose.

use async_trait::async_trait;
use http::HeaderValue;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef, ALPN};
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, IO};
use prometheus::IntCounter;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The answer to a head over the limit; the connection closes after it.
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: 90\r\nconnection: close\r\n\r\n{\"error\":\"header_too_large\",\"message\":\"the request head is larger than the proxy accepts\"}";

/// What bounds each request head.
#[derive(Debug, Clone)]
pub struct HeadLimits {
    /// `server.header_timeout`.
    pub timeout: Duration,
    /// `server.max_request_header`, in bytes.
    pub max_bytes: usize,
    /// Counts heads refused for their size (`unpoll_requests_rejected_total{reason="header_too_large"}`).
    pub refused: IntCounter,
}

#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    /// When the head being read must be in.
    /// Set by the first read that does not bring the whole head: a head read whole at once
    /// needs no deadline, and asks neither the clock nor the timer.
    due: Option<tokio::time::Instant>,
    /// A timer that fires at `due` or before it (see [`HeadDeadline::begin_head`]).
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether a head is being read: the deadline counts.
    armed: bool,
    /// The request before ended: the next read begins the next head (see [`HeadDeadline::next_head`]).
    next: AtomicBool,
    /// `server.header_timeout` when the connection came.
    timeout: Duration,
    scan: Scan,
    max_bytes: usize,
    refused: Option<IntCounter>,
    /// The head passed `max_bytes`: it was answered 431 and every read fails.
    too_large: bool,
    /// The client's address as its requests' `X-Forwarded-For` (see [`HeadDeadline::address`]).
    address: OnceLock<HeaderValue>,
}

impl HeadDeadline {
    /// Whether `stream` is a guarded connection (an HTTP/1 one, not yet detached).
    pub fn guards(stream: &Stream) -> bool {
        stream.as_any().is::<HeadDeadline>()
    }

    /// The stream inside, once no more heads are read on it (a subscription's stream).
    pub fn unwrap(stream: Stream) -> Stream {
        if stream.as_any().is::<HeadDeadline>() {
            stream.into_any().downcast::<HeadDeadline>().expect("checked above").inner
        } else {
            stream
        }
    }

    /// Wraps a new connection's `stream`, armed for its first request head; an HTTP/2
    /// connection (ALPN `h2`) is returned as it is.
    pub fn arm(stream: Stream, limits: &HeadLimits) -> Stream {
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            return stream;
        }
        let mut wrapped = Box::new(HeadDeadline {
            inner: stream,
            due: None,
            deadline: None,
            armed: false,
            next: AtomicBool::new(false),
            timeout: limits.timeout,
            scan: Scan::default(),
            max_bytes: limits.max_bytes,
            refused: Some(limits.refused.clone()),
            too_large: false,
            address: OnceLock::new(),
        });
        wrapped.begin_head();
        wrapped
    }

    /// Where a guarded connection keeps its client's address as a header value, written once
    /// for all its requests: the guard is the one part of a connection that unpoll owns and
    /// that lives as long as it (`None` for an HTTP/2 connection, which is not guarded).
    pub fn address(stream: &Stream) -> Option<&OnceLock<HeaderValue>> {
        stream.as_any().downcast_ref::<HeadDeadline>().map(|wrapped| &wrapped.address)
    }

    /// Says that a request on `stream` (a wrapped connection's) is over and its body read:
    /// the next bytes read are the next request's head, which gets a deadline and a size limit
    /// of its own. Pingora reads every request of a kept-alive HTTP/1 connection in one loop
    /// of its own, so the end of each request is told from the proxy's last step (`logging`).
    pub fn next_head(stream: &Stream) {
        if let Some(wrapped) = stream.as_any().downcast_ref::<HeadDeadline>() {
            wrapped.next.store(true, Ordering::Relaxed);
        }
    }

    /// Starts a head: its count, and its deadline once a read leaves it unfinished
    /// ([`HeadDeadline::expired`]). The timer is made once per connection and
    /// not moved for each head: it may fire before the head's deadline (it was set for an
    /// earlier head), and is then moved to it ([`HeadDeadline::expired`]), so that a busy
    /// kept-alive connection moves its timer once per `header_timeout`, not once per request.
    fn begin_head(&mut self) {
        self.due = None;
        self.armed = true;
        self.scan = Scan::default();
    }

    /// Whether the head being read is past its deadline; otherwise the timer is set to wake
    /// the reader at the deadline. The deadline is `header_timeout` after the first read that
    /// left the head unfinished (the head's first read, or the same instant: reads are tried
    /// before the deadline is asked).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let due = *self.due.get_or_insert_with(|| tokio::time::Instant::now() + self.timeout);
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        while deadline.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= due {
                return true;
            }
            deadline.as_mut().reset(due);
        }
        false
    }

    /// Answers 431, best effort (the socket takes a small answer at once), and reads what the
    /// client already sent, so that closing does not reset the connection before the answer is
    /// read.
    fn refuse(&mut self, cx: &mut Context<'_>) {
        if let Some(refused) = self.refused.take() {
            refused.inc();
        }
        let _ = Pin::new(&mut self.inner).poll_write(cx, TOO_LARGE);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        let mut scratch = [0u8; 4096];
        for _ in 0..16 {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                _ => break,
            }
        }
    }
}

/// How far a head has been read: whether the request line has begun, whether the current line
/// holds anything besides CR, and the head's bytes so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Scan {
    started: bool,
    line: bool,
    bytes: usize,
}

impl Scan {
    /// Continues over `bytes`. Returns how many of them belong to the head when it ends in
    /// them, else `None`.
    ///
    /// It goes from line end to line end (`memchr`), and asks whether a line holds anything
    /// besides carriage returns: a line with nothing else is empty.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            let rest = &bytes[at..];
            let (line, ends) = match memchr::memchr(b'\n', rest) {
                Some(k) => (&rest[..k], true),
                None => (rest, false),
            };
            // Usually the line's first byte answers.
            if line.iter().any(|&b| b != b'\r') {
                self.started = true;
                self.line = true;
            }
            if !ends {
                self.bytes += bytes.len() - at;
                return None;
            }
            let empty = self.started && !self.line;
            self.line = false;
            self.bytes += line.len() + 1;
            at += line.len() + 1;
            if empty {
                return Some(at);
            }
        }
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.too_large {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head larger than max_request_header",
            )));
        }
        if !this.armed && this.next.swap(false, Ordering::Relaxed) {
            this.begin_head();
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.armed {
            return result;
        }
        match result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let ended = this.scan.feed(&buf.filled()[before..]);
                if this.scan.bytes > this.max_bytes {
                    this.refuse(cx);
                    this.too_large = true;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large")));
                }
                if ended.is_some() {
                    // The head is in (on a busy connection, usually in its first read): its
                    // deadline never needed the clock or the timer.
                    this.armed = false;
                    return result;
                }
            }
            // The end of the stream, or an error: nothing more will come to wait for.
            Poll::Ready(_) => return result,
            Poll::Pending => {}
        }
        // The head is not all in: the deadline counts, and the timer wakes this reader at it.
        if this.expired(cx) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head not received in time")));
        }
        result
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Keeps the `IO` bound checked here rather than where the stream is used.
fn _is_io(s: HeadDeadline) -> Box<dyn IO> {
    Box::new(s)
}

#[cfg(test)]
mod tests {
    use super::Scan;

    fn feed_all(parts: &[&[u8]]) -> Option<(usize, usize)> {
        let mut scan = Scan::default();
        parts.iter().enumerate().find_map(|(i, p)| scan.feed(p).map(|n| (i, n)))
    }

    #[test]
    fn finds_the_end_of_the_head_across_reads() {
        assert_eq!(feed_all(&[b"GET / HTTP/1.1\r\nHost: h\r\n\r\nbody"]), Some((0, 27)));
        assert_eq!(feed_all(&[b"GET / HTTP/1.1\r\nHost: h\r", b"\n\r", b"\nrest"]), Some((2, 1)));
        assert_eq!(feed_all(&[b"a\r\n\rx\r\n"]), None, "a CR inside a line does not end it");
        assert_eq!(feed_all(&[b"GET / HTTP/1.1\nHost: h\n\n"]), Some((0, 24)), "bare LF line ends");
        assert_eq!(feed_all(&[b"GET / HTTP/1.1\r\nHost: h\n\r\n"]), Some((0, 26)), "mixed");
        assert_eq!(feed_all(&[b"\r\n\nGET / HTTP/1.1\r\n\r\n"]), Some((0, 21)), "leading empty lines are skipped");
    }

    /// The scan as it was first written, a byte at a time: the reference for the one by lines.
    fn feed_bytewise(scan: &mut Scan, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            scan.bytes += 1;
            match b {
                b'\n' if scan.started && !scan.line => return Some(i + 1),
                b'\n' => scan.line = false,
                b'\r' => {}
                _ => {
                    scan.started = true;
                    scan.line = true;
                }
            }
        }
        None
    }

    #[test]
    fn scanning_by_lines_agrees_with_scanning_bytes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        for _ in 0..20_000 {
            let input: Vec<u8> = (0..next(40)).map(|_| [b'\r', b'\n', b'a', b' '][next(4)]).collect();
            let (mut lines, mut bytes) = (Scan::default(), Scan::default());
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (part, after) = rest.split_at(1 + next(rest.len() as u64));
                let (a, b) = (lines.feed(part), feed_bytewise(&mut bytes, part));
                assert_eq!(a, b, "{input:?} at {part:?}");
                assert_eq!((lines.bytes, lines.line, lines.started), (bytes.bytes, bytes.line, bytes.started));
                if a.is_some() {
                    break;
                }
                rest = after;
            }
        }
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(super::TOO_LARGE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(serde_json::from_str::<serde_json::Value>(body).unwrap()["error"], "header_too_large");
    }

    #[test]
    fn counts_the_head_bytes() {
        let mut scan = Scan::default();
        assert_eq!(scan.feed(b"GET / HTTP/1.1\r\nX: "), None);
        assert_eq!(scan.bytes, 19);
        assert_eq!(scan.feed(b"y\r\n\r\nbody"), Some(5));
    }

    /// A stream that says its TLS handshake chose `alpn` (what pingora's TLS streams report).
    #[derive(Debug)]
    struct Negotiated {
        alpn: pingora::protocols::tls::ALPN,
    }

    impl tokio::io::AsyncRead for Negotiated {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncWrite for Negotiated {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[async_trait::async_trait]
    impl pingora::protocols::Shutdown for Negotiated {
        async fn shutdown(&mut self) {}
    }
    impl pingora::protocols::UniqueID for Negotiated {
        fn id(&self) -> pingora::protocols::UniqueIDType {
            -1
        }
    }
    impl pingora::protocols::Ssl for Negotiated {
        fn selected_alpn_proto(&self) -> Option<pingora::protocols::tls::ALPN> {
            Some(self.alpn.clone())
        }
    }
    impl pingora::protocols::GetTimingDigest for Negotiated {
        fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
            Vec::new()
        }
    }
    impl pingora::protocols::GetProxyDigest for Negotiated {
        fn get_proxy_digest(&self) -> Option<std::sync::Arc<super::ProxyDigest>> {
            None
        }
    }
    impl pingora::protocols::GetSocketDigest for Negotiated {
        fn get_socket_digest(&self) -> Option<std::sync::Arc<super::SocketDigest>> {
            None
        }
    }
    impl pingora::protocols::Peek for Negotiated {}

    #[test]
    fn the_guard_reports_the_alpn_inside_and_leaves_http2_unwrapped() {
        use pingora::protocols::tls::ALPN;
        let limits = super::HeadLimits {
            timeout: std::time::Duration::from_secs(1),
            max_bytes: 1024,
            refused: prometheus::IntCounter::new("refused", "refused").unwrap(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _in_runtime = rt.enter();
        let h1 = super::HeadDeadline::arm(Box::new(Negotiated { alpn: ALPN::H1 }), &limits);
        assert!(h1.as_any().is::<super::HeadDeadline>(), "an HTTP/1 connection is guarded");
        assert_eq!(h1.selected_alpn_proto(), Some(ALPN::H1), "and still says what its handshake chose");
        let h2 = super::HeadDeadline::arm(Box::new(Negotiated { alpn: ALPN::H2 }), &limits);
        assert!(h2.as_any().is::<Negotiated>(), "an HTTP/2 connection carries frames, not heads");
    }

    #[tokio::test]
    async fn only_a_plain_transport_stream_is_duplicated_never_a_wrapper_around_one() {
        use crate::stream::downstream::{lean, Socket};
        use pingora::protocols::l4::stream::Stream as L4Stream;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let limits = super::HeadLimits {
            timeout: std::time::Duration::from_secs(1),
            max_bytes: 1024,
            refused: prometheus::IntCounter::new("refused", "refused").unwrap(),
        };
        let wrap = |tcp: tokio::net::TcpStream| super::HeadDeadline::arm(Box::new(L4Stream::from(tcp)), &limits);
        // A wrapper reports the TCP descriptor under it as its id, as a TLS stream does:
        // writing to a duplicate would bypass the wrapper, so it is kept and written through.
        let (socket, _) = lean(wrap(client));
        assert!(matches!(socket, Socket::Pingora(_)), "a wrapped stream is never duplicated");
        let (server, _) = listener.accept().await.unwrap();
        let (socket, _) = lean(super::HeadDeadline::unwrap(wrap(server)));
        assert!(matches!(socket, Socket::Tcp(_)), "pingora's plain TCP stream is");
    }
}
