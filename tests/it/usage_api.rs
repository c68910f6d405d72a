//! The usage API after real traffic through the proxy: every number equals the exact cost of
//! that traffic (EXPECTED.md), on every store backend listed in `STORES`.

use crate::common::ops::*;
use crate::common::*;
use chrono::{DateTime, Utc};
use serde_json::Value;
use spendgate::domain::window::Clock;

/// The store section of each run. `{unique}` becomes a name unique to the run (for a key
/// prefix on a shared server). Another backend is one more line here.
const STORES: &[(&str, &str)] = &[("memory", "store:\n  backend: memory\n")];

fn yaml(store: &str) -> String {
    format!(
        "{store}{}limits:\n  default_profile:\n    - {{metric: cost_usd, window: monthly, max: 1}}\n    - {{metric: requests, window: daily, max: 100}}\n  default_org:\n    - {{metric: cost_usd, window: monthly, max: 50, alert_at: 0.5}}\n  profiles:\n    p-named:\n      - {{metric: characters, window: daily, max: 5000}}\n  orgs:\n    acme:\n      - {{metric: tokens, window: monthly, max: 100000}}\n      - {{metric: requests, window: daily, max: 10, match: {{provider: gemini, model: \"gemini-2.5-*\"}}}}\n",
        providers_yaml()
    )
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Nano-dollars as the API's dollars: equal to the micro-dollar (and the exact integer too).
fn assert_cost(v: &Value, nanos: i64, what: &str) {
    assert_eq!(v["cost_nanos"].as_i64(), Some(nanos), "{what}: cost_nanos in {v}");
    let usd = v["cost_usd"].as_f64().unwrap_or_else(|| panic!("{what}: no cost_usd in {v}"));
    assert!(
        (usd * 1e6).round() == (nanos as f64 / 1e3).round(),
        "{what}: cost_usd {usd} is not {nanos} nano-dollars to the micro-dollar"
    );
}

fn totals(v: &Value, requests: i64, nanos: i64, input: i64, output: i64, chars: i64, what: &str) {
    assert_eq!(v["requests"], requests, "{what}: {v}");
    assert_cost(v, nanos, what);
    assert_eq!(v["input_tokens"], input, "{what}: {v}");
    assert_eq!(v["output_tokens"], output, "{what}: {v}");
    assert_eq!(v["characters"], chars, "{what}: {v}");
}

fn unique() -> String {
    format!("t{}-{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0))
}

#[tokio::test]
async fn usage_api_equals_the_cost_of_real_traffic() {
    for (name, store) in STORES {
        usage_api_on(name, &store.replace("{unique}", &unique())).await;
    }
    // The same traffic and the same numbers on a real redis-server.
    let redis = crate::common::redis::RedisServer::start();
    let store = format!("store:\n  backend: redis\n  url: \"{}\"\n  key_prefix: \"{}\"\n", redis.url(), unique());
    usage_api_on("redis", &store).await;
}

async fn usage_api_on(store_name: &str, store: &str) {
    let mock = Mock::start(fixture_upstream).await;
    // Ten days ago, then "now", in the middle of a month.
    let clock = Clock::fixed(at("2026-11-12T10:00:00Z"));
    let p = start_proxy_with_clock(&yaml(store), &mock.url(), clock.clone()).await;

    assert_eq!(send(&p, GEMINI_FLASH, "p-1", Some("acme")).await.status, 200);
    settled_or_fail(&p.handle).await;
    clock.set(at("2026-11-22T10:00:00Z"));
    for _ in 0..2 {
        assert_eq!(send(&p, GEMINI_FLASH, "p-1", Some("acme")).await.status, 200);
    }
    let tts = send(&p, ELEVENLABS_TTS, "p-1", Some("acme")).await;
    assert_eq!(tts.status, 200);
    assert_eq!(send(&p, GEMINI_STREAM, "p-2", None).await.status, 200);
    assert_eq!(send(&p, GEMINI_FAILING, "p-2", None).await.status, 500);
    settled_or_fail(&p.handle).await;

    let today = 2 * GEMINI_FLASH_NANOS + ELEVENLABS_TTS_NANOS;
    let month = today + GEMINI_FLASH_NANOS;
    // The store's own counter agrees with what the API will say.
    assert_eq!(monthly_cost(&p, "p-1").await, month, "{store_name}");

    // p-1 over 7 days: today's four requests only.
    let r = admin_get(&p, "/v1/profiles/p-1/usage?range=7d", None).await;
    assert_eq!(r.status, 200, "{store_name}: {}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["scope"], "profile");
    assert_eq!(v["id"], "p-1");
    assert_eq!(v["range"], "7d");
    totals(&v["totals"], 3, today, 48, 1602, 111, "p-1 7d totals");
    totals(&v["today"], 3, today, 48, 1602, 111, "p-1 today");
    // The month reaches past the 7-day range.
    totals(&v["month"], 4, month, 72, 2403, 111, "p-1 month");
    totals(&v["by_provider"]["gemini"], 2, 2 * GEMINI_FLASH_NANOS, 48, 1602, 0, "p-1 gemini");
    totals(&v["by_provider"]["elevenlabs"], 1, ELEVENLABS_TTS_NANOS, 0, 0, 111, "p-1 elevenlabs");
    totals(&v["by_model"]["gemini-2.5-flash"], 2, 2 * GEMINI_FLASH_NANOS, 48, 1602, 0, "p-1 flash");
    totals(&v["by_model"]["eleven_multilingual_v2"], 1, ELEVENLABS_TTS_NANOS, 0, 0, 111, "p-1 tts model");
    assert_eq!(v["by_provider"].as_object().unwrap().len(), 2);

    // Limits: the default profile list, current from the counters.
    let limits = v["limits"].as_array().unwrap();
    assert_eq!(limits.len(), 2, "{limits:?}");
    let cost = &limits[0];
    assert_eq!(cost["metric"], "cost_usd");
    assert_eq!(cost["window"], "monthly");
    assert_eq!(cost["max"], 1.0);
    assert!((cost["current"].as_f64().unwrap() - month as f64 / 1e9).abs() < 1e-9, "{cost}");
    assert!((cost["ratio"].as_f64().unwrap() - month as f64 / 1e9).abs() < 1e-9, "{cost}");
    assert!((cost["remaining"].as_f64().unwrap() - (1.0 - month as f64 / 1e9)).abs() < 1e-9, "{cost}");
    assert_eq!(cost["alert_at"], 0.8);
    assert_eq!(cost["enabled"], true);
    assert_eq!(cost["resets_at"], "2026-12-01T00:00:00Z");
    let reqs = &limits[1];
    assert_eq!((reqs["metric"].as_str(), reqs["window"].as_str()), (Some("requests"), Some("daily")));
    assert_eq!(reqs["current"], 3.0);
    assert_eq!(reqs["max"], 100.0);
    assert_eq!(reqs["remaining"], 97.0);
    assert_eq!(reqs["resets_at"], "2026-11-23T00:00:00Z");

    // Recent, newest first, with the paths the app used (after the prefix).
    let recent = v["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 4);
    assert_eq!(recent[0]["provider"], "elevenlabs");
    assert_eq!(recent[0]["path"], "/v1/text-to-speech/v1d");
    assert_eq!(recent[0]["status"], 200);
    assert_eq!(recent[0]["characters"], 111);
    assert_cost(&recent[0], ELEVENLABS_TTS_NANOS, "recent tts");
    assert_eq!(recent[1]["model"], "gemini-2.5-flash");
    assert_eq!(recent[1]["input_tokens"], 24);
    assert_eq!(recent[1]["output_tokens"], 801);
    assert_cost(&recent[1], GEMINI_FLASH_NANOS, "recent flash");
    assert_eq!(recent[3]["at"], "2026-11-12T10:00:00.000Z");

    // 30 days and `all` include the older request; the default range is 30 days.
    for q in ["?range=30d", "?range=90d", "?range=all", ""] {
        let v = admin_get(&p, &format!("/v1/profiles/p-1/usage{q}"), None).await.json();
        totals(&v["totals"], 4, month, 72, 2403, 111, &format!("p-1 {q}"));
        totals(&v["by_provider"]["gemini"], 3, 3 * GEMINI_FLASH_NANOS, 72, 2403, 0, &format!("p-1 gemini {q}"));
    }

    // The daily points of a range: every day, oldest first, zero where nothing happened.
    let v = admin_get(&p, "/v1/profiles/p-1/usage?range=30d", None).await.json();
    let daily = v["daily"].as_array().unwrap_or_else(|| panic!("{store_name}: no daily in {v}"));
    assert_eq!(daily.len(), 30, "{store_name}");
    assert_eq!(
        (daily[0]["date"].as_str(), daily[29]["date"].as_str()),
        (Some("2026-10-24"), Some("2026-11-22"))
    );
    for d in daily {
        match d["date"].as_str().unwrap() {
            "2026-11-12" => totals(d, 1, GEMINI_FLASH_NANOS, 24, 801, 0, "p-1 on the 12th"),
            "2026-11-22" => totals(d, 3, today, 48, 1602, 111, "p-1 on the 22nd"),
            other => totals(d, 0, 0, 0, 0, 0, other),
        }
    }
    // The current calendar month.
    let v = admin_get(&p, "/v1/profiles/p-1/usage?range=month", None).await.json();
    assert_eq!(
        (v["range"].as_str(), v["from"].as_str(), v["to"].as_str()),
        (Some("month"), Some("2026-11-01"), Some("2026-11-22"))
    );
    assert_eq!(v["daily"].as_array().unwrap().len(), 22);
    totals(&v["totals"], 4, month, 72, 2403, 111, "p-1 month range");

    // The org sees what its profiles did; its match limit counts only what matched.
    let v = admin_get(&p, "/v1/orgs/acme/usage?range=30d", None).await.json();
    assert_eq!(v["scope"], "org");
    totals(&v["totals"], 4, month, 72, 2403, 111, "acme");
    let limits = v["limits"].as_array().unwrap();
    assert_eq!(limits.len(), 2, "acme's own list replaces the default");
    assert_eq!(limits[0]["metric"], "tokens");
    assert_eq!(limits[0]["current"], (72 + 2403) as f64);
    assert_eq!(limits[1]["metric"], "requests");
    assert_eq!(limits[1]["current"], 2.0, "today's gemini-2.5-* requests only: {}", limits[1]);
    assert_eq!(limits[1]["match"], "provider gemini, model gemini-2.5-*");

    // p-2: a stream and a failed call (no usage, no cost, still a request).
    let v = admin_get(&p, "/v1/profiles/p-2/usage", None).await.json();
    totals(&v["totals"], 2, GEMINI_STREAM_NANOS, 9, 330, 0, "p-2");
    let recent = v["recent"].as_array().unwrap();
    assert_eq!(recent[0]["status"], 500);
    assert_cost(&recent[0], 0, "failed call");
    assert_eq!(recent[1]["path"], "/v1beta/models/gemini-2.5-flash:streamGenerateContent");

    // A tenant named in the config without traffic is known, with zeros.
    let v = admin_get(&p, "/v1/profiles/p-named/usage", None).await;
    assert_eq!(v.status, 200);
    let v = v.json();
    totals(&v["totals"], 0, 0, 0, 0, 0, "p-named");
    assert_eq!(v["limits"][0]["metric"], "characters");
    assert_eq!(v["limits"][0]["current"], 0.0);
    assert_eq!(v["recent"], serde_json::json!([]));

    // Listings: every tenant with traffic or a name in the config.
    let v = admin_get(&p, "/v1/profiles", None).await.json();
    let ids: Vec<&str> = v["profiles"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["p-1", "p-2", "p-named"]);
    assert_eq!(v["total"], 3);
    let p1 = &v["profiles"][0];
    totals(&p1["today"], 3, today, 48, 1602, 111, "listing p-1 today");
    totals(&p1["month"], 4, month, 72, 2403, 111, "listing p-1 month");
    assert_eq!(p1["limits"][0]["current"].as_f64().unwrap(), month as f64 / 1e9);
    let page = admin_get(&p, "/v1/profiles?offset=1&limit=1", None).await.json();
    assert_eq!(page["profiles"].as_array().unwrap().len(), 1);
    assert_eq!(page["profiles"][0]["id"], "p-2");
    // Search, sort and page: p-1 is nearest a limit (3 of 100 daily requests), then p-2 (2).
    let ids = |v: &Value| -> Vec<String> {
        v["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let v = admin_get(&p, "/v1/profiles?sort=ratio", None).await.json();
    assert_eq!(ids(&v), ["p-1", "p-2", "p-named"], "{store_name}: {v}");
    assert_eq!((v["sort"].as_str(), v["order"].as_str()), (Some("ratio"), Some("desc")));
    assert!((v["profiles"][0]["ratio"].as_f64().unwrap() - 0.03).abs() < 1e-9, "{}", v["profiles"][0]);
    assert_eq!(v["profiles"][2]["ratio"], 0.0);
    let v = admin_get(&p, "/v1/profiles?sort=ratio&order=asc&offset=1&limit=1", None).await.json();
    assert_eq!((ids(&v), v["total"].as_u64()), (vec!["p-2".to_string()], Some(3)));
    let v = admin_get(&p, "/v1/profiles?sort=cost&order=asc", None).await.json();
    assert_eq!(ids(&v), ["p-named", "p-2", "p-1"], "{store_name}: {v}");
    let v = admin_get(&p, "/v1/profiles?sort=name&order=desc", None).await.json();
    assert_eq!(ids(&v), ["p-named", "p-2", "p-1"]);
    let v = admin_get(&p, "/v1/profiles?q=NAM&sort=cost", None).await.json();
    assert_eq!(
        (ids(&v), v["total"].as_u64(), v["known"].as_u64()),
        (vec!["p-named".to_string()], Some(1), Some(3))
    );
    assert_eq!(v["q"], "NAM");
    let v = admin_get(&p, "/v1/profiles?q=zzz", None).await.json();
    assert_eq!((v["total"].as_u64(), v["profiles"].as_array().map(Vec::len)), (Some(0), Some(0)));

    let v = admin_get(&p, "/v1/orgs", None).await.json();
    let ids: Vec<&str> = v["orgs"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["acme"]);
    totals(&v["orgs"][0]["month"], 4, month, 72, 2403, 111, "listing acme");

    // Errors are JSON.
    for (path, status, kind) in [
        ("/v1/profiles/nobody/usage", 404, "tenant_not_found"),
        ("/v1/orgs/p-1/usage", 404, "tenant_not_found"),
        ("/v1/profiles/bad%20id/usage", 404, "tenant_not_found"),
        ("/v1/profiles/p-1/usage?range=8w", 400, "bad_range"),
        ("/v1/profiles/p-1/usage?range=0d", 400, "bad_range"),
        ("/v1/profiles/p-1/usage?range=", 400, "bad_range"),
        ("/v1/profiles?limit=x", 400, "bad_request"),
        ("/v1/profiles?sort=spend", 400, "bad_request"),
        ("/v1/profiles?order=up", 400, "bad_request"),
        ("/v1/nothing", 404, "not_found"),
    ] {
        let r = admin_get(&p, path, None).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.headers["content-type"], "application/json", "{path}");
        assert_eq!(r.json()["error"]["type"], kind, "{path}");
    }
    let r = admin_post(&p, "/v1/profiles", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"]["type"], "method_not_allowed");

    p.handle.shutdown().await;
}
