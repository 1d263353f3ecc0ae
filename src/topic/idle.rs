//! The upstream connections of polls, kept between polls.
//!
//! Polls give their HTTP/1 connections back to this list rather than to pingora's pool, which
//! starts a task for each connection given back (to watch it while it is idle) and reads from
//! it before pooling it and again before reusing it, and checks its peer address: at 10,000
//! polls a second that was about 5 % of unpoll's CPU ([benchmarks](../../docs/benchmarks.md)).
//! Here a connection waits in a list under its pool key (pingora's `reuse_hash` of the peer: the
//! server, its TLS settings and the [`crate::upstream::pool::Plan`]'s `group_key`, so
//! connections of different credentials never meet), newest first, and nothing watches it.
//! The poll that takes it asks the kernel first whether it was closed or has bytes waiting
//! (see [`crate::upstream::pool`]). A TLS connection is given back only when its TLS layer holds
//! no bytes already read (a read that would wait): the kernel cannot see those.
//!
//! At most `server.poll_idle_connections` wait in all (`unpoll_poll_idle_connections`): a full
//! list closes its oldest. One that waited [`IDLE_TIMEOUT`] is closed when the list is next
//! used (the list is swept at most once a second).

use futures_util::FutureExt;
use pingora::protocols::Stream;
use prometheus::IntGauge;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How long a connection waits for its next poll before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the whole list is looked through for connections past [`IDLE_TIMEOUT`].
const SWEEP: Duration = Duration::from_secs(1);

pub struct Idle {
    lists: Mutex<Lists>,
    limit: usize,
    /// `unpoll_poll_idle_connections`.
    gauge: IntGauge,
}

struct Lists {
    by_key: HashMap<u64, VecDeque<(Stream, Instant)>>,
    count: usize,
    swept: Instant,
}

impl Idle {
    pub fn new(limit: usize, gauge: IntGauge) -> Idle {
        let lists = Lists { by_key: HashMap::new(), count: 0, swept: Instant::now() };
        Idle { lists: Mutex::new(lists), limit, gauge }
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest connection waiting under `key` that has not waited too long.
    pub fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let mut closed = Vec::new();
        let mut lists = self.lists();
        let found = match lists.by_key.get_mut(&key) {
            Some(list) => {
                let mut found = None;
                while let Some((stream, since)) = list.pop_back() {
                    if now.duration_since(since) < IDLE_TIMEOUT {
                        found = Some(stream);
                        break;
                    }
                    closed.push(stream);
                }
                let taken = closed.len() + found.is_some() as usize;
                if list.is_empty() {
                    lists.by_key.remove(&key);
                }
                lists.count -= taken;
                found
            }
            None => None,
        };
        self.sweep(&mut lists, now, &mut closed);
        self.gauge.set(lists.count as i64);
        drop(lists);
        // Closed out of the lock.
        drop(closed);
        found
    }

    /// Keeps `stream` for the next poll under `key`: a TLS one (`tls`) only if its TLS layer
    /// holds nothing already read, and only while the list has room (else its oldest goes).
    pub async fn put(&self, key: u64, mut stream: Stream, tls: bool) {
        if tls && !quiet(&mut stream).await {
            return;
        }
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut closed = Vec::new();
        let mut lists = self.lists();
        self.sweep(&mut lists, now, &mut closed);
        if lists.count >= self.limit {
            // The oldest of all: the front of the list whose front waited longest.
            let oldest = lists.by_key.iter().filter_map(|(k, l)| l.front().map(|(_, since)| (*since, *k))).min();
            if let Some((_, k)) = oldest {
                if let Some(list) = lists.by_key.get_mut(&k) {
                    closed.extend(list.pop_front().map(|(s, _)| s));
                    if list.is_empty() {
                        lists.by_key.remove(&k);
                    }
                }
                lists.count -= 1;
            }
        }
        lists.by_key.entry(key).or_default().push_back((stream, now));
        lists.count += 1;
        self.gauge.set(lists.count as i64);
        drop(lists);
        drop(closed);
    }

    /// Takes out the connections that waited [`IDLE_TIMEOUT`], at most once every [`SWEEP`].
    fn sweep(&self, lists: &mut Lists, now: Instant, closed: &mut Vec<Stream>) {
        if now.duration_since(lists.swept) < SWEEP {
            return;
        }
        lists.swept = now;
        let before = closed.len();
        lists.by_key.retain(|_, list| {
            while list.front().is_some_and(|(_, since)| now.duration_since(*since) >= IDLE_TIMEOUT) {
                closed.extend(list.pop_front().map(|(s, _)| s));
            }
            !list.is_empty()
        });
        lists.count -= closed.len() - before;
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.lists().count
    }
}

/// Whether a read from `stream` would wait: nothing is held for it, neither in its TLS layer
/// nor in the kernel, and it is not closed.
async fn quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut byte)).now_or_never().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair: pingora's stream, and the other end.
    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (Box::new(pingora::protocols::l4::stream::Stream::from(ours.unwrap())), theirs.unwrap().0)
    }

    fn idle(limit: usize) -> Idle {
        Idle::new(limit, IntGauge::new("idle", "idle").unwrap())
    }

    #[tokio::test]
    async fn connections_are_taken_newest_first_and_only_under_their_key() {
        let idle = idle(8);
        let (a, _ta) = pair().await;
        let (b, _tb) = pair().await;
        let (c, _tc) = pair().await;
        let ids = [a.id(), b.id(), c.id()];
        idle.put(1, a, false).await;
        idle.put(1, b, false).await;
        idle.put(2, c, false).await;
        assert_eq!(idle.count(), 3);
        assert_eq!(idle.gauge.get(), 3);
        assert_eq!(idle.take(1).map(|s| s.id()), Some(ids[1]));
        assert_eq!(idle.take(1).map(|s| s.id()), Some(ids[0]));
        assert!(idle.take(1).is_none(), "key 1 has no more; key 2's is not for it");
        assert_eq!(idle.take(2).map(|s| s.id()), Some(ids[2]));
        assert_eq!((idle.count(), idle.gauge.get()), (0, 0));
    }

    #[tokio::test]
    async fn a_full_list_closes_its_oldest() {
        let idle = idle(2);
        let (a, mut ta) = pair().await;
        let (b, _tb) = pair().await;
        let (c, _tc) = pair().await;
        let (b_id, c_id) = (b.id(), c.id());
        idle.put(1, a, false).await;
        idle.put(2, b, false).await;
        idle.put(3, c, false).await;
        assert_eq!(idle.count(), 2);
        assert!(idle.take(1).is_none(), "the oldest was closed");
        let mut buf = [0u8; 1];
        assert_eq!(ta.read(&mut buf).await.unwrap(), 0, "and its socket with it");
        assert_eq!(idle.take(2).map(|s| s.id()), Some(b_id));
        assert_eq!(idle.take(3).map(|s| s.id()), Some(c_id));
        // With no room at all nothing is kept.
        let none = super::Idle::new(0, IntGauge::new("idle0", "idle").unwrap());
        let (d, _td) = pair().await;
        none.put(1, d, false).await;
        assert!(none.take(1).is_none());
    }

    #[tokio::test]
    async fn a_connection_past_the_idle_timeout_is_not_taken() {
        let idle = idle(8);
        let (a, mut ta) = pair().await;
        idle.put(1, a, false).await;
        // As if it had waited past the timeout, and the last sweep was long ago.
        {
            let mut lists = idle.lists();
            let past = Instant::now() - IDLE_TIMEOUT - SWEEP;
            lists.by_key.get_mut(&1).unwrap()[0].1 = past;
            lists.swept = past;
        }
        let (b, _tb) = pair().await;
        idle.put(2, b, false).await;
        assert_eq!(idle.count(), 1, "swept when the list was next used");
        let mut buf = [0u8; 1];
        assert_eq!(ta.read(&mut buf).await.unwrap(), 0, "and closed");
        assert!(idle.take(1).is_none());
    }

    #[tokio::test]
    async fn a_stream_with_bytes_to_read_is_not_kept_as_a_quiet_one() {
        let (mut a, mut ta) = pair().await;
        assert!(quiet(&mut a).await);
        ta.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!quiet(&mut a).await, "a byte waits");
        let (mut b, tb) = pair().await;
        drop(tb);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!quiet(&mut b).await, "closed");
        let idle = idle(8);
        let (c, mut tc) = pair().await;
        tc.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        idle.put(1, c, true).await;
        assert!(idle.take(1).is_none(), "a TLS-kind stream with bytes held is not kept");
    }
}
