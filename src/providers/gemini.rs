//! Google Gemini (generativelanguage) and Vertex AI: text generation (plain, SSE stream and
//! JSON-array stream), token counting (free), embeddings, Imagen and Veo; the endpoint table
//! is in [`routes`]. Gemini's OpenAI-compatible endpoints and Claude on Vertex are other wire
//! formats, served through [`Wire`].
//!
//! Usage comes from `usageMetadata`, which streams repeat as a running total: the latest
//! value of each field wins, and a chunk cut short never counts.
//!
//! Fees beyond tokens: grounding with Google Search is billed per grounded prompt on Gemini
//! 2.x and per search query on later models. It is reserved when the request's tools ask for
//! it and settled from the distinct `groundingMetadata.webSearchQueries` of the response. The
//! priority tier (`serviceTier`) is a premium on the whole call. Both are read in either of
//! the spellings Google's JSON reader accepts (`serviceTier`, `service_tier`).

mod routes;

use std::collections::BTreeSet;

use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::json_scan::{JsonScanner, Record};
use super::sse::SseParser;
use super::strict_json::Printable;
use super::{
    estimate_tokens, reserve_output, text_bytes, Anomaly, BodyEnd, Call, Estimate, FixedCost, Provider, Refusal, RequestBody, RequestInfo, Settled, Source,
    Usage, UsageExtractor, Wire,
};
use crate::config::{ProviderKind, ReserveConfig};

/// Images Imagen returns when the request does not say (`sampleCount` default).
const IMAGEN_DEFAULT_SAMPLES: u64 = 4;
/// Seconds of video Veo renders when the request does not say (Veo 3.x default).
const VEO_DEFAULT_SECONDS: u64 = 8;
/// Veo at 4k costs $0.60 a second against $0.40 at 720p/1080p (Gemini pricing page, as
/// transcribed 2026-09-20): a 1.5x premium.
const VEO_4K_PREMIUM: u64 = 500;
/// The priority tier: +75% to +100% over standard (ai.google.dev/gemini-api/docs/optimization,
/// read 2026-11-22); the upper end is charged.
const PRIORITY_PREMIUM: u64 = 1000;
/// Search queries reserved for a grounded call on models billed per query; the response's
/// queries are what is charged.
const GROUNDING_QUERIES_RESERVED: u64 = 5;

/// The Gemini family; `vertex` selects the Vertex AI path shapes.
pub struct Gemini {
    vertex: bool,
}

impl Gemini {
    pub fn developer_api() -> Self {
        Self { vertex: false }
    }
    pub fn vertex() -> Self {
        Self { vertex: true }
    }
}

impl Provider for Gemini {
    fn kind(&self) -> ProviderKind {
        if self.vertex {
            ProviderKind::Vertex
        } else {
            ProviderKind::Gemini
        }
    }

    fn wire_for(&self, req: &RequestInfo<'_>) -> Option<Wire> {
        let p = routes::parse(req.path).filter(|p| !p.upload)?;
        let openai = Wire {
            provider: &super::openai::OpenAi,
            prices: ProviderKind::Gemini,
        };
        match p.resource.as_slice() {
            ["openai", ..] if !self.vertex => Some(openai),
            ["endpoints", "openapi", ..] if self.vertex => Some(openai),
            _ if self.vertex && super::anthropic::is_vertex_path(req.path) => Some(Wire {
                provider: &super::anthropic::Anthropic,
                prices: ProviderKind::Anthropic,
            }),
            _ => None,
        }
    }

    fn classify(&self, req: &RequestInfo<'_>) -> Call {
        routes::classify(req)
    }

    fn estimate(&self, call: &mut Call, _req: &RequestInfo<'_>, body: &RequestBody<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
        let json = body.object()?;
        let usage = match call.endpoint {
            routes::IMAGEN => imagen(json)?,
            routes::VEO => veo(json)?,
            routes::EMBED | routes::BATCH_EMBED | routes::PREDICT_EMBEDDINGS => Usage {
                input_tokens: estimate_tokens(text_bytes(json), reserve),
                ..Usage::default()
            },
            _ => generate(json, call.model.as_deref().unwrap_or_default(), reserve)?,
        };
        Ok(Estimate { usage, ..Estimate::default() })
    }

    fn extractor(&self, call: &Call, _status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        match call.endpoint {
            // Embedding responses carry no usage; the request-size estimate is the bill.
            routes::EMBED | routes::BATCH_EMBED | routes::PREDICT_EMBEDDINGS => Box::new(FixedCost::new(estimate.clone(), Source::Estimated)),
            // Veo is priced at submission: seconds requested.
            routes::VEO => Box::new(FixedCost::new(estimate.clone(), Source::Reported)),
            routes::IMAGEN => Box::new(ImagenImages {
                scanner: JsonScanner::new(1, &["error"], &["bytesBase64Encoded"]),
                images: None,
                estimate: estimate.clone(),
            }),
            _ => {
                let sse = call.streaming && !is_json(headers);
                let per_prompt = grounding_per_prompt(call.model.as_deref().unwrap_or_default());
                Box::new(UsageMetadataExtractor::new(estimate.clone(), call.streaming, sse, per_prompt))
            }
        }
    }
}

/// A member under either spelling Google's JSON reader accepts; refused when both are given
/// (the reader would take one of them).
fn member<'a>(obj: &'a Value, camel: &str, snake: &str) -> Result<Option<&'a Value>, Refusal> {
    let snake_value = if snake == camel { None } else { obj.get(snake).filter(|v| !v.is_null()) };
    match (obj.get(camel).filter(|v| !v.is_null()), snake_value) {
        (Some(_), Some(_)) => Err(Refusal::InvalidBody(format!(
            "the members {camel:?} and {snake:?} are the same field, given twice"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// An integer member as Google's JSON reader takes it: a non-negative integer or a decimal
/// string of one; anything else is refused.
fn proto_uint(obj: &Value, camel: &str, snake: &str) -> Result<Option<u64>, Refusal> {
    let wrong = || Refusal::InvalidBody(format!("the member {camel:?} must be a non-negative integer"));
    match member(obj, camel, snake)? {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f <= 9.0e15 => Ok(Some(f as u64)),
            _ => Err(wrong()),
        },
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| wrong()),
        Some(_) => Err(wrong()),
    }
}

/// An object member (absent is an empty object); refused when it is another type.
fn object_member<'a>(obj: &'a Value, camel: &str, snake: &str) -> Result<Option<&'a Value>, Refusal> {
    match member(obj, camel, snake)? {
        Some(v) if !v.is_object() => Err(Refusal::InvalidBody(format!("the member {camel:?} must be an object"))),
        v => Ok(v),
    }
}

fn string_member<'a>(obj: &'a Value, camel: &str, snake: &str) -> Result<Option<&'a str>, Refusal> {
    match member(obj, camel, snake)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Refusal::InvalidBody(format!("the member {camel:?} must be a string"))),
    }
}

/// Grounding with Google Search is billed per grounded prompt on Gemini 2.x and earlier, per
/// search query on later models.
fn grounding_per_prompt(model: &str) -> bool {
    model.starts_with("gemini-2") || model.starts_with("gemini-1")
}

/// What the request's tools ask for that is billed beyond tokens: true when Google Search
/// grounding is on. Grounding sources the proxy has no price for are refused.
fn search_grounding(json: &Value) -> Result<bool, Refusal> {
    const SEARCH: &[&str] = &["googleSearch", "google_search", "googleSearchRetrieval", "google_search_retrieval"];
    const UNPRICED: &[&str] = &["googleMaps", "google_maps", "enterpriseWebSearch", "enterprise_web_search"];
    let tools = match json.get("tools") {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Refusal::InvalidBody("the member \"tools\" must be an array".into())),
    };
    let mut search = false;
    for tool in tools {
        let Some(tool) = tool.as_object() else {
            return Err(Refusal::InvalidBody("each tool must be an object".into()));
        };
        if let Some(key) = tool.keys().find(|k| UNPRICED.contains(&k.as_str())) {
            return Err(Refusal::NotMetered(format!(
                "the tool {:?} carries a grounding fee the proxy has no price for",
                Printable(key)
            )));
        }
        search |= tool.keys().any(|k| SEARCH.contains(&k.as_str()));
    }
    Ok(search)
}

/// The premium of the requested service tier.
fn tier_premium(json: &Value) -> Result<u64, Refusal> {
    let tier = string_member(json, "serviceTier", "service_tier")?.unwrap_or_default();
    Ok(if tier.to_ascii_lowercase().contains("priority") {
        PRIORITY_PREMIUM
    } else {
        0
    })
}

fn generate(json: &Value, model: &str, reserve: &ReserveConfig) -> Result<Usage, Refusal> {
    let config = object_member(json, "generationConfig", "generation_config")?;
    let (max_out, candidates) = match config {
        Some(c) => (
            proto_uint(c, "maxOutputTokens", "max_output_tokens")?,
            proto_uint(c, "candidateCount", "candidate_count")?,
        ),
        None => (None, None),
    };
    let input = estimate_tokens(text_bytes(json), reserve);
    let searches = match (search_grounding(json)?, grounding_per_prompt(model)) {
        (false, _) => 0,
        (true, true) => 1,
        (true, false) => GROUNDING_QUERIES_RESERVED,
    };
    Ok(Usage {
        input_tokens: input,
        output_tokens: reserve_output(max_out, reserve).saturating_mul(candidates.unwrap_or(1).max(1)),
        prompt_tokens: input,
        web_searches: searches,
        premium_permille: tier_premium(json)?,
        ..Usage::default()
    })
}

/// The number of `instances` (at least one) and the `parameters` object of a `:predict` body.
fn predict_shape(json: &Value) -> Result<(u64, Option<&Value>), Refusal> {
    let instances = match json.get("instances") {
        None | Some(Value::Null) => 1,
        Some(Value::Array(a)) => a.len().max(1) as u64,
        Some(_) => return Err(Refusal::InvalidBody("the member \"instances\" must be an array".into())),
    };
    Ok((instances, object_member(json, "parameters", "parameters")?))
}

fn imagen(json: &Value) -> Result<Usage, Refusal> {
    let (instances, params) = predict_shape(json)?;
    let samples = match params {
        Some(p) => proto_uint(p, "sampleCount", "sample_count")?,
        None => None,
    };
    Ok(Usage {
        images: samples.unwrap_or(IMAGEN_DEFAULT_SAMPLES).max(1).saturating_mul(instances),
        ..Usage::default()
    })
}

fn veo(json: &Value) -> Result<Usage, Refusal> {
    let (instances, params) = predict_shape(json)?;
    let (seconds, samples, resolution) = match params {
        Some(p) => (
            proto_uint(p, "durationSeconds", "duration_seconds")?,
            proto_uint(p, "sampleCount", "sample_count")?,
            string_member(p, "resolution", "resolution")?,
        ),
        None => (None, None, None),
    };
    let videos = samples.unwrap_or(1).max(1).saturating_mul(instances);
    Ok(Usage {
        video_seconds: seconds.unwrap_or(VEO_DEFAULT_SECONDS).max(1).saturating_mul(videos),
        premium_permille: if resolution.is_some_and(|r| r.eq_ignore_ascii_case("4k")) {
            VEO_4K_PREMIUM
        } else {
            0
        },
        ..Usage::default()
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"))
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    #[serde(default)]
    modality: Modality,
    #[serde(default)]
    token_count: u64,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
enum Modality {
    Audio,
    Image,
    #[default]
    #[serde(other)]
    Other,
}

/// `usageMetadata`; absent fields are `None` so that a sparse chunk does not erase a field an
/// earlier chunk reported.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    tool_use_prompt_token_count: Option<u64>,
    prompt_tokens_details: Option<Vec<ModalityCount>>,
    cache_tokens_details: Option<Vec<ModalityCount>>,
    candidates_tokens_details: Option<Vec<ModalityCount>>,
    /// Vertex: `ON_DEMAND_PRIORITY` for the priority tier.
    traffic_type: Option<String>,
}

impl UsageMetadata {
    fn merge(&mut self, newer: UsageMetadata) {
        macro_rules! take {
            ($($f:ident),*) => { $( if newer.$f.is_some() { self.$f = newer.$f; } )* };
        }
        take!(
            prompt_token_count,
            cached_content_token_count,
            candidates_token_count,
            thoughts_token_count,
            tool_use_prompt_token_count,
            prompt_tokens_details,
            cache_tokens_details,
            candidates_tokens_details,
            traffic_type
        );
    }

    fn to_usage(&self) -> Usage {
        let modality = |list: &Option<Vec<ModalityCount>>, m: Modality| list.iter().flatten().filter(|c| c.modality == m).map(|c| c.token_count).sum::<u64>();
        let prompt = self.prompt_token_count.unwrap_or(0);
        let cached = self.cached_content_token_count.unwrap_or(0).min(prompt);
        let tool = self.tool_use_prompt_token_count.unwrap_or(0);
        let audio_in = modality(&self.prompt_tokens_details, Modality::Audio).saturating_sub(modality(&self.cache_tokens_details, Modality::Audio));
        let uncached = prompt - cached;
        let audio_in = audio_in.min(uncached);
        let candidates = self.candidates_token_count.unwrap_or(0);
        let image_out = modality(&self.candidates_tokens_details, Modality::Image).min(candidates);
        let audio_out = modality(&self.candidates_tokens_details, Modality::Audio).min(candidates - image_out);
        Usage {
            input_tokens: (uncached - audio_in).saturating_add(tool),
            cached_input_tokens: cached,
            audio_input_tokens: audio_in,
            output_tokens: (candidates - image_out - audio_out).saturating_add(self.thoughts_token_count.unwrap_or(0)),
            image_output_tokens: image_out,
            audio_output_tokens: audio_out,
            prompt_tokens: prompt,
            premium_permille: if self.traffic_type.as_deref() == Some("ON_DEMAND_PRIORITY") {
                PRIORITY_PREMIUM
            } else {
                0
            },
            ..Usage::default()
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    usage_metadata: Option<UsageMetadata>,
    model_version: Option<String>,
    error: Option<serde::de::IgnoredAny>,
    /// Kept raw: a shape the grounding reader does not expect must not lose the usage.
    candidates: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    grounding_metadata: Option<GroundingMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroundingMetadata {
    #[serde(default)]
    web_search_queries: Option<Vec<String>>,
}

/// State shared by the three body shapes.
#[derive(Default)]
struct Seen {
    usage: Option<UsageMetadata>,
    model: Option<String>,
    error: bool,
    chunks: u64,
    bad_chunks: u64,
    /// Distinct Google Search queries the response reports (streams repeat them).
    queries: BTreeSet<String>,
    /// Grounding metadata was present but could not be read (too large, unexpected shape).
    grounding_unreadable: bool,
}

impl Seen {
    fn chunk(&mut self, c: Chunk) {
        self.chunks += 1;
        if let Some(u) = c.usage_metadata {
            match &mut self.usage {
                Some(prev) => prev.merge(u),
                None => self.usage = Some(u),
            }
        }
        if c.model_version.is_some() {
            self.model = c.model_version;
        }
        self.error |= c.error.is_some();
        if let Some(candidates) = c.candidates {
            self.candidates(serde_json::from_value(candidates).ok());
        }
    }

    fn candidates(&mut self, candidates: Option<Vec<Candidate>>) {
        let Some(candidates) = candidates else {
            self.grounding_unreadable = true;
            return;
        };
        let queries = candidates.into_iter().filter_map(|c| c.grounding_metadata?.web_search_queries).flatten();
        self.queries.extend(queries);
    }

    /// The searches to charge: one per grounded prompt, or the distinct queries (never fewer
    /// than reserved when the grounding could not be read).
    fn web_searches(&self, per_prompt: bool, reserved: u64) -> u64 {
        let seen = self.queries.len() as u64;
        match (per_prompt, self.grounding_unreadable) {
            (true, unreadable) => u64::from(seen > 0 || unreadable),
            (false, true) => seen.max(reserved),
            (false, false) => seen,
        }
    }

    fn record(&mut self, r: Record) {
        let parse = |k: &str| r.get(k).map(serde_json::from_slice::<Value>);
        let chunk = Chunk {
            usage_metadata: match r.get("usageMetadata").map(serde_json::from_slice::<UsageMetadata>) {
                Some(Ok(u)) => Some(u),
                Some(Err(_)) => {
                    self.bad_chunks += 1;
                    None
                }
                None => None,
            },
            model_version: r.get("modelVersion").and_then(|v| serde_json::from_slice(v).ok()),
            error: parse("error").and_then(Result::ok).map(|_| serde::de::IgnoredAny),
            candidates: None,
        };
        match r.get("candidates") {
            Some(raw) => self.candidates(serde_json::from_slice(raw).ok()),
            // Queries were reported in a member too large to keep.
            None if r.counts[0] > 0 => self.grounding_unreadable = true,
            None => {}
        }
        self.chunk(chunk);
    }
}

enum Body {
    Sse(SseParser),
    Json(JsonScanner),
}

/// Extracts `usageMetadata` from a plain JSON body, an SSE stream or a JSON-array stream.
struct UsageMetadataExtractor {
    body: Body,
    seen: Seen,
    estimate: Usage,
    /// Grounding is billed per prompt (Gemini 2.x) rather than per query.
    per_prompt: bool,
}

impl UsageMetadataExtractor {
    fn new(estimate: Usage, streaming: bool, sse: bool, per_prompt: bool) -> Self {
        const WANTED: &[&str] = &["usageMetadata", "modelVersion", "error", "candidates"];
        let body = if sse {
            Body::Sse(SseParser::default())
        } else {
            Body::Json(JsonScanner::new(if streaming { 2 } else { 1 }, WANTED, &["webSearchQueries"]))
        };
        Self {
            body,
            seen: Seen::default(),
            estimate,
            per_prompt,
        }
    }

    /// The reported usage with the fees and premium the response implies, never below the
    /// premium the request asked for.
    fn reported(&self, u: &UsageMetadata) -> Usage {
        let mut usage = u.to_usage();
        usage.web_searches = self.seen.web_searches(self.per_prompt, self.estimate.web_searches);
        usage.premium_permille = usage.premium_permille.max(self.estimate.premium_permille);
        usage
    }
}

impl UsageExtractor for UsageMetadataExtractor {
    fn feed(&mut self, chunk: &[u8]) {
        let seen = &mut self.seen;
        match &mut self.body {
            Body::Sse(p) => p.feed(chunk, &mut |ev| {
                if ev.oversized {
                    seen.bad_chunks += 1;
                    return;
                }
                match serde_json::from_slice::<Chunk>(&ev.data) {
                    Ok(c) => seen.chunk(c),
                    Err(_) => seen.bad_chunks += 1,
                }
            }),
            Body::Json(s) => s.feed(chunk, &mut |r| seen.record(r)),
        }
    }

    fn finish(&mut self, end: BodyEnd) -> Settled {
        let malformed = match &self.body {
            Body::Json(s) => s.malformed(),
            Body::Sse(_) => false,
        } || self.seen.bad_chunks > 0;
        match &self.seen.usage {
            Some(u) => Settled {
                usage: self.reported(u),
                source: if end == BodyEnd::Complete && !self.seen.error {
                    Source::Reported
                } else {
                    Source::Partial
                },
                response_model: self.seen.model.clone(),
                anomaly: None,
            },
            None if self.seen.error && end == BodyEnd::Complete => Settled::upstream_error(),
            None => Settled::estimated(
                &self.estimate,
                match end {
                    BodyEnd::Cut => Anomaly::Cut,
                    BodyEnd::Complete if malformed || self.seen.chunks == 0 => Anomaly::Malformed,
                    BodyEnd::Complete => Anomaly::Missing,
                },
            ),
        }
    }
}

/// Imagen: one image per prediction that carries image bytes (RAI-filtered ones are free).
struct ImagenImages {
    scanner: JsonScanner,
    images: Option<u64>,
    estimate: Usage,
}

impl UsageExtractor for ImagenImages {
    fn feed(&mut self, chunk: &[u8]) {
        let images = &mut self.images;
        self.scanner.feed(chunk, &mut |r| {
            if r.get("error").is_none() {
                *images = Some(r.counts[0]);
            }
        });
    }

    fn finish(&mut self, end: BodyEnd) -> Settled {
        match self.images {
            Some(n) => Settled {
                usage: Usage { images: n, ..Usage::default() },
                source: Source::Reported,
                response_model: None,
                anomaly: None,
            },
            None => Settled::estimated(&self.estimate, if end == BodyEnd::Cut { Anomaly::Cut } else { Anomaly::Malformed }),
        }
    }
}

#[cfg(test)]
mod tests;
