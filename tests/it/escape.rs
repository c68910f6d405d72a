//! No paid call escapes the meter.
//!
//! A stand-in provider keeps its own bill: it reads requests as leniently as the real
//! services (the last of duplicate JSON keys wins, `//` and `..` in paths are merged),
//! honours `Accept-Encoding`, and bills every call it serves when it receives it, finishing
//! the work whether or not the client stays. Every attempt to spend through the proxy must
//! end one of two ways: the proxy refused it and the provider billed nothing, or the proxy
//! recorded at least what the provider billed, with exactly one usage record (an unanswered
//! call: at least its reservation, never nothing).

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::common::*;
use spendgate::domain::Scope;

/// What the stand-in provider does with one request.
struct Served {
    /// What the provider bills, in nano-dollars.
    bill: i64,
    status: u16,
    headers: Vec<(&'static str, String)>,
    chunks: Vec<Bytes>,
    /// Before the answer's head.
    head_delay: Duration,
    /// Between body chunks.
    chunk_delay: Duration,
}

impl Served {
    fn json(bill: i64, body: Value) -> Self {
        Served {
            bill,
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            chunks: vec![Bytes::from(body.to_string())],
            head_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
        }
    }
}

/// List prices the stand-in bills at, in nano-dollars per unit.
const GPT_4O_MINI: (i64, i64) = (150, 600);
const GEMINI_FLASH: (i64, i64) = (300, 2500);
const CLAUDE_HAIKU: (i64, i64) = (1000, 5000);
const GPT_5: (i64, i64) = (1250, 10_000);
const CLAUDE_OPUS_46: (i64, i64) = (5000, 25_000);
/// What the stand-in bills for a call it does not otherwise know: $1.
const UNKNOWN_CALL_BILL: i64 = 1_000_000_000;
/// Seconds of audio in the stand-in's transcription.
const WHISPER_SECONDS: i64 = 42;
/// Output tokens of the stand-in's background response.
const BACKGROUND_OUTPUT: i64 = 300;
/// eleven_multilingual_v2: $0.10 per 1,000 characters.
const ELEVEN_PER_CHAR: i64 = 100_000;
/// dall-e-2 at 1024x1024: $0.02 per image.
const DALLE2_1024: i64 = 20_000_000;
/// Tokens the stand-in's chat answers use.
const PROMPT: i64 = 20;
const COMPLETION: i64 = 30;

/// The path as a lenient front end reads it: empty and dot segments merged away.
fn lenient_path(raw: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The stand-in provider: bills the call and says how to answer it.
fn serve(method: &Method, raw_path: &str, h: &HeaderMap, body: &[u8]) -> Served {
    // serde_json's map keeps the last of duplicate keys, as the providers' readers do.
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let path = lenient_path(raw_path);
    let head_delay = Duration::from_millis(header(h, "x-test-head-delay-ms").and_then(|v| v.parse().ok()).unwrap_or(0));
    let mut served = match (method.as_str(), path.as_str()) {
        ("POST", "/v1/chat/completions") => chat(&json, h, GPT_4O_MINI),
        ("POST", "/v1beta/openai/chat/completions") => chat(&json, h, GEMINI_FLASH),
        ("POST", "/v1/images/generations") => {
            let n = json["n"].as_i64().unwrap_or(1);
            let data: Vec<Value> = (0..n).map(|_| json!({"b64_json": "aW1n"})).collect();
            Served::json(n * DALLE2_1024, json!({"created": 1, "data": data}))
        }
        ("POST", "/v1/responses") if json["background"] == json!(true) => {
            // The work runs after the answer; it is billed when it is done.
            let usage = PROMPT * GPT_5.0 + BACKGROUND_OUTPUT * GPT_5.1;
            Served::json(
                usage,
                json!({"id": "resp_bg1", "object": "response", "status": "queued", "model": "gpt-5", "usage": null}),
            )
        }
        ("GET", "/v1/responses/resp_bg1") => Served::json(
            0,
            json!({"id": "resp_bg1", "object": "response", "status": "completed", "model": "gpt-5",
                "output": [{"type": "message", "content": [{"type": "output_text", "text": "Tides..."}]}],
                "usage": {"input_tokens": PROMPT, "output_tokens": BACKGROUND_OUTPUT, "total_tokens": PROMPT + BACKGROUND_OUTPUT}}),
        ),
        ("POST", "/v1/messages/batches") => {
            // Each request of the batch, at half price, billed when the batch runs.
            let n = json["requests"].as_array().map_or(0, Vec::len) as i64;
            Served::json(
                n * (100 * CLAUDE_HAIKU.0 + 100 * CLAUDE_HAIKU.1) / 2,
                json!({"id": "msgbatch_1", "type": "message_batch"}),
            )
        }
        ("POST", p) if p.starts_with("/v1/text-to-speech/") => {
            let chars = json["text"].as_str().map_or(0, |t| t.chars().count()) as i64;
            Served {
                bill: chars * ELEVEN_PER_CHAR,
                status: 200,
                headers: vec![("content-type", "audio/mpeg".into()), ("character-cost", chars.to_string())],
                chunks: vec![Bytes::from_static(b"ID3audio"), Bytes::from_static(b"more-audio")],
                head_delay: Duration::ZERO,
                chunk_delay: Duration::ZERO,
            }
        }
        ("POST", "/v1/audio/transcriptions") => {
            // whisper-1 bills the audio's duration: $0.006 a minute.
            Served::json(
                WHISPER_SECONDS * 100_000,
                json!({"text": "Low tide at noon.", "usage": {"type": "duration", "seconds": WHISPER_SECONDS}}),
            )
        }
        ("POST", "/v1/videos") => {
            // sora-2: $0.10 a second of the seconds asked for (a string in the API).
            let seconds: i64 = json["seconds"].as_str().and_then(|s| s.parse().ok()).unwrap_or(4);
            Served::json(
                seconds * 100_000_000,
                json!({"id": "video_1", "object": "video", "status": "queued", "seconds": seconds.to_string()}),
            )
        }
        ("POST", "/v1/responses") => {
            // Tokens, and $0.01 per web search call (gpt-5).
            let searches = json["tools"].as_array().map_or(0, |t| t.iter().filter(|t| t["type"] == "web_search").count()) as i64;
            let output: Vec<Value> = (0..searches)
                .map(|i| json!({"type": "web_search_call", "id": format!("ws_{i}"), "status": "completed"}))
                .chain(std::iter::once(
                    json!({"type": "message", "content": [{"type": "output_text", "text": "Tides"}]}),
                ))
                .collect();
            Served::json(
                PROMPT * GPT_5.0 + COMPLETION * GPT_5.1 + searches * 10_000_000,
                json!({"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5", "output": output,
                    "usage": {"input_tokens": PROMPT, "output_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION}}),
            )
        }
        ("POST", "/v1/messages") => {
            // Fast mode bills six times the list price.
            let (rates, multiplier) = match json["model"].as_str() {
                Some("claude-opus-4-6") => (CLAUDE_OPUS_46, if json["speed"] == "fast" { 6 } else { 1 }),
                _ => (CLAUDE_HAIKU, 1),
            };
            let speed = if multiplier == 6 { "fast" } else { "standard" };
            Served::json(
                (PROMPT * rates.0 + COMPLETION * rates.1) * multiplier,
                json!({"id": "msg_1", "type": "message", "role": "assistant", "model": json["model"], "content": [{"type": "text", "text": "Tides"}],
                    "usage": {"input_tokens": PROMPT, "output_tokens": COMPLETION, "speed": speed}}),
            )
        }
        ("POST", p) if p.ends_with("/publishers/anthropic/models/claude-haiku-4-5:rawPredict") => Served::json(
            PROMPT * CLAUDE_HAIKU.0 + COMPLETION * CLAUDE_HAIKU.1,
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "content": [{"type": "text", "text": "Tides"}],
                "usage": {"input_tokens": PROMPT, "output_tokens": COMPLETION}}),
        ),
        ("POST", "/v1beta/models/gemini-2.5-flash:generateContent") => {
            // Tokens, and $0.035 per grounded prompt (2.5 models).
            let grounded = json["tools"].as_array().is_some_and(|t| t.iter().any(|t| t.get("google_search").is_some()));
            let mut answer = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Tides"}]}}],
                "usageMetadata": {"promptTokenCount": PROMPT, "candidatesTokenCount": COMPLETION, "totalTokenCount": PROMPT + COMPLETION},
                "modelVersion": "gemini-2.5-flash"});
            if grounded {
                answer["candidates"][0]["groundingMetadata"] = json!({"webSearchQueries": ["low tide today"]});
            }
            Served::json(PROMPT * GEMINI_FLASH.0 + COMPLETION * GEMINI_FLASH.1 + i64::from(grounded) * 35_000_000, answer)
        }
        ("POST", "/v1/sound-generation") => {
            // $0.12 per generation (5 s of sound).
            Served {
                bill: 120_000_000,
                status: 200,
                headers: vec![("content-type", "audio/mpeg".into())],
                chunks: vec![Bytes::from_static(b"ID3sound")],
                head_delay: Duration::ZERO,
                chunk_delay: Duration::ZERO,
            }
        }
        // Reading is free, except a signed URL: the conversation it opens is billed elsewhere.
        ("GET", "/v1/convai/conversation/get-signed-url") => Served::json(UNKNOWN_CALL_BILL, json!({"signed_url": "wss://..."})),
        ("GET" | "HEAD" | "DELETE", _) => Served::json(0, json!({"object": "list", "data": []})),
        // Anything else the stand-in serves is paid work the proxy must not let through unseen.
        _ => Served::json(UNKNOWN_CALL_BILL, json!({"id": "job_1", "status": "queued"})),
    };
    served.head_delay = head_delay;
    if let Some(ms) = header(h, "x-test-chunk-delay-ms").and_then(|v| v.parse().ok()) {
        served.chunk_delay = Duration::from_millis(ms);
    }
    served
}

/// A chat completion (plain or SSE), usage in the stream only when the request asks for it.
fn chat(json: &Value, h: &HeaderMap, (input, output): (i64, i64)) -> Served {
    let bill = PROMPT * input + COMPLETION * output;
    let model = json["model"].as_str().unwrap_or("gpt-4o-mini").to_string();
    let usage = json!({"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION});
    if json["stream"] != json!(true) {
        let body = json!({"id": "c1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Low tide is at 06:40."}, "finish_reason": "stop"}],
            "usage": usage});
        return Served::json(bill, body);
    }
    let mut events: Vec<String> = ["Low", " tide", " is at", " 06:40."]
        .iter()
        .map(|t| {
            format!(
                "data: {}\n\n",
                json!({"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": t}}]})
            )
        })
        .collect();
    if json.pointer("/stream_options/include_usage") == Some(&json!(true)) {
        events.push(format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage})
        ));
    }
    events.push("data: [DONE]\n\n".into());
    let accepts_gzip = header(h, "accept-encoding").is_some_and(|a| a.contains("gzip") || a.contains('*'));
    let (chunks, mut headers) = if accepts_gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(events.concat().as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        let chunks = bytes.chunks(7).map(Bytes::copy_from_slice).collect();
        (chunks, vec![("content-encoding", "gzip".to_string())])
    } else {
        (events.into_iter().map(Bytes::from).collect(), Vec::new())
    };
    headers.push(("content-type", "text/event-stream".into()));
    Served {
        bill,
        status: 200,
        headers,
        chunks,
        head_delay: Duration::ZERO,
        chunk_delay: Duration::ZERO,
    }
}

/// The stand-in provider's server and its bill.
struct Provider {
    addr: SocketAddr,
    bill: Arc<Mutex<i64>>,
    calls: Arc<Mutex<usize>>,
}

impl Provider {
    async fn start() -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bill = Arc::new(Mutex::new(0i64));
        let calls = Arc::new(Mutex::new(0usize));
        let (b, c) = (bill.clone(), calls.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (b, c) = (b.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (b, c) = (b.clone(), c.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|x| x.to_bytes()).unwrap_or_default();
                            let served = serve(&parts.method, parts.uri.path(), &parts.headers, &body);
                            // Billed on receipt: the work is done whether or not the client stays.
                            *b.lock() += served.bill;
                            *c.lock() += 1;
                            tokio::time::sleep(served.head_delay).await;
                            Ok::<_, Infallible>(respond(served))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Provider { addr, bill, calls }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn billed(&self) -> i64 {
        *self.bill.lock()
    }

    fn calls(&self) -> usize {
        *self.calls.lock()
    }
}

fn respond(s: Served) -> Response<StreamBody<crate::common::tokio_stream_shim::Receiver>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let delay = s.chunk_delay;
    let chunks = s.chunks;
    tokio::spawn(async move {
        for c in chunks {
            tokio::time::sleep(delay).await;
            if tx.send(Ok(Frame::data(c))).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(StreamBody::new(crate::common::tokio_stream_shim::Receiver(rx)));
    *r.status_mut() = StatusCode::from_u16(s.status).unwrap();
    for (k, v) in s.headers {
        r.headers_mut().insert(k, v.parse().unwrap());
    }
    r
}

/// One attempt to spend through the proxy.
struct Attempt {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// The client gives up after this long (before the answer's head, or mid-body).
    client_timeout: Option<Duration>,
    /// The client reads only this many body bytes, then goes away.
    read_then_leave: Option<usize>,
}

impl Attempt {
    fn post(path: &str, body: impl Into<String>) -> Self {
        Attempt {
            method: Method::POST,
            path: path.into(),
            headers: vec![("content-type", "application/json".into())],
            body: body.into(),
            client_timeout: None,
            read_then_leave: None,
        }
    }

    fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        self.headers.push((k, v.into()));
        self
    }
}

const YAML: &str = "server:\n  shutdown_grace: 1\nreserve:\n  max_output_tokens: 4096\n";

/// What happened to an attempt.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    error_type: Option<String>,
    billed: i64,
    recorded: i64,
    records: usize,
    provider_calls: usize,
}

async fn run(a: Attempt, extra_yaml: &str) -> Outcome {
    let provider = Provider::start().await;
    let yaml = format!("{YAML}{extra_yaml}{}", providers_yaml());
    let p = start_proxy(&yaml, &provider.url()).await;
    let profile = "p-escape";
    let mut headers: Vec<(&str, &str)> = a.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    headers.push(("x-profile-id", profile));
    let url = p.url(&a.path);
    let send = p.client.send(a.method.clone(), &url, &headers, a.body.clone());
    let (status, error_type) = match a.client_timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(_) => (None, None),
        },
        None => {
            let r = send.await;
            let status = r.status().as_u16();
            match a.read_then_leave {
                Some(n) => {
                    let mut body = r.into_body();
                    let mut got = 0;
                    while got < n {
                        match body.frame().await {
                            Some(Ok(f)) => got += f.data_ref().map_or(0, Bytes::len),
                            _ => break,
                        }
                    }
                    drop(body);
                    (Some(status), None)
                }
                None => {
                    let body = r.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let kind = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v.pointer("/error/type").and_then(Value::as_str).map(str::to_string));
                    (Some(status), kind)
                }
            }
        }
    };
    // Let abandoned calls finish upstream and settle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        settled_or_fail(&p.handle).await;
        let reached = provider.calls();
        let records = records(&p, profile).await;
        if records >= reached.min(1) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcome = Outcome {
        status,
        error_type,
        billed: provider.billed(),
        recorded: monthly_cost(&p, profile).await,
        records: records(&p, profile).await,
        provider_calls: provider.calls(),
    };
    p.handle.shutdown().await;
    outcome
}

async fn records(p: &Proxy, profile: &str) -> usize {
    let app = &p.handle.app;
    let day = app.runtime().calendar.local_date(app.clock.now()).format("%Y-%m-%d").to_string();
    let h = app.store.history(Scope::Profile, profile, &[day], 100).await.unwrap();
    h.recent.len()
}

/// The invariant every attempt must hold.
fn check(name: &str, o: &Outcome) {
    let refused = o.provider_calls == 0;
    if refused {
        assert_eq!(o.billed, 0, "{name}: {o:?}");
        assert_eq!(o.records, 0, "{name}: a refused call leaves no usage record: {o:?}");
    } else {
        assert!(o.recorded >= o.billed, "{name}: the provider billed more than the proxy recorded: {o:?}");
        assert!(o.recorded > 0, "{name}: a call that reached the provider is never free here: {o:?}");
        assert_eq!(o.records, 1, "{name}: exactly one usage record: {o:?}");
    }
}

const CHAT_STREAM: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"When is low tide?"}]}"#;

#[tokio::test]
async fn client_header_tricks_cannot_switch_metering_off() {
    for ae in ["*", "compress", "gzip, compress", "identity", "br;q=0, gzip"] {
        let o = run(Attempt::post("/openai/v1/chat/completions", CHAT_STREAM).header("accept-encoding", ae), "").await;
        check(ae, &o);
        assert_eq!(o.status, Some(200), "{ae}");
        // The stream was read exactly: usage was asked for and read whatever the client accepts.
        assert_eq!(o.recorded, o.billed, "{ae}: {o:?}");
    }
}

#[tokio::test]
async fn odd_json_is_refused_before_the_provider_sees_it() {
    let text = "a".repeat(5000);
    for (name, body) in [
        ("duplicate text", format!(r#"{{"text":"","text":"{text}"}}"#)),
        (
            "nested duplicate",
            format!(r#"{{"text":"{text}","voice_settings":{{"stability":1,"stability":2}}}}"#),
        ),
        ("trailing data", format!(r#"{{"text":"hi"}} {{"text":"{text}"}}"#)),
        ("NaN", r#"{"text":"hi","seed":NaN}"#.to_string()),
        ("not JSON", format!("text={text}")),
        ("text not a string", r#"{"text":["a","b"]}"#.to_string()),
        ("invalid UTF-8", "{\"text\":\"\u{FFFD}\"}".to_string()),
    ] {
        let o = run(Attempt::post("/elevenlabs/v1/text-to-speech/voice1", body), "").await;
        check(name, &o);
        if name != "invalid UTF-8" {
            assert_eq!(o.status, Some(400), "{name}: {o:?}");
            assert_eq!(o.error_type.as_deref(), Some("invalid_request_body"), "{name}");
        }
    }
    // Bytes that are not UTF-8 at all.
    let provider = Provider::start().await;
    let p = start_proxy(&format!("{YAML}{}", providers_yaml()), &provider.url()).await;
    let mut body = br#"{"text":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}"#);
    let r = p
        .client
        .post(&p.url("/elevenlabs/v1/text-to-speech/voice1"), &[("x-profile-id", "p-utf8")], body)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(provider.calls(), 0);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn non_canonical_paths_are_refused() {
    for path in [
        "/openai//v1/chat/completions",
        "/openai/v1//chat/completions",
        "/openai/v1/x/../chat/completions",
        "/openai/v1/./chat/completions",
        "/openai/v1/chat/%63ompletions",
        "/openai/v1/moderations/../chat/completions",
    ] {
        let o = run(Attempt::post(path, CHAT_STREAM), "").await;
        check(path, &o);
        assert_eq!(o.status, Some(400), "{path}");
        assert_eq!(o.error_type.as_deref(), Some("non_canonical_path"), "{path}");
    }
}

#[tokio::test]
async fn endpoints_without_a_meter_are_refused_or_metered() {
    let batch = json!({"requests": (0..10).map(|i| json!({"custom_id": format!("r{i}"), "params": {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": []}})).collect::<Vec<_>>()});
    for (name, path, body) in [
        (
            "gemini openai-compatible chat",
            "/gemini/v1beta/openai/chat/completions",
            r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#.to_string(),
        ),
        (
            "openai images",
            "/openai/v1/images/generations",
            r#"{"model":"dall-e-2","prompt":"a tide table","n":2,"size":"1024x1024"}"#.to_string(),
        ),
        ("anthropic batch", "/anthropic/v1/messages/batches", batch.to_string()),
        ("unknown openai endpoint", "/openai/v1/some/new/paid/thing", "{}".to_string()),
        ("unknown elevenlabs endpoint", "/elevenlabs/v1/new-paid-tool", "{}".to_string()),
    ] {
        let o = run(Attempt::post(path, body), "").await;
        check(name, &o);
        if o.provider_calls == 0 {
            assert_eq!(o.status, Some(403), "{name}: {o:?}");
            assert_eq!(o.error_type.as_deref(), Some("endpoint_not_metered"), "{name}");
        }
    }
}

#[tokio::test]
async fn batches_are_refused_with_a_message_naming_the_key() {
    let provider = Provider::start().await;
    let p = start_proxy(&format!("{YAML}{}", providers_yaml()), &provider.url()).await;
    let r = p
        .client
        .post(&p.url("/anthropic/v1/messages/batches"), &[("x-profile-id", "p-b")], r#"{"requests":[]}"#)
        .await;
    assert_eq!(r.status, 403);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("POST /v1/messages/batches"), "{message}");
    assert!(message.contains("providers.anthropic.unmetered"), "{message}");
    assert_eq!(provider.calls(), 0);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn unmetered_allow_and_charge_forward_and_count() {
    // allow: forwarded, counted as a request and in the unmetered metric.
    let provider = Provider::start().await;
    let yaml = providers_yaml().replace(
        "anthropic, prefix: /anthropic, upstream: \"{upstream}\"",
        "anthropic, prefix: /anthropic, upstream: \"{upstream}\", unmetered: allow",
    );
    let p = start_proxy(&format!("{YAML}{yaml}"), &provider.url()).await;
    let r = p
        .client
        .post(&p.url("/anthropic/v1/messages/batches"), &[("x-profile-id", "p-allow")], r#"{"requests":[]}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(provider.calls(), 1);
    assert!(p.metrics().await.contains(r#"spendgate_unmetered_total{provider="anthropic"} 1"#));
    p.handle.shutdown().await;

    // charge_usd: a fixed charge per call.
    let provider = Provider::start().await;
    let yaml = providers_yaml().replace(
        "anthropic, prefix: /anthropic, upstream: \"{upstream}\"",
        "anthropic, prefix: /anthropic, upstream: \"{upstream}\", unmetered: {charge_usd: 0.25}",
    );
    let p = start_proxy(&format!("{YAML}{yaml}"), &provider.url()).await;
    for _ in 0..2 {
        let r = p
            .client
            .post(&p.url("/anthropic/v1/messages/batches"), &[("x-profile-id", "p-charge")], r#"{"requests":[]}"#)
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(monthly_cost(&p, "p-charge").await, usd("0.50"));
    p.handle.shutdown().await;
}

const TTS_BODY: &str = r#"{"text":"The tide turns at noon.","model_id":"eleven_multilingual_v2"}"#;

#[tokio::test]
async fn an_upstream_slower_than_read_idle_is_charged_its_reservation() {
    let yaml = providers_yaml().replace(
        "elevenlabs, prefix: /elevenlabs, upstream: \"{upstream}\"",
        "elevenlabs, prefix: /elevenlabs, upstream: \"{upstream}\", timeouts: {read_idle: 0.3}",
    );
    let provider = Provider::start().await;
    let p = start_proxy(&format!("{YAML}{yaml}"), &provider.url()).await;
    let r = p
        .client
        .post(
            &p.url("/elevenlabs/v1/text-to-speech/voice1"),
            &[("x-profile-id", "p-slow"), ("x-test-head-delay-ms", "1000")],
            TTS_BODY,
        )
        .await;
    assert_eq!(r.status, 504);
    settled_or_fail(&p.handle).await;
    let o = Outcome {
        status: Some(504),
        error_type: None,
        billed: provider.billed(),
        recorded: monthly_cost(&p, "p-slow").await,
        records: records(&p, "p-slow").await,
        provider_calls: provider.calls(),
    };
    check("slow upstream", &o);
    // 23 characters at $0.10 per 1,000: the reservation, exact.
    assert_eq!(o.recorded, 23 * ELEVEN_PER_CHAR);
    assert!(p
        .metrics()
        .await
        .contains(r#"spendgate_usage_estimated_total{provider="elevenlabs",reason="timeout"} 1"#));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_client_gone_before_the_head_is_charged_its_reservation_once() {
    let mut a = Attempt::post("/elevenlabs/v1/text-to-speech/voice1", TTS_BODY).header("x-test-head-delay-ms", "400");
    a.client_timeout = Some(Duration::from_millis(100));
    let o = run(a, "").await;
    assert_eq!(o.status, None, "the client left first");
    check("client gone before head", &o);
    assert_eq!(o.recorded, 23 * ELEVEN_PER_CHAR);
}

#[tokio::test]
async fn a_client_gone_mid_stream_is_charged_what_the_provider_reports() {
    let mut a = Attempt::post("/openai/v1/chat/completions", CHAT_STREAM).header("x-test-chunk-delay-ms", "30");
    a.read_then_leave = Some(1);
    let o = run(a, "").await;
    check("client gone mid-stream", &o);
    // The proxy read the rest of the stream without the client: the reported usage.
    assert_eq!(o.recorded, o.billed);
}

#[tokio::test]
async fn a_profile_keeps_its_org_whatever_the_header_says() {
    let provider = Provider::start().await;
    let limits = "limits:\n  profiles:\n    p-rot:\n      - {metric: requests, window: daily, max: 2}\n";
    let p = start_proxy(&format!("{YAML}{limits}{}", providers_yaml()), &provider.url()).await;
    let mut admitted = 0;
    for i in 0..9 {
        let org = format!("org-{}", i % 4);
        let mut headers = vec![("x-profile-id", "p-rot")];
        if i % 3 != 2 {
            headers.push(("x-org-id", org.as_str()));
        }
        let r = p.client.post(&p.url("/elevenlabs/v1/text-to-speech/voice1"), &headers, TTS_BODY).await;
        match r.status.as_u16() {
            200 => admitted += 1,
            409 => assert_eq!(r.json()["error"]["type"], "tenant_conflict"),
            402 => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(admitted, 2);
    assert_eq!(provider.calls(), 2);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_configured_org_is_the_profiles_org() {
    let provider = Provider::start().await;
    let yaml = format!(
        "{YAML}tenant:\n  orgs:\n    acme: [p-a]\nlimits:\n  orgs:\n    acme:\n      - {{metric: requests, window: daily, max: 1}}\n{}",
        providers_yaml()
    );
    let p = start_proxy(&yaml, &provider.url()).await;
    let tts = p.url("/elevenlabs/v1/text-to-speech/voice1");
    let r = p.client.post(&tts, &[("x-profile-id", "p-a"), ("x-org-id", "other")], TTS_BODY).await;
    assert_eq!(r.status, 409);
    assert_eq!(p.client.post(&tts, &[("x-profile-id", "p-a")], TTS_BODY).await.status, 200);
    // Without the header the profile still counts for acme, whose limit is used up.
    assert_eq!(p.client.post(&tts, &[("x-profile-id", "p-a")], TTS_BODY).await.status, 402);
    assert_eq!(provider.calls(), 1);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_zero_estimate_cannot_pass_a_used_up_limit() {
    let provider = Provider::start().await;
    let limits = "limits:\n  profiles:\n    p-zero:\n      - {metric: cost_usd, window: daily, max: 0.0023}\n";
    let p = start_proxy(&format!("{YAML}{limits}{}", providers_yaml()), &provider.url()).await;
    let tts = p.url("/elevenlabs/v1/text-to-speech/voice1");
    // 23 characters: $0.0023, the whole budget.
    assert_eq!(p.client.post(&tts, &[("x-profile-id", "p-zero")], TTS_BODY).await.status, 200);
    // An empty text estimates to nothing; the used-up limit still refuses it.
    let r = p
        .client
        .post(&tts, &[("x-profile-id", "p-zero")], r#"{"text":"","model_id":"eleven_multilingual_v2"}"#)
        .await;
    assert_eq!(r.status, 402);
    assert_eq!(provider.calls(), 1);
    // Free calls still pass.
    p.handle.shutdown().await;
}

#[tokio::test]
async fn huge_strings_are_refused_and_never_become_labels() {
    let model = "m".repeat(2 * 1024 * 1024);
    let o = run(
        Attempt::post("/openai/v1/chat/completions", format!(r#"{{"model":"{model}","messages":[]}}"#)),
        "",
    )
    .await;
    check("huge model", &o);
    assert_eq!(o.status, Some(400));
    assert_eq!(o.error_type.as_deref(), Some("invalid_request_body"));

    // A model the price table does not know is labelled `other`.
    let provider = Provider::start().await;
    let p = start_proxy(&format!("{YAML}{}", providers_yaml()), &provider.url()).await;
    let r = p
        .client
        .post(
            &p.url("/openai/v1/chat/completions"),
            &[("x-profile-id", "p-label")],
            r#"{"model":"gpt-made-up-by-a-client","messages":[]}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    settled_or_fail(&p.handle).await;
    let m = p.metrics().await;
    assert!(!m.contains("gpt-made-up-by-a-client"), "{m}");
    assert!(m.contains(r#"spendgate_requests_total{model="other",provider="openai",status="200"} 1"#), "{m}");
    p.handle.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrades_are_refused_clearly() {
    let provider = Provider::start().await;
    let p = start_proxy(&format!("{YAML}{}", providers_yaml()), &provider.url()).await;
    let r = p
        .client
        .request(
            Method::GET,
            &p.url("/openai/v1/realtime?model=gpt-realtime"),
            &[
                ("x-profile-id", "p-ws"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["type"], "endpoint_not_metered");
    assert_eq!(provider.calls(), 0);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn bodies_past_the_buffering_budget_get_overloaded() {
    let provider = Provider::start().await;
    let p = start_proxy(
        &format!("{YAML}server:\n  max_buffered_bytes: 1000\n{}", providers_yaml()).replace("server:\n  shutdown_grace: 1\n", ""),
        &provider.url(),
    )
    .await;
    let big = format!(r#"{{"text":"{}"}}"#, "a".repeat(2000));
    let r = p
        .client
        .post(&p.url("/elevenlabs/v1/text-to-speech/voice1"), &[("x-profile-id", "p-big")], big)
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["type"], "overloaded");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(provider.calls(), 0);
    // The budget is given back: a small body passes.
    assert_eq!(
        p.client
            .post(&p.url("/elevenlabs/v1/text-to-speech/voice1"), &[("x-profile-id", "p-big")], TTS_BODY)
            .await
            .status,
        200
    );
    assert_eq!(p.handle.app.body_budget.used(), 0);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn an_injected_key_removes_billing_routing_headers() {
    // Exercised through the headers the upstream sees.
    let mock = Mock::start(|_| Reply::json(r#"{"object":"list","data":[]}"#)).await;
    crate::common::env::init();
    assert_eq!(crate::common::env::ESCAPE_OPENAI_KEY.1, "sk-real");
    let yaml = providers_yaml().replace(
        "openai, prefix: /openai, upstream: \"{upstream}\"",
        "openai, prefix: /openai, upstream: \"{upstream}\", api_key_env: SPENDGATE_TEST_ESCAPE_OPENAI_KEY",
    );
    let p = start_proxy(&yaml, &mock.url()).await;
    let r = p
        .client
        .get(
            &p.url("/openai/v1/models"),
            &[
                ("x-profile-id", "p-k"),
                ("openai-organization", "org-client"),
                ("openai-project", "proj-client"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = mock.last();
    assert!(!seen.headers.contains_key("openai-organization"));
    assert!(!seen.headers.contains_key("openai-project"));
    assert_eq!(seen.headers["authorization"], "Bearer sk-real");
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_background_response_is_charged_its_maximum_until_its_usage_is_fetched() {
    let provider = Provider::start().await;
    let p = start_proxy(&format!("{YAML}{}", providers_yaml()), &provider.url()).await;
    let body = r#"{"model":"gpt-5","input":"Summarize the tides.","background":true,"max_output_tokens":100000}"#;
    let r = p.client.post(&p.url("/openai/v1/responses"), &[("x-profile-id", "p-bg")], body).await;
    assert_eq!(r.status, 200);
    // The request's own maximum, not capped by reserve.max_output_tokens (4096): input
    // "gpt-5" + "Summarize the tides." = 25 bytes = 7 tokens at $1.25/M, and 100,000 output
    // tokens at $10/M.
    let reserved = 7 * 1250 + 100_000 * 10_000;
    assert_eq!(monthly_cost(&p, "p-bg").await, reserved);
    assert!(reserved >= provider.billed());
    assert_eq!(p.handle.app.deferred.len(), 1);
    // Fetching the finished response through the proxy settles the call to what it used.
    let r = p.client.get(&p.url("/openai/v1/responses/resp_bg1"), &[("x-profile-id", "p-bg")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(monthly_cost(&p, "p-bg").await, provider.billed());
    assert_eq!(provider.billed(), PROMPT * GPT_5.0 + BACKGROUND_OUTPUT * GPT_5.1);
    assert!(p.handle.app.deferred.is_empty());
    // A second fetch changes nothing.
    p.client.get(&p.url("/openai/v1/responses/resp_bg1"), &[("x-profile-id", "p-bg")]).await;
    assert_eq!(monthly_cost(&p, "p-bg").await, provider.billed());
    p.handle.shutdown().await;
}

/// A multipart upload, as the SDKs send it.
fn multipart(fields: &[(&str, &str)], file: &[u8]) -> (String, String) {
    let boundary = "sgboundary7MA4YWxk";
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"));
    }
    body.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"tide.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n{}\r\n--{boundary}--\r\n",
        String::from_utf8_lossy(file)
    ));
    (body, format!("multipart/form-data; boundary={boundary}"))
}

#[tokio::test]
async fn newly_metered_endpoints_record_at_least_the_bill() {
    let (form, form_type) = multipart(&[("model", "whisper-1"), ("response_format", "json")], &[b'a'; 64 * 1024]);
    let cases: Vec<(&str, Attempt)> = vec![
        (
            "openai transcription",
            Attempt::post("/openai/v1/audio/transcriptions", form).header("content-type", &form_type),
        ),
        (
            "openai video",
            Attempt::post("/openai/v1/videos", r#"{"model":"sora-2","prompt":"waves","seconds":"8"}"#),
        ),
        (
            "openai responses with web search",
            Attempt::post("/openai/v1/responses", r#"{"model":"gpt-5","input":"tides","tools":[{"type":"web_search"}]}"#),
        ),
        (
            "anthropic fast mode",
            Attempt::post(
                "/anthropic/v1/messages",
                r#"{"model":"claude-opus-4-6","max_tokens":100,"speed":"fast","messages":[{"role":"user","content":"tides"}]}"#,
            ),
        ),
        (
            "claude on vertex",
            Attempt::post(
                "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-haiku-4-5:rawPredict",
                r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":100,"messages":[{"role":"user","content":"tides"}]}"#,
            ),
        ),
        (
            "gemini grounding",
            Attempt::post(
                "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
                r#"{"contents":[{"role":"user","parts":[{"text":"tides"}]}],"tools":[{"google_search":{}}]}"#,
            ),
        ),
        (
            "elevenlabs sound",
            Attempt::post("/elevenlabs/v1/sound-generation", r#"{"text":"waves","duration_seconds":5}"#),
        ),
    ];
    for (name, attempt) in cases {
        let o = run(attempt, "").await;
        check(name, &o);
        assert_eq!(o.status, Some(200), "{name}: {o:?}");
        assert!(o.provider_calls == 1 && o.billed > 0, "{name}: {o:?}");
    }
}

#[tokio::test]
async fn endpoints_billed_out_of_sight_are_refused() {
    let refused: &[(Method, &str, &str)] = &[
        (
            Method::POST,
            "/openai/v1/realtime/client_secrets",
            r#"{"session":{"type":"realtime","model":"gpt-realtime"}}"#,
        ),
        (Method::POST, "/openai/v1/realtime/sessions", r#"{"model":"gpt-realtime"}"#),
        (Method::POST, "/openai/v1/realtime/calls", "v=0"),
        (
            Method::POST,
            "/openai/v1/batches",
            r#"{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}"#,
        ),
        (
            Method::POST,
            "/openai/v1/fine_tuning/jobs",
            r#"{"model":"gpt-4o-mini","training_file":"file-1"}"#,
        ),
        (Method::POST, "/openai/v1/videos/video_1/remix", r#"{"prompt":"more waves"}"#),
        (
            Method::POST,
            "/gemini/v1beta/models/gemini-2.5-flash:batchGenerateContent",
            r#"{"batch":{"input_config":{}}}"#,
        ),
        (Method::POST, "/gemini/v1alpha/auth_tokens", r#"{"uses":1}"#),
        (
            Method::POST,
            "/gemini/v1beta/cachedContents",
            r#"{"model":"models/gemini-2.5-flash","contents":[]}"#,
        ),
        (Method::POST, "/elevenlabs/v1/single-use-token/tts_websocket", ""),
        (
            Method::POST,
            "/elevenlabs/v1/dubbing",
            r#"{"source_url":"https://example.com/a.mp4","target_lang":"fr"}"#,
        ),
        (Method::GET, "/elevenlabs/v1/convai/conversation/get-signed-url?agent_id=a1", ""),
        (Method::POST, "/anthropic/v1/messages/batches", r#"{"requests":[]}"#),
        (Method::POST, "/anthropic/v1/new/paid/endpoint", "{}"),
        (Method::PUT, "/openai/v1/chat/completions", "{}"),
    ];
    for (method, path, body) in refused {
        let mut a = Attempt::post(path, *body);
        a.method = method.clone();
        let o = run(a, "").await;
        check(path, &o);
        assert_eq!(o.status, Some(403), "{method} {path}: {o:?}");
        assert_eq!(o.error_type.as_deref(), Some("endpoint_not_metered"), "{method} {path}");
    }
}
