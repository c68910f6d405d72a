//! Key injection: with `api_key_env` set on a provider, the proxy holds the provider's real
//! key and the app never needs it. Every credential the client sent, in any of the places
//! these APIs read one, is removed, and the configured key is set where the provider reads it.
//!
//! The key is read from the environment when the configuration is loaded (start, `check`,
//! reload) and kept in a [`ApiKey`], which never prints its value: its `Debug` is redacted and
//! the header it makes is marked sensitive (never indexed by HTTP/2 header compression).

use std::borrow::Cow;
use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::config::ProviderKind;

/// Headers that carry a client credential for one of the providers.
const CREDENTIAL_HEADERS: [HeaderName; 4] = [
    AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("xi-api-key"),
    HeaderName::from_static("x-goog-api-key"),
];

/// Headers that choose which account or project a call is billed to. With an injected key
/// they are the proxy's to decide, not the client's.
const BILLING_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    HeaderName::from_static("x-goog-user-project"),
];

/// A provider key read from the environment.
#[derive(Clone)]
pub struct ApiKey {
    /// The header to set and its (sensitive) value.
    header: HeaderName,
    value: HeaderValue,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}: <redacted>)", self.header)
    }
}

impl ApiKey {
    /// Reads the key for a provider kind from the environment variable `var`. The error names
    /// the variable, never its value.
    pub fn from_env(kind: ProviderKind, var: &str) -> Result<ApiKey, String> {
        let key = match std::env::var(var) {
            Ok(k) => k,
            Err(std::env::VarError::NotPresent) => return Err(format!("api_key_env: the environment variable `{var}` is not set")),
            Err(std::env::VarError::NotUnicode(_)) => return Err(format!("api_key_env: the environment variable `{var}` is not valid UTF-8")),
        };
        Self::new(kind, key.trim()).map_err(|why| format!("api_key_env: the value of `{var}` {why}"))
    }

    fn new(kind: ProviderKind, key: &str) -> Result<ApiKey, &'static str> {
        if key.is_empty() {
            return Err("is empty");
        }
        let (header, text) = match kind {
            ProviderKind::Openai => (AUTHORIZATION, Cow::Owned(format!("Bearer {key}"))),
            ProviderKind::Anthropic => (HeaderName::from_static("x-api-key"), Cow::Borrowed(key)),
            ProviderKind::Elevenlabs => (HeaderName::from_static("xi-api-key"), Cow::Borrowed(key)),
            ProviderKind::Gemini | ProviderKind::Vertex => (HeaderName::from_static("x-goog-api-key"), Cow::Borrowed(key)),
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| "is not usable in an HTTP header")?;
        value.set_sensitive(true);
        Ok(ApiKey { header, value })
    }

    /// Removes the client's credentials and billing-routing headers, and sets this key.
    pub fn inject(&self, headers: &mut HeaderMap) {
        for h in CREDENTIAL_HEADERS.iter().chain(&BILLING_HEADERS) {
            headers.remove(h);
        }
        headers.insert(self.header.clone(), self.value.clone());
    }
}

/// The query string without the client's `key=` parameters (the Google APIs' query-string
/// credential); None when nothing is left. Every other byte is kept.
pub fn strip_query_key(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            // Servers decode the name before reading it: `k%65y` is `key`.
            let name = percent_encoding::percent_decode_str(pair.split('=').next().unwrap_or("")).decode_utf8_lossy();
            !name.trim().eq_ignore_ascii_case("key") && !pair.is_empty()
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Whether a kind reads a credential from the query string.
pub fn uses_query_key(kind: ProviderKind) -> bool {
    matches!(kind, ProviderKind::Gemini | ProviderKind::Vertex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_client_credential() {
        for (kind, header, value) in [
            (ProviderKind::Openai, "authorization", "Bearer sk-real"),
            (ProviderKind::Anthropic, "x-api-key", "sk-real"),
            (ProviderKind::Elevenlabs, "xi-api-key", "sk-real"),
            (ProviderKind::Gemini, "x-goog-api-key", "sk-real"),
            (ProviderKind::Vertex, "x-goog-api-key", "sk-real"),
        ] {
            let key = ApiKey::new(kind, "sk-real").unwrap();
            let mut h = HeaderMap::new();
            for c in &CREDENTIAL_HEADERS {
                h.insert(c, HeaderValue::from_static("client-key"));
            }
            for b in &BILLING_HEADERS {
                h.insert(b, HeaderValue::from_static("client-org"));
            }
            h.insert("x-other", HeaderValue::from_static("kept"));
            key.inject(&mut h);
            assert_eq!(h.len(), 2, "{kind:?}: {h:?}");
            assert_eq!(h[header], value);
            assert!(h[header].is_sensitive());
            assert_eq!(h["x-other"], "kept");
        }
    }

    #[test]
    fn never_prints_the_key() {
        let key = ApiKey::new(ProviderKind::Openai, "sk-secret-123").unwrap();
        assert!(!format!("{key:?}").contains("sk-secret"));
        assert!(ApiKey::new(ProviderKind::Openai, "").is_err());
        let e = ApiKey::new(ProviderKind::Openai, "bad\nkey").unwrap_err();
        assert!(!e.contains("bad"));
        let e = ApiKey::from_env(ProviderKind::Openai, "SPENDGATE_TEST_SURELY_UNSET_VAR").unwrap_err();
        assert!(e.contains("SPENDGATE_TEST_SURELY_UNSET_VAR") && e.contains("not set"), "{e}");
    }

    #[test]
    fn query_key_is_removed_and_the_rest_kept() {
        assert_eq!(strip_query_key("alt=sse&key=abc").as_deref(), Some("alt=sse"));
        assert_eq!(strip_query_key("key=abc").as_deref(), None);
        assert_eq!(strip_query_key("KEY=abc&a=%20b&keys=1").as_deref(), Some("a=%20b&keys=1"));
        assert_eq!(strip_query_key("a=1&key&b=2").as_deref(), Some("a=1&b=2"));
        assert_eq!(strip_query_key("k%65y=abc&alt=sse").as_deref(), Some("alt=sse"));
        assert_eq!(strip_query_key("%4B%45%59=abc").as_deref(), None);
    }
}
