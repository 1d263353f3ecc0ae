//! `server.tls`: listeners that clients reach over TLS (`https://`, `wss://`), each with a
//! certificate and key, and more pairs chosen by the name the client asks for (SNI). The files
//! are read when the configuration is resolved, at start, `check` and every reload: a pair
//! that cannot be served (unreadable, no certificate, a key that is not the certificate's, an
//! expired or not yet valid certificate) is a problem at its key path, and a reload that
//! finds one keeps the pairs in force.

use super::tls::{absolute, certificates, private_key};
use super::walk::{set, Key, Walker};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// `server.tls[i]`: one TLS listener.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerTls {
    /// `listen`: its address.
    pub listen: String,
    /// `cert`: a PEM file of the certificate chain, leaf first (a `fullchain.pem`).
    pub cert: String,
    /// `key`: a PEM file of its private key.
    pub key: String,
    /// `sni`: more pairs, each served to clients asking for one of its names.
    pub sni: Vec<SniCert>,
    /// What the files hold, read when the configuration is resolved.
    pub pairs: Pairs,
}

/// `server.tls[i].sni[j]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SniCert {
    /// `names`: host names (or `*.example.com` wildcards, one label deep), any case.
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

/// A listener's certificates, read: the default pair and the pairs by name.
#[derive(Clone, Default)]
pub struct Pairs {
    /// `cert` and `key`: served when the client names no `sni` entry's name.
    pub default: Option<Arc<Pair>>,
    /// Each `sni` entry's names (lower case), with its pair.
    pub by_name: Vec<(String, Arc<Pair>)>,
}

/// A certificate chain with its key, ready to serve.
pub struct Pair {
    /// What the metrics call it: `default`, or the `sni` entry's first name.
    pub name: String,
    /// The certificate file it came from.
    pub file: String,
    pub key: Arc<rustls::sign::CertifiedKey>,
    /// When the leaf expires (Unix seconds).
    pub not_after: i64,
    /// The leaf's serial number, in hex.
    pub serial: String,
    /// SHA-256 over the chain and key: a changed file is a changed pair.
    pub fingerprint: [u8; 32],
}

impl Pairs {
    /// The pair for a client asking for `sni` (any case): an exact name, then a wildcard one
    /// label deep, then the default.
    pub fn choose(&self, sni: Option<&str>) -> Option<&Arc<Pair>> {
        if let Some(sni) = sni {
            let sni = sni.to_ascii_lowercase();
            let wildcard = sni.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            let found = self.by_name.iter().find(|(n, _)| *n == sni).or_else(|| {
                let wildcard = wildcard.as_deref()?;
                self.by_name.iter().find(|(n, _)| n == wildcard)
            });
            if let Some((_, pair)) = found {
                return Some(pair);
            }
        }
        self.default.as_ref()
    }

    /// Every pair once: the default first, then each `sni` entry's.
    pub fn all(&self) -> Vec<&Arc<Pair>> {
        let mut all: Vec<&Arc<Pair>> = self.default.iter().collect();
        for (_, pair) in &self.by_name {
            if !all.iter().any(|p| Arc::ptr_eq(p, pair)) {
                all.push(pair);
            }
        }
        all
    }
}

impl std::fmt::Debug for Pairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serials: Vec<&str> = self.all().iter().map(|p| p.serial.as_str()).collect();
        f.debug_struct("Pairs").field("serials", &serials).finish_non_exhaustive()
    }
}

impl PartialEq for Pairs {
    fn eq(&self, other: &Self) -> bool {
        let prints = |p: &Pairs| p.all().iter().map(|p| p.fingerprint).collect::<Vec<_>>();
        prints(self) == prints(other)
    }
}

/// `server.tls[i]:`.
pub const LISTENER: [Key<ListenerTls>; 4] = [
    Key::required("listen", "the `host:port` to serve TLS on", |w, v, p, t| {
        let text = w.string(v, p)?;
        set(&mut t.listen, w.address(&text, p))
    }),
    Key::required("cert", "the PEM certificate chain (leaf first)", |w, v, p, t| set(&mut t.cert, absolute(w, v, p))),
    Key::required("key", "the PEM private key of `cert`", |w, v, p, t| set(&mut t.key, absolute(w, v, p))),
    Key::new("sni", |w, v, p, t| set(&mut t.sni, sections(w, v, p, &SNI))),
];

/// `server.tls[i].sni[j]:`.
pub const SNI: [Key<SniCert>; 3] = [
    Key::required("names", "the host names this pair is for", |w, v, p, s| {
        let names = w.each(v, p, |w, name, p| {
            let bare = name.strip_prefix("*.").unwrap_or(name);
            let valid = !bare.is_empty()
                && !bare.contains('*')
                && bare.parse::<std::net::IpAddr>().is_err()
                && rustls::pki_types::DnsName::try_from(bare).is_ok();
            if !valid {
                w.problem(p, format!("`{name}` is not a host name (or a `*.example.com` wildcard)"));
                return None;
            }
            Some(name.to_ascii_lowercase())
        })?;
        if names.is_empty() {
            w.problem(p, "give at least one name");
            return None;
        }
        set(&mut s.names, Some(names))
    }),
    Key::required("cert", "the PEM certificate chain (leaf first)", |w, v, p, s| set(&mut s.cert, absolute(w, v, p))),
    Key::required("key", "the PEM private key of `cert`", |w, v, p, s| set(&mut s.key, absolute(w, v, p))),
];

/// Reads `server.tls`, the list of listeners at `p`.
pub fn listeners(w: &mut Walker, v: &yaml_serde::Value, p: &str) -> Option<Vec<ListenerTls>> {
    sections(w, v, p, &LISTENER)
}

/// A list of sections read through `keys`, each reported at `p[i]`.
fn sections<T: Default>(w: &mut Walker, v: &yaml_serde::Value, p: &str, keys: &[Key<T>]) -> Option<Vec<T>> {
    let yaml_serde::Value::Sequence(items) = v else {
        w.problem(p, format!("expected a list, found {}", super::walk::kind(v)));
        return None;
    };
    let mut list = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut entry = T::default();
        w.section(item, &format!("{p}[{i}]"), keys, &mut entry)?;
        list.push(entry);
    }
    Some(list)
}

/// Reads the files of `server.tls[i]` (at `path`), reporting each pair that cannot be served.
pub fn load(w: &mut Walker, path: &str, listener: &mut ListenerTls, now: i64) {
    let default = pair(w, path, "default", &listener.cert, &listener.key, now);
    let mut by_name = Vec::new();
    for (j, sni) in listener.sni.iter().enumerate() {
        let name = sni.names.first().cloned().unwrap_or_default();
        if let Some(pair) = pair(w, &format!("{path}.sni[{j}]"), &name, &sni.cert, &sni.key, now) {
            by_name.extend(sni.names.iter().map(|n| (n.clone(), pair.clone())));
        }
    }
    listener.pairs = Pairs { default, by_name };
}

/// One pair, at `path` (`cert` and `key` below it).
fn pair(w: &mut Walker, path: &str, name: &str, cert: &str, key: &str, now: i64) -> Option<Arc<Pair>> {
    let chain = certificates(w, &format!("{path}.cert"), cert)?;
    let secret = private_key(w, &format!("{path}.key"), key)?;
    let at = format!("{path}.key");
    let der = PrivateKeyDer::try_from(secret.clone()).ok()?;
    let Ok(signer) = rustls::crypto::ring::sign::any_supported_type(&der) else {
        w.problem(
            &at,
            format!("{key}: a key type that cannot sign a handshake (use RSA, ECDSA P-256/P-384 or Ed25519)"),
        );
        return None;
    };
    let certs: Vec<CertificateDer<'static>> = chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let certified = rustls::sign::CertifiedKey::new(certs, signer);
    if certified.keys_match().is_err() {
        w.problem(&at, format!("{key} is not the key of the certificate in {cert}"));
        return None;
    }
    let (not_before, not_after, serial) = validity(&chain[0])?;
    let at = format!("{path}.cert");
    if not_after < now {
        w.problem(&at, format!("{cert}: the certificate expired at {}", date(not_after)));
        return None;
    }
    if not_before > now {
        w.problem(&at, format!("{cert}: the certificate is not valid until {}", date(not_before)));
        return None;
    }
    let mut hasher = Sha256::new();
    for part in chain.iter().chain(std::iter::once(&secret)) {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    Some(Arc::new(Pair {
        name: name.to_string(),
        file: cert.to_string(),
        key: Arc::new(certified),
        not_after,
        serial,
        fingerprint: hasher.finalize().into(),
    }))
}

/// The leaf's validity (Unix seconds) and serial number.
fn validity(der: &[u8]) -> Option<(i64, i64, String)> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp(), cert.raw_serial_as_string()))
}

/// A Unix time as an RFC 3339 date, for messages.
fn date(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix).map_or_else(|_| format!("{unix} (Unix time)"), |t| t.to_string())
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(serial: &str) -> Arc<Pair> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap().self_signed(&key).unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        Arc::new(Pair {
            name: serial.to_string(),
            file: String::new(),
            key: Arc::new(rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signer)),
            not_after: 0,
            serial: serial.to_string(),
            fingerprint: [serial.len() as u8; 32],
        })
    }

    #[test]
    fn a_name_is_matched_exactly_then_by_wildcard_then_the_default_serves() {
        let (default, api, any) = (pair("d"), pair("api"), pair("wild"));
        let pairs = Pairs {
            default: Some(default.clone()),
            by_name: vec![("api.example.com".into(), api.clone()), ("*.example.com".into(), any.clone())],
        };
        let serial = |sni| pairs.choose(sni).map(|p| p.serial.clone());
        assert_eq!(serial(Some("API.example.com")), Some("api".into()));
        assert_eq!(serial(Some("www.example.com")), Some("wild".into()));
        assert_eq!(serial(Some("a.b.example.com")), Some("d".into()), "a wildcard is one label deep");
        assert_eq!(serial(Some("example.com")), Some("d".into()));
        assert_eq!(serial(None), Some("d".into()));
    }
}
