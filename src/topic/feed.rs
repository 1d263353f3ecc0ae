//! Where a topic's events come from: the seam between the hub, which keeps topics and counts
//! their subscribers, and whatever publishes into a topic.
//!
//! In a single process a topic's events come from its own poll loop
//! ([`super::poller::Poller`]). A feed publishes through the topic's own methods
//! ([`Topic::apply`], [`Topic::prepare`] and [`Topic::commit`]) and, by returning, tells the
//! hub why it stopped; the hub then retires the topic. Idle retirement is handed in
//! ([`Retire`]), because only the hub can check "no subscribers" and remove the topic in one
//! step. A feed whose events come from elsewhere (another node of a cluster) plugs in here.

use super::state::Topic;
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
}

/// Runs a feed to its end; a panic in it becomes [`Stopped::Failed`].
pub async fn supervise(feed: impl Future<Output = Stopped>) -> Stopped {
    AssertUnwindSafe(feed).catch_unwind().await.unwrap_or(Stopped::Failed)
}
