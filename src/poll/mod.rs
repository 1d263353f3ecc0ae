//! Polling: topic keys, the upstream GET, and the per-topic poll loop.

pub mod fetch;
pub mod key;
pub mod poller;
