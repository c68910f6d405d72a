//! The read side of the Redis store (counters, history, tenants, for the usage API) and the
//! registries that let it find a tenant's data: the per-scope tenant registries and each
//! profile's `homes` (the tags its keys live under).
//!
//! Registries are written outside the request scripts, once per tenant (and tag) per day
//! and process, in the background; they are an index, not money: a failed write is retried
//! with the tenant's next request.

use std::collections::{BTreeMap, HashMap, HashSet};

use foldhash::fast::RandomState;
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use futures_util::{StreamExt, TryStreamExt};
use redis::{FromRedisValue, Value};

use super::conn::Conn;
use super::keys::Tag;
use super::scripts::add_metric;
use super::Inner;
use crate::domain::Scope;
use crate::quota::ledger::{CounterKey, History, StoreError, Totals, UsageRecord};

/// Most (profile, tag) pairs remembered as registered; past it the memory starts over.
const MAX_REGISTERED: usize = 100_000;

/// Tenants whose keys are looked up at once by the reads that cover a whole fleet, on a
/// cluster (one call each).
const LOOKUPS_IN_FLIGHT: usize = 64;

/// Commands per pipeline of those reads on standalone Redis.
const PIPELINE: usize = 1_000;

/// What this process has registered today: tag -> the profiles registered under it (looked
/// up on every request, without building a key).
#[derive(Default)]
pub struct Registered {
    day: Option<NaiveDate>,
    seen: HashMap<String, HashSet<String, RandomState>, RandomState>,
    len: usize,
}

impl Registered {
    /// Forgets what was registered: the next write of each tenant registers it again.
    pub fn forget(&mut self) {
        self.seen.clear();
        self.len = 0;
    }

    fn contains(&self, profile: &str, tag: &str) -> bool {
        self.seen.get(tag).is_some_and(|p| p.contains(profile))
    }

    /// Adds a pair; false when it was there already.
    fn insert(&mut self, profile: &str, tag: &str) -> bool {
        let added = self.seen.entry(tag.to_string()).or_default().insert(profile.to_string());
        self.len += usize::from(added);
        added
    }

    fn remove(&mut self, profile: &str, tag: &str) {
        if self.seen.get_mut(tag).is_some_and(|p| p.remove(profile)) {
            self.len -= 1;
        }
    }
}

impl Inner {
    /// Seconds a registry entry is kept after the tenant was last seen: as long as any of
    /// its history.
    fn registry_retention_secs(&self) -> i64 {
        let days = i64::from(self.apply.daily_days).max(31 * i64::from(self.apply.monthly_months));
        (days + 1) * 86_400
    }

    /// Makes sure the usage API can find what is about to be written under `tag`: before the
    /// first write of a profile under an org's tag (per process and day), the tag is added to
    /// the profile's `homes` (awaited, bounded by `store.timeout`). `false` when that failed:
    /// the write must not go ahead (the caller falls back as for any failed call). The tenant
    /// registries are then written in the background.
    pub(super) async fn ensure_registered(self: &Arc<Self>, tag: &Tag, profile: &str, org: Option<&str>) -> bool {
        let today = Utc::now().date_naive();
        let new_day = {
            let mut r = self.registered.lock();
            let new_day = r.day != Some(today);
            if new_day || r.len >= MAX_REGISTERED {
                r.forget();
                r.day = Some(today);
            }
            if r.contains(profile, tag.as_str()) {
                return true;
            }
            new_day
        };
        let pair = (profile.to_string(), tag.as_str().to_string());
        let now = Utc::now().timestamp();
        let keep = self.registry_retention_secs();
        if org.is_some() {
            let mut c = self.conn.clone();
            let homes = self.keys.homes(profile);
            let mut pipe = redis::pipe();
            pipe.cmd("ZADD").arg(&homes).arg(now).arg(tag.as_str()).ignore();
            pipe.cmd("EXPIRE").arg(&homes).arg(keep).ignore();
            let started = std::time::Instant::now();
            let written = tokio::time::timeout(self.timeout, pipe.exec_async(&mut c)).await;
            self.metrics.observe("register", started);
            if !matches!(written, Ok(Ok(()))) {
                self.metrics.error("register");
                return false;
            }
        }
        if !self.registered.lock().insert(&pair.0, &pair.1) {
            return true;
        }
        let inner = self.clone();
        let org = org.map(str::to_string);
        tokio::spawn(async move {
            let mut c = inner.conn.clone();
            let write = async {
                let mut tenants = vec![(Scope::Profile, pair.0.as_str())];
                tenants.extend(org.as_deref().map(|o| (Scope::Org, o)));
                for (scope, id) in tenants {
                    redis::cmd("ZADD").arg(inner.keys.registry(scope)).arg(now).arg(id).exec_async(&mut c).await?;
                }
                if new_day {
                    for scope in [Scope::Profile, Scope::Org] {
                        redis::cmd("ZREMRANGEBYSCORE")
                            .arg(inner.keys.registry(scope))
                            .arg("-inf")
                            .arg(now - keep)
                            .exec_async(&mut c)
                            .await?;
                    }
                }
                Ok(())
            };
            if inner.own_work("register", write).await.is_err() {
                inner.registered.lock().remove(&pair.0, &pair.1);
            }
        });
        true
    }

    /// The tags a tenant's data lives under: an org's own; a profile's own plus every org
    /// it was seen under.
    async fn tags_of(&self, scope: Scope, tenant: &str) -> Result<Vec<Tag>, StoreError> {
        let own = Tag::own(scope, tenant);
        if scope == Scope::Org {
            return Ok(vec![own]);
        }
        let mut c = self.conn.clone();
        let homes: Vec<String> = self
            .bounded(redis::cmd("ZRANGE").arg(self.keys.homes(tenant)).arg(0).arg(-1).query_async(&mut c))
            .await?;
        Ok(profile_tags(own, &homes))
    }

    /// [`Inner::tags_of`] for many tenants (a listing sorted by ratio or cost reads the whole
    /// fleet). Standalone Redis: the profiles' `homes` in pipelines of [`PIPELINE`] reads. A
    /// cluster, where a pipeline stays within one slot: one read per profile, many in flight.
    async fn tags_of_many(&self, tenants: &[(Scope, &str)]) -> Result<Vec<Vec<Tag>>, StoreError> {
        if !matches!(self.conn, Conn::Single(_)) {
            let lookups: Vec<_> = tenants.iter().map(|(scope, tenant)| self.tags_of(*scope, tenant)).collect();
            return futures_util::stream::iter(lookups).buffered(LOOKUPS_IN_FLIGHT).try_collect().await;
        }
        let profiles: Vec<&str> = tenants.iter().filter(|(s, _)| *s == Scope::Profile).map(|(_, t)| *t).collect();
        let reads: Vec<_> = profiles
            .chunks(PIPELINE)
            .map(|chunk| async move {
                let mut pipe = redis::pipe();
                for p in chunk {
                    pipe.cmd("ZRANGE").arg(self.keys.homes(p)).arg(0).arg(-1);
                }
                let mut c = self.conn.clone();
                self.bounded(pipe.query_async::<Vec<Vec<String>>>(&mut c)).await
            })
            .collect();
        let homes: Vec<Vec<Vec<String>>> = futures_util::future::try_join_all(reads).await?;
        let mut homes = homes.into_iter().flatten();
        Ok(tenants
            .iter()
            .map(|(scope, tenant)| {
                let own = Tag::own(*scope, tenant);
                if *scope == Scope::Org {
                    return vec![own];
                }
                profile_tags(own, &homes.next().unwrap_or_default())
            })
            .collect())
    }

    /// Counter values: Redis, summed over the tenant's tags, plus what this replica counted
    /// and has not replayed yet.
    pub(super) async fn read(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        let mut tenants: BTreeMap<(Scope, &str), Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            tenants.entry((k.scope, &*k.tenant)).or_default().push(i);
        }
        let tenants: Vec<((Scope, &str), Vec<usize>)> = tenants.into_iter().collect();
        let names: Vec<(Scope, &str)> = tenants.iter().map(|(t, _)| *t).collect();
        let tags = self.tags_of_many(&names).await?;
        let mut by_tag: BTreeMap<Tag, Vec<(usize, String, std::sync::Arc<str>)>> = BTreeMap::new();
        for ((_, idx), tenant_tags) in tenants.iter().zip(tags) {
            for tag in tenant_tags {
                let cells: Vec<_> = idx.iter().map(|&i| (i, self.keys.counter(&tag, &keys[i]), keys[i].field.clone())).collect();
                by_tag.entry(tag).or_default().extend(cells);
            }
        }
        // One pipeline per tag (its slot); on standalone Redis the tags' cells share
        // pipelines of PIPELINE reads instead.
        let batches: Vec<Vec<(usize, String, std::sync::Arc<str>)>> = if matches!(self.conn, Conn::Single(_)) {
            let all: Vec<_> = by_tag.into_values().flatten().collect();
            all.chunks(PIPELINE).map(<[_]>::to_vec).collect()
        } else {
            by_tag.into_values().collect()
        };
        let reads = batches.iter().map(|cells| async move {
            let mut pipe = redis::pipe();
            for (_, key, field) in cells {
                pipe.cmd("HGET").arg(key).arg(&**field);
            }
            let mut c = self.conn.clone();
            self.bounded(pipe.query_async::<Vec<Option<i64>>>(&mut c)).await
        });
        let results = futures_util::future::join_all(reads).await;
        let mut out = vec![0i64; keys.len()];
        let fence = self.fence.lock();
        for (cells, values) in batches.iter().zip(results) {
            for ((i, key, field), v) in cells.iter().zip(values?) {
                let pending = fence.pending(&(key.clone(), field.clone()));
                out[*i] = out[*i].saturating_add(v.unwrap_or(0)).saturating_add(pending);
            }
        }
        Ok(out)
    }

    /// A tenant's settled usage over `periods` (day ids `2026-11-22` or month ids
    /// `2026-11`), summed over its tags, with its newest `recent` requests.
    pub(super) async fn history(&self, scope: Scope, tenant: &str, periods: &[String], recent: usize) -> Result<History, StoreError> {
        let tags = self.tags_of(scope, tenant).await?;
        // A list may hold up to a quarter more than its cap between trims (`settle.lua`).
        let per_list = recent.min(self.apply.recent_max.max(1));
        let reads = tags.iter().map(|tag| async move {
            let mut pipe = redis::pipe();
            for p in periods {
                pipe.cmd("HGETALL").arg(self.keys.history(tag, scope, tenant, p));
            }
            if per_list > 0 {
                pipe.cmd("LRANGE").arg(self.keys.recent(tag, scope, tenant)).arg(0).arg(per_list - 1);
            }
            let mut c = self.conn.clone();
            self.bounded(pipe.query_async::<Vec<Value>>(&mut c)).await
        });
        let results = futures_util::future::join_all(reads).await;
        let mut out = History::default();
        let mut records: Vec<UsageRecord> = Vec::new();
        let bad = |e: redis::ParsingError| StoreError::Other(format!("unexpected history value: {e}"));
        for replies in results {
            let mut replies = replies?.into_iter();
            for p in periods {
                let fields: Vec<(String, i64)> = FromRedisValue::from_redis_value(replies.next().unwrap_or(Value::Nil)).map_err(bad)?;
                if fields.is_empty() {
                    continue;
                }
                let mut day = out.days.remove(p).unwrap_or_default();
                for (field, v) in fields {
                    add_field(&mut day, &mut out, &field, v);
                }
                out.days.insert(p.clone(), day);
            }
            if recent > 0 {
                let items: Vec<String> = FromRedisValue::from_redis_value(replies.next().unwrap_or(Value::Nil)).map_err(bad)?;
                records.extend(items.iter().filter_map(|s| serde_json::from_str::<UsageRecord>(s).ok()));
            }
        }
        records.sort_by_key(|r| std::cmp::Reverse(r.at));
        records.truncate(recent);
        out.recent = records;
        Ok(out)
    }

    /// Every tenant of a scope seen within the retention, sorted.
    pub(super) async fn tenants(&self, scope: Scope) -> Result<Vec<String>, StoreError> {
        let since = Utc::now().timestamp() - self.registry_retention_secs();
        let mut c = self.conn.clone();
        let mut ids: Vec<String> = self
            .bounded(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.registry(scope))
                    .arg(since)
                    .arg("+inf")
                    .query_async(&mut c),
            )
            .await?;
        ids.sort();
        Ok(ids)
    }

    /// Every tenant of a scope with usage in `periods`, and its totals over them: each
    /// tenant's history hashes, many tenants at a time (a tenant's keys live in its own slots,
    /// so one pipeline cannot cover several tenants on a cluster).
    pub(super) async fn tenant_totals(&self, scope: Scope, periods: &[String]) -> Result<HashMap<String, Totals>, StoreError> {
        let tenants = self.tenants(scope).await?;
        if matches!(self.conn, Conn::Single(_)) {
            return self.tenant_totals_pipelined(scope, tenants, periods).await;
        }
        let reads: Vec<_> = tenants
            .into_iter()
            .map(|tenant| async move {
                let h = self.history(scope, &tenant, periods, 0).await?;
                let mut sum = Totals::default();
                h.days.values().for_each(|d| sum.add(d));
                Ok::<_, StoreError>((tenant, sum))
            })
            .collect();
        let sums: Vec<(String, Totals)> = futures_util::stream::iter(reads).buffer_unordered(LOOKUPS_IN_FLIGHT).try_collect().await?;
        Ok(sums.into_iter().filter(|(_, t)| !t.is_zero()).collect())
    }
}

impl Inner {
    /// [`Inner::tenant_totals`] on standalone Redis: every tenant's history hashes (per tag
    /// and period) in pipelines of [`PIPELINE`] reads.
    async fn tenant_totals_pipelined(&self, scope: Scope, tenants: Vec<String>, periods: &[String]) -> Result<HashMap<String, Totals>, StoreError> {
        let names: Vec<(Scope, &str)> = tenants.iter().map(|t| (scope, t.as_str())).collect();
        let tags = self.tags_of_many(&names).await?;
        let mut cells: Vec<(usize, String)> = Vec::new();
        for (i, (tenant, tenant_tags)) in tenants.iter().zip(&tags).enumerate() {
            for tag in tenant_tags {
                cells.extend(periods.iter().map(|p| (i, self.keys.history(tag, scope, tenant, p))));
            }
        }
        let reads: Vec<_> = cells
            .chunks(PIPELINE)
            .map(|chunk| async move {
                let mut pipe = redis::pipe();
                for (_, key) in chunk {
                    pipe.cmd("HGETALL").arg(key);
                }
                let mut c = self.conn.clone();
                self.bounded(pipe.query_async::<Vec<Vec<(String, i64)>>>(&mut c)).await
            })
            .collect();
        let hashes: Vec<Vec<Vec<(String, i64)>>> = futures_util::future::try_join_all(reads).await?;
        let mut sums = vec![Totals::default(); tenants.len()];
        // The breakdowns are not needed here; add_field fills them anyway.
        let mut scratch = History::default();
        for ((i, _), fields) in cells.iter().zip(hashes.into_iter().flatten()) {
            for (field, v) in fields {
                add_field(&mut sums[*i], &mut scratch, &field, v);
            }
        }
        Ok(tenants.into_iter().zip(sums).filter(|(_, t)| !t.is_zero()).collect())
    }
}

/// Adds one history field to the totals and breakdowns: `<metric>|<provider>|<model>`, or
/// `<metric>|#tag|<tag>` for the per-tag breakdown (not part of the totals: a call with
/// several tags counts under each; provider names cannot contain `#`).
fn add_field(day: &mut Totals, out: &mut History, field: &str, v: i64) {
    let mut parts = field.splitn(3, '|');
    if let (Some(metric), Some(provider), Some(model)) = (parts.next(), parts.next(), parts.next()) {
        if provider == "#tag" {
            add_metric(out.by_tag.entry(model.to_string()).or_default(), metric, v);
            return;
        }
        add_metric(day, metric, v);
        add_metric(out.by_provider.entry(provider.to_string()).or_default(), metric, v);
        add_metric(out.by_model.entry(model.to_string()).or_default(), metric, v);
    }
}

/// A profile's tags: those of the orgs it was seen under (`homes`), and its own.
fn profile_tags(own: Tag, homes: &[String]) -> Vec<Tag> {
    let mut tags: Vec<Tag> = homes.iter().filter_map(|h| Tag::parse(h)).collect();
    if !tags.contains(&own) {
        tags.push(own);
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_give_totals_and_breakdowns() {
        let mut day = Totals::default();
        let mut h = History::default();
        add_field(&mut day, &mut h, "cost|gemini|models/gemini:2.5|x", 5);
        add_field(&mut day, &mut h, "cost|vertex|imagen", 2);
        add_field(&mut day, &mut h, "in|gemini|models/gemini:2.5|x", 7);
        add_field(&mut day, &mut h, "cost|#tag|tool=a", 5);
        add_field(&mut day, &mut h, "junk", 1);
        assert_eq!(day.cost_nanos, 7, "tag fields are not in the totals");
        assert_eq!(day.input_tokens, 7);
        assert_eq!(h.by_provider["gemini"].cost_nanos, 5);
        assert_eq!(h.by_model["models/gemini:2.5|x"].input_tokens, 7);
        assert_eq!(h.by_model["imagen"].cost_nanos, 2);
        assert_eq!(h.by_tag["tool=a"].cost_nanos, 5);
        assert!(!h.by_provider.contains_key("#tag"));
    }
}
