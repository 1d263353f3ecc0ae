//! Fan-out: the hub of topics, event encoding, and the SSE and WebSocket stream handlers.

pub mod delivery;
pub mod downstream;
pub mod encode;
pub mod event;
pub mod hub;
pub mod sse;
pub mod topic;
pub mod ws;
