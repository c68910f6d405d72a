//! Each fixture through the proxy against the mock: the exact recorded cost (EXPECTED.md).

mod common;

use common::*;

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
