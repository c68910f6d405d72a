//! Reading the embedded store's database: history for the usage API (any set of days or
//! months, straight from SQL), the tenant registry, org bindings, the committed counters,
//! and the start-up recovery (calls open at a crash, counters of the current windows).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::de::DeserializeOwned;

use super::counters::Counters;
use super::journal::Changes;
use super::rows::{base_column, insert_recent, prune_recent, scope_name, Keep};
use crate::domain::window::Window;
use crate::domain::{Metric, Scope};
use crate::quota::ledger::{CounterKey, History, Totals, UsageRecord};

/// Parses a word the database keeps (`profile`, `daily`, ...) the way the config does.
fn word<T: DeserializeOwned>(s: &str) -> Option<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s)).ok()
}

const TOTALS: &str = "SUM(requests), SUM(cost_nanos), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(characters)";

fn totals_at(row: &Row<'_>, first: usize) -> rusqlite::Result<Totals> {
    Ok(Totals {
        requests: row.get(first)?,
        cost_nanos: row.get(first + 1)?,
        input_tokens: row.get(first + 2)?,
        output_tokens: row.get(first + 3)?,
        cached_tokens: row.get(first + 4)?,
        characters: row.get(first + 5)?,
    })
}

/// A usage record from a row that starts `at, day, profile, org, provider, model, path`,
/// has its totals from column `totals` and its tags (comma-separated or NULL) in the column
/// after them.
fn record_at(r: &Row<'_>, status: u16, reason: Option<String>, totals: usize) -> rusqlite::Result<UsageRecord> {
    let at: String = r.get(0)?;
    let tags: Option<String> = r.get(totals + 6)?;
    Ok(UsageRecord {
        at: DateTime::parse_from_rfc3339(&at).map(|t| t.with_timezone(&Utc)).unwrap_or_default(),
        day: r.get(1)?,
        profile: r.get(2)?,
        org: r.get(3)?,
        provider: r.get(4)?,
        model: r.get(5)?,
        path: r.get(6)?,
        status,
        reason,
        tags: tags.map(|t| t.split(',').map(str::to_string).collect()).unwrap_or_default(),
        totals: totals_at(r, totals)?,
    })
}

/// Rows of `(key, totals...)` from `sql`, summed per key.
fn grouped(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> rusqlite::Result<std::collections::BTreeMap<String, Totals>> {
    let mut st = conn.prepare_cached(sql)?;
    let rows = st.query_map(args, |r| Ok((r.get::<_, String>(0)?, totals_at(r, 1)?)))?;
    rows.collect()
}

/// A tenant's history over `periods`: day ids (`2026-11-29`) read the daily tables (with the
/// breakdowns), month ids (`2026-11`) the monthly one.
pub fn history(conn: &Connection, scope: Scope, tenant: &str, periods: &[String], recent: usize) -> rusqlite::Result<History> {
    let mut out = History::default();
    let (months, days): (Vec<&String>, Vec<&String>) = periods.iter().partition(|p| p.len() == 7);
    let s = scope_name(scope);
    if !days.is_empty() {
        let days = serde_json::to_string(&days).expect("strings serialize");
        let within = "scope = ?1 AND tenant = ?2 AND day IN (SELECT value FROM json_each(?3))";
        let sums = |column: &str, table: &str| {
            grouped(
                conn,
                &format!("SELECT {column}, {TOTALS} FROM {table} WHERE {within} GROUP BY {column}"),
                params![s, tenant, days],
            )
        };
        out.days = sums("day", "daily_provider")?;
        out.by_provider = sums("provider", "daily_provider")?;
        out.by_model = sums("model", "daily_model")?;
        out.by_tag = sums("tag", "daily_tag")?;
    }
    if !months.is_empty() {
        let months = serde_json::to_string(&months).expect("strings serialize");
        let sql = format!("SELECT month, {TOTALS} FROM monthly WHERE scope = ?1 AND tenant = ?2 AND month IN (SELECT value FROM json_each(?3)) GROUP BY month");
        out.days.extend(grouped(conn, &sql, params![s, tenant, months])?);
    }
    if recent > 0 {
        let column = match scope {
            Scope::Profile => "profile",
            Scope::Org => "org",
        };
        let mut st = conn.prepare_cached(&format!(
            "SELECT at, day, profile, org, provider, model, path, status, reason, requests, cost_nanos, input_tokens, \
             output_tokens, cached_tokens, characters, tags FROM recent WHERE {column} = ?1 ORDER BY id DESC LIMIT ?2"
        ))?;
        let limit = i64::try_from(recent).unwrap_or(i64::MAX);
        for row in st.query_map(params![tenant, limit], |r| record_at(r, r.get(7)?, r.get(8)?, 9))? {
            out.recent.push(row?);
        }
    }
    Ok(out)
}

/// Every tenant of a scope with usage in `periods` (day ids read the daily table, month ids
/// the monthly one) and its totals over them: one grouped query per kind of period, through
/// the tables' indexes on the day and the month.
pub fn tenant_totals(conn: &Connection, scope: Scope, periods: &[String]) -> rusqlite::Result<HashMap<String, Totals>> {
    let mut out: HashMap<String, Totals> = HashMap::new();
    let (months, days): (Vec<&String>, Vec<&String>) = periods.iter().partition(|p| p.len() == 7);
    for (table, column, ids) in [("daily_provider", "day", days), ("monthly", "month", months)] {
        if ids.is_empty() {
            continue;
        }
        let ids = serde_json::to_string(&ids).expect("strings serialize");
        let mut st = conn.prepare_cached(&format!(
            "SELECT tenant, {TOTALS} FROM {table} WHERE {column} IN (SELECT value FROM json_each(?2)) AND scope = ?1 GROUP BY tenant"
        ))?;
        for row in st.query_map(params![scope_name(scope), ids], |r| Ok((r.get::<_, String>(0)?, totals_at(r, 1)?)))? {
            let (tenant, t) = row?;
            out.entry(tenant).or_default().add(&t);
        }
    }
    Ok(out)
}

/// Every tenant of a scope with history, sorted.
pub fn tenants(conn: &Connection, scope: Scope) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached("SELECT tenant FROM tenants WHERE scope = ?1 ORDER BY tenant")?;
    let rows = st.query_map([scope_name(scope)], |r| r.get(0))?;
    rows.collect()
}

/// A profile's binding: `None` when it has none yet, `Some(None)` when it belongs to no org.
pub fn binding(conn: &Connection, profile: &str) -> rusqlite::Result<Option<Option<String>>> {
    conn.prepare_cached("SELECT org FROM org_bindings WHERE profile = ?1")?
        .query_row([profile], |r| r.get::<_, Option<String>>(0))
        .optional()
}

/// Committed counter values (0 when absent).
pub fn counters(conn: &Connection, keys: &[CounterKey]) -> rusqlite::Result<Vec<i64>> {
    let mut base =
        conn.prepare_cached("SELECT cost, tokens, requests, chars FROM counter_rows WHERE scope = ?1 AND tenant = ?2 AND window = ?3 AND bucket = ?4")?;
    let mut other = conn.prepare_cached("SELECT value FROM counters WHERE scope = ?1 AND tenant = ?2 AND window = ?3 AND bucket = ?4 AND field = ?5")?;
    keys.iter()
        .map(|k| {
            let (scope, window) = (scope_name(k.scope), k.window.as_str());
            let value = match base_column(&k.field) {
                Some(column) => base.query_row(params![scope, k.tenant, window, k.bucket], |r| r.get(column)).optional()?,
                None => other.query_row(params![scope, k.tenant, window, k.bucket, k.field], |r| r.get(0)).optional()?,
            };
            Ok(value.unwrap_or(0))
        })
        .collect()
}

/// Every committed counter, into memory (at start; the writer is not running yet). Returns
/// how many counters (non-zero fields) it loaded.
pub fn load_counters(conn: &Connection, into: &mut Counters, now: i64) -> rusqlite::Result<usize> {
    let mut n = 0;
    let mut st = conn.prepare("SELECT scope, tenant, window, bucket, cost, tokens, requests, chars FROM counter_rows")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        // `add_row` adds to the key's bucket whatever the key's field.
        let Some(key) = counter_key(r, Metric::CostUsd.counter_field())? else {
            continue;
        };
        let values = [r.get::<_, i64>(4)?, r.get(5)?, r.get(6)?, r.get(7)?];
        n += values.iter().filter(|v| **v != 0).count();
        into.add_row(&key, Metric::ALL.iter().map(|m| m.field()).zip(values), now);
    }
    let mut st = conn.prepare("SELECT scope, tenant, window, bucket, field, value FROM counters")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let Some(key) = counter_key(r, r.get(4)?)? else { continue };
        into.add(&key, r.get(5)?, now);
        n += 1;
    }
    Ok(n)
}

/// The key of a counter row (scope, tenant, window and bucket in columns 0 to 3) with
/// `field`; `None`, with a warning, for a scope or window this build does not know.
fn counter_key(r: &Row<'_>, field: std::sync::Arc<str>) -> rusqlite::Result<Option<CounterKey>> {
    let (scope, window): (String, String) = (r.get(0)?, r.get(2)?);
    let (Some(scope), Some(window)) = (word::<Scope>(&scope), word::<Window>(&window)) else {
        tracing::warn!(%scope, %window, "embedded store: skipping a counter of an unknown kind");
        return Ok(None);
    };
    Ok(Some(CounterKey {
        scope,
        tenant: r.get(1)?,
        window,
        bucket: r.get(3)?,
        field,
    }))
}

/// Charges the calls that were open when the process stopped without settling them: each
/// is recorded at its reservation's estimate, with reason `crash` (the counters already hold
/// the reservation). Returns how many and their cost.
pub fn settle_crashed(conn: &mut Connection, keep: Keep) -> rusqlite::Result<(usize, i64)> {
    let tx = conn.transaction()?;
    let records: Vec<UsageRecord> = {
        let mut st = tx.prepare(
            "SELECT at, day, profile, org, provider, model, path, requests, cost_nanos, input_tokens, output_tokens, \
             cached_tokens, characters, tags FROM open_calls",
        )?;
        let rows = st.query_map([], |r| record_at(r, 0, Some("crash".into()), 7))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let cost = records.iter().map(|r| r.totals.cost_nanos).sum();
    let mut changes = Changes::default();
    for r in &records {
        changes.add_history(r);
    }
    changes.apply(&tx, keep)?;
    if keep.recent_max > 0 {
        for r in &records {
            insert_recent(&tx, r)?;
        }
    }
    let profiles: std::collections::BTreeSet<String> = records.iter().map(|r| r.profile.clone()).collect();
    tx.execute("DELETE FROM open_calls", [])?;
    tx.commit()?;
    prune_recent(conn, profiles.iter().map(String::as_str), keep)?;
    Ok((records.len(), cost))
}

/// A value of the `meta` table.
pub fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()
}

/// The alert claims not yet expired at `now` (unix seconds).
pub fn alert_claims(conn: &Connection, now: i64) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut st = conn.prepare("SELECT key, expires FROM alert_claims WHERE expires > ?1")?;
    let rows = st.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[cfg(test)]
mod counter_tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::embedded::counters::tests::key;
    use crate::store::embedded::rows::add_counters;
    use crate::store::embedded::schema::open_writer;

    /// Base fields gathered into one row per bucket, `match` fields in their own rows: what
    /// is added reads back the same, point by point and loaded whole.
    #[test]
    fn counters_written_in_rows_read_back_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open_writer(&dir.path().join("s.db"), Durability::Batched).unwrap();
        let keys = [
            key("p", Window::Daily, "2026-11-29", "cost"),
            key("p", Window::Daily, "2026-11-29", "cost#m1"),
            key("p", Window::Daily, "2026-11-29", "requests"),
            key("p", Window::Monthly, "2026-11", "cost"),
            key("q", Window::Daily, "2026-11-29", "chars"),
            key("q", Window::Daily, "2026-11-29", "tokens"),
        ];
        let mut deltas: Vec<(&CounterKey, i64)> = keys.iter().zip([5, 7, 1, 5, 615, 0]).collect();
        deltas.sort_unstable_by_key(|(k, _)| *k);
        for _ in 0..2 {
            let tx = c.transaction().unwrap();
            add_counters(&tx, &deltas).unwrap();
            tx.commit().unwrap();
        }
        let rows: i64 = c.query_row("SELECT COUNT(*) FROM counter_rows", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 3, "one row per tenant and bucket");
        let missing = key("r", Window::Daily, "2026-11-29", "cost");
        let mut asked = keys.to_vec();
        asked.push(missing);
        assert_eq!(counters(&c, &asked).unwrap(), [10, 14, 2, 10, 1230, 0, 0]);
        let mut loaded = Counters::default();
        assert_eq!(load_counters(&c, &mut loaded, 0).unwrap(), 5, "the zero field is not a counter");
        for (k, want) in keys.iter().zip([10, 14, 2, 10, 1230, 0]) {
            assert_eq!(loaded.get(k), want, "{k:?}");
        }
        let tx = c.transaction().unwrap();
        crate::store::embedded::rows::prune_counters(&tx, "daily", "2026-11-29").unwrap();
        tx.commit().unwrap();
        assert_eq!(counters(&c, &keys).unwrap(), [0, 0, 0, 10, 0, 0], "a pruned bucket goes from both tables");
    }
}
