//! Anthropic: messages (plain and streamed), on Anthropic's API and on Vertex AI
//! (`publishers/anthropic/models/{model}:rawPredict` / `:streamRawPredict`, served under the
//! Vertex provider through [`super::Wire`]). Counting tokens is free.
//!
//! Usage: `input_tokens` excludes cache reads and writes, which are reported (and priced)
//! separately: `cache_creation_input_tokens`, split by TTL in `cache_creation` (all 5-minute
//! when the split is absent), and `cache_read_input_tokens`. `output_tokens` includes
//! thinking. Web searches are counted in `server_tool_use`.
//!
//! Price modifiers raise the bill as a premium on the whole call: fast mode (`speed: "fast"`),
//! US-only inference (`inference_geo: "us"`), and Vertex's regional endpoints. They are
//! reserved from the request and settled from the response's `usage.speed` and
//! `usage.inference_geo`, never below what the request asked for. The long-context rates
//! (over 200k prompt tokens) are price entries, chosen by the prompt size.
//!
//! A stream carries the input side in `message_start` and cumulative counts in each
//! `message_delta`: the latest value of each field wins, falling back to `message_start`.
//! A stream that ends without a `message_delta` (cut, or an in-band `error` event) is charged
//! the input of `message_start` plus the output seen: the larger of the reported start count
//! and the text seen.

use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;

use super::metered::{ErrorMark, Extra, Metered, Noted, Reader, Report, ToUsage, UsageMember};
use super::{
    compose_premiums, estimate_tokens, is_event_stream, is_websocket_upgrade, path_matches, reserve_output, text_bytes, Call, Estimate, Provider, Refusal,
    RequestBody, RequestInfo, Usage, UsageExtractor,
};
use crate::config::{ProviderKind, ReserveConfig};
use crate::wire::strict_json::{opt_bool, opt_str, opt_u64};

/// Fast mode's premium: 6x list (platform.claude.com/docs/en/build-with-claude/fast-mode,
/// Opus 4.6, read 2026-11-22). Third-party listings show Opus 5's fast mode at 2x
/// (openrouter.ai, vercel.com, 2026-07); unverified, so the higher 6x applies to every model.
const FAST_PREMIUM: u64 = 5000;
/// US-only inference (`inference_geo: "us"`): 1.1x on every token kind of Claude 4.6 and later
/// (3P: Trazum 2.7.3 release notes, 2026-11-05; the data-residency page names the setting but
/// the stored copy shows no rate). Applied to every model and to any geography other than
/// `global` (conservative).
const US_INFERENCE_PREMIUM: u64 = 100;
/// Vertex AI prices Claude on regional endpoints 10% above the global endpoint (3P, for Sonnet
/// 4.5 and later; UNVERIFIED). Applied to every model on a regional endpoint (conservative).
const VERTEX_REGIONAL_PREMIUM: u64 = 100;

/// An Anthropic call: the messages endpoint it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    /// Anthropic's API: the model is the body's.
    Messages,
    /// Vertex AI (the model is the path's); a regional endpoint costs a premium.
    Vertex { regional: bool },
}

impl Ctx {
    pub fn name(&self) -> &'static str {
        match self {
            Ctx::Messages => "messages",
            Ctx::Vertex { regional: false } => "vertex_messages",
            Ctx::Vertex { regional: true } => "vertex_regional_messages",
        }
    }

    /// The premium of the endpoint itself (Vertex regional endpoints).
    fn premium(self) -> u64 {
        match self {
            Ctx::Vertex { regional: true } => VERTEX_REGIONAL_PREMIUM,
            _ => 0,
        }
    }
}

const BATCH: &str = "message batches are billed when their results are produced, out of sight of the proxy";
const MANAGED: &str = "managed agent sessions, deployments and dreams are billed as they run, out of sight of the proxy";
const UNKNOWN: &str = "the proxy does not know whether or how it is billed";

pub struct Anthropic;

/// How a route is treated.
enum Class {
    Metered(Ctx),
    Free,
    Refused(&'static str),
}

/// Anthropic's API routes (`anthropic` 2.14.0), POST only: the first match decides. Reads
/// and deletes (GET, HEAD, DELETE) are free; any other write no route matches is refused.
const ROUTES: &[(&str, &str, Class)] = &[
    ("v1/messages", "messages", Class::Metered(Ctx::Messages)),
    ("v1/messages/count_tokens", "count_tokens", Class::Free),
    ("v1/messages/batches", "message_batch", Class::Refused(BATCH)),
    ("v1/messages/batches/*/cancel", "message_batch_cancel", Class::Free),
    // Stopping managed work is free; starting or steering it is not metered.
    ("v1/sessions/*/archive", "session_archive", Class::Free),
    ("v1/sessions/*/threads/*/archive", "session_archive", Class::Free),
    ("v1/deployments/*/pause", "deployment_pause", Class::Free),
    ("v1/deployments/*/archive", "deployment_archive", Class::Free),
    ("v1/dreams/*/cancel", "dream_cancel", Class::Free),
    ("v1/dreams/*/archive", "dream_archive", Class::Free),
    ("v1/sessions/**", "session", Class::Refused(MANAGED)),
    ("v1/deployments/**", "deployment", Class::Refused(MANAGED)),
    ("v1/dreams/**", "dream", Class::Refused(MANAGED)),
    ("v1/files", "files", Class::Free),
    ("v1/skills/**", "skills", Class::Free),
    ("v1/agents/**", "agents", Class::Free),
    ("v1/environments/**", "environments", Class::Free),
    ("v1/vaults/**", "vaults", Class::Free),
    ("v1/memory_stores/**", "memory_stores", Class::Free),
    ("v1/user_profiles/**", "user_profiles", Class::Free),
    ("v1/tunnels/**", "tunnels", Class::Free),
    ("v1/compliance/**", "compliance", Class::Free),
    ("v1/organizations/**", "organizations", Class::Free),
];

/// A Vertex AI path for a Claude model: `/{v}/[projects/{p}/locations/{l}/]publishers/
/// anthropic/models/{model}:{method}` (the global host uses location `global`).
struct VertexPath<'a> {
    regional: bool,
    model: &'a str,
    method: &'a str,
}

fn vertex_path(path: &str) -> Option<VertexPath<'_>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (version, rest) = segs.split_first()?;
    if !version.starts_with('v') {
        return None;
    }
    let (location, rest) = match rest {
        ["projects", _, "locations", l, rest @ ..] => (*l, rest),
        rest => ("global", rest),
    };
    let ["publishers", "anthropic", "models", last] = rest else {
        return None;
    };
    let (model, method) = last.split_once(':')?;
    Some(VertexPath {
        regional: location != "global",
        model,
        method,
    })
}

/// True for the Vertex AI paths of Claude models (the Vertex provider serves them with this
/// family's wire format).
pub fn is_vertex_path(path: &str) -> bool {
    vertex_path(path).is_some()
}

fn classify_vertex(method: &Method, v: &VertexPath<'_>) -> Call {
    if *method != Method::POST {
        return Call::not_metered("vertex_other", UNKNOWN);
    }
    let endpoint = Ctx::Vertex { regional: v.regional };
    match (v.model, v.method) {
        ("count-tokens", "rawPredict") => Call::free("count_tokens", None),
        (_, "rawPredict") => Call::metered(endpoint).with_model(Some(v.model.to_string())),
        (_, "streamRawPredict") => Call::metered(endpoint).with_model(Some(v.model.to_string())).streaming(true),
        _ => Call::not_metered("vertex_other", UNKNOWN),
    }
}

/// The premium a request asks for: fast mode and the inference geography.
fn request_premium(json: &serde_json::Value) -> Result<u64, Refusal> {
    Ok(modifiers_premium(opt_str(json, "speed")?, opt_str(json, "inference_geo")?))
}

fn modifiers_premium(speed: Option<&str>, geo: Option<&str>) -> u64 {
    let fast = if speed == Some("fast") { FAST_PREMIUM } else { 0 };
    let geo = match geo {
        None | Some("global") => 0,
        Some(_) => US_INFERENCE_PREMIUM,
    };
    compose_premiums(fast, geo)
}

impl Provider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn classify(&self, req: &RequestInfo<'_>) -> Call {
        if is_websocket_upgrade(req.headers) {
            return Call::not_metered("websocket", UNKNOWN);
        }
        if let Some(v) = vertex_path(req.path) {
            return classify_vertex(req.method, &v);
        }
        if *req.method != Method::POST {
            return match *req.method {
                Method::GET | Method::HEAD | Method::DELETE => Call::free("other", None),
                _ => Call::not_metered("other", UNKNOWN),
            };
        }
        match ROUTES.iter().find(|(pattern, _, _)| path_matches(pattern, req.path)) {
            Some((_, _, Class::Metered(ctx))) => Call::metered(*ctx),
            Some((_, endpoint, Class::Free)) => Call::free(*endpoint, None),
            Some((_, endpoint, Class::Refused(why))) => Call::not_metered(endpoint, why),
            None => Call::not_metered("other", UNKNOWN),
        }
    }

    fn estimate(&self, call: &mut Call, _req: &RequestInfo<'_>, body: &RequestBody<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
        let ctx = *call.context_of::<Ctx>()?;
        let json = body.object()?;
        let model = opt_str(json, "model")?;
        if ctx == Ctx::Messages {
            // On Vertex the model is the path's; the body carries none.
            call.model = model.filter(|m| !m.is_empty()).map(str::to_string);
        }
        call.streaming |= opt_bool(json, "stream")? == Some(true);
        let input = estimate_tokens(text_bytes(json), reserve);
        Ok(Estimate {
            usage: Usage {
                input_tokens: input,
                output_tokens: reserve_output(opt_u64(json, "max_tokens")?, reserve),
                prompt_tokens: input,
                premium_permille: compose_premiums(ctx.premium(), request_premium(json)?),
                ..Usage::default()
            },
            ..Estimate::default()
        })
    }

    fn extractor(&self, call: &Call, _status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        let premium = Premium(call.own_context::<Ctx>().premium());
        if call.streaming && is_event_stream(headers) {
            Box::new(Metered::sse(Stream::new(premium), estimate))
        } else {
            Box::new(UsageMember::<WireUsage, _>::metered(ErrorMark::TypeIsError, premium, estimate))
        }
    }
}

/// Applies the premiums to what a response reports (an estimate standing in carries its
/// premium already): the endpoint's (held here) on top of what the response says ran (fast
/// mode, geography), and never less than the estimate's, which holds what the request asked
/// for (a response that does not say keeps it).
struct Premium(u64);

impl Extra for Premium {
    fn fees(&self, usage: &mut Usage, estimate: &Usage) {
        let ran = compose_premiums(self.0, usage.premium_permille);
        usage.premium_permille = ran.max(estimate.premium_permille);
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
    speed: Option<String>,
    inference_geo: Option<String>,
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
            server_tool_use,
            speed,
            inference_geo
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
            premium_permille: modifiers_premium(self.speed.as_deref(), self.inference_geo.as_deref()),
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

/// Reads the stream's events: the input side of `message_start`, the cumulative counts of
/// the `message_delta`s, the text of the content deltas.
struct Stream {
    start: Option<WireUsage>,
    /// The merged `message_delta` reports, once one arrived.
    delta: Option<WireUsage>,
    noted: Noted,
    premium: Premium,
}

impl Stream {
    fn new(premium: Premium) -> Self {
        Self {
            start: None,
            delta: None,
            noted: Noted::default(),
            premium,
        }
    }
}

impl Reader for Stream {
    fn event(&mut self, data: &[u8]) -> bool {
        let Ok(e) = serde_json::from_slice::<StreamEvent>(data) else {
            return false;
        };
        match e.kind.as_str() {
            "message_start" => {
                if let Some(m) = e.message {
                    self.noted.model = m.model.or(self.noted.model.take());
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
                    self.noted.text_bytes += len(&d.text) + len(&d.thinking) + len(&d.partial_json);
                }
            }
            "error" => self.noted.error = true,
            _ => {}
        }
        true
    }

    /// The `message_delta` counts (over `message_start`'s): cumulative, so a cut stream's are
    /// a running total.
    fn reported(&mut self) -> Option<Report> {
        let delta = self.delta.take()?;
        let mut usage = self.start.take().unwrap_or_default();
        usage.merge(&delta);
        Some(Report {
            usage: usage.to_usage(),
            last: false,
        })
    }

    fn input_seen(&mut self) -> Option<Usage> {
        self.start.take().map(|s| s.to_usage())
    }

    fn noted(&mut self) -> &mut Noted {
        &mut self.noted
    }

    fn fees(&self, usage: &mut Usage, estimate: &Usage) {
        self.premium.fees(usage, estimate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Anomaly, BodyEnd, Settled, Source};

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
        let json = crate::wire::strict_json::parse(body).unwrap();
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
            let mut x = Metered::sse(Stream::new(Premium(0)), &Usage::default());
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
        let mut x = Metered::sse(Stream::new(Premium(0)), &Usage::default());
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
        let mut x = Metered::sse(Stream::new(Premium(0)), &estimate);
        let s = run(&mut x, b"event: ping\n", 5, BodyEnd::Cut);
        assert_eq!((s.source, s.usage.output_tokens), (Source::Estimated, 99));
        // An error before anything: free.
        let mut x = Metered::sse(Stream::new(Premium(0)), &estimate);
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
        let estimate = Usage {
            input_tokens: 3,
            ..Usage::default()
        };
        let mut x = UsageMember::<WireUsage, _>::metered(ErrorMark::TypeIsError, Premium(0), &estimate);
        let s = run(
            &mut x,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            7,
            BodyEnd::Complete,
        );
        assert_eq!(s.source, Source::UpstreamError);
    }

    fn request(method: Method, path: &str) -> Call {
        Anthropic.classify(&RequestInfo {
            method: &method,
            path,
            query: Some("beta=true"),
            headers: &HeaderMap::new(),
        })
    }

    #[test]
    fn every_sdk_route_has_its_class() {
        use Method as M;
        for (method, path, want) in [
            (M::POST, "/v1/messages", 'm'),
            (M::POST, "/v1/messages/", 'm'),
            (M::POST, "/v1/messages/count_tokens", 'f'),
            (M::POST, "/v1/messages/batches", 'r'),
            (M::GET, "/v1/messages/batches", 'f'),
            (M::GET, "/v1/messages/batches/msgbatch_1", 'f'),
            (M::GET, "/v1/messages/batches/msgbatch_1/results", 'f'),
            (M::POST, "/v1/messages/batches/msgbatch_1/cancel", 'f'),
            (M::DELETE, "/v1/messages/batches/msgbatch_1", 'f'),
            (M::POST, "/v1/sessions", 'r'),
            (M::POST, "/v1/sessions/s1/events", 'r'),
            (M::POST, "/v1/sessions/s1/resources", 'r'),
            (M::POST, "/v1/sessions/s1/archive", 'f'),
            (M::GET, "/v1/sessions/s1/events/stream", 'f'),
            (M::POST, "/v1/deployments", 'r'),
            (M::POST, "/v1/deployments/d1/run", 'r'),
            (M::POST, "/v1/deployments/d1/unpause", 'r'),
            (M::POST, "/v1/deployments/d1/pause", 'f'),
            (M::POST, "/v1/dreams", 'r'),
            (M::POST, "/v1/dreams/d1/cancel", 'f'),
            (M::POST, "/v1/files", 'f'),
            (M::GET, "/v1/files/f1/content", 'f'),
            (M::DELETE, "/v1/files/f1", 'f'),
            (M::GET, "/v1/models", 'f'),
            (M::GET, "/v1/models/claude-opus-4-6", 'f'),
            (M::POST, "/v1/skills", 'f'),
            (M::POST, "/v1/skills/s1/versions", 'f'),
            (M::POST, "/v1/agents", 'f'),
            (M::POST, "/v1/agents/a1/archive", 'f'),
            (M::POST, "/v1/environments/e1/work/w1/heartbeat", 'f'),
            (M::POST, "/v1/vaults/v1/credentials", 'f'),
            (M::POST, "/v1/memory_stores/m1/memories", 'f'),
            (M::POST, "/v1/organizations/invites", 'f'),
            (M::GET, "/v1/organizations/usage_report/messages", 'f'),
            (M::POST, "/v1/tunnels/t1/rotate_token", 'f'),
            (M::POST, "/v1/complete", 'r'),
            (M::POST, "/v1/something-new", 'r'),
            (M::PATCH, "/v1/messages", 'r'),
            (
                M::POST,
                "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
                'm',
            ),
            (
                M::POST,
                "/v1/projects/p/locations/global/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
                's',
            ),
            (
                M::POST,
                "/v1beta1/projects/p/locations/europe-west1/publishers/anthropic/models/claude-haiku-4-5:rawPredict",
                'm',
            ),
            (
                M::POST,
                "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict",
                'f',
            ),
            (M::POST, "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-x:predict", 'r'),
            (M::GET, "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-x:rawPredict", 'r'),
        ] {
            assert_eq!(request(method.clone(), path).class_letter(), want, "{method} {path}");
        }
    }

    fn estimate(path: &str, body: &str) -> (Call, Result<Estimate, Refusal>) {
        let h = HeaderMap::new();
        let req = RequestInfo {
            method: &Method::POST,
            path,
            query: None,
            headers: &h,
        };
        let mut call = Anthropic.classify(&req);
        let e = super::super::estimate_call(&Anthropic, &mut call, &req, body.as_bytes(), &ReserveConfig::default());
        (call, e)
    }

    #[test]
    fn vertex_takes_the_model_from_the_path_and_prices_regions() {
        let path = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict";
        let (call, e) = estimate(path, r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":10,"stream":true,"messages":[]}"#);
        assert_eq!(call.model.as_deref(), Some("claude-sonnet-4-5@20250929"));
        assert!(call.streaming, "rawPredict with stream: true streams");
        assert_eq!(e.unwrap().usage.premium_permille, 100);
        let global = "/v1/projects/p/locations/global/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict";
        let (_, e) = estimate(global, r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":10,"messages":[]}"#);
        assert_eq!(e.unwrap().usage.premium_permille, 0);
        assert!(is_vertex_path(global));
        assert!(!is_vertex_path(
            "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash:generateContent"
        ));
    }

    #[test]
    fn request_modifiers_raise_the_reservation() {
        let premium = |body: &str| estimate("/v1/messages", body).1.unwrap().usage.premium_permille;
        assert_eq!(premium(r#"{"model":"claude-opus-4-6","max_tokens":1,"messages":[]}"#), 0);
        assert_eq!(premium(r#"{"model":"claude-opus-4-6","max_tokens":1,"speed":"fast","messages":[]}"#), 5000);
        assert_eq!(premium(r#"{"model":"claude-opus-4-6","max_tokens":1,"speed":"standard","messages":[]}"#), 0);
        assert_eq!(premium(r#"{"model":"claude-opus-4-6","max_tokens":1,"inference_geo":"us","messages":[]}"#), 100);
        assert_eq!(
            premium(r#"{"model":"claude-opus-4-6","max_tokens":1,"inference_geo":"global","messages":[]}"#),
            0
        );
        assert_eq!(
            premium(r#"{"model":"claude-opus-4-6","max_tokens":1,"speed":"fast","inference_geo":"us","messages":[]}"#),
            5600
        );
        for body in [
            r#"{"model":"claude-opus-4-6","max_tokens":"1","messages":[]}"#,
            r#"{"model":"claude-opus-4-6","max_tokens":1,"speed":true,"messages":[]}"#,
            r#"{"model":"claude-opus-4-6","max_tokens":1,"inference_geo":1,"messages":[]}"#,
            r#"{"model":7,"max_tokens":1,"messages":[]}"#,
            r#"{"model":"claude-opus-4-6","max_tokens":1,"stream":"yes","messages":[]}"#,
            r#"{"model":"claude-opus-4-6","model":"claude-haiku-4-5","max_tokens":1,"messages":[]}"#,
        ] {
            assert!(matches!(estimate("/v1/messages", body).1, Err(Refusal::InvalidBody(_))), "{body}");
        }
    }

    fn settle(call: &Call, estimate: &Usage, content_type: &'static str, body: &[u8], piece: usize) -> Settled {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        let mut x = Anthropic.extractor(call, StatusCode::OK, &h, estimate);
        run(&mut *x, body, piece, BodyEnd::Complete)
    }

    #[test]
    fn response_modifiers_settle_the_premium_never_below_the_request() {
        let call = Call::metered(Ctx::Messages);
        let plain = br#"{"type":"message","model":"claude-opus-4-6","usage":{"input_tokens":10,"output_tokens":5,"speed":"fast","inference_geo":"us","service_tier":"standard"}}"#;
        for piece in [1, 3, 64] {
            let s = settle(&call, &Usage::default(), "application/json", plain, piece);
            assert_eq!((s.usage.premium_permille, s.usage.output_tokens, s.source), (5600, 5, Source::Reported));
        }
        // The request asked for fast mode and the response does not say: fast is charged.
        let asked = Usage {
            premium_permille: 5000,
            ..Usage::default()
        };
        let quiet = br#"{"type":"message","usage":{"input_tokens":10,"output_tokens":5}}"#;
        assert_eq!(settle(&call, &asked, "application/json", quiet, 7).usage.premium_permille, 5000);
        // A regional Vertex endpoint adds its premium to what the stream reports.
        let regional = Call::metered(Ctx::Vertex { regional: true }).streaming(true);
        let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-6\",\"usage\":{\"input_tokens\":20,\"output_tokens\":1,\"speed\":\"fast\"}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":30}}\n\n";
        let est = Usage {
            premium_permille: 100,
            ..Usage::default()
        };
        for piece in [1, 5, 17] {
            let s = settle(&regional, &est, "text/event-stream", stream, piece);
            // 1.1 x 6 = 6.6
            assert_eq!((s.usage.premium_permille, s.usage.output_tokens), (5600, 30), "{piece}");
        }
        // An estimate standing in keeps its own premium, not compounded again.
        let s = settle(&regional, &est, "text/event-stream", b"event: ping\ndata: {\"type\":\"ping\"}\n\n", 4);
        assert_eq!((s.source, s.usage.premium_permille), (Source::Estimated, 100));
    }

    #[test]
    fn prices_through_the_table() {
        use crate::config::Config;
        use crate::pricing::PriceTable;
        let t = PriceTable::new(&Config::from_yaml("", "t").unwrap()).unwrap();
        let nanos = |model: &str, u: &Usage| t.price("anthropic", ProviderKind::Anthropic, &[Some(model)], u).nanos;
        let short = Usage {
            input_tokens: 100_000,
            output_tokens: 10_000,
            prompt_tokens: 100_000,
            ..Usage::default()
        };
        // 100k x $3/M + 10k x $15/M = $0.30 + $0.15
        assert_eq!(nanos("claude-sonnet-4-5-20250929", &short), 450_000_000);
        // Vertex ids carry the date after '@'.
        assert_eq!(nanos("claude-sonnet-4-5@20250929", &short), 450_000_000);
        let long = Usage {
            input_tokens: 300_000,
            output_tokens: 10_000,
            prompt_tokens: 300_000,
            ..Usage::default()
        };
        // Over 200k prompt tokens the whole call is at $6 / $22.50: $1.80 + $0.225.
        assert_eq!(nanos("claude-sonnet-4-5-20250929", &long), 2_025_000_000);
        assert_eq!(nanos("claude-sonnet-4-20250514", &long), 2_025_000_000);
        // Opus 4.6 long context at $10 / $37.50, in fast mode (6x): $3.00 + $0.375 = $3.375 x 6.
        let fast_long = Usage {
            premium_permille: 5000,
            ..long
        };
        assert_eq!(nanos("claude-opus-4-6", &fast_long), 20_250_000_000);
    }
}
