//! Microbenchmarks of the per-event hot path: diff, event encoding, TopicKey derivation, and a
//! cluster event's tags.
//! Run: cargo bench --bench hot_path

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use unpoll::config::StreamSettings;
use unpoll::wire::encode::{encode, Protocol};

/// The allocator the unpoll binary uses, so that these figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A document of about `bytes` bytes: an array of small records.
fn document(bytes: usize) -> Value {
    let rows: Vec<Value> =
        (0..bytes / 64).map(|i| json!({"id": i, "status": "on time", "platform": i % 9, "delay": 0})).collect();
    json!({"station": "Centraal", "rows": rows})
}

fn diff(c: &mut Criterion) {
    for size in [10_000, 100_000, 1_000_000] {
        let a = document(size);
        let mut changed = a.clone();
        let rows = changed["rows"].as_array_mut().unwrap();
        let n = rows.len();
        for i in (0..n).step_by(100) {
            rows[i]["delay"] = json!(5); // 1 % of rows change
        }
        c.bench_function(&format!("delta {}KB 1% changed", size / 1000), |b| {
            b.iter(|| unpoll::diff::delta(Some(black_box(&a)), black_box(&changed), &Default::default()))
        });
        let json_patch_only = unpoll::diff::Wanted { json_patch: true, merge_patch: false };
        c.bench_function(&format!("delta {}KB 1% changed, JSON Patch subscribers only", size / 1000), |b| {
            b.iter(|| {
                unpoll::diff::delta_for(Some(black_box(&a)), black_box(&changed), &Default::default(), json_patch_only)
            })
        });
        let mut inserted = a.clone();
        inserted["rows"].as_array_mut().unwrap().insert(0, json!({"id": -1}));
        c.bench_function(&format!("delta {}KB insert at front", size / 1000), |b| {
            b.iter(|| unpoll::diff::delta(Some(black_box(&a)), black_box(&inserted), &Default::default()))
        });
        let mut rotated = a.clone();
        let rows = rotated["rows"].as_array_mut().unwrap();
        rows.remove(0);
        rows.push(json!({"id": -2}));
        c.bench_function(&format!("delta {}KB rotation", size / 1000), |b| {
            b.iter(|| unpoll::diff::delta(Some(black_box(&a)), black_box(&rotated), &Default::default()))
        });
        let by_id = unpoll::diff::DiffOptions { array_id: Some("id".into()), ..Default::default() };
        let mut moved = a.clone();
        let rows = moved["rows"].as_array_mut().unwrap();
        let last = rows.pop().unwrap();
        rows.insert(0, last);
        c.bench_function(&format!("delta {}KB move with array_id", size / 1000), |b| {
            b.iter(|| unpoll::diff::delta(Some(black_box(&a)), black_box(&moved), &by_id))
        });
    }
}

/// The bench upstream's document (benches/fanout/upstream.rs) of about `bytes` bytes at change
/// `seq`: one item's value set, a time stamp.
fn upstream_body(bytes: usize, seq: u64) -> Vec<u8> {
    let count = bytes.saturating_sub(50) / 44;
    let items: Vec<String> = (0..count)
        .map(|i| {
            let value = if i as u64 == seq % count as u64 { seq } else { 0 };
            format!(r#"{{"id":{i},"name":"item-{i:04}","value":{value}}}"#)
        })
        .collect();
    format!(r#"{{"seq":{seq},"sent_us":{},"items":[{}]}}"#, 1_700_000_000_000_000 + seq, items.join(",")).into_bytes()
}

/// A poll's CPU work: check and diff the new body against the last document (the JSON Patch
/// only: what benches/topics.sh's subscribers read), as text (what a poll does) and the parsed
/// way (what it did before 2026-12-06, and still does for text the raw path does not take).
fn poll_work(c: &mut Criterion) {
    use unpoll::diff::{delta_for, DiffOptions, Wanted};
    use unpoll::topic::compute::DiffJob;
    let wanted = Wanted { json_patch: true, merge_patch: false };
    for size in [10_240, 1_048_576] {
        let first = upstream_body(size, 1);
        let previous = unpoll::diff::raw::compact(&bytes::Bytes::from(first.clone())).unwrap();
        let parsed = serde_json::from_slice::<Value>(&first).unwrap();
        let body = bytes::Bytes::from(upstream_body(size, 2));
        let job = || DiffJob {
            body: body.clone(),
            json: true,
            previous: Some(previous.clone()),
            options: Default::default(),
            wanted,
        };
        c.bench_function(&format!("poll {}KB one item changed: diffed as text", size / 1024), |b| {
            b.iter(|| job().run().unwrap())
        });
        // The item that changes moves through the document, as in benches/topics.sh: in its
        // middle, the diff walks half the items before it finds the change.
        let middle = (size.saturating_sub(50) / 44 / 2) as u64;
        let before = unpoll::diff::raw::compact(&bytes::Bytes::from(upstream_body(size, middle))).unwrap();
        let after = bytes::Bytes::from(upstream_body(size, middle + 1));
        c.bench_function(&format!("poll {}KB one item changed in the middle", size / 1024), |b| {
            b.iter(|| {
                DiffJob {
                    body: after.clone(),
                    json: true,
                    previous: Some(before.clone()),
                    options: Default::default(),
                    wanted,
                }
                .run()
                .unwrap()
            })
        });
        c.bench_function(&format!("poll {}KB one item changed: parsed and diffed", size / 1024), |b| {
            b.iter(|| {
                let doc = serde_json::from_slice::<Value>(black_box(&body)).unwrap();
                delta_for(Some(&parsed), &doc, &DiffOptions::default(), wanted)
            })
        });
        c.bench_function(&format!("check and compact {}KB", size / 1024), |b| {
            b.iter(|| unpoll::diff::raw::compact(black_box(&body)).unwrap())
        });
        c.bench_function(&format!("check and compact {}KB after the last document", size / 1024), |b| {
            b.iter(|| unpoll::diff::scan::compact_after(black_box(&body), Some(&previous)).unwrap())
        });
        c.bench_function(&format!("parse {}KB", size / 1024), |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).unwrap())
        });
    }
}

fn encoding(c: &mut Criterion) {
    let unchanged = document(10_000);
    c.bench_function("delta 10KB unchanged", |b| {
        b.iter(|| unpoll::diff::delta(Some(black_box(&unchanged)), black_box(&unchanged), &Default::default()))
    });
    let data = serde_json::to_vec(&document(1_000)).unwrap();
    c.bench_function("encode SSE 1KB", |b| {
        b.iter(|| encode(Protocol::Sse, Some("9f2c1a3b-42"), "patch", black_box(&data)))
    });
    c.bench_function("encode WebSocket 1KB", |b| {
        b.iter(|| encode(Protocol::WebSocket, Some("9f2c1a3b-42"), "patch", black_box(&data)))
    });
}

fn topic_key(c: &mut Criterion) {
    let settings = StreamSettings::default();
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "api.example".parse().unwrap());
    headers.insert("authorization", "Bearer 0123456789abcdef".parse().unwrap());
    headers.insert("user-agent", "Mozilla/5.0".parse().unwrap());
    c.bench_function("TopicKey derivation", |b| {
        b.iter(|| {
            unpoll::topic::key::derive(
                "/orders/{id}",
                &settings,
                "/orders/42",
                Some("b=2&a=1&unpoll_format=snapshot"),
                black_box(&headers),
            )
        })
    });
}

/// What authenticating a cluster event costs: the leader tags each version once (document and
/// patches), and every other node with the topic checks both tags once.
fn cluster_tags(c: &mut Criterion) {
    use unpoll::cluster::seal::Seal;
    let seal = Seal::new(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    for size in [1_000, 10_000, 100_000] {
        let doc = serde_json::to_vec(&document(size)).unwrap();
        let patch = br#"[{"op":"replace","path":"/rows/3/delay","value":5}]"#;
        c.bench_function(&format!("cluster event tags {}KB", size / 1000), |b| {
            b.iter(|| {
                let d = seal.document("0123456789abcdef", "9f2c1a3b", 42, black_box(&doc));
                let p = seal.patches("0123456789abcdef", "9f2c1a3b", 42, Some(black_box(patch)), None);
                (d, p)
            })
        });
    }
}

criterion_group!(benches, diff, poll_work, encoding, topic_key, cluster_tags);
criterion_main!(benches);
