//! The two Lua scripts and their arguments: `reserve.lua` (one request's check-and-reserve)
//! and `settle.lua` (a batch of settlements or journal entries).
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
const SETTLE_LUA: &str = include_str!("settle.lua");

/// Both scripts, hashed once.
pub struct Scripts {
    pub reserve: Script,
    pub settle: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            reserve: Script::new(RESERVE_LUA),
            settle: Script::new(SETTLE_LUA),
        }
    }
}

impl Scripts {
    /// Loads both scripts (on every master of a cluster), so that the first calls find them.
    pub async fn load(&self, conn: &mut Conn) -> RedisResult<()> {
        for code in [RESERVE_LUA, SETTLE_LUA] {
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
pub struct ReserveOp<'a> {
    pub key: &'a str,
    pub field: &'a str,
    pub amount: i64,
    /// The max to check against, lowered by what this replica counted locally and has not
    /// replayed yet.
    pub max: Option<i64>,
    pub expire: DateTime<Utc>,
    /// The counter's window (sets the floor of its expiry).
    pub window: Window,
}

/// Seconds the ids of first calls are kept (`Keys::calls`).
pub const CALLS_TTL: i64 = 2 * 3600;

/// The key of the ids of calls made in the UTC hour of `created`.
pub fn calls_key(keys: &Keys, tag: &Tag, created: i64) -> String {
    let t = DateTime::from_timestamp(created, 0).unwrap_or_default();
    keys.calls(tag, &format!("{:04}{:02}{:02}{:02}", t.year(), t.month(), t.day(), t.hour()))
}

/// The arguments of `reserve.lua` for the call `id` (recorded in `calls_key`).
pub fn reserve(calls_key: String, id: &str, ops: &[ReserveOp<'_>]) -> Invocation {
    let mut inv = Invocation::default();
    inv.key(calls_key);
    // One group per counter hash, in order of first appearance.
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match groups.iter_mut().find(|(k, _)| *k == op.key) {
            Some(g) => g.1.push(i),
            None => groups.push((op.key, vec![i])),
        }
    }
    inv.arg(id);
    inv.arg(CALLS_TTL);
    inv.arg(groups.len());
    for (key, members) in &groups {
        inv.key(key.to_string());
        inv.arg(expire_at(ops[members[0]].expire, ops[members[0]].window));
        inv.arg(members.len());
        for &i in members {
            let op = &ops[i];
            inv.arg(i);
            inv.arg(op.field);
            inv.arg(op.amount);
            match op.max {
                Some(m) => inv.arg(m),
                None => inv.arg(""),
            }
        }
    }
    inv
}

/// Decodes the reply of `reserve.lua`; `None` when the call's id was already applied (by
/// the journal replay of the same reservation).
pub fn reserve_reply(v: Value) -> RedisResult<Option<ReserveOutcome>> {
    let items: Vec<Value> = FromRedisValue::from_redis_value(v)?;
    let int = |v: &Value| -> RedisResult<i64> { Ok(i64::from_redis_value_ref(v)?) };
    let bad = || redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "unexpected reply from reserve.lua"));
    match items.first().map(int).transpose()? {
        Some(1) => Ok(Some(ReserveOutcome::Admitted {
            before: items[1..].iter().map(int).collect::<RedisResult<_>>()?,
        })),
        Some(0) if items.len() == 3 => Ok(Some(ReserveOutcome::Refused {
            index: usize::try_from(int(&items[1])?).map_err(|_| bad())?,
            current: int(&items[2])?,
        })),
        Some(2) => Ok(None),
        _ => Err(bad()),
    }
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

/// The arguments of `settle.lua` for a batch of entries (all in one hash slot on a
/// cluster), as first calls or (`replay`) as replays from the journal; either way each is
/// applied once.
pub fn settle<'a>(keys: &Keys, entries: impl IntoIterator<Item = (&'a Tag, &'a Entry)>, replay: bool, p: &ApplyParams) -> Invocation {
    let mut inv = Invocation::default();
    let now = Utc::now();
    let recent_expiry = expire_at(now + Duration::days(i64::from(p.daily_days)), Window::Daily);

    inv.arg(CALLS_TTL);
    inv.arg(p.dedupe_ttl);
    inv.arg(p.recent_max.max(1));
    let count_at = inv.args.len();
    inv.arg(0);
    let mut count = 0;
    // Day ids and expiries are the same for most entries of a batch: computed once per day.
    let mut last_day: Option<(String, Periods)> = None;
    for (tag, entry) in entries {
        count += 1;
        let idx = inv.key(calls_key(keys, tag, entry.created));
        inv.arg(idx);
        inv.arg(&entry.id);
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
            let idx = inv.key(keys.recent(tag, *scope, id));
            inv.arg(idx);
            inv.arg(recent_expiry);
        }
        inv.arg(serde_json::to_string(rec).unwrap_or_default());
    }
    inv.args[count_at] = count.to_string();
    inv
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

    #[test]
    fn reserve_shares_keys_and_lists_one_expiry_per_key() {
        let far = Utc::now() + Duration::days(90);
        let ops = [
            ReserveOp {
                key: "k1",
                field: "cost",
                amount: 5,
                max: Some(10),
                expire: far,
                window: Window::Daily,
            },
            ReserveOp {
                key: "k1",
                field: "requests",
                amount: 1,
                max: None,
                expire: far,
                window: Window::Daily,
            },
            ReserveOp {
                key: "k2",
                field: "cost",
                amount: 5,
                max: None,
                expire: far,
                window: Window::Daily,
            },
        ];
        let inv = reserve("calls".into(), "id-1", &ops);
        let (keys, args) = inv.parts();
        assert_eq!(keys, ["calls", "k1", "k2"]);
        let far_s = far.timestamp().to_string();
        let far_s = far_s.as_str();
        assert_eq!(
            args,
            ["id-1", "7200", "2", far_s, "2", "0", "cost", "5", "10", "1", "requests", "1", "", far_s, "1", "2", "cost", "5", ""]
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
            record: Some(UsageRecord {
                tags: vec!["tool=a".into()],
                at: Utc::now(),
                day: "2026-11-22".into(),
                profile: "p1".into(),
                org: Some("acme".into()),
                provider: "gemini".into(),
                model: "m:x".into(),
                path: "/v1/x".into(),
                status: 200,
                totals: Totals {
                    requests: 1,
                    cost_nanos: 7,
                    ..Totals::default()
                },
                reason: None,
            }),
        };
        let p = ApplyParams {
            recent_max: 50,
            daily_days: 400,
            monthly_months: 25,
            dedupe_ttl: 60,
            max_tags: 100,
        };
        let inv = settle(&keys, [(&tag, &entry)], true, &p);
        let (k, a) = inv.parts();
        assert!(k.iter().all(|k| k.contains("{o:acme}")), "{k:?}");
        assert!(k[0].starts_with("sg:{o:acme}:n:"));
        assert!(k[1].starts_with("sg:{o:acme}:j:"));
        // The ids' and the replay set's lifetimes, the cap, one entry: its id hash, id and
        // replay set, one counter (zero deltas are skipped).
        assert_eq!(&a[..8], ["7200", "60", "50", "1", "1", "id-1", "2", "1"]);
        assert!(a.contains(&"cost|gemini|m:x".to_string()));
        assert!(a.contains(&"requests|gemini|m:x".to_string()));
        assert!(!a.iter().any(|x| x.starts_with("chars|")), "zero fields are skipped");
        assert_eq!(k.iter().filter(|k| k.contains(":h:")).count(), 4, "day and month of the profile and the org");
        assert_eq!(k.iter().filter(|k| k.contains(":g:")).count(), 2, "the tag sets of the profile and the org");
        assert!(a.contains(&"tool=a".to_string()));
        let inv = settle(&keys, [(&tag, &entry)], false, &p);
        assert_eq!(inv.parts().1[6], "0", "a first call is not a replay");
        assert!(!inv.parts().0.iter().any(|k| k.contains(":j:")));

        // A batch names every key once and counts its entries.
        let mut second = entry.clone();
        second.id = "id-2".into();
        let inv = settle(&keys, [(&tag, &entry), (&tag, &second)], false, &p);
        let (k2, a2) = inv.parts();
        assert_eq!(a2[3], "2");
        assert_eq!(k2.len(), k.len() - 1, "the same keys, without the replay set");
        assert!(a2.contains(&"id-2".to_string()));
    }

    #[test]
    fn decodes_reserve_replies() {
        let admitted = Value::Array(vec![Value::Int(1), Value::BulkString(b"12".to_vec()), Value::BulkString(b"-3".to_vec())]);
        assert_eq!(reserve_reply(admitted).unwrap(), Some(ReserveOutcome::Admitted { before: vec![12, -3] }));
        assert_eq!(reserve_reply(Value::Array(vec![Value::Int(2)])).unwrap(), None);
        let refused = Value::Array(vec![Value::Int(0), Value::Int(4), Value::BulkString(b"9223372036854775807".to_vec())]);
        assert_eq!(reserve_reply(refused).unwrap(), Some(ReserveOutcome::Refused { index: 4, current: i64::MAX }));
        assert!(reserve_reply(Value::Int(3)).is_err());
    }
}
