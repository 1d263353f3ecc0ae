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
pub const INDEXED: usize = 32;

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

    /// Where its large containers start and end, by start (for the fuzz checks).
    pub fn index_entries(&self) -> &[(u32, u32)] {
        self.large.as_deref().unwrap_or(&[])
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
    ///
    /// It tries the entry at `hint` before searching, and leaves `hint` just after the entry
    /// found (`usize::MAX` for no hint). The items of a container are looked up in order, and
    /// when none of them holds a large container of its own, each one's entry follows the one
    /// before.
    pub(super) fn end_near(&self, text: &[u8], start: usize, hint: &mut usize) -> Option<usize> {
        let offset = (text.as_ptr() as usize).checked_sub(self.base)?;
        let at = offset + start;
        if at >= self.len {
            return None;
        }
        let k = match self.large.get(*hint) {
            Some(&(from, _)) if from as usize == at => *hint,
            _ => self.large.binary_search_by_key(&(at as u32), |e| e.0).ok()?,
        };
        *hint = k + 1;
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
    /// Bytes stepped over as the previous document's (see [`compact_after`]).
    stepped: usize,
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
    compact_after(body, None)
}

/// [`compact`], reading the last document's text (`previous`) alongside while the two keep
/// the same shape: a large container whose bytes are those of the container at the same
/// place in `previous` is stepped over, not read (it is the same JSON at the same depth), and
/// its index entries are `previous`'s, moved. The answer is exactly `compact`'s; only a body
/// that mostly repeats the last one costs less.
pub fn compact_after(body: &Bytes, previous: Option<&Text>) -> Option<Text> {
    scan(body, previous).map(|(text, _)| text)
}

/// [`compact_after`], and how many of the body's bytes were stepped over.
fn scan(body: &Bytes, previous: Option<&Text>) -> Option<(Text, usize)> {
    let start = body.iter().position(|&c| !is_space(c))?;
    let end = body.len() - body.iter().rev().position(|&c| !is_space(c)).unwrap_or(0);
    let body = body.slice(start..end);
    let mut s = Scan { b: &body, i: 0, out: None, run: 0, removed: 0, stepped: 0 };
    // Bit d of `objects` is whether the container at depth d is an object; `starts[d]` where
    // it starts in the compact text.
    let (mut objects, mut depth) = (0u128, 0usize);
    // `marks[d]`: how many entries `large` had when the container at depth d opened. Entries
    // are put in by start (a container's before those inside it), so they need no sorting.
    let (mut large, mut starts, mut marks) = (Vec::<(u32, u32)>::new(), [0u32; MAX_DEPTH + 1], [0u32; MAX_DEPTH + 1]);
    if let Some(previous) = previous {
        large.reserve(previous.large.as_deref().map_or(0, <[_]>::len));
    }
    let indexed = body.len() <= u32::MAX as usize;
    let mut echo = previous.filter(|_| indexed).and_then(Echo::new);
    'value: loop {
        s.space();
        match s.peek()? {
            b'{' | b'[' if echo.as_mut().is_some_and(|e| e.step_over(&mut s, &mut large)) => {}
            open @ (b'{' | b'[') => {
                let at = s.i - s.removed;
                s.i += 1;
                s.space();
                let object = open == b'{';
                let close = if object { b'}' } else { b']' };
                follow(&mut echo, |e| e.byte(open));
                if s.peek()? == close {
                    s.i += 1;
                    follow(&mut echo, |e| e.byte(close));
                } else {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    starts[depth] = at as u32;
                    marks[depth] = large.len() as u32;
                    if object {
                        objects |= 1 << depth;
                        s.key()?;
                        follow(&mut echo, Echo::key);
                    } else {
                        objects &= !(1 << depth);
                    }
                    continue 'value;
                }
            }
            b'"' => {
                s.string()?;
                follow(&mut echo, Echo::string);
            }
            b'-' | b'0'..=b'9' => {
                s.number()?;
                follow(&mut echo, Echo::number);
            }
            b't' => {
                s.literal(b"true")?;
                follow(&mut echo, |e| e.literal(b"true"));
            }
            b'f' => {
                s.literal(b"false")?;
                follow(&mut echo, |e| e.literal(b"false"));
            }
            b'n' => {
                s.literal(b"null")?;
                follow(&mut echo, |e| e.literal(b"null"));
            }
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
                    follow(&mut echo, |e| e.byte(b','));
                    if object {
                        s.space();
                        s.key()?;
                        follow(&mut echo, Echo::key);
                    }
                    continue 'value;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            follow(&mut echo, |e| e.byte(s.b[s.i]));
            s.i += 1;
            let (start, end) = (starts[depth] as usize, s.i - s.removed);
            if indexed && end - start >= INDEXED {
                large.insert(marks[depth] as usize, (start as u32, end as u32));
            }
            depth -= 1;
        }
    }
    let stepped = s.stepped;
    let bytes = match s.out {
        None => body,
        Some(mut out) => {
            out.extend_from_slice(&body[s.run..]);
            Bytes::from(out)
        }
    };
    Some((Text { bytes, large: (!large.is_empty()).then(|| Arc::from(large)) }, stepped))
}

/// The last document's compact text, read alongside a new body while both have the same
/// shape: the same tokens of the same kinds, opened and closed at the same places. Each step
/// of the new body's scan is mirrored here; the first that does not match ends the echo.
struct Echo<'p> {
    text: &'p [u8],
    j: usize,
    large: &'p [(u32, u32)],
    /// The first entry of `large` that can start at or after `j`.
    next: usize,
}

/// Mirrors one step of the scan on `echo`, and ends it when the previous text differs there.
fn follow<'p>(echo: &mut Option<Echo<'p>>, step: impl FnOnce(&mut Echo<'p>) -> bool) {
    if echo.as_mut().is_some_and(|e| !step(e)) {
        *echo = None;
    }
}

impl<'p> Echo<'p> {
    fn new(previous: &'p Text) -> Option<Echo<'p>> {
        Some(Echo { text: &previous.bytes, j: 0, large: previous.large.as_deref()?, next: 0 })
    }

    fn byte(&mut self, c: u8) -> bool {
        let same = self.text.get(self.j) == Some(&c);
        self.j += same as usize;
        same
    }

    /// A string of the previous text (valid: only its end is looked for).
    fn string(&mut self) -> bool {
        if self.text.get(self.j) != Some(&b'"') {
            return false;
        }
        let mut j = self.j + 1;
        loop {
            if let Some(chunk) = self.text.get(j..j + 8) {
                let flagged = needs_a_look(chunk.try_into().expect("eight bytes"));
                if flagged == 0 {
                    j += 8;
                    continue;
                }
                j += flagged.trailing_zeros() as usize / 8;
            }
            match self.text.get(j) {
                Some(b'"') => break,
                Some(b'\\') => j += 2,
                Some(_) => j += 1,
                None => return false,
            }
        }
        self.j = j + 1;
        true
    }

    fn key(&mut self) -> bool {
        self.string() && self.byte(b':')
    }

    fn number(&mut self) -> bool {
        if !matches!(self.text.get(self.j), Some(b'-' | b'0'..=b'9')) {
            return false;
        }
        self.j += 1;
        while matches!(self.text.get(self.j), Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')) {
            self.j += 1;
        }
        true
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let same = self.text.get(self.j..self.j + word.len()) == Some(word);
        self.j += if same { word.len() } else { 0 };
        same
    }

    /// Steps `s` over the container at its place if the previous text has a large container
    /// here with the same bytes, and records its index entries (and those of the large
    /// containers in it) where they now are. The echo has matched every bracket so far, so
    /// the container is at the depth it had, which kept it within [`MAX_DEPTH`].
    fn step_over(&mut self, s: &mut Scan<'_>, large: &mut Vec<(u32, u32)>) -> bool {
        let j = self.j as u32;
        // After a container stepped over, the next large one is often next.
        let k = match self.large.get(self.next) {
            Some(e) if e.0 == j => self.next,
            _ => {
                self.next += self.large[self.next..].partition_point(|e| e.0 < j);
                match self.large.get(self.next) {
                    Some(e) if e.0 == j => self.next,
                    _ => return false,
                }
            }
        };
        let (start, mut end) = self.large[k];
        // The new body's bytes for the previous text's `from..to`.
        let same = |from: u32, to: u32| {
            let new = s.b.get(s.i + (from - start) as usize..s.i + (to - start) as usize);
            new == Some(&self.text[from as usize..to as usize])
        };
        if !same(start, end) {
            return false;
        }
        // Large items that follow it in its array (a comma, then at once a bracket: only an
        // array's items follow each other so), as long as they are the same too.
        let mut past = self.past(k, end);
        while self.text.get(end as usize) == Some(&b',') {
            match self.large.get(past) {
                Some(&(a, b)) if a == end + 1 && same(end, b) => {
                    end = b;
                    past = self.past(past, b);
                }
                _ => break,
            }
        }
        let at = (s.i - s.removed) as u32;
        large.extend(self.large[k..past].iter().map(|&(a, b)| (a - start + at, b - start + at)));
        let len = (end - start) as usize;
        s.i += len;
        s.stepped += len;
        self.j += len;
        self.next = past;
        true
    }

    /// The first entry after entry `k` (which ends at `end`) and the entries inside it.
    fn past(&self, k: usize, end: u32) -> usize {
        match self.large.get(k + 1) {
            Some(e) if e.0 < end => k + self.large[k..].partition_point(|e| e.0 < end),
            _ => k + 1,
        }
    }
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
