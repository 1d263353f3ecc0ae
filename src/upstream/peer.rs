//! The one place a pingora peer is built for a server: plain or TLS, with its name (SNI), the
//! CA it is verified against, the client certificate it is shown, its timeouts, and the key
//! its pooled connections are filed under. Polls, proxied requests and health checks all
//! connect through it, so they cannot disagree about any of these.
//!
//! Two traps of pingora 0.9 are closed here: an empty SNI turns certificate verification off
//! in its TLS backends (a TLS peer here always has a name: the configuration refuses a server
//! that has none, see `config::tls`), and its pool key ignores the CA (folded into the group
//! key here, with the client certificate).

use super::balance::Server;
use super::Upstream;
use crate::config::{host_of, UpstreamTls};
use pingora::protocols::tls::CaType;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use pingora::{Error, ErrorType};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// How an upstream's servers are reached over TLS, made once per configuration.
pub struct Tls {
    /// `tls.sni`; absent, each server's host name as configured.
    sni: Option<String>,
    /// The certificates of `tls.ca`; absent, the system's root store (the connector's).
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
    verify: bool,
    /// Folded into every group key: the CA and client certificate in force.
    fingerprint: u64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("sni", &self.sni).field("verify", &self.verify).finish_non_exhaustive()
    }
}

impl Tls {
    /// What `settings` (read and checked by the configuration) says, in pingora's types.
    pub fn new(settings: &UpstreamTls) -> Tls {
        let files = &settings.files;
        let ca = (!files.ca.is_empty()).then(|| {
            let certs: Vec<WrappedX509> =
                files.ca.iter().map(|der| WrappedX509::new(der.clone(), parse_x509)).collect();
            Arc::<CaType>::from(certs)
        });
        let client = files.client.as_ref().map(|c| Arc::new(CertKey::new(c.chain.clone(), c.key.clone())));
        let fingerprint = u64::from_be_bytes(files.fingerprint[..8].try_into().expect("a SHA-256 has 32 bytes"));
        Tls { sni: settings.sni.clone(), ca, client, verify: !settings.insecure_skip_verify, fingerprint }
    }

    /// The name `server` is asked for in the handshake, and its certificate verified against:
    /// never empty.
    fn name(&self, server: &Server) -> String {
        self.sni.clone().unwrap_or_else(|| host_of(&server.name).to_string())
    }
}

impl Upstream {
    /// The peer of `server` for a request whose connection plan (see [`super::pool`]) files it
    /// under `group_key`.
    pub fn peer(&self, server: &Server, group_key: u64) -> HttpPeer {
        let sni = self.tls.as_ref().map_or_else(String::new, |tls| tls.name(server));
        let mut peer = HttpPeer::new(server.addr, self.tls.is_some(), sni);
        peer.options.connection_timeout = Some(self.settings.connect_timeout);
        peer.group_key = group_key;
        if let Some(tls) = &self.tls {
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer.options.ca = tls.ca.clone();
            peer.client_cert_key = tls.client.clone();
            // HTTP/1.1 only: the reuse checks of `pool` are made for it.
            peer.options.alpn = ALPN::H1;
            let mut hasher = ahash::AHasher::default();
            (group_key, tls.fingerprint).hash(&mut hasher);
            peer.group_key = hasher.finish();
        }
        peer
    }

    /// The `Host` requests to `server` carry: for a TLS upstream, the name it was asked for in
    /// the handshake (with its port when not 443), which is what a virtual-hosted HTTPS server
    /// expects; `None` for a plain upstream (the client's own is forwarded).
    pub fn host(&self, server: &Server) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let name = tls.name(server);
        let name = if name.contains(':') { format!("[{name}]") } else { name };
        Some(match server.addr.port() {
            443 => name,
            port => format!("{name}:{port}"),
        })
    }
}

/// The CA file pingora's connectors are given instead of the system's root store, when that
/// cannot be read: an empty one (pingora panics on an unreadable store). TLS upstreams then
/// verify against their own `tls.ca` only (the configuration insists on one).
pub fn roots_file() -> Option<String> {
    static FILE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| match crate::config::system_roots() {
        Ok(_) => None,
        Err(why) => {
            log::warn!("the system's root store cannot be read ({why}): TLS upstreams need `tls.ca`");
            Some("/dev/null".to_string())
        }
    })
    .clone()
}

/// A connector for polls and health checks, reading the same root store as the proxy's.
pub fn connector() -> pingora::connectors::http::Connector {
    // Pingora's default pool size (what `Connector::new(None)` gets).
    let mut options = pingora::connectors::ConnectorOptions::new(128);
    options.ca_file = roots_file();
    pingora::connectors::http::Connector::new(Some(options))
}

/// Whether `e` is a TLS failure: a handshake that failed (a certificate that does not verify,
/// a name it is not for, a protocol the server refuses) or an alert the server sent after it
/// (a client certificate refused, in TLS 1.3).
pub fn is_tls_error(e: &Error) -> bool {
    use ErrorType::*;
    if matches!(
        e.etype(),
        TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError | TLSWantX509Lookup
    ) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.cause.as_deref().map(|c| c as _);
    while let Some(c) = cause {
        if c.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                return true;
            }
        }
        if let Some(inner) = c.downcast_ref::<Error>() {
            return is_tls_error(inner);
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_told_from_others() {
        assert!(is_tls_error(&Error::new(ErrorType::TLSHandshakeFailure)));
        assert!(!is_tls_error(&Error::new(ErrorType::ConnectRefused)));
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        let mut read = Error::new(ErrorType::ReadError);
        read.cause = Some(Box::new(alert));
        assert!(is_tls_error(&read), "an alert after the handshake is a TLS failure");
        let mut reset = Error::new(ErrorType::ReadError);
        reset.cause = Some(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(!is_tls_error(&reset));
    }
}
