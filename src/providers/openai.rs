//! OpenAI: chat completions and legacy completions (plain and streamed), responses (plain,
//! streamed and background), embeddings and speech.
//!
//! Usage is read from the response: `usage` of a completion (the final chunk of a stream),
//! `response.usage` of `response.completed` / `.incomplete` / `.failed`, `usage` of an
//! embeddings list, and `speech.audio.done` of an SSE speech stream. Input counts include the
//! cached part and output counts include reasoning; both are split into the disjoint
//! [`Usage`] kinds here. `tts-1` speech is billed per input character, exact from the request.
//!
//! A streamed chat (or completions) request that did not ask for usage is rewritten to ask for
//! it (`stream_options.include_usage`), so that the stream can be priced exactly, and
//! [`usage_filter`] gives the client back the stream it asked for. The rewrite is skipped
//! when the client accepts a content coding the proxy cannot decode (see
//! [`super::decode::decodes_every_accepted`]); such a stream is priced from the estimated input
//! and the text seen.
//!
//! Other endpoints (images, transcriptions, files, batches, moderations...) are forwarded and
//! counted as requests, but not priced: their usage is not in the price table.

mod usage_filter;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::json_body::{ErrorMark, JsonUsageBody, ToUsage};
use super::sse::{Event, SseParser};
use super::strict_json::{opt_bool, opt_str};
use super::{
    estimate_tokens, is_event_stream, output_tokens_from_text, reserve_output, text_bytes, Anomaly, BodyEnd, BodyFilter, Call, Estimate, FixedCost, Provider,
    Refusal, RequestBody, RequestInfo, Settled, Source, Usage, UsageExtractor,
};
use crate::config::{ProviderKind, ReserveConfig};

pub use usage_filter::UsageFilter;

/// Most choices (`n`) a request is reserved for.
const MAX_CHOICES: u64 = 128;
/// Audio tokens estimated per character of speech for token-priced speech models without
/// usage in the response: OpenAI puts `gpt-4o-mini-tts` at about $0.015 per minute of audio
/// ($12 per 1M audio tokens, so 1250 tokens a minute), and speech runs at about 15
/// characters a second (900 a minute): 1250 / 900 = 25 / 18 tokens per character.
const SPEECH_AUDIO_TOKENS_PER_CHAR: (u64, u64) = (25, 18);

pub struct OpenAi;

/// The upstream path without the API version, when it is under `/v1` (or the upstream URL
/// already carries `/v1`).
fn endpoint_path(path: &str) -> &str {
    let path = path.trim_end_matches('/');
    path.strip_prefix("/v1").filter(|r| r.is_empty() || r.starts_with('/')).unwrap_or(path)
}

impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Openai
    }

    fn classify(&self, req: &RequestInfo<'_>) -> Call {
        if *req.method != Method::POST {
            return Call::free("other", None);
        }
        let metered = Call::metered;
        match endpoint_path(req.path) {
            "/chat/completions" => metered("chat"),
            "/completions" => metered("completions"),
            "/responses" => metered("responses"),
            "/embeddings" => metered("embeddings"),
            "/audio/speech" => metered("speech"),
            // Counting input tokens, cancelling, updating metadata: free.
            _ => Call::free("other", None),
        }
    }

    fn estimate(&self, call: &mut Call, req: &RequestInfo<'_>, body: &RequestBody<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
        let json = body.object()?;
        call.model = opt_str(json, "model")?.filter(|m| !m.is_empty()).map(str::to_string);
        call.streaming = opt_bool(json, "stream")? == Some(true);
        Ok(match call.endpoint {
            "embeddings" => Estimate {
                usage: Usage {
                    input_tokens: json.get("input").map_or(0, |i| embedding_tokens(i, reserve)),
                    ..Usage::default()
                },
                ..Estimate::default()
            },
            "speech" => speech_estimate(call, json, reserve),
            "responses" => {
                if json.get("background").and_then(Value::as_bool) == Some(true) {
                    call.endpoint = "responses_background";
                }
                let max = json.get("max_output_tokens").and_then(Value::as_u64);
                Estimate {
                    usage: llm_usage(json, max, reserve),
                    ..Estimate::default()
                }
            }
            _ => {
                // chat and completions
                let max = json
                    .get("max_completion_tokens")
                    .and_then(Value::as_u64)
                    .or_else(|| json.get("max_tokens").and_then(Value::as_u64));
                let choices = json.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, MAX_CHOICES);
                let usage = llm_usage(json, max.map(|m| m.saturating_mul(choices)), reserve);
                let body = (call.streaming && !asks_for_usage(json) && super::decode::decodes_every_accepted(req.headers))
                    .then(|| ask_for_usage(body.bytes, json))
                    .flatten();
                Estimate {
                    usage,
                    filter_response: body.is_some(),
                    body,
                }
            }
        })
    }

    fn extractor(&self, call: &Call, _status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        let sse = call.streaming && is_event_stream(headers);
        match call.endpoint {
            "chat" | "completions" if sse => Box::new(StreamExtractor::new(StreamKind::Chat, estimate)),
            "responses" if sse => Box::new(StreamExtractor::new(StreamKind::Responses, estimate)),
            "speech_sse" if is_event_stream(headers) => Box::new(StreamExtractor::new(StreamKind::Speech, estimate)),
            // Usage arrives with a later GET of the response: the estimate is the bill.
            "responses_background" => Box::new(FixedCost::new(estimate.clone(), Source::Estimated)),
            // Raw audio has no usage: characters are exact; audio tokens are estimated.
            "speech" | "speech_sse" => {
                let source = if estimate.characters > 0 { Source::Reported } else { Source::Estimated };
                Box::new(FixedCost::new(estimate.clone(), source))
            }
            _ => Box::new(JsonUsageBody::<WireUsage>::new(estimate, ErrorMark::ErrorMember)),
        }
    }

    fn body_filter(&self, call: &Call, headers: &HeaderMap) -> Option<Box<dyn BodyFilter>> {
        (matches!(call.endpoint, "chat" | "completions") && call.streaming && is_event_stream(headers))
            .then(|| Box::new(UsageFilter::default()) as Box<dyn BodyFilter>)
    }
}

/// Input from the request's text, output from its maximum (capped).
fn llm_usage(json: &Value, max_output: Option<u64>, reserve: &ReserveConfig) -> Usage {
    let input = estimate_tokens(text_bytes(json), reserve);
    Usage {
        input_tokens: input,
        output_tokens: reserve_output(max_output, reserve),
        prompt_tokens: input,
        ..Usage::default()
    }
}

/// Embedding input: strings by their size, token arrays by their length.
fn embedding_tokens(v: &Value, reserve: &ReserveConfig) -> u64 {
    match v {
        Value::String(s) => estimate_tokens(s.len(), reserve),
        Value::Number(_) => 1,
        Value::Array(a) => a.iter().map(|e| embedding_tokens(e, reserve)).sum(),
        _ => 0,
    }
}

/// `tts-1` and `tts-1-hd` are billed per character (exact); the token-priced models are
/// estimated unless the stream reports usage (`stream_format: "sse"`).
fn speech_estimate(call: &mut Call, json: &Value, reserve: &ReserveConfig) -> Estimate {
    let text = json.get("input").and_then(Value::as_str).unwrap_or("");
    let per_character = call.model.as_deref().is_none_or(|m| m.starts_with("tts-1"));
    let usage = if per_character {
        Usage {
            characters: text.chars().count() as u64,
            ..Usage::default()
        }
    } else {
        if json.get("stream_format").and_then(Value::as_str) == Some("sse") {
            call.endpoint = "speech_sse";
            call.streaming = true;
        }
        let instructions = json.get("instructions").and_then(Value::as_str).unwrap_or("");
        let (num, den) = SPEECH_AUDIO_TOKENS_PER_CHAR;
        Usage {
            input_tokens: estimate_tokens(text.len() + instructions.len(), reserve),
            audio_output_tokens: (text.chars().count() as u64 * num).div_ceil(den),
            ..Usage::default()
        }
    };
    Estimate { usage, ..Estimate::default() }
}

/// The request already asks for usage in its stream.
fn asks_for_usage(json: &Value) -> bool {
    json.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true)
}

/// The request body with `stream_options.include_usage: true`. When the body has no
/// `stream_options`, the member is inserted at the start of the object and every other byte
/// is kept; otherwise the body is re-serialized with the member set. None when the body is
/// not a JSON object.
fn ask_for_usage(body: &[u8], json: &Value) -> Option<Bytes> {
    let object = json.as_object()?;
    match object.get("stream_options") {
        None => {
            let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
            if body[open] != b'{' {
                return None;
            }
            let member: &[u8] = if object.is_empty() {
                br#""stream_options":{"include_usage":true}"#
            } else {
                br#""stream_options":{"include_usage":true},"#
            };
            let mut out = Vec::with_capacity(body.len() + member.len());
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(member);
            out.extend_from_slice(&body[open + 1..]);
            Some(out.into())
        }
        Some(_) => {
            let mut json = json.clone();
            let options = json.get_mut("stream_options")?;
            if !options.is_object() {
                *options = Value::Object(serde_json::Map::new());
            }
            options.as_object_mut()?.insert("include_usage".into(), Value::Bool(true));
            serde_json::to_vec(&json).ok().map(Bytes::from)
        }
    }
}

/// A usage object of any OpenAI API: chat names (`prompt_tokens`, `completion_tokens`) or
/// responses names (`input_tokens`, `output_tokens`). Absent and null fields count as 0.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<InputDetails>,
    input_tokens_details: Option<InputDetails>,
    completion_tokens_details: Option<OutputDetails>,
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct InputDetails {
    cached_tokens: Option<u64>,
    audio_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct OutputDetails {
    audio_tokens: Option<u64>,
}

impl ToUsage for WireUsage {
    fn to_usage(&self) -> Usage {
        WireUsage::to_usage(self)
    }
}

impl WireUsage {
    /// The disjoint kinds: cached, audio and cache-write tokens are parts of the input count,
    /// audio tokens part of the output count (reasoning stays in output).
    fn to_usage(&self) -> Usage {
        let input = self.prompt_tokens.or(self.input_tokens).unwrap_or(0);
        let output = self.completion_tokens.or(self.output_tokens).unwrap_or(0);
        let in_details = self.prompt_tokens_details.as_ref().or(self.input_tokens_details.as_ref());
        let detail = |f: fn(&InputDetails) -> Option<u64>| in_details.and_then(f).unwrap_or(0);
        let cached = detail(|d| d.cached_tokens).min(input);
        let audio_in = detail(|d| d.audio_tokens).min(input - cached);
        let cache_write = detail(|d| d.cache_write_tokens).min(input - cached - audio_in);
        let audio_out = self
            .completion_tokens_details
            .as_ref()
            .or(self.output_tokens_details.as_ref())
            .and_then(|d| d.audio_tokens)
            .unwrap_or(0)
            .min(output);
        Usage {
            input_tokens: input - cached - audio_in - cache_write,
            cached_input_tokens: cached,
            audio_input_tokens: audio_in,
            cache_write_tokens: cache_write,
            output_tokens: output - audio_out,
            audio_output_tokens: audio_out,
            prompt_tokens: input,
            ..Usage::default()
        }
    }

    /// Speech streams report text input tokens and audio output tokens.
    fn to_speech_usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.or(self.prompt_tokens).unwrap_or(0),
            audio_output_tokens: self.output_tokens.or(self.completion_tokens).unwrap_or(0),
            ..Usage::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    /// `chat.completion.chunk` (or `text_completion`) events, usage in the last one.
    Chat,
    /// Responses API events keyed by `type`, usage in the final `response`.
    Responses,
    /// Speech SSE: `speech.audio.delta` events, usage in `speech.audio.done`.
    Speech,
}

#[derive(Deserialize)]
struct ChatChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    /// Legacy completions stream text here.
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

impl ChatChunk {
    fn text_bytes(&self) -> usize {
        let s = |o: &Option<String>| o.as_deref().map_or(0, str::len);
        self.choices
            .iter()
            .map(|c| {
                s(&c.text)
                    + c.delta.as_ref().map_or(0, |d| {
                        s(&d.content)
                            + s(&d.refusal)
                            + s(&d.reasoning_content)
                            + d.tool_calls
                                .iter()
                                .flatten()
                                .filter_map(|t| t.function.as_ref())
                                .map(|f| s(&f.name) + s(&f.arguments))
                                .sum::<usize>()
                    })
            })
            .sum()
    }
}

#[derive(Deserialize)]
struct TypedEvent {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    response: Option<ResponseObject>,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ResponseObject {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Reads the usage out of an SSE stream; on a stream that ends without it, charges the
/// estimated input plus the output text seen.
struct StreamExtractor {
    kind: StreamKind,
    parser: SseParser,
    usage: Option<Usage>,
    model: Option<String>,
    text_bytes: u64,
    events: u64,
    bad_events: u64,
    error: bool,
    estimate: Usage,
}

impl StreamExtractor {
    fn new(kind: StreamKind, estimate: &Usage) -> Self {
        Self {
            kind,
            parser: SseParser::default(),
            usage: None,
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
        if ev.data.trim_ascii() == b"[DONE]" {
            return;
        }
        match self.kind {
            StreamKind::Chat => match serde_json::from_slice::<ChatChunk>(&ev.data) {
                Ok(c) => {
                    self.text_bytes += c.text_bytes() as u64;
                    if let Some(u) = &c.usage {
                        self.usage = Some(u.to_usage());
                    }
                    if c.model.is_some() {
                        self.model = c.model;
                    }
                    self.error |= c.error.is_some();
                }
                Err(_) => self.bad_events += 1,
            },
            StreamKind::Responses | StreamKind::Speech => match serde_json::from_slice::<TypedEvent>(&ev.data) {
                Ok(e) => self.typed_event(e),
                Err(_) => self.bad_events += 1,
            },
        }
    }

    fn typed_event(&mut self, e: TypedEvent) {
        match e.kind.as_str() {
            "error" => self.error = true,
            "speech.audio.done" => {
                if let Some(u) = &e.usage {
                    self.usage = Some(u.to_speech_usage());
                }
            }
            kind if kind.starts_with("response.") => {
                if let Some(r) = e.response {
                    if r.model.is_some() {
                        self.model = r.model;
                    }
                    if let Some(u) = &r.usage {
                        self.usage = Some(u.to_usage());
                    }
                }
                self.error |= kind == "response.failed";
                // Text, reasoning summaries, refusals, tool arguments; not audio.
                if kind.ends_with(".delta") && !kind.contains("audio") {
                    if let Some(Value::String(s)) = &e.delta {
                        self.text_bytes += s.len() as u64;
                    }
                }
            }
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
        if let Some(usage) = self.usage.take() {
            return Settled {
                usage,
                source: Source::Reported,
                response_model: self.model.take(),
                anomaly: None,
            };
        }
        let anomaly = match end {
            BodyEnd::Cut => Anomaly::Cut,
            BodyEnd::Complete if self.bad_events > 0 || self.events == 0 => Anomaly::Malformed,
            BodyEnd::Complete => Anomaly::Missing,
        };
        if self.text_bytes == 0 {
            // Nothing billable was seen: an in-band error costs nothing, anything else
            // (including a cut before any output) is charged the reservation.
            if self.error && end == BodyEnd::Complete {
                return Settled::upstream_error();
            }
            return Settled::estimated(&self.estimate, anomaly);
        }
        if self.kind == StreamKind::Speech {
            // Audio seen cannot be converted to tokens: the estimate stands.
            return Settled::estimated(&self.estimate, anomaly);
        }
        let mut usage = self.estimate.input_side();
        usage.output_tokens = output_tokens_from_text(self.text_bytes);
        Settled {
            usage,
            source: Source::Partial,
            response_model: self.model.take(),
            // An upstream that reports an in-band error is behaving as documented.
            anomaly: (!self.error).then_some(anomaly),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestInfo<'a> {
        RequestInfo {
            method,
            path,
            query: None,
            headers,
        }
    }

    fn estimate_for(path: &str, body: &str, headers: &HeaderMap) -> (Call, Estimate) {
        let p = OpenAi;
        let post = Method::POST;
        let mut call = p.classify(&req(&post, path, headers));
        let json = super::super::strict_json::parse(body.as_bytes()).unwrap();
        let b = RequestBody {
            bytes: body.as_bytes(),
            json: Some(&json),
        };
        let e = p.estimate(&mut call, &req(&post, path, headers), &b, &ReserveConfig::default()).unwrap();
        (call, e)
    }

    #[test]
    fn routes_with_and_without_the_version_prefix() {
        let h = HeaderMap::new();
        let post = Method::POST;
        for (path, endpoint, metered) in [
            ("/v1/chat/completions", "chat", true),
            ("/chat/completions", "chat", true),
            ("/v1/responses", "responses", true),
            ("/v1/responses/input_tokens", "other", false),
            ("/v1/embeddings", "embeddings", true),
            ("/v1/audio/speech", "speech", true),
            ("/v1/completions", "completions", true),
            ("/v1/moderations", "other", false),
        ] {
            let c = OpenAi.classify(&req(&post, path, &h));
            assert_eq!((c.endpoint, c.metered), (endpoint, metered), "{path}");
        }
        assert!(!OpenAi.classify(&req(&Method::GET, "/v1/responses/resp_1", &h)).metered);
    }

    #[test]
    fn chat_estimate_caps_output_and_multiplies_choices() {
        let h = HeaderMap::new();
        let (call, e) = estimate_for(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"abcdefgh"}],"max_tokens":100,"n":2}"#,
            &h,
        );
        assert_eq!(call.model.as_deref(), Some("gpt-4o"));
        assert_eq!(e.usage.output_tokens, 200);
        // "gpt-4o" + "user" + "abcdefgh" = 18 bytes -> 5 tokens
        assert_eq!(e.usage.input_tokens, 5);
        assert!(e.body.is_none() && !e.filter_response);
        let (_, e) = estimate_for(
            "/v1/chat/completions",
            r#"{"model":"o4-mini","messages":[],"max_completion_tokens":1000000}"#,
            &h,
        );
        assert_eq!(e.usage.output_tokens, ReserveConfig::default().max_output_tokens);
    }

    #[test]
    fn usage_is_injected_into_streams_that_did_not_ask() {
        let h = HeaderMap::new();
        let body = r#"{"model":"gpt-4o-mini", "stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let (call, e) = estimate_for("/v1/chat/completions", body, &h);
        assert!(call.streaming && e.filter_response);
        let sent = e.body.unwrap();
        assert_eq!(
            std::str::from_utf8(&sent).unwrap(),
            r#"{"stream_options":{"include_usage":true},"model":"gpt-4o-mini", "stream":true,"messages":[{"role":"user","content":"hi"}]}"#
        );

        // Present but without include_usage (or false): set, everything else kept.
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false,"include_usage":false},"messages":[]}"#;
        let (_, e) = estimate_for("/v1/chat/completions", body, &h);
        let sent: Value = serde_json::from_slice(&e.body.unwrap()).unwrap();
        assert_eq!(sent["stream_options"], serde_json::json!({"include_obfuscation": false, "include_usage": true}));
        assert_eq!(sent["model"], "m");

        // Already asked for, or not a stream: untouched.
        for body in [
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","stream":false}"#,
        ] {
            let (_, e) = estimate_for("/v1/chat/completions", body, &h);
            assert!(e.body.is_none() && !e.filter_response, "{body}");
        }

        // A coding the proxy cannot decode could come back: no injection.
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT_ENCODING, "gzip, compress".parse().unwrap());
        let (_, e) = estimate_for("/v1/chat/completions", r#"{"model":"m","stream":true}"#, &h);
        assert!(e.body.is_none() && !e.filter_response);
    }

    #[test]
    fn speech_is_characters_for_tts1_and_tokens_otherwise() {
        let h = HeaderMap::new();
        let (call, e) = estimate_for("/v1/audio/speech", r#"{"model":"tts-1","input":"héllo","voice":"alloy"}"#, &h);
        assert_eq!((call.endpoint, e.usage.characters, e.usage.tokens()), ("speech", 5, 0));
        let (call, e) = estimate_for(
            "/v1/audio/speech",
            r#"{"model":"gpt-4o-mini-tts","input":"Gates open at eight sharp.","voice":"coral","stream_format":"sse"}"#,
            &h,
        );
        assert_eq!(call.endpoint, "speech_sse");
        assert_eq!(e.usage.characters, 0);
        assert_eq!(e.usage.audio_output_tokens, (26 * 25u64).div_ceil(18));
    }

    #[test]
    fn embeddings_count_strings_and_token_arrays() {
        let h = HeaderMap::new();
        let (_, e) = estimate_for(
            "/v1/embeddings",
            r#"{"model":"text-embedding-3-small","input":["abcd","abcdefgh",[1,2,3]]}"#,
            &h,
        );
        assert_eq!(e.usage.input_tokens, 1 + 2 + 3);
        assert_eq!(e.usage.output_tokens, 0);
    }

    fn run(x: &mut dyn UsageExtractor, body: &[u8], piece: usize, end: BodyEnd) -> Settled {
        for c in body.chunks(piece) {
            x.feed(c);
        }
        x.finish(end)
    }

    #[test]
    fn chat_usage_subsets_are_split() {
        let u: WireUsage = serde_json::from_str(
            r#"{"prompt_tokens":2006,"completion_tokens":1150,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":896,"audio_tokens":0}}"#,
        )
        .unwrap();
        let u = u.to_usage();
        assert_eq!(
            (u.input_tokens, u.cached_input_tokens, u.output_tokens, u.prompt_tokens),
            (86, 1920, 1150, 2006)
        );
        // Details larger than the totals never underflow.
        let u: WireUsage = serde_json::from_str(
            r#"{"input_tokens":5,"input_tokens_details":{"cached_tokens":9},"output_tokens":1,"output_tokens_details":{"audio_tokens":3}}"#,
        )
        .unwrap();
        let u = u.to_usage();
        assert_eq!((u.input_tokens, u.cached_input_tokens, u.output_tokens, u.audio_output_tokens), (0, 5, 0, 1));
    }

    #[test]
    fn chat_stream_cut_charges_input_and_text_seen() {
        let estimate = Usage {
            input_tokens: 40,
            output_tokens: 4096,
            prompt_tokens: 40,
            ..Usage::default()
        };
        let body = b"data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"Low tide\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" is at\"}}]}\n\ndata: {\"choi";
        for piece in [1, 7, 1000] {
            let mut x = StreamExtractor::new(StreamKind::Chat, &estimate);
            let s = run(&mut x, body, piece, BodyEnd::Cut);
            assert_eq!(s.source, Source::Partial);
            assert_eq!(s.usage.input_tokens, 40);
            assert_eq!(s.usage.output_tokens, 4, "14 bytes of text");
            assert_eq!(s.anomaly, Some(Anomaly::Cut));
            assert_eq!(s.response_model.as_deref(), Some("gpt-4o-mini"));
        }
        // Nothing seen: the reservation.
        let mut x = StreamExtractor::new(StreamKind::Chat, &estimate);
        let s = run(&mut x, b"", 1, BodyEnd::Cut);
        assert_eq!((s.source, s.usage.output_tokens), (Source::Estimated, 4096));
        // Only an in-band error: free.
        let mut x = StreamExtractor::new(StreamKind::Chat, &estimate);
        let s = run(&mut x, b"data: {\"error\":{\"message\":\"boom\"}}\n\n", 5, BodyEnd::Complete);
        assert_eq!(s.source, Source::UpstreamError);
    }

    #[test]
    fn responses_stream_reads_the_final_response() {
        let body = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-5\",\"usage\":null}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"usage\":{\"input_tokens\":10,\"input_tokens_details\":{\"cached_tokens\":4},\"output_tokens\":3}}}\n\n";
        let mut x = StreamExtractor::new(StreamKind::Responses, &Usage::default());
        let s = run(&mut x, body, 3, BodyEnd::Complete);
        assert_eq!(s.source, Source::Reported);
        assert_eq!((s.usage.input_tokens, s.usage.cached_input_tokens, s.usage.output_tokens), (6, 4, 3));
    }

    #[test]
    fn json_body_errors_and_garbage() {
        let mut x = JsonUsageBody::<WireUsage>::new(
            &Usage {
                input_tokens: 7,
                ..Usage::default()
            },
            ErrorMark::ErrorMember,
        );
        let s = run(&mut x, br#"{"error":{"message":"x"}}"#, 4, BodyEnd::Complete);
        assert_eq!(s.source, Source::UpstreamError);
        let mut x = JsonUsageBody::<WireUsage>::new(
            &Usage {
                input_tokens: 7,
                ..Usage::default()
            },
            ErrorMark::ErrorMember,
        );
        let s = run(&mut x, b"<html>", 4, BodyEnd::Complete);
        assert_eq!((s.source, s.anomaly, s.usage.input_tokens), (Source::Estimated, Some(Anomaly::Malformed), 7));
    }
}
