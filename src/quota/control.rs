//! Limits managed at run time, layered over the YAML: a tenant's override (a limit list that
//! replaces its YAML list), top-ups (grants: a limit raised for the current window only) and
//! resets (the current window started afresh), plus the audit log of every change.
//!
//! None of these touch a counter. A grant raises a limit's max for one window bucket; a reset
//! records the counter's value at reset time as an offset for that bucket (usage since the
//! reset is `counter - offset`, so the history keeps what was spent). Both end with their
//! bucket.
//!
//! The data lives in a [`ControlStore`] (its own trait, apart from the ledger's `Store`):
//! one record per tenant, written with compare-and-set on the record's version, so that of
//! two concurrent writes to one tenant each is applied whole or retried, never merged. Every
//! replica keeps the compiled [`Overlay`] in a [`ControlCache`], refreshed when the store's
//! change marker moves; the request path reads only the cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ledger::StoreError;
use super::limit::{Limit, LimitSet};
use crate::config::{LimitSpec, MatchSpec};
use crate::domain::window::Window;
use crate::domain::{Metric, Mode, Scope};

/// One limit of an override, as stored: the YAML fields, money in dollars as in the YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitEntry {
    pub metric: Metric,
    pub window: Window,
    pub max: f64,
    pub alert_at: Thresholds,
    pub enabled: bool,
    pub mode: Mode,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<MatchEntry>,
}

/// A limit's `match`, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A limit's `alert_at` as stored: one number when there is one threshold (as entries made
/// before several thresholds existed were stored), else the ascending list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Thresholds {
    One(f64),
    Many(Vec<f64>),
}

impl Thresholds {
    fn of(v: &[f64]) -> Thresholds {
        match v {
            [one] => Thresholds::One(*one),
            many => Thresholds::Many(many.to_vec()),
        }
    }
}

impl LimitEntry {
    /// The stored form of a validated limit.
    pub fn from_spec(spec: &LimitSpec) -> LimitEntry {
        LimitEntry {
            metric: spec.metric,
            window: spec.window,
            max: spec.max.0,
            alert_at: Thresholds::of(&spec.alert_at.0),
            enabled: spec.enabled,
            mode: spec.mode,
            matcher: spec.matcher.as_ref().map(|m| MatchEntry {
                provider: m.provider.clone(),
                model: m.model.as_ref().map(|p| p.as_str().to_string()),
                path: m.path.as_ref().map(|p| p.as_str().to_string()),
                tag: m.tag.as_ref().map(|p| p.as_str().to_string()),
            }),
        }
    }

    /// Back to the config's form, validated again (stored data is read with the same rules).
    pub fn to_spec(&self) -> Result<LimitSpec, String> {
        let v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
}

/// A top-up: `amount` (in the metric's integer unit, nano-dollars for cost) added to every
/// limit of that metric and window of the tenant, in window bucket `bucket` only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub metric: Metric,
    pub window: Window,
    pub bucket: String,
    pub amount: i64,
    pub reason: String,
    pub token: String,
    pub at: DateTime<Utc>,
    /// When the bucket ends (the grant is gone then).
    pub expires_at: DateTime<Utc>,
}

/// A reset: the counters' values when it was made, per store field, for one bucket. Usage
/// of that bucket is counted from these values on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reset {
    pub metric: Metric,
    pub window: Window,
    pub bucket: String,
    /// Store field (`cost`, `cost#<match id>`) -> counter value at reset time.
    pub offsets: BTreeMap<String, i64>,
    pub reason: String,
    pub token: String,
    pub at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Who set an override, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverrideMeta {
    pub token: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Everything run-time about one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantControl {
    /// The override: replaces the tenant's YAML list while set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Vec<LimitEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_meta: Option<OverrideMeta>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resets: Vec<Reset>,
}

impl TenantControl {
    /// Nothing left to keep: the store may drop the record.
    pub fn is_empty(&self) -> bool {
        self.limits.is_none() && self.grants.is_empty() && self.resets.is_empty()
    }

    /// Drops grants and resets whose window has ended.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        self.grants.retain(|g| g.expires_at > now);
        self.resets.retain(|r| r.expires_at > now);
    }
}

/// A tenant: scope and id. Its store field is `p:<id>` or `o:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TenantRef {
    pub scope: Scope,
    pub id: String,
}

impl TenantRef {
    pub fn new(scope: Scope, id: &str) -> TenantRef {
        TenantRef { scope, id: id.to_string() }
    }

    pub fn field(&self) -> String {
        format!("{}:{}", self.scope.tag(), self.id)
    }

    pub fn parse_field(f: &str) -> Option<TenantRef> {
        let (tag, id) = f.split_once(':')?;
        let scope = match tag {
            "p" => Scope::Profile,
            "o" => Scope::Org,
            _ => return None,
        };
        Some(TenantRef::new(scope, id))
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// The name of the admin token that made the change (`config` for a reload of the file).
    pub token: String,
    /// `override_set`, `override_removed`, `grant`, `reset`, `config_reload`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantRef>,
    #[serde(default)]
    pub old: serde_json::Value,
    #[serde(default)]
    pub new: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Most audit entries a store keeps (the oldest go first).
pub const AUDIT_MAX: usize = 10_000;

/// Which audit entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this tenant's entries (with `scope`, only that scope's).
    pub tenant: Option<String>,
    pub scope: Option<Scope>,
    pub offset: usize,
    pub limit: usize,
}

impl AuditQuery {
    pub fn matches(&self, e: &AuditEntry) -> bool {
        match (&self.tenant, &e.tenant) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(id), Some(t)) => *id == t.id && self.scope.is_none_or(|s| s == t.scope),
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    /// Entries matching the query in all.
    pub total: usize,
    pub entries: Vec<AuditEntry>,
}

/// Everything a control store holds, at one version.
#[derive(Debug, Clone, Default)]
pub struct ControlState {
    pub version: u64,
    pub tenants: Vec<(TenantRef, TenantControl)>,
}

/// The answer to a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written; the store's change marker is now `version`.
    Written { version: u64 },
    /// The tenant's record changed since it was read; nothing was written.
    Conflict,
}

/// A backend of the run-time control data (overrides, grants, resets, audit).
#[async_trait]
pub trait ControlStore: Send + Sync {
    /// The change marker: it moves on every write of a tenant's record. Cheap; replicas poll it.
    async fn version(&self) -> Result<u64, StoreError>;

    /// Every tenant's record and the change marker they belong to.
    async fn load(&self) -> Result<ControlState, StoreError>;

    /// One tenant's record and its version (0 and an empty record when there is none).
    async fn get(&self, tenant: &TenantRef) -> Result<(u64, TenantControl), StoreError>;

    /// Replaces the tenant's record (an empty one removes it) if its version is still
    /// `expected`, and appends `audit` in the same atomic step.
    async fn update(&self, tenant: &TenantRef, expected: u64, record: &TenantControl, audit: &AuditEntry) -> Result<CasOutcome, StoreError>;

    /// Appends an entry that changes no record (a config reload).
    async fn append_audit(&self, audit: &AuditEntry) -> Result<(), StoreError>;

    /// A page of the audit log, newest first.
    async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;

    fn name(&self) -> &'static str;
}

/// Where a tenant's limit list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Override,
    /// A named YAML list (`limits.profiles.<id>`, `limits.orgs.<id>`).
    Named,
    /// The scope's default YAML list.
    Default,
}

impl Source {
    /// `override`, `profile`/`org`, `default_profile`/`default_org`.
    pub fn as_str(self, scope: Scope) -> &'static str {
        match (self, scope) {
            (Source::Override, _) => "override",
            (Source::Named, Scope::Profile) => "profile",
            (Source::Named, Scope::Org) => "org",
            (Source::Default, Scope::Profile) => "default_profile",
            (Source::Default, Scope::Org) => "default_org",
        }
    }
}

/// What grants and a reset change about one limit in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adjustment {
    /// Added to the max (sum of the bucket's grants).
    pub granted: i64,
    /// The counter's value at the bucket's last reset.
    pub offset: i64,
}

/// One tenant's control data, compiled.
#[derive(Debug, Clone)]
pub struct TenantOverlay {
    pub limits: Option<Arc<[Limit]>>,
    pub record: TenantControl,
}

/// Every tenant's control data, compiled for the request path.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pub version: u64,
    /// Per scope, keyed by id (looked up without allocating).
    profiles: HashMap<String, TenantOverlay>,
    orgs: HashMap<String, TenantOverlay>,
}

impl Overlay {
    /// Compiles a store's state. A stored list that no longer compiles (it cannot, unless the
    /// store was edited by hand) is logged and ignored: the YAML applies to that tenant.
    pub fn build(state: ControlState) -> Overlay {
        let (mut profiles, mut orgs) = (HashMap::new(), HashMap::new());
        for (t, record) in state.tenants {
            let limits = match &record.limits {
                None => None,
                Some(list) => match compile(list) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::error!(scope = %t.scope, id = %t.id, error = %e, "a stored limit override is invalid; the YAML limits apply");
                        None
                    }
                },
            };
            let map = match t.scope {
                Scope::Profile => &mut profiles,
                Scope::Org => &mut orgs,
            };
            map.insert(t.id, TenantOverlay { limits, record });
        }
        Overlay {
            version: state.version,
            profiles,
            orgs,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty() && self.orgs.is_empty()
    }

    pub fn tenant(&self, scope: Scope, id: &str) -> Option<&TenantOverlay> {
        let map = match scope {
            Scope::Profile => &self.profiles,
            Scope::Org => &self.orgs,
        };
        if map.is_empty() {
            return None;
        }
        map.get(id)
    }

    /// Every tenant with control data.
    pub fn tenants(&self) -> impl Iterator<Item = (TenantRef, &TenantOverlay)> {
        let p = self.profiles.iter().map(|(id, t)| (TenantRef::new(Scope::Profile, id), t));
        p.chain(self.orgs.iter().map(|(id, t)| (TenantRef::new(Scope::Org, id), t)))
    }

    /// The tenant's effective limit list and where it comes from.
    pub fn limits<'a>(&'a self, yaml: &'a LimitSet, scope: Scope, id: &str) -> (&'a Arc<[Limit]>, Source) {
        if let Some(l) = self.tenant(scope, id).and_then(|t| t.limits.as_ref()) {
            return (l, Source::Override);
        }
        let source = if yaml.is_named(scope, id) { Source::Named } else { Source::Default };
        (yaml.for_tenant(scope, id), source)
    }

    /// What the tenant's grants and resets do to `limit` in `bucket`.
    pub fn adjustment(&self, scope: Scope, id: &str, limit: &Limit, bucket: &str) -> Adjustment {
        match self.tenant(scope, id) {
            None => Adjustment::default(),
            Some(t) => adjustment_of(&t.record, limit, bucket),
        }
    }
}

/// What a record's grants and resets do to `limit` in `bucket`.
pub fn adjustment_of(record: &TenantControl, limit: &Limit, bucket: &str) -> Adjustment {
    let same = |m: Metric, w: Window, b: &str| m == limit.metric && w == limit.window && b == bucket;
    let granted = record
        .grants
        .iter()
        .filter(|g| same(g.metric, g.window, &g.bucket))
        .fold(0i64, |a, g| a.saturating_add(g.amount));
    let offset = record
        .resets
        .iter()
        .rev()
        .find(|r| same(r.metric, r.window, &r.bucket))
        .and_then(|r| r.offsets.get(&*limit.field()).copied())
        .unwrap_or(0);
    Adjustment { granted, offset }
}

/// Compiles a stored list.
pub fn compile(list: &[LimitEntry]) -> Result<Arc<[Limit]>, String> {
    list.iter().map(|e| e.to_spec().map(|s| Limit::new(&s))).collect()
}

/// Two limits of one list may not count the same thing (the YAML's rule).
pub fn duplicate(list: &[LimitSpec]) -> Option<usize> {
    let mut seen = std::collections::BTreeSet::new();
    list.iter()
        .position(|l| !seen.insert((l.metric, l.window, format!("{:?}", l.matcher.as_ref().map(match_key)))))
}

fn match_key(m: &MatchSpec) -> (Option<String>, Option<String>, Option<String>) {
    (
        m.provider.clone(),
        m.model.as_ref().map(|p| p.as_str().to_string()),
        m.path.as_ref().map(|p| p.as_str().to_string()),
    )
}

/// The compiled overlay every replica reads on the request path, swapped whole.
pub struct ControlCache(ArcSwap<Overlay>);

impl Default for ControlCache {
    fn default() -> Self {
        ControlCache(ArcSwap::from_pointee(Overlay::default()))
    }
}

impl ControlCache {
    pub fn load(&self) -> arc_swap::Guard<Arc<Overlay>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<Overlay> {
        self.0.load_full()
    }

    /// Installs `state` unless a newer one is already in (refreshes may race).
    pub fn install(&self, state: ControlState) {
        let fresh = Arc::new(Overlay::build(state));
        self.0.rcu(|cur| if fresh.version >= cur.version { fresh.clone() } else { cur.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn spec(yaml: &str) -> Vec<LimitSpec> {
        Config::from_yaml(&format!("limits:\n  default_profile:\n{yaml}"), "t")
            .unwrap()
            .limits
            .default_profile
    }

    fn grant(metric: Metric, window: Window, bucket: &str, amount: i64) -> Grant {
        Grant {
            metric,
            window,
            bucket: bucket.into(),
            amount,
            reason: "r".into(),
            token: "ops".into(),
            at: Utc::now(),
            expires_at: Utc::now() + chrono::Duration::days(1),
        }
    }

    #[test]
    fn entries_round_trip_through_the_config_form() {
        let specs = spec("    - {metric: requests, window: daily, max: 50, alert_at: 0.5, mode: shadow, match: {provider: gemini, model: \"imagen-*\"}}\n    - {metric: cost_usd, window: monthly, max: 2.5}\n");
        let entries: Vec<LimitEntry> = specs.iter().map(LimitEntry::from_spec).collect();
        let json = serde_json::to_string(&entries).unwrap();
        assert!(json.contains("\"match\":{\"provider\":\"gemini\",\"model\":\"imagen-*\"}"), "{json}");
        let back: Vec<LimitEntry> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, entries);
        let compiled = compile(&back).unwrap();
        assert_eq!(compiled[1].max, 2_500_000_000);
        assert_eq!(compiled[0].field(), Limit::new(&specs[0]).field(), "the same counter as the YAML limit");
    }

    #[test]
    fn grants_add_up_per_bucket_and_the_last_reset_counts() {
        let limit = Limit::new(&spec("    - {metric: cost_usd, window: monthly, max: 10}\n")[0]);
        let mut rec = TenantControl::default();
        rec.grants.push(grant(Metric::CostUsd, Window::Monthly, "2026-11", 5));
        rec.grants.push(grant(Metric::CostUsd, Window::Monthly, "2026-11", 2));
        rec.grants.push(grant(Metric::CostUsd, Window::Monthly, "2026-10", 100));
        rec.grants.push(grant(Metric::CostUsd, Window::Daily, "2026-11-02", 100));
        rec.grants.push(grant(Metric::Requests, Window::Monthly, "2026-11", 100));
        for offset in [3, 9] {
            rec.resets.push(Reset {
                metric: Metric::CostUsd,
                window: Window::Monthly,
                bucket: "2026-11".into(),
                offsets: BTreeMap::from([("cost".to_string(), offset)]),
                reason: "r".into(),
                token: "ops".into(),
                at: Utc::now(),
                expires_at: Utc::now(),
            });
        }
        assert_eq!(adjustment_of(&rec, &limit, "2026-11"), Adjustment { granted: 7, offset: 9 });
        assert_eq!(adjustment_of(&rec, &limit, "2026-12"), Adjustment::default());
    }

    #[test]
    fn overrides_replace_the_yaml_list() {
        let cfg = Config::from_yaml(
            "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 10}\n  profiles:\n    p-named: [{metric: requests, window: daily, max: 5}]\n",
            "t",
        )
        .unwrap();
        let yaml = LimitSet::new(&cfg.limits);
        let rec = TenantControl {
            limits: Some(vec![LimitEntry::from_spec(&spec("    - {metric: cost_usd, window: monthly, max: 25}\n")[0])]),
            ..Default::default()
        };
        let overlay = Overlay::build(ControlState {
            version: 3,
            tenants: vec![(TenantRef::new(Scope::Profile, "p-1"), rec)],
        });
        let (l, s) = overlay.limits(&yaml, Scope::Profile, "p-1");
        assert_eq!((l[0].max, s), (25_000_000_000, Source::Override));
        let (l, s) = overlay.limits(&yaml, Scope::Profile, "p-2");
        assert_eq!((l[0].max, s), (10_000_000_000, Source::Default));
        assert_eq!(overlay.limits(&yaml, Scope::Profile, "p-named").1, Source::Named);
        assert_eq!(Source::Named.as_str(Scope::Org), "org");
        assert_eq!(TenantRef::parse_field("p:a:b"), Some(TenantRef::new(Scope::Profile, "a:b")));
    }

    #[test]
    fn newer_states_win() {
        let cache = ControlCache::default();
        cache.install(ControlState {
            version: 5,
            tenants: Vec::new(),
        });
        cache.install(ControlState {
            version: 4,
            tenants: vec![(TenantRef::new(Scope::Org, "o"), TenantControl::default())],
        });
        assert_eq!(cache.load().version, 5);
        assert!(cache.load().is_empty());
    }
}
