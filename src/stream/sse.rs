//! Server-Sent Events: a `text/event-stream` response held open, over whichever transport the
//! client came by. One delivery loop ([`serve`]) writes to a [`Sink`], which frames the body
//! for its transport:
//! - [`Http1`]: the client's connection taken out of pingora (see `downstream`), written raw:
//!   chunked for HTTP/1.1, delimited by closing for HTTP/1.0. Over TLS the connection is
//!   pingora's TLS stream, written through; only a plain TCP connection is ever written on a
//!   duplicate of its descriptor.
//! - [`H2`]: an HTTP/2 stream, through pingora's session (many share one connection; the
//!   session stays with pingora, which frames DATA and keeps flow control).
//!
//! Events are encoded once per topic, as HTTP/1.1 chunks (the most common transport, written
//! with no copy); the sinks for HTTP/1.0 and HTTP/2 take the chunk framing off (a slice of
//! the same bytes for one event).

use super::delivery::{Delivery, Next};
use super::downstream::{Downstream, WriteFailed};
use crate::wire::encode::{unchunk, SSE_END, SSE_KEEPALIVE, SSE_PREAMBLE};
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// The response head of an SSE stream to an HTTP/1.1 client.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
transfer-encoding: chunked\r\nx-accel-buffering: no\r\n";

/// The head for an HTTP/1.0 client, which knows no chunks: the body ends when the connection
/// closes.
const HEAD_HTTP10: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
connection: close\r\nx-accel-buffering: no\r\n";

/// Where an SSE stream is written. Bodies come framed as HTTP/1.1 chunks (see `encode`).
pub trait Sink {
    /// The response head, with `extra_head` (more header lines, each ending in CRLF), and the
    /// body's first bytes.
    fn begin(&mut self, extra_head: Option<&str>, body: Bytes) -> impl Future<Output = Result<(), WriteFailed>> + Send;
    /// More of the body.
    fn send(&mut self, body: Bytes) -> impl Future<Output = Result<(), WriteFailed>> + Send;
    /// Resolves when the client has left (an SSE client sends nothing that matters).
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
    /// Ends the response.
    fn finish(self) -> impl Future<Output = Result<(), WriteFailed>> + Send;
}

/// Serves one SSE subscriber until the topic ends, the client leaves, or shutdown.
pub async fn serve<S: Sink>(
    mut sink: S,
    mut delivery: Delivery,
    heartbeat: Duration,
    extra_head: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WriteFailed> {
    // The head, the retry preamble and the subscriber's first events in one write.
    let (initial, ended) = match delivery.initial() {
        Next::Write(b) => (b, false),
        Next::End(b, _) => (b, true),
        Next::Closed => (Bytes::new(), true),
    };
    let mut first = BytesMut::with_capacity(SSE_PREAMBLE.len() + initial.len());
    first.extend_from_slice(SSE_PREAMBLE);
    first.extend_from_slice(&initial);
    drop(initial);
    sink.begin(extra_head.as_deref(), first.freeze()).await?;
    if !ended {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        // One wait for shutdown for the whole stream, not one per event.
        let stopping = shutdown.changed();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                _ = &mut stopping => break,
                next = delivery.next() => match next {
                    Next::Write(b) => sink.send(b).await?,
                    Next::End(b, _) => {
                        sink.send(b).await?;
                        break;
                    }
                    Next::Closed => break,
                },
                _ = tick.tick() => sink.send(Bytes::from_static(SSE_KEEPALIVE)).await?,
                () = sink.gone() => return Ok(()),
            }
        }
    }
    sink.finish().await
}

/// An HTTP/1 client's connection, taken out of pingora.
pub struct Http1 {
    pub down: Downstream,
    /// HTTP/1.0: no chunks; the body ends when the connection closes.
    pub http10: bool,
    input: BytesMut,
}

impl Http1 {
    pub fn new(down: Downstream, http10: bool) -> Http1 {
        Http1 { down, http10, input: BytesMut::new() }
    }

    fn body(&self, b: Bytes) -> Bytes {
        if self.http10 {
            unchunk(&b)
        } else {
            b
        }
    }
}

impl Sink for Http1 {
    async fn begin(&mut self, extra_head: Option<&str>, body: Bytes) -> Result<(), WriteFailed> {
        let head = if self.http10 { HEAD_HTTP10 } else { HEAD };
        let body = self.body(body);
        let extra = extra_head.unwrap_or_default();
        let mut first = Vec::with_capacity(head.len() + extra.len() + 2 + body.len());
        first.extend_from_slice(head);
        first.extend_from_slice(extra.as_bytes());
        first.extend_from_slice(b"\r\n");
        first.extend_from_slice(&body);
        self.down.write(&first).await
    }

    async fn send(&mut self, body: Bytes) -> Result<(), WriteFailed> {
        let body = self.body(body);
        self.down.write(&body).await
    }

    async fn gone(&mut self) {
        let _ = self.down.read(&mut self.input).await;
    }

    async fn finish(mut self) -> Result<(), WriteFailed> {
        if !self.http10 {
            self.down.write(SSE_END).await?;
        }
        self.down.close().await;
        Ok(())
    }
}

/// An HTTP/2 stream, written through pingora's session.
pub struct H2<'a> {
    pub session: &'a mut Session,
    pub write_timeout: Duration,
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
    async fn begin(&mut self, extra_head: Option<&str>, body: Bytes) -> Result<(), WriteFailed> {
        let mut head = ResponseHeader::build(200, Some(6)).map_err(|_| WriteFailed::Error)?;
        let _ = head.insert_header("content-type", "text/event-stream");
        let _ = head.insert_header("cache-control", "no-cache");
        let _ = head.insert_header("x-accel-buffering", "no");
        for line in extra_head.unwrap_or_default().split("\r\n").filter(|l| !l.is_empty()) {
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
        self.write(unchunk(&body), false).await
    }

    async fn send(&mut self, body: Bytes) -> Result<(), WriteFailed> {
        self.write(unchunk(&body), false).await
    }

    async fn gone(&mut self) {
        // Resolves when the client resets this stream (RST_STREAM) or the connection ends;
        // the other streams of the connection go on.
        let _ = self.session.downstream_session.read_body_or_idle(true).await;
    }

    async fn finish(mut self) -> Result<(), WriteFailed> {
        self.write(Bytes::new(), true).await
    }
}
