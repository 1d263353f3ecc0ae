//! WebSocket: the handshake answer and the frame loop, with tungstenite driven sans-io over
//! in-memory buffers. Event frames are pre-encoded and written as they are; tungstenite
//! handles what the client sends (pongs, pings, close) and our control frames.

use super::delivery::{Delivery, Next};
use super::downstream::{Downstream, WriteFailed};
use bytes::{Bytes, BytesMut};
use std::io::{self, Read, Write};
use std::time::Duration;
use tokio::sync::watch;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

/// What bounds one WebSocket stream.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Ping period; a client that has not answered by the next ping is closed.
    pub heartbeat: Duration,
    /// A client that accepts no bytes this long is disconnected.
    pub write_timeout: Duration,
    /// Largest message (and frame) a client may send: clients only answer pings and close.
    pub max_message: usize,
}

/// Why a WebSocket stream ended (a failed write is a [`WriteFailed`] instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Normal,
    PingTimeout,
    ProtocolError,
    /// No (or a malformed) credential in the first message, in time (see [`authenticate`]).
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

/// Feeds raw client bytes to a server-side WebSocket reader, as a stream does, and returns how
/// many messages it read before the input ran out or was refused. For fuzzing: any input must
/// end in a clean refusal, never a panic or unbounded memory.
pub fn read_client_bytes(data: &[u8], max_message: usize) -> usize {
    let mut conn = Conn::new(max_message);
    conn.io.inbox.extend_from_slice(data);
    let mut messages = 0;
    loop {
        match conn.ctx.read(&mut conn.io) {
            Ok(_) => messages += 1,
            Err(_) => return messages,
        }
    }
}

/// The 101 response head for a validated upgrade request.
pub fn handshake_response(key: &str, subprotocol: Option<&str>, extra_head: Option<&str>) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n"
    );
    if let Some(p) = subprotocol {
        head.push_str("sec-websocket-protocol: ");
        head.push_str(p);
        head.push_str("\r\n");
    }
    // More header lines (a sticky cookie), each ending in CRLF.
    if let Some(extra) = extra_head {
        head.push_str(extra);
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Bytes in from the client, bytes out to it: the sans-io stream tungstenite reads and writes.
#[derive(Default)]
struct Buffers {
    inbox: BytesMut,
    outbox: Vec<u8>,
}

impl Read for Buffers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbox.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.inbox.len());
        buf[..n].copy_from_slice(&self.inbox.split_to(n));
        Ok(n)
    }
}

impl Write for Buffers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Conn {
    ctx: WebSocketContext,
    io: Buffers,
}

impl Conn {
    fn new(max_message: usize) -> Conn {
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message))
            // Clients only send pongs and close frames; tungstenite's default is 128 KiB.
            .read_buffer_size(256)
            .write_buffer_size(0)
            .max_write_buffer_size(max_message.max(4096));
        Conn { ctx: WebSocketContext::new(Role::Server, Some(config)), io: Buffers::default() }
    }

    fn close(&mut self, code: CloseCode, reason: &'static str) {
        let _ = self.ctx.close(&mut self.io, Some(CloseFrame { code, reason: reason.into() }));
        let _ = self.ctx.flush(&mut self.io);
    }

    fn take_outbox(&mut self) -> Option<Bytes> {
        (!self.io.outbox.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.io.outbox)))
    }
}

/// A WebSocket whose 101 was sent, waiting for its subscription (see [`authenticate`]).
pub struct Opened {
    conn: Conn,
}

/// What the first message of a WebSocket that authenticates in-band brought.
pub enum Auth {
    /// The token of a `{"type":"auth","token":"…"}` text frame.
    Token(String, Box<Opened>),
    /// It was closed (after `timeout` with nothing, 4401; a malformed first message, 1008), or
    /// the client left.
    Refused(Ended),
}

/// The close code of a missing or late credential (as HTTP's 401).
pub const UNAUTHORIZED: u16 = 4401;

/// Sends the 101, then waits at most `timeout` for the first message, which must be
/// `{"type":"auth","token":"…"}` in a text frame. Nothing is subscribed before it comes.
pub async fn authenticate(
    down: &mut Downstream,
    handshake: &[u8],
    max_message: usize,
    timeout: Duration,
) -> Result<Auth, WriteFailed> {
    let mut conn = Conn::new(max_message);
    down.write(handshake).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut input = BytesMut::new();
    loop {
        let read = tokio::time::timeout_at(deadline, down.read(&mut input)).await;
        match read {
            Err(_) => {
                let ended = finish(
                    down,
                    &mut conn,
                    CloseCode::from(UNAUTHORIZED),
                    "authentication required",
                    Ended::Unauthenticated,
                );
                return ended.await.map(Auth::Refused);
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(Auth::Refused(Ended::Normal)),
            Ok(Ok(_)) => {}
        }
        conn.io.inbox.extend_from_slice(&input.split());
        loop {
            match conn.ctx.read(&mut conn.io) {
                Ok(Message::Text(text)) => match auth_token(&text) {
                    Some(token) => return Ok(Auth::Token(token, Box::new(Opened { conn }))),
                    None => {
                        let ended = finish(
                            down,
                            &mut conn,
                            CloseCode::Policy,
                            "malformed auth message",
                            Ended::Unauthenticated,
                        );
                        return ended.await.map(Auth::Refused);
                    }
                },
                Ok(Message::Binary(_)) => {
                    let ended =
                        finish(down, &mut conn, CloseCode::Policy, "malformed auth message", Ended::Unauthenticated);
                    return ended.await.map(Auth::Refused);
                }
                Ok(Message::Close(_)) => return Ok(Auth::Refused(Ended::Normal)),
                Ok(_) => {}
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::Capacity(_)) => {
                    return finish(down, &mut conn, CloseCode::Size, "message too big", Ended::ProtocolError)
                        .await
                        .map(Auth::Refused);
                }
                Err(_) => {
                    return finish(down, &mut conn, CloseCode::Protocol, "protocol error", Ended::ProtocolError)
                        .await
                        .map(Auth::Refused);
                }
            }
        }
        let _ = conn.ctx.flush(&mut conn.io);
        if let Some(out) = conn.take_outbox() {
            down.write(&out).await?;
        }
    }
}

/// The token of an auth message, if that is what `text` is.
fn auth_token(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v.get("type")?.as_str()? != "auth" {
        return None;
    }
    let token = v.get("token")?.as_str()?;
    (!token.is_empty()).then(|| token.to_string())
}

/// Closes an opened WebSocket that cannot be subscribed after all, with `code` and `reason`.
pub async fn refuse(mut down: Downstream, mut opened: Box<Opened>, code: u16, reason: &'static str) {
    let _ = finish(&mut down, &mut opened.conn, CloseCode::from(code), reason, Ended::Normal).await;
    down.close().await;
}

/// Serves an opened WebSocket (see [`authenticate`]) as [`serve`] does, without a 101.
pub async fn serve_opened(
    mut down: Downstream,
    mut opened: Box<Opened>,
    delivery: Delivery,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> Result<Ended, WriteFailed> {
    let ended = run(&mut down, Vec::new(), &mut opened.conn, delivery, limits.heartbeat, shutdown).await?;
    down.close().await;
    Ok(ended)
}

/// Serves one WebSocket subscriber: the 101 response, then events until the topic ends, the
/// client leaves or stops answering pings (close 1008), accepts nothing for `write_timeout`
/// (the connection is closed), or shutdown (close 1001).
pub async fn serve(
    mut down: Downstream,
    handshake: Vec<u8>,
    delivery: Delivery,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> Result<Ended, WriteFailed> {
    let mut conn = Conn::new(limits.max_message);
    // After a failed write the connection is dropped without a close frame: a write that timed
    // out may have sent part of a frame, and a close frame after it would be read as that
    // frame's payload (the client sees 1006).
    let ended = run(&mut down, handshake, &mut conn, delivery, limits.heartbeat, shutdown).await?;
    down.close().await;
    Ok(ended)
}

async fn run(
    down: &mut Downstream,
    mut first: Vec<u8>,
    conn: &mut Conn,
    mut delivery: Delivery,
    heartbeat: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Ended, WriteFailed> {
    // The 101 and the subscriber's first events in one write.
    match delivery.initial() {
        Next::Write(b) => {
            first.extend_from_slice(&b);
            down.write(&first).await?;
        }
        Next::End(b, reason) => {
            first.extend_from_slice(&b);
            down.write(&first).await?;
            return end(down, conn, reason).await;
        }
        Next::Closed => {
            down.write(&first).await?;
            return finish(down, conn, CloseCode::Normal, "stream ended", Ended::Normal).await;
        }
    }
    drop(first);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut awaiting_pong = false;
    // One wait for shutdown for the whole stream, not one per event.
    let stopping = shutdown.changed();
    tokio::pin!(stopping);
    let mut input = BytesMut::new();
    loop {
        tokio::select! {
            _ = &mut stopping => {
                return finish(down, conn, CloseCode::Away, "server shutting down", Ended::Normal).await;
            }
            next = delivery.next() => match next {
                Next::Write(b) => down.write(&b).await?,
                Next::End(b, reason) => {
                    down.write(&b).await?;
                    return end(down, conn, reason).await;
                }
                Next::Closed => {
                    return finish(down, conn, CloseCode::Away, "topic closed", Ended::Normal).await;
                }
            },
            _ = tick.tick() => {
                if awaiting_pong {
                    return finish(down, conn, CloseCode::Policy, "ping timeout", Ended::PingTimeout).await;
                }
                awaiting_pong = true;
                let _ = conn.ctx.write(&mut conn.io, Message::Ping(Bytes::from_static(b"unpoll")));
                let _ = conn.ctx.flush(&mut conn.io);
                if let Some(out) = conn.take_outbox() {
                    down.write(&out).await?;
                }
            }
            read = down.read(&mut input) => {
                match read {
                    Ok(0) | Err(_) => return Ok(Ended::Normal), // the client closed the connection
                    Ok(_) => {}
                }
                conn.io.inbox.extend_from_slice(&input.split());
                let mut closing = false;
                loop {
                    match conn.ctx.read(&mut conn.io) {
                        Ok(Message::Close(_)) => closing = true,
                        Ok(_) => awaiting_pong = false,
                        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                            closing = true;
                            break;
                        }
                        Err(WsError::Capacity(_)) => {
                            return finish(down, conn, CloseCode::Size, "message too big", Ended::ProtocolError).await;
                        }
                        Err(_) => {
                            return finish(down, conn, CloseCode::Protocol, "protocol error", Ended::ProtocolError).await;
                        }
                    }
                }
                let _ = conn.ctx.flush(&mut conn.io);
                if let Some(out) = conn.take_outbox() {
                    down.write(&out).await?;
                }
                if closing {
                    return Ok(Ended::Normal);
                }
            }
        }
    }
}

/// Closes after a terminal event: 1001 with the reason when the proxy is going away from the
/// stream (route removed or changed), else 1000.
async fn end(down: &mut Downstream, conn: &mut Conn, going_away: Option<&'static str>) -> Result<Ended, WriteFailed> {
    match going_away {
        Some(reason) => finish(down, conn, CloseCode::Away, reason, Ended::Normal).await,
        None => finish(down, conn, CloseCode::Normal, "stream ended", Ended::Normal).await,
    }
}

async fn finish(
    down: &mut Downstream,
    conn: &mut Conn,
    code: CloseCode,
    reason: &'static str,
    ended: Ended,
) -> Result<Ended, WriteFailed> {
    conn.close(code, reason);
    if let Some(out) = conn.take_outbox() {
        down.write(&out).await?;
    }
    Ok(ended)
}
