//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/status` (JSON,
//! see [`crate::status`]).
//!
//! unpoll serves it itself rather than as a pingora service: pingora stops accepting on its
//! listeners the moment a SIGTERM shutdown begins, and a load balancer asking `/readyz` during
//! the grace period must be told `503 draining`, not refused. It answers until the process
//! exits. Its socket is opened with `SO_REUSEPORT`, so that a process started with `--upgrade`
//! listens beside the old one (the kernel shares connections between them until the old one
//! exits); anything else already listening on the port is an error.

use crate::metrics::Metrics;
use crate::status::Status;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use slots::{Slot, Slots};
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

mod refresh;
pub mod slots;

/// Largest request head the admin listener reads.
const MAX_HEAD: usize = 8192;
/// Largest request body it reads (a `/refresh`'s list of paths): larger is a 413.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a new admin connection may take to send its first request.
const FIRST_REQUEST: Duration = Duration::from_secs(5);
/// How long a kept-alive admin connection may stay idle between two requests.
const IDLE: Duration = Duration::from_secs(30);
/// How long an answer may take to write (a client that does not read is dropped).
const WRITE: Duration = Duration::from_secs(10);

/// What the admin endpoints answer.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once shutdown (SIGTERM, or SIGQUIT after an upgrade hand-over) has begun.
    pub draining: watch::Receiver<bool>,
    pub status: Status,
}

impl Admin {
    /// Status, content type and body for `request` (with its `body`).
    pub fn answer(&self, request: &Request, body: &[u8]) -> (u16, &'static str, Vec<u8>) {
        let (method, path) = (request.method.as_str(), request.path.as_str());
        // `/status` and `/refresh` need the token when `server.admin_token_file` is set;
        // probes and Prometheus do not.
        if matches!(path, "/status" | "/refresh") && !self.authorized(request) {
            return error(401, "unauthorized", "this endpoint needs `Authorization: Bearer <server.admin_token_file>`");
        }
        match (method, path) {
            ("POST", "/refresh") => refresh::answer(&self.status.hub, body),
            (_, "/refresh") => error(405, "method_not_allowed", "POST a JSON body {\"paths\": [...]} to /refresh"),
            ("GET" | "HEAD", "/metrics") => (200, "text/plain; version=0.0.4", self.metrics.render()),
            ("GET" | "HEAD", "/healthz") => (200, "text/plain", b"ok\n".to_vec()),
            ("GET" | "HEAD", "/readyz") if *self.draining.borrow() => (503, "text/plain", b"draining\n".to_vec()),
            ("GET" | "HEAD", "/readyz") => (200, "text/plain", b"ready\n".to_vec()),
            ("GET" | "HEAD", "/status") => (200, "application/json", self.status.render(*self.draining.borrow())),
            (_, "/metrics" | "/healthz" | "/readyz" | "/status") => {
                error(405, "method_not_allowed", "this endpoint answers GET")
            }
            _ => {
                (404, "text/plain", b"not found: try /metrics, /healthz, /readyz, /status or POST /refresh\n".to_vec())
            }
        }
    }

    /// Whether `request` carries the admin token, or none is configured.
    fn authorized(&self, request: &Request) -> bool {
        let table = self.status.table.load();
        let Some(token) = &table.server.admin_token else { return true };
        let given = request.authorization.as_deref().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
        // Compared in constant time: the answer's timing says nothing of the token.
        given.len() == token.0.len() && given.bytes().zip(token.0.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// A JSON error answer: `{"error": …, "message": …}`.
pub(crate) fn error(status: u16, error: &str, message: &str) -> (u16, &'static str, Vec<u8>) {
    let body = serde_json::json!({"error": error, "message": message});
    (status, "application/json", serde_json::to_vec(&body).expect("JSON serialises"))
}

/// What the admin listener reads of a request.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    /// Without the query.
    pub path: String,
    /// The client asked to close after this answer.
    pub close: bool,
    pub authorization: Option<String>,
    /// `Content-Length`.
    pub length: usize,
}

/// Opens the admin listener on `addr`. With `upgrade`, the process being replaced still
/// listens there, and the port is shared with it; otherwise a port in use is an error.
#[allow(clippy::disallowed_methods)] // A lookup once, at start, before anything is served.
pub fn bind(addr: &str, upgrade: bool) -> io::Result<std::net::TcpListener> {
    let addr: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, "the address resolves to nothing"))?;
    let socket = |reuse_port: bool| -> io::Result<Socket> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(reuse_port)?;
        Ok(s)
    };
    if !upgrade {
        // A socket that does not share the port fails where anyone listens, even with it shared.
        socket(false)?.bind(&addr.into())?;
    }
    let s = socket(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The admin listener as a background service: it ignores pingora's shutdown, so it answers
/// (`/readyz`: `503 draining`) until the process exits. At most `max_connections` at once;
/// when full, an idle one makes room for a newcomer (see [`slots`]), so that probes answer
/// however many connections others hold open.
pub struct AdminService {
    listener: Mutex<Option<std::net::TcpListener>>,
    admin: Arc<Admin>,
    slots: Arc<Slots>,
}

impl AdminService {
    pub fn new(listener: std::net::TcpListener, admin: Admin, max_connections: usize) -> AdminService {
        let metrics = &admin.metrics;
        let slots = Slots::new(max_connections, metrics.admin_connections.clone(), metrics.admin_closed.clone());
        AdminService { listener: Mutex::new(Some(listener)), admin: Arc::new(admin), slots }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(std) = self.listener.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let listener = match tokio::net::TcpListener::from_std(std) {
            Ok(l) => l,
            Err(e) => {
                log::error!("the admin listener could not start: {e}");
                return;
            }
        };
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Some(slot) = self.slots.take(peer.ip(), Some(stream.as_raw_fd())) else { continue };
            let admin = self.admin.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = serve(&mut stream, &admin, &slot).await;
                // The slot first: it names the socket's descriptor, which must not be closed
                // (and its number reused) while the slot is held.
                drop(slot);
                drop(stream);
            });
            // The listener runs on one thread: let the connections accepted so far read and
            // answer their requests before the next is accepted, so that a burst of
            // newcomers finds answered (idle) connections to close, not ones about to be
            // answered.
            tokio::task::yield_now().await;
        }
    }
}

/// Answers requests on one keep-alive connection, until the client closes it, is idle too
/// long, or its slot is wanted for another.
async fn serve(stream: &mut TcpStream, admin: &Admin, slot: &Slot) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut wait = FIRST_REQUEST;
    loop {
        slot.idle();
        let head = tokio::select! {
            head = tokio::time::timeout(wait, read_head(stream, &mut buf)) => head,
            _ = slot.evicted.notified() => return Ok(()),
        };
        let Ok(head) = head else {
            slot.timed_out();
            return Ok(());
        };
        let Some((request, used)) = head? else {
            return Ok(());
        };
        slot.busy();
        wait = IDLE;
        buf.drain(..used);
        let too_large = request.length > MAX_BODY;
        let (status, content_type, body) = if too_large {
            error(413, "body_too_large", &format!("a request body may hold {MAX_BODY} bytes at most"))
        } else {
            // The body, within what is left of the request's time.
            while buf.len() < request.length {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(FIRST_REQUEST, stream.read(&mut chunk)).await??;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body: Vec<u8> = buf.drain(..request.length).collect();
            admin.answer(&request, &body)
        };
        let close = request.close || too_large;
        let reason = match status {
            200 => "OK",
            202 => "Accepted",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Content Too Large",
            _ => "Service Unavailable",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-unpoll-pid: {}\r\n{}{}\r\n",
            body.len(),
            std::process::id(),
            if status == 401 { "www-authenticate: Bearer realm=\"unpoll admin\"\r\n" } else { "" },
            if close { "connection: close\r\n" } else { "" }
        );
        let mut response = head.into_bytes();
        if request.method != "HEAD" {
            response.extend_from_slice(&body);
        }
        tokio::time::timeout(WRITE, stream.write_all(&response)).await??;
        if close {
            return Ok(());
        }
    }
}

/// Reads one request head, and its length. `None` when the client closed, or sent a head
/// too large, a chunked body or a `Content-Length` that is not a number.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<(Request, usize)>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(used)) => {
                let header =
                    |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
                if header("transfer-encoding").is_some() {
                    return Ok(None);
                }
                let length = match header("content-length") {
                    None => 0,
                    Some(v) => match std::str::from_utf8(v).ok().and_then(|v| v.trim().parse().ok()) {
                        Some(n) => n,
                        None => return Ok(None),
                    },
                };
                let close =
                    req.version == Some(0) || header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
                let request = Request {
                    method: req.method.unwrap_or("GET").to_string(),
                    path: req.path.unwrap_or("/").split('?').next().unwrap_or("/").to_string(),
                    close,
                    authorization: header("authorization")
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_string),
                    length,
                };
                return Ok(Some((request, used)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Ok(None),
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_someone_listens_on_is_refused_unless_upgrading() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        assert!(bind(&addr, false).is_err(), "another listener holds it");
        let ours = bind("127.0.0.1:0", false).unwrap();
        let addr = ours.local_addr().unwrap().to_string();
        assert!(bind(&addr, true).is_ok(), "an upgrade listens beside the old process");
        assert!(bind(&addr, false).is_err());
    }
}
