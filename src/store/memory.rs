//! The embedded store: counters and history in process memory, optionally snapshotted to a
//! file (atomically, periodically and on shutdown) so a restart keeps the current windows.
//! One lock guards everything, so check-and-reserve is trivially atomic; every operation
//! under it is a handful of hash-map updates.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{Duration, NaiveDate, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::snapshot;
use crate::domain::Scope;
use crate::quota::ledger::{CounterKey, History, ReserveOutcome, ReserveRequest, Settlement, Store, StoreError, Totals, UsageRecord};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct DayAgg {
    totals: Totals,
    by_provider: BTreeMap<String, Totals>,
    by_model: BTreeMap<String, Totals>,
    #[serde(default)]
    by_tag: BTreeMap<String, Totals>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct TenantHistory {
    days: BTreeMap<String, DayAgg>,
    recent: VecDeque<UsageRecord>,
    /// The distinct tags kept for this tenant (at most `max_tags`).
    #[serde(default)]
    tags: std::collections::BTreeSet<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Counter -> (value, expiry as unix seconds).
    counters: HashMap<CounterKey, (i64, i64)>,
    tenants: BTreeMap<(Scope, String), TenantHistory>,
    /// Profile -> the org it belongs to ("" for none).
    orgs: HashMap<String, String>,
    /// Claimed alert keys -> when the claim expires (unix seconds). Not in the snapshot.
    alerts: HashMap<String, i64>,
    dirty: bool,
}

/// The on-disk form of [`State`].
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    version: u32,
    counters: Vec<(CounterKey, i64, i64)>,
    tenants: Vec<(Scope, String, TenantHistory)>,
    #[serde(default)]
    orgs: Vec<(String, String)>,
}

pub struct MemoryStore {
    state: Mutex<State>,
    snapshot: Option<PathBuf>,
    recent_max: usize,
    retention_days: u32,
    max_tags: usize,
}

impl MemoryStore {
    /// A store without a snapshot file.
    pub fn new(recent_max: usize, retention_days: u32) -> Self {
        Self {
            state: Mutex::new(State::default()),
            snapshot: None,
            recent_max,
            retention_days,
            max_tags: 100,
        }
    }

    /// Keeps at most `n` distinct tags per tenant (`store.max_tags`).
    pub fn max_tags(mut self, n: usize) -> Self {
        self.max_tags = n.max(1);
        self
    }

    /// A store that reads `path` now (if it exists) and writes it on [`Store::flush`].
    pub fn with_snapshot(path: PathBuf, recent_max: usize, retention_days: u32) -> Result<Self, StoreError> {
        let mut store = Self::new(recent_max, retention_days);
        if let Some(bytes) = snapshot::read_if_exists(&path).map_err(|e| StoreError::Other(format!("cannot read snapshot {}: {e}", path.display())))? {
            let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Other(format!("snapshot {} is corrupt: {e}", path.display())))?;
            let now = Utc::now().timestamp();
            let st = store.state.get_mut();
            st.counters = file
                .counters
                .into_iter()
                .filter(|(_, _, exp)| *exp > now)
                .map(|(k, v, e)| (k, (v, e)))
                .collect();
            st.tenants = file.tenants.into_iter().map(|(s, id, h)| ((s, id), h)).collect();
            st.orgs = file.orgs.into_iter().collect();
        }
        store.snapshot = Some(path);
        Ok(store)
    }

    fn record_history(&self, st: &mut State, scope: Scope, tenant: &str, rec: &UsageRecord) {
        let h = st.tenants.entry((scope, tenant.to_string())).or_default();
        let day = h.days.entry(rec.day.clone()).or_default();
        day.totals.add(&rec.totals);
        day.by_provider.entry(rec.provider.clone()).or_default().add(&rec.totals);
        day.by_model.entry(rec.model.clone()).or_default().add(&rec.totals);
        for tag in &rec.tags {
            let known = h.tags.contains(tag) || (h.tags.len() < self.max_tags && h.tags.insert(tag.clone()));
            let name = if known { tag.as_str() } else { "other" };
            day.by_tag.entry(name.to_string()).or_default().add(&rec.totals);
        }
        h.recent.push_front(rec.clone());
        h.recent.truncate(self.recent_max);
        // Drop days past retention, counted back from the newest day.
        if let Some(newest) = h.days.keys().next_back().and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()) {
            let cutoff = (newest - Duration::days(i64::from(self.retention_days))).format("%Y-%m-%d").to_string();
            while h.days.first_key_value().is_some_and(|(d, _)| *d < cutoff) {
                h.days.pop_first();
            }
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        let mut st = self.state.lock();
        let mut before = Vec::with_capacity(req.ops.len());
        for (index, op) in req.ops.iter().enumerate() {
            let current = st.counters.get(&op.key).map_or(0, |(v, _)| *v);
            if let Some(max) = op.max {
                if op.amount > 0 && current >= max {
                    return Ok(ReserveOutcome::Refused { index, current });
                }
            }
            before.push(current);
        }
        for op in &req.ops {
            let exp = req.expires.of(op.key.window).timestamp();
            let e = st.counters.entry(op.key.clone()).or_insert((0, exp));
            e.0 += op.amount;
            e.1 = e.1.max(exp);
        }
        st.dirty = true;
        Ok(ReserveOutcome::Admitted { before })
    }

    async fn settle(&self, s: &Settlement) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        for (key, delta) in &s.deltas {
            let exp = s.expires.of(key.window).timestamp();
            let e = st.counters.entry(key.clone()).or_insert((0, exp));
            e.0 += delta;
        }
        let rec = &s.record;
        self.record_history(&mut st, Scope::Profile, &rec.profile, rec);
        if let Some(org) = &rec.org {
            self.record_history(&mut st, Scope::Org, org, rec);
        }
        st.dirty = true;
        Ok(())
    }

    async fn read(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        let st = self.state.lock();
        Ok(keys.iter().map(|k| st.counters.get(k).map_or(0, |(v, _)| *v)).collect())
    }

    async fn history(&self, scope: Scope, tenant: &str, days: &[String], recent: usize) -> Result<History, StoreError> {
        let st = self.state.lock();
        let mut out = History::default();
        let Some(h) = st.tenants.get(&(scope, tenant.to_string())) else {
            return Ok(out);
        };
        for d in days {
            if let Some(agg) = h.days.get(d) {
                out.days.insert(d.clone(), agg.totals.clone());
                for (p, t) in &agg.by_provider {
                    out.by_provider.entry(p.clone()).or_default().add(t);
                }
                for (m, t) in &agg.by_model {
                    out.by_model.entry(m.clone()).or_default().add(t);
                }
                for (tag, t) in &agg.by_tag {
                    out.by_tag.entry(tag.clone()).or_default().add(t);
                }
            }
        }
        out.recent = h.recent.iter().take(recent).cloned().collect();
        Ok(out)
    }

    async fn tenants(&self, scope: Scope) -> Result<Vec<String>, StoreError> {
        let st = self.state.lock();
        Ok(st.tenants.keys().filter(|(s, _)| *s == scope).map(|(_, id)| id.clone()).collect())
    }

    async fn bind_org(&self, profile: &str, org: Option<&str>) -> Result<Option<String>, StoreError> {
        let mut st = self.state.lock();
        if !st.orgs.contains_key(profile) {
            st.orgs.insert(profile.to_string(), org.unwrap_or_default().to_string());
            st.dirty = true;
        }
        Ok(st.orgs.get(profile).filter(|o| !o.is_empty()).cloned())
    }

    async fn claim_alert(&self, key: &str, expires: chrono::DateTime<Utc>) -> Result<bool, StoreError> {
        let mut st = self.state.lock();
        let now = Utc::now().timestamp();
        if st.alerts.get(key).is_some_and(|exp| *exp > now) {
            return Ok(false);
        }
        st.alerts.insert(key.to_string(), expires.timestamp());
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let now = Utc::now().timestamp();
        // Expired counters (minute and hour windows expire within hours) go, snapshot or not.
        {
            let mut st = self.state.lock();
            st.counters.retain(|_, (_, exp)| *exp > now);
            st.alerts.retain(|_, exp| *exp > now);
        }
        let Some(path) = &self.snapshot else { return Ok(()) };
        let bytes = {
            let mut st = self.state.lock();
            if !std::mem::replace(&mut st.dirty, false) {
                return Ok(());
            }
            let file = SnapshotFile {
                version: 1,
                counters: st.counters.iter().map(|(k, (v, e))| (k.clone(), *v, *e)).collect(),
                tenants: st.tenants.iter().map(|((s, id), h)| (*s, id.clone(), h.clone())).collect(),
                orgs: st.orgs.iter().map(|(p, o)| (p.clone(), o.clone())).collect(),
            };
            serde_json::to_vec(&file).map_err(|e| StoreError::Other(e.to_string()))?
        };
        let path = path.clone();
        tokio::task::spawn_blocking(move || snapshot::write_atomic(&path, &bytes))
            .await
            .map_err(|e| StoreError::Other(e.to_string()))?
            .map_err(|e| StoreError::Other(format!("cannot write snapshot: {e}")))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::window::Window;
    use crate::quota::ledger::{CounterOp, Expiry};

    fn key(field: &str) -> CounterKey {
        CounterKey {
            scope: Scope::Profile,
            tenant: "p".into(),
            window: Window::Daily,
            bucket: "2026-11-22".into(),
            field: field.into(),
        }
    }

    fn req(amount: i64, max: i64) -> ReserveRequest {
        let far = Utc::now() + Duration::days(30);
        ReserveRequest {
            ops: vec![
                CounterOp {
                    key: key("requests"),
                    amount: 1,
                    max: None,
                },
                CounterOp {
                    key: key("cost"),
                    amount,
                    max: Some(max),
                },
            ],
            expires: Expiry::all(far),
        }
    }

    #[tokio::test]
    async fn admits_while_below_max_then_refuses_without_applying() {
        let s = MemoryStore::new(10, 400);
        assert_eq!(s.reserve(&req(6, 10)).await.unwrap(), ReserveOutcome::Admitted { before: vec![0, 0] });
        assert_eq!(s.reserve(&req(6, 10)).await.unwrap(), ReserveOutcome::Admitted { before: vec![1, 6] });
        assert_eq!(s.reserve(&req(6, 10)).await.unwrap(), ReserveOutcome::Refused { index: 1, current: 12 });
        assert_eq!(s.read(&[key("requests"), key("cost")]).await.unwrap(), vec![2, 12]);
    }

    #[tokio::test]
    async fn an_alert_is_claimed_once_until_it_expires() {
        let s = MemoryStore::new(10, 400);
        let later = Utc::now() + Duration::hours(1);
        assert!(s.claim_alert("p:p1:daily:cost:1:2:0.8", later).await.unwrap());
        assert!(!s.claim_alert("p:p1:daily:cost:1:2:0.8", later).await.unwrap());
        assert!(s.claim_alert("p:p1:daily:cost:1:2:0.95", later).await.unwrap());
        let past = Utc::now() - Duration::seconds(1);
        assert!(s.claim_alert("gone", past).await.unwrap());
        assert!(s.claim_alert("gone", later).await.unwrap(), "an expired claim can be made again");
    }

    #[tokio::test]
    async fn snapshot_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let s = MemoryStore::with_snapshot(path.clone(), 10, 400).unwrap();
        s.reserve(&req(7, 100)).await.unwrap();
        s.flush().await.unwrap();
        let s2 = MemoryStore::with_snapshot(path, 10, 400).unwrap();
        assert_eq!(s2.read(&[key("cost")]).await.unwrap(), vec![7]);
    }
}
