//! `promtool` (Debian's `prometheus` package) accepts a real scrape, the alert rules (with
//! their unit tests) and the Prometheus config in deploy/; every metric of DESIGN.md is
//! emitted with its label set; the Grafana dashboard only queries metrics that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::ops::*;
use crate::common::process::output_within;
use crate::common::*;

fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("promtool")).find(|p| p.is_file()));
    found.unwrap_or_else(|| panic!("promtool not found on PATH: install Debian's `prometheus` package (apt-get install -y prometheus)"))
}

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(rel)
}

/// Runs promtool; panics with its output unless it succeeds.
fn run_promtool(args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = output_within(Command::new(promtool()).args(args), stdin, Duration::from_secs(60));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Metric family -> the label names of its samples (`le` dropped), from the text format.
fn families(text: &str) -> BTreeMap<String, BTreeSet<BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, labels) = match line.split_once('{') {
            Some((n, rest)) => (n, rest.split_once('}').unwrap().0),
            None => (line.split_whitespace().next().unwrap(), ""),
        };
        let names: BTreeSet<String> = labels
            .split("\",")
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
            .filter(|k| k != "le")
            .collect();
        out.entry(name.to_string()).or_default().insert(names);
    }
    out
}

fn set(labels: &[&str]) -> BTreeSet<String> {
    labels.iter().map(|s| s.to_string()).collect()
}

const YAML: &str =
    "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 0.065}\n  default_org:\n    - {metric: requests, window: daily, max: 100}\n";

#[tokio::test]
async fn a_real_scrape_passes_promtool_and_has_every_documented_series() {
    let mock = Mock::start(|s| {
        if s.path.contains("gemini-2.5-pro:") {
            Reply::json(fixture("gemini/generate_content_cached_tools.json"))
        } else if s.path.contains("gemini-9-unlisted:") {
            let body = String::from_utf8(fixture("gemini/generate_content.json")).unwrap();
            Reply::json(body.replace("gemini-2.5-flash", "gemini-9-unlisted"))
        } else {
            fixture_upstream(s)
        }
    })
    .await;
    let p = start_proxy(&format!("{}{YAML}", providers_yaml()), &mock.url()).await;
    // Tokens of all kinds, characters, a stream, an upstream error, an unpriced model...
    assert_eq!(
        send(&p, "/gemini/v1beta/models/gemini-2.5-pro:generateContent", "p-1", Some("acme"))
            .await
            .status,
        200
    );
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-1", Some("acme")).await.status, 200);
    assert_eq!(send(&p, GEMINI_STREAM, "p-2", None).await.status, 200);
    assert_eq!(send(&p, GEMINI_FAILING, "p-2", None).await.status, 500);
    assert_eq!(
        send(&p, "/gemini/v1beta/models/gemini-9-unlisted:generateContent", "p-3", None).await.status,
        200
    );
    // ...and a refusal: p-1 is past its $0.03 ($0.022413 + $0.0111).
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", Some("acme")).await.status, 402);
    settled_or_fail(&p.handle).await;

    let scrape = p.metrics().await;
    run_promtool(&["check", "metrics"], Some(scrape.as_bytes()));

    let fams = families(&scrape);
    let expect = [
        ("spendgate_requests_total", &["provider", "model", "status"][..]),
        ("spendgate_cost_usd_total", &["tenant", "org", "provider", "model"]),
        ("spendgate_tokens_total", &["tenant", "provider", "model", "kind"]),
        ("spendgate_characters_total", &["tenant", "provider", "model"]),
        ("spendgate_quota_rejections_total", &["tenant", "scope", "metric", "window"]),
        ("spendgate_store_errors_total", &["op"]),
        ("spendgate_config_reloads_total", &["result"]),
        ("spendgate_unpriced_total", &["provider", "model"]),
        ("spendgate_quota_usage_ratio", &["tenant", "scope", "metric", "window"]),
        ("spendgate_upstream_duration_seconds_bucket", &["provider"]),
        ("spendgate_overhead_seconds_bucket", &[]),
        ("spendgate_store_duration_seconds_bucket", &["op"]),
    ];
    for (name, labels) in expect {
        let got = fams.get(name).unwrap_or_else(|| panic!("{name} is missing from the scrape:\n{scrape}"));
        assert_eq!(got, &BTreeSet::from([set(labels)]), "{name}'s label set");
    }
    for kind in ["input", "output", "cached"] {
        assert!(
            scrape.contains(&format!(
                "spendgate_tokens_total{{kind=\"{kind}\",model=\"gemini-2.5-pro\",provider=\"gemini\",tenant=\"p-1\"}}"
            )),
            "tokens of kind {kind}:\n{scrape}"
        );
    }
    for series in [
        "spendgate_requests_total{model=\"gemini-2.5-flash\",provider=\"gemini\",status=\"402\"} 1",
        "spendgate_requests_total{model=\"gemini-2.5-flash-lite\",provider=\"gemini\",status=\"500\"} 1",
        "spendgate_quota_rejections_total{metric=\"cost_usd\",scope=\"profile\",tenant=\"p-1\",window=\"monthly\"} 1",
        "spendgate_unpriced_total{model=\"other\",provider=\"gemini\"} 1",
        "spendgate_characters_total{model=\"eleven_multilingual_v2\",provider=\"elevenlabs\",tenant=\"p-1\"} 111",
        "spendgate_cost_usd_total{model=\"eleven_multilingual_v2\",org=\"acme\",provider=\"elevenlabs\",tenant=\"p-1\"} 0.0111",
        "spendgate_upstream_duration_seconds_count{provider=\"gemini\"} 4",
        "spendgate_config_reloads_total{result=\"error\"} 0",
    ] {
        assert!(scrape.contains(series), "{series}:\n{scrape}");
    }
    // The proxy's own time is observed for every request that got an answer from it or upstream.
    assert!(scrape.contains("spendgate_overhead_seconds_count 6"), "{scrape}");

    // Every metric the Grafana dashboard and the alert rules query is exported (families
    // without samples yet are absent from a scrape, so the registry's names are the reference).
    let names = p.handle.app.metrics.names();
    let known: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    for name in fams.keys() {
        let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(known.contains(base), "{name} is scraped but not listed by Metrics::names");
    }
    for file in ["grafana/dashboards/spendgate.json", "prometheus/alerts.yaml"] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let used: BTreeSet<&str> = text
            .match_indices("spendgate_")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|m| m.len() > "spendgate_".len())
            .map(|n| n.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count"))
            .collect();
        assert!(!used.is_empty(), "{file} queries no spendgate metric");
        for m in used {
            assert!(known.contains(m), "{file} queries {m}, which the proxy does not export");
        }
    }
    p.handle.shutdown().await;
}

#[test]
fn alert_rules_and_prometheus_config_pass_promtool() {
    let rules = deploy("prometheus/alerts.yaml");
    let out = run_promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(out.contains("SUCCESS"), "{out}");
    // The rules' own unit tests: each alert fires on the series it is meant for, and only then.
    let tests = deploy("prometheus/alerts.test.yaml");
    run_promtool(&["test", "rules", tests.to_str().unwrap()], None);
    // promtool checks that the token file exists: the compose secret's path is replaced by a
    // file made here, and the rule file is found beside the copy.
    let text = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
    let secret = "/run/secrets/spendgate_admin_token";
    assert!(text.contains(secret), "Prometheus sends the admin token");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    std::fs::copy(&rules, dir.path().join("alerts.yaml")).unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, text.replace(secret, token.to_str().unwrap())).unwrap();
    run_promtool(&["check", "config", config.to_str().unwrap()], None);
}
