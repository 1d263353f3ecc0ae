//! Every container of compact JSON text, (start, end), by start: read with a stack, apart from
//! the scan that indexes them. Shared by the scan's tests and the `diff_text` fuzz check.

pub fn containers(text: &[u8]) -> Vec<(u32, u32)> {
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
