//! Certificates made by the tests: a certificate authority of their own (rcgen), the
//! certificates it issues for servers and clients, written as PEM files where a configuration
//! can name them, and the TLS configuration of an HTTPS test upstream.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A test certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM and DER.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (host names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (for mutual TLS), named `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server certificate for `names`, its parameters changed by `edit` (validity, say).
    pub fn server_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        self.issue_with(names, ExtendedKeyUsagePurpose::ServerAuth, edit)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        self.issue_with(names, usage, |_| {})
    }

    fn issue_with(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: key.serialize_der(),
        }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

impl Issued {
    /// The certificate, DER: what a client sees of it.
    pub fn der(&self) -> &[u8] {
        self.cert.as_ref()
    }
}

/// A client's TLS configuration trusting `ca`, offering `alpn` (e.g. `h2`, `http/1.1`).
pub fn client_config(ca: &Ca, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TLS client connection whose bytes as received (TLS records) are kept.
pub type Client = tokio_rustls::client::TlsStream<Recorded>;

/// Connects to `addr` over TLS asking for `sni`.
pub async fn connect(addr: SocketAddr, sni: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<Client> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, Recorded { tcp, seen: Default::default() }).await
}

/// The server's certificate on `client`'s connection, DER.
pub fn peer_certificate(client: &Client) -> Vec<u8> {
    client.get_ref().1.peer_certificates().expect("a server certificate")[0].as_ref().to_vec()
}

/// The ALPN protocol `client`'s handshake chose.
pub fn alpn(client: &Client) -> Option<String> {
    client.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
}

/// A TCP stream that keeps a copy of every byte it reads.
pub struct Recorded {
    tcp: tokio::net::TcpStream,
    pub seen: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let fresh = buf.filled()[before..].to_vec();
        self.seen.lock().unwrap().extend_from_slice(&fresh);
        polled
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Walks `bytes` as TLS records (type, version, length, body), to the last byte: the count
/// of records, or where the bytes stop being TLS (plaintext written on a TLS connection).
pub fn tls_records(bytes: &[u8]) -> Result<usize, String> {
    let (mut at, mut count) = (0, 0);
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 5) else {
            return Err(format!("a cut record head at byte {at}"));
        };
        if !(0x14..=0x17).contains(&head[0]) || head[1] != 3 {
            let text = String::from_utf8_lossy(&bytes[at..(at + 40).min(bytes.len())]).into_owned();
            return Err(format!("not a TLS record at byte {at}: {text:?}"));
        }
        let len = u16::from_be_bytes([head[3], head[4]]) as usize;
        at += 5 + len;
        count += 1;
    }
    if at != bytes.len() {
        return Err(format!("the last record runs past the {} bytes read", bytes.len()));
    }
    Ok(count)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTPS upstream's configuration: `server`'s certificate, and when `clients` is given,
/// a certificate issued by it required of every client.
pub fn server_config(server: &Issued, clients: Option<&Ca>) -> rustls::ServerConfig {
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key.clone()));
    builder.with_single_cert(vec![server.cert.clone()], key).unwrap()
}

/// Writes `contents` to `dir/name`, returning its path.
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
