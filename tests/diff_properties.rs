//! Property tests: every delta applies to its source and yields its target, in every format,
//! checked with an independent RFC 6902 / RFC 7396 implementation (the `json-patch` crate).

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use unpoll::diff::{delta, delta_for, delta_text, json_patch as ours, merge_patch, raw, DiffOptions, Wanted};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..4).prop_map(Value::from),
        "[ab~/]{0,2}".prop_map(Value::from),
        // Numbers that are not integers, and strings that need escapes.
        (-8i32..8).prop_map(|q| json!(q as f64 / 4.0)),
        prop::sample::select(vec!["\"q\"", "a\\b", "line\n", "é", "😀", "\u{1}"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..7).prop_map(Value::Array),
            prop::collection::btree_map("[ab~/]{1,2}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A few random edits, so that source and target share structure as real versions do.
fn edit(doc: &Value, seed: u64) -> Value {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = doc.clone();
    for _ in 0..rng.random_range(1..5) {
        edit_once(&mut out, &mut rng);
    }
    out
}

fn edit_once(v: &mut Value, rng: &mut impl Rng) {
    match v {
        Value::Array(a) if !a.is_empty() && rng.random_bool(0.8) => {
            let i = rng.random_range(0..a.len());
            match rng.random_range(0..4) {
                0 => a.insert(i, json!(rng.random_range(0..9))),
                1 => {
                    a.remove(i);
                }
                2 => {
                    let x = a.remove(i);
                    let j = rng.random_range(0..=a.len());
                    a.insert(j, x);
                }
                _ => edit_once(&mut a[i], rng),
            }
        }
        Value::Object(m) if !m.is_empty() && rng.random_bool(0.8) => {
            let key = m.keys().nth(rng.random_range(0..m.len())).unwrap().clone();
            match rng.random_range(0..3) {
                0 => {
                    m.remove(&key);
                }
                1 => {
                    m.insert(format!("{key}x"), json!(null));
                }
                _ => edit_once(m.get_mut(&key).unwrap(), rng),
            }
        }
        other => *other = json!([rng.random_range(0..3), {"k": rng.random_bool(0.5)}]),
    }
}

fn check(a: &Value, b: &Value, options: &DiffOptions) -> Result<(), TestCaseError> {
    // RFC 6902, applied by the independent implementation.
    let limits = ours::Options { array_id: options.array_id.as_deref(), ..ours::Options::default() };
    let ops = ours::diff_with(a, b, limits).expect("no limits");
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
    let mut doc = a.clone();
    json_patch::patch(&mut doc, &patch).map_err(|e| TestCaseError::fail(format!("{e}: {ops:?}")))?;
    prop_assert_eq!(&doc, b, "json-patch {:?}", ops);
    // RFC 7396, where it can express the change.
    if let Some(p) = merge_patch::diff(a, b) {
        let mut doc = a.clone();
        json_patch::merge(&mut doc, &p);
        prop_assert_eq!(&doc, b, "merge-patch {}", p);
        let mut own = a.clone();
        merge_patch::apply(&mut own, &p);
        prop_assert_eq!(&own, b);
    }
    // What subscribers are sent: each format's patch (if it survived the size gate) applies.
    if let Some(d) = delta(Some(a), b, options) {
        prop_assert_eq!(serde_json::from_slice::<Value>(&d.snapshot).unwrap(), b.clone());
        if let Some(p) = d.json_patch {
            let patch: json_patch::Patch = serde_json::from_slice(&p).unwrap();
            let mut doc = a.clone();
            json_patch::patch(&mut doc, &patch).unwrap();
            prop_assert_eq!(&doc, b);
        }
        if let Some(p) = d.merge_patch {
            let mut doc = a.clone();
            json_patch::merge(&mut doc, &serde_json::from_slice(&p).unwrap());
            prop_assert_eq!(&doc, b);
        }
    } else {
        prop_assert_eq!(a, b, "no delta means no change");
    }
    // Diffed as text (what a poll does), compact or pretty-printed, the delta is the parsed
    // way's, for every set of formats someone reads.
    // (Pretty-printed text is made compact with its containers' ends moved: the index of
    // large containers must point into the compact text.)
    let compact =
        |body: Vec<u8>| raw::compact(&bytes::Bytes::from(body)).expect("the raw path takes serde_json's writing");
    for from in [compact(serde_json::to_vec(a).unwrap()), compact(serde_json::to_vec_pretty(a).unwrap())] {
        for to in [compact(serde_json::to_vec(b).unwrap()), compact(serde_json::to_vec_pretty(b).unwrap())] {
            for (json_patch, merge_patch) in [(true, true), (true, false), (false, true), (false, false)] {
                let wanted = Wanted { json_patch, merge_patch };
                let text = delta_text(Some(&from), to.clone(), options, wanted).expect("readable");
                let parsed = delta_for(Some(a), b, options, wanted);
                prop_assert_eq!(text, parsed, "{} -> {}", a, b);
            }
        }
    }
    Ok(())
}

/// Arrays of objects with unique ids, then shuffled, edited, extended and shrunk.
fn identified_rows() -> impl Strategy<Value = (Value, Value)> {
    (prop::collection::btree_set(0u8..40, 0..25), any::<u64>()).prop_map(|(ids, seed)| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let rows: Vec<Value> = ids.iter().map(|id| json!({"id": id, "v": rng.random_range(0..3)})).collect();
        let mut next: Vec<Value> = rows.iter().filter(|_| rng.random_bool(0.8)).cloned().collect();
        for i in (1..next.len()).rev() {
            if rng.random_bool(0.3) {
                next.swap(i, rng.random_range(0..=i));
            }
        }
        for row in next.iter_mut() {
            if rng.random_bool(0.2) {
                row["v"] = json!(9);
            }
        }
        for n in 0..rng.random_range(0..3) {
            let at = rng.random_range(0..=next.len());
            next.insert(at, json!({"id": 100 + n, "v": 0}));
        }
        (json!({"rows": rows}), json!({"rows": next}))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn unrelated_documents(a in json_value(), b in json_value()) {
        check(&a, &b, &DiffOptions::default())?;
    }

    #[test]
    fn edited_documents(a in json_value(), seed in any::<u64>()) {
        let b = edit(&a, seed);
        check(&a, &b, &DiffOptions::default())?;
        check(&a, &b, &DiffOptions { max_patch_ratio: 1.0, ..DiffOptions::default() })?;
    }

    #[test]
    fn identified_arrays((a, b) in identified_rows()) {
        let by_id = DiffOptions { array_id: Some("id".into()), max_patch_ratio: 1.0, ..DiffOptions::default() };
        check(&a, &b, &by_id)?;
        check(&a, &b, &DiffOptions::default())?;
    }

    #[test]
    fn array_id_on_arbitrary_documents(a in json_value(), seed in any::<u64>()) {
        let b = edit(&a, seed);
        check(&a, &b, &DiffOptions { array_id: Some("a".into()), max_patch_ratio: 1.0, ..DiffOptions::default() })?;
    }
}
