//! Limits as configured, compiled for lookup on the request path.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{LimitSpec, LimitsConfig, MatchSpec, Pattern, ProviderKind};
use crate::domain::money::usd_to_nanos;
use crate::domain::window::Window;
use crate::domain::{Metric, Mode, Scope};

/// What a request is, for `match`.
#[derive(Debug, Clone, Copy)]
pub struct CallKey<'a> {
    pub provider: &'a str,
    pub kind: ProviderKind,
    pub model: Option<&'a str>,
    pub path: &'a str,
    /// The request's attribution tags.
    pub tags: &'a [String],
}

/// A compiled `match`.
#[derive(Debug, Clone)]
pub struct Matcher {
    provider: Option<String>,
    model: Option<Pattern>,
    path: Option<Pattern>,
    tag: Option<Pattern>,
    /// Stable id of this match, part of the counter's store field.
    pub id: String,
}

impl Matcher {
    fn new(spec: &MatchSpec) -> Option<Self> {
        if spec.provider.is_none() && spec.model.is_none() && spec.path.is_none() && spec.tag.is_none() {
            return None;
        }
        let mut canonical = format!(
            "provider={};model={};path={}",
            spec.provider.as_deref().unwrap_or(""),
            spec.model.as_ref().map_or("", Pattern::as_str),
            spec.path.as_ref().map_or("", Pattern::as_str)
        );
        // Appended only when set, so the ids (and counters) of matches without a tag stay.
        if let Some(t) = &spec.tag {
            canonical.push_str(";tag=");
            canonical.push_str(t.as_str());
        }
        Some(Self {
            provider: spec.provider.clone(),
            model: spec.model.clone(),
            path: spec.path.clone(),
            tag: spec.tag.clone(),
            id: format!("{:016x}", fnv1a64(canonical.as_bytes())),
        })
    }

    pub fn matches(&self, call: &CallKey<'_>) -> bool {
        if let Some(p) = &self.provider {
            if p != call.provider && p != call.kind.as_str() {
                return false;
            }
        }
        if let Some(m) = &self.model {
            match call.model {
                Some(model) if m.is_match(model) => {}
                _ => return false,
            }
        }
        if let Some(p) = &self.path {
            if !p.is_match(call.path) {
                return false;
            }
        }
        if let Some(t) = &self.tag {
            if !call.tags.iter().any(|tag| t.is_match(tag)) {
                return false;
            }
        }
        true
    }

    /// Human description, e.g. `gemini imagen-*`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.provider {
            parts.push(format!("provider {p}"));
        }
        if let Some(m) = &self.model {
            parts.push(format!("model {}", m.as_str()));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path {}", p.as_str()));
        }
        if let Some(t) = &self.tag {
            parts.push(format!("tag {}", t.as_str()));
        }
        parts.join(", ")
    }
}

/// 64-bit FNV-1a: a tiny stable hash (the same in every build), for counter field names.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// One compiled limit.
#[derive(Debug, Clone)]
pub struct Limit {
    pub metric: Metric,
    pub window: Window,
    /// In the metric's integer unit (nano-dollars for cost).
    pub max: i64,
    /// The lowest alert threshold (a fraction of `max`).
    pub alert_at: f64,
    /// Every alert threshold, ascending; each fires once per window.
    pub thresholds: Arc<[f64]>,
    pub enabled: bool,
    pub mode: Mode,
    pub matcher: Option<Matcher>,
    /// The store field that counts this limit (see [`Limit::field`]), made once.
    field: Arc<str>,
    /// `<metric>-<window>[-<match id>]`, made once (see [`Limit::policy_name`]).
    policy_name: Arc<str>,
}

impl Limit {
    pub fn new(spec: &LimitSpec) -> Self {
        let max = match spec.metric {
            Metric::CostUsd => usd_to_nanos(spec.max.0),
            _ => spec.max.0.ceil() as i64,
        };
        let matcher = spec.matcher.as_ref().and_then(Matcher::new);
        Self {
            metric: spec.metric,
            window: spec.window,
            max: max.max(1),
            alert_at: spec.alert_at.0.first().copied().unwrap_or(0.8),
            thresholds: spec.alert_at.0.iter().copied().collect(),
            enabled: spec.enabled,
            mode: spec.mode,
            field: Self::field_of(spec.metric, matcher.as_ref()),
            policy_name: Self::policy_name_of(spec.metric, spec.window, matcher.as_ref()),
            matcher,
        }
    }

    fn policy_name_of(metric: Metric, window: Window, matcher: Option<&Matcher>) -> Arc<str> {
        let mut name = format!("{}-{}", metric.as_str(), window.as_str());
        if let Some(m) = matcher {
            name.push('-');
            name.push_str(&m.id);
        }
        Arc::from(name)
    }

    /// The limit's name in the `RateLimit` headers, after its scope:
    /// `<metric>-<window>[-<match id>]`.
    pub fn policy_name(&self) -> &str {
        &self.policy_name
    }

    fn field_of(metric: Metric, matcher: Option<&Matcher>) -> Arc<str> {
        match matcher {
            Some(m) => Arc::from(format!("{}#{}", metric.field(), m.id)),
            None => metric.counter_field(),
        }
    }

    pub fn applies_to(&self, call: &CallKey<'_>) -> bool {
        self.matcher.as_ref().is_none_or(|m| m.matches(call))
    }

    /// True when this limit can refuse a request.
    pub fn enforcing(&self) -> bool {
        self.enabled && self.mode == Mode::Enforce
    }

    /// The store field that counts this limit: the metric, plus the match id if any.
    pub fn field(&self) -> Arc<str> {
        debug_assert_eq!(
            *self.field,
            *Self::field_of(self.metric, self.matcher.as_ref()),
            "a limit's metric and matcher are not changed after it is made"
        );
        self.field.clone()
    }

    /// Message when this limit refuses: "Monthly cost limit reached for profile p-123: used $10.02 of $10.00".
    pub fn refusal_message(&self, scope: Scope, tenant: &str, current: i64) -> String {
        let filter = self.matcher.as_ref().map(|m| format!(" ({})", m.describe())).unwrap_or_default();
        format!(
            "{} {} limit{filter} reached for {scope} {tenant}: used {} of {}",
            self.window.title(),
            self.metric.noun(),
            self.metric.describe(current),
            self.metric.describe(self.max)
        )
    }
}

/// All limits of one config generation.
#[derive(Debug, Clone, Default)]
pub struct LimitSet {
    default_profile: Arc<[Limit]>,
    default_org: Arc<[Limit]>,
    profiles: HashMap<String, Arc<[Limit]>>,
    orgs: HashMap<String, Arc<[Limit]>>,
}

impl LimitSet {
    pub fn new(cfg: &LimitsConfig) -> Self {
        let compile = |l: &Vec<LimitSpec>| -> Arc<[Limit]> { l.iter().map(Limit::new).collect() };
        Self {
            default_profile: compile(&cfg.default_profile),
            default_org: compile(&cfg.default_org),
            profiles: cfg.profiles.iter().map(|(k, v)| (k.clone(), compile(v))).collect(),
            orgs: cfg.orgs.iter().map(|(k, v)| (k.clone(), compile(v))).collect(),
        }
    }

    /// The limits of a tenant: its own list, or the scope's default list.
    pub fn for_tenant(&self, scope: Scope, id: &str) -> &Arc<[Limit]> {
        match scope {
            Scope::Profile => self.profiles.get(id).unwrap_or(&self.default_profile),
            Scope::Org => self.orgs.get(id).unwrap_or(&self.default_org),
        }
    }

    /// True when the tenant has its own YAML list.
    pub fn is_named(&self, scope: Scope, id: &str) -> bool {
        match scope {
            Scope::Profile => self.profiles.contains_key(id),
            Scope::Org => self.orgs.contains_key(id),
        }
    }

    /// Tenants named in the config, for listings.
    pub fn named(&self, scope: Scope) -> impl Iterator<Item = &String> {
        match scope {
            Scope::Profile => self.profiles.keys(),
            Scope::Org => self.orgs.keys(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_matches_the_documented_shape() {
        let l = Limit {
            metric: Metric::CostUsd,
            window: Window::Monthly,
            max: 10_000_000_000,
            alert_at: 0.8,
            thresholds: Arc::from([0.8]),
            enabled: true,
            mode: Mode::Enforce,
            matcher: None,
            field: Metric::CostUsd.counter_field(),
            policy_name: Arc::from("cost_usd-monthly"),
        };
        assert_eq!(
            l.refusal_message(Scope::Profile, "p-123", 10_020_000_000),
            "Monthly cost limit reached for profile p-123: used $10.02 of $10.00"
        );
    }

    #[test]
    fn matcher_ids_are_stable_and_distinct() {
        let a = Matcher::new(&MatchSpec {
            provider: Some("gemini".into()),
            model: Some(Pattern::new("imagen-*").unwrap()),
            path: None,
            tag: None,
        })
        .unwrap();
        assert_eq!(a.id, format!("{:016x}", fnv1a64(b"provider=gemini;model=imagen-*;path=")));
        let call = CallKey {
            provider: "gemini",
            kind: ProviderKind::Gemini,
            model: Some("imagen-4.0-generate-001"),
            path: "/v1beta/models/imagen-4.0-generate-001:predict",
            tags: &[],
        };
        assert!(a.matches(&call));
        assert!(!a.matches(&CallKey { model: None, ..call }));
        assert!(!a.matches(&CallKey {
            model: Some("gemini-2.5-flash"),
            ..call
        }));
    }
}
