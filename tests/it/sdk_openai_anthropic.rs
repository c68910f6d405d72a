//! The official `openai` and `anthropic` Python SDKs through the proxy against the mock,
//! streamed and not, with the real key injected; after each run, what every profile was
//! charged is checked exactly.

use std::time::Duration;

use crate::common::*;
use http::HeaderMap;

use crate::common::env::{SDK_ANTHROPIC_KEY as ANTHROPIC_KEY, SDK_OPENAI_KEY as OPENAI_KEY};

fn yaml() -> String {
    format!(
        r#"
providers:
  openai: {{kind: openai, prefix: /openai, upstream: "{{upstream}}", api_key_env: {}}}
  anthropic: {{kind: anthropic, prefix: /anthropic, upstream: "{{upstream}}", api_key_env: {}}}
limits:
  default_profile:
    - {{metric: cost_usd, window: monthly, max: 1000}}
  profiles:
    p-sdk-broke:
      - {{metric: requests, window: daily, max: 1}}
"#,
        OPENAI_KEY.0, ANTHROPIC_KEY.0
    )
}

/// Only the injected key is accepted: `Authorization: Bearer` for OpenAI, `x-api-key` (and
/// no `Authorization`, which the anthropic SDK uses for its own key) for Anthropic.
fn credentials_ok(h: &HeaderMap, path: &str) -> bool {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    if path.starts_with("/v1/messages") {
        get("x-api-key").as_deref() == Some(ANTHROPIC_KEY.1) && get("authorization").is_none()
    } else {
        get("authorization") == Some(format!("Bearer {}", OPENAI_KEY.1)) && get("x-api-key").is_none()
    }
}

/// Answers with the fixture the request names in `X-Fixture`. A chat stream gets the
/// upstream's answer to what the request (as the proxy sent it) asked for: with usage only
/// when `stream_options.include_usage` is set.
fn respond(s: &Seen) -> Reply {
    if !credentials_ok(&s.headers, &s.path) {
        return Reply::new(401)
            .header("content-type", "application/json")
            .body(r#"{"error": {"message": "wrong key", "type": "invalid_request_error"}}"#);
    }
    let Some(name) = s.headers.get("x-fixture").and_then(|v| v.to_str().ok()) else {
        return Reply::new(400).body("no X-Fixture header");
    };
    let json: serde_json::Value = serde_json::from_slice(&s.body).unwrap_or_default();
    let name = if name.starts_with("openai/chat_completions_stream") {
        if json.pointer("/stream_options/include_usage") == Some(&serde_json::Value::Bool(true)) {
            "openai/chat_completions_stream_include_usage.sse"
        } else {
            "openai/chat_completions_stream_no_usage.sse"
        }
    } else {
        name
    };
    let content_type = if name.ends_with(".sse") { "text/event-stream" } else { "application/json" };
    Reply::new(200)
        .header("content-type", content_type)
        .pieces(&fixture(name), 128, Duration::from_millis(1))
}

async fn run_sdk(script: &'static str, env_var: &'static str, mount: &str, expected: &[(&str, &str)]) {
    crate::common::env::init();
    let mock = Mock::start(respond).await;
    let p = start_proxy(&yaml(), &mock.url()).await;
    let out = python::run_ok(script, vec![(env_var, p.url(mount))]).await;
    assert!(out.contains("sdk: ok"), "{out}");
    for (profile, cost) in expected {
        assert_eq!(monthly_cost(&p, profile).await, usd(cost), "{script}: {profile}");
    }
    p.handle.shutdown().await;
}

#[tokio::test]
async fn openai_sdk_plain_and_streamed() {
    run_sdk(
        "openai_sdk.py",
        "OPENAI_BASE_URL",
        "/openai/v1",
        &[
            ("p-sdk-chat", "0.0023695"),
            ("p-sdk-stream-usage", "0.00001095"),
            // The client did not ask for usage; the proxy did, and priced it exactly.
            ("p-sdk-stream", "0.00001095"),
            ("p-sdk-resp", "0.01195375"),
            ("p-sdk-resp-stream", "0.000308"),
            ("p-sdk-emb", "0.00000016"),
            // One admitted call; the refused ones cost nothing.
            ("p-sdk-broke", "0.0023695"),
        ],
    )
    .await;
}

#[tokio::test]
async fn anthropic_sdk_plain_and_streamed() {
    run_sdk(
        "anthropic_sdk.py",
        "ANTHROPIC_BASE_URL",
        "/anthropic",
        &[
            ("p-sdk-msg", "0.021522"),
            ("p-sdk-msg-stream", "0.000907"),
            ("p-sdk-msg-tools", "0.0247444"),
            ("p-sdk-count", "0"),
            ("p-sdk-broke", "0.021522"),
        ],
    )
    .await;
}
