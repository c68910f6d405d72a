//! The Lua scripts and their arguments: `reserve.lua` (a batch of requests' check-and-reserve),
//! `settle_sums.lua` (a batch of first-call settlements, summed here) and `settle.lua` (any batch
//! of settlements or journal entries, read entry by entry).
//!
//! Scripts are sent by SHA1 (`EVALSHA`); when Redis answers `NOSCRIPT` (after a restart or
//! a failover to a node that never saw them) they are loaded and the call is retried, by
//! `redis::ScriptInvocation`. They are also loaded once when the store starts.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc};
use redis::{FromRedisValue, RedisResult, Script, Value};

use super::conn::Conn;
use super::journal::Entry;
use super::keys::{Keys, Tag};
use crate::domain::window::Window;
use crate::domain::Scope;
use crate::quota::ledger::{ReserveOutcome, Totals, UsageRecord};

const RESERVE_LUA: &str = include_str!("reserve.lua");
const SETTLE_LUA: &str = concat!(include_str!("write.lua"), include_str!("settle.lua"));
const SETTLE_SUMS_LUA: &str = concat!(include_str!("write.lua"), include_str!("settle_sums.lua"));

/// The scripts, hashed once.
pub struct Scripts {
    pub reserve: Script,
    pub settle: Script,
    pub settle_sums: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            reserve: Script::new(RESERVE_LUA),
            settle: Script::new(SETTLE_LUA),
            settle_sums: Script::new(SETTLE_SUMS_LUA),
        }
    }
}

impl Scripts {
    /// Loads both scripts (on every master of a cluster), so that the first calls find them.
    pub async fn load(&self, conn: &mut Conn) -> RedisResult<()> {
        for code in [RESERVE_LUA, SETTLE_LUA, SETTLE_SUMS_LUA] {
            let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(code).query_async(conn).await?;
        }
        Ok(())
    }
}

/// Keys and arguments of one script call, owned so the call can outlive its caller.
#[derive(Debug, Default, Clone)]
pub struct Invocation {
    keys: Vec<String>,
    args: Vec<String>,
    /// Key -> its 1-based index in `keys` (a batch names thousands of keys).
    index: HashMap<String, usize, foldhash::fast::RandomState>,
}

impl Invocation {
    /// The 1-based index of `key` in KEYS, adding it when new.
    fn key(&mut self, key: String) -> usize {
        if let Some(i) = self.index.get(&key) {
            return *i;
        }
        self.keys.push(key.clone());
        self.index.insert(key, self.keys.len());
        self.keys.len()
    }

    /// [`Invocation::key`] for a borrowed name (allocated only when new).
    fn key_ref(&mut self, key: &str) -> usize {
        match self.index.get(key) {
            Some(i) => *i,
            None => self.key(key.to_string()),
        }
    }

    fn arg(&mut self, a: impl ToString) {
        self.args.push(a.to_string());
    }

    pub async fn run<T: FromRedisValue>(&self, script: &Script, conn: &mut Conn) -> RedisResult<T> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        for a in &self.args {
            inv.arg(a);
        }
        inv.invoke_async(conn).await
    }

    #[cfg(test)]
    pub fn parts(&self) -> (&[String], &[String]) {
        (&self.keys, &self.args)
    }
}

/// An expiry never in the past: Redis deletes a key whose `EXPIREAT` has passed, and a
/// clock set back (or a test clock) must not wipe live counters. The floor is a day, or for
/// the short-lived counters of rate windows a few times their length.
fn expire_at(at: DateTime<Utc>, window: Window) -> i64 {
    let floor = window.rate_keep().unwrap_or(Duration::days(1));
    at.timestamp().max((Utc::now() + floor).timestamp())
}

/// One counter of a reservation, already resolved to its Redis key.
#[derive(Debug, Clone)]
pub struct ReserveOp {
    pub key: String,
    pub field: std::sync::Arc<str>,
    pub amount: i64,
    /// The max to check against, lowered by what this replica counted locally and has not
    /// replayed yet.
    pub max: Option<i64>,
    pub expire: DateTime<Utc>,
    /// The counter's window (sets the floor of its expiry).
    pub window: Window,
}

/// One request's reservation: its id, the hash its id is recorded in (and that hash's
/// expire-at, [`calls_expire_at`]), and its counters.
#[derive(Debug, Clone)]
pub struct ReserveCall {
    pub calls_key: String,
    pub calls_expire: i64,
    pub id: String,
    pub ops: Vec<ReserveOp>,
}

/// Seconds the ids of first calls are kept (`Keys::calls`).
pub const CALLS_TTL: i64 = 2 * 3600;

/// When the ids of calls made in the UTC hour of `created` expire: [`CALLS_TTL`] after the
/// end of that hour, and never sooner than that long from now (a replay writes into the
/// hour its entry was made in).
pub fn calls_expire_at(created: i64) -> i64 {
    let end_of_hour = (created.div_euclid(3600) + 1) * 3600;
    end_of_hour.max(Utc::now().timestamp()) + CALLS_TTL
}

/// The key of the ids of calls made in the UTC hour of `created`.
pub fn calls_key(keys: &Keys, tag: &Tag, created: i64) -> String {
    let t = DateTime::from_timestamp(created, 0).unwrap_or_default();
    keys.calls(tag, &format!("{:04}{:02}{:02}{:02}", t.year(), t.month(), t.day(), t.hour()))
}

/// The arguments of `reserve.lua` for a batch of reservations (all in one hash slot on a
/// cluster), applied in order. `needs_expiry(key, at)` says whether an id hash's expiry
/// must be sent (see `expiries`).
pub fn reserve<'a>(calls: impl IntoIterator<Item = &'a ReserveCall>, mut needs_expiry: impl FnMut(&str, i64) -> bool) -> Invocation {
    let mut inv = Invocation::default();
    let count_at = inv.args.len();
    inv.arg(0);
    let mut count = 0;
    // One group per counter hash, in order of first appearance.
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for call in calls {
        count += 1;
        groups.clear();
        for (i, op) in call.ops.iter().enumerate() {
            match groups.iter_mut().find(|(k, _)| *k == op.key) {
                Some(g) => g.1.push(i),
                None => groups.push((&op.key, vec![i])),
            }
        }
        let idx = inv.key_ref(&call.calls_key);
        inv.arg(idx);
        inv.arg(if needs_expiry(&call.calls_key, call.calls_expire) {
            call.calls_expire
        } else {
            0
        });
        inv.arg(&call.id);
        inv.arg(groups.len());
        for (key, members) in &groups {
            let idx = inv.key_ref(key);
            inv.arg(idx);
            let first = &call.ops[members[0]];
            inv.arg(expire_at(first.expire, first.window));
            inv.arg(members.len());
            for &i in members {
                let op = &call.ops[i];
                inv.arg(i);
                inv.arg(&op.field);
                inv.arg(op.amount);
                match op.max {
                    Some(m) => inv.arg(m),
                    None => inv.arg(""),
                }
            }
        }
    }
    inv.args[count_at] = count.to_string();
    inv
}

/// Decodes the reply of `reserve.lua` for a batch of `n` reservations: per reservation its
/// outcome, `None` when its id was already applied (by the journal replay of the same
/// reservation, or by an earlier attempt of this very call), or the error Redis gave one
/// of its writes (the script has taken all of them back).
pub fn reserve_replies(v: Value, n: usize) -> RedisResult<Vec<RedisResult<Option<ReserveOutcome>>>> {
    let items: Vec<Value> = FromRedisValue::from_redis_value(v)?;
    if items.len() != n {
        return Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "reserve.lua answered for another number of reservations",
        )));
    }
    items.into_iter().map(reserve_reply).collect()
}

/// Decodes one reservation's reply; the outer error is a reply that cannot be read.
fn reserve_reply(v: Value) -> RedisResult<RedisResult<Option<ReserveOutcome>>> {
    let items: Vec<Value> = FromRedisValue::from_redis_value(v)?;
    let int = |v: &Value| -> RedisResult<i64> { Ok(i64::from_redis_value_ref(v)?) };
    let bad = || redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "unexpected reply from reserve.lua"));
    Ok(match items.first().map(int).transpose()? {
        Some(1) => Ok(Some(ReserveOutcome::Admitted {
            before: items[1..].iter().map(int).collect::<RedisResult<_>>()?,
        })),
        Some(0) if items.len() == 3 => Ok(Some(ReserveOutcome::Refused {
            index: usize::try_from(int(&items[1])?).map_err(|_| bad())?,
            current: int(&items[2])?,
        })),
        Some(2) => Ok(None),
        Some(3) => {
            let why = items.get(1).and_then(|v| String::from_redis_value_ref(v).ok()).unwrap_or_default();
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "Redis refused a write of this reservation",
                why,
            )))
        }
        _ => return Err(bad()),
    })
}

/// The metrics of a history hash. Its fields are `<metric>|<provider>|<model>` (provider
/// names cannot contain `|`; the model is the rest of the field): the totals and the
/// per-provider and per-model breakdowns are sums over them, so one field per metric and
/// request is written instead of three.
pub fn totals_fields(t: &Totals) -> [(&'static str, i64); 6] {
    [
        ("requests", t.requests),
        ("cost", t.cost_nanos),
        ("in", t.input_tokens),
        ("out", t.output_tokens),
        ("cached", t.cached_tokens),
        ("chars", t.characters),
    ]
}

pub fn add_metric(t: &mut Totals, metric: &str, v: i64) {
    let slot = match metric {
        "requests" => &mut t.requests,
        "cost" => &mut t.cost_nanos,
        "in" => &mut t.input_tokens,
        "out" => &mut t.output_tokens,
        "cached" => &mut t.cached_tokens,
        "chars" => &mut t.characters,
        _ => return,
    };
    *slot = slot.saturating_add(v);
}

/// What `settle.lua` needs beyond the entries.
pub struct ApplyParams {
    pub recent_max: usize,
    pub daily_days: u32,
    pub monthly_months: u32,
    /// Seconds the set of replayed ids is kept.
    pub dedupe_ttl: i64,
    /// Most distinct tags kept per tenant (`store.max_tags`).
    pub max_tags: usize,
}

/// A recent list lives `daily_days` after the end of the (UTC) day of its last request: the
/// same expiry all day, so it is sent once a day per list.
fn recent_expiry(p: &ApplyParams) -> i64 {
    let tomorrow = utc_midnight(Utc::now().date_naive() + Duration::days(1));
    expire_at(tomorrow + Duration::days(i64::from(p.daily_days)), Window::Daily)
}

/// An entry's id hash (with its expire-at when it must be sent) and its id.
fn entry_id(inv: &mut Invocation, keys: &Keys, tag: &Tag, entry: &Entry, needs_expiry: &mut impl FnMut(&str, i64) -> bool) {
    let calls = calls_key(keys, tag, entry.created);
    let calls_expire = calls_expire_at(entry.created);
    let expire = if needs_expiry(&calls, calls_expire) { calls_expire } else { 0 };
    let idx = inv.key(calls);
    inv.arg(idx);
    inv.arg(expire);
    inv.arg(&entry.id);
}

/// The arguments of `settle.lua` for a batch of entries (all in one hash slot on a
/// cluster), as first calls or (`replay`) as replays from the journal; either way each is
/// applied once. `needs_expiry(key, at)` says whether the expiry of an id hash or a recent
/// list must be sent (see `expiries`).
pub fn settle<'a>(
    keys: &Keys,
    entries: impl IntoIterator<Item = (&'a Tag, &'a Entry)>,
    replay: bool,
    p: &ApplyParams,
    mut needs_expiry: impl FnMut(&str, i64) -> bool,
) -> Invocation {
    let mut inv = Invocation::default();
    let recent_expiry = recent_expiry(p);

    inv.arg(p.dedupe_ttl);
    inv.arg(p.recent_max.max(1));
    let count_at = inv.args.len();
    inv.arg(0);
    let mut count = 0;
    // Day ids and expiries are the same for most entries of a batch: computed once per day.
    let mut last_day: Option<(std::sync::Arc<str>, Periods)> = None;
    for (tag, entry) in entries {
        count += 1;
        entry_id(&mut inv, keys, tag, entry, &mut needs_expiry);
        if replay {
            let day = DateTime::from_timestamp(entry.created, 0).unwrap_or_default().format("%Y-%m-%d").to_string();
            let idx = inv.key(keys.applied(tag, &day));
            inv.arg(idx);
        } else {
            inv.arg(0);
        }

        let counters: Vec<_> = entry.counters.iter().filter(|(_, d)| *d != 0).collect();
        inv.arg(counters.len());
        for (key, delta) in counters {
            let at = entry.expire_at(key.window);
            let idx = inv.key(keys.counter(tag, key));
            inv.arg(idx);
            inv.arg(&key.field);
            inv.arg(delta);
            inv.arg(expire_at(DateTime::from_timestamp(at, 0).unwrap_or_default(), key.window));
        }

        let Some(rec) = &entry.record else {
            // No history: no history keys, no fields, no tags, no lists, an empty record.
            for a in ["0", "0", "0", "0", ""] {
                inv.arg(a);
            }
            continue;
        };
        if last_day.as_ref().is_none_or(|(day, _)| *day != rec.day) {
            last_day = Some((rec.day.clone(), Periods::of(rec, p)));
        }
        let periods = &last_day.as_ref().expect("set above").1;
        let tenants: Vec<(Scope, &str)> = std::iter::once((Scope::Profile, rec.profile.as_str()))
            .chain(rec.org.as_deref().map(|o| (Scope::Org, o)))
            .collect();
        inv.arg(tenants.len() * 2);
        let mut history_keys = [[0; 2]; 2];
        for (g, (scope, id)) in tenants.iter().enumerate() {
            for (k, (period, expiry)) in [(&periods.day, periods.day_expiry), (&periods.month, periods.month_expiry)]
                .into_iter()
                .enumerate()
            {
                let idx = inv.key(keys.history(tag, *scope, id, period));
                history_keys[g][k] = idx;
                inv.arg(idx);
                inv.arg(expiry);
            }
        }
        let fields: Vec<(&str, i64)> = totals_fields(&rec.totals).into_iter().filter(|(_, v)| *v != 0).collect();
        inv.arg(fields.len());
        for (metric, v) in &fields {
            inv.arg(format!("{metric}|{}|{}", rec.provider, rec.model));
            inv.arg(v);
        }
        // Tags: each tenant's tag set with its bound, then the tags; the metrics are the
        // fields' above.
        inv.arg(rec.tags.len());
        if !rec.tags.is_empty() {
            for t in &rec.tags {
                inv.arg(t);
            }
            inv.arg(tenants.len());
            for (g, (scope, id)) in tenants.iter().enumerate() {
                let idx = inv.key(keys.tag_set(tag, *scope, id));
                inv.arg(idx);
                inv.arg(p.max_tags.max(1));
                inv.arg(periods.month_expiry);
                inv.arg(history_keys[g][0]);
                inv.arg(history_keys[g][1]);
            }
        }
        inv.arg(tenants.len());
        for (scope, id) in &tenants {
            let list = keys.recent(tag, *scope, id);
            let expire = if needs_expiry(&list, recent_expiry) { recent_expiry } else { 0 };
            let idx = inv.key(list);
            inv.arg(idx);
            inv.arg(expire);
        }
        inv.arg(serde_json::to_string(rec).unwrap_or_default());
    }
    inv.args[count_at] = count.to_string();
    inv
}

/// The arguments of `settle_sums.lua` for a batch of first-call settlements (all in one hash
/// slot on a cluster): each entry's id, then every counter and history field the batch
/// writes with the sum of its amounts, then each recent list with its records. `None` when
/// the batch must go through `settle.lua` instead: an entry has attribution tags (whose
/// names depend on what Redis holds), or a sum leaves the signed 64-bit range.
pub fn settle_sums<'a>(
    keys: &Keys,
    entries: impl IntoIterator<Item = (&'a Tag, &'a Entry)>,
    p: &ApplyParams,
    mut needs_expiry: impl FnMut(&str, i64) -> bool,
) -> Option<Invocation> {
    /// A hash's expire-at and its fields with their sums, in order first seen.
    struct Sums {
        expire: i64,
        fields: Vec<(String, i64)>,
    }
    fn add(
        hashes: &mut Vec<(String, Sums)>,
        index: &mut HashMap<String, usize, foldhash::fast::RandomState>,
        key: &str,
        expire: i64,
        field: &str,
        by: i64,
    ) -> Option<()> {
        let i = match index.get(key) {
            Some(&i) => i,
            None => {
                index.insert(key.to_string(), hashes.len());
                hashes.push((key.to_string(), Sums { expire, fields: Vec::new() }));
                hashes.len() - 1
            }
        };
        let fields = &mut hashes[i].1.fields;
        match fields.iter_mut().find(|(f, _)| f == field) {
            Some((_, v)) => *v = v.checked_add(by)?,
            None => fields.push((field.to_string(), by)),
        }
        Some(())
    }

    let mut inv = Invocation::default();
    let recent_expiry = recent_expiry(p);
    inv.arg(p.recent_max.max(1));
    // The entries' ids go out after the sums are made: a batch this script cannot take must
    // not have had its expiries marked as sent.
    let mut ids: Vec<(&Tag, &Entry)> = Vec::new();
    let mut hashes: Vec<(String, Sums)> = Vec::new();
    let mut index: HashMap<String, usize, foldhash::fast::RandomState> = HashMap::default();
    // Recent lists in order first seen, each with its records.
    let mut lists: Vec<(String, Vec<String>)> = Vec::new();
    let mut list_index: HashMap<String, usize, foldhash::fast::RandomState> = HashMap::default();
    let mut last_day: Option<(std::sync::Arc<str>, Periods)> = None;
    for (tag, entry) in entries {
        ids.push((tag, entry));
        for (key, delta) in entry.counters.iter().filter(|(_, d)| *d != 0) {
            let at = expire_at(DateTime::from_timestamp(entry.expire_at(key.window), 0).unwrap_or_default(), key.window);
            add(&mut hashes, &mut index, &keys.counter(tag, key), at, &key.field, *delta)?;
        }
        let Some(rec) = &entry.record else { continue };
        if !rec.tags.is_empty() {
            return None;
        }
        if last_day.as_ref().is_none_or(|(day, _)| *day != rec.day) {
            last_day = Some((rec.day.clone(), Periods::of(rec, p)));
        }
        let periods = &last_day.as_ref().expect("set above").1;
        let tenants = std::iter::once((Scope::Profile, rec.profile.as_str())).chain(rec.org.as_deref().map(|o| (Scope::Org, o)));
        let json = serde_json::to_string(rec).unwrap_or_default();
        // Each field is named once per entry and added to its history hashes.
        let fields: Vec<(String, i64)> = totals_fields(&rec.totals)
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .map(|(metric, v)| (format!("{metric}|{}|{}", rec.provider, rec.model), v))
            .collect();
        for (scope, id) in tenants {
            for (period, expiry) in [(&periods.day, periods.day_expiry), (&periods.month, periods.month_expiry)] {
                let key = keys.history(tag, scope, id, period);
                for (field, v) in &fields {
                    add(&mut hashes, &mut index, &key, expiry, field, *v)?;
                }
            }
            let list = keys.recent(tag, scope, id);
            match list_index.get(&list) {
                Some(&i) => lists[i].1.push(json.clone()),
                None => {
                    list_index.insert(list.clone(), lists.len());
                    lists.push((list, vec![json.clone()]));
                }
            }
        }
    }
    inv.arg(ids.len());
    for (tag, entry) in ids {
        entry_id(&mut inv, keys, tag, entry, &mut needs_expiry);
    }
    inv.arg(hashes.len());
    for (key, sums) in hashes {
        let idx = inv.key(key);
        inv.arg(idx);
        inv.arg(sums.expire);
        inv.arg(sums.fields.len());
        for (field, v) in sums.fields {
            inv.arg(field);
            inv.arg(v);
        }
    }
    inv.arg(lists.len());
    for (list, records) in lists {
        let expire = if needs_expiry(&list, recent_expiry) { recent_expiry } else { 0 };
        let idx = inv.key(list);
        inv.arg(idx);
        inv.arg(expire);
        inv.arg(records.len());
        for r in records {
            inv.args.push(r);
        }
    }
    Some(inv)
}

/// The history periods of a record's day, and when their hashes expire.
struct Periods {
    day: String,
    month: String,
    day_expiry: i64,
    month_expiry: i64,
}

impl Periods {
    fn of(rec: &UsageRecord, p: &ApplyParams) -> Periods {
        let day = NaiveDate::parse_from_str(&rec.day, "%Y-%m-%d").unwrap_or_else(|_| rec.at.date_naive());
        Periods {
            day: day.format("%Y-%m-%d").to_string(),
            month: day.format("%Y-%m").to_string(),
            day_expiry: expire_at(utc_midnight(day) + Duration::days(2 + i64::from(p.daily_days)), Window::Daily),
            month_expiry: expire_at(
                utc_midnight(first_of_next_month(day)) + Duration::days(1 + 31 * i64::from(p.monthly_months)),
                Window::Monthly,
            ),
        }
    }
}

fn utc_midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

fn first_of_next_month(d: NaiveDate) -> NaiveDate {
    let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
    NaiveDate::from_ymd_opt(y, m, 1).expect("first of a month")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::ledger::{CounterKey, UsageRecord};

    fn ck(scope: Scope, tenant: &str, window: Window, field: &str) -> CounterKey {
        CounterKey {
            scope,
            tenant: tenant.into(),
            window,
            bucket: if window == Window::Daily { "2026-11-22".into() } else { "2026-11".into() },
            field: field.into(),
        }
    }

    fn params() -> ApplyParams {
        ApplyParams {
            recent_max: 50,
            daily_days: 400,
            monthly_months: 25,
            dedupe_ttl: 60,
            max_tags: 100,
        }
    }

    /// A request of p1 under acme on 2026-11-22.
    fn record(model: &str, cost: i64, tags: &[&str]) -> UsageRecord {
        UsageRecord {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            at: Utc::now(),
            day: "2026-11-22".into(),
            profile: "p1".into(),
            org: Some("acme".into()),
            provider: "gemini".into(),
            model: model.into(),
            path: "/v1/x".into(),
            status: 200,
            totals: Totals {
                requests: 1,
                cost_nanos: cost,
                ..Totals::default()
            },
            reason: None,
        }
    }

    #[test]
    fn reserve_shares_keys_and_lists_one_expiry_per_key() {
        let far = Utc::now() + Duration::days(90);
        let op = |key: &str, field: &str, amount, max| ReserveOp {
            key: key.into(),
            field: field.into(),
            amount,
            max,
            expire: far,
            window: Window::Daily,
        };
        let first = ReserveCall {
            calls_key: "calls".into(),
            calls_expire: 99,
            id: "id-1".into(),
            ops: vec![op("k1", "cost", 5, Some(10)), op("k1", "requests", 1, None), op("k2", "cost", 5, None)],
        };
        let second = ReserveCall {
            calls_key: "calls".into(),
            calls_expire: 99,
            id: "id-2".into(),
            ops: vec![op("k2", "cost", 7, Some(20))],
        };
        let mut expiries = super::super::expiries::Expiries::default();
        let inv = reserve([&first, &second], |k, at| expiries.needs(k, at));
        let (keys, args) = inv.parts();
        assert_eq!(keys, ["calls", "k1", "k2"], "every key named once in the batch");
        let far_s = far.timestamp().to_string();
        let far_s = far_s.as_str();
        assert_eq!(
            args,
            [
                "2", // two reservations
                "1", "99", "id-1", "2", // id hash, its expiry, id, two counter hashes
                "2", far_s, "2", "0", "cost", "5", "10", "1", "requests", "1", "", //
                "3", far_s, "1", "2", "cost", "5", "", //
                "1", "99", "id-2", "1", // sent again until a call confirms it (the script sets it once)
                "3", far_s, "1", "0", "cost", "7", "20",
            ]
        );
    }

    #[test]
    fn settle_writes_breakdowns_for_profile_and_org_under_one_tag_once_per_batch() {
        let keys = Keys::new("sg");
        let tag = Tag::for_request("p1", Some("acme"));
        let far = (Utc::now() + Duration::days(90)).timestamp();
        let entry = Entry {
            id: "id-1".into(),
            tag: tag.as_str().into(),
            created: Utc::now().timestamp(),
            counters: vec![
                (ck(Scope::Profile, "p1", Window::Daily, "cost"), -3),
                (ck(Scope::Org, "acme", Window::Monthly, "cost"), 0),
            ],
            expire_daily: far,
            expire_monthly: far,
            expire_minute: far,
            expire_hour: far,
            record: Some(record("m:x", 7, &["tool=a"])),
        };
        let p = params();
        let inv = settle(&keys, [(&tag, &entry)], true, &p, |_, _| true);
        let (k, a) = inv.parts();
        assert!(k.iter().all(|k| k.contains("{o:acme}")), "{k:?}");
        assert!(k[0].starts_with("sg:{o:acme}:n:"));
        assert!(k[1].starts_with("sg:{o:acme}:j:"));
        // The replay set's lifetime, the cap, one entry: its id hash and that hash's expiry,
        // id and replay set, one counter (zero deltas are skipped).
        let calls_expire = calls_expire_at(entry.created).to_string();
        assert_eq!(&a[..8], ["60", "50", "1", "1", calls_expire.as_str(), "id-1", "2", "1"]);
        assert!(a.contains(&"cost|gemini|m:x".to_string()));
        assert!(a.contains(&"requests|gemini|m:x".to_string()));
        assert!(!a.iter().any(|x| x.starts_with("chars|")), "zero fields are skipped");
        assert_eq!(k.iter().filter(|k| k.contains(":h:")).count(), 4, "day and month of the profile and the org");
        assert_eq!(k.iter().filter(|k| k.contains(":g:")).count(), 2, "the tag sets of the profile and the org");
        assert!(a.contains(&"tool=a".to_string()));
        let inv = settle(&keys, [(&tag, &entry)], false, &p, |_, _| true);
        assert_eq!(inv.parts().1[6], "0", "a first call is not a replay");
        assert!(!inv.parts().0.iter().any(|k| k.contains(":j:")));

        // A batch names every key once and counts its entries.
        let mut second = entry.clone();
        second.id = "id-2".into();
        let mut expiries = super::super::expiries::Expiries::default();
        let inv = settle(&keys, [(&tag, &entry), (&tag, &second)], false, &p, |k, at| expiries.needs(k, at));
        let (k2, a2) = inv.parts();
        assert_eq!(a2[2], "2");
        assert_eq!(k2.len(), k.len() - 1, "the same keys, without the replay set");
        assert!(a2.contains(&"id-2".to_string()));
        // Until a call confirms them, every entry carries the id hash's and the lists' expiries.
        let first = a2.iter().position(|a| a == "id-1").unwrap();
        let second_at = a2.iter().position(|a| a == "id-2").unwrap();
        assert_eq!(a2[first - 1], calls_expire);
        assert_eq!(a2[second_at - 1], calls_expire);
        let tomorrow = utc_midnight(Utc::now().date_naive() + Duration::days(1));
        let list_expire = (tomorrow + Duration::days(400)).timestamp().to_string();
        assert_eq!(a2.iter().filter(|a| **a == list_expire).count(), 4, "{a2:?}");
        // Once confirmed, the next batch sends none of them.
        for k in k2.iter().filter(|k| k.contains(":n:") || k.contains(":r:")) {
            let at = if k.contains(":n:") {
                calls_expire.parse().unwrap()
            } else {
                list_expire.parse().unwrap()
            };
            expiries.confirm(k, at);
        }
        let inv = settle(&keys, [(&tag, &second)], false, &p, |k, at| expiries.needs(k, at));
        assert!(!inv.parts().1.contains(&list_expire));
        assert!(!inv.parts().1.contains(&calls_expire));
    }

    #[test]
    fn settle_sums_writes_each_field_once_with_the_batch_s_sum() {
        let keys = Keys::new("sg");
        let tag = Tag::for_request("p1", Some("acme"));
        let far = (Utc::now() + Duration::days(90)).timestamp();
        let entry = |id: &str, cost: i64| Entry {
            id: id.into(),
            tag: tag.as_str().into(),
            created: Utc::now().timestamp(),
            counters: vec![(ck(Scope::Profile, "p1", Window::Daily, "cost"), cost)],
            expire_daily: far,
            expire_monthly: far,
            expire_minute: far,
            expire_hour: far,
            record: Some(record("m", cost, &[])),
        };
        let p = params();
        let (a, b) = (entry("id-1", 5), entry("id-2", i64::MAX - 5));
        let inv = settle_sums(&keys, [(&tag, &a), (&tag, &b)], &p, |_, _| true).unwrap();
        let (k, args) = inv.parts();
        // Counter hash + day and month history of the profile and the org.
        assert_eq!(k.iter().filter(|k| k.contains(":c:") || k.contains(":h:")).count(), 5, "{k:?}");
        assert_eq!(args.iter().filter(|a| *a == "cost").count(), 1, "one write of the counter field");
        assert!(args.contains(&i64::MAX.to_string()), "summed exactly: {args:?}");
        assert_eq!(args.iter().filter(|a| *a == "cost|gemini|m").count(), 4);
        assert_eq!(
            args.iter().filter(|a| a.starts_with('{')).count(),
            4,
            "each record on the profile's and the org's list"
        );

        let c = entry("id-3", 6);
        assert!(
            settle_sums(&keys, [(&tag, &b), (&tag, &c)], &p, |_, _| true).is_none(),
            "a sum past i64 goes through settle.lua"
        );
        let mut tagged = entry("id-4", 1);
        tagged.record.as_mut().unwrap().tags = vec!["tool=a".into()];
        assert!(settle_sums(&keys, [(&tag, &tagged)], &p, |_, _| true).is_none(), "tags go through settle.lua");
        // A batch it cannot take has none of its expiries marked as sent.
        let mut asked = 0;
        assert!(settle_sums(&keys, [(&tag, &a), (&tag, &tagged)], &p, |_, _| {
            asked += 1;
            true
        })
        .is_none());
        assert_eq!(asked, 0);
    }

    #[test]
    fn decodes_reserve_replies() {
        let admitted = Value::Array(vec![Value::Int(1), Value::BulkString(b"12".to_vec()), Value::BulkString(b"-3".to_vec())]);
        let again = Value::Array(vec![Value::Int(2)]);
        let refused = Value::Array(vec![Value::Int(0), Value::Int(4), Value::BulkString(b"9223372036854775807".to_vec())]);
        let failed = Value::Array(vec![Value::Int(3), Value::BulkString(b"WRONGTYPE".to_vec())]);
        let replies = reserve_replies(Value::Array(vec![admitted, again, refused, failed]), 4).unwrap();
        assert_eq!(replies[0].as_ref().unwrap(), &Some(ReserveOutcome::Admitted { before: vec![12, -3] }));
        assert_eq!(replies[1].as_ref().unwrap(), &None);
        assert_eq!(replies[2].as_ref().unwrap(), &Some(ReserveOutcome::Refused { index: 4, current: i64::MAX }));
        assert!(replies[3].as_ref().unwrap_err().to_string().contains("WRONGTYPE"));
        assert!(reserve_replies(Value::Array(vec![Value::Int(3)]), 1).is_err());
        assert!(reserve_replies(Value::Array(vec![]), 1).is_err(), "one reply per reservation");
    }
}
