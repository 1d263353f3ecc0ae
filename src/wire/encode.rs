//! Pure wire encodings: SSE event blocks and WebSocket text frames. No I/O.

use bytes::{BufMut, Bytes, BytesMut};
use std::io::Write;

/// The client protocol of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Sse,
    WebSocket,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sse => "sse",
            Protocol::WebSocket => "websocket",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The size line of an HTTP/1.1 chunk of `len` bytes (RFC 9112 §7.1), made on the stack,
/// and its length.
pub fn size_line(len: usize) -> ([u8; 20], usize) {
    let mut line = [0u8; 20];
    let mut rest = &mut line[..];
    write!(rest, "{len:x}\r\n").expect("a usize in hex fits in 20 bytes");
    let n = 20 - rest.len();
    (line, n)
}

/// `data` as one HTTP/1.1 chunk: its size line, the bytes, and the chunk's end.
pub fn http_chunk(data: &[u8]) -> Bytes {
    let (size, n) = size_line(data.len());
    let mut out = BytesMut::with_capacity(n + data.len() + 2);
    out.put_slice(&size[..n]);
    out.put_slice(data);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// One SSE event block: `id:`/`event:`/`data:` lines and a blank line. `data` is compact
/// JSON, which holds no raw newline; any that appear are split over several `data:` lines.
pub fn sse_event(id: Option<&str>, event: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    for line in data.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// The JSON text of a WebSocket event message: `{"event":…,"id":…,"data":…}`.
/// `data` must already be valid JSON.
pub fn ws_message(id: Option<&str>, event: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 48);
    out.extend_from_slice(b"{\"event\":");
    out.extend_from_slice(serde_json::to_string(event).expect("strings serialise").as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(serde_json::to_string(id).expect("strings serialise").as_bytes());
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.push(b'}');
    out
}

/// A complete unmasked, unfragmented server-to-client WebSocket text frame (RFC 6455 §5.2).
pub fn ws_text_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x81); // FIN + text
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// Both encodings of an event, as one protocol wants it: an SSE event block, or a WebSocket
/// text frame. No transport framing: the sink of each stream adds its own (an HTTP/1.1
/// chunk's size line, HTTP/2 DATA frames) around these shared bytes.
pub fn encode(protocol: Protocol, id: Option<&str>, event: &str, data: &[u8]) -> Bytes {
    match protocol {
        Protocol::Sse => sse_event(id, event, data),
        Protocol::WebSocket => ws_text_frame(&ws_message(id, event, data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::FrameHeader;

    #[test]
    fn sse_block_matches_the_protocol() {
        let b = sse_event(Some("9f2c-1"), "snapshot", br#"{"id":1}"#);
        assert_eq!(&b[..], b"id: 9f2c-1\nevent: snapshot\ndata: {\"id\":1}\n\n");
        let e = sse_event(None, "error", b"{}");
        assert_eq!(&e[..], b"event: error\ndata: {}\n\n");
    }

    #[test]
    fn chunk_size_lines_are_hex() {
        for (len, line) in [(0, "0\r\n"), (13, "d\r\n"), (300, "12c\r\n"), (usize::MAX, "ffffffffffffffff\r\n")] {
            let (bytes, n) = size_line(len);
            assert_eq!(&bytes[..n], line.as_bytes());
        }
        assert_eq!(&http_chunk(b"event: x\n\n")[..], b"a\r\nevent: x\n\n\r\n");
    }

    #[test]
    fn sse_splits_newlines_into_data_lines() {
        let b = sse_event(None, "snapshot", b"a\nb\r\nc");
        assert_eq!(&b[..], b"event: snapshot\ndata: a\ndata: b\ndata: c\n\n");
    }

    #[test]
    fn ws_message_is_json() {
        let m = ws_message(Some("e-2"), "patch", br#"[{"op":"remove","path":"/a"}]"#);
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["event"], "patch");
        assert_eq!(v["id"], "e-2");
        assert_eq!(v["data"][0]["op"], "remove");
        let e: serde_json::Value = serde_json::from_slice(&ws_message(None, "error", b"{}")).unwrap();
        assert!(e.get("id").is_none());
    }

    #[test]
    fn ws_frames_parse_with_tungstenite_at_every_length_class() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload = vec![b'x'; len];
            let frame = ws_text_frame(&payload);
            let mut cursor = std::io::Cursor::new(&frame[..]);
            let (header, parsed_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert!(header.mask.is_none());
            assert_eq!(parsed_len as usize, len);
            assert_eq!(frame.len() - cursor.position() as usize, len);
        }
    }
}
