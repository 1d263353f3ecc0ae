//! The last step: what the configuration names, looked up on this host. Server names are
//! resolved (DNS, which blocks: run it off the async threads), listen addresses checked as
//! usable, and `max_connections` held to the open-files limit. Parsing never does this, so
//! the fuzz target and a reload's validation do no I/O until this step.

// This is the step that looks names up (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use super::host;
use super::model::Config;
use super::walk::Walker;
use std::net::ToSocketAddrs;

/// Resolves `config` in place, reporting what cannot be used. `max_connections` is held to
/// the open-files limit when the file sets it (its default is derived from that limit).
pub fn resolve(w: &mut Walker, config: &mut Config, max_connections_given: bool) {
    for (i, listen) in config.server.listen.iter().enumerate() {
        usable(w, listen, &format!("server.listen[{i}]"));
    }
    if let Some(admin) = &config.server.admin {
        usable(w, admin, "server.admin");
    }
    if let Some(limit) = host::open_files_limit().filter(|_| max_connections_given) {
        let n = config.server.max_connections;
        if n as u64 > host::connection_ceiling(limit) {
            w.problem(
                "server.max_connections",
                format!(
                    "{n} is more than this process can hold open: its open-files limit is {limit}, of which {} are \
                     kept for upstream connections, the admin listener and files (at most {}; raise the limit, e.g. \
                     LimitNOFILE= or ulimit -n, or lower max_connections)",
                    host::reserved(limit),
                    host::connection_ceiling(limit)
                ),
            );
        }
    }
    for (name, upstream) in &mut config.upstreams {
        upstream.servers.clear();
        for (i, address) in upstream.addresses.iter().enumerate() {
            let path = format!("upstreams.{name}.servers[{i}]");
            match address.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => upstream.servers.push(a),
                Ok(None) => w.problem(&path, format!("`{address}` resolves to no address")),
                Err(e) => w.problem(&path, format!("`{address}` is not a usable `host:port`: {e}")),
            }
        }
    }
}

fn usable(w: &mut Walker, address: &str, path: &str) {
    if let Err(e) = address.to_socket_addrs() {
        w.problem(path, format!("`{address}` is not a usable `host:port` address: {e}"));
    }
}
