//! The binary: `check`, and a graceful drain on SIGTERM that settles in-flight requests and
//! keeps their cost across a restart through the embedded store's database.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::process::{output_within, Spendgate};
use crate::common::*;
use http::Method;
use http_body_util::BodyExt;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spendgate"))
}

/// Runs the binary to completion, bounded in time.
fn run(cmd: &mut Command) -> Output {
    output_within(cmd, None, Duration::from_secs(60))
}

#[test]
fn check_accepts_the_example_config() {
    let out = run(bin().args(["check", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml")]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("routes:") && stdout.contains("/gemini") && stdout.contains("profile p-123"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("valid"));
}

#[test]
fn check_names_the_offending_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: \"127.0.0.1:8080\"\nlimits:\n  default_profile:\n    - {metric: cost_usd, window: fortnightly, max: 5}\n",
    )
    .unwrap();
    let out = run(bin().args(["check", "--config"]).arg(&path));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:4") && stderr.contains("limits.default_profile[0].window") && stderr.contains("fortnightly"),
        "{stderr}"
    );
    let out = run(bin().arg("--config").arg(dir.path().join("missing.yaml")));
    assert!(!out.status.success(), "a missing file is a start-up error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_the_database_keeps_their_cost() {
    let (mock, gate) = gated_stream("gemini/stream_generate_content.sse", 100).await;
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("spendgate.db");
    let config = dir.path().join("spendgate.yaml");
    // Port 0: the process picks its ports and logs them.
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\nstore:\n  path: \"{}\"\nserver:\n  shutdown_grace: 20\n{}",
            database.display(),
            providers_yaml().replace("{upstream}", &mock.url())
        ),
    )
    .unwrap();
    let c = config.clone();
    let mut sg = tokio::task::spawn_blocking(move || Spendgate::start(&c, &[])).await.unwrap();
    let data = sg.data;
    let client = TestClient::new();
    let resp = client
        .send(
            Method::POST,
            &sg.url("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            &[("x-profile-id", "p-drain")],
            "{}",
        )
        .await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    // The stream is in flight: ask the process to stop. It stops accepting at once.
    sg.process.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(data).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sg.process.exited().is_none(), "the process waits for the stream in flight");
    gate.notify_one();
    let rest = body.collect().await.expect("the in-flight stream finishes").to_bytes();
    assert!(!rest.is_empty());
    let (status, log) = tokio::task::spawn_blocking(move || (sg.process.wait_within(Duration::from_secs(30)), sg.log()))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{log}");

    // A new process on the same database has the drained request's cost.
    let p = start_proxy(&format!("store:\n  path: \"{}\"\n{}", database.display(), providers_yaml()), &mock.url()).await;
    assert_eq!(monthly_cost(&p, "p-drain").await, usd("0.0008277"));
    p.handle.shutdown().await;
}
