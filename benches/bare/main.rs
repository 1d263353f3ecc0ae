//! The floor for plain proxying: a pingora proxy with nothing but `upstream_peer` (one
//! upstream, plain HTTP, pingora's defaults), built from the same pingora as unpoll, so that
//! `benches/proxy.sh` can show what unpoll adds to pingora's own request path and what pingora
//! itself costs against nginx. It allocates with mimalloc, as unpoll does, so that the
//! difference between the two is unpoll's own work (with glibc's malloc it is slower).
//!   unpoll-bare-pingora --listen 127.0.0.1:8081 --upstream 127.0.0.1:8080 --threads 2

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: String,
    /// The one upstream, host:port.
    #[arg(long)]
    upstream: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let mut server = Server::new(None).expect("a pingora server");
    if let Some(conf) = std::sync::Arc::get_mut(&mut server.configuration) {
        conf.threads = args.threads;
    }
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream: args.upstream });
    proxy.add_tcp(&args.listen);
    server.add_service(proxy);
    server.run_forever();
}
