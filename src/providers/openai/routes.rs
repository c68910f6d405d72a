//! The OpenAI endpoint table: every method and path the `openai` SDK calls is metered, known
//! free, or not metered; a request that matches nothing is not metered either.
//!
//! Paths come with or without `/v1` (the upstream URL may carry it); the query string never
//! changes the class. Gemini's OpenAI-compatible endpoints (`/v1beta/openai/...`, Vertex's
//! `/v1/projects/{p}/locations/{l}/endpoints/openapi/...`) are read here too: chat completions
//! and embeddings are metered, model reads are free, everything else is not metered.

use http::{HeaderMap, Method};

use super::super::{is_websocket_upgrade, path_matches as matches, Call, RequestInfo};
use super::Endpoint::{self, *};

/// How a route is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A JSON body.
    Json(Endpoint),
    /// A multipart form (or JSON, when the content type says so).
    Form(Endpoint),
    Free(&'static str),
    NotMetered(&'static str, &'static str),
}
use Class::*;

const LATER: &str = "its bill is produced later, out of sight of the proxy";
const CREDENTIALS: &str = "it mints a credential that reaches the provider without the proxy";
const MEDIA: &str = "its media flows over WebRTC or SIP, out of sight of the proxy";
const WEBSOCKET: &str = "WebSocket sessions are not metered";
const UNPRICED: &str = "its price is not published, so the proxy cannot charge it";
const UNKNOWN: &str = "it is not an OpenAI API endpoint the proxy knows";

/// POST routes, first match wins; `*` is one path segment, a trailing `**` any rest.
const POST: &[(&str, Class)] = &[
    ("/chat/completions", Json(Chat)),
    ("/chat/completions/*", Free("chat_update")),
    ("/completions", Json(Completions)),
    ("/responses", Json(Responses)),
    ("/responses/compact", Json(ResponsesCompact)),
    ("/responses/input_tokens", Free("responses_input_tokens")),
    ("/responses/*/cancel", Free("responses_cancel")),
    ("/embeddings", Json(Embeddings)),
    ("/moderations", Free("moderations")),
    ("/audio/speech", Json(Speech)),
    ("/audio/transcriptions", Form(Transcription)),
    ("/audio/translations", Form(Translation)),
    ("/audio/voices", NotMetered("audio_voices", UNPRICED)),
    ("/audio/voice_consents", Free("voice_consents")),
    ("/audio/voice_consents/*", Free("voice_consents")),
    ("/images/generations", Json(Images)),
    ("/images/edits", Form(ImageEdits)),
    ("/images/variations", Form(ImageVariations)),
    ("/videos", Form(Videos)),
    (
        "/videos/**",
        NotMetered(
            "videos_derived",
            "remixes, edits, extensions and characters are billed when the video is produced, at a rate the proxy does not know",
        ),
    ),
    (
        "/batches",
        NotMetered("batches", "batches are billed when their results are produced, out of sight of the proxy"),
    ),
    ("/batches/*/cancel", Free("batches_cancel")),
    ("/files", Free("files")),
    ("/uploads", Free("uploads")),
    ("/uploads/**", Free("uploads")),
    // Vector stores are billed for storage by the day, which no call meters.
    (
        "/vector_stores/*/file_batches",
        NotMetered(
            "vector_store_file_batches",
            "file batches are processed in the background, out of sight of the proxy",
        ),
    ),
    ("/vector_stores/*/file_batches/*/cancel", Free("vector_stores")),
    ("/vector_stores/*/search", NotMetered("vector_store_search", UNPRICED)),
    ("/vector_stores", Free("vector_stores")),
    ("/vector_stores/**", Free("vector_stores")),
    ("/conversations", Free("conversations")),
    ("/conversations/**", Free("conversations")),
    (
        "/containers",
        NotMetered("containers", "containers are billed by the session, out of sight of the proxy"),
    ),
    ("/containers/*/files", Free("container_files")),
    ("/fine_tuning/jobs", NotMetered("fine_tuning", LATER)),
    ("/fine_tuning/jobs/*/cancel", Free("fine_tuning")),
    ("/fine_tuning/jobs/*/pause", Free("fine_tuning")),
    ("/fine_tuning/jobs/*/resume", Free("fine_tuning")),
    ("/fine_tuning/checkpoints/*/permissions", Free("fine_tuning")),
    ("/fine_tuning/alpha/graders/validate", Free("graders_validate")),
    ("/fine_tuning/alpha/graders/run", NotMetered("graders_run", UNPRICED)),
    ("/evals/*/runs", NotMetered("evals_runs", LATER)),
    ("/evals/*/runs/*/cancel", Free("evals")),
    ("/evals", Free("evals")),
    ("/evals/*", Free("evals")),
    ("/threads/runs", NotMetered("threads_runs", LATER)),
    ("/threads/*/runs", NotMetered("threads_runs", LATER)),
    ("/threads/*/runs/*/submit_tool_outputs", NotMetered("threads_runs", LATER)),
    ("/threads/*/runs/*/cancel", Free("threads")),
    ("/threads", Free("threads")),
    ("/threads/**", Free("threads")),
    ("/assistants", Free("assistants")),
    ("/assistants/*", Free("assistants")),
    ("/agents/sessions", NotMetered("agents_sessions", LATER)),
    ("/agents/sessions/*/events", NotMetered("agents_sessions", LATER)),
    ("/agents/sessions/*", Free("agents")),
    ("/agents/automations/*/pause", Free("agents")),
    (
        "/agents/automations/**",
        NotMetered("agents_automations", "automations run on a schedule, without a call through the proxy"),
    ),
    (
        "/agents/automations",
        NotMetered("agents_automations", "automations run on a schedule, without a call through the proxy"),
    ),
    ("/agents", Free("agents")),
    ("/agents/**", Free("agents")),
    ("/vaults", Free("vaults")),
    ("/vaults/**", Free("vaults")),
    ("/chatkit/sessions", NotMetered("chatkit_sessions", CREDENTIALS)),
    ("/chatkit/sessions/*/cancel", Free("chatkit")),
    ("/realtime/client_secrets", NotMetered("realtime_client_secrets", CREDENTIALS)),
    ("/realtime/translations/client_secrets", NotMetered("realtime_client_secrets", CREDENTIALS)),
    ("/realtime/sessions", NotMetered("realtime_sessions", CREDENTIALS)),
    ("/realtime/transcription_sessions", NotMetered("realtime_sessions", CREDENTIALS)),
    ("/realtime/calls", NotMetered("realtime_calls", MEDIA)),
    ("/realtime/calls/*/accept", NotMetered("realtime_calls", MEDIA)),
    ("/realtime/calls/*/hangup", Free("realtime_calls")),
    ("/realtime/calls/*/refer", Free("realtime_calls")),
    ("/realtime/calls/*/reject", Free("realtime_calls")),
    ("/live/sessions", NotMetered("live_sessions", MEDIA)),
    ("/live/sessions/*/accept", NotMetered("live_sessions", MEDIA)),
    ("/live/sessions/*/fork", NotMetered("live_sessions", MEDIA)),
    ("/live/sessions/*/hangup", Free("live_sessions")),
    ("/live/sessions/*/refer", Free("live_sessions")),
    ("/live/sessions/*/reject", Free("live_sessions")),
    ("/decisions", NotMetered("decisions", UNPRICED)),
    ("/content_provenance_checks", NotMetered("content_provenance_checks", UNPRICED)),
    ("/skills", Free("skills")),
    ("/skills/**", Free("skills")),
    ("/webhook_endpoints", Free("webhooks")),
    ("/webhook_endpoints/**", Free("webhooks")),
    ("/organization/**", Free("admin")),
];

/// GET and DELETE: reads and deletions of these resources are free.
const READ_ROOTS: &[&str] = &[
    "models",
    "files",
    "uploads",
    "batches",
    "responses",
    "chat",
    "vector_stores",
    "conversations",
    "containers",
    "videos",
    "fine_tuning",
    "evals",
    "assistants",
    "threads",
    "agents",
    "vaults",
    "chatkit",
    "skills",
    "safety",
    "webhook_endpoints",
    "webhook_event_types",
    "organization",
    "audio",
    "live",
];

/// The provider-relative path: the part after the API version, with the family it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface<'a> {
    OpenAi(&'a str),
    /// Gemini's OpenAI-compatible API (Developer API or Vertex).
    GeminiCompat(&'a str),
}

fn surface(path: &str) -> Surface<'_> {
    let path = path.trim_end_matches('/');
    if let Some(rest) = under(path, "/v1beta/openai") {
        return Surface::GeminiCompat(rest);
    }
    if let Some(rest) = vertex_openapi(path) {
        return Surface::GeminiCompat(rest);
    }
    Surface::OpenAi(under(path, "/v1").unwrap_or(path))
}

/// The rest of `path` under `prefix` (segment-aligned).
fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix).filter(|r| r.is_empty() || r.starts_with('/'))
}

/// `/v1[beta1]/projects/{p}/locations/{l}/endpoints/openapi` + rest.
fn vertex_openapi(path: &str) -> Option<&str> {
    let mut tail = under(path, "/v1").or_else(|| under(path, "/v1beta1"))?;
    for want in ["projects", "*", "locations", "*", "endpoints", "openapi"] {
        let after = tail.strip_prefix('/')?;
        let (seg, next) = after.split_at(after.find('/').unwrap_or(after.len()));
        if seg.is_empty() || (want != "*" && seg != want) {
            return None;
        }
        tail = next;
    }
    Some(tail)
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("multipart/"))
}

fn call(class: Class, headers: &HeaderMap) -> Call {
    match class {
        Json(endpoint) => Call::metered(endpoint),
        Form(endpoint) if is_multipart(headers) => Call::metered(endpoint).raw_body(),
        Form(endpoint) => Call::metered(endpoint),
        Free(endpoint) => Call::free(endpoint, None),
        NotMetered(endpoint, why) => Call::not_metered(endpoint, why),
    }
}

/// The class of an OpenAI API request.
pub(super) fn classify(req: &RequestInfo<'_>) -> Call {
    if is_websocket_upgrade(req.headers) {
        return Call::not_metered("websocket", WEBSOCKET);
    }
    let class = match surface(req.path) {
        Surface::OpenAi(path) => {
            if let Some(id) = retrieved_response(req.method, path, req.query) {
                return Call::free(ResponseGet, None).settling(id);
            }
            openai_class(req.method, path)
        }
        Surface::GeminiCompat(path) => gemini_compat_class(req.method, path),
    };
    call(class, req.headers)
}

/// The id of a response read back whole with `GET /responses/{id}`.
fn retrieved_response<'p>(method: &Method, path: &'p str, query: Option<&str>) -> Option<&'p str> {
    let id = path.strip_prefix("/responses/").filter(|id| !id.is_empty() && !id.contains('/'))?;
    let streamed = query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "stream" && v == "true"));
    (*method == Method::GET && !streamed).then_some(id)
}

fn openai_class(method: &Method, path: &str) -> Class {
    match *method {
        Method::POST => POST.iter().find(|(p, _)| matches(p, path)).map_or(NotMetered("unknown", UNKNOWN), |(_, c)| *c),
        Method::GET | Method::HEAD if path == "/realtime" || path.starts_with("/realtime/") => NotMetered("realtime", WEBSOCKET),
        Method::GET | Method::HEAD | Method::DELETE => {
            let root = path.split('/').nth(1).unwrap_or("");
            if READ_ROOTS.contains(&root) {
                Free("read")
            } else {
                NotMetered("unknown", UNKNOWN)
            }
        }
        _ => NotMetered("unknown", UNKNOWN),
    }
}

fn gemini_compat_class(method: &Method, path: &str) -> Class {
    const ONLY: &str = "only chat completions and embeddings of the OpenAI-compatible API are metered";
    match (method, path) {
        (&Method::POST, "/chat/completions") => Json(Chat),
        (&Method::POST, "/embeddings") => Json(Embeddings),
        (&Method::GET, p) if matches("/models", p) || matches("/models/**", p) => Free("models"),
        _ => NotMetered("openai_compat", ONLY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(method: &str, path: &str, headers: &HeaderMap) -> (bool, Option<&'static str>, &'static str) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let c = classify(&RequestInfo {
            method: &method,
            path,
            query: Some("beta=true"),
            headers,
        });
        (c.metered, c.unmetered, c.endpoint_name())
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Want {
        Metered(&'static str),
        IsFree,
        Refused,
    }
    use Want::*;

    /// Real SDK paths (openai 3.57), with the class each must fall in.
    const CASES: &[(&str, &str, Want)] = &[
        ("POST", "/v1/chat/completions", Metered("chat")),
        ("POST", "/chat/completions", Metered("chat")),
        ("POST", "/v1/chat/completions/", Metered("chat")),
        ("POST", "/v1/completions", Metered("completions")),
        ("POST", "/v1/responses", Metered("responses")),
        ("POST", "/v1/responses/compact", Metered("responses_compact")),
        ("POST", "/v1/embeddings", Metered("embeddings")),
        ("POST", "/v1/audio/speech", Metered("speech")),
        ("POST", "/v1/audio/transcriptions", Metered("transcription")),
        ("POST", "/v1/audio/translations", Metered("translation")),
        ("POST", "/v1/images/generations", Metered("images")),
        ("POST", "/v1/images/edits", Metered("image_edits")),
        ("POST", "/v1/images/variations", Metered("image_variations")),
        ("POST", "/v1/videos", Metered("videos")),
        ("POST", "/v1/moderations", IsFree),
        ("POST", "/v1/responses/input_tokens", IsFree),
        ("POST", "/v1/responses/resp_1/cancel", IsFree),
        ("GET", "/v1/responses/resp_1", IsFree),
        ("GET", "/v1/responses/resp_1/input_items", IsFree),
        ("DELETE", "/v1/responses/resp_1", IsFree),
        ("GET", "/v1/responses/resp_1/input_items", IsFree),
        ("POST", "/v1/chat/completions/chatcmpl-1", IsFree),
        ("GET", "/v1/chat/completions/chatcmpl-1/messages", IsFree),
        ("GET", "/v1/models", IsFree),
        ("GET", "/v1/models/gpt-5", IsFree),
        ("DELETE", "/v1/models/ft:gpt-4o:acme", IsFree),
        ("POST", "/v1/files", IsFree),
        ("GET", "/v1/files/file-1/content", IsFree),
        ("POST", "/v1/uploads", IsFree),
        ("POST", "/v1/uploads/up_1/parts", IsFree),
        ("POST", "/v1/uploads/up_1/complete", IsFree),
        ("POST", "/v1/batches", Refused),
        ("GET", "/v1/batches/b_1", IsFree),
        ("POST", "/v1/batches/b_1/cancel", IsFree),
        ("POST", "/v1/vector_stores", IsFree),
        ("POST", "/v1/vector_stores/vs_1/files", IsFree),
        ("POST", "/v1/vector_stores/vs_1/file_batches", Refused),
        ("POST", "/v1/vector_stores/vs_1/file_batches/b_1/cancel", IsFree),
        ("POST", "/v1/vector_stores/vs_1/search", Refused),
        ("DELETE", "/v1/vector_stores/vs_1", IsFree),
        ("POST", "/v1/conversations", IsFree),
        ("POST", "/v1/conversations/c_1/items", IsFree),
        ("POST", "/v1/containers", Refused),
        ("POST", "/v1/containers/cntr_1/files", IsFree),
        ("GET", "/v1/containers/cntr_1/files/f_1/content", IsFree),
        ("POST", "/v1/videos/video_1/remix", Refused),
        ("POST", "/v1/videos/edits", Refused),
        ("POST", "/v1/videos/extensions", Refused),
        ("POST", "/v1/videos/characters", Refused),
        ("GET", "/v1/videos/video_1/content", IsFree),
        ("POST", "/v1/fine_tuning/jobs", Refused),
        ("POST", "/v1/fine_tuning/jobs/ft_1/cancel", IsFree),
        ("GET", "/v1/fine_tuning/jobs/ft_1/events", IsFree),
        ("POST", "/v1/fine_tuning/alpha/graders/run", Refused),
        ("POST", "/v1/fine_tuning/alpha/graders/validate", IsFree),
        ("POST", "/v1/evals", IsFree),
        ("POST", "/v1/evals/e_1/runs", Refused),
        ("POST", "/v1/evals/e_1/runs/r_1/cancel", IsFree),
        ("POST", "/v1/threads", IsFree),
        ("POST", "/v1/threads/runs", Refused),
        ("POST", "/v1/threads/t_1/runs", Refused),
        ("POST", "/v1/threads/t_1/runs/r_1/submit_tool_outputs", Refused),
        ("POST", "/v1/threads/t_1/runs/r_1/cancel", IsFree),
        ("POST", "/v1/threads/t_1/messages", IsFree),
        ("POST", "/v1/assistants", IsFree),
        ("POST", "/v1/agents", IsFree),
        ("POST", "/v1/agents/sessions", Refused),
        ("POST", "/v1/agents/sessions/s_1/events", Refused),
        ("GET", "/v1/agents/sessions/s_1/events", IsFree),
        ("POST", "/v1/agents/environments/templates", IsFree),
        ("POST", "/v1/agents/automations", Refused),
        ("POST", "/v1/agents/automations/a_1/invocations", Refused),
        ("POST", "/v1/agents/automations/a_1/resume", Refused),
        ("POST", "/v1/agents/automations/a_1/pause", IsFree),
        ("POST", "/v1/vaults/v_1/credentials", IsFree),
        ("POST", "/v1/chatkit/sessions", Refused),
        ("POST", "/v1/chatkit/sessions/cks_1/cancel", IsFree),
        ("GET", "/v1/chatkit/threads/t_1", IsFree),
        ("POST", "/v1/realtime/client_secrets", Refused),
        ("POST", "/v1/realtime/translations/client_secrets", Refused),
        ("POST", "/v1/realtime/sessions", Refused),
        ("POST", "/v1/realtime/transcription_sessions", Refused),
        ("POST", "/v1/realtime/calls", Refused),
        ("POST", "/v1/realtime/calls/rtc_1/accept", Refused),
        ("POST", "/v1/realtime/calls/rtc_1/hangup", IsFree),
        ("GET", "/v1/realtime", Refused),
        ("GET", "/v1/realtime/translations", Refused),
        ("POST", "/v1/live/sessions", Refused),
        ("POST", "/v1/live/sessions/ls_1/fork", Refused),
        ("POST", "/v1/live/sessions/ls_1/reject", IsFree),
        ("GET", "/v1/live/sessions/ls_1/content", IsFree),
        ("POST", "/v1/decisions", Refused),
        ("POST", "/v1/content_provenance_checks", Refused),
        ("POST", "/v1/audio/voices", Refused),
        ("POST", "/v1/audio/voice_consents", IsFree),
        ("DELETE", "/v1/audio/voices/v_1", IsFree),
        ("POST", "/v1/skills/sk_1/versions", IsFree),
        ("POST", "/v1/webhook_endpoints/we_1/rotate_secret", IsFree),
        ("GET", "/v1/webhook_event_types", IsFree),
        ("GET", "/v1/safety/alerts/a_1", IsFree),
        ("POST", "/v1/organization/admin_api_keys", IsFree),
        ("GET", "/v1/organization/usage/completions", IsFree),
        // Nothing unknown is free.
        ("POST", "/v1/something/new", Refused),
        ("GET", "/v1/something/new", Refused),
        ("PUT", "/v1/chat/completions", Refused),
        ("POST", "/v2/chat/completions", Refused),
        ("POST", "/v1/chat/completionsx", Refused),
        // Gemini's OpenAI-compatible API.
        ("POST", "/v1beta/openai/chat/completions", Metered("chat")),
        ("POST", "/v1beta/openai/embeddings", Metered("embeddings")),
        ("GET", "/v1beta/openai/models", IsFree),
        ("GET", "/v1beta/openai/models/gemini-2.5-flash", IsFree),
        ("POST", "/v1beta/openai/images/generations", Refused),
        ("POST", "/v1beta/openai/audio/speech", Refused),
        (
            "POST",
            "/v1/projects/p-1/locations/us-central1/endpoints/openapi/chat/completions",
            Metered("chat"),
        ),
        ("POST", "/v1/projects/p-1/locations/global/endpoints/openapi/embeddings", Metered("embeddings")),
        ("GET", "/v1/projects/p-1/locations/global/endpoints/openapi/models", IsFree),
        ("POST", "/v1/projects/p-1/locations/global/endpoints/openapi/responses", Refused),
    ];

    #[test]
    fn every_sdk_path_has_its_class() {
        let h = HeaderMap::new();
        for &(method, path, want) in CASES {
            let (metered, unmetered, endpoint) = class_of(method, path, &h);
            let got = match (metered, unmetered) {
                (true, _) => Metered(endpoint),
                (false, None) => IsFree,
                (false, Some(_)) => Refused,
            };
            assert_eq!(got, want, "{method} {path}");
        }
    }

    #[test]
    fn websocket_upgrades_are_refused_and_forms_are_raw() {
        let mut h = HeaderMap::new();
        h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(class_of("GET", "/v1/responses", &h).1, Some(WEBSOCKET));
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, "multipart/form-data; boundary=x".parse().unwrap());
        let method = Method::POST;
        let req = |path| RequestInfo {
            method: &method,
            path,
            query: None,
            headers: &h,
        };
        let c = classify(&req("/v1/images/edits"));
        assert!(c.metered && c.needs_body && !c.json_body);
        let json = HeaderMap::new();
        let c = classify(&RequestInfo {
            headers: &json,
            ..req("/v1/videos")
        });
        assert!(c.metered && c.needs_body && c.json_body);
    }

    #[test]
    fn reasons_end_a_sentence() {
        for (_, class) in POST {
            if let NotMetered(_, why) = class {
                assert!(!why.ends_with('.') && why.chars().next().is_some_and(char::is_lowercase), "{why}");
            }
        }
    }
}
