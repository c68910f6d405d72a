//! `api_key_env`: the proxy sets the provider's real key and removes every credential the
//! client sent; the mock checks which key it received.

use crate::common::*;
use http::HeaderMap;

/// The real keys, as the proxy's environment holds them.
use crate::common::env::{KEY_ANTHROPIC, KEY_ELEVENLABS, KEY_GEMINI, KEY_OPENAI, KEY_VERTEX};
const KEYS: [(&str, &str); 5] = [KEY_OPENAI, KEY_ANTHROPIC, KEY_ELEVENLABS, KEY_GEMINI, KEY_VERTEX];

fn yaml() -> String {
    let mut y = String::from("providers:\n");
    for (name, kind) in [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("elevenlabs", "elevenlabs"),
        ("gemini", "gemini"),
        ("vertex", "vertex"),
    ] {
        y.push_str(&format!(
            "  {name}: {{kind: {kind}, prefix: /{name}, upstream: \"{{upstream}}\", api_key_env: SPENDGATE_TEST_KEY_{}}}\n",
            name.to_uppercase()
        ));
    }
    y
}

/// Every place a client may put a credential, filled with the client's (fake) key.
const CLIENT_CREDENTIALS: [(&str, &str); 5] = [
    ("x-profile-id", "p-keys"),
    ("authorization", "Bearer sk-client-fake"),
    ("x-api-key", "sk-client-fake"),
    ("xi-api-key", "sk-client-fake"),
    ("x-goog-api-key", "sk-client-fake"),
];

const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "x-api-key", "xi-api-key", "x-goog-api-key"];

/// What the upstream must see: exactly one credential header with the real key.
fn check_credentials(headers: &HeaderMap, query: Option<&str>, expected: (&str, &str)) -> Result<(), String> {
    for h in CREDENTIAL_HEADERS {
        let got = headers.get(h).map(|v| v.to_str().unwrap_or("?").to_string());
        let want = (h == expected.0).then(|| expected.1.to_string());
        if got != want {
            return Err(format!("{h}: got {got:?}, want {want:?}"));
        }
    }
    if query.is_some_and(|q| q.split('&').any(|p| p.starts_with("key="))) {
        return Err(format!("the client's key is still in the query: {query:?}"));
    }
    Ok(())
}

fn expected_for(path: &str) -> (&'static str, &'static str) {
    if path.starts_with("/v1/chat") {
        ("authorization", "Bearer sk-real-openai")
    } else if path.starts_with("/v1/messages") {
        ("x-api-key", "sk-ant-real")
    } else if path.starts_with("/v1/text-to-speech") {
        ("xi-api-key", "xi-real")
    } else if path.contains("/projects/") {
        ("x-goog-api-key", "AIza-real-vertex")
    } else {
        ("x-goog-api-key", "AIza-real-gemini")
    }
}

#[tokio::test]
async fn every_client_credential_is_replaced_by_the_configured_key() {
    crate::common::env::init();
    let mock = Mock::start(|s| match check_credentials(&s.headers, s.query.as_deref(), expected_for(&s.path)) {
        Ok(()) => Reply::json(r#"{"ok": true}"#),
        Err(why) => Reply::new(401).header("content-type", "text/plain").body(why),
    })
    .await;
    let p = start_proxy(&yaml(), &mock.url()).await;
    let cases = [
        ("/openai/v1/chat/completions", None),
        ("/anthropic/v1/messages", None),
        ("/elevenlabs/v1/text-to-speech/voice1", None),
        ("/gemini/v1beta/models/gemini-2.5-flash:countTokens", Some("key=client-fake&alt=sse")),
        (
            "/vertex/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:countTokens",
            Some("key=client-fake"),
        ),
    ];
    for (path, query) in cases {
        let url = match query {
            Some(q) => p.url(&format!("{path}?{q}")),
            None => p.url(path),
        };
        let got = p.client.post(&url, &CLIENT_CREDENTIALS, r#"{"model":"m","text":"hi","messages":[]}"#).await;
        assert_eq!(got.status, 200, "{path}: {}", String::from_utf8_lossy(&got.body));
        let seen = mock.last();
        assert!(seen.headers.get("x-profile-id").is_none(), "tenant header stripped");
        if path.starts_with("/gemini") {
            assert_eq!(seen.query.as_deref(), Some("alt=sse"), "other query parameters are kept");
        }
    }
    assert_eq!(mock.count(), 5);
    p.handle.shutdown().await;
}

/// The proxy decodes query parameter names: a client key spelled with percent escapes
/// (`k%65y=`) is a `key` parameter too, and must not reach the upstream next to the injected
/// key (Gemini would bill whichever it reads).
#[tokio::test]
async fn a_percent_encoded_key_parameter_is_stripped_when_the_gemini_key_is_injected() {
    crate::common::env::init();
    let mock = Mock::start(|_| Reply::json(r#"{"ok": true}"#)).await;
    let p = start_proxy(&yaml(), &mock.url()).await;
    let queries = [
        "k%65y=client-fake&alt=sse",
        "%6B%65%79=client-fake&alt=sse",
        "alt=sse&ke%79=client-fake",
        "%6b%65%79=client-fake&key=client-fake&alt=sse",
    ];
    for query in queries {
        let url = p.url(&format!("/gemini/v1beta/models/gemini-2.5-flash:countTokens?{query}"));
        let got = p.client.post(&url, &[("x-profile-id", "p-keys")], "{}").await;
        assert_eq!(got.status, 200, "{query}: {}", String::from_utf8_lossy(&got.body));
        let seen = mock.last();
        assert_eq!(seen.query.as_deref(), Some("alt=sse"), "{query}: only the client's key is removed");
        assert_eq!(seen.headers["x-goog-api-key"], KEY_GEMINI.1, "{query}");
        for (name, value) in &seen.headers {
            assert!(
                !value.as_bytes().windows(11).any(|w| w == b"client-fake"),
                "{query}: {name} carries the client key"
            );
        }
    }
    assert_eq!(mock.count(), queries.len());
    p.handle.shutdown().await;
}

#[tokio::test]
async fn without_api_key_env_the_client_credentials_pass_unchanged() {
    let mock = Mock::start(|_| Reply::json(r#"{"ok": true}"#)).await;
    let p = start_proxy(providers_yaml(), &mock.url()).await;
    let got = p
        .client
        .post(
            &p.url("/gemini/v1beta/models/gemini-2.5-flash:countTokens?key=client-key"),
            &CLIENT_CREDENTIALS,
            "{}",
        )
        .await;
    assert_eq!(got.status, 200);
    let seen = mock.last();
    for h in CREDENTIAL_HEADERS {
        assert!(seen.headers.contains_key(h), "{h} kept");
    }
    assert_eq!(seen.query.as_deref(), Some("key=client-key"));
    p.handle.shutdown().await;
}

#[tokio::test]
async fn an_unset_variable_fails_check_and_start_without_revealing_keys() {
    crate::common::env::init();
    let unset = "providers:\n  openai: {kind: openai, prefix: /openai, upstream: \"http://127.0.0.1:1\", api_key_env: SPENDGATE_TEST_KEY_NEVER_SET}\n";
    let mut config = spendgate::config::Config::from_yaml(unset, "t.yaml").unwrap();
    let _dir = crate::common::own_database(&mut config);
    let err = spendgate::check::summary(&config).unwrap_err();
    assert!(
        err.contains("providers.openai") && err.contains("SPENDGATE_TEST_KEY_NEVER_SET") && err.contains("not set"),
        "{err}"
    );
    let started = spendgate::server::start(
        config,
        spendgate::server::Options {
            config_path: None,
            clock: spendgate::domain::window::Clock::system(),
        },
    )
    .await;
    let err = started.err().expect("the proxy refuses to start").to_string();
    assert!(err.contains("SPENDGATE_TEST_KEY_NEVER_SET"), "{err}");
    let db = &_dir.as_ref().expect("a database of its own").path().join("spendgate.db");
    assert!(!db.exists(), "a config that cannot serve creates no database");

    // With the variable set, check names the variable and never prints the key.
    let config = spendgate::config::Config::from_yaml(&yaml().replace("{upstream}", "http://127.0.0.1:1"), "t.yaml").unwrap();
    let out = spendgate::check::summary(&config).unwrap();
    assert!(out.contains("key from $SPENDGATE_TEST_KEY_OPENAI"), "{out}");
    for (_, key) in KEYS {
        assert!(!out.contains(key), "{out}");
    }
}
