//! What both stream handlers share: turning queued messages into wire bytes and counting them.

use super::encode::Protocol;
use super::event::Kind;
use super::hub::Subscription;
use super::topic::Msg;
use crate::config::Format;
use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::broadcast::error::RecvError;

/// The next thing a stream handler must do.
pub enum Next {
    /// Write these bytes.
    Write(Bytes),
    /// Write these bytes, then end the stream.
    End(Bytes),
    /// The topic is gone.
    Closed,
}

/// One subscriber's queue with its counters resolved once.
pub struct Delivery {
    pub sub: Subscription,
    pub protocol: Protocol,
    pub format: Format,
    events: [IntCounter; 3],
    bytes: IntCounter,
    lagged: IntCounter,
    gauge: IntGauge,
}

impl Delivery {
    pub fn new(sub: Subscription, protocol: Protocol, format: Format, route: &str, metrics: &Metrics) -> Delivery {
        let p = protocol.name();
        let gauge = metrics.subscribers.with_label_values(&[route, p]);
        gauge.inc();
        Delivery {
            sub,
            protocol,
            format,
            events: [Kind::Snapshot, Kind::Patch, Kind::Error]
                .map(|k| metrics.events.with_label_values(&[route, p, k.name()])),
            bytes: metrics.bytes.with_label_values(&[route, p]),
            lagged: metrics.lagged.with_label_values(&[route]),
            gauge,
        }
    }

    /// The subscriber's first bytes: what [`Subscription::initial`] holds, in one buffer.
    pub fn initial(&mut self) -> Next {
        let msgs = std::mem::take(&mut self.sub.initial);
        self.encode_all(msgs)
    }

    /// Waits for the next message and encodes it. A subscriber that fell more than the
    /// queue behind gets the current snapshot instead of what it missed.
    pub async fn next(&mut self) -> Next {
        match self.sub.rx.recv().await {
            Ok(msg) => self.encode_all(vec![msg]),
            Err(RecvError::Lagged(_)) => {
                self.lagged.inc();
                // A new receiver and the current snapshot, taken together under the topic's
                // lock: nothing published meanwhile is both in the snapshot and queued.
                match self.sub.topic.upgrade() {
                    Some(topic) => {
                        let (msgs, rx) = topic.open(None);
                        drop(topic);
                        self.sub.rx = rx;
                        self.encode_all(msgs)
                    }
                    None => Next::Closed,
                }
            }
            Err(RecvError::Closed) => Next::Closed,
        }
    }

    fn encode_all(&self, msgs: Vec<Msg>) -> Next {
        let mut out = BytesMut::new();
        let mut single = None;
        let mut end = false;
        for msg in &msgs {
            let (bytes, kind) = match msg {
                Msg::Event(e) => e.frame(self.protocol, self.format),
                Msg::Snapshot(e) => e.frame(self.protocol, Format::Snapshot),
                Msg::Error(e) => {
                    end |= e.terminal;
                    (e.frame(self.protocol), Kind::Error)
                }
            };
            self.events[kind as usize].inc();
            self.bytes.inc_by(bytes.len() as u64);
            if msgs.len() == 1 {
                single = Some(bytes);
            } else {
                out.extend_from_slice(&bytes);
            }
        }
        // A single message keeps its shared allocation: no copy per subscriber.
        let bytes = single.unwrap_or_else(|| out.freeze());
        if end {
            Next::End(bytes)
        } else {
            Next::Write(bytes)
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
