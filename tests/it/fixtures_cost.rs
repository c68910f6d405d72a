//! Each fixture through the proxy against the mock: the exact recorded cost (EXPECTED.md).

use crate::common::*;

const YAML_LIMITS: &str = "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1000}\n";

fn yaml() -> String {
    format!("{}{YAML_LIMITS}", providers_yaml())
}

async fn cost_of(mock: &Mock, path: &str, body: Vec<u8>, reply: Reply, profile: &str) -> (Got, i64) {
    mock.set(move |_| reply.clone());
    let p = start_proxy(&yaml(), &mock.url()).await;
    let got = p
        .client
        .post(&p.url(path), &[("x-profile-id", profile), ("content-type", "application/json")], body)
        .await;
    let cost = monthly_cost(&p, profile).await;
    p.handle.shutdown().await;
    (got, cost)
}

#[tokio::test]
async fn elevenlabs_tts_variants() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let cases = [
        (
            "/elevenlabs/v1/text-to-speech/v1d",
            "elevenlabs/tts_request.json",
            "elevenlabs/tts_headers.txt",
            None,
            "0.0111",
        ),
        (
            "/elevenlabs/v1/text-to-speech/v1d/stream",
            "elevenlabs/tts_stream_request.json",
            "elevenlabs/tts_stream_headers.txt",
            None,
            "0.0046",
        ),
        (
            "/elevenlabs/v1/text-to-speech/v1d/with-timestamps",
            "elevenlabs/tts_with_timestamps_request.json",
            "elevenlabs/tts_with_timestamps_headers.txt",
            Some("elevenlabs/tts_with_timestamps.json"),
            "0.0014",
        ),
        (
            "/elevenlabs/v1/text-to-speech/v1d/stream/with-timestamps",
            "elevenlabs/tts_stream_with_timestamps_request.json",
            "elevenlabs/tts_stream_with_timestamps_headers.txt",
            Some("elevenlabs/tts_stream_with_timestamps.ndjson"),
            "0.0020",
        ),
    ];
    for (path, req, head, body, expected) in cases {
        let (status, headers) = fixture_head(head);
        let body_bytes = body.map(fixture).unwrap_or_else(|| vec![0xffu8; 4096]);
        let reply = Reply::new(status.as_u16())
            .headers(headers)
            .pieces(&body_bytes, 1000, std::time::Duration::ZERO);
        let (got, cost) = cost_of(&mock, path, fixture(req), reply, "p-el").await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body.to_vec(), body_bytes, "{path}: the client gets the upstream's bytes");
        assert_eq!(cost, usd(expected), "{path}");
    }
}

fn gemini_json(fixture_name: &str) -> Reply {
    Reply::json(fixture(fixture_name))
}

fn gemini_sse(fixture_name: &str) -> Reply {
    Reply::new(200)
        .header("content-type", "text/event-stream")
        .pieces(&fixture(fixture_name), 37, std::time::Duration::ZERO)
}

const GEN_BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Write a haiku about tides."}]}],"generationConfig":{"maxOutputTokens":1024}}"#;

#[tokio::test]
async fn gemini_fixtures() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let cases: Vec<(&str, Reply, &str)> = vec![
        (
            "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
            gemini_json("gemini/generate_content.json"),
            "0.0020097",
        ),
        (
            "/gemini/v1/models/gemini-2.5-pro:generateContent",
            gemini_json("gemini/generate_content_cached_tools.json"),
            // 0.022413 in tokens, plus the $0.035 fee of one grounded prompt (the response
            // carries groundingMetadata).
            "0.057413",
        ),
        (
            "/gemini/v1beta/models/gemini-2.5-flash-image:generateContent",
            gemini_json("gemini/generate_content_image.json"),
            "0.0387027",
        ),
        (
            "/gemini/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            gemini_sse("gemini/stream_generate_content.sse"),
            "0.0008277",
        ),
        (
            "/gemini/v1/models/gemini-2.5-flash:streamGenerateContent",
            Reply::new(200).header("content-type", "application/json").pieces(
                &fixture("gemini/stream_generate_content.jsonarray"),
                23,
                std::time::Duration::ZERO,
            ),
            "0.0008277",
        ),
        (
            "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            gemini_sse("gemini/stream_generate_content_sparse_usage.sse"),
            "0.0000095",
        ),
        (
            "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            gemini_sse("gemini/stream_generate_content_truncated.sse"),
            "0.0007977",
        ),
        (
            "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            gemini_sse("gemini/stream_error_chunk.sse"),
            "0.0007677",
        ),
        (
            "/gemini/v1beta/models/gemini-2.5-flash:countTokens",
            gemini_json("gemini/count_tokens.json"),
            "0",
        ),
    ];
    for (i, (path, reply, expected)) in cases.into_iter().enumerate() {
        let expected_body = reply.chunks.concat();
        let (got, cost) = cost_of(&mock, path, GEN_BODY.as_bytes().to_vec(), reply, &format!("p-gem-{i}")).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body.to_vec(), expected_body, "{path}: bytes pass through unchanged");
        assert_eq!(cost, usd(expected), "{path}");
    }
}

#[tokio::test]
async fn gemini_errors_cost_nothing() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    for (status, f) in [
        (429, "gemini/error_resource_exhausted_429.json"),
        (400, "gemini/error_api_key_invalid_400.json"),
    ] {
        let reply = Reply::new(status).header("content-type", "application/json").body(fixture(f));
        let (got, cost) = cost_of(
            &mock,
            "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
            GEN_BODY.as_bytes().to_vec(),
            reply,
            "p-gem-err",
        )
        .await;
        assert_eq!(got.status.as_u16(), status);
        assert_eq!(got.body.to_vec(), fixture(f));
        assert_eq!(cost, 0, "{f}");
    }
}

#[tokio::test]
async fn gemini_embeddings_are_charged_their_estimate() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let req = fixture("gemini/batch_embed_contents_request.json");
    let reply = gemini_json("gemini/batch_embed_contents.json");
    let (got, cost) = cost_of(
        &mock,
        "/gemini/v1beta/models/gemini-embedding-001:batchEmbedContents",
        req.clone(),
        reply,
        "p-emb",
    )
    .await;
    assert_eq!(got.status, 200);
    // No usage in the response: the text of the request at 4 bytes per token, at $0.15/M.
    // The request's strings add up to 112 bytes -> ceil(112 / 4) = 28 tokens;
    // 28 * 150_000 pico = 4_200_000 pico = 4_200 nanos.
    assert_eq!(cost, 4_200);
}
