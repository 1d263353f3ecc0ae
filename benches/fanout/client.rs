//! The subscribers: N raw-TCP SSE or WebSocket clients on one thread, each reading every
//! event, checking its order and recording its latency.
//!
//! The clients are deliberately lean (no per-message JSON parse: the two numbers a delivery
//! needs are found by scanning) so that the load tool's own CPU stays small next to the
//! server's on a shared machine; the report prints it. `https://` URLs are read over TLS
//! (`--ca`), and `--h2-streams K` reads SSE over HTTP/2, K subscriptions per connection.

use crate::procstat;
use crate::wire::{find, now_us, read_head, split_url};
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The stream's URL, e.g. http://127.0.0.1:8080/doc
    #[arg(long)]
    url: String,
    /// Number of subscribers (at most about 18,000: one process may open 20,000 files).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, value_enum, default_value = "sse")]
    protocol: Protocol,
    /// The server: `unpoll` (order is checked by the version in event ids) or `nchan` (by
    /// the document's `seq`, since every change is published).
    #[arg(long, value_enum, default_value = "unpoll")]
    server: Server,
    /// unpoll's format: json-patch, merge-patch or snapshot (query parameter or subprotocol).
    #[arg(long)]
    format: Option<String>,
    /// Seconds after everyone has subscribed before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The server's poll interval (or the publish period), in seconds: GETs are reported per interval.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// The bench upstream's /stats URL, to count its GETs during the measurement.
    #[arg(long)]
    upstream_stats: Option<String>,
    /// The server's process ids, for CPU (/proc/PID/task/*/schedstat) and memory (Pss).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Subscriptions in progress at once while connecting.
    #[arg(long, default_value_t = 1000)]
    connect_concurrency: usize,
    /// Seconds to wait for all N to be subscribed.
    #[arg(long, default_value_t = 30.0)]
    subscribe_timeout: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// The PEM CA file to trust for an `https://` URL (the name asked for is `--sni`).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// The name to ask for in the TLS handshake.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// SSE over HTTP/2: this many subscriptions per connection (over TLS by ALPN, or with prior
    /// knowledge on an `http://` URL).
    #[arg(long)]
    h2_streams: Option<usize>,
    /// The `Host` header to send (by default the URL's address), as a load balancer in front
    /// of several unpoll nodes passes the public name to each: a topic is the same on every
    /// node only with the same `Host`.
    #[arg(long)]
    host: Option<String>,
    /// Spread the subscribers over this many topics: subscriber i adds the query parameter
    /// `t=i % topics` (unpoll makes a topic of each query string).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// The upstream's process ids, for its CPU during the measurement.
    #[arg(long = "upstream-pid")]
    upstream_pids: Vec<u32>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Protocol {
    Sse,
    Ws,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Server {
    Unpoll,
    Nchan,
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Subscribing,
    Warmup,
    Measuring,
    Draining,
}

/// Everything the subscribers share (they all run on this one thread).
pub(crate) struct Shared {
    args: Args,
    phase: Cell<Phase>,
    started: Instant,
    subscribed: Cell<usize>,
    all_subscribed: Cell<Option<Duration>>,
    /// Each subscriber's last sequence number (0: nothing yet).
    last: RefCell<Vec<u64>>,
    alive: RefCell<Vec<bool>>,
    /// The newest sequence number seen on each topic.
    newest: RefCell<Vec<u64>>,
    failures: RefCell<BTreeMap<String, usize>>,
    ended: Cell<usize>,
    hist: RefCell<Histogram<u64>>,
    deliveries: Cell<u64>,
    bytes: Cell<u64>,
    /// Bytes read from the server while measuring: events, their framing and heartbeats.
    wire_bytes: Cell<u64>,
    lost: Cell<u64>,
    out_of_order: Cell<u64>,
    unstamped: Cell<u64>,
    error_events: Cell<u64>,
    gate: tokio::sync::Semaphore,
}

/// Counts how subscriber `id` ended.
fn ended(id: usize, result: Result<(), String>, shared: &Shared) {
    shared.alive.borrow_mut()[id] = false;
    if shared.last.borrow()[id] == 0 {
        // Never subscribed: a failure to connect or an answer other than a stream.
        let reason = result.err().unwrap_or_else(|| "closed before the first event".into());
        *shared.failures.borrow_mut().entry(reason).or_default() += 1;
    } else {
        shared.ended.set(shared.ended.get() + 1);
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    run_local(subscribe(args))
}

/// Runs `measure` on one thread (its clients are local tasks) and prints its report.
pub(crate) fn run_local(measure: impl std::future::Future<Output = anyhow::Result<String>>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, measure)?;
    println!("{report}");
    Ok(())
}

async fn subscribe(args: Args) -> anyhow::Result<String> {
    let target = Target::parse(&args)?;
    let n = args.n;
    let shared = Rc::new(Shared {
        phase: Cell::new(Phase::Subscribing),
        started: Instant::now(),
        subscribed: Cell::new(0),
        all_subscribed: Cell::new(None),
        last: RefCell::new(vec![0; n]),
        alive: RefCell::new(vec![true; n]),
        newest: RefCell::new(vec![0; args.topics.max(1)]),
        failures: RefCell::new(BTreeMap::new()),
        ended: Cell::new(0),
        hist: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        deliveries: Cell::new(0),
        bytes: Cell::new(0),
        wire_bytes: Cell::new(0),
        lost: Cell::new(0),
        out_of_order: Cell::new(0),
        unstamped: Cell::new(0),
        error_events: Cell::new(0),
        gate: tokio::sync::Semaphore::new(args.connect_concurrency.max(1)),
        args: args.clone(),
    });
    let base_mem = procstat::pss_kib(&args.pids);
    let base_rss = procstat::rss_kib(&args.pids);
    let base_cpu = procstat::cpu_seconds(&args.pids);
    let topics = args.topics.max(1);
    let requests: Vec<Rc<Vec<u8>>> = (0..topics).map(|t| Rc::new(target.request(&args, t))).collect();
    let started = Instant::now();
    if let Some(k) = args.h2_streams {
        for first in (0..n).step_by(k.max(1)) {
            let ids: Vec<usize> = (first..(first + k).min(n)).collect();
            let (shared, target) = (shared.clone(), target.clone());
            tokio::task::spawn_local(async move {
                let permit = shared.gate.acquire().await.expect("never closed");
                let result = h2_group(&ids, &target, &shared, permit).await;
                for id in ids {
                    ended(id, result.clone(), &shared);
                }
            });
        }
    }
    for id in (0..n).filter(|_| args.h2_streams.is_none()) {
        let shared = shared.clone();
        let target = target.clone();
        let request = requests[id % topics].clone();
        tokio::task::spawn_local(async move {
            let permit = shared.gate.acquire().await.expect("never closed");
            let result = subscriber(id, &target, &request, &shared, permit).await;
            ended(id, result, &shared);
        });
    }
    let deadline = started + Duration::from_secs_f64(args.subscribe_timeout);
    while shared.subscribed.get() + shared.failures.borrow().values().sum::<usize>() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let subscribe_time = shared.all_subscribed.get();
    let subscribe_cpu = procstat::cpu_seconds(&args.pids) - base_cpu;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let subscribed_mem = procstat::pss_kib(&args.pids);
    let subscribed_rss = procstat::rss_kib(&args.pids);

    shared.phase.set(Phase::Warmup);
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;

    let stats0 = upstream_stats(&args).await;
    let cpu0 = procstat::cpu_seconds(&args.pids);
    let upstream_cpu0 = procstat::cpu_seconds(&args.upstream_pids);
    let self0 = procstat::cpu_seconds(&[]);
    let t0 = Instant::now();
    shared.phase.set(Phase::Measuring);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    shared.phase.set(Phase::Draining);
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = procstat::cpu_seconds(&args.pids);
    let self1 = procstat::cpu_seconds(&[]);
    let upstream_cpu = procstat::cpu_seconds(&args.upstream_pids) - upstream_cpu0;
    let stats1 = upstream_stats(&args).await;
    let peak_mem = procstat::pss_kib(&args.pids);

    // Let the last event reach everyone, then count who is behind.
    let newest = shared.newest.borrow().clone();
    let drain_until = Instant::now() + Duration::from_secs_f64(args.interval * 2.0 + 1.0);
    let behind = loop {
        let behind = {
            let (last, alive) = (shared.last.borrow(), shared.alive.borrow());
            (0..n).filter(|&i| alive[i] && last[i] > 0 && last[i] < newest[i % topics]).count()
        };
        if behind == 0 || Instant::now() >= drain_until {
            break behind;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let hist = shared.hist.borrow();
    let deliveries = shared.deliveries.get();
    let cpu = cpu1 - cpu0;
    let gets = match (&stats0, &stats1) {
        (Some(a), Some(b)) => b["gets"].as_u64().zip(a["gets"].as_u64()).map(|(b, a)| b - a),
        _ => None,
    };
    let subscribed = shared.subscribed.get();
    let some_if = |ok: bool, v: f64| if ok { Some(v) } else { None };
    let intervals = window / args.interval;
    let per_sub_kib = |mem: Option<f64>, base: Option<f64>| match (mem, base) {
        (Some(m), Some(b)) if shared.subscribed.get() > 0 => Some((m - b) / shared.subscribed.get() as f64),
        _ => None,
    };
    let q = |p: f64| if hist.is_empty() { None } else { Some(hist.value_at_quantile(p) as f64 / 1000.0) };
    let report = serde_json::json!({
        "server": format!("{:?}", args.server).to_lowercase(),
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "format": args.format,
        "subscribers": n,
        "subscribed": shared.subscribed.get(),
        "failed": shared.failures.borrow().clone(),
        "subscribe_s": subscribe_time.map(|d| d.as_secs_f64()),
        "subscribe_cpu_s": subscribe_cpu,
        "window_s": window,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries as f64 / window,
        "delivered_bytes": shared.bytes.get(),
        "latency_ms": {
            "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
            "max": if hist.is_empty() { None } else { Some(hist.max() as f64 / 1000.0) },
            "count": hist.len(),
        },
        "lost": shared.lost.get(),
        "out_of_order": shared.out_of_order.get(),
        "unstamped": shared.unstamped.get(),
        "error_events": shared.error_events.get(),
        "ended_early": shared.ended.get(),
        "behind_at_end": behind,
        "topics": topics,
        "newest_seq": newest.iter().max(),
        "upstream_gets": gets,
        "upstream_gets_per_interval": gets.map(|g| g as f64 / intervals),
        "upstream_gets_per_s": gets.map(|g| g as f64 / window),
        "upstream_peak_gets_10ms": stats1.as_ref().and_then(|s| s["peak_gets_10ms"].as_u64()),
        "upstream_cpu_share": some_if(!args.upstream_pids.is_empty(), upstream_cpu / window),
        "server_cpu_us_per_poll": match gets {
            Some(g) if g > 0 && !args.pids.is_empty() => Some(cpu * 1e6 / g as f64),
            _ => None,
        },
        "wire_bytes_per_subscriber_per_min": some_if(subscribed > 0, shared.wire_bytes.get() as f64 / subscribed as f64 * 60.0 / window),
        "server_mem_kib_per_topic": match (subscribed_mem, base_mem) {
            (Some(m), Some(b)) => Some((m - b) / topics as f64),
            _ => None,
        },
        "server_cpu_s": if args.pids.is_empty() { None } else { Some(cpu) },
        "server_cpu_us_per_delivery": if args.pids.is_empty() || deliveries == 0 { None } else { Some(cpu * 1e6 / deliveries as f64) },
        "server_cpu_share": if args.pids.is_empty() { None } else { Some(cpu / window) },
        "server_mem_base_kib": base_mem,
        "server_mem_kib_per_subscriber": per_sub_kib(subscribed_mem, base_mem),
        "server_mem_kib_per_subscriber_end": per_sub_kib(peak_mem, base_mem),
        "server_rss_kib_per_subscriber": per_sub_kib(subscribed_rss, base_rss),
        "load_tool_cpu_s": self1 - self0,
        "load_tool_cpu_share": (self1 - self0) / window,
    });
    if args.json {
        return Ok(report.to_string());
    }
    Ok(human(&report))
}

fn human(r: &serde_json::Value) -> String {
    let f = |v: &serde_json::Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    };
    let l = &r["latency_ms"];
    format!(
        "{} {} {}: {} of {} subscribed in {} s (failed: {})\n\
         window {} s: {} deliveries ({}/s), lost {}, out of order {}, behind at end {}, ended early {}, error events {}\n\
         latency ms: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n\
         upstream GETs per interval: {} ({}/s over {} topics, at most {} in 10 ms; upstream CPU {} of a core)\n\
         server CPU: {} µs per delivery ({} of a core); memory (Pss): {} KiB per subscriber after subscribing, {} at the end (RSS: {})\n\
         server CPU per upstream poll (with its deliveries): {} µs; memory per topic (with its subscribers): {} KiB\n\
         bytes read per subscriber per minute: {}\n\
         load tool CPU: {} of a core",
        r["server"].as_str().unwrap_or(""),
        r["protocol"].as_str().unwrap_or(""),
        r["format"].as_str().unwrap_or("default format"),
        r["subscribed"],
        r["subscribers"],
        f(&r["subscribe_s"], 3),
        r["failed"],
        f(&r["window_s"], 1),
        r["deliveries"],
        f(&r["deliveries_per_s"], 0),
        r["lost"],
        r["out_of_order"],
        r["behind_at_end"],
        r["ended_early"],
        r["error_events"],
        f(&l["p50"], 2),
        f(&l["p90"], 2),
        f(&l["p99"], 2),
        f(&l["p999"], 2),
        f(&l["max"], 2),
        f(&r["upstream_gets_per_interval"], 2),
        f(&r["upstream_gets_per_s"], 1),
        r["topics"],
        r["upstream_peak_gets_10ms"],
        f(&r["upstream_cpu_share"], 3),
        f(&r["server_cpu_us_per_delivery"], 2),
        f(&r["server_cpu_share"], 3),
        f(&r["server_mem_kib_per_subscriber"], 2),
        f(&r["server_mem_kib_per_subscriber_end"], 2),
        f(&r["server_rss_kib_per_subscriber"], 2),
        f(&r["server_cpu_us_per_poll"], 1),
        f(&r["server_mem_kib_per_topic"], 1),
        f(&r["wire_bytes_per_subscriber_per_min"], 0),
        f(&r["load_tool_cpu_share"], 3),
    )
}

/// The bench upstream's /stats (reading it starts a new window for its peak).
async fn upstream_stats(args: &Args) -> Option<serde_json::Value> {
    read_stats(args.upstream_stats.as_deref()).await
}

/// The JSON at a bench upstream's /stats `url`.
pub(crate) async fn read_stats(url: Option<&str>) -> Option<serde_json::Value> {
    let url = url?;
    let (addr, path, _) = split_url(url).ok()?;
    let mut s = TcpStream::connect(&addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.ok()?;
    let text = String::from_utf8_lossy(&body);
    serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()
}

#[derive(Clone)]
pub(crate) struct Target {
    pub addr: String,
    pub path: String,
    protocol: Protocol,
    pub server: Server,
    /// For an `https://` URL: the TLS configuration and the name to ask for.
    pub tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
    /// The `Host` (HTTP/1) or `:authority` (HTTP/2) to send.
    pub host: String,
}

impl Target {
    /// A plain-HTTP server at `addr` (for `connect`).
    pub(crate) fn plain(addr: &str) -> Target {
        let (addr, path) = (addr.to_string(), "/".to_string());
        Target { host: addr.clone(), addr, path, protocol: Protocol::Sse, server: Server::Unpoll, tls: None }
    }

    fn parse(args: &Args) -> anyhow::Result<Target> {
        let (addr, mut path, https) = split_url(&args.url)?;
        if let (Some(format), Protocol::Sse) = (&args.format, args.protocol) {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str("unpoll_format=");
            path.push_str(format);
        }
        let tls = match (https, &args.ca) {
            (false, _) => None,
            (true, Some(ca)) => {
                let alpn: &[&[u8]] = if args.h2_streams.is_some() { &[b"h2"] } else { &[b"http/1.1"] };
                Some((crate::secure::client_config(ca, alpn)?, args.sni.clone()))
            }
            (true, None) => anyhow::bail!("an https:// URL needs --ca"),
        };
        let host = args.host.clone().unwrap_or_else(|| addr.clone());
        Ok(Target { addr, path, protocol: args.protocol, server: args.server, tls, host })
    }

    /// The path of a subscriber of `topic` (with `--topics`, its `t` query parameter).
    fn path(&self, args: &Args, topic: usize) -> String {
        match args.topics {
            0 | 1 => self.path.clone(),
            _ => format!("{}{}t={topic}", self.path, if self.path.contains('?') { '&' } else { '?' }),
        }
    }

    fn request(&self, args: &Args, topic: usize) -> Vec<u8> {
        let host = &self.host;
        let mut req = format!("GET {} HTTP/1.1\r\nhost: {host}\r\n", self.path(args, topic));
        match self.protocol {
            Protocol::Sse => req.push_str("accept: text/event-stream\r\n"),
            Protocol::Ws => {
                req.push_str("upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n");
                req.push_str("sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
                if let Some(format) = &args.format {
                    req.push_str(&format!("sec-websocket-protocol: unpoll.{format}\r\n"));
                }
            }
        }
        req.push_str("\r\n");
        req.into_bytes()
    }
}

/// One subscriber from connect to the end of its stream. Errors are short reasons, counted
/// by kind in the report.
async fn subscriber(
    id: usize,
    target: &Target,
    request: &[u8],
    shared: &Shared,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Result<(), String> {
    let mut permit = Some(permit);
    let tcp = connect(id, target).await.map_err(|e| format!("connect: {}", e.kind()))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut s = crate::secure::maybe_tls(tcp, target.tls.as_ref()).await?;
    s.write_all(request).await.map_err(|e| format!("write: {}", e.kind()))?;
    let mut buf = Vec::with_capacity(2048);
    let head = match read_head(&mut s, &mut buf).await {
        Ok(Some(head)) => head,
        Ok(None) => return Err("closed before the response head".into()),
        Err(e) => return Err(format!("read: {}", e.kind())),
    };
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    let expected = if target.protocol == Protocol::Ws { "101" } else { "200" };
    if status != expected {
        return Err(format!("status {status}"));
    }
    let chunked = head.contains("transfer-encoding: chunked");
    let mut decoded = Vec::with_capacity(2048);
    let mut chunk_state = Chunked::Size;
    let mut frag: Vec<u8> = Vec::new();
    loop {
        let before = shared.last.borrow()[id];
        match target.protocol {
            Protocol::Sse => {
                let data = if chunked {
                    dechunk(&mut buf, &mut decoded, &mut chunk_state)?;
                    &mut decoded
                } else {
                    &mut buf
                };
                sse_events(id, data, target.server, shared);
            }
            Protocol::Ws => {
                if ws_frames(id, &mut buf, &mut frag, target.server, shared, &mut s).await? {
                    return Ok(());
                }
            }
        }
        if before == 0 && shared.last.borrow()[id] > 0 {
            permit.take();
        }
        let read = read_more(&mut s, &mut buf).await?;
        if read == 0 {
            return Ok(());
        }
        if shared.phase.get() == Phase::Measuring {
            shared.wire_bytes.set(shared.wire_bytes.get() + read as u64);
        }
    }
}

/// Connects from one of several loopback source addresses (127.0.0.1 to 127.0.0.4 for a
/// loopback server), so that N connections don't crowd one address's ephemeral ports: with most
/// of them taken, each connect() searches longer for a free one, which slowed subscribing
/// 18,000 clients several times over.
/// Subscribers `ids`, each an SSE stream of one HTTP/2 connection (over TLS by ALPN `h2`, or
/// with prior knowledge on a plain target). `permit` is given back once every stream is open.
async fn h2_group(
    ids: &[usize],
    target: &Target,
    shared: &Shared,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Result<(), String> {
    let tcp = connect(ids[0], target).await.map_err(|e| format!("connect: {}", e.kind()))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let conn = crate::secure::maybe_tls(tcp, target.tls.as_ref()).await?;
    let (send, connection) = h2::client::handshake(conn).await.map_err(|e| format!("h2: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    let scheme = if target.tls.is_some() { "https" } else { "http" };
    let mut bodies = Vec::with_capacity(ids.len());
    for &id in ids {
        let path = target.path(&shared.args, id % shared.args.topics.max(1));
        let uri = format!("{scheme}://{}{path}", target.host);
        let request =
            http::Request::get(&uri).header("accept", "text/event-stream").body(()).map_err(|e| e.to_string())?;
        let mut ready = send.clone().ready().await.map_err(|e| format!("h2: {e}"))?;
        let (response, _) = ready.send_request(request, true).map_err(|e| format!("h2: {e}"))?;
        bodies.push(response);
    }
    let mut streams = Vec::with_capacity(ids.len());
    for response in bodies {
        let response = response.await.map_err(|e| format!("h2: {e}"))?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status().as_u16()));
        }
        streams.push(response.into_body());
    }
    drop(permit);
    // Each stream read by a task of its own, as a browser's EventSource would.
    let mut tasks = Vec::with_capacity(ids.len());
    for (&id, mut body) in ids.iter().zip(streams) {
        let server = target.server;
        tasks.push(async move {
            let mut data: Vec<u8> = Vec::with_capacity(2048);
            while let Some(chunk) = body.data().await {
                let chunk: bytes::Bytes = chunk.map_err(|e| format!("h2: {e}"))?;
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
                sse_events(id, &mut data, server, shared);
            }
            Ok::<(), String>(())
        });
    }
    let results = futures_util::future::join_all(tasks).await;
    results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

pub(crate) async fn connect(id: usize, target: &Target) -> std::io::Result<TcpStream> {
    let server: std::net::SocketAddr = match target.addr.parse() {
        Ok(addr) => addr,
        Err(_) => return TcpStream::connect(&target.addr).await,
    };
    match server.ip() {
        std::net::IpAddr::V4(ip) if ip.is_loopback() => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1 + (id % 4) as u8], 0)))?;
            socket.connect(server).await
        }
        _ => TcpStream::connect(server).await,
    }
}

async fn read_more<S: tokio::io::AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<usize, String> {
    if buf.capacity() - buf.len() < 1024 {
        // Doubling, so that a megabyte-sized event is read in a few large reads.
        buf.reserve(buf.len().max(4096));
    }
    s.read_buf(buf).await.map_err(|e| format!("read: {}", e.kind()))
}

enum Chunked {
    Size,
    Data(usize),
    DataEnd,
    Done,
}

/// Moves the payload of complete chunk pieces from `raw` to `out`.
fn dechunk(raw: &mut Vec<u8>, out: &mut Vec<u8>, state: &mut Chunked) -> Result<(), String> {
    let mut pos = 0;
    loop {
        match *state {
            Chunked::Size => {
                let Some(i) = find(&raw[pos..], b"\r\n") else { break };
                let line = std::str::from_utf8(&raw[pos..pos + i]).map_err(|_| "bad chunk size")?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| format!("bad chunk size {line:?}"))?;
                pos += i + 2;
                *state = if size == 0 { Chunked::Done } else { Chunked::Data(size) };
            }
            Chunked::Data(left) => {
                let take = left.min(raw.len() - pos);
                if take == 0 {
                    break;
                }
                out.extend_from_slice(&raw[pos..pos + take]);
                pos += take;
                *state = if take == left { Chunked::DataEnd } else { Chunked::Data(left - take) };
            }
            Chunked::DataEnd => {
                if raw.len() - pos < 2 {
                    break;
                }
                pos += 2;
                *state = Chunked::Size;
            }
            Chunked::Done => break,
        }
    }
    raw.drain(..pos);
    Ok(())
}

/// Handles every complete SSE event in `data` (events end with a blank line).
pub(crate) fn sse_events(id: usize, data: &mut Vec<u8>, server: Server, shared: &Shared) {
    let mut pos = 0;
    while let Some(i) = find(&data[pos..], b"\n\n") {
        let block = &data[pos..pos + i];
        pos += i + 2;
        let (mut event_id, mut name, mut payload): (&[u8], &[u8], &[u8]) = (b"", b"message", b"");
        for line in block.split(|&b| b == b'\n') {
            if let Some(v) = line.strip_prefix(b"id: ") {
                event_id = v;
            } else if let Some(v) = line.strip_prefix(b"event: ") {
                name = v;
            } else if let Some(v) = line.strip_prefix(b"data: ") {
                payload = v;
            }
        }
        if payload.is_empty() && event_id.is_empty() {
            continue; // a comment (keep-alive) or the retry preamble
        }
        if name == b"error" {
            shared.error_events.set(shared.error_events.get() + 1);
            continue;
        }
        let seq = match server {
            Server::Unpoll => version(event_id),
            Server::Nchan => scan_number(payload, b"seq\""),
        };
        on_event(id, seq, payload, block.len(), shared);
    }
    data.drain(..pos);
}

/// Handles every complete WebSocket frame in `buf`; answers pings. True when the server closed.
async fn ws_frames(
    id: usize,
    buf: &mut Vec<u8>,
    frag: &mut Vec<u8>,
    server: Server,
    shared: &Shared,
    s: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<bool, String> {
    let mut pos = 0;
    let mut closed = false;
    let mut replies = Vec::new();
    while buf.len() - pos >= 2 {
        let (b0, b1) = (buf[pos], buf[pos + 1]);
        let (mut len, mut hdr) = ((b1 & 0x7f) as usize, 2);
        if len == 126 {
            if buf.len() - pos < 4 {
                break;
            }
            len = u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize;
            hdr = 4;
        } else if len == 127 {
            if buf.len() - pos < 10 {
                break;
            }
            len = u64::from_be_bytes(buf[pos + 2..pos + 10].try_into().expect("8 bytes")) as usize;
            hdr = 10;
        }
        if b1 & 0x80 != 0 {
            return Err("masked frame from the server".into());
        }
        if buf.len() - pos < hdr + len {
            break;
        }
        let payload = &buf[pos + hdr..pos + hdr + len];
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        match opcode {
            0x0..=0x2 => {
                let message: &[u8] = if opcode == 0 || !fin {
                    frag.extend_from_slice(payload);
                    if !fin {
                        pos += hdr + len;
                        continue;
                    }
                    frag
                } else {
                    payload
                };
                ws_message(id, message, server, shared);
                frag.clear();
            }
            0x8 => closed = true,
            0x9 => {
                // Pong with the same payload, masked as a client must.
                let mask = [0x5a, 0xa5, 0x3c, 0xc3];
                replies.extend_from_slice(&[0x8a, 0x80 | len as u8]);
                replies.extend_from_slice(&mask);
                replies.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            }
            _ => {}
        }
        pos += hdr + len;
    }
    buf.drain(..pos);
    if !replies.is_empty() {
        s.write_all(&replies).await.map_err(|e| format!("write: {}", e.kind()))?;
    }
    Ok(closed)
}

fn ws_message(id: usize, message: &[u8], server: Server, shared: &Shared) {
    match server {
        Server::Unpoll => {
            if message.starts_with(br#"{"event":"error""#) {
                shared.error_events.set(shared.error_events.get() + 1);
                return;
            }
            let event_id = find(message, br#""id":""#).map(|i| {
                let rest = &message[i + 6..];
                &rest[..rest.iter().position(|&b| b == b'"').unwrap_or(0)]
            });
            on_event(id, event_id.and_then(version), message, message.len(), shared);
        }
        Server::Nchan => on_event(id, scan_number(message, b"seq\""), message, message.len(), shared),
    }
}

/// The version in an unpoll event id `<epoch>-<version>`.
fn version(event_id: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(event_id).ok()?;
    text.rsplit('-').next()?.parse().ok()
}

/// The first run of digits after `key`.
fn scan_number(hay: &[u8], key: &[u8]) -> Option<u64> {
    let rest = &hay[find(hay, key)? + key.len()..];
    let start = rest.iter().position(u8::is_ascii_digit)?;
    let digits = rest[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[start..start + digits]).ok()?.parse().ok()
}

/// One event for subscriber `id`: its first is the snapshot it subscribed with; the rest are
/// deliveries, checked for order and timed while measuring.
fn on_event(id: usize, seq: Option<u64>, payload: &[u8], size: usize, shared: &Shared) {
    let received = now_us();
    let Some(seq) = seq else {
        shared.unstamped.set(shared.unstamped.get() + 1);
        return;
    };
    let mut last = shared.last.borrow_mut();
    let prev = last[id];
    let topic = id % shared.args.topics.max(1);
    let mut newest = shared.newest.borrow_mut();
    if seq > newest[topic] {
        newest[topic] = seq;
    }
    drop(newest);
    if prev == 0 {
        last[id] = seq;
        let count = shared.subscribed.get() + 1;
        shared.subscribed.set(count);
        if count == shared.args.n {
            shared.all_subscribed.set(Some(shared.started.elapsed()));
        }
        return;
    }
    let measuring = shared.phase.get() == Phase::Measuring;
    if seq <= prev {
        if measuring {
            shared.out_of_order.set(shared.out_of_order.get() + 1);
        }
        return;
    }
    last[id] = seq;
    if !measuring {
        return;
    }
    shared.lost.set(shared.lost.get() + (seq - prev - 1));
    shared.deliveries.set(shared.deliveries.get() + 1);
    shared.bytes.set(shared.bytes.get() + size as u64);
    match scan_number(payload, b"sent_us\"") {
        Some(sent) => {
            let _ = shared.hist.borrow_mut().record(received.saturating_sub(sent).max(1));
        }
        None => shared.unstamped.set(shared.unstamped.get() + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_reads() {
        let mut state = Chunked::Size;
        let mut out = Vec::new();
        let mut raw = b"5\r\nhel".to_vec();
        dechunk(&mut raw, &mut out, &mut state).unwrap();
        raw.extend_from_slice(b"lo\r\n3\r\n wo\r\n0\r\n\r\n");
        dechunk(&mut raw, &mut out, &mut state).unwrap();
        assert_eq!(out, b"hello wo");
        assert!(matches!(state, Chunked::Done));
    }

    #[test]
    fn scans_numbers_in_every_format() {
        let patch = br#"[{"op":"replace","path":"/seq","value":12},{"op":"replace","path":"/sent_us","value":99}]"#;
        assert_eq!(scan_number(patch, b"seq\""), Some(12));
        assert_eq!(scan_number(patch, b"sent_us\""), Some(99));
        let doc = br#"{"seq":7,"sent_us":1234,"items":[]}"#;
        assert_eq!(scan_number(doc, b"sent_us\""), Some(1234));
        assert_eq!(version(b"9f2c-17"), Some(17));
    }
}
