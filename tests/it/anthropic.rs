//! Anthropic through the proxy against the mock: every fixture's exact cost (EXPECTED.md).

use std::time::Duration;

use crate::common::*;

const YAML_LIMITS: &str = "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1000}\n";
const MESSAGES: &str = "/anthropic/v1/messages";

async fn post(p: &Proxy, path: &str, profile: &str, body: &str) -> Got {
    p.client
        .post(
            &p.url(path),
            &[
                ("x-profile-id", profile),
                ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01"),
            ],
            body.to_string(),
        )
        .await
}

#[tokio::test]
async fn messages_plain_and_streamed_cost_what_the_fixtures_report() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let p = start_proxy(&format!("{}{YAML_LIMITS}", providers_yaml()), &mock.url()).await;
    let plain = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Timetable?"}]}"#;
    let stream = r#"{"model":"claude-haiku-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"Low tide?"}]}"#;
    let cases = [
        // 1530 input at $3/M + 2048 5-minute cache writes at $3.75/M + 10240 cache reads at
        // $0.30/M + 412 output at $15/M.
        (plain, "anthropic/messages.json", "application/json", "0.021522"),
        // 472 input at $1/M + 87 output at $5/M (the delta's cumulative count, not 89).
        (stream, "anthropic/messages_stream.sse", "text/event-stream", "0.000907"),
        (stream, "anthropic/messages_stream_output_only_delta.sse", "text/event-stream", "0.000907"),
        // 3120 input + 2048 cache reads + 318 output (Sonnet 4.5) + one web search at $0.01.
        (stream, "anthropic/messages_stream_cache_tools.sse", "text/event-stream", "0.0247444"),
        // An in-band error after message_start: 1200 input at $3/M, and output the larger of
        // the reported 1 and the 40 bytes of text seen (10 tokens) at $15/M.
        (stream, "anthropic/messages_stream_error.sse", "text/event-stream", "0.00375"),
    ];
    for (i, (body, name, content_type, expected)) in cases.into_iter().enumerate() {
        let response = fixture(name);
        let r2 = response.clone();
        mock.set(move |_| Reply::new(200).header("content-type", content_type).pieces(&r2, 61, Duration::ZERO));
        let profile = format!("p-an-{i}");
        let got = post(&p, MESSAGES, &profile, body).await;
        assert_eq!(got.status, 200, "{name}");
        assert_eq!(got.body.to_vec(), response, "{name}: the client gets the upstream's bytes");
        assert_eq!(mock.last().body.as_ref(), body.as_bytes(), "{name}");
        assert_eq!(monthly_cost(&p, &profile).await, usd(expected), "{name}");
    }
    p.handle.shutdown().await;
}

#[tokio::test]
async fn count_tokens_and_errors_are_free() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let p = start_proxy(&format!("{}{YAML_LIMITS}", providers_yaml()), &mock.url()).await;
    let count = fixture("anthropic/count_tokens.json");
    mock.set(move |_| Reply::json(count.clone()));
    let got = post(
        &p,
        "/anthropic/v1/messages/count_tokens",
        "p-free",
        r#"{"model":"claude-sonnet-4-5","messages":[]}"#,
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["input_tokens"], 2095);
    for (status, name) in [(529, "anthropic/error_overloaded_529.json"), (429, "anthropic/error_rate_limit_429.json")] {
        let body = fixture(name);
        let b2 = body.clone();
        mock.set(move |_| Reply::new(status).header("content-type", "application/json").body(b2.clone()));
        let got = post(&p, MESSAGES, "p-free", r#"{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[]}"#).await;
        assert_eq!(got.status.as_u16(), status);
        assert_eq!(got.body.to_vec(), body);
    }
    assert_eq!(monthly_cost(&p, "p-free").await, 0);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_cut_stream_charges_what_it_saw_and_at_least_its_reservation() {
    // The stream of messages_stream.sse up to (and including) the second text delta.
    let full = String::from_utf8(fixture("anthropic/messages_stream.sse")).unwrap();
    let upto = full.find(" are walkable").unwrap();
    let end = full[..upto].rfind("\n\n").unwrap() + 2;
    let cut = full.as_bytes()[..end].to_vec();
    let mock = Mock::start(move |_| {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .pieces(&cut, 100, Duration::from_millis(1))
            .stall(Duration::from_millis(50))
            .cut()
    })
    .await;
    let p = start_proxy(&format!("{}{YAML_LIMITS}", providers_yaml()), &mock.url()).await;
    let r = p
        .client
        .send(
            http::Method::POST,
            &p.url(MESSAGES),
            &[("x-profile-id", "p-cut")],
            r#"{"model":"claude-haiku-4-5","max_tokens":1024,"stream":true,"messages":[]}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
    // The provider may bill the whole answer: message_start's 472 input at $1/M (more than the
    // 4 estimated), and the reserved 1024 output tokens at $5/M (more than the 12 seen).
    assert_eq!(monthly_cost(&p, "p-cut").await, 472 * 1000 + 1024 * 5000);
    p.handle.shutdown().await;
}
