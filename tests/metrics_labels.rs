//! The quota gauges follow the store (windows, reloads, match limits), and the `metrics`
//! section switches tenant labels off or caps them.

mod common;

use chrono::{DateTime, Utc};
use common::ops::*;
use common::*;
use spendgate::config::Config;
use spendgate::domain::window::Clock;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
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
    p.handle.settled().await;

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
    p.handle.settled().await;
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
    p.handle.settled().await;
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
