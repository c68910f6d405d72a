//! Admin tokens. `admin.tokens` names tokens with roles (`admin`, `viewer`, `org:<id>`), each
//! read from an environment variable; the variable named by `admin.token_env`, when set, is
//! one more token, named `admin`, with the `admin` role. When any token is configured, `/v1/*`
//! and `/` need `Authorization: Bearer <token>`. The dashboard page (`/` only) also takes the
//! token as a `?token=` query parameter, because a browser cannot attach a header to a page
//! it opens; the page then sends it as a bearer header on every API call it makes.
//!
//! The variables are read on every request, so rotating a token needs no reload. An empty
//! value locks rather than opens (nothing matches it), and so does a configured
//! `admin.tokens` list none of whose variables is set. Every configured token is compared, in
//! constant time, whatever matches first.

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::{AdminConfig, Role};
use crate::domain::Scope;

/// Why a request may not proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No credentials were presented: 401.
    Missing,
    /// Credentials were presented and are wrong: 403.
    Wrong,
}

/// Who is asking: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// `org:<id>` tokens: may set and remove their profiles' limits.
    pub write_profiles: bool,
}

impl Principal {
    /// When no token is configured: anyone, with every right.
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            role: Role::Admin,
            write_profiles: false,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The org this principal is confined to, if any.
    pub fn org(&self) -> Option<&str> {
        match &self.role {
            Role::Org(o) => Some(o),
            _ => None,
        }
    }

    /// True when this principal may set and remove limits of the tenant, before the
    /// tenant-level checks (an org token's profile must belong to its org).
    pub fn may_write_limits(&self, scope: Scope) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::Viewer => false,
            Role::Org(_) => scope == Scope::Profile && self.write_profiles,
        }
    }

    pub fn describe(&self) -> String {
        format!("the token `{}` (role {})", self.name, self.role.describe())
    }
}

/// The tokens configured now, with their values.
pub enum Credentials {
    /// No token is configured: the admin API answers anyone.
    Open,
    Tokens(Vec<(Principal, String)>),
}

/// Reads the configured tokens' values from the environment.
pub fn credentials(cfg: &AdminConfig) -> Credentials {
    let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let mut tokens = Vec::new();
    if !cfg.token_env.is_empty() {
        if let Some(v) = var(&cfg.token_env) {
            let admin = Principal {
                name: "admin".into(),
                role: Role::Admin,
                write_profiles: false,
            };
            tokens.push((admin, v));
        }
    }
    for t in &cfg.tokens {
        if let Some(v) = var(&t.env) {
            let p = Principal {
                name: t.name.clone(),
                role: t.role.clone(),
                write_profiles: t.write_profiles,
            };
            tokens.push((p, v));
        }
    }
    if tokens.is_empty() && cfg.tokens.is_empty() {
        Credentials::Open
    } else {
        Credentials::Tokens(tokens)
    }
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

/// Checks a request's credentials. `query_token` is the dashboard's `?token=`.
pub fn check(creds: &Credentials, headers: &HeaderMap, query_token: Option<&str>) -> Result<Principal, Denied> {
    let tokens = match creds {
        Credentials::Open => return Ok(Principal::anonymous()),
        Credentials::Tokens(t) => t,
    };
    let Some(presented) = bearer(headers).or(query_token.map(str::as_bytes)) else {
        return Err(Denied::Missing);
    };
    // Every token is compared: the time does not tell which one matched.
    let mut found = None;
    for (i, (_, value)) in tokens.iter().enumerate() {
        if matches(presented, value) && found.is_none() {
            found = Some(i);
        }
    }
    found.map(|i| tokens[i].0.clone()).ok_or(Denied::Wrong)
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

    fn one(token: &str) -> Credentials {
        Credentials::Tokens(vec![(
            Principal {
                name: "admin".into(),
                role: Role::Admin,
                write_profiles: false,
            },
            token.into(),
        )])
    }

    #[test]
    fn bearer_rules() {
        assert_eq!(check(&Credentials::Open, &h(None), None), Ok(Principal::anonymous()));
        let c = one("s3cret");
        assert_eq!(check(&c, &h(None), None), Err(Denied::Missing));
        assert!(check(&c, &h(Some("Bearer s3cret")), None).is_ok());
        assert!(check(&c, &h(Some("bearer  s3cret ")), None).is_ok());
        assert_eq!(check(&c, &h(Some("Bearer s3cre")), None), Err(Denied::Wrong));
        assert_eq!(check(&c, &h(Some("Basic czNjcmV0")), None), Err(Denied::Wrong));
        assert_eq!(check(&c, &h(Some("Bearer")), None), Err(Denied::Wrong));
        assert!(check(&c, &h(None), Some("s3cret")).is_ok());
        assert_eq!(check(&c, &h(None), Some("nope")), Err(Denied::Wrong));
        // An empty token locks rather than opens, and so does a list without values.
        assert_eq!(check(&one(""), &h(Some("Bearer ")), None), Err(Denied::Wrong));
        assert_eq!(check(&one(""), &h(None), Some("")), Err(Denied::Wrong));
        assert_eq!(check(&Credentials::Tokens(Vec::new()), &h(Some("Bearer x")), None), Err(Denied::Wrong));
    }

    #[test]
    fn the_matching_token_names_the_principal() {
        let p = |name: &str, role: Role| Principal {
            name: name.into(),
            role,
            write_profiles: false,
        };
        let c = Credentials::Tokens(vec![
            (p("ops", Role::Admin), "t-ops".into()),
            (p("ro", Role::Viewer), "t-ro".into()),
            (p("acme", Role::Org("acme".into())), "t-acme".into()),
        ]);
        assert_eq!(check(&c, &h(Some("Bearer t-ro")), None).unwrap().name, "ro");
        let acme = check(&c, &h(Some("Bearer t-acme")), None).unwrap();
        assert_eq!(acme.org(), Some("acme"));
        assert!(!acme.may_write_limits(Scope::Profile));
        assert!(!acme.is_admin());
    }
}
