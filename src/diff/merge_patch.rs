//! RFC 7396 JSON Merge Patch generation.
//!
//! A merge patch cannot set a member to `null` (null means "remove") and replaces arrays
//! whole. When the target needs a null inside an object the patch would set, no merge patch
//! exists and [`diff`] returns `None`: the caller sends a snapshot instead.

use serde_json::{Map, Value};

/// The merge patch that turns `from` into `to`, or `None` when RFC 7396 cannot express it
/// (a non-object target, or a `null` the patch would have to set).
pub fn diff(from: &Value, to: &Value) -> Option<Value> {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => diff_objects(a, b).map(Value::Object),
        _ => None,
    }
}

fn diff_objects(a: &Map<String, Value>, b: &Map<String, Value>) -> Option<Map<String, Value>> {
    let mut patch = Map::new();
    for key in a.keys() {
        if !b.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, new) in b {
        match (a.get(key), new) {
            (Some(old), new) if old == new => {}
            (Some(Value::Object(old)), Value::Object(new)) => {
                patch.insert(key.clone(), Value::Object(diff_objects(old, new)?));
            }
            (_, new) => {
                if !settable(new) {
                    return None;
                }
                patch.insert(key.clone(), new.clone());
            }
        }
    }
    Some(patch)
}

/// Whether a value survives being applied as a merge patch unchanged: no object member in it
/// (at any depth outside arrays) may be `null`.
pub(super) fn settable(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Object(m) => m.values().all(settable),
        _ => true,
    }
}

/// Applies a merge patch (RFC 7396 §2), for tests and for clients written in Rust.
pub fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (key, value) in p {
        if value.is_null() {
            t.remove(key);
        } else {
            apply(t.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(a: Value, b: Value) -> Option<Value> {
        let patch = diff(&a, &b)?;
        let mut doc = a.clone();
        apply(&mut doc, &patch);
        assert_eq!(doc, b, "patch {patch}");
        let mut other = a.clone();
        json_patch::merge(&mut other, &patch);
        assert_eq!(other, b, "independent merge of {patch}");
        Some(patch)
    }

    #[test]
    fn nested_changes() {
        let p = check(json!({"a": {"b": 1, "c": 2}, "d": 1}), json!({"a": {"b": 5}, "d": 1})).unwrap();
        assert_eq!(p, json!({"a": {"b": 5, "c": null}}));
    }

    #[test]
    fn arrays_are_replaced_whole() {
        let p = check(json!({"a": [1, 2]}), json!({"a": [1, 2, 3]})).unwrap();
        assert_eq!(p, json!({"a": [1, 2, 3]}));
    }

    #[test]
    fn nulls_cannot_be_expressed() {
        assert_eq!(check(json!({"a": 1}), json!({"a": null})), None);
        assert_eq!(check(json!({}), json!({"a": {"b": null}})), None);
        // A null inside an array is fine: arrays are replaced whole.
        assert!(check(json!({}), json!({"a": [null]})).is_some());
        // An unchanged null is not part of the patch at all.
        assert!(check(json!({"n": null, "a": 1}), json!({"n": null, "a": 2})).is_some());
    }

    #[test]
    fn non_object_roots_need_a_snapshot() {
        assert_eq!(check(json!([1]), json!([2])), None);
        assert_eq!(check(json!({"a": 1}), json!(3)), None);
    }
}
