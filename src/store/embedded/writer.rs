//! The embedded store's writer: one thread owns the database's write connection and
//! group-commits what the request path hands it. Records that arrive within one commit
//! interval (or while a commit is running) share one transaction; within it they are
//! coalesced (a call reserved and settled in the same batch never writes its open-call row,
//! counter deltas and history totals of one key are summed). A failed commit is counted,
//! kept, and retried with backoff; the store decides from [`Shared`] what the request path
//! does meanwhile (`on_error`).

use std::collections::{HashMap, HashSet};

/// The writer's per-batch maps (keys are tenant ids and counter keys).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, Months, NaiveDate};
use parking_lot::Mutex;
use prometheus::IntCounter;
use rusqlite::{params, Connection, Transaction};
use tokio::sync::oneshot;

use crate::domain::window::Window;
use crate::domain::Scope;
use crate::quota::ledger::{CounterKey, CounterOp, OpenCall, Totals, UsageRecord};

/// Most records in one transaction.
const MAX_BATCH: usize = 4096;
/// How often the recent requests are written (and the profiles that grew trimmed to
/// `recent_max`): they are a view of the calls, not their charge, which every commit
/// carries. Someone reading the store (a barrier) has them written at once.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Most recent requests waiting for their write; past it they are written at once.
const RECENT_PENDING_MAX: usize = 4096;
/// How often retention is enforced when nothing else happens.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// First and longest pause between retries of a failed commit.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the request path hands the writer. Settlements dominate, so the settlement's record
/// stays inline (boxing it would cost an allocation per call); the message boxes the whole.
#[allow(clippy::large_enum_variant)]
pub enum Rec {
    /// Counters added by an admitted call (its reservation: each op's amount), and the call
    /// itself.
    Reserve { call: Option<Arc<OpenCall>>, ops: Arc<[CounterOp]> },
    /// A call's final correction and its usage record (or a correction of an earlier call).
    Settle {
        id: String,
        deltas: Vec<(CounterKey, i64)>,
        record: UsageRecord,
    },
    /// A reservation taken back: its request was never forwarded.
    Cancel { id: String, deltas: Vec<(CounterKey, i64)> },
    /// A profile's org (`None`: no org), remembered for good.
    Bind { profile: String, org: Option<String> },
    /// A window bucket the limits no longer read.
    Prune { window: Window, bucket: String },
    /// An alert claimed until `expires` (unix seconds).
    Claim { key: String, expires: i64 },
}

pub enum Msg {
    Rec(Box<Rec>, Option<oneshot::Sender<Result<(), String>>>),
    /// Answered once everything sent before it is committed (or its commit failed).
    Barrier(oneshot::Sender<Result<(), String>>),
}

/// State the writer shares with the store.
#[derive(Default)]
pub struct Shared {
    /// Records handed over and not yet committed.
    pub unwritten: AtomicUsize,
    /// The last commit failed (cleared by the next one that succeeds).
    pub failing: AtomicBool,
    pub last_error: Mutex<String>,
    /// Profiles whose binding is handed over but not yet committed (the store answers from
    /// here until the database has it).
    pub pending_binds: Mutex<HashMap<String, Option<String>>>,
}

/// What the writer keeps.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub recent_max: usize,
    pub daily_days: u32,
    pub monthly_months: u32,
    /// Most distinct tags kept per tenant; past it a tenant's new tags count as `other`.
    pub max_tags: usize,
}

pub struct Writer {
    pub conn: Connection,
    pub rx: Receiver<Msg>,
    pub shared: Arc<Shared>,
    pub keep: Keep,
    /// Longest a record waits for more to share its commit (zero: commit at once).
    pub linger: Duration,
    /// `spendgate_store_errors_total{op="persist"}`.
    pub errors: IntCounter,
}

impl Writer {
    pub fn run(mut self) {
        let mut batch: Vec<Rec> = Vec::new();
        let mut waiters: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
        let mut housekept = Instant::now() - HOUSEKEEPING;
        let mut retry = RETRY_FIRST;
        let mut open = true;
        // The recent requests of committed calls, written (and the profiles that grew
        // trimmed) at most once a second, or when someone waits: a recent-request row per
        // call and commit was most of the writer's cost (each commit rewrote the pages of
        // every profile's end of the index).
        let mut recent = Recent::default();
        while open || !batch.is_empty() {
            if batch.is_empty() && waiters.is_empty() {
                if housekept.elapsed() >= HOUSEKEEPING {
                    if let Err(e) = housekeeping(&mut self.conn, self.keep) {
                        tracing::warn!(error = %e, "embedded store: retention could not be enforced; retrying later");
                    }
                    housekept = Instant::now();
                }
                if recent.due(false) {
                    recent.write(&mut self.conn, self.keep);
                }
                let wait = if recent.is_empty() { HOUSEKEEPING } else { TRIM_EVERY };
                match self.rx.recv_timeout(wait) {
                    Ok(m) => take(m, &mut batch, &mut waiters),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                // Let more arrive to share the commit, unless someone is waiting. The writer
                // sleeps rather than waits on the channel: a sender then never has to wake
                // it, so a batch costs one wake-up, not one per record.
                if waiters.is_empty() && !self.linger.is_zero() {
                    std::thread::sleep(self.linger);
                }
            }
            // Whatever else is already there joins this commit.
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(m) => take(m, &mut batch, &mut waiters),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            match commit(&mut self.conn, &batch, self.keep) {
                Ok(()) => {
                    self.shared.unwritten.fetch_sub(batch.len(), Ordering::AcqRel);
                    if !self.shared.pending_binds.lock().is_empty() {
                        let mut pending = self.shared.pending_binds.lock();
                        for r in &batch {
                            if let Rec::Bind { profile, .. } = r {
                                pending.remove(profile);
                            }
                        }
                    }
                    for r in batch.drain(..) {
                        if let Rec::Settle { record, .. } = r {
                            if self.keep.recent_max > 0 {
                                recent.push(record);
                            }
                        }
                    }
                    if recent.due(!waiters.is_empty() || !open) {
                        recent.write(&mut self.conn, self.keep);
                    }
                    if self.shared.failing.swap(false, Ordering::AcqRel) {
                        tracing::info!("embedded store: the database is written again");
                    }
                    retry = RETRY_FIRST;
                    for w in waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                }
                Err(e) => {
                    self.errors.inc();
                    let message = e.to_string();
                    if !self.shared.failing.swap(true, Ordering::AcqRel) {
                        tracing::error!(error = %message, records = batch.len(), "embedded store: cannot write the database; keeping the records and retrying");
                    }
                    *self.shared.last_error.lock() = message.clone();
                    for w in waiters.drain(..) {
                        let _ = w.send(Err(message.clone()));
                    }
                    std::thread::sleep(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        if !recent.is_empty() {
            recent.write(&mut self.conn, self.keep);
        }
    }
}

/// Recent requests of committed calls, waiting for their write.
struct Recent {
    records: Vec<UsageRecord>,
    /// Profiles whose recent requests grew since they were last trimmed.
    grown: HashSet<String>,
    written: Instant,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            records: Vec::new(),
            grown: HashSet::new(),
            written: Instant::now(),
        }
    }
}

impl Recent {
    fn push(&mut self, record: UsageRecord) {
        if !self.grown.contains(&record.profile) {
            self.grown.insert(record.profile.clone());
        }
        self.records.push(record);
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.grown.is_empty()
    }

    /// Time to write: a second has passed, many wait, or `now` (someone reads, or the store
    /// closes).
    fn due(&self, now: bool) -> bool {
        !self.is_empty() && (now || self.records.len() >= RECENT_PENDING_MAX || self.written.elapsed() >= TRIM_EVERY)
    }

    /// Writes the rows and trims the profiles that grew, in one transaction. On failure the
    /// rows are kept for the next try, up to a bound past which the oldest are dropped (the
    /// calls' charges are not among them: those are committed already).
    fn write(&mut self, conn: &mut Connection, keep: Keep) {
        self.written = Instant::now();
        // Only a profile's newest `recent_max` rows can survive the trim: older ones in
        // this batch are not written at all (a busy profile's rows were mostly written only to
        // be deleted).
        let mut kept: Map<&str, usize> = Map::default();
        let mut write: Vec<bool> = vec![false; self.records.len()];
        for (i, r) in self.records.iter().enumerate().rev() {
            let n = kept.entry(r.profile.as_str()).or_insert(0);
            if *n < keep.recent_max {
                *n += 1;
                write[i] = true;
            }
        }
        let result = (|| {
            let tx = conn.transaction()?;
            for (r, _) in self.records.iter().zip(&write).filter(|(_, w)| **w) {
                insert_recent(&tx, r)?;
            }
            prune_recent_in(&tx, self.grown.iter().map(String::as_str), keep)?;
            tx.commit()
        })();
        match result {
            Ok(()) => {
                self.records.clear();
                self.grown.clear();
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = self.records.len(), "embedded store: recent requests could not be written; retrying later");
                if self.records.len() > 4 * RECENT_PENDING_MAX {
                    let drop = self.records.len() - 4 * RECENT_PENDING_MAX;
                    self.records.drain(..drop);
                    tracing::error!(rows = drop, "embedded store: recent requests dropped (their charges are recorded)");
                }
            }
        }
    }
}

fn take(m: Msg, batch: &mut Vec<Rec>, waiters: &mut Vec<oneshot::Sender<Result<(), String>>>) {
    match m {
        Msg::Rec(r, w) => {
            batch.push(*r);
            waiters.extend(w);
        }
        Msg::Barrier(w) => waiters.push(w),
    }
}

/// A scope's name in the database.
pub fn scope_name(s: Scope) -> &'static str {
    s.as_str()
}

/// History totals of one batch, summed per row.
#[derive(Default)]
pub struct HistoryBatch<'a> {
    daily_provider: Map<(Scope, &'a str, &'a str, &'a str), Totals>,
    daily_model: Map<(Scope, &'a str, &'a str, &'a str), Totals>,
    monthly: Map<(Scope, &'a str, &'a str), Totals>,
    tenants: Map<(Scope, &'a str), &'a str>,
    /// Every record of the batch, in order (the recent requests, and the tags).
    recent: Vec<&'a UsageRecord>,
}

impl<'a> HistoryBatch<'a> {
    pub fn add(&mut self, rec: &'a UsageRecord) {
        let month = rec.day.get(..7).unwrap_or(&rec.day);
        let scopes = std::iter::once((Scope::Profile, rec.profile.as_str())).chain(rec.org.as_deref().map(|o| (Scope::Org, o)));
        for (scope, tenant) in scopes {
            self.daily_provider
                .entry((scope, tenant, &rec.day, &rec.provider))
                .or_default()
                .add(&rec.totals);
            self.daily_model.entry((scope, tenant, &rec.day, &rec.model)).or_default().add(&rec.totals);
            self.monthly.entry((scope, tenant, month)).or_default().add(&rec.totals);
            let last = self.tenants.entry((scope, tenant)).or_insert(&rec.day);
            if *last < rec.day.as_str() {
                *last = &rec.day;
            }
        }
        self.recent.push(rec);
    }

    /// Writes the totals, the tenants and the tags, and the recent requests.
    pub fn write(&self, tx: &Transaction<'_>, keep: Keep) -> rusqlite::Result<()> {
        self.write_totals(tx, keep)?;
        if keep.recent_max == 0 {
            return Ok(());
        }
        for r in &self.recent {
            insert_recent(tx, r)?;
        }
        Ok(())
    }

    /// Writes everything but the recent requests (the writer writes those on its own pace).
    pub fn write_totals(&self, tx: &Transaction<'_>, keep: Keep) -> rusqlite::Result<()> {
        for ((scope, tenant, day, provider), totals) in &self.daily_provider {
            add_totals(tx, TotalsTable::DailyProvider, &[scope_name(*scope), tenant, day, provider], totals)?;
        }
        for ((scope, tenant, day, model), totals) in &self.daily_model {
            add_totals(tx, TotalsTable::DailyModel, &[scope_name(*scope), tenant, day, model], totals)?;
        }
        for ((scope, tenant, month), totals) in &self.monthly {
            add_totals(tx, TotalsTable::Monthly, &[scope_name(*scope), tenant, month], totals)?;
        }
        let mut st = tx.prepare_cached(
            "INSERT INTO tenants VALUES (?1, ?2, ?3, ?3) ON CONFLICT (scope, tenant) DO UPDATE SET last_day = excluded.last_day \
             WHERE excluded.last_day > last_day",
        )?;
        for ((scope, tenant), day) in &self.tenants {
            st.execute(params![scope_name(*scope), tenant, day])?;
        }
        self.write_tags(tx, keep)
    }

    /// The totals by tag: each record counts under each of its tags, per tenant, under the
    /// tag's name while the tenant's set of tags holds it or has room (`keep.max_tags`), else
    /// under `other`. Decided in the records' order, as they were settled.
    fn write_tags(&self, tx: &Transaction<'_>, keep: Keep) -> rusqlite::Result<()> {
        let mut sums: Map<(Scope, &str, &str, &str), Totals> = Map::default();
        let mut known: Map<(Scope, &str, &str), bool> = Map::default();
        let mut sizes: Map<(Scope, &str), usize> = Map::default();
        let max = i64::try_from(keep.max_tags.max(1)).unwrap_or(i64::MAX);
        for rec in self.recent.iter().filter(|r| !r.tags.is_empty()) {
            let scopes = std::iter::once((Scope::Profile, rec.profile.as_str())).chain(rec.org.as_deref().map(|o| (Scope::Org, o)));
            for (scope, tenant) in scopes {
                for tag in &rec.tags {
                    let kept = match known.get(&(scope, tenant, tag.as_str())) {
                        Some(k) => *k,
                        None => {
                            let k = claim_tag(tx, scope, tenant, tag, &rec.day, max, &mut sizes)?;
                            known.insert((scope, tenant, tag.as_str()), k);
                            k
                        }
                    };
                    let name = if kept { tag.as_str() } else { OTHER_TAG };
                    sums.entry((scope, tenant, &rec.day, name)).or_default().add(&rec.totals);
                }
            }
        }
        for ((scope, tenant, day, tag), totals) in &sums {
            add_totals(tx, TotalsTable::DailyTag, &[scope_name(*scope), tenant, day, tag], totals)?;
        }
        Ok(())
    }

    /// The profiles whose recent requests grew.
    pub fn profiles(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.recent.iter().map(|r| r.profile.as_str())
    }
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

fn prune_recent_in<'p>(tx: &Transaction<'_>, profiles: impl IntoIterator<Item = &'p str>, keep: Keep) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(
        "DELETE FROM recent WHERE profile = ?1 AND id <= \
         (SELECT id FROM recent WHERE profile = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?;
    let offset = i64::try_from(keep.recent_max).unwrap_or(i64::MAX);
    for p in profiles {
        st.execute(params![p, offset])?;
    }
    Ok(())
}

/// Writes one batch in one transaction.
fn commit(conn: &mut Connection, batch: &[Rec], keep: Keep) -> rusqlite::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut counters: Map<&CounterKey, i64> = Map::default();
    let mut opened: Map<&str, &UsageRecord> = Map::default();
    let mut closed: Vec<&str> = Vec::new();
    let mut history = HistoryBatch::default();
    let mut binds: Vec<(&str, Option<&str>)> = Vec::new();
    let mut prunes: Vec<(Window, &str)> = Vec::new();
    let mut claims: Vec<(&str, i64)> = Vec::new();
    for r in batch {
        match r {
            Rec::Reserve { call, ops } => {
                for op in ops.iter().filter(|op| op.amount != 0) {
                    *counters.entry(&op.key).or_insert(0) += op.amount;
                }
                if let Some(c) = call {
                    opened.insert(&c.id, &c.record);
                }
            }
            Rec::Settle { id, deltas, record } => {
                for (k, d) in deltas {
                    *counters.entry(k).or_insert(0) += d;
                }
                if opened.remove(id.as_str()).is_none() {
                    closed.push(id);
                }
                history.add(record);
            }
            Rec::Cancel { id, deltas } => {
                for (k, d) in deltas {
                    *counters.entry(k).or_insert(0) += d;
                }
                if opened.remove(id.as_str()).is_none() {
                    closed.push(id);
                }
            }
            Rec::Bind { profile, org } => binds.push((profile, org.as_deref())),
            Rec::Prune { window, bucket } => prunes.push((*window, bucket)),
            Rec::Claim { key, expires } => claims.push((key, *expires)),
        }
    }
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached("DELETE FROM counters WHERE window = ?1 AND bucket = ?2")?;
        for (w, b) in &prunes {
            st.execute(params![w.as_str(), b])?;
        }
        let mut st = tx.prepare_cached(
            "INSERT INTO counters VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (scope, tenant, window, bucket, field) DO UPDATE SET value = value + excluded.value",
        )?;
        for (k, d) in counters {
            if d != 0 {
                st.execute(params![scope_name(k.scope), k.tenant, k.window.as_str(), k.bucket, k.field, d])?;
            }
        }
        let mut st = tx.prepare_cached("INSERT OR REPLACE INTO open_calls VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)")?;
        for (id, r) in opened {
            let t = &r.totals;
            st.execute(params![
                id,
                r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                r.day,
                r.profile,
                r.org,
                r.provider,
                r.model,
                r.path,
                t.requests,
                t.cost_nanos,
                t.input_tokens,
                t.output_tokens,
                t.cached_tokens,
                t.characters,
                tags_column(&r.tags)
            ])?;
        }
        let mut st = tx.prepare_cached("DELETE FROM open_calls WHERE id = ?1")?;
        for id in closed {
            st.execute([id])?;
        }
        let mut st = tx.prepare_cached("INSERT INTO org_bindings VALUES (?1, ?2) ON CONFLICT (profile) DO NOTHING")?;
        for (p, o) in binds {
            st.execute(params![p, o])?;
        }
        let mut st = tx.prepare_cached("INSERT OR REPLACE INTO alert_claims VALUES (?1, ?2)")?;
        for (key, expires) in claims {
            st.execute(params![key, expires])?;
        }
        history.write_totals(&tx, keep)?;
    }
    tx.commit()
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
