//! The admin token: when the variable named by `admin.token_env` is set, `/v1/*` and `/` need
//! `Authorization: Bearer <token>`. The dashboard page (`/` only) also takes the token as a
//! `?token=` query parameter, because a browser cannot attach a header to a page it opens;
//! the page then sends it as a bearer header on every API call it makes.
//!
//! The variable is read on every request, so rotating the token needs no reload. An empty
//! value locks the API (nothing matches it) rather than opening it.

use http::HeaderMap;
use subtle::ConstantTimeEq;

/// Why a request may not proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No credentials were presented: 401.
    Missing,
    /// Credentials were presented and are wrong: 403.
    Wrong,
}

/// The token required now, if any.
pub fn required_token(token_env: &str) -> Option<String> {
    if token_env.is_empty() {
        return None;
    }
    std::env::var_os(token_env).map(|v| v.to_string_lossy().into_owned())
}

/// The bearer token of an `Authorization` header; `Some("")` when the header is there but
/// carries no usable bearer token (it still counts as presented).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let scheme = b"bearer ";
    if value.len() >= scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        Some(value[scheme.len()..].trim_ascii())
    } else {
        Some(&[])
    }
}

/// Constant-time comparison (in the token's content; lengths may differ in time).
fn matches(presented: &[u8], token: &str) -> bool {
    !token.is_empty() && bool::from(presented.ct_eq(token.as_bytes()))
}

/// Checks a request against the token. `query_token` is the dashboard's `?token=`.
pub fn check(token: Option<&str>, headers: &HeaderMap, query_token: Option<&str>) -> Result<(), Denied> {
    let Some(token) = token else { return Ok(()) };
    let presented = bearer(headers).or(query_token.map(str::as_bytes));
    match presented {
        None => Err(Denied::Missing),
        Some(p) if matches(p, token) => Ok(()),
        Some(_) => Err(Denied::Wrong),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: Option<&str>) -> HeaderMap {
        let mut m = HeaderMap::new();
        if let Some(v) = v {
            m.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn bearer_rules() {
        assert_eq!(check(None, &h(None), None), Ok(()));
        assert_eq!(check(Some("s3cret"), &h(None), None), Err(Denied::Missing));
        assert_eq!(check(Some("s3cret"), &h(Some("Bearer s3cret")), None), Ok(()));
        assert_eq!(check(Some("s3cret"), &h(Some("bearer  s3cret ")), None), Ok(()));
        assert_eq!(check(Some("s3cret"), &h(Some("Bearer s3cre")), None), Err(Denied::Wrong));
        assert_eq!(check(Some("s3cret"), &h(Some("Basic czNjcmV0")), None), Err(Denied::Wrong));
        assert_eq!(check(Some("s3cret"), &h(Some("Bearer")), None), Err(Denied::Wrong));
        assert_eq!(check(Some("s3cret"), &h(None), Some("s3cret")), Ok(()));
        assert_eq!(check(Some("s3cret"), &h(None), Some("nope")), Err(Denied::Wrong));
        // An empty token locks rather than opens.
        assert_eq!(check(Some(""), &h(Some("Bearer ")), None), Err(Denied::Wrong));
        assert_eq!(check(Some(""), &h(None), Some("")), Err(Denied::Wrong));
    }
}
