//! Attribution tags (`tenant.tag_header`): read, validated and stripped; counted per tag in
//! the history and the usage API (bounded per tenant); `match: {tag}` limits; the optional
//! metric label; and the official SDKs sending them through their default headers.

use crate::common::ops::*;
use crate::common::*;

fn limits() -> &'static str {
    "limits:\n  default_profile:\n    - {metric: requests, window: daily, max: 1, match: {tag: \"tool=script-writer\"}}\n"
}

async fn tagged(p: &Proxy, path: &str, profile: &str, tag: &str) -> Got {
    let body = if path.starts_with("/elevenlabs") {
        fixture("elevenlabs/tts_request.json")
    } else {
        br#"{"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}"#.to_vec()
    };
    let h = [("x-profile-id", profile), ("content-type", "application/json"), ("x-spendgate-tag", tag)];
    p.client.post(&p.url(path), &h, body).await
}

#[tokio::test]
async fn tags_attribute_limit_and_are_never_forwarded() {
    let mock = Mock::start(fixture_upstream).await;
    let yaml = format!("{}store:\n  max_tags: 3\nmetrics:\n  tag_labels: true\n{}", providers_yaml(), limits());
    let p = start_proxy(&yaml, &mock.url()).await;

    assert_eq!(tagged(&p, GEMINI_FLASH, "p-1", "tool=script-writer,team=video").await.status, 200);
    assert_eq!(tagged(&p, GEMINI_FLASH, "p-1", "tool=thumbnails").await.status, 200);
    // The tag's own budget is spent: only its calls are refused.
    let r = tagged(&p, GEMINI_FLASH, "p-1", "team=video, tool=script-writer").await;
    assert_eq!(r.status, 402);
    assert_eq!(r.json()["error"]["limit"]["match"], "tag tool=script-writer");
    assert_eq!(tagged(&p, ELEVENLABS_TTS, "p-1", "tool=thumbnails").await.status, 200);
    assert_eq!(
        send(&p, GEMINI_FLASH, "p-1", None).await.status,
        200,
        "untagged calls are not in the tag's budget"
    );
    assert_eq!(
        tagged(&p, GEMINI_FLASH, "p-2", "tool=script-writer").await.status,
        200,
        "another profile has its own"
    );
    // Past store.max_tags (3) distinct tags, a tenant's new tags are `other`.
    assert_eq!(tagged(&p, GEMINI_FLASH, "p-1", "tool=captions").await.status, 200);
    // Malformed tags are refused before anything is reserved.
    for bad in ["tool=a b", "a,b,c,d,e", "x{y}"] {
        let r = tagged(&p, GEMINI_FLASH, "p-1", bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"]["type"], "invalid_tag");
    }
    assert_eq!(mock.count(), 6);
    assert!(mock.seen.lock().iter().all(|s| !s.headers.contains_key("x-spendgate-tag")));
    settled_or_fail(&p.handle).await;

    let u = admin_get(&p, "/v1/profiles/p-1/usage?range=7d", None).await.json();
    let by_tag = &u["by_tag"];
    assert_eq!(by_tag["tool=script-writer"]["requests"], 1, "{u}");
    assert_eq!(by_tag["team=video"]["requests"], 1);
    assert_eq!(by_tag["tool=thumbnails"]["requests"], 2);
    assert_eq!(by_tag["other"]["requests"], 1);
    assert!(by_tag.get("tool=captions").is_none());
    assert_eq!(
        by_tag["tool=thumbnails"]["cost_usd"].as_f64().unwrap(),
        (GEMINI_FLASH_NANOS + ELEVENLABS_TTS_NANOS) as f64 / 1e9
    );
    assert_eq!(u["totals"]["requests"], 5, "tags do not change the totals");
    let recent = u["recent"].as_array().unwrap();
    assert_eq!(recent.last().unwrap()["tags"], serde_json::json!(["tool=script-writer", "team=video"]));

    let m = p.metrics().await;
    assert_eq!(sample(&m, "spendgate_tag_requests_total{tag=\"tool=thumbnails\"} "), Some(2.0), "{m}");
    assert_eq!(sample(&m, "spendgate_tag_requests_total{tag=\"tool=script-writer\"} "), Some(2.0));
}

#[tokio::test]
async fn without_tag_labels_metrics_carry_no_tag() {
    let mock = Mock::start(fixture_upstream).await;
    let p = start_proxy(&format!("{}{}", providers_yaml(), limits()), &mock.url()).await;
    assert_eq!(tagged(&p, GEMINI_FLASH, "p-1", "tool=x").await.status, 200);
    settled_or_fail(&p.handle).await;
    assert!(!p.metrics().await.contains("tool=x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_send_tags_through_their_default_headers() {
    let mock = Mock::start(|seen| {
        let p = seen.path.as_str();
        if p.ends_with("/chat/completions") {
            Reply::json(fixture("openai/chat_completions.json"))
        } else if p.ends_with("/messages") {
            Reply::json(fixture("anthropic/messages.json"))
        } else {
            fixture_upstream(seen)
        }
    })
    .await;
    let p = start_proxy(&format!("{}{}", providers_yaml(), limits()), &mock.url()).await;
    let out = python::run_ok("tags_sdk.py", vec![("BASE", p.url(""))]).await;
    assert!(out.contains("sdk: ok"), "{out}");
    assert_eq!(mock.count(), 12, "three calls of four per SDK reached the upstream");
    assert!(mock.seen.lock().iter().all(|s| !s.headers.contains_key("x-spendgate-tag")));
    settled_or_fail(&p.handle).await;
    for sdk in ["openai", "anthropic", "genai", "elevenlabs"] {
        let u = admin_get(&p, &format!("/v1/profiles/p-tag-{sdk}/usage?range=7d"), None).await.json();
        assert_eq!(u["by_tag"]["tool=script-writer"]["requests"], 1, "{sdk}: {u}");
        assert_eq!(u["by_tag"]["team=video"]["requests"], 1, "{sdk}");
        assert_eq!(u["by_tag"]["tool=thumbnails"]["requests"], 2, "{sdk}");
    }
    p.handle.shutdown().await;
}
