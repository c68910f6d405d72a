//! The two Lua scripts and their arguments.
//!
//! Scripts are sent by SHA1 (`EVALSHA`); when Redis answers `NOSCRIPT` (after a restart or
//! a failover to a node that never saw them) they are loaded and the call is retried, by
//! `redis::ScriptInvocation`. They are also loaded once when the store starts.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use redis::{FromRedisValue, RedisResult, Script, Value};

use super::conn::Conn;
use super::journal::Entry;
use super::keys::{Keys, Tag};
use crate::domain::window::Window;
use crate::domain::Scope;
use crate::quota::ledger::{ReserveOutcome, Totals};

const RESERVE_LUA: &str = include_str!("reserve.lua");
const APPLY_LUA: &str = include_str!("apply.lua");

/// Both scripts, hashed once.
pub struct Scripts {
    pub reserve: Script,
    pub apply: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            reserve: Script::new(RESERVE_LUA),
            apply: Script::new(APPLY_LUA),
        }
    }
}

impl Scripts {
    /// Loads both scripts (on every master of a cluster), so that the first calls find them.
    pub async fn load(&self, conn: &mut Conn) -> RedisResult<()> {
        for code in [RESERVE_LUA, APPLY_LUA] {
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
}

impl Invocation {
    /// The 1-based index of `key` in KEYS, adding it when new.
    fn key(&mut self, key: String) -> usize {
        match self.keys.iter().position(|k| *k == key) {
            Some(i) => i + 1,
            None => {
                self.keys.push(key);
                self.keys.len()
            }
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
    let floor = match window {
        Window::Minute => Duration::minutes(3),
        Window::Hour => Duration::hours(2),
        Window::Daily | Window::Monthly => Duration::days(1),
    };
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
    keys.calls(tag, &DateTime::from_timestamp(created, 0).unwrap_or_default().format("%Y%m%d%H").to_string())
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

/// What `apply.lua` needs beyond the entry.
pub struct ApplyParams {
    pub recent_max: usize,
    pub daily_days: u32,
    pub monthly_months: u32,
    /// Seconds the set of applied ids is kept.
    pub dedupe_ttl: i64,
    /// Most distinct tags kept per tenant (`store.max_tags`).
    pub max_tags: usize,
}

/// The arguments of `apply.lua` for `entry`, as its first call or (`replay`) as a replay
/// from the journal; either way it is applied once.
pub fn apply(keys: &Keys, tag: &Tag, entry: &Entry, replay: bool, p: &ApplyParams) -> Invocation {
    let mut inv = Invocation::default();
    inv.key(calls_key(keys, tag, entry.created));
    inv.arg(&entry.id);
    inv.arg(CALLS_TTL);
    if replay {
        let day = DateTime::from_timestamp(entry.created, 0).unwrap_or_default().format("%Y-%m-%d").to_string();
        inv.key(keys.applied(tag, &day));
        inv.arg(p.dedupe_ttl);
    } else {
        inv.arg("");
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
        // No history: no history keys, no fields, no tag groups, tags or metrics, no lists,
        // an empty record.
        for a in ["0", "0", "0", "0", "0", "0", "", "1"] {
            inv.arg(a);
        }
        return inv;
    };
    let day = NaiveDate::parse_from_str(&rec.day, "%Y-%m-%d").unwrap_or_else(|_| rec.at.date_naive());
    let day_id = day.format("%Y-%m-%d").to_string();
    let month_id = day.format("%Y-%m").to_string();
    let day_expiry = expire_at(utc_midnight(day) + Duration::days(2 + i64::from(p.daily_days)), Window::Daily);
    let month_expiry = expire_at(
        utc_midnight(first_of_next_month(day)) + Duration::days(1 + 31 * i64::from(p.monthly_months)),
        Window::Monthly,
    );
    let recent_expiry = expire_at(Utc::now() + Duration::days(i64::from(p.daily_days)), Window::Daily);
    let tenants: Vec<(Scope, &str)> = std::iter::once((Scope::Profile, rec.profile.as_str()))
        .chain(rec.org.as_deref().map(|o| (Scope::Org, o)))
        .collect();
    inv.arg(tenants.len() * 2);
    let mut history_keys = Vec::with_capacity(tenants.len() * 2);
    for (scope, id) in &tenants {
        for (period, expiry) in [(&day_id, day_expiry), (&month_id, month_expiry)] {
            let idx = inv.key(keys.history(tag, *scope, id, period));
            history_keys.push(idx);
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
    if rec.tags.is_empty() {
        for a in ["0", "0", "0"] {
            inv.arg(a);
        }
    } else {
        inv.arg(tenants.len());
        for (g, (scope, id)) in tenants.iter().enumerate() {
            let idx = inv.key(keys.tag_set(tag, *scope, id));
            inv.arg(idx);
            inv.arg(p.max_tags.max(1));
            inv.arg(month_expiry);
            // The tenant's day and month history keys, added above.
            inv.arg(2);
            inv.arg(history_keys[g * 2]);
            inv.arg(history_keys[g * 2 + 1]);
        }
        inv.arg(rec.tags.len());
        for t in &rec.tags {
            inv.arg(t);
        }
        inv.arg(fields.len());
        for (metric, v) in &fields {
            inv.arg(*metric);
            inv.arg(v);
        }
    }
    inv.arg(tenants.len());
    for (scope, id) in &tenants {
        let idx = inv.key(keys.recent(tag, *scope, id));
        inv.arg(idx);
        inv.arg(recent_expiry);
    }
    inv.arg(serde_json::to_string(rec).unwrap_or_default());
    inv.arg(p.recent_max.max(1));
    inv
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
    fn apply_writes_breakdowns_for_profile_and_org_under_one_tag() {
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
            }),
        };
        let p = ApplyParams {
            recent_max: 50,
            daily_days: 400,
            monthly_months: 25,
            dedupe_ttl: 60,
            max_tags: 100,
        };
        let inv = apply(&keys, &tag, &entry, true, &p);
        let (k, a) = inv.parts();
        assert!(k.iter().all(|k| k.contains("{o:acme}")), "{k:?}");
        assert!(k[0].starts_with("sg:{o:acme}:n:"));
        assert!(k[1].starts_with("sg:{o:acme}:j:"));
        assert_eq!(&a[..4], ["id-1", "7200", "60", "1"], "zero deltas are skipped");
        assert!(a.contains(&"cost|gemini|m:x".to_string()));
        assert!(a.contains(&"requests|gemini|m:x".to_string()));
        assert!(!a.iter().any(|x| x.starts_with("chars|")), "zero fields are skipped");
        assert_eq!(k.iter().filter(|k| k.contains(":h:")).count(), 4, "day and month of the profile and the org");
        assert_eq!(k.iter().filter(|k| k.contains(":g:")).count(), 2, "the tag sets of the profile and the org");
        assert!(a.contains(&"tool=a".to_string()));
        let inv = apply(&keys, &tag, &entry, false, &p);
        assert_eq!(inv.parts().1[2], "", "a first call is not a replay");
        assert!(!inv.parts().0[1].contains(":j:"));
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
