//! The one-time import of an earlier version's JSON snapshot (`store.snapshot`) into the
//! database: counters, daily history with its provider and model breakdowns, recent
//! requests, and org bindings. The database remembers the import, so it happens once.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use rusqlite::{params, Connection};
use serde::Deserialize;

use super::rows::{add_counters, add_totals, insert_recent, scope_name, TotalsTable};
use crate::domain::Scope;
use crate::quota::ledger::{CounterKey, Totals, UsageRecord};

#[derive(Deserialize)]
struct DayAgg {
    totals: Totals,
    #[serde(default)]
    by_provider: BTreeMap<String, Totals>,
    #[serde(default)]
    by_model: BTreeMap<String, Totals>,
}

#[derive(Deserialize)]
struct TenantHistory {
    #[serde(default)]
    days: BTreeMap<String, DayAgg>,
    #[serde(default)]
    recent: VecDeque<UsageRecord>,
}

/// The snapshot file's format.
#[derive(Deserialize)]
struct SnapshotFile {
    #[allow(dead_code)]
    version: u32,
    counters: Vec<(CounterKey, i64, i64)>,
    tenants: Vec<(Scope, String, TenantHistory)>,
    #[serde(default)]
    orgs: Vec<(String, String)>,
}

const MARK: &str = "snapshot_imported";

/// What an import brought in.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub counters: usize,
    pub tenants: usize,
    pub records: usize,
}

/// Imports `path` unless this database already has it. `Ok(None)` when there was nothing to
/// import (no file, or imported before).
pub fn import_once(conn: &mut Connection, path: &Path, now: i64) -> Result<Option<Imported>, String> {
    let name = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string();
    let done: Option<String> = super::read::meta(conn, MARK).map_err(|e| e.to_string())?;
    if done.is_some() {
        return Ok(None);
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the snapshot {}: {e}", path.display())),
    };
    let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| format!("the snapshot {} is corrupt: {e}", path.display()))?;
    write(conn, &file, &name, now)
        .map_err(|e| format!("cannot import the snapshot {}: {e}", path.display()))
        .map(Some)
}

fn write(conn: &mut Connection, file: &SnapshotFile, name: &str, now: i64) -> rusqlite::Result<Imported> {
    let tx = conn.transaction()?;
    let mut out = Imported::default();
    {
        let mut counters: Vec<(&CounterKey, i64)> = file
            .counters
            .iter()
            .filter(|(_, v, expires)| *expires > now && *v != 0)
            .map(|(k, v, _)| (k, *v))
            .collect();
        counters.sort_unstable_by_key(|(k, _)| *k);
        add_counters(&tx, &counters)?;
        out.counters += counters.len();
        let mut tenants = tx.prepare(
            "INSERT INTO tenants VALUES (?1, ?2, ?3, ?4) ON CONFLICT (scope, tenant) DO UPDATE SET \
             first_day = MIN(first_day, excluded.first_day), last_day = MAX(last_day, excluded.last_day)",
        )?;
        let unknown = "unknown".to_string();
        for (scope, tenant, h) in &file.tenants {
            let s = scope_name(*scope);
            for (day, agg) in &h.days {
                // Days without a breakdown (none in practice) still count in the totals.
                let providers: Vec<(&String, &Totals)> = if agg.by_provider.is_empty() {
                    vec![(&unknown, &agg.totals)]
                } else {
                    agg.by_provider.iter().collect()
                };
                for (p, t) in providers {
                    add_totals(&tx, TotalsTable::DailyProvider, &[s, tenant, day, p], t)?;
                }
                let models: Vec<(&String, &Totals)> = if agg.by_model.is_empty() {
                    vec![(&unknown, &agg.totals)]
                } else {
                    agg.by_model.iter().collect()
                };
                for (m, t) in models {
                    add_totals(&tx, TotalsTable::DailyModel, &[s, tenant, day, m], t)?;
                }
                add_totals(&tx, TotalsTable::Monthly, &[s, tenant, day.get(..7).unwrap_or(day)], &agg.totals)?;
            }
            if let (Some(first), Some(last)) = (h.days.keys().next(), h.days.keys().next_back()) {
                tenants.execute(params![s, tenant, first, last])?;
                out.tenants += 1;
            }
            // Org lists repeat their profiles' records.
            if *scope == Scope::Profile {
                for r in h.recent.iter().rev() {
                    insert_recent(&tx, r)?;
                    out.records += 1;
                }
            }
        }
        let mut binds = tx.prepare("INSERT INTO org_bindings VALUES (?1, ?2) ON CONFLICT (profile) DO NOTHING")?;
        for (p, o) in &file.orgs {
            binds.execute(params![p, (!o.is_empty()).then_some(o)])?;
        }
        tx.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![MARK, name])?;
    }
    tx.commit()?;
    Ok(out)
}
