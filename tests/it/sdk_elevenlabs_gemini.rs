//! The official `elevenlabs` and `google-genai` Python SDKs through the proxy against the
//! mock, streamed and not, and a 402 surfacing as each SDK's error with the body readable.

use crate::common::python::run_ok;
use crate::common::*;

fn limits() -> &'static str {
    "limits:\n  profiles:\n    p-broke:\n      - {metric: requests, window: daily, max: 1}\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_sdk() {
    let mock = Mock::start(|seen| {
        let head = |f: &str| {
            let (s, h) = fixture_head(f);
            Reply::new(s.as_u16()).headers(h)
        };
        let audio = b"\xff\xf3".repeat(1000);
        if seen.path.ends_with("/stream/with-timestamps") {
            head("elevenlabs/tts_stream_with_timestamps_headers.txt").pieces(
                &fixture("elevenlabs/tts_stream_with_timestamps.ndjson"),
                97,
                std::time::Duration::ZERO,
            )
        } else if seen.path.ends_with("/with-timestamps") {
            head("elevenlabs/tts_with_timestamps_headers.txt").body(fixture("elevenlabs/tts_with_timestamps.json"))
        } else if seen.path.ends_with("/stream") {
            head("elevenlabs/tts_stream_headers.txt").pieces(&audio, 300, std::time::Duration::ZERO)
        } else {
            head("elevenlabs/tts_headers.txt").body(audio)
        }
    })
    .await;
    let p = start_proxy(&format!("{}{}", providers_yaml(), limits()), &mock.url()).await;
    run_ok(
        "elevenlabs_sdk.py",
        vec![("BASE_URL", p.url("/elevenlabs")), ("FIXTURES", fixture_path("").display().to_string())],
    )
    .await;
    // 0.0111 + 0.0046 + 0.0014 + 0.0020
    assert_eq!(monthly_cost(&p, "p-sdk").await, usd("0.0191"));
    assert_eq!(monthly_cost(&p, "p-broke").await, usd("0.0111"));
    for s in mock.seen.lock().clone().iter() {
        assert!(!s.headers.contains_key("x-profile-id"));
        assert_eq!(s.headers["xi-api-key"], "sk-test");
    }
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_genai_sdk() {
    let mock = Mock::start(|seen| {
        if seen.path.ends_with(":streamGenerateContent") {
            assert_eq!(seen.query.as_deref(), Some("alt=sse"));
            Reply::new(200)
                .header("content-type", "text/event-stream")
                .pieces(&fixture("gemini/stream_generate_content.sse"), 64, std::time::Duration::ZERO)
        } else if seen.path.ends_with(":countTokens") {
            Reply::json(fixture("gemini/count_tokens.json"))
        } else {
            Reply::json(fixture("gemini/generate_content.json"))
        }
    })
    .await;
    let p = start_proxy(&format!("{}{}", providers_yaml(), limits()), &mock.url()).await;
    run_ok("genai_sdk.py", vec![("BASE_URL", p.url("/gemini"))]).await;
    assert_eq!(monthly_cost(&p, "p-sdk").await, usd("0.0020097") + usd("0.0008277"));
    assert_eq!(monthly_cost(&p, "p-broke").await, usd("0.0020097"));
    let seen = mock.seen.lock().clone();
    assert!(
        seen.iter().all(|s| s.path.starts_with("/v1/models/")),
        "the SDK's default API version (v1) is routed"
    );
    assert!(seen.iter().all(|s| s.headers["x-goog-api-key"] == "test-key"));
    p.handle.shutdown().await;
}
