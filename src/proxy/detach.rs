//! Taking a subscriber's connection out of pingora's session (see `stream::downstream`).
//!
//! `request_filter` only borrows the session, so the HTTP/1 session is swapped for a
//! placeholder over a [`Detached`] stream, which pingora then finishes: with keep-alive off it
//! just shuts the placeholder down, and nothing reaches the client.

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::protocols::http::ServerSession as HttpSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, IO};
use pingora::proxy::Session;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client's stream of an HTTP/1 session, with the bytes pingora already read past the
/// request's head (a WebSocket client may send its first frames in the same write as its
/// handshake); None (the session is left as it was) for other kinds of session, or if the
/// stream could not be taken.
pub async fn detach(session: &mut Session) -> Option<(Stream, BytesMut)> {
    let mut placeholder = HttpSession::new_http1(Box::new(Detached));
    placeholder.set_keepalive(None);
    let mut h1 = match std::mem::replace(&mut *session.downstream_session, placeholder) {
        HttpSession::H1(h1) => h1,
        other => {
            *session.downstream_session = other;
            return None;
        }
    };
    // pingora hands over what it read ahead only with a session kept alive for another
    // request ("pipelining"): ask for that, on a request without a body (a subscription is a
    // GET), and take the stream and those bytes back out. Otherwise (a body, or `Connection:
    // close`) the stream alone, as before.
    let bodiless = h1.is_body_done();
    if bodiless {
        h1.set_pipelining_enabled(true);
        h1.set_keepalive_reuses_remaining(None);
        h1.set_server_keepalive(Some(0));
    }
    if !bodiless || !h1.will_keepalive() {
        return Some((h1.into_inner(), BytesMut::new()));
    }
    match h1.reuse().await {
        Ok(Some(reusable)) => {
            let (stream, ahead) = reusable.into_parts();
            Some((stream, ahead.unwrap_or_default()))
        }
        // Not reached for a request without a body; the connection is gone if it were.
        _ => None,
    }
}

/// A stream with nothing behind it: reads end at once, writes go nowhere.
#[derive(Debug)]
pub struct Detached;

impl AsyncRead for Detached {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Detached {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Detached {
    async fn shutdown(&mut self) {}
}

impl UniqueID for Detached {
    fn id(&self) -> UniqueIDType {
        -1
    }
}

impl Ssl for Detached {}

impl GetTimingDigest for Detached {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Detached {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Detached {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
    fn set_socket_digest(&mut self, _: SocketDigest) {}
}

#[async_trait]
impl Peek for Detached {}

/// Keeps the `IO` bound checked here rather than where the stream is used.
fn _is_io(s: Detached) -> Box<dyn IO> {
    Box::new(s)
}
