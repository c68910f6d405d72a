//! A streaming JSON scanner that picks a few members out of a body without holding it.
//!
//! Responses can be large (base64 images, long answers) and arrive in arbitrary pieces, and
//! Gemini's non-SSE stream is one JSON array whose elements arrive over time. The scanner
//! tracks nesting and strings byte by byte, and captures the raw text of the wanted members
//! of each *record*: the top-level object (`record_depth` 1) or each element of a top-level
//! array (`record_depth` 2). Captures are committed when their record closes, so a record cut
//! short never counts. It can also count how often a key occurs anywhere in a record.
//! Memory is bounded by the captured values (each capped) and the nesting limit.

/// Most bytes captured for one member; a longer value is dropped.
const MAX_CAPTURE: usize = 256 * 1024;
/// Deepest nesting tracked before the body is declared malformed.
const MAX_DEPTH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// In an object; `true` while the next string is a key.
    Object {
        expect_key: bool,
    },
    Array,
}

/// What one committed record held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// `(key, raw JSON value)` for each wanted member present.
    pub members: Vec<(&'static str, Vec<u8>)>,
    /// Occurrences of each counted key, in the order given.
    pub counts: Vec<u64>,
}

impl Record {
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.members.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.as_slice())
    }
}

#[derive(Debug)]
pub struct JsonScanner {
    wanted: &'static [&'static str],
    counted: &'static [&'static str],
    record_depth: usize,
    stack: Vec<Frame>,
    in_string: bool,
    escape: bool,
    string_is_key: bool,
    key: Vec<u8>,
    key_overflow: bool,
    pending: Option<&'static str>,
    capture: Option<(&'static str, usize, Vec<u8>, bool)>,
    staged: Record,
    records: u64,
    malformed: bool,
    seen_any: bool,
}

impl JsonScanner {
    /// `wanted`: member names captured at the record level; `counted`: key names counted at
    /// any depth inside a record.
    pub fn new(record_depth: usize, wanted: &'static [&'static str], counted: &'static [&'static str]) -> Self {
        Self {
            wanted,
            counted,
            record_depth,
            stack: Vec::new(),
            in_string: false,
            escape: false,
            string_is_key: false,
            key: Vec::new(),
            key_overflow: false,
            pending: None,
            capture: None,
            staged: Record {
                members: Vec::new(),
                counts: vec![0; counted.len()],
            },
            records: 0,
            malformed: false,
            seen_any: false,
        }
    }

    /// Records completed so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The body was not JSON of the expected shape.
    pub fn malformed(&self) -> bool {
        self.malformed
    }

    /// True when the body ended exactly at the end of the top-level value.
    pub fn at_top_level(&self) -> bool {
        self.stack.is_empty() && !self.in_string
    }

    /// Feeds bytes; `on_record` is called for every record completed by them.
    pub fn feed(&mut self, bytes: &[u8], on_record: &mut dyn FnMut(Record)) {
        if self.malformed {
            return;
        }
        for &b in bytes {
            self.step(b, on_record);
            if self.malformed {
                return;
            }
        }
    }

    fn step(&mut self, b: u8, on_record: &mut dyn FnMut(Record)) {
        let depth = self.stack.len();
        if let Some((_, cap_depth, buf, overflow)) = &mut self.capture {
            if !self.in_string && depth == *cap_depth && (b == b',' || b == b'}') {
                let (key, _, mut buf, overflow) = self.capture.take().expect("capture is set");
                while buf.last().is_some_and(u8::is_ascii_whitespace) {
                    buf.pop();
                }
                if !overflow {
                    self.staged.members.push((key, buf));
                }
            } else if !(buf.is_empty() && b.is_ascii_whitespace()) {
                if buf.len() < MAX_CAPTURE {
                    buf.push(b);
                } else {
                    *overflow = true;
                }
            }
        }
        if self.in_string {
            if self.escape {
                self.escape = false;
                self.push_key_byte(b);
            } else if b == b'\\' {
                self.escape = true;
                self.push_key_byte(b);
            } else if b == b'"' {
                self.in_string = false;
                if self.string_is_key {
                    self.end_key();
                }
            } else {
                self.push_key_byte(b);
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.string_is_key = matches!(self.stack.last(), Some(Frame::Object { expect_key: true }));
                self.key.clear();
                self.key_overflow = false;
            }
            b'{' | b'[' => {
                if self.stack.is_empty() && self.seen_any {
                    self.malformed = true;
                    return;
                }
                self.seen_any = true;
                if self.stack.len() >= MAX_DEPTH {
                    self.malformed = true;
                    return;
                }
                self.stack.push(if b == b'{' { Frame::Object { expect_key: true } } else { Frame::Array });
                if self.stack.len() == self.record_depth && b == b'{' {
                    self.staged.members.clear();
                    self.staged.counts.iter_mut().for_each(|c| *c = 0);
                }
            }
            b'}' | b']' => {
                let expected = if b == b'}' {
                    matches!(self.stack.last(), Some(Frame::Object { .. }))
                } else {
                    matches!(self.stack.last(), Some(Frame::Array))
                };
                if !expected {
                    self.malformed = true;
                    return;
                }
                let closing_record = self.stack.len() == self.record_depth && b == b'}';
                self.stack.pop();
                if closing_record {
                    self.records += 1;
                    let counts = vec![0; self.counted.len()];
                    let record = std::mem::replace(&mut self.staged, Record { members: Vec::new(), counts });
                    on_record(record);
                }
            }
            b':' => {
                if let Some(Frame::Object { expect_key }) = self.stack.last_mut() {
                    *expect_key = false;
                }
                if let Some(key) = self.pending.take() {
                    self.capture = Some((key, self.stack.len(), Vec::new(), false));
                }
            }
            b',' => {
                if let Some(Frame::Object { expect_key }) = self.stack.last_mut() {
                    *expect_key = true;
                }
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => {
                if self.stack.is_empty() {
                    // A scalar or garbage at the top level: not a body we can read.
                    self.malformed = true;
                }
            }
        }
    }

    fn push_key_byte(&mut self, b: u8) {
        if self.string_is_key {
            if self.key.len() < 128 {
                self.key.push(b);
            } else {
                self.key_overflow = true;
            }
        }
    }

    fn end_key(&mut self) {
        if self.key_overflow {
            return;
        }
        let depth = self.stack.len();
        if depth >= self.record_depth {
            if let Some(i) = self.counted.iter().position(|k| k.as_bytes() == self.key.as_slice()) {
                self.staged.counts[i] += 1;
            }
        }
        if depth == self.record_depth {
            self.pending = self.wanted.iter().copied().find(|k| k.as_bytes() == self.key.as_slice());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(depth: usize, input: &[u8], piece: usize) -> (Vec<Record>, JsonScanner) {
        let mut s = JsonScanner::new(depth, &["usage", "model", "error"], &["img"]);
        let mut out = Vec::new();
        for c in input.chunks(piece) {
            s.feed(c, &mut |r| out.push(r));
        }
        (out, s)
    }

    #[test]
    fn captures_top_level_members_only() {
        let body = br#"{"choices":[{"usage":"inner","x":"}\"{"}],"model" : "m-1","usage":{"a":1,"b":[1,2]} ,"z":true}"#;
        for piece in [1, 2, 3, 7, 100] {
            let (recs, s) = scan(1, body, piece);
            assert_eq!(recs.len(), 1);
            assert_eq!(recs[0].get("usage"), Some(&br#"{"a":1,"b":[1,2]}"#[..]));
            assert_eq!(recs[0].get("model"), Some(&br#""m-1""#[..]));
            assert!(!s.malformed());
        }
    }

    #[test]
    fn array_elements_are_records_and_counts_work() {
        let body = b"[{\r\n \"usage\": 1, \"img\": 1, \"d\": {\"img\": 2}\r\n}\r\n,\r\n{\"usage\": 2}\r\n]";
        for piece in [1, 4, 64] {
            let (recs, s) = scan(2, body, piece);
            assert_eq!(recs.len(), 2);
            assert_eq!(recs[0].get("usage"), Some(&b"1"[..]));
            assert_eq!(recs[0].counts, vec![2]);
            assert_eq!(recs[1].get("usage"), Some(&b"2"[..]));
            assert!(s.at_top_level());
        }
    }

    #[test]
    fn cut_record_is_not_committed() {
        let (recs, s) = scan(2, b"[{\"usage\": 1},{\"usage\": 2", 3);
        assert_eq!(recs.len(), 1);
        assert!(!s.at_top_level());
    }

    #[test]
    fn garbage_is_malformed() {
        let (recs, s) = scan(1, b"<html>oops</html>", 5);
        assert!(recs.is_empty());
        assert!(s.malformed());
        let (_, s) = scan(1, b"{\"a\":1}}", 5);
        assert!(s.malformed());
    }
}
