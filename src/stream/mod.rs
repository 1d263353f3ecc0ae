//! Delivery to subscribers: each one's queue and counters ([`delivery`]), the one delivery
//! loop ([`serve`]) over the sinks of SSE ([`sse`]: HTTP/1 and HTTP/2) and WebSocket
//! ([`ws`]), and the client's socket once taken out of pingora ([`downstream`]).

pub mod delivery;
pub mod downstream;
pub mod serve;
pub mod sse;
pub mod ws;
