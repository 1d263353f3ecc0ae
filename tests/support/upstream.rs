//! A real HTTP/1.1 upstream on 127.0.0.1:0 that tests script: canned responses per path, an
//! echo of every other request, a slow chunked body, and the ability to go down and come back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

/// A scripted response.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    /// When set, sent as `ETag`, and a request with a matching `If-None-Match` gets a 304.
    pub etag: Option<String>,
    /// More response headers. A `last-modified` here makes a matching `If-Modified-Since`
    /// answer 304.
    pub headers: Vec<(String, String)>,
}

/// A request the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which connection it came on: connections are numbered from 1 as they are accepted.
    pub conn: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    canned: HashMap<String, Canned>,
    seen: Vec<Seen>,
    delay: Duration,
    in_flight: usize,
    max_in_flight: usize,
    /// Requests with this `Authorization` get their response followed, after a delay, by stray
    /// bytes: a whole second response carrying the same user's document.
    stray: Option<(String, Vec<Duration>)>,
    /// How many times stray bytes were written.
    strays_sent: usize,
    /// Served at `/whoami` (and `/api/whoami`): a counter that makes every answer new.
    whoami: u64,
    /// Connections accepted so far.
    connections: usize,
    /// TLS handshakes completed (a TLS upstream), and the name each asked for (SNI).
    handshakes: usize,
    sni: Vec<Option<String>>,
    /// Paths answered with these bytes exactly, framing and all.
    raw: HashMap<String, Vec<u8>>,
    /// Served at `/me`: per `Authorization` value, that user's document (401 for anyone else).
    users: HashMap<String, serde_json::Value>,
    /// REST collections (see [`Upstream::rest`]): per collection path, its items by id.
    collections: HashMap<String, std::collections::BTreeMap<u64, serde_json::Value>>,
}

impl State {
    /// The answer of a REST collection (see [`Upstream::rest`]) to a request for `path`.
    fn rest(&mut self, seen: &Seen, path: &str) -> Option<(u16, serde_json::Value)> {
        let (collection, id) = self.collections.keys().find_map(|c| {
            if path == c {
                Some((c.clone(), None))
            } else {
                let id = path.strip_prefix(c.as_str())?.strip_prefix('/')?.parse::<u64>().ok()?;
                Some((c.clone(), Some(id)))
            }
        })?;
        let items = self.collections.get_mut(&collection).expect("found above");
        let sent = || serde_json::from_slice::<serde_json::Value>(&seen.body).ok().filter(|v| v.is_object());
        let missing = (404, serde_json::json!({"error": "not found"}));
        Some(match (seen.method.as_str(), id) {
            ("GET", None) => (200, serde_json::Value::Array(items.values().cloned().collect())),
            ("GET", Some(id)) => items.get(&id).map_or(missing, |item| (200, item.clone())),
            ("POST", None) => {
                let Some(mut item) = sent() else { return Some((400, serde_json::json!({"error": "bad body"}))) };
                let id = items.keys().next_back().map_or(1, |last| last + 1);
                item["id"] = id.into();
                items.insert(id, item.clone());
                (201, item)
            }
            ("PATCH", Some(id)) => match (items.get_mut(&id), sent()) {
                (Some(item), Some(changes)) => {
                    for (k, v) in changes.as_object().expect("an object") {
                        item[k] = v.clone();
                    }
                    (200, item.clone())
                }
                (None, _) => missing,
                (_, None) => (400, serde_json::json!({"error": "bad body"})),
            },
            ("PUT", Some(id)) => match sent() {
                Some(mut item) if items.contains_key(&id) => {
                    item["id"] = id.into();
                    items.insert(id, item.clone());
                    (200, item)
                }
                Some(_) => missing,
                None => (400, serde_json::json!({"error": "bad body"})),
            },
            ("DELETE", Some(id)) => items.remove(&id).map_or(missing, |_| (200, serde_json::json!({}))),
            _ => (405, serde_json::json!({"error": "method not allowed"})),
        })
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Serving HTTPS: every connection is a TLS one, with this configuration.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::listen(None)
    }

    /// An HTTPS upstream, serving with `tls` (see `support::tls`).
    pub async fn start_tls(tls: rustls::ServerConfig) -> Upstream {
        Upstream::listen(Some(Arc::new(tls)))
    }

    fn listen(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = bind("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().unwrap();
        let up = Upstream { addr, state: Arc::default(), tasks: Arc::default(), tls };
        up.serve(listener);
        up
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let tasks = self.tasks.clone();
        let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = {
                    let mut s = state.lock().unwrap();
                    s.connections += 1;
                    s.connections
                };
                let conn = match &tls {
                    None => tokio::spawn(connection(stream, state.clone(), id)),
                    Some(acceptor) => {
                        let (acceptor, state) = (acceptor.clone(), state.clone());
                        tokio::spawn(async move {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            {
                                let mut s = state.lock().unwrap();
                                s.handshakes += 1;
                                s.sni.push(stream.get_ref().1.server_name().map(str::to_string));
                            }
                            connection(stream, state, id).await
                        })
                    }
                };
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.state.lock().unwrap().handshakes
    }

    /// The name (SNI) each completed handshake asked for.
    pub fn sni(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().sni.clone()
    }

    /// Answers `/me` for requests whose `Authorization` is `authorization` with `doc`.
    pub fn set_user(&self, authorization: &str, doc: &serde_json::Value) {
        self.state.lock().unwrap().users.insert(authorization.to_string(), doc.clone());
    }

    /// Answers `path` (with or without query) with this JSON from now on.
    /// Serves a REST collection at `path` holding `items` (objects; each gets an `id` from 1):
    /// `GET path` (the items), `GET path/{id}`, `POST path` (a new item, 201), `PATCH` (merges
    /// fields), `PUT` and `DELETE path/{id}`; 404 for an id it does not hold.
    pub fn rest(&self, path: &str, items: Vec<serde_json::Value>) {
        let items = items
            .into_iter()
            .enumerate()
            .map(|(i, mut item)| {
                item["id"] = (i as u64 + 1).into();
                (i as u64 + 1, item)
            })
            .collect();
        self.state.lock().unwrap().collections.insert(path.to_string(), items);
    }

    pub fn set_json(&self, path: &str, value: &serde_json::Value) {
        self.set(path, 200, "application/json", serde_json::to_vec(value).unwrap());
    }

    pub fn set(&self, path: &str, status: u16, content_type: &str, body: impl Into<Vec<u8>>) {
        let canned =
            Canned { status, content_type: content_type.into(), body: body.into(), etag: None, headers: Vec::new() };
        self.state.lock().unwrap().canned.insert(path.to_string(), canned);
    }

    /// Like [`Upstream::set_json`], with an `ETag` that makes conditional requests answer 304.
    pub fn set_json_etag(&self, path: &str, value: &serde_json::Value, etag: &str) {
        let body = serde_json::to_vec(value).unwrap();
        let canned = Canned {
            status: 200,
            content_type: "application/json".into(),
            body,
            etag: Some(etag.into()),
            headers: Vec::new(),
        };
        self.state.lock().unwrap().canned.insert(path.to_string(), canned);
    }

    /// A response with extra headers.
    pub fn set_with_headers(&self, path: &str, status: u16, body: &serde_json::Value, headers: &[(&str, &str)]) {
        let canned = Canned {
            status,
            content_type: "application/json".into(),
            body: serde_json::to_vec(body).unwrap(),
            etag: None,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        self.state.lock().unwrap().canned.insert(path.to_string(), canned);
    }

    /// Answers `path` with exactly these bytes (a whole response, or several), for responses
    /// no well-behaved server would send.
    pub fn set_raw(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.state.lock().unwrap().raw.insert(path.to_string(), bytes.into());
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Misbehaves like a broken legacy server: every response to a request whose
    /// `Authorization` is `authorization` is followed, after the next of `delays` (in turn), by
    /// stray bytes: a whole extra response with that user's `/whoami` document.
    pub fn set_stray(&self, authorization: &str, delays: &[Duration]) {
        self.state.lock().unwrap().stray = Some((authorization.to_string(), delays.to_vec()));
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// How many times stray bytes were written after a response.
    pub fn strays_sent(&self) -> usize {
        self.state.lock().unwrap().strays_sent
    }

    /// The most requests this upstream was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// Requests received for `path` (the target without query), in order.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        let state = self.state.lock().unwrap();
        state.seen.iter().filter(|s| s.target.split('?').next() == Some(path)).cloned().collect()
    }

    /// Every request received, in order.
    pub fn seen_all(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn count(&self, path: &str) -> usize {
        self.seen(path).len()
    }

    /// Closes the listener and every connection: new connections are refused.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        for _ in 0..50 {
            if let Ok(l) = try_bind(self.addr) {
                self.serve(l);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("could not listen on {} again", self.addr);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn try_bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn bind(addr: SocketAddr) -> TcpListener {
    try_bind(addr).expect("bind test upstream")
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: Arc<Mutex<State>>, id: usize) {
    let mut buf = Vec::new();
    loop {
        let Some((mut seen, used)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        seen.conn = id;
        buf.drain(..used);
        let path = seen.target.split('?').next().unwrap_or("").to_string();
        let raw = state.lock().unwrap().raw.get(&path).cloned();
        if let Some(bytes) = raw {
            state.lock().unwrap().seen.push(seen.clone());
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
            continue;
        }
        let rest = state.lock().unwrap().rest(&seen, &path);
        if let Some((status, body)) = rest {
            state.lock().unwrap().seen.push(seen.clone());
            let body = serde_json::to_vec(&body).unwrap();
            if !write_response(&mut stream, status, "application/json", &[], &body).await {
                return;
            }
            continue;
        }
        let (canned, delay) = {
            let mut s = state.lock().unwrap();
            s.seen.push(seen.clone());
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            (s.canned.get(&seen.target).or_else(|| s.canned.get(&path)).cloned(), s.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        state.lock().unwrap().in_flight -= 1;
        let ok = match (canned, path.as_str()) {
            (Some(c), _) => match &c.etag {
                Some(tag) if seen.header("if-none-match") == Some(tag.as_str()) => {
                    write_response(&mut stream, 304, &c.content_type, &[("etag", tag)], b"").await
                }
                Some(tag) => write_response(&mut stream, c.status, &c.content_type, &[("etag", tag)], &c.body).await,
                None => {
                    let extra: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let modified = c.headers.iter().find(|(k, _)| k == "last-modified").map(|(_, v)| v.as_str());
                    if modified.is_some() && seen.header("if-modified-since") == modified {
                        write_response(&mut stream, 304, &c.content_type, &extra, b"").await
                    } else {
                        write_response(&mut stream, c.status, &c.content_type, &extra, &c.body).await
                    }
                }
            },
            (None, "/slow-stream") => slow_stream(&mut stream).await,
            (None, "/me") => {
                let user = state.lock().unwrap().users.get(seen.header("authorization").unwrap_or("")).cloned();
                match user {
                    Some(doc) => {
                        let body = serde_json::to_vec(&doc).unwrap();
                        write_response(&mut stream, 200, "application/json", &[], &body).await
                    }
                    None => write_response(&mut stream, 401, "application/json", &[], b"{}").await,
                }
            }
            (None, "/shuffled") => {
                let body = shuffled(&seen.target);
                write_response(&mut stream, 200, "application/json", &[], &body).await
            }
            (None, "/whoami" | "/api/whoami") => {
                let user = seen.header("authorization").unwrap_or("").to_string();
                let (n, stray) = {
                    let mut s = state.lock().unwrap();
                    s.whoami += 1;
                    let stray = match &s.stray {
                        Some((who, delays)) if *who == user && !delays.is_empty() => {
                            Some(delays[s.whoami as usize % delays.len()])
                        }
                        _ => None,
                    };
                    (s.whoami, stray)
                };
                let body = serde_json::to_vec(&serde_json::json!({"user": user, "n": n})).unwrap();
                let ok = write_response(&mut stream, 200, "application/json", &[], &body).await;
                match stray {
                    Some(delay) if ok => {
                        tokio::time::sleep(delay).await;
                        let extra = serde_json::json!({"user": user, "n": n, "stray": true});
                        let extra = serde_json::to_vec(&extra).unwrap();
                        state.lock().unwrap().strays_sent += 1;
                        write_response(&mut stream, 200, "application/json", &[], &extra).await
                    }
                    _ => ok,
                }
            }
            (None, _) => {
                let echo = serde_json::json!({
                    "method": seen.method,
                    "target": seen.target,
                    "headers": seen.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect::<HashMap<_, _>>(),
                    "body": String::from_utf8_lossy(&seen.body),
                });
                let status = seen.header("x-want-status").and_then(|s| s.parse().ok()).unwrap_or(200);
                let body = serde_json::to_vec(&echo).unwrap();
                if seen.method == "HEAD" {
                    // The head a GET would get, with no body.
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-upstream: yes\r\n\r\n",
                        body.len()
                    );
                    stream.write_all(head.as_bytes()).await.is_ok()
                } else {
                    write_response(&mut stream, status, "application/json", &[("x-upstream", "yes")], &body).await
                }
            }
        };
        if !ok {
            return;
        }
    }
}

async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<(Seen, usize)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            let method = req.method.unwrap_or("").to_string();
            let target = req.path.unwrap_or("").to_string();
            let chunked = headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
            });
            if chunked {
                // Chunked body: size lines, data, and a last chunk of size 0 (no trailers).
                let mut body = Vec::new();
                let mut at = head;
                loop {
                    let line_end = loop {
                        if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                            break at + p;
                        }
                        if !fill(stream, buf).await {
                            return None;
                        }
                    };
                    let size_text = String::from_utf8_lossy(&buf[at..line_end]).to_string();
                    let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
                    let end = line_end + 2 + size + 2;
                    while buf.len() < end {
                        if !fill(stream, buf).await {
                            return None;
                        }
                    }
                    body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                    at = end;
                    if size == 0 {
                        return Some((Seen { method, target, headers, body, conn: 0 }, at));
                    }
                }
            }
            while buf.len() < head + len {
                if !fill(stream, buf).await {
                    return None;
                }
            }
            let body = buf[head..head + len].to_vec();
            return Some((Seen { method, target, headers, body, conn: 0 }, head + len));
        }
        if !fill(stream, buf).await {
            return None;
        }
    }
}

async fn fill<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn write_response<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    ct: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> bool {
    let mut head = format!("HTTP/1.1 {status} X\r\ncontent-type: {ct}\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await.is_ok()
}

/// `/shuffled?rows=R&keys=K`: `{"rows": [...]}` with R objects of K string fields each, in a new
/// random order on every request: the most expensive kind of document to diff.
fn shuffled(target: &str) -> Vec<u8> {
    use rand::seq::SliceRandom;
    let param = |name: &str| {
        target
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok()))
    };
    let (rows, keys): (usize, usize) = (param("rows").unwrap_or(2000), param("keys").unwrap_or(10));
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut rand::rng());
    let mut out = b"{\"rows\":[".to_vec();
    for (n, i) in order.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"id\":{i}").as_bytes());
        for k in 0..keys {
            out.extend_from_slice(format!(",\"k{k}\":\"value {i}-{k}\"").as_bytes());
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// A chunked body sent in three parts, 150 ms apart.
async fn slow_stream<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> bool {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    for part in ["part-1;", "part-2;", "part-3;"] {
        let chunk = format!("{:x}\r\n{part}\r\n", part.len());
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stream.write_all(b"0\r\n\r\n").await.is_ok()
}
