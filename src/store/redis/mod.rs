//! The Redis store: counters shared by every replica, standalone or Redis Cluster.
//!
//! - One round trip per request for the check-and-reserve (`reserve.lua`) and one for the
//!   settlement (`apply.lua`), each covering every counter of the profile and of the org in
//!   one hash slot (`keys`).
//! - Every call is bounded by `store.timeout`. A call that fails or times out falls back to
//!   `store.on_error`: `closed` refuses (the proxy answers 503); `open` decides locally with
//!   the fence (`fence`: last values read plus what was counted since) and counts in the
//!   journal (`journal`), which a background task replays into Redis, exactly once, as soon
//!   as Redis answers again. A call given up on is still awaited in the background: if it
//!   turns out to have been applied, its journal entry is withdrawn.
//! - After three failures in a row the store stops calling Redis (no request waits for a
//!   timeout during an outage) until a background ping succeeds.
//!
//! `docs/redis.md` documents the keys, the scripts and the outage behaviour.

pub mod conn;
pub mod fence;
mod history;
pub mod journal;
pub mod keys;
pub mod scripts;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use prometheus::{HistogramVec, IntCounterVec};
use redis::{RedisError, RedisResult, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::conn::Conn;
use self::fence::{Cell, Fence, FenceOp};
use self::history::Registered;
use self::journal::{Entry, Journal};
use self::keys::{Keys, Tag};
use self::scripts::{ApplyParams, ReserveOp, Scripts};
use super::{CounterKey, History, ReserveOutcome, ReserveRequest, Settlement, Store, StoreError};
use crate::config::{OnError, StoreConfig};
use crate::quota::limit::Scope;
use crate::window::Window;

/// Consecutive failed calls after which the store stops calling Redis until a ping succeeds.
const TRIP_AFTER: u32 = 3;
/// How often the background task pings Redis while it is unreachable or entries wait.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How often the background task wakes when there is nothing to do.
const IDLE_INTERVAL: Duration = Duration::from_secs(5);
/// Journal entries replayed concurrently.
const REPLAY_BATCH: usize = 64;
/// A journal entry that Redis refuses this many times (not a connection problem) is dropped
/// and logged in full, so one bad entry cannot block the journal forever.
const MAX_REPLAY_FAILURES: u32 = 10;
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

/// Stops calling Redis after repeated failures.
#[derive(Default)]
struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
}

impl Breaker {
    fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again");
        }
    }

    fn trip(&self) {
        self.failures.store(TRIP_AFTER, Ordering::Relaxed);
        self.open.store(true, Ordering::Relaxed);
    }

    fn failure(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= TRIP_AFTER && !self.open.swap(true, Ordering::Relaxed) {
            tracing::warn!("Redis is unreachable; requests are decided by on_error until it answers");
        }
    }
}

/// A call run on its own task, so that it can be given up on without being dropped.
enum Guarded<T> {
    Done(RedisResult<T>),
    TimedOut(JoinHandle<RedisResult<T>>),
}

async fn guarded<T: Send + 'static>(timeout: Duration, fut: impl Future<Output = RedisResult<T>> + Send + 'static) -> Guarded<T> {
    let mut handle = tokio::spawn(fut);
    match tokio::time::timeout(timeout, &mut handle).await {
        Ok(Ok(r)) => Guarded::Done(r),
        Ok(Err(join)) => Guarded::Done(Err(RedisError::from((redis::ErrorKind::Client, "the store call panicked", join.to_string())))),
        Err(_) => Guarded::TimedOut(handle),
    }
}

/// A connection problem (retry later) rather than Redis refusing what was sent.
fn is_connection_problem(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
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
}

/// The Redis backend of [`Store`].
pub struct RedisStore {
    inner: Arc<Inner>,
    background: JoinHandle<()>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.background.abort();
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
        });
        let background = tokio::spawn(background(inner.clone()));
        Ok(RedisStore { inner, background })
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

/// The background task: load the scripts, probe Redis while it is unreachable, replay the
/// journal, keep the fence small.
async fn background(inner: Arc<Inner>) {
    let mut last_prune = Instant::now();
    if let Err(e) = inner.ping().await {
        inner.breaker.trip();
        tracing::warn!(error = %e, on_error = ?inner.on_error, "Redis is not reachable at start; requests are decided by on_error until it answers");
    }
    loop {
        let busy = inner.breaker.is_open() || !inner.journal.lock().is_empty() || !inner.scripts_loaded.load(Ordering::Relaxed);
        if busy && inner.ping_quietly().await {
            inner.breaker.success();
            if !inner.scripts_loaded.load(Ordering::Relaxed) {
                inner.load_scripts().await;
            }
            let _ = inner.replay().await;
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            inner.fence.lock().prune(Utc::now().timestamp());
            last_prune = Instant::now();
        }
        let busy = inner.breaker.is_open() || !inner.journal.lock().is_empty() || !inner.scripts_loaded.load(Ordering::Relaxed);
        let wait = if busy { PROBE_INTERVAL } else { IDLE_INTERVAL };
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

impl Inner {
    fn next_id(&self, kind: &str) -> String {
        format!("{kind}-{}-{:x}", self.boot, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// A call failed: count it towards the breaker; once it trips, wake the background task
    /// so that it starts probing for Redis's return at once.
    fn failed(&self) {
        self.breaker.failure();
        if self.breaker.is_open() {
            self.wake.notify_one();
        }
    }

    fn cell(&self, tag: &Tag, key: &CounterKey) -> Cell {
        (self.keys.counter(tag, key), key.field.clone())
    }

    /// Runs a read-side call under `read_timeout`, timed and counted as `op`.
    async fn timed<T>(&self, op: &str, fut: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.read_timeout, fut).await;
        self.metrics.observe(op, started);
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.metrics.error(op);
                Err(StoreError::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.metrics.error(op);
                Err(StoreError::Timeout(self.read_timeout))
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let pong: String = self.timed("ping", redis::cmd("PING").query_async(&mut c)).await?;
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
        match self.timed("scripts", self.scripts.load(&mut c)).await {
            Ok(()) => {
                self.scripts_loaded.store(true, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot load the Lua scripts yet (they are loaded on first use)"),
        }
    }

    fn expiry(req_daily: DateTime<Utc>, req_monthly: DateTime<Utc>, w: Window) -> DateTime<Utc> {
        match w {
            Window::Daily => req_daily,
            Window::Monthly => req_monthly,
        }
    }

    /// Records what Redis answered in the fence (values without this replica's pending).
    fn observe(&self, req: &ReserveRequest, cells: &[Cell], outcome: &ReserveOutcome) {
        let mut fence = self.fence.lock();
        match outcome {
            ReserveOutcome::Admitted { before } => {
                for ((op, cell), b) in req.ops.iter().zip(cells).zip(before) {
                    if op.max.is_some() {
                        let exp = Self::expiry(req.expire_daily, req.expire_monthly, op.key.window).timestamp();
                        fence.observe(cell, b.saturating_add(op.amount), exp);
                    }
                }
            }
            ReserveOutcome::Refused { index, current } => {
                if let (Some(op), Some(cell)) = (req.ops.get(*index), cells.get(*index)) {
                    let exp = Self::expiry(req.expire_daily, req.expire_monthly, op.key.window).timestamp();
                    fence.observe(cell, *current, exp);
                }
            }
        }
    }

    /// Counts an entry's amounts in the fence as not yet in Redis.
    fn count_pending(&self, tag: &Tag, entry: &Entry) {
        let mut fence = self.fence.lock();
        for (key, delta) in &entry.counters {
            fence.count(&self.cell(tag, key), *delta);
        }
    }

    /// An entry reached Redis (replayed, or its original call answered after all).
    fn entry_applied(&self, entry: &Entry) {
        let Some(tag) = Tag::parse(&entry.tag) else { return };
        let mut fence = self.fence.lock();
        for (key, delta) in &entry.counters {
            fence.replayed(&self.cell(&tag, key), *delta);
        }
    }

    /// Adds an entry to the journal, counted in the fence. With `in_flight`, the original
    /// call is still running: the entry is withdrawn if it succeeds, replayed if it fails.
    fn journal_push(self: &Arc<Self>, entry: Entry, in_flight: Option<JoinHandle<RedisResult<()>>>) -> Result<(), StoreError> {
        let Some(tag) = Tag::parse(&entry.tag) else {
            return Err(StoreError::Other(format!("invalid tag {}", entry.tag)));
        };
        {
            let mut journal = self.journal.lock();
            match journal.push(entry.clone(), in_flight.is_some()) {
                Err(journal::Full) => {
                    return Err(StoreError::Saturated(format!(
                        "Redis is unreachable and the outage journal is full ({} entries)",
                        journal.len()
                    )))
                }
                Ok(Err(e)) => tracing::error!(error = %e, "cannot write the journal file; the entry is kept in memory only"),
                Ok(Ok(())) => {}
            }
            self.count_pending(&tag, &entry);
        }
        if let Some(handle) = in_flight {
            let inner = self.clone();
            tokio::spawn(async move {
                let applied = matches!(handle.await, Ok(Ok(())));
                if applied {
                    inner.breaker.success();
                    let done = inner.journal.lock().complete(&entry.id);
                    if let Some((e, written)) = done {
                        if let Err(err) = written {
                            tracing::error!(error = %err, "cannot write the journal file");
                        }
                        inner.entry_applied(&e);
                    }
                } else {
                    inner.journal.lock().release(&entry.id);
                    inner.wake.notify_one();
                }
            });
        } else {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// A reservation call given up on, whose request was then not admitted on its strength
    /// (refused locally, or 503): if Redis did apply it after all, take it back.
    fn compensate_if_applied(self: &Arc<Self>, handle: JoinHandle<RedisResult<Option<ReserveOutcome>>>, tag: Tag, req: ReserveRequest) {
        let inner = self.clone();
        tokio::spawn(async move {
            if let Ok(Ok(Some(ReserveOutcome::Admitted { .. }))) = handle.await {
                inner.breaker.success();
                let entry = Entry {
                    id: inner.next_id("c"),
                    tag: tag.as_str().to_string(),
                    created: Utc::now().timestamp(),
                    counters: req.ops.iter().filter(|op| op.amount != 0).map(|op| (op.key.clone(), -op.amount)).collect(),
                    expire_daily: req.expire_daily.timestamp(),
                    expire_monthly: req.expire_monthly.timestamp(),
                    record: None,
                };
                if let Err(e) = inner.journal_push(entry, None) {
                    tracing::error!(error = %e, "a reservation applied after its timeout cannot be taken back");
                }
            }
        });
    }

    /// `reserve` when Redis did not answer: 503 in closed mode, the fence in open mode.
    fn reserve_fallback(
        self: &Arc<Self>,
        req: &ReserveRequest,
        tag: Tag,
        cells: &[Cell],
        (id, created): (String, i64),
        call: Option<JoinHandle<RedisResult<Option<ReserveOutcome>>>>,
        why: StoreError,
    ) -> Result<ReserveOutcome, StoreError> {
        if self.on_error == OnError::Closed {
            if let Some(h) = call {
                self.compensate_if_applied(h, tag, req.clone());
            }
            return Err(why);
        }
        self.metrics.error("reserve");
        let entry = Entry {
            id,
            tag: tag.as_str().to_string(),
            created,
            counters: req.ops.iter().filter(|op| op.amount != 0).map(|op| (op.key.clone(), op.amount)).collect(),
            expire_daily: req.expire_daily.timestamp(),
            expire_monthly: req.expire_monthly.timestamp(),
            record: None,
        };
        let outcome = {
            let mut journal = self.journal.lock();
            if !journal.has_room_for_reservation() {
                drop(journal);
                if let Some(h) = call {
                    self.compensate_if_applied(h, tag, req.clone());
                }
                return Err(StoreError::Saturated(format!(
                    "Redis is unreachable ({why}) and the outage journal is full; nothing more can be counted"
                )));
            }
            let mut fence = self.fence.lock();
            let ops: Vec<FenceOp<'_>> = req
                .ops
                .iter()
                .zip(cells)
                .map(|(op, cell)| FenceOp {
                    cell,
                    amount: op.amount,
                    max: op.max,
                    expires: Self::expiry(req.expire_daily, req.expire_monthly, op.key.window).timestamp(),
                })
                .collect();
            // Admitted: the fence has counted the amounts as pending, and the journal entry
            // carries exactly those amounts to Redis.
            let outcome = fence.reserve(&ops);
            drop(fence);
            if matches!(outcome, ReserveOutcome::Admitted { .. }) {
                match journal.push(entry.clone(), call.is_some()) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot write the journal file; the entry is kept in memory only"),
                    Err(journal::Full) => unreachable!("checked under the same lock"),
                }
            }
            outcome
        };
        match (&outcome, call) {
            (ReserveOutcome::Admitted { .. }, Some(h)) => {
                let inner = self.clone();
                tokio::spawn(async move {
                    match h.await {
                        // Admitted, or already applied by the replay of this very entry.
                        Ok(Ok(Some(ReserveOutcome::Admitted { .. }) | None)) => {
                            inner.breaker.success();
                            let done = inner.journal.lock().complete(&entry.id);
                            if let Some((e, _)) = done {
                                inner.entry_applied(&e);
                            }
                        }
                        // Redis refused or failed: the request went ahead on the fence's word, so
                        // its reservation must reach Redis through the journal.
                        _ => {
                            inner.journal.lock().release(&entry.id);
                            inner.wake.notify_one();
                        }
                    }
                });
            }
            (ReserveOutcome::Admitted { .. }, None) => self.wake.notify_one(),
            (ReserveOutcome::Refused { .. }, Some(h)) => self.compensate_if_applied(h, tag, req.clone()),
            (ReserveOutcome::Refused { .. }, None) => {}
        }
        Ok(outcome)
    }

    /// Replays every replayable journal entry, in order, in batches.
    async fn replay(self: &Arc<Self>) -> Result<usize, StoreError> {
        let _one_at_a_time = self.replaying.lock().await;
        let mut applied = 0;
        loop {
            let batch = self.journal.lock().replayable(REPLAY_BATCH);
            if batch.is_empty() {
                return Ok(applied);
            }
            let results = futures_util::future::join_all(batch.iter().map(|e| self.replay_one(e))).await;
            let mut progress = false;
            let mut unreachable = None;
            for (entry, result) in batch.iter().zip(results) {
                match result {
                    Ok(()) => {
                        progress = true;
                        applied += 1;
                        let done = self.journal.lock().complete(&entry.id);
                        if let Some((e, written)) = done {
                            if let Err(err) = written {
                                tracing::error!(error = %err, "cannot write the journal file");
                            }
                            self.entry_applied(&e);
                        }
                    }
                    Err(e) if is_connection_problem(&e) => unreachable = Some(e),
                    Err(e) => {
                        let failures = self.journal.lock().failed(&entry.id);
                        tracing::warn!(id = %entry.id, error = %e, failures, "Redis refused a journal entry");
                        if failures >= MAX_REPLAY_FAILURES {
                            let dropped = self.journal.lock().complete(&entry.id);
                            if let Some((e, _)) = dropped {
                                if let Some(tag) = Tag::parse(&e.tag) {
                                    let mut fence = self.fence.lock();
                                    for (key, delta) in &e.counters {
                                        fence.forget(&self.cell(&tag, key), *delta);
                                    }
                                }
                                tracing::error!(entry = %serde_json::to_string(&e).unwrap_or_default(), "dropping a journal entry Redis keeps refusing; apply it by hand");
                            }
                        }
                    }
                }
            }
            if let Some(e) = unreachable {
                self.failed();
                return Err(StoreError::Unavailable(e.to_string()));
            }
            if !progress {
                return Ok(applied);
            }
            self.breaker.success();
        }
    }

    async fn replay_one(self: &Arc<Self>, entry: &Entry) -> RedisResult<()> {
        let Some(tag) = Tag::parse(&entry.tag) else {
            return Err(RedisError::from((redis::ErrorKind::Client, "invalid tag in a journal entry")));
        };
        if let Some((p, o)) = entry_tenants(entry) {
            self.ensure_registered(&tag, &p, o.as_deref()).await;
        }
        let inv = scripts::apply(&self.keys, &tag, entry, true, &self.apply);
        let mut c = self.conn.clone();
        let started = Instant::now();
        let result = tokio::time::timeout(self.read_timeout, inv.run::<i64>(&self.scripts.apply, &mut c)).await;
        self.metrics.observe("replay", started);
        let result = result.unwrap_or_else(|_| Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "replay timed out"))));
        if result.is_err() {
            self.metrics.error("replay");
        }
        // 0: already applied by an earlier, interrupted replay; either way it is in Redis now.
        result.map(|_| ())
    }
}

/// The profile and org an entry counts for.
fn entry_tenants(entry: &Entry) -> Option<(String, Option<String>)> {
    match &entry.record {
        Some(rec) => Some((rec.profile.clone(), rec.org.clone())),
        None => tenants_of(entry.counters.iter().map(|(k, _)| k)),
    }
}

/// The profile and org of a request, from its counters.
fn tenants_of<'a>(keys: impl Iterator<Item = &'a CounterKey>) -> Option<(String, Option<String>)> {
    let mut profile = None;
    let mut org = None;
    for k in keys {
        match k.scope {
            Scope::Profile if profile.is_none() => profile = Some(k.tenant.clone()),
            Scope::Org if org.is_none() => org = Some(k.tenant.clone()),
            _ => {}
        }
    }
    profile.map(|p| (p, org))
}

#[async_trait]
impl Store for RedisStore {
    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        let inner = &self.inner;
        let Some(tag) = Tag::of_counters(req.ops.iter().map(|op| &op.key)) else {
            return Ok(ReserveOutcome::Admitted { before: Vec::new() });
        };
        let cells: Vec<Cell> = req.ops.iter().map(|op| inner.cell(&tag, &op.key)).collect();
        let call_id = (inner.next_id("r"), Utc::now().timestamp());
        if inner.breaker.is_open() {
            return inner.reserve_fallback(req, tag, &cells, call_id, None, StoreError::Unavailable("Redis is unreachable".into()));
        }
        let pending: Vec<i64> = {
            let fence = inner.fence.lock();
            cells.iter().map(|c| fence.pending(c)).collect()
        };
        let ops: Vec<ReserveOp<'_>> = req
            .ops
            .iter()
            .zip(&cells)
            .zip(&pending)
            .map(|((op, cell), p)| ReserveOp {
                key: &cell.0,
                field: &cell.1,
                amount: op.amount,
                max: op.max.map(|m| m.saturating_sub(*p)),
                expire: Inner::expiry(req.expire_daily, req.expire_monthly, op.key.window),
            })
            .collect();
        if let Some((p, o)) = tenants_of(req.ops.iter().map(|op| &op.key)) {
            inner.ensure_registered(&tag, &p, o.as_deref()).await;
        }
        let inv = scripts::reserve(scripts::calls_key(&inner.keys, &tag, call_id.1), &call_id.0, &ops);
        let call = {
            let inner = inner.clone();
            async move {
                let mut c = inner.conn.clone();
                let v: Value = inv.run(&inner.scripts.reserve, &mut c).await?;
                scripts::reserve_reply(v)
            }
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

    async fn settle(&self, s: &Settlement) -> Result<(), StoreError> {
        let inner = &self.inner;
        let tag = Tag::for_request(&s.record.profile, s.record.org.as_deref());
        let entry = Entry {
            id: s.id.clone(),
            tag: tag.as_str().to_string(),
            created: Utc::now().timestamp(),
            counters: s.deltas.clone(),
            expire_daily: s.expire_daily.timestamp(),
            expire_monthly: s.expire_monthly.timestamp(),
            record: Some(s.record.clone()),
        };
        let journal = |in_flight| {
            let r = inner.journal_push(entry.clone(), in_flight);
            if r.is_ok() {
                inner.metrics.error("settle");
            }
            r
        };
        if inner.breaker.is_open() {
            return journal(None);
        }
        inner.ensure_registered(&tag, &s.record.profile, s.record.org.as_deref()).await;
        let inv = scripts::apply(&inner.keys, &tag, &entry, false, &inner.apply);
        let call = {
            let inner = inner.clone();
            async move {
                let mut c = inner.conn.clone();
                inv.run::<i64>(&inner.scripts.apply, &mut c).await.map(|_| ())
            }
        };
        match guarded(inner.timeout, call).await {
            Guarded::Done(Ok(())) => {
                inner.breaker.success();
                {
                    let mut fence = inner.fence.lock();
                    for (key, delta) in &s.deltas {
                        fence.applied(&inner.cell(&tag, key), *delta);
                    }
                }
                Ok(())
            }
            Guarded::Done(Err(e)) => {
                inner.failed();
                tracing::debug!(error = %e, "settle failed; journaled");
                journal(None)
            }
            Guarded::TimedOut(h) => {
                inner.failed();
                journal(Some(h))
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

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    /// Syncs the journal file, and replays what waits if Redis answers (bounded, so that a
    /// shutdown during an outage does not hang; with a journal file nothing is lost).
    async fn flush(&self) -> Result<(), StoreError> {
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
