//! The YAML text: parsed into a generic tree by [`parse_yaml`], the one function that names the
//! YAML crate (`yaml_serde`, the maintained fork of `serde_yaml`), and the line of each key
//! and list item ([`Lines`]), which the tree itself does not carry.

use super::problem::Problem;
use std::collections::HashMap;

pub use yaml_serde::{Mapping, Value};

/// Parses YAML into a generic tree. The only function that names the YAML crate.
pub fn parse_yaml(text: &str) -> Result<Value, Problem> {
    yaml_serde::from_str::<Value>(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let written = line.and_then(|n| text.lines().nth(n.saturating_sub(1))).unwrap_or("");
        Problem { path: String::new(), line, message: format!("YAML syntax: {e}{}", hint(written)) }
    })
}

/// What a YAML syntax error on `line` most likely means, when the YAML crate's words do not
/// say it: a route pattern with a capture (`/x/{id}`) unquoted inside a flow mapping, where
/// `{` opens a mapping.
fn hint(line: &str) -> &'static str {
    let unquoted_capture = line.split("match:").nth(1).is_some_and(|value| {
        let value = value.trim_start();
        !value.starts_with(['\'', '"']) && value.contains('{')
    });
    if line.trim_start().trim_start_matches("- ").starts_with('{') && unquoted_capture {
        "; a pattern with a capture must be quoted in a flow mapping: `{match: '/x/{id}', …}` (or write the route in block style)"
    } else {
        ""
    }
}

/// The line of every key and list item written in block style, by key path
/// (`routes[0].stream.interval`). The YAML crate's tree has no positions, so they are read
/// from the text: a line is found for every path written in block style, and a path inside a
/// flow collection (`{a: 1}`, `[x, y]`) gets the line of the nearest block-style key above it.
#[derive(Debug, Default)]
pub struct Lines {
    lines: HashMap<String, usize>,
}

/// One open key or list item while the text is read.
struct Open {
    column: usize,
    path: String,
    item: bool,
    /// Items seen so far in the list under it.
    items: usize,
}

impl Lines {
    /// Reads the lines of a document that parsed (so its indentation is consistent).
    pub fn read(text: &str) -> Lines {
        let mut lines = HashMap::new();
        let mut open: Vec<Open> = Vec::new();
        // Lines more indented than this belong to a block scalar (`|`, `>`), not to keys.
        let mut scalar_above: Option<usize> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let content = raw.trim_start();
            let mut column = raw.len() - content.len();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            if let Some(above) = scalar_above {
                if column > above {
                    continue;
                }
                scalar_above = None;
            }
            if content.starts_with("---") || content.starts_with("...") {
                open.clear();
                continue;
            }
            let mut rest = content;
            // List items, perhaps several on one line (`- - x`).
            while rest == "-" || rest.starts_with("- ") {
                while open.last().is_some_and(|o| o.column > column || (o.column == column && o.item)) {
                    open.pop();
                }
                let (parent, index) = match open.last_mut() {
                    Some(o) => {
                        o.items += 1;
                        (o.path.clone(), o.items - 1)
                    }
                    None => (String::new(), 0),
                };
                let path = format!("{parent}[{index}]");
                lines.entry(path.clone()).or_insert(line);
                open.push(Open { column, path, item: true, items: 0 });
                let after = rest[1..].trim_start();
                column += rest.len() - after.len();
                rest = after;
            }
            let Some((key, value)) = key_of(rest) else { continue };
            while open.last().is_some_and(|o| o.column >= column) {
                open.pop();
            }
            let path = match open.last() {
                Some(o) => format!("{}.{key}", o.path),
                None => key.to_string(),
            };
            lines.entry(path.clone()).or_insert(line);
            let value = value.trim_start();
            if value.starts_with('|') || value.starts_with('>') {
                scalar_above = Some(column);
            }
            open.push(Open { column, path, item: false, items: 0 });
        }
        Lines { lines }
    }

    /// The line of `path`, or of the nearest enclosing path that has one.
    pub fn find(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if path.is_empty() {
                return None;
            }
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            path = &path[..path.rfind(['.', '[']).unwrap_or(0)];
        }
    }
}

/// The key of a `key: value` line (quotes removed) and what follows the colon.
fn key_of(text: &str) -> Option<(&str, &str)> {
    if text.starts_with(['{', '[', '#']) {
        return None;
    }
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote) {
            let end = inner.find(quote)?;
            let rest = inner[end + 1..].trim_start().strip_prefix(':')?;
            return Some((&inner[..end], rest));
        }
    }
    let mut from = 0;
    while let Some(i) = text[from..].find(':') {
        let at = from + i;
        let after = &text[at + 1..];
        if after.is_empty() || after.starts_with([' ', '\t']) {
            return Some((text[..at].trim_end(), after));
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unquoted_capture_in_a_flow_mapping_gets_a_hint() {
        let text = "upstreams: {app: {servers: ['127.0.0.1:1']}}\nroutes:\n  - {match: /x/{id}, upstream: app}\n";
        let problem = parse_yaml(text).unwrap_err();
        assert_eq!(problem.line, Some(3));
        assert!(problem.message.starts_with("YAML syntax: "), "{}", problem.message);
        assert!(
            problem.message.contains("must be quoted in a flow mapping: `{match: '/x/{id}'"),
            "{}",
            problem.message
        );
        // A quoted one parses; other syntax errors get no such hint.
        assert!(parse_yaml("routes:\n  - {match: '/x/{id}', upstream: app}\n").is_ok());
        assert!(!parse_yaml("routes: [a\n").unwrap_err().message.contains("quoted"));
    }

    const TEXT: &str = "\
# a comment
server:
  listen: [\"127.0.0.1:8080\"]
upstreams:
  legacy:
    servers:
      - \"127.0.0.1:3000\"
      - 'localhost:3001'
routes:
- match: /orders/{id}
  upstream: legacy
  stream:
    interval: 250ms
    note: |
      colour: not a key
- match: /*
  upstream: {name: legacy}
";

    #[test]
    fn block_keys_and_items_have_their_lines() {
        let lines = Lines::read(TEXT);
        for (path, line) in [
            ("server", 2),
            ("server.listen", 3),
            ("upstreams.legacy", 5),
            ("upstreams.legacy.servers[0]", 7),
            ("upstreams.legacy.servers[1]", 8),
            ("routes", 9),
            ("routes[0]", 10),
            ("routes[0].match", 10),
            ("routes[0].stream.interval", 13),
            ("routes[1].match", 16),
        ] {
            assert_eq!(lines.find(path), Some(line), "{path}");
        }
    }

    #[test]
    fn flow_values_and_block_scalars_fall_back_to_the_key_above() {
        let lines = Lines::read(TEXT);
        assert_eq!(lines.find("server.listen[0]"), Some(3));
        assert_eq!(lines.find("routes[1].upstream.name"), Some(17));
        assert_eq!(lines.find("routes[0].stream.colour"), Some(12), "a block scalar's text is not a key");
        assert_eq!(lines.find("routes[0].stream.note"), Some(14));
        assert_eq!(lines.find(""), None);
    }

    #[test]
    fn nested_lists_count_their_items() {
        let lines = Lines::read("a:\n  - - x\n    - y\n  - z\n");
        assert_eq!(lines.find("a[0][0]"), Some(2));
        assert_eq!(lines.find("a[0][1]"), Some(3));
        assert_eq!(lines.find("a[1]"), Some(4));
    }
}
