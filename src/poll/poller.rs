//! The poll loop of one topic: poll at once, then every `interval`; back off while the
//! upstream fails; stop `linger` after the last subscriber leaves.

use super::fetch::{fetch, Fetched};
use crate::stream::hub::Hub;
use crate::stream::topic::{Applied, Outcome, Topic};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

/// The longest wait between polls of a failing upstream (or the interval, if longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until the topic is idle for `linger`, the upstream refuses it for good, or shutdown.
pub async fn run(hub: Arc<Hub>, topic: Arc<Topic>) {
    let settings = topic
        .route
        .stream
        .clone()
        .expect("topics exist only on stream routes");
    let route = topic.route.label().to_string();
    let mut shutdown = hub.shutdown.clone();
    let mut failures: u32 = 0;
    log::debug!(
        "topic {} {} starts (epoch {})",
        route,
        topic.key.target,
        topic.epoch
    );
    loop {
        let started = Instant::now();
        let fetched = fetch(
            &hub.connector,
            &topic.route.upstream,
            &topic.request,
            topic.etag().as_deref(),
            settings.max_body,
        )
        .await;
        let (outcome, label) = classify(fetched);
        let applied = topic.apply(outcome);
        let label = match (applied, label) {
            (Applied::Unchanged, "changed") => "unchanged",
            (_, l) => l,
        };
        hub.metrics.polls.with_label_values(&[&route, label]).inc();
        if applied == Applied::Terminal {
            hub.remove(&topic);
            break;
        }
        let delay = if applied == Applied::Failed {
            failures = failures.saturating_add(1);
            backoff(settings.interval, failures)
        } else {
            failures = 0;
            settings.interval
        };
        let next_poll = started + delay;
        // Wait for the next poll, watching for the last subscriber to leave.
        loop {
            let idle_deadline = topic.idle_since().map(|t| t + settings.linger);
            if idle_deadline.is_some_and(|d| d <= Instant::now()) && hub.remove_if_idle(&topic) {
                log::debug!("topic {} {} stops: no subscribers", route, topic.key.target);
                return;
            }
            let until = idle_deadline.map_or(next_poll, |d| d.min(next_poll));
            tokio::select! {
                _ = sleep_until(until) => {}
                _ = topic.wake.notified() => {}
                _ = shutdown.changed() => {
                    hub.remove(&topic);
                    return;
                }
            }
            if Instant::now() >= next_poll {
                break;
            }
        }
    }
}

fn classify(fetched: Fetched) -> (Outcome, &'static str) {
    match fetched {
        Fetched::Body { body, etag, json } => (Outcome::Body { body, etag, json }, "changed"),
        Fetched::NotModified => (Outcome::Unchanged, "not_modified"),
        Fetched::Status(status @ (401 | 403 | 404 | 410)) => {
            let error = match status {
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                _ => "gone",
            };
            (Outcome::Terminal { status, error }, "terminal_status")
        }
        Fetched::Status(status) => {
            let error = if status >= 500 {
                "upstream_unavailable"
            } else {
                "upstream_status"
            };
            let message = format!("the upstream answered {status}; retrying");
            (
                Outcome::Failed {
                    status,
                    error,
                    message,
                },
                "error_status",
            )
        }
        Fetched::Unreachable(e) => {
            let message = format!("the upstream could not be reached ({e}); retrying");
            (
                Outcome::Failed {
                    status: 502,
                    error: "upstream_unreachable",
                    message,
                },
                "unreachable",
            )
        }
        Fetched::TimedOut => {
            let message = "the upstream did not answer in time; retrying".to_string();
            (
                Outcome::Failed {
                    status: 504,
                    error: "upstream_timeout",
                    message,
                },
                "timeout",
            )
        }
        Fetched::TooLarge(n) => {
            let message =
                format!("the upstream body exceeded the route's max_body ({n}+ bytes); retrying");
            (
                Outcome::Failed {
                    status: 502,
                    error: "upstream_body_too_large",
                    message,
                },
                "too_large",
            )
        }
    }
}

/// Exponential backoff from the interval, capped, with up to 10 % jitter.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(interval);
    let base = interval.saturating_mul(1u32 << failures.min(16)).min(cap);
    let jitter = base.mul_f64(rand::random::<f64>() * 0.1);
    (base + jitter).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let i = Duration::from_secs(1);
        assert!(
            backoff(i, 1) >= Duration::from_secs(2) && backoff(i, 1) <= Duration::from_millis(2200)
        );
        assert!(backoff(i, 3) >= Duration::from_secs(8));
        assert_eq!(backoff(i, 30), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(60), 5), Duration::from_secs(60));
    }
}
