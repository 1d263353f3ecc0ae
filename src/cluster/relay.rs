//! Refreshes across the cluster: a write or a hint seen on any node must reach the node that
//! polls the topic, and make one poll there, not one per node. The node that sees it
//! publishes the paths on the cluster's refresh channel (`<prefix>refresh`); every node, the
//! sender included, applies it to the topics it polls (alone or as leader), never to those it
//! follows. While Redis is away every node polls its own topics, and a refresh is applied
//! where it was seen.
//!
//! Paths never appear in Redis: each is named by its keyed hash ([`Seal::path`]), exact
//! paths and prefixes apart; a node matches them against the hashes of its own topics' paths
//! and of every prefix that reaches them (see `topic::hub`). The message carries a tag over
//! all of it, and one without a valid tag is dropped and counted.

use super::seal::Seal;
use super::{scripts, Cluster};
use crate::topic::hub::Hub;
use crate::topic::refresh::{Cause, PathHash, PathHasher, Paths, Relay};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::{Arc, Weak};

/// Paths one refresh message may name.
const MAX_PATHS: usize = 4096;

/// The refresh channel's name.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}refresh")
}

/// A refresh, as the channel carries it: why, and the hashes of its exact paths and prefixes.
#[derive(Debug, Clone, PartialEq)]
pub struct Refresh {
    pub cause: Cause,
    pub exact: Vec<PathHash>,
    pub prefixes: Vec<PathHash>,
}

impl Refresh {
    /// `paths`, hashed.
    pub fn of(seal: &Seal, paths: &[Paths], cause: Cause) -> Refresh {
        let (mut exact, mut prefixes) = (Vec::new(), Vec::new());
        for path in paths.iter().take(MAX_PATHS) {
            match path {
                Paths::Exact(p) => exact.push(seal.path(p)),
                Paths::Prefix(p) => prefixes.push(seal.path(p)),
            }
        }
        Refresh { cause, exact, prefixes }
    }

    /// The message: cause, counts, hashes, and the tag over them.
    pub fn encode(&self, seal: &Seal) -> Bytes {
        let mut out = BytesMut::with_capacity(5 + 32 * (self.exact.len() + self.prefixes.len() + 1));
        out.put_u8(match self.cause {
            Cause::Write => b'w',
            Cause::Hint => b'h',
        });
        out.put_u16(self.exact.len() as u16);
        out.put_u16(self.prefixes.len() as u16);
        for hash in self.exact.iter().chain(&self.prefixes) {
            out.put_slice(hash);
        }
        let tag = seal.refresh(&out);
        out.put_slice(&tag);
        out.freeze()
    }

    /// Reads and checks a message: `None` when it is malformed or its tag does not match.
    pub fn decode(seal: &Seal, mut b: Bytes) -> Option<Refresh> {
        if b.len() < 5 + 32 {
            return None;
        }
        let body = b.slice(..b.len() - 32);
        let tag = b.slice(b.len() - 32..);
        if !Seal::matches(&seal.refresh(&body), &tag) {
            return None;
        }
        let cause = match b.get_u8() {
            b'w' => Cause::Write,
            b'h' => Cause::Hint,
            _ => return None,
        };
        let (exact, prefixes) = (b.get_u16() as usize, b.get_u16() as usize);
        if b.remaining() != 32 * (exact + prefixes + 1) {
            return None;
        }
        let mut hash = || {
            let mut h: PathHash = [0; 32];
            b.copy_to_slice(&mut h);
            h
        };
        let exact = (0..exact).map(|_| hash()).collect();
        let prefixes = (0..prefixes).map(|_| hash()).collect();
        Some(Refresh { cause, exact, prefixes })
    }
}

/// What carries this node's refreshes to the cluster.
pub struct ClusterRelay {
    pub cluster: Arc<Cluster>,
    /// Where a refresh is applied when Redis fails to carry it.
    pub hub: Weak<Hub>,
}

impl Relay for ClusterRelay {
    fn relay(&self, paths: &[Paths], cause: Cause) -> bool {
        if !self.cluster.is_up() {
            return false;
        }
        let message = Refresh::of(&self.cluster.seal, paths, cause).encode(&self.cluster.seal);
        let channel = channel(&self.cluster.settings.prefix);
        let (cluster, hub, paths) = (self.cluster.clone(), self.hub.clone(), paths.to_vec());
        tokio::spawn(async move {
            let sent: Result<i64, super::Down> =
                cluster.run("relay", scripts::RELAY.key(&channel).arg(message.as_ref())).await;
            // Not carried: the topics polled here are refreshed at least.
            if sent.is_err() {
                if let Some(hub) = hub.upgrade() {
                    hub.refresh(&paths, cause);
                }
            }
        });
        true
    }
}

/// Applies the refreshes the cluster carries (this node's own included) to the topics this
/// node polls, for as long as the process runs.
pub async fn listen(cluster: Arc<Cluster>, hub: Arc<Hub>) {
    let channel = channel(&cluster.settings.prefix);
    let mut registration = cluster.inbox.register(&channel);
    // Subscribed once Redis answers; the connection subscribes again after a reconnection.
    loop {
        cluster.connected().await;
        if cluster.inbox.subscribe(&channel, cluster.settings.timeout).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    while let Some(payload) = registration.rx.recv().await {
        match Refresh::decode(&cluster.seal, payload) {
            Some(refresh) => {
                let reached = hub.refresh_hashed(&refresh.exact, &refresh.prefixes, refresh.cause);
                log::debug!("cluster: a refresh ({}) reached {reached} topics polled here", refresh.cause.name());
            }
            None => cluster.unauthenticated("refresh"),
        }
    }
}

/// How paths are named between the cluster's nodes.
pub fn hasher(cluster: Arc<Cluster>) -> PathHasher {
    Arc::new(move |path| cluster.seal.path(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_reads_back_only_with_its_tag() {
        let seal = Seal::new(b"0123456789abcdef0123456789abcdef");
        let paths = [Paths::Exact("/orders/42".into()), Paths::Prefix("/users/7".into())];
        let refresh = Refresh::of(&seal, &paths, Cause::Hint);
        assert_eq!((refresh.exact.len(), refresh.prefixes.len()), (1, 1));
        assert_eq!(refresh.exact[0], seal.path("/orders/42"));
        let bytes = refresh.encode(&seal);
        assert!(!bytes.windows(6).any(|w| w == b"orders"), "no path in the message");
        assert_eq!(Refresh::decode(&seal, bytes.clone()), Some(refresh));
        let other = Seal::new(b"another secret, 32 bytes or more!!");
        assert_eq!(Refresh::decode(&other, bytes.clone()), None, "another cluster's secret");
        let mut forged = bytes.to_vec();
        forged[0] = b'w';
        assert_eq!(Refresh::decode(&seal, Bytes::from(forged)), None, "changed after tagging");
        assert_eq!(Refresh::decode(&seal, bytes.slice(..10)), None, "cut short");
    }
}
