//! Assembling the pingora server: the proxy listener, the admin listener, and the relay that
//! hands pingora's shutdown signal to every stream and poller.

use crate::admin::{self, Admin, AdminService};
use crate::cluster::feed::ClusterFeed;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::connections::{Connections, Limited};
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::route_table::RouteTable;
use crate::status::Status;
use crate::topic::hub::Hub;
use crate::topic::poller::Poller;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;
use tokio::sync::watch;

/// Forwards pingora's SIGTERM shutdown to our own watch channel.
/// Forwards pingora's shutdown to our own watch channel, then ends the process as soon as
/// nothing is left to drain: pingora would sleep the whole grace period however idle it is.
struct ShutdownRelay {
    tx: watch::Sender<bool>,
    connections: Arc<Connections>,
    grace_period: std::time::Duration,
}

#[async_trait]
impl BackgroundService for ShutdownRelay {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        let _ = crate::systemd::notify("STOPPING=1");
        log::info!("shutting down: closing streams");
        let _ = self.tx.send(true);
        // Streams close at once; plain requests in flight finish; keep-alive connections are
        // closed by pingora after their request. Pingora ends the process at the grace period
        // in any case.
        let deadline = tokio::time::Instant::now() + self.grace_period;
        while tokio::time::Instant::now() < deadline {
            if self.connections.count() == 0 {
                log::info!("nothing left to drain: exiting");
                std::process::exit(0);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Makes the cluster's Redis connections in a runtime of their own, and watches whether Redis
/// answers.
struct ClusterService {
    cluster: Arc<Cluster>,
    shutdown: watch::Receiver<bool>,
}

#[async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, _: ShutdownWatch) {
        if let Err(e) = self.cluster.connect() {
            // The URL was checked when the configuration was read: this is not expected.
            log::error!("cluster: cannot set up the Redis connections: {e}; topics poll on this node alone");
            return;
        }
        self.cluster.clone().watch(self.shutdown.clone()).await;
    }
}

/// Applies the refreshes the cluster carries to the topics this node polls.
struct RefreshListener {
    cluster: Arc<Cluster>,
    hub: Arc<Hub>,
}

#[async_trait]
impl BackgroundService for RefreshListener {
    async fn start(&self, _: ShutdownWatch) {
        crate::cluster::relay::listen(self.cluster.clone(), self.hub.clone()).await;
    }
}

/// How this process starts.
#[derive(Default)]
pub struct Start {
    /// Live reload from this file.
    pub reload: Option<ReloadFrom>,
    /// Take the listening sockets over from a running unpoll (which is then sent SIGQUIT).
    pub upgrade: bool,
}

/// Where the configuration came from, for live reload.
pub struct ReloadFrom {
    pub path: std::path::PathBuf,
    /// Watch the file for changes (SIGHUP reloads either way).
    pub watch: bool,
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot listen on the admin address {addr}: {source}")]
    Admin { addr: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}

/// Fails if something already listens on `addr` (or it cannot be bound at all). Pingora binds
/// its listeners only once it runs, and a port in use makes it retry for half a minute and
/// then panic in a service thread while the process carries on: so every listener is tried
/// here first, before anything is announced.
#[allow(clippy::disallowed_methods)] // A lookup once per listener, at start, before anything is served.
pub fn check_free(addr: &str) -> Result<(), BuildError> {
    let fail = |source| BuildError::Listen { addr: addr.to_string(), source };
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(addr).map_err(fail)?.next().ok_or_else(|| {
        fail(std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "the address resolves to nothing"))
    })?;
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(resolved), socket2::Type::STREAM, None).map_err(fail)?;
    // As pingora binds: connections lingering in TIME_WAIT do not make the port taken.
    socket.set_reuse_address(true).map_err(fail)?;
    socket.bind(&resolved.into()).map_err(fail)
}

/// Builds the server for `config`. With `reload`, the file is reloaded live. `extra` may add
/// services (the demo's sample API).
pub fn build(config: &Config, start: Start, extra: impl FnOnce(&mut Server)) -> Result<Server, BuildError> {
    let Start { reload, upgrade } = start;
    if !upgrade {
        // In an upgrade the running process still holds these, and hands them over.
        for addr in config.server.listen.iter().chain(config.server.tls.iter().map(|t| &t.listen)) {
            check_free(addr)?;
        }
    }
    let mut conf = ServerConf {
        threads: config.server.threads,
        upgrade_sock: config.server.upgrade_sock.clone(),
        // The proxy's connector reads the same root store as the polls' (see upstream::peer).
        ca_file: crate::upstream::peer::roots_file(),
        ..Default::default()
    };
    // Pingora sleeps the grace period, then gives runtimes one more second: the sum is ours.
    conf.grace_period_seconds = Some(config.server.grace_period.as_secs().saturating_sub(1));
    conf.graceful_shutdown_timeout_seconds = Some(1);
    let opt = Opt { upgrade, ..Default::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let (tx, rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    metrics.prepare(config);
    crate::redact::install(config);
    let table = Arc::new(ArcSwap::from_pointee(RouteTable::new(config, &metrics, None)));
    let poller = Poller::new(metrics.clone(), rx.clone(), &config.server);
    let mut in_cluster = None;
    let feed: Arc<dyn crate::topic::feed::Feed> = match &config.cluster {
        None => Arc::new(poller),
        Some(settings) => {
            let cluster = Cluster::new(settings.clone(), metrics.registry());
            for route in config.routes.iter().filter(|r| r.stream.is_some()) {
                cluster.metrics.received.with_label_values(&[route.pattern.as_str()]);
            }
            log::info!("cluster node {}: sharing polls through Redis", settings.node);
            let service = ClusterService { cluster: cluster.clone(), shutdown: rx.clone() };
            server.add_service(background_service("cluster", service));
            in_cluster = Some(cluster.clone());
            Arc::new(ClusterFeed { poller: Arc::new(poller), cluster })
        }
    };
    let hub = Arc::new(Hub::new(metrics.clone(), feed));
    if let Some(cluster) = &in_cluster {
        // Refreshes (writes, hints) go to the node polling each topic, through Redis.
        let relay = crate::cluster::relay::ClusterRelay { cluster: cluster.clone(), hub: Arc::downgrade(&hub) };
        hub.relay_through(crate::cluster::relay::hasher(cluster.clone()), Arc::new(relay));
        let listener = RefreshListener { cluster: cluster.clone(), hub: hub.clone() };
        server.add_service(background_service("cluster refreshes", listener));
    }
    if let Some(from) = reload {
        let reloader = Reloader {
            path: from.path,
            watch: from.watch,
            table: table.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
        };
        server.add_service(background_service("config reload", reloader));
    }
    let in_force: crate::upstream::InForce = {
        let table = table.clone();
        Arc::new(move || table.load().upstreams())
    };
    let checks = crate::upstream::health::HealthChecks::new(in_force.clone(), metrics.clone());
    server.add_service(background_service("health checks", checks));
    let discovery = crate::upstream::discovery::Discovery { upstreams: in_force, metrics: metrics.clone() };
    server.add_service(background_service("service discovery", discovery));
    let connections = Connections::new(metrics.clone());
    let gateway = Gateway {
        table: table.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        shutdown: rx.clone(),
        connections: connections.clone(),
    };
    let mut http = pingora::proxy::HttpProxy::new(gateway, server.configuration.clone());
    http.handle_init_modules();
    // HTTP/2 (over TLS, or h2c): streams per connection and header size bounded as for HTTP/1.
    let mut h2 = pingora::protocols::http::v2::server::H2Options::default();
    h2.max_concurrent_streams(config.server.h2_max_streams);
    h2.max_header_list_size(config.server.max_request_header as u32);
    http.h2_options = Some(h2);
    // An HTTP/2 connection with no stream open is closed after this; pingora counts a stream
    // as open while its request task runs, which for a subscription is the whole stream.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(config.server.h2_idle_timeout);
    http.server_options = Some(options);
    let limited = Limited::new(http, table.clone(), connections.clone());
    let mut proxy = Service::new("unpoll proxy".to_string(), limited);
    // TLS listeners are TCP listeners too: the handshake is unpoll's (see proxy::tls), after
    // the connection limit.
    for addr in config.server.listen.iter().chain(config.server.tls.iter().map(|t| &t.listen)) {
        proxy.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(L4BufferSettings::new(0, 1460)));
    }
    server.add_service(proxy);
    if let Some(addr) = &config.server.admin {
        let listener = admin::bind(addr, upgrade).map_err(|source| BuildError::Admin { addr: addr.clone(), source })?;
        let status = Status::new(hub, table, metrics.clone(), in_cluster);
        let admin = Admin { metrics, draining: rx.clone(), status };
        let service = AdminService::new(listener, admin, config.server.admin_max_connections);
        server.add_service(background_service("admin", service));
    }
    let relay = ShutdownRelay { tx, connections, grace_period: config.server.grace_period };
    server.add_service(background_service("shutdown relay", relay));
    let readiness = crate::systemd::Readiness { listen: config.server.listen.clone(), upgrade };
    server.add_service(background_service("readiness", readiness));
    extra(&mut server);
    Ok(server)
}
