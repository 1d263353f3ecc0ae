//! YAML text → validated [`Config`], reporting every problem at once with its key path and
//! line, in passes: the YAML tree ([`super::yaml`], the one place that names the YAML crate),
//! each section through its table of keys ([`super::sections`]), the checks between keys
//! ([`super::check`]), and resolving names ([`super::resolve`], the only step with I/O).

use super::model::*;
pub use super::problem::{ConfigErrors, Problem};
use super::walk::Walker;
use super::yaml::{parse_yaml, Lines};
use super::{check, resolve, sections};

/// A configuration that parsed and passed every check between keys, not yet resolved.
#[derive(Debug)]
pub struct Parsed {
    config: Config,
    lines: Lines,
    max_connections_given: bool,
}

/// Parses and checks a configuration without any I/O (no name is resolved): the first two
/// passes, each section read through its table of keys ([`super::sections`]) and then the
/// checks between keys ([`super::check`]). Every problem is reported, with its line.
pub fn parse(text: &str) -> Result<Parsed, ConfigErrors> {
    let (parsed, problems) = drafted(text)?;
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(located(problems, &parsed.lines))
    }
}

/// The first two passes: the configuration as far as it could be read (a route without its
/// pattern or upstream left out), and the problems found. Only a YAML syntax error stops it.
fn drafted(text: &str) -> Result<(Parsed, Vec<Problem>), ConfigErrors> {
    let root = parse_yaml(text).map_err(|p| ConfigErrors(vec![p]))?;
    let lines = Lines::read(text);
    let mut w = Walker::default();
    let mut draft = sections::draft(&mut w, &root);
    check::check(&mut w, &mut draft);
    let max_connections_given = w.given("server.max_connections");
    // A route lacking either was reported.
    let routes = draft
        .routes
        .into_iter()
        .filter_map(|r| match (r.pattern, r.upstream) {
            (Some(pattern), Some(upstream)) => {
                Some(RouteSettings { pattern, upstream, stream: r.stream, refreshes: r.refreshes })
            }
            _ => None,
        })
        .collect();
    let config = Config { server: draft.server, upstreams: draft.upstreams, routes, cluster: draft.cluster };
    Ok((Parsed { config, lines, max_connections_given }, w.problems))
}

impl Parsed {
    /// The last pass ([`super::resolve`]): resolves the servers' names (DNS: this blocks, so
    /// call it off the async threads) and checks what the host allows.
    pub fn resolve(self) -> Result<Config, ConfigErrors> {
        let Parsed { mut config, lines, max_connections_given } = self;
        let mut w = Walker::default();
        resolve::resolve(&mut w, &mut config, max_connections_given);
        if w.problems.is_empty() {
            Ok(config)
        } else {
            Err(located(w.problems, &lines))
        }
    }
}

/// Parses, checks and resolves a whole configuration file. Blocks while names resolve.
/// Every problem is listed at once: names that do not resolve and files that cannot be read
/// with the others, not only once those are fixed.
pub fn parse_config(text: &str) -> Result<Config, ConfigErrors> {
    let (parsed, mut problems) = drafted(text)?;
    if problems.is_empty() {
        return parsed.resolve();
    }
    let Parsed { mut config, lines, max_connections_given } = parsed;
    let mut w = Walker::default();
    resolve::resolve(&mut w, &mut config, max_connections_given);
    // A key already reported is not reported again for what the last pass made of it.
    for late in w.problems {
        if !problems.iter().any(|p| p.path == late.path) {
            problems.push(late);
        }
    }
    Err(located(problems, &lines))
}

/// The problems, each with the line of its key path.
fn located(mut problems: Vec<Problem>, lines: &Lines) -> ConfigErrors {
    for p in &mut problems {
        p.line = p.line.or_else(|| lines.find(&p.path));
    }
    ConfigErrors(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GOOD: &str = r#"
server:
  listen: ["127.0.0.1:8080"]
  admin: "127.0.0.1:9090"
upstreams:
  legacy:
    servers: ["127.0.0.1:3000", "127.0.0.1:3001"]
    max_body: 1024
    max_concurrent_polls: 4
    reuse: shared
routes:
  - match: /orders/{id}
    upstream: legacy
    stream:
      interval: 250ms
      format: merge-patch
      vary: [Authorization, X-Tenant]
      array_id: id
      max_patch_ratio: 0.25
      max_backoff: 1m
      respect_cache_control: true
  - match: /board
    upstream: legacy
    stream: { share: public }
  - match: /*
    upstream: legacy
"#;

    #[test]
    fn parses_a_good_file_with_defaults() {
        let c = parse_config(GOOD).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080"]);
        assert_eq!(c.upstreams["legacy"].servers.len(), 2);
        let s = c.routes[0].stream.as_ref().unwrap();
        assert_eq!(s.interval, Duration::from_millis(250));
        assert_eq!(s.format, Format::MergePatch);
        assert_eq!(s.vary, vec!["cookie", "authorization", "x-tenant"], "vary adds to the credentials");
        assert_eq!(s.heartbeat, Duration::from_secs(15));
        assert_eq!(s.history, 64);
        assert_eq!(s.linger, Duration::from_secs(5));
        assert_eq!(s.array_id.as_deref(), Some("id"));
        assert_eq!(s.max_patch_ratio, 0.25);
        assert_eq!(s.max_backoff, Duration::from_secs(60));
        assert!(s.respect_cache_control);
        assert_eq!(c.upstreams["legacy"].max_body, 1024);
        assert_eq!(c.upstreams["legacy"].max_concurrent_polls, 4);
        assert_eq!(c.upstreams["legacy"].reuse, Reuse::Shared);
        let public_defaults = c.routes[1].stream.as_ref().unwrap();
        assert_eq!((public_defaults.array_id.as_ref(), public_defaults.max_patch_ratio), (None, 1.0));
        assert!(!public_defaults.respect_cache_control);
        let public = c.routes[1].stream.as_ref().unwrap();
        assert_eq!(public.share, Share::Public);
        assert!(public.vary.is_empty(), "public streams do not vary on credentials by default");
        assert!(c.routes[2].stream.is_none());
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let bad = r#"
server:
  listen: []
  colour: blue
upstreams:
  legacy:
    servers: []
  other:
    servers: ["ftp://x:1"]
    reuse: sometimes
routes:
  - match: orders
    upstream: nowhere
    stream:
      interval: 5 parsecs
      format: xml
      share: everyone
      histroy: 3
  - upstream: legacy
"#;
        let errs = parse_config(bad).unwrap_err().0;
        let paths: Vec<_> = errs.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "server.listen",
            "server.colour",
            "upstreams.legacy.servers",
            "upstreams.other.servers[0]",
            "upstreams.other.reuse",
            "routes[0].match",
            "routes[0].stream.interval",
            "routes[0].stream.format",
            "routes[0].stream.share",
            "routes[0].stream.histroy",
            "routes[0].upstream",
            "routes[1].match",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn unknown_upstream_is_reported_when_upstreams_are_valid() {
        let text = "upstreams: {a: {servers: ['127.0.0.1:1']}}\nroutes: [{match: /x, upstream: b}]\n";
        let errs = parse_config(text).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "routes[0].upstream");
        assert!(errs[0].message.contains("unknown upstream `b`"));
    }

    #[test]
    fn the_admin_token_is_read_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let text = format!(
            "server: {{admin_token_file: '{}'}}\nupstreams: {{a: {{servers: ['127.0.0.1:1']}}}}\nroutes: [{{match: /x, upstream: a}}]\n",
            file.display()
        );
        let errs = parse_config(&text).unwrap_err().0;
        assert_eq!(errs[0].path, "server.admin_token_file");
        assert!(errs[0].message.contains("cannot read"), "{}", errs[0].message);
        std::fs::write(&file, "short\n").unwrap();
        let errs = parse_config(&text).unwrap_err().0;
        assert!(errs[0].message.contains("at least 16 characters"), "{}", errs[0].message);
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let config = parse_config(&text).unwrap();
        assert_eq!(config.server.admin_token.as_ref().map(|t| t.0.as_str()), Some("0123456789abcdef0123"));
        assert!(!format!("{config:?}").contains("0123456789abcdef0123"), "Debug hides the token");
    }

    #[test]
    fn refresh_patterns_name_only_captures_of_their_route() {
        let text = "upstreams: {a: {servers: ['127.0.0.1:1']}}\nroutes:\n\
            - {match: '/u/{user}/posts/{id}', upstream: a, refreshes: ['/u/{user}/posts', '/u/{who}/feed', 'x']}\n";
        let errs = parse_config(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["routes[0].refreshes[2]"], "{errs:?}");
        let text = text.replace(", 'x'", "");
        let errs = parse_config(&text).unwrap_err().0;
        assert_eq!(errs[0].path, "routes[0].refreshes[1]");
        assert!(errs[0]
            .message
            .contains("`{who}` is not a capture of `/u/{user}/posts/{id}` (its captures: {user}, {id})"));
        let fine = text.replace("{who}", "{user}");
        let config = parse_config(&fine).unwrap();
        assert_eq!(config.routes[0].refreshes.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn admin_may_not_share_a_listen_address() {
        let routes = "upstreams: {a: {servers: ['127.0.0.1:1']}}\nroutes: [{match: /x, upstream: a}]\n";
        for (listen, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
        ] {
            let text = format!("server: {{listen: ['127.0.0.1:7000', '{listen}'], admin: '{admin}'}}\n{routes}");
            let errs = parse_config(&text).unwrap_err().0;
            assert_eq!(errs[0].path, "server.admin", "{listen} / {admin}");
            assert!(errs[0].message.contains("server.listen[1]"), "{}", errs[0].message);
        }
        let text = format!("server: {{listen: ['127.0.0.1:8080'], admin: '127.0.0.2:8080'}}\n{routes}");
        assert!(parse_config(&text).is_ok(), "another address on the same port is fine");
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let errs = parse_config("routes:\n  - match: /x\n   upstream: [\n").unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].line.is_some(), "{errs:?}");
    }

    #[test]
    fn public_share_refuses_credential_vary() {
        let text = "upstreams: {a: {servers: ['127.0.0.1:1']}}\nroutes: [{match: /x, upstream: a, stream: {share: public, vary: [Cookie]}}]\n";
        let errs = parse_config(text).unwrap_err().0;
        assert_eq!(errs[0].path, "routes[0].stream.vary[0]");
    }

    #[test]
    fn missing_sections_are_reported() {
        let errs = parse_config("server: {}\n").unwrap_err().0;
        let paths: Vec<_> = errs.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, vec!["upstreams", "routes"]);
    }

    #[test]
    fn every_problem_has_the_line_of_its_key() {
        let text = "server:\n  listen: []\n  colour: blue\nupstreams:\n  a:\n    servers: ['127.0.0.1:1']\n    timeout: soon\nroutes:\n  - match: /x\n    upstream: a\n    stream:\n      format: xml\n      share: public\n      vary: [x-tenant, Cookie]\n  - {upstream: b}\n";
        let errs = parse_config(text).unwrap_err().0;
        let found: Vec<(&str, Option<usize>)> = errs.iter().map(|p| (p.path.as_str(), p.line)).collect();
        for expected in [
            ("server.listen", Some(2)),
            ("server.colour", Some(3)),
            ("upstreams.a.timeout", Some(7)),
            ("routes[0].stream.format", Some(12)),
            ("routes[0].stream.vary[1]", Some(14)),
            ("routes[1].match", Some(15)),
            ("routes[1].upstream", Some(15)),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {found:?}");
        }
        assert!(errs.iter().all(|p| p.line.is_some()), "{errs:?}");
        let text = ConfigErrors(errs).to_string();
        assert!(
            text.lines().any(|l| l.contains("server.colour: unknown key `colour`") && l.ends_with("(line 3)")),
            "{text}"
        );
    }

    #[test]
    fn parsing_resolves_no_names_and_resolving_reports_with_lines() {
        let text =
            "upstreams:\n  a:\n    servers:\n      - 'unresolvable.invalid:80'\nroutes: [{match: /x, upstream: a}]\n";
        let parsed = parse(text).expect("the form is right: parsing looks nothing up");
        let errs = parsed.resolve().unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].path.as_str(), errs[0].line), ("upstreams.a.servers[0]", Some(4)));
        let bad_form =
            parse("upstreams: {a: {servers: ['no-port']}}\nroutes: [{match: /x, upstream: a}]\n").unwrap_err();
        assert_eq!(bad_form.0[0].path, "upstreams.a.servers[0]");
    }

    #[test]
    fn names_that_do_not_resolve_are_listed_with_the_other_problems() {
        let text = "server:\n  colour: red\nupstreams:\n  a:\n    servers:\n      - 'unresolvable.invalid:80'\n  b:\n    servers: ['no-port']\nroutes: [{match: /x, upstream: a}, {match: /y}]\n";
        let errs = parse_config(text).unwrap_err().0;
        let paths: Vec<(&str, Option<usize>)> = errs.iter().map(|p| (p.path.as_str(), p.line)).collect();
        assert!(paths.contains(&("server.colour", Some(2))), "{errs:?}");
        assert!(paths.contains(&("upstreams.a.servers[0]", Some(6))), "the name that does not resolve: {errs:?}");
        assert!(paths.contains(&("upstreams.b.servers[0]", Some(8))), "{errs:?}");
        assert!(errs.iter().any(|p| p.path.starts_with("routes[1]")), "{errs:?}");
        // Each key once: the malformed entry is not reported again by the last pass.
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn every_key_of_every_table_is_in_the_example_file() {
        let example = include_str!("../../config/example.yaml");
        let mut missing = Vec::new();
        for (section, keys) in super::sections::keys() {
            for key in keys {
                if !example.contains(&format!("{key}:")) {
                    missing.push(format!("{section}.{key}"));
                }
            }
        }
        assert!(missing.is_empty(), "config/example.yaml does not show {missing:?}");
    }

    #[test]
    fn every_key_of_every_table_is_in_the_configuration_reference() {
        let reference = include_str!("../../docs/configuration.md");
        let mut missing = Vec::new();
        for (section, keys) in super::sections::keys() {
            for key in keys {
                // A row names the key at the end of its path (`server.listen`), or after
                // its sibling (`` `.cert` ``).
                if !reference.contains(&format!(".{key}`")) && !reference.contains(&format!("`{key}`")) {
                    missing.push(format!("{section}.{key}"));
                }
            }
        }
        assert!(missing.is_empty(), "docs/configuration.md does not list {missing:?}");
    }

    #[test]
    fn servers_weights_and_sticky_are_read_and_checked() {
        let good = "upstreams:\n  a:\n    servers: ['127.0.0.1:1', {addr: '127.0.0.1:2', weight: 3}]\n    sticky: {cookie: {name: sid, max_age: 1h, secure: true}}\n  b:\n    servers: ['127.0.0.1:3']\n    sticky: {hash: {header: X-Session}}\nroutes: [{match: /x, upstream: a}]\n";
        let c = parse_config(good).unwrap();
        let a = &c.upstreams["a"];
        assert_eq!(a.servers.iter().map(|s| s.weight).collect::<Vec<_>>(), vec![1, 3]);
        let Some(Sticky::Cookie(cookie)) = &a.sticky else { panic!("{:?}", a.sticky) };
        assert_eq!(
            (cookie.name.as_str(), cookie.max_age, cookie.secure, cookie.http_only),
            ("sid", Some(Duration::from_secs(3600)), true, true)
        );
        assert_eq!(c.upstreams["b"].sticky, Some(Sticky::Hash(HashOn::Header("x-session".into()))));
        let bad = "upstreams:\n  a:\n    servers: [{weight: 2}, {addr: '127.0.0.1:2', weight: 0}]\n    sticky: {cookie: {}, hash: {source_ip: true}}\n  b:\n    servers: ['127.0.0.1:3']\n    sticky: {hash: {header: x, query: y}}\n  c:\n    servers: ['127.0.0.1:4']\n    sticky: {cookie: {name: 'a b', same_site: loose}}\n  d:\n    servers: ['127.0.0.1:5']\n    sticky: {cookie: {same_site: none}}\nroutes: [{match: /x, upstream: a}]\n";
        let errs = parse_config(bad).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "upstreams.a.servers[0].addr",
            "upstreams.a.servers[1].weight",
            "upstreams.a.sticky",
            "upstreams.b.sticky.hash",
            "upstreams.c.sticky.cookie.name",
            "upstreams.c.sticky.cookie.same_site",
            "upstreams.d.sticky.cookie.same_site",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
        let secure = good.replace("secure: true", "secure: true, same_site: none");
        assert!(parse_config(&secure).is_ok(), "SameSite=None with Secure is fine");
    }

    #[test]
    fn cluster_is_read_with_its_defaults_and_checked() {
        let base = "upstreams: {a: {servers: ['127.0.0.1:1']}}\nroutes: [{match: /x, upstream: a}]\n";
        assert_eq!(parse_config(base).unwrap().cluster, None, "no cluster: no Redis");
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), format!("{}\n", "5ec7e7".repeat(6))).unwrap();
        let secret_file = format!("secret_file: '{}'", secret.path().display());
        let c = parse_config(&format!(
            "{base}cluster: {{redis: 'redis://:pw@127.0.0.1:6379/2', lease: 3s, {secret_file}}}\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            (c.lease, c.timeout, c.prefix.as_str()),
            (Duration::from_secs(3), Duration::from_secs(1), "unpoll:")
        );
        assert!(c.node.ends_with(&format!("-{}", std::process::id())), "host name and pid: {}", c.node);
        assert_eq!(format!("{:?}", c.redis), "<secret>", "the URL may hold a password: never shown");
        assert_eq!(c.secret.0, "5ec7e7".repeat(6), "read, without its line end");
        assert_eq!(format!("{:?}", c.secret), "<secret>");
        let bad = format!(
            "{base}cluster: {{redis: 'http://user:hunter2@host', node: 'a b', lease: 1s, timeout: 500ms, prefix: 'a b', {secret_file}}}\n"
        );
        let errs = parse_config(&bad).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|p| p.path.as_str()).collect();
        for expected in ["cluster.redis", "cluster.node", "cluster.prefix"] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
        assert!(!errs.to_string().contains("hunter2"), "{errs}");
        let between = format!(
            "{base}cluster: {{redis: 'redis://:pw@h:1', lease: 1s, timeout: 500ms, password_file: /x, {secret_file}}}\n"
        );
        let errs = parse(&between).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["cluster.timeout", "cluster.password_file"]);
        let missing = parse(&format!("{base}cluster: {{lease: 5s}}\n")).unwrap_err();
        let paths: Vec<&str> = missing.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["cluster.redis", "cluster.secret_file"], "both are required");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "s3cret\n").unwrap();
        let with_file = format!(
            "{base}cluster: {{redis: 'redis://h:1', password_file: '{}', {secret_file}}}\n",
            file.path().display()
        );
        let c = parse_config(&with_file).unwrap().cluster.unwrap();
        assert_eq!(c.password.map(|p| p.0), Some("s3cret".to_string()), "read, without its line end");
        // A secret too short to resist guessing, or a file that is not there.
        let short = format!("{base}cluster: {{redis: 'redis://h:1', secret_file: '{}'}}\n", file.path().display());
        let errs = parse_config(&short).unwrap_err();
        assert_eq!(errs.0[0].path, "cluster.secret_file");
        assert!(errs.0[0].message.contains("at least 32") && !errs.to_string().contains("s3cret"), "{errs}");
        let absent = parse_config(&format!("{base}cluster: {{redis: 'redis://h:1', secret_file: /no/such/file}}\n"));
        assert_eq!(absent.unwrap_err().0[0].path, "cluster.secret_file");
    }
}
