//! Provider families. Each module owns, for its API: which calls are metered (routing), the
//! estimate reserved before forwarding, and the incremental usage extraction on the response.
//!
//! The shared pieces are here: the [`Usage`] a call is billed for, the [`Provider`] trait,
//! and the incremental parsers ([`sse`], [`json_scan`]) and response decoding ([`decode`]).

pub mod decode;
pub mod elevenlabs;
pub mod gemini;
pub mod json_scan;
pub mod sse;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;

use crate::config::{ProviderKind, ReserveConfig};

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
    /// The whole prompt's size, for long-context price tiers (0 when not applicable).
    pub prompt_tokens: u64,
}

impl Usage {
    /// All input-side tokens.
    pub fn input_total(&self) -> u64 {
        self.input_tokens + self.cached_input_tokens + self.cache_write_tokens + self.cache_write_1h_tokens + self.audio_input_tokens
    }

    /// All output-side tokens.
    pub fn output_total(&self) -> u64 {
        self.output_tokens + self.audio_output_tokens + self.image_output_tokens
    }

    /// Every token, the `tokens` limit metric.
    pub fn tokens(&self) -> u64 {
        self.input_total() + self.output_total()
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

/// How a provider classified a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Short endpoint name for logs, e.g. `tts`, `generateContent`.
    pub endpoint: &'static str,
    /// The model the call uses, once known (from the path, else from the body).
    pub model: Option<String>,
    /// False for calls that cost nothing (listing, counting tokens, polling).
    pub metered: bool,
    /// The estimate needs the request body (it is buffered, up to a bound, before forwarding).
    pub needs_body: bool,
    /// The response is a stream (SSE, JSON array, chunked audio).
    pub streaming: bool,
}

impl Call {
    /// A free call: forwarded and counted as a request, but never priced.
    pub fn free(endpoint: &'static str, model: Option<String>) -> Self {
        Self {
            endpoint,
            model,
            metered: false,
            needs_body: false,
            streaming: false,
        }
    }
}

/// The estimate reserved before forwarding.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    pub usage: Usage,
    /// A replacement request body (for example to ask the upstream for usage).
    pub body: Option<Bytes>,
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
}

impl Anomaly {
    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::Missing => "missing",
            Anomaly::Malformed => "malformed",
            Anomaly::Cut => "cut",
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

/// Watches the (decoded) response body as it streams and tells the usage when it ends.
/// `feed` must be cheap and must never block: it runs on the forwarding path.
pub trait UsageExtractor: Send {
    fn feed(&mut self, chunk: &[u8]);
    fn finish(&mut self, end: BodyEnd) -> Settled;
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

/// A provider family.
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Which call this is; decided from the request head alone.
    fn classify(&self, req: &RequestInfo<'_>) -> Call;

    /// The usage to reserve for a metered call. `body` is the buffered request body when
    /// [`Call::needs_body`] is set (empty otherwise); the model may be filled in from it.
    fn estimate(&self, call: &mut Call, req: &RequestInfo<'_>, body: &[u8], reserve: &ReserveConfig) -> Estimate;

    /// The extractor for a successful (2xx) response of a metered call.
    fn extractor(&self, call: &Call, status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor>;
}

/// The implementation for a configured kind.
pub fn for_kind(kind: ProviderKind) -> Arc<dyn Provider> {
    match kind {
        ProviderKind::Elevenlabs => Arc::new(elevenlabs::ElevenLabs),
        ProviderKind::Gemini => Arc::new(gemini::Gemini::developer_api()),
        ProviderKind::Vertex => Arc::new(gemini::Gemini::vertex()),
        // Until their own modules land, these kinds are forwarded with a request-size
        // estimate and no extraction.
        ProviderKind::Openai | ProviderKind::Anthropic => Arc::new(Unmetered(kind)),
    }
}

/// A provider whose responses are not read: every call is charged its estimate.
struct Unmetered(ProviderKind);

impl Provider for Unmetered {
    fn kind(&self) -> ProviderKind {
        self.0
    }
    fn classify(&self, req: &RequestInfo<'_>) -> Call {
        Call {
            endpoint: "call",
            model: None,
            metered: *req.method == Method::POST,
            needs_body: *req.method == Method::POST,
            streaming: false,
        }
    }
    fn estimate(&self, _call: &mut Call, _req: &RequestInfo<'_>, body: &[u8], reserve: &ReserveConfig) -> Estimate {
        Estimate {
            usage: Usage {
                input_tokens: estimate_tokens(body.len(), reserve),
                output_tokens: reserve.max_output_tokens,
                ..Usage::default()
            },
            body: None,
        }
    }
    fn extractor(&self, _call: &Call, _status: StatusCode, _headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        Box::new(FixedCost::new(estimate.clone(), Source::Estimated))
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
