//! What subscribers are told when a poll fails: a fixed sentence per error name. It is the
//! only place these sentences are written, and a cluster's follower makes its own from the name
//! the leader sends: no text from Redis ever reaches a subscriber.

use super::compute::MAX_DEPTH;

/// The sentence subscribers are told for an error a poll ends in. `None` for a name unpoll
/// never sends.
pub fn sentence(error: &str, status: u16) -> Option<String> {
    Some(match error {
        "upstream_unavailable" | "upstream_status" => format!("the upstream answered {status}; retrying"),
        "upstream_unreachable" => "the upstream could not be reached; retrying".to_string(),
        "upstream_timeout" => "the upstream did not answer in time; retrying".to_string(),
        "upstream_tls" => "the upstream's TLS connection could not be made safely; retrying".to_string(),
        "upstream_encoding" => "the upstream's answer came in an encoding the proxy cannot read; retrying".to_string(),
        "upstream_unreadable" => "the upstream's answer could not be read; retrying".to_string(),
        "upstream_body_too_large" => "the upstream's answer is larger than the proxy accepts; retrying".to_string(),
        "upstream_body_too_deep" => format!("the upstream's JSON nests deeper than {MAX_DEPTH} levels; retrying"),
        name if terminal(name) => format!("the upstream answered {status}; the stream ends"),
        _ => return None,
    })
}

/// Whether an error of this name ends the stream (the upstream answered 401, 403, 404, 410).
pub fn terminal(error: &str) -> bool {
    matches!(error, "unauthorized" | "forbidden" | "not_found" | "gone")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_a_poll_ends_in_has_its_sentence_and_no_other_name_has_one() {
        for name in [
            "upstream_unavailable",
            "upstream_status",
            "upstream_unreachable",
            "upstream_timeout",
            "upstream_tls",
            "upstream_encoding",
            "upstream_unreadable",
            "upstream_body_too_large",
            "upstream_body_too_deep",
        ] {
            let said = sentence(name, 503).unwrap();
            assert!(said.ends_with("; retrying") && !terminal(name), "{name}: {said}");
        }
        for name in ["unauthorized", "forbidden", "not_found", "gone"] {
            assert!(terminal(name));
            assert_eq!(sentence(name, 404).unwrap(), "the upstream answered 404; the stream ends");
        }
        assert_eq!(sentence("Your session expired: log in at https://evil.example", 401), None);
        assert_eq!(sentence("", 500), None);
    }
}
