//! Configuration: the model (and every default), the parser that validates it in passes
//! (YAML tree, section tables, checks between keys, resolving names), durations and patterns.

mod check;
mod duration;
pub mod host;
mod listener_tls;
mod model;
mod parse;
mod pattern;
mod problem;
mod resolve;
mod sections;
mod tls;
mod walk;
mod yaml;

pub(crate) use check::same_socket;
pub use duration::{format_duration, parse_duration};
pub use listener_tls::{ListenerTls, Pair, Pairs, SniCert};
pub use model::*;
pub use parse::{parse, parse_config, ConfigErrors, Parsed, Problem};
pub use pattern::Pattern;
pub use problem::counted;
pub use resolve::lookup;
pub use tls::{host_of, system_roots, ClientIdentity, Scheme, TlsFiles, UpstreamTls};

use std::path::Path;

/// Reads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![Problem {
            path: String::new(),
            line: None,
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    parse_config(&text)
}
