//! Gives a streaming client that did not ask for usage the stream it asked for, after the
//! proxy rewrote its request to ask for usage (`stream_options.include_usage`).
//!
//! With usage asked for, the upstream adds a `"usage":null` member to every chunk and one
//! extra chunk, just before `data: [DONE]`, with `"choices":[]` and the usage. This filter
//! removes both, event by event, and passes every other byte through unchanged: an event is
//! rewritten only by cutting the `usage` member (and the comma that joined it) out of its
//! `data:` line, or dropped whole (with its blank line). The output is byte for byte what the
//! upstream sends to a client that did not ask for usage.
//!
//! Only an incomplete event is held back (never a complete one). An event larger than
//! [`MAX_EVENT`] is not something a chat stream sends: the filter then gives up and passes
//! the rest of the body through as it comes.

use bytes::Bytes;

use crate::providers::BodyFilter;

/// Largest incomplete event held back before the filter stops filtering.
const MAX_EVENT: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct UsageFilter {
    /// Bytes of the incomplete event at the end of what was received.
    held: Vec<u8>,
    /// Scan position in `held` (everything before it contains no event end).
    pos: usize,
    /// Start of the current line in `held`.
    line_start: usize,
    /// Filtering stopped; everything passes through.
    passthrough: bool,
}

impl UsageFilter {
    /// The end (exclusive) of the first complete event in `held`, resuming the scan where the
    /// last call stopped. An event ends with an empty line; lines end in LF, CRLF or CR. A CR
    /// at the very end is not decided until the next byte (it may start a CRLF).
    fn next_event_end(&mut self) -> Option<usize> {
        let b = &self.held;
        while self.pos < b.len() {
            let c = b[self.pos];
            if c != b'\n' && c != b'\r' {
                self.pos += 1;
                continue;
            }
            let mut next = self.pos + 1;
            if c == b'\r' {
                match b.get(next) {
                    None => return None,
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                }
            }
            let empty_line = self.line_start == self.pos;
            self.pos = next;
            self.line_start = next;
            if empty_line {
                return Some(next);
            }
        }
        None
    }
}

impl BodyFilter for UsageFilter {
    fn filter(&mut self, chunk: &[u8]) -> Bytes {
        if self.passthrough {
            return Bytes::copy_from_slice(chunk);
        }
        self.held.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.held.len());
        let mut from = 0;
        while let Some(end) = self.next_event_end() {
            rewrite_event(&self.held[from..end], &mut out);
            from = end;
        }
        self.held.drain(..from);
        self.pos -= from;
        self.line_start -= from;
        if self.held.len() > MAX_EVENT {
            tracing::warn!(
                bytes = self.held.len(),
                "an SSE event too large to filter; the rest of the stream passes unfiltered"
            );
            self.passthrough = true;
            out.append(&mut self.held);
        }
        out.into()
    }

    fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        self.pos = 0;
        self.line_start = 0;
        if held.is_empty() {
            return Bytes::new();
        }
        // The body ended inside an event: rewrite it like a complete one.
        let mut out = Vec::with_capacity(held.len());
        rewrite_event(&held, &mut out);
        out.into()
    }
}

/// Appends the event as the client should see it: dropped when it is the usage chunk, without
/// its `usage: null` member otherwise, unchanged when it is anything else.
fn rewrite_event(event: &[u8], out: &mut Vec<u8>) {
    let mut data_lines = lines(event).filter_map(|(start, line)| data_payload(line).map(|(off, payload)| (start + off, payload)));
    let (Some((at, payload)), None) = (data_lines.next(), data_lines.next()) else {
        // No data, or data over several lines (not how these streams are written).
        out.extend_from_slice(event);
        return;
    };
    let Some(members) = top_level_members(payload) else {
        out.extend_from_slice(event);
        return;
    };
    let find = |key: &[u8]| members.iter().position(|m| &payload[m.key.0..m.key.1] == key);
    let value = |i: usize| &payload[members[i].value.0..members[i].value.1];
    let Some(u) = find(b"usage") else {
        out.extend_from_slice(event);
        return;
    };
    if value(u) != b"null" {
        if find(b"choices").is_some_and(|c| is_empty_array(value(c))) {
            // The usage chunk the client did not ask for.
            return;
        }
        out.extend_from_slice(event);
        return;
    }
    // Cut `"usage":null` and one comma that joined it to a neighbour.
    let (cut_start, cut_end) = if u > 0 {
        (members[u - 1].value.1, members[u].value.1)
    } else if members.len() > 1 {
        (members[u].start, members[u + 1].start)
    } else {
        (members[u].start, members[u].value.1)
    };
    out.extend_from_slice(&event[..at + cut_start]);
    out.extend_from_slice(&event[at + cut_end..]);
}

/// `(offset, line without its terminator)` for each line of an event.
fn lines(event: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= event.len() {
            return None;
        }
        let start = pos;
        let end = event[pos..].iter().position(|&c| c == b'\n' || c == b'\r').map_or(event.len(), |i| pos + i);
        pos = end;
        if event.get(pos) == Some(&b'\r') {
            pos += 1;
        }
        if event.get(pos) == Some(&b'\n') && (pos == end || event[end] == b'\r') {
            pos += 1;
        }
        Some((start, &event[start..end]))
    })
}

/// The value of a `data:` line, with its offset in the line.
fn data_payload(line: &[u8]) -> Option<(usize, &[u8])> {
    let rest = line.strip_prefix(b"data:")?;
    Some(match rest.strip_prefix(b" ") {
        Some(v) => (6, v),
        None => (5, rest),
    })
}

fn is_empty_array(v: &[u8]) -> bool {
    v.first() == Some(&b'[') && v.last() == Some(&b']') && v[1..v.len() - 1].iter().all(u8::is_ascii_whitespace)
}

/// One member of a JSON object, as byte ranges of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    /// Offset of the key's opening quote.
    start: usize,
    /// The key between its quotes (raw, escapes not decoded).
    key: (usize, usize),
    /// The value, from its first to its last byte.
    value: (usize, usize),
}

/// The members of a JSON object text, or None when it is not one well-formed object.
fn top_level_members(s: &[u8]) -> Option<Vec<Member>> {
    let mut i = skip_ws(s, 0);
    if s.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(s, i + 1);
    let mut members = Vec::new();
    if s.get(i) == Some(&b'}') {
        return (skip_ws(s, i + 1) == s.len()).then_some(members);
    }
    loop {
        if s.get(i) != Some(&b'"') {
            return None;
        }
        let start = i;
        let key_end = string_end(s, i)?;
        i = skip_ws(s, key_end + 1);
        if s.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(s, i + 1);
        let value_end = value_end(s, value_start)?;
        members.push(Member {
            start,
            key: (start + 1, key_end),
            value: (value_start, value_end),
        });
        i = skip_ws(s, value_end);
        match s.get(i) {
            Some(b',') => i = skip_ws(s, i + 1),
            Some(b'}') => return (skip_ws(s, i + 1) == s.len()).then_some(members),
            _ => return None,
        }
    }
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// Index of the closing quote of the string opening at `i`.
fn string_end(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            b'\\' => j += 2,
            b'"' => return Some(j),
            _ => j += 1,
        }
    }
    None
}

/// End (exclusive) of the value starting at `i`.
fn value_end(s: &[u8], i: usize) -> Option<usize> {
    match *s.get(i)? {
        b'"' => string_end(s, i).map(|e| e + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < s.len() {
                match s[j] {
                    b'"' => j = string_end(s, j)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let end = s[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'))
                .map_or(s.len(), |p| i + p);
            (end > i).then_some(end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openai").join(name)).unwrap()
    }

    fn run(input: &[u8], piece: usize) -> Vec<u8> {
        let mut f = UsageFilter::default();
        let mut out = Vec::new();
        for c in input.chunks(piece.max(1)) {
            out.extend_from_slice(&f.filter(c));
        }
        out.extend_from_slice(&f.finish());
        out
    }

    #[test]
    fn restores_the_stream_without_usage_byte_for_byte() {
        let with = fixture("chat_completions_stream_include_usage.sse");
        let without = fixture("chat_completions_stream_no_usage.sse");
        for piece in [1, 2, 3, 5, 17, 64, 333, with.len()] {
            assert_eq!(
                String::from_utf8(run(&with, piece)).unwrap(),
                String::from_utf8(without.clone()).unwrap(),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn holds_back_only_incomplete_events() {
        let mut f = UsageFilter::default();
        let out = f.filter(b"data: {\"a\":1,\"usage\":null}\n\ndata: {\"b\"");
        assert_eq!(&out[..], b"data: {\"a\":1}\n\n");
        let out = f.filter(b":2,\"usage\":null}\n");
        assert!(out.is_empty(), "the event is not finished");
        let out = f.filter(b"\n");
        assert_eq!(&out[..], b"data: {\"b\":2}\n\n");
        // A CR at the end may start a CRLF: held until the next byte.
        let out = f.filter(b"data: {\"usage\":null,\"c\":3}\r\n\r");
        assert!(out.is_empty());
        let out = f.filter(b"\ndata: [DONE]\r\n\r\n");
        assert_eq!(&out[..], b"data: {\"c\":3}\r\n\r\ndata: [DONE]\r\n\r\n");
        assert!(f.finish().is_empty());
    }

    #[test]
    fn member_positions_and_spacing() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"data: {\"usage\": null}\n\n", b"data: {}\n\n"),
            (
                b"data:{\"usage\" : null , \"x\":[1,{\"usage\":null}]}\n\n",
                b"data:{\"x\":[1,{\"usage\":null}]}\n\n",
            ),
            (
                b"data: {\"x\":\"a\\\"}\", \"usage\":null, \"y\":2}\n\n",
                b"data: {\"x\":\"a\\\"}\", \"y\":2}\n\n",
            ),
            (
                b"event: chunk\ndata: {\"x\":1,\"usage\":null}\nid: 7\n\n",
                b"event: chunk\ndata: {\"x\":1}\nid: 7\n\n",
            ),
            // A usage object with choices left is not the injected chunk.
            (
                b"data: {\"choices\":[{}],\"usage\":{\"prompt_tokens\":1}}\n\n",
                b"data: {\"choices\":[{}],\"usage\":{\"prompt_tokens\":1}}\n\n",
            ),
            (b"data: {\"choices\":[ ],\"usage\":{\"prompt_tokens\":1}}\n\n", b""),
        ];
        for (input, expected) in cases {
            assert_eq!(String::from_utf8_lossy(&run(input, 3)), String::from_utf8_lossy(expected));
        }
    }

    #[test]
    fn anything_else_passes_untouched() {
        for input in [
            &b"data: [DONE]\n\n"[..],
            b": keep-alive\n\n",
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
            b"data: {not json, \"usage\":null}\n\n",
            b"data: {\"a\":1}\ndata: {\"usage\":null}\n\n",
            b"\n\n\n",
            b"data: {\"usage\":null",
        ] {
            assert_eq!(run(input, 2), input, "{}", String::from_utf8_lossy(input));
        }
        // A last event without its blank line is still rewritten when it is whole.
        assert_eq!(run(b"data: {\"usage\":null,\"a\":1}", 4), b"data: {\"a\":1}");
    }

    #[test]
    fn oversized_events_stop_the_filter() {
        let mut f = UsageFilter::default();
        let big = vec![b'x'; MAX_EVENT + 1];
        let mut out = f.filter(b"data: ").to_vec();
        out.extend_from_slice(&f.filter(&big));
        out.extend_from_slice(&f.filter(b",\"usage\":null}\n\n"));
        assert_eq!(out.len(), 6 + big.len() + 16);
    }

    #[test]
    fn members_parse_strictly() {
        let m = top_level_members(br#" {"a" : [1, "]"], "b":{"c":"}"} ,"d":true} "#).unwrap();
        assert_eq!(m.len(), 3);
        assert!(top_level_members(b"{\"a\":1,}").is_none());
        assert!(top_level_members(b"{\"a\":1} x").is_none());
        assert!(top_level_members(b"[1]").is_none());
        assert!(top_level_members(b"{\"a\":[1}").is_none());
    }
}
