//! What nodes say to each other through Redis: a topic's key names, and the messages on its
//! channel. No path, header or credential appears in either: a topic is named by a hash.

use crate::topic::key::TopicKey;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// The Redis names of one topic, all with the same hash tag (one slot in a Redis Cluster).
#[derive(Debug, Clone)]
pub struct Keys {
    pub lease: String,
    pub nodes: String,
    pub state: String,
    pub stream: String,
    pub channel: String,
}

impl Keys {
    pub fn of(prefix: &str, key: &TopicKey) -> Keys {
        let tag = format!("{prefix}{{{}}}", hash(key));
        Keys {
            lease: format!("{tag}:lease"),
            nodes: format!("{tag}:nodes"),
            state: format!("{tag}:state"),
            stream: format!("{tag}:history"),
            channel: format!("{tag}:events"),
        }
    }
}

/// 128 bits of SHA-256 over the whole key: the route, the target, and the hash of the headers
/// that split topics (itself a SHA-256, so no credential can be read back from it).
pub fn hash(key: &TopicKey) -> String {
    let mut h = Sha256::new();
    for part in [key.route.as_bytes(), b"\0", key.target.as_bytes(), b"\0", &key.headers_hash] {
        h.update(part);
    }
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// One message on a topic's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A new version: the whole document and its patches (`None` where it goes out whole).
    Event { epoch: String, version: u64, document: Bytes, json_patch: Option<Bytes>, merge_patch: Option<Bytes> },
    /// An error the leader's subscribers were told.
    Error { status: u16, error: String, message: String, terminal: bool },
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
        match self {
            Message::Event { epoch, version, document, json_patch, merge_patch } => {
                out.put_u8(EVENT);
                out.put_u8(epoch.len() as u8);
                out.put_slice(&epoch.as_bytes()[..epoch.len().min(255)]);
                out.put_u64(*version);
                let len = |b: &Option<Bytes>| b.as_ref().map_or(NONE, |b| b.len() as u32);
                out.put_u32(document.len() as u32);
                out.put_u32(len(json_patch));
                out.put_u32(len(merge_patch));
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
            Message::Error { status, error, message, terminal } => {
                out.put_u8(ERROR);
                out.put_u16(*status);
                out.put_u8(u8::from(*terminal));
                out.put_u16(error.len() as u16);
                out.put_slice(error.as_bytes());
                out.put_slice(message.as_bytes());
                (out.freeze(), None)
            }
        }
    }

    /// Reads a message; `None` for anything malformed (it is dropped and counted).
    pub fn decode(mut b: Bytes) -> Option<Message> {
        let need = |b: &Bytes, n: usize| (b.remaining() >= n).then_some(());
        need(&b, 1)?;
        match b.get_u8() {
            EVENT => {
                need(&b, 1)?;
                let n = b.get_u8() as usize;
                need(&b, n + 20)?;
                let epoch = String::from_utf8(b.split_to(n).to_vec()).ok()?;
                let version = b.get_u64();
                let (d, j, m) = (b.get_u32(), b.get_u32(), b.get_u32());
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
                Some(Message::Event { epoch, version, document, json_patch, merge_patch })
            }
            ERROR => {
                need(&b, 5)?;
                let status = b.get_u16();
                let terminal = b.get_u8() == 1;
                let n = b.get_u16() as usize;
                need(&b, n)?;
                let error = String::from_utf8(b.split_to(n).to_vec()).ok()?;
                let message = String::from_utf8(b.to_vec()).ok()?;
                Some(Message::Error { status, error, message, terminal })
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
        let error =
            Message::Error { status: 503, error: "upstream_unavailable".into(), message: "m".into(), terminal: false };
        assert_eq!(Message::decode(error.encode().0), Some(error));
    }

    #[test]
    fn key_names_hold_no_part_of_the_topic_key() {
        let key = TopicKey { route: "/users/*".into(), target: "/users/alice?x=1".into(), headers_hash: [7; 32] };
        let keys = Keys::of("unpoll:", &key);
        for name in [&keys.lease, &keys.nodes, &keys.state, &keys.stream, &keys.channel] {
            assert!(name.starts_with("unpoll:{") && !name.contains("alice") && !name.contains("users"), "{name}");
        }
        let other = TopicKey { headers_hash: [8; 32], ..key.clone() };
        assert_ne!(hash(&key), hash(&other), "other credentials, another topic");
    }
}
