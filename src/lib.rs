//! # unpoll
//!
//! A reverse proxy that turns REST poll endpoints into pushed WebSocket and Server-Sent-Events
//! streams. It polls an upstream GET once per interval on behalf of every subscriber of that
//! resource, diffs successive bodies, and pushes a snapshot and then patches.
//!
//! # Layout
//!
//! One room per stage of the flow. Imports point one way: each room uses only rooms below it
//! in this table (read from the code's `use crate::` lines):
//!
//! ```text
//! server       admin cluster config metrics proxy redact reload route_table status systemd topic upstream
//! admin        metrics status sys topic
//! status       cluster config metrics redact route_table topic wire
//! cluster      config diff redact topic wire
//! proxy        config metrics redact route_table stream sys topic upstream wire
//! stream       config metrics sys topic wire
//! reload       config metrics redact route_table topic
//! topic        config diff metrics redact route_table sys upstream wire
//! wire         config diff
//! diff         config
//! route_table  config metrics upstream
//! upstream     config metrics sys
//! metrics      config
//! redact       config
//! demo         config
//! config, logging, sys, systemd: nothing of the crate
//! ```
//!
//! - [`server`]: assembles the pingora server, the admin listener and reload (and the
//!   graceful-upgrade hand-over). [`main`](../unpoll/index.html) is a thin CLI over it.
//! - [`proxy`]: the pingora `ProxyHttp` implementation: decides and dispatches. It normalises
//!   the path ([`proxy::path`]), routes each request and either serves it as a subscription
//!   ([`proxy::subscribe`] classifies, [`proxy::detach`] takes the socket out of pingora) or
//!   lets pingora proxy it unchanged; who the client is for per-client limits
//!   ([`proxy::client`]); which server a request goes to ([`proxy::sticky`]); the connection
//!   limit and the request-head guard.
//! - [`stream`]: delivery to one subscriber: its queue and counters ([`stream::delivery`]),
//!   the SSE and WebSocket handlers, and the lean socket they write to.
//! - [`topic`]: the shared poll. Which subscribers share one ([`topic::key`], the
//!   security-critical part), the [`topic::hub`] of live topics, each topic's document and
//!   history ([`topic::state`]), where its events come from ([`topic::feed`]: its own poll
//!   loop, [`topic::poller`], which fetches with [`topic::fetch`]; in a cluster,
//!   [`cluster::feed`]), and the diff threads ([`topic::compute`]).
//! - [`cluster`]: cluster mode on Redis: per topic one leader polls and publishes each version
//!   through Redis, fenced by its lease; the other nodes fan its events out; every node polls
//!   alone while Redis is away. It plugs into [`topic::feed`] and is imported only by
//!   [`server`] and [`status`] (which reads whether Redis is up).
//! - [`reload`]: live reload: file watch and SIGHUP, validated off to the side, swapped
//!   atomically (the route table, then the live topics), restart-only changes refused.
//! - [`wire`]: events and their encodings, made once per protocol and format.
//! - [`diff`]: pure JSON diffing into RFC 6902 and RFC 7396 patches, with the size gate and
//!   the work budget.
//! - [`route_table`]: the routes in force, compiled from a configuration and read lock-free
//!   (arc-swap), each with its upstream.
//! - [`upstream`]: everything about reaching a server. Each upstream's servers and
//!   connection-reuse state; choosing a server ([`upstream::balance`]: weighted round robin,
//!   the Ketama ring of hash affinity, sticky cookies' opaque server ids, and each server's
//!   health); active health checks ([`upstream::health`]); server names resolved again every
//!   `resolve_interval` ([`upstream::discovery`]); which requests may share a pooled
//!   connection, and the checks that keep a broken upstream's stray bytes from reaching
//!   another request ([`upstream::pool`]); and the one place that builds a server's peer,
//!   plain or TLS ([`upstream::peer`]).
//! - [`metrics`]: every Prometheus metric ([`procstat`]: the process's own figures; the
//!   savings counters' sums); [`admin`] serves them on a listener of its own, with
//!   [`status`]'s JSON of the live topics.
//! - [`logging`]: text or JSON log lines; the access log's lines are made in
//!   [`proxy::access`]; [`redact`]: which query parameters carry credentials, hidden in
//!   every log line and in `/status`.
//! - [`config`]: the YAML configuration: the model with every default, parsed in passes (the
//!   YAML tree with each key's line, each section through its table of keys, the checks
//!   between keys, and names resolved in a last step, the only one with I/O), every problem
//!   reported with its key path and line; durations, route patterns, and what the host allows
//!   ([`config::host`]). It imports nothing else of the crate.
//! - [`sys`]: the system calls that need `unsafe`, the only place that may use it;
//!   [`systemd`]: readiness for `Type=notify` units; [`demo`]: the self-contained demo.
//!
//! `docs/architecture.md` follows one request and one event through these rooms.
//!
//! Outside `src/`: `tests/` (integration tests against the real binary; `tests/support/` has
//! the scripted upstream, the launcher and the clients), `fuzz/` (cargo-fuzz targets and their
//! seed corpora, which `tests/fuzz_corpus.rs` runs), `benches/` (criterion), `docs/`.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod diff;
pub mod logging;
pub mod metrics;
pub mod procstat;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod route_table;
pub mod server;
pub mod status;
pub mod stream;
pub mod sys;
pub mod systemd;
pub mod topic;
pub mod upstream;
pub mod wire;
