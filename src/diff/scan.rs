//! One pass over a poll's body that checks it is JSON the text diff reads exactly as
//! serde_json would, and makes it compact on the way.
//!
//! It took two passes before (serde_json's `IgnoredAny` check, then a second walk dropping
//! whitespace and checking what that check skips), half of a 10 KB poll's CPU. This is a
//! complete JSON grammar (RFC 8259, as serde_json reads it), so what it takes serde_json
//! takes; text it refuses goes the parsed way, which says whether serde_json reads it.

use bytes::Bytes;
use std::sync::Arc;

/// Containers this long or longer are indexed: the diff finds where they end without
/// reading them (a lookup costs about what reading 20 bytes does).
const INDEXED: usize = 64;

/// A document's compact JSON text, with where its large containers end: a diff that must
/// step over a large array or object (the last member of an object that changed inside it,
/// on both sides) looks its end up instead of reading it.
#[derive(Clone, Debug)]
pub struct Text {
    bytes: Bytes,
    /// The start and end (just past the closing bracket) of every container of at least
    /// [`INDEXED`] bytes, by start.
    large: Option<Arc<[(u32, u32)]>>,
}

impl Text {
    /// Compact JSON text (serde_json's serialisation) without an index.
    pub fn unindexed(bytes: Bytes) -> Text {
        Text { bytes, large: None }
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    pub(super) fn index(&self) -> Index<'_> {
        Index { base: self.bytes.as_ptr() as usize, len: self.bytes.len(), large: self.large.as_deref().unwrap_or(&[]) }
    }
}

impl std::ops::Deref for Text {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A [`Text`]'s large containers, looked up from any slice of its bytes.
#[derive(Clone, Copy)]
pub(super) struct Index<'t> {
    base: usize,
    len: usize,
    large: &'t [(u32, u32)],
}

impl Index<'_> {
    /// Where the container starting at `start` in `text` ends, if `text` is a slice of the
    /// indexed document and the container is indexed.
    pub(super) fn end(&self, text: &[u8], start: usize) -> Option<usize> {
        let offset = (text.as_ptr() as usize).checked_sub(self.base)?;
        let at = offset + start;
        if at >= self.len {
            return None;
        }
        let k = self.large.binary_search_by_key(&(at as u32), |e| e.0).ok()?;
        Some(self.large[k].1 as usize - offset)
    }
}

/// Deeper JSON is left to the parsed path (serde_json's parser stops at 128).
pub(super) const MAX_DEPTH: usize = 120;

/// What a byte is inside a string: plain, the closing quote, an escape, a control character
/// (refused), or part of a multi-byte UTF-8 sequence (checked per string).
const PLAIN: u8 = 0;
const QUOTE: u8 = 1;
const ESCAPE: u8 = 2;
const CONTROL: u8 = 3;
const NON_ASCII: u8 = 4;
const IN_STRING: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = if c < 0x20 {
            CONTROL
        } else if c >= 0x80 {
            NON_ASCII
        } else {
            PLAIN
        };
        c += 1;
    }
    t[b'"' as usize] = QUOTE;
    t[b'\\' as usize] = ESCAPE;
    t
};

/// Which of eight bytes of a string need a look (a quote, a backslash, a control character,
/// a byte of a multi-byte character): the high bit of each such byte's place, read little
/// endian. Only the lowest set bit is exact (a borrow may flag a plain byte above a flagged
/// one), and that is the one used.
#[inline]
fn needs_a_look(chunk: [u8; 8]) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let w = u64::from_le_bytes(chunk);
    // The high bit of each zero byte of v (exact up to the first).
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let quote = zero(w ^ (ONES * b'"' as u64));
    let backslash = zero(w ^ (ONES * b'\\' as u64));
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    (quote | backslash | control | w) & (ONES * 0x80)
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether a number is surely within `f64`'s range (serde_json refuses the others): under
/// 300 characters, or in exponent form under 40 with an exponent of at most 250 either way.
fn in_range(n: &[u8]) -> bool {
    let Some(e) = n.iter().position(|c| matches!(c, b'e' | b'E')) else {
        return n.len() < 300;
    };
    let exponent = std::str::from_utf8(&n[e + 1..]).ok().and_then(|x| x.parse::<i32>().ok());
    n.len() < 40 && exponent.is_some_and(|x| x.abs() <= 250)
}

/// Whether a string's `\u` escapes name UTF-16 surrogates other than in pairs (a high one
/// followed at once by a low one), which serde_json refuses.
pub(super) fn lone_surrogate(s: &[u8]) -> bool {
    let unit = |at: usize| -> Option<u16> {
        let hex = s.get(at..at + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    };
    let mut i = 0;
    while i + 1 < s.len() {
        if s[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(i) {
            Some(0xD800..=0xDBFF) => match unit(i + 6) {
                Some(0xDC00..=0xDFFF) => i += 12,
                _ => return true,
            },
            Some(0xDC00..=0xDFFF) => return true,
            _ => i += 2,
        }
    }
    false
}

/// The scan's place in the body, and the compact copy, made only once whitespace is found.
struct Scan<'b> {
    b: &'b [u8],
    i: usize,
    out: Option<Vec<u8>>,
    /// Where the text not yet copied to `out` starts.
    run: usize,
    /// Whitespace dropped so far: the compact text's place is `i - removed`.
    removed: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips whitespace between tokens (copying the text before it, if there is any).
    #[inline]
    fn space(&mut self) {
        if self.peek().is_some_and(is_space) {
            self.skip_space();
        }
    }

    #[cold]
    fn skip_space(&mut self) {
        let b = self.b;
        self.out.get_or_insert_with(|| Vec::with_capacity(b.len())).extend_from_slice(&b[self.run..self.i]);
        let start = self.i;
        while self.peek().is_some_and(is_space) {
            self.i += 1;
        }
        self.removed += self.i - start;
        self.run = self.i;
    }

    /// A string, from its opening quote: escapes as JSON has them, no control characters,
    /// valid UTF-8, no lone surrogate escapes.
    fn string(&mut self) -> Option<()> {
        let b = self.b;
        let start = self.i;
        let mut i = start + 1;
        let (mut unicode, mut non_ascii) = (false, false);
        loop {
            // Eight bytes at a time to the first that needs a look.
            if let Some(chunk) = b.get(i..i + 8) {
                let flagged = needs_a_look(chunk.try_into().expect("eight bytes"));
                if flagged == 0 {
                    i += 8;
                    continue;
                }
                i += flagged.trailing_zeros() as usize / 8;
            }
            match IN_STRING[*b.get(i)? as usize] {
                PLAIN => i += 1,
                QUOTE => break,
                ESCAPE => match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => {
                        unicode = true;
                        i += 6;
                    }
                    _ => return None,
                },
                NON_ASCII => {
                    non_ascii = true;
                    i += 1;
                }
                _ => return None,
            }
        }
        if non_ascii && std::str::from_utf8(&b[start + 1..i]).is_err() {
            return None;
        }
        if unicode && lone_surrogate(&b[start + 1..i]) {
            return None;
        }
        self.i = i + 1;
        Some(())
    }

    /// A member's key and its colon, from the key's opening quote.
    fn key(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.string()?;
        self.space();
        if self.peek()? != b':' {
            return None;
        }
        self.i += 1;
        Some(())
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, within `f64`'s range.
    fn number(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        in_range(&self.b[start..self.i]).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? != word {
            return None;
        }
        self.i += word.len();
        Some(())
    }
}

/// `body` as compact JSON text (whitespace outside strings dropped) with its index, if it is
/// JSON the raw path reads exactly as serde_json would: valid JSON and UTF-8, nested at most
/// [`MAX_DEPTH`] deep, with every number surely within `f64`'s range and no `\u` escape of a
/// lone surrogate. A compact body (perhaps with whitespace around it) is shared, not copied.
/// `None` sends the body the parsed way.
pub fn compact(body: &Bytes) -> Option<Text> {
    let start = body.iter().position(|&c| !is_space(c))?;
    let end = body.len() - body.iter().rev().position(|&c| !is_space(c)).unwrap_or(0);
    let body = body.slice(start..end);
    let mut s = Scan { b: &body, i: 0, out: None, run: 0, removed: 0 };
    // Bit d of `objects` is whether the container at depth d is an object; `starts[d]` where
    // it starts in the compact text.
    let (mut objects, mut depth) = (0u128, 0usize);
    let (mut large, mut starts) = (Vec::<(u32, u32)>::new(), [0u32; MAX_DEPTH + 1]);
    let indexed = body.len() <= u32::MAX as usize;
    'value: loop {
        s.space();
        match s.peek()? {
            open @ (b'{' | b'[') => {
                let at = s.i - s.removed;
                s.i += 1;
                s.space();
                let object = open == b'{';
                if s.peek()? == if object { b'}' } else { b']' } {
                    s.i += 1;
                } else {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    starts[depth] = at as u32;
                    if object {
                        objects |= 1 << depth;
                        s.key()?;
                    } else {
                        objects &= !(1 << depth);
                    }
                    continue 'value;
                }
            }
            b'"' => s.string()?,
            b'-' | b'0'..=b'9' => s.number()?,
            b't' => s.literal(b"true")?,
            b'f' => s.literal(b"false")?,
            b'n' => s.literal(b"null")?,
            _ => return None,
        }
        // After a value: the next item, or the end of its container, or of the body.
        loop {
            if depth == 0 {
                if s.i != s.b.len() {
                    return None;
                }
                break 'value;
            }
            s.space();
            let object = objects >> depth & 1 == 1;
            match s.peek()? {
                b',' => {
                    s.i += 1;
                    if object {
                        s.space();
                        s.key()?;
                    }
                    continue 'value;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            s.i += 1;
            let (start, end) = (starts[depth] as usize, s.i - s.removed);
            if indexed && end - start >= INDEXED {
                large.push((start as u32, end as u32));
            }
            depth -= 1;
        }
    }
    let bytes = match s.out {
        None => body,
        Some(mut out) => {
            out.extend_from_slice(&body[s.run..]);
            Bytes::from(out)
        }
    };
    // Listed as they closed (inner ones first); looked up by where they start.
    large.sort_unstable();
    Some(Text { bytes, large: (!large.is_empty()).then(|| Arc::from(large)) })
}

#[cfg(test)]
mod tests {
    use super::{compact, INDEXED};
    use bytes::Bytes;
    use serde_json::{json, Value};

    /// Texts with every part of the grammar: nesting, empty containers, escapes of each kind,
    /// a surrogate pair, non-ASCII text, numbers in each form, literals, whitespace.
    const SEEDS: [&str; 4] = [
        r#"{"a":[1,-2.5,0,-0.0e-1,3e2],"b":{"c":null,"d":true,"e":false},"f":[],"g":{}}"#,
        "[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\",\"h\u{e9}\u{1f600}\"]",
        " { \"k\" : [ 1 , { \"x\" : \"y z\" } ] ,\n\t\"l\" : 10 }\r\n",
        "[12.25E+3,\"\",[[]],{\"\":0}]",
    ];

    fn serde_reads(body: &[u8]) -> Option<Value> {
        serde_json::from_slice(body).ok()
    }

    /// Takes exactly what serde_json reads, and gives the same JSON without whitespace
    /// outside strings.
    fn agrees(body: &[u8]) {
        let text = compact(&Bytes::copy_from_slice(body));
        let parsed = serde_reads(body);
        assert_eq!(text.is_some(), parsed.is_some(), "{:?}", String::from_utf8_lossy(body));
        if let (Some(text), Some(parsed)) = (text, parsed) {
            assert_eq!(serde_reads(&text), Some(parsed.clone()));
            let (mut in_string, mut escaped) = (false, false);
            for &c in text.iter() {
                assert!(
                    in_string || !matches!(c, b' ' | b'\t' | b'\n' | b'\r'),
                    "{:?}",
                    String::from_utf8_lossy(&text)
                );
                (in_string, escaped) = match (in_string, escaped, c) {
                    (true, false, b'\\') => (true, true),
                    (true, false, b'"') | (false, _, b'"') => (!in_string, false),
                    _ => (in_string, false),
                };
            }
        }
    }

    #[test]
    fn each_seed_is_taken_and_made_compact() {
        for seed in SEEDS {
            agrees(seed.as_bytes());
            assert!(compact(&Bytes::from(seed)).is_some(), "{seed}");
        }
        let spaced = compact(&Bytes::from(SEEDS[2])).unwrap();
        assert_eq!(&spaced[..], br#"{"k":[1,{"x":"y z"}],"l":10}"#);
    }

    /// Every seed with one byte replaced, removed or inserted, at every place: the scan takes
    /// the text exactly when serde_json reads it. A grammar rule the scan missed or made up
    /// shows here as a disagreement.
    #[test]
    fn takes_a_mutated_text_exactly_when_serde_json_reads_it() {
        let bytes: &[u8] = b"{}[]\":,\\ -+.eE019tfnulrsabx/\n\t\r\x00\x1f\x7f\xc3\xa9\xff\xed\xa0\x80";
        let mut checked = 0;
        for seed in SEEDS {
            let seed = seed.as_bytes();
            for at in 0..=seed.len() {
                for &c in bytes {
                    let mut m = seed.to_vec();
                    m.insert(at, c);
                    agrees(&m);
                    if at < seed.len() {
                        let mut m = seed.to_vec();
                        m[at] = c;
                        agrees(&m);
                    }
                    checked += 1;
                }
                if at < seed.len() {
                    let mut m = seed.to_vec();
                    m.remove(at);
                    agrees(&m);
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
    }

    /// Strings long enough to be read eight bytes at a time: every byte value at each of the
    /// first 24 places of a string with an escape and a two-byte character (so in each place
    /// of an eight-byte word, and in and next to both), and a second string after it, taken
    /// exactly when serde_json takes them.
    #[test]
    fn long_strings_take_each_byte_as_serde_json_does() {
        for at in 0..24 {
            for c in 0..=255u8 {
                let mut s = b"abcdefgh\\u00e9ijkl\xc3\xa9mnopq".to_vec();
                s[at] = c;
                let mut body = b"[\"".to_vec();
                body.extend_from_slice(&s);
                body.extend_from_slice(b"\",\"0123456789abcdefghij\"]");
                agrees(&body);
            }
        }
        assert!(compact(&Bytes::from_static(b"[\"0123456789abcdef\x01\"]")).is_none());
        assert!(compact(&Bytes::from_static(b"[\"0123456789abcdef\xff\"]")).is_none());
    }

    /// Every container of the compact text, (start, end), by start: read with a stack.
    fn containers(text: &[u8]) -> Vec<(u32, u32)> {
        let (mut all, mut open, mut in_string, mut escaped) = (Vec::new(), Vec::new(), false, false);
        for (i, &c) in text.iter().enumerate() {
            if in_string {
                (in_string, escaped) = (escaped || c != b'"', !escaped && c == b'\\');
                continue;
            }
            match c {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    open.push(all.len());
                    all.push((i as u32, 0));
                }
                b'}' | b']' => all[open.pop().unwrap()].1 = i as u32 + 1,
                _ => {}
            }
        }
        all
    }

    #[test]
    fn large_containers_are_indexed_where_the_compact_text_has_them() {
        let row =
            |i: usize| json!({"id": i, "name": format!("row [{i}] \"{{\" of twelve"), "tags": ["a", "b", {"c": [i]}]});
        let doc = json!({"meta": {"n": 1, "s": "}]"}, "rows": (0..12).map(row).collect::<Vec<_>>(), "empty": [[], {}], "tail": "x"});
        for body in [serde_json::to_vec(&doc).unwrap(), serde_json::to_vec_pretty(&doc).unwrap()] {
            let text = compact(&Bytes::from(body)).unwrap();
            let large: Vec<_> = containers(&text).into_iter().filter(|(a, b)| (b - a) as usize >= INDEXED).collect();
            assert!(large.len() > 12, "the document and its rows: {large:?}");
            assert_eq!(text.large.as_deref().unwrap(), &large[..]);
            // Looked up from a slice of the document, in the slice's own offsets.
            let index = text.index();
            let (start, end) = large[2];
            let slice = &text[start as usize - 3..];
            assert_eq!(index.end(slice, 3), Some((end - start) as usize + 3));
            assert_eq!(index.end(slice, 4), None, "not a container's start");
            assert_eq!(index.end(b"[1]", 0), None, "not this document's text");
        }
        // Small containers are not indexed, and text too small has no index at all.
        assert_eq!(compact(&Bytes::from_static(b"{\"a\":[1,2,3]}")).unwrap().large, None);
    }

    #[test]
    fn what_the_parsed_way_must_decide_is_left_to_it() {
        // serde_json reads these, but the text diff does not take them.
        let deep = format!("{}1{}", "[".repeat(121), "]".repeat(121));
        let fine = format!("{}1{}", "[".repeat(120), "]".repeat(120));
        assert!(compact(&Bytes::from(deep)).is_none());
        assert!(compact(&Bytes::from(fine)).is_some());
        assert!(compact(&Bytes::from_static(b"[1e299]")).is_none(), "a number near f64's edge");
        // And these serde_json refuses.
        for refused in
            [&b"\"\\ud800\""[..], b"\"\\udc00\\ud800\"", b"\"\\ud800\\u0041\"", b"[1e400]", b"\"\xed\xa0\x80\""]
        {
            assert!(compact(&Bytes::copy_from_slice(refused)).is_none(), "{refused:?}");
            assert!(serde_reads(refused).is_none(), "{refused:?}");
        }
    }
}
