//! What nodes say to each other through Redis: a topic's key names, and the messages on its
//! channel. No path, header or credential appears in either: a topic is named by its keyed
//! id (see [`super::seal`]), and every message carries the tags that let a node check it.

use super::seal::Tag;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The Redis names of one topic, all with the same hash tag (one slot in a Redis Cluster).
#[derive(Debug, Clone)]
pub struct Keys {
    /// The topic's id ([`super::seal::Seal::topic_id`]), which every tag is bound to.
    pub id: String,
    pub lease: String,
    pub nodes: String,
    pub state: String,
    pub stream: String,
    pub channel: String,
}

impl Keys {
    pub fn of(prefix: &str, id: String) -> Keys {
        let tag = format!("{prefix}{{{id}}}");
        Keys {
            lease: format!("{tag}:lease"),
            nodes: format!("{tag}:nodes"),
            state: format!("{tag}:state"),
            stream: format!("{tag}:history"),
            channel: format!("{tag}:events"),
            id,
        }
    }
}

/// One message on a topic's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A new version: the whole document and its patches (`None` where it goes out whole),
    /// with the tags of the document and of the patches.
    Event {
        epoch: String,
        version: u64,
        document: Bytes,
        json_patch: Option<Bytes>,
        merge_patch: Option<Bytes>,
        document_tag: Tag,
        patches_tag: Tag,
    },
    /// An error the leader's subscribers were told, by name (each node tells its own
    /// subscribers its own sentence for it), at the leader's position, with its tag.
    Error { epoch: String, version: u64, status: u16, error: String, terminal: bool, tag: Tag },
}

/// Where the document and patches sit in an encoded event, for the publishing script to store
/// them without sending them twice: (offset, length), length -1 for none.
pub struct Spans {
    pub document: (usize, i64),
    pub json_patch: (usize, i64),
    pub merge_patch: (usize, i64),
}

const EVENT: u8 = b'E';
const ERROR: u8 = b'X';
const NONE: u32 = u32::MAX;

impl Message {
    /// The bytes on the channel, and for an event where its parts are.
    pub fn encode(&self) -> (Bytes, Option<Spans>) {
        let mut out = BytesMut::new();
        let position = |out: &mut BytesMut, epoch: &str, version: u64| {
            let epoch = &epoch.as_bytes()[..epoch.len().min(255)];
            out.put_u8(epoch.len() as u8);
            out.put_slice(epoch);
            out.put_u64(version);
        };
        match self {
            Message::Event { epoch, version, document, json_patch, merge_patch, document_tag, patches_tag } => {
                out.put_u8(EVENT);
                position(&mut out, epoch, *version);
                let len = |b: &Option<Bytes>| b.as_ref().map_or(NONE, |b| b.len() as u32);
                out.put_u32(document.len() as u32);
                out.put_u32(len(json_patch));
                out.put_u32(len(merge_patch));
                out.put_slice(document_tag);
                out.put_slice(patches_tag);
                let mut at = out.len();
                let mut span = |b: Option<&Bytes>, out: &mut BytesMut| match b {
                    Some(b) => {
                        out.put_slice(b);
                        let s = (at, b.len() as i64);
                        at += b.len();
                        s
                    }
                    None => (at, -1),
                };
                let document = span(Some(document), &mut out);
                let json_patch = span(json_patch.as_ref(), &mut out);
                let merge_patch = span(merge_patch.as_ref(), &mut out);
                (out.freeze(), Some(Spans { document, json_patch, merge_patch }))
            }
            Message::Error { epoch, version, status, error, terminal, tag } => {
                out.put_u8(ERROR);
                position(&mut out, epoch, *version);
                out.put_u16(*status);
                out.put_u8(u8::from(*terminal));
                out.put_slice(tag);
                out.put_slice(&error.as_bytes()[..error.len().min(255)]);
                (out.freeze(), None)
            }
        }
    }

    /// Reads a message; `None` for anything malformed (it is dropped and counted). Reading is
    /// not trusting: the caller checks the tags.
    pub fn decode(mut b: Bytes) -> Option<Message> {
        let need = |b: &Bytes, n: usize| (b.remaining() >= n).then_some(());
        need(&b, 2)?;
        let kind = b.get_u8();
        let n = b.get_u8() as usize;
        need(&b, n + 8)?;
        let epoch = String::from_utf8(b.split_to(n).to_vec()).ok()?;
        let version = b.get_u64();
        let tag = |b: &mut Bytes| -> Option<Tag> {
            need(b, 32)?;
            b.split_to(32)[..].try_into().ok()
        };
        match kind {
            EVENT => {
                need(&b, 12)?;
                let (d, j, m) = (b.get_u32(), b.get_u32(), b.get_u32());
                let document_tag = tag(&mut b)?;
                let patches_tag = tag(&mut b)?;
                let mut take = |len: u32| -> Option<Option<Bytes>> {
                    if len == NONE {
                        return Some(None);
                    }
                    need(&b, len as usize)?;
                    Some(Some(b.split_to(len as usize)))
                };
                let document = take(d)??;
                let json_patch = take(j)?;
                let merge_patch = take(m)?;
                Some(Message::Event { epoch, version, document, json_patch, merge_patch, document_tag, patches_tag })
            }
            ERROR => {
                need(&b, 3)?;
                let status = b.get_u16();
                let terminal = b.get_u8() == 1;
                let tag = tag(&mut b)?;
                let error = String::from_utf8(b.to_vec()).ok()?;
                Some(Message::Error { epoch, version, status, error, terminal, tag })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_errors_read_back_and_spans_point_at_their_parts() {
        let event = Message::Event {
            epoch: "0badcafe".into(),
            version: 42,
            document: Bytes::from_static(br#"{"a":1}"#),
            json_patch: None,
            merge_patch: Some(Bytes::from_static(br#"{"a":1}"#)),
            document_tag: [1; 32],
            patches_tag: [2; 32],
        };
        let (bytes, spans) = event.encode();
        let spans = spans.unwrap();
        let cut = |(at, len): (usize, i64)| &bytes[at..at + len as usize];
        assert_eq!(cut(spans.document), br#"{"a":1}"#);
        assert_eq!(spans.json_patch.1, -1);
        assert_eq!(cut(spans.merge_patch), br#"{"a":1}"#);
        assert_eq!(Message::decode(bytes.clone()), Some(event));
        for n in 0..bytes.len() {
            assert_eq!(Message::decode(bytes.slice(..n)), None, "cut at {n}");
        }
        let error = Message::Error {
            epoch: "0badcafe".into(),
            version: 3,
            status: 503,
            error: "upstream_unavailable".into(),
            terminal: false,
            tag: [3; 32],
        };
        let (bytes, _) = error.encode();
        assert_eq!(Message::decode(bytes.clone()), Some(error));
        for n in 0..bytes.len() - "upstream_unavailable".len() {
            assert_eq!(Message::decode(bytes.slice(..n)), None, "cut at {n}");
        }
    }

    #[test]
    fn key_names_hold_the_id_only() {
        let keys = Keys::of("unpoll:", "00ff".into());
        for name in [&keys.lease, &keys.nodes, &keys.state, &keys.stream, &keys.channel] {
            assert!(name.starts_with("unpoll:{00ff}:"), "{name}");
        }
    }
}
