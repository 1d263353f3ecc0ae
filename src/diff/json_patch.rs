//! RFC 6902 JSON Patch generation.
//!
//! Objects are compared key by key. Arrays lose their common prefix and suffix first, so
//! inserting or removing a run of elements anywhere costs operations only for that run;
//! the rest of the changed middle is replaced index by index.

use serde_json::{json, Map, Value};

/// The operations that turn `from` into `to`, in order.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(&mut String::new(), from, to, &mut ops);
    ops
}

fn diff_at(path: &mut String, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => diff_objects(path, a, b, ops),
        (Value::Array(a), Value::Array(b)) => diff_arrays(path, a, b, ops),
        _ if from == to => {}
        _ => ops.push(json!({"op": "replace", "path": path.as_str(), "value": to})),
    }
}

fn diff_objects(
    path: &mut String,
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    ops: &mut Vec<Value>,
) {
    let len = path.len();
    for (key, old) in a {
        push_token(path, key);
        match b.get(key) {
            None => ops.push(json!({"op": "remove", "path": path.as_str()})),
            Some(new) => diff_at(path, old, new, ops),
        }
        path.truncate(len);
    }
    for (key, new) in b {
        if !a.contains_key(key) {
            push_token(path, key);
            ops.push(json!({"op": "add", "path": path.as_str(), "value": new}));
            path.truncate(len);
        }
    }
}

fn diff_arrays(path: &mut String, a: &[Value], b: &[Value], ops: &mut Vec<Value>) {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let max_suffix = a.len().min(b.len()) - prefix;
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_suffix)
        .take_while(|(x, y)| x == y)
        .count();
    let (old, new) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let len = path.len();
    let common = old.len().min(new.len());
    for i in 0..common {
        push_token(path, &(prefix + i).to_string());
        diff_at(path, &old[i], &new[i], ops);
        path.truncate(len);
    }
    // Remove surplus old elements from the highest index down, so indices stay valid.
    for i in (common..old.len()).rev() {
        push_token(path, &(prefix + i).to_string());
        ops.push(json!({"op": "remove", "path": path.as_str()}));
        path.truncate(len);
    }
    for (i, value) in new.iter().enumerate().skip(common) {
        push_token(path, &(prefix + i).to_string());
        ops.push(json!({"op": "add", "path": path.as_str(), "value": value}));
        path.truncate(len);
    }
}

/// Appends `/token` with RFC 6901 escaping (`~` → `~0`, `/` → `~1`).
fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(a: Value, b: Value) -> Vec<Value> {
        let ops = diff(&a, &b);
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
        let mut doc = a.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, b, "patch {ops:?}");
        ops
    }

    #[test]
    fn unchanged_is_empty() {
        assert!(check(json!({"a": [1, 2]}), json!({"a": [1, 2]})).is_empty());
    }

    #[test]
    fn replaces_adds_and_removes_keys() {
        let ops = check(json!({"a": 1, "b": 2}), json!({"a": 3, "c": 4}));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn escapes_keys() {
        let ops = check(json!({"a/b": 1, "m~n": 1}), json!({"a/b": 2, "m~n": 2}));
        assert_eq!(ops[0]["path"], "/a~1b");
        assert_eq!(ops[1]["path"], "/m~0n");
    }

    #[test]
    fn insert_at_front_of_long_array_is_one_op() {
        let a: Vec<_> = (0..10_000).collect();
        let mut b = a.clone();
        b.insert(0, -1);
        let ops = check(json!(a), json!(b));
        assert_eq!(ops, vec![json!({"op": "add", "path": "/0", "value": -1})]);
    }

    #[test]
    fn remove_from_middle_is_one_op() {
        let ops = check(json!([1, 2, 3, 4, 5]), json!([1, 2, 4, 5]));
        assert_eq!(ops, vec![json!({"op": "remove", "path": "/2"})]);
    }

    #[test]
    fn type_changes_and_roots() {
        check(json!({"a": [1]}), json!({"a": {"b": 1}}));
        check(json!([1, 2, 3]), json!("text"));
        check(json!(null), json!({"x": [1, {"y": null}]}));
        let ops = check(json!([[1, 2], [3]]), json!([[1, 5, 2], []]));
        assert!(ops.len() <= 3, "{ops:?}");
    }
}
