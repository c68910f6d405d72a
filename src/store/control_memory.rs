//! The embedded backend of [`ControlStore`]: overrides, grants, resets and the audit log in
//! process memory, written whole to a small JSON file (atomically) after every change when a
//! file is given (beside the memory store's snapshot), and read back at start. Changes are rare
//! admin actions, so writing the file on each is cheap and loses nothing on a crash.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::snapshot;
use crate::quota::control::{AuditEntry, AuditPage, AuditQuery, CasOutcome, ControlState, ControlStore, TenantControl, TenantRef, AUDIT_MAX};
use crate::quota::ledger::StoreError;

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u64,
    /// Tenant field (`p:<id>`) -> (record version, record). Versions of removed records are
    /// kept so a compare-and-set against a stale read fails.
    records: BTreeMap<String, (u64, Option<TenantControl>)>,
    /// Newest first.
    audit: VecDeque<AuditEntry>,
}

pub struct MemoryControl {
    state: Mutex<State>,
    file: Option<PathBuf>,
}

impl MemoryControl {
    /// Kept in memory only (lost on restart, like counters without a snapshot).
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            file: None,
        }
    }

    /// Reads `file` now if it exists, and writes it after every change.
    pub fn with_file(file: PathBuf) -> Result<Self, StoreError> {
        let state = match snapshot::read_if_exists(&file).map_err(|e| StoreError::Other(format!("cannot read {}: {e}", file.display())))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Other(format!("{} is corrupt: {e}", file.display())))?,
            None => State::default(),
        };
        Ok(Self {
            state: Mutex::new(state),
            file: Some(file),
        })
    }

    /// The control file that goes with a memory snapshot file: `state.json` ->
    /// `state.control.json`.
    pub fn file_beside(snapshot: &Path) -> PathBuf {
        let stem = snapshot
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "spendgate".into());
        snapshot.with_file_name(format!("{stem}.control.json"))
    }

    fn persist(&self, state: &State) -> Result<(), StoreError> {
        let Some(file) = &self.file else { return Ok(()) };
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Other(e.to_string()))?;
        snapshot::write_atomic(file, &bytes).map_err(|e| StoreError::Other(format!("cannot write {}: {e}", file.display())))
    }
}

impl Default for MemoryControl {
    fn default() -> Self {
        Self::new()
    }
}

fn push_audit(state: &mut State, e: &AuditEntry) {
    state.audit.push_front(e.clone());
    state.audit.truncate(AUDIT_MAX);
}

#[async_trait]
impl ControlStore for MemoryControl {
    async fn version(&self) -> Result<u64, StoreError> {
        Ok(self.state.lock().version)
    }

    async fn load(&self) -> Result<ControlState, StoreError> {
        let st = self.state.lock();
        Ok(ControlState {
            version: st.version,
            tenants: st
                .records
                .iter()
                .filter_map(|(f, (_, r))| Some((TenantRef::parse_field(f)?, r.clone()?)))
                .collect(),
        })
    }

    async fn get(&self, tenant: &TenantRef) -> Result<(u64, TenantControl), StoreError> {
        let st = self.state.lock();
        Ok(match st.records.get(&tenant.field()) {
            Some((v, r)) => (*v, r.clone().unwrap_or_default()),
            None => (0, TenantControl::default()),
        })
    }

    async fn update(&self, tenant: &TenantRef, expected: u64, record: &TenantControl, audit: &AuditEntry) -> Result<CasOutcome, StoreError> {
        let mut st = self.state.lock();
        let field = tenant.field();
        let current = st.records.get(&field).map_or(0, |(v, _)| *v);
        if current != expected {
            return Ok(CasOutcome::Conflict);
        }
        let before = st.records.get(&field).cloned();
        let value = (!record.is_empty()).then(|| record.clone());
        st.records.insert(field.clone(), (current + 1, value));
        st.version += 1;
        push_audit(&mut st, audit);
        if let Err(e) = self.persist(&st) {
            // Undo, so memory and file agree (and the caller sees the failure).
            match before {
                Some(b) => st.records.insert(field, b),
                None => st.records.remove(&field),
            };
            st.version -= 1;
            st.audit.pop_front();
            return Err(e);
        }
        Ok(CasOutcome::Written { version: st.version })
    }

    async fn append_audit(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        push_audit(&mut st, audit);
        self.persist(&st)
    }

    async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let st = self.state.lock();
        let matching: Vec<&AuditEntry> = st.audit.iter().filter(|e| query.matches(e)).collect();
        Ok(AuditPage {
            total: matching.len(),
            entries: matching.into_iter().skip(query.offset).take(query.limit).cloned().collect(),
        })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Scope;
    use chrono::Utc;

    fn entry(id: &str) -> AuditEntry {
        AuditEntry {
            at: Utc::now(),
            token: "ops".into(),
            action: "override_set".into(),
            tenant: Some(TenantRef::new(Scope::Profile, id)),
            old: serde_json::Value::Null,
            new: serde_json::Value::Null,
            reason: None,
        }
    }

    #[tokio::test]
    async fn compare_and_set_persist_and_audit() {
        let dir = tempfile::tempdir().unwrap();
        let file = MemoryControl::file_beside(&dir.path().join("snap.json"));
        assert_eq!(file, dir.path().join("snap.control.json"));
        let t = TenantRef::new(Scope::Profile, "p-1");
        let rec = TenantControl {
            limits: Some(Vec::new()),
            ..Default::default()
        };
        {
            let s = MemoryControl::with_file(file.clone()).unwrap();
            assert_eq!(s.get(&t).await.unwrap().0, 0);
            assert_eq!(s.update(&t, 0, &rec, &entry("p-1")).await.unwrap(), CasOutcome::Written { version: 1 });
            assert_eq!(s.update(&t, 0, &rec, &entry("p-1")).await.unwrap(), CasOutcome::Conflict, "a stale version");
            s.append_audit(&entry("p-2")).await.unwrap();
        }
        let s = MemoryControl::with_file(file).unwrap();
        assert_eq!(s.version().await.unwrap(), 1);
        assert_eq!(s.get(&t).await.unwrap(), (1, rec.clone()));
        assert_eq!(s.load().await.unwrap().tenants, vec![(t.clone(), rec)]);
        // Removing the record keeps its version.
        assert_eq!(
            s.update(&t, 1, &TenantControl::default(), &entry("p-1")).await.unwrap(),
            CasOutcome::Written { version: 2 }
        );
        assert_eq!(s.get(&t).await.unwrap(), (2, TenantControl::default()));
        assert!(s.load().await.unwrap().tenants.is_empty());
        let q = AuditQuery {
            tenant: Some("p-1".into()),
            limit: 10,
            ..Default::default()
        };
        let page = s.audit(&q).await.unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(
            s.audit(&AuditQuery {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .total,
            3
        );
    }
}
