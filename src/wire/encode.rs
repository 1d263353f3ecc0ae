//! Pure wire encodings: SSE event blocks and WebSocket text frames. No I/O.

use bytes::{BufMut, Bytes, BytesMut};

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

/// Frames `data` as one HTTP/1.1 chunk (RFC 9112 §7.1). SSE responses are chunked, and an
/// event is framed once for all its subscribers, so writing it costs no work per subscriber.
pub fn chunk(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 12);
    out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// `bytes` (one or more whole chunks, as [`chunk`] makes them) without their chunk framing: the
/// body of a close-delimited response, for HTTP/1.0 clients, which know no chunks. One chunk
/// is a slice of the same bytes.
pub fn unchunk(bytes: &Bytes) -> Bytes {
    let mut parts = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(line) = bytes[at..].windows(2).position(|w| w == b"\r\n") else { break };
        let size = std::str::from_utf8(&bytes[at..at + line]).ok().and_then(|h| usize::from_str_radix(h, 16).ok());
        let Some(size) = size else { break };
        let start = at + line + 2;
        if start + size + 2 > bytes.len() {
            break;
        }
        parts.push(bytes.slice(start..start + size));
        at = start + size + 2;
    }
    match parts.as_slice() {
        [one] => one.clone(),
        _ => parts.concat().into(),
    }
}

/// The SSE comment sent as a heartbeat (`: keep-alive`), as a chunk.
pub const SSE_KEEPALIVE: &[u8] = b"e\r\n: keep-alive\n\n\r\n";

/// The first bytes of every SSE stream: the client's reconnection delay (2 s), as a chunk.
pub const SSE_PREAMBLE: &[u8] = b"d\r\nretry: 2000\n\n\r\n";

/// The last chunk of an SSE response.
pub const SSE_END: &[u8] = b"0\r\n\r\n";

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

/// Both encodings of an event, as one protocol wants it on the wire: an SSE event block in
/// an HTTP chunk, or a WebSocket text frame.
pub fn encode(protocol: Protocol, id: Option<&str>, event: &str, data: &[u8]) -> Bytes {
    match protocol {
        Protocol::Sse => chunk(&sse_event(id, event, data)),
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
    fn sse_constants_are_chunks_of_their_text() {
        assert_eq!(SSE_KEEPALIVE, &chunk(b": keep-alive\n\n")[..]);
        assert_eq!(SSE_PREAMBLE, &chunk(b"retry: 2000\n\n")[..]);
        let big = vec![b'x'; 300];
        assert!(chunk(&big).starts_with(b"12c\r\nxxx"));
    }

    #[test]
    fn unchunking_gives_back_the_data() {
        let one = chunk(b"id: 1\nevent: patch\ndata: []\n\n");
        let body = unchunk(&one);
        assert_eq!(&body[..], b"id: 1\nevent: patch\ndata: []\n\n");
        assert!(std::ptr::eq(body.as_ptr(), one[4..].as_ptr()), "one chunk is a slice, not a copy");
        let mut two = one.to_vec();
        two.extend_from_slice(SSE_KEEPALIVE);
        assert_eq!(&unchunk(&Bytes::from(two))[..], b"id: 1\nevent: patch\ndata: []\n\n: keep-alive\n\n");
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
