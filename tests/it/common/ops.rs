//! Helpers for the ops-plane tests: a proxy run from a real config file, the admin API with
//! or without a token, and a fixed mix of traffic whose exact costs are known (EXPECTED.md).

use std::path::{Path, PathBuf};

use http::Method;
use spendgate::config::Config;
use spendgate::domain::window::Clock;
use spendgate::server::{self, Options};

use super::{fixture, fixture_head, Got, Proxy, Reply, Seen, TestClient};

/// Fills in what every test config needs: the mock's URL, ephemeral ports.
pub fn complete_yaml(yaml: &str, upstream: &str) -> String {
    let mut text = yaml.replace("{upstream}", upstream);
    if !text.contains("\nlisten:") && !text.starts_with("listen:") {
        text = format!("listen: \"127.0.0.1:0\"\n{text}");
    }
    if !text.contains("\nadmin:") {
        text.push_str("\nadmin:\n  listen: \"127.0.0.1:0\"\n");
    }
    text
}

/// Writes the config to `dir/spendgate.yaml`.
pub fn write_config(dir: &Path, yaml: &str, upstream: &str) -> PathBuf {
    let path = dir.join("spendgate.yaml");
    std::fs::write(&path, complete_yaml(yaml, upstream)).unwrap();
    path
}

/// Starts the proxy from a config file, as `spendgate --config FILE` does (file watcher
/// included).
pub async fn start_proxy_file(path: &Path, clock: Clock) -> Proxy {
    super::env::init();
    let mut config = Config::from_file(path).unwrap_or_else(|e| panic!("test config: {e}"));
    let dir = super::own_database(&mut config);
    let handle = server::start(
        config,
        Options {
            config_path: Some(path.to_path_buf()),
            clock,
        },
    )
    .await
    .expect("proxy starts");
    Proxy {
        handle,
        client: TestClient::new(),
        _dir: dir,
    }
}

/// GET on the admin port, with a bearer token when given.
pub async fn admin_get(p: &Proxy, path: &str, token: Option<&str>) -> Got {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    p.client.get(&p.admin_url(path), &headers).await
}

/// POST on the admin port, with a bearer token when given.
pub async fn admin_post(p: &Proxy, path: &str, token: Option<&str>) -> Got {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    p.client.request(Method::POST, &p.admin_url(path), &headers, Vec::new()).await
}

pub const GEMINI_FLASH: &str = "/gemini/v1beta/models/gemini-2.5-flash:generateContent";
pub const GEMINI_STREAM: &str = "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
pub const ELEVENLABS_TTS: &str = "/elevenlabs/v1/text-to-speech/v1d";
/// Answered 500 by [`fixture_upstream`]; costs nothing.
pub const GEMINI_FAILING: &str = "/gemini/v1beta/models/gemini-2.5-flash-lite:generateContent";

/// Costs at list price, in nano-dollars (EXPECTED.md).
pub const GEMINI_FLASH_NANOS: i64 = 2_009_700;
pub const GEMINI_STREAM_NANOS: i64 = 827_700;
pub const ELEVENLABS_TTS_NANOS: i64 = 11_100_000;

/// A mock upstream answering the paths above with their fixtures.
pub fn fixture_upstream(seen: &Seen) -> Reply {
    let p = seen.path.as_str();
    if p.ends_with("gemini-2.5-flash:generateContent") {
        Reply::json(fixture("gemini/generate_content.json"))
    } else if p.ends_with(":streamGenerateContent") {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .pieces(&fixture("gemini/stream_generate_content.sse"), 97, std::time::Duration::ZERO)
    } else if p.starts_with("/v1/text-to-speech/") {
        let (status, headers) = fixture_head("elevenlabs/tts_headers.txt");
        Reply::new(status.as_u16()).headers(headers).body(vec![0xffu8; 2048])
    } else {
        Reply::new(500)
            .header("content-type", "application/json")
            .body(r#"{"error": {"code": 500, "message": "internal", "status": "INTERNAL"}}"#)
    }
}

/// Sends one request of the mix for a tenant; returns the response.
pub async fn send(p: &Proxy, path: &str, profile: &str, org: Option<&str>) -> Got {
    let body = if path.starts_with("/elevenlabs") {
        fixture("elevenlabs/tts_request.json")
    } else {
        br#"{"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}"#.to_vec()
    };
    let mut headers = vec![("x-profile-id", profile), ("content-type", "application/json")];
    if let Some(o) = org {
        headers.push(("x-org-id", o));
    }
    p.client.post(&p.url(path), &headers, body).await
}
