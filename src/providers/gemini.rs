//! Google Gemini (generativelanguage) and Vertex AI: text generation (plain, SSE stream and
//! JSON-array stream), token counting (free), embeddings, Imagen and Veo.
//!
//! Usage comes from `usageMetadata`, which streams repeat as a running total: the latest
//! value of each field wins, and a chunk cut short never counts.

use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::json_scan::{JsonScanner, Record};
use super::sse::SseParser;
use super::{
    estimate_tokens, reserve_output, text_bytes, Anomaly, BodyEnd, Call, Estimate, FixedCost, Provider, Refusal, RequestBody, RequestInfo, Settled, Source,
    Usage, UsageExtractor,
};
use crate::config::{ProviderKind, ReserveConfig};

/// Images Imagen returns when the request does not say (`sampleCount` default).
const IMAGEN_DEFAULT_SAMPLES: u64 = 4;
/// Seconds of video Veo renders when the request does not say (Veo 3.x default).
const VEO_DEFAULT_SECONDS: u64 = 8;

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

    /// `(model, method)` from a model path, for either API surface.
    fn model_and_method<'a>(&self, path: &'a str) -> Option<(&'a str, &'a str)> {
        let path = path.trim_start_matches('/');
        let (version, rest) = path.split_once('/')?;
        if !version.starts_with('v') {
            return None;
        }
        let rest = if self.vertex {
            // projects/{p}/locations/{l}/publishers/google/models/{m}:{method}
            // or the express form publishers/google/models/{m}:{method}
            let at = rest.find("publishers/")?;
            let tail = &rest[at..];
            let (_, models) = tail.split_once("/models/")?;
            models
        } else {
            rest.strip_prefix("models/").or_else(|| rest.strip_prefix("tunedModels/"))?
        };
        let (model, method) = rest.rsplit_once(':')?;
        if model.is_empty() || model.contains('/') {
            return None;
        }
        Some((model, method))
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

    fn classify(&self, req: &RequestInfo<'_>) -> Call {
        let Some((model, method)) = self.model_and_method(req.path) else {
            return Call::free("other", None);
        };
        let model = Some(model.to_string());
        if *req.method != Method::POST {
            return Call::free("other", model);
        }
        let metered = |endpoint, streaming| Call::metered(endpoint).with_model(model.clone()).streaming(streaming);
        match method {
            "generateContent" => metered("generateContent", false),
            "streamGenerateContent" => metered("streamGenerateContent", true),
            "embedContent" => metered("embedContent", false),
            "batchEmbedContents" => metered("batchEmbedContents", false),
            // Imagen renders images; other models served by `predict` (Vertex text
            // embeddings) are billed by their input.
            "predict" if model.as_deref().is_some_and(|m| m.starts_with("imagen")) => metered("predict", false),
            "predict" => metered("predictEmbeddings", false),
            "predictLongRunning" => metered("predictLongRunning", false),
            "countTokens" => Call::free("countTokens", model),
            _ => Call::free("other", model),
        }
    }

    fn estimate(&self, call: &mut Call, _req: &RequestInfo<'_>, body: &RequestBody<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
        let json = body.object()?;
        let usage = match call.endpoint {
            "predict" => {
                let samples = json
                    .pointer("/parameters/sampleCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(IMAGEN_DEFAULT_SAMPLES);
                let instances = json.get("instances").and_then(Value::as_array).map_or(1, |a| a.len().max(1) as u64);
                Usage {
                    images: samples.saturating_mul(instances),
                    ..Usage::default()
                }
            }
            "predictLongRunning" => {
                let params = json.get("parameters");
                let seconds = params
                    .and_then(|p| p.get("durationSeconds"))
                    .and_then(as_u64_lenient)
                    .unwrap_or(VEO_DEFAULT_SECONDS);
                let samples = params.and_then(|p| p.get("sampleCount")).and_then(as_u64_lenient).unwrap_or(1).max(1);
                Usage {
                    video_seconds: seconds.saturating_mul(samples),
                    ..Usage::default()
                }
            }
            "embedContent" | "batchEmbedContents" | "predictEmbeddings" => Usage {
                input_tokens: estimate_tokens(text_bytes(json), reserve),
                ..Usage::default()
            },
            _ => {
                let max_out = json.pointer("/generationConfig/maxOutputTokens").and_then(Value::as_u64);
                let input = estimate_tokens(text_bytes(json), reserve);
                Usage {
                    input_tokens: input,
                    output_tokens: reserve_output(max_out, reserve),
                    prompt_tokens: input,
                    ..Usage::default()
                }
            }
        };
        Ok(Estimate { usage, ..Estimate::default() })
    }

    fn extractor(&self, call: &Call, _status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        match call.endpoint {
            // Embedding responses carry no usage; the request-size estimate is the bill.
            "embedContent" | "batchEmbedContents" | "predictEmbeddings" => Box::new(FixedCost::new(estimate.clone(), Source::Estimated)),
            // Veo is priced at submission: seconds requested.
            "predictLongRunning" => Box::new(FixedCost::new(estimate.clone(), Source::Reported)),
            "predict" => Box::new(ImagenImages {
                scanner: JsonScanner::new(1, &["error"], &["bytesBase64Encoded"]),
                images: None,
                estimate: estimate.clone(),
            }),
            _ => {
                let sse = call.streaming && !is_json(headers);
                Box::new(UsageMetadataExtractor::new(estimate.clone(), call.streaming, sse))
            }
        }
    }
}

fn as_u64_lenient(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64))
        .or_else(|| v.as_str()?.trim().parse().ok())
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
            candidates_tokens_details
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
}

/// State shared by the three body shapes.
#[derive(Default)]
struct Seen {
    usage: Option<UsageMetadata>,
    model: Option<String>,
    error: bool,
    chunks: u64,
    bad_chunks: u64,
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
        };
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
}

impl UsageMetadataExtractor {
    fn new(estimate: Usage, streaming: bool, sse: bool) -> Self {
        const WANTED: &[&str] = &["usageMetadata", "modelVersion", "error"];
        let body = if sse {
            Body::Sse(SseParser::default())
        } else {
            Body::Json(JsonScanner::new(if streaming { 2 } else { 1 }, WANTED, &[]))
        };
        Self {
            body,
            seen: Seen::default(),
            estimate,
        }
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
                usage: u.to_usage(),
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
mod tests {
    use super::*;

    fn classify(g: &Gemini, method: Method, path: &str) -> Call {
        let h = HeaderMap::new();
        g.classify(&RequestInfo {
            method: &method,
            path,
            query: None,
            headers: &h,
        })
    }

    #[test]
    fn routes_both_versions_and_vertex() {
        let g = Gemini::developer_api();
        for v in ["v1", "v1beta", "v1alpha"] {
            let c = classify(&g, Method::POST, &format!("/{v}/models/gemini-2.5-flash:generateContent"));
            assert!(c.metered);
            assert_eq!(c.model.as_deref(), Some("gemini-2.5-flash"));
        }
        assert!(classify(&g, Method::POST, "/v1/models/gemini-2.5-flash:streamGenerateContent").streaming);
        assert!(!classify(&g, Method::POST, "/v1/models/gemini-2.5-flash:countTokens").metered);
        assert!(!classify(&g, Method::GET, "/v1beta/models/veo-3.1/operations/abc").metered);
        assert!(!classify(&g, Method::GET, "/v1beta/models").metered);
        let v = Gemini::vertex();
        let c = classify(
            &v,
            Method::POST,
            "/v1beta1/projects/p/locations/us-central1/publishers/google/models/imagen-4.0-generate-001:predict",
        );
        assert_eq!(c.endpoint, "predict");
        assert_eq!(c.model.as_deref(), Some("imagen-4.0-generate-001"));
        let c = classify(&v, Method::POST, "/v1beta1/publishers/google/models/gemini-2.5-flash:streamGenerateContent");
        assert!(c.streaming && c.metered);
        assert!(!classify(&v, Method::POST, "/v1beta1/publishers/google/models/veo-3.1-generate-001:fetchPredictOperation").metered);
        let c = classify(
            &v,
            Method::POST,
            "/v1/projects/p/locations/l/publishers/google/models/text-embedding-005:predict",
        );
        assert_eq!((c.endpoint, c.metered), ("predictEmbeddings", true));
    }

    #[test]
    fn sparse_usage_fields_are_merged_latest_wins() {
        let mut x = UsageMetadataExtractor::new(Usage::default(), true, true);
        x.feed(b"data: {\"usageMetadata\": {\"promptTokenCount\": 11, \"candidatesTokenCount\": 3}}\r\n\r\n");
        x.feed(b"data: {\"usageMetadata\": {\"candidatesTokenCount\": 21}}\r\n\r\n");
        let s = x.finish(BodyEnd::Complete);
        assert_eq!(s.usage.input_tokens, 11);
        assert_eq!(s.usage.output_tokens, 21);
        assert_eq!(s.source, Source::Reported);
    }

    #[test]
    fn estimate_counts_text_not_media() {
        let body = format!(
            r#"{{"contents":[{{"parts":[{{"text":"abcdefgh"}},{{"inlineData":{{"mimeType":"image/png","data":"{}"}}}}]}}],"generationConfig":{{"maxOutputTokens":100}}}}"#,
            "A".repeat(100_000)
        );
        let g = Gemini::developer_api();
        let mut call = classify(&g, Method::POST, "/v1/models/m:generateContent");
        let h = HeaderMap::new();
        let req = RequestInfo {
            method: &Method::POST,
            path: "/v1/models/m:generateContent",
            query: None,
            headers: &h,
        };
        let json = super::super::strict_json::parse(body.as_bytes()).unwrap();
        let b = RequestBody {
            bytes: body.as_bytes(),
            json: Some(&json),
        };
        let e = g.estimate(&mut call, &req, &b, &ReserveConfig::default()).unwrap();
        assert_eq!(e.usage.output_tokens, 100);
        assert!(e.usage.input_tokens < 2000, "{}", e.usage.input_tokens);
    }
}
