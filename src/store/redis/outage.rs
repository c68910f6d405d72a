//! What the Redis store does when Redis does not answer in time: the breaker that stops
//! calling it, the fallback of a reservation (503, or the fence and the journal), the
//! journal's bookkeeping for calls given up on, and the background task that probes Redis
//! and replays the journal, exactly once (see `docs/redis.md`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::{RedisError, RedisResult};
use tokio::task::JoinHandle;

use super::fence::{Cell, FenceOp};
use super::journal::{self, Entry};
use super::keys::Tag;
use super::{tenants_of, Inner};
use crate::config::OnError;
use crate::quota::ledger::{ReserveOutcome, ReserveRequest, StoreError};

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

/// Stops calling Redis after repeated failures.
#[derive(Default)]
pub(super) struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
}

impl Breaker {
    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    pub(super) fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again");
        }
    }

    pub(super) fn trip(&self) {
        self.failures.store(TRIP_AFTER, Ordering::Relaxed);
        self.open.store(true, Ordering::Relaxed);
    }

    pub(super) fn failure(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= TRIP_AFTER && !self.open.swap(true, Ordering::Relaxed) {
            tracing::warn!("Redis is unreachable; requests are decided by on_error until it answers");
        }
    }
}

/// A call that can be given up on without being dropped.
pub(super) enum Guarded<T> {
    Done(RedisResult<T>),
    TimedOut(JoinHandle<RedisResult<T>>),
}

/// Runs a call on the caller's task for up to `timeout`; a call still running then goes on
/// as a task of its own, whose answer the caller may still use. (A task for every call
/// would cost a spawn and a wake-up of another thread per request.)
pub(super) async fn guarded<T: Send + 'static>(timeout: Duration, fut: impl Future<Output = RedisResult<T>> + Send + 'static) -> Guarded<T> {
    let mut fut = Box::pin(fut);
    match tokio::time::timeout(timeout, fut.as_mut()).await {
        Ok(r) => Guarded::Done(r),
        Err(_) => Guarded::TimedOut(tokio::spawn(fut)),
    }
}

/// A connection problem (retry later) rather than Redis refusing what was sent.
pub(super) fn is_connection_problem(e: &RedisError) -> bool {
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

/// The same failure for every call a batch carried (Redis errors are not `Clone`); a
/// connection problem stays one.
pub(super) fn copy_error(e: &RedisError) -> RedisError {
    if is_connection_problem(e) {
        RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e.to_string()))
    } else {
        RedisError::from((e.kind(), "batch failed", e.to_string()))
    }
}

/// The background task: load the scripts, probe Redis while it is unreachable, replay the
/// journal, keep the fence small.
pub(super) async fn background(inner: Arc<Inner>) {
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
    /// A call failed: count it towards the breaker; once it trips, wake the background task
    /// so that it starts probing for Redis's return at once.
    pub(super) fn failed(&self) {
        // Redis may come back empty (a restart, a failover to a replica without the latest
        // writes): the tenant registry and the profiles' homes are written again, by the
        // replay and by the next settlements, rather than assumed from before.
        self.registered.lock().forget();
        self.expiries.lock().forget();
        self.breaker.failure();
        if self.breaker.is_open() {
            self.wake.notify_one();
        }
    }

    /// Counts an entry's amounts in the fence as not yet in Redis.
    pub(super) fn count_pending(&self, tag: &Tag, entry: &Entry) {
        let mut fence = self.fence.lock();
        for (key, delta) in &entry.counters {
            fence.count(&self.cell(tag, key), *delta);
        }
    }

    /// An entry reached Redis (replayed, or its original call answered after all).
    pub(super) fn entry_applied(&self, entry: &Entry) {
        let Some(tag) = Tag::parse(&entry.tag) else { return };
        let mut fence = self.fence.lock();
        for (key, delta) in &entry.counters {
            fence.replayed(&self.cell(&tag, key), *delta);
        }
    }

    /// Adds an entry to the journal, counted in the fence. With `in_flight`, the original
    /// call is still running: the entry is withdrawn if it succeeds, replayed if it fails.
    pub(super) fn journal_push(self: &Arc<Self>, entry: Entry, in_flight: Option<JoinHandle<RedisResult<()>>>) -> Result<(), StoreError> {
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
    pub(super) fn compensate_if_applied(self: &Arc<Self>, handle: JoinHandle<RedisResult<Option<ReserveOutcome>>>, tag: Tag, req: ReserveRequest) {
        let inner = self.clone();
        tokio::spawn(async move {
            if let Ok(Ok(Some(ReserveOutcome::Admitted { .. }))) = handle.await {
                inner.breaker.success();
                let entry = Entry::counting(
                    inner.next_id("c"),
                    tag.as_str().to_string(),
                    Utc::now().timestamp(),
                    req.ops.iter().filter(|op| op.amount != 0).map(|op| (op.key.clone(), -op.amount)).collect(),
                    &req.expires,
                );
                if let Err(e) = inner.journal_push(entry, None) {
                    tracing::error!(error = %e, "a reservation applied after its timeout cannot be taken back");
                }
            }
        });
    }

    /// `reserve` when Redis did not answer: 503 in closed mode, the fence in open mode.
    pub(super) fn reserve_fallback(
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
        let entry = Entry::counting(
            id,
            tag.as_str().to_string(),
            created,
            req.ops.iter().filter(|op| op.amount != 0).map(|op| (op.key.clone(), op.amount)).collect(),
            &req.expires,
        );
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
            // The Redis call failed and the fence decides instead: a failure the store absorbs,
            // so no caller counts it.
            self.metrics.error("reserve");
            let mut fence = self.fence.lock();
            let ops: Vec<FenceOp<'_>> = req
                .ops
                .iter()
                .zip(cells)
                .map(|(op, cell)| FenceOp {
                    cell,
                    amount: op.amount,
                    max: op.max,
                    expires: req.expires.of(op.key.window).timestamp(),
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
    pub(super) async fn replay(self: &Arc<Self>) -> Result<usize, StoreError> {
        let _one_at_a_time = self.replaying.lock().await;
        let mut applied = 0;
        loop {
            let batch = self.journal.lock().replayable(REPLAY_BATCH);
            if batch.is_empty() {
                return Ok(applied);
            }
            let results = self.replay_batch(&batch).await;
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

    /// Replays entries in batches (`settle.lua`), each after its profile's index is written.
    async fn replay_batch(self: &Arc<Self>, batch: &[Entry]) -> Vec<RedisResult<()>> {
        let mut results: Vec<Option<RedisResult<()>>> = Vec::with_capacity(batch.len());
        let mut ready: Vec<(usize, Tag)> = Vec::with_capacity(batch.len());
        for (i, entry) in batch.iter().enumerate() {
            let Some(tag) = Tag::parse(&entry.tag) else {
                results.push(Some(Err(RedisError::from((redis::ErrorKind::Client, "invalid tag in a journal entry")))));
                continue;
            };
            if let Some((p, o)) = entry_tenants(entry) {
                if !self.ensure_registered(&tag, &p, o.as_deref()).await {
                    self.metrics.error("replay");
                    results.push(Some(Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "cannot write the profile's index",
                    )))));
                    continue;
                }
            }
            results.push(None);
            ready.push((i, tag));
        }
        let entries: Vec<(&Tag, &Entry)> = ready.iter().map(|(i, tag)| (tag, &batch[*i])).collect();
        // 0 applied: already applied by an earlier, interrupted replay; either way it is in
        // Redis now.
        let applied = self.apply_entries(&entries, true).await;
        for ((i, _), r) in ready.iter().zip(applied) {
            results[*i] = Some(r);
        }
        results.into_iter().map(|r| r.expect("every entry has a result")).collect()
    }
}

/// The profile and org an entry counts for.
pub(super) fn entry_tenants(entry: &Entry) -> Option<(String, Option<String>)> {
    match &entry.record {
        Some(rec) => Some((rec.profile.clone(), rec.org.clone())),
        None => tenants_of(entry.counters.iter().map(|(k, _)| k)),
    }
}
