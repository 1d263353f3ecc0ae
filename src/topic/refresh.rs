//! Refreshes: a poll asked for ahead of a topic's schedule, because a write through unpoll
//! succeeded (`write`) or a backend said something changed (`hint`, the admin `/refresh`).
//!
//! The rules, each a pure function here (the poll loop only follows them):
//! - a topic has at most one refresh pending; asking again while one is pending is coalesced
//!   into it ([`Requested::ask`]);
//! - any poll that begins answers the refresh pending then ([`Requested::begin`]), so writes that
//!   land while a poll is in flight cause exactly one more poll after it, and a burst of writes
//!   costs at most one poll per write, usually far fewer;
//! - a pending refresh makes the next poll due at once, unless the topic is failing: its
//!   backoff and `Retry-After` hold ([`due`]). A refresh overrides a `max-age` the upstream
//!   gave, as a successful write invalidates a cache's entry (RFC 9111 §4.4);
//! - the regular schedule restarts from the refresh's poll (the loop measures the interval
//!   from the start of the last poll, whatever started it).

use crate::config::Pattern;
use tokio::time::Instant;

/// Why a topic was refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A write (`POST`, `PUT`, `PATCH`, `DELETE`) through unpoll that the upstream accepted.
    Write,
    /// A refresh hint (`POST /refresh` on the admin listener).
    Hint,
}

impl Cause {
    /// The `cause` label of `unpoll_refreshes_total`, and what `/status` says.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Write => "write",
            Cause::Hint => "hint",
        }
    }
}

/// A topic's refresh, asked for and not yet begun.
#[derive(Debug, Default)]
pub struct Requested(Option<Cause>);

impl Requested {
    /// Asks for a refresh: `true` when it is a new one (the poll loop must be woken), `false`
    /// when one is pending already and this one is coalesced into it.
    pub fn ask(&mut self, cause: Cause) -> bool {
        if self.0.is_some() {
            return false;
        }
        self.0 = Some(cause);
        true
    }

    /// A poll begins: it answers the refresh pending, if any, which it takes.
    pub fn begin(&mut self) -> Option<Cause> {
        self.0.take()
    }

    pub fn is_pending(&self) -> bool {
        self.0.is_some()
    }
}

/// When the next poll is due: on `scheduled`, or at once (`now`) for a pending refresh unless
/// the topic is `failing` (in backoff, or waiting out a `Retry-After`).
pub fn due(scheduled: Instant, pending: bool, failing: bool, now: Instant) -> Instant {
    if pending && !failing {
        scheduled.min(now)
    } else {
        scheduled
    }
}

/// A path named without showing it, in a cluster's refresh messages: a keyed hash (see
/// `cluster::seal`), which every node computes for the paths of its own topics.
pub type PathHash = [u8; 32];

/// Hashes a path (`cluster::seal::Seal::path`).
pub type PathHasher = std::sync::Arc<dyn Fn(&str) -> PathHash + Send + Sync>;

/// Carries refreshes to every node of a cluster, so that the node polling a topic refreshes
/// it, once, whichever node saw the write or the hint.
pub trait Relay: Send + Sync {
    /// Sends a refresh to every node (this one included, which applies it as the others do,
    /// to the topics it polls): `true`; `false` when it cannot (Redis is away, and every
    /// node polls its own topics), and the refresh is applied here.
    fn relay(&self, paths: &[Paths], cause: Cause) -> bool;
}

/// Which topics a refresh reaches, by the path they poll (the query aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paths {
    /// Topics polling exactly this path.
    Exact(String),
    /// Topics polling this path or any below it (written with a trailing `/*`).
    Prefix(String),
}

impl Paths {
    /// `/orders/42`, or `/orders/*` for a prefix; or what is wrong with it.
    pub fn parse(text: &str) -> Result<Paths, String> {
        if !text.starts_with('/') {
            return Err(format!("`{text}` must start with `/`"));
        }
        if text.contains(['?', '#']) || text.contains("//") {
            return Err(format!("`{text}` must be a path: no query, no fragment, no empty segment"));
        }
        match text.strip_suffix("/*") {
            Some(prefix) if !prefix.contains('*') => Ok(Paths::Prefix(prefix.to_string())),
            None if !text.contains('*') => Ok(Paths::Exact(trimmed(text))),
            _ => Err(format!("`{text}`: `*` is only allowed as a whole last segment (`/*`)")),
        }
    }

    /// Whether a topic polling `path` is reached.
    pub fn reaches(&self, path: &str) -> bool {
        match self {
            Paths::Exact(p) => p == path,
            Paths::Prefix(p) => {
                path.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }

    /// The prefixes a topic polling `path` is reached by ([`Paths::Prefix`] of each): the
    /// root (`""`), each ancestor, and the path itself.
    pub fn prefixes_of(path: &str) -> Vec<&str> {
        let mut out = vec![""];
        if path != "/" {
            out.extend(path.match_indices('/').skip(1).map(|(at, _)| &path[..at]));
            out.push(path);
        }
        out
    }

    /// What a successful write to `path` on a route matching `pattern` refreshes: the route's
    /// `refreshes` patterns filled from the path's captures, or by default [`Paths::of_write`].
    pub fn of_route_write(pattern: &Pattern, refreshes: Option<&[Pattern]>, path: &str) -> Vec<Paths> {
        let Some(refreshes) = refreshes else { return Paths::of_write(path) };
        let captures = pattern.captures(path);
        refreshes
            .iter()
            .map(|refresh| match refresh.fill(&captures) {
                (path, true) => Paths::Prefix(path.trim_end_matches('/').to_string()),
                (path, false) => Paths::Exact(trimmed(&path)),
            })
            .collect()
    }

    /// What a write to `path` refreshes by default: that path, and its parent (one segment
    /// up) unless the parent is the root.
    pub fn of_write(path: &str) -> Vec<Paths> {
        let path = trimmed(path);
        let mut paths = vec![Paths::Exact(path.clone())];
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !parent.is_empty() {
                paths.push(Paths::Exact(parent.to_string()));
            }
        }
        paths
    }
}

/// `path` without a trailing `/`, the root aside.
fn trimmed(path: &str) -> String {
    match path.trim_end_matches('/') {
        "" => "/".to_string(),
        p => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_refresh_is_pending_at_most_and_a_poll_answers_it() {
        let mut requested = Requested::default();
        assert!(requested.ask(Cause::Write), "a new refresh wakes the loop");
        assert!(!requested.ask(Cause::Hint), "a second one is coalesced into it");
        assert!(!requested.ask(Cause::Write));
        assert_eq!(requested.begin(), Some(Cause::Write), "the poll that begins answers it");
        assert_eq!(requested.begin(), None, "and only that poll");
        assert!(requested.ask(Cause::Hint), "a write during that poll asks for one more");
    }

    #[test]
    fn a_pending_refresh_is_due_at_once_unless_the_topic_is_failing() {
        let now = Instant::now();
        let scheduled = now + Duration::from_secs(10);
        assert_eq!(due(scheduled, false, false, now), scheduled);
        assert_eq!(due(scheduled, true, false, now), now);
        assert_eq!(due(scheduled, true, true, now), scheduled, "backoff and Retry-After hold");
        assert_eq!(due(now, true, false, scheduled), now, "never later than the schedule");
    }

    #[test]
    fn causes_are_the_metric_labels() {
        assert_eq!([Cause::Write.name(), Cause::Hint.name()], crate::metrics::REFRESH_CAUSES);
    }

    #[test]
    fn paths_parse_and_reach() {
        assert_eq!(Paths::parse("/orders/42"), Ok(Paths::Exact("/orders/42".into())));
        assert_eq!(Paths::parse("/orders/*"), Ok(Paths::Prefix("/orders".into())));
        assert_eq!(Paths::parse("/"), Ok(Paths::Exact("/".into())));
        assert_eq!(Paths::parse("/*"), Ok(Paths::Prefix("".into())));
        for bad in ["orders", "/a?b=1", "/a*", "/*/a", "/a//b", "/a#x"] {
            assert!(Paths::parse(bad).is_err(), "{bad}");
        }
        let prefix = Paths::Prefix("/orders".into());
        assert!(prefix.reaches("/orders") && prefix.reaches("/orders/42") && prefix.reaches("/orders/4/items"));
        assert!(!prefix.reaches("/ordersx") && !prefix.reaches("/order"));
        assert!(Paths::Prefix("".into()).reaches("/anything"));
        assert!(
            Paths::Exact("/orders".into()).reaches("/orders") && !Paths::Exact("/orders".into()).reaches("/orders/1")
        );
    }

    #[test]
    fn a_route_says_what_its_writes_refresh() {
        let pattern = Pattern::parse("/users/{user}/posts/{id}").unwrap();
        let refreshes: Vec<Pattern> = ["/users/{user}/posts", "/feed", "/users/{user}/*", "/*"]
            .iter()
            .map(|p| Pattern::parse(p).unwrap())
            .collect();
        assert_eq!(
            Paths::of_route_write(&pattern, Some(&refreshes), "/users/ann/posts/7"),
            vec![
                Paths::Exact("/users/ann/posts".into()),
                Paths::Exact("/feed".into()),
                Paths::Prefix("/users/ann".into()),
                Paths::Prefix("".into())
            ]
        );
        assert_eq!(Paths::of_route_write(&pattern, Some(&[]), "/users/ann/posts/7"), vec![], "`refreshes: []`");
        assert_eq!(Paths::of_route_write(&pattern, None, "/users/ann/posts/7").len(), 2, "the default");
    }

    #[test]
    fn the_prefixes_of_a_path_are_what_reaches_it() {
        assert_eq!(Paths::prefixes_of("/a/b/c"), ["", "/a", "/a/b", "/a/b/c"]);
        assert_eq!(Paths::prefixes_of("/"), [""]);
        for path in ["/a/b/c", "/a", "/"] {
            for prefix in Paths::prefixes_of(path) {
                assert!(Paths::Prefix(prefix.to_string()).reaches(path), "{prefix} reaches {path}");
            }
        }
    }

    #[test]
    fn a_write_refreshes_its_path_and_its_parent_but_not_the_root() {
        let exact = |p: &str| Paths::Exact(p.to_string());
        assert_eq!(Paths::of_write("/posts/1"), vec![exact("/posts/1"), exact("/posts")]);
        assert_eq!(Paths::of_write("/posts"), vec![exact("/posts")]);
        assert_eq!(Paths::of_write("/users/7/posts/"), vec![exact("/users/7/posts"), exact("/users/7")]);
        assert_eq!(Paths::of_write("/"), vec![exact("/")]);
    }
}
