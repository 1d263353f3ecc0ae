//! Who a topic's subscribers are: how many, reading which format over which protocol, and
//! whether it was ever shared. Counted without the topic's lock (the hub's lock orders joins
//! against its retirement).

use crate::config::Format;
use crate::wire::encode::Protocol;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub struct Audience {
    subscribers: AtomicUsize,
    /// Subscriptions it has had, all together: a topic that never had a second one lingers
    /// only `linger_unshared`.
    joins: AtomicUsize,
    /// Subscribers per format (see [`Format::index`]): patches nobody reads are not computed.
    formats: [AtomicUsize; 3],
    /// Subscribers per protocol (see [`Protocol::index`]), for `/status`.
    protocols: [AtomicUsize; 2],
}

/// What a departure left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// It was the last reader of its format.
    pub last_reader: bool,
    /// It was the last subscriber.
    pub last: bool,
}

impl Audience {
    /// Counts a new subscriber, reading `format` over `protocol`.
    pub fn join(&self, format: Format, protocol: Protocol) {
        self.subscribers.fetch_add(1, Ordering::SeqCst);
        self.joins.fetch_add(1, Ordering::Relaxed);
        self.formats[format.index()].fetch_add(1, Ordering::Relaxed);
        self.protocols[protocol.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a subscriber out.
    pub fn leave(&self, format: Format, protocol: Protocol) -> Left {
        self.protocols[protocol.index()].fetch_sub(1, Ordering::Relaxed);
        let last_reader = self.formats[format.index()].fetch_sub(1, Ordering::Relaxed) == 1;
        let last = self.subscribers.fetch_sub(1, Ordering::SeqCst) == 1;
        Left { last_reader, last }
    }

    pub fn count(&self) -> usize {
        self.subscribers.load(Ordering::SeqCst)
    }

    /// Whether it ever had more than one subscription.
    pub fn shared(&self) -> bool {
        self.joins.load(Ordering::Relaxed) > 1
    }

    /// Whether anyone reads `format`.
    pub fn reads(&self, format: Format) -> bool {
        self.formats[format.index()].load(Ordering::Relaxed) > 0
    }

    /// Subscribers by [`Format::index`].
    pub fn by_format(&self) -> [usize; 3] {
        self.formats.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Subscribers by [`Protocol::index`].
    pub fn by_protocol(&self) -> [usize; 2] {
        self.protocols.each_ref().map(|n| n.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_who_reads_what_and_says_who_left_last() {
        let audience = Audience::default();
        audience.join(Format::JsonPatch, Protocol::Sse);
        assert!(!audience.shared());
        audience.join(Format::Snapshot, Protocol::WebSocket);
        assert!(audience.shared() && audience.reads(Format::JsonPatch) && !audience.reads(Format::MergePatch));
        assert_eq!((audience.by_format(), audience.by_protocol()), ([1, 0, 1], [1, 1]));
        assert_eq!(audience.leave(Format::Snapshot, Protocol::WebSocket), Left { last_reader: true, last: false });
        assert_eq!(audience.leave(Format::JsonPatch, Protocol::Sse), Left { last_reader: true, last: true });
        assert_eq!(audience.count(), 0);
        assert!(audience.shared(), "it was shared once");
    }
}
