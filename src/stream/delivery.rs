//! What both stream handlers share: turning queued messages into wire bytes, keeping each
//! subscriber within its queue limits, and counting.
//!
//! A subscriber's queue is its position in the topic's broadcast ring, which holds each event
//! once for all subscribers. It may fall `queue` events or `queue_bytes` bytes (of its format's
//! data) behind the newest event; past either limit it skips what it missed and is sent the
//! current snapshot, so a slow client never makes the proxy hold more for it and converges
//! without replaying every step.

use crate::config::Format;
use crate::metrics::Metrics;
use crate::topic::hub::Subscription;
use crate::wire::encode::Protocol;
use crate::wire::event::Kind;
use crate::wire::event::Msg;
use bytes::{Bytes, BytesMut};
use prometheus::{Histogram, IntCounter, IntGauge};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::broadcast::error::RecvError;

/// The next thing a stream handler must do.
pub enum Next {
    /// Write these bytes.
    Write(Bytes),
    /// Write these bytes, then end the stream; with a reason when the proxy is going away
    /// from this stream (WebSocket close 1001).
    End(Bytes, Option<&'static str>),
    /// The topic is gone.
    Closed,
}

/// One subscriber's queue with its counters resolved once.
pub struct Delivery {
    pub sub: Subscription,
    pub protocol: Protocol,
    pub format: Format,
    queue_bytes: u64,
    /// The topic's newest offsets, shared without holding the topic.
    published: Arc<[AtomicU64; 3]>,
    /// The offset (in this format) of the last event sent.
    delivered: u64,
    events: [IntCounter; 3],
    bytes: IntCounter,
    lagged_events: IntCounter,
    lagged_bytes: IntCounter,
    gauge: IntGauge,
    /// `unpoll_client_streams{version}`, for the HTTP version the stream is served over.
    version: Option<IntGauge>,
    /// When the subscription was asked for, and `unpoll_subscribe_duration_seconds{route}`:
    /// observed once its first events are handed to the socket.
    asked: Option<(Instant, Histogram)>,
    /// This subscriber's own count of event bytes, for the access log.
    tally: Option<Arc<AtomicU64>>,
}

impl Delivery {
    pub fn new(sub: Subscription, protocol: Protocol, queue_bytes: usize, route: &str, metrics: &Metrics) -> Delivery {
        let p = protocol.name();
        let gauge = metrics.subscribers.with_label_values(&[route, p]);
        gauge.inc();
        let published = sub.topic.upgrade().map_or_else(Arc::default, |topic| topic.published.clone());
        Delivery {
            format: sub.format,
            sub,
            protocol,
            queue_bytes: queue_bytes as u64,
            published,
            delivered: 0,
            events: [Kind::Snapshot, Kind::Patch, Kind::Error]
                .map(|k| metrics.events.with_label_values(&[route, p, k.name()])),
            bytes: metrics.bytes.with_label_values(&[route, p]),
            lagged_events: metrics.lagged.with_label_values(&[route, "events"]),
            lagged_bytes: metrics.lagged.with_label_values(&[route, "bytes"]),
            gauge,
            version: None,
            asked: None,
            tally: None,
        }
    }

    /// Counts the subscription in `unpoll_client_streams{version}` while it lasts.
    pub fn over_http(mut self, version: &str, metrics: &Metrics) -> Delivery {
        let gauge = metrics.client_streams.with_label_values(&[version]);
        gauge.inc();
        self.version = Some(gauge);
        self
    }

    /// Counts the time from `asked` (the request) to the first events.
    pub fn asked_at(mut self, asked: Instant, metrics: &Metrics, route: &str) -> Delivery {
        self.asked = Some((asked, metrics.subscribe_duration.with_label_values(&[route])));
        self
    }

    /// Counts this subscriber's event bytes into `tally` too.
    pub fn tallied(mut self, tally: Option<Arc<AtomicU64>>) -> Delivery {
        self.tally = tally;
        self
    }

    fn count(&self, bytes: usize) {
        self.bytes.inc_by(bytes as u64);
        if let Some(tally) = &self.tally {
            tally.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// The subscriber's first bytes: what [`Subscription::initial`] holds, in one buffer.
    pub fn initial(&mut self) -> Next {
        if let Some((asked, histogram)) = self.asked.take() {
            histogram.observe(asked.elapsed().as_secs_f64());
        }
        let msgs = std::mem::take(&mut self.sub.initial);
        match self.encode_all(&msgs) {
            Some(next) => next,
            None => self.resync(),
        }
    }

    /// Waits for the next message and encodes it, resynchronising a subscriber that is past
    /// its queue limits, or that needs the whole document of a version already superseded.
    pub async fn next(&mut self) -> Next {
        let newest = self.published[self.format.index()].load(Ordering::Acquire);
        if newest.saturating_sub(self.delivered) > self.queue_bytes {
            self.lagged_bytes.inc();
            return self.resync();
        }
        match self.sub.rx.recv().await {
            Ok(msg) => match self.encode_all(std::slice::from_ref(&msg)) {
                Some(next) => next,
                None => self.resync(),
            },
            Err(RecvError::Lagged(_)) => {
                self.lagged_events.inc();
                self.resync()
            }
            Err(RecvError::Closed) => Next::Closed,
        }
    }

    /// A new position at the head of the ring and the current snapshot, taken together under
    /// the topic's lock: nothing published meanwhile is both in the snapshot and queued.
    fn resync(&mut self) -> Next {
        // The current version is superseded between taking it and encoding it only if the
        // poller publishes in that instant; trying again takes the newer one.
        for _ in 0..RESYNC_TRIES {
            let Some(topic) = self.sub.topic.upgrade() else {
                return Next::Closed;
            };
            let (msgs, rx) = topic.open(None, self.format);
            drop(topic);
            self.sub.rx = rx;
            if let Some(next) = self.encode_all(&msgs) {
                return next;
            }
        }
        Next::Closed
    }

    /// Messages (one, or a subscriber's start or resynchronisation) in one buffer; `None`
    /// when one of them needs a whole document that was released.
    fn encode_all(&mut self, msgs: &[Msg]) -> Option<Next> {
        // The usual case, one event: no buffer at all.
        if let [msg] = msgs {
            let (bytes, kind, end, going_away, offset) = self.frame(msg)?;
            self.events[kind as usize].inc();
            self.delivered = offset.unwrap_or(self.delivered);
            self.count(bytes.len());
            return Some(next(bytes, end, going_away));
        }
        let mut frames = Vec::with_capacity(msgs.len());
        for msg in msgs {
            frames.push(self.frame(msg)?);
        }
        let (mut end, mut going_away) = (false, None);
        for (_, kind, terminal, away, offset) in &frames {
            self.events[*kind as usize].inc();
            self.delivered = offset.unwrap_or(self.delivered);
            end |= terminal;
            going_away = going_away.or(*away);
        }
        let mut out = BytesMut::new();
        for (bytes, ..) in &frames {
            out.extend_from_slice(bytes);
        }
        let bytes = out.freeze();
        self.count(bytes.len());
        Some(next(bytes, end, going_away))
    }

    /// The wire bytes of one message (the event's shared encoding, no copy per subscriber),
    /// its kind, whether the stream ends after it (and why, if the proxy is going away), and
    /// the offset it brings the subscriber to.
    fn frame(&self, msg: &Msg) -> Option<Frame> {
        Some(match msg {
            Msg::Event(e) => {
                let (bytes, kind) = e.frame(self.protocol, self.format)?;
                e.note_written();
                (bytes, kind, false, None, Some(e.offsets[self.format.index()]))
            }
            Msg::Snapshot(e) => {
                let (bytes, kind) = e.frame(self.protocol, Format::Snapshot)?;
                e.note_written();
                (bytes, kind, false, None, Some(e.offsets[self.format.index()]))
            }
            Msg::Error(e) => (e.frame(self.protocol), Kind::Error, e.terminal, e.going_away, None),
        })
    }
}

/// See [`Delivery::frame`].
type Frame = (Bytes, Kind, bool, Option<&'static str>, Option<u64>);

/// How many times a resynchronisation takes the current version before giving up.
const RESYNC_TRIES: usize = 4;

fn next(bytes: Bytes, end: bool, going_away: Option<&'static str>) -> Next {
    if end {
        Next::End(bytes, going_away)
    } else {
        Next::Write(bytes)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Some(version) = &self.version {
            version.dec();
        }
    }
}
