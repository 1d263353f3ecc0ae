//! Query parameters that carry credentials, kept out of every log line and of `/status`.
//!
//! A parameter's value is written `redacted` when its name, percent-decoded and compared
//! without regard to case, is
//! - a route's token parameter (`stream.token.query`), of any route: a request refused
//!   before its route is known (`400 bad_path`, `404 no_route`) is logged with it too;
//! - unpoll's own (`unpoll_*`: resume ids are no secret, but they are not the client's query);
//! - or contains one of `server.redact_params` (by default `token`, `key`, `secret`,
//!   `password`, `auth` and `signature`: `api_key`, `X-Amz-Signature`, `sig_auth`…).
//!
//! The rules in force change with the configuration ([`install`], at start and at each
//! reload); [`target`] applies them. Only values are hidden: a name is kept, so that a reader
//! of the log sees which parameter was there.

use crate::config::{Config, REDACT_PARAMS};
use arc_swap::ArcSwap;
use percent_encoding::percent_decode_str;
use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

/// What a value is replaced with.
pub const REDACTED: &str = "redacted";

/// Which parameters are hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redactor {
    /// Lower-case parts of a name that make it a secret.
    patterns: Vec<String>,
    /// Lower-case names that are secrets whatever they contain.
    names: Vec<String>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(REDACT_PARAMS, std::iter::empty::<&str>())
    }
}

impl Redactor {
    pub fn new<P: AsRef<str>, N: AsRef<str>>(
        patterns: impl IntoIterator<Item = P>,
        names: impl IntoIterator<Item = N>,
    ) -> Redactor {
        let lower = |s: &str| s.to_ascii_lowercase();
        Redactor {
            patterns: patterns.into_iter().map(|p| lower(p.as_ref())).filter(|p| !p.is_empty()).collect(),
            names: names.into_iter().map(|n| lower(n.as_ref())).collect(),
        }
    }

    /// The rules of `config`: its patterns, and every route's token parameter.
    pub fn of(config: &Config) -> Redactor {
        let names = config.routes.iter().filter_map(|r| r.stream.as_ref()?.token.as_ref()?.query.clone());
        Redactor::new(&config.server.redact_params, names)
    }

    /// Whether a parameter named `raw` (as it stands in the query) holds a secret.
    pub fn secret(&self, raw: &str) -> bool {
        let name = percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().to_lowercase();
        name.starts_with("unpoll_")
            || self.names.contains(&name)
            || self.patterns.iter().any(|p| name.contains(p.as_str()))
    }

    /// `target` (a path and query) with the value of every secret parameter replaced.
    pub fn target<'a>(&self, target: &'a str) -> Cow<'a, str> {
        let Some((path, query)) = target.split_once('?') else { return Cow::Borrowed(target) };
        let hides = |pair: &str| pair.split_once('=').is_some_and(|(name, _)| self.secret(name));
        if !query.split('&').any(hides) {
            return Cow::Borrowed(target);
        }
        let parts: Vec<Cow<str>> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if self.secret(name) => Cow::Owned(format!("{name}={REDACTED}")),
                _ => Cow::Borrowed(pair),
            })
            .collect();
        Cow::Owned(format!("{path}?{}", parts.join("&")))
    }
}

static IN_FORCE: LazyLock<ArcSwap<Redactor>> = LazyLock::new(|| ArcSwap::from_pointee(Redactor::default()));

/// Puts `config`'s rules in force (at start, and when a reload applies).
pub fn install(config: &Config) {
    IN_FORCE.store(Arc::new(Redactor::of(config)));
}

/// `target` as every log line and `/status` show it.
pub fn target(target: &str) -> Cow<'_, str> {
    IN_FORCE.load().target(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_looking_and_token_parameters_are_hidden_after_decoding() {
        let r = Redactor::new(REDACT_PARAMS, ["access_token", "t"]);
        assert_eq!(r.target("/a?x=1&access_token=s3cr3t&y"), "/a?x=1&access_token=redacted&y");
        assert_eq!(r.target("/a?access%5Ftoken=s3cr3t"), "/a?access%5Ftoken=redacted", "an encoded name");
        assert_eq!(r.target("/a?ACCESS_TOKEN=s3cr3t"), "/a?ACCESS_TOKEN=redacted", "any case");
        assert_eq!(r.target("/a?t=s3cr3t&tt=1"), "/a?t=redacted&tt=1", "a token name is matched whole");
        for name in ["api_key", "X-Amz-Signature", "client_secret", "password", "oauth", "id%5Ftoken", "Api+Key"] {
            let target = format!("/a?{name}=v1");
            assert_eq!(r.target(&target), format!("/a?{name}=redacted"), "{name}");
        }
        assert_eq!(r.target("/a?unpoll_last_event_id=e-3"), "/a?unpoll_last_event_id=redacted");
        assert_eq!(r.target("/a?page=2&sort=asc"), "/a?page=2&sort=asc");
        assert!(matches!(r.target("/a?page=2"), Cow::Borrowed(_)), "nothing to hide: no copy");
        assert_eq!(r.target("/a"), "/a");
        assert_eq!(r.target("/a?token"), "/a?token", "a name without a value hides nothing");
    }

    #[test]
    fn the_patterns_are_configurable_and_token_names_always_hidden() {
        let none = Redactor::new(std::iter::empty::<&str>(), ["access_token"]);
        assert_eq!(none.target("/a?api_key=1&access_token=2"), "/a?api_key=1&access_token=redacted");
        let own = Redactor::new(["sid"], std::iter::empty::<&str>());
        assert_eq!(own.target("/a?SID=1&token=2"), "/a?SID=redacted&token=2");
    }
}
