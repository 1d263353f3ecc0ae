//! Diffing JSON text without parsing it whole.
//!
//! A poll of a 10 KB document in which one row changed used to parse the whole body into a
//! `serde_json::Value` (a tree about ten times the size of its text, one allocation per
//! string, map and array), compare it with the last one, and serialise it again for the
//! snapshot. Here the body is checked and made compact in one pass over its bytes (see
//! [`super::scan`]), and the diff walks the compact text of both documents: members and
//! elements whose bytes are equal are skipped with a `memcmp`, and only what differs is parsed
//! into values (a changed scalar, an added row). The output is the same as diffing the parsed documents (see
//! [`super::json_patch`]): objects key by key; arrays by their common prefix and suffix, then
//! the changed middle aligned by the same search over hashes of the elements' texts, each gap
//! diffed pairwise. Arrays of a route that matches rows by `array_id` are parsed and matched
//! as before.
//!
//! Text the raw path does not take (see [`compact`]) goes the parsed way, as before.

use super::json_patch::{lcs, push_token, walk, Differ, Options, Search, Stopped, MAX_EDIT_DISTANCE};
use serde_json::{json, Map, Value};
use std::borrow::Cow;

pub use super::scan::compact;
use super::scan::{Index, Text};

/// Bytes that matter when skipping JSON text: 1 in strings (`"`, `\\`), 2 between values
/// (`"`, brackets).
const STOPS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'"' as usize] = 3;
    t[b'\\' as usize] = 1;
    t[b'{' as usize] = 2;
    t[b'}' as usize] = 2;
    t[b'[' as usize] = 2;
    t[b']' as usize] = 2;
    t
};

/// The index just past the string starting (with its quote) at `start`. The text is valid
/// JSON, so the string is closed.
fn string_end(text: &[u8], start: usize) -> usize {
    string_end_escaped(text, start).0
}

/// [`string_end`], and whether the string holds an escape.
fn string_end_escaped(text: &[u8], start: usize) -> (usize, bool) {
    let (mut i, mut escaped) = (start + 1, false);
    while i < text.len() {
        if STOPS[text[i] as usize] & 1 == 0 {
            i += 1;
        } else if text[i] == b'"' {
            return (i + 1, escaped);
        } else {
            escaped = true;
            i += 2;
        }
    }
    (text.len(), escaped)
}

/// The index just past the value starting at `start` in compact JSON text (a slice of the
/// document `index` is of): looked up for a large container, read for the rest. Values looked
/// up in order pass the same `hint` (see [`Index::end_near`]); others pass `usize::MAX`.
fn value_end_near(text: &[u8], start: usize, index: Index<'_>, hint: &mut usize) -> usize {
    match text[start] {
        b'"' => string_end(text, start),
        b'{' | b'[' => {
            if let Some(end) = index.end_near(text, start, hint) {
                return end;
            }
            let mut depth = 0usize;
            let mut i = start;
            while i < text.len() {
                let c = text[i];
                if STOPS[c as usize] & 2 == 0 {
                    i += 1;
                    continue;
                }
                match c {
                    b'"' => {
                        i = string_end(text, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                }
                i += 1;
            }
            text.len()
        }
        _ => start + text[start..].iter().position(|c| matches!(c, b',' | b']' | b'}')).unwrap_or(text.len() - start),
    }
}

/// How many bytes `a` and `b` end with in common, compared eight at a time.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let (ca, cb) = (a.rchunks_exact(8), b.rchunks_exact(8));
    let mut n = 0;
    for (x, y) in ca.zip(cb) {
        if x != y {
            break;
        }
        n += 8;
    }
    n + a[..a.len() - n].iter().rev().zip(b[..b.len() - n].iter().rev()).take_while(|(x, y)| x == y).count()
}

/// The end of the item starting at `start` in a container: an element, or a member
/// (`"key":value`).
fn item_end(text: &[u8], start: usize, object: bool, index: Index<'_>) -> usize {
    let mut hint = usize::MAX;
    item_end_near(text, start, object, index, &mut hint)
}

/// [`item_end`] for the items of a container taken in order (see [`value_end_near`]).
fn item_end_near(text: &[u8], start: usize, object: bool, index: Index<'_>, hint: &mut usize) -> usize {
    if object {
        value_end_near(text, string_end(text, start) + 1, index, hint)
    } else {
        value_end_near(text, start, index, hint)
    }
}

/// Where the item after the one ending at `end` starts (or the closing bracket).
fn next(text: &[u8], end: usize) -> usize {
    if text[end] == b',' {
        end + 1
    } else {
        end
    }
}

/// Two containers of the same kind, by what differs between them.
struct Changed<'t> {
    /// Items equal in both, from the start.
    prefix: usize,
    /// The items between the common prefix and the common suffix.
    old: Vec<&'t [u8]>,
    new: Vec<&'t [u8]>,
    /// Objects only: the members of the common prefix and suffix (the old object's).
    same: Vec<&'t [u8]>,
}

/// Splits two containers (arrays, or objects with `object`) into their common prefix, what
/// differs, and their common suffix, reading as little as it can: the prefix in the old text
/// only (equal bytes at equal places), and the suffix not at all for arrays. The suffix starts
/// where both have an item starting with the same text left to the end.
fn changed<'t>(a: &'t [u8], b: &'t [u8], object: bool, (ia, ib): (Index<'_>, Index<'_>)) -> Changed<'t> {
    let (la, lb) = (a.len(), b.len());
    let mut same = Vec::new();
    let (mut pa, mut pb, mut prefix) = (1, 1, 0);
    let mut hint = usize::MAX;
    while pa == pb && pa < la - 1 && pb < lb - 1 {
        let e = item_end_near(a, pa, object, ia, &mut hint);
        if e >= lb || a[pa..e] != b[pa..e] || !matches!(b[e], b',' | b']' | b'}') {
            break;
        }
        prefix += 1;
        if object {
            same.push(&a[pa..e]);
        }
        (pa, pb) = (next(a, e), next(b, e));
    }
    let suffix = common_suffix(a, b);
    let (mut old, mut new) = (Vec::new(), Vec::new());
    loop {
        let (a_end, b_end) = (pa >= la - 1, pb >= lb - 1);
        let (ra, rb) = (la - pa, lb - pb);
        if a_end && b_end {
            break;
        }
        if !a_end && !b_end && ra == rb && ra <= suffix {
            // The same text from here to the end: the same items.
            while object && pa < la - 1 {
                let e = item_end(a, pa, true, ia);
                same.push(&a[pa..e]);
                pa = next(a, e);
            }
            break;
        }
        if !a_end && (b_end || ra >= rb) {
            let e = item_end(a, pa, object, ia);
            old.push(&a[pa..e]);
            pa = next(a, e);
        }
        if !b_end && (a_end || rb >= ra) {
            let e = item_end(b, pb, object, ib);
            new.push(&b[pb..e]);
            pb = next(b, e);
        }
    }
    Changed { prefix, old, new, same }
}

/// A member's key (unescaped) and its value's text; `None` if the key does not read.
fn member(item: &[u8]) -> Option<(Cow<'_, str>, &[u8])> {
    let key_end = string_end(item, 0);
    let quoted = &item[..key_end];
    let key = if quoted.contains(&b'\\') {
        Cow::Owned(serde_json::from_slice::<String>(quoted).ok()?)
    } else {
        Cow::Borrowed(std::str::from_utf8(&quoted[1..quoted.len() - 1]).ok()?)
    };
    Some((key, &item[key_end + 1..]))
}

/// The changed members of two objects, old and new, each key (unescaped) with its value's
/// text. `None` when a key repeats (serde_json keeps the last value, in the first one's place:
/// left to the parsed way) or does not read.
#[allow(clippy::type_complexity)]
fn members<'t>(c: &Changed<'t>) -> Option<(Vec<(Cow<'t, str>, &'t [u8])>, Vec<(Cow<'t, str>, &'t [u8])>)> {
    let read = |items: &[&'t [u8]]| items.iter().map(|item| member(item)).collect::<Option<Vec<_>>>();
    let (old, new) = (read(&c.old)?, read(&c.new)?);
    let mut keys = std::collections::HashSet::new();
    for (key, _) in &old {
        if !keys.insert(key.as_ref()) {
            return None;
        }
    }
    let mut added = std::collections::HashSet::new();
    for (key, _) in &new {
        if !added.insert(key.as_ref()) {
            return None;
        }
    }
    keys.extend(added);
    if !keys.is_empty() {
        for item in &c.same {
            if keys.contains(member(item)?.0.as_ref()) {
                return None;
            }
        }
    }
    Some((old, new))
}

/// The value of `key` among `members`.
fn find<'t>(members: &[(Cow<'_, str>, &'t [u8])], key: &str) -> Option<&'t [u8]> {
    members.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// Text the raw path met and could not read as serde_json would: the diff is done again the
/// parsed way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

fn parse(text: &[u8]) -> Result<Value, Unreadable> {
    serde_json::from_slice(text).map_err(|_| Unreadable)
}

/// The JSON Patch from the compact text `from` to the compact text `to` (both from
/// [`compact`]), the same as [`super::json_patch::diff_with`] of the parsed documents.
pub fn json_patch(from: &Text, to: &Text, options: Options<'_>) -> Result<Result<Vec<Value>, Stopped>, Unreadable> {
    let mut ops = Vec::new();
    let mut differ = Differ { options, ops: &mut ops, work: options.budget, bytes: 0, stopped: None };
    let mut raw = Raw { d: &mut differ, unreadable: false, index: (from.index(), to.index()) };
    raw.at(&mut String::new(), from, to);
    if raw.unreadable {
        return Err(Unreadable);
    }
    Ok(match differ.stopped {
        Some(why) => Err(why),
        None => Ok(ops),
    })
}

struct Raw<'d, 'o, 'a, 't> {
    d: &'d mut Differ<'o, 'a>,
    unreadable: bool,
    /// The old and the new document's indexes.
    index: (Index<'t>, Index<'t>),
}

impl Raw<'_, '_, '_, '_> {
    fn done(&self) -> bool {
        self.unreadable || self.d.stopped.is_some()
    }

    fn parse(&mut self, text: &[u8]) -> Option<Value> {
        let parsed = parse(text).ok();
        self.unreadable |= parsed.is_none();
        parsed
    }

    /// Diffs the text of two values. Charged as [`Differ::at`] charges a value.
    fn at(&mut self, path: &mut String, from: &[u8], to: &[u8]) {
        if from == to || !self.d.charge(1) {
            return;
        }
        match (from[0], to[0]) {
            (b'{', b'{') => self.objects(path, from, to),
            (b'[', b'[') => self.arrays(path, from, to),
            (a, b) => {
                let Some(new) = self.parse(to) else { return };
                // Values of different kinds are never equal; of one kind they may be, written
                // otherwise (`1.0` and `1.00`, escapes).
                if kind(a) == kind(b) {
                    match self.parse(from) {
                        Some(old) if old != new => {}
                        _ => return,
                    }
                }
                let op = json!({"op": "replace", "path": path.as_str(), "value": new});
                self.d.push(path, op);
            }
        }
    }

    fn objects(&mut self, path: &mut String, from: &[u8], to: &[u8]) {
        let changed = changed(from, to, true, self.index);
        let Some((a, b)) = members(&changed) else {
            return self.parsed(path, from, to);
        };
        let len = path.len();
        for (key, old) in &a {
            if self.done() {
                return;
            }
            push_token(path, key);
            match find(&b, key) {
                None => {
                    let op = json!({"op": "remove", "path": path.as_str()});
                    self.d.push(path, op)
                }
                Some(new) => self.at(path, old, new),
            }
            path.truncate(len);
        }
        for (key, new) in &b {
            if self.done() {
                return;
            }
            if find(&a, key).is_none() {
                let Some(value) = self.parse(new) else { return };
                push_token(path, key);
                let op = json!({"op": "add", "path": path.as_str(), "value": value});
                self.d.push(path, op);
                path.truncate(len);
            }
        }
    }

    fn arrays(&mut self, path: &mut String, from: &[u8], to: &[u8]) {
        if self.d.options.array_id.is_some() {
            return self.parsed(path, from, to);
        }
        let Changed { prefix, old, new, .. } = changed(from, to, false, self.index);
        // As the parsed way does with the changed middle (see `Differ::middle`): align it,
        // then diff each gap pairwise; here elements are hashed and compared by their text.
        let matches = if old.is_empty() || new.is_empty() { Vec::new() } else { self.align(&old, &new) };
        if self.done() {
            return;
        }
        walk(prefix, matches, (old.len(), new.len()), |pos, i, j| self.gap(path, pos, &old[i], &new[j]));
    }

    /// A longest common subsequence of the elements' texts, as `Differ::align` searches it.
    fn align(&mut self, old: &[&[u8]], new: &[&[u8]]) -> Vec<(usize, usize)> {
        if !self.d.charge(old.len() + new.len()) {
            return Vec::new();
        }
        let hasher = ahash::RandomState::new();
        let hashes = |items: &[&[u8]]| items.iter().map(|t| hasher.hash_one(t)).collect::<Vec<u64>>();
        let (ha, hb) = (hashes(old), hashes(new));
        match lcs(&ha, &hb, MAX_EDIT_DISTANCE, &mut self.d.work) {
            Search::Found(pairs) if pairs.iter().all(|&(i, j)| old[i] == new[j]) => pairs,
            Search::Found(_) | Search::TooDifferent => Vec::new(),
            Search::OutOfWork => {
                self.d.stopped = Some(Stopped::Budget);
                Vec::new()
            }
        }
    }

    /// Turns `old` (at `pos`) into `new` as `Differ::gap` does: pairwise diffs, then removals
    /// or additions. Returns the index just after the gap.
    fn gap(&mut self, path: &mut String, pos: usize, old: &[&[u8]], new: &[&[u8]]) -> usize {
        let len = path.len();
        let common = old.len().min(new.len());
        for k in 0..common {
            if self.done() {
                return pos;
            }
            push_token(path, &(pos + k).to_string());
            self.at(path, old[k], new[k]);
            path.truncate(len);
        }
        push_token(path, &(pos + common).to_string());
        for _ in common..old.len() {
            let op = json!({"op": "remove", "path": path.as_str()});
            self.d.push(path, op);
        }
        path.truncate(len);
        for (k, text) in new.iter().enumerate().skip(common) {
            let Some(value) = self.parse(text) else { return pos };
            push_token(path, &(pos + k).to_string());
            let op = json!({"op": "add", "path": path.as_str(), "value": value});
            self.d.push(path, op);
            path.truncate(len);
        }
        pos + new.len()
    }

    /// The parsed way, for this value only.
    fn parsed(&mut self, path: &mut String, from: &[u8], to: &[u8]) {
        if let (Some(a), Some(b)) = (self.parse(from), self.parse(to)) {
            // `at` charges the value again.
            self.d.work = self.d.work.saturating_add(1);
            self.d.at(path, &a, &b);
        }
    }
}

/// What a value's first byte says it is: 0 object, 1 array, 2 string, 3 number, 4 the rest
/// (`true`, `false`, `null`, which are equal only when their bytes are).
fn kind(first: u8) -> u8 {
    match first {
        b'{' => 0,
        b'[' => 1,
        b'"' => 2,
        b'-' | b'0'..=b'9' => 3,
        _ => 4,
    }
}

/// The merge patch from the compact text `from` to `to`, the same as
/// [`super::merge_patch::diff`] of the parsed documents.
pub fn merge_patch(from: &Text, to: &Text) -> Result<Option<Value>, Unreadable> {
    if from[0] != b'{' || to[0] != b'{' {
        return Ok(None);
    }
    Ok(merge_objects(from, to, (from.index(), to.index()))?.map(Value::Object))
}

fn merge_objects(
    from: &[u8],
    to: &[u8],
    index: (Index<'_>, Index<'_>),
) -> Result<Option<Map<String, Value>>, Unreadable> {
    let changed = changed(from, to, true, index);
    let Some((a, b)) = members(&changed) else {
        return Ok(super::merge_patch::diff(&parse(from)?, &parse(to)?).map(|v| match v {
            Value::Object(m) => m,
            _ => unreachable!("a merge patch of objects is an object"),
        }));
    };
    let mut patch = Map::new();
    for (key, _) in &a {
        if find(&b, key).is_none() {
            patch.insert(key.to_string(), Value::Null);
        }
    }
    for (key, new) in &b {
        let old = find(&a, key);
        if let Some(old) = old.filter(|old| old[0] == b'{' && new[0] == b'{') {
            match merge_objects(old, new, index)? {
                // Equal, written differently.
                Some(inner) if inner.is_empty() => {}
                Some(inner) => {
                    patch.insert(key.to_string(), Value::Object(inner));
                }
                None => return Ok(None),
            }
            continue;
        }
        let value = parse(new)?;
        if let Some(old) = old {
            if kind(old[0]) == kind(new[0]) && parse(old)? == value {
                continue;
            }
        }
        if !super::merge_patch::settable(&value) {
            return Ok(None);
        }
        patch.insert(key.to_string(), value);
    }
    Ok(Some(patch))
}

#[cfg(test)]
#[path = "raw_tests.rs"]
mod tests;
