//! RFC 6902 JSON Patch generation.
//!
//! Objects are compared key by key. Arrays lose their common prefix and suffix first; the
//! changed middle is aligned with a longest-common-subsequence search (Myers' O(ND)
//! algorithm), so inserting or removing elements anywhere costs operations only for them.
//! Elements left unmatched between two aligned ones are diffed pairwise (replaced in place,
//! recursively), and the surplus is removed or added. With an `array_id` field, arrays of
//! objects that all carry a unique id are instead matched by identity, and reordered
//! elements become `move` operations. See `docs/diff.md`.

use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// Largest edit distance the LCS search explores before it falls back to pairwise replacement.
pub const MAX_EDIT_DISTANCE: usize = 1024;

/// How arrays are matched, and how much a diff may cost.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// Match array elements that are objects by this field's value.
    pub array_id: Option<&'a str>,
    /// Units of work the diff may do: one per value visited, per step of the array search
    /// and per element hashed, eight per operation. Past it the diff stops ([`Stopped::Budget`]).
    pub budget: usize,
    /// Stop once the patch is certain to be longer than this many bytes
    /// ([`Stopped::TooLarge`]): it would be sent as a snapshot anyway.
    pub max_bytes: usize,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options { array_id: None, budget: usize::MAX, max_bytes: usize::MAX }
    }
}

/// Why a diff stopped before the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It used up its work budget.
    Budget,
    /// The patch grew past `max_bytes`.
    TooLarge,
}

/// Work charged for each operation produced (building it clones its value and its path).
const OP_COST: usize = 8;
/// The bytes of an operation besides its path and value: `{"op":"remove","path":""}`.
const OP_OVERHEAD: usize = 24;

/// The operations that turn `from` into `to`, in order.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    diff_with(from, to, Options::default()).expect("an unlimited diff always finishes")
}

/// [`diff`] with options; an error when the diff stopped at one of its limits.
pub fn diff_with(from: &Value, to: &Value, options: Options<'_>) -> Result<Vec<Value>, Stopped> {
    let mut ops = Vec::new();
    let mut differ = Differ { options, ops: &mut ops, work: options.budget, bytes: 0, stopped: None };
    differ.at(&mut String::new(), from, to);
    match differ.stopped {
        Some(why) => Err(why),
        None => Ok(ops),
    }
}

pub(super) struct Differ<'o, 'a> {
    pub(super) options: Options<'a>,
    pub(super) ops: &'o mut Vec<Value>,
    /// Work left in the budget.
    pub(super) work: usize,
    /// Bytes of the patch so far, counted from below (paths and fixed parts, not values).
    pub(super) bytes: usize,
    pub(super) stopped: Option<Stopped>,
}

impl Differ<'_, '_> {
    /// Spends `units` of work; false (and stopped) when the budget is gone.
    pub(super) fn charge(&mut self, units: usize) -> bool {
        if self.stopped.is_some() {
            return false;
        }
        match self.work.checked_sub(units) {
            Some(left) => {
                self.work = left;
                true
            }
            None => {
                self.stopped = Some(Stopped::Budget);
                false
            }
        }
    }

    pub(super) fn push(&mut self, path: &str, op: Value) {
        if !self.charge(OP_COST) {
            return;
        }
        self.bytes += path.len() + OP_OVERHEAD;
        if self.bytes > self.options.max_bytes {
            self.stopped = Some(Stopped::TooLarge);
            return;
        }
        self.ops.push(op);
    }

    pub(super) fn at(&mut self, path: &mut String, from: &Value, to: &Value) {
        if !self.charge(1) {
            return;
        }
        match (from, to) {
            (Value::Object(a), Value::Object(b)) => self.objects(path, a, b),
            (Value::Array(a), Value::Array(b)) => self.arrays(path, a, b),
            _ if from == to => {}
            _ => {
                let op = json!({"op": "replace", "path": path.as_str(), "value": to});
                self.push(path, op)
            }
        }
    }

    fn objects(&mut self, path: &mut String, a: &Map<String, Value>, b: &Map<String, Value>) {
        let len = path.len();
        for (key, old) in a {
            if self.stopped.is_some() {
                return;
            }
            push_token(path, key);
            match b.get(key) {
                None => {
                    let op = json!({"op": "remove", "path": path.as_str()});
                    self.push(path, op)
                }
                Some(new) => self.at(path, old, new),
            }
            path.truncate(len);
        }
        for (key, new) in b {
            if !a.contains_key(key) {
                push_token(path, key);
                let op = json!({"op": "add", "path": path.as_str(), "value": new});
                self.push(path, op);
                path.truncate(len);
            }
        }
    }

    fn arrays(&mut self, path: &mut String, a: &[Value], b: &[Value]) {
        if a == b {
            return;
        }
        if let Some(field) = self.options.array_id {
            if let (Some(ka), Some(kb)) = (identities(a, field), identities(b, field)) {
                return self.by_identity(path, a, b, &ka, &kb);
            }
        }
        let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let max_suffix = a.len().min(b.len()) - prefix;
        let suffix = a.iter().rev().zip(b.iter().rev()).take(max_suffix).take_while(|(x, y)| x == y).count();
        self.middle(path, prefix, &a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    }

    /// Turns the changed middle `old` of an array, at index `prefix`, into `new`: aligned,
    /// then each gap diffed pairwise.
    fn middle(&mut self, path: &mut String, prefix: usize, old: &[Value], new: &[Value]) {
        let matches = if old.is_empty() || new.is_empty() { Vec::new() } else { self.align(old, new) };
        if self.stopped.is_some() {
            return;
        }
        walk(prefix, matches, (old.len(), new.len()), |pos, i, j| self.gap(path, pos, &old[i], &new[j]));
    }

    /// The pairs of equal elements to keep: a longest common subsequence of `old` and `new`,
    /// searched over hashes of the elements (so that each comparison costs the same, however
    /// large the elements) and checked against the elements themselves. Empty when the arrays
    /// differ by more than [`MAX_EDIT_DISTANCE`] (or, improbably, two hashes collide).
    fn align(&mut self, old: &[Value], new: &[Value]) -> Vec<(usize, usize)> {
        if !self.charge(old.len() + new.len()) {
            return Vec::new();
        }
        let hasher = ahash::RandomState::new();
        let hashes = |items: &[Value]| items.iter().map(|v| hasher.hash_one(Hashed(v))).collect::<Vec<u64>>();
        let (ha, hb) = (hashes(old), hashes(new));
        match lcs(&ha, &hb, MAX_EDIT_DISTANCE, &mut self.work) {
            Search::Found(pairs) if pairs.iter().all(|&(i, j)| old[i] == new[j]) => pairs,
            Search::Found(_) | Search::TooDifferent => Vec::new(),
            Search::OutOfWork => {
                self.stopped = Some(Stopped::Budget);
                Vec::new()
            }
        }
    }

    /// Turns `old` (at `pos`) into `new`: pairwise diffs, then removals or additions.
    /// Returns the index just after the gap.
    fn gap(&mut self, path: &mut String, pos: usize, old: &[Value], new: &[Value]) -> usize {
        let len = path.len();
        let common = old.len().min(new.len());
        for k in 0..common {
            if self.stopped.is_some() {
                return pos;
            }
            push_token(path, &(pos + k).to_string());
            self.at(path, &old[k], &new[k]);
            path.truncate(len);
        }
        push_token(path, &(pos + common).to_string());
        for _ in common..old.len() {
            let op = json!({"op": "remove", "path": path.as_str()});
            self.push(path, op);
        }
        path.truncate(len);
        for (k, value) in new.iter().enumerate().skip(common) {
            push_token(path, &(pos + k).to_string());
            let op = json!({"op": "add", "path": path.as_str(), "value": value});
            self.push(path, op);
            path.truncate(len);
        }
        pos + new.len()
    }

    /// Matches elements by id: removals, then each target position filled by an addition,
    /// a move, or the element already there, each then diffed in place.
    fn by_identity(&mut self, path: &mut String, a: &[Value], b: &[Value], ka: &[String], kb: &[String]) {
        if !self.charge(a.len() + b.len()) {
            return;
        }
        let len = path.len();
        let wanted: HashSet<&str> = kb.iter().map(String::as_str).collect();
        let old_by_id: HashMap<&str, &Value> = ka.iter().map(String::as_str).zip(a).collect();
        let mut cur: Vec<&str> = ka.iter().map(String::as_str).collect();
        for idx in (0..cur.len()).rev() {
            if !wanted.contains(cur[idx]) {
                push_token(path, &idx.to_string());
                let op = json!({"op": "remove", "path": path.as_str()});
                self.push(path, op);
                path.truncate(len);
                cur.remove(idx);
            }
        }
        for (idx, (id, value)) in kb.iter().zip(b).enumerate() {
            if self.stopped.is_some() {
                return;
            }
            let id = id.as_str();
            match old_by_id.get(id) {
                None => {
                    push_token(path, &idx.to_string());
                    let op = json!({"op": "add", "path": path.as_str(), "value": value});
                    self.push(path, op);
                    path.truncate(len);
                    cur.insert(idx, id);
                }
                Some(old) => {
                    if cur[idx] != id {
                        let from = idx + cur[idx..].iter().position(|c| *c == id).expect("kept ids are present");
                        // Finding and moving the element walks the rest of the list.
                        if !self.charge(cur.len() - idx) {
                            return;
                        }
                        let mut from_path = path.clone();
                        push_token(&mut from_path, &from.to_string());
                        push_token(path, &idx.to_string());
                        let op = json!({"op": "move", "from": from_path, "path": path.as_str()});
                        self.bytes += from_path.len() + 9;
                        self.push(path, op);
                        path.truncate(len);
                        let moved = cur.remove(from);
                        cur.insert(idx, moved);
                    }
                    push_token(path, &idx.to_string());
                    self.at(path, old, value);
                    path.truncate(len);
                }
            }
        }
    }
}

/// A JSON value hashed for the array search. Equal values hash alike, except objects whose
/// keys come in another order (`==` ignores the order): those are then simply not matched, which
/// makes the patch longer but never wrong. Values that hash alike are compared before use.
struct Hashed<'a>(&'a Value);

impl Hash for Hashed<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self.0 {
            Value::Null => state.write_u8(0),
            Value::Bool(b) => state.write_u8(1 + *b as u8),
            Value::Number(n) => {
                state.write_u8(3);
                if let Some(u) = n.as_u64() {
                    state.write_u64(u);
                } else if let Some(i) = n.as_i64() {
                    state.write_i64(i);
                } else {
                    state.write_u64(n.as_f64().unwrap_or(0.0).to_bits());
                }
            }
            Value::String(s) => {
                state.write_u8(4);
                s.hash(state);
            }
            Value::Array(items) => {
                state.write_u8(5);
                state.write_usize(items.len());
                for item in items {
                    Hashed(item).hash(state);
                }
            }
            Value::Object(map) => {
                state.write_u8(6);
                state.write_usize(map.len());
                for (k, v) in map {
                    k.hash(state);
                    Hashed(v).hash(state);
                }
            }
        }
    }
}

/// The ids of an array's elements, if every element is an object whose `field` is a string
/// or number, unique within the array.
fn identities(items: &[Value], field: &str) -> Option<Vec<String>> {
    let mut seen = HashSet::with_capacity(items.len());
    items
        .iter()
        .map(|item| {
            let id = match item.as_object()?.get(field)? {
                Value::String(s) => format!("s{s}"),
                Value::Number(n) => format!("n{n}"),
                _ => return None,
            };
            seen.insert(id.clone()).then_some(id)
        })
        .collect()
}

/// What the search for a longest common subsequence found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Search {
    /// Index pairs of a longest common subsequence, in order.
    Found(Vec<(usize, usize)>),
    /// The edit distance exceeds the limit.
    TooDifferent,
    /// The work budget ran out.
    OutOfWork,
}

/// A longest common subsequence of `a` and `b`, searched up to edit distance `max_d`, each
/// step taken from `work`. Myers' greedy algorithm; each round's frontier is kept (for round
/// `d`, diagonals `-d-1..=d+1`) so the path can be walked back: O(D²) memory.
pub(super) fn lcs(a: &[u64], b: &[u64], max_d: usize, work: &mut usize) -> Search {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let max_d = max_d.min((n + m) as usize) as isize;
    let offset = max_d + 1;
    let mut v = vec![0isize; (2 * offset + 1) as usize];
    let mut trace: Vec<Vec<isize>> = Vec::new();
    for d in 0..=max_d {
        // Saving the frontier and visiting each diagonal.
        let Some(left) = work.checked_sub(3 * d as usize + 3) else {
            return Search::OutOfWork;
        };
        *work = left;
        trace.push(v[(offset - d - 1) as usize..=(offset + d + 1) as usize].to_vec());
        for k in (-d..=d).step_by(2) {
            let idx = (k + offset) as usize;
            let mut x = if k == -d || (k != d && v[idx - 1] < v[idx + 1]) { v[idx + 1] } else { v[idx - 1] + 1 };
            let mut y = x - k;
            let start = x;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            let Some(left) = work.checked_sub((x - start) as usize) else {
                return Search::OutOfWork;
            };
            *work = left;
            v[idx] = x;
            if x >= n && y >= m {
                return Search::Found(backtrack(&trace, n, m));
            }
        }
    }
    Search::TooDifferent
}

/// Walks the saved frontiers back from `(n, m)`, collecting the diagonal (matching) steps.
fn backtrack(trace: &[Vec<isize>], n: isize, m: isize) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    let (mut x, mut y) = (n, m);
    for (d, v) in trace.iter().enumerate().rev() {
        let d = d as isize;
        let at = |k: isize| v[(k + d + 1) as usize];
        let k = x - y;
        let prev_k = if k == -d || (k != d && at(k - 1) < at(k + 1)) { k + 1 } else { k - 1 };
        let prev_x = at(prev_k);
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            x -= 1;
            y -= 1;
            pairs.push((x as usize, y as usize));
        }
        (x, y) = (prev_x, prev_y);
    }
    pairs.reverse();
    pairs
}

/// Walks an alignment of an array's changed middle, which starts at index `prefix`: `gap` is
/// given each stretch of old and new elements between two matched pairs (and after the last)
/// with the index it starts at in the array as patched so far, and returns the index after it.
pub(super) fn walk(
    prefix: usize,
    matches: Vec<(usize, usize)>,
    (old, new): (usize, usize),
    mut gap: impl FnMut(usize, std::ops::Range<usize>, std::ops::Range<usize>) -> usize,
) {
    let mut pos = prefix;
    let (mut i, mut j) = (0, 0);
    for (mi, mj) in matches.into_iter().chain(std::iter::once((old, new))) {
        pos = gap(pos, i..mi, j..mj);
        pos += 1; // the matched element itself
        (i, j) = (mi + 1, mj + 1);
    }
}

/// Appends `/token` with RFC 6901 escaping (`~` → `~0`, `/` → `~1`).
pub(super) fn push_token(path: &mut String, token: &str) {
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

    fn check_with(a: Value, b: Value, options: Options<'_>) -> Vec<Value> {
        let ops = diff_with(&a, &b, options).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
        let mut doc = a.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, b, "patch {ops:?}");
        ops
    }

    fn check(a: Value, b: Value) -> Vec<Value> {
        check_with(a, b, Options::default())
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
    fn rotation_is_two_ops() {
        // Drop the first, append one: prefix/suffix trimming alone would replace every index.
        let a: Vec<_> = (0..1000).collect();
        let b: Vec<_> = (1..1001).collect();
        let ops = check(json!(a), json!(b));
        assert_eq!(
            ops,
            vec![json!({"op": "remove", "path": "/0"}), json!({"op": "add", "path": "/999", "value": 1000})]
        );
    }

    #[test]
    fn scattered_edits_in_a_long_array_stay_small() {
        let a: Vec<Value> = (0..10_000).map(|i| json!({"n": i})).collect();
        let mut b = a.clone();
        b.remove(7000);
        b.insert(5000, json!({"n": "new"}));
        b.remove(100);
        b[2000] = json!({"n": -1});
        let ops = check(Value::Array(a), Value::Array(b));
        assert!(ops.len() <= 4, "{ops:?}");
    }

    #[test]
    fn changed_elements_are_diffed_in_place() {
        let ops =
            check(json!([{"id": 1, "s": "a"}, {"id": 2, "s": "b"}]), json!([{"id": 1, "s": "a"}, {"id": 2, "s": "c"}]));
        assert_eq!(ops, vec![json!({"op": "replace", "path": "/1/s", "value": "c"})]);
    }

    #[test]
    fn too_many_edits_fall_back_to_pairwise() {
        let a: Vec<_> = (0..3000).collect();
        let b: Vec<_> = (0..3000).map(|i| if i % 2 == 0 { -i } else { i }).collect();
        check(json!(a), json!(b));
    }

    #[test]
    fn type_changes_and_roots() {
        check(json!({"a": [1]}), json!({"a": {"b": 1}}));
        check(json!([1, 2, 3]), json!("text"));
        check(json!(null), json!({"x": [1, {"y": null}]}));
        let ops = check(json!([[1, 2], [3]]), json!([[1, 5, 2], []]));
        assert!(ops.len() <= 3, "{ops:?}");
    }

    #[test]
    fn array_id_turns_reorders_into_moves() {
        let id = Options { array_id: Some("id"), ..Options::default() };
        let a = json!([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3, "v": "c"}]);
        let b = json!([{"id": 3, "v": "c"}, {"id": 1, "v": "a"}, {"id": 2, "v": "B"}]);
        let ops = check_with(a, b, id);
        assert_eq!(
            ops,
            vec![
                json!({"op": "move", "from": "/2", "path": "/0"}),
                json!({"op": "replace", "path": "/2/v", "value": "B"}),
            ]
        );
    }

    #[test]
    fn array_id_adds_and_removes_by_identity() {
        let id = Options { array_id: Some("id"), ..Options::default() };
        let ops = check_with(
            json!({"rows": [{"id": "a"}, {"id": "b"}, {"id": "c"}]}),
            json!({"rows": [{"id": "x"}, {"id": "a"}, {"id": "c"}]}),
            id,
        );
        assert_eq!(
            ops,
            vec![
                json!({"op": "remove", "path": "/rows/1"}),
                json!({"op": "add", "path": "/rows/0", "value": {"id": "x"}}),
            ]
        );
    }

    #[test]
    fn array_id_is_ignored_where_ids_are_missing_or_repeated() {
        let id = Options { array_id: Some("id"), ..Options::default() };
        check_with(json!([{"id": 1}, {"id": 1}]), json!([{"id": 1}]), id);
        check_with(json!([{"id": 1}, 2]), json!([2, {"id": 1}]), id);
        check_with(json!([{"id": [1]}]), json!([]), id);
    }
}
