//! `upstreams.<name>.tls`: HTTPS to an upstream's servers. Its keys, the checks between them
//! and the servers' names, and the reading of its files (certificates and a key, read when
//! the configuration is resolved: a file that cannot be used is a problem at its key path, at
//! start and at reload alike).

use super::walk::{set, Key, Walker};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// `upstreams.<name>.tls`. Present (or implied by a server written `https://…`), every server of
/// the upstream is reached over TLS, its certificate verified against `ca` (or the system's
/// root store) for the name `sni` (or the server's host name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// `sni`: the name sent in the handshake and that the certificate must be for. Default:
    /// each server's host name as configured (an IP address has none: see [`check`]).
    pub sni: Option<String>,
    /// `ca`: a PEM file of the certificates to trust for this upstream, instead of the
    /// system's root store.
    pub ca: Option<String>,
    /// `client_cert` and `client_key`: PEM files of a certificate chain (leaf first) and its
    /// key, shown to servers that ask for one (mutual TLS).
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// `insecure_skip_verify`: accept any certificate (a warning is logged at every load).
    pub insecure_skip_verify: bool,
    /// What the files hold, read when the configuration is resolved.
    pub files: TlsFiles,
}

/// The contents of `ca`, `client_cert` and `client_key`, as DER.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// The certificates of `ca` (empty: the system's root store).
    pub ca: Arc<Vec<Vec<u8>>>,
    /// The chain of `client_cert`, leaf first, with `client_key`'s key.
    pub client: Option<Arc<ClientIdentity>>,
    /// SHA-256 over everything above: what pooled connections are keyed by, so that a change
    /// of CA or certificate never reuses a connection made under the old one.
    pub fingerprint: [u8; 32],
}

/// A client certificate chain and its key.
pub struct ClientIdentity {
    pub chain: Vec<Vec<u8>>,
    /// The key's DER (PKCS#8, PKCS#1 or SEC1). Never printed.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.len())
            .field("client_chain", &self.client.as_ref().map(|c| c.chain.len()))
            .finish_non_exhaustive()
    }
}

impl PartialEq for TlsFiles {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for TlsFiles {}

/// A server entry's scheme, when it was written with one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// `host:port` of a server written `https://host[:port]` or `http://host[:port]` (the port
/// defaulting to 443 or 80), with its scheme; `text` itself when it has none. `None` when it
/// has a scheme and more than a host and port.
pub fn strip_scheme(text: &str) -> Option<(String, Option<Scheme>)> {
    let (scheme, rest, port) = if let Some(rest) = text.strip_prefix("https://") {
        (Scheme::Https, rest, 443)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (Scheme::Http, rest, 80)
    } else {
        return Some((text.to_string(), None));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let bracketed = rest.starts_with('[');
    let has_port = if bracketed { rest.contains("]:") } else { rest.contains(':') };
    let address = if has_port { rest.to_string() } else { format!("{rest}:{port}") };
    Some((address, Some(scheme)))
}

/// The host part of `host:port` (without an IPv6 address's brackets).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// `upstreams.<name>.tls:`.
pub const TLS: [Key<UpstreamTls>; 5] = [
    Key::new("sni", |w, v, p, t| {
        let name = w.string(v, p)?;
        let valid = rustls::pki_types::ServerName::try_from(name.as_str()).is_ok();
        if name.is_empty() || !valid {
            w.problem(p, format!("`{name}` is not a host name (or an IP address) a certificate can be for"));
            return None;
        }
        set(&mut t.sni, Some(Some(name)))
    }),
    Key::new("ca", |w, v, p, t| set(&mut t.ca, absolute(w, v, p).map(Some))),
    Key::new("client_cert", |w, v, p, t| set(&mut t.client_cert, absolute(w, v, p).map(Some))),
    Key::new("client_key", |w, v, p, t| set(&mut t.client_key, absolute(w, v, p).map(Some))),
    Key::new("insecure_skip_verify", |w, v, p, t| set(&mut t.insecure_skip_verify, w.boolean(v, p))),
];

pub(super) fn absolute(w: &mut Walker, v: &yaml_serde::Value, p: &str) -> Option<String> {
    let path = w.string(v, p)?;
    if !path.starts_with('/') {
        w.problem(p, format!("`{path}` must be an absolute path"));
        return None;
    }
    Some(path)
}

/// Whether the system's root store can be read, as pingora's rustls backend reads it (the
/// platform's files, or `SSL_CERT_FILE` / `SSL_CERT_DIR`): `Err` with why not.
pub fn system_roots() -> Result<usize, String> {
    let found = rustls_native_certs::load_native_certs();
    match found.errors.first() {
        None => Ok(found.certs.len()),
        Some(e) => Err(e.to_string()),
    }
}

/// Reads the files `tls` names (for `upstreams.<name>` at `path`), reporting each that cannot be
/// used at its key path.
pub fn load(w: &mut Walker, path: &str, tls: &mut UpstreamTls) {
    let mut ca = Vec::new();
    if tls.ca.is_none() && !tls.insecure_skip_verify {
        if let Err(why) = system_roots() {
            let problem = format!("the system's root store cannot be read ({why}): give `ca`, the CA file to trust");
            w.problem(&format!("{path}.tls.ca"), problem);
        }
    }
    if let Some(file) = &tls.ca {
        let at = format!("{path}.tls.ca");
        if let Some(certs) = certificates(w, &at, file) {
            let mut roots = rustls::RootCertStore::empty();
            for (n, cert) in certs.iter().enumerate() {
                if roots.add(CertificateDer::from(cert.as_slice())).is_err() {
                    w.problem(&at, format!("{file}: certificate {} is not one a CA can be trusted by", n + 1));
                }
            }
            ca = certs;
        }
    }
    let mut client = None;
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let chain = certificates(w, &format!("{path}.tls.client_cert"), cert);
        let secret = private_key(w, &format!("{path}.tls.client_key"), key);
        if let (Some(chain), Some(secret)) = (chain, secret) {
            if matches(&chain, &secret) {
                client = Some(Arc::new(ClientIdentity { chain, key: secret }));
            } else {
                w.problem(
                    &format!("{path}.tls.client_key"),
                    format!("{key} is not the key of the certificate in {cert}"),
                );
            }
        }
    }
    let mut hasher = Sha256::new();
    for cert in &ca {
        hasher.update((cert.len() as u64).to_be_bytes());
        hasher.update(cert);
    }
    hasher.update(u64::MAX.to_be_bytes());
    if let Some(c) = &client {
        for cert in c.chain.iter().chain(std::iter::once(&c.key)) {
            hasher.update((cert.len() as u64).to_be_bytes());
            hasher.update(cert);
        }
    }
    tls.files = TlsFiles { ca: Arc::new(ca), client, fingerprint: hasher.finalize().into() };
}

/// The certificates of the PEM file `file`, each one that pingora's parser reads too.
pub(super) fn certificates(w: &mut Walker, at: &str, file: &str) -> Option<Vec<Vec<u8>>> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            w.problem(at, format!("cannot read {file}: {e}"));
            return None;
        }
    };
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        match cert {
            Ok(cert) if parses(&cert) => certs.push(cert.to_vec()),
            _ => {
                w.problem(at, format!("{file}: certificate {} is not a valid PEM certificate", certs.len() + 1));
                return None;
            }
        }
    }
    if certs.is_empty() {
        w.problem(at, format!("{file} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"));
        return None;
    }
    Some(certs)
}

/// Whether the X.509 parser pingora uses reads `cert` (it panics on one it cannot).
fn parses(cert: &CertificateDer) -> bool {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).is_ok()
}

/// The key of the PEM file `file`, in a form pingora reads back.
pub(super) fn private_key(w: &mut Walker, at: &str, file: &str) -> Option<Vec<u8>> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            w.problem(at, format!("cannot read {file}: {e}"));
            return None;
        }
    };
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => {
            let der = key.secret_der().to_vec();
            // Pingora reads the DER back without its PEM label: it must tell the format itself.
            if PrivateKeyDer::try_from(der.clone()).is_err() {
                w.problem(at, format!("{file}: a key in a format that cannot be used (give PKCS#8)"));
                return None;
            }
            Some(der)
        }
        Err(_) => {
            w.problem(at, format!("{file} holds no private key (expected a PEM `PRIVATE KEY` block)"));
            None
        }
    }
}

/// Whether `key` is the key of `chain`'s leaf.
fn matches(chain: &[Vec<u8>], key: &[u8]) -> bool {
    let Ok(der) = PrivateKeyDer::try_from(key.to_vec()) else { return false };
    let Ok(signer) = rustls::crypto::ring::sign::any_supported_type(&der) else { return false };
    let certs = chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    rustls::sign::CertifiedKey::new(certs, signer).keys_match().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_stripped_with_their_default_ports() {
        let https = Some(Scheme::Https);
        assert_eq!(strip_scheme("https://api.example"), Some(("api.example:443".into(), https)));
        assert_eq!(strip_scheme("https://api.example:8443/"), Some(("api.example:8443".into(), https)));
        assert_eq!(strip_scheme("http://api.example"), Some(("api.example:80".into(), Some(Scheme::Http))));
        assert_eq!(strip_scheme("https://[::1]"), Some(("[::1]:443".into(), https)));
        assert_eq!(strip_scheme("https://[::1]:9"), Some(("[::1]:9".into(), https)));
        assert_eq!(strip_scheme("api.example:80"), Some(("api.example:80".into(), None)));
        assert_eq!(strip_scheme("https://api.example/v1"), None);
        assert_eq!(strip_scheme("https://user@api.example"), None);
        assert_eq!(strip_scheme("https://"), None);
    }

    #[test]
    fn a_server_written_https_turns_tls_on_with_every_default() {
        let text = "upstreams: {a: {servers: ['https://localhost'], reuse: shared}, b: {servers: ['localhost:80']}}\nroutes: [{match: /x, upstream: a}]\n";
        let c = crate::config::parse_config(text).unwrap();
        let a = &c.upstreams["a"];
        assert_eq!(a.addresses[0].address, "localhost:443");
        let tls = a.tls.as_ref().expect("https:// turns TLS on");
        assert!(
            tls.sni.is_none() && !tls.insecure_skip_verify && tls.files.ca.is_empty() && tls.files.client.is_none()
        );
        assert!(c.upstreams["b"].tls.is_none());
    }

    #[test]
    fn hosts_lose_their_port_and_brackets() {
        assert_eq!(host_of("api.example:443"), "api.example");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("10.0.0.1:8443"), "10.0.0.1");
    }
}
