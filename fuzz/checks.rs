//! What each fuzz target checks, shared by the fuzz targets (`fuzz/fuzz_targets/`) and by the
//! regression test that runs every seed corpus file (`tests/fuzz_corpus.rs`).

use serde_json::Value;

#[path = "containers.rs"]
mod containers;

/// Configuration text: parsing (which does no I/O: names are not resolved) never panics, a
/// refusal lists at least one problem, every key path starts at a top-level key (an empty
/// path is the whole document), and a problem's line is one of the text's.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = unpoll::config::parse(text) {
        let lines = text.lines().count().max(1);
        assert!(!errors.0.is_empty());
        for p in &errors.0 {
            assert!(!p.message.is_empty());
            let top = p.path.split(['.', '[']).next().unwrap_or("");
            assert!(
                top.is_empty() || ["server", "upstreams", "routes"].contains(&top) || p.message.contains("unknown key"),
                "{p}"
            );
            assert!(p.line.is_none_or(|l| (1..=lines + 1).contains(&l)), "{p}: line of {lines}");
        }
    }
}

/// A JSON array of two documents: every delta applies to the first and yields the second, with
/// an independent RFC 6902 / RFC 7396 implementation.
pub fn diff(data: &[u8]) {
    let Ok(Value::Array(pair)) = serde_json::from_slice::<Value>(data) else { return };
    let [a, b] =
        <[Value; 2]>::try_from(pair).unwrap_or_else(|p| [p.first().cloned().unwrap_or(Value::Null), Value::Null]);
    for array_id in [None, Some("id".to_string())] {
        let options = unpoll::diff::DiffOptions { array_id, max_patch_ratio: 1.0, ..Default::default() };
        applies(&a, &b, unpoll::diff::delta(Some(&a), &b, &options));
    }
}

/// A delta from `a` turns it into `b`, in every format, checked with an independent RFC 6902
/// / RFC 7396 implementation; no delta means no change.
fn applies(a: &Value, b: &Value, delta: Option<unpoll::diff::Delta>) {
    let Some(delta) = delta else {
        assert_eq!(a, b, "no delta for different documents");
        return;
    };
    assert_eq!(&serde_json::from_slice::<Value>(&delta.snapshot).unwrap(), b);
    if let Some(p) = delta.json_patch {
        let patch: json_patch::Patch = serde_json::from_slice(&p).expect("a valid RFC 6902 patch");
        let mut doc = a.clone();
        json_patch::patch(&mut doc, &patch).expect("the patch applies");
        assert_eq!(&doc, b);
    }
    if let Some(p) = delta.merge_patch {
        let mut doc = a.clone();
        json_patch::merge(&mut doc, &serde_json::from_slice(&p).unwrap());
        assert_eq!(&doc, b);
    }
}

/// Two JSON texts separated by a NUL byte, diffed as text, as a poll diffs a new body: making
/// each compact never panics and never takes text serde_json reads otherwise, and every delta
/// the text diff gives applies to the first document and yields the second.
pub fn diff_text(data: &[u8]) {
    let (x, y) = match data.iter().position(|&c| c == 0) {
        Some(cut) => (&data[..cut], &data[cut + 1..]),
        None => (data, data),
    };
    let compact = |body: &[u8]| {
        let text = unpoll::diff::raw::compact(&bytes::Bytes::copy_from_slice(body))?;
        let parsed: Value = serde_json::from_slice(body).expect("compact takes only what serde_json reads");
        assert_eq!(serde_json::from_slice::<Value>(&text).unwrap(), parsed, "compact text is the same JSON");
        Some((text, parsed))
    };
    // Read after the last document, a body is taken and made compact (index included) as
    // it is alone, whatever the two have in common.
    if let Some((tx, _)) = compact(x) {
        assert_eq!(tx.index_entries(), &large_containers(&tx)[..], "the index is where the containers are");
        let y_bytes = bytes::Bytes::copy_from_slice(y);
        let alone = unpoll::diff::scan::compact(&y_bytes);
        let after = unpoll::diff::scan::compact_after(&y_bytes, Some(&tx));
        assert_eq!(alone.as_deref(), after.as_deref(), "the echo changes the compact text");
        assert_eq!(
            alone.as_ref().map(|t| t.index_entries()),
            after.as_ref().map(|t| t.index_entries()),
            "the echo changes the index"
        );
    }
    let (Some((tx, a)), Some((ty, b))) = (compact(x), compact(y)) else { return };
    for array_id in [None, Some("id".to_string())] {
        // Every patch kept, however large, so that each is checked.
        let options = unpoll::diff::DiffOptions { array_id, patch_floor: usize::MAX, ..Default::default() };
        let wanted = unpoll::diff::Wanted { json_patch: true, merge_patch: true };
        // Text the raw path cannot read is diffed the parsed way instead (not checked here).
        if let Ok(delta) = unpoll::diff::delta_text(Some(&tx), ty.clone(), &options, wanted) {
            applies(&a, &b, delta);
        }
    }
}

/// Where every container of compact JSON `text` of `INDEXED` bytes or more starts and ends.
fn large_containers(text: &[u8]) -> Vec<(u32, u32)> {
    let mut all = containers::containers(text);
    all.retain(|&(a, b)| (b - a) as usize >= unpoll::diff::scan::INDEXED);
    all
}

/// A raw HTTP/1.1 request head: normalising its path, deciding whether it is a subscription,
/// validating it and deriving its topic key never panic, the normal path has no dot segment,
/// and a reserved parameter never reaches the upstream.
pub fn client_request(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else { return };
    let (Some(method), Some(path)) = (req.method, req.path) else { return };
    let Ok(mut head) = pingora::http::RequestHeader::build(method, path.as_bytes(), None) else { return };
    for h in req.headers.iter() {
        let _ = head.append_header(h.name.to_string(), h.value);
    }
    let settings = unpoll::config::StreamSettings::default();
    // The canonical path: stable once normalised, and never with a dot segment left.
    if let Ok(normal) = unpoll::proxy::path::normalise(head.uri.path()) {
        assert_eq!(unpoll::proxy::path::normalise(&normal).as_deref(), Ok(&*normal), "normalising is idempotent");
        assert!(normal.split('/').all(|s| s != "." && s != ".."), "a dot segment survived: {normal}");
    }
    let _ = unpoll::proxy::subscribe::classify(&head, &settings);
    let (_, poll, _) = unpoll::topic::key::derive("/r", &settings, head.uri.path(), head.uri.query(), &head.headers);
    let query = poll.target.split_once('?').map_or("", |(_, q)| q);
    for param in query.split('&') {
        let name = param.split_once('=').map_or(param, |(n, _)| n);
        assert!(!name.starts_with("unpoll_"), "a reserved parameter reached the upstream: {}", poll.target);
    }
}

/// Raw bytes from a WebSocket client: read as a server reads them, without panic, and no
/// message larger than the limit is accepted.
pub fn websocket_input(data: &[u8]) {
    let limit = 1024;
    let messages = unpoll::stream::ws::read_client_bytes(data, limit);
    assert!(messages <= data.len());
}

/// An event id as clients send it back: parses or not, and a parsed one prints back the same.
pub fn resume_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(id) = unpoll::wire::event::ResumeId::parse(text) {
        assert_eq!(unpoll::wire::event::ResumeId::parse(&format!("{}-{}", id.epoch, id.version)), Some(id));
    }
}

/// A message read from a cluster's Redis channel (anyone who can write to Redis chooses its
/// bytes): reading never panics, what is read encodes back to the same bytes, and its tags,
/// whatever they are, do not pass for a secret's.
pub fn cluster_message(data: &[u8]) {
    use unpoll::cluster::message::Message;
    use unpoll::cluster::seal::Seal;
    let Some(message) = Message::decode(bytes::Bytes::copy_from_slice(data)) else { return };
    let roundtrips = match &message {
        Message::Error { error, .. } => error.len() <= 255,
        Message::Event { .. } => true,
    };
    if roundtrips {
        assert_eq!(&message.encode().0[..], data, "{message:?}");
    }
    let seal = Seal::new(b"a fuzzing secret of 32 bytes or more");
    match &message {
        Message::Event { epoch, version, document, document_tag, .. } => {
            assert!(!Seal::matches(&seal.document("t", epoch, *version, document), document_tag));
        }
        Message::Error { epoch, version, status, error, terminal, tag } => {
            assert!(!Seal::matches(&seal.error("t", epoch, *version, *status, error, *terminal), tag));
        }
    }
}
