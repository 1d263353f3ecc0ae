//! Request paths in one canonical form, so that a route table can be an allowlist: the path is
//! normalised before routing, sent upstream as normalised, and used so in topic keys. Pure.
//!
//! - Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; other escapes
//!   keep their encoding, in upper case.
//! - Dot segments are removed (RFC 3986 §5.2.4): `/public/a/../b` is `/public/b`, and `..`
//!   never climbs above the root.
//! - What an upstream could resolve differently from us is refused: an encoded or literal
//!   backslash, an encoded slash or a `;` parameter that would make a dot segment
//!   (`..%2F`, `..;`), a double-encoded dot, slash or backslash (`%252e`), an encoded NUL,
//!   and malformed escapes.

use std::borrow::Cow;

/// Why a path is refused (400 `bad_path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

/// The canonical form of `path` (an origin-form path, without its query).
pub fn normalise(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') {
        return Err(BadPath("the path must start with /"));
    }
    // Most paths are canonical already: no escapes, no backslash, no dot segment (with or
    // without a `;` parameter). They are taken as they are, without the work below.
    // A path with no `%`, `\` or `.` at all is found so in one pass.
    let dotted = |segment: &str| matches!(segment.split(';').next(), Some("." | ".."));
    let plain = memchr::memchr3(b'%', b'\\', b'.', path.as_bytes()).is_none();
    if plain || (!path.contains(['%', '\\']) && !path.split('/').any(dotted)) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        check_segment(segment)?;
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // `/a/..` and `/a/.` end in a directory: keep the trailing slash.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let normal = format!("/{}", out.join("/"));
    Ok(if normal == path { Cow::Borrowed(path) } else { Cow::Owned(normal) })
}

/// A segment that an upstream decoding `%2F` or `%5C`, or honouring `;` parameters, would read
/// as a dot segment, or that hides characters no path should carry.
fn check_segment(segment: &str) -> Result<(), BadPath> {
    let upper = segment.to_ascii_uppercase();
    if upper.contains("%5C") || segment.contains('\\') {
        return Err(BadPath("a backslash in the path"));
    }
    if upper.contains("%00") {
        return Err(BadPath("a NUL in the path"));
    }
    for twice in ["%252E", "%252F", "%255C", "%2500"] {
        if upper.contains(twice) {
            return Err(BadPath("a double-encoded dot, slash or backslash in the path"));
        }
    }
    for piece in upper.split("%2F") {
        let bare = piece.split(';').next().unwrap_or("");
        let dots = bare == "." || bare == "..";
        if dots && (piece != bare || upper.contains("%2F")) {
            return Err(BadPath("an encoded slash or a parameter that makes a dot segment"));
        }
    }
    Ok(())
}

/// Decodes escapes of unreserved characters and upper-cases the others; malformed escapes and
/// escapes of non-ASCII bytes that do not form UTF-8 are kept as they are.
fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let hex = |b: u8| (b as char).to_digit(16);
        let (Some(hi), Some(lo)) = (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
        else {
            return Err(BadPath("a malformed percent escape in the path"));
        };
        let byte = (hi * 16 + lo) as u8;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push_str(&format!("{byte:02X}"));
        }
        i += 3;
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        normalise(path).unwrap_or_else(|e| panic!("{path}: {e:?}")).into_owned()
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(ok("/public/a/./b/../c"), "/public/a/c");
        assert_eq!(ok("/public/../admin/secret"), "/admin/secret");
        assert_eq!(ok("/../../x"), "/x");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/a//b"), "/a//b", "empty segments are the upstream's business");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_upper_case() {
        assert_eq!(ok("/public/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/public/.%2E/admin"), "/admin");
        assert_eq!(ok("/%7Euser/%61b"), "/~user/ab");
        assert_eq!(ok("/a%20b/%c3%a9"), "/a%20b/%C3%A9");
        assert!(matches!(normalise("/plain/path"), Ok(Cow::Borrowed(_))), "no copy when nothing changes");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for bad in [
            "/public/..%2Fadmin/secret",
            "/public/..%2fadmin",
            "/public/%2e%2e%2fadmin/secret",
            "/public/.%2e%2Fadmin",
            "/public/a%2F..%2Fadmin",
            "/public/..;/admin/secret",
            "/public/.;x/admin",
            "/public/%252e%252e/admin",
            "/public/%252fadmin",
            "/public/..%5Cadmin",
            "/public/..\\admin",
            "/public/a%00b",
            "/public/%zz",
            "/public/%4",
            "relative",
        ] {
            assert!(normalise(bad).is_err(), "{bad} was accepted as {:?}", normalise(bad));
        }
        // Encoded slashes and parameters that make no dot segment are fine.
        assert_eq!(ok("/repos/group%2Fproject"), "/repos/group%2Fproject");
        assert_eq!(ok("/page;jsessionid=1"), "/page;jsessionid=1");
    }
}
