//! # unpoll
//!
//! A reverse proxy that turns REST poll endpoints into pushed WebSocket and Server-Sent-Events
//! streams. It polls an upstream GET once per interval on behalf of every subscriber of that
//! resource, diffs successive bodies, and pushes a snapshot and then patches.
//!
//! # Layout
//!
//! - [`config`]: the YAML configuration: model, validation (every problem with its key path),
//!   durations and route patterns, and what the host allows ([`config::host`]: the open-files
//!   limit behind `max_connections`). It imports nothing else of the crate.
//! - [`route_table`]: the routes and upstreams in force, compiled from a configuration and read
//!   lock-free (arc-swap); server selection and each upstream's connection-reuse state.
//! - [`reload`]: live reload: file watch and SIGHUP, validated off to the side, swapped
//!   atomically, restart-only changes refused.
//! - [`proxy`]: the pingora `ProxyHttp` implementation. It normalises the path
//!   ([`proxy::path`]), routes each request and either serves it as a subscription or lets
//!   pingora proxy it unchanged; who the client is for per-client limits ([`proxy::client`]);
//!   the connection limit and the request-head guard (deadline and size).
//! - [`pool`]: which requests may share a pooled upstream connection, and the checks that keep
//!   a broken upstream's stray bytes from reaching another request.
//! - [`poll`]: which subscribers share a poll ([`poll::key`], the security-critical part), the
//!   upstream GET, the poll loop with backoff and linger, and the diff threads
//!   ([`poll::compute`]) that parse and diff off the async workers.
//! - [`diff`]: pure JSON diffing into RFC 6902 and RFC 7396 patches, with the size gate and the
//!   work budget.
//! - [`stream`]: the hub of topics, history for resume, event encoding (once per protocol and
//!   format), and the SSE and WebSocket handlers.
//! - [`metrics`]: every Prometheus metric; [`admin`] serves them on a listener of its own.
//! - [`server`]: assembles the pingora server (and the graceful-upgrade hand-over);
//!   [`demo`]: the self-contained demo; [`systemd`]: readiness for `Type=notify` units;
//!   [`sys`]: the system calls that need `unsafe`, the only place that may use it.
//!
//! Outside `src/`: `tests/` (integration tests against the real binary; `tests/support/` has
//! the scripted upstream, the launcher and the clients), `fuzz/` (cargo-fuzz targets and their
//! seed corpora, which `tests/fuzz_corpus.rs` runs), `benches/` (criterion), `docs/`.

#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod diff;
pub mod metrics;
pub mod poll;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod route_table;
pub mod server;
pub mod stream;
pub mod sys;
pub mod systemd;
