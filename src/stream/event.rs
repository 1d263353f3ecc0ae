//! Events as they fan out: each is encoded at most once per (protocol, format), and every
//! subscriber that wants that encoding gets the same [`Bytes`].

use super::encode::{encode, Protocol};
use crate::config::Format;
use crate::diff::Delta;
use bytes::Bytes;
use serde_json::json;
use std::sync::OnceLock;

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

/// One version of a topic's document.
#[derive(Debug)]
pub struct Event {
    /// `<epoch>-<version>`.
    pub id: String,
    pub version: u64,
    pub delta: Delta,
    /// Per format, the data bytes of every event of the topic up to and including this one:
    /// how far behind a subscriber is, in bytes, is the difference of two offsets.
    pub offsets: [u64; 3],
    frames: [OnceLock<Bytes>; 6],
}

impl Event {
    /// A new version, following events whose offsets end at `previous`.
    pub fn new(epoch: &str, version: u64, delta: Delta, previous: [u64; 3]) -> Event {
        let mut offsets = previous;
        for format in Format::ALL {
            offsets[format.index()] += delta.data(format).len() as u64;
        }
        Event { id: format!("{epoch}-{version}"), version, delta, offsets, frames: Default::default() }
    }

    /// What a subscriber in `format` is sent for this event: a patch if the format has one,
    /// otherwise the whole document.
    pub fn kind(&self, format: Format) -> Kind {
        if self.delta.patch(format).is_some() {
            Kind::Patch
        } else {
            Kind::Snapshot
        }
    }

    /// The wire bytes of this event for one protocol and format, encoded on first use.
    /// `Format::Snapshot` gives the whole document, which is also what a new subscriber
    /// of any format receives first. A format without a patch for this event shares the
    /// snapshot's encoding.
    pub fn frame(&self, protocol: Protocol, format: Format) -> (Bytes, Kind) {
        let kind = self.kind(format);
        let format = if kind == Kind::Snapshot { Format::Snapshot } else { format };
        let slot = &self.frames[protocol.index() * 3 + format.index()];
        let bytes = slot.get_or_init(|| encode(protocol, Some(&self.id), kind.name(), self.delta.data(format)));
        (bytes.clone(), kind)
    }
}

/// An `error` event. Errors carry no id: they are not part of the document's history.
#[derive(Debug)]
pub struct ErrorEvent {
    /// The `status` and `error` fields, to tell one failure from another.
    pub status: u16,
    pub error: String,
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
    use crate::stream::encode::chunk;

    fn event(json_patch: Option<&'static [u8]>) -> Event {
        let delta = Delta {
            snapshot: Bytes::from_static(br#"{"a":2}"#),
            json_patch: json_patch.map(Bytes::from_static),
            merge_patch: Some(Bytes::from_static(br#"{"a":2}"#)),
            skipped: Default::default(),
        };
        Event::new("ep", 7, delta, [0; 3])
    }

    #[test]
    fn encodes_once_and_shares_bytes() {
        let e = event(Some(br#"[{"op":"replace","path":"/a","value":2}]"#));
        let (a, kind) = e.frame(Protocol::Sse, Format::JsonPatch);
        let (b, _) = e.frame(Protocol::Sse, Format::JsonPatch);
        assert_eq!(kind, Kind::Patch);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same allocation goes to every subscriber");
        let block = b"id: ep-7\nevent: patch\ndata: [{\"op\":\"replace\",\"path\":\"/a\",\"value\":2}]\n\n";
        assert_eq!(&a[..], &chunk(block)[..], "an SSE event is one HTTP chunk");
    }

    #[test]
    fn gated_patch_goes_out_as_snapshot() {
        let e = event(None);
        let (bytes, kind) = e.frame(Protocol::Sse, Format::JsonPatch);
        assert_eq!(kind, Kind::Snapshot);
        assert_eq!(&bytes[..], &chunk(b"id: ep-7\nevent: snapshot\ndata: {\"a\":2}\n\n")[..]);
        let (snapshot, _) = e.frame(Protocol::Sse, Format::Snapshot);
        assert_eq!(bytes.as_ptr(), snapshot.as_ptr(), "a format without a patch shares the snapshot's encoding");
        assert_eq!(e.frame(Protocol::Sse, Format::MergePatch).1, Kind::Patch);
        assert_eq!(e.frame(Protocol::WebSocket, Format::Snapshot).1, Kind::Snapshot);
    }

    #[test]
    fn error_events_say_whether_they_retry() {
        let e = ErrorEvent::new(503, "upstream_unavailable", "upstream answered 503", false);
        let sse = String::from_utf8(e.frame(Protocol::Sse).to_vec()).unwrap();
        assert!(sse.contains("\r\nevent: error\ndata: {\"status\":503,\"error\":\"upstream_unavailable\""));
        assert!(sse.contains("\"retrying\":true"));
        assert!(!sse.contains("id:"));
    }
}
