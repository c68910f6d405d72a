//! The embedded store's counters in memory: the request path's check-and-reserve reads and
//! writes only these. Only the current window buckets are kept: a bucket is dropped once a
//! newer bucket of its window has existed for [`GRACE_SECS`] (the limits never look back,
//! and the history keeps what was spent). Per tenant and bucket, the fields live in one
//! small vector of (field number, value); field names are kept once for the whole store. A
//! tenant costs about 130 bytes per current bucket whatever its history.

use std::collections::{BTreeMap, HashMap};

const _: () = assert!(
    Window::Minute as usize == 0 && Window::Hour as usize == 1 && Window::Daily as usize == 2 && Window::Monthly as usize == 3,
    "the counters index their windows by number, in the order of `Window::ALL`"
);

use crate::domain::window::Window;
use crate::domain::Scope;
use crate::quota::ledger::{CounterKey, CounterOp, ReserveOutcome};

/// How long a bucket outlives its window (settlements of calls admitted in it may still
/// arrive; they only matter to the history, which the database keeps).
pub const GRACE_SECS: i64 = 600;

/// (field number in [`Counters::names`], value).
type Fields = Vec<(u32, i64)>;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Bucket {
    /// Per scope (profile, org): tenant -> its fields.
    tenants: [Map<Box<str>, Fields>; 2],
    /// When a newer bucket of the same window was first seen (unix seconds).
    superseded_at: Option<i64>,
}

fn scope_index(s: Scope) -> usize {
    match s {
        Scope::Profile => 0,
        Scope::Org => 1,
    }
}

/// A bucket id's position in time. Days and months sort as their ids do; a minute's or an
/// hour's id is its local start with the offset then (`2026-10-25T02:05+01:00`), which sorts
/// wrongly when clocks go back, so it is compared as the instant it names.
fn starts(window: Window, id: &str) -> (i64, &str) {
    if !window.is_rate() {
        return (0, id);
    }
    // An hour's id has no minutes: `2026-10-25T02+01:00`.
    let parsed = match id.len() {
        19 => chrono::DateTime::parse_from_str(&format!("{}:00{}", &id[..13], &id[13..]), "%Y-%m-%dT%H:%M%:z"),
        _ => chrono::DateTime::parse_from_str(id, "%Y-%m-%dT%H:%M%:z"),
    };
    (parsed.map_or(i64::MIN, |t| t.timestamp()), id)
}

/// A field's number in `names`, added if new.
fn number_or_add(names: &mut Vec<Box<str>>, field: &str) -> u32 {
    match names.iter().position(|n| **n == *field) {
        Some(n) => n as u32,
        None => {
            names.push(field.into());
            (names.len() - 1) as u32
        }
    }
}

/// A field's value among a tenant's fields (0 when it has none).
fn value_in(fields: Option<&Fields>, field: Option<u32>) -> i64 {
    let (Some(fields), Some(field)) = (fields, field) else { return 0 };
    fields.iter().find(|(n, _)| *n == field).map_or(0, |(_, v)| *v)
}

/// Buckets taken out by [`Counters::take_expired`].
#[derive(Default)]
pub struct Expired {
    /// `(window, bucket id)` of each.
    pub ids: Vec<(Window, String)>,
    buckets: Vec<Bucket>,
}

#[derive(Default)]
pub struct Counters {
    /// Per window (indexed by `Window as usize`): bucket id -> bucket. Bucket ids of a window
    /// sort by time.
    windows: [BTreeMap<String, Bucket>; 4],
    /// Every field name seen (`cost`, `requests`, `cost#<match id>`, ...): a handful, one
    /// per metric and per limit with a `match`.
    names: Vec<Box<str>>,
}

impl Counters {
    fn number(&self, field: &str) -> Option<u32> {
        self.names.iter().position(|n| **n == *field).map(|i| i as u32)
    }

    pub fn get(&self, key: &CounterKey) -> i64 {
        value_in(self.fields(key), self.number(&key.field))
    }

    /// The fields of a key's tenant in its bucket, if it has any.
    fn fields(&self, key: &CounterKey) -> Option<&Fields> {
        self.windows[key.window as usize]
            .get(&*key.bucket)
            .and_then(|b| b.tenants[scope_index(key.scope)].get(&*key.tenant))
    }

    /// Adds `amount` to a counter (creating it). Zero amounts create nothing.
    pub fn add(&mut self, key: &CounterKey, amount: i64, now: i64) {
        self.add_row(key, std::iter::once((&*key.field, amount)), now);
    }

    /// Adds amounts to fields of one tenant's bucket (`key`'s, whatever its field), creating
    /// what is missing; the bucket and tenant are looked up once. Zero amounts create nothing.
    pub fn add_row<'f>(&mut self, key: &CounterKey, amounts: impl Iterator<Item = (&'f str, i64)> + Clone, now: i64) {
        if amounts.clone().all(|(_, a)| a == 0) {
            return;
        }
        let Counters { windows, names } = self;
        let kind = key.window;
        let window = &mut windows[kind as usize];
        if !window.contains_key(&*key.bucket) {
            // A new bucket supersedes the older ones of its window.
            let new = starts(kind, &key.bucket);
            let newest = window.keys().all(|other| starts(kind, other) < new);
            if newest {
                for b in window.values_mut() {
                    b.superseded_at.get_or_insert(now);
                }
            }
            window.insert(
                key.bucket.to_string(),
                Bucket {
                    superseded_at: (!newest).then_some(now),
                    ..Bucket::default()
                },
            );
        }
        let bucket = window.get_mut(&*key.bucket).expect("inserted above");
        let tenants = &mut bucket.tenants[scope_index(key.scope)];
        let fields = match tenants.get_mut(&*key.tenant) {
            Some(f) => f,
            // Room for the four metrics of a tenant without `match` limits.
            None => tenants.entry(Box::from(&*key.tenant)).or_insert_with(|| Vec::with_capacity(4)),
        };
        for (name, amount) in amounts.filter(|(_, a)| *a != 0) {
            let field = number_or_add(names, name);
            match fields.iter_mut().find(|(n, _)| *n == field) {
                Some((_, v)) => *v += amount,
                None => fields.push((field, amount)),
            }
        }
    }

    /// Checks every op's max and, if none refuses, applies every op.
    pub fn reserve(&mut self, ops: &[CounterOp], now: i64) -> ReserveOutcome {
        let mut before = Vec::with_capacity(ops.len());
        // A plan's ops come a tenant's bucket at a time: its fields are looked up once.
        let mut row: Option<(&CounterKey, Option<&Fields>)> = None;
        for (index, op) in ops.iter().enumerate() {
            let fields = match row {
                Some((key, fields)) if key.same_bucket(&op.key) => fields,
                _ => {
                    let fields = self.fields(&op.key);
                    row = Some((&op.key, fields));
                    fields
                }
            };
            let current = value_in(fields, self.number(&op.key.field));
            if let Some(max) = op.max {
                if op.amount > 0 && current >= max {
                    return ReserveOutcome::Refused { index, current };
                }
            }
            before.push(current);
        }
        for row in ops.chunk_by(|a, b| a.key.same_bucket(&b.key)) {
            self.add_row(&row[0].key, row.iter().map(|op| (&*op.key.field, op.amount)), now);
        }
        ReserveOutcome::Admitted { before }
    }

    /// Takes out the buckets superseded for longer than the grace period; the caller drops
    /// them outside its lock.
    pub fn take_expired(&mut self, now: i64) -> Expired {
        let mut out = Expired::default();
        for (window, buckets) in Window::ALL.into_iter().zip(&mut self.windows) {
            let old: Vec<String> = buckets
                .iter()
                .filter(|(_, b)| b.superseded_at.is_some_and(|t| now - t >= GRACE_SECS))
                .map(|(id, _)| id.clone())
                .collect();
            for id in old {
                if let Some(b) = buckets.remove(&id) {
                    out.ids.push((window, id));
                    out.buckets.push(b);
                }
            }
        }
        out
    }

    /// How many (tenant, bucket) entries are held, for tests and diagnostics.
    pub fn entries(&self) -> usize {
        self.windows
            .iter()
            .flat_map(|w| w.values())
            .map(|b| b.tenants[0].len() + b.tenants[1].len())
            .sum()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A profile's counter (the journal's tests use it too).
    pub(in crate::store::embedded) fn key(tenant: &str, window: Window, bucket: &str, field: &str) -> CounterKey {
        CounterKey {
            scope: Scope::Profile,
            tenant: tenant.into(),
            window,
            bucket: bucket.into(),
            field: field.into(),
        }
    }

    /// A watched op on `key`.
    fn op(key: CounterKey, amount: i64, max: Option<i64>) -> CounterOp {
        CounterOp {
            key,
            amount,
            max,
            watched: true,
        }
    }

    #[test]
    fn reserve_checks_then_applies_all_or_nothing() {
        let mut c = Counters::default();
        let ops = |amount| {
            vec![
                op(key("p", Window::Daily, "2026-11-29", "requests"), 1, None),
                op(key("p", Window::Daily, "2026-11-29", "cost"), amount, Some(10)),
            ]
        };
        assert_eq!(c.reserve(&ops(6), 0), ReserveOutcome::Admitted { before: vec![0, 0] });
        assert_eq!(c.reserve(&ops(6), 0), ReserveOutcome::Admitted { before: vec![1, 6] });
        assert_eq!(c.reserve(&ops(6), 0), ReserveOutcome::Refused { index: 1, current: 12 });
        assert_eq!(c.get(&key("p", Window::Daily, "2026-11-29", "requests")), 2);
    }

    #[test]
    fn reserve_reads_each_op_s_own_row_when_rows_alternate() {
        let mut c = Counters::default();
        c.add(&key("p", Window::Daily, "2026-11-29", "cost"), 3, 0);
        c.add(&key("q", Window::Daily, "2026-11-29", "cost"), 5, 0);
        c.add(&key("p", Window::Monthly, "2026-11", "cost"), 7, 0);
        let mut org = key("p", Window::Daily, "2026-11-29", "cost");
        org.scope = Scope::Org;
        c.add(&org, 11, 0);
        let op = |key| op(key, 1, None);
        // Same strings in separate allocations, rows changing back and forth, a field the
        // row does not have, and a scope that differs in nothing else.
        let ops = [
            op(key("p", Window::Daily, "2026-11-29", "cost")),
            op(key("p", Window::Daily, "2026-11-29", "tokens")),
            op(key("q", Window::Daily, "2026-11-29", "cost")),
            op(key("p", Window::Daily, "2026-11-29", "cost")),
            op(key("p", Window::Monthly, "2026-11", "cost")),
            op(org.clone()),
            op(key("p", Window::Daily, "2026-11-28", "cost")),
        ];
        assert_eq!(
            c.reserve(&ops, 0),
            ReserveOutcome::Admitted {
                before: vec![3, 0, 5, 3, 7, 11, 0]
            }
        );
        assert_eq!(c.get(&key("p", Window::Daily, "2026-11-29", "cost")), 5, "two ops of one counter both add");
        let after: Vec<i64> = ops.iter().map(|op| c.get(&op.key)).collect();
        assert_eq!(after, [5, 1, 6, 5, 8, 12, 1], "each op added to its own row");
        assert_eq!(c.entries(), 5, "p and q of the day, p of the month, the org, p of the day before");
    }

    #[test]
    fn superseded_buckets_go_after_the_grace_period() {
        let mut c = Counters::default();
        c.add(&key("p", Window::Daily, "2026-11-28", "cost"), 5, 0);
        c.add(&key("p", Window::Monthly, "2026-11", "cost"), 5, 0);
        c.add(&key("p", Window::Daily, "2026-11-29", "cost"), 7, 100);
        // A late settlement of yesterday's call.
        c.add(&key("p", Window::Daily, "2026-11-28", "cost"), 1, 200);
        assert!(c.take_expired(100 + GRACE_SECS - 1).ids.is_empty());
        assert_eq!(c.take_expired(100 + GRACE_SECS).ids, [(Window::Daily, "2026-11-28".to_string())]);
        assert_eq!(c.get(&key("p", Window::Daily, "2026-11-29", "cost")), 7);
        assert_eq!(c.get(&key("p", Window::Monthly, "2026-11", "cost")), 5);
        // An old bucket seen again (a very late settlement) is superseded from the start.
        c.add(&key("p", Window::Daily, "2026-11-27", "cost"), 1, 5000);
        assert_eq!(c.take_expired(5000 + GRACE_SECS).ids.len(), 1);
        assert_eq!(c.entries(), 2);
    }

    #[test]
    fn the_hour_repeated_when_clocks_go_back_is_the_newest() {
        let mut c = Counters::default();
        // Berlin, 2026-10-25: 02:00-03:00 at +02:00, then again at +01:00.
        c.add(&key("p", Window::Hour, "2026-10-25T02+02:00", "requests"), 1, 0);
        c.add(&key("p", Window::Hour, "2026-10-25T02+01:00", "requests"), 1, 3600);
        c.add(&key("p", Window::Minute, "2026-10-25T02:59+02:00", "requests"), 1, 3599);
        c.add(&key("p", Window::Minute, "2026-10-25T02:00+01:00", "requests"), 1, 3600);
        let gone = c.take_expired(3600 + GRACE_SECS).ids;
        assert_eq!(gone.len(), 2, "only the first hour and minute are superseded: {gone:?}");
        assert!(gone.iter().all(|(_, id)| id.ends_with("+02:00")), "{gone:?}");
        assert_eq!(c.get(&key("p", Window::Hour, "2026-10-25T02+01:00", "requests")), 1);
    }

    #[test]
    fn zero_amounts_create_nothing() {
        let mut c = Counters::default();
        c.add(&key("p", Window::Daily, "2026-11-29", "tokens"), 0, 0);
        assert_eq!(c.entries(), 0);
    }
}
