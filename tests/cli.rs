//! The binary: `check`, and a graceful drain on SIGTERM that settles in-flight requests and
//! keeps their cost across a restart through the snapshot file.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Method;
use http_body_util::BodyExt;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spendgate"))
}

#[test]
fn check_accepts_the_example_config() {
    let out = bin()
        .args(["check", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml")])
        .output()
        .unwrap();
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
    let out = bin().args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:4") && stderr.contains("limits.default_profile[0].window") && stderr.contains("fortnightly"),
        "{stderr}"
    );
    let out = bin().arg("--config").arg(dir.path().join("missing.yaml")).output().unwrap();
    assert!(!out.status.success(), "a missing file is a start-up error");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_the_snapshot_keeps_their_cost() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let sse = fixture("gemini/stream_generate_content.sse");
    let mock = Mock::start(move |_| {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .pieces(&sse, 100, Duration::ZERO)
            .gate(g.clone())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state.json");
    let (data, admin) = (free_port(), free_port());
    let config = dir.path().join("spendgate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{data}\"\nadmin:\n  listen: \"127.0.0.1:{admin}\"\nstore:\n  snapshot: \"{}\"\nserver:\n  shutdown_grace: 20\n{}",
            snapshot.display(),
            providers_yaml().replace("{upstream}", &mock.url())
        ),
    )
    .unwrap();
    let mut child = Child(bin().arg("--config").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let client = TestClient::new();
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    for _ in 0..200 {
        if client.clone().get_opt(&ready).await == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let resp = client
        .send(
            Method::POST,
            &format!("http://127.0.0.1:{data}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            &[("x-profile-id", "p-drain")],
            "{}",
        )
        .await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    // The stream is in flight: ask the process to stop.
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", data)).await.is_err(),
        "no new connections after SIGTERM"
    );
    gate.notify_one();
    let rest = body.collect().await.expect("the in-flight stream finishes").to_bytes();
    assert!(!rest.is_empty());
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");

    // A new process on the same snapshot has the drained request's cost.
    let p = start_proxy(&format!("store:\n  snapshot: \"{}\"\n{}", snapshot.display(), providers_yaml()), &mock.url()).await;
    assert_eq!(monthly_cost(&p, "p-drain").await, usd("0.0008277"));
    p.handle.shutdown().await;
}
