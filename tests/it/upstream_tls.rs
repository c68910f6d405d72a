//! Upstreams as real providers are reached: HTTPS with HTTP/2 chosen by ALPN (or HTTP/1.1),
//! a certificate from a CA the operator names (`tls_ca_file`, `tls_roots`), streaming
//! included; egress through an HTTP proxy's `CONNECT` tunnel, from the config or from
//! `HTTPS_PROXY`/`NO_PROXY`; and one deadline over the whole connect.

use std::time::Duration;

use crate::common::process::{output_within, Spendgate};
use crate::common::tls::{ConnectProxy, TestCa, H1_ONLY, H2_AND_H1};
use crate::common::*;

const CHAT: &str = "/openai/v1/chat/completions";
const CHAT_BODY: &str = r#"{"model":"gpt-5-mini","messages":[{"role":"user","content":"When is low tide?"}]}"#;
const CHAT_COST: &str = "0.0023695";
const STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Low tide?"}]}"#;
const STREAM_FIXTURE: &str = "openai/chat_completions_stream_include_usage.sse";
const STREAM_COST: &str = "0.00001095";
const LIMITS: &str = "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1000}\n";

/// Answers a chat call with the JSON fixture and a streaming one with the SSE fixture, in
/// small pieces.
fn openai_mock(s: &Seen) -> Reply {
    if s.body.windows(13).any(|w| w == b"\"stream\":true") {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .pieces(&fixture(STREAM_FIXTURE), 97, Duration::from_millis(1))
    } else {
        Reply::json(fixture("openai/chat_completions.json"))
    }
}

/// One OpenAI provider at `upstream` with the extra provider keys `extra` (a YAML flow
/// mapping's tail).
fn config(upstream: &str, extra: &str) -> String {
    format!("providers:\n  openai: {{kind: openai, prefix: /openai, upstream: \"{upstream}\"{extra}}}\n{LIMITS}")
}

async fn chat(p: &Proxy, profile: &str, body: &str) -> Got {
    p.client
        .post(
            &p.url(CHAT),
            &[("x-profile-id", profile), ("content-type", "application/json")],
            body.to_string(),
        )
        .await
}

/// A JSON call and a stream, each charged exactly; the versions the mock saw.
async fn json_and_stream_are_charged(p: &Proxy, mock: &Mock, tag: &str) -> Vec<http::Version> {
    let got = chat(p, &format!("p-{tag}-json"), CHAT_BODY).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.body.to_vec(), fixture("openai/chat_completions.json"));
    assert_eq!(monthly_cost(p, &format!("p-{tag}-json")).await, usd(CHAT_COST));
    let got = chat(p, &format!("p-{tag}-sse"), STREAM_BODY).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.to_vec(), fixture(STREAM_FIXTURE), "the stream arrives whole");
    assert_eq!(monthly_cost(p, &format!("p-{tag}-sse")).await, usd(STREAM_COST));
    mock.seen.lock().iter().map(|s| s.version).collect()
}

#[tokio::test]
async fn http2_over_tls_with_a_private_ca_streams_and_charges() {
    let ca = TestCa::new("private");
    let mock = Mock::start_tls(ca.server_config(&["localhost"], H2_AND_H1), openai_mock).await;
    let upstream = format!("https://localhost:{}", mock.addr.port());
    let p = start_proxy(&config(&upstream, &format!(", tls_ca_file: \"{}\"", ca.file_str())), "").await;
    let versions = json_and_stream_are_charged(&p, &mock, "h2").await;
    assert_eq!(versions, [http::Version::HTTP_2, http::Version::HTTP_2], "ALPN chose HTTP/2");
    assert_eq!(mock.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "both calls share one connection");
    // The request went out with the upstream's authority and without hop-by-hop headers.
    let last = mock.last();
    assert_eq!(last.path, "/v1/chat/completions");
    assert!(last.headers.get("connection").is_none());

    // Each piece of a stream is passed on as it arrives: the first reaches the client while
    // the upstream holds back the rest.
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    mock.set(move |_| {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .pieces(&fixture(STREAM_FIXTURE), 120, Duration::ZERO)
            .gate(g.clone())
    });
    let resp = p
        .client
        .send(
            http::Method::POST,
            &p.url(CHAT),
            &[("x-profile-id", "p-h2-gated"), ("content-type", "application/json")],
            STREAM_BODY,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), http_body_util::BodyExt::frame(&mut body))
        .await
        .expect("the first piece arrives while the upstream is held")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap().len(), 120);
    gate.notify_one();
    let rest = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
    assert_eq!(120 + rest.len(), fixture(STREAM_FIXTURE).len());
    assert_eq!(monthly_cost(&p, "p-h2-gated").await, usd(STREAM_COST));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn http1_over_tls_when_the_upstream_offers_only_http1() {
    let ca = TestCa::new("private");
    let mock = Mock::start_tls(ca.server_config(&["localhost"], H1_ONLY), openai_mock).await;
    let upstream = format!("https://localhost:{}", mock.addr.port());
    // Trusting only the private CA is enough.
    let extra = format!(", tls_roots: none, tls_ca_file: \"{}\"", ca.file_str());
    let p = start_proxy(&config(&upstream, &extra), "").await;
    let versions = json_and_stream_are_charged(&p, &mock, "h1").await;
    assert_eq!(versions, [http::Version::HTTP_11, http::Version::HTTP_11]);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_certificate_that_is_not_trusted_is_refused_and_nothing_is_charged() {
    let ca = TestCa::new("private");
    let mock = Mock::start_tls(ca.server_config(&["localhost"], H2_AND_H1), openai_mock).await;
    // The public roots do not know the private CA.
    let untrusted = start_proxy(&config(&format!("https://localhost:{}", mock.addr.port()), ""), "").await;
    // Trusted CA, but the certificate names another host.
    let other = TestCa::new("other");
    let wrong_name = Mock::start_tls(other.server_config(&["api.other.test"], H2_AND_H1), openai_mock).await;
    let misnamed = start_proxy(
        &config(
            &format!("https://localhost:{}", wrong_name.addr.port()),
            &format!(", tls_ca_file: \"{}\"", other.file_str()),
        ),
        "",
    )
    .await;
    for (p, m, why) in [(&untrusted, &mock, "unknown issuer"), (&misnamed, &wrong_name, "name mismatch")] {
        let got = chat(p, "p-untrusted", CHAT_BODY).await;
        assert_eq!(got.status, 502, "{why}");
        assert_eq!(got.json()["error"]["type"], "upstream_unavailable", "{why}");
        let message = got.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("certificate"), "{why}: the reason is given: {message}");
        assert_eq!(m.count(), 0, "{why}: no request reached the upstream");
        assert_eq!(monthly_cost(p, "p-untrusted").await, 0, "{why}: a call never sent is not charged");
    }
    untrusted.handle.shutdown().await;
    misnamed.handle.shutdown().await;
}

#[tokio::test]
async fn a_configured_proxy_tunnels_tls_end_to_end_with_its_credentials() {
    let ca = TestCa::new("egress");
    let mock = Mock::start_tls(ca.server_config(&["api.openai.test"], H2_AND_H1), openai_mock).await;
    // user:secret, Basic.
    let proxy = ConnectProxy::start(mock.addr, Some("Basic dXNlcjpzZWNyZXQ=")).await;
    let extra = format!(", tls_ca_file: \"{}\", proxy: \"http://user:secret@{}\"", ca.file_str(), proxy.addr);
    // The name does not resolve here: only the proxy ever looks it up.
    let p = start_proxy(&config("https://api.openai.test", &extra), "").await;
    let versions = json_and_stream_are_charged(&p, &mock, "tunnel").await;
    assert_eq!(versions, [http::Version::HTTP_2, http::Version::HTTP_2]);
    let tunnels = proxy.tunnels();
    assert_eq!(tunnels.len(), 1, "one tunnel, reused: {tunnels:?}");
    assert_eq!(tunnels[0].target, "api.openai.test:443");
    assert_eq!(tunnels[0].auth.as_deref(), Some("Basic dXNlcjpzZWNyZXQ="));
    assert_eq!(tunnels[0].first_bytes.first(), Some(&0x16), "a TLS handshake goes through the tunnel");
    assert!(
        !String::from_utf8_lossy(&tunnels[0].first_bytes).contains("chat"),
        "the proxy never sees the request"
    );
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_proxy_that_refuses_is_a_clear_error_and_nothing_is_charged() {
    let ca = TestCa::new("egress");
    let mock = Mock::start_tls(ca.server_config(&["api.openai.test"], H2_AND_H1), openai_mock).await;
    let proxy = ConnectProxy::start(mock.addr, Some("Basic dXNlcjpzZWNyZXQ=")).await;
    let extra = format!(", tls_ca_file: \"{}\", proxy: \"{}\"", ca.file_str(), proxy.url());
    let p = start_proxy(&config("https://api.openai.test", &extra), "").await;
    let got = chat(&p, "p-407", CHAT_BODY).await;
    assert_eq!(got.status, 502);
    let message = got.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("proxy authorization required"), "{message}");
    assert_eq!(proxy.tunnels().len(), 1);
    assert_eq!(mock.count(), 0);
    assert_eq!(monthly_cost(&p, "p-407").await, 0);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn the_connect_deadline_covers_the_tls_handshake() {
    // Accepts TCP and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let upstream = format!("https://localhost:{}", addr.port());
    let p = start_proxy(&config(&upstream, ", timeouts: {connect: 0.3, read_idle: 60}"), "").await;
    let got = tokio::time::timeout(Duration::from_secs(20), chat(&p, "p-silent", CHAT_BODY))
        .await
        .expect("the call ends at the connect deadline, not at read_idle");
    assert_eq!(got.status, 502);
    let message = got.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("did not finish within"), "{message}");
    assert_eq!(monthly_cost(&p, "p-silent").await, 0);
    p.handle.shutdown().await;
    held.abort();
}

#[tokio::test]
async fn the_environment_proxy_is_used_except_for_no_proxy_and_loopback() {
    let ca = TestCa::new("env");
    let mock = Mock::start_tls(ca.server_config(&["api.openai.test", "127.0.0.1"], H2_AND_H1), openai_mock).await;
    let proxy = ConnectProxy::start(mock.addr, None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spendgate.yaml");
    let ca_file = ca.file_str();
    // `local` trusts the system store, which SSL_CERT_FILE points at the private CA.
    std::fs::write(
        &path,
        format!(
            "listen: \"127.0.0.1:0\"\nadmin: {{listen: \"127.0.0.1:0\"}}\nproviders:\n  \
             openai: {{kind: openai, prefix: /openai, upstream: \"https://api.openai.test\", tls_ca_file: \"{ca_file}\"}}\n  \
             local: {{kind: openai, prefix: /local, upstream: \"https://127.0.0.1:{port}\", tls_roots: system}}\n  \
             exempt: {{kind: openai, prefix: /exempt, upstream: \"https://192.0.2.1:9\", timeouts: {{connect: 0.3}}}}\n{LIMITS}",
            port = mock.addr.port()
        ),
    )
    .unwrap();
    let proxy_url = proxy.url();
    let env = [
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("NO_PROXY", "192.0.2.1"),
        ("SSL_CERT_FILE", ca_file.as_str()),
    ];
    let sg = Spendgate::start(&path, &env);
    let client = TestClient::new();
    let call = |prefix: &str| {
        let url = sg.url(&format!("/{prefix}/v1/chat/completions"));
        let client = &client;
        async move {
            client
                .post(&url, &[("x-profile-id", "p-env"), ("content-type", "application/json")], CHAT_BODY)
                .await
        }
    };
    let got = call("openai").await;
    assert_eq!(got.status, 200, "{}\n{}", String::from_utf8_lossy(&got.body), sg.log());
    assert_eq!(proxy.tunnels().len(), 1);
    assert_eq!(proxy.tunnels()[0].target, "api.openai.test:443");
    let got = call("local").await;
    assert_eq!(
        got.status,
        200,
        "loopback is direct, trusted by the system store: {}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(proxy.tunnels().len(), 1, "loopback never goes through the proxy");
    let got = call("exempt").await;
    assert_eq!(got.status, 502, "NO_PROXY: direct, and nothing answers there");
    assert_eq!(proxy.tunnels().len(), 1, "NO_PROXY is honoured");
    assert_eq!(mock.count(), 2);
}

#[test]
fn bad_transport_settings_are_refused_at_start_with_the_key() {
    let bin = env!("CARGO_BIN_EXE_spendgate");
    let dir = tempfile::tempdir().unwrap();
    let check = |yaml: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["check", "--config"]).arg(&path);
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = output_within(&mut cmd, None, Duration::from_secs(30));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout),
        )
    };
    // (config, environment, words the refusal must hold; none when it must pass)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 5] = [
        (
            "providers:\n  openai: {kind: openai, prefix: /openai, upstream: \"https://a.test\", tls_ca_file: /nonexistent/ca.pem}\n",
            &[],
            &["providers.openai", "/nonexistent/ca.pem"],
        ),
        (
            "providers:\n  openai: {kind: openai, prefix: /openai, upstream: \"https://a.test\", tls_roots: none}\n",
            &[],
            &["providers.openai.tls_roots", "tls_ca_file"],
        ),
        (
            "providers:\n  openai: {kind: openai, prefix: /openai, upstream: \"https://a.test\", proxy: \"socks5://p:1080\"}\n",
            &[],
            &["providers.openai.proxy", "only http://"],
        ),
        (
            "providers:\n  openai: {kind: openai, prefix: /openai, upstream: \"https://a.test\"}\n",
            &[("HTTPS_PROXY", "https://p:3128")],
            &["HTTPS_PROXY", "proxy: none", "only http://"],
        ),
        (
            "providers:\n  openai: {kind: openai, prefix: /openai, upstream: \"https://a.test\", proxy: none}\n",
            &[("HTTPS_PROXY", "https://p:3128")],
            &[],
        ),
    ];
    // What `check` prints about the transport: trusted CAs, and the proxy without its
    // credentials.
    let ca = TestCa::new("check");
    let (ok, out) = check(
        &format!(
            "providers:\n  openai: {{kind: openai, prefix: /openai, upstream: \"https://a.test\", tls_roots: system, tls_ca_file: \"{}\", proxy: \"http://u:secret@proxy.test:3128\"}}\n",
            ca.file_str()
        ),
        &[("SSL_CERT_FILE", &ca.file_str())],
    );
    assert!(ok, "{out}");
    assert!(out.contains(&format!("trusts the system store and {}", ca.file_str())), "{out}");
    assert!(out.contains("through the HTTP proxy proxy.test:3128 (configured)"), "{out}");
    assert!(!out.contains("secret"), "credentials are not printed: {out}");
    let (ok, out) = check(
        "providers:\n  openai: {kind: openai, prefix: /openai, upstream: \"https://a.test\"}\n  local: {kind: openai, prefix: /local, upstream: \"http://127.0.0.1:9\"}\n",
        &[("HTTPS_PROXY", "http://u:secret@proxy.test:3128"), ("HTTP_PROXY", "http://proxy.test:3128")],
    );
    assert!(ok, "{out}");
    assert!(out.contains("through the HTTP proxy proxy.test:3128 (from the environment)"), "{out}");
    assert!(!out.contains("secret"), "credentials are not printed: {out}");
    assert_eq!(out.matches("through the HTTP proxy").count(), 1, "loopback is direct: {out}");
    // A refused proxy URL is shown without its credentials, from the config or the
    // environment.
    for (yaml, env) in [
        (
            "providers:\n  openai: {kind: openai, prefix: /openai, upstream: \"https://a.test\", proxy: \"https://u:secret@p:3128\"}\n",
            &[][..],
        ),
        (
            "providers:\n  openai: {kind: openai, prefix: /openai, upstream: \"https://a.test\"}\n",
            &[("HTTPS_PROXY", "socks5://u:secret@p:1080")][..],
        ),
    ] {
        let (ok, out) = check(yaml, env);
        assert!(!ok, "{out}");
        assert!(out.contains("***@p:"), "{out}");
        assert!(!out.contains("secret"), "credentials are not shown: {out}");
    }
    for (yaml, env, words) in cases {
        let (ok, out) = check(yaml, env);
        if words.is_empty() {
            assert!(ok, "{yaml}: {out}");
            continue;
        }
        assert!(!ok, "{yaml} is refused");
        for w in words {
            assert!(out.contains(w), "{yaml}: `{w}` in: {out}");
        }
    }
}
