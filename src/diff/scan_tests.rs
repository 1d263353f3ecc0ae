//! The scan's tests: what it takes, what it makes, and its index.

use super::{compact, compact_after, scan, Text, INDEXED};
use bytes::Bytes;
use serde_json::{json, Value};

/// Texts with every part of the grammar: nesting, empty containers, escapes of each kind,
/// a surrogate pair, non-ASCII text, numbers in each form, literals, whitespace.
const SEEDS: [&str; 4] = [
    r#"{"a":[1,-2.5,0,-0.0e-1,3e2],"b":{"c":null,"d":true,"e":false},"f":[],"g":{}}"#,
    "[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\",\"h\u{e9}\u{1f600}\"]",
    " { \"k\" : [ 1 , { \"x\" : \"y z\" } ] ,\n\t\"l\" : 10 }\r\n",
    "[12.25E+3,\"\",[[]],{\"\":0}]",
];

fn serde_reads(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// Takes exactly what serde_json reads, and gives the same JSON without whitespace
/// outside strings.
fn agrees(body: &[u8]) {
    let text = compact(&Bytes::copy_from_slice(body));
    let parsed = serde_reads(body);
    assert_eq!(text.is_some(), parsed.is_some(), "{:?}", String::from_utf8_lossy(body));
    if let (Some(text), Some(parsed)) = (text, parsed) {
        assert_eq!(serde_reads(&text), Some(parsed.clone()));
        let (mut in_string, mut escaped) = (false, false);
        for &c in text.iter() {
            assert!(in_string || !matches!(c, b' ' | b'\t' | b'\n' | b'\r'), "{:?}", String::from_utf8_lossy(&text));
            (in_string, escaped) = match (in_string, escaped, c) {
                (true, false, b'\\') => (true, true),
                (true, false, b'"') | (false, _, b'"') => (!in_string, false),
                _ => (in_string, false),
            };
        }
    }
}

#[test]
fn each_seed_is_taken_and_made_compact() {
    for seed in SEEDS {
        agrees(seed.as_bytes());
        assert!(compact(&Bytes::from(seed)).is_some(), "{seed}");
    }
    let spaced = compact(&Bytes::from(SEEDS[2])).unwrap();
    assert_eq!(&spaced[..], br#"{"k":[1,{"x":"y z"}],"l":10}"#);
}

/// Every seed with one byte replaced, removed or inserted, at every place: the scan takes
/// the text exactly when serde_json reads it. A grammar rule the scan missed or made up
/// shows here as a disagreement.
#[test]
fn takes_a_mutated_text_exactly_when_serde_json_reads_it() {
    let bytes: &[u8] = b"{}[]\":,\\ -+.eE019tfnulrsabx/\n\t\r\x00\x1f\x7f\xc3\xa9\xff\xed\xa0\x80";
    let mut checked = 0;
    for seed in SEEDS {
        let seed = seed.as_bytes();
        for at in 0..=seed.len() {
            for &c in bytes {
                let mut m = seed.to_vec();
                m.insert(at, c);
                agrees(&m);
                if at < seed.len() {
                    let mut m = seed.to_vec();
                    m[at] = c;
                    agrees(&m);
                }
                checked += 1;
            }
            if at < seed.len() {
                let mut m = seed.to_vec();
                m.remove(at);
                agrees(&m);
            }
        }
    }
    assert!(checked > 5_000, "{checked}");
}

/// Strings long enough to be read eight bytes at a time: every byte value at each of the
/// first 24 places of a string with an escape and a two-byte character (so in each place
/// of an eight-byte word, and in and next to both), and a second string after it, taken
/// exactly when serde_json takes them.
#[test]
fn long_strings_take_each_byte_as_serde_json_does() {
    for at in 0..24 {
        for c in 0..=255u8 {
            let mut s = b"abcdefgh\\u00e9ijkl\xc3\xa9mnopq".to_vec();
            s[at] = c;
            let mut body = b"[\"".to_vec();
            body.extend_from_slice(&s);
            body.extend_from_slice(b"\",\"0123456789abcdefghij\"]");
            agrees(&body);
        }
    }
    assert!(compact(&Bytes::from_static(b"[\"0123456789abcdef\x01\"]")).is_none());
    assert!(compact(&Bytes::from_static(b"[\"0123456789abcdef\xff\"]")).is_none());
}

#[path = "../../fuzz/containers.rs"]
mod containers;
use containers::containers;

#[test]
fn large_containers_are_indexed_where_the_compact_text_has_them() {
    let row =
        |i: usize| json!({"id": i, "name": format!("row [{i}] \"{{\" of twelve"), "tags": ["a", "b", {"c": [i]}]});
    let doc = json!({"meta": {"n": 1, "s": "}]"}, "rows": (0..12).map(row).collect::<Vec<_>>(), "empty": [[], {}], "tail": "x"});
    for body in [serde_json::to_vec(&doc).unwrap(), serde_json::to_vec_pretty(&doc).unwrap()] {
        let text = compact(&Bytes::from(body)).unwrap();
        let large: Vec<_> = containers(&text).into_iter().filter(|(a, b)| (b - a) as usize >= INDEXED).collect();
        assert!(large.len() > 12, "the document and its rows: {large:?}");
        assert_eq!(text.large.as_deref().unwrap(), &large[..]);
        // Looked up from a slice of the document, in the slice's own offsets.
        let index = text.index();
        let (start, end) = large[2];
        let slice = &text[start as usize - 3..];
        let end_of = |text: &[u8], at: usize| index.end_near(text, at, &mut { usize::MAX });
        assert_eq!(end_of(slice, 3), Some((end - start) as usize + 3));
        assert_eq!(end_of(slice, 4), None, "not a container's start");
        assert_eq!(end_of(b"[1]", 0), None, "not this document's text");
        // With a hint: the entry it names is used, a wrong one only costs a search, and either
        // leaves the hint just past the entry found.
        for hint in [2, 0, 7, usize::MAX] {
            let mut h = hint;
            assert_eq!(index.end_near(slice, 3, &mut h), Some((end - start) as usize + 3), "hint {hint}");
            assert_eq!(h, 3, "hint {hint}");
        }
        let mut h = 2;
        assert_eq!(index.end_near(slice, 4, &mut h), None);
        assert_eq!(h, 2, "a failed lookup leaves the hint");
    }
    // Small containers are not indexed, and text too small has no index at all.
    assert_eq!(compact(&Bytes::from_static(b"{\"a\":[1,2,3]}")).unwrap().large, None);
}

#[test]
fn what_the_parsed_way_must_decide_is_left_to_it() {
    // serde_json reads these, but the text diff does not take them.
    let deep = format!("{}1{}", "[".repeat(121), "]".repeat(121));
    let fine = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    assert!(compact(&Bytes::from(deep)).is_none());
    assert!(compact(&Bytes::from(fine)).is_some());
    assert!(compact(&Bytes::from_static(b"[1e299]")).is_none(), "a number near f64's edge");
    // And these serde_json refuses.
    for refused in [&b"\"\\ud800\""[..], b"\"\\udc00\\ud800\"", b"\"\\ud800\\u0041\"", b"[1e400]", b"\"\xed\xa0\x80\""]
    {
        assert!(compact(&Bytes::copy_from_slice(refused)).is_none(), "{refused:?}");
        assert!(serde_reads(refused).is_none(), "{refused:?}");
    }
}

/// A document of rows large enough to be indexed, with nested containers in each.
fn rows(n: usize, changed: Option<usize>) -> Value {
    let row = |i: usize| {
        let v = if Some(i) == changed { 7 } else { 0 };
        json!({"id": i, "name": format!("row [{i}] \"{{\" of twelve"), "tags": ["a", "b", {"c": [i, v]}]})
    };
    json!({"seq": changed.unwrap_or(0), "rows": (0..n).map(row).collect::<Vec<_>>(), "tail": {"t": [true, false, null, -1.5e3]}})
}

/// `compact_after(body, previous)` is `compact(body)`: the same text and the same index.
fn agrees_after(body: &[u8], previous: &Text) -> usize {
    let body = Bytes::copy_from_slice(body);
    let alone = compact(&body);
    let after = scan(&body, Some(previous));
    assert_eq!(alone.is_some(), after.is_some(), "{:?}", String::from_utf8_lossy(&body));
    let (Some(alone), Some((after, stepped))) = (alone, after) else { return 0 };
    assert_eq!(&alone[..], &after[..]);
    assert_eq!(alone.large.as_deref(), after.large.as_deref(), "{:?}", String::from_utf8_lossy(&body));
    stepped
}

#[test]
fn a_body_read_after_the_last_document_is_scanned_as_if_alone() {
    let base = serde_json::to_vec(&rows(6, None)).unwrap();
    let previous = compact(&Bytes::from(base.clone())).unwrap();
    assert!(previous.large.as_ref().is_some_and(|l| l.len() > 6));
    // Every byte of the last document replaced, removed or duplicated, with bytes that
    // change its shape or only its values: the scan with the echo agrees with the scan
    // without, whether it steps over what follows, loses the echo, or refuses the text.
    let mut stepped = 0;
    for at in 0..base.len() {
        for &c in b"{}[]\":,0 9a-\\\n" {
            let mut m = base.clone();
            m[at] = c;
            stepped += agrees_after(&m, &previous);
            let mut m = base.clone();
            m.insert(at, c);
            stepped += agrees_after(&m, &previous);
        }
        let mut m = base.clone();
        m.remove(at);
        stepped += agrees_after(&m, &previous);
    }
    assert!(stepped > base.len() * 100, "containers were stepped over: {stepped}");
    // Other documents after it, and it after them, and after itself.
    for seed in SEEDS {
        agrees_after(seed.as_bytes(), &previous);
        agrees_after(&base, &compact(&Bytes::from(seed)).unwrap());
    }
    assert_eq!(agrees_after(&base, &previous), base.len(), "the same document is stepped over whole");
}

#[test]
fn a_repeated_document_is_stepped_over_except_where_it_changed() {
    let previous = compact(&Bytes::from(serde_json::to_vec(&rows(40, None)).unwrap())).unwrap();
    let next = serde_json::to_vec(&rows(40, Some(17))).unwrap();
    let stepped = agrees_after(&next, &previous);
    assert!(stepped * 10 > next.len() * 9, "{stepped} of {}", next.len());
    // A body with whitespace is read whole (its bytes are not the compact text's); a last
    // document without an index (the parsed way's) gives nothing to step over.
    let pretty = serde_json::to_vec_pretty(&rows(40, Some(17))).unwrap();
    assert_eq!(agrees_after(&pretty, &previous), 0);
    let unindexed = Text::unindexed(previous.bytes.clone());
    assert_eq!(agrees_after(&next, &unindexed), 0);
    assert!(compact_after(&Bytes::from(next), Some(&unindexed)).is_some());
}

#[test]
fn a_container_stepped_over_keeps_the_depth_limit() {
    // A container nested 119 deep, one level down in the last document (120 in all, the
    // limit) and four levels down in the new body, after brackets that are not the last
    // document's: it is not taken as the last document's, and the body is refused.
    let deep = format!("{}1{}", "[".repeat(119), "]".repeat(119));
    let previous = compact(&Bytes::from(format!("[[],{deep}]"))).unwrap();
    let too_deep = format!("[[[[{deep}]]]]");
    assert!(compact_after(&Bytes::from(too_deep.clone()), Some(&previous)).is_none());
    agrees_after(too_deep.as_bytes(), &previous);
    agrees_after(format!("[[],{deep}]").as_bytes(), &previous);
}
