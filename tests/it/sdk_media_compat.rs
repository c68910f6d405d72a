//! The official `openai` and `anthropic` Python SDKs through the proxy for the endpoints
//! beyond chat: OpenAI images and speech to text (a multipart upload), the OpenAI SDK against
//! Gemini's OpenAI-compatible API (priced at Gemini's rates), and batch submissions, which the
//! proxy refuses before the upstream sees them. Costs are checked exactly, against constants
//! worked out by hand from `src/pricing/builtin.yaml`.

use std::time::Duration;

use crate::common::python::run_ok;
use crate::common::*;
use serde_json::{json, Value};

use crate::common::env::{SDK_MEDIA_ANTHROPIC_KEY as ANTHROPIC_KEY, SDK_MEDIA_OPENAI_KEY as OPENAI_KEY};

/// OpenAI and Anthropic with their keys injected; Gemini passes the client's key through.
fn yaml() -> String {
    format!(
        r#"
providers:
  openai: {{kind: openai, prefix: /openai, upstream: "{{upstream}}", api_key_env: {}}}
  anthropic: {{kind: anthropic, prefix: /anthropic, upstream: "{{upstream}}", api_key_env: {}}}
  gemini: {{kind: gemini, prefix: /gemini, upstream: "{{upstream}}"}}
limits:
  default_profile:
    - {{metric: cost_usd, window: monthly, max: 1000}}
"#,
        OPENAI_KEY.0, ANTHROPIC_KEY.0
    )
}

/// The audio the script uploads (`bytes(range(256)) * 100`).
fn audio() -> Vec<u8> {
    (0..=255u8).cycle().take(256 * 100).collect()
}

fn header<'a>(s: &'a Seen, name: &str) -> Option<&'a str> {
    s.headers.get(name).and_then(|v| v.to_str().ok())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The text of a form field, found in the raw multipart body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let head = format!("name=\"{name}\"");
    let at = body.windows(head.len()).position(|w| w == head.as_bytes())?;
    let rest = &body[at + head.len()..];
    let start = rest.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)?;
    let rest = &rest[start..];
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

fn sse(events: &[Value]) -> Vec<u8> {
    let mut out = String::new();
    for e in events {
        out.push_str(&format!("data: {e}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

fn chunk(delta: Value, finish: Option<&str>, usage: Option<Value>) -> Value {
    let mut c = json!({
        "id": "gemini-compat-1",
        "object": "chat.completion.chunk",
        "created": 1795337760,
        "model": "gemini-2.5-flash",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    if let Some(u) = usage {
        c["usage"] = u;
    }
    c
}

/// The upstream: OpenAI images and transcriptions, Gemini's OpenAI-compatible chat. Anything
/// else (a batch) is answered 200, so that a call that got through would not fail the SDK.
fn respond(s: &Seen) -> Reply {
    let json: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
    match s.path.as_str() {
        "/v1/images/edits" => Reply::json(
            json!({
                "created": 1795337760,
                "data": [{"b64_json": "ZWRpdA=="}],
                "usage": {
                    "input_tokens": 1200,
                    "input_tokens_details": {"text_tokens": 30, "image_tokens": 1170},
                    "output_tokens": 4160,
                    "output_tokens_details": {"image_tokens": 4160, "text_tokens": 0},
                    "total_tokens": 5360
                }
            })
            .to_string(),
        ),
        "/v1/images/generations" => match json["model"].as_str() {
            Some("dall-e-2") => {
                let n = json["n"].as_u64().unwrap_or(1);
                let data: Vec<Value> = (0..n).map(|i| json!({"url": format!("https://images.test/tide-{i}.png")})).collect();
                Reply::json(json!({"created": 1795337760, "data": data}).to_string())
            }
            _ => Reply::json(
                json!({
                    "created": 1795337760,
                    "data": [{"b64_json": "aW1hZ2U="}],
                    "output_format": "png",
                    "quality": "medium",
                    "size": "1024x1024",
                    "usage": {
                        "input_tokens": 50,
                        "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                        "output_tokens": 4160,
                        "output_tokens_details": {"image_tokens": 4160, "text_tokens": 0},
                        "total_tokens": 4210
                    }
                })
                .to_string(),
            ),
        },
        "/v1/audio/transcriptions" if form_field(&s.body, "stream").as_deref() == Some("true") => {
            let usage = json!({"type": "tokens", "input_tokens": 300, "input_token_details": {"text_tokens": 20, "audio_tokens": 280},
                               "output_tokens": 60, "total_tokens": 360});
            let mut body = String::new();
            for e in [
                json!({"type": "transcript.text.delta", "delta": "Low tide"}),
                json!({"type": "transcript.text.delta", "delta": " is at 06:40."}),
                json!({"type": "transcript.text.done", "text": "Low tide is at 06:40.", "usage": usage}),
            ] {
                body.push_str(&format!("data: {e}\n\n"));
            }
            Reply::new(200)
                .header("content-type", "text/event-stream")
                .pieces(body.as_bytes(), 50, Duration::from_millis(1))
        }
        "/v1/audio/transcriptions" => {
            let text = "Low tide is at 06:40.";
            let model = form_field(&s.body, "model");
            let format = form_field(&s.body, "response_format");
            let answer = match (model.as_deref(), format.as_deref()) {
                (Some("whisper-1"), Some("verbose_json")) => json!({
                    "task": "transcribe",
                    "language": "english",
                    "duration": 42.0,
                    "text": text,
                    "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 42.0, "text": text, "tokens": [50364], "temperature": 0.0,
                                  "avg_logprob": -0.2, "compression_ratio": 0.9, "no_speech_prob": 0.01}],
                    "usage": {"type": "duration", "seconds": 42}
                }),
                (Some("whisper-1"), _) => json!({"text": text, "usage": {"type": "duration", "seconds": 7.5}}),
                _ => json!({
                    "text": text,
                    "usage": {"type": "tokens", "input_tokens": 150, "input_token_details": {"text_tokens": 20, "audio_tokens": 130},
                              "output_tokens": 40, "total_tokens": 190}
                }),
            };
            Reply::json(answer.to_string())
        }
        "/v1beta/openai/chat/completions" if json["stream"] == json!(true) => {
            // Gemini reports usage on the last chunk, beside its choice.
            let usage = json!({"prompt_tokens": 31, "completion_tokens": 340, "total_tokens": 371});
            let body = sse(&[
                chunk(json!({"role": "assistant", "content": "Low tide"}), None, None),
                chunk(json!({"content": " is at 06:40."}), None, None),
                chunk(json!({}), Some("stop"), Some(usage)),
            ]);
            Reply::new(200)
                .header("content-type", "text/event-stream")
                .pieces(&body, 64, Duration::from_millis(1))
        }
        "/v1beta/openai/chat/completions" => Reply::json(
            json!({
                "id": "gemini-compat-0",
                "object": "chat.completion",
                "created": 1795337760,
                "model": "gemini-2.5-flash",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Low tide is at 06:40."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1200, "completion_tokens": 800, "total_tokens": 2000}
            })
            .to_string(),
        ),
        _ => Reply::json(r#"{"id": "batch_1", "object": "batch", "status": "validating"}"#),
    }
}

async fn start() -> (Mock, Proxy) {
    crate::common::env::init();
    let mock = Mock::start(respond).await;
    let p = start_proxy(&yaml(), &mock.url()).await;
    (mock, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_images_generate_is_priced() {
    let (mock, p) = start().await;
    run_ok("openai_media_sdk.py", vec![("OPENAI_BASE_URL", p.url("/openai/v1")), ("CASE", "images".into())]).await;
    // dall-e-2 at 1024x1024 is $0.020 a picture: per_image 0.016 plus the 250 permille size
    // premium (0.016 * 1.25 = 0.020); two pictures: 2 * 0.020 = 0.040.
    assert_eq!(monthly_cost(&p, "p-img-dalle2").await, usd("0.040"));
    // gpt-image-1: input 50 tokens at $10/M = 0.0005, image output 4160 tokens at $40/M =
    // 0.1664; 0.0005 + 0.1664 = 0.1669.
    assert_eq!(monthly_cost(&p, "p-img-gpt").await, usd("0.1669"));
    // The edit: input 1200 tokens (text and image at one rate) at $10/M = 0.012, image output
    // 4160 at $40/M = 0.1664; 0.012 + 0.1664 = 0.1784.
    assert_eq!(monthly_cost(&p, "p-img-edit").await, usd("0.1784"));
    let seen = mock.seen.lock().clone();
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/v1/images/generations", "/v1/images/generations", "/v1/images/edits"]);
    for s in &seen {
        assert_eq!(header(s, "authorization"), Some(format!("Bearer {}", OPENAI_KEY.1).as_str()));
        assert!(!s.headers.contains_key("x-profile-id"));
    }
    let first: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!((first["model"].as_str(), first["n"].as_u64()), (Some("dall-e-2"), Some(2)));
    let edit = &seen[2];
    assert!(header(edit, "content-type").is_some_and(|ct| ct.starts_with("multipart/form-data")));
    assert!(contains(&edit.body, b"\x89PNG-first") && contains(&edit.body, b"\x89PNG-second"));
    assert_eq!(form_field(&edit.body, "model").as_deref(), Some("gpt-image-1"));
    // The SDK sends a list of pictures as `image[]` parts.
    assert_eq!(edit.body.windows(14).filter(|w| w == b"name=\"image[]\"").count(), 2);
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_audio_transcriptions_multipart_is_priced() {
    let (mock, p) = start().await;
    run_ok(
        "openai_media_sdk.py",
        vec![("OPENAI_BASE_URL", p.url("/openai/v1")), ("CASE", "transcriptions".into())],
    )
    .await;
    // whisper-1 is $0.36 an hour ($0.006 a minute): 42 s = 42 / 3600 * 0.36 = 0.0042.
    assert_eq!(monthly_cost(&p, "p-stt-verbose").await, usd("0.0042"));
    // 7.5 s = 7.5 / 3600 * 0.36 = 0.00075.
    assert_eq!(monthly_cost(&p, "p-stt-json").await, usd("0.00075"));
    // gpt-4o-mini-transcribe: 150 input tokens of which 130 audio, 40 output. Text input 20 at
    // $1.25/M = 0.000025, audio input 130 at $3/M = 0.00039, output 40 at $5/M = 0.0002;
    // 0.000025 + 0.00039 + 0.0002 = 0.000615.
    assert_eq!(monthly_cost(&p, "p-stt-tokens").await, usd("0.000615"));
    // Streamed, from transcript.text.done: text 20 at $1.25/M = 0.000025, audio 280 at $3/M =
    // 0.00084, output 60 at $5/M = 0.0003; 0.000025 + 0.00084 + 0.0003 = 0.001165.
    assert_eq!(monthly_cost(&p, "p-stt-stream").await, usd("0.001165"));
    let seen = mock.seen.lock().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let audio = audio();
    for s in &seen {
        assert_eq!(s.path, "/v1/audio/transcriptions");
        assert!(
            header(s, "content-type").is_some_and(|ct| ct.starts_with("multipart/form-data; boundary=")),
            "{:?}",
            s.headers
        );
        assert_eq!(header(s, "authorization"), Some(format!("Bearer {}", OPENAI_KEY.1).as_str()));
        // The upload reached the upstream whole.
        assert!(contains(&s.body, &audio), "the audio is in the forwarded form");
    }
    let models: Vec<_> = seen.iter().map(|s| form_field(&s.body, "model")).collect();
    assert_eq!(
        models,
        [
            Some("whisper-1".into()),
            Some("whisper-1".into()),
            Some("gpt-4o-mini-transcribe".into()),
            Some("gpt-4o-mini-transcribe".into())
        ]
    );
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_against_gemini_openai_compat_is_priced_at_gemini_rates() {
    let (mock, p) = start().await;
    run_ok("gemini_openai_compat_sdk.py", vec![("BASE_URL", p.url("/gemini/v1beta/openai/"))]).await;
    // gemini-2.5-flash (Gemini table): input $0.30/M, output $2.50/M.
    // Plain: 1200 * 0.30/M = 0.00036, 800 * 2.50/M = 0.002; 0.00036 + 0.002 = 0.00236.
    assert_eq!(monthly_cost(&p, "p-compat").await, usd("0.00236"));
    // Streamed: 31 * 0.30/M = 0.0000093, 340 * 2.50/M = 0.00085; sum 0.0008593.
    assert_eq!(monthly_cost(&p, "p-compat-stream").await, usd("0.0008593"));
    let seen = mock.seen.lock().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.path, "/v1beta/openai/chat/completions");
        assert_eq!(header(s, "authorization"), Some("Bearer gemini-client-key"));
    }
    // The streamed request was rewritten to ask for usage.
    let streamed: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(streamed["stream_options"]["include_usage"], json!(true));
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_message_batches_are_refused() {
    let (mock, p) = start().await;
    run_ok("anthropic_batches_sdk.py", vec![("ANTHROPIC_BASE_URL", p.url("/anthropic"))]).await;
    assert_eq!(mock.count(), 0, "the upstream never saw the batch");
    assert_eq!(monthly_cost(&p, "p-batch").await, 0);
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_batches_are_refused() {
    let (mock, p) = start().await;
    run_ok(
        "openai_media_sdk.py",
        vec![("OPENAI_BASE_URL", p.url("/openai/v1")), ("CASE", "batches".into())],
    )
    .await;
    assert_eq!(mock.count(), 0, "the upstream never saw the batch");
    assert_eq!(monthly_cost(&p, "p-batch").await, 0);
    p.handle.shutdown().await;
}
