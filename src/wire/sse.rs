//! Incremental Server-Sent Events parsing (WHATWG framing).
//!
//! Bytes arrive in arbitrary pieces: an event, a line, even a CRLF pair may be split across
//! reads. Lines end in LF, CRLF or CR; an event ends at a blank line; the `data:` lines of one
//! event are joined with `\n`; one space after the colon is dropped; `:` lines are comments.
//! Memory is bounded: an event's data beyond `max_event_bytes` is dropped and the event is
//! flagged as oversized.

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field, if any.
    pub event: Option<String>,
    pub data: Vec<u8>,
    /// Some data was dropped because the event exceeded the bound.
    pub oversized: bool,
}

/// The incremental parser. Feed it bytes; it calls back once per complete event.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    line_overflow: bool,
    after_cr: bool,
    current: Event,
    has_data: bool,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(8 * 1024 * 1024)
    }
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            line_overflow: false,
            after_cr: false,
            current: Event::default(),
            has_data: false,
            max_event_bytes,
        }
    }

    /// Feeds bytes; `on_event` is called for every event completed by them.
    pub fn feed(&mut self, mut bytes: &[u8], on_event: &mut dyn FnMut(Event)) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.push_line_bytes(bytes);
                    return;
                }
                Some(i) => {
                    self.push_line_bytes(&bytes[..i]);
                    let was_cr = bytes[i] == b'\r';
                    bytes = &bytes[i + 1..];
                    if was_cr {
                        if bytes.is_empty() {
                            self.after_cr = true;
                        } else if bytes[0] == b'\n' {
                            bytes = &bytes[1..];
                        }
                    }
                    self.end_line(on_event);
                }
            }
        }
    }

    fn push_line_bytes(&mut self, b: &[u8]) {
        let room = self.max_event_bytes.saturating_sub(self.line.len());
        if b.len() > room {
            self.line.extend_from_slice(&b[..room]);
            self.line_overflow = true;
        } else {
            self.line.extend_from_slice(b);
        }
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(Event)) {
        let line = std::mem::take(&mut self.line);
        let overflow = std::mem::replace(&mut self.line_overflow, false);
        if line.is_empty() && !overflow {
            if self.has_data || self.current.event.is_some() {
                let ev = std::mem::take(&mut self.current);
                self.has_data = false;
                on_event(ev);
            }
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.current.data.push(b'\n');
                }
                self.has_data = true;
                let room = self.max_event_bytes.saturating_sub(self.current.data.len());
                if value.len() > room || overflow {
                    self.current.data.extend_from_slice(&value[..room.min(value.len())]);
                    self.current.oversized = true;
                } else {
                    self.current.data.extend_from_slice(value);
                }
            }
            b"event" => self.current.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }

    /// True when a partial event is pending (the stream stopped inside an event).
    pub fn has_partial(&self) -> bool {
        self.has_data || !self.line.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<Event> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            p.feed(chunk, &mut |e| out.push(e));
        }
        out
    }

    #[test]
    fn all_line_endings_and_any_split() {
        for sep in ["\n", "\r\n", "\r"] {
            let text = format!("event: a{sep}data: one{sep}data:two{sep}{sep}: comment{sep}data: {{\"x\":1}}{sep}{sep}");
            for piece in 1..8 {
                let events = parse_in_pieces(text.as_bytes(), piece);
                assert_eq!(events.len(), 2, "sep {sep:?} piece {piece}");
                assert_eq!(events[0].event.as_deref(), Some("a"));
                assert_eq!(events[0].data, b"one\ntwo");
                assert_eq!(events[1].data, b"{\"x\":1}");
            }
        }
    }

    #[test]
    fn incomplete_event_is_not_emitted() {
        let mut p = SseParser::default();
        let mut n = 0;
        p.feed(b"data: {\"a\":1}\n\ndata: {\"b\"", &mut |_| n += 1);
        assert_eq!(n, 1);
        assert!(p.has_partial());
    }

    #[test]
    fn oversized_events_are_bounded() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        p.feed(b"data: 0123456789abcdefghijklmnop\n\ndata: ok\n\n", &mut |e| out.push(e));
        assert_eq!(out.len(), 2);
        assert!(out[0].oversized);
        assert!(out[0].data.len() <= 16);
        assert_eq!(out[1].data, b"ok");
        assert!(!out[1].oversized);
    }
}
