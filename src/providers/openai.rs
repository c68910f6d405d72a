//! OpenAI: chat completions and legacy completions (plain and streamed), responses (plain,
//! streamed, background and compaction), embeddings, speech, images, speech to text and videos.
//! [`routes`] holds the endpoint table: what is metered, known free, or refused.
//!
//! Usage is read from the response: `usage` of a completion (the final chunk of a stream),
//! `response.usage` of `response.completed` / `.incomplete` / `.failed`, `usage` of an
//! embeddings list, `speech.audio.done` of an SSE speech stream, and the media endpoints'
//! own usage (see [`images`], [`audio`], [`videos`]). Input counts include the cached part and
//! output counts include reasoning; both are split into the disjoint [`Usage`] kinds here.
//! `tts-1` speech is billed per input character, exact from the request. Priority processing
//! and the Responses API's built-in tools are charged on top of tokens (see [`fees`]).
//!
//! A streamed chat (or completions) request that did not ask for usage is rewritten to ask for
//! it (`stream_options.include_usage`), so that the stream can be priced exactly, and
//! [`usage_filter`] gives the client back the stream it asked for. (The proxy asks the
//! upstream only for content codings it can decode, so the rewritten stream is always read.)
//!
//! A `background: true` response is answered before any work is done; its usage appears only
//! when the response is fetched later (`GET /responses/{id}`). The POST is charged its
//! reservation, which is the request's own `max_output_tokens` (not capped by
//! `reserve.max_output_tokens`), or [`BACKGROUND_MAX_OUTPUT`] without one, plus the input
//! and the tool reservation.

mod audio;
mod fees;
mod fields;
mod images;
mod routes;
mod usage_filter;
mod videos;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::metered::{ErrorMark, Extra, Metered, Noted, Reader, Report, ToUsage, UsageMember};
use super::{
    estimate_tokens, is_event_stream, reserve_output, text_bytes, BodyEnd, BodyFilter, Call, Estimate, FixedCost, Provider, Refusal, RequestBody, RequestInfo,
    Settled, Source, Usage, UsageExtractor,
};
use crate::config::{ProviderKind, ReserveConfig};
use crate::wire::json_scan::{JsonScanner, Record};
use crate::wire::json_text::{Name, TextLen};
use crate::wire::strict_json::{opt_bool, opt_str, opt_u64};

use fees::Extras;
use fields::Fields;
pub use usage_filter::UsageFilter;

/// Most choices (`n`) a request is reserved for.
const MAX_CHOICES: u64 = 128;
/// Output reserved for a background response without `max_output_tokens`: the largest
/// output of current OpenAI models (gpt-5 family: 128,000 tokens).
pub const BACKGROUND_MAX_OUTPUT: u64 = 128_000;
/// Audio tokens estimated per character of speech for token-priced speech models without
/// usage in the response: OpenAI puts `gpt-4o-mini-tts` at about $0.015 per minute of audio
/// ($12 per 1M audio tokens, so 1250 tokens a minute), and speech runs at about 15
/// characters a second (900 a minute): 1250 / 900 = 25 / 18 tokens per character.
const SPEECH_AUDIO_TOKENS_PER_CHAR: (u64, u64) = (25, 18);

/// The OpenAI API family (also Gemini's OpenAI-compatible endpoints, see [`routes`]).
pub struct OpenAi;

/// The endpoints whose answers this family reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Responses,
    ResponsesCompact,
    Embeddings,
    Speech,
    Images,
    ImageEdits,
    ImageVariations,
    Transcription,
    Translation,
    Videos,
    /// `GET /responses/{id}` (not streamed): free, but its answer may carry the final usage of
    /// a background response.
    ResponseGet,
}

/// An OpenAI call: its endpoint and what the estimate learnt from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub endpoint: Endpoint,
    /// A `background: true` response: answered before the work, billed later.
    pub background: bool,
    /// Speech asked as an SSE stream (`stream_format: "sse"`), which reports its usage.
    pub speech_sse: bool,
    /// Images priced per image (DALL·E), exact from the request.
    pub per_image: bool,
}

impl From<Endpoint> for Ctx {
    fn from(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            background: false,
            speech_sse: false,
            per_image: false,
        }
    }
}

impl From<Endpoint> for super::CallContext {
    fn from(endpoint: Endpoint) -> Self {
        Ctx::from(endpoint).into()
    }
}

impl Ctx {
    pub fn name(&self) -> &'static str {
        use Endpoint::*;
        match self.endpoint {
            Responses if self.background => "responses_background",
            Speech if self.speech_sse => "speech_sse",
            Images | ImageEdits | ImageVariations if self.per_image => images::PER_IMAGE,
            Chat => "chat",
            Completions => "completions",
            Responses => "responses",
            ResponsesCompact => "responses_compact",
            Embeddings => "embeddings",
            Speech => "speech",
            Images => "images",
            ImageEdits => "image_edits",
            ImageVariations => "image_variations",
            Transcription => "transcription",
            Translation => "translation",
            Videos => "videos",
            ResponseGet => "response_get",
        }
    }
}

impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Openai
    }

    fn classify(&self, req: &RequestInfo<'_>) -> Call {
        routes::classify(req)
    }

    fn estimate(&self, call: &mut Call, req: &RequestInfo<'_>, body: &RequestBody<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
        let mut ctx = *call.context_of::<Ctx>()?;
        let estimate = match ctx.endpoint {
            Endpoint::Images | Endpoint::ImageEdits | Endpoint::ImageVariations => images::estimate(call, &mut ctx, &Fields::read(call, req, body)?, reserve),
            Endpoint::Transcription | Endpoint::Translation => audio::estimate(call, &Fields::read(call, req, body)?, reserve),
            Endpoint::Videos => videos::estimate(call, &Fields::read(call, req, body)?),
            _ => json_estimate(call, &mut ctx, body, reserve),
        }?;
        call.context = ctx.into();
        Ok(estimate)
    }

    fn extractor(&self, call: &Call, _status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        use Endpoint::*;
        let ctx = call.own_context::<Ctx>();
        let sse = call.streaming && is_event_stream(headers);
        let stream = |kind| Box::new(Metered::sse(Stream::new(kind), estimate)) as Box<dyn UsageExtractor>;
        let plain = |tools| Box::new(UsageMember::<WireUsage, _>::metered(ErrorMark::ErrorMember, Tools::new(tools), estimate));
        match ctx.endpoint {
            // Usage arrives with a later GET of the response: the reservation is charged now,
            // and corrected when that GET passes through the proxy.
            Responses if ctx.background => Box::new(Background::new(estimate)),
            // Exact from the request.
            Images | ImageEdits | ImageVariations if ctx.per_image => Box::new(FixedCost::new(estimate.clone(), Source::Reported)),
            Videos => Box::new(FixedCost::new(estimate.clone(), Source::Reported)),
            Chat | Completions if sse => stream(StreamKind::Chat),
            Responses if sse => stream(StreamKind::Responses),
            Speech if ctx.speech_sse && is_event_stream(headers) => stream(StreamKind::Speech),
            Images | ImageEdits if sse => stream(StreamKind::Image),
            Transcription if sse => stream(StreamKind::Transcript),
            Chat | Completions => plain(false),
            Responses | ResponseGet => plain(true),
            Images | ImageEdits => Box::new(UsageMember::<images::ImageUsage>::metered(ErrorMark::ErrorMember, (), estimate)),
            Transcription if is_json(headers) => Box::new(UsageMember::<audio::TranscriptionUsage>::metered(ErrorMark::ErrorMember, (), estimate)),
            // Text transcripts and translations carry no usage: the reservation is the bill.
            Transcription | Translation => Box::new(FixedCost::new(estimate.clone(), Source::Estimated)),
            // Raw audio has no usage: characters are exact; audio tokens are estimated.
            Speech => {
                let source = if estimate.characters > 0 { Source::Reported } else { Source::Estimated };
                Box::new(FixedCost::new(estimate.clone(), source))
            }
            Embeddings | ResponsesCompact | ImageVariations => Box::new(UsageMember::<WireUsage>::metered(ErrorMark::ErrorMember, (), estimate)),
        }
    }

    fn body_filter(&self, call: &Call, headers: &HeaderMap) -> Option<Box<dyn BodyFilter>> {
        let chat = matches!(call.own_context::<Ctx>().endpoint, Endpoint::Chat | Endpoint::Completions);
        (chat && call.streaming && is_event_stream(headers)).then(|| Box::new(UsageFilter::default()) as Box<dyn BodyFilter>)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// The estimate of the JSON endpoints: chat, completions, responses, embeddings, speech.
fn json_estimate(call: &mut Call, ctx: &mut Ctx, body: &RequestBody<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
    let json = body.object()?;
    call.model = opt_str(json, "model")?.filter(|m| !m.is_empty()).map(str::to_string);
    call.streaming = opt_bool(json, "stream")? == Some(true);
    let usage = match ctx.endpoint {
        Endpoint::Embeddings => Usage {
            input_tokens: json.get("input").map_or(0, |i| embedding_tokens(i, reserve)),
            ..Usage::default()
        },
        Endpoint::Speech => return Ok(speech_estimate(call, ctx, json, reserve)),
        Endpoint::Responses => responses_usage(call, ctx, json, reserve)?,
        Endpoint::ResponsesCompact => llm_usage(json, None, reserve),
        _ => return chat_estimate(call, body.bytes, json, reserve),
    };
    Ok(Estimate { usage, ..Estimate::default() })
}

/// Responses: tokens, tool fees and tier; a background response reserves its whole output.
fn responses_usage(call: &mut Call, ctx: &mut Ctx, json: &Value, reserve: &ReserveConfig) -> Result<Usage, Refusal> {
    let max = opt_u64(json, "max_output_tokens")?;
    let mut usage = if opt_bool(json, "background")? == Some(true) {
        ctx.background = true;
        call.streaming = false;
        Usage {
            output_tokens: max.unwrap_or(BACKGROUND_MAX_OUTPUT),
            ..llm_usage(json, None, reserve)
        }
    } else {
        llm_usage(json, max, reserve)
    };
    fees::reserve_tools(json, &mut usage)?;
    usage.premium_permille = fees::requested_premium(json)?;
    Ok(usage)
}

/// Chat and completions: output for every choice, the tier, the search of search models, and
/// the usage request injected into a stream that did not ask for it.
fn chat_estimate(call: &Call, bytes: &[u8], json: &Value, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
    let max = opt_u64(json, "max_completion_tokens")?.or(opt_u64(json, "max_tokens")?);
    let choices = opt_u64(json, "n")?.unwrap_or(1).clamp(1, MAX_CHOICES);
    let mut usage = llm_usage(json, max.map(|m| m.saturating_mul(choices)), reserve);
    usage.premium_permille = fees::requested_premium(json)?;
    // Search models search once per request (web_search_options); the fee is fixed.
    usage.web_searches = u64::from(json.get("web_search_options").is_some_and(|v| !v.is_null()));
    let body = (call.streaming && !asks_for_usage(json)).then(|| ask_for_usage(bytes, json)).flatten();
    Ok(Estimate {
        usage,
        filter_response: body.is_some(),
        body,
    })
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
fn speech_estimate(call: &mut Call, ctx: &mut Ctx, json: &Value, reserve: &ReserveConfig) -> Estimate {
    let text = json.get("input").and_then(Value::as_str).unwrap_or("");
    let per_character = call.model.as_deref().is_none_or(|m| m.starts_with("tts-1"));
    let usage = if per_character {
        Usage {
            characters: text.chars().count() as u64,
            ..Usage::default()
        }
    } else {
        if json.get("stream_format").and_then(Value::as_str) == Some("sse") {
            ctx.speech_sse = true;
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
    /// Image streams: partial images, usage in each `image_generation.completed` /
    /// `image_edit.completed` event (added up).
    Image,
    /// Transcription streams: `transcript.text.delta` events, usage in `transcript.text.done`.
    Transcript,
}

/// One chunk of a chat completions stream: its strings are measured or borrowed, never
/// kept (see `wire::json_text`).
#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(default, borrow)]
    model: Option<Name<'a>>,
    #[serde(default, borrow)]
    service_tier: Option<Name<'a>>,
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
    text: Option<TextLen>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<TextLen>,
    #[serde(default)]
    refusal: Option<TextLen>,
    #[serde(default)]
    reasoning_content: Option<TextLen>,
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
    name: Option<TextLen>,
    #[serde(default)]
    arguments: Option<TextLen>,
}

impl ChatChunk<'_> {
    fn text_bytes(&self) -> usize {
        let s = |o: &Option<TextLen>| o.map_or(0, |l| l.0);
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
    /// Read by the event's kind: speech, image and transcription usages differ.
    #[serde(default)]
    usage: Option<Value>,
    /// The item of `response.output_item.added`.
    #[serde(default)]
    item: Option<OutputItem>,
}

#[derive(Deserialize)]
struct ResponseObject {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    service_tier: Option<String>,
}

/// An item of a response's `output`, as far as tool fees go.
#[derive(Deserialize)]
struct OutputItem {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    container_id: Option<String>,
}

/// Reads an SSE stream's events: the usage, the text streamed, the fees, an in-band error.
struct Stream {
    kind: StreamKind,
    usage: Option<Usage>,
    noted: Noted,
    extras: Extras,
}

impl Stream {
    fn new(kind: StreamKind) -> Self {
        Self {
            kind,
            usage: None,
            noted: Noted::default(),
            extras: Extras::default(),
        }
    }

    fn typed_event(&mut self, mut e: TypedEvent) -> bool {
        let kind = std::mem::take(&mut e.kind);
        match kind.as_str() {
            "error" => self.noted.error = true,
            "speech.audio.done" => self.usage = e.usage.and_then(|u| serde_json::from_value::<WireUsage>(u).ok()).map(|u| u.to_speech_usage()),
            "transcript.text.done" => return self.read_usage::<audio::TranscriptionUsage>(e.usage),
            "image_generation.completed" | "image_edit.completed" => {
                let before = self.usage.take().unwrap_or_default();
                let readable = self.read_usage::<images::ImageUsage>(e.usage);
                if let Some(u) = &mut self.usage {
                    images::ImageUsage::add(u, &before);
                }
                return readable;
            }
            "transcript.text.delta" => self.text_delta(&e.delta),
            kind if kind.starts_with("response.") => self.response_event(kind, e),
            _ => {}
        }
        true
    }

    fn response_event(&mut self, kind: &str, e: TypedEvent) {
        if let Some(r) = e.response {
            if r.model.is_some() {
                self.noted.model = r.model;
            }
            if r.service_tier.is_some() {
                self.extras.tier = r.service_tier;
            }
            if let Some(u) = &r.usage {
                self.usage = Some(u.to_usage());
            }
        }
        // Tool calls count when they start: a stream cut during a search still pays for it.
        if let (Some(item), "response.output_item.added") = (&e.item, kind) {
            self.extras.item(&item.kind, item.container_id.as_deref());
        }
        self.noted.error |= kind == "response.failed";
        // Text, reasoning summaries, refusals, tool arguments; not audio.
        if kind.ends_with(".delta") && !kind.contains("audio") {
            self.text_delta(&e.delta);
        }
    }

    fn text_delta(&mut self, delta: &Option<Value>) {
        if let Some(Value::String(s)) = delta {
            self.noted.text_bytes += s.len() as u64;
        }
    }

    /// A usage of the wire type `W`; false when it cannot be read.
    fn read_usage<W: ToUsage>(&mut self, usage: Option<Value>) -> bool {
        match usage.map(serde_json::from_value::<W>) {
            Some(Ok(u)) => self.usage = Some(u.to_usage()),
            Some(Err(_)) => return false,
            None => {}
        }
        true
    }
}

impl Reader for Stream {
    fn event(&mut self, data: &[u8]) -> bool {
        if data.trim_ascii() == b"[DONE]" {
            return true;
        }
        if self.kind != StreamKind::Chat {
            return serde_json::from_slice::<TypedEvent>(data).is_ok_and(|e| self.typed_event(e));
        }
        let Ok(c) = serde_json::from_slice::<ChatChunk>(data) else {
            return false;
        };
        self.noted.text_bytes += c.text_bytes() as u64;
        if let Some(u) = &c.usage {
            self.usage = Some(u.to_usage());
        }
        // Every chunk repeats them: kept once, not once per chunk.
        if let Some(Name(m)) = c.model {
            if self.noted.model.as_deref() != Some(&*m) {
                self.noted.model = Some(m.into_owned());
            }
        }
        if let Some(Name(t)) = c.service_tier {
            if self.extras.tier.as_deref() != Some(&*t) {
                self.extras.tier = Some(t.into_owned());
            }
        }
        self.noted.error |= c.error.is_some();
        true
    }

    /// Every kind's usage event is the stream's last word.
    fn reported(&mut self) -> Option<Report> {
        Report::last(self.usage.take())
    }

    /// Speech and image streams carry media, not text: what they show is never counted as
    /// text (the estimate stands).
    fn noted(&mut self) -> &mut Noted {
        &mut self.noted
    }

    /// Fees on top of the tokens: tier and tools (chat and responses streams).
    fn fees(&self, usage: &mut Usage, estimate: &Usage) {
        match self.kind {
            StreamKind::Chat => self.extras.apply(usage, estimate, false),
            StreamKind::Responses => self.extras.apply(usage, estimate, true),
            _ => {}
        }
    }
}

/// What a plain completion or response bills beyond its usage: the `service_tier` it was
/// served at and, for responses, the tool calls of its `output`.
struct Tools {
    /// The items of `output` (objects three levels down: `{"output": [{...}]}`).
    items: Option<JsonScanner>,
    extras: Extras,
}

impl Tools {
    fn new(tools: bool) -> Self {
        Self {
            items: tools.then(|| JsonScanner::new(3, &["type", "container_id"], &[])),
            extras: Extras::default(),
        }
    }
}

impl Extra for Tools {
    fn bytes(&mut self, chunk: &[u8]) {
        let extras = &mut self.extras;
        if let Some(items) = &mut self.items {
            items.feed(chunk, &mut |r| {
                if let Some(kind) = captured_str(&r, "type") {
                    extras.item(&kind, captured_str(&r, "container_id").as_deref());
                }
            });
        }
    }

    fn record(&mut self, r: &Record) {
        self.extras.tier = captured_str(r, "service_tier");
    }

    fn fees(&self, usage: &mut Usage, estimate: &Usage) {
        self.extras.apply(usage, estimate, self.items.is_some());
    }
}

/// A background response, answered before any work is done: its reservation (the request's
/// whole maximum) is charged now, and the answer's `id` names the later `GET /responses/{id}`
/// whose answer carries the final usage.
struct Background {
    charged: FixedCost,
    top: JsonScanner,
    id: Option<String>,
}

impl Background {
    fn new(estimate: &Usage) -> Self {
        Self {
            charged: FixedCost::new(estimate.clone(), Source::Estimated),
            top: JsonScanner::new(1, &["id"], &[]),
            id: None,
        }
    }
}

impl UsageExtractor for Background {
    fn feed(&mut self, chunk: &[u8]) {
        let id = &mut self.id;
        self.top.feed(chunk, &mut |r| {
            if let Some(v) = captured_str(&r, "id") {
                *id = Some(v);
            }
        });
    }

    fn finish(&mut self, end: BodyEnd) -> Settled {
        self.charged.finish(end)
    }

    fn later(&self) -> Option<String> {
        self.id.clone()
    }
}

/// A captured JSON string member.
fn captured_str(r: &Record, key: &str) -> Option<String> {
    r.get(key).and_then(|v| serde_json::from_slice(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Anomaly, BodyEnd};
    use http::Method;

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
        let json = crate::wire::strict_json::parse(body.as_bytes()).unwrap();
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
            ("/v1/responses/input_tokens", "responses_input_tokens", false),
            ("/v1/embeddings", "embeddings", true),
            ("/v1/audio/speech", "speech", true),
            ("/v1/completions", "completions", true),
            ("/v1/moderations", "moderations", false),
        ] {
            let c = OpenAi.classify(&req(&post, path, &h));
            assert_eq!((c.endpoint_name(), c.metered), (endpoint, metered), "{path}");
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

        // Whatever the client accepts: the proxy chooses the upstream's codings.
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT_ENCODING, "gzip, compress".parse().unwrap());
        let (_, e) = estimate_for("/v1/chat/completions", r#"{"model":"m","stream":true}"#, &h);
        assert!(e.body.is_some() && e.filter_response);
    }

    #[test]
    fn speech_is_characters_for_tts1_and_tokens_otherwise() {
        let h = HeaderMap::new();
        let (call, e) = estimate_for("/v1/audio/speech", r#"{"model":"tts-1","input":"héllo","voice":"alloy"}"#, &h);
        assert_eq!((call.endpoint_name(), e.usage.characters, e.usage.tokens()), ("speech", 5, 0));
        let (call, e) = estimate_for(
            "/v1/audio/speech",
            r#"{"model":"gpt-4o-mini-tts","input":"Gates open at eight sharp.","voice":"coral","stream_format":"sse"}"#,
            &h,
        );
        assert_eq!(call.endpoint_name(), "speech_sse");
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
            let mut x = Metered::sse(Stream::new(StreamKind::Chat), &estimate);
            let s = run(&mut x, body, piece, BodyEnd::Cut);
            assert_eq!(s.source, Source::Partial);
            assert_eq!(s.usage.input_tokens, 40);
            assert_eq!(s.usage.output_tokens, 4, "14 bytes of text");
            assert_eq!(s.anomaly, Some(Anomaly::Cut));
            assert_eq!(s.response_model.as_deref(), Some("gpt-4o-mini"));
        }
        // Nothing seen: the reservation.
        let mut x = Metered::sse(Stream::new(StreamKind::Chat), &estimate);
        let s = run(&mut x, b"", 1, BodyEnd::Cut);
        assert_eq!((s.source, s.usage.output_tokens), (Source::Estimated, 4096));
        // Only an in-band error: free.
        let mut x = Metered::sse(Stream::new(StreamKind::Chat), &estimate);
        let s = run(&mut x, b"data: {\"error\":{\"message\":\"boom\"}}\n\n", 5, BodyEnd::Complete);
        assert_eq!(s.source, Source::UpstreamError);
    }

    #[test]
    fn responses_stream_reads_the_final_response() {
        let body = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-5\",\"usage\":null}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"usage\":{\"input_tokens\":10,\"input_tokens_details\":{\"cached_tokens\":4},\"output_tokens\":3}}}\n\n";
        let mut x = Metered::sse(Stream::new(StreamKind::Responses), &Usage::default());
        let s = run(&mut x, body, 3, BodyEnd::Complete);
        assert_eq!(s.source, Source::Reported);
        assert_eq!((s.usage.input_tokens, s.usage.cached_input_tokens, s.usage.output_tokens), (6, 4, 3));
    }

    #[test]
    fn json_body_errors_and_garbage() {
        let estimate = Usage {
            input_tokens: 7,
            ..Usage::default()
        };
        let mut x = UsageMember::<WireUsage>::metered(ErrorMark::ErrorMember, (), &estimate);
        let s = run(&mut x, br#"{"error":{"message":"x"}}"#, 4, BodyEnd::Complete);
        assert_eq!(s.source, Source::UpstreamError);
        let mut x = UsageMember::<WireUsage>::metered(ErrorMark::ErrorMember, (), &estimate);
        let s = run(&mut x, b"<html>", 4, BodyEnd::Complete);
        assert_eq!((s.source, s.anomaly, s.usage.input_tokens), (Source::Estimated, Some(Anomaly::Malformed), 7));
    }

    /// Classifies and estimates a request with a content type, the body JSON or a form.
    fn estimate_raw(path: &str, content_type: &str, body: &[u8]) -> (Call, Result<Estimate, Refusal>) {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        let post = Method::POST;
        let mut call = OpenAi.classify(&req(&post, path, &h));
        let e = super::super::estimate_call(&OpenAi, &mut call, &req(&post, path, &h), body, &ReserveConfig::default());
        (call, e)
    }

    fn form_estimate(path: &str, parts: &[(&str, Option<&str>, &[u8])]) -> (Call, Result<Estimate, Refusal>) {
        let body = crate::wire::multipart::tests::form("xyzzy", parts);
        estimate_raw(path, "multipart/form-data; boundary=xyzzy", &body)
    }

    fn json_estimate_of(path: &str, body: &str) -> (Call, Result<Estimate, Refusal>) {
        estimate_raw(path, "application/json", body.as_bytes())
    }

    fn prices() -> crate::pricing::PriceTable {
        crate::pricing::PriceTable::new(&crate::config::Config::from_yaml("", "t").unwrap()).unwrap()
    }

    fn nanos(model: &str, usage: &Usage) -> i64 {
        let p = prices().price("openai", ProviderKind::Openai, &[Some(model)], usage);
        assert!(!p.unpriced, "{model}");
        p.nanos
    }

    fn extract(call: &Call, content_type: &str, estimate: &Usage, body: &[u8], piece: usize, end: BodyEnd) -> Settled {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        let mut x = OpenAi.extractor(call, StatusCode::OK, &h, estimate);
        run(x.as_mut(), body, piece, end)
    }

    #[test]
    fn dalle_is_exact_from_size_and_quality() {
        for (body, cost) in [
            (r#"{"model":"dall-e-3","prompt":"a lighthouse","n":1}"#, 40_000_000),
            (r#"{"model":"dall-e-3","prompt":"a lighthouse","quality":"hd","size":"1792x1024"}"#, 120_000_000),
            (r#"{"model":"dall-e-3","prompt":"p","quality":"standard","size":"1024x1792"}"#, 80_000_000),
            (r#"{"model":"dall-e-2","prompt":"p","n":3,"size":"512x512"}"#, 54_000_000),
            (r#"{"model":"dall-e-2","prompt":"p","n":2}"#, 40_000_000),
        ] {
            let (call, e) = json_estimate_of("/v1/images/generations", body);
            let e = e.unwrap();
            assert_eq!(call.endpoint_name(), images::PER_IMAGE);
            assert_eq!(nanos(call.model.as_deref().unwrap(), &e.usage), cost, "{body}");
            let s = extract(&call, "application/json", &e.usage, br#"{"created":1,"data":[]}"#, 3, BodyEnd::Complete);
            assert_eq!((s.source, s.usage), (Source::Reported, e.usage));
        }
        // Variations are DALL-E 2, multipart.
        let (call, e) = form_estimate(
            "/v1/images/variations",
            &[("image", Some("a.png"), b"\x89PNG"), ("n", None, b"2"), ("size", None, b"256x256")],
        );
        assert_eq!((call.model.as_deref(), nanos("dall-e-2", &e.unwrap().usage)), (Some("dall-e-2"), 32_000_000));
    }

    #[test]
    fn image_requests_that_cannot_be_priced_are_refused() {
        for body in [
            r#"{"model":"dall-e-3","prompt":"p","n":"2"}"#,
            r#"{"model":"dall-e-3","prompt":"p","n":0}"#,
            r#"{"prompt":"p"}"#,
            r#"{"model":"gpt-image-1","prompt":"p","size":"big"}"#,
            r#"{"model":"gpt-image-1","prompt":"p","stream":"yes"}"#,
        ] {
            assert!(
                matches!(json_estimate_of("/v1/images/generations", body).1, Err(Refusal::InvalidBody(_))),
                "{body}"
            );
        }
        for body in [r#"{"model":"dall-e-3","prompt":"p","size":"256x256"}"#, r#"{"model":"imagen-4","prompt":"p"}"#] {
            assert!(
                matches!(json_estimate_of("/v1/images/generations", body).1, Err(Refusal::NotMetered(_))),
                "{body}"
            );
        }
        // A form without the model, or with it twice.
        let (_, e) = form_estimate("/v1/images/edits", &[("image", Some("a.png"), b"x"), ("prompt", None, b"p")]);
        assert!(matches!(e, Err(Refusal::InvalidBody(_))));
        let (_, e) = form_estimate("/v1/images/edits", &[("model", None, b"dall-e-2"), ("model", None, b"gpt-image-1")]);
        assert!(matches!(e, Err(Refusal::InvalidBody(_))));
        let (_, e) = estimate_raw("/v1/images/edits", "multipart/form-data", b"--x--");
        assert!(matches!(e, Err(Refusal::InvalidBody(_))));
    }

    #[test]
    fn gpt_image_reserves_a_bound_and_settles_on_usage() {
        let (call, e) = json_estimate_of(
            "/v1/images/generations",
            r#"{"model":"gpt-image-1","prompt":"abcdefgh","n":2,"size":"1024x1024"}"#,
        );
        let e = e.unwrap();
        // 2 x 7024 image tokens; "abcdefgh" is 2 tokens.
        assert_eq!((e.usage.image_output_tokens, e.usage.input_tokens), (14_048, 2));
        assert_eq!(call.endpoint_name(), "images");
        let body = br#"{"created":1,"data":[{"b64_json":"AAAA"}],"usage":{"input_tokens":50,"input_tokens_details":{"text_tokens":10,"image_tokens":40},"output_tokens":4160,"total_tokens":4210}}"#;
        for piece in [1, 7, 4096] {
            let s = extract(&call, "application/json", &e.usage, body, piece, BodyEnd::Complete);
            assert_eq!(s.source, Source::Reported);
            assert_eq!((s.usage.input_tokens, s.usage.image_output_tokens), (50, 4160));
            // 50 x $10/M + 4160 x $40/M = $0.0005 + $0.1664
            assert_eq!(nanos("gpt-image-1", &s.usage), 166_900_000);
        }
        // An edit in a form: input images, auto size, partial images.
        let (call, e) = form_estimate(
            "/v1/images/edits",
            &[
                ("model", None, b"gpt-image-1"),
                ("image[]", Some("a.png"), b"1"),
                ("image[]", Some("b.png"), b"2"),
                ("prompt", None, b"abcd"),
                ("partial_images", None, b"2"),
                ("stream", None, b"true"),
            ],
        );
        let e = e.unwrap();
        assert!(call.streaming);
        assert_eq!((e.usage.input_tokens, e.usage.image_output_tokens), (1 + 20_000, 10_536 + 200));
        let stream = b"event: image_edit.partial_image\ndata: {\"type\":\"image_edit.partial_image\",\"b64_json\":\"AAAA\"}\n\n\
event: image_edit.completed\ndata: {\"type\":\"image_edit.completed\",\"usage\":{\"input_tokens\":300,\"output_tokens\":1256,\"output_tokens_details\":{\"image_tokens\":1056,\"text_tokens\":200}}}\n\n";
        for piece in [1, 5, 999] {
            let s = extract(&call, "text/event-stream", &e.usage, stream, piece, BodyEnd::Complete);
            assert_eq!(s.source, Source::Reported);
            assert_eq!((s.usage.input_tokens, s.usage.image_output_tokens, s.usage.output_tokens), (300, 1056, 200));
        }
        // Cut before the usage: the reservation.
        let s = extract(&call, "text/event-stream", &e.usage, &stream[..60], 1, BodyEnd::Cut);
        assert_eq!((s.source, s.usage), (Source::Estimated, e.usage));
    }

    #[test]
    fn whisper_reserves_by_upload_size_and_settles_on_duration() {
        let audio = vec![0u8; 60_000];
        let (call, e) = form_estimate(
            "/v1/audio/transcriptions",
            &[
                ("model", None, b"whisper-1"),
                ("file", Some("a.mp3"), &audio),
                ("response_format", None, b"json"),
            ],
        );
        let e = e.unwrap();
        // 60,000 bytes at 500 bytes a second: 120 s, $0.012.
        assert_eq!(e.usage.audio_millis, 120_000);
        assert_eq!(nanos("whisper-1", &e.usage), 12_000_000);
        let body = br#"{"text":"Gates open at eight.","usage":{"type":"duration","seconds":9.5}}"#;
        for piece in [1, 3, 100] {
            let s = extract(&call, "application/json", &e.usage, body, piece, BodyEnd::Complete);
            assert_eq!((s.source, s.usage.audio_millis), (Source::Reported, 9_500));
            // 9.5 s at $0.36/h
            assert_eq!(nanos("whisper-1", &s.usage), 950_000);
        }
        // A text transcript has no usage: the reservation, without an anomaly.
        let s = extract(&call, "text/plain", &e.usage, b"Gates open at eight.", 4, BodyEnd::Complete);
        assert_eq!((s.source, s.usage.audio_millis, s.anomaly), (Source::Estimated, 120_000, None));
        // Translations never report usage.
        let (call, e) = form_estimate("/v1/audio/translations", &[("model", None, b"whisper-1"), ("file", Some("a.mp3"), b"abc")]);
        let s = extract(&call, "application/json", &e.unwrap().usage, br#"{"text":"x"}"#, 2, BodyEnd::Complete);
        assert_eq!((s.source, s.usage.audio_millis), (Source::Estimated, 1_000));
    }

    #[test]
    fn token_transcription_streams_settle_on_the_done_event() {
        let audio = vec![7u8; 1_000];
        let (call, e) = form_estimate(
            "/v1/audio/transcriptions",
            &[
                ("model", None, b"gpt-4o-transcribe"),
                ("file", Some("a.wav"), &audio),
                ("stream", None, b"true"),
            ],
        );
        let e = e.unwrap();
        assert!(call.streaming);
        assert_eq!((e.usage.audio_input_tokens, e.usage.output_tokens), (68, 22));
        let stream = b"data: {\"type\":\"transcript.text.delta\",\"delta\":\"Gates \"}\n\n\
data: {\"type\":\"transcript.text.done\",\"text\":\"Gates open.\",\"usage\":{\"type\":\"tokens\",\"input_tokens\":120,\"input_token_details\":{\"text_tokens\":20,\"audio_tokens\":100},\"output_tokens\":4,\"total_tokens\":124}}\n\n";
        for piece in [1, 9, 512] {
            let s = extract(&call, "text/event-stream", &e.usage, stream, piece, BodyEnd::Complete);
            assert_eq!(s.source, Source::Reported);
            assert_eq!((s.usage.input_tokens, s.usage.audio_input_tokens, s.usage.output_tokens), (20, 100, 4));
            // 20 x $2.50/M + 100 x $6/M + 4 x $10/M
            assert_eq!(nanos("gpt-4o-transcribe", &s.usage), 690_000);
        }
        // Cut after some text: input reserved plus the text seen.
        let s = extract(&call, "text/event-stream", &e.usage, &stream[..70], 1, BodyEnd::Cut);
        assert_eq!((s.source, s.usage.audio_input_tokens, s.usage.output_tokens), (Source::Partial, 68, 2));
        // No file, two files, a wrong-typed flag.
        for parts in [
            vec![("model", None, &b"whisper-1"[..])],
            vec![("model", None, &b"whisper-1"[..]), ("file", Some("a"), b"1"), ("file", Some("b"), b"2")],
            vec![("model", None, &b"gpt-4o-transcribe"[..]), ("file", Some("a"), b"1"), ("stream", None, b"1")],
        ] {
            assert!(matches!(form_estimate("/v1/audio/transcriptions", &parts).1, Err(Refusal::InvalidBody(_))));
        }
    }

    #[test]
    fn videos_are_seconds_at_the_model_and_size_rate() {
        for (body, cost) in [
            (r#"{"prompt":"waves"}"#, 400_000_000),
            (r#"{"model":"sora-2","prompt":"waves","seconds":"8"}"#, 800_000_000),
            (r#"{"model":"sora-2-pro","prompt":"waves","seconds":"12","size":"1280x720"}"#, 3_600_000_000),
            // $0.50 a second (rounded up by a thousandth).
            (r#"{"model":"sora-2-pro","prompt":"waves","seconds":4,"size":"1792x1024"}"#, 2_000_400_000),
        ] {
            let (call, e) = json_estimate_of("/v1/videos", body);
            let e = e.unwrap();
            assert_eq!(nanos(call.model.as_deref().unwrap(), &e.usage), cost, "{body}");
            let s = extract(
                &call,
                "application/json",
                &e.usage,
                br#"{"id":"video_1","status":"queued"}"#,
                5,
                BodyEnd::Complete,
            );
            assert_eq!((s.source, s.usage), (Source::Reported, e.usage));
        }
        let (call, e) = form_estimate(
            "/v1/videos",
            &[("model", None, b"sora-2"), ("seconds", None, b"12"), ("input_reference", Some("a.png"), b"x")],
        );
        assert_eq!((call.json_body, e.unwrap().usage.video_seconds), (false, 12));
        for body in [r#"{"seconds":"eight"}"#, r#"{"seconds":0}"#, r#"{"seconds":true}"#] {
            assert!(matches!(json_estimate_of("/v1/videos", body).1, Err(Refusal::InvalidBody(_))), "{body}");
        }
        for body in [r#"{"model":"sora-2","size":"1792x1024"}"#, r#"{"model":"veo-3"}"#] {
            assert!(matches!(json_estimate_of("/v1/videos", body).1, Err(Refusal::NotMetered(_))), "{body}");
        }
    }

    #[test]
    fn responses_reserve_tools_tier_and_background_output() {
        let (call, e) = json_estimate_of(
            "/v1/responses",
            r#"{"model":"gpt-5","input":"abcd","service_tier":"priority","tools":[{"type":"web_search"},{"type":"code_interpreter","container":{"type":"auto"}}],"max_tool_calls":2}"#,
        );
        let e = e.unwrap();
        assert_eq!(call.endpoint_name(), "responses");
        assert_eq!((e.usage.web_searches, e.usage.code_sessions, e.usage.premium_permille), (2, 1, 1000));
        let (call, e) = json_estimate_of(
            "/v1/responses",
            r#"{"model":"gpt-5","input":"abcd","background":true,"max_output_tokens":1000000}"#,
        );
        let e = e.unwrap();
        assert_eq!((call.endpoint_name(), e.usage.output_tokens), ("responses_background", 1_000_000));
        let (_, e) = json_estimate_of("/v1/responses", r#"{"model":"gpt-5","input":"abcd","background":true}"#);
        assert_eq!(e.unwrap().usage.output_tokens, BACKGROUND_MAX_OUTPUT);
        let s = extract(
            &call,
            "application/json",
            &Usage {
                output_tokens: 9,
                ..Usage::default()
            },
            br#"{"status":"queued","usage":null}"#,
            2,
            BodyEnd::Complete,
        );
        assert_eq!((s.source, s.usage.output_tokens), (Source::Estimated, 9));
        for body in [
            r#"{"model":"gpt-5","background":"yes"}"#,
            r#"{"model":"gpt-5","max_output_tokens":"9"}"#,
            r#"{"model":"gpt-5","service_tier":1}"#,
        ] {
            assert!(matches!(json_estimate_of("/v1/responses", body).1, Err(Refusal::InvalidBody(_))), "{body}");
        }
        assert!(matches!(
            json_estimate_of("/v1/responses", r#"{"model":"gpt-5","tools":[{"type":"image_generation"}]}"#).1,
            Err(Refusal::NotMetered(_))
        ));
    }

    #[test]
    fn plain_responses_count_tool_calls_and_the_tier() {
        let estimate = Usage {
            input_tokens: 10,
            web_searches: 8,
            code_sessions: 1,
            ..Usage::default()
        };
        let call = Call::metered(Endpoint::Responses);
        let body = br#"{"id":"resp_1","model":"gpt-5-2025-08-07","service_tier":"priority","tools":[{"type":"web_search"}],
"output":[{"type":"web_search_call","id":"ws_1","action":{"type":"search","query":"tides"}},{"type":"web_search_call","id":"ws_2"},
{"type":"code_interpreter_call","container_id":"cntr_1","code":"print(1)","outputs":[{"type":"logs","logs":"1"}]},
{"type":"message","content":[{"type":"output_text","text":"web_search_call"}]}],
"usage":{"input_tokens":100,"output_tokens":20,"output_tokens_details":{"reasoning_tokens":5}}}"#;
        for piece in [1, 13, 10_000] {
            let s = extract(&call, "application/json", &estimate, body, piece, BodyEnd::Complete);
            assert_eq!(s.source, Source::Reported);
            assert_eq!((s.usage.web_searches, s.usage.code_sessions, s.usage.premium_permille), (2, 1, 1000));
            // (100 x $1.25/M + 20 x $10/M + 2 x $0.01 + $0.03) x 2
            assert_eq!(nanos("gpt-5", &s.usage), 100_650_000);
        }
        // Chat: the tier of the answer; no tool counting.
        let chat = Call::metered(Endpoint::Chat);
        let s = extract(
            &chat,
            "application/json",
            &Usage {
                premium_permille: 1000,
                ..Usage::default()
            },
            br#"{"model":"gpt-4o","service_tier":"default","usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
            4,
            BodyEnd::Complete,
        );
        assert_eq!((s.usage.premium_permille, s.usage.input_tokens), (0, 3));
    }

    #[test]
    fn responses_stream_counts_tools_as_they_start() {
        let estimate = Usage {
            input_tokens: 10,
            file_searches: 8,
            ..Usage::default()
        };
        let call = Call::metered(Endpoint::Responses).streaming(true);
        let body = b"event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"item\":{\"type\":\"file_search_call\",\"id\":\"fs_1\"}}\n\n\
event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"item\":{\"type\":\"file_search_call\",\"id\":\"fs_1\"}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Low tide at six\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"service_tier\":\"priority\",\"usage\":{\"input_tokens\":40,\"output_tokens\":4}}}\n\n";
        for piece in [1, 11, 4096] {
            let s = extract(&call, "text/event-stream", &estimate, body, piece, BodyEnd::Complete);
            assert_eq!(
                (s.source, s.usage.file_searches, s.usage.premium_permille, s.usage.input_tokens),
                (Source::Reported, 1, 1000, 40)
            );
        }
        // Cut before the end: the search and the text seen.
        let cut = &body[..body.len() - 150];
        let s = extract(&call, "text/event-stream", &estimate, cut, 3, BodyEnd::Cut);
        assert_eq!(
            (s.source, s.usage.file_searches, s.usage.output_tokens, s.usage.input_tokens),
            (Source::Partial, 1, 4, 10)
        );
    }

    #[test]
    fn chat_tier_and_search_fees() {
        let h = HeaderMap::new();
        let (_, e) = estimate_for(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-search-preview","messages":[],"web_search_options":{},"service_tier":"priority"}"#,
            &h,
        );
        assert_eq!((e.usage.web_searches, e.usage.premium_permille), (1, 1000));
        let call = Call::metered(Endpoint::Chat).streaming(true);
        let body = b"data: {\"model\":\"gpt-4o-search-preview\",\"service_tier\":\"priority\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let s = extract(&call, "text/event-stream", &e.usage, body, 6, BodyEnd::Complete);
        assert_eq!((s.usage.web_searches, s.usage.premium_permille, s.usage.input_tokens), (1, 1000, 10));
        // (10 x $2.50/M + 2 x $10/M + $0.025) x 2
        assert_eq!(nanos("gpt-4o-search-preview", &s.usage), 50_090_000);
        let (_, e) = json_estimate_of("/v1/chat/completions", r#"{"model":"gpt-4o","messages":[],"n":"2"}"#);
        assert!(matches!(e, Err(Refusal::InvalidBody(_))));
    }

    #[test]
    fn gemini_compat_paths_use_this_family() {
        static FAMILY: &dyn Provider = &OpenAi;
        let h = HeaderMap::new();
        let (call, e) = estimate_for(
            "/v1beta/openai/chat/completions",
            r#"{"model":"gemini-2.5-flash","messages":[],"stream":true}"#,
            &h,
        );
        assert_eq!(
            (call.endpoint_name(), call.model.as_deref(), e.filter_response),
            ("chat", Some("gemini-2.5-flash"), true)
        );
        assert_eq!(
            FAMILY.classify(&req(&Method::POST, "/v1beta/openai/embeddings", &h)).endpoint_name(),
            "embeddings"
        );
    }
}
