//! Telling systemd how the service is doing (`sd_notify`), for `Type=notify` units: `READY=1`
//! once the listeners answer, `MAINPID=` when a process started with `--upgrade` takes over,
//! `STOPPING=1` when shutdown begins. Without `NOTIFY_SOCKET` in the environment (not run by
//! systemd) nothing is sent.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` to systemd's notification socket. `Ok(false)` when there is none.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let path = path.to_string_lossy().into_owned();
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), &path)?;
        }
    }
    Ok(true)
}

/// A background service that reports readiness once every listen address accepts
/// connections. (`STOPPING=1` is sent where shutdown is handled: `server::ShutdownRelay`.)
pub struct Readiness {
    /// The proxy's listen addresses.
    pub listen: Vec<String>,
    /// This process took the sockets over from another (`--upgrade`): it becomes the main one.
    pub upgrade: bool,
}

/// Where to connect to reach a listener on `addr` (a wildcard address is reached on loopback).
#[allow(clippy::disallowed_methods)] // Once, as the process starts: the listen addresses, found usable by config::resolve.
fn reachable(addr: &str) -> Option<SocketAddr> {
    let mut a = addr.to_socket_addrs().ok()?.next()?;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    Some(a)
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for addr in self.listen.iter().filter_map(|a| reachable(a)) {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
        let ready = if self.upgrade { format!("MAINPID={}\nREADY=1", std::process::id()) } else { "READY=1".into() };
        if let Err(e) = notify(&ready) {
            log::warn!("could not tell systemd that unpoll is ready: {e}");
        }
    }
}
