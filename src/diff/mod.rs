//! Pure JSON diffing: no I/O. [`Delta`] holds one change in every format, size-gated.

pub mod json_patch;
pub mod merge_patch;
pub mod raw;
pub mod scan;

use crate::config::{Format, StreamSettings, DEFAULT_DIFF_BUDGET, DEFAULT_PATCH_FLOOR};
use bytes::Bytes;
use serde_json::Value;

/// The encodings of one change from a previous document to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// The new document, compact JSON.
    pub snapshot: Bytes,
    /// RFC 6902 patch, or `None` when a snapshot must be sent instead.
    pub json_patch: Option<Bytes>,
    /// RFC 7396 patch, or `None` when a snapshot must be sent instead.
    pub merge_patch: Option<Bytes>,
    /// The JSON Patch was given up because the diff used its whole work budget.
    pub cut_short: bool,
}

/// How deltas are computed for a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffOptions {
    /// Match array elements that are objects by this field (`stream.array_id`).
    pub array_id: Option<String>,
    /// A patch larger than this fraction of the snapshot is sent as a snapshot
    /// (`stream.max_patch_ratio`)...
    pub max_patch_ratio: f64,
    /// ...unless it is at most this many bytes (`stream.patch_floor`): a small document's
    /// change still shows as a patch.
    pub patch_floor: usize,
    /// Work one JSON Patch diff may do before the change is sent as a snapshot instead
    /// (`stream.diff_budget`; see [`json_patch::Options::budget`]).
    pub budget: usize,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            array_id: None,
            max_patch_ratio: 1.0,
            patch_floor: DEFAULT_PATCH_FLOOR,
            budget: DEFAULT_DIFF_BUDGET,
        }
    }
}

impl DiffOptions {
    /// The largest patch sent instead of a snapshot of `snapshot` bytes.
    fn max_patch_bytes(&self, snapshot: usize) -> usize {
        ((snapshot as f64 * self.max_patch_ratio) as usize).max(self.patch_floor)
    }

    /// The diff options of a stream route.
    pub fn of(settings: &StreamSettings) -> DiffOptions {
        DiffOptions {
            array_id: settings.array_id.clone(),
            max_patch_ratio: settings.max_patch_ratio,
            patch_floor: settings.patch_floor,
            budget: settings.diff_budget,
        }
    }
}

impl Delta {
    /// A change sent whole in every format.
    pub fn whole(snapshot: Bytes) -> Delta {
        Delta { snapshot, json_patch: None, merge_patch: None, cut_short: false }
    }

    /// The patch a subscriber in `format` is sent, if there is one.
    pub fn patch(&self, format: Format) -> Option<&Bytes> {
        match format {
            Format::JsonPatch => self.json_patch.as_ref(),
            Format::MergePatch => self.merge_patch.as_ref(),
            Format::Snapshot => None,
        }
    }

    /// The data a subscriber in `format` is sent: its patch if it has one, else the snapshot.
    pub fn data(&self, format: Format) -> &Bytes {
        self.patch(format).unwrap_or(&self.snapshot)
    }
}

/// Computes both patches from `from` to `to`. A patch is dropped (the change goes out as a
/// snapshot) when it is larger than `max_patch_ratio` of the snapshot (and than `patch_floor`
/// bytes) or the format cannot
/// express it. Returns `None` when nothing changed.
pub fn delta(from: Option<&Value>, to: &Value, options: &DiffOptions) -> Option<Delta> {
    delta_for(from, to, options, Wanted { json_patch: true, merge_patch: true })
}

/// Which patches someone will read. A patch nobody subscribes to in that format is not
/// computed (it is `None`, as a gated patch is): of a large document's delta, most of the time
/// goes to the merge patch and to serialising.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wanted {
    pub json_patch: bool,
    pub merge_patch: bool,
}

impl Wanted {
    pub const NONE: Wanted = Wanted { json_patch: false, merge_patch: false };
}

/// [`delta`], computing only the `wanted` patches. The snapshot is always there. The JSON
/// Patch search stops (and the change goes out as a snapshot) once the patch is sure to fail
/// the size gate, or once it has used `options.budget`.
pub fn delta_for(from: Option<&Value>, to: &Value, options: &DiffOptions, wanted: Wanted) -> Option<Delta> {
    let serialise = |v: &Value| Bytes::from(serde_json::to_vec(v).expect("a Value always serialises"));
    let Some(from) = from else {
        return Some(Delta::whole(serialise(to)));
    };
    // Stops at the first difference, so it costs little when something changed.
    if from == to {
        return None;
    }
    let snapshot = serialise(to);
    let max_bytes = options.max_patch_bytes(snapshot.len());
    let mut cut_short = false;
    let ops = if wanted.json_patch {
        let limits = json_patch::Options { array_id: options.array_id.as_deref(), budget: options.budget, max_bytes };
        match json_patch::diff_with(from, to, limits) {
            Ok(ops) => Some(ops),
            Err(json_patch::Stopped::TooLarge) => None,
            Err(json_patch::Stopped::Budget) => {
                cut_short = true;
                None
            }
        }
    } else {
        None
    };
    let gate = |patch| gate(patch, max_bytes);
    let json_patch = ops.and_then(|ops| gate(Value::Array(ops)));
    let merge_patch = if wanted.merge_patch { merge_patch::diff(from, to).and_then(gate) } else { None };
    Some(Delta { snapshot, json_patch, merge_patch, cut_short })
}

/// [`delta_for`] on JSON text: `from` the compact text of the last document, `to` the compact
/// text of the new one (see [`raw::compact`]), diffed without parsing either whole. The
/// result is [`delta_for`]'s on the parsed documents; `Err` when the text holds something the
/// raw path does not read as serde_json would, and the caller diffs the parsed way.
pub fn delta_text(
    from: Option<&scan::Text>,
    to: scan::Text,
    options: &DiffOptions,
    wanted: Wanted,
) -> Result<Option<Delta>, raw::Unreadable> {
    let Some(from) = from else {
        return Ok(Some(Delta::whole(to.into_bytes())));
    };
    if from[..] == to[..] {
        return Ok(None);
    }
    let max_bytes = options.max_patch_bytes(to.len());
    // The JSON Patch walk also says whether anything changed: it runs even when nobody reads
    // JSON Patch (where the parsed way compares the documents instead).
    let limits = json_patch::Options { array_id: options.array_id.as_deref(), budget: options.budget, max_bytes };
    let (ops, cut_short) = match raw::json_patch(from, &to, limits)? {
        Ok(ops) if ops.is_empty() => return Ok(None),
        Ok(ops) => (Some(ops), false),
        Err(json_patch::Stopped::TooLarge) => (None, false),
        Err(json_patch::Stopped::Budget) => {
            // Out of work before the end: whether anything changed is not known yet.
            let parse = |t: &[u8]| serde_json::from_slice::<Value>(t).map_err(|_| raw::Unreadable);
            if parse(from)? == parse(&to)? {
                return Ok(None);
            }
            (None, true)
        }
    };
    let gate = |patch| gate(patch, max_bytes);
    let json_patch = if wanted.json_patch { ops.and_then(|ops| gate(Value::Array(ops))) } else { None };
    let merge_patch = if wanted.merge_patch { raw::merge_patch(from, &to)?.and_then(gate) } else { None };
    Ok(Some(Delta { snapshot: to.into_bytes(), json_patch, merge_patch, cut_short: cut_short && wanted.json_patch }))
}

/// A patch serialised, or `None` (a snapshot is sent instead) when it is over `max_bytes`.
fn gate(patch: Value, max_bytes: usize) -> Option<Bytes> {
    let bytes = serde_json::to_vec(&patch).expect("a Value always serialises");
    (bytes.len() <= max_bytes).then(|| Bytes::from(bytes))
}

/// The compact text of a JSON document: [`raw::compact`], or for text it does not take,
/// serde_json's own serialisation of the parsed document. `None` when `body` is not JSON.
pub fn document_text(body: &Bytes) -> Option<scan::Text> {
    match raw::compact(body) {
        Some(text) => Some(text),
        None => {
            let doc: Value = serde_json::from_slice(body).ok()?;
            Some(scan::Text::unindexed(Bytes::from(serde_json::to_vec(&doc).expect("a Value always serialises"))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_wanted_patches_are_computed() {
        let pad = "p".repeat(100); // so that the patches pass the size gate
        let (a, b) = (json!({"a": 1, "pad": pad}), json!({"a": 2, "pad": pad}));
        let options = DiffOptions::default();
        let only = |json_patch, merge_patch| delta_for(Some(&a), &b, &options, Wanted { json_patch, merge_patch });
        let d = only(true, false).unwrap();
        assert!(d.json_patch.is_some() && d.merge_patch.is_none());
        let d = only(false, true).unwrap();
        assert!(d.json_patch.is_none());
        assert_eq!(&d.merge_patch.unwrap()[..], br#"{"a":2}"#);
        let d = only(false, false).unwrap();
        assert!(d.json_patch.is_none() && d.merge_patch.is_none());
        assert_eq!(d.snapshot, serde_json::to_vec(&b).unwrap());
        // Equal documents are no change whatever is wanted.
        for (j, m) in [(true, true), (true, false), (false, true), (false, false)] {
            assert!(delta_for(Some(&a), &a, &options, Wanted { json_patch: j, merge_patch: m }).is_none());
        }
    }

    #[test]
    fn first_document_is_a_snapshot() {
        let d = delta(None, &json!({"a": 1}), &DiffOptions::default()).unwrap();
        assert_eq!(&d.snapshot[..], br#"{"a":1}"#);
        assert!(d.json_patch.is_none() && d.merge_patch.is_none());
    }

    #[test]
    fn unchanged_is_none() {
        assert_eq!(delta(Some(&json!({"a": [1]})), &json!({"a": [1]}), &DiffOptions::default()), None);
    }

    #[test]
    fn small_change_is_a_patch() {
        let big: Vec<_> = (0..100).collect();
        let d =
            delta(Some(&json!({"a": 1, "big": big})), &json!({"a": 2, "big": big}), &DiffOptions::default()).unwrap();
        assert_eq!(&d.json_patch.unwrap()[..], br#"[{"op":"replace","path":"/a","value":2}]"#);
        assert_eq!(&d.merge_patch.unwrap()[..], br#"{"a":2}"#);
    }

    #[test]
    fn patch_larger_than_snapshot_is_dropped() {
        let big = "x".repeat(80);
        let d = delta(Some(&json!({"a": 1, "b": 2, "c": &big})), &json!({"x": 1}), &DiffOptions::default()).unwrap();
        assert!(d.json_patch.is_none(), "4 operations are larger than {{\"x\":1}} and than the floor");
        assert_eq!(&d.merge_patch.unwrap()[..], br#"{"a":null,"b":null,"c":null,"x":1}"#, "under the floor");
    }

    #[test]
    fn a_small_documents_change_is_a_patch() {
        // The README's example: the patch (53 bytes) is longer than the document (28), but
        // under the floor, so users see what changed.
        let (a, b) = (json!({"id": 42, "status": "packed"}), json!({"id": 42, "status": "shipped"}));
        let d = delta(Some(&a), &b, &DiffOptions::default()).unwrap();
        assert_eq!(&d.json_patch.unwrap()[..], br#"[{"op":"replace","path":"/status","value":"shipped"}]"#);
        assert_eq!(&d.merge_patch.unwrap()[..], br#"{"status":"shipped"}"#);
        let no_floor = DiffOptions { patch_floor: 0, ..DiffOptions::default() };
        assert!(delta(Some(&a), &b, &no_floor).unwrap().json_patch.is_none());
    }

    #[test]
    fn a_diff_past_its_budget_is_a_snapshot() {
        let rows = |order: &mut dyn Iterator<Item = usize>| {
            Value::Array(order.map(|i| json!({"id": i, "name": format!("row {i}")})).collect())
        };
        let a = json!({"rows": rows(&mut (0..2000))});
        let b = json!({"rows": rows(&mut (0..2000).rev())});
        let tight = DiffOptions { budget: 10_000, max_patch_ratio: 1.0, ..DiffOptions::default() };
        let d = delta(Some(&a), &b, &tight).unwrap();
        assert!(d.cut_short && d.json_patch.is_none(), "the reversed array costs more than the budget");
        assert_eq!(d.snapshot, serde_json::to_vec(&b).unwrap());
        assert!(delta(Some(&a), &a.clone(), &tight).is_none(), "no change is still no change");
        let roomy = DiffOptions { budget: usize::MAX, max_patch_ratio: 1.0, ..DiffOptions::default() };
        let full = delta(Some(&a), &b, &roomy).unwrap();
        assert!(!full.cut_short);
        // One changed row is cheap whatever the budget.
        let mut c = a.clone();
        c["rows"][1000]["name"] = json!("renamed");
        let small = delta(Some(&a), &c, &tight).unwrap();
        assert!(!small.cut_short && small.json_patch.is_some());
    }

    #[test]
    fn the_size_gate_follows_max_patch_ratio() {
        let pad = "0123456789abcdef0123456789abcdef";
        let (a, b) = (json!({"a": 1, "pad": pad}), json!({"a": 2, "pad": pad}));
        // Snapshot 50 bytes; the JSON Patch is 40, more than half; the merge patch is 7.
        let half = DiffOptions { max_patch_ratio: 0.5, patch_floor: 0, ..DiffOptions::default() };
        let d = delta(Some(&a), &b, &half).unwrap();
        assert!(d.json_patch.is_none());
        assert!(d.merge_patch.is_some());
        assert!(
            delta(Some(&a), &b, &DiffOptions::default()).unwrap().json_patch.is_some(),
            "not larger than the snapshot"
        );
    }
}
