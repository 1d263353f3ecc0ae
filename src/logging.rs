//! The log, through `env_logger`: text (the default) or one JSON object per line
//! (`--log-format json`), for a log shipper to read without parsing.
//!
//! A record's key-value pairs (the access log's fields, see `proxy::access`) follow the
//! message as `key=value` in text, and are fields of the object in JSON. Nothing here adds
//! anything to what is logged: what must never be logged (credentials, `unpoll_*` and token
//! parameters) is kept out where the lines are made.

use log::kv::{Key, Value, VisitSource};
use log::Record;
use serde_json::{Map, Number};
use std::fmt::Write as _;
use std::io::Write as _;

/// How each line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `[2026-12-01T17:45:12.123Z INFO  unpoll::server] message key=value`, as env_logger has it.
    Text,
    /// `{"time":"…","level":"INFO","target":"unpoll::server","message":"…","key":value}`.
    Json,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Starts logging with `filters` (env_logger's syntax; `RUST_LOG` overrides them).
pub fn init(filters: &str, format: Format) {
    env_logger::Builder::new()
        .parse_filters(filters)
        .parse_env("RUST_LOG")
        .format(move |buf, record| {
            let time = buf.timestamp_millis().to_string();
            writeln!(buf, "{}", line(format, &time, record))
        })
        .init();
}

/// One record as a line, without its newline.
pub fn line(format: Format, time: &str, record: &Record) -> String {
    let mut pairs = Pairs(Vec::new());
    let _ = record.key_values().visit(&mut pairs);
    match format {
        Format::Text => {
            let mut out = format!("[{time} {:<5} {}] {}", record.level(), record.target(), record.args());
            for (key, value) in &pairs.0 {
                let _ = match value {
                    serde_json::Value::String(s) if s.is_empty() || s.contains([' ', '"', '=']) => {
                        write!(out, " {key}={}", serde_json::Value::String(s.clone()))
                    }
                    serde_json::Value::String(s) => write!(out, " {key}={s}"),
                    v => write!(out, " {key}={v}"),
                };
            }
            out
        }
        Format::Json => {
            let mut object = Map::new();
            object.insert("time".into(), time.into());
            object.insert("level".into(), record.level().as_str().into());
            object.insert("target".into(), record.target().into());
            object.insert("message".into(), record.args().to_string().into());
            for (key, value) in pairs.0 {
                object.entry(key).or_insert(value);
            }
            serde_json::Value::Object(object).to_string()
        }
    }
}

/// A record's pairs, numbers and booleans kept as such.
struct Pairs(Vec<(String, serde_json::Value)>);

impl<'kvs> VisitSource<'kvs> for Pairs {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(n) = value.to_f64().and_then(Number::from_f64) {
            serde_json::Value::Number(n)
        } else {
            value.to_string().into()
        };
        self.0.push((key.as_str().to_string(), json));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_line(format: Format) -> String {
        let pairs: &[(&str, Value)] = &[
            ("method", Value::from("GET")),
            ("status", Value::from(200u16)),
            ("duration_ms", Value::from(1.5f64)),
            ("target", Value::from("/a b")),
        ];
        let args = format_args!("request \"done\"");
        let record =
            Record::builder().level(log::Level::Info).target("unpoll::access").args(args).key_values(&pairs).build();
        line(format, "2026-12-01T00:00:00.000Z", &record)
    }

    #[test]
    fn json_lines_are_objects_with_typed_fields() {
        let v: serde_json::Value = serde_json::from_str(&record_line(Format::Json)).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "unpoll::access");
        assert_eq!(v["message"], "request \"done\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["method"], "GET");
        assert_eq!(v["time"], "2026-12-01T00:00:00.000Z");
        // A pair does not replace the record's own fields.
        assert_eq!(v["target"], "unpoll::access");
    }

    #[test]
    fn text_lines_put_pairs_after_the_message_quoted_where_needed() {
        let l = record_line(Format::Text);
        assert_eq!(
            l,
            "[2026-12-01T00:00:00.000Z INFO  unpoll::access] request \"done\" method=GET status=200 duration_ms=1.5 target=\"/a b\""
        );
    }
}
