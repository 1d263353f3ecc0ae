//! The little HTTP/1.1 both sides of the load tool need: URLs, response and request heads.

use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;

/// Microseconds since the Unix epoch: the clock `sent_us` and receive times are read from.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// `http://host:port/path` as (`host:port`, `/path`).
pub fn split_url(url: &str) -> anyhow::Result<(String, String, bool)> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => anyhow::bail!("only http:// and https:// URLs: {url}"),
    };
    Ok(match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string(), https),
        None => (rest.to_string(), "/".to_string(), https),
    })
}

/// Reads from `s` into `buf` until it holds a whole head, then takes the head out of `buf`
/// (what follows it stays) and returns it in lower case. None when the peer closed first or
/// the head passed 64 KiB.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        buf.reserve(4096);
        if s.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    Ok(Some(head))
}
