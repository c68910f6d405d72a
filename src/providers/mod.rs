//! Provider families. Each module owns, for its API: which calls are metered (routing), the
//! estimate reserved before forwarding, and the incremental usage extraction on the response.
//!
//! The shared pieces are here: the [`Usage`] a call is billed for and the [`Provider`] trait.
//! The byte-level readers they build on (SSE, JSON scanning, strict request bodies, response
//! decoding) are in [`crate::wire`].

pub mod anthropic;
pub mod elevenlabs;
pub mod gemini;
pub mod metered;
pub mod openai;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::config::{ProviderKind, ReserveConfig};
use crate::wire::{strict_json, BodyError};

/// What a call is billed for, in the units the price table multiplies.
///
/// Token kinds are disjoint: `input_tokens` excludes cached and cache-write tokens, and
/// `output_tokens` includes reasoning/thinking tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub cache_write_1h_tokens: u64,
    pub audio_input_tokens: u64,
    pub output_tokens: u64,
    pub audio_output_tokens: u64,
    pub image_output_tokens: u64,
    pub characters: u64,
    pub images: u64,
    pub video_seconds: u64,
    /// Duration of input audio (speech to text), in milliseconds.
    pub audio_millis: u64,
    pub web_searches: u64,
    /// Calls of the OpenAI Responses API's file search tool.
    pub file_searches: u64,
    /// Code interpreter containers (sessions) started by a call.
    pub code_sessions: u64,
    /// The whole prompt's size, for long-context price tiers (0 when not applicable).
    pub prompt_tokens: u64,
    /// A price modifier that raises the bill (priority tiers, fast mode, regional inference),
    /// in thousandths above list price: 1000 doubles the cost. 0 is list price.
    pub premium_permille: u64,
}

impl Usage {
    /// All input-side tokens (saturating: counts come from upstream bodies).
    pub fn input_total(&self) -> u64 {
        [
            self.cached_input_tokens,
            self.cache_write_tokens,
            self.cache_write_1h_tokens,
            self.audio_input_tokens,
        ]
        .into_iter()
        .fold(self.input_tokens, u64::saturating_add)
    }

    /// The field-wise maximum of two usages: priced, it is at least either's cost.
    pub fn max_with(&self, o: &Usage) -> Usage {
        macro_rules! m { ($($f:ident),*) => { Usage { $( $f: self.$f.max(o.$f), )* } }; }
        m!(
            input_tokens,
            cached_input_tokens,
            cache_write_tokens,
            cache_write_1h_tokens,
            audio_input_tokens,
            output_tokens,
            audio_output_tokens,
            image_output_tokens,
            characters,
            images,
            video_seconds,
            audio_millis,
            web_searches,
            file_searches,
            code_sessions,
            prompt_tokens,
            premium_permille
        )
    }

    /// All output-side tokens (saturating).
    pub fn output_total(&self) -> u64 {
        [self.audio_output_tokens, self.image_output_tokens]
            .into_iter()
            .fold(self.output_tokens, u64::saturating_add)
    }

    /// Every token, the `tokens` limit metric.
    pub fn tokens(&self) -> u64 {
        self.input_total().saturating_add(self.output_total())
    }

    /// Only the input side (with the prompt size): what a call whose output is unknown costs
    /// at least.
    pub fn input_side(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            cached_input_tokens: self.cached_input_tokens,
            cache_write_tokens: self.cache_write_tokens,
            cache_write_1h_tokens: self.cache_write_1h_tokens,
            audio_input_tokens: self.audio_input_tokens,
            prompt_tokens: self.prompt_tokens,
            premium_permille: self.premium_permille,
            ..Usage::default()
        }
    }
}

/// The request as the provider sees it (after the mount prefix is removed).
#[derive(Debug)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    /// Upstream path, starting with `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// How a provider classified a request. Every request falls in one of three classes:
/// metered (estimated, reserved, read and priced), known free (listing, counting tokens,
/// polling, reading files), or not metered (`unmetered` says why): an endpoint the proxy
/// cannot charge, refused unless the provider's `unmetered` setting allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The endpoint, and what its provider keeps of the call from classifying to reading the
    /// answer (see [`CallContext`]).
    pub context: CallContext,
    /// The model the call uses, once known (from the path, else from the body).
    pub model: Option<String>,
    /// True for calls that are priced.
    pub metered: bool,
    /// Set for calls the proxy cannot meter: why (the end of the refusal's message, e.g.
    /// "batches are billed when their results are produced").
    pub unmetered: Option<&'static str>,
    /// The estimate needs the request body (it is buffered, up to a bound, before forwarding).
    pub needs_body: bool,
    /// The buffered body is JSON: it is parsed strictly (see [`strict_json`]) before the
    /// estimate, and refused when it cannot be. False for multipart and raw uploads.
    pub json_body: bool,
    /// The response is a stream (SSE, JSON array, chunked audio).
    pub streaming: bool,
    /// A free call whose answer may carry the final usage of an earlier call billed later
    /// (see [`UsageExtractor::later`]): that call's id, e.g. a background response's.
    pub settles: Option<String>,
}

/// A provider family's typed state of one call: made by `classify`, filled in by `estimate`
/// (streaming, background, speech format, premium...), read by `extractor`. Each family reads
/// only its own variant; a call of another family reaching it is a programming error.
pub trait Context: Sized + Into<CallContext> {
    /// The family's name, for the error message of a misrouted call.
    const FAMILY: &'static str;
    fn of(context: &CallContext) -> Option<&Self>;
    /// The endpoint's name for logs and metrics.
    fn name(&self) -> &'static str;
}

macro_rules! call_contexts {
    ($($variant:ident($ty:ty) = $family:literal),* $(,)?) => {
        /// What a provider keeps of a call (see [`Context`]).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum CallContext {
            /// A call no provider reads further (free or not metered): its name only.
            Named(&'static str),
            $($variant($ty),)*
        }

        impl CallContext {
            /// The endpoint's name for logs and metrics, e.g. `chat`, `generateContent`.
            pub fn name(&self) -> &'static str {
                match self {
                    CallContext::Named(name) => name,
                    $(CallContext::$variant(c) => c.name(),)*
                }
            }
        }

        $(
            impl From<$ty> for CallContext {
                fn from(c: $ty) -> Self {
                    CallContext::$variant(c)
                }
            }

            impl Context for $ty {
                const FAMILY: &'static str = $family;
                fn of(context: &CallContext) -> Option<&Self> {
                    match context {
                        CallContext::$variant(c) => Some(c),
                        _ => None,
                    }
                }
                fn name(&self) -> &'static str {
                    <$ty>::name(self)
                }
            }
        )*
    };
}

call_contexts!(
    OpenAi(openai::Ctx) = "OpenAI",
    Anthropic(anthropic::Ctx) = "Anthropic",
    Gemini(gemini::Ctx) = "Gemini",
    ElevenLabs(elevenlabs::Ctx) = "ElevenLabs",
);

impl From<&'static str> for CallContext {
    fn from(name: &'static str) -> Self {
        CallContext::Named(name)
    }
}

impl Call {
    /// A metered call whose estimate reads the JSON body.
    pub fn metered(context: impl Into<CallContext>) -> Self {
        Self {
            context: context.into(),
            model: None,
            metered: true,
            unmetered: None,
            needs_body: true,
            json_body: true,
            streaming: false,
            settles: None,
        }
    }

    /// A free call: forwarded and counted as a request, but never priced.
    pub fn free(context: impl Into<CallContext>, model: Option<String>) -> Self {
        Self {
            context: context.into(),
            model,
            metered: false,
            unmetered: None,
            needs_body: false,
            json_body: false,
            streaming: false,
            settles: None,
        }
    }

    /// An endpoint the proxy cannot meter; `why` ends the refusal's message.
    pub fn not_metered(endpoint: &'static str, why: &'static str) -> Self {
        Self {
            unmetered: Some(why),
            ..Self::free(endpoint, None)
        }
    }

    /// The endpoint's name for logs and metrics.
    pub fn endpoint_name(&self) -> &'static str {
        self.context.name()
    }

    /// The family's own context of this call. A call classified by another family (or not
    /// read by any) is refused: a programming error, never a call to let through unread.
    pub fn context_of<C: Context>(&self) -> Result<&C, Refusal> {
        C::of(&self.context).ok_or_else(|| {
            Refusal::NotMetered(format!(
                "the {} call reached the {} provider, which did not classify it",
                self.context.name(),
                C::FAMILY
            ))
        })
    }

    /// The family's own context of a call it classified; see [`Call::context_of`]. For the
    /// answer's side, where a call can no longer be refused.
    pub fn own_context<C: Context>(&self) -> &C {
        match self.context_of::<C>() {
            Ok(c) => c,
            Err(e) => unreachable!("{e:?}"),
        }
    }

    /// This (free) call's answer may carry the final usage of the earlier call `id`.
    pub fn settling(mut self, id: &str) -> Self {
        self.settles = Some(id.to_string());
        self
    }

    pub fn with_model(mut self, model: Option<String>) -> Self {
        self.model = model;
        self
    }

    pub fn streaming(mut self, streaming: bool) -> Self {
        self.streaming = streaming;
        self
    }

    /// The estimate reads the request head only (the body streams through).
    pub fn head_only(mut self) -> Self {
        self.needs_body = false;
        self.json_body = false;
        self
    }

    /// The body is buffered but is not JSON (multipart, raw audio).
    pub fn raw_body(mut self) -> Self {
        self.json_body = false;
        self
    }
}

#[cfg(test)]
impl Call {
    /// One letter per class, for the endpoint tables' tests: `m`etered, `s`treamed (metered),
    /// `f`ree, `r`efused (not metered).
    pub(crate) fn class_letter(&self) -> char {
        match (self.metered, self.streaming, self.unmetered.is_some()) {
            (true, true, _) => 's',
            (true, false, _) => 'm',
            (false, _, false) => 'f',
            (false, _, true) => 'r',
        }
    }
}

/// The buffered request body of a metered call.
#[derive(Debug, Clone, Copy)]
pub struct RequestBody<'a> {
    /// The bytes as the client sent them (empty when the call does not need the body).
    pub bytes: &'a [u8],
    /// The strictly parsed JSON, for calls with [`Call::json_body`].
    pub json: Option<&'a Value>,
}

impl<'a> RequestBody<'a> {
    pub const EMPTY: RequestBody<'static> = RequestBody { bytes: &[], json: None };

    /// The JSON object (refused when the body is JSON but not an object).
    pub fn object(&self) -> Result<&'a Value, Refusal> {
        match self.json {
            Some(v) => Ok(strict_json::object(v)?),
            None => Err(Refusal::InvalidBody("the request body must be a JSON object".into())),
        }
    }
}

/// Why a provider will not let a metered call through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The body cannot be read as the provider reads it (400 `invalid_request_body`).
    InvalidBody(String),
    /// The call cannot be charged (403 `endpoint_not_metered`); the message says why.
    NotMetered(String),
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        Refusal::InvalidBody(e.0)
    }
}

/// Longest model name accepted.
pub const MAX_MODEL_LEN: usize = 256;

/// A model name from a request: 1 to 256 bytes of printable ASCII without spaces.
pub fn validate_model(model: &str) -> Result<(), Refusal> {
    let ok = !model.is_empty() && model.len() <= MAX_MODEL_LEN && model.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Refusal::InvalidBody(format!(
            "the model name {:?} is not 1 to {MAX_MODEL_LEN} printable ASCII characters",
            strict_json::Printable(model)
        )))
    }
}

/// The estimate reserved before forwarding.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    pub usage: Usage,
    /// A replacement request body (for example to ask the upstream for usage).
    pub body: Option<Bytes>,
    /// The replacement body asks for something the client did not (usage in a stream), so
    /// the response must be given back as the client would have had it: the provider's
    /// [`Provider::body_filter`] removes what was added.
    pub filter_response: bool,
}

/// How the response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The body ended normally.
    Complete,
    /// The upstream failed, timed out, or the client went away before the end.
    Cut,
}

/// Where the settled usage came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Reported by the upstream (or exact from the request, as for ElevenLabs).
    Reported,
    /// Part reported, part estimated (a stream cut short).
    Partial,
    /// Nothing usable was reported; the estimate stands.
    Estimated,
    /// The call is free.
    Free,
    /// The upstream answered an error and reported no usage: nothing is charged.
    UpstreamError,
}

/// Why the estimate had to stand in for reported usage (for the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// The body ended without the usage the provider always sends.
    Missing,
    /// The body could not be parsed (or decoded).
    Malformed,
    /// The body was cut before usage arrived.
    Cut,
    /// The upstream did not answer within the idle timeout (the request may have reached it).
    Timeout,
    /// The upstream connection failed after the request may have reached it.
    UpstreamError,
    /// The client went away before the answer's head.
    ClientGone,
    /// The process stopped before the call ended.
    Shutdown,
}

impl Anomaly {
    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::Missing => "missing",
            Anomaly::Malformed => "malformed",
            Anomaly::Cut => "cut",
            Anomaly::Timeout => "timeout",
            Anomaly::UpstreamError => "upstream_error",
            Anomaly::ClientGone => "client_gone",
            Anomaly::Shutdown => "shutdown",
        }
    }
}

/// The outcome of watching a response body.
#[derive(Debug, Clone)]
pub struct Settled {
    pub usage: Usage,
    pub source: Source,
    /// The model the response names, when it names one.
    pub response_model: Option<String>,
    pub anomaly: Option<Anomaly>,
}

impl Settled {
    pub fn free() -> Self {
        Self {
            usage: Usage::default(),
            source: Source::Free,
            response_model: None,
            anomaly: None,
        }
    }

    pub fn upstream_error() -> Self {
        Self {
            usage: Usage::default(),
            source: Source::UpstreamError,
            response_model: None,
            anomaly: None,
        }
    }

    pub fn estimated(estimate: &Usage, anomaly: Anomaly) -> Self {
        Self {
            usage: estimate.clone(),
            source: Source::Estimated,
            response_model: None,
            anomaly: Some(anomaly),
        }
    }
}

/// Rewrites a response body on its way to the client: decoded bytes in, the bytes the client
/// gets out. It may hold back an incomplete piece (an SSE event not yet terminated) but never
/// a complete one, so a stream is never delayed beyond the upstream's own pace.
pub trait BodyFilter: Send {
    /// The bytes to pass on for this chunk (possibly empty).
    fn filter(&mut self, chunk: &[u8]) -> Bytes;
    /// The body ended (complete or cut): whatever is still held back.
    fn finish(&mut self) -> Bytes;
}

/// Watches the (decoded) response body as it streams and tells the usage when it ends.
/// `feed` must be cheap and must never block: it runs on the forwarding path.
pub trait UsageExtractor: Send {
    fn feed(&mut self, chunk: &[u8]);
    fn finish(&mut self, end: BodyEnd) -> Settled;

    /// For a call whose bill comes later (a background response): the id under which a later
    /// call's answer ([`Call::settles`]) reports the final usage. Read once the body ended.
    fn later(&self) -> Option<String> {
        None
    }
}

/// An extractor for calls whose cost is fixed before forwarding (free calls, exact
/// estimates): the estimate stands when the upstream succeeds, nothing is charged otherwise.
pub struct FixedCost {
    usage: Usage,
    source: Source,
}

impl FixedCost {
    pub fn new(usage: Usage, source: Source) -> Self {
        Self { usage, source }
    }
}

impl UsageExtractor for FixedCost {
    fn feed(&mut self, _chunk: &[u8]) {}
    fn finish(&mut self, _end: BodyEnd) -> Settled {
        Settled {
            usage: std::mem::take(&mut self.usage),
            source: self.source,
            response_model: None,
            anomaly: None,
        }
    }
}

/// Another family's wire format served under a provider's host: Gemini's OpenAI-compatible
/// endpoints (OpenAI wire, Gemini prices), Claude on Vertex (Anthropic wire and prices).
#[derive(Clone, Copy)]
pub struct Wire {
    /// The family that classifies, estimates and reads the call.
    pub provider: &'static dyn Provider,
    /// The price table the call is priced from.
    pub prices: ProviderKind,
}

/// A provider family.
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// The family whose wire format a request uses, when it is not this one's (see [`Wire`]).
    /// The proxy then classifies, estimates and reads the call with that family.
    fn wire_for(&self, _req: &RequestInfo<'_>) -> Option<Wire> {
        None
    }

    /// Which call this is; decided from the request head alone.
    fn classify(&self, req: &RequestInfo<'_>) -> Call;

    /// The usage to reserve for a metered call. `body` is the buffered request body when
    /// [`Call::needs_body`] is set (empty otherwise), parsed when [`Call::json_body`] is; the
    /// model may be filled in from it. A call whose estimate cannot be computed is refused:
    /// it is never estimated at zero.
    fn estimate(&self, call: &mut Call, req: &RequestInfo<'_>, body: &RequestBody<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal>;

    /// The extractor for a successful (2xx) response of a metered call.
    fn extractor(&self, call: &Call, status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor>;

    /// The filter that restores a successful response whose request was rewritten with
    /// [`Estimate::filter_response`] set. Only called for such responses.
    fn body_filter(&self, _call: &Call, _headers: &HeaderMap) -> Option<Box<dyn BodyFilter>> {
        None
    }
}

/// Reads a metered call's buffered body the way the provider will: parses it strictly when
/// it is JSON, lets the provider estimate it, and validates the model it names.
pub fn estimate_call(provider: &dyn Provider, call: &mut Call, req: &RequestInfo<'_>, bytes: &[u8], reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
    let json = if call.needs_body && call.json_body {
        Some(strict_json::parse(bytes)?)
    } else {
        None
    };
    let body = RequestBody { bytes, json: json.as_ref() };
    let estimate = provider.estimate(call, req, &body, reserve)?;
    if let Some(model) = &call.model {
        validate_model(model)?;
    }
    Ok(estimate)
}

/// The implementation for a configured kind.
pub fn for_kind(kind: ProviderKind) -> Arc<dyn Provider> {
    match kind {
        ProviderKind::Elevenlabs => Arc::new(elevenlabs::ElevenLabs),
        ProviderKind::Gemini => Arc::new(gemini::Gemini::developer_api()),
        ProviderKind::Vertex => Arc::new(gemini::Gemini::vertex()),
        ProviderKind::Openai => Arc::new(openai::OpenAi),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic),
    }
}

/// Tokens estimated from a byte count (rounded up).
pub fn estimate_tokens(bytes: usize, reserve: &ReserveConfig) -> u64 {
    (bytes as u64).div_ceil(reserve.bytes_per_token.max(1))
}

/// The output tokens to reserve: the request's own maximum capped by the configured one.
pub fn reserve_output(requested: Option<u64>, reserve: &ReserveConfig) -> u64 {
    requested.map_or(reserve.max_output_tokens, |r| r.min(reserve.max_output_tokens))
}

/// True when a response is an SSE stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

/// Output tokens estimated from the text of a response seen so far (a stream cut before the
/// upstream reported usage): about 4 bytes of text per token, the providers' own rule of
/// thumb for English prose, rounded up.
pub fn output_tokens_from_text(bytes: u64) -> u64 {
    bytes.div_ceil(4)
}

/// Bytes of text in a request: every string value, with long base64-looking strings (inline
/// media) counted as a fixed allowance instead of their size.
pub fn text_bytes(v: &Value) -> usize {
    /// Media parts are billed by their pixels or seconds, not by their base64 size; a 1024px
    /// image is 258 to 1290 tokens. The allowance, in bytes of text at 4 bytes per token.
    const MEDIA_ALLOWANCE_BYTES: usize = 1290 * 4;
    match v {
        Value::String(s) if s.len() > 4096 && !s.contains(char::is_whitespace) => MEDIA_ALLOWANCE_BYTES,
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_bytes).sum(),
        Value::Object(o) => o.values().map(text_bytes).sum(),
        _ => 0,
    }
}

/// True when a request path (without its query) matches a route pattern, segment by segment:
/// `*` matches exactly one non-empty segment, a final `**` matches any rest (even none), any
/// other segment matches itself. Leading and trailing slashes are ignored.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    // Both walked together byte by byte: every request tries the routes of its provider's
    // table in order, and most patterns differ from the path within a few bytes.
    let (p, s) = (pattern.trim_matches('/').as_bytes(), path.trim_matches('/').as_bytes());
    let is = |rest: &[u8], seg: &[u8]| rest.strip_prefix(seg).is_some_and(|r| r.is_empty() || r[0] == b'/');
    let (mut i, mut j) = (0, 0);
    loop {
        // At the start of a segment of each.
        if is(&p[i..], b"**") {
            return true;
        }
        if j == s.len() || s[j] == b'/' {
            // An empty segment matches nothing.
            return false;
        }
        if is(&p[i..], b"*") {
            i += 1;
            while j < s.len() && s[j] != b'/' {
                j += 1;
            }
        } else {
            while i < p.len() && p[i] != b'/' {
                if j == s.len() || s[j] != p[i] {
                    return false;
                }
                i += 1;
                j += 1;
            }
            if j < s.len() && s[j] != b'/' {
                return false;
            }
        }
        // At the end of a segment of each.
        match (i < p.len(), j < s.len()) {
            (false, false) => return true,
            (false, true) => return false,
            // The path ended: only a trailing `**` still matches.
            (true, false) => return is(&p[i + 1..], b"**"),
            (true, true) => (i, j) = (i + 1, j + 1),
        }
    }
}

/// True for a WebSocket upgrade: a session whose traffic the proxy does not read.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Two price premiums applied one after the other (each in thousandths above list), rounded
/// up: 1.1x then 6x is 6.6x, 5600.
pub fn compose_premiums(a: u64, b: u64) -> u64 {
    ((1000 + u128::from(a)) * (1000 + u128::from(b)))
        .div_ceil(1000)
        .saturating_sub(1000)
        .min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn path_patterns() {
        assert!(path_matches("v1/text-to-speech/*", "/v1/text-to-speech/abc"));
        assert!(path_matches("v1/text-to-speech/*", "/v1/text-to-speech/abc/"));
        assert!(!path_matches("v1/text-to-speech/*", "/v1/text-to-speech/abc/stream"));
        assert!(!path_matches("v1/text-to-speech/*", "/v1/text-to-speech"));
        assert!(!path_matches("v1/text-to-speech/*", "/v1/text-to-speech//"));
        assert!(path_matches("v1/voices/**", "/v1/voices"));
        assert!(path_matches("v1/voices/**", "/v1/voices/a/b/c"));
        assert!(!path_matches("v1/voices/**", "/v1/voicesx"));
        assert!(!path_matches("v1/a/*/c", "/v1/a//c"));
        assert!(path_matches("*/models", "/v1/models"));
        assert!(!path_matches("v1/a*b/c", "/v1/axb/c"), "a star inside a segment is literal");
        assert!(path_matches("v1/a*b/c", "/v1/a*b/c"));
    }

    /// Segment by segment, with no shortcut: what [`path_matches`] must agree with.
    fn matches_by_segments(pattern: &str, path: &str) -> bool {
        let mut path = path.trim_matches('/').split('/');
        for want in pattern.trim_matches('/').split('/') {
            if want == "**" {
                return true;
            }
            match path.next() {
                Some(seg) if !seg.is_empty() && (want == "*" || want == seg) => {}
                _ => return false,
            }
        }
        path.next().is_none()
    }

    proptest::proptest! {
        /// Walking the bytes gives the answers of splitting into segments. Patterns and paths
        /// are drawn from a few segments (and stray slashes) so that near misses are common.
        #[test]
        fn byte_matching_agrees_with_matching_by_split_segments(
            pattern in proptest::collection::vec(proptest::sample::select(vec!["v1", "a", "ab", "*", "**", "a*", "", "x", "é"]), 0..5),
            path in proptest::collection::vec(proptest::sample::select(vec!["v1", "a", "ab", "a*", "*", "**", "", "x", "é", "y"]), 0..6),
            lead in proptest::bool::ANY,
            trail in proptest::bool::ANY,
        ) {
            let pattern = pattern.join("/");
            let path = format!("{}{}{}", if lead { "/" } else { "" }, path.join("/"), if trail { "/" } else { "" });
            proptest::prop_assert_eq!(path_matches(&pattern, &path), matches_by_segments(&pattern, &path), "{} vs {}", pattern, path);
        }
    }

    #[test]
    fn premiums_compose() {
        assert_eq!(compose_premiums(0, 0), 0);
        assert_eq!(compose_premiums(100, 0), 100);
        assert_eq!(compose_premiums(100, 5000), 5600);
        assert_eq!(compose_premiums(1, 1), 3); // 1.001 * 1.001 = 1.002001, rounded up
    }
}
