//! The one delivery loop every subscription runs, whatever its protocol and transport: the
//! subscriber's first events, then events, keep-alives and what the client says, until the
//! topic ends, the client leaves, or the proxy shuts down. Where the bytes go, and how they
//! are framed for the wire, is the [`Sink`]'s business:
//! - SSE over an HTTP/1 connection taken out of pingora ([`super::sse::Http1`]): chunked for
//!   HTTP/1.1, close-delimited for HTTP/1.0; a plain TCP connection is written on its own
//!   descriptor, a TLS one through pingora's TLS stream;
//! - SSE over an HTTP/2 stream ([`super::sse::H2`]), through pingora's session (DATA frames);
//! - WebSocket ([`super::ws::Ws`]), frames over an HTTP/1.1 connection, as the first.
//!
//! Events come encoded once per topic and protocol (an SSE event block, a WebSocket frame),
//! with no transport framing in them, so one allocation serves every subscriber on every
//! transport.

use super::delivery::{Delivery, Next};
use super::downstream::WriteFailed;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Why a stream ended (a failed write is a [`WriteFailed`] instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Normal,
    PingTimeout,
    ProtocolError,
    /// No (or a malformed) credential in a WebSocket's first message, in time.
    Unauthenticated,
}

impl Ended {
    /// The `reason` label of `unpoll_subscribers_dropped_total`, for streams the proxy ended.
    pub fn drop_reason(self) -> Option<&'static str> {
        match self {
            Ended::Normal => None,
            Ended::PingTimeout => Some("ping_timeout"),
            Ended::ProtocolError => Some("protocol_error"),
            Ended::Unauthenticated => Some("unauthenticated"),
        }
    }
}

/// The `reason` of `unpoll_subscribers_dropped_total` for how a stream ended: `None` when it
/// closed normally.
pub fn drop_reason(result: &Result<Ended, WriteFailed>) -> Option<&'static str> {
    match result {
        Ok(ended) => ended.drop_reason(),
        Err(failed) => Some(failed.drop_reason()),
    }
}

/// How a sink is told to end its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The topic's last event went out; with a reason when the proxy is going away from the
    /// stream (its route was removed or changed).
    Done(Option<&'static str>),
    /// The topic is gone.
    Closed,
    /// The proxy is shutting down.
    Shutdown,
    /// The client left or closed: nothing more is said.
    Left,
    /// The sink ended it and told the client why (a ping unanswered, a protocol error).
    Ended(Ended),
}

impl End {
    fn ended(self) -> Ended {
        match self {
            End::Ended(e) => e,
            _ => Ended::Normal,
        }
    }
}

/// Where one subscription is written: a transport and a protocol.
pub trait Sink: Send {
    /// The response head (or whatever opens the stream) and the subscriber's first events.
    fn begin(&mut self, events: Bytes) -> impl Future<Output = Result<(), WriteFailed>> + Send;
    /// More events.
    fn event(&mut self, events: Bytes) -> impl Future<Output = Result<(), WriteFailed>> + Send;
    /// Bytes already framed for the transport (the rest of an event the topic wrote in part).
    fn raw(&mut self, bytes: Bytes) -> impl Future<Output = Result<(), WriteFailed>> + Send;
    /// The client's plain TCP socket, for the topic to write events to directly, and whether
    /// each event is an HTTP/1.1 chunk there; `None` where events need the sink (TLS, HTTP/2,
    /// HTTP/1.0).
    fn lane(&self) -> Option<(Arc<TcpStream>, bool)> {
        None
    }
    /// Every heartbeat: a comment, a ping; an end when the client stopped answering.
    fn keep_alive(&mut self) -> impl Future<Output = Result<Option<End>, WriteFailed>> + Send;
    /// Waits until the client sent something (`true`) or left (`false`). Cancel-safe: it only
    /// reads.
    fn heard(&mut self) -> impl Future<Output = bool> + Send;
    /// Answers what the client sent; an end when that ends the stream.
    fn answer(&mut self) -> impl Future<Output = Result<Option<End>, WriteFailed>> + Send;
    /// Ends the stream as `why` says and closes it.
    fn end(self, why: End) -> impl Future<Output = Result<(), WriteFailed>> + Send;
}

/// Serves one subscriber until the topic ends, the client leaves, or shutdown. After a
/// failed write nothing more is written (a write that timed out may have sent part of an
/// event or frame): the sink is dropped, which closes the connection or resets the stream.
///
/// Not an `async fn`: one would keep a second copy of its arguments (the sink and the
/// delivery, about 0.7 KiB for a WebSocket) for as long as the stream lasts; the block below
/// uses what it captured in place.
#[allow(clippy::manual_async_fn)]
pub fn serve<S: Sink>(
    mut sink: S,
    mut delivery: Delivery,
    heartbeat: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> impl Future<Output = Result<Ended, WriteFailed>> + Send {
    async move {
        // The head and the subscriber's first events in one write.
        let why = match delivery.initial() {
            Next::Write(b) | Next::Raw(b) => {
                sink.begin(b).await?;
                live(&mut sink, &mut delivery, heartbeat, &mut shutdown).await?
            }
            Next::End(b, going_away) => {
                sink.begin(b).await?;
                End::Done(going_away)
            }
            Next::Closed => {
                sink.begin(Bytes::new()).await?;
                End::Closed
            }
        };
        sink.end(why).await?;
        Ok(why.ended())
    }
}

async fn live<S: Sink>(
    sink: &mut S,
    delivery: &mut Delivery,
    heartbeat: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<End, WriteFailed> {
    if let Some((socket, chunked)) = sink.lane() {
        delivery.lane(socket, chunked);
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    // One wait for shutdown for the whole stream, not one per event.
    let stopping = shutdown.changed();
    tokio::pin!(stopping);
    loop {
        let step = tokio::select! {
            _ = &mut stopping => Step::Stop,
            next = delivery.next() => Step::Next(next),
            _ = tick.tick() => Step::Tick,
            heard = sink.heard() => Step::Heard(heard),
        };
        // Whatever the task writes now, the topic must not write beside it: the lane is taken
        // back first, with the rest of an event the topic wrote in part.
        if let Some(rest) = delivery.unpark() {
            sink.raw(rest).await?;
        }
        match step {
            Step::Stop => return Ok(End::Shutdown),
            Step::Next(Next::Write(b)) => sink.event(b).await?,
            Step::Next(Next::Raw(b)) => sink.raw(b).await?,
            Step::Next(Next::End(b, going_away)) => {
                sink.event(b).await?;
                return Ok(End::Done(going_away));
            }
            Step::Next(Next::Closed) => return Ok(End::Closed),
            Step::Tick => {
                if let Some(end) = sink.keep_alive().await? {
                    return Ok(end);
                }
            }
            Step::Heard(false) => return Ok(End::Left),
            Step::Heard(true) => {
                if let Some(end) = sink.answer().await? {
                    return Ok(end);
                }
            }
        }
    }
}

/// What woke the delivery loop.
enum Step {
    Stop,
    Next(Next),
    Tick,
    Heard(bool),
}
