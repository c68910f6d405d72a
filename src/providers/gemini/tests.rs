use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::config::Config;
use crate::pricing::PriceTable;
use crate::providers::{estimate_call, BodyEnd, Settled};

fn req<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestInfo<'a> {
    RequestInfo {
        method,
        path,
        query: None,
        headers,
    }
}

fn classify(g: &Gemini, method: Method, path: &str) -> Call {
    g.classify(&req(&method, path, &HeaderMap::new()))
}

const V: &str = "/v1beta1/projects/p/locations/us-central1";

#[test]
fn every_sdk_route_has_its_class() {
    use Method as M;
    let g = Gemini::developer_api();
    for (method, path, want, model) in [
        (
            M::POST,
            "/v1/models/gemini-2.5-flash:generateContent".to_string(),
            'm',
            Some("gemini-2.5-flash"),
        ),
        (
            M::POST,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent".into(),
            's',
            Some("gemini-2.5-flash"),
        ),
        (M::POST, "/v1alpha/tunedModels/my-tune:generateContent".into(), 'm', Some("my-tune")),
        (M::POST, "/v1/models/gemini-2.5-flash:countTokens".into(), 'f', Some("gemini-2.5-flash")),
        (
            M::POST,
            "/v1/models/gemini-embedding-001:batchEmbedContents".into(),
            'm',
            Some("gemini-embedding-001"),
        ),
        (
            M::POST,
            "/v1/models/gemini-embedding-001:embedContent".into(),
            'm',
            Some("gemini-embedding-001"),
        ),
        (
            M::POST,
            "/v1beta/models/imagen-4.0-generate-001:predict".into(),
            'm',
            Some("imagen-4.0-generate-001"),
        ),
        (
            M::POST,
            "/v1beta/models/veo-3.1-generate-preview:predictLongRunning".into(),
            'm',
            Some("veo-3.1-generate-preview"),
        ),
        (M::POST, "/v1beta/models/gemini-2.5-flash:batchGenerateContent".into(), 'r', None),
        (M::POST, "/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent".into(), 'r', None),
        (M::POST, "/v1beta/models/gemini-2.5-flash:somethingNew".into(), 'r', None),
        (M::GET, "/v1beta/models".into(), 'f', None),
        (M::GET, "/v1beta/models/gemini-2.5-flash".into(), 'f', Some("gemini-2.5-flash")),
        (M::PATCH, "/v1beta/tunedModels/t1".into(), 'f', Some("t1")),
        (M::GET, "/v1beta/models/veo-3.1/operations/abc".into(), 'f', None),
        (M::GET, "/v1beta/operations/abc".into(), 'f', None),
        (M::POST, "/v1beta/cachedContents".into(), 'r', None),
        (M::PATCH, "/v1beta/cachedContents/c1".into(), 'r', None),
        (M::GET, "/v1beta/cachedContents/c1".into(), 'f', None),
        (M::DELETE, "/v1beta/cachedContents/c1".into(), 'f', None),
        (M::POST, "/v1beta/batches/b1:cancel".into(), 'f', None),
        (M::GET, "/v1beta/batches/b1".into(), 'f', None),
        (M::POST, "/v1beta/tunedModels".into(), 'r', None),
        (M::POST, "/upload/v1beta/files".into(), 'f', None),
        (M::POST, "/v1beta/files:register".into(), 'f', None),
        (M::GET, "/v1beta/files/f1:download".into(), 'f', None),
        (M::POST, "/v1beta/fileSearchStores".into(), 'f', None),
        (M::POST, "/v1beta/fileSearchStores/s1:importFile".into(), 'r', None),
        (M::POST, "/upload/v1beta/fileSearchStores/s1:uploadToFileSearchStore".into(), 'r', None),
        (M::POST, "/v1alpha/auth_tokens".into(), 'r', None),
        (M::POST, "/v1beta/interactions/i1/auth_tokens".into(), 'r', None),
        (M::DELETE, "/v1beta/interactions/i1/auth_tokens/t1".into(), 'f', None),
        (M::POST, "/v1beta/interactions".into(), 'r', None),
        (M::POST, "/v1beta/interactions/i1/cancel".into(), 'f', None),
        (M::GET, "/v1beta/interactions/live".into(), 'r', None),
        (M::POST, "/v1beta/decisions".into(), 'r', None),
        (M::POST, "/v1beta/triggers/t1/executions".into(), 'r', None),
        (M::POST, "/v1beta/triggers".into(), 'f', None),
        (M::POST, "/v1beta/agents".into(), 'f', None),
        (M::POST, "/v1beta/webhooks/w1:ping".into(), 'f', None),
        (M::PUT, "/upload/v1beta/environments/e1/files/a.txt".into(), 'f', None),
        (
            M::GET,
            "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent".into(),
            'r',
            None,
        ),
        (M::POST, "/v1beta/somethingNew".into(), 'r', None),
        (
            M::POST,
            format!("{V}/publishers/google/models/gemini-2.5-flash:generateContent"),
            'm',
            Some("gemini-2.5-flash"),
        ),
        (
            M::POST,
            "/v1beta1/publishers/google/models/gemini-2.5-flash:streamGenerateContent".into(),
            's',
            Some("gemini-2.5-flash"),
        ),
        (
            M::POST,
            format!("{V}/publishers/google/models/gemini-2.5-flash:computeTokens"),
            'f',
            Some("gemini-2.5-flash"),
        ),
        (
            M::POST,
            format!("{V}/publishers/google/models/imagen-4.0-generate-001:predict"),
            'm',
            Some("imagen-4.0-generate-001"),
        ),
        (
            M::POST,
            format!("{V}/publishers/google/models/text-embedding-005:predict"),
            'm',
            Some("text-embedding-005"),
        ),
        (M::POST, format!("{V}/publishers/google/models/multimodal-x:predict"), 'r', None),
        (
            M::POST,
            format!("{V}/publishers/google/models/veo-3.1-generate-001:predictLongRunning"),
            'm',
            Some("veo-3.1-generate-001"),
        ),
        (
            M::POST,
            format!("{V}/publishers/google/models/veo-3.1-generate-001:fetchPredictOperation"),
            'f',
            Some("veo-3.1-generate-001"),
        ),
        (M::GET, format!("{V}/operations/o1"), 'f', None),
        (M::POST, format!("{V}/batchPredictionJobs"), 'r', None),
        (M::POST, format!("{V}/batchPredictionJobs/j1:cancel"), 'f', None),
        (M::POST, format!("{V}/tuningJobs"), 'r', None),
        (M::POST, format!("{V}/tuningJobs:validateReinforcementTuningReward"), 'r', None),
        (M::POST, format!("{V}/cachedContents"), 'r', None),
        (M::POST, format!("{V}/publishers/meta/models/llama:rawPredict"), 'r', None),
        (M::POST, format!("{V}/endpoints/e1:predict"), 'r', None),
    ] {
        let c = classify(&g, method.clone(), &path);
        assert_eq!(c.class_letter(), want, "{method} {path}");
        if want != 'r' {
            assert_eq!(c.model.as_deref(), model, "{path}");
        }
    }
    let mut h = HeaderMap::new();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(g.classify(&req(&Method::GET, "/v1beta/models/x:generateContent", &h)).unmetered.is_some());
}

#[test]
fn other_wire_formats() {
    let wire = |g: &Gemini, path: &str| g.wire_for(&req(&Method::POST, path, &HeaderMap::new())).map(|w| w.prices);
    let dev = Gemini::developer_api();
    let vertex = Gemini::vertex();
    assert_eq!(wire(&dev, "/v1beta/openai/chat/completions"), Some(ProviderKind::Gemini));
    assert_eq!(wire(&dev, "/v1beta/openai/embeddings"), Some(ProviderKind::Gemini));
    assert_eq!(wire(&dev, "/v1beta/models/gemini-2.5-flash:generateContent"), None);
    assert_eq!(
        wire(&vertex, "/v1/projects/p/locations/global/endpoints/openapi/chat/completions"),
        Some(ProviderKind::Gemini)
    );
    assert_eq!(wire(&dev, "/v1/projects/p/locations/global/endpoints/openapi/chat/completions"), None);
    for path in [
        "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
        "/v1beta1/projects/p/locations/global/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
        "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict",
    ] {
        assert_eq!(wire(&vertex, path), Some(ProviderKind::Anthropic), "{path}");
        assert_eq!(wire(&dev, path), None, "{path}");
    }
    assert_eq!(wire(&vertex, &format!("{V}/publishers/google/models/gemini-2.5-flash:generateContent")), None);
}

fn estimate(g: &Gemini, path: &str, body: &str) -> (Call, Result<Estimate, Refusal>) {
    let h = HeaderMap::new();
    let r = req(&Method::POST, path, &h);
    let mut call = g.classify(&r);
    let e = estimate_call(g, &mut call, &r, body.as_bytes(), &ReserveConfig::default());
    (call, e)
}

fn gen(model: &str, body: &str) -> Result<Usage, Refusal> {
    estimate(&Gemini::developer_api(), &format!("/v1beta/models/{model}:generateContent"), body)
        .1
        .map(|e| e.usage)
}

#[test]
fn grounding_and_tiers_are_reserved() {
    let search = r#"{"contents":[{"parts":[{"text":"news"}]}],"tools":[{"google_search":{}}],"generationConfig":{"maxOutputTokens":10}}"#;
    assert_eq!(gen("gemini-2.5-flash", search).unwrap().web_searches, 1, "2.5: per grounded prompt");
    assert_eq!(gen("gemini-3.5-flash", search).unwrap().web_searches, 5, "3.x: per query, reserved");
    let retrieval = r#"{"contents":[],"tools":[{"googleSearchRetrieval":{}}]}"#;
    assert_eq!(gen("gemini-2.0-flash", retrieval).unwrap().web_searches, 1);
    assert_eq!(
        gen("gemini-2.5-flash", r#"{"contents":[],"tools":[{"codeExecution":{}}]}"#)
            .unwrap()
            .web_searches,
        0
    );
    assert_eq!(
        gen("gemini-2.5-flash", r#"{"contents":[],"serviceTier":"priority"}"#).unwrap().premium_permille,
        1000
    );
    assert_eq!(
        gen("gemini-2.5-flash", r#"{"contents":[],"service_tier":"PRIORITY"}"#)
            .unwrap()
            .premium_permille,
        1000
    );
    assert_eq!(gen("gemini-2.5-flash", r#"{"contents":[],"service_tier":"flex"}"#).unwrap().premium_permille, 0);
    // Output: either spelling, a decimal string, times the candidates.
    assert_eq!(gen("m", r#"{"generation_config":{"max_output_tokens":100}}"#).unwrap().output_tokens, 100);
    assert_eq!(
        gen("m", r#"{"generationConfig":{"maxOutputTokens":"100","candidateCount":3}}"#)
            .unwrap()
            .output_tokens,
        300
    );
    assert_eq!(gen("m", r#"{"contents":[]}"#).unwrap().output_tokens, 4096);
    assert!(matches!(gen("m", r#"{"tools":[{"googleMaps":{}}]}"#), Err(Refusal::NotMetered(_))));
    for body in [
        r#"{"generationConfig":{"maxOutputTokens":1},"generation_config":{"max_output_tokens":9}}"#,
        r#"{"generationConfig":{"maxOutputTokens":1,"max_output_tokens":9}}"#,
        r#"{"generationConfig":{"maxOutputTokens":-1}}"#,
        r#"{"generationConfig":{"maxOutputTokens":"lots"}}"#,
        r#"{"generationConfig":{"maxOutputTokens":1.5}}"#,
        r#"{"generationConfig":[]}"#,
        r#"{"tools":{"google_search":{}}}"#,
        r#"{"tools":["google_search"]}"#,
        r#"{"serviceTier":2}"#,
        r#"{"serviceTier":"priority","service_tier":"standard"}"#,
    ] {
        assert!(matches!(gen("m", body), Err(Refusal::InvalidBody(_))), "{body}");
    }
}

#[test]
fn media_estimates() {
    let v = Gemini::vertex();
    let imagen = format!("{V}/publishers/google/models/imagen-4.0-generate-001:predict");
    let images = |body: &str| estimate(&v, &imagen, body).1.map(|e| e.usage.images);
    assert_eq!(images(r#"{"instances":[{"prompt":"a cat"}],"parameters":{"sampleCount":2}}"#).unwrap(), 2);
    assert_eq!(images(r#"{"instances":[{"prompt":"a"},{"prompt":"b"}]}"#).unwrap(), 8);
    assert!(images(r#"{"instances":[{"prompt":"a"}],"parameters":{"sampleCount":"two"}}"#).is_err());
    assert!(images(r#"{"instances":{"prompt":"a"}}"#).is_err());
    let veo = format!("{V}/publishers/google/models/veo-3.1-generate-001:predictLongRunning");
    let video = |body: &str| estimate(&v, &veo, body).1.map(|e| (e.usage.video_seconds, e.usage.premium_permille));
    assert_eq!(
        video(r#"{"instances":[{"prompt":"a"}],"parameters":{"durationSeconds":6,"sampleCount":2}}"#).unwrap(),
        (12, 0)
    );
    assert_eq!(video(r#"{"instances":[{"prompt":"a"}],"parameters":{"resolution":"4k"}}"#).unwrap(), (8, 500));
    assert!(video(r#"{"instances":[{"prompt":"a"}],"parameters":{"durationSeconds":true}}"#).is_err());
}

#[test]
fn estimate_counts_text_not_media() {
    let body = format!(
        r#"{{"contents":[{{"parts":[{{"text":"abcdefgh"}},{{"inlineData":{{"mimeType":"image/png","data":"{}"}}}}]}}],"generationConfig":{{"maxOutputTokens":100}}}}"#,
        "A".repeat(100_000)
    );
    let u = gen("m", &body).unwrap();
    assert_eq!(u.output_tokens, 100);
    assert!(u.input_tokens < 2000, "{}", u.input_tokens);
}

fn run(mut x: Metered<Seen>, body: &[u8], piece: usize) -> Settled {
    for c in body.chunks(piece) {
        x.feed(c);
    }
    x.finish(BodyEnd::Complete)
}

fn reserved(web_searches: u64, premium_permille: u64) -> Usage {
    Usage {
        web_searches,
        premium_permille,
        ..Usage::default()
    }
}

#[test]
fn sparse_usage_fields_are_merged_latest_wins() {
    let body = b"data: {\"usageMetadata\": {\"promptTokenCount\": 11, \"candidatesTokenCount\": 3}}\r\n\r\ndata: {\"usageMetadata\": {\"candidatesTokenCount\": 21}}\r\n\r\n";
    for piece in [1, 7, 512] {
        let s = run(usage_metadata(&Usage::default(), true, true, false), body, piece);
        assert_eq!((s.usage.input_tokens, s.usage.output_tokens, s.source), (11, 21, Source::Reported));
    }
}

#[test]
fn search_queries_are_settled_from_the_response() {
    let sse = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}],\"usageMetadata\":{\"promptTokenCount\":5}}\n\n\
data: {\"candidates\":[{\"groundingMetadata\":{\"webSearchQueries\":[\"q1\",\"q2\"]}}]}\n\n\
data: {\"candidates\":[{\"groundingMetadata\":{\"webSearchQueries\":[\"q1\",\"q2\",\"q3\"]}}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":9}}\n\n";
    for piece in [1, 3, 10, 4096] {
        let s = run(usage_metadata(&reserved(5, 0), true, true, false), sse, piece);
        assert_eq!((s.usage.web_searches, s.usage.output_tokens), (3, 9), "{piece}");
        let s = run(usage_metadata(&reserved(1, 0), true, true, true), sse, piece);
        assert_eq!(s.usage.web_searches, 1, "per prompt, {piece}");
    }
    let array = br#"[{"candidates":[{"groundingMetadata":{"webSearchQueries":["a"]}}]},
{"candidates":[{"groundingMetadata":{"webSearchQueries":["b"]}}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":4}}]"#;
    for piece in [1, 5, 999] {
        let s = run(usage_metadata(&reserved(5, 0), true, false, false), array, piece);
        assert_eq!(s.usage.web_searches, 2, "{piece}");
    }
    // Searched but not grounded: nothing to charge.
    let plain = br#"{"candidates":[{"content":{"parts":[{"text":"hi"}]}}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":4}}"#;
    let s = run(usage_metadata(&reserved(5, 0), false, false, false), plain, 2);
    assert_eq!(s.usage.web_searches, 0);
    // Queries in a candidates member too large to keep: the reservation stands.
    let big = format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{}"}}]}},"groundingMetadata":{{"webSearchQueries":["q"]}}}}],"usageMetadata":{{"promptTokenCount":2,"candidatesTokenCount":4}}}}"#,
        "x".repeat(300 * 1024)
    );
    let s = run(usage_metadata(&reserved(5, 0), false, false, false), big.as_bytes(), 4096);
    assert_eq!(s.usage.web_searches, 5);
}

#[test]
fn priority_premium_is_kept_or_reported() {
    let plain = br#"{"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":4}}"#;
    let s = run(usage_metadata(&reserved(0, 1000), false, false, false), plain, 3);
    assert_eq!(s.usage.premium_permille, 1000, "the request's tier stands when the response does not say");
    let vertex = br#"{"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":4,"trafficType":"ON_DEMAND_PRIORITY"}}"#;
    let s = run(usage_metadata(&Usage::default(), false, false, false), vertex, 1);
    assert_eq!(s.usage.premium_permille, 1000);
}

#[test]
fn prices_through_the_table() {
    let t = PriceTable::new(&Config::from_yaml("", "t").unwrap()).unwrap();
    let nanos = |model: &str, u: &Usage| t.price("gemini", ProviderKind::Gemini, &[Some(model)], u).nanos;
    let u = Usage {
        input_tokens: 1_000,
        output_tokens: 1_000,
        prompt_tokens: 1_000,
        web_searches: 1,
        ..Usage::default()
    };
    // 1k x $0.30/M + 1k x $2.50/M + one grounded prompt at $35/1000 = $0.0003 + $0.0025 + $0.035
    assert_eq!(nanos("gemini-2.5-flash", &u), 37_800_000);
    let queries = Usage {
        web_searches: 3,
        ..Usage::default()
    };
    // Three queries at $14/1000.
    assert_eq!(nanos("gemini-3.5-flash", &queries), 42_000_000);
    let priority = Usage {
        input_tokens: 1_000_000,
        premium_permille: 1000,
        ..Usage::default()
    };
    assert_eq!(nanos("gemini-2.5-flash", &priority), 600_000_000);
}
