//! The data plane's behaviour: refusals, streaming without buffering, header hygiene,
//! compression, bad upstream bodies, tenant errors, upstream failures.

use std::time::Duration;

use crate::common::ops::{GEMINI_FLASH_NANOS, GEMINI_STREAM_NANOS};
use crate::common::*;
use http::Method;
use http_body_util::BodyExt;

const TTS: &str = "/elevenlabs/v1/text-to-speech/voice1";
const GEN: &str = "/gemini/v1beta/models/gemini-2.5-flash:generateContent";
const GEN_BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Write a haiku about tides."}]}],"generationConfig":{"maxOutputTokens":1024}}"#;

fn tts_reply() -> Reply {
    let (status, headers) = fixture_head("elevenlabs/tts_headers.txt");
    Reply::new(status.as_u16()).headers(headers).body(vec![0u8; 512])
}

fn yaml(limits: &str) -> String {
    format!("{}limits:\n{limits}", providers_yaml())
}

/// The estimate the proxy reserves for GEN_BODY on gemini-2.5-flash, in nano-dollars:
/// input from the request's text at 4 bytes per token, output the request's
/// maxOutputTokens (1024). The text is "user" (4 bytes) + "Write a haiku about tides."
/// (26 bytes) = 30 bytes -> ceil(30 / 4) = 8 tokens. At $0.30/M input and $2.50/M output,
/// in pico-dollars: 8 * 300_000 + 1024 * 2_500_000 = 2_562_400_000 pico = 2_562_400 nanos
/// (exact, no rounding).
const GEN_ESTIMATE_NANOS: i64 = 2_562_400;

#[tokio::test]
async fn refuses_with_402_and_the_documented_body_once_the_limit_is_used_up() {
    let mock = Mock::start(|_| tts_reply()).await;
    let p = start_proxy(
        &yaml("  profiles:\n    p-123:\n      - {metric: cost_usd, window: daily, max: 0.02}\n"),
        &mock.url(),
    )
    .await;
    let h = [("x-profile-id", "p-123"), ("content-type", "application/json")];
    let req = fixture("elevenlabs/tts_request.json");
    let first = p.client.post(&p.url(TTS), &h, req.clone()).await;
    assert_eq!(first.status, 200);
    let remaining = first.headers.get("x-spendgate-remaining").unwrap().to_str().unwrap();
    assert_eq!(remaining, "0.008900 usd", "$0.02 - $0.0111");
    assert!(first.headers.get("x-spendgate-reset").unwrap().to_str().unwrap().ends_with("T00:00:00Z"));
    assert_eq!(p.client.post(&p.url(TTS), &h, req.clone()).await.status, 200, "0.0111 < 0.02: still admitted");
    let refused = p.client.post(&p.url(TTS), &h, req).await;
    assert_eq!(refused.status, 402);
    assert_eq!(mock.count(), 2, "the refused request never reached the upstream");
    assert_eq!(refused.headers["content-type"], "application/json");
    let retry: i64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let b = refused.json();
    let msg = "Daily cost limit reached for profile p-123: used $0.0222 of $0.0200";
    assert_eq!(b["type"], "error");
    assert_eq!(b["error"]["type"], "quota_exceeded");
    assert_eq!(b["error"]["code"], "quota_exceeded");
    assert_eq!(b["error"]["status"], "QUOTA_EXCEEDED");
    assert_eq!(b["error"]["message"], msg);
    assert_eq!(b["error"]["tenant"], "p-123");
    assert_eq!(b["error"]["scope"], "profile");
    assert_eq!(b["error"]["limit"], serde_json::json!({"metric": "cost_usd", "window": "daily", "max": 0.02}));
    assert_eq!(b["error"]["current"], 0.0222);
    let resets = b["error"]["resets_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(resets).is_ok() && resets.ends_with("T00:00:00Z"),
        "{resets}"
    );
    assert_eq!(b["detail"]["error"], "quota_exceeded");
    assert_eq!(b["detail"]["status"], "quota_exceeded");
    assert_eq!(b["detail"]["message"], msg);
    assert_eq!(b["detail"]["current_costs"], 0.0222);
    assert_eq!(b["detail"]["monthly_quota"], 0.02);
    assert_eq!(monthly_cost(&p, "p-123").await, usd("0.0222"), "a refusal costs nothing");
    let m = p.metrics().await;
    assert!(
        m.contains(r#"spendgate_quota_rejections_total{metric="cost_usd",scope="profile",tenant="p-123",window="daily"} 1"#),
        "{m}"
    );
    p.handle.shutdown().await;
}

#[tokio::test]
async fn org_limits_refuse_every_profile_of_the_org() {
    let mock = Mock::start(|_| tts_reply()).await;
    let p = start_proxy(&yaml("  orgs:\n    acme:\n      - {metric: requests, window: daily, max: 2}\n"), &mock.url()).await;
    let req = fixture("elevenlabs/tts_request.json");
    for (profile, want) in [("a", 200), ("b", 200), ("c", 402)] {
        let got = p
            .client
            .post(&p.url(TTS), &[("x-profile-id", profile), ("x-org-id", "acme")], req.clone())
            .await;
        assert_eq!(got.status, want, "{profile}");
        if want == 402 {
            assert_eq!(got.json()["error"]["scope"], "org");
            assert_eq!(got.json()["error"]["tenant"], "acme");
        }
    }
    assert_eq!(
        p.client.post(&p.url(TTS), &[("x-profile-id", "c")], req.clone()).await.status,
        402,
        "without the org header the profile still counts for the org it was first seen with"
    );
    assert_eq!(
        p.client.post(&p.url(TTS), &[("x-profile-id", "d")], req).await.status,
        200,
        "a profile never seen with an org counts only for itself"
    );
    p.handle.shutdown().await;
}

#[tokio::test]
async fn first_chunk_reaches_the_client_while_the_upstream_is_still_sending() {
    let (mock, gate) = gated_stream("gemini/stream_generate_content.sse", 200).await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    let resp = p
        .client
        .send(
            Method::POST,
            &p.url("/gemini/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            &[("x-profile-id", "p-s")],
            GEN_BODY,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The mock holds every chunk after the first until the gate opens; the first chunk must
    // arrive before that, or the test hangs (bounded by the timeout below).
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first chunk arrives while the upstream is held")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap().len(), 200);
    gate.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(200 + rest.len(), fixture("gemini/stream_generate_content.sse").len());
    assert_eq!(monthly_cost(&p, "p-s").await, usd("0.0008277"));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn forwards_path_query_headers_and_body_but_not_tenant_or_hop_by_hop_headers() {
    let mock = Mock::start(|_| {
        tts_reply()
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .header("x-upstream-keep", "2")
    })
    .await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    let req = fixture("elevenlabs/tts_request.json");
    let got = p
        .client
        .post(
            &p.url("/elevenlabs/v1/text-to-speech/voice1?output_format=mp3_44100_128&enable_logging=false"),
            &[
                ("X-Profile-Id", "p-h"),
                ("X-Org-Id", "acme"),
                ("xi-api-key", "client-key"),
                ("x-app", "yes"),
                ("connection", "x-secret-hop"),
                ("x-secret-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ],
            req.clone(),
        )
        .await;
    assert_eq!(got.status, 200);
    let seen = mock.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/v1/text-to-speech/voice1");
    assert_eq!(seen.query.as_deref(), Some("output_format=mp3_44100_128&enable_logging=false"));
    assert_eq!(seen.body.to_vec(), req);
    for gone in ["x-profile-id", "x-org-id", "x-secret-hop", "keep-alive", "proxy-authorization"] {
        assert!(!seen.headers.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(seen.headers["xi-api-key"], "client-key");
    assert_eq!(seen.headers["x-app"], "yes");
    assert_eq!(seen.headers["host"], mock.addr.to_string());
    assert_eq!(got.headers["character-cost"], "111");
    assert_eq!(got.headers["x-upstream-keep"], "2");
    assert!(!got.headers.contains_key("x-upstream-hop"));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn gzip_responses_are_priced_and_passed_through_untouched() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&fixture("gemini/generate_content.json")).unwrap();
    let gz = enc.finish().unwrap();
    let gz2 = gz.clone();
    let mock = Mock::start(move |_| {
        Reply::new(200)
            .header("content-type", "application/json; charset=UTF-8")
            .header("content-encoding", "gzip")
            .header("vary", "Accept-Encoding")
            .pieces(&gz2, 50, Duration::ZERO)
    })
    .await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    let got = p
        .client
        .post(&p.url(GEN), &[("x-profile-id", "p-gz"), ("accept-encoding", "gzip, deflate")], GEN_BODY)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-encoding"], "gzip");
    assert_eq!(got.headers["vary"], "Accept-Encoding");
    assert_eq!(got.body.to_vec(), gz, "the client gets the compressed bytes as sent");
    assert_eq!(mock.last().headers["accept-encoding"], "gzip, deflate", "Accept-Encoding is not stripped");
    assert_eq!(monthly_cost(&p, "p-gz").await, usd("0.0020097"));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn malformed_upstream_body_passes_through_and_is_charged_the_estimate() {
    let mock = Mock::start(|_| {
        Reply::new(200)
            .header("content-type", "application/json")
            .body("<html>upstream proxy error</html>")
    })
    .await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    let got = p.client.post(&p.url(GEN), &[("x-profile-id", "p-bad")], GEN_BODY).await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"<html>upstream proxy error</html>");
    assert_eq!(monthly_cost(&p, "p-bad").await, GEN_ESTIMATE_NANOS);
    assert!(p
        .metrics()
        .await
        .contains(r#"spendgate_usage_estimated_total{provider="gemini",reason="malformed"} 1"#));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn cut_sse_stream_passes_through_and_is_charged_the_estimate() {
    let partial = b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Low ti".to_vec();
    let part2 = partial.clone();
    let mock = Mock::start(move |_| {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .body(part2.clone())
            .stall(Duration::from_millis(200))
            .cut()
    })
    .await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    let resp = p
        .client
        .send(
            Method::POST,
            &p.url("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            &[("x-profile-id", "p-cut")],
            GEN_BODY,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => received.extend_from_slice(f.data_ref().map(|b| &b[..]).unwrap_or_default()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert_eq!(received, partial, "what the upstream sent reaches the client");
    assert!(failed, "the client sees the stream fail, not end cleanly");
    assert_eq!(monthly_cost(&p, "p-cut").await, GEN_ESTIMATE_NANOS);
    let m = p.metrics().await;
    assert!(m.contains(r#"spendgate_usage_estimated_total{provider="gemini",reason="cut"} 1"#), "{m}");
    p.handle.shutdown().await;
}

#[tokio::test]
async fn huge_upstream_bodies_stream_through_with_bounded_extraction() {
    // 24 MiB of one JSON string before the usage: the scanner holds none of it.
    let mut body = b"{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"".to_vec();
    body.extend(std::iter::repeat_n(b'a', 24 << 20));
    body.extend_from_slice(b"\"}]}}], \"usageMetadata\": {\"promptTokenCount\": 24, \"candidatesTokenCount\": 801}}");
    let b2 = body.clone();
    let mock = Mock::start(move |_| Reply::json(b2.clone())).await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    let got = p.client.post(&p.url(GEN), &[("x-profile-id", "p-huge")], GEN_BODY).await;
    assert_eq!(got.body.len(), body.len());
    assert_eq!(monthly_cost(&p, "p-huge").await, usd("0.0020097"));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn tenant_errors() {
    let mock = Mock::start(|_| tts_reply()).await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    let req = fixture("elevenlabs/tts_request.json");
    let missing = p.client.post(&p.url(TTS), &[], req.clone()).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["error"]["type"], "tenant_missing");
    assert_eq!(missing.json()["detail"]["error"], "tenant_missing");
    let long = "x".repeat(129);
    for bad in [long.as_str(), "has space", "semi;colon", "{tag}"] {
        let got = p.client.post(&p.url(TTS), &[("x-profile-id", bad)], req.clone()).await;
        assert_eq!(got.status, 400, "{bad}");
        assert_eq!(got.json()["error"]["type"], "tenant_invalid", "{bad}");
    }
    let bad_org = p.client.post(&p.url(TTS), &[("x-profile-id", "ok"), ("x-org-id", "a/b")], req.clone()).await;
    assert_eq!(bad_org.json()["error"]["type"], "tenant_invalid");
    assert_eq!(mock.count(), 0);
    let unknown = p.client.post(&p.url("/nowhere/v1/x"), &[("x-profile-id", "ok")], req).await;
    assert_eq!(unknown.status, 404);
    p.handle.shutdown().await;

    let p = start_proxy(&format!("{}tenant:\n  missing: anonymous\n", providers_yaml()), &mock.url()).await;
    assert_eq!(p.client.post(&p.url(TTS), &[], fixture("elevenlabs/tts_request.json")).await.status, 200);
    assert_eq!(monthly_cost(&p, "anonymous").await, usd("0.0111"));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_answers_502_and_costs_nothing() {
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let p = start_proxy(&yaml(""), &format!("http://{dead}")).await;
    let got = p
        .client
        .post(&p.url(TTS), &[("x-profile-id", "p-502")], fixture("elevenlabs/tts_request.json"))
        .await;
    assert_eq!(got.status, 502);
    assert_eq!(got.json()["error"]["type"], "upstream_unavailable");
    assert_eq!(monthly_cost(&p, "p-502").await, 0);
    assert_eq!(
        counter(
            &p,
            spendgate::domain::Scope::Profile,
            "p-502",
            spendgate::domain::window::Window::Daily,
            "requests"
        )
        .await,
        1
    );
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_silent_upstream_hits_the_idle_timeout_and_is_charged_at_least_its_reservation() {
    let mock = Mock::start(|_| {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .body(&b"data: {\"usageMetadata\": {\"promptTokenCount\": 9, \"candidatesTokenCount\": 5, \"thoughtsTokenCount\": 301}}\r\n\r\n"[..])
            .stall(Duration::from_secs(30))
    })
    .await;
    let y = providers_yaml().replace(
        "gemini, prefix: /gemini, upstream: \"{upstream}\"",
        "gemini, prefix: /gemini, upstream: \"{upstream}\", timeouts: {read_idle: 0.5}",
    );
    let p = start_proxy(&y, &mock.url()).await;
    let resp = p
        .client
        .send(
            Method::POST,
            &p.url("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            &[("x-profile-id", "p-idle")],
            GEN_BODY,
        )
        .await;
    let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the idle timeout ends the body");
    assert!(collected.is_err(), "the stream ends with an error");
    // The provider may finish (and bill) the answer: the 9 input tokens seen (more than the 8
    // estimated) and the 1024 output tokens reserved (more than the 306 seen) at flash
    // prices = 0.0000027 + 0.00256.
    assert_eq!(monthly_cost(&p, "p-idle").await, usd("0.0025627"));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let mock = Mock::start(|_| tts_reply()).await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    for _ in 0..20 {
        assert_eq!(
            p.client
                .post(&p.url(TTS), &[("x-profile-id", "p-pool")], fixture("elevenlabs/tts_request.json"))
                .await
                .status,
            200
        );
    }
    assert_eq!(mock.count(), 20);
    assert_eq!(
        mock.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled connection serves sequential requests"
    );
    p.handle.shutdown().await;
}

#[tokio::test]
async fn unpriced_models_follow_the_policy_and_are_counted() {
    // The response names the model too (a priced `modelVersion` would win over the request's).
    let body = String::from_utf8(fixture("gemini/generate_content.json"))
        .unwrap()
        .replace("\"gemini-2.5-flash\"", "\"gemini-9-experimental\"");
    assert!(body.contains("gemini-9-experimental"));
    let mock = Mock::start(move |_| Reply::json(body.clone())).await;
    let path = "/gemini/v1beta/models/gemini-9-experimental:generateContent";
    // default: the provider's most expensive listed rates (Gemini: 3.1 Pro long-context,
    // $4.00/M input, $18.00/M output): 24 * 4.00/M + 801 * 18.00/M = 0.000096 + 0.014418.
    let p = start_proxy(&yaml(""), &mock.url()).await;
    assert_eq!(p.client.post(&p.url(path), &[("x-profile-id", "p-u")], GEN_BODY).await.status, 200);
    assert_eq!(monthly_cost(&p, "p-u").await, usd("0.014514"));
    assert!(p.metrics().await.contains(r#"spendgate_unpriced_total{model="other",provider="gemini"} 1"#));
    p.handle.shutdown().await;

    let p = start_proxy(&format!("{}unpriced: reject\n", providers_yaml()), &mock.url()).await;
    let got = p.client.post(&p.url(path), &[("x-profile-id", "p-u")], GEN_BODY).await;
    assert_eq!(got.status, 402);
    assert_eq!(got.json()["error"]["type"], "model_unpriced");
    assert_eq!(
        p.client.post(&p.url(GEN), &[("x-profile-id", "p-u")], GEN_BODY).await.status,
        200,
        "priced models pass"
    );
    p.handle.shutdown().await;

    let p = start_proxy(&format!("{}unpriced: zero\n", providers_yaml()), &mock.url()).await;
    assert_eq!(p.client.post(&p.url(path), &[("x-profile-id", "p-u")], GEN_BODY).await.status, 200);
    assert_eq!(monthly_cost(&p, "p-u").await, 0);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn admin_probes_and_metric_names() {
    let mock = Mock::start(|seen| {
        if seen.path.starts_with("/v1/text-to-speech") {
            tts_reply()
        } else {
            Reply::json(fixture("gemini/generate_content_cached_tools.json"))
        }
    })
    .await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    assert_eq!(p.client.get(&p.admin_url("/healthz"), &[]).await.status, 200);
    let ready = p.client.get(&p.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["store"], "embedded");
    p.client
        .post(
            &p.url(TTS),
            &[("x-profile-id", "p-m"), ("x-org-id", "o-m")],
            fixture("elevenlabs/tts_request.json"),
        )
        .await;
    p.client
        .post(&p.url("/gemini/v1/models/gemini-2.5-pro:generateContent"), &[("x-profile-id", "p-m")], GEN_BODY)
        .await;
    settled_or_fail(&p.handle).await;
    let m = p.metrics().await;
    for line in [
        r#"spendgate_requests_total{model="eleven_multilingual_v2",provider="elevenlabs",status="200"} 1"#,
        r#"spendgate_cost_usd_total{model="eleven_multilingual_v2",org="o-m",provider="elevenlabs",tenant="p-m"} 0.0111"#,
        r#"spendgate_characters_total{model="eleven_multilingual_v2",provider="elevenlabs",tenant="p-m"} 111"#,
        r#"spendgate_tokens_total{kind="input",model="gemini-2.5-pro",provider="gemini",tenant="p-m"} 3268"#,
        r#"spendgate_tokens_total{kind="cached",model="gemini-2.5-pro",provider="gemini",tenant="p-m"} 16384"#,
        r#"spendgate_tokens_total{kind="output",model="gemini-2.5-pro",provider="gemini",tenant="p-m"} 1628"#,
        "spendgate_overhead_seconds_count 2",
    ] {
        assert!(m.contains(line), "missing `{line}` in\n{m}");
    }
    p.handle.shutdown().await;
}

/// `body` compressed with `encoding` as an upstream would send it.
fn compress(encoding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match encoding {
        "br" => {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            w.write_all(body).unwrap();
            w.into_inner()
        }
        "zstd" => zstd::stream::encode_all(body, 3).unwrap(),
        // `deflate` is zlib-wrapped by the standard, raw by some servers: both are seen.
        "deflate" => {
            let mut w = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            w.write_all(body).unwrap();
            w.finish().unwrap()
        }
        "deflate-raw" => {
            let mut w = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            w.write_all(body).unwrap();
            w.finish().unwrap()
        }
        other => panic!("no encoder for {other}"),
    }
}

#[tokio::test]
async fn br_zstd_and_deflate_responses_are_priced_exactly() {
    for encoding in ["br", "zstd", "deflate", "deflate-raw"] {
        let header = encoding.trim_end_matches("-raw").to_string();
        let json = compress(encoding, &fixture("gemini/generate_content.json"));
        let sse = compress(encoding, &fixture("gemini/stream_generate_content.sse"));
        let (json2, sse2, h) = (json.clone(), sse.clone(), header.clone());
        let mock = Mock::start(move |s| {
            let (ct, body) = if s.path.ends_with(":streamGenerateContent") {
                ("text/event-stream", &sse2)
            } else {
                ("application/json", &json2)
            };
            Reply::new(200)
                .header("content-type", ct)
                .header("content-encoding", &h)
                .pieces(body, 37, Duration::ZERO)
        })
        .await;
        let p = start_proxy(&yaml(""), &mock.url()).await;
        let headers = [("x-profile-id", "p-enc"), ("accept-encoding", "gzip, deflate, br, zstd")];
        let got = p.client.post(&p.url(GEN), &headers, GEN_BODY).await;
        assert_eq!(got.status, 200, "{encoding}");
        assert_eq!(got.headers["content-encoding"], header.as_str(), "{encoding}");
        assert_eq!(got.body.to_vec(), json, "{encoding}: the client gets the compressed bytes as sent");
        assert_eq!(monthly_cost(&p, "p-enc").await, GEMINI_FLASH_NANOS, "{encoding}: generateContent");
        let stream = "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
        let got = p.client.post(&p.url(stream), &headers, GEN_BODY).await;
        assert_eq!(got.status, 200, "{encoding}");
        assert_eq!(got.body.to_vec(), sse, "{encoding}");
        assert_eq!(
            monthly_cost(&p, "p-enc").await,
            GEMINI_FLASH_NANOS + GEMINI_STREAM_NANOS,
            "{encoding}: streamGenerateContent"
        );
        p.handle.shutdown().await;
    }
}

#[tokio::test]
async fn a_client_leaving_mid_stream_settles_the_streams_reported_usage() {
    let (mock, gate) = gated_stream("gemini/stream_generate_content.sse", 97).await;
    let p = start_proxy(&yaml(""), &mock.url()).await;
    let stream = "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let r = p.client.send(Method::POST, &p.url(stream), &[("x-profile-id", "p-gone")], GEN_BODY).await;
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    body.frame().await.expect("a first piece").expect("a first piece");
    // The client leaves with the rest of the stream (and its usage) still upstream.
    drop(body);
    // The upstream then finishes; the proxy reads it to the end without the client.
    let g = gate.clone();
    let opener = tokio::spawn(async move {
        loop {
            g.notify_waiters();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let app = p.handle.app.clone();
    let day = app.runtime().calendar.local_date(app.clock.now()).format("%Y-%m-%d").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = app
            .store
            .history(spendgate::domain::Scope::Profile, "p-gone", std::slice::from_ref(&day), 10)
            .await
            .unwrap();
        if !h.recent.is_empty() {
            assert_eq!(h.recent.len(), 1, "settled exactly once");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the abandoned stream was never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    opener.abort();
    // The usage the stream reported at its end, not the reservation.
    assert_eq!(monthly_cost(&p, "p-gone").await, GEMINI_STREAM_NANOS);
    assert_eq!(mock.count(), 1);
    p.handle.shutdown().await;
}
