//! `unpoll-bench`: the fan-out load tool and the bench upstream it measures through.
//! Build with `cargo build --release --features bench-tools --bin unpoll-bench`; the
//! scenarios and how to read the report are in docs/benchmarks.md.

mod client;
mod poll;
mod procstat;
mod requests;
mod secure;
mod upstream;
mod wire;

use clap::Parser;

#[derive(Parser)]
#[command(name = "unpoll-bench", about = "Fan-out load tool for unpoll (and nginx + nchan)")]
enum Cmd {
    /// Serve (or publish) a JSON document that changes at a set rate and carries its send time.
    Upstream(upstream::Args),
    /// Open N SSE or WebSocket subscribers and report delivery, latency, CPU and memory.
    Subscribe(client::Args),
    /// Poll a document from N clients, once per interval each, as clients do without unpoll.
    Poll(poll::Args),
    /// Send plain GETs at a fixed rate and report their latency.
    Requests(requests::Args),
    /// Make full TLS handshakes as fast as possible and report their rate and the server's CPU.
    Handshakes(secure::HandshakeArgs),
}

fn main() -> anyhow::Result<()> {
    match Cmd::parse() {
        Cmd::Upstream(args) => upstream::run(args),
        Cmd::Subscribe(args) => client::run(args),
        Cmd::Poll(args) => poll::run(args),
        Cmd::Requests(args) => requests::run(args),
        Cmd::Handshakes(args) => secure::handshakes(args),
    }
}
