//! The bench upstream: a JSON document that changes at a set rate, served over HTTP/1.1 for
//! unpoll to poll, or published by POST to a push server (nginx + nchan) at each change.
//!
//! The document is `{"seq":N,"sent_us":T,"items":[…]}`: `seq` counts changes, `sent_us` is the
//! time (µs since the Unix epoch) the bytes left this process, so a subscriber on the same
//! machine measures delivery latency as its receive time minus `sent_us`. Each change sets one
//! item's `value` (or `--changed-fraction` of them), so a JSON Patch of a change is small while
//! the document stays `--size` bytes. Every path not named below serves the document, so
//! `/doc?t=1`, `/doc?t=2`, … are as many topics of unpoll's.
//!
//! `/stats` counts the document's GETs, and the most that arrived in one 10 ms slot since
//! the last `/stats` (how evenly a proxy spreads its polls).
//!
//! A `PATCH` of any document path is a write: the document changes at once, stamped with the
//! time the write arrived (see benches/refresh.sh). Its body, if any, is ignored.

use crate::wire::{now_us, read_head, split_url};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to serve on; the bound address is printed as the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Changes per second; 0 means the document never changes.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Approximate size of the document in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// When `sent_us` is written: into every response (`serve`), or only when the document
    /// changes (`change`; responses then carry an ETag and answer If-None-Match with 304).
    #[arg(long, value_enum, default_value = "serve")]
    stamp: Stamp,
    /// Publish each change by POST to this URL (e.g. nchan's publisher location).
    #[arg(long)]
    publish: Option<String>,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Serve HTTPS with this PEM certificate chain (and `--tls-key`), for polls over TLS
    /// (see benches/https_polls.sh).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Rows of the document at `/shuffled`, served in a new random order on every request:
    /// the most expensive document to diff (see benches/hostile.sh).
    #[arg(long, default_value_t = 2000)]
    shuffled_rows: usize,
    /// String fields of each row at `/shuffled`.
    #[arg(long, default_value_t = 100)]
    shuffled_fields: usize,
    /// Share of the items each change sets (e.g. 0.01: one item in a hundred, a different
    /// hundredth each time); 0 sets a single item.
    #[arg(long, default_value_t = 0.0)]
    changed_fraction: f64,
    /// Changes at random times: each gap between two changes drawn uniformly from half to
    /// one and a half times 1/`--rate`, so that changes fall anywhere in a poller's interval.
    #[arg(long)]
    random_gaps: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Stamp {
    Serve,
    Change,
}

/// The document between changes; `sent_us` is added when it is rendered.
struct Doc {
    seq: u64,
    changed_us: u64,
    items: String,
}

struct State {
    doc: ArcSwap<Doc>,
    stamp: Stamp,
    /// GETs of the document (not of /stats or /plain).
    gets: AtomicU64,
    not_modified: AtomicU64,
    changes: AtomicU64,
    plain: bytes::Bytes,
    /// The rows of `/shuffled`, rendered once.
    rows: Vec<String>,
    /// Items of the document, and every how many of them a change sets (see `items`).
    count: usize,
    stride: usize,
    /// The most document GETs that arrived in one 10 ms slot since `/stats` was last read:
    /// (slot, GETs in it, the most in any slot).
    peak: std::sync::Mutex<(u64, u32, u32)>,
}

impl State {
    fn count_get(&self) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let slot = now_us() / 10_000;
        let mut peak = self.peak.lock().expect("not poisoned");
        if peak.0 == slot {
            peak.1 += 1;
        } else {
            *peak = (slot, 1, peak.2);
        }
        peak.2 = peak.2.max(peak.1);
    }

    /// The document after one more change.
    fn next(&self, seq: u64) -> Doc {
        Doc { seq, changed_us: now_us(), items: items(seq, self.count, self.stride) }
    }
}

/// `{"rows":[…]}` with `rows` in a new random order.
fn shuffled(rows: &[String]) -> Vec<u8> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    rand::seq::SliceRandom::shuffle(&mut order[..], &mut rand::rng());
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 16);
    out.extend_from_slice(b"{\"rows\":[");
    for (n, i) in order.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(rows[i].as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// The items at change `seq`. With `stride` 0 one item (see [`changed_item`]) has the value
/// `seq`, the rest 0. With a stride k, item i holds the last change that set it: change s sets
/// the items with i ≡ s (mod k), a k-th of them.
fn items(seq: u64, count: usize, stride: usize) -> String {
    let changed = changed_item(seq, count);
    let mut out = String::with_capacity(count * 48 + 2);
    out.push('[');
    for i in 0..count {
        if i > 0 {
            out.push(',');
        }
        let value = match stride {
            0 if i == changed => seq,
            0 => 0,
            k => seq.saturating_sub((seq + k as u64 - (i % k) as u64) % k as u64),
        };
        out.push_str(&format!(r#"{{"id":{i},"name":"item-{i:04}","value":{value}}}"#));
    }
    out.push(']');
    out
}

/// The item change `seq` sets when one item changes: item `seq × step mod count`, with `step`
/// the first number from 0.618 × `count` on that shares no factor with `count`. Successive
/// changes hop across the whole document (the golden ratio's hops spread evenly), so a run of
/// any length diffs changes at every depth of it; with `seq mod count` every run (each starts
/// at 1) measured changes in the rows near the document's start, which cost the diff less than
/// one in the middle. `usize::MAX` (no item) when there are none.
fn changed_item(seq: u64, count: usize) -> usize {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if count == 0 {
        return usize::MAX;
    }
    let count = count as u64;
    let step =
        ((count as f64 * 0.618) as u64..).find(|s| gcd(*s, count) == 1).expect("count + 1 shares no factor with count");
    (seq % count * step % count) as usize
}

fn render(doc: &Doc, sent_us: u64) -> String {
    format!(r#"{{"seq":{},"sent_us":{},"items":{}}}"#, doc.seq, sent_us, doc.items)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // An item renders to about 44 bytes; the rest of the document to about 50.
    let count = args.size.saturating_sub(50) / 44;
    let stride = if args.changed_fraction > 0.0 { (1.0 / args.changed_fraction).round().max(1.0) as usize } else { 0 };
    let state = Arc::new(State {
        doc: ArcSwap::from_pointee(Doc { seq: 1, changed_us: now_us(), items: items(1, count, stride) }),
        stamp: args.stamp,
        gets: AtomicU64::new(0),
        not_modified: AtomicU64::new(0),
        changes: AtomicU64::new(0),
        plain: render(&Doc { seq: 0, changed_us: 0, items: items(0, count, 0) }, 0).into(),
        rows: (0..args.shuffled_rows)
            .map(|i| {
                let fields: String = (0..args.shuffled_fields).map(|k| format!(r#","f{k}":"value {i}-{k}""#)).collect();
                format!(r#"{{"id":{i}{fields}}}"#)
            })
            .collect(),
        count,
        stride,
        peak: std::sync::Mutex::new((0, 0, 0)),
    });
    let listener = TcpListener::bind(args.listen).await?;
    println!("{}", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;

    let mut publisher = args.publish.as_deref().map(Publisher::new).transpose()?;
    if args.rate > 0.0 {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            // The first document at once, so subscribers joining before the first change get it.
            if let Some(p) = publisher.as_mut() {
                p.publish(&state.doc.load_full()).await;
            }
            loop {
                if args.random_gaps {
                    let gap = rand::Rng::random_range(&mut rand::rng(), 0.5..1.5) / args.rate;
                    tokio::time::sleep(Duration::from_secs_f64(gap)).await;
                } else {
                    tick.tick().await;
                }
                let seq = state.doc.load().seq + 1;
                state.doc.store(Arc::new(state.next(seq)));
                state.changes.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = publisher.as_mut() {
                    p.publish(&state.doc.load_full()).await;
                }
            }
        });
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (state, tls) = (state.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => connection(stream, &state).await,
                Some(acceptor) => connection(acceptor.accept(stream).await?, &state).await,
            }
        });
    }
}

/// A TLS acceptor serving the chain in `cert` with the key in `key`.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves requests on one keep-alive connection. Requests have no bodies (GETs, and PATCHes
/// without one).
async fn connection<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    state: &State,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    loop {
        let Some(head) = read_head(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let close = head.contains("\r\nconnection: close");
        out.clear();
        if head.starts_with("patch ") {
            // A write: the document changes now. A body (its length) is read and dropped.
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            buf.drain(..len);
            let seq = state.doc.load().seq + 1;
            state.doc.store(Arc::new(state.next(seq)));
            state.changes.fetch_add(1, Ordering::Relaxed);
            respond(&mut out, "200 OK", None, format!(r#"{{"seq":{seq}}}"#).as_bytes());
            stream.write_all(&out).await?;
            if close {
                return Ok(());
            }
            continue;
        }
        match path.as_str() {
            "/stats" => {
                let doc = state.doc.load();
                // The peak is of the time since the last read, so a reader brackets a window.
                let peak = std::mem::take(&mut state.peak.lock().expect("not poisoned").2);
                let body = format!(
                    r#"{{"gets":{},"not_modified":{},"changes":{},"seq":{},"peak_gets_10ms":{}}}"#,
                    state.gets.load(Ordering::Relaxed),
                    state.not_modified.load(Ordering::Relaxed),
                    state.changes.load(Ordering::Relaxed),
                    doc.seq,
                    peak
                );
                respond(&mut out, "200 OK", None, body.as_bytes());
            }
            "/plain" => respond(&mut out, "200 OK", None, &state.plain),
            "/shuffled" => respond(&mut out, "200 OK", None, &shuffled(&state.rows)),
            _ => {
                state.count_get();
                let doc = state.doc.load();
                match state.stamp {
                    Stamp::Serve => respond(&mut out, "200 OK", None, render(&doc, now_us()).as_bytes()),
                    Stamp::Change => {
                        let etag = format!("\"{}\"", doc.seq);
                        if head.contains(&format!("\r\nif-none-match: {etag}")) {
                            state.not_modified.fetch_add(1, Ordering::Relaxed);
                            respond(&mut out, "304 Not Modified", Some(&etag), b"");
                        } else {
                            respond(&mut out, "200 OK", Some(&etag), render(&doc, doc.changed_us).as_bytes());
                        }
                    }
                }
            }
        }
        stream.write_all(&out).await?;
        if close {
            return Ok(());
        }
    }
}

fn respond(out: &mut Vec<u8>, status: &str, etag: Option<&str>, body: &[u8]) {
    out.extend_from_slice(format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\n").as_bytes());
    if let Some(etag) = etag {
        out.extend_from_slice(format!("etag: {etag}\r\n").as_bytes());
    }
    if !status.starts_with("304") {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// POSTs documents over one kept-alive connection, reconnecting when it breaks.
struct Publisher {
    addr: String,
    path: String,
    conn: Option<TcpStream>,
}

impl Publisher {
    fn new(url: &str) -> anyhow::Result<Publisher> {
        let (addr, path, _) = split_url(url)?;
        Ok(Publisher { addr, path, conn: None })
    }

    /// Publishes `doc`, stamped now; a failure is reported and the next publish reconnects.
    async fn publish(&mut self, doc: &Doc) {
        if let Err(e) = self.try_publish(render(doc, now_us()).as_bytes()).await {
            eprintln!("publish failed: {e}");
            self.conn = None;
        }
    }

    async fn try_publish(&mut self, body: &[u8]) -> std::io::Result<()> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.conn = Some(s);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut req = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.path,
            self.addr,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        conn.write_all(&req).await?;
        // Read the response head and its content-length body.
        let mut buf = Vec::new();
        let Some(head) = read_head(conn, &mut buf).await? else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        if !(head.starts_with("http/1.1 20")) {
            return Err(std::io::Error::other(format!("publisher answered {}", head.lines().next().unwrap_or(""))));
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut have = buf.len();
        while have < len {
            let mut chunk = [0u8; 2048];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_change_at_a_time_visits_every_item_in_a_round() {
        for count in [1, 22, 226, 7919, 7919 * 2] {
            let mut seen = vec![false; count];
            for seq in 0..count as u64 {
                seen[changed_item(seq, count)] = true;
            }
            assert!(seen.iter().all(|s| *s), "{count} items");
        }
        // Neighbouring changes land far apart, not on neighbouring rows.
        let (a, b) = (changed_item(1, 226), changed_item(2, 226));
        assert!(a.abs_diff(b) > 10, "{a} {b}");
        assert_eq!(changed_item(5, 0), usize::MAX);
    }

    #[test]
    fn the_changed_item_holds_the_change_and_the_rest_zero() {
        let doc = items(3, 22, 0);
        let changed = changed_item(3, 22);
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&doc).unwrap();
        for (i, item) in parsed.iter().enumerate() {
            assert_eq!(item["value"], if i == changed { 3 } else { 0 }, "item {i}");
        }
    }
}
