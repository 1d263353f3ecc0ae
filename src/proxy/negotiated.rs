//! A client connection whose protocol unpoll settled before pingora serves it: TLS (with the
//! HTTP version its ALPN chose), or HTTP/2 with prior knowledge on a plain listener (`h2c`).
//!
//! Pingora picks HTTP/2 for a stream that reports ALPN `h2`, and tells TLS by its digest; this
//! type reports both from what [`super::tls`] and [`h2c`] found. A plain HTTP/1 connection is
//! never wrapped (it stays pingora's own transport stream, which a subscription takes over
//! through a duplicate of its descriptor; a `Negotiated` one is written through, never
//! duplicated).

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, ALPN};
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, IO};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What the connection carries.
pub enum Transport {
    /// TLS over the client's stream.
    Tls(Box<tokio_rustls::server::TlsStream<Stream>>),
    /// The client's stream itself (HTTP/2 with prior knowledge).
    Plain(Stream),
}

pub struct Negotiated {
    transport: Transport,
    alpn: Option<ALPN>,
    digest: Option<Arc<SslDigest>>,
    id: UniqueIDType,
}

impl Negotiated {
    /// A TLS connection, after its handshake.
    pub fn tls(tls: tokio_rustls::server::TlsStream<Stream>) -> Negotiated {
        let (io, conn) = tls.get_ref();
        let id = io.id();
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(_) => Some(ALPN::H1),
            None => None,
        };
        let cipher = conn.negotiated_cipher_suite().and_then(|s| s.suite().as_str()).unwrap_or("unknown");
        let version = conn.protocol_version().and_then(|v| v.as_str()).unwrap_or("unknown");
        let digest = SslDigest::new(cipher, version, None, None, Vec::new());
        Negotiated { transport: Transport::Tls(Box::new(tls)), alpn, digest: Some(Arc::new(digest)), id }
    }

    /// A plain connection that opened with the HTTP/2 preface.
    pub fn h2c(stream: Stream) -> Negotiated {
        let id = stream.id();
        Negotiated { transport: Transport::Plain(stream), alpn: Some(ALPN::H2), digest: None, id }
    }

    /// The client's stream under any TLS.
    fn io(&self) -> &Stream {
        match &self.transport {
            Transport::Tls(tls) => tls.get_ref().0,
            Transport::Plain(s) => s,
        }
    }

    fn io_mut(&mut self) -> &mut Stream {
        match &mut self.transport {
            Transport::Tls(tls) => tls.get_mut().0,
            Transport::Plain(s) => s,
        }
    }
}

/// The connection preface every HTTP/2 client with prior knowledge opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a new plain connection opens with the HTTP/2 preface: read only as far as it takes
/// to tell (an HTTP/1 request differs at its first or second byte), within `within`, and put
/// back for pingora to read again. `None` when the client closed or sent nothing in time.
pub async fn h2c(stream: Stream, within: Duration) -> (Stream, Option<bool>) {
    if !stream.as_any().is::<L4Stream>() {
        return (stream, Some(false));
    }
    let mut l4 = stream.into_any().downcast::<L4Stream>().expect("checked above");
    let mut seen = Vec::with_capacity(H2_PREFACE.len());
    let read = async {
        let mut buf = [0u8; 24];
        while seen.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&seen) {
            let want = H2_PREFACE.len() - seen.len();
            let n = l4.read(&mut buf[..want]).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        Some(seen.as_slice() == H2_PREFACE)
    };
    let found = tokio::time::timeout(within, read).await.ok().flatten();
    l4.rewind(&seen);
    (l4, found)
}

impl std::fmt::Debug for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = matches!(self.transport, Transport::Tls(_));
        f.debug_struct("Negotiated").field("id", &self.id).field("tls", &tls).field("alpn", &self.alpn).finish()
    }
}

impl AsyncRead for Negotiated {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Negotiated {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.transport {
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.transport {
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Tls(tls) => tls.is_write_vectored(),
            Transport::Plain(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            // Sends TLS's close_notify, then shuts the socket down.
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[async_trait]
impl Shutdown for Negotiated {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for Negotiated {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

impl Ssl for Negotiated {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.digest.clone()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for Negotiated {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.io().get_timing_digest()
    }
}

impl GetProxyDigest for Negotiated {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.io().get_proxy_digest()
    }
}

impl GetSocketDigest for Negotiated {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.io().get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.io_mut().set_socket_digest(digest)
    }
}

/// No peeking: pingora's `h2c` sniffing is not used (unpoll tells HTTP/2 itself, see [`h2c`]).
#[async_trait]
impl Peek for Negotiated {}

/// Keeps the `IO` bound checked here rather than where the stream is used.
fn _is_io(s: Negotiated) -> Box<dyn IO> {
    Box::new(s)
}
