//! Real clients: a raw-TCP HTTP/1.1 client, an SSE reader over it, and WebSocket helpers.

use futures_util::StreamExt;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A whole HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Header name and value pairs, in order.
pub type Headers = Vec<(String, String)>;

/// Parses a response head from `buf`: status, headers, and the head's length.
fn parse_head(buf: &[u8]) -> Option<(u16, Headers, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Some((
            resp.code.unwrap(),
            resp.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect(),
            n,
        )),
        _ => None,
    }
}

/// An HTTP/1.1 connection read by hand: head, then a chunked or sized body, incrementally.
pub struct RawConn {
    pub stream: TcpStream,
    raw: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    chunked: bool,
    remaining: Option<usize>,
    /// Decoded body bytes not yet consumed.
    pub body: Vec<u8>,
    /// The body ended cleanly (last chunk, or content-length reached).
    pub finished: bool,
    /// The connection closed.
    pub eof: bool,
}

impl RawConn {
    /// Sends `request` as is and reads the response head.
    pub async fn send(addr: SocketAddr, request: &[u8]) -> RawConn {
        RawConn::send_on(TcpStream::connect(addr).await.expect("connect"), request).await
    }

    /// Like [`RawConn::send`], from the local address `from` (any of 127.0.0.0/8 works on
    /// loopback): another client, as far as the proxy can tell.
    pub async fn send_from(from: std::net::IpAddr, addr: SocketAddr, request: &[u8]) -> RawConn {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        RawConn::send_on(socket.connect(addr).await.expect("connect"), request).await
    }

    async fn send_on(mut stream: TcpStream, request: &[u8]) -> RawConn {
        stream.write_all(request).await.unwrap();
        let mut conn = RawConn {
            stream,
            raw: Vec::new(),
            status: 0,
            headers: vec![],
            chunked: false,
            remaining: None,
            body: vec![],
            finished: false,
            eof: false,
        };
        loop {
            if let Some((status, headers, n)) = parse_head(&conn.raw) {
                conn.raw.drain(..n);
                conn.status = status;
                conn.chunked =
                    headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
                conn.remaining = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok());
                conn.headers = headers;
                break;
            }
            assert!(conn.read_more(Duration::from_secs(10)).await, "no response head");
        }
        conn.decode();
        conn
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    async fn read_more(&mut self, timeout: Duration) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(timeout, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.raw.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => false,
        }
    }

    fn decode(&mut self) {
        if self.finished {
            return;
        }
        if !self.chunked {
            let take = self.remaining.map_or(self.raw.len(), |r| r.min(self.raw.len()));
            self.body.extend(self.raw.drain(..take));
            if let Some(r) = self.remaining.as_mut() {
                *r -= take;
                self.finished = *r == 0;
            }
            return;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.raw.drain(..line_end + 2 + size + 2);
            if size == 0 {
                self.finished = true;
                return;
            }
            self.body.extend(data);
        }
    }

    /// Reads until the body holds `pred`'s match, the body ends, or `timeout`.
    pub async fn read_until(&mut self, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.body) {
                return true;
            }
            if self.finished || self.eof {
                return false;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.read_more(left).await {
                self.decode();
            }
        }
    }

    /// Reads the whole body.
    pub async fn read_to_end(mut self, timeout: Duration) -> Response {
        self.read_until(timeout, |_| false).await;
        Response { status: self.status, headers: self.headers, body: self.body }
    }
}

/// A GET with `Connection: close`; `None` if nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<Response> {
    http_send(addr, "GET", path, None).await
}

/// A request with `Connection: close` and, if given, a JSON body; `None` if nothing answers.
pub async fn http_send(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Option<Response> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await.ok()?.ok()?;
    let body = body.map(|b| serde_json::to_string(b).unwrap());
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = &body {
        req += &format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len());
    }
    req += "\r\n";
    req += body.as_deref().unwrap_or_default();
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await.ok()?.ok()?;
    let (status, headers, n) = parse_head(&buf)?;
    Some(Response { status, headers, body: buf[n..].to_vec() })
}

/// One SSE block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comment: Option<String>,
    pub retry: Option<String>,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("JSON data")
    }
    pub fn kind(&self) -> &str {
        self.event.as_deref().unwrap_or("")
    }
}

/// An SSE subscription read over raw TCP.
pub struct Sse {
    pub conn: RawConn,
}

impl Sse {
    /// Subscribes to `path` with `Accept: text/event-stream` and extra header lines.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        Sse { conn: RawConn::send(addr, &Sse::request(addr, path, headers)).await }
    }

    /// Like [`Sse::connect`], from the local address `from` (see [`RawConn::send_from`]).
    pub async fn connect_from(from: std::net::IpAddr, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        Sse { conn: RawConn::send_from(from, addr, &Sse::request(addr, path, headers)).await }
    }

    fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut req = format!("GET {path} HTTP/1.1\r\nAccept: text/event-stream\r\n");
        // The proxy's address, unless the test names another (a load balancer's, say).
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {addr}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.into_bytes()
    }

    /// The next block, comments included; `None` on timeout or end of stream.
    pub async fn next_block(&mut self, timeout: Duration) -> Option<SseEvent> {
        let found = self.conn.read_until(timeout, |b| b.windows(2).any(|w| w == b"\n\n")).await;
        if !found {
            return None;
        }
        let end = self.conn.body.windows(2).position(|w| w == b"\n\n").unwrap();
        let block: Vec<u8> = self.conn.body.drain(..end + 2).collect();
        let text = String::from_utf8(block).unwrap();
        let mut ev = SseEvent::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            let slot = match field {
                "" => &mut ev.comment,
                "id" => &mut ev.id,
                "event" => &mut ev.event,
                "retry" => &mut ev.retry,
                "data" => {
                    let d = ev.data.get_or_insert_with(String::new);
                    if !d.is_empty() {
                        d.push('\n');
                    }
                    d.push_str(value);
                    continue;
                }
                _ => continue,
            };
            *slot = Some(value.to_string());
        }
        Some(ev)
    }

    /// The next event with an `event:` field (skips `retry:` and comments).
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = self.next_block(left).await?;
            if block.event.is_some() {
                return Some(block);
            }
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket subscription offering `protocols`.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    protocols: &[&str],
    headers: &[(&str, &str)],
) -> Result<(Ws, tokio_tungstenite::tungstenite::handshake::client::Response), tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert("sec-websocket-protocol", protocols.join(", ").parse().unwrap());
    }
    for (k, v) in headers {
        req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await
}

/// What a WebSocket subscriber saw next.
#[derive(Debug)]
pub enum WsNext {
    Event(Value),
    Close(Option<u16>),
    Ended,
}

/// The next event (pings are answered by tungstenite while reading).
pub async fn ws_next(ws: &mut Ws, timeout: Duration) -> Option<WsNext> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = tokio::time::timeout(left, ws.next()).await.ok()?;
        return Some(match msg {
            Some(Ok(Message::Text(t))) => WsNext::Event(serde_json::from_str(&t).expect("JSON event")),
            Some(Ok(Message::Close(frame))) => WsNext::Close(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => WsNext::Ended,
        });
    }
}

/// The next event, which must be an event.
pub async fn ws_event(ws: &mut Ws, timeout: Duration) -> Value {
    match ws_next(ws, timeout).await {
        Some(WsNext::Event(v)) => v,
        other => panic!("expected a WebSocket event, got {other:?}"),
    }
}
