//! Anthropic: messages (plain and streamed); counting tokens is free.
//!
//! Usage: `input_tokens` excludes cache reads and writes, which are reported (and priced)
//! separately: `cache_creation_input_tokens`, split by TTL in `cache_creation` (all 5-minute
//! when the split is absent), and `cache_read_input_tokens`. `output_tokens` includes
//! thinking. Web searches are counted in `server_tool_use`.
//!
//! A stream carries the input side in `message_start` and cumulative counts in each
//! `message_delta`: the latest value of each field wins, falling back to `message_start`.
//! A stream that ends without a `message_delta` (cut, or an in-band `error` event) is charged
//! the input of `message_start` plus the output seen: the larger of the reported start count
//! and the text seen.

use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;

use super::json_body::{ErrorMark, JsonUsageBody, ToUsage};
use super::sse::{Event, SseParser};
use super::strict_json::{opt_bool, opt_str, opt_u64};
use super::{
    estimate_tokens, is_event_stream, output_tokens_from_text, reserve_output, text_bytes, Anomaly, BodyEnd, Call, Estimate, Provider, Refusal, RequestBody,
    RequestInfo, Settled, Source, Usage, UsageExtractor,
};
use crate::config::{ProviderKind, ReserveConfig};

pub struct Anthropic;

impl Provider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn classify(&self, req: &RequestInfo<'_>) -> Call {
        if *req.method != Method::POST {
            return Call::free("other", None);
        }
        let path = req.path.trim_end_matches('/');
        let path = path.strip_prefix("/v1").filter(|r| r.starts_with('/')).unwrap_or(path);
        match path {
            "/messages" => Call::metered("messages"),
            "/messages/count_tokens" => Call::free("count_tokens", None),
            // Batches are billed when their results are produced, out of sight of the proxy.
            _ => Call::free("other", None),
        }
    }

    fn estimate(&self, call: &mut Call, _req: &RequestInfo<'_>, body: &RequestBody<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
        let json = body.object()?;
        call.model = opt_str(json, "model")?.filter(|m| !m.is_empty()).map(str::to_string);
        call.streaming = opt_bool(json, "stream")? == Some(true);
        let input = estimate_tokens(text_bytes(json), reserve);
        Ok(Estimate {
            usage: Usage {
                input_tokens: input,
                output_tokens: reserve_output(opt_u64(json, "max_tokens")?, reserve),
                prompt_tokens: input,
                ..Usage::default()
            },
            ..Estimate::default()
        })
    }

    fn extractor(&self, call: &Call, _status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        if call.streaming && is_event_stream(headers) {
            Box::new(StreamExtractor::new(estimate))
        } else {
            Box::new(JsonUsageBody::<WireUsage>::new(estimate, ErrorMark::TypeIsError))
        }
    }
}

/// The `usage` object; absent fields are `None` so that a later, sparser report does not
/// erase what an earlier one said.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct WireUsage {
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation: Option<CacheCreation>,
    server_tool_use: Option<ServerToolUse>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct CacheCreation {
    ephemeral_5m_input_tokens: Option<u64>,
    ephemeral_1h_input_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct ServerToolUse {
    web_search_requests: Option<u64>,
}

impl ToUsage for WireUsage {
    fn to_usage(&self) -> Usage {
        WireUsage::to_usage(self)
    }
}

impl WireUsage {
    fn merge(&mut self, newer: &WireUsage) {
        macro_rules! take {
            ($($f:ident),*) => { $( if newer.$f.is_some() { self.$f = newer.$f.clone(); } )* };
        }
        take!(
            input_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
            output_tokens,
            cache_creation,
            server_tool_use
        );
    }

    fn to_usage(&self) -> Usage {
        let split = self.cache_creation.clone().unwrap_or_default();
        let split_1h = split.ephemeral_1h_input_tokens.unwrap_or(0);
        let written = self
            .cache_creation_input_tokens
            .unwrap_or_else(|| split.ephemeral_5m_input_tokens.unwrap_or(0).saturating_add(split_1h));
        let written_1h = split_1h.min(written);
        let input = self.input_tokens.unwrap_or(0);
        let read = self.cache_read_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: input,
            cached_input_tokens: read,
            cache_write_tokens: written - written_1h,
            cache_write_1h_tokens: written_1h,
            output_tokens: self.output_tokens.unwrap_or(0),
            web_searches: self.server_tool_use.as_ref().and_then(|s| s.web_search_requests).unwrap_or(0),
            prompt_tokens: input.saturating_add(read).saturating_add(written),
            ..Usage::default()
        }
    }
}

#[derive(Deserialize)]
struct StreamEvent {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    delta: Option<ContentDelta>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// The text-bearing fields of a `content_block_delta` (other delta kinds have none).
#[derive(Deserialize)]
struct ContentDelta {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
}

struct StreamExtractor {
    parser: SseParser,
    start: Option<WireUsage>,
    /// The merged `message_delta` reports, once one arrived.
    delta: Option<WireUsage>,
    model: Option<String>,
    text_bytes: u64,
    events: u64,
    bad_events: u64,
    error: bool,
    estimate: Usage,
}

impl StreamExtractor {
    fn new(estimate: &Usage) -> Self {
        Self {
            parser: SseParser::default(),
            start: None,
            delta: None,
            model: None,
            text_bytes: 0,
            events: 0,
            bad_events: 0,
            error: false,
            estimate: estimate.clone(),
        }
    }

    fn event(&mut self, ev: Event) {
        self.events += 1;
        if ev.oversized {
            self.bad_events += 1;
            return;
        }
        let Ok(e) = serde_json::from_slice::<StreamEvent>(&ev.data) else {
            self.bad_events += 1;
            return;
        };
        match e.kind.as_str() {
            "message_start" => {
                if let Some(m) = e.message {
                    self.model = m.model.or(self.model.take());
                    self.start = m.usage;
                }
            }
            "message_delta" => {
                if let Some(u) = &e.usage {
                    self.delta.get_or_insert_with(WireUsage::default).merge(u);
                }
            }
            "content_block_delta" => {
                if let Some(d) = &e.delta {
                    let len = |s: &Option<String>| s.as_deref().map_or(0, str::len) as u64;
                    self.text_bytes += len(&d.text) + len(&d.thinking) + len(&d.partial_json);
                }
            }
            "error" => self.error = true,
            _ => {}
        }
    }
}

impl UsageExtractor for StreamExtractor {
    fn feed(&mut self, chunk: &[u8]) {
        let mut events = Vec::new();
        self.parser.feed(chunk, &mut |ev| events.push(ev));
        for ev in events {
            self.event(ev);
        }
    }

    fn finish(&mut self, end: BodyEnd) -> Settled {
        let anomaly = match end {
            BodyEnd::Cut => Some(Anomaly::Cut),
            // An in-band error is documented behaviour, not an anomaly.
            BodyEnd::Complete if self.error => None,
            BodyEnd::Complete if self.bad_events > 0 => Some(Anomaly::Malformed),
            BodyEnd::Complete => Some(Anomaly::Missing),
        };
        let model = self.model.take();
        match (self.start.take(), self.delta.take()) {
            (start, Some(delta)) => {
                let mut usage = start.unwrap_or_default();
                usage.merge(&delta);
                let complete = end == BodyEnd::Complete && !self.error;
                Settled {
                    usage: usage.to_usage(),
                    source: if complete { Source::Reported } else { Source::Partial },
                    response_model: model,
                    anomaly: if complete { None } else { anomaly },
                }
            }
            (Some(start), None) => {
                let mut usage = start.to_usage();
                usage.output_tokens = usage.output_tokens.max(output_tokens_from_text(self.text_bytes));
                Settled {
                    usage,
                    source: Source::Partial,
                    response_model: model,
                    anomaly,
                }
            }
            (None, None) if self.error && end == BodyEnd::Complete => Settled::upstream_error(),
            (None, None) => Settled::estimated(
                &self.estimate,
                match end {
                    BodyEnd::Cut => Anomaly::Cut,
                    BodyEnd::Complete if self.events == 0 || self.bad_events > 0 => Anomaly::Malformed,
                    BodyEnd::Complete => Anomaly::Missing,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(x: &mut dyn UsageExtractor, body: &[u8], piece: usize, end: BodyEnd) -> Settled {
        for c in body.chunks(piece) {
            x.feed(c);
        }
        x.finish(end)
    }

    #[test]
    fn classify_and_estimate() {
        let h = HeaderMap::new();
        let post = Method::POST;
        let info = |path| RequestInfo {
            method: &post,
            path,
            query: None,
            headers: &h,
        };
        assert!(Anthropic.classify(&info("/v1/messages")).metered);
        assert!(!Anthropic.classify(&info("/v1/messages/count_tokens")).metered);
        assert!(!Anthropic.classify(&info("/v1/messages/batches")).metered);
        let mut call = Anthropic.classify(&info("/v1/messages"));
        let body = br#"{"model":"claude-haiku-4-5","max_tokens":64000,"stream":true,"messages":[{"role":"user","content":"abcdefgh"}]}"#;
        let json = super::super::strict_json::parse(body).unwrap();
        let b = RequestBody {
            bytes: body,
            json: Some(&json),
        };
        let e = Anthropic.estimate(&mut call, &info("/v1/messages"), &b, &ReserveConfig::default()).unwrap();
        assert!(call.streaming);
        assert_eq!(call.model.as_deref(), Some("claude-haiku-4-5"));
        assert_eq!(e.usage.output_tokens, 4096);
        // "claude-haiku-4-5" + "user" + "abcdefgh" = 28 bytes
        assert_eq!(e.usage.input_tokens, 7);
    }

    #[test]
    fn cache_writes_split_by_ttl() {
        let u: WireUsage = serde_json::from_str(
            r#"{"input_tokens":10,"cache_creation_input_tokens":300,"cache_read_input_tokens":50,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":200},"output_tokens":7}"#,
        )
        .unwrap();
        let u = u.to_usage();
        assert_eq!(
            (u.cache_write_tokens, u.cache_write_1h_tokens, u.cached_input_tokens, u.prompt_tokens),
            (100, 200, 50, 360)
        );
        let u: WireUsage = serde_json::from_str(r#"{"input_tokens":1,"cache_creation_input_tokens":30,"output_tokens":0}"#).unwrap();
        assert_eq!((u.to_usage().cache_write_tokens, u.to_usage().cache_write_1h_tokens), (30, 0));
    }

    #[test]
    fn stream_takes_latest_delta_and_falls_back_to_start() {
        let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":472,\"cache_read_input_tokens\":8,\"output_tokens\":2}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":40,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":87}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        for piece in [1, 9, 4096] {
            let mut x = StreamExtractor::new(&Usage::default());
            let s = run(&mut x, body, piece, BodyEnd::Complete);
            assert_eq!(s.source, Source::Reported);
            assert_eq!(
                (s.usage.input_tokens, s.usage.cached_input_tokens, s.usage.output_tokens, s.usage.web_searches),
                (472, 8, 87, 1)
            );
            assert_eq!(s.response_model.as_deref(), Some("claude-x"));
        }
    }

    #[test]
    fn cut_stream_charges_start_input_and_text_seen() {
        let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1200,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"0123456789abcdefghij\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_bl";
        let mut x = StreamExtractor::new(&Usage::default());
        let s = run(&mut x, body, 5, BodyEnd::Cut);
        assert_eq!(s.source, Source::Partial);
        assert_eq!((s.usage.input_tokens, s.usage.output_tokens), (1200, 5));
        assert_eq!(s.anomaly, Some(Anomaly::Cut));
        // Nothing seen: the reservation.
        let estimate = Usage {
            input_tokens: 9,
            output_tokens: 99,
            ..Usage::default()
        };
        let mut x = StreamExtractor::new(&estimate);
        let s = run(&mut x, b"event: ping\n", 5, BodyEnd::Cut);
        assert_eq!((s.source, s.usage.output_tokens), (Source::Estimated, 99));
        // An error before anything: free.
        let mut x = StreamExtractor::new(&estimate);
        let s = run(
            &mut x,
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n",
            5,
            BodyEnd::Complete,
        );
        assert_eq!(s.source, Source::UpstreamError);
    }

    #[test]
    fn error_body_is_free() {
        let mut x = JsonUsageBody::<WireUsage>::new(
            &Usage {
                input_tokens: 3,
                ..Usage::default()
            },
            ErrorMark::TypeIsError,
        );
        let s = run(
            &mut x,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            7,
            BodyEnd::Complete,
        );
        assert_eq!(s.source, Source::UpstreamError);
    }
}
