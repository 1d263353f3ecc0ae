//! Events written to subscribers' sockets straight from the topic.
//!
//! A subscriber on a plain TCP connection (SSE over HTTP/1.1, or WebSocket) that has sent
//! everything it was given *parks* its lane: from then on the topic writes each new event to
//! its socket itself (`try_write` of the event's shared bytes), and the subscriber's task
//! sleeps. A delivery then costs no task wake-up, no broadcast receive and no second pass over
//! the event: the fan-out is one loop of writes per shard of subscribers, the shards run in
//! parallel on the worker threads.
//!
//! The subscriber's task takes its lane back (*unparks*) whenever it has something else to
//! do: a heartbeat, what the client sent, shutdown. The topic hands it back too, waking the
//! task, when the socket would not take a whole event (the task writes what is left and then
//! waits on the socket as before), when a message is not an event of the lane's epoch (an
//! error, a snapshot), or after half the queue's events were written, so that the task's own
//! place in the broadcast ring never falls behind while it sleeps. The events the topic wrote
//! are still in the task's ring; it skips them by version.
//!
//! The lane's lock orders the two writers: the topic writes only while the lane is parked,
//! and the task parks only while its ring holds nothing unread, under that lock. An event is
//! written by the topic only if it follows the last one the subscriber has, so nothing is
//! written twice or skipped.

use crate::config::Format;
use crate::wire::encode::{http_chunk, Protocol};
use crate::wire::event::{Event, Kind, Msg};
use bytes::Bytes;
use prometheus::IntCounter;
use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// What deliveries are counted in: the same for every subscriber of a topic over one
/// protocol, resolved once and shared.
pub struct Counters {
    /// `unpoll_events_sent_total`, per kind (snapshot, patch, error).
    pub events: [IntCounter; 3],
    pub bytes: IntCounter,
    /// `unpoll_direct_writes_total`.
    pub direct: IntCounter,
    /// `unpoll_direct_handbacks_total`, per [`Handed`].
    pub handbacks: [IntCounter; 5],
}

/// Why the topic handed a lane back to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// The socket took less than a whole event (or nothing).
    Full = 0,
    /// Half the ring's events were written: the task's place in it must move on.
    Budget,
    /// A message that is not an event of the lane's epoch.
    Message,
    /// The shard's queue of messages was over the ring's length.
    Backlog,
    /// The connection is broken.
    Error,
}

/// One subscriber's way in for the topic.
pub struct Lane {
    socket: Arc<TcpStream>,
    protocol: Protocol,
    format: Format,
    /// SSE over HTTP/1.1: each event is one chunk.
    chunked: bool,
    /// Events written before the task must take the lane back (half the ring).
    budget: u32,
    counters: Arc<Counters>,
    /// The subscriber's own count of bytes, for the access log.
    tally: Option<Arc<AtomicU64>>,
    state: Mutex<LaneState>,
    /// Wakes the subscriber's task when the topic hands the lane back.
    pub wake: Notify,
}

struct LaneState {
    parked: bool,
    /// An event the subscriber has (its task's last), for its epoch: only events of that
    /// epoch are written here.
    last: Option<Arc<Event>>,
    /// The version of the last event the subscriber has, written by its task or here.
    version: u64,
    /// The offset (in the lane's format) the subscriber is at.
    delivered: u64,
    /// Events written here since the lane was parked.
    written: u64,
    /// The rest of an event the socket took only part of: the task writes it first.
    rest: Option<Box<Bytes>>,
}

/// An event's bytes for one kind of lane.
struct Frame {
    /// As written: the event, in one HTTP/1.1 chunk for a chunked lane.
    bytes: Bytes,
    kind: Kind,
    /// The event's own length, without the chunk's framing.
    data: usize,
}

/// What the task learns when it takes its lane back.
pub struct Handback {
    /// The version of the last event the subscriber has (in the epoch it parked in).
    pub version: u64,
    pub delivered: u64,
    pub rest: Option<Bytes>,
}

impl Lane {
    pub fn new(
        socket: Arc<TcpStream>,
        protocol: Protocol,
        format: Format,
        chunked: bool,
        counters: Arc<Counters>,
    ) -> Lane {
        Lane {
            socket,
            protocol,
            format,
            chunked,
            budget: 1,
            counters,
            tally: None,
            state: Mutex::new(LaneState {
                parked: false,
                last: None,
                version: 0,
                delivered: 0,
                written: 0,
                rest: None,
            }),
            wake: Notify::new(),
        }
    }

    /// Takes the lane back after `queue / 2` events written (`queue`: the topic's ring).
    pub fn queue(mut self, queue: usize) -> Lane {
        self.budget = (queue / 2).clamp(1, u32::MAX as usize) as u32;
        self
    }

    /// Counts what the topic writes into `tally` too (the subscriber's access log line).
    pub fn tallied(mut self, tally: Option<Arc<AtomicU64>>) -> Lane {
        self.tally = tally;
        self
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks the lane if `idle` holds under its lock (the task's ring has nothing unread):
    /// the subscriber has everything up to `version` of `last`'s epoch, at `delivered`.
    pub fn park(&self, idle: impl FnOnce() -> bool, last: Option<Arc<Event>>, version: u64, delivered: u64) -> bool {
        let mut state = self.lock();
        if !idle() {
            return false;
        }
        *state = LaneState { parked: true, last, version, delivered, written: 0, rest: state.rest.take() };
        true
    }

    /// Takes the lane back: the topic writes no more to it until it is parked again.
    pub fn unpark(&self) -> Handback {
        let mut state = self.lock();
        state.parked = false;
        Handback { version: state.version, delivered: state.delivered, rest: state.rest.take().map(|b| *b) }
    }

    /// Writes `frame` (the event's bytes for this lane, framed for its transport) if the lane
    /// is parked and the subscriber has the event before it; hands the lane back when it
    /// cannot. Whether any of it was written.
    /// `epoch` is the event's, found once for all lanes.
    fn offer(&self, event: &Arc<Event>, epoch: &str, frame: Option<&Frame>) -> bool {
        let mut state = self.lock();
        if !state.parked {
            return false;
        }
        let same_epoch = state.last.as_ref().is_some_and(|l| l.epoch() == epoch);
        if same_epoch && event.version <= state.version {
            // The task sent it before it parked.
            return false;
        }
        // Only the very next version: anything else is the task's to sort out from its ring.
        let next = same_epoch && event.version == state.version + 1;
        let Some(Frame { bytes, kind, data }) = frame.filter(|_| next) else {
            self.hand_back(state, Handed::Message);
            return false;
        };
        let written = match self.socket.try_write(bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            // The task finds the broken connection itself.
            Err(_) => {
                self.hand_back(state, Handed::Error);
                return false;
            }
        };
        if written == 0 {
            self.hand_back(state, Handed::Full);
            return false;
        }
        self.counters.direct.inc();
        self.counters.events[*kind as usize].inc();
        // The event's bytes, as the task counts them (not the transport's framing).
        self.counters.bytes.inc_by(*data as u64);
        if let Some(tally) = &self.tally {
            tally.fetch_add(*data as u64, Ordering::Relaxed);
        }
        state.version = event.version;
        state.delivered = event.offsets[self.format.index()];
        state.written += 1;
        if written < bytes.len() {
            state.rest = Some(Box::new(bytes.slice(written..)));
            self.hand_back(state, Handed::Full);
        } else if state.written >= u64::from(self.budget) {
            self.hand_back(state, Handed::Budget);
        }
        true
    }

    /// Wakes the task to write in the topic's place, if the lane is parked.
    fn hand_back(&self, mut state: MutexGuard<'_, LaneState>, why: Handed) {
        if !std::mem::take(&mut state.parked) {
            return;
        }
        drop(state);
        self.counters.handbacks[why as usize].inc();
        self.wake.notify_one();
    }
}

/// A topic's lanes, in shards written in parallel.
pub struct Lanes {
    shards: Box<[Arc<Mutex<Shard>>]>,
    next: AtomicUsize,
}

/// A shard's lanes and the messages not yet offered to them. While a fan-out works through
/// the lanes it holds the list itself (no copy of it is made, whatever the number of lanes):
/// lanes that join or leave meanwhile are noted aside and applied when it gives the list back.
#[derive(Default)]
struct Shard {
    lanes: Vec<Arc<Lane>>,
    /// Whether a fan-out holds `lanes`.
    taken: bool,
    joined: Vec<Arc<Lane>>,
    left: HashSet<usize>,
    /// Lanes in the shard, wherever they are listed.
    members: usize,
    /// Messages were dropped from the queue while a fan-out held the list: its lanes are
    /// handed back when it gives the list back.
    dropped: bool,
    /// Messages not yet offered to this shard's lanes, in order.
    queue: VecDeque<Msg>,
    /// Whether a task is working through the queue.
    running: bool,
}

impl Shard {
    /// The list back from a fan-out, with the lanes that joined and left meanwhile.
    fn give_back(&mut self, mut lanes: Vec<Arc<Lane>>) {
        if !self.left.is_empty() {
            let left = std::mem::take(&mut self.left);
            lanes.retain(|l| !left.contains(&(Arc::as_ptr(l) as usize)));
        }
        if std::mem::take(&mut self.dropped) {
            for lane in &lanes {
                lane.hand_back(lane.lock(), Handed::Backlog);
            }
        }
        lanes.append(&mut self.joined);
        self.lanes = lanes;
        self.taken = false;
    }
}

/// Lanes a shard writes from the sender's own task, under the topic's lock, when no fan-out
/// of it is under way.
const INLINE: usize = 8;

impl Default for Lanes {
    fn default() -> Lanes {
        static SHARDS: OnceLock<usize> = OnceLock::new();
        let n = *SHARDS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16));
        Lanes { shards: (0..n).map(|_| Arc::default()).collect(), next: AtomicUsize::new(0) }
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lanes {
    /// Adds a lane, written once parked; returns its shard, for [`Lanes::leave`].
    pub fn join(&self, lane: &Arc<Lane>) -> usize {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let mut shard = lock(&self.shards[i]);
        shard.members += 1;
        if shard.taken {
            shard.joined.push(lane.clone());
        } else {
            shard.lanes.push(lane.clone());
        }
        i
    }

    /// Removes a lane from shard `i` (taken back by its task: nothing more is written to it).
    pub fn leave(&self, lane: &Arc<Lane>, i: usize) {
        let Some(shard) = self.shards.get(i) else { return };
        let mut shard = lock(shard);
        if let Some(i) = shard.joined.iter().position(|l| Arc::ptr_eq(l, lane)) {
            shard.joined.swap_remove(i);
        } else if shard.taken {
            shard.left.insert(Arc::as_ptr(lane) as usize);
        } else if let Some(i) = shard.lanes.iter().position(|l| Arc::ptr_eq(l, lane)) {
            shard.lanes.swap_remove(i);
        } else {
            return;
        }
        shard.members -= 1;
    }

    /// Offers a message just sent on the topic's ring to every parked lane. Called in the
    /// order messages are sent (under the topic's lock); each shard works through its queue
    /// on a task of its own (here when there is no runtime), so the topic's lock is never
    /// held for a fan-out. `limit` bounds each shard's queue (the ring's length): past it
    /// every lane is handed back, and each subscriber reads its own place in the ring, as it
    /// would without lanes.
    pub fn send(&self, msg: &Msg, limit: usize) {
        for shard in self.shards.iter() {
            let mut guard = lock(shard);
            if guard.members == 0 {
                continue;
            }
            if guard.queue.len() >= limit {
                guard.queue.clear();
                let Shard { lanes, joined, .. } = &*guard;
                for lane in lanes.iter().chain(joined) {
                    lane.hand_back(lane.lock(), Handed::Backlog);
                }
                guard.dropped = guard.taken;
            }
            if !guard.running && guard.lanes.len() <= INLINE {
                // A few lanes and nothing queued: written here, a task would cost more.
                offer_all(msg, &guard.lanes);
                continue;
            }
            guard.queue.push_back(msg.clone());
            if guard.running {
                continue;
            }
            guard.running = true;
            drop(guard);
            let shard = shard.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(async move { drain(&shard) })),
                Err(_) => drain(&shard),
            }
        }
    }
}

impl Drop for Lanes {
    /// The topic is gone: every parked subscriber's task wakes and finds its ring closed.
    fn drop(&mut self) {
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for lane in shard.lanes.iter().chain(&shard.joined) {
                lane.hand_back(lane.lock(), Handed::Message);
            }
        }
    }
}

/// Offers a shard's queued messages to its lanes, in order, until the queue is empty.
fn drain(shard: &Mutex<Shard>) {
    loop {
        let (msg, lanes) = {
            let mut guard = lock(shard);
            let Some(msg) = guard.queue.pop_front() else {
                guard.running = false;
                return;
            };
            guard.taken = true;
            (msg, std::mem::take(&mut guard.lanes))
        };
        offer_all(&msg, &lanes);
        lock(shard).give_back(lanes);
    }
}

/// Offers one message to every lane of a shard.
fn offer_all(msg: &Msg, lanes: &[Arc<Lane>]) {
    let Msg::Event(event) = msg else {
        // Not an event: every subscriber reads it from its own place in the ring.
        for lane in lanes {
            lane.hand_back(lane.lock(), Handed::Message);
        }
        return;
    };
    // The event's bytes for each protocol and format, framed once for every lane.
    let mut frames: [Option<Option<Frame>>; 12] = Default::default();
    let mut wrote = false;
    let epoch = event.epoch();
    for lane in lanes {
        let slot = (lane.protocol.index() * 2 + usize::from(lane.chunked)) * 3 + lane.format.index();
        let frame = frames[slot].get_or_insert_with(|| {
            let (bytes, kind) = event.frame(lane.protocol, lane.format)?;
            let data = bytes.len();
            Some(Frame { bytes: if lane.chunked { http_chunk(&bytes) } else { bytes }, kind, data })
        });
        wrote |= lane.offer(event, epoch, frame.as_ref());
    }
    if wrote {
        event.note_written();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Delta;
    use tokio::io::AsyncReadExt;

    /// A connected pair on 127.0.0.1: the server's end for the lane, the client's to read.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    fn counters() -> Arc<Counters> {
        let c = || IntCounter::new("c", "c").unwrap();
        Arc::new(Counters { events: [c(), c(), c()], bytes: c(), direct: c(), handbacks: std::array::from_fn(|_| c()) })
    }

    fn event(epoch: &str, version: u64) -> Arc<Event> {
        let patch = Bytes::from(format!(r#"[{{"op":"replace","path":"/v","value":{version}}}]"#));
        let delta =
            Delta { snapshot: Bytes::from_static(b"{}"), json_patch: Some(patch), merge_patch: None, cut_short: false };
        Arc::new(Event::new(epoch, version, delta, [0; 3]))
    }

    fn frame(e: &Event) -> Option<Frame> {
        e.frame(Protocol::Sse, Format::JsonPatch).map(|(b, kind)| Frame { data: b.len(), bytes: http_chunk(&b), kind })
    }

    async fn read_some(client: &mut TcpStream) -> Vec<u8> {
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf)).await.unwrap().unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn a_parked_lane_gets_the_events_that_follow_and_hands_back_the_rest() {
        let (socket, mut client) = pair().await;
        let lane = Lane::new(socket, Protocol::Sse, Format::JsonPatch, true, counters()).queue(8);
        assert!(!lane.park(|| false, Some(event("e", 1)), 1, 0), "no park while the ring holds something");
        assert!(lane.park(|| true, Some(event("e", 1)), 1, 0));
        // An event already had is not written again, and the lane stays parked.
        let one = event("e", 1);
        lane.offer(&one, one.epoch(), frame(&one).as_ref());
        let two = event("e", 2);
        lane.offer(&two, two.epoch(), frame(&two).as_ref());
        let got = read_some(&mut client).await;
        assert_eq!(got, frame(&two).unwrap().bytes.to_vec(), "one chunk, the event that follows");
        assert_eq!(lane.counters.direct.get(), 1);
        let counted = frame(&two).unwrap().data;
        assert!(counted < frame(&two).unwrap().bytes.len());
        assert_eq!(lane.counters.bytes.get(), counted as u64, "the event's bytes, not its chunk framing");
        // Another epoch's event is the task's to send.
        let other = event("f", 3);
        lane.offer(&other, other.epoch(), frame(&other).as_ref());
        assert_eq!(lane.counters.handbacks[Handed::Message as usize].get(), 1);
        let back = lane.unpark();
        assert_eq!((back.version, back.delivered, back.rest), (2, two.offsets[Format::JsonPatch.index()], None));
        // Unparked: nothing is written.
        let three = event("e", 3);
        lane.offer(&three, three.epoch(), frame(&three).as_ref());
        assert_eq!(lane.counters.direct.get(), 1);
    }

    #[tokio::test]
    async fn half_the_ring_written_hands_the_lane_back() {
        let (socket, _client) = pair().await;
        let lane = Lane::new(socket, Protocol::Sse, Format::JsonPatch, true, counters()).queue(4);
        assert!(lane.park(|| true, Some(event("e", 1)), 1, 0));
        for v in 2..=5 {
            let e = event("e", v);
            lane.offer(&e, e.epoch(), frame(&e).as_ref());
        }
        assert_eq!(lane.counters.direct.get(), 2, "2 written, then the task's turn");
        assert_eq!(lane.counters.handbacks[Handed::Budget as usize].get(), 1);
        assert_eq!(lane.unpark().version, 3);
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_rest_of_the_event_to_the_task() {
        let (socket, _client) = pair().await;
        socket2::SockRef::from(&*socket).set_send_buffer_size(4096).unwrap();
        let lane = Lane::new(socket, Protocol::Sse, Format::Snapshot, true, counters()).queue(64);
        assert!(lane.park(|| true, Some(event("e", 1)), 1, 0));
        let big = Bytes::from(vec![b'x'; 8 << 20]);
        let e = event("e", 2);
        lane.offer(&e, e.epoch(), Some(&Frame { bytes: big.clone(), kind: Kind::Snapshot, data: big.len() }));
        let back = lane.unpark();
        let rest = back.rest.expect("the socket took only part of 8 MiB");
        assert!(!rest.is_empty() && rest.len() < big.len());
        assert_eq!(back.version, 2, "the event counts as the subscriber's: its task writes the rest");
        assert_eq!(lane.counters.handbacks[Handed::Full as usize].get(), 1);
    }

    #[tokio::test]
    async fn lanes_that_join_or_leave_during_a_fan_out_are_applied_after_it() {
        let lanes = Lanes { shards: vec![Arc::default()].into(), next: AtomicUsize::new(0) };
        let mut ends = Vec::new();
        let mut made = Vec::new();
        for _ in 0..3 {
            let (socket, client) = pair().await;
            ends.push(client);
            made.push(Arc::new(Lane::new(socket, Protocol::Sse, Format::JsonPatch, true, counters()).queue(64)));
        }
        assert_eq!(lanes.join(&made[0]), 0);
        lanes.join(&made[1]);
        // A fan-out holds the list: a lane joins, another leaves.
        let held = {
            let mut shard = lock(&lanes.shards[0]);
            shard.taken = true;
            std::mem::take(&mut shard.lanes)
        };
        lanes.join(&made[2]);
        lanes.leave(&made[0], 0);
        {
            let mut shard = lock(&lanes.shards[0]);
            shard.give_back(held);
            let listed: Vec<_> = shard.lanes.iter().map(|l| Arc::as_ptr(l) as usize).collect();
            let expected: Vec<_> = [&made[1], &made[2]].iter().map(|l| Arc::as_ptr(l) as usize).collect();
            assert_eq!(listed, expected);
            assert_eq!(shard.members, 2);
        }
        // The two listed get a message sent on the topic; the one that left does not.
        for lane in &made {
            assert!(lane.park(|| true, Some(event("e", 1)), 1, 0));
        }
        let two = event("e", 2);
        lanes.send(&Msg::Event(two.clone()), 64);
        for client in &mut ends[1..] {
            assert_eq!(read_some(client).await, frame(&two).unwrap().bytes.to_vec());
        }
        assert_eq!(made[0].counters.direct.get(), 0);
        assert!(!lock(&lanes.shards[0]).running, "the fan-out ended with its queue");
    }

    #[tokio::test]
    async fn a_shard_of_many_lanes_is_written_by_a_task_of_its_own() {
        let lanes = Lanes { shards: vec![Arc::default()].into(), next: AtomicUsize::new(0) };
        let mut ends = Vec::new();
        for _ in 0..INLINE + 4 {
            let (socket, client) = pair().await;
            ends.push(client);
            let lane = Arc::new(Lane::new(socket, Protocol::Sse, Format::JsonPatch, true, counters()).queue(64));
            assert!(lane.park(|| true, Some(event("e", 1)), 1, 0));
            lanes.join(&lane);
        }
        let two = event("e", 2);
        lanes.send(&Msg::Event(two.clone()), 64);
        assert!(lock(&lanes.shards[0]).running, "too many lanes to write under the topic's lock");
        for client in &mut ends {
            assert_eq!(read_some(client).await, frame(&two).unwrap().bytes.to_vec());
        }
        assert!(!lock(&lanes.shards[0]).running);
    }
}
