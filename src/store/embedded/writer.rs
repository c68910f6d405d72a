//! The embedded store's writer: one thread owns the database's write connection and
//! group-commits what the request path hands it. Records that arrive within one commit
//! interval (or while a commit is running) share one commit; they are folded into
//! [`Changes`] (a call reserved and settled in the same changes never writes its open-call
//! row, counter deltas and history totals of one row are summed) and appended to the journal
//! as one row. The tables catch up with the journal about once a second, or at once when a
//! report reads them ([`super::journal`]). A failed commit is counted, kept, and retried with
//! backoff; the store decides from [`Shared`] what the request path does meanwhile
//! (`on_error`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::IntCounter;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::journal::{self, Changes};
use super::rows::{self, Keep, Map};
use crate::domain::window::Window;
use crate::quota::ledger::{CounterKey, CounterOp, OpenCall, UsageRecord};

/// Most records in one commit.
const MAX_BATCH: usize = 4096;
/// How long committed changes may wait in the journal before the tables catch up with them
/// (a report reading the tables has them written at once).
const MATERIALIZE_EVERY: Duration = Duration::from_secs(1);
/// Most records waiting in the journal; past it the tables catch up at once.
const MATERIALIZE_MAX: usize = 65_536;
/// How often the recent requests are written (and the profiles that grew trimmed to
/// `recent_max`): they are a view of the calls, not their charge, which every commit
/// carries. Someone reading the store (a barrier) has them written at once.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Bounds the recent requests waiting for their write: past half of it they are written at
/// once (at 20,000 calls a second that is about once a second, like the timer). If they reach
/// it (the writes failing, or a burst), the ones a profile's newer ones push out of its
/// `recent_max` are dropped: they would only be written to be trimmed.
const RECENT_PENDING_MAX: usize = 32_768;
/// How often retention is enforced when nothing else happens.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// First and longest pause between retries of a failed commit.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The pause after `pause` when the retry fails again.
fn doubled(pause: Duration) -> Duration {
    (pause * 2).min(RETRY_MAX)
}

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
        // Strict reservations waiting for their commit.
        let mut waiters: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
        // Readers waiting for the tables to hold everything sent before them.
        let mut readers: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
        let mut housekept = Instant::now() - HOUSEKEEPING;
        let mut retry = RETRY_FIRST;
        let mut open = true;
        // Changes in the journal and not yet in the tables.
        let mut journaled = Journaled::default();
        // The recent requests of committed calls, written (and the profiles that grew
        // trimmed) at most once a second, or when someone waits: a recent-request row per
        // call and commit was most of the writer's cost (each commit rewrote the pages of
        // every profile's end of the index).
        let mut recent = Recent::default();
        loop {
            if batch.is_empty() && waiters.is_empty() && readers.is_empty() {
                if journaled.due(!open) {
                    journaled.materialize(&mut self, &mut readers);
                    if !open && journaled.failed.is_some() {
                        // Closing: the journal keeps them for the next start.
                        break;
                    }
                    continue;
                }
                if !open {
                    break;
                }
                if housekept.elapsed() >= HOUSEKEEPING {
                    if let Err(e) = rows::housekeeping(&mut self.conn, self.keep) {
                        tracing::warn!(error = %e, "embedded store: retention could not be enforced; retrying later");
                    }
                    housekept = Instant::now();
                }
                if recent.due(false) {
                    recent.write(&mut self.conn, self.keep);
                }
                let wait = [Some(HOUSEKEEPING), (!recent.is_empty()).then_some(TRIM_EVERY), journaled.wait()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(HOUSEKEEPING);
                match self.rx.recv_timeout(wait) {
                    Ok(m) => take(m, &mut batch, &mut waiters, &mut readers),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        continue;
                    }
                }
                // Let more arrive to share the commit, unless someone is waiting. The writer
                // sleeps rather than waits on the channel: a sender then never has to wake
                // it, so a batch costs one wake-up, not one per record.
                if waiters.is_empty() && readers.is_empty() && !self.linger.is_zero() {
                    std::thread::sleep(self.linger);
                }
            }
            // Whatever else is already there joins this commit.
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(m) => take(m, &mut batch, &mut waiters, &mut readers),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let changes = fold(&batch);
            match commit(&mut self.conn, &changes) {
                Ok(()) => {
                    self.shared.unwritten.fetch_sub(batch.len(), Ordering::AcqRel);
                    journaled.add(changes);
                    for r in batch.drain(..) {
                        if let Rec::Settle { record, .. } = r {
                            if self.keep.recent_max > 0 {
                                recent.push(record, self.keep.recent_max);
                            }
                        }
                    }
                    if self.shared.failing.swap(false, Ordering::AcqRel) {
                        tracing::info!("embedded store: the database is written again");
                    }
                    retry = RETRY_FIRST;
                    for w in waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                    if recent.due(!readers.is_empty() || !open) {
                        recent.write(&mut self.conn, self.keep);
                    }
                    if journaled.due(!readers.is_empty()) {
                        journaled.materialize(&mut self, &mut readers);
                    }
                    for r in readers.drain(..) {
                        let _ = r.send(journaled.outcome());
                    }
                }
                Err(e) => {
                    self.errors.inc();
                    let message = e.to_string();
                    if !self.shared.failing.swap(true, Ordering::AcqRel) {
                        tracing::error!(error = %message, records = batch.len(), "embedded store: cannot write the database; keeping the records and retrying");
                    }
                    *self.shared.last_error.lock() = message.clone();
                    for w in waiters.drain(..).chain(readers.drain(..)) {
                        let _ = w.send(Err(message.clone()));
                    }
                    std::thread::sleep(retry);
                    retry = doubled(retry);
                }
            }
        }
        if !recent.is_empty() {
            recent.write(&mut self.conn, self.keep);
        }
    }
}

/// Changes committed to the journal and not yet written to the tables.
#[derive(Default)]
struct Journaled {
    changes: Changes,
    /// When the oldest of them was committed.
    since: Option<Instant>,
    /// The last attempt to write them failed.
    failed: Option<Failure>,
}

/// A failed attempt to bring the tables up to date.
struct Failure {
    /// When to try again, and the pause that led there.
    retry_at: Instant,
    pause: Duration,
    error: String,
}

impl Journaled {
    fn add(&mut self, c: Changes) {
        if c.is_empty() {
            return;
        }
        self.since.get_or_insert_with(Instant::now);
        self.changes.merge(c);
    }

    /// Time to write them: they waited long enough, many wait, or `now` (someone reads, or
    /// the store closes); after a failed write, not before its retry time.
    fn due(&self, now: bool) -> bool {
        let Some(since) = self.since else { return false };
        match &self.failed {
            Some(f) => Instant::now() >= f.retry_at,
            None => now || since.elapsed() >= MATERIALIZE_EVERY || self.changes.records() >= MATERIALIZE_MAX,
        }
    }

    /// How long until they are due, when there are any.
    fn wait(&self) -> Option<Duration> {
        let since = self.since?;
        Some(match &self.failed {
            Some(f) => f.retry_at.saturating_duration_since(Instant::now()),
            None => MATERIALIZE_EVERY.saturating_sub(since.elapsed()),
        })
    }

    /// What a reader waiting for the tables is told.
    fn outcome(&self) -> Result<(), String> {
        match &self.failed {
            Some(f) => Err(f.error.clone()),
            None => Ok(()),
        }
    }

    /// Writes them to the tables and empties the journal. On failure they stay (the journal
    /// holds them durably) and the write is retried with backoff; readers are told.
    fn materialize(&mut self, w: &mut Writer, readers: &mut Vec<oneshot::Sender<Result<(), String>>>) {
        match journal::materialize(&mut w.conn, &self.changes, w.keep) {
            Ok(()) => {
                if self.failed.take().is_some() {
                    tracing::info!("embedded store: the tables are written again");
                }
                {
                    let mut pending = w.shared.pending_binds.lock();
                    if !pending.is_empty() {
                        for p in self.changes.bound() {
                            pending.remove(p);
                        }
                    }
                }
                self.changes.clear();
                self.since = None;
            }
            Err(e) => {
                w.errors.inc();
                let message = format!("cannot bring the tables up to date with the journal: {e}");
                let pause = self.failed.as_ref().map_or(RETRY_FIRST, |f| doubled(f.pause));
                if self.failed.is_none() {
                    tracing::error!(error = %message, records = self.changes.records(), "embedded store: the committed records stay in the journal; retrying");
                }
                self.failed = Some(Failure {
                    retry_at: Instant::now() + pause,
                    pause,
                    error: message,
                });
            }
        }
        for r in readers.drain(..) {
            let _ = r.send(self.outcome());
        }
    }
}

/// The changes of a batch of records.
fn fold(batch: &[Rec]) -> Changes {
    let mut c = Changes::default();
    for r in batch {
        c.count();
        match r {
            Rec::Reserve { call, ops } => {
                for op in ops.iter() {
                    c.add_counter(&op.key, op.amount);
                }
                if let Some(call) = call {
                    c.open(call.clone());
                }
            }
            Rec::Settle { id, deltas, record } => {
                for (k, d) in deltas {
                    c.add_counter(k, *d);
                }
                c.close(id);
                c.add_history(record);
            }
            Rec::Cancel { id, deltas } => {
                for (k, d) in deltas {
                    c.add_counter(k, *d);
                }
                c.close(id);
            }
            Rec::Bind { profile, org } => c.bind(profile, org.as_deref()),
            Rec::Prune { window, bucket } => c.prune(*window, bucket),
            Rec::Claim { key, expires } => c.claim(key, *expires),
        }
    }
    c
}

/// Commits a batch's changes: one journal row.
fn commit(conn: &mut Connection, changes: &Changes) -> rusqlite::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    journal::append(&tx, changes)?;
    tx.commit()
}

/// Recent requests of committed calls, waiting for their write.
struct Recent {
    records: Vec<UsageRecord>,
    /// Profiles whose recent requests grew since they were last trimmed.
    grown: HashSet<String>,
    written: Instant,
    /// How many waiting records make the next trim of the waiting ones: twice what the last
    /// one left, so that many profiles (whose records no trim removes) cost it once, not on
    /// every record.
    trim_at: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            records: Vec::new(),
            grown: HashSet::new(),
            written: Instant::now(),
            trim_at: RECENT_PENDING_MAX,
        }
    }
}

/// Which of `records` (oldest first) are among their profile's newest `recent_max`.
fn newest(records: &[UsageRecord], recent_max: usize) -> Vec<bool> {
    let mut kept: Map<&str, usize> = Map::default();
    let mut newest = vec![false; records.len()];
    for (i, r) in records.iter().enumerate().rev() {
        let n = kept.entry(r.profile.as_str()).or_insert(0);
        if *n < recent_max {
            *n += 1;
            newest[i] = true;
        }
    }
    newest
}

impl Recent {
    fn push(&mut self, record: UsageRecord, recent_max: usize) {
        if !self.grown.contains(&record.profile) {
            self.grown.insert(record.profile.clone());
        }
        self.records.push(record);
        if self.records.len() >= self.trim_at {
            // A busy profile's older rows would only be written to be trimmed.
            let newest = newest(&self.records, recent_max);
            let mut i = 0;
            self.records.retain(|_| {
                i += 1;
                newest[i - 1]
            });
            self.trim_at = (2 * self.records.len()).max(RECENT_PENDING_MAX);
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.grown.is_empty()
    }

    /// Time to write: a second has passed, many wait, or `now`
    /// (someone reads, or the store closes).
    fn due(&self, now: bool) -> bool {
        !self.is_empty() && (now || self.records.len() >= RECENT_PENDING_MAX / 2 || self.written.elapsed() >= TRIM_EVERY)
    }

    /// Writes the rows and trims the profiles that grew, in one transaction. On failure the
    /// rows are kept for the next try, up to a bound past which the oldest are dropped (the
    /// calls' charges are not among them: those are committed already).
    fn write(&mut self, conn: &mut Connection, keep: Keep) {
        self.written = Instant::now();
        // Only a profile's newest `recent_max` rows can survive the trim: older ones in
        // this batch are not written at all (a busy profile's rows were mostly written only to
        // be deleted).
        let write = newest(&self.records, keep.recent_max);
        let result = (|| {
            let tx = conn.transaction()?;
            for (r, _) in self.records.iter().zip(&write).filter(|(_, w)| **w) {
                rows::insert_recent(&tx, r)?;
            }
            rows::prune_recent_in(&tx, self.grown.iter().map(String::as_str), keep)?;
            tx.commit()
        })();
        match result {
            Ok(()) => {
                self.records.clear();
                self.trim_at = RECENT_PENDING_MAX;
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

fn take(m: Msg, batch: &mut Vec<Rec>, waiters: &mut Vec<oneshot::Sender<Result<(), String>>>, readers: &mut Vec<oneshot::Sender<Result<(), String>>>) {
    match m {
        Msg::Rec(r, w) => {
            batch.push(*r);
            waiters.extend(w);
        }
        Msg::Barrier(w) => readers.push(w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(profile: &str, n: i64) -> UsageRecord {
        UsageRecord {
            at: chrono::Utc::now(),
            day: "2026-11-29".into(),
            profile: profile.into(),
            org: None,
            provider: "openai".into(),
            model: "m".into(),
            path: "/".into(),
            status: 200,
            tags: Vec::new(),
            totals: crate::quota::ledger::Totals {
                requests: n,
                ..Default::default()
            },
            reason: None,
        }
    }

    #[test]
    fn waiting_recent_requests_keep_only_each_profiles_newest() {
        let mut r = Recent::default();
        for i in 0..RECENT_PENDING_MAX as i64 {
            r.push(record("busy", i), 3);
        }
        r.push(record("quiet", -1), 3);
        // The busy profile's older rows went when the bound was reached; nothing was due.
        let busy: Vec<i64> = r.records.iter().filter(|x| x.profile == "busy").map(|x| x.totals.requests).collect();
        let last = RECENT_PENDING_MAX as i64 - 1;
        assert_eq!(busy, [last - 2, last - 1, last]);
        assert_eq!(r.records.len(), 4);
        assert!(!r.due(false));
        assert_eq!(newest(&r.records, 1), [false, false, true, true]);
    }

    #[test]
    fn waiting_records_of_many_profiles_are_trimmed_once_per_doubling() {
        let mut r = Recent::default();
        for i in 0..RECENT_PENDING_MAX {
            r.push(record(&format!("p{i}"), 1), 3);
        }
        // Nothing to drop: the next trim waits until they have doubled.
        assert_eq!(r.records.len(), RECENT_PENDING_MAX);
        assert_eq!(r.trim_at, 2 * RECENT_PENDING_MAX);
        assert!(r.due(false), "that many wait: written at once");
    }
}
