//! The quota gauges follow the store (windows, reloads, match limits), and the `metrics`
//! section switches tenant labels off or caps them.

use crate::common::ops::*;
use crate::common::*;
use chrono::{DateTime, Utc};
use spendgate::config::Config;
use spendgate::domain::window::Clock;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn ratio(m: &str, tenant: &str, scope: &str, metric: &str, window: &str) -> Option<f64> {
    sample(
        m,
        &format!("spendgate_quota_usage_ratio{{metric=\"{metric}\",scope=\"{scope}\",tenant=\"{tenant}\",window=\"{window}\"}} "),
    )
}

fn threshold(m: &str, tenant: &str, scope: &str, metric: &str, window: &str) -> Option<f64> {
    sample(
        m,
        &format!("spendgate_quota_alert_threshold{{metric=\"{metric}\",scope=\"{scope}\",tenant=\"{tenant}\",window=\"{window}\"}} "),
    )
}

const LIMITS: &str = "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1, alert_at: 0.9}\n    - {metric: requests, window: daily, max: 10}\n    - {metric: requests, window: daily, max: 4, alert_at: 0.7, match: {model: \"gemini-2.5-*\"}}\n  profiles:\n    p-quiet:\n      - {metric: characters, window: monthly, max: 100}\n";

#[tokio::test]
async fn quota_gauges_read_the_store_at_scrape_time() {
    let mock = Mock::start(fixture_upstream).await;
    let clock = Clock::fixed(at("2026-11-22T10:00:00Z"));
    let yaml = format!("{}{LIMITS}", providers_yaml());
    let p = start_proxy_with_clock(&yaml, &mock.url(), clock.clone()).await;
    for _ in 0..2 {
        assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    }
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-1", None).await.status, 200);
    settled_or_fail(&p.handle).await;

    let m = p.metrics().await;
    let cost = (2 * GEMINI_FLASH_NANOS + ELEVENLABS_TTS_NANOS) as f64 / 1e9;
    assert_eq!(ratio(&m, "p-1", "profile", "cost_usd", "monthly"), Some(cost));
    assert_eq!(threshold(&m, "p-1", "profile", "cost_usd", "monthly"), Some(0.9));
    // Two daily request limits: the gauge shows the tighter one (2 of 4 Gemini requests),
    // with its own threshold.
    assert_eq!(ratio(&m, "p-1", "profile", "requests", "daily"), Some(0.5));
    assert_eq!(threshold(&m, "p-1", "profile", "requests", "daily"), Some(0.7));
    // A tenant named in the config is reported before it sends anything.
    assert_eq!(ratio(&m, "p-quiet", "profile", "characters", "monthly"), Some(0.0));

    // The next day: a new daily window, the same month.
    clock.set(at("2026-11-23T00:00:01Z"));
    let m = p.metrics().await;
    assert_eq!(ratio(&m, "p-1", "profile", "requests", "daily"), Some(0.0));
    assert_eq!(ratio(&m, "p-1", "profile", "cost_usd", "monthly"), Some(cost));

    // A reloaded max applies at once; a removed limit's series goes away.
    let yaml2 = complete_yaml(
        &format!(
            "{}limits:\n  default_profile:\n    - {{metric: cost_usd, window: monthly, max: 0.5}}\n",
            providers_yaml()
        ),
        &mock.url(),
    );
    p.handle.app.replace_config(Config::from_yaml(&yaml2, "reloaded.yaml").unwrap()).unwrap();
    let m = p.metrics().await;
    assert_eq!(ratio(&m, "p-1", "profile", "cost_usd", "monthly"), Some(cost / 0.5));
    assert_eq!(ratio(&m, "p-1", "profile", "requests", "daily"), None, "{m}");
    p.handle.shutdown().await;
}

#[tokio::test]
async fn tenant_labels_can_be_switched_off() {
    let mock = Mock::start(fixture_upstream).await;
    let yaml = format!("{}{LIMITS}metrics:\n  tenant_labels: false\n", providers_yaml());
    let p = start_proxy(&yaml, &mock.url()).await;
    assert_eq!(send(&p, GEMINI_FLASH, "p-secret", Some("org-secret")).await.status, 200);
    settled_or_fail(&p.handle).await;
    let m = p.metrics().await;
    assert!(!m.contains("secret"), "no tenant id in any label:\n{m}");
    assert!(
        m.contains("spendgate_cost_usd_total{model=\"gemini-2.5-flash\",org=\"\",provider=\"gemini\",tenant=\"\"} 0.0020097"),
        "{m}"
    );
    assert!(!m.contains("spendgate_quota_usage_ratio{"), "{m}");
    p.handle.shutdown().await;
}

#[tokio::test]
async fn tenant_labels_are_capped_with_the_rest_folded_into_other() {
    let mock = Mock::start(fixture_upstream).await;
    let yaml = format!(
        "{}limits:\n  default_profile:\n    - {{metric: requests, window: daily, max: 100}}\nmetrics:\n  max_tenants: 2\n",
        providers_yaml()
    );
    let p = start_proxy(&yaml, &mock.url()).await;
    for t in ["p-a", "p-b", "p-c", "p-d", "p-a"] {
        assert_eq!(send(&p, GEMINI_FLASH, t, None).await.status, 200);
    }
    settled_or_fail(&p.handle).await;
    let m = p.metrics().await;
    let tokens = |t: &str| {
        sample(
            &m,
            &format!("spendgate_tokens_total{{kind=\"input\",model=\"gemini-2.5-flash\",provider=\"gemini\",tenant=\"{t}\"}} "),
        )
    };
    assert_eq!(tokens("p-a"), Some(48.0));
    assert_eq!(tokens("p-b"), Some(24.0));
    assert_eq!(tokens("other"), Some(48.0), "p-c and p-d share `other`");
    assert!(!m.contains("p-c") && !m.contains("p-d"), "{m}");
    // Quota gauges only for tenants with a label of their own.
    assert_eq!(ratio(&m, "p-a", "profile", "requests", "daily"), Some(0.02));
    assert_eq!(ratio(&m, "other", "profile", "requests", "daily"), None);
    p.handle.shutdown().await;
}

/// Every request answered with the generateContent fixture (24 input tokens).
fn generate_content(_: &Seen) -> Reply {
    Reply::json(fixture("gemini/generate_content.json"))
}

fn input_tokens(m: &str, model: &str, tenant: &str) -> Option<f64> {
    sample(
        m,
        &format!("spendgate_tokens_total{{kind=\"input\",model=\"{model}\",provider=\"gemini\",tenant=\"{tenant}\"}} "),
    )
}

#[tokio::test]
async fn an_unpriced_model_is_labelled_other() {
    let mock = Mock::start(generate_content).await;
    let p = start_proxy(providers_yaml(), &mock.url()).await;
    let path = "/gemini/v1beta/models/made-up-model-7f3a:generateContent";
    let r = p
        .client
        .post(
            &p.url(path),
            &[("x-profile-id", "p-unk"), ("content-type", "application/json")],
            "{\"contents\": []}",
        )
        .await;
    assert_eq!(r.status, 200);
    settled_or_fail(&p.handle).await;
    let m = p.metrics().await;
    assert!(!m.contains("made-up-model-7f3a"), "an unpriced model name never becomes a label:\n{m}");
    assert_eq!(input_tokens(&m, "other", "p-unk"), Some(24.0), "{m}");
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_500_priced_models_the_rest_are_labelled_other() {
    const MODELS: usize = 505;
    let mock = Mock::start(generate_content).await;
    let mut yaml = format!("{}pricing:\n  gemini:\n", providers_yaml());
    for i in 0..MODELS {
        yaml.push_str(&format!("    \"cap-model-{i}\": {{input_per_mtok: 0.30, output_per_mtok: 2.50}}\n"));
    }
    let p = start_proxy(&yaml, &mock.url()).await;
    for i in 0..MODELS {
        let r = p
            .client
            .post(
                &p.url(&format!("/gemini/v1beta/models/cap-model-{i}:generateContent")),
                &[("x-profile-id", "p-cap"), ("content-type", "application/json")],
                "{\"contents\": []}",
            )
            .await;
        assert_eq!(r.status, 200, "cap-model-{i}");
    }
    settled_or_fail(&p.handle).await;
    let m = p.metrics().await;
    // The first 500 models have labels of their own; the last five share `other`.
    for i in [0, 1, 250, 499] {
        assert_eq!(input_tokens(&m, &format!("cap-model-{i}"), "p-cap"), Some(24.0), "cap-model-{i}");
    }
    for i in 500..MODELS {
        assert!(!m.contains(&format!("\"cap-model-{i}\"")), "cap-model-{i} has a label past the cap");
    }
    assert_eq!(input_tokens(&m, "other", "p-cap"), Some(24.0 * 5.0));
    let own: std::collections::BTreeSet<&str> = m
        .lines()
        .filter(|l| l.starts_with("spendgate_tokens_total{"))
        .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(own.len(), 501, "500 models and `other`");
    p.handle.shutdown().await;
}
