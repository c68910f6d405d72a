//! Limits managed live through the admin API: overrides layered over the YAML (kept across a
//! reload and a restart, applied by every replica within a second), top-ups and resets that
//! never touch counters, the audit log, scoped tokens, and strict input.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::Method;
use serde_json::{json, Value};
use spendgate::domain::window::Clock;

use crate::common::env::{TOKEN_ACME, TOKEN_BETA, TOKEN_OPS, TOKEN_VIEWER};
use crate::common::ops::*;
use crate::common::process::Spendgate;
use crate::common::redis::{tts_body, tts_reply, RedisServer};
use crate::common::*;

/// A JSON request on the admin port.
async fn admin(p: &Proxy, method: Method, path: &str, token: Option<&str>, body: Value) -> Got {
    admin_at(&p.client, &p.admin_url(path), method, token, body).await
}

async fn admin_at(client: &TestClient, url: &str, method: Method, token: Option<&str>, body: Value) -> Got {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let bytes = if body.is_null() { Vec::new() } else { serde_json::to_vec(&body).unwrap() };
    client.request(method, url, &headers, bytes).await
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const TOKENS: &str = "  tokens:\n    - {name: ops, env: SPENDGATE_TEST_TOKEN_OPS, role: admin}\n    - {name: ro, env: SPENDGATE_TEST_TOKEN_VIEWER, role: viewer}\n    - {name: acme, env: SPENDGATE_TEST_TOKEN_ACME, role: \"org:acme\", write_profiles: true}\n    - {name: beta, env: SPENDGATE_TEST_TOKEN_BETA, role: \"org:beta\"}\n    - {name: gone, env: SPENDGATE_TEST_TOKEN_NEVER_SET, role: admin}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_applies_at_once_and_survives_a_reload_and_a_restart_on_the_embedded_store() {
    let mock = Mock::start(fixture_upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = |max: u32| {
        format!(
            "{}store:\n  backend: memory\n  path: \"{}\"\nlimits:\n  default_profile:\n    - {{metric: requests, window: daily, max: {max}}}\n",
            providers_yaml(),
            dir.path().join("spendgate.db").display()
        )
    };
    let path = write_config(dir.path(), &yaml(100), &mock.url());
    let p = start_proxy_file(&path, Clock::system()).await;
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-1", None).await.status, 200);

    let put = json!({"limits": [{"metric": "requests", "window": "daily", "max": 1}], "reason": "ticket 4411"});
    let r = admin(&p, Method::PUT, "/v1/profiles/p-1/limits", None, put).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["source"], "override");
    assert_eq!(v["limits"][0]["source"], "override");
    assert_eq!(v["limits"][0]["max"], 1.0);
    assert_eq!(v["limits"][0]["alert_at"], 0.8, "defaults as in the YAML");
    assert_eq!(v["limits"][0]["current"], 1.0, "counters are not touched");
    assert_eq!(v["yaml"][0]["max"], 100.0);
    // Applied at once on the replica that wrote it; other tenants keep the YAML.
    let refused = send(&p, ELEVENLABS_TTS, "p-1", None).await;
    assert_eq!(refused.status, 402);
    assert_eq!(refused.json()["error"]["limit"]["max"], 1.0);
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-2", None).await.status, 200);
    let usage = admin_get(&p, "/v1/profiles/p-1/usage", None).await.json();
    assert_eq!(usage["limits"][0]["source"], "override", "{usage}");

    // A reload that changes the YAML keeps the override, and is audited.
    std::fs::write(&path, complete_yaml(&yaml(50), &mock.url())).unwrap();
    assert_eq!(admin_post(&p, "/v1/reload", None).await.status, 200);
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-1", None).await.status, 402);
    let v = admin_get(&p, "/v1/profiles/p-2/limits", None).await.json();
    assert_eq!((v["source"].as_str(), v["limits"][0]["max"].as_f64()), (Some("default_profile"), Some(50.0)));
    p.handle.shutdown().await;

    // A restart keeps it.
    let p = start_proxy_file(&path, Clock::system()).await;
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-1", None).await.status, 402);
    let v = admin_get(&p, "/v1/profiles/p-1/limits", None).await.json();
    assert_eq!(v["override"]["reason"], "ticket 4411", "{v}");
    assert_eq!(v["override"]["token"], "anonymous");

    // `spendgate check` and `spendgate usage` show it, read from the same files.
    let cli = |args: &[&str]| {
        let out = crate::common::process::output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_spendgate")).args(args).env("RUST_LOG", "error"),
            None,
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let config = path.to_str().unwrap();
    let check = cli(&["check", "--config", config]);
    assert!(check.contains("run-time overrides in the store"), "{check}");
    assert!(check.contains("profile p-1") && check.contains("max 1 (override)"), "{check}");
    let usage = cli(&["usage", "--config", config, "--profile", "p-1"]);
    let row = usage.lines().find(|l| l.starts_with("daily requests")).unwrap_or_else(|| panic!("{usage}"));
    assert!(row.ends_with("override"), "{usage}");
    assert!(row.split_whitespace().nth(3) == Some("1"), "max 1: {usage}");

    // Removed, the YAML applies again.
    let r = admin(&p, Method::DELETE, "/v1/profiles/p-1/limits", None, json!({"reason": "resolved"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["source"], "default_profile");
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-1", None).await.status, 200);
    let r = admin(&p, Method::DELETE, "/v1/profiles/p-1/limits", None, Value::Null).await;
    assert_eq!(r.status, 404, "nothing left to remove");

    // The audit log: newest first, filtered by tenant, paged.
    let log = admin_get(&p, "/v1/audit?tenant=p-1", None).await.json();
    assert_eq!(log["total"], 2, "{log}");
    let e = &log["entries"];
    assert_eq!(
        (e[0]["action"].as_str(), e[1]["action"].as_str()),
        (Some("override_removed"), Some("override_set"))
    );
    assert_eq!(e[0]["reason"], "resolved");
    assert_eq!(e[1]["old"], Value::Null);
    assert_eq!(e[1]["new"][0]["max"], 1.0);
    assert_eq!(e[0]["old"][0]["max"], 1.0);
    assert_eq!(
        (e[1]["scope"].as_str(), e[1]["id"].as_str(), e[1]["token"].as_str()),
        (Some("profile"), Some("p-1"), Some("anonymous"))
    );
    let all = admin_get(&p, "/v1/audit?limit=1&offset=0", None).await.json();
    assert_eq!(all["entries"].as_array().unwrap().len(), 1);
    let all = admin_get(&p, "/v1/audit", None).await.json();
    let reload = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "config_reload")
        .expect("the reload is audited");
    assert_eq!(reload["old"]["default_profile"][0]["max"], 100.0);
    assert_eq!(reload["new"]["default_profile"][0]["max"], 50.0);
    p.handle.shutdown().await;
}

/// $2.22 a call: 111 characters at $20 per 1,000.
const DEAR: &str = "pricing:\n  elevenlabs:\n    \"eleven_multilingual_v2\": {per_1k_chars: 20}\n";
const CALL: f64 = 2.22;

/// Calls until the first refusal; returns how many were admitted and the refusal.
async fn spend_until_refused(p: &Proxy, profile: &str) -> (usize, Got) {
    for n in 0..50 {
        let r = send(p, ELEVENLABS_TTS, profile, None).await;
        if r.status != 200 {
            return (n, r);
        }
    }
    panic!("never refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_lasts_one_window_and_a_reset_starts_the_window_afresh_keeping_the_history() {
    let mock = Mock::start(fixture_upstream).await;
    let clock = Clock::fixed(at("2026-11-10T12:00:00Z"));
    let yaml = format!(
        "{}{DEAR}limits:\n  default_profile:\n    - {{metric: cost_usd, window: monthly, max: 10}}\n",
        providers_yaml()
    );
    let p = start_proxy_with_clock(&yaml, &mock.url(), clock.clone()).await;

    // $10 used up: 5 calls ($11.10, the last one crossing the max), then 402.
    let (n, r) = spend_until_refused(&p, "p-1").await;
    assert_eq!((n, r.status.as_u16()), (5, 402));
    assert_eq!(r.json()["error"]["limit"]["max"], 10.0);

    // A $5 top-up: admitted again up to $15 (two more calls: $13.32, $15.54), then 402.
    let grant = json!({"metric": "cost_usd", "window": "monthly", "amount": 5, "reason": "support call"});
    let r = admin(&p, Method::POST, "/v1/profiles/p-1/grants", None, grant).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let l = &v["limits"][0];
    assert_eq!((l["max"].as_f64(), l["effective_max"].as_f64()), (Some(10.0), Some(15.0)), "{v}");
    assert_eq!(l["grants"][0]["amount"], 5.0);
    assert_eq!(l["grants"][0]["expires_at"], "2026-12-01T00:00:00Z");
    let (n, r) = spend_until_refused(&p, "p-1").await;
    assert_eq!((n, r.status.as_u16()), (2, 402));
    let body = r.json();
    assert_eq!(body["error"]["limit"]["max"], 15.0);
    assert!((body["error"]["current"].as_f64().unwrap() - 7.0 * CALL).abs() < 1e-6, "{body}");
    assert_eq!(monthly_cost(&p, "p-1").await, usd("15.54"), "the counter is the spend, untouched");

    // The next month: the top-up is gone.
    clock.set(at("2026-12-01T00:00:05Z"));
    let v = admin_get(&p, "/v1/profiles/p-1/limits", None).await.json();
    assert_eq!(v["limits"][0]["effective_max"], 10.0, "{v}");
    assert_eq!(v["grants"], json!([]));
    let (n, _) = spend_until_refused(&p, "p-1").await;
    assert_eq!(n, 5, "back to the $10 limit");

    // A reset: the window starts from 0 again, the counter and the history keep the spend.
    clock.set(at("2026-12-02T09:00:00Z"));
    let r = admin(
        &p,
        Method::POST,
        "/v1/profiles/p-1/reset",
        None,
        json!({"metric": "cost_usd", "window": "monthly", "reason": "billing error"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let l = &r.json()["limits"][0];
    assert_eq!(l["current"], 0.0);
    assert_eq!(l["reset"]["reason"], "billing error");
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-1", None).await.status, 200);
    settled_or_fail(&p.handle).await;
    let usage = admin_get(&p, "/v1/profiles/p-1/usage?range=7d", None).await.json();
    assert!(
        (usage["limits"][0]["current"].as_f64().unwrap() - CALL).abs() < 1e-6,
        "usage since the reset: {usage}"
    );
    assert_eq!(usage["month"]["requests"], 6, "the history keeps the spend before the reset: {usage}");
    assert_eq!(usage["month"]["cost_nanos"], usd("13.32"));
    assert_eq!(monthly_cost(&p, "p-1").await, usd("13.32"));
    let (n, _) = spend_until_refused(&p, "p-1").await;
    assert_eq!(n, 4, "$10 counted from the reset: $2.22 + 4 x $2.22 crosses it");

    let log = admin_get(&p, "/v1/audit?tenant=p-1&scope=profile", None).await.json();
    let actions: Vec<&str> = log["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["reset", "grant"]);
    assert_eq!(log["entries"][0]["new"]["used_before"]["cost"], 11.1);
    // A top-up or reset needs a limit of that metric and window.
    let r = admin(
        &p,
        Method::POST,
        "/v1/profiles/p-1/grants",
        None,
        json!({"metric": "tokens", "window": "daily", "amount": 5, "reason": "x"}),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.json()["error"]["field"].as_str()), (400, Some("metric")));
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_whole_and_naming_the_field() {
    let mock = Mock::start(fixture_upstream).await;
    let yaml = format!(
        "{}limits:\n  default_profile:\n    - {{metric: requests, window: daily, max: 5}}\n",
        providers_yaml()
    );
    let p = start_proxy(&yaml, &mock.url()).await;
    let good = json!({"metric": "requests", "window": "daily", "max": 1});
    let cases = [
        (
            json!({"limits": [good, {"metric": "dollars", "window": "daily", "max": 1}]}),
            "limits[1].metric",
        ),
        (json!({"limits": [{"metric": "requests", "window": "weekly", "max": 1}]}), "limits[0].window"),
        (json!({"limits": [{"metric": "requests", "window": "daily", "max": 0}]}), "limits[0].max"),
        (
            json!({"limits": [{"metric": "requests", "window": "daily", "max": 1, "alert_at": 1.01}]}),
            "limits[0].alert_at",
        ),
        (
            json!({"limits": [{"metric": "requests", "window": "daily", "max": 1, "alert_at": 0}]}),
            "limits[0].alert_at",
        ),
        (
            json!({"limits": [{"metric": "requests", "window": "daily", "max": 1, "mode": "loud"}]}),
            "limits[0].mode",
        ),
        (
            json!({"limits": [{"metric": "requests", "window": "daily", "max": 1, "match": {"provider": "nope"}}]}),
            "limits[0].match.provider",
        ),
        (json!({"limits": [good, good]}), "limits[1]"),
        (json!({"limits": [], "colour": "red"}), "colour"),
        (json!({"reason": "no list"}), "limits"),
    ];
    for (body, field) in cases {
        let r = admin(&p, Method::PUT, "/v1/profiles/p-1/limits", None, body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        let e = r.json();
        assert_eq!(e["error"]["type"], "invalid_request");
        assert_eq!(e["error"]["field"], field, "{body}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().starts_with(field), "{e}");
    }
    let r = admin(&p, Method::PUT, "/v1/profiles/bad%20id/limits", None, json!({"limits": []})).await;
    assert_eq!((r.status.as_u16(), r.json()["error"]["field"].as_str()), (400, Some("id")));
    let r = admin(
        &p,
        Method::POST,
        "/v1/profiles/p-1/grants",
        None,
        json!({"metric": "requests", "window": "daily", "amount": 2}),
    )
    .await;
    assert_eq!(r.json()["error"]["field"], "reason");
    let r = admin(
        &p,
        Method::POST,
        "/v1/profiles/p-1/grants",
        None,
        json!({"metric": "requests", "window": "daily", "amount": -2, "reason": "x"}),
    )
    .await;
    assert_eq!(r.json()["error"]["field"], "amount");
    let r = admin(&p, Method::GET, "/v1/audit?scope=team", None, Value::Null).await;
    assert_eq!(r.json()["error"]["field"], "scope");
    // Nothing was applied.
    assert_eq!(admin_get(&p, "/v1/profiles/p-1/limits", None).await.json()["source"], "default_profile");
    assert_eq!(admin_get(&p, "/v1/audit", None).await.json()["total"], 0);
    let r = admin(&p, Method::POST, "/v1/profiles/p-1/limits", None, json!({})).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD, PUT, DELETE");

    // Concurrent writes to one tenant: each is applied whole, one after the other.
    let puts = (1..=12).map(|i| {
        let list = json!({"limits": [{"metric": "requests", "window": "daily", "max": i}, {"metric": "tokens", "window": "monthly", "max": i * 1000}]});
        admin(&p, Method::PUT, "/v1/profiles/p-race/limits", None, list)
    });
    for r in futures_util::future::join_all(puts).await {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let v = admin_get(&p, "/v1/profiles/p-race/limits", None).await.json();
    let (req, tok) = (v["limits"][0]["max"].as_f64().unwrap(), v["limits"][1]["max"].as_f64().unwrap());
    assert_eq!(tok, req * 1000.0, "one write whole, never a mix: {v}");
    let log = admin_get(&p, "/v1/audit?tenant=p-race", None).await.json();
    assert_eq!(log["total"], 12);
    assert_eq!(log["entries"][0]["new"][0]["max"], req, "the last write recorded is the one in force");
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_have_roles_and_org_tokens_see_only_their_org() {
    let mock = Mock::start(fixture_upstream).await;
    let yaml = format!(
        "{}admin:\n  listen: \"127.0.0.1:0\"\n  token_env: SPENDGATE_TEST_ADMIN_TOKEN_GUARD\n{TOKENS}tenant:\n  orgs: {{acme: [p-a1], beta: [p-b1]}}\nlimits:\n  default_profile:\n    - {{metric: cost_usd, window: monthly, max: 5}}\n  default_org:\n    - {{metric: cost_usd, window: monthly, max: 20}}\n",
        providers_yaml()
    );
    let p = start_proxy(&yaml, &mock.url()).await;
    for (profile, org) in [("p-a1", "acme"), ("p-a2", "acme"), ("p-b1", "beta")] {
        assert_eq!(send(&p, ELEVENLABS_TTS, profile, Some(org)).await.status, 200);
    }
    settled_or_fail(&p.handle).await;
    let (ops, ro, acme, beta) = (Some(TOKEN_OPS.1), Some(TOKEN_VIEWER.1), Some(TOKEN_ACME.1), Some(TOKEN_BETA.1));
    let list = json!({"limits": [{"metric": "cost_usd", "window": "monthly", "max": 3}]});

    // Who am I.
    assert_eq!(admin_get(&p, "/v1/me", acme).await.json()["role"], "org:acme");
    assert_eq!(
        admin_get(&p, "/v1/me", Some(crate::common::env::ADMIN_TOKEN_GUARD.1)).await.json()["name"],
        "admin"
    );

    // A viewer reads everything and writes nothing.
    assert_eq!(admin_get(&p, "/v1/profiles/p-b1/limits", ro).await.status, 200);
    assert_eq!(admin_get(&p, "/metrics", ro).await.status, 200);
    for (method, path, body) in [
        (Method::PUT, "/v1/profiles/p-a1/limits", list.clone()),
        (Method::DELETE, "/v1/profiles/p-a1/limits", Value::Null),
        (
            Method::POST,
            "/v1/profiles/p-a1/grants",
            json!({"metric": "cost_usd", "window": "monthly", "amount": 1, "reason": "x"}),
        ),
        (
            Method::POST,
            "/v1/profiles/p-a1/reset",
            json!({"metric": "cost_usd", "window": "monthly", "reason": "x"}),
        ),
        (Method::POST, "/v1/reload", Value::Null),
    ] {
        let r = admin(&p, method.clone(), path, ro, body.clone()).await;
        assert_eq!(r.status, 403, "viewer {method} {path}");
        assert_eq!(r.json()["error"]["type"], "forbidden");
        // A write without the role is refused before its input is even read.
        let r = admin(&p, method.clone(), path, beta, json!({"bogus": 1})).await;
        assert_eq!(r.status, 403, "org token without write_profiles: {method} {path}");
    }

    // An org token sees its org and its profiles only.
    let profiles = admin_get(&p, "/v1/profiles", acme).await.json();
    let ids: Vec<&str> = profiles["profiles"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["p-a1", "p-a2"], "{profiles}");
    let orgs = admin_get(&p, "/v1/orgs", acme).await.json();
    assert_eq!(orgs["orgs"].as_array().unwrap().len(), 1);
    assert_eq!(admin_get(&p, "/v1/profiles/p-a2/usage", acme).await.status, 200);
    assert_eq!(admin_get(&p, "/v1/orgs/acme/limits", acme).await.status, 200);
    assert_eq!(admin_get(&p, "/v1/profiles/p-b1/usage", acme).await.status, 403);
    assert_eq!(admin_get(&p, "/v1/orgs/beta/limits", acme).await.status, 403);
    assert_eq!(admin_get(&p, "/metrics", acme).await.status, 403);
    assert_eq!(admin_get(&p, "/v1/profiles", beta).await.json()["total"], 1);

    // With write_profiles it sets its profiles' limits, never above the org's own.
    let r = admin(&p, Method::PUT, "/v1/profiles/p-a2/limits", acme, list.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let above = json!({"limits": [{"metric": "cost_usd", "window": "monthly", "max": 25}]});
    let r = admin(&p, Method::PUT, "/v1/profiles/p-a2/limits", acme, above.clone()).await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["error"]["message"].as_str().unwrap().contains("above org `acme`'s own"),
        "{}",
        r.json()
    );
    let unbounded = json!({"limits": [{"metric": "requests", "window": "daily", "max": 5}]});
    assert_eq!(admin(&p, Method::PUT, "/v1/profiles/p-a2/limits", acme, unbounded).await.status, 403);
    assert_eq!(admin(&p, Method::PUT, "/v1/profiles/p-b1/limits", acme, list.clone()).await.status, 403);
    assert_eq!(admin(&p, Method::PUT, "/v1/orgs/acme/limits", acme, list.clone()).await.status, 403);
    assert_eq!(
        admin(
            &p,
            Method::POST,
            "/v1/profiles/p-a2/grants",
            acme,
            json!({"metric": "cost_usd", "window": "monthly", "amount": 1, "reason": "x"})
        )
        .await
        .status,
        403
    );
    // The admin may go above (the org's limit still holds for the org as a whole).
    assert_eq!(admin(&p, Method::PUT, "/v1/profiles/p-b1/limits", ops, above).await.status, 200);

    // The audit log names the token; an org token sees its own tenants' entries only.
    let log = admin_get(&p, "/v1/audit", ops).await.json();
    assert_eq!(log["total"], 2);
    assert_eq!(
        (log["entries"][0]["token"].as_str(), log["entries"][1]["token"].as_str()),
        (Some("ops"), Some("acme"))
    );
    let log = admin_get(&p, "/v1/audit", acme).await.json();
    assert_eq!(log["total"], 1, "{log}");
    assert_eq!(log["entries"][0]["id"], "p-a2");
    let log = admin_get(&p, "/v1/audit", beta).await.json();
    assert_eq!((log["total"].as_i64(), log["entries"][0]["id"].as_str()), (Some(1), Some("p-b1")), "{log}");

    // Wrong and missing tokens, and the disabled one (its variable is unset).
    assert_eq!(admin_get(&p, "/v1/profiles", Some("nope")).await.status, 403);
    assert_eq!(admin_get(&p, "/v1/profiles", None).await.status, 401);
    assert_eq!(admin_get(&p, "/v1/profiles", Some("")).await.status, 403);
    p.handle.shutdown().await;
}

/// A replica's admin URL.
fn admin_url(sg: &Spendgate, path: &str) -> String {
    format!("http://{}{path}", sg.admin)
}

async fn tts(client: &TestClient, sg: &Spendgate, profile: &str) -> u16 {
    let headers = [("x-profile-id", profile), ("content-type", "application/json")];
    client
        .post(&sg.url("/elevenlabs/v1/text-to-speech/voice"), &headers, tts_body())
        .await
        .status
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_set_on_one_replica_refuses_on_the_other_within_a_second_on_redis() {
    let server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = |max: u32| {
        format!(
            "listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\n{TOKENS}providers:\n  elevenlabs: {{kind: elevenlabs, prefix: /elevenlabs, upstream: \"{}\"}}\nstore:\n  backend: redis\n  url: \"{}\"\n  key_prefix: lv\n  timeout: 2\nlimits:\n  default_profile:\n    - {{metric: requests, window: daily, max: {max}}}\n",
            mock.url(),
            server.url()
        )
    };
    let (path_a, path_b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&path_a, config(100)).unwrap();
    std::fs::write(&path_b, config(100)).unwrap();
    let env = [TOKEN_OPS, TOKEN_VIEWER];
    let start = |path: std::path::PathBuf| tokio::task::spawn_blocking(move || Spendgate::start(&path, &env));
    let (a, b) = (start(path_a.clone()).await.unwrap(), start(path_b.clone()).await.unwrap());
    let client = TestClient::new();
    assert_eq!(tts(&client, &b, "p-1").await, 200);

    let put = json!({"limits": [{"metric": "requests", "window": "daily", "max": 1}], "reason": "abuse"});
    let r = admin_at(&client, &admin_url(&a, "/v1/profiles/p-1/limits"), Method::PUT, Some(TOKEN_OPS.1), put).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let written = Instant::now();
    assert_eq!(tts(&client, &a, "p-1").await, 402, "at once on the replica that wrote it");
    loop {
        let status = tts(&client, &b, "p-1").await;
        if status == 402 {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "replica B still admits p-1 a second after the override:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(written.elapsed() < Duration::from_secs(1));
    assert_eq!(tts(&client, &b, "p-2").await, 200, "other tenants keep the YAML");
    let v = admin_at(
        &client,
        &admin_url(&b, "/v1/profiles/p-1/limits"),
        Method::GET,
        Some(TOKEN_VIEWER.1),
        Value::Null,
    )
    .await
    .json();
    assert_eq!(v["source"], "override");
    let log = admin_at(&client, &admin_url(&b, "/v1/audit?tenant=p-1"), Method::GET, Some(TOKEN_VIEWER.1), Value::Null)
        .await
        .json();
    assert_eq!(
        (log["entries"][0]["token"].as_str(), log["entries"][0]["reason"].as_str()),
        (Some("ops"), Some("abuse"))
    );

    // A YAML reload on B (the file changes; the watcher reloads it) keeps the override.
    std::fs::write(&path_b, config(50)).unwrap();
    let url = admin_url(&b, "/v1/profiles/p-2/limits");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = admin_at(&client, &url, Method::GET, Some(TOKEN_VIEWER.1), Value::Null).await.json();
        if v["limits"][0]["max"] == 50.0 {
            break;
        }
        assert!(Instant::now() < deadline, "B did not reload: {v}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tts(&client, &b, "p-1").await, 402);

    // A restart of B keeps it too: refused from the first request.
    drop(b);
    let b = start(path_b.clone()).await.unwrap();
    assert_eq!(tts(&client, &b, "p-1").await, 402, "{}", b.log());
    // Removed on B, admitted again on A within a second.
    let r = admin_at(
        &client,
        &admin_url(&b, "/v1/profiles/p-1/limits"),
        Method::DELETE,
        Some(TOKEN_OPS.1),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200);
    let removed = Instant::now();
    while tts(&client, &a, "p-1").await != 200 {
        assert!(removed.elapsed() < Duration::from_secs(1), "A still refuses p-1 a second after the removal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On Redis Cluster the control data lives in one slot (`{ctl}`): overrides, top-ups and the
/// audit log work there as on a single server, and a reset's offsets are read from the slot of
/// the tenant's counters (a profile's counters under an org live in the org's slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_managed_live_on_redis_cluster() {
    let cluster = crate::common::redis::RedisCluster::start(3);
    let mock = Mock::start(fixture_upstream).await;
    let yaml = format!(
        "{}{DEAR}store:\n  backend: redis\n  url: \"{}\"\n  cluster: true\n  key_prefix: lvc\n  timeout: 2\nlimits:\n  default_profile:\n    - {{metric: cost_usd, window: monthly, max: 10}}\n",
        providers_yaml(),
        cluster.url()
    );
    let p = start_proxy(&yaml, &mock.url()).await;
    let (n, _) = spend_until_refused(&p, "p-1").await;
    assert_eq!(n, 5);
    let put = json!({"limits": [{"metric": "cost_usd", "window": "monthly", "max": 20}]});
    assert_eq!(admin(&p, Method::PUT, "/v1/profiles/p-1/limits", None, put).await.status, 200);
    let (n, _) = spend_until_refused(&p, "p-1").await;
    assert_eq!(n, 5, "from $11.10 up to $19.98, the call that crosses $20 is the last one");
    let grant = json!({"metric": "cost_usd", "window": "monthly", "amount": 5, "reason": "top-up"});
    assert_eq!(admin(&p, Method::POST, "/v1/profiles/p-1/grants", None, grant).await.status, 200);
    assert_eq!(spend_until_refused(&p, "p-1").await.0, 2);

    // A profile under an org: its counters are in the org's slot; the reset finds them.
    for _ in 0..3 {
        assert_eq!(send(&p, ELEVENLABS_TTS, "p-2", Some("acme")).await.status, 200);
    }
    settled_or_fail(&p.handle).await;
    let reset = json!({"metric": "cost_usd", "window": "monthly", "reason": "refund"});
    let r = admin(&p, Method::POST, "/v1/profiles/p-2/reset", None, reset).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["limits"][0]["current"], 0.0);
    assert_eq!(spend_until_refused(&p, "p-2").await.0, 5, "a fresh $10 from the reset");
    let log = admin_get(&p, "/v1/audit", None).await.json();
    let actions: Vec<&str> = log["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["reset", "grant", "override_set"]);
    assert_eq!(log["entries"][0]["new"]["used_before"]["cost"], 6.66);
    p.handle.shutdown().await;
}
