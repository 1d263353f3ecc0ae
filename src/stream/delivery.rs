//! What both stream handlers share: turning queued messages into wire bytes, keeping each
//! subscriber within its queue limits, and counting.
//!
//! A subscriber's queue is its position in the topic's broadcast ring, which holds each event
//! once for all subscribers. It may fall `queue` events or `queue_bytes` bytes (of its format's
//! data) behind the newest event; past either limit it skips what it missed and is sent the
//! current snapshot, so a slow client never makes the proxy hold more for it and converges
//! without replaying every step.

use crate::config::Format;
use crate::metrics::{Metrics, HANDBACK_REASONS};
use crate::topic::direct::{Counters, Lane};
use crate::topic::hub::Subscription;
use crate::wire::encode::Protocol;
use crate::wire::event::Kind;
use crate::wire::event::{Event, Msg};
use bytes::{Bytes, BytesMut};
use prometheus::{Histogram, IntCounter, IntGauge};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
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
    /// Write these bytes as they are: the rest of an event the topic wrote only part of, in
    /// the transport's framing already.
    Raw(Bytes),
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
    /// Its events and bytes, and what the topic writes for it: shared by the topic's
    /// subscribers over the same protocol.
    counters: Arc<Counters>,
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
    /// Its way in for the topic, on a plain TCP socket (see `topic::direct`), and its shard.
    lane: Option<(Arc<Lane>, usize)>,
    /// Whether the lane was parked by this task and not yet taken back.
    parked: bool,
    /// The last event (or snapshot) the subscriber was sent by this task, for its epoch,
    /// and the version it has in that epoch (the topic may have written later ones).
    last: Option<Arc<Event>>,
    has_version: u64,
}

impl Delivery {
    pub fn new(sub: Subscription, protocol: Protocol, queue_bytes: usize, route: &str, metrics: &Metrics) -> Delivery {
        let p = protocol.name();
        let gauge = metrics.subscribers.with_label_values(&[route, p]);
        gauge.inc();
        let topic = sub.topic.upgrade();
        let published = topic.as_ref().map_or_else(Arc::default, |topic| topic.published.clone());
        let make = || {
            Arc::new(Counters {
                events: [Kind::Snapshot, Kind::Patch, Kind::Error]
                    .map(|k| metrics.events.with_label_values(&[route, p, k.name()])),
                bytes: metrics.bytes.with_label_values(&[route, p]),
                direct: metrics.direct_writes.with_label_values(&[route]),
                handbacks: HANDBACK_REASONS.map(|r| metrics.handbacks.with_label_values(&[route, r])),
            })
        };
        let counters = match &topic {
            Some(topic) => topic.counters[protocol.index()].get_or_init(make).clone(),
            None => make(),
        };
        drop(topic);
        Delivery {
            format: sub.format,
            sub,
            protocol,
            queue_bytes: queue_bytes as u64,
            published,
            delivered: 0,
            counters,
            lagged_events: metrics.lagged.with_label_values(&[route, "events"]),
            lagged_bytes: metrics.lagged.with_label_values(&[route, "bytes"]),
            gauge,
            version: None,
            asked: None,
            tally: None,
            lane: None,
            parked: false,
            last: None,
            has_version: 0,
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

    /// Lets the topic write events to `socket` while this subscriber has nothing else to do;
    /// `chunked`: each event is one HTTP/1.1 chunk.
    pub fn lane(&mut self, socket: Arc<TcpStream>, chunked: bool) {
        let Some(topic) = self.sub.topic.upgrade() else { return };
        let lane = Lane::new(socket, self.protocol, self.format, chunked, self.counters.clone())
            .queue(topic.queue())
            .tallied(self.tally.clone());
        let lane = Arc::new(lane);
        let shard = topic.lanes.join(&lane);
        self.lane = Some((lane, shard));
    }

    /// Takes the lane back from the topic, with where the subscriber now is; the rest of an
    /// event the socket took only part of, which must be written first.
    pub fn unpark(&mut self) -> Option<Bytes> {
        if !std::mem::take(&mut self.parked) {
            return None;
        }
        let back = self.lane.as_ref()?.0.unpark();
        self.has_version = back.version;
        self.delivered = back.delivered;
        back.rest
    }

    /// Whether the subscriber has `msg` already (the topic wrote it while the lane was parked).
    fn has(&self, msg: &Msg) -> bool {
        match (msg, &self.last) {
            (Msg::Event(e), Some(last)) => e.version <= self.has_version && e.epoch() == last.epoch(),
            _ => false,
        }
    }

    fn count(&self, bytes: usize) {
        self.counters.bytes.inc_by(bytes as u64);
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
        loop {
            if let Some((lane, _)) = &self.lane {
                if !self.parked {
                    let rx = &self.sub.rx;
                    self.parked = lane.park(|| rx.is_empty(), self.last.clone(), self.has_version, self.delivered);
                }
                if self.parked {
                    lane.wake.notified().await;
                    if let Some(rest) = self.unpark() {
                        return Next::Raw(rest);
                    }
                    // Park again unless the ring holds something (what the topic wrote is
                    // skipped there).
                    continue;
                }
            }
            let newest = self.published[self.format.index()].load(Ordering::Acquire);
            if newest.saturating_sub(self.delivered) > self.queue_bytes {
                self.lagged_bytes.inc();
                return self.resync();
            }
            return match self.sub.rx.recv().await {
                Ok(msg) if self.has(&msg) => continue,
                Ok(msg) => match self.encode_all(std::slice::from_ref(&msg)) {
                    Some(next) => next,
                    None => self.resync(),
                },
                Err(RecvError::Lagged(_)) => {
                    self.lagged_events.inc();
                    self.resync()
                }
                Err(RecvError::Closed) => Next::Closed,
            };
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
        for msg in msgs {
            if let Msg::Event(e) | Msg::Snapshot(e) = msg {
                self.last = Some(e.clone());
                self.has_version = e.version;
            }
        }
        // The usual case, one event: no buffer at all.
        if let [msg] = msgs {
            let (bytes, kind, end, going_away, offset) = self.frame(msg)?;
            self.counters.events[kind as usize].inc();
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
            self.counters.events[*kind as usize].inc();
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
        if let Some((lane, shard)) = self.lane.take() {
            // Nothing more is written to the socket from the topic.
            lane.unpark();
            if let Some(topic) = self.sub.topic.upgrade() {
                topic.lanes.leave(&lane, shard);
            }
        }
        self.gauge.dec();
        if let Some(version) = &self.version {
            version.dec();
        }
    }
}
