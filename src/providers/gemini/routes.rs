//! The Gemini API and Vertex AI endpoint table (`google-genai` 3.6.1's routes).
//!
//! A path is read as `/{version}/[projects/{p}/locations/{l}/]{resource}[:{rpc}]`. Model
//! resources (`models/{m}`, `tunedModels/{m}`, `publishers/google/models/{m}`) are classified
//! by their RPC; the others by a table. Reads and deletes (GET, HEAD, DELETE) that no route
//! refuses are free; any other write no route matches is refused.

use http::Method;

use super::Endpoint;
use crate::providers::{is_websocket_upgrade, path_matches, Call, RequestInfo};

const WEBSOCKET: &str = "Live API sessions are WebSockets billed per message, and the proxy does not read them";
const BATCH: &str = "batch jobs are billed when their results are produced, out of sight of the proxy";
const CACHE: &str = "cached content is billed for its storage time, out of sight of the proxy";
const TUNING: &str = "tuning jobs are billed as they train, out of sight of the proxy";
const CREDENTIAL: &str = "it mints a token that reaches the provider without going through the proxy";
const INTERACTIONS: &str = "interactions can run agents and background work billed as it runs, out of sight of the proxy";
const INDEXING: &str = "indexing files into a store is billed as embeddings the proxy does not see";
const UNKNOWN_MODEL: &str = "the proxy does not know how this model is billed";
const UNKNOWN: &str = "the proxy does not know whether or how it is billed";
const OTHER_WIRE: &str = "this path is served in another family's wire format, which this provider does not read";

/// The RPCs of the metered endpoints, as they end a path (and name the endpoint in logs).
pub const GENERATE: &str = "generateContent";
pub const STREAM_GENERATE: &str = "streamGenerateContent";
pub const EMBED: &str = "embedContent";
pub const BATCH_EMBED: &str = "batchEmbedContents";
pub const PREDICT_EMBEDDINGS: &str = "predictEmbeddings";
pub const IMAGEN: &str = "predict";
pub const VEO: &str = "predictLongRunning";

/// A request path split into its parts.
pub struct Parsed<'a> {
    /// The resource segments after the version and any `projects/{p}/locations/{l}`.
    pub resource: Vec<&'a str>,
    /// The RPC after `:` on the last segment, if any.
    pub rpc: Option<&'a str>,
    /// The path was under `/upload/`.
    pub upload: bool,
}

pub fn parse(path: &str) -> Option<Parsed<'_>> {
    let mut segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let upload = segs.first() == Some(&"upload");
    if upload {
        segs.remove(0);
    }
    let version = segs.first()?;
    if !version.starts_with('v') || !version[1..].starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut resource = segs.split_off(1);
    if let ["projects", _, "locations", _, ..] = resource.as_slice() {
        resource.drain(..4);
    }
    let last = resource.pop()?;
    let (last, rpc) = match last.split_once(':') {
        Some((l, r)) => (l, Some(r)),
        None => (last, None),
    };
    resource.push(last);
    Some(Parsed { resource, rpc, upload })
}

/// The model a model resource names, for the three spellings.
pub fn model_of<'a>(resource: &[&'a str]) -> Option<&'a str> {
    match resource {
        ["models" | "tunedModels", m] | ["publishers", "google", "models", m] if !m.is_empty() => Some(m),
        _ => None,
    }
}

fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::DELETE)
}

/// Imagen models render images; these are billed per image.
fn is_imagen(model: &str) -> bool {
    model.starts_with("imagen")
}

/// Embedding models served by `:predict` on Vertex, billed by their input.
fn is_embedding(model: &str) -> bool {
    model.contains("embedding")
}

fn model_call(method: &Method, model: &str, rpc: Option<&str>) -> Call {
    let with = |c: Call| c.with_model(Some(model.to_string()));
    let Some(rpc) = rpc else {
        // Get, update or delete the model itself.
        return if *method == Method::POST {
            Call::not_metered("model", UNKNOWN)
        } else {
            Call::free("model", Some(model.to_string()))
        };
    };
    if *method != Method::POST {
        return Call::not_metered("model", UNKNOWN);
    }
    match rpc {
        GENERATE => with(Call::metered(Endpoint::Generate)),
        STREAM_GENERATE => with(Call::metered(Endpoint::StreamGenerate).streaming(true)),
        EMBED => with(Call::metered(Endpoint::Embed)),
        BATCH_EMBED => with(Call::metered(Endpoint::BatchEmbed)),
        "predict" if is_imagen(model) => with(Call::metered(Endpoint::Imagen)),
        "predict" if is_embedding(model) => with(Call::metered(Endpoint::PredictEmbeddings)),
        "predictLongRunning" if model.starts_with("veo") => with(Call::metered(Endpoint::Veo)),
        "predict" | "predictLongRunning" => Call::not_metered("predict", UNKNOWN_MODEL),
        "countTokens" | "computeTokens" => Call::free("countTokens", Some(model.to_string())),
        "fetchPredictOperation" => Call::free("fetchPredictOperation", Some(model.to_string())),
        "cancel" => Call::free("cancel", Some(model.to_string())),
        "batchGenerateContent" | "asyncBatchEmbedContent" => Call::not_metered("batch", BATCH),
        _ => Call::not_metered("model_rpc", UNKNOWN),
    }
}

/// A route that is not a model RPC: (space-separated methods or `*`, resource pattern, rpc,
/// endpoint, why it is refused or `None` when free).
type Route = (&'static str, &'static str, Option<&'static str>, &'static str, Option<&'static str>);

/// Routes that are not model RPCs. The first match decides.
const ROUTES: &[Route] = &[
    ("POST", "cachedContents", None, "cachedContents", Some(CACHE)),
    ("PATCH", "cachedContents/*", None, "cachedContents", Some(CACHE)),
    ("POST", "batches/*", Some("cancel"), "batch_cancel", None),
    ("POST", "batchPredictionJobs", None, "batch", Some(BATCH)),
    ("POST", "batchPredictionJobs/*", Some("cancel"), "batch_cancel", None),
    ("POST", "tunedModels", None, "tuning", Some(TUNING)),
    ("POST", "tuningJobs", None, "tuning", Some(TUNING)),
    ("POST", "tuningJobs", Some("validateReinforcementTuningReward"), "tuning", Some(TUNING)),
    ("POST", "tuningJobs/*", Some("cancel"), "tuning_cancel", None),
    ("POST", "files", Some("register"), "files", None),
    ("POST", "fileSearchStores", None, "fileSearchStores", None),
    ("POST", "fileSearchStores/*", Some("importFile"), "fileSearchStore_import", Some(INDEXING)),
    ("POST", "auth_tokens", None, "auth_tokens", Some(CREDENTIAL)),
    ("POST", "interactions/*/auth_tokens", None, "auth_tokens", Some(CREDENTIAL)),
    ("*", "interactions/live", None, "interactions_live", Some(WEBSOCKET)),
    ("POST", "interactions", None, "interactions", Some(INTERACTIONS)),
    ("POST", "interactions/*/cancel", None, "interactions_cancel", None),
    ("POST", "decisions", None, "decisions", Some(UNKNOWN)),
    ("POST", "triggers/*/executions", None, "trigger_run", Some(INTERACTIONS)),
    ("POST PATCH", "agents/**", None, "agents", None),
    ("POST PATCH", "triggers/**", None, "triggers", None),
    ("POST PATCH", "environments/**", None, "environments", None),
    ("POST PATCH", "credentials/**", None, "credentials", None),
    ("POST PATCH", "voices/**", None, "voices", None),
    ("POST PATCH", "webhooks", None, "webhooks", None),
    ("POST PATCH", "webhooks/*", None, "webhooks", None),
    ("POST", "webhooks/*", Some("ping"), "webhooks", None),
    ("POST", "webhooks/*", Some("rotateSigningSecret"), "webhooks", None),
    ("*", "openai/**", None, "openai_compat", Some(OTHER_WIRE)),
    ("*", "endpoints/openapi/**", None, "openai_compat", Some(OTHER_WIRE)),
    ("*", "publishers/*/models/*", None, "publisher_model", Some(UNKNOWN_MODEL)),
];

/// Uploads under `/upload/{v}/`: file uploads are free, uploads into a search store index.
fn upload_call(method: &Method, p: &Parsed<'_>) -> Call {
    match (p.resource.as_slice(), p.rpc) {
        (["files"], None) => Call::free("upload", None),
        (["environments", ..], None) if *method == Method::PUT => Call::free("upload", None),
        (["fileSearchStores", _], Some("uploadToFileSearchStore")) => Call::not_metered("fileSearchStore_upload", INDEXING),
        _ if is_read(method) => Call::free("upload", None),
        _ => Call::not_metered("upload", UNKNOWN),
    }
}

pub fn classify(req: &RequestInfo<'_>) -> Call {
    if is_websocket_upgrade(req.headers) || req.path.starts_with("/ws/") {
        return Call::not_metered("live", WEBSOCKET);
    }
    let Some(p) = parse(req.path) else {
        return if is_read(req.method) {
            Call::free("other", None)
        } else {
            Call::not_metered("other", UNKNOWN)
        };
    };
    if p.upload {
        return upload_call(req.method, &p);
    }
    if let Some(model) = model_of(&p.resource) {
        return model_call(req.method, model, p.rpc);
    }
    let path = p.resource.join("/");
    let route = ROUTES.iter().find(|(methods, pattern, rpc, _, _)| {
        *rpc == p.rpc && path_matches(pattern, &path) && methods.split(' ').any(|m| m == "*" || m == req.method.as_str())
    });
    match route {
        Some((_, _, _, endpoint, Some(why))) => Call::not_metered(endpoint, why),
        Some((_, _, _, endpoint, None)) => Call::free(*endpoint, None),
        None if is_read(req.method) => Call::free("other", None),
        None => Call::not_metered("other", UNKNOWN),
    }
}
