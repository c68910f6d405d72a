//! The `spendgate` binary: reload on SIGHUP, the database kept on SIGTERM, and
//! `spendgate usage` reading it back as a table (and as JSON).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::ops::*;
use crate::common::process::{output_within, Spendgate};
use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_spendgate");

fn yaml(dir: &Path, max_requests: u32) -> String {
    format!(
        "{}store:\n  backend: memory\n  path: \"{}\"\nlimits:\n  default_profile:\n    - {{metric: requests, window: daily, max: {max_requests}}}\n    - {{metric: cost_usd, window: monthly, max: 1}}\n",
        providers_yaml(),
        dir.join("spendgate.db").display()
    )
}

fn usage(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = output_within(
        Command::new(BIN).arg("usage").arg("--config").arg(config).args(args),
        None,
        Duration::from_secs(60),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn post(client: &TestClient, data: SocketAddr, path: &str, profile: &str, org: Option<&str>) -> u16 {
    let body = if path.starts_with("/elevenlabs") {
        fixture("elevenlabs/tts_request.json")
    } else {
        b"{\"contents\": []}".to_vec()
    };
    let mut headers = vec![("x-profile-id", profile), ("content-type", "application/json")];
    if let Some(o) = org {
        headers.push(("x-org-id", o));
    }
    client.post(&format!("http://{data}{path}"), &headers, body).await.status.as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_usage_reads_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(fixture_upstream).await;
    let config = write_config(dir.path(), &yaml(dir.path(), 100), &mock.url());
    let mut sg = tokio::task::spawn_blocking({
        let c = config.clone();
        move || Spendgate::start(&c, &[])
    })
    .await
    .unwrap();
    let (data, admin) = (sg.data, sg.admin);
    let client = TestClient::new();
    for path in [GEMINI_FLASH, GEMINI_FLASH, ELEVENLABS_TTS] {
        assert_eq!(post(&client, data, path, "p-1", Some("acme")).await, 200);
    }

    // SIGHUP reloads (the file is unchanged, so the watcher has nothing to do)...
    let reloads = |n: u32| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let m = client.get(&format!("http://{admin}/metrics"), &[]).await;
                if String::from_utf8_lossy(&m.body).contains(&format!("spendgate_config_reloads_total{{result=\"success\"}} {n}")) {
                    return;
                }
                assert!(Instant::now() < deadline, "reload {n} was not counted");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    sg.process.signal("HUP");
    reloads(1).await;
    // ...and so does a change of the file; the new limit refuses the next request.
    std::fs::write(&config, complete_yaml(&yaml(dir.path(), 3), &mock.url())).unwrap();
    reloads(2).await;
    assert_eq!(post(&client, data, GEMINI_FLASH, "p-1", None).await, 402);

    // SIGTERM drains and commits everything.
    sg.process.signal("TERM");
    let (status, log) = tokio::task::spawn_blocking(move || (sg.process.wait_within(Duration::from_secs(30)), sg.log()))
        .await
        .unwrap();
    assert!(status.success(), "{status}\n{log}");
    assert!(dir.path().join("spendgate.db").is_file());

    let cfg = config.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || usage(&cfg, &["--profile", "p-1", "--range", "7d"]))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("profile p-1  (range 7d,"), "{out}");
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line:\n{out}"))
            .to_string()
    };
    let words = |l: String| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        words(line("daily requests")),
        [
            "daily",
            "requests",
            "3",
            "3",
            "100.0%",
            "80%",
            "0",
            "EXCEEDED",
            &words(line("daily requests"))[8],
            "default_profile"
        ]
    );
    assert_eq!(&words(line("monthly cost_usd"))[2..8], ["$0.0151", "$1.00", "1.5%", "80%", "$0.9849", "ok"]);
    assert_eq!(words(line("today")), ["today", "3", "$0.0151", "48", "1602", "0", "111"]);
    assert_eq!(words(line("gemini ")), ["gemini", "2", "$0.004019", "48", "1602", "0", "0"]);
    assert!(out.contains("/v1/text-to-speech/v1d"), "{out}");

    let cfg = config.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || usage(&cfg, &[])).await.unwrap();
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("p-1 ") && l.contains("$0.0151") && l.contains("daily requests 100.0%")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("acme ")), "{out}");

    let cfg = config.clone();
    let (ok, out, _) = tokio::task::spawn_blocking(move || usage(&cfg, &["--org", "acme", "--json"])).await.unwrap();
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["totals"]["cost_nanos"], 2 * GEMINI_FLASH_NANOS + ELEVENLABS_TTS_NANOS);

    let cfg = config.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || usage(&cfg, &["--profile", "nobody"])).await.unwrap();
    assert!(!ok);
    assert!(err.contains("nobody"), "{err}");
    let (ok, _, err) = tokio::task::spawn_blocking(move || usage(&config, &["--range", "3w"])).await.unwrap();
    assert!(!ok);
    assert!(err.contains("range"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_breaks_spend_down_by_tag_provider_or_model() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(fixture_upstream).await;
    let config = write_config(dir.path(), &yaml(dir.path(), 100), &mock.url());
    let p = start_proxy_file(&config, spendgate::domain::window::Clock::system()).await;
    let send_tagged = |path: &'static str, profile: &'static str, tag: &'static str| {
        let p = &p;
        async move {
            let body = if path.starts_with("/elevenlabs") {
                fixture("elevenlabs/tts_request.json")
            } else {
                b"{\"contents\": []}".to_vec()
            };
            let h = [("x-profile-id", profile), ("content-type", "application/json"), ("x-spendgate-tag", tag)];
            p.client.post(&p.url(path), &h, body).await.status.as_u16()
        }
    };
    assert_eq!(send_tagged(GEMINI_FLASH, "p-1", "tool=script-writer").await, 200);
    assert_eq!(send_tagged(ELEVENLABS_TTS, "p-1", "tool=voice").await, 200);
    assert_eq!(send_tagged(ELEVENLABS_TTS, "p-2", "tool=voice").await, 200);
    p.handle.shutdown().await;

    let run = |args: &'static [&'static str]| {
        let cfg = config.clone();
        tokio::task::spawn_blocking(move || usage(&cfg, args))
    };
    let (ok, out, err) = run(&["--profile", "p-1", "--by", "tag"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("profile p-1  (range 30d)"), "{out}");
    let rows: Vec<Vec<&str>> = out.lines().skip(3).map(|l| l.split_whitespace().collect()).collect();
    // The largest cost first.
    assert_eq!(rows[0][..3], ["tool=voice", "1", "$0.0111"], "{out}");
    assert_eq!(rows[1][..3], ["tool=script-writer", "1", "$0.002010"], "{out}");

    // Without a tenant: every profile, summed.
    let (ok, out, err) = run(&["--by", "tag", "--range", "7d", "--json"]).await.unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["by"], "tag");
    assert_eq!(v["range"], "7d");
    assert_eq!(v["breakdown"]["tool=voice"]["requests"], 2);
    assert_eq!(v["breakdown"]["tool=voice"]["cost_nanos"], 2 * ELEVENLABS_TTS_NANOS);

    let (ok, out, err) = run(&["--by", "provider"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("all profiles  (range 30d)"), "{out}");
    assert!(out.lines().any(|l| l.split_whitespace().take(2).eq(["elevenlabs", "2"])), "{out}");
    assert!(out.lines().any(|l| l.split_whitespace().take(2).eq(["gemini", "1"])), "{out}");
    let (ok, out, err) = run(&["--org", "nobody-here", "--by", "model"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("no usage by model"), "{out}");
    let (ok, _, err) = run(&["--by", "day"]).await.unwrap();
    assert!(!ok);
    assert!(err.contains("tag") && err.contains("provider"), "{err}");
}
