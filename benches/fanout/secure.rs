//! TLS for the subscribers (an `https://` URL is read over TLS, trusting `--ca`), and the TLS
//! handshake bench.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client configuration trusting the certificates of the PEM file `ca`, offering `alpn`.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A subscriber's connection: plain, or TLS.
pub enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// `tcp` as it is, or through a TLS handshake with `tls` (a configuration and the name to ask
/// for), for an `https://` target.
pub async fn maybe_tls(tcp: TcpStream, tls: Option<&(Arc<rustls::ClientConfig>, String)>) -> Result<Conn, String> {
    let Some((config, sni)) = tls else { return Ok(Conn::Tcp(tcp)) };
    let name = rustls::pki_types::ServerName::try_from(sni.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {}", e.kind()))?;
    Ok(Conn::Tls(Box::new(tls)))
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct HandshakeArgs {
    /// The TLS listener, host:port.
    #[arg(long)]
    addr: String,
    /// The PEM CA file to trust.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// The name to ask for.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// The server's process ids, for its CPU.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// A label for the report.
    #[arg(long, default_value = "server")]
    label: String,
}

/// Full TLS handshakes (no resumption) as fast as `concurrency` clients can make them, each on
/// a new connection closed at once: handshakes per second and the server's CPU per handshake.
pub fn handshakes(args: HandshakeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut config = (*client_config(&args.ca, &[b"http/1.1"])?).clone();
        config.resumption = rustls::client::Resumption::disabled();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from(args.sni.clone())?;
        let done = std::rc::Rc::new(std::cell::Cell::new((0u64, 0u64)));
        // Why handshakes failed, with how many each.
        let why = std::rc::Rc::new(std::cell::RefCell::new(std::collections::BTreeMap::<String, u64>::new()));
        let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(args.duration);
        let (cpu0, self0, t0) =
            (crate::procstat::cpu_seconds(&args.pids), crate::procstat::cpu_seconds(&[]), std::time::Instant::now());
        let local = tokio::task::LocalSet::new();
        for _ in 0..args.concurrency {
            let (connector, name, done, addr) = (connector.clone(), name.clone(), done.clone(), args.addr.clone());
            let why = why.clone();
            local.spawn_local(async move {
                while std::time::Instant::now() < until {
                    let failed = match TcpStream::connect(&addr).await {
                        Ok(tcp) => connector.connect(name.clone(), tcp).await.err().map(|e| format!("tls: {e}")),
                        Err(e) => Some(format!("connect: {e}")),
                    };
                    let (good, bad) = done.get();
                    done.set(if failed.is_none() { (good + 1, bad) } else { (good, bad + 1) });
                    if let Some(failed) = failed {
                        *why.borrow_mut().entry(failed).or_default() += 1;
                    }
                }
            });
        }
        local.await;
        let window = t0.elapsed().as_secs_f64();
        let cpu = crate::procstat::cpu_seconds(&args.pids) - cpu0;
        let own = crate::procstat::cpu_seconds(&[]) - self0;
        let (good, bad) = done.get();
        println!(
            "{}: {:.0} handshakes/s ({good} in {window:.1} s, {bad} failed); server CPU {:.0} µs per handshake \
             ({:.2} cores); load tool {:.2} cores",
            args.label,
            good as f64 / window,
            cpu * 1e6 / good.max(1) as f64,
            cpu / window,
            own / window
        );
        for (failed, count) in why.borrow().iter() {
            println!("  {count} failed: {failed}");
        }
        Ok(())
    })
}
