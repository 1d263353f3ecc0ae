//! Route match patterns: literal segments, `{name}` for one segment, and a trailing `/*` for a prefix.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A compiled `match:` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    segments: Vec<Segment>,
    prefix: bool,
}

impl Pattern {
    /// Compiles a pattern, or says what is wrong with it.
    pub fn parse(source: &str) -> Result<Pattern, String> {
        let rest = source.strip_prefix('/').ok_or_else(|| format!("`{source}` must start with `/`"))?;
        let (rest, prefix) = match rest.strip_suffix('*') {
            Some(r) if r.is_empty() || r.ends_with('/') => (r.trim_end_matches('/'), true),
            Some(_) => return Err(format!("`{source}`: `*` is only allowed as a whole last segment (`/*`)")),
            None => (rest, false),
        };
        let mut segments = Vec::new();
        let mut names = Vec::new();
        if !rest.is_empty() {
            for part in rest.split('/') {
                if part.is_empty() {
                    return Err(format!("`{source}` has an empty segment (`//`)"));
                }
                if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("`{source}`: parameter `{part}` needs a name of letters, digits or `_`"));
                    }
                    if names.contains(&name) {
                        return Err(format!("`{source}`: parameter `{{{name}}}` appears twice"));
                    }
                    names.push(name);
                    segments.push(Segment::Param(name.to_string()));
                } else if part.contains(['{', '}', '*', '?', '#']) {
                    return Err(format!(
                        "`{source}`: segment `{part}` mixes literal text with `{{`, `}}`, `*`, `?` or `#`"
                    ));
                } else {
                    segments.push(Segment::Literal(part.to_string()));
                }
            }
        }
        Ok(Pattern { source: source.to_string(), segments, prefix })
    }

    /// Whether a request path (without its query) matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Literal(lit), Some(part)) if lit == part => {}
                (Segment::Param(_), Some(part)) if !part.is_empty() => {}
                _ => return false,
            }
        }
        if self.prefix {
            return true;
        }
        match parts.next() {
            None => true,
            // `/orders/` matches `/orders` only when the pattern is the root.
            Some("") => self.segments.is_empty() && parts.next().is_none(),
            Some(_) => false,
        }
    }

    /// The names of its `{name}` segments, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// What a path this pattern matches has in its `{name}` segments.
    pub fn captures<'a>(&'a self, path: &'a str) -> Vec<(&'a str, &'a str)> {
        let parts = path.strip_prefix('/').unwrap_or(path).split('/');
        self.segments
            .iter()
            .zip(parts)
            .filter_map(|(segment, part)| match segment {
                Segment::Param(name) => Some((name.as_str(), part)),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// The path this pattern names with its `{name}` segments filled from `captures` (a name
    /// not among them is left as written), and whether it is a prefix (a trailing `/*`).
    pub fn fill(&self, captures: &[(&str, &str)]) -> (String, bool) {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            match segment {
                Segment::Literal(lit) => path.push_str(lit),
                Segment::Param(name) => match captures.iter().find(|(n, _)| n == name) {
                    Some((_, value)) => path.push_str(value),
                    None => {
                        path.push('{');
                        path.push_str(name);
                        path.push('}');
                    }
                },
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        (path, self.prefix)
    }

    /// The pattern as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn literal_and_params() {
        assert!(p("/orders/{id}").matches("/orders/42"));
        assert!(!p("/orders/{id}").matches("/orders"));
        assert!(!p("/orders/{id}").matches("/orders/"));
        assert!(!p("/orders/{id}").matches("/orders/42/items"));
        assert!(!p("/orders/{id}").matches("/users/42"));
        assert!(p("/orders").matches("/orders"));
        assert!(!p("/orders").matches("/orders/1"));
        assert!(p("/").matches("/"));
        assert!(!p("/").matches("/x"));
    }

    #[test]
    fn prefixes() {
        assert!(p("/*").matches("/"));
        assert!(p("/*").matches("/anything/at/all"));
        assert!(p("/api/*").matches("/api"));
        assert!(p("/api/*").matches("/api/"));
        assert!(p("/api/*").matches("/api/v1/x"));
        assert!(!p("/api/*").matches("/apix"));
        assert!(p("/u/{id}/*").matches("/u/1/a/b"));
    }

    #[test]
    fn captures_fill_other_patterns() {
        let route = p("/users/{user}/posts/{id}");
        let caps = route.captures("/users/ann/posts/7");
        assert_eq!(caps, vec![("user", "ann"), ("id", "7")]);
        assert_eq!(route.params().collect::<Vec<_>>(), ["user", "id"]);
        assert_eq!(p("/users/{user}/posts").fill(&caps), ("/users/ann/posts".to_string(), false));
        assert_eq!(p("/feed").fill(&caps), ("/feed".to_string(), false));
        assert_eq!(p("/users/{user}/*").fill(&caps), ("/users/ann".to_string(), true));
        assert_eq!(p("/*").fill(&caps), ("/".to_string(), true));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in ["orders", "/a//b", "/a*", "/*/a", "/{}", "/{a-b}", "/x{id}", "/{id}/{id}", "/a?b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
