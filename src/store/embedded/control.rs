//! The embedded backend of [`ControlStore`]: run-time overrides, top-ups, resets and the
//! audit log in the embedded store's database (tables `control_tenants` and `audit`, schema
//! version 2). Changes are rare admin actions: each is one transaction of its own (the
//! compare-and-set, the change marker and the audit line together), on a connection of its
//! own, off the async threads.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::schema::{self, OpenError};
use crate::quota::control::{AuditEntry, AuditPage, AuditQuery, CasOutcome, ControlState, ControlStore, TenantControl, TenantRef, AUDIT_MAX};
use crate::quota::ledger::StoreError;

pub struct EmbeddedControl {
    conn: Arc<Mutex<Connection>>,
    writable: bool,
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("embedded store (control data): {e}"))
}

impl EmbeddedControl {
    /// Opens the control tables of the database the embedded store serves from (it exists and
    /// is migrated by then).
    pub fn open(path: &Path, writable: bool) -> Result<EmbeddedControl, OpenError> {
        let conn = if writable {
            schema::open_connection(path)?
        } else {
            schema::open_reader(path)?
        };
        Ok(EmbeddedControl {
            conn: Arc::new(Mutex::new(conn)),
            writable,
        })
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock())).await.map_err(failed)?.map_err(failed)
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self.writable {
            Ok(())
        } else {
            Err(failed("opened read-only"))
        }
    }
}

fn version_of(conn: &Connection) -> rusqlite::Result<u64> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'control_version'", [], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn json_err(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

fn append(tx: &Connection, audit: &AuditEntry) -> rusqlite::Result<()> {
    let entry = serde_json::to_string(audit).map_err(json_err)?;
    tx.execute(
        "INSERT INTO audit (at, tenant, entry) VALUES (?1, ?2, ?3)",
        params![
            audit.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            audit.tenant.as_ref().map(TenantRef::field),
            entry
        ],
    )?;
    // The newest AUDIT_MAX are kept.
    tx.execute(
        "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        [AUDIT_MAX as i64],
    )?;
    Ok(())
}

#[async_trait]
impl ControlStore for EmbeddedControl {
    async fn version(&self) -> Result<u64, StoreError> {
        self.run(|c| version_of(c)).await
    }

    async fn load(&self) -> Result<ControlState, StoreError> {
        self.run(|c| {
            let tx = c.transaction()?;
            let version = version_of(&tx)?;
            let mut tenants = Vec::new();
            {
                let mut st = tx.prepare("SELECT field, record FROM control_tenants WHERE record IS NOT NULL")?;
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    let (field, record): (String, String) = (r.get(0)?, r.get(1)?);
                    let (Some(t), Ok(rec)) = (TenantRef::parse_field(&field), serde_json::from_str::<TenantControl>(&record)) else {
                        tracing::warn!(%field, "embedded store: skipping an unreadable control record");
                        continue;
                    };
                    tenants.push((t, rec));
                }
            }
            tx.commit()?;
            Ok(ControlState { version, tenants })
        })
        .await
    }

    async fn get(&self, tenant: &TenantRef) -> Result<(u64, TenantControl), StoreError> {
        let field = tenant.field();
        self.run(move |c| {
            let row: Option<(i64, Option<String>)> = c
                .query_row("SELECT version, record FROM control_tenants WHERE field = ?1", [&field], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            Ok(match row {
                Some((v, Some(rec))) => (v as u64, serde_json::from_str(&rec).map_err(json_err)?),
                Some((v, None)) => (v as u64, TenantControl::default()),
                None => (0, TenantControl::default()),
            })
        })
        .await
    }

    async fn update(&self, tenant: &TenantRef, expected: u64, record: &TenantControl, audit: &AuditEntry) -> Result<CasOutcome, StoreError> {
        self.writable()?;
        let field = tenant.field();
        let value = if record.is_empty() {
            None
        } else {
            Some(serde_json::to_string(record).map_err(failed)?)
        };
        let audit = audit.clone();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = tx
                .query_row("SELECT version FROM control_tenants WHERE field = ?1", [&field], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64;
            if current != expected {
                return Ok(CasOutcome::Conflict);
            }
            // The version of a removed record is kept (record NULL), so a compare-and-set
            // against a stale read fails.
            tx.execute(
                "INSERT INTO control_tenants (field, version, record) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (field) DO UPDATE SET version = excluded.version, record = excluded.record",
                params![field, (current + 1) as i64, value],
            )?;
            let version = version_of(&tx)? + 1;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('control_version', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [version.to_string()],
            )?;
            append(&tx, &audit)?;
            tx.commit()?;
            Ok(CasOutcome::Written { version })
        })
        .await
    }

    async fn append_audit(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        self.writable()?;
        let audit = audit.clone();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            append(&tx, &audit)?;
            tx.commit()
        })
        .await
    }

    async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let query = query.clone();
        self.run(move |c| {
            // At most AUDIT_MAX rows: filtered here, newest first.
            let mut st = c.prepare("SELECT entry FROM audit ORDER BY id DESC")?;
            let mut rows = st.query([])?;
            let mut page = AuditPage::default();
            while let Some(r) = rows.next()? {
                let entry: String = r.get(0)?;
                let Ok(e) = serde_json::from_str::<AuditEntry>(&entry) else { continue };
                if !query.matches(&e) {
                    continue;
                }
                if page.total >= query.offset && page.entries.len() < query.limit {
                    page.entries.push(e);
                }
                page.total += 1;
            }
            Ok(page)
        })
        .await
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}
