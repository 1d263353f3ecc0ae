//! WebSocket: the handshake answer, the in-band credential, and the sink the delivery loop
//! (`serve`) writes to, with tungstenite driven sans-io over in-memory buffers. Event frames
//! are encoded once per topic and written as they are; tungstenite handles what the client
//! sends (pongs, pings, close) and our control frames.

use super::downstream::{Downstream, WriteFailed};
pub use super::serve::Ended;
use super::serve::{End, Sink};
use bytes::{Bytes, BytesMut};
use std::io::{self, Read, Write};
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

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

/// A WebSocket subscription's sink: event frames written as they come (encoded once per
/// topic), pings every heartbeat, and tungstenite answering what the client sends.
pub struct Ws {
    down: Downstream,
    conn: Conn,
    /// The 101, until it goes out with the first events (empty when it was sent already).
    handshake: Vec<u8>,
    awaiting_pong: bool,
    input: BytesMut,
}

impl Ws {
    /// A stream whose 101 goes out with its first events.
    pub fn new(down: Downstream, handshake: Vec<u8>, max_message: usize) -> Ws {
        Ws { down, conn: Conn::new(max_message), handshake, awaiting_pong: false, input: BytesMut::new() }
    }

    /// A stream opened by [`authenticate`], its 101 sent.
    pub fn opened(down: Downstream, opened: Box<Opened>) -> Ws {
        Ws { down, conn: opened.conn, handshake: Vec::new(), awaiting_pong: false, input: BytesMut::new() }
    }

    async fn flush(&mut self) -> Result<(), WriteFailed> {
        let _ = self.conn.ctx.flush(&mut self.conn.io);
        match self.conn.take_outbox() {
            Some(out) => self.down.write(&out).await,
            None => Ok(()),
        }
    }

    /// Sends a close frame: the stream ends `ended`.
    async fn close(&mut self, code: CloseCode, reason: &'static str, ended: Ended) -> Result<Option<End>, WriteFailed> {
        say_close(&mut self.down, &mut self.conn, code, reason).await?;
        Ok(Some(End::Ended(ended)))
    }
}

impl Sink for Ws {
    async fn begin(&mut self, events: Bytes) -> Result<(), WriteFailed> {
        let handshake = std::mem::take(&mut self.handshake);
        self.down.write_parts([&handshake, &events]).await
    }

    async fn event(&mut self, events: Bytes) -> Result<(), WriteFailed> {
        self.down.write(&events).await
    }

    async fn raw(&mut self, bytes: Bytes) -> Result<(), WriteFailed> {
        self.down.write(&bytes).await
    }

    fn lane(&self) -> Option<(std::sync::Arc<tokio::net::TcpStream>, bool)> {
        self.down.shared_socket().map(|s| (s, false))
    }

    async fn keep_alive(&mut self) -> Result<Option<End>, WriteFailed> {
        if self.awaiting_pong {
            return self.close(CloseCode::Policy, "ping timeout", Ended::PingTimeout).await;
        }
        self.awaiting_pong = true;
        let _ = self.conn.ctx.write(&mut self.conn.io, Message::Ping(Bytes::from_static(b"unpoll")));
        self.flush().await.map(|()| None)
    }

    async fn heard(&mut self) -> bool {
        matches!(self.down.read(&mut self.input).await, Ok(n) if n > 0)
    }

    async fn answer(&mut self) -> Result<Option<End>, WriteFailed> {
        self.conn.io.inbox.extend_from_slice(&self.input.split());
        let mut closing = false;
        loop {
            match self.conn.ctx.read(&mut self.conn.io) {
                Ok(Message::Close(_)) => closing = true,
                Ok(_) => self.awaiting_pong = false,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    closing = true;
                    break;
                }
                Err(WsError::Capacity(_)) => {
                    return self.close(CloseCode::Size, "message too big", Ended::ProtocolError).await;
                }
                Err(_) => return self.close(CloseCode::Protocol, "protocol error", Ended::ProtocolError).await,
            }
        }
        // Pongs to the client's pings, the answer to its close.
        self.flush().await?;
        Ok(closing.then_some(End::Left))
    }

    async fn end(mut self, why: End) -> Result<(), WriteFailed> {
        let (code, reason) = match why {
            End::Done(Some(reason)) => (CloseCode::Away, reason),
            End::Done(None) => (CloseCode::Normal, "stream ended"),
            End::Closed => (CloseCode::Away, "topic closed"),
            End::Shutdown => (CloseCode::Away, "server shutting down"),
            End::Left | End::Ended(_) => {
                self.down.close().await;
                return Ok(());
            }
        };
        say_close(&mut self.down, &mut self.conn, code, reason).await?;
        self.down.close().await;
        Ok(())
    }
}

async fn finish(
    down: &mut Downstream,
    conn: &mut Conn,
    code: CloseCode,
    reason: &'static str,
    ended: Ended,
) -> Result<Ended, WriteFailed> {
    say_close(down, conn, code, reason).await?;
    Ok(ended)
}

/// Writes a close frame.
async fn say_close(
    down: &mut Downstream,
    conn: &mut Conn,
    code: CloseCode,
    reason: &'static str,
) -> Result<(), WriteFailed> {
    conn.close(code, reason);
    match conn.take_outbox() {
        Some(out) => down.write(&out).await,
        None => Ok(()),
    }
}
