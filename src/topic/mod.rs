//! The shared poll: which subscribers share one ([`key`], the security-critical part), the
//! hub of live topics, each topic's document ([`state`]), history ([`history`]) and
//! subscribers ([`audience`]), the upstream GET
//! ([`fetch`]), the poll loop ([`poller`]) and the polls asked for ahead of it ([`refresh`]),
//! the diff threads ([`compute`]) and what subscribers are told when a poll fails
//! ([`sentence`]).

pub mod audience;
pub mod compute;
pub mod direct;
pub mod feed;
pub mod fetch;
pub mod history;
pub mod hub;
pub mod idle;
pub mod key;
pub mod poller;
pub mod refresh;
pub mod sentence;
pub mod state;
