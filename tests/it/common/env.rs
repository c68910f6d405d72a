//! The process environment the in-process proxies read (`api_key_env`, `admin.token_env`).
//!
//! `std::env::set_var` is unsound while other threads may read the environment: std's own
//! readers take a lock, but C code (libc's resolver, time zone lookups, ...) calls `getenv`
//! without it. The test harness runs tests on many threads, and a custom `main` that could
//! set variables before any thread exists is not available with the default harness. So
//! every variable the suite needs is set here, all at once, exactly once, with distinct
//! names (no test ever changes or removes one). [`init`] is called first thing by every test
//! that relies on one of them and by the harness entry points (`Mock::start`, the proxy
//! starters, `TestClient::new`), so it runs as the first test of the binary starts, before
//! that test spawns anything. Child processes get their environment through `Command::env`
//! and never through this process.

use std::sync::Once;

/// Real keys injected by the proxy (key_injection.rs).
pub const KEY_OPENAI: (&str, &str) = ("SPENDGATE_TEST_KEY_OPENAI", "sk-real-openai");
pub const KEY_ANTHROPIC: (&str, &str) = ("SPENDGATE_TEST_KEY_ANTHROPIC", "sk-ant-real");
pub const KEY_ELEVENLABS: (&str, &str) = ("SPENDGATE_TEST_KEY_ELEVENLABS", "xi-real");
pub const KEY_GEMINI: (&str, &str) = ("SPENDGATE_TEST_KEY_GEMINI", "AIza-real-gemini");
pub const KEY_VERTEX: (&str, &str) = ("SPENDGATE_TEST_KEY_VERTEX", "AIza-real-vertex");
/// sdk_media_compat.rs.
pub const SDK_MEDIA_OPENAI_KEY: (&str, &str) = ("SPENDGATE_SDK_MEDIA_OPENAI_KEY", "sk-real-openai-media");
pub const SDK_MEDIA_ANTHROPIC_KEY: (&str, &str) = ("SPENDGATE_SDK_MEDIA_ANTHROPIC_KEY", "sk-ant-real-media");
/// sdk_openai_anthropic.rs.
pub const SDK_OPENAI_KEY: (&str, &str) = ("SPENDGATE_SDK_TEST_OPENAI_KEY", "sk-real-openai-sdk");
pub const SDK_ANTHROPIC_KEY: (&str, &str) = ("SPENDGATE_SDK_TEST_ANTHROPIC_KEY", "sk-ant-real-sdk");
/// escape.rs.
pub const ESCAPE_OPENAI_KEY: (&str, &str) = ("SPENDGATE_TEST_ESCAPE_OPENAI_KEY", "sk-real");
/// Admin tokens (admin_auth.rs, dashboard.rs); the empty one locks the API.
pub const ADMIN_TOKEN_GUARD: (&str, &str) = ("SPENDGATE_TEST_ADMIN_TOKEN_GUARD", "tok-3f9a7c1e-5b2d");
pub const ADMIN_TOKEN_EMPTY: (&str, &str) = ("SPENDGATE_TEST_ADMIN_TOKEN_EMPTY", "");
pub const ADMIN_TOKEN_DASH: (&str, &str) = ("SPENDGATE_TEST_ADMIN_TOKEN_DASH", "dash-7c41e0b9");
/// Named tokens with roles (limits_live.rs, dashboard.rs).
pub const TOKEN_OPS: (&str, &str) = ("SPENDGATE_TEST_TOKEN_OPS", "ops-5e1f0a27");
pub const TOKEN_VIEWER: (&str, &str) = ("SPENDGATE_TEST_TOKEN_VIEWER", "view-9b2c44e1");
pub const TOKEN_ACME: (&str, &str) = ("SPENDGATE_TEST_TOKEN_ACME", "acme-77d3c0f5");
pub const TOKEN_BETA: (&str, &str) = ("SPENDGATE_TEST_TOKEN_BETA", "beta-1a4e9d62");

const ALL: &[(&str, &str)] = &[
    KEY_OPENAI,
    KEY_ANTHROPIC,
    KEY_ELEVENLABS,
    KEY_GEMINI,
    KEY_VERTEX,
    SDK_MEDIA_OPENAI_KEY,
    SDK_MEDIA_ANTHROPIC_KEY,
    SDK_OPENAI_KEY,
    SDK_ANTHROPIC_KEY,
    ESCAPE_OPENAI_KEY,
    ADMIN_TOKEN_GUARD,
    ADMIN_TOKEN_EMPTY,
    ADMIN_TOKEN_DASH,
    TOKEN_OPS,
    TOKEN_VIEWER,
    TOKEN_ACME,
    TOKEN_BETA,
];

/// Sets every variable above, once per process.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (k, v) in ALL {
            // SAFETY-relevant ordering, see the module comment: this is the only writer, it
            // runs once, and before the calling test starts any thread of its own.
            std::env::set_var(k, v);
        }
    });
}
