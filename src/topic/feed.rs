//! Where a topic's events come from: the seam between the hub, which keeps topics and counts
//! their subscribers, and whatever publishes into a topic.
//!
//! In a single process a topic's events come from its own poll loop
//! ([`super::poller::Poller`]). A feed publishes through the topic's own methods
//! ([`Topic::apply`], [`Topic::prepare`] and [`Topic::commit`]) and, by returning, tells the
//! hub why it stopped; the hub then retires the topic. Idle retirement is handed in
//! ([`Retire`]), because only the hub can check "no subscribers" and remove the topic in one
//! step. A feed whose events come from elsewhere (another node of a cluster) plugs in here.

use super::state::{Pending, Topic};
use crate::wire::event::ErrorEvent;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// Why a topic's feed stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It had no subscribers for its linger, and [`Retire::retire_if_idle`] removed it.
    Idle,
    /// The upstream refused the resource for good; subscribers were told.
    Terminal,
    /// The topic was closed from outside (its route removed or changed).
    Closed,
    /// The proxy is shutting down.
    Shutdown,
    /// The feed panicked: a bug. Subscribers are told `internal_error`.
    Failed,
    /// Its [`Gate`] no longer lets it publish (a cluster node that lost its lease): the poll
    /// loop ends, and whoever ran it carries on otherwise. The hub never sees this.
    Demoted,
}

/// Who may publish a topic's versions: always, in one process; in a cluster, only the node
/// holding the topic's lease.
pub trait Gate: Send + Sync {
    /// Before `pending` (a new version) is published here: whether it may be. Refused, it is
    /// dropped unpublished and the poll loop ends with [`Stopped::Demoted`].
    fn admit<'a>(&'a self, topic: &'a Topic, pending: &'a Pending) -> BoxFuture<'a, bool>;
    /// An error this node's subscribers were just told, for everyone else's.
    fn told<'a>(&'a self, topic: &'a Topic, error: &'a ErrorEvent) -> BoxFuture<'a, ()>;
    /// Whether the poll loop should go on; asked after every wake-up.
    fn polling(&self) -> bool;
}

/// The gate of a single process: it always publishes.
pub struct Always;

impl Gate for Always {
    fn admit<'a>(&'a self, _: &'a Topic, _: &'a Pending) -> BoxFuture<'a, bool> {
        Box::pin(std::future::ready(true))
    }

    fn told<'a>(&'a self, _: &'a Topic, _: &'a ErrorEvent) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn polling(&self) -> bool {
        true
    }
}

/// What a feed may ask of whoever keeps the topics.
pub trait Retire: Send + Sync {
    /// Removes `topic` if it still has no subscribers, in one step; whether it did.
    fn retire_if_idle(&self, topic: &Arc<Topic>) -> bool;
    /// Stops counting `topic` against the client that made it (it has been idle a while).
    fn uncount(&self, topic: &Topic);
}

/// A source of a topic's events.
pub trait Feed: Send + Sync {
    /// Feeds `topic` until it should stop, and says why.
    fn run(self: Arc<Self>, topic: Arc<Topic>, retire: Arc<dyn Retire>) -> BoxFuture<'static, Stopped>;
    /// Whether a new topic's first state is known at once (else subscribers wait for the
    /// feed's [`Topic::prime`]).
    fn starts_primed(&self) -> bool {
        true
    }
}

/// Runs a feed to its end; a panic in it becomes [`Stopped::Failed`].
pub async fn supervise(feed: impl Future<Output = Stopped>) -> Stopped {
    AssertUnwindSafe(feed).catch_unwind().await.unwrap_or(Stopped::Failed)
}
