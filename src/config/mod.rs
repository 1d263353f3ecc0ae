//! Configuration: the model, the YAML parser that validates it, and durations and patterns.

mod duration;
pub mod host;
mod model;
mod parse;
mod pattern;

pub use duration::{format_duration, parse_duration};
pub use model::*;
pub(crate) use parse::same_socket;
pub use parse::{parse_config, ConfigErrors, Problem};
pub use pattern::Pattern;

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
