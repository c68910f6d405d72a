//! The embedded store's tables as the writer changes them: the history totals, the tags a
//! tenant keeps, the recent requests and their trimming, and retention.

use std::collections::HashMap;

use chrono::{Datelike, Months, NaiveDate};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::domain::{Metric, Scope};
use crate::quota::ledger::{CounterKey, Totals, UsageRecord};

/// Per-batch maps (keys are tenant ids and counter keys).
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the writer keeps.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub recent_max: usize,
    pub daily_days: u32,
    pub monthly_months: u32,
    /// Most distinct tags kept per tenant; past it a tenant's new tags count as `other`.
    pub max_tags: usize,
}

/// A scope's name in the database.
pub fn scope_name(s: Scope) -> &'static str {
    s.as_str()
}

/// The column of `counter_rows` that holds a base counter field (`cost`, `tokens`,
/// `requests`, `chars`), by its position; `None` for the field of a limit with a `match`,
/// which lives in `counters`.
pub fn base_column(field: &str) -> Option<usize> {
    Metric::ALL.iter().position(|m| m.field() == field)
}

/// Adds counter deltas: a tenant's base fields of one bucket as one row of `counter_rows`,
/// other fields one row each in `counters`. `deltas` should be sorted by key: a bucket's
/// fields next to each other share one row's write (and pages are visited in order);
/// unsorted, each run is written on its own, with the same result.
pub fn add_counters(tx: &Connection, deltas: &[(&CounterKey, i64)]) -> rusqlite::Result<()> {
    const { assert!(Metric::ALL.len() == 4, "counter_rows has four value columns") };
    let mut rows = tx.prepare_cached(
        "INSERT INTO counter_rows VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (scope, tenant, window, bucket) DO UPDATE SET cost = cost + excluded.cost, \
         tokens = tokens + excluded.tokens, requests = requests + excluded.requests, chars = chars + excluded.chars",
    )?;
    let mut others = tx.prepare_cached(
        "INSERT INTO counters VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (scope, tenant, window, bucket, field) DO UPDATE SET value = value + excluded.value",
    )?;
    let mut write_row = |k: &CounterKey, [cost, tokens, requests, chars]: [i64; 4]| {
        rows.execute(params![
            scope_name(k.scope),
            k.tenant,
            k.window.as_str(),
            k.bucket,
            cost,
            tokens,
            requests,
            chars
        ])
    };
    // The bucket whose base fields are being gathered, and their sums.
    let mut pending: Option<(&CounterKey, [i64; 4])> = None;
    for &(key, delta) in deltas {
        let Some(column) = base_column(&key.field) else {
            others.execute(params![scope_name(key.scope), key.tenant, key.window.as_str(), key.bucket, key.field, delta])?;
            continue;
        };
        match &mut pending {
            // A sum past the i64 range (only repeated keys of an imported snapshot could
            // reach it) is not gathered: the row is written and the delta starts the next.
            Some((k, sums)) if k.same_bucket(key) && sums[column].checked_add(delta).is_some() => sums[column] += delta,
            _ => {
                if let Some((k, sums)) = pending.take() {
                    write_row(k, sums)?;
                }
                let mut sums = [0; 4];
                sums[column] = delta;
                pending = Some((key, sums));
            }
        }
    }
    if let Some((k, sums)) = pending {
        write_row(k, sums)?;
    }
    Ok(())
}

/// Removes a window bucket's counters.
pub fn prune_counters(tx: &Connection, window: &str, bucket: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM counter_rows WHERE window = ?1 AND bucket = ?2")?
        .execute(params![window, bucket])?;
    tx.prepare_cached("DELETE FROM counters WHERE window = ?1 AND bucket = ?2")?
        .execute(params![window, bucket])?;
    Ok(())
}

/// One record's use of its tags, kept in order: whether a new tag still fits a tenant's set
/// is decided call by call, as they settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagUse {
    pub profile: String,
    pub org: Option<String>,
    pub day: String,
    pub tags: Vec<String>,
    pub totals: Totals,
}

/// The totals by tag: each use counts under each of its tags, per tenant, under the tag's name
/// while the tenant's set of tags holds it or has room (`keep.max_tags`), else under `other`.
/// Decided in the uses' order, as they were settled.
pub fn write_tags(tx: &Transaction<'_>, uses: &[TagUse], keep: Keep) -> rusqlite::Result<()> {
    let mut sums: Map<(Scope, &str, &str, &str), Totals> = Map::default();
    let mut known: Map<(Scope, &str, &str), bool> = Map::default();
    let mut sizes: Map<(Scope, &str), usize> = Map::default();
    let max = i64::try_from(keep.max_tags.max(1)).unwrap_or(i64::MAX);
    for u in uses {
        let scopes = std::iter::once((Scope::Profile, u.profile.as_str())).chain(u.org.as_deref().map(|o| (Scope::Org, o)));
        for (scope, tenant) in scopes {
            for tag in &u.tags {
                let kept = match known.get(&(scope, tenant, tag.as_str())) {
                    Some(k) => *k,
                    None => {
                        let k = claim_tag(tx, scope, tenant, tag, &u.day, max, &mut sizes)?;
                        known.insert((scope, tenant, tag.as_str()), k);
                        k
                    }
                };
                let name = if kept { tag.as_str() } else { OTHER_TAG };
                sums.entry((scope, tenant, &u.day, name)).or_default().add(&u.totals);
            }
        }
    }
    for ((scope, tenant, day, tag), totals) in &sums {
        add_totals(tx, TotalsTable::DailyTag, &[scope_name(*scope), tenant, day, tag], totals)?;
    }
    Ok(())
}

/// The name a tenant's tags past `store.max_tags` are counted under.
pub const OTHER_TAG: &str = "other";

/// Whether `tag` is in the tenant's set of tags, adding it while the set has room; its
/// `last_day` follows its use (retention forgets the tags of days no longer kept).
fn claim_tag<'a>(
    tx: &Transaction<'_>,
    scope: Scope,
    tenant: &'a str,
    tag: &str,
    day: &str,
    max: i64,
    sizes: &mut Map<(Scope, &'a str), usize>,
) -> rusqlite::Result<bool> {
    let s = scope_name(scope);
    let present = tx
        .prepare_cached("UPDATE tenant_tags SET last_day = ?4 WHERE scope = ?1 AND tenant = ?2 AND tag = ?3 AND last_day < ?4")?
        .execute(params![s, tenant, tag, day])?
        > 0
        || tx
            .prepare_cached("SELECT 1 FROM tenant_tags WHERE scope = ?1 AND tenant = ?2 AND tag = ?3")?
            .exists(params![s, tenant, tag])?;
    if present {
        return Ok(true);
    }
    let size = match sizes.get(&(scope, tenant)) {
        Some(n) => *n,
        None => {
            let n: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM tenant_tags WHERE scope = ?1 AND tenant = ?2")?
                .query_row(params![s, tenant], |r| r.get(0))?;
            usize::try_from(n).unwrap_or(usize::MAX)
        }
    };
    if i64::try_from(size).unwrap_or(i64::MAX) >= max {
        sizes.insert((scope, tenant), size);
        return Ok(false);
    }
    tx.prepare_cached("INSERT INTO tenant_tags VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![s, tenant, tag, day])?;
    sizes.insert((scope, tenant), size + 1);
    Ok(true)
}

/// The history tables that sum totals per key.
#[derive(Debug, Clone, Copy)]
pub enum TotalsTable {
    /// Keyed by scope, tenant, day, provider.
    DailyProvider,
    /// Keyed by scope, tenant, day, model.
    DailyModel,
    /// Keyed by scope, tenant, month.
    Monthly,
    /// Keyed by scope, tenant, day, tag.
    DailyTag,
}

impl TotalsTable {
    fn upsert(self) -> &'static str {
        macro_rules! upsert {
            ($table:literal, $values:literal, $key:literal) => {
                concat!(
                    "INSERT INTO ",
                    $table,
                    " VALUES (",
                    $values,
                    ") ON CONFLICT (",
                    $key,
                    ") DO UPDATE SET requests = requests + excluded.requests, cost_nanos = cost_nanos + excluded.cost_nanos, ",
                    "input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens, ",
                    "cached_tokens = cached_tokens + excluded.cached_tokens, characters = characters + excluded.characters"
                )
            };
        }
        match self {
            TotalsTable::DailyProvider => upsert!("daily_provider", "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10", "scope, tenant, day, provider"),
            TotalsTable::DailyModel => upsert!("daily_model", "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10", "scope, tenant, day, model"),
            TotalsTable::Monthly => upsert!("monthly", "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9", "scope, tenant, month"),
            TotalsTable::DailyTag => upsert!("daily_tag", "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10", "scope, tenant, day, tag"),
        }
    }
}

/// Adds `t` to the row of `table` whose key columns are `key`.
pub fn add_totals(tx: &Connection, table: TotalsTable, key: &[&str], t: &Totals) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(table.upsert())?;
    let values = [t.requests, t.cost_nanos, t.input_tokens, t.output_tokens, t.cached_tokens, t.characters];
    let params: Vec<&dyn rusqlite::ToSql> = key
        .iter()
        .map(|k| k as &dyn rusqlite::ToSql)
        .chain(values.iter().map(|v| v as &dyn rusqlite::ToSql))
        .collect();
    st.execute(params.as_slice())?;
    Ok(())
}

/// Adds one call to the recent requests.
pub fn insert_recent(tx: &Connection, r: &UsageRecord) -> rusqlite::Result<()> {
    let t = &r.totals;
    tx.prepare_cached(
        "INSERT INTO recent (at, day, profile, org, provider, model, path, status, reason, requests, cost_nanos, \
         input_tokens, output_tokens, cached_tokens, characters, tags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        r.day,
        r.profile,
        r.org,
        r.provider,
        r.model,
        r.path,
        r.status,
        r.reason,
        t.requests,
        t.cost_nanos,
        t.input_tokens,
        t.output_tokens,
        t.cached_tokens,
        t.characters,
        tags_column(&r.tags)
    ])?;
    Ok(())
}

/// Tags as a column: comma-separated (a tag, validated like a tenant id, has no comma), NULL
/// for none.
pub fn tags_column(tags: &[String]) -> Option<String> {
    (!tags.is_empty()).then(|| tags.join(","))
}

/// Keeps each of `profiles` to its newest `recent_max` recent requests. An org's newest are
/// among its profiles' newest, so this bounds the orgs too.
pub fn prune_recent<'p>(conn: &mut Connection, profiles: impl IntoIterator<Item = &'p str>, keep: Keep) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    prune_recent_in(&tx, profiles, keep)?;
    tx.commit()
}

pub(super) fn prune_recent_in<'p>(tx: &Transaction<'_>, profiles: impl IntoIterator<Item = &'p str>, keep: Keep) -> rusqlite::Result<()> {
    // The newest row past the kept ones, looked up first: most profiles have none, and
    // then nothing is deleted (a DELETE with the lookup inside also needs a statement journal).
    let mut past = tx.prepare_cached("SELECT id FROM recent WHERE profile = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2")?;
    let mut delete = tx.prepare_cached("DELETE FROM recent WHERE profile = ?1 AND id <= ?2")?;
    let offset = i64::try_from(keep.recent_max).unwrap_or(i64::MAX);
    for p in profiles {
        let id: Option<i64> = past.query_row(params![p, offset], |r| r.get(0)).optional()?;
        if let Some(id) = id {
            delete.execute(params![p, id])?;
        }
    }
    Ok(())
}

/// Deletes what is past retention, counted back from the newest day on record (so a clock
/// jump cannot wipe the history).
pub fn housekeeping(conn: &mut Connection, keep: Keep) -> rusqlite::Result<()> {
    let newest: Option<String> = conn.query_row("SELECT MAX(last_day) FROM tenants", [], |r| r.get(0))?;
    let Some(newest) = newest.and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok()) else {
        return Ok(());
    };
    let day_cutoff = (newest - chrono::Duration::days(i64::from(keep.daily_days))).format("%Y-%m-%d").to_string();
    let month_cutoff = newest
        .with_day0(0)
        .and_then(|d| d.checked_sub_months(Months::new(keep.monthly_months)))
        .map(|d| d.format("%Y-%m").to_string());
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM daily_provider WHERE day < ?1", [&day_cutoff])?;
    tx.execute("DELETE FROM daily_model WHERE day < ?1", [&day_cutoff])?;
    tx.execute("DELETE FROM daily_tag WHERE day < ?1", [&day_cutoff])?;
    tx.execute("DELETE FROM tenant_tags WHERE last_day < ?1", [&day_cutoff])?;
    tx.execute("DELETE FROM alert_claims WHERE expires < ?1", [chrono::Utc::now().timestamp()])?;
    if let Some(m) = &month_cutoff {
        tx.execute("DELETE FROM monthly WHERE month < ?1", [m])?;
        // A tenant without any history left is forgotten.
        let oldest_kept = day_cutoff.as_str().min(m.as_str()).to_string();
        tx.execute("DELETE FROM tenants WHERE last_day < ?1", [oldest_kept])?;
    }
    tx.execute("DELETE FROM recent WHERE day < ?1", [&day_cutoff])?;
    tx.commit()
}
