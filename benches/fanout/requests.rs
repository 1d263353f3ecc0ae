//! Plain requests at a fixed rate, for the latency a proxy gives requests while something else
//! loads it (benches/hostile.sh). Each request's latency runs from when it was due, not from
//! when it was sent, so a stalled proxy cannot hide behind requests it delayed.

use crate::wire::{read_head, split_url};
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    url: String,
    /// Requests per second, over all connections.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Keep-alive connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(measure(args))
}

async fn measure(args: Args) -> anyhow::Result<()> {
    let (host, path, _) = split_url(&args.url)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let errors = Arc::new(Mutex::new(0u64));
    let period = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (host, request, hist, errors) = (host.clone(), request.clone(), hist.clone(), errors.clone());
        // Connections take turns, so requests are spread evenly over the period.
        let first = start + period.mul_f64(c as f64 / args.connections as f64);
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<TcpStream> = None;
            let mut buf = Vec::new();
            let mut due = first;
            while due < end {
                tokio::time::sleep_until(due).await;
                match get(&mut conn, &host, &request, &mut buf).await {
                    Ok(()) => {
                        let us = due.elapsed().as_micros().max(1) as u64;
                        hist.lock().unwrap().record(us.min(600_000_000)).ok();
                    }
                    Err(_) => {
                        *errors.lock().unwrap() += 1;
                        conn = None;
                    }
                }
                due += period;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let h = hist.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let errors = *errors.lock().unwrap();
    if args.json {
        println!(
            r#"{{"requests":{},"errors":{errors},"p50_ms":{:.3},"p90_ms":{:.3},"p99_ms":{:.3},"max_ms":{:.3}}}"#,
            h.len(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            h.max() as f64 / 1000.0
        );
    } else {
        println!(
            "{} requests, {errors} errors: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            h.len(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            h.max() as f64 / 1000.0
        );
    }
    Ok(())
}

/// One GET on the kept-alive connection (made when there is none), read to the end of its body.
async fn get(conn: &mut Option<TcpStream>, host: &str, request: &[u8], buf: &mut Vec<u8>) -> anyhow::Result<()> {
    if conn.is_none() {
        let s = TcpStream::connect(host).await?;
        s.set_nodelay(true)?;
        *conn = Some(s);
        buf.clear();
    }
    let s = conn.as_mut().expect("connected above");
    s.write_all(request).await?;
    let head = read_head(s, buf).await?.ok_or_else(|| anyhow::anyhow!("closed"))?;
    anyhow::ensure!(head.starts_with("http/1.1 200"), "status: {}", head.lines().next().unwrap_or(""));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no content-length"))?;
    while buf.len() < len {
        buf.reserve(len - buf.len());
        if s.read_buf(buf).await? == 0 {
            anyhow::bail!("closed in the body");
        }
    }
    buf.drain(..len);
    Ok(())
}
