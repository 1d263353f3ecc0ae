//! Polling: topic keys, the upstream GET, the per-topic poll loop, and the diff threads.

pub mod compute;
pub mod fetch;
pub mod key;
pub mod poller;
