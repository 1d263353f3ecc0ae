//! Durations as operators write them: `250ms`, `1s`, `2m`, `1h`.

use std::time::Duration;

/// Parses `<whole number><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m or h, e.g. `1s`)"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("`{text}` does not start with a number (e.g. `250ms`, `1s`, `2m`)"));
    }
    let n: u64 = number.parse().map_err(|_| format!("`{text}`: the number is too large"))?;
    // `250 ms` and `1 second` mean what they say, as `250ms` and `1s` do.
    let unit = unit.trim_start();
    let millis = match unit {
        "ms" | "millisecond" | "milliseconds" => Some(n),
        "s" | "sec" | "second" | "seconds" => n.checked_mul(1_000),
        "m" | "min" | "minute" | "minutes" => n.checked_mul(60_000),
        "h" | "hour" | "hours" => n.checked_mul(3_600_000),
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s, m or h)")),
    }
    .ok_or_else(|| format!("`{text}` is too long"))?;
    Ok(Duration::from_millis(millis))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 5s "), Ok(Duration::from_secs(5)));
        // With a space, and in words.
        assert_eq!(parse_duration("250 ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10 s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1 second"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("30 seconds"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5 minutes"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1 hour"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["", "1", "s", "1.5s", "-1s", "1d", "1 day", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
        // The unit named as written, without the space before it.
        assert_eq!(
            parse_duration("2 fortnights"),
            Err("`2 fortnights`: unknown unit `fortnights` (use ms, s, m or h)".into())
        );
    }

    #[test]
    fn formats_round_trip() {
        for text in ["250ms", "1s", "2m", "1h", "0s", "1500ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
