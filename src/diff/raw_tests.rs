use super::*;
use crate::diff::{delta_for, delta_text, json_patch, Delta, DiffOptions, Wanted};
use bytes::Bytes;
use serde_json::json;

fn text(body: &str) -> crate::diff::scan::Text {
    compact(&Bytes::from(body.to_string())).unwrap_or_else(|| panic!("the raw path takes {body}"))
}

fn takes(body: &[u8]) -> bool {
    compact(&Bytes::copy_from_slice(body)).is_some()
}

const BOTH: Wanted = Wanted { json_patch: true, merge_patch: true };

/// The same delta, but for how the snapshot writes the same document: the text path keeps
/// the upstream's own writing of numbers and escapes (`1.50`, `\u00e9`), serde_json its own.
pub(crate) fn assert_same(text: &Option<Delta>, parsed: &Option<Delta>, what: &str) {
    let strip = |d: &Option<Delta>| d.clone().map(|d| Delta { snapshot: Bytes::new(), ..d });
    assert_eq!(strip(text), strip(parsed), "{what}");
    if let (Some(t), Some(p)) = (text, parsed) {
        let read = |b: &Bytes| serde_json::from_slice::<Value>(b).unwrap();
        assert_eq!(read(&t.snapshot), read(&p.snapshot), "{what}");
    }
}

/// The delta from `a` to `b` as text, checked against the parsed way.
fn as_text(a: &str, b: &str) -> Option<Delta> {
    let options = DiffOptions::default();
    let d = delta_text(Some(&text(a)), text(b), &options, BOTH).expect("readable");
    let parsed: (Value, Value) = (serde_json::from_str(a).unwrap(), serde_json::from_str(b).unwrap());
    assert_same(&d, &delta_for(Some(&parsed.0), &parsed.1, &options, BOTH), &format!("{a} -> {b}"));
    d
}

fn patch(d: &Option<Delta>) -> &str {
    std::str::from_utf8(d.as_ref().unwrap().json_patch.as_ref().unwrap()).unwrap()
}

#[test]
fn compact_text_drops_whitespace_outside_strings_only() {
    let body = "{ \"a b\" : [ 1 ,\n\t2 ] , \"c\" : \"x  \\\" y\" }\r\n";
    assert_eq!(&text(body)[..], br#"{"a b":[1,2],"c":"x  \" y"}"#);
    assert_eq!(&text("[]")[..], b"[]");
    assert_eq!(&text(" 12 ")[..], b"12");
    // Compact text, with or without whitespace around it, is shared rather than copied.
    let body = Bytes::from_static(b"{\"a\":[1,2]}\n");
    let shared = compact(&body).unwrap();
    assert_eq!((&shared[..], shared.as_ptr()), (&b"{\"a\":[1,2]}"[..], body.as_ptr()));
    assert!(!takes(b"  "), "whitespace only is not JSON");
}

#[test]
fn what_serde_json_would_refuse_or_read_otherwise_goes_the_parsed_way() {
    for refused in [
        "{\"a\":1",
        "{\"a\":01}",
        "[1,]",
        "\"\\x\"",
        "[1e400]",
        "[-1e999]",
        r#"["\ud800"]"#,
        r#"["\udc00\ud800"]"#,
        r#"["\ud83dx"]"#,
    ] {
        assert!(!takes(refused.as_bytes()), "{refused}");
    }
    assert!(!takes(b"[\"\xff\"]"), "not UTF-8");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(!takes(deep.as_bytes()), "deeper than serde_json reads");
    // What it reads as serde_json does is taken: an escaped pair (as Python writes emoji),
    // escapes of anything else, numbers in exponent form within range.
    for taken in [r#"["\ud83d\ude00"]"#, r#"["\u0041\\ud800"]"#, "[1.5e-7,2E+10,-0.0,1e250]"] {
        assert!(takes(taken.as_bytes()), "{taken}");
    }
}

#[test]
fn only_the_change_is_read_and_the_patch_is_the_parsed_ways() {
    let rows: Vec<Value> = (0..50).map(|i| json!({"id": i, "name": format!("row {i}"), "tags": ["a", i]})).collect();
    let a = json!({"seq": 1, "items": rows});
    let mut b = a.clone();
    b["seq"] = json!(2);
    b["items"][20]["name"] = json!("renamed");
    b["items"][30]["tags"][1] = json!("x");
    let d = as_text(&a.to_string(), &b.to_string());
    assert_eq!(
        patch(&d),
        r#"[{"op":"replace","path":"/seq","value":2},{"op":"replace","path":"/items/20/name","value":"renamed"},{"op":"replace","path":"/items/30/tags/1","value":"x"}]"#
    );
    // Rows inserted, removed, replaced several at once (the changed middle is aligned).
    let mut c = a.clone();
    c["items"].as_array_mut().unwrap().insert(0, json!({"id": -1}));
    as_text(&a.to_string(), &c.to_string());
    let mut c = a.clone();
    c["items"].as_array_mut().unwrap().drain(10..13);
    assert_eq!(patch(&as_text(&a.to_string(), &c.to_string())).matches("remove").count(), 3);
    let mut c = a.clone();
    c["items"][5] = json!(5);
    c["items"][9] = json!(9);
    as_text(&a.to_string(), &c.to_string());
    // Rows changed here and there, with rows inserted and removed between them: aligned by
    // the same search as the parsed way, each changed row diffed in place.
    let mut c = a.clone();
    let items = c["items"].as_array_mut().unwrap();
    for i in [3, 17, 30, 44] {
        items[i]["name"] = json!(format!("changed {i}"));
    }
    items.insert(25, json!({"id": 99}));
    items.remove(40);
    items.push(json!(1));
    items.push(json!(1));
    let d = as_text(&a.to_string(), &c.to_string());
    assert_eq!(patch(&d).matches("\"replace\"").count(), 4, "{}", patch(&d));
    // Members removed and added; kinds changed.
    as_text(r#"{"a":1,"b":{"c":[1]},"d":"x"}"#, r#"{"b":{"c":{"x":null}},"d":["x"],"e":true}"#);
    as_text(r#"[1,{"a":"x"},3]"#, r#"[1,"a",3]"#);
    as_text(r#"{"a":[]}"#, r#"{"a":[{}]}"#);
}

#[test]
fn the_same_json_written_otherwise_is_no_change() {
    for (a, b) in [
        (r#"{"a":1.0}"#, r#"{"a":1.00}"#),
        (r#"{"a":"A"}"#, r#"{"a":"\u0041"}"#),
        (r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#),
        (r#"{"a":{"x":"é","y":[1]}}"#, "{\"a\": {\"y\": [1], \"x\": \"\\u00e9\"}}"),
        // Repeated keys: serde_json keeps the last value.
        (r#"{"a":1,"a":2}"#, r#"{"a":2}"#),
    ] {
        assert_eq!(as_text(a, b), None, "{a} and {b}");
    }
    // But 1 and 1.0 are not the same number to serde_json.
    assert!(as_text(r#"{"a":1}"#, r#"{"a":1.0}"#).is_some());
}

#[test]
fn merge_patches_match_the_parsed_way() {
    let d = as_text(r#"{"a":{"b":1,"c":[1,2]},"d":1}"#, r#"{"a":{"b":2,"c":[1,3]},"e":null}"#);
    assert_eq!(d.unwrap().merge_patch, None, "a null to set: no merge patch");
    let d = as_text(r#"{"a":{"b":1,"c":[1,2]},"d":1}"#, r#"{"a":{"b":2,"c":[1,3]}}"#).unwrap();
    assert_eq!(&d.merge_patch.unwrap()[..], br#"{"d":null,"a":{"b":2,"c":[1,3]}}"#);
    // Objects equal once parsed leave no empty member behind.
    let d = as_text(r#"{"a":{"b":1.5},"c":1}"#, r#"{"a":{"b":1.50},"c":2}"#).unwrap();
    assert_eq!(&d.merge_patch.unwrap()[..], br#"{"c":2}"#);
    assert_eq!(as_text("[1]", "[2]").unwrap().merge_patch, None, "not an object");
}

#[test]
fn array_ids_limits_and_budgets_hold_as_the_parsed_way() {
    let rows = |ids: &[u32]| json!({"rows": ids.iter().map(|i| json!({"id": i, "v": i})).collect::<Vec<_>>()});
    let (a, b) = (rows(&[1, 2, 3, 4]), rows(&[4, 1, 2, 3]));
    let by_id = DiffOptions { array_id: Some("id".into()), ..DiffOptions::default() };
    let (ta, tb) = (text(&a.to_string()), text(&b.to_string()));
    let d = delta_text(Some(&ta), tb.clone(), &by_id, BOTH).unwrap();
    assert_eq!(d, delta_for(Some(&a), &b, &by_id, BOTH));
    assert!(std::str::from_utf8(d.unwrap().json_patch.as_ref().unwrap()).unwrap().contains("move"));
    // A budget too small: cut short, as the parsed way.
    let big: Vec<u32> = (0..2000).collect();
    let rev: Vec<u32> = big.iter().rev().copied().collect();
    let (a, b) = (json!({ "n": big }), json!({ "n": rev }));
    let tight = DiffOptions { budget: 10_000, ..DiffOptions::default() };
    let d = delta_text(Some(&text(&a.to_string())), text(&b.to_string()), &tight, BOTH).unwrap().unwrap();
    assert!(d.cut_short && d.json_patch.is_none());
    assert_eq!(Some(d), delta_for(Some(&a), &b, &tight, BOTH));
    // Nobody reads JSON Patch: no patch and nothing cut short, and no change is still none.
    let merge_only = Wanted { json_patch: false, merge_patch: true };
    let d = delta_text(Some(&text(&a.to_string())), text(&b.to_string()), &tight, merge_only).unwrap().unwrap();
    assert!(!d.cut_short && d.json_patch.is_none() && d.merge_patch.is_some());
    let same = text(&a.to_string());
    assert_eq!(delta_text(Some(&same), same.clone(), &tight, merge_only), Ok(None));
    // The size limit stops the walk as it stops the parsed one.
    let limits = json_patch::Options { max_bytes: 10, ..json_patch::Options::default() };
    assert_eq!(json_patch(&ta, &tb, limits), Ok(Err(Stopped::TooLarge)));
}

/// Large containers are stepped over by their index (see `scan::Text`), pretty-printed or
/// not: a change inside a large member that is not the last, in the last one, after a large
/// array, rows added and removed, and the same bytes at other places.
#[test]
fn large_containers_are_stepped_over_by_their_index() {
    let row = |i: u64, v: u64| json!({"id": i, "name": format!("row number {i} of the table"), "v": v, "tags": ["x", {"y": [i]}]});
    let doc = |rows: &[(u64, u64)], meta: u64, tail: &str| {
        json!({
            "meta": {"rows": rows.iter().map(|&(i, v)| row(i, v)).collect::<Vec<_>>(), "n": meta},
            "list": rows.iter().map(|&(i, v)| row(i + 100, v)).collect::<Vec<_>>(),
            "tail": tail,
        })
    };
    let base: Vec<(u64, u64)> = (0..10).map(|i| (i, 0)).collect();
    let mut one = base.clone();
    one[7].1 = 1;
    let mut fewer = base.clone();
    fewer.remove(3);
    let mut more = base.clone();
    more.insert(5, (50, 5));
    let a = doc(&base, 1, "t");
    for b in [
        doc(&one, 1, "t"),
        doc(&base, 2, "t"),
        doc(&base, 1, "u"),
        doc(&fewer, 1, "t"),
        doc(&more, 1, "t"),
        doc(&one, 2, "u"),
    ] {
        for (x, y) in [
            (a.to_string(), b.to_string()),
            (serde_json::to_string_pretty(&a).unwrap(), serde_json::to_string_pretty(&b).unwrap()),
        ] {
            assert!(as_text(&x, &y).is_some(), "{x} -> {y}");
        }
    }
    // A change at the very end of a large array that is the last member: found by index on
    // both sides, and the patch names the row.
    let (x, y) = (
        doc(&base, 1, "t").to_string(),
        doc(&base, 1, "t")
            .to_string()
            .replace("\"v\":0,\"tags\":[\"x\",{\"y\":[109]}]", "\"v\":9,\"tags\":[\"x\",{\"y\":[109]}]"),
    );
    assert_ne!(x, y);
    assert_eq!(patch(&as_text(&x, &y)), r#"[{"op":"replace","path":"/list/9/v","value":9}]"#);
}
