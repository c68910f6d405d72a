//! The Redis store: counters shared by every replica, standalone or Redis Cluster.
//!
//! - One round trip per request for the check-and-reserve (`reserve.lua`), covering every
//!   counter of the profile and of the org in one hash slot (`keys`); the reservations of
//!   requests arriving together share one script call (`reservations`), and calls are
//!   pipelined on the connection. Settlements go out in batches (`batch`, `settle_sums.lua`
//!   or `settle.lua`), off the request's path: one round trip and one script call for all
//!   the settlements that arrived while the previous batch was in flight (per slot on a
//!   cluster).
//! - Every call is bounded by `store.timeout`. A call that fails or times out falls back to
//!   `store.on_error`: `closed` refuses (the proxy answers 503); `open` decides locally with
//!   the fence (`fence`: last values read plus what was counted since) and counts in the
//!   journal (`journal`), which a background task replays into Redis, exactly once, as soon
//!   as Redis answers again. A call given up on is still awaited in the background: if it
//!   turns out to have been applied, its journal entry is withdrawn.
//! - After three failures in a row the store stops calling Redis (no request waits for a
//!   timeout during an outage) until a background ping succeeds.
//!
//! Files: `keys` (the key schema), `scripts` with `reserve.lua`, `settle_sums.lua` and
//! `settle.lua`, `reservations` (reservations sent together), `expiries`, `batch`
//! (the batches of settlements and of journal replays), `conn`
//! (standalone and cluster connections), `outage` (breaker, fallback, journal bookkeeping,
//! replay), `fence`, `journal`, `history` (the read side and the registries); this file holds
//! the store itself. `docs/redis.md` documents the keys, the scripts and the outage behaviour.

mod batch;
pub mod conn;
pub mod control;
mod expiries;
pub mod fence;
mod history;
pub mod journal;
pub mod keys;
mod outage;
mod reservations;
pub mod scripts;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use parking_lot::Mutex;
use prometheus::{HistogramVec, IntCounterVec};
use redis::{RedisError, RedisResult};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::batch::Batches;
use self::conn::Conn;
use self::expiries::Expiries;
use self::fence::{Cell, Fence};
use self::history::Registered;
use self::journal::{Entry, Journal};
use self::keys::{Keys, Tag};
use self::outage::{background, guarded, Breaker, Guarded};
use self::reservations::Reservations;
use self::scripts::{ApplyParams, ReserveCall, ReserveOp, Scripts};
use crate::config::{OnError, StoreConfig};
use crate::domain::Scope;
use crate::quota::ledger::{CounterKey, CounterOp, History, ReserveOutcome, ReserveRequest, Settlement, Store, StoreError};

/// How long the set of applied journal ids is kept after its last addition: a replay that is
/// interrupted and retried within this time is not counted twice.
const DEDUPE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest a flush (periodic and at shutdown) spends replaying the journal.
const FLUSH_REPLAY_BUDGET: Duration = Duration::from_secs(5);
/// Most counters whose last read value the fence remembers.
const FENCE_MAX_CELLS: usize = 500_000;

/// The two store metrics, shared with the process's registry.
#[derive(Clone)]
pub struct StoreMetrics {
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
}

impl StoreMetrics {
    fn error(&self, op: &str) {
        self.errors.with_label_values(&[op]).inc();
    }

    fn observe(&self, op: &str, started: Instant) {
        self.duration.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    }
}

struct Inner {
    conn: Conn,
    keys: Keys,
    scripts: Scripts,
    on_error: OnError,
    timeout: Duration,
    read_timeout: Duration,
    apply: ApplyParams,
    fence: Mutex<Fence>,
    journal: Mutex<Journal>,
    breaker: Breaker,
    metrics: StoreMetrics,
    registered: Mutex<Registered>,
    scripts_loaded: AtomicBool,
    replaying: tokio::sync::Mutex<()>,
    wake: Notify,
    boot: String,
    seq: AtomicU64,
    batches: Batches,
    reservations: Reservations,
    expiries: Mutex<Expiries>,
}

/// The Redis backend of [`Store`].
pub struct RedisStore {
    inner: Arc<Inner>,
    background: JoinHandle<()>,
    /// Sends the batches of settlements.
    sender: JoinHandle<()>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.background.abort();
        self.sender.abort();
    }
}

impl RedisStore {
    /// Opens the store (without waiting for Redis), reads the journal file if any, and
    /// starts the background task that loads the scripts and replays the journal.
    pub fn open(cfg: &StoreConfig, metrics: StoreMetrics) -> Result<RedisStore, StoreError> {
        let conn = conn::open(&cfg.url, cfg.cluster, cfg.tls_ca_file.as_deref())?;
        let journal = Journal::open(cfg.journal.as_deref(), cfg.journal_max_entries).map_err(|e| {
            let path = cfg.journal.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
            StoreError::Other(format!("cannot open the journal {path}: {e}"))
        })?;
        let keys = Keys::new(&cfg.key_prefix);
        let mut fence = Fence::new(FENCE_MAX_CELLS);
        for e in journal.entries() {
            if let Some(tag) = Tag::parse(&e.tag) {
                for (key, delta) in &e.counters {
                    fence.count(&(keys.counter(&tag, key), key.field.clone()), *delta);
                }
            }
        }
        if !journal.is_empty() {
            tracing::info!(
                entries = journal.len(),
                "the journal holds entries from an earlier run; they will be replayed into Redis"
            );
        }
        let inner = Arc::new(Inner {
            conn,
            keys,
            scripts: Scripts::default(),
            on_error: cfg.on_error,
            timeout: cfg.timeout.0,
            read_timeout: cfg.read_timeout.0,
            apply: ApplyParams {
                recent_max: cfg.recent_max,
                daily_days: cfg.retention.daily_days,
                monthly_months: cfg.retention.monthly_months,
                dedupe_ttl: DEDUPE_TTL.as_secs() as i64,
                max_tags: cfg.max_tags,
            },
            fence: Mutex::new(fence),
            journal: Mutex::new(journal),
            breaker: Breaker::default(),
            metrics,
            registered: Mutex::new(Registered::default()),
            scripts_loaded: AtomicBool::new(false),
            replaying: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            boot: format!("{:x}-{:x}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0)),
            seq: AtomicU64::new(0),
            batches: Batches::default(),
            reservations: Reservations::default(),
            expiries: Mutex::new(Expiries::default()),
        });
        let background = tokio::spawn(background(inner.clone()));
        let sender = tokio::spawn(batch::sender(inner.clone()));
        Ok(RedisStore { inner, background, sender })
    }

    /// Entries counted locally and not yet in Redis.
    pub fn journal_len(&self) -> usize {
        self.inner.journal.lock().len()
    }

    /// Replays the journal now (the background task does this by itself); returns the
    /// number of entries applied.
    pub async fn replay(&self) -> Result<usize, StoreError> {
        self.inner.replay().await
    }
}

impl Inner {
    fn next_id(&self, kind: &str) -> String {
        format!("{kind}-{}-{:x}", self.boot, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    fn cell(&self, tag: &Tag, key: &CounterKey) -> Cell {
        (self.keys.counter(tag, key), key.field.clone())
    }

    /// Runs a read-side call under `read_timeout`. Calls made for a caller of the store are
    /// timed and counted by the store wrapper (`crate::store::timed`), not here.
    async fn bounded<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.read_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout(self.read_timeout)),
        }
    }

    /// [`Inner::bounded`] for the store's own background work, which no caller times: timed
    /// and counted as `op`.
    async fn own_work<T>(&self, op: &str, fut: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = self.bounded(fut).await;
        self.metrics.observe(op, started);
        if result.is_err() {
            self.metrics.error(op);
        }
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let pong: String = self.bounded(redis::cmd("PING").query_async(&mut c)).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Other(format!("unexpected answer to PING: {pong}")))
        }
    }

    async fn ping_quietly(&self) -> bool {
        self.ping().await.is_ok()
    }

    async fn load_scripts(&self) {
        let mut c = self.conn.clone();
        match self.own_work("scripts", self.scripts.load(&mut c)).await {
            Ok(()) => {
                self.scripts_loaded.store(true, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot load the Lua scripts yet (they are loaded on first use)"),
        }
    }

    /// Records what Redis answered in the fence (values without this replica's pending).
    fn observe(&self, req: &ReserveRequest, cells: &[Cell], outcome: &ReserveOutcome) {
        let mut fence = self.fence.lock();
        match outcome {
            ReserveOutcome::Admitted { before } => {
                for ((op, cell), b) in req.ops.iter().zip(cells).zip(before) {
                    if op.max.is_some() {
                        let exp = req.expires.of(op.key.window).timestamp();
                        fence.observe(cell, b.saturating_add(op.amount), exp);
                    }
                }
            }
            ReserveOutcome::Refused { index, current } => {
                if let (Some(op), Some(cell)) = (req.ops.get(*index), cells.get(*index)) {
                    let exp = req.expires.of(op.key.window).timestamp();
                    fence.observe(cell, *current, exp);
                }
            }
        }
    }
}

/// The profile and org of a request, from its counters.
fn tenants_of<'a>(keys: impl Iterator<Item = &'a CounterKey>) -> Option<(String, Option<String>)> {
    let mut profile = None;
    let mut org = None;
    for k in keys {
        match k.scope {
            Scope::Profile if profile.is_none() => profile = Some(k.tenant.to_string()),
            Scope::Org if org.is_none() => org = Some(k.tenant.to_string()),
            _ => {}
        }
    }
    profile.map(|p| (p, org))
}

impl RedisStore {
    /// Reserves the ops that need Redis: those a limit reads, and any with an amount. The
    /// others (counters no limit reads, deferred to the settlement) would only be read and
    /// returned, and are left out.
    async fn reserve_watched(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        let needed = |op: &CounterOp| op.watched || op.amount != 0;
        if req.ops.iter().all(needed) {
            return self.reserve_ops(req, &req.ops).await;
        }
        let mut kept: Vec<usize> = (0..req.ops.len()).filter(|&i| needed(&req.ops[i])).collect();
        if kept.is_empty() {
            // No limit reads any of them: one stays, so that the call still claims its id and
            // the store's availability decides as for any other call (`on_error`).
            kept.push(0);
        }
        let sub = ReserveRequest {
            ops: kept.iter().map(|&i| req.ops[i].clone()).collect(),
            ..req.clone()
        };
        Ok(match self.reserve_ops(&sub, &req.ops).await? {
            ReserveOutcome::Admitted { before } => {
                // Unwatched counters' values are not wanted: zero stands in for them.
                let mut all = vec![0; req.ops.len()];
                for (&i, b) in kept.iter().zip(before) {
                    all[i] = b;
                }
                ReserveOutcome::Admitted { before: all }
            }
            ReserveOutcome::Refused { index, current } => ReserveOutcome::Refused {
                index: kept.get(index).copied().unwrap_or(index),
                current,
            },
        })
    }

    /// Reserves `req`, part of a request whose ops are `whole`: those place the keys (the tag
    /// of the request's profile and org) and name the tenants to register.
    async fn reserve_ops(&self, req: &ReserveRequest, whole: &[CounterOp]) -> Result<ReserveOutcome, StoreError> {
        let inner = &self.inner;
        let Some(tag) = Tag::of_counters(whole.iter().map(|op| &op.key)) else {
            return Ok(ReserveOutcome::Admitted { before: Vec::new() });
        };
        // The ops of one window and tenant share their hash: its name is made once.
        let mut cells: Vec<Cell> = Vec::with_capacity(req.ops.len());
        for (i, op) in req.ops.iter().enumerate() {
            let key = match i.checked_sub(1).map(|j| &req.ops[j].key) {
                Some(prev) if prev.scope == op.key.scope && prev.window == op.key.window && prev.tenant == op.key.tenant && prev.bucket == op.key.bucket => {
                    cells[i - 1].0.clone()
                }
                _ => inner.keys.counter(&tag, &op.key),
            };
            cells.push((key, op.key.field.clone()));
        }
        let call_id = (inner.next_id("r"), Utc::now().timestamp());
        if inner.breaker.is_open() {
            return inner.reserve_fallback(req, tag, &cells, call_id, None, StoreError::Unavailable("Redis is unreachable".into()));
        }
        let pending: Vec<i64> = {
            let fence = inner.fence.lock();
            if fence.has_pending() {
                cells.iter().map(|c| fence.pending(c)).collect()
            } else {
                vec![0; cells.len()]
            }
        };
        let ops: Vec<ReserveOp> = req
            .ops
            .iter()
            .zip(&cells)
            .zip(&pending)
            .map(|((op, cell), p)| ReserveOp {
                key: cell.0.clone(),
                field: cell.1.clone(),
                amount: op.amount,
                max: op.max.map(|m| m.saturating_sub(*p)),
                expire: req.expires.of(op.key.window),
                window: op.key.window,
            })
            .collect();
        if let Some((p, o)) = tenants_of(whole.iter().map(|op| &op.key)) {
            if !inner.ensure_registered(&tag, &p, o.as_deref()).await {
                inner.failed();
                let why = StoreError::Unavailable("cannot write the profile's index".into());
                return inner.reserve_fallback(req, tag, &cells, call_id, None, why);
            }
        }
        let call = ReserveCall {
            calls_key: scripts::calls_key(&inner.keys, &tag, call_id.1),
            calls_expire: scripts::calls_expire_at(call_id.1),
            id: call_id.0.clone(),
            ops,
        };
        let call = {
            let inner = inner.clone();
            let slot = tag.slot();
            async move { inner.reserve_call(slot, call).await }
        };
        match guarded(inner.timeout, call).await {
            // The id is already recorded: an earlier attempt of this very call (a client retry
            // after a dropped connection) was admitted and applied. Only `before` is unknown;
            // this replica's view stands in for it.
            Guarded::Done(Ok(None)) => {
                inner.breaker.success();
                let fence = inner.fence.lock();
                Ok(ReserveOutcome::Admitted {
                    before: cells.iter().map(|c| fence.value(c)).collect(),
                })
            }
            Guarded::Done(Ok(Some(outcome))) => {
                inner.breaker.success();
                inner.observe(req, &cells, &outcome);
                // The caller sees this replica's view: Redis plus what it has not replayed yet.
                Ok(match outcome {
                    ReserveOutcome::Admitted { before } => ReserveOutcome::Admitted {
                        before: before.iter().zip(&pending).map(|(b, p)| b.saturating_add(*p)).collect(),
                    },
                    ReserveOutcome::Refused { index, current } => ReserveOutcome::Refused {
                        index,
                        current: current.saturating_add(pending.get(index).copied().unwrap_or(0)),
                    },
                })
            }
            Guarded::Done(Err(e)) => {
                inner.failed();
                tracing::debug!(error = %e, "reserve failed");
                inner.reserve_fallback(req, tag, &cells, call_id, None, StoreError::Unavailable(e.to_string()))
            }
            Guarded::TimedOut(h) => {
                inner.failed();
                inner.reserve_fallback(req, tag, &cells, call_id, Some(h), StoreError::Timeout(inner.timeout))
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        self.reserve_watched(req).await
    }

    /// Counters no limit reads are written by the settlement: a reservation then touches only
    /// the counters its limits read (two instead of eight for a tenant with one cost limit).
    fn reserves_unwatched(&self) -> bool {
        false
    }

    /// Joins the next batch of settlements and waits for it (see `batch`), at most
    /// `store.timeout` after the batch's linger; past it, or when the batch fails, the
    /// settlement is journaled.
    async fn settle(&self, s: &Settlement) -> Result<(), StoreError> {
        let inner = &self.inner;
        let tag = Tag::for_request(&s.record.profile, s.record.org.as_deref());
        let entry = Arc::new(Entry {
            record: Some(s.record.clone()),
            ..Entry::counting(s.id.clone(), tag.as_str().to_string(), Utc::now().timestamp(), s.deltas.clone(), &s.expires)
        });
        let journal = |entry: Arc<Entry>, in_flight| {
            let r = inner.journal_push(Arc::unwrap_or_clone(entry), in_flight);
            if r.is_ok() {
                inner.metrics.error("settle");
            }
            r
        };
        if inner.breaker.is_open() {
            return journal(entry, None);
        }
        if !inner.ensure_registered(&tag, &s.record.profile, s.record.org.as_deref()).await {
            inner.failed();
            return journal(entry, None);
        }
        let mut outcome = inner.batches.push(tag.clone(), entry.clone());
        // Under load a batch waits up to `LINGER` for others to join before it is sent.
        match tokio::time::timeout(inner.timeout + batch::LINGER, &mut outcome).await {
            Ok(Ok(Ok(()))) => {
                let mut fence = inner.fence.lock();
                for (key, delta) in &s.deltas {
                    fence.applied(&inner.cell(&tag, key), *delta);
                }
                Ok(())
            }
            // The batch failed (the sender has counted the failure) or the store is closing.
            Ok(failed) => {
                tracing::debug!(error = ?failed, "settle failed; journaled");
                journal(entry, None)
            }
            Err(_) => {
                inner.failed();
                // The batch is still in flight: its answer decides whether the entry is replayed.
                let in_flight = tokio::spawn(async move {
                    match outcome.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(RedisError::from((redis::ErrorKind::Client, "batch failed", e))),
                        Err(_) => Err(RedisError::from((redis::ErrorKind::Client, "the store closed"))),
                    }
                });
                journal(entry, Some(in_flight))
            }
        }
    }

    async fn read(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        self.inner.read(keys).await
    }

    async fn history(&self, scope: Scope, tenant: &str, days: &[String], recent: usize) -> Result<History, StoreError> {
        self.inner.history(scope, tenant, days, recent).await
    }

    async fn tenants(&self, scope: Scope) -> Result<Vec<String>, StoreError> {
        self.inner.tenants(scope).await
    }

    async fn tenant_totals(&self, scope: Scope, periods: &[String]) -> Result<std::collections::HashMap<String, crate::quota::ledger::Totals>, StoreError> {
        self.inner.tenant_totals(scope, periods).await
    }

    async fn bind_org(&self, profile: &str, org: Option<&str>) -> Result<Option<String>, StoreError> {
        let inner = &self.inner;
        if inner.breaker.is_open() {
            return Err(StoreError::Unavailable("Redis is unreachable".into()));
        }
        let key = inner.keys.org_of(profile);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(org.unwrap_or_default())
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key);
        let mut c = inner.conn.clone();
        let (bound,): (Option<String>,) = inner.bounded(pipe.query_async(&mut c)).await?;
        Ok(bound.filter(|o| !o.is_empty()))
    }

    async fn claim_alert(&self, key: &str, expires: chrono::DateTime<Utc>) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let key = inner.keys.alert(key);
        // Never in the past (a test clock, a clock set back): Redis would refuse the EXAT.
        let at = expires.timestamp().max(Utc::now().timestamp() + 60);
        let mut c = inner.conn.clone();
        let set: Option<String> = inner
            .bounded(redis::cmd("SET").arg(&key).arg(1).arg("NX").arg("EXAT").arg(at).query_async(&mut c))
            .await?;
        Ok(set.is_some())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    /// Syncs the journal file, and replays what waits if Redis answers (bounded, so that a
    /// shutdown during an outage does not hang; with a journal file nothing is lost).
    async fn flush(&self) -> Result<(), StoreError> {
        // Settlements that stopped waiting for their batch are journaled, held until the batch
        // answers (it may still be queued, or waiting for others to join): let those answers
        // come, so that what was not applied is replayed below rather than left behind.
        let deadline = Instant::now() + FLUSH_REPLAY_BUDGET;
        while self.inner.journal.lock().has_in_flight() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let synced = self.inner.journal.lock().sync();
        if !self.inner.journal.lock().is_empty() && !self.inner.breaker.is_open() {
            let _ = tokio::time::timeout(FLUSH_REPLAY_BUDGET, self.inner.replay()).await;
        }
        let left = self.inner.journal.lock().len();
        if left > 0 {
            tracing::warn!(entries = left, "journal entries are still waiting for Redis");
        }
        synced.map_err(|e| StoreError::Other(format!("cannot sync the journal: {e}")))
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
