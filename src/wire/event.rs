//! Events as they fan out: each is encoded at most once per (protocol, format), and every
//! subscriber that wants that encoding gets the same [`Bytes`].

use super::encode::{encode, Protocol};
use crate::config::Format;
use crate::diff::Delta;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// What a subscriber's queue carries.
#[derive(Debug, Clone)]
pub enum Msg {
    /// A new version, sent as a patch where the subscriber's format has one.
    Event(Arc<Event>),
    /// A version sent whole (first event, resynchronisation).
    Snapshot(Arc<Event>),
    Error(Arc<ErrorEvent>),
}

/// A resume point given by a client: `<epoch>-<version>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeId {
    pub epoch: String,
    pub version: u64,
}

impl ResumeId {
    /// Parses an event id: an alphanumeric epoch, `-`, and a decimal version.
    pub fn parse(id: &str) -> Option<ResumeId> {
        let (epoch, version) = id.trim().split_once('-')?;
        if epoch.is_empty() || epoch.len() > 32 || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        if version.is_empty() || version.len() > 20 || !version.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(ResumeId { epoch: epoch.to_string(), version: version.parse().ok()? })
    }
}

/// What a subscriber receives for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Snapshot,
    Patch,
    Error,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Snapshot => "snapshot",
            Kind::Patch => "patch",
            Kind::Error => "error",
        }
    }
}

/// One version of a topic's document. Its patches stay for as long as it is in the topic's
/// history; the whole document (and its encodings) only until a newer version supersedes it
/// ([`Event::release`]): history costs the size of its patches, not a document per version.
#[derive(Debug)]
pub struct Event {
    /// `<epoch>-<version>`.
    pub id: String,
    pub version: u64,
    json_patch: Option<Bytes>,
    merge_patch: Option<Bytes>,
    /// Per format, the data bytes of every event of the topic up to and including this one:
    /// how far behind a subscriber is, in bytes, is the difference of two offsets.
    pub offsets: [u64; 3],
    /// Encodings of the patches, per protocol and patch format.
    patch_frames: [OnceLock<Bytes>; 4],
    whole: ArcSwapOption<Whole>,
    /// When the poll that made it was answered (or, for one received from a cluster's leader,
    /// when it arrived).
    born: Instant,
    /// The latest time it was handed to a subscriber's socket, in nanoseconds after `born`
    /// (0: never).
    written: AtomicU64,
}

/// The whole document of a version and its encodings, one per protocol.
#[derive(Debug)]
struct Whole {
    snapshot: Bytes,
    frames: [OnceLock<Bytes>; 2],
}

impl Event {
    /// A new version, following events whose offsets end at `previous`.
    pub fn new(epoch: &str, version: u64, delta: Delta, previous: [u64; 3]) -> Event {
        Event::born_at(epoch, version, delta, previous, Instant::now())
    }

    /// A new version whose poll was answered at `born`.
    pub fn born_at(epoch: &str, version: u64, delta: Delta, previous: [u64; 3], born: Instant) -> Event {
        let mut offsets = previous;
        for format in Format::ALL {
            offsets[format.index()] += delta.data(format).len() as u64;
        }
        let Delta { snapshot, json_patch, merge_patch, .. } = delta;
        Event {
            id: format!("{epoch}-{version}"),
            version,
            json_patch,
            merge_patch,
            offsets,
            patch_frames: Default::default(),
            whole: ArcSwapOption::from_pointee(Whole { snapshot, frames: Default::default() }),
            born,
            written: AtomicU64::new(0),
        }
    }

    /// The first half of its id: versions of one epoch follow each other.
    pub fn epoch(&self) -> &str {
        self.id.rsplit_once('-').map_or("", |(epoch, _)| epoch)
    }

    /// Notes that it is being handed to a subscriber's socket now.
    pub fn note_written(&self) {
        let after = self.born.elapsed().as_nanos().clamp(1, u64::MAX as u128) as u64;
        // A read first: the shared line is written only when this is the latest hand-over.
        if after > self.written.load(Ordering::Relaxed) {
            self.written.fetch_max(after, Ordering::Relaxed);
        }
    }

    /// From the poll's answer to its last hand-over to a subscriber, if it had one.
    pub fn fanout_lag(&self) -> Option<std::time::Duration> {
        let n = self.written.load(Ordering::Relaxed);
        (n > 0).then(|| std::time::Duration::from_nanos(n))
    }

    /// The patch a subscriber in `format` is sent for this event, if there is one.
    pub fn patch(&self, format: Format) -> Option<&Bytes> {
        match format {
            Format::JsonPatch => self.json_patch.as_ref(),
            Format::MergePatch => self.merge_patch.as_ref(),
            Format::Snapshot => None,
        }
    }

    /// The whole document, unless a newer version has superseded this one.
    pub fn snapshot(&self) -> Option<Bytes> {
        self.whole.load().as_ref().map(|w| w.snapshot.clone())
    }

    /// Lets the whole document go: a newer version is current. Subscribers that still need it
    /// (a snapshot of this version) are resynchronised with the current one instead.
    pub fn release(&self) {
        self.whole.store(None);
    }

    /// The bytes this event holds once released, for the history's byte budget: its patches,
    /// and their encodings for both protocols.
    pub fn retained_bytes(&self) -> usize {
        let patches = self.json_patch.as_ref().map_or(0, Bytes::len) + self.merge_patch.as_ref().map_or(0, Bytes::len);
        3 * patches + self.id.len() + std::mem::size_of::<Event>()
    }

    /// The wire bytes of this event for one protocol and format, encoded on first use: the
    /// patch if the format has one, otherwise the whole document (`Format::Snapshot` always
    /// gives it, which is also what a new subscriber of any format receives first). `None`
    /// when the whole document is needed but was released.
    pub fn frame(&self, protocol: Protocol, format: Format) -> Option<(Bytes, Kind)> {
        if let Some(patch) = self.patch(format) {
            let slot = &self.patch_frames[protocol.index() * 2 + format.index()];
            let bytes = slot.get_or_init(|| encode(protocol, Some(&self.id), Kind::Patch.name(), patch));
            return Some((bytes.clone(), Kind::Patch));
        }
        let whole = self.whole.load_full()?;
        let slot = &whole.frames[protocol.index()];
        let bytes = slot.get_or_init(|| encode(protocol, Some(&self.id), Kind::Snapshot.name(), &whole.snapshot));
        Some((bytes.clone(), Kind::Snapshot))
    }
}

/// An `error` event. Errors carry no id: they are not part of the document's history.
#[derive(Debug)]
pub struct ErrorEvent {
    /// The `status` and `error` fields, to tell one failure from another.
    pub status: u16,
    pub error: String,
    /// The plain-words `message` field.
    pub message: String,
    /// True when the stream ends after this event (401, 403, 404, 410, route gone).
    pub terminal: bool,
    /// Set when the proxy ends the stream for its own reasons (the route was removed or
    /// changed): WebSocket clients get close 1001 with this reason.
    pub going_away: Option<&'static str>,
    sse: Bytes,
    ws: Bytes,
}

impl ErrorEvent {
    /// `status` is the upstream's HTTP status, or 502/504 when it could not be reached.
    pub fn new(status: u16, error: &str, message: &str, terminal: bool) -> ErrorEvent {
        let data = json!({"status": status, "error": error, "message": message, "retrying": !terminal});
        let data = serde_json::to_vec(&data).expect("a Value always serialises");
        ErrorEvent {
            status,
            error: error.to_string(),
            message: message.to_string(),
            terminal,
            going_away: None,
            sse: encode(Protocol::Sse, None, "error", &data),
            ws: encode(Protocol::WebSocket, None, "error", &data),
        }
    }

    /// A terminal error after which WebSocket clients are closed with 1001 and `reason`.
    pub fn going_away(status: u16, error: &str, message: &str, reason: &'static str) -> ErrorEvent {
        ErrorEvent { going_away: Some(reason), ..ErrorEvent::new(status, error, message, true) }
    }

    pub fn frame(&self, protocol: Protocol) -> Bytes {
        match protocol {
            Protocol::Sse => self.sse.clone(),
            Protocol::WebSocket => self.ws.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_ids_parse() {
        assert_eq!(ResumeId::parse("9f2c-12"), Some(ResumeId { epoch: "9f2c".into(), version: 12 }));
        for bad in ["", "12", "-1", "x-", "x-1.5", "x--1", "a-b-3", "x-+1", "é-1", "x-99999999999999999999999"] {
            assert_eq!(ResumeId::parse(bad), None, "{bad}");
        }
    }

    fn event(json_patch: Option<&'static [u8]>) -> Event {
        let delta = Delta {
            snapshot: Bytes::from_static(br#"{"a":2}"#),
            json_patch: json_patch.map(Bytes::from_static),
            merge_patch: Some(Bytes::from_static(br#"{"a":2}"#)),
            cut_short: false,
        };
        Event::new("ep", 7, delta, [0; 3])
    }

    #[test]
    fn encodes_once_and_shares_bytes() {
        let e = event(Some(br#"[{"op":"replace","path":"/a","value":2}]"#));
        let (a, kind) = e.frame(Protocol::Sse, Format::JsonPatch).unwrap();
        let (b, _) = e.frame(Protocol::Sse, Format::JsonPatch).unwrap();
        assert_eq!(kind, Kind::Patch);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same allocation goes to every subscriber");
        let block = b"id: ep-7\nevent: patch\ndata: [{\"op\":\"replace\",\"path\":\"/a\",\"value\":2}]\n\n";
        assert_eq!(&a[..], &block[..], "an SSE event is its block, with no transport framing");
    }

    #[test]
    fn gated_patch_goes_out_as_snapshot() {
        let e = event(None);
        let (bytes, kind) = e.frame(Protocol::Sse, Format::JsonPatch).unwrap();
        assert_eq!(kind, Kind::Snapshot);
        assert_eq!(&bytes[..], b"id: ep-7\nevent: snapshot\ndata: {\"a\":2}\n\n");
        let (snapshot, _) = e.frame(Protocol::Sse, Format::Snapshot).unwrap();
        assert_eq!(bytes.as_ptr(), snapshot.as_ptr(), "a format without a patch shares the snapshot's encoding");
        assert_eq!(e.frame(Protocol::Sse, Format::MergePatch).unwrap().1, Kind::Patch);
        assert_eq!(e.frame(Protocol::WebSocket, Format::Snapshot).unwrap().1, Kind::Snapshot);
    }

    #[test]
    fn a_released_event_keeps_only_its_patches() {
        let e = event(None);
        e.release();
        assert_eq!(e.snapshot(), None);
        assert!(e.frame(Protocol::Sse, Format::Snapshot).is_none(), "the whole document is gone");
        assert!(e.frame(Protocol::Sse, Format::JsonPatch).is_none(), "this format had no patch");
        assert_eq!(e.frame(Protocol::WebSocket, Format::MergePatch).unwrap().1, Kind::Patch);
        assert!(e.retained_bytes() < 400, "{}", e.retained_bytes());
    }

    #[test]
    fn error_events_say_whether_they_retry() {
        let e = ErrorEvent::new(503, "upstream_unavailable", "upstream answered 503", false);
        let sse = String::from_utf8(e.frame(Protocol::Sse).to_vec()).unwrap();
        assert!(sse.starts_with("event: error\ndata: {\"status\":503,\"error\":\"upstream_unavailable\""));
        assert!(sse.contains("\"retrying\":true"));
        assert!(!sse.contains("id:"));
    }
}
