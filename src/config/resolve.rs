//! The last step: what the configuration names, looked up on this host. Server names are
//! resolved (DNS, which blocks: run it off the async threads), listen addresses checked as
//! usable, and `max_connections` held to the open-files limit. Parsing never does this, so
//! the fuzz target and a reload's validation do no I/O until this step.

// This is the step that looks names up (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use super::host;
use super::model::{Config, Secret, ServerAddr, ServerEntry, MIN_ADMIN_TOKEN, MIN_CLUSTER_SECRET};
use super::walk::Walker;
use std::net::SocketAddr;
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
    if let Some(path) = &config.server.admin_token_file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let token = text.trim();
                if token.len() < MIN_ADMIN_TOKEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    let problem = format!(
                        "{path} must hold one token of at least {MIN_ADMIN_TOKEN} characters, without spaces \
                         (e.g. `openssl rand -hex 32`)"
                    );
                    w.problem("server.admin_token_file", problem);
                }
                config.server.admin_token = Some(Secret(token.to_string()));
            }
            Err(e) => w.problem("server.admin_token_file", format!("cannot read {path}: {e}")),
        }
    }
    let now = super::listener_tls::now();
    for (i, listener) in config.server.tls.iter_mut().enumerate() {
        let path = format!("server.tls[{i}]");
        usable(w, &listener.listen, &format!("{path}.listen"));
        super::listener_tls::load(w, &path, listener, now);
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
    if let Some(cluster) = &mut config.cluster {
        if let Some(path) = &cluster.password_file {
            match std::fs::read_to_string(path) {
                Ok(text) => cluster.password = Some(Secret(text.trim_end_matches(['\r', '\n']).to_string())),
                Err(e) => w.problem("cluster.password_file", format!("cannot read {path}: {e}")),
            }
        }
        let path = &cluster.secret_file;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let secret = text.trim_end_matches(['\r', '\n']);
                if secret.len() < MIN_CLUSTER_SECRET {
                    let problem = format!(
                        "{path} holds {} bytes; at least {MIN_CLUSTER_SECRET} are needed (e.g. `openssl rand -hex 32`)",
                        secret.len()
                    );
                    w.problem("cluster.secret_file", problem);
                }
                cluster.secret = Secret(secret.to_string());
            }
            Err(e) => w.problem("cluster.secret_file", format!("cannot read {path}: {e}")),
        }
        if cluster.node.is_empty() {
            cluster.node = format!("{}-{}", host::name(), std::process::id());
        }
    }
    for (name, upstream) in &mut config.upstreams {
        if let Some(tls) = &mut upstream.tls {
            super::tls::load(w, &format!("upstreams.{name}"), tls);
        }
        let mut servers = Vec::new();
        for (i, entry) in upstream.addresses.iter().enumerate() {
            match lookup(&entry.address) {
                Ok(addrs) => servers.extend(addrs.into_iter().map(|addr| server(entry, addr))),
                Err(e) => w.problem(&format!("upstreams.{name}.servers[{i}]"), e),
            }
        }
        upstream.servers = servers;
    }
}

fn server(entry: &ServerEntry, addr: SocketAddr) -> ServerAddr {
    ServerAddr { name: entry.address.clone(), addr, weight: entry.weight }
}

/// Every address `address` (`host:port`) resolves to, each once, in the resolver's order.
pub fn lookup(address: &str) -> Result<Vec<SocketAddr>, String> {
    match address.to_socket_addrs() {
        Ok(found) => {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for a in found {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
            if addrs.is_empty() {
                Err(format!("`{address}` resolves to no address"))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(format!("`{address}` is not a usable `host:port`: {e}")),
    }
}

fn usable(w: &mut Walker, address: &str, path: &str) {
    if let Err(e) = address.to_socket_addrs() {
        w.problem(path, format!("`{address}` is not a usable `host:port` address: {e}"));
    }
}
