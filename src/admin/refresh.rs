//! `POST /refresh`: a backend's hint that resources changed behind unpoll's back. The body is
//! `{"paths": ["/orders/42", "/orders/*"]}` (exact paths, or a trailing `/*` for a prefix);
//! every live topic polling one of them polls at once (see `topic::refresh`), and the answer
//! is `202` with how many topics that was.

use crate::topic::hub::Hub;
use crate::topic::refresh::{Cause, Paths};
use serde::Deserialize;

/// Paths one hint may name.
pub const MAX_PATHS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hint {
    paths: Vec<String>,
}

/// The answer to a `POST /refresh` with `body`.
pub fn answer(hub: &Hub, body: &[u8]) -> (u16, &'static str, Vec<u8>) {
    let hint: Hint = match serde_json::from_slice(body) {
        Ok(hint) => hint,
        Err(e) => return super::error(400, "bad_request", &format!("the body must be {{\"paths\": [...]}}: {e}")),
    };
    if hint.paths.is_empty() || hint.paths.len() > MAX_PATHS {
        let message = format!("`paths` must name 1 to {MAX_PATHS} paths, not {}", hint.paths.len());
        return super::error(400, "bad_request", &message);
    }
    let mut paths = Vec::with_capacity(hint.paths.len());
    for (i, text) in hint.paths.iter().enumerate() {
        match Paths::parse(text) {
            Ok(p) => paths.push(p),
            Err(e) => return super::error(400, "bad_request", &format!("paths[{i}]: {e}")),
        }
    }
    let refreshed = hub.refresh_everywhere(&paths, Cause::Hint);
    log::debug!("a refresh hint for {} paths reached {refreshed} topics", paths.len());
    let body = serde_json::json!({ "refreshed": refreshed });
    (202, "application/json", serde_json::to_vec(&body).expect("JSON serialises"))
}
