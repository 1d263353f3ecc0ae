//! Server-Sent Events: a `text/event-stream` response held open. Two sinks for the one
//! delivery loop (`serve`), each framing the shared event blocks for its transport:
//! - [`Http1`]: the client's connection taken out of pingora (see `downstream`), written raw:
//!   each write one HTTP/1.1 chunk (its size line and end around the shared bytes, gathered
//!   in one `writev`), or for HTTP/1.0, which knows no chunks, the bytes as they are, the body
//!   delimited by closing. Over TLS the connection is pingora's TLS stream, written through;
//!   only a plain TCP connection is ever written on a duplicate of its descriptor.
//! - [`H2`]: an HTTP/2 stream, through pingora's session (many share one connection; the
//!   session stays with pingora, which frames DATA and keeps flow control).

use super::downstream::{Downstream, WriteFailed};
use super::serve::{End, Sink};
use crate::wire::encode::size_line;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The response head of an SSE stream to an HTTP/1.1 client.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
transfer-encoding: chunked\r\nx-accel-buffering: no\r\n";

/// The head for an HTTP/1.0 client, which knows no chunks: the body ends when the connection
/// closes.
const HEAD_HTTP10: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
connection: close\r\nx-accel-buffering: no\r\n";

/// The first bytes of every SSE stream: the client's reconnection delay (2 s).
const PREAMBLE: &[u8] = b"retry: 2000\n\n";

/// The comment sent as a heartbeat.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// The last chunk of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The body's first bytes: the preamble and the subscriber's first events.
fn first_body(events: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(PREAMBLE.len() + events.len());
    body.extend_from_slice(PREAMBLE);
    body.extend_from_slice(events);
    body.freeze()
}

/// An HTTP/1 client's connection, taken out of pingora.
pub struct Http1 {
    down: Downstream,
    /// HTTP/1.0: no chunks; the body ends when the connection closes.
    http10: bool,
    /// More header lines (each ending in CRLF) for the head.
    extra_head: Option<String>,
    input: BytesMut,
}

impl Http1 {
    pub fn new(down: Downstream, http10: bool, extra_head: Option<String>) -> Http1 {
        Http1 { down, http10, extra_head, input: BytesMut::new() }
    }

    /// `body` as the transport wants it: one chunk, or as it is for HTTP/1.0.
    async fn write(&mut self, body: &[u8]) -> Result<(), WriteFailed> {
        if self.http10 || body.is_empty() {
            return self.down.write(body).await;
        }
        let (size, n) = size_line(body.len());
        self.down.write_parts([&size[..n], body, b"\r\n"]).await
    }
}

impl Sink for Http1 {
    async fn begin(&mut self, events: Bytes) -> Result<(), WriteFailed> {
        let head = if self.http10 { HEAD_HTTP10 } else { HEAD };
        let extra = self.extra_head.take().unwrap_or_default();
        let (size, n) = size_line(PREAMBLE.len() + events.len());
        let (size, end): (&[u8], &[u8]) = if self.http10 { (b"", b"") } else { (&size[..n], b"\r\n") };
        self.down.write_parts([head, extra.as_bytes(), b"\r\n", size, PREAMBLE, &events, end]).await
    }

    async fn event(&mut self, events: Bytes) -> Result<(), WriteFailed> {
        self.write(&events).await
    }

    async fn raw(&mut self, bytes: Bytes) -> Result<(), WriteFailed> {
        self.down.write(&bytes).await
    }

    fn lane(&self) -> Option<(Arc<TcpStream>, bool)> {
        // HTTP/1.0 bodies are not chunked; they keep to the task.
        self.down.shared_socket().filter(|_| !self.http10).map(|s| (s, true))
    }

    async fn keep_alive(&mut self) -> Result<Option<End>, WriteFailed> {
        self.write(KEEPALIVE).await.map(|()| None)
    }

    async fn heard(&mut self) -> bool {
        matches!(self.down.read(&mut self.input).await, Ok(n) if n > 0)
    }

    async fn answer(&mut self) -> Result<Option<End>, WriteFailed> {
        // An SSE client has nothing to say: what it sends is dropped.
        self.input.clear();
        Ok(None)
    }

    async fn end(mut self, why: End) -> Result<(), WriteFailed> {
        if !self.http10 && why != End::Left {
            self.down.write(LAST_CHUNK).await?;
        }
        self.down.close().await;
        Ok(())
    }
}

/// An HTTP/2 stream, written through pingora's session.
pub struct H2<'a> {
    pub session: &'a mut Session,
    pub write_timeout: Duration,
    /// More header lines (each ending in CRLF) for the head.
    pub extra_head: Option<String>,
}

impl H2<'_> {
    async fn write(&mut self, body: Bytes, end: bool) -> Result<(), WriteFailed> {
        let write = self.session.write_response_body(Some(body), end);
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteFailed::Error),
            Err(_) => Err(WriteFailed::Timeout),
        }
    }
}

impl Sink for H2<'_> {
    async fn begin(&mut self, events: Bytes) -> Result<(), WriteFailed> {
        let mut head = ResponseHeader::build(200, Some(6)).map_err(|_| WriteFailed::Error)?;
        let _ = head.insert_header("content-type", "text/event-stream");
        let _ = head.insert_header("cache-control", "no-cache");
        let _ = head.insert_header("x-accel-buffering", "no");
        let extra = self.extra_head.take().unwrap_or_default();
        for line in extra.split("\r\n").filter(|l| !l.is_empty()) {
            if let Some((name, value)) = line.split_once(':') {
                let _ = head.append_header(name.trim().to_string(), value.trim());
            }
        }
        let write = self.session.write_response_header(Box::new(head), false);
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(WriteFailed::Error),
            Err(_) => return Err(WriteFailed::Timeout),
        }
        self.write(first_body(&events), false).await
    }

    async fn event(&mut self, events: Bytes) -> Result<(), WriteFailed> {
        self.write(events, false).await
    }

    async fn raw(&mut self, bytes: Bytes) -> Result<(), WriteFailed> {
        self.write(bytes, false).await
    }

    async fn keep_alive(&mut self) -> Result<Option<End>, WriteFailed> {
        self.write(Bytes::from_static(KEEPALIVE), false).await.map(|()| None)
    }

    async fn heard(&mut self) -> bool {
        // Resolves when the client resets this stream (RST_STREAM) or the connection ends;
        // the other streams of the connection go on.
        let _ = self.session.downstream_session.read_body_or_idle(true).await;
        false
    }

    async fn answer(&mut self) -> Result<Option<End>, WriteFailed> {
        Ok(Some(End::Left))
    }

    async fn end(mut self, why: End) -> Result<(), WriteFailed> {
        if why == End::Left {
            return Ok(());
        }
        self.write(Bytes::new(), true).await
    }
}
