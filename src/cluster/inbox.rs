//! Messages from Redis to this node's topics: one connection subscribed to the channel of
//! every topic the node has, and a task handing each message to its topic's feed.
//!
//! Both hand-overs are bounded: the connection's queue (`cluster.inbox` messages) and each
//! topic's (`TOPIC_QUEUE`). A message dropped at either is counted, and the topic is told to
//! catch up from the stored history instead.

use bytes::Bytes;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, Notify};

/// Messages one topic's feed may have waiting.
pub const TOPIC_QUEUE: usize = 64;

/// What the subscription connection hands on.
enum Push {
    Message {
        channel: Vec<u8>,
        payload: Bytes,
    },
    /// The connection dropped: messages may have been lost meanwhile.
    Lost,
}

/// One topic's end: its messages, and a flag raised when some were lost.
pub struct Registration {
    pub rx: mpsc::Receiver<Bytes>,
    /// Notified when messages were dropped or the connection was lost: catch up.
    pub lost: Arc<Notify>,
    /// Set while this node leads the topic: its own events are not handed back to it.
    pub leading: Arc<AtomicBool>,
    channel: Vec<u8>,
    id: u64,
    inbox: Arc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut routes = self.inbox.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = routes.get_mut(&self.channel) {
            list.retain(|r| r.id != self.id);
            if list.is_empty() {
                routes.remove(&self.channel);
                let channel = self.channel.clone();
                if let Some(conn) = self.inbox.conn.get() {
                    let mut conn = conn.clone();
                    tokio::spawn(async move {
                        let _ = conn.unsubscribe(channel).await;
                    });
                }
            }
        }
    }
}

struct Route {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    lost: Arc<Notify>,
    leading: Arc<AtomicBool>,
}

struct Shared {
    routes: Mutex<HashMap<Vec<u8>, Vec<Route>>>,
    conn: OnceLock<ConnectionManager>,
    next: AtomicU64,
}

/// The node's subscriptions.
pub struct Inbox {
    shared: Arc<Shared>,
    capacity: usize,
    /// The connection's queue, until [`Inbox::connect`] hands it to the dispatching task.
    pending: Mutex<Option<mpsc::Receiver<Push>>>,
    queue: mpsc::Sender<Push>,
    /// `unpoll_cluster_inbox_dropped_total`.
    dropped: IntCounter,
}

impl Inbox {
    pub fn new(capacity: usize, dropped: IntCounter) -> Inbox {
        let (queue, rx) = mpsc::channel(capacity);
        Inbox {
            shared: Arc::new(Shared { routes: Mutex::default(), conn: OnceLock::new(), next: AtomicU64::new(0) }),
            capacity,
            pending: Mutex::new(Some(rx)),
            queue,
            dropped,
        }
    }

    /// The subscription connection: RESP3 pushes into the bounded queue, resubscribed after a
    /// reconnection. Spawns the dispatching task on the current runtime.
    pub fn connect(&self, client: redis::Client, config: ConnectionManagerConfig) -> redis::RedisResult<()> {
        let queue = self.queue.clone();
        let dropped = self.dropped.clone();
        let sender = move |info: PushInfo| -> Result<(), redis::aio::SendError> {
            let push = match info.kind {
                PushKind::Message => match <[Value; 2]>::try_from(info.data) {
                    Ok([Value::BulkString(channel), Value::BulkString(payload)]) => {
                        Push::Message { channel, payload: Bytes::from(payload) }
                    }
                    _ => return Ok(()),
                },
                PushKind::Disconnection => Push::Lost,
                _ => return Ok(()),
            };
            if queue.try_send(push).is_err() {
                dropped.inc();
                // A lost message shows as a gap in versions, which the topic catches up on.
            }
            Ok(())
        };
        let config = config.set_push_sender(sender).set_automatic_resubscription();
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let _ = self.shared.conn.set(conn);
        if let Some(rx) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tokio::spawn(dispatch(self.shared.clone(), rx, self.dropped.clone()));
        }
        Ok(())
    }

    /// Registers a topic's channel; [`Inbox::subscribe`] then asks Redis for its messages.
    pub fn register(&self, channel: &str) -> Registration {
        let (tx, rx) = mpsc::channel(TOPIC_QUEUE);
        let lost = Arc::new(Notify::new());
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let channel = channel.as_bytes().to_vec();
        let leading = Arc::new(AtomicBool::new(false));
        let route = Route { id, tx, lost: lost.clone(), leading: leading.clone() };
        self.shared.routes.lock().unwrap_or_else(|e| e.into_inner()).entry(channel.clone()).or_default().push(route);
        Registration { rx, lost, leading, channel, id, inbox: self.shared.clone() }
    }

    /// Subscribes the connection to `channel` (again, harmlessly, if it already is).
    pub async fn subscribe(&self, channel: &str, timeout: std::time::Duration) -> Result<(), super::Down> {
        let Some(conn) = self.shared.conn.get() else { return Err(super::Down) };
        let mut conn = conn.clone();
        match tokio::time::timeout(timeout, conn.subscribe(channel)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(super::Down),
        }
    }

    /// The connection queue's bound (`cluster.inbox`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Hands each message to its topics; on a lost connection, tells every topic to catch up.
async fn dispatch(shared: Arc<Shared>, mut rx: mpsc::Receiver<Push>, dropped: IntCounter) {
    while let Some(push) = rx.recv().await {
        let routes = shared.routes.lock().unwrap_or_else(|e| e.into_inner());
        match push {
            Push::Message { channel, payload } => {
                for route in routes.get(&channel).into_iter().flatten() {
                    if route.leading.load(Ordering::Relaxed) {
                        continue;
                    }
                    if route.tx.try_send(payload.clone()).is_err() {
                        dropped.inc();
                        route.lost.notify_one();
                    }
                }
            }
            Push::Lost => {
                for route in routes.values().flatten() {
                    route.lost.notify_one();
                }
            }
        }
    }
}
