//! Delivery to subscribers: each one's queue and counters ([`delivery`]), the SSE and
//! WebSocket handlers, and the client's socket once taken out of pingora ([`downstream`]).

pub mod delivery;
pub mod downstream;
pub mod sse;
pub mod ws;
