//! What makes Redis's content trustworthy to a node: HMAC-SHA256 with the cluster's secret
//! (`cluster.secret_file`, the same on every node).
//!
//! - A topic's **id**, which its Redis key names carry, is a keyed hash of its topic key: a
//!   reader of Redis cannot confirm a guessed credential offline (an unkeyed hash would let
//!   them), nor tell which path a key is about.
//! - Every **event** carries two tags: one over its document, one over its patches, each bound
//!   to the topic's id, the epoch and the version. The document's is stored beside the stored
//!   document, the patches' beside the history entry, so that what a node reads back is
//!   checked as what it is sent.
//! - Every **error** carries a tag over its name, status and the position it was told at.
//! - A **refresh** names paths by their keyed hashes, and carries a tag over them.
//!
//! Each input is framed (a domain word, then length-prefixed fields), so that no two different
//! inputs hash the same. Verification is constant-time (`ring::hmac::verify`).

use crate::topic::key::TopicKey;
use ring::hmac;

/// A tag: HMAC-SHA256.
pub type Tag = [u8; 32];

/// The cluster's secret, ready to tag and check.
pub struct Seal {
    key: hmac::Key,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(<secret>)")
    }
}

/// An input under construction: a domain word, then length-prefixed fields.
struct Input(hmac::Context);

impl Input {
    fn field(mut self, bytes: &[u8]) -> Input {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    /// An optional field: absent is not the same as empty.
    fn optional(self, bytes: Option<&[u8]>) -> Input {
        match bytes {
            None => self.field(b"-"),
            Some(b) => self.field(b"+").field(b),
        }
    }

    fn tag(self) -> Tag {
        self.0.sign().as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }
}

impl Seal {
    pub fn new(secret: &[u8]) -> Seal {
        Seal { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    fn input(&self, domain: &[u8]) -> Input {
        Input(hmac::Context::with_key(&self.key)).field(domain)
    }

    /// A topic's id in Redis: 128 bits of the keyed hash of its whole key (route, target, and
    /// the hash of the headers that split it), in hex.
    pub fn topic_id(&self, key: &TopicKey) -> String {
        let tag = self
            .input(b"topic")
            .field(key.route.as_bytes())
            .field(key.target.as_bytes())
            .field(&key.headers_hash)
            .tag();
        tag[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The tag of a version's whole document.
    pub fn document(&self, topic: &str, epoch: &str, version: u64, document: &[u8]) -> Tag {
        self.input(b"document")
            .field(topic.as_bytes())
            .field(epoch.as_bytes())
            .field(&version.to_be_bytes())
            .field(document)
            .tag()
    }

    /// The tag of a version's patches (each may be absent).
    pub fn patches(&self, topic: &str, epoch: &str, version: u64, json: Option<&[u8]>, merge: Option<&[u8]>) -> Tag {
        let input =
            self.input(b"patches").field(topic.as_bytes()).field(epoch.as_bytes()).field(&version.to_be_bytes());
        input.optional(json).optional(merge).tag()
    }

    /// The tag of an error told at `epoch`, `version`.
    pub fn error(&self, topic: &str, epoch: &str, version: u64, status: u16, error: &str, terminal: bool) -> Tag {
        let input = self.input(b"error").field(topic.as_bytes()).field(epoch.as_bytes()).field(&version.to_be_bytes());
        input.field(&status.to_be_bytes()).field(error.as_bytes()).field(&[u8::from(terminal)]).tag()
    }

    /// A path as a cluster's refresh messages name it (see `topic::refresh::PathHash`).
    pub fn path(&self, path: &str) -> Tag {
        self.input(b"path").field(path.as_bytes()).tag()
    }

    /// The tag of a refresh message's `body`.
    pub fn refresh(&self, body: &[u8]) -> Tag {
        self.input(b"refresh").field(body).tag()
    }

    /// Whether `tag` is `expected` (recomputed from what came with it), in constant time.
    pub fn matches(expected: &Tag, tag: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        tag.len() == expected.len() && bool::from(expected.ct_eq(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(headers: u8) -> TopicKey {
        TopicKey { route: "/users/*".into(), target: "/users/alice?x=1".into(), headers_hash: [headers; 32] }
    }

    #[test]
    fn ids_are_keyed_and_split_by_every_part_of_the_key() {
        let seal = Seal::new(b"0123456789abcdef0123456789abcdef");
        let id = seal.topic_id(&key(7));
        assert_eq!(id.len(), 32);
        assert!(!id.contains("alice"));
        assert_ne!(id, seal.topic_id(&key(8)), "other credentials, another topic");
        let other = Seal::new(b"another secret of thirty-two by!");
        assert_ne!(id, other.topic_id(&key(7)), "without the secret, an id cannot be worked out");
        // Not the unkeyed hash a reader of Redis could compute from a guess.
        use sha2::{Digest, Sha256};
        let k = key(7);
        let mut h = Sha256::new();
        for part in [k.route.as_bytes(), b"\0", k.target.as_bytes(), b"\0", &k.headers_hash] {
            h.update(part);
        }
        let unkeyed: String = h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(id, unkeyed);
    }

    #[test]
    fn a_tag_holds_only_for_its_topic_position_and_content() {
        let seal = Seal::new(b"0123456789abcdef0123456789abcdef");
        let tag = seal.document("t1", "e1", 3, b"{}");
        assert!(Seal::matches(&seal.document("t1", "e1", 3, b"{}"), &tag));
        for other in [
            seal.document("t2", "e1", 3, b"{}"),
            seal.document("t1", "e2", 3, b"{}"),
            seal.document("t1", "e1", 4, b"{}"),
            seal.document("t1", "e1", 3, b"[]"),
            Seal::new(b"another secret of thirty-two by!").document("t1", "e1", 3, b"{}"),
        ] {
            assert!(!Seal::matches(&other, &tag));
        }
        assert!(!Seal::matches(&tag, &tag[..31]), "a short tag");
        let absent = seal.patches("t1", "e1", 3, None, Some(b"{}"));
        let empty = seal.patches("t1", "e1", 3, Some(b""), Some(b"{}"));
        assert_ne!(absent, empty, "an absent patch is not an empty one");
        let moved = seal.patches("t1", "e1", 3, Some(b"{}"), None);
        assert_ne!(absent, moved, "which patch is which counts");
        let e = seal.error("t1", "e1", 3, 404, "not_found", true);
        assert_ne!(e, seal.error("t1", "e1", 3, 404, "not_found", false));
        assert_ne!(e, seal.error("t1", "e1", 2, 404, "not_found", true));
    }
}
