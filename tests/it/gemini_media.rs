//! Imagen, Veo and the Vertex AI path shapes through the proxy against the mock: the exact
//! cost of each fixture (EXPECTED.md), and free polling.

use std::time::Duration;

use crate::common::*;

const YAML_LIMITS: &str = "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1000}\n";
const VERTEX: &str = "/vertex/v1beta1/projects/my-project/locations/us-central1/publishers/google/models";
const VERTEX_EXPRESS: &str = "/vertex/v1beta1/publishers/google/models";

async fn proxy(mock: &Mock) -> Proxy {
    start_proxy(&format!("{}{YAML_LIMITS}", providers_yaml()), &mock.url()).await
}

async fn post(p: &Proxy, path: &str, profile: &str, body: impl Into<bytes::Bytes>) -> Got {
    p.client
        .post(&p.url(path), &[("x-profile-id", profile), ("content-type", "application/json")], body)
        .await
}

#[tokio::test]
async fn imagen_is_priced_per_image_returned_on_both_apis() {
    let mock = Mock::start(|_| Reply::json(fixture("gemini/imagen_predict.json"))).await;
    let p = proxy(&mock).await;
    let paths = [
        "/gemini/v1beta/models/imagen-4.0-generate-001:predict".to_string(),
        format!("{VERTEX}/imagen-4.0-generate-001:predict"),
        format!("{VERTEX_EXPRESS}/imagen-4.0-generate-001:predict"),
    ];
    for (i, path) in paths.iter().enumerate() {
        let profile = format!("p-img-{i}");
        let got = post(&p, path, &profile, fixture("gemini/imagen_predict_request.json")).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body.to_vec(), fixture("gemini/imagen_predict.json"));
        assert_eq!(mock.last().path, path.strip_prefix("/gemini").or_else(|| path.strip_prefix("/vertex")).unwrap());
        // 2 images at $0.04 (Imagen 4 Standard).
        assert_eq!(monthly_cost(&p, &profile).await, usd("0.08"), "{path}");
    }

    // A filtered prediction carries no image bytes and is not billed; Fast is $0.02 an image.
    mock.set(|_| Reply::json(r#"{"predictions": [{"raiFilteredReason": "filtered"}, {"mimeType": "image/png", "bytesBase64Encoded": "iVBORw0KGgo="}]}"#));
    let got = post(
        &p,
        &format!("{VERTEX}/imagen-4.0-fast-generate-001:predict"),
        "p-img-rai",
        fixture("gemini/imagen_predict_request.json"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(monthly_cost(&p, "p-img-rai").await, usd("0.02"));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn veo_is_priced_per_second_requested_and_polling_is_free() {
    let mock = Mock::start(|_| Reply::json(fixture("gemini/veo_predict_long_running.json"))).await;
    let p = proxy(&mock).await;
    let request = String::from_utf8(fixture("gemini/veo_predict_long_running_request.json")).unwrap();
    let cases = [
        // 8 s x 1 sample at $0.40/s (Veo 3.1 Standard).
        (
            "/gemini/v1beta/models/veo-3.1-generate-preview:predictLongRunning".to_string(),
            request.clone(),
            "3.20",
        ),
        (format!("{VERTEX}/veo-3.1-generate-001:predictLongRunning"), request.clone(), "3.20"),
        // What the SDK sends in express mode: only the duration.
        (
            format!("{VERTEX_EXPRESS}/veo-3.1-generate-001:predictLongRunning"),
            r#"{"instances": [{"prompt": "a bay"}], "parameters": {"durationSeconds": 6}}"#.into(),
            "2.40",
        ),
        // No duration: Veo 3.x renders 8 s. Two samples of 4 s at the Fast rate ($0.15/s).
        (
            format!("{VERTEX}/veo-3.1-generate-001:predictLongRunning"),
            r#"{"instances": [{"prompt": "a bay"}]}"#.into(),
            "3.20",
        ),
        (
            format!("{VERTEX}/veo-3.1-fast-generate-001:predictLongRunning"),
            r#"{"instances": [{"prompt": "a bay"}], "parameters": {"durationSeconds": "4", "sampleCount": 2}}"#.into(),
            "1.20",
        ),
    ];
    for (i, (path, body, expected)) in cases.iter().enumerate() {
        let profile = format!("p-veo-{i}");
        let got = post(&p, path, &profile, body.clone()).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.json()["name"], "models/veo-3.1-generate-preview/operations/lw2bkoxq7g4k");
        assert_eq!(monthly_cost(&p, &profile).await, usd(expected), "{path} {body}");
    }

    // Polling the operation: the Gemini API's GET and Vertex's fetchPredictOperation.
    let mut polls = 0;
    for name in ["gemini/veo_operation_pending.json", "gemini/veo_operation_done.json"] {
        let body = fixture(name);
        mock.set(move |_| Reply::json(body.clone()));
        let got = p
            .client
            .get(
                &p.url("/gemini/v1beta/models/veo-3.1-generate-preview/operations/lw2bkoxq7g4k"),
                &[("x-profile-id", "p-poll")],
            )
            .await;
        assert_eq!(got.status, 200);
        let got = post(
            &p,
            &format!("{VERTEX}/veo-3.1-generate-001:fetchPredictOperation"),
            "p-poll",
            r#"{"operationName": "projects/my-project/locations/us-central1/publishers/google/models/veo-3.1-generate-001/operations/lw2"}"#,
        )
        .await;
        assert_eq!(got.status, 200);
        polls += 2;
    }
    assert_eq!(monthly_cost(&p, "p-poll").await, 0);
    assert_eq!(
        counter(
            &p,
            spendgate::domain::Scope::Profile,
            "p-poll",
            spendgate::domain::window::Window::Daily,
            "requests"
        )
        .await,
        polls
    );
    p.handle.shutdown().await;
}

#[tokio::test]
async fn vertex_text_generation_uses_gemini_usage_and_prices() {
    let mock = Mock::start(|_| Reply::new(500)).await;
    let p = proxy(&mock).await;
    let body = r#"{"contents": [{"role": "user", "parts": [{"text": "When is low tide?"}]}]}"#;
    let cases = [
        (
            format!("{VERTEX}/gemini-2.5-flash:generateContent"),
            "gemini/generate_content.json",
            "application/json",
            "0.0020097",
        ),
        (
            format!("{VERTEX}/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            "gemini/stream_generate_content.sse",
            "text/event-stream",
            "0.0008277",
        ),
        (
            format!("{VERTEX_EXPRESS}/gemini-2.5-flash:streamGenerateContent"),
            "gemini/stream_generate_content.jsonarray",
            "application/json",
            "0.0008277",
        ),
        (
            format!("{VERTEX}/gemini-2.5-pro:generateContent"),
            "gemini/generate_content_cached_tools.json",
            "application/json",
            // 0.022413 in tokens, plus the $0.035 fee of one grounded prompt.
            "0.057413",
        ),
    ];
    for (i, (path, name, content_type, expected)) in cases.iter().enumerate() {
        let response = fixture(name);
        let (r2, ct) = (response.clone(), *content_type);
        mock.set(move |_| Reply::new(200).header("content-type", ct).pieces(&r2, 37, Duration::ZERO));
        let profile = format!("p-vx-{i}");
        let got = post(&p, path, &profile, body).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body.to_vec(), response, "{name}");
        assert_eq!(monthly_cost(&p, &profile).await, usd(expected), "{name}");
    }
    mock.set(|_| Reply::json(fixture("gemini/count_tokens.json")));
    let got = post(&p, &format!("{VERTEX}/gemini-2.5-flash:countTokens"), "p-vx-free", body).await;
    assert_eq!(got.status, 200);
    assert_eq!(monthly_cost(&p, "p-vx-free").await, 0);
    p.handle.shutdown().await;
}

/// Answers like Vertex AI for the calls the google-genai SDK makes in Vertex mode.
fn vertex_like(s: &Seen) -> Reply {
    const OP: &str = "projects/p/locations/us-central1/publishers/google/models/veo-3.1-generate-001/operations/op1";
    let method = s.path.rsplit(':').next().unwrap_or("");
    match method {
        "predict" => Reply::json(fixture("gemini/imagen_predict.json")),
        "predictLongRunning" => Reply::json(format!(r#"{{"name": "{OP}"}}"#)),
        "fetchPredictOperation" => Reply::json(format!(
            r#"{{"name": "{OP}", "done": true, "response": {{"@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse", "videos": [{{"gcsUri": "gs://bucket/v.mp4", "mimeType": "video/mp4"}}]}}}}"#
        )),
        "generateContent" => Reply::json(fixture("gemini/generate_content.json")),
        "streamGenerateContent" => {
            Reply::new(200)
                .header("content-type", "text/event-stream")
                .pieces(&fixture("gemini/stream_generate_content.sse"), 64, Duration::from_millis(1))
        }
        _ => Reply::new(404),
    }
}

#[tokio::test]
async fn google_genai_sdk_in_vertex_mode() {
    let mock = Mock::start(vertex_like).await;
    let p = proxy(&mock).await;
    let out = python::run_ok("genai_vertex_sdk.py", vec![("VERTEX_BASE_URL", p.url("/vertex"))]).await;
    assert!(out.contains("sdk: ok"), "{out}");
    let paths: Vec<String> = mock.seen.lock().iter().map(|s| s.path.clone()).collect();
    assert!(
        paths.contains(&"/v1beta1/publishers/google/models/imagen-4.0-generate-001:predict".to_string()),
        "{paths:?}"
    );
    for (profile, expected) in [
        // 2 images at $0.04; 6 s at $0.40; polling free; Gemini text at the Gemini prices.
        ("p-gx-img", "0.08"),
        ("p-gx-veo", "2.40"),
        ("p-gx-poll", "0"),
        ("p-gx-text", "0.0020097"),
        ("p-gx-stream", "0.0008277"),
    ] {
        assert_eq!(monthly_cost(&p, profile).await, usd(expected), "{profile}");
    }
    p.handle.shutdown().await;
}
