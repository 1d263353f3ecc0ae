//! Slowloris protection: a stream wrapper whose reads fail once `server.header_timeout` has
//! passed without a whole request head (up to its blank line) having arrived. Pingora's own
//! read timeout restarts with every read, so a client sending a byte at a time could otherwise
//! hold a connection for ever. The deadline is re-armed for each request on a keep-alive
//! connection (so an idle keep-alive connection is also closed after `header_timeout`) and
//! cleared once the head is in: request bodies and streams are not limited by it.

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, IO};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const HEAD_END: &[u8; 4] = b"\r\n\r\n";

#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    /// Armed while a request head is being read.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How much of `\r\n\r\n` the bytes read so far end with.
    matched: usize,
}

impl HeadDeadline {
    /// Wraps `stream` (or re-arms it, if it is already wrapped) for the next request head.
    pub fn arm(stream: Stream, timeout: Duration) -> Stream {
        let mut wrapped = if stream.as_any().is::<HeadDeadline>() {
            stream.into_any().downcast::<HeadDeadline>().expect("checked above")
        } else {
            Box::new(HeadDeadline { inner: stream, deadline: None, matched: 0 })
        };
        wrapped.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        wrapped.matched = 0;
        wrapped
    }

    /// Scans newly read bytes for the end of the head.
    fn saw(&mut self, bytes: &[u8]) {
        let (matched, done) = scan(self.matched, bytes);
        self.matched = matched;
        if done {
            self.deadline = None;
        }
    }
}

/// Continues matching `\r\n\r\n` over `bytes`, `matched` bytes of it having been seen at the
/// end of the previous read. Returns the new state and whether the head has ended.
fn scan(mut matched: usize, bytes: &[u8]) -> (usize, bool) {
    for &b in bytes {
        matched = if b == HEAD_END[matched] {
            matched + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
        if matched == HEAD_END.len() {
            return (0, true);
        }
    }
    (matched, false)
}

impl AsyncRead for HeadDeadline {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head not received in time")));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some() && matches!(result, Poll::Ready(Ok(()))) {
            let new = buf.filled()[before..].to_vec();
            this.saw(&new);
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

impl Ssl for HeadDeadline {}

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
    use super::scan;

    #[test]
    fn finds_the_end_of_the_head_across_reads() {
        assert_eq!(scan(0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\nbody"), (0, true));
        let (m, done) = scan(0, b"GET / HTTP/1.1\r\nHost: h\r");
        assert_eq!((m, done), (1, false));
        assert_eq!(scan(m, b"\n\r\n"), (0, true));
        let (m, _) = scan(0, b"a\r\n\r");
        assert_eq!(scan(m, b"x\r\n"), (2, false), "a broken run starts over");
        assert_eq!(scan(0, b"\r\r\n\r\n"), (0, true));
        assert_eq!(scan(0, b"\n\n"), (0, false), "only CRLF CRLF ends a head");
    }
}
