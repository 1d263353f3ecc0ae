//! The `unpoll` command: thin CLI over the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("UNPOLL_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "unpoll",
    version = VERSION,
    about = "Turns REST poll endpoints into pushed WebSocket and SSE streams",
    arg_required_else_help = true
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log lines as `text`, or as one JSON object each (`json`).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Serve with this configuration file: `unpoll -c FILE` is `unpoll run -c FILE`, as
    /// pingora and nginx take it.
    #[arg(short = 'c', long = "conf", value_name = "FILE")]
    conf: Option<PathBuf>,
    /// With -c: test the configuration and exit, like `unpoll check` (and `nginx -t`).
    #[arg(short = 't', long = "test", requires = "conf")]
    test: bool,
    /// With -c: take the listening sockets over from a running unpoll, like `run --upgrade`.
    #[arg(short = 'u', long = "upgrade", requires = "conf", conflicts_with = "test")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

impl Cli {
    /// The command to run: a subcommand, or what the top-level flags stand for (not both).
    fn command(&self) -> Result<Command, &'static str> {
        match (&self.command, &self.conf) {
            (Some(_), Some(_)) => Err("-c, -t and -u stand for a command: give them or a command, not both"),
            (Some(c), None) => Ok(c.clone()),
            (None, Some(config)) => Ok(if self.test {
                Command::Check { config: config.clone() }
            } else {
                Command::Run { config: config.clone(), no_watch: false, upgrade: self.upgrade }
            }),
            (None, None) => Err("give a command, or -c FILE (see unpoll --help)"),
        }
    }
}

#[derive(Subcommand, Clone, Debug, PartialEq)]
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
        /// Also serve the page over HTTPS and HTTP/2 here (with --tls-cert and --tls-key).
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        tls_listen: Option<String>,
        /// The PEM certificate chain for --tls-listen.
        #[arg(long, requires = "tls_listen")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key for --tls-listen.
        #[arg(long, requires = "tls_listen")]
        tls_key: Option<PathBuf>,
    },
}

/// mimalloc instead of glibc's malloc: pingora allocates and frees request and body buffers
/// on every proxied request, and glibc spent about a sixth of the proxy's CPU on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Not `Error: {e:?}` as returning the error from main would print: that repeats
            // each cause a message already quotes, and adds a backtrace under RUST_BACKTRACE.
            eprintln!("unpoll: {}", plainly(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// What unpoll serves on, in plain words: `serving on 127.0.0.1:8080, [::1]:8080; admin on
/// 127.0.0.1:9090` (or `; no admin listener`).
fn serving_line(listen: &[String], admin: Option<&str>) -> String {
    let admin = admin.map_or("no admin listener".to_string(), |a| format!("admin on {a}"));
    format!("serving on {}; {admin}", listen.join(", "))
}

/// An error and its causes, each said once: a cause whose words the message before it already
/// holds (as `cannot listen on …: {source}` does) is left out.
fn plainly(e: &anyhow::Error) -> String {
    let mut said = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if said.contains(&text) {
            continue;
        }
        if !said.is_empty() {
            said.push_str(": ");
        }
        said.push_str(&text);
    }
    said
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command().map_err(anyhow::Error::msg)?;
    // Pingora's own lines (a dozen at every start and stop) only from warn up; at debug and
    // trace from info up, never lower: pingora's debug lines print whole request and response
    // heads, credentials and cookies included. Only an explicit RUST_LOG lowers them.
    let quiet = ["error", "warn", "info"].contains(&cli.log_level.as_str());
    let pingora = if quiet { "warn" } else { "info" };
    let filters = format!("{},pingora_core={pingora},pingora_proxy={pingora},pingora_pool={pingora}", cli.log_level);
    let format = unpoll::logging::Format::parse(&cli.log_format).expect("clap checked it");
    unpoll::logging::init(&filters, format);
    // Before the configuration is read: the default max_connections follows the limit.
    let open_files = unpoll::sys::raise_open_files_limit();
    match command {
        Command::Check { config } => match unpoll::config::load_file(&config) {
            Ok(c) => {
                let count = unpoll::config::counted;
                println!(
                    "{}: ok ({}, {})",
                    config.display(),
                    count(c.upstreams.len(), "upstream"),
                    count(c.routes.len(), "route")
                );
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
            log::info!("{}", serving_line(&config.server.listen, config.server.admin.as_deref()));
            let limit = open_files.map_or("unknown".to_string(), |n| n.to_string());
            log::info!("open-files limit {limit}; max_connections {}", config.server.max_connections);
            server.run_forever()
        }
        Command::Demo { listen, admin, api, tls_listen, tls_cert, tls_key } => {
            let tls = match (&tls_listen, tls_cert, tls_key) {
                (Some(at), Some(cert), Some(key)) => Some(unpoll::demo::Tls { listen: at.clone(), cert, key }),
                _ => None,
            };
            let config =
                unpoll::demo::config(&listen, &admin, &api, tls.as_ref()).context("building the demo configuration")?;
            unpoll::server::check_free(&api)?;
            let start = unpoll::server::Start::default();
            let server = unpoll::server::build(&config, start, |server| unpoll::demo::add_api(server, &api))?;
            println!("unpoll demo");
            println!("  open        http://{listen}/            (live page: SSE and WebSocket)");
            println!("  stream      curl -N -H 'Accept: text/event-stream' http://{listen}/api/departures");
            println!("  per-user    curl -N -H 'Accept: text/event-stream' -H 'Authorization: Bearer alice' http://{listen}/api/me/notifications");
            println!("  metrics     http://{admin}/metrics");
            println!("  legacy API  http://{api}/api/departures (polled by unpoll)");
            if let Some(at) = &tls_listen {
                println!("  HTTPS       https://{at}/?orders=8  (HTTP/2: ten SSE streams on one connection)");
            }
            server.run_forever()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_line_speaks_plainly() {
        let listen = vec!["127.0.0.1:8080".to_string(), "[::1]:8080".to_string()];
        assert_eq!(
            serving_line(&listen, Some("127.0.0.1:9090")),
            "serving on 127.0.0.1:8080, [::1]:8080; admin on 127.0.0.1:9090"
        );
        assert_eq!(serving_line(&listen[..1], None), "serving on 127.0.0.1:8080; no admin listener");
    }

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let quoted = anyhow::Error::new(unpoll::server::BuildError::Listen { addr: "127.0.0.1:80".into(), source: io });
        assert_eq!(plainly(&quoted), "cannot listen on 127.0.0.1:80: Address already in use");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let chained = anyhow::Error::new(io).context("reading the page");
        assert_eq!(plainly(&chained), "reading the page: no such file");
    }

    fn parse(args: &[&str]) -> Option<Command> {
        Cli::try_parse_from(args).ok()?.command().ok()
    }

    #[test]
    fn pingora_and_nginx_habits_are_understood() {
        let file = PathBuf::from("u.yaml");
        let run = |upgrade| Some(Command::Run { config: file.clone(), no_watch: false, upgrade });
        assert_eq!(parse(&["unpoll", "-c", "u.yaml"]), run(false));
        assert_eq!(parse(&["unpoll", "-c", "u.yaml", "-u"]), run(true));
        assert_eq!(parse(&["unpoll", "--conf", "u.yaml", "--upgrade"]), run(true));
        assert_eq!(parse(&["unpoll", "-t", "-c", "u.yaml"]), Some(Command::Check { config: file.clone() }));
        assert_eq!(parse(&["unpoll", "run", "-c", "u.yaml", "--upgrade"]), run(true));
        assert!(Cli::try_parse_from(["unpoll", "-t"]).is_err(), "-t needs -c");
        assert!(Cli::try_parse_from(["unpoll", "-t", "-u", "-c", "u.yaml"]).is_err());
        assert_eq!(parse(&["unpoll", "-c", "u.yaml", "check", "-c", "v.yaml"]), None, "flags and a command");
        assert_eq!(
            parse(&["unpoll", "--log-level", "debug", "run", "-c", "u.yaml"]),
            Some(Command::Run { config: file.clone(), no_watch: false, upgrade: false }),
            "global options before the command"
        );
    }
}
