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

use super::metered::{Metered, Noted, Reader, Report};
use super::{
    estimate_tokens, reserve_output, text_bytes, Call, Estimate, FixedCost, Provider, Refusal, RequestBody, RequestInfo, Source, Usage, UsageExtractor, Wire,
};
use crate::config::{ProviderKind, ReserveConfig};
use crate::wire::json_scan::{JsonScanner, Record};
use crate::wire::strict_json::Printable;

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

/// The endpoints this family meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Generate,
    StreamGenerate,
    Embed,
    BatchEmbed,
    /// Vertex's `:predict` of an embedding model.
    PredictEmbeddings,
    Imagen,
    Veo,
}

/// A Gemini call: its endpoint and how its grounding is billed (known once the model is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub endpoint: Endpoint,
    /// Google Search grounding is billed per grounded prompt (Gemini 2.x and earlier) rather
    /// than per search query; set by the estimate.
    pub grounding_per_prompt: bool,
}

impl From<Endpoint> for super::CallContext {
    fn from(endpoint: Endpoint) -> Self {
        Ctx {
            endpoint,
            grounding_per_prompt: false,
        }
        .into()
    }
}

impl Ctx {
    pub fn name(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Generate => routes::GENERATE,
            Endpoint::StreamGenerate => routes::STREAM_GENERATE,
            Endpoint::Embed => routes::EMBED,
            Endpoint::BatchEmbed => routes::BATCH_EMBED,
            Endpoint::PredictEmbeddings => routes::PREDICT_EMBEDDINGS,
            Endpoint::Imagen => routes::IMAGEN,
            Endpoint::Veo => routes::VEO,
        }
    }
}

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
        let mut ctx = *call.context_of::<Ctx>()?;
        let json = body.object()?;
        let model = call.model.as_deref().unwrap_or_default();
        ctx.grounding_per_prompt = grounding_per_prompt(model);
        let usage = match ctx.endpoint {
            Endpoint::Imagen => imagen(json)?,
            Endpoint::Veo => veo(json)?,
            Endpoint::Embed | Endpoint::BatchEmbed | Endpoint::PredictEmbeddings => Usage {
                input_tokens: estimate_tokens(text_bytes(json), reserve),
                ..Usage::default()
            },
            Endpoint::Generate | Endpoint::StreamGenerate => generate(json, model, reserve)?,
        };
        call.context = ctx.into();
        Ok(Estimate { usage, ..Estimate::default() })
    }

    fn extractor(&self, call: &Call, _status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        let ctx = call.own_context::<Ctx>();
        match ctx.endpoint {
            // Embedding responses carry no usage; the request-size estimate is the bill.
            Endpoint::Embed | Endpoint::BatchEmbed | Endpoint::PredictEmbeddings => Box::new(FixedCost::new(estimate.clone(), Source::Estimated)),
            // Veo is priced at submission: seconds requested.
            Endpoint::Veo => Box::new(FixedCost::new(estimate.clone(), Source::Reported)),
            Endpoint::Imagen => Box::new(Metered::json(
                ImagenImages::default(),
                JsonScanner::new(1, &["error"], &["bytesBase64Encoded"]),
                estimate,
            )),
            Endpoint::Generate | Endpoint::StreamGenerate => {
                let sse = call.streaming && !is_json(headers);
                Box::new(usage_metadata(estimate, call.streaming, sse, ctx.grounding_per_prompt))
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

/// Reads `usageMetadata` (a running total), the model, the grounding queries and an in-band
/// error out of a plain JSON body, an SSE stream or a JSON-array stream.
#[derive(Default)]
struct Seen {
    usage: Option<UsageMetadata>,
    noted: Noted,
    /// Distinct Google Search queries the response reports (streams repeat them).
    queries: BTreeSet<String>,
    /// Grounding metadata was present but could not be read (too large, unexpected shape).
    grounding_unreadable: bool,
    /// Grounding is billed per prompt (Gemini 2.x) rather than per query.
    per_prompt: bool,
}

/// The extractor of a generate call's answer: an SSE stream, a JSON-array stream (records
/// are the array's elements) or a plain JSON body.
fn usage_metadata(estimate: &Usage, streaming: bool, sse: bool, per_prompt: bool) -> Metered<Seen> {
    const WANTED: &[&str] = &["usageMetadata", "modelVersion", "error", "candidates"];
    let seen = Seen { per_prompt, ..Seen::default() };
    if sse {
        Metered::sse(seen, estimate)
    } else {
        Metered::json(seen, JsonScanner::new(if streaming { 2 } else { 1 }, WANTED, &["webSearchQueries"]), estimate)
    }
}

impl Seen {
    fn chunk(&mut self, c: Chunk) {
        if let Some(u) = c.usage_metadata {
            match &mut self.usage {
                Some(prev) => prev.merge(u),
                None => self.usage = Some(u),
            }
        }
        if c.model_version.is_some() {
            self.noted.model = c.model_version;
        }
        self.noted.error |= c.error.is_some();
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
    fn web_searches(&self, reserved: u64) -> u64 {
        let seen = self.queries.len() as u64;
        match (self.per_prompt, self.grounding_unreadable) {
            (true, unreadable) => u64::from(seen > 0 || unreadable),
            (false, true) => seen.max(reserved),
            (false, false) => seen,
        }
    }
}

impl Reader for Seen {
    fn event(&mut self, data: &[u8]) -> bool {
        serde_json::from_slice::<Chunk>(data).map(|c| self.chunk(c)).is_ok()
    }

    fn record(&mut self, r: &Record) -> bool {
        let parse = |k: &str| r.get(k).map(serde_json::from_slice::<Value>);
        let usage = r.get("usageMetadata").map(serde_json::from_slice::<UsageMetadata>);
        let readable = !matches!(usage, Some(Err(_)));
        let chunk = Chunk {
            usage_metadata: usage.and_then(Result::ok),
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
        readable
    }

    /// A running total: a cut stream's is what was reported so far.
    fn reported(&mut self) -> Option<Report> {
        self.usage.as_ref().map(|u| Report {
            usage: u.to_usage(),
            last: false,
        })
    }

    fn noted(&mut self) -> &mut Noted {
        &mut self.noted
    }

    /// The fees and premium the response implies, never below the premium the request
    /// asked for.
    fn fees(&self, usage: &mut Usage, estimate: &Usage) {
        usage.web_searches = self.web_searches(estimate.web_searches);
        usage.premium_permille = usage.premium_permille.max(estimate.premium_permille);
    }
}

/// Imagen: one image per prediction that carries image bytes (RAI-filtered ones are free).
#[derive(Default)]
struct ImagenImages {
    images: Option<u64>,
    noted: Noted,
}

impl Reader for ImagenImages {
    fn record(&mut self, r: &Record) -> bool {
        match r.get("error") {
            None => self.images = Some(r.counts[0]),
            Some(_) => self.noted.error = true,
        }
        true
    }

    fn reported(&mut self) -> Option<Report> {
        self.images.map(|images| Report {
            usage: Usage { images, ..Usage::default() },
            last: true,
        })
    }

    fn noted(&mut self) -> &mut Noted {
        &mut self.noted
    }
}

#[cfg(test)]
mod tests;
