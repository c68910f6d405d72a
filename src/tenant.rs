//! Who pays for a request: the profile (and optional org) named by the tenant headers.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName};
use parking_lot::Mutex;

use crate::config::{Missing, TenantConfig};
use crate::domain::tenant_id::{validate_id, validate_tag};

/// Most attribution tags one request may carry.
pub const MAX_TAGS: usize = 4;

/// The tenant a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub profile: String,
    pub org: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("missing tenant header {0}")]
    Missing(String),
    #[error("invalid tenant header {header}: {reason}")]
    Invalid { header: String, reason: String },
}

impl TenantError {
    /// The `error.type` of the refusal body.
    pub fn kind(&self) -> &'static str {
        match self {
            TenantError::Missing(_) => "tenant_missing",
            TenantError::Invalid { .. } => "tenant_invalid",
        }
    }
}

/// The tenant headers of a configuration, parsed once: a header looked up by a string name
/// is parsed and hashed from the string on every request.
#[derive(Debug, Clone)]
pub struct TenantHeaders {
    pub profile: HeaderName,
    pub org: Option<HeaderName>,
    pub tag: Option<HeaderName>,
}

impl TenantHeaders {
    /// Fails on a name that is not a valid header name (the configuration check refuses those
    /// first, with the key).
    pub fn new(cfg: &TenantConfig) -> Result<Self, String> {
        let parse = |name: &str| HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a valid header name"));
        Ok(Self {
            profile: parse(&cfg.profile_header)?,
            org: cfg.org_header.as_deref().map(parse).transpose()?,
            tag: cfg.tag_header.as_deref().map(parse).transpose()?,
        })
    }

    /// Removes the tenant headers (`strip`) and the tag header, which is never forwarded.
    pub fn remove_from(&self, headers: &mut HeaderMap, strip: bool) {
        if let Some(h) = &self.tag {
            headers.remove(h);
        }
        if strip {
            headers.remove(&self.profile);
            if let Some(h) = &self.org {
                headers.remove(h);
            }
        }
    }
}

/// Reads the tenant from the request headers (`names` are `cfg`'s, parsed).
pub fn identify(headers: &HeaderMap, cfg: &TenantConfig, names: &TenantHeaders) -> Result<Tenant, TenantError> {
    let read = |name: &HeaderName, shown: &str| -> Result<Option<String>, TenantError> {
        let mut values = headers.get_all(name).iter();
        let Some(v) = values.next() else { return Ok(None) };
        let invalid = |reason: String| TenantError::Invalid {
            header: shown.to_string(),
            reason,
        };
        if values.next().is_some() {
            return Err(invalid("the header appears more than once".into()));
        }
        let s = v.to_str().map_err(|_| invalid("the value is not visible ASCII".into()))?.trim();
        if s.is_empty() {
            return Ok(None);
        }
        validate_id(s).map_err(invalid)?;
        Ok(Some(s.to_string()))
    };
    let profile = match read(&names.profile, &cfg.profile_header)? {
        Some(p) => p,
        None => match &cfg.missing {
            Missing::Profile(p) => p.clone(),
            Missing::Reject => return Err(TenantError::Missing(cfg.profile_header.clone())),
        },
    };
    let org = match (&names.org, &cfg.org_header) {
        (Some(h), Some(shown)) => read(h, shown)?,
        _ => None,
    };
    Ok(Tenant { profile, org })
}

/// The attribution tags of a request (`tenant.tag_header`): comma-separated, each validated
/// like a tenant id (`=` allowed too), duplicates dropped, at most [`MAX_TAGS`]. The header may
/// also appear several times. `Err` is the message of a 400 `invalid_tag`.
pub fn tags(headers: &HeaderMap, cfg: &TenantConfig, names: &TenantHeaders) -> Result<Vec<String>, String> {
    let (Some(name), Some(header)) = (cfg.tag_header.as_deref(), &names.tag) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = Vec::new();
    for v in headers.get_all(header) {
        let s = v.to_str().map_err(|_| format!("invalid tag header {name}: the value is not visible ASCII"))?;
        for tag in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            validate_tag(tag).map_err(|e| format!("invalid tag header {name}: {e}"))?;
            if !out.iter().any(|t| t == tag) {
                out.push(tag.to_string());
            }
        }
    }
    if out.len() > MAX_TAGS {
        return Err(format!(
            "invalid tag header {name}: {} tags; at most {MAX_TAGS} are allowed per request",
            out.len()
        ));
    }
    Ok(out)
}

/// Most profile -> org bindings kept in memory per generation (two generations: at most
/// twice this many); the store keeps them all.
const ORG_CACHE_GENERATION: usize = 50_000;

/// Profile -> org bindings already read from the store (they never change once made). Two
/// generations: when the newer fills up it becomes the older and the older is dropped, and a
/// binding found in the older moves to the newer. A fleet larger than the cache then loses
/// only its least recently seen half at a time, not every binding at once (which sent every
/// request back to the store together).
#[derive(Default)]
pub struct OrgCache(Mutex<[Bindings; 2]>);

/// Keyed by profile ids from requests: foldhash, seeded per process.
type Bindings = HashMap<String, Option<String>, foldhash::fast::RandomState>;

impl OrgCache {
    pub fn get(&self, profile: &str) -> Option<Option<String>> {
        let mut g = self.0.lock();
        if let Some(org) = g[0].get(profile) {
            return Some(org.clone());
        }
        let (key, org) = g[1].remove_entry(profile)?;
        Self::put(&mut g, key, org.clone());
        Some(org)
    }

    pub fn insert(&self, profile: &str, org: Option<String>) {
        Self::put(&mut self.0.lock(), profile.to_string(), org);
    }

    fn put(g: &mut [Bindings; 2], profile: String, org: Option<String>) {
        if g[0].len() >= ORG_CACHE_GENERATION {
            g[1] = std::mem::take(&mut g[0]);
        }
        g[0].insert(profile, org);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(cfg: &TenantConfig) -> TenantHeaders {
        TenantHeaders::new(cfg).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn reads_profile_and_org() {
        let cfg = TenantConfig::default();
        let t = identify(&headers(&[("x-profile-id", "p-123"), ("X-Org-Id", "acme")]), &cfg, &names(&cfg)).unwrap();
        assert_eq!(t.profile, "p-123");
        assert_eq!(t.org.as_deref(), Some("acme"));
    }

    #[test]
    fn the_org_cache_keeps_the_recently_seen_half_when_it_fills() {
        let c = OrgCache::default();
        for i in 0..ORG_CACHE_GENERATION {
            c.insert(&format!("p{i}"), Some("o".into()));
        }
        // Seen again: moved to the newer generation.
        assert_eq!(c.get("p0"), Some(Some("o".into())));
        for i in 0..ORG_CACHE_GENERATION {
            c.insert(&format!("q{i}"), None);
        }
        assert_eq!(c.get("p0"), Some(Some("o".into())), "kept: it was seen in the newer generation");
        assert_eq!(c.get("q1"), Some(None));
        assert_eq!(c.get("p1"), None, "the older generation went when the newer filled twice");
        let g = c.0.lock();
        assert!(g[0].len() + g[1].len() <= 2 * ORG_CACHE_GENERATION);
    }

    #[test]
    fn missing_and_invalid() {
        let cfg = TenantConfig::default();
        assert_eq!(identify(&headers(&[]), &cfg, &names(&cfg)).unwrap_err().kind(), "tenant_missing");
        assert_eq!(
            identify(&headers(&[("x-profile-id", "a b")]), &cfg, &names(&cfg)).unwrap_err().kind(),
            "tenant_invalid"
        );
        let long = "a".repeat(129);
        assert_eq!(
            identify(&headers(&[("x-profile-id", &long)]), &cfg, &names(&cfg)).unwrap_err().kind(),
            "tenant_invalid"
        );
        assert!(identify(&headers(&[("x-profile-id", &"a".repeat(128))]), &cfg, &names(&cfg)).is_ok());
        assert_eq!(
            identify(&headers(&[("x-profile-id", "a"), ("x-profile-id", "b")]), &cfg, &names(&cfg))
                .unwrap_err()
                .kind(),
            "tenant_invalid"
        );
        assert_eq!(
            identify(&headers(&[("x-profile-id", "ok"), ("x-org-id", "{x}")]), &cfg, &names(&cfg))
                .unwrap_err()
                .kind(),
            "tenant_invalid"
        );
    }

    #[test]
    fn tags_are_validated_deduplicated_and_bounded() {
        let cfg = TenantConfig::default();
        let h = headers(&[("x-spendgate-tag", "tool=script-writer, team=video"), ("X-Spendgate-Tag", "tool=script-writer")]);
        assert_eq!(tags(&h, &cfg, &names(&cfg)).unwrap(), ["tool=script-writer", "team=video"]);
        assert!(tags(&headers(&[]), &cfg, &names(&cfg)).unwrap().is_empty());
        assert!(tags(&headers(&[("x-spendgate-tag", "a b")]), &cfg, &names(&cfg))
            .unwrap_err()
            .contains("only letters"));
        assert!(tags(&headers(&[("x-spendgate-tag", "a,b,c,d,e")]), &cfg, &names(&cfg))
            .unwrap_err()
            .contains("at most 4"));
        assert!(tags(&headers(&[("x-spendgate-tag", &"a".repeat(129))]), &cfg, &names(&cfg)).is_err());
        let off = TenantConfig {
            tag_header: None,
            ..TenantConfig::default()
        };
        assert!(tags(&headers(&[("x-spendgate-tag", "a b")]), &off, &names(&off)).unwrap().is_empty());
    }

    #[test]
    fn default_profile_when_configured() {
        let cfg = TenantConfig {
            missing: Missing::Profile("anon".into()),
            ..TenantConfig::default()
        };
        assert_eq!(identify(&headers(&[]), &cfg, &names(&cfg)).unwrap().profile, "anon");
    }
}
