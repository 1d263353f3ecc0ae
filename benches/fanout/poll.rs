//! N clients polling a document the way a legacy client does without unpoll: each GETs the URL
//! once per interval on its own keep-alive connection (the N spread evenly over the interval),
//! and reads the whole response. Reports what that costs the upstream (requests/s, its CPU),
//! the bytes each client moves per minute, and the staleness each client sees: from the change
//! (`sent_us` of a `--stamp change` upstream) to the first response that carries it
//! (benches/headline.sh sets this against subscribers through unpoll).

use crate::procstat;
use crate::wire::{find, now_us, read_head, split_url};
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The document's URL, e.g. http://127.0.0.1:8081/doc
    #[arg(long)]
    url: String,
    /// Number of polling clients (each one connection).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seconds between one client's polls.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Seconds of polling before measuring (every client connected and polling).
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The bench upstream's /stats URL, for its GETs during the measurement.
    #[arg(long)]
    upstream_stats: Option<String>,
    /// The upstream's process ids, for its CPU during the measurement.
    #[arg(long = "upstream-pid")]
    upstream_pids: Vec<u32>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

struct Shared {
    measuring: Cell<bool>,
    requests: Cell<u64>,
    errors: Cell<u64>,
    /// Bytes written and read while measuring.
    bytes: Cell<u64>,
    /// Staleness of each change a client saw, in µs.
    stale: RefCell<Histogram<u64>>,
    /// Responses that carried a change the client had not seen.
    changes_seen: Cell<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::client::run_local(measure(args))
}

async fn measure(args: Args) -> anyhow::Result<String> {
    let (addr, path, https) = split_url(&args.url)?;
    anyhow::ensure!(!https, "the pollers speak plain HTTP");
    let request = Rc::new(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes());
    let shared = Rc::new(Shared {
        measuring: Cell::new(false),
        requests: Cell::new(0),
        errors: Cell::new(0),
        bytes: Cell::new(0),
        stale: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        changes_seen: Cell::new(0),
    });
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.warmup + args.duration);
    let period = Duration::from_secs_f64(args.interval);
    let target = crate::client::Target::plain(&addr);
    for id in 0..args.n {
        let (shared, request, target) = (shared.clone(), request.clone(), target.clone());
        let first = start + period.mul_f64(id as f64 / args.n as f64);
        tokio::task::spawn_local(async move {
            let mut conn = None;
            let mut buf = Vec::with_capacity(4096);
            let mut last_seq = 0;
            let mut due = first;
            while due < end {
                tokio::time::sleep_until(due).await;
                due += period;
                if conn.is_none() {
                    match crate::client::connect(id, &target).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            conn = Some(s);
                        }
                        Err(_) => {
                            shared.errors.set(shared.errors.get() + 1);
                            continue;
                        }
                    }
                }
                let s = conn.as_mut().expect("connected above");
                match poll(s, &request, &mut buf).await {
                    Ok((moved, seq, sent_us)) => {
                        let received = now_us();
                        if shared.measuring.get() {
                            shared.requests.set(shared.requests.get() + 1);
                            shared.bytes.set(shared.bytes.get() + moved as u64);
                        }
                        if seq > last_seq {
                            if last_seq > 0 && shared.measuring.get() {
                                shared.changes_seen.set(shared.changes_seen.get() + 1);
                                let _ = shared.stale.borrow_mut().record(received.saturating_sub(sent_us).max(1));
                            }
                            last_seq = seq;
                        }
                    }
                    Err(_) => {
                        shared.errors.set(shared.errors.get() + 1);
                        conn = None;
                        buf.clear();
                    }
                }
            }
        });
    }
    let stats_url = args.upstream_stats.as_deref();
    tokio::time::sleep_until(start + Duration::from_secs_f64(args.warmup)).await;
    let stats0 = crate::client::read_stats(stats_url).await;
    let upstream0 = procstat::cpu_seconds(&args.upstream_pids);
    let self0 = procstat::cpu_seconds(&[]);
    let t0 = Instant::now();
    shared.measuring.set(true);
    tokio::time::sleep_until(end).await;
    shared.measuring.set(false);
    let window = t0.elapsed().as_secs_f64();
    let upstream_cpu = procstat::cpu_seconds(&args.upstream_pids) - upstream0;
    let self_cpu = procstat::cpu_seconds(&[]) - self0;
    let stats1 = crate::client::read_stats(stats_url).await;
    let gets = match (&stats0, &stats1) {
        (Some(a), Some(b)) => b["gets"].as_u64().zip(a["gets"].as_u64()).map(|(b, a)| b - a),
        _ => None,
    };
    let hist = shared.stale.borrow();
    let q = |p: f64| if hist.is_empty() { None } else { Some(hist.value_at_quantile(p) as f64 / 1000.0) };
    let report = serde_json::json!({
        "clients": args.n,
        "interval_s": args.interval,
        "window_s": window,
        "requests": shared.requests.get(),
        "requests_per_s": shared.requests.get() as f64 / window,
        "errors": shared.errors.get(),
        "changes_seen": shared.changes_seen.get(),
        "staleness_ms": {
            "p50": q(0.5), "p99": q(0.99),
            "max": if hist.is_empty() { None } else { Some(hist.max() as f64 / 1000.0) },
        },
        "bytes_per_client_per_min": shared.bytes.get() as f64 / args.n.max(1) as f64 * 60.0 / window,
        "upstream_gets_per_s": gets.map(|g| g as f64 / window),
        "upstream_cpu_share": if args.upstream_pids.is_empty() { None } else { Some(upstream_cpu / window) },
        "load_tool_cpu_share": self_cpu / window,
    });
    if args.json {
        return Ok(report.to_string());
    }
    let f = |v: &serde_json::Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    };
    let r = &report;
    Ok(format!(
        "{} clients polling every {} s, window {} s: {} requests/s, errors {}\n\
         staleness ms (change to client): p50 {}  p99 {}  max {} ({} changes seen)\n\
         bytes per client per minute: {}\n\
         upstream: {} GETs/s, {} of a core; load tool CPU: {} of a core",
        r["clients"],
        r["interval_s"],
        f(&r["window_s"], 1),
        f(&r["requests_per_s"], 1),
        r["errors"],
        f(&r["staleness_ms"]["p50"], 1),
        f(&r["staleness_ms"]["p99"], 1),
        f(&r["staleness_ms"]["max"], 1),
        r["changes_seen"],
        f(&r["bytes_per_client_per_min"], 0),
        f(&r["upstream_gets_per_s"], 1),
        f(&r["upstream_cpu_share"], 3),
        f(&r["load_tool_cpu_share"], 3),
    ))
}

/// One GET on `s`: sends `request`, reads the response head and its `content-length` body.
/// Returns the bytes moved both ways and the document's `seq` and `sent_us`.
async fn poll(s: &mut tokio::net::TcpStream, request: &[u8], buf: &mut Vec<u8>) -> std::io::Result<(usize, u64, u64)> {
    s.write_all(request).await?;
    let Some(head) = read_head(s, buf).await? else {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    };
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    while buf.len() < len {
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    let number = |key: &[u8]| -> u64 {
        find(&body, key)
            .map(|i| &body[i + key.len()..])
            .map(|rest| {
                rest.iter()
                    .skip_while(|b| !b.is_ascii_digit())
                    .take_while(|b| b.is_ascii_digit())
                    .fold(0, |n, b| n * 10 + u64::from(b - b'0'))
            })
            .unwrap_or(0)
    };
    let moved = request.len() + head.len() + len;
    Ok((moved, number(b"\"seq\""), number(b"\"sent_us\"")))
}
