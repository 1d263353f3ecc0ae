//! The `unpoll` command: thin CLI over the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "unpoll", version, about = "Turns REST poll endpoints into pushed WebSocket and SSE streams")]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration file. The file is reloaded when it changes and on SIGHUP;
    /// a file with problems, or one that changes listen addresses, is refused and the running
    /// configuration stays.
    Run {
        /// The YAML configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Do not watch the file; reload on SIGHUP only.
        #[arg(long)]
        no_watch: bool,
        /// Graceful upgrade: take the listening sockets over from the unpoll already running
        /// with this configuration, once it is sent SIGQUIT (through `server.upgrade_sock`).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration file and list every problem; exits 1 if there is any.
    Check {
        /// The YAML configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the demo: a sample legacy REST API, unpoll in front of it, and a live page.
    Demo {
        /// Where the proxy (and the demo page) listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the admin listener (/metrics) listens.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
        /// Where the sample legacy API listens.
        #[arg(long, default_value = "127.0.0.1:3001")]
        api: String,
    },
}

/// mimalloc instead of glibc's malloc: pingora allocates and frees request and body buffers
/// on every proxied request, and glibc spent about a sixth of the proxy's CPU on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    env_logger::Builder::new().parse_filters(&cli.log_level).parse_env("RUST_LOG").format_timestamp_millis().init();
    // Before the configuration is read: the default max_connections follows the limit.
    let open_files = unpoll::sys::raise_open_files_limit();
    match cli.command {
        Command::Check { config } => match unpoll::config::load_file(&config) {
            Ok(c) => {
                println!("{}: ok ({} upstream(s), {} route(s))", config.display(), c.upstreams.len(), c.routes.len());
                Ok(())
            }
            Err(e) => {
                eprint!("{}: {e}", config.display());
                std::process::exit(1);
            }
        },
        Command::Run { config: path, no_watch, upgrade } => {
            let config = unpoll::config::load_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let reload = unpoll::server::ReloadFrom { path, watch: !no_watch };
            let start = unpoll::server::Start { reload: Some(reload), upgrade };
            let server = unpoll::server::build(&config, start, |_| {})?;
            log::info!("serving on {:?}, admin on {:?}", config.server.listen, config.server.admin);
            log::info!("open-files limit {open_files:?}; max_connections {}", config.server.max_connections);
            server.run_forever()
        }
        Command::Demo { listen, admin, api } => {
            let config = unpoll::demo::config(&listen, &admin, &api).context("building the demo configuration")?;
            unpoll::server::check_free(&api)?;
            let start = unpoll::server::Start::default();
            let server = unpoll::server::build(&config, start, |server| unpoll::demo::add_api(server, &api))?;
            println!("unpoll demo");
            println!("  open        http://{listen}/            (live page: SSE and WebSocket)");
            println!("  stream      curl -N -H 'Accept: text/event-stream' http://{listen}/api/departures");
            println!("  per-user    curl -N -H 'Accept: text/event-stream' -H 'Authorization: Bearer alice' http://{listen}/api/me/notifications");
            println!("  metrics     http://{admin}/metrics");
            println!("  legacy API  http://{api}/api/departures (polled by unpoll)");
            server.run_forever()
        }
    }
}
