//! OpenAI through the proxy against the mock: every fixture's exact cost (EXPECTED.md), and the
//! stream a client that did not ask for usage receives.

use std::io::Write;
use std::time::Duration;

use crate::common::*;

const YAML_LIMITS: &str = "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1000}\n";

async fn proxy(mock: &Mock) -> Proxy {
    start_proxy(&format!("{}{YAML_LIMITS}", providers_yaml()), &mock.url()).await
}

async fn post(p: &Proxy, path: &str, profile: &str, body: impl Into<bytes::Bytes>, headers: &[(&str, &str)]) -> Got {
    let mut h = vec![("x-profile-id", profile), ("content-type", "application/json")];
    h.extend_from_slice(headers);
    p.client.post(&p.url(path), &h, body).await
}

fn sse(body: &[u8]) -> Reply {
    Reply::new(200).header("content-type", "text/event-stream").pieces(body, 97, Duration::ZERO)
}

const CHAT: &str = "/openai/v1/chat/completions";

/// The body's bytes up to its end or first error, and whether it failed.
async fn read_until_error(mut body: hyper::body::Incoming) -> (Vec<u8>, bool) {
    use http_body_util::BodyExt;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => out.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

#[tokio::test]
async fn plain_endpoints_cost_what_the_fixtures_report() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let p = proxy(&mock).await;
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            CHAT,
            r#"{"model":"gpt-5-mini","messages":[{"role":"user","content":"When is low tide?"}]}"#,
            "openai/chat_completions.json",
            "0.0023695",
        ),
        (
            "/openai/v1/responses",
            r#"{"model":"gpt-5","input":"When does the ferry leave?"}"#,
            "openai/responses.json",
            "0.01195375",
        ),
        (
            "/openai/v1/embeddings",
            r#"{"model":"text-embedding-3-small","input":["a","b"],"encoding_format":"float"}"#,
            "openai/embeddings.json",
            "0.0000003",
        ),
        (
            "/openai/v1/embeddings",
            r#"{"model":"text-embedding-3-small","input":"a","encoding_format":"base64"}"#,
            "openai/embeddings_base64.json",
            "0.00000016",
        ),
        // Without a version in the path (an upstream URL that carries /v1 itself).
        (
            "/openai/chat/completions",
            r#"{"model":"gpt-5-mini","messages":[]}"#,
            "openai/chat_completions.json",
            "0.0023695",
        ),
    ];
    for (i, (path, body, fixture_name, expected)) in cases.into_iter().enumerate() {
        let response = fixture(fixture_name);
        let r2 = response.clone();
        mock.set(move |_| Reply::json(r2.clone()));
        let profile = format!("p-plain-{i}");
        let got = post(&p, path, &profile, body, &[]).await;
        assert_eq!(got.status, 200, "{fixture_name}");
        assert_eq!(got.body.to_vec(), response, "{fixture_name}: the client gets the upstream's bytes");
        assert_eq!(
            mock.last().body.as_ref(),
            body.as_bytes(),
            "{fixture_name}: the request body is forwarded untouched"
        );
        assert_eq!(monthly_cost(&p, &profile).await, usd(expected), "{fixture_name}");
    }
    p.handle.shutdown().await;
}

#[tokio::test]
async fn streams_that_asked_for_usage_pass_untouched() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let p = proxy(&mock).await;
    let cases = [
        (
            CHAT,
            r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Low tide?"}]}"#,
            "openai/chat_completions_stream_include_usage.sse",
            "0.00001095",
        ),
        (
            "/openai/v1/responses",
            r#"{"model":"gpt-4.1-mini","stream":true,"input":"Ferry?"}"#,
            "openai/responses_stream.sse",
            "0.000308",
        ),
    ];
    for (i, (path, body, fixture_name, expected)) in cases.into_iter().enumerate() {
        let stream = fixture(fixture_name);
        let s2 = stream.clone();
        mock.set(move |_| sse(&s2));
        let profile = format!("p-stream-{i}");
        let got = post(&p, path, &profile, body, &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body.to_vec(), stream, "{fixture_name}");
        assert_eq!(mock.last().body.as_ref(), body.as_bytes(), "{fixture_name}: not rewritten");
        assert_eq!(monthly_cost(&p, &profile).await, usd(expected), "{fixture_name}");
    }
    p.handle.shutdown().await;
}

/// The mock answers like OpenAI: with the usage chunk and `"usage":null` members only when the
/// request asked for them.
fn openai_like(s: &Seen) -> Reply {
    let json: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    if json.pointer("/stream_options/include_usage") == Some(&serde_json::Value::Bool(true)) {
        sse(&fixture("openai/chat_completions_stream_include_usage.sse"))
    } else {
        sse(&fixture("openai/chat_completions_stream_no_usage.sse"))
    }
}

#[tokio::test]
async fn a_stream_without_usage_is_priced_exactly_and_delivered_as_asked() {
    let mock = Mock::start(openai_like).await;
    let p = proxy(&mock).await;
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Low tide?"}]}"#;
    let got = post(&p, CHAT, "p-nousage", body, &[("accept-encoding", "gzip, deflate, br, zstd")]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        String::from_utf8(got.body.to_vec()).unwrap(),
        String::from_utf8(fixture("openai/chat_completions_stream_no_usage.sse")).unwrap(),
        "no extra chunk, no usage member"
    );
    assert!(got.headers.get("content-length").is_none());
    let sent: serde_json::Value = serde_json::from_slice(&mock.last().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true, "usage was asked for upstream");
    assert_eq!(sent["messages"][0]["content"], "Low tide?");
    assert_eq!(
        monthly_cost(&p, "p-nousage").await,
        usd("0.00001095"),
        "priced from the usage the upstream reported"
    );
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_compressed_or_sized_stream_is_restored_too() {
    let with_usage = fixture("openai/chat_completions_stream_include_usage.sse");
    let without = fixture("openai/chat_completions_stream_no_usage.sse");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&with_usage).unwrap();
    let gz = gz.finish().unwrap();
    let mock = Mock::start(|_| Reply::new(500)).await;
    let p = proxy(&mock).await;
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;

    mock.set(move |_| {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .header("content-encoding", "gzip")
            .pieces(&gz, 50, Duration::ZERO)
    });
    let got = post(&p, CHAT, "p-gzip", body, &[("accept-encoding", "gzip")]).await;
    assert_eq!(got.body.to_vec(), without, "decoded, filtered, passed on unencoded");
    assert!(got.headers.get("content-encoding").is_none());
    assert_eq!(monthly_cost(&p, "p-gzip").await, usd("0.00001095"));

    // A fixed Content-Length no longer describes the filtered body: it is dropped.
    let len = with_usage.len().to_string();
    mock.set(move |_| {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .header("content-length", &len)
            .body(with_usage.clone())
    });
    let got = post(&p, CHAT, "p-sized", body, &[]).await;
    assert_eq!(got.body.to_vec(), without);
    assert_eq!(monthly_cost(&p, "p-sized").await, usd("0.00001095"));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn usage_is_injected_whatever_codings_the_client_accepts() {
    let mock = Mock::start(openai_like).await;
    let p = proxy(&mock).await;
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Low tide?"}]}"#;
    for (profile, accepts, upstream) in [
        ("p-ae-1", "gzip, compress", "gzip"),
        ("p-ae-2", "*", "gzip, deflate, br, zstd"),
        ("p-ae-3", "compress", "identity"),
    ] {
        let got = post(&p, CHAT, profile, body, &[("accept-encoding", accepts)]).await;
        assert_eq!(got.body.to_vec(), fixture("openai/chat_completions_stream_no_usage.sse"), "{accepts}");
        let seen = mock.last();
        assert_eq!(seen.headers["accept-encoding"], upstream, "{accepts}");
        let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true, "{accepts}");
        assert_eq!(monthly_cost(&p, profile).await, usd("0.00001095"), "{accepts}: priced from the reported usage");
    }
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_cut_stream_charges_at_least_its_reservation() {
    let cut = fixture("openai/chat_completions_stream_cut.sse");
    let mock = Mock::start(move |_| {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .pieces(&cut, 200, Duration::from_millis(2))
            // Let the last piece reach the proxy before the connection is reset.
            .stall(Duration::from_millis(50))
            .cut()
    })
    .await;
    let p = proxy(&mock).await;
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"When is low tide?"}]}"#;
    let response = p
        .client
        .send(
            http::Method::POST,
            &p.url(CHAT),
            &[("x-profile-id", "p-cut"), ("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(response.status(), 200);
    let (got, failed) = read_until_error(response.into_body()).await;
    assert!(failed, "the client sees the stream fail");
    // The client gets the three events as it would have without usage.
    let no_usage = String::from_utf8(fixture("openai/chat_completions_stream_no_usage.sse")).unwrap();
    let expected: String = no_usage.split_inclusive("\n\n").take(3).collect();
    assert_eq!(String::from_utf8(got).unwrap(), expected);
    // The provider may bill the whole answer: the estimated input ("gpt-4o-mini" + "user" +
    // "When is low tide?" = 32 bytes = 8 tokens) at $0.15/M and the reserved output (the
    // default 4096 tokens, more than the 2 seen) at $0.60/M.
    assert_eq!(monthly_cost(&p, "p-cut").await, 8 * 150 + 4096 * 600);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn speech_is_priced_per_character_or_from_the_sse_usage() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let p = proxy(&mock).await;

    let (status, headers) = fixture_head("openai/audio_speech_headers.txt");
    let audio = vec![0xffu8; 8192];
    let a2 = audio.clone();
    mock.set(move |_| Reply::new(status.as_u16()).headers(headers.clone()).pieces(&a2, 1000, Duration::ZERO));
    let got = post(
        &p,
        "/openai/v1/audio/speech",
        "p-tts1",
        fixture("openai/audio_speech_request.json"),
        &[("accept", "application/octet-stream")],
    )
    .await;
    assert_eq!(got.body.to_vec(), audio);
    assert_eq!(monthly_cost(&p, "p-tts1").await, usd("0.001275"), "85 characters at $15/M");

    mock.set(|_| sse(&fixture("openai/audio_speech_stream.sse")));
    let got = post(
        &p,
        "/openai/v1/audio/speech",
        "p-tts-sse",
        fixture("openai/audio_speech_stream_request.json"),
        &[],
    )
    .await;
    assert_eq!(got.body.to_vec(), fixture("openai/audio_speech_stream.sse"));
    assert_eq!(
        monthly_cost(&p, "p-tts-sse").await,
        usd("0.0018822"),
        "17 text tokens at $0.60/M + 156 audio tokens at $12/M"
    );
    p.handle.shutdown().await;
}

#[tokio::test]
async fn upstream_errors_and_free_calls_cost_nothing() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let p = proxy(&mock).await;
    for (status, name) in [
        (429, "openai/error_insufficient_quota_429.json"),
        (401, "openai/error_invalid_api_key_401.json"),
    ] {
        let body = fixture(name);
        let b2 = body.clone();
        mock.set(move |_| Reply::new(status).header("content-type", "application/json").body(b2.clone()));
        let got = post(&p, CHAT, "p-err", r#"{"model":"gpt-4o","messages":[]}"#, &[]).await;
        assert_eq!(got.status.as_u16(), status);
        assert_eq!(got.body.to_vec(), body);
    }
    mock.set(|_| Reply::json(r#"{"object":"response.input_tokens","input_tokens":11}"#));
    let got = post(&p, "/openai/v1/responses/input_tokens", "p-err", r#"{"model":"gpt-5","input":"hi"}"#, &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(monthly_cost(&p, "p-err").await, 0);
    p.handle.shutdown().await;
}
