//! Reading a YAML tree into settings, collecting every problem with its key path: the
//! [`Walker`], the readers of each kind of value (with their bounds), and [`Key`], one entry
//! of a section's table of keys.

use super::duration::parse_duration;
use super::problem::Problem;
use super::yaml::{Mapping, Value};
use std::time::Duration;

/// One key of a section: its name, the problem when it is missing (for required keys), and
/// how its value is read (its bounds are in the reader) into the section's settings. A key
/// that is absent keeps the settings' default, which `model.rs` holds, all in one place. The
/// section's allowed keys are the names in its table.
pub struct Key<T> {
    pub name: &'static str,
    pub missing: Option<&'static str>,
    pub read: fn(&mut Walker, &Value, &str, &mut T) -> Option<()>,
}

impl<T> Key<T> {
    /// An optional key.
    pub const fn new(name: &'static str, read: fn(&mut Walker, &Value, &str, &mut T) -> Option<()>) -> Key<T> {
        Key { name, missing: None, read }
    }

    /// A key that must be given; `missing` says what to write.
    pub const fn required(
        name: &'static str,
        missing: &'static str,
        read: fn(&mut Walker, &Value, &str, &mut T) -> Option<()>,
    ) -> Key<T> {
        Key { name, missing: Some(missing), read }
    }
}

/// Stores what a reader found.
pub fn set<T>(slot: &mut T, value: Option<T>) -> Option<()> {
    *slot = value?;
    Some(())
}

/// Collects the problems of one document.
#[derive(Default)]
pub struct Walker {
    pub problems: Vec<Problem>,
    /// Every key path the document gives, for checks that depend on what was written.
    given: std::collections::HashSet<String>,
}

impl Walker {
    pub fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem { path: path.to_string(), line: None, message: message.into() });
    }

    /// Whether the document gives `path` (a key path such as `routes[0].stream.vary`).
    pub fn given(&self, path: &str) -> bool {
        self.given.contains(path)
    }

    /// Reads a section through its table: unknown keys and missing required keys are
    /// reported, and every key given is read into `into`. `None` when `v` is no mapping.
    pub fn section<'a, T>(&mut self, v: &'a Value, path: &str, keys: &[Key<T>], into: &mut T) -> Option<&'a Mapping> {
        let names: Vec<&str> = keys.iter().map(|k| k.name).collect();
        let m = self.mapping(v, path, &names)?;
        for key in keys {
            let p = join(path, key.name);
            match m.get(key.name) {
                Some(v) => {
                    self.given.insert(p.clone());
                    let _ = (key.read)(self, v, &p, into);
                }
                None => {
                    if let Some(missing) = key.missing {
                        self.problem(&p, format!("missing: {missing}"));
                    }
                }
            }
        }
        Some(m)
    }

    /// A mapping with only the allowed keys; unknown keys are reported.
    pub fn mapping<'a>(&mut self, v: &'a Value, path: &str, allowed: &[&str]) -> Option<&'a Mapping> {
        let Value::Mapping(m) = v else {
            self.problem(path, format!("expected a mapping, found {}", kind(v)));
            return None;
        };
        for key in m.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => {
                    let hint = match closest(k, allowed) {
                        Some(near) => format!("did you mean `{near}`? "),
                        None => String::new(),
                    };
                    let expected = allowed.join(", ");
                    self.problem(&join(path, k), format!("unknown key `{k}` ({hint}expected one of: {expected})"))
                }
                None => self.problem(path, format!("keys must be strings, found {}", kind(key))),
            }
        }
        Some(m)
    }

    pub fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.problem(path, format!("expected a string, found {}", kind(v)));
                None
            }
        }
    }

    /// A list of strings; each item that is not one is reported.
    pub fn strings(&mut self, v: &Value, path: &str) -> Option<Vec<String>> {
        let Value::Sequence(items) = v else {
            self.problem(path, format!("expected a list, found {}", kind(v)));
            return None;
        };
        let out: Vec<_> =
            items.iter().enumerate().filter_map(|(i, v)| self.string(v, &format!("{path}[{i}]"))).collect();
        (out.len() == items.len()).then_some(out)
    }

    /// A list of strings, each checked by `valid` (which reports its own problem).
    pub fn each<T>(
        &mut self,
        v: &Value,
        path: &str,
        mut valid: impl FnMut(&mut Walker, &str, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = self.strings(v, path)?;
        let out: Vec<T> =
            items.iter().enumerate().filter_map(|(i, s)| valid(self, s, &format!("{path}[{i}]"))).collect();
        (out.len() == items.len()).then_some(out)
    }

    /// A duration such as `250ms` or `1h`, at least `min`.
    pub fn duration(&mut self, v: &Value, path: &str, min: Duration) -> Option<Duration> {
        let text = self.string(v, path)?;
        match parse_duration(&text) {
            Ok(d) if d >= min => Some(d),
            Ok(_) => {
                self.problem(path, format!("`{text}` is too short (at least {}ms)", min.as_millis()));
                None
            }
            Err(e) => {
                self.problem(path, e);
                None
            }
        }
    }

    /// A whole number from `min` to `max`.
    pub fn count(&mut self, v: &Value, path: &str, min: u64, max: u64) -> Option<usize> {
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n as usize),
            _ => {
                self.problem(path, format!("expected a whole number from {min} to {max}, found {}", show(v)));
                None
            }
        }
    }

    pub fn boolean(&mut self, v: &Value, path: &str) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            _ => {
                self.problem(path, format!("expected true or false, found {}", show(v)));
                None
            }
        }
    }

    /// One of a fixed set of names, read by `parse`; `expected` lists them for the problem.
    pub fn choice<T>(
        &mut self,
        v: &Value,
        path: &str,
        what: &str,
        expected: &str,
        parse: fn(&str) -> Option<T>,
    ) -> Option<T> {
        let name = self.string(v, path)?;
        let found = parse(&name);
        if found.is_none() {
            self.problem(path, format!("unknown {what} `{name}` (use {expected})"));
        }
        found
    }

    /// A `host:port` address, checked for its form only: names are resolved in a separate
    /// step (see `resolve.rs`), never while parsing.
    pub fn address(&mut self, text: &str, path: &str) -> Option<String> {
        if text.contains("://") {
            self.problem(path, format!("`{text}`: write `host:port`, without a scheme"));
            return None;
        }
        let well_formed = text.rsplit_once(':').is_some_and(|(host, port)| {
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            !host.is_empty() && !host.contains(['/', ' ', '[', ']']) && port.parse::<u16>().is_ok()
        });
        if !well_formed {
            self.problem(path, format!("`{text}` is not a `host:port` address"));
            return None;
        }
        Some(text.to_string())
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

pub fn show(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("`{s}`"),
        other => kind(other).to_string(),
    }
}

/// The allowed key nearest to a misspelt `key`, if one is near enough to be what was meant:
/// at most a third of its letters (at least one) changed, added or removed.
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let limit = (key.chars().count() / 3).max(1);
    allowed.iter().map(|a| (edits(key, a), *a)).filter(|(d, _)| *d <= limit).min_by_key(|(d, _)| *d).map(|(_, a)| a)
}

/// Levenshtein distance: the fewest one-letter changes, additions and removals from `a` to `b`.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb)).min(above + 1).min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_key_gets_the_nearest_allowed_one() {
        let allowed = ["listen", "admin", "admin_token_file", "threads", "diff_threads"];
        assert_eq!(closest("admn", &allowed), Some("admin"));
        assert_eq!(closest("thread", &allowed), Some("threads"));
        assert_eq!(closest("diff_thread", &allowed), Some("diff_threads"));
        assert_eq!(closest("colour", &allowed), None, "nothing near enough");
        assert_eq!(edits("kitten", "sitting"), 3);
        assert_eq!(edits("", "abc"), 3);
    }
}
