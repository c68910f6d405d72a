//! The embedded store (the default backend): counters in memory for the request path, every
//! reservation and settlement written to a SQLite database by a writer thread that
//! group-commits them off the request path. History, recent requests, the tenant registry and
//! the org bindings live in the database, so memory does not grow with history or tenants.
//!
//! - **Crash safety.** At start the counters are rebuilt from the database and the calls that
//!   were open at a crash are charged their reservation (usage records with reason `crash`).
//!   A SIGKILL loses at most the records of the last commit interval; with
//!   `store.durability: strict` a reservation is committed (and synced) before its request
//!   is forwarded.
//! - **One owner.** A lock file beside the database (`<path>.lock`) keeps a second proxy off
//!   it; readers (`spendgate usage`, the `sqlite3` shell) open it read-only at any time.
//! - **Faults.** A failed commit is counted (`spendgate_store_errors_total{op="persist"}`)
//!   and retried; meanwhile `on_error: closed` refuses new calls with 503 and
//!   `on_error: open` keeps serving while at most `store.max_unwritten` records wait.
//!
//! The schema is in `docs/embedded-store.md` and [`schema`].

pub mod control;
mod counters;
mod import;
mod journal;
mod read;
mod rows;
pub mod schema;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use prometheus::IntCounter;
use rusqlite::Connection;
use tokio::sync::oneshot;

use self::counters::Counters;
pub use self::rows::Keep;
use self::schema::OpenError;
use self::writer::{Msg, Rec, Shared, Writer};
use crate::config::{Durability, OnError, StoreConfig};
use crate::domain::Scope;
use crate::quota::ledger::{CounterKey, History, ReserveOutcome, ReserveRequest, Settlement, Store, StoreError, Totals};

/// Longest the start waits for the lock file.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Longest a strict reservation waits for its commit before it counts as failed.
const STRICT_WAIT: Duration = Duration::from_secs(10);

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct Options {
    pub path: PathBuf,
    pub durability: Durability,
    pub commit_interval: Duration,
    pub on_error: OnError,
    pub max_unwritten: usize,
    pub keep: Keep,
    /// An earlier version's snapshot to import once.
    pub snapshot: Option<PathBuf>,
}

impl Options {
    pub fn from_config(c: &StoreConfig) -> Options {
        Options {
            path: c.path.clone(),
            durability: c.durability,
            commit_interval: c.commit_interval.0,
            on_error: c.on_error,
            max_unwritten: c.max_unwritten,
            keep: Keep {
                recent_max: c.recent_max,
                daily_days: c.retention.daily_days,
                monthly_months: c.retention.monthly_months,
                max_tags: c.max_tags,
            },
            snapshot: c.snapshot.clone(),
        }
    }
}

/// The serving side: the writer and what only the owner of the database has.
struct Serving {
    tx: Sender<Msg>,
    counters: Mutex<Counters>,
    /// Serializes first bindings (check, then hand over).
    bind_lock: Mutex<()>,
    bind_conn: Mutex<Connection>,
    /// Alerts claimed and not yet expired: key -> expiry (unix seconds). Loaded at start,
    /// each new claim written through.
    claims: Mutex<HashMap<String, i64>>,
    _lock_file: File,
}

pub struct EmbeddedStore {
    opts: Options,
    shared: Arc<Shared>,
    /// Reads for the usage API.
    reader: Arc<Mutex<Connection>>,
    /// `None` when opened read-only.
    serving: Option<Serving>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedStore {
    /// Opens the database to serve from it: takes the lock file, creates or migrates the
    /// schema, imports an old snapshot once, charges the calls a crash left open, loads the
    /// counters, and starts the writer.
    pub fn open(opts: Options, persist_errors: IntCounter) -> Result<EmbeddedStore, OpenError> {
        let path = &opts.path;
        let other = |detail: String| OpenError::Other {
            path: path.display().to_string(),
            detail,
        };
        let mut conn = schema::open_writer(path, opts.durability)?;
        let lock_file = take_lock(path)?;
        if let Some(snap) = &opts.snapshot {
            match import::import_once(&mut conn, snap, Utc::now().timestamp()).map_err(other)? {
                Some(i) => tracing::warn!(
                    snapshot = %snap.display(), counters = i.counters, tenants = i.tenants, records = i.records,
                    "imported the snapshot file into the embedded store's database; `store.snapshot` is deprecated and can be removed"
                ),
                None => {
                    tracing::warn!(snapshot = %snap.display(), "`store.snapshot` is deprecated: the embedded store keeps everything in its database (`store.path`); remove the key")
                }
            }
        }
        // What a crash left in the journal reaches the tables before anything reads them.
        let replayed = journal::recover(&mut conn, opts.keep).map_err(|e| other(format!("the journal cannot be applied: {e}")))?;
        if replayed > 0 {
            tracing::info!(rows = replayed, "applied the journal the proxy left when it last stopped");
        }
        let (crashed, cost) = read::settle_crashed(&mut conn, opts.keep).map_err(|e| OpenError::from_sqlite(path, &e))?;
        if crashed > 0 {
            tracing::warn!(
                calls = crashed,
                cost_nanos = cost,
                "calls open when the proxy last stopped are charged their reservation (reason `crash`)"
            );
        }
        let mut counters = Counters::default();
        let loaded = read::load_counters(&conn, &mut counters, Utc::now().timestamp()).map_err(|e| OpenError::from_sqlite(path, &e))?;
        tracing::info!(path = %path.display(), counters = loaded, durability = ?opts.durability, "embedded store opened");
        let claims = read::alert_claims(&conn, Utc::now().timestamp()).map_err(|e| OpenError::from_sqlite(path, &e))?;

        let reader = schema::open_reader(path)?;
        let bind_conn = schema::open_reader(path)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            rx,
            shared: shared.clone(),
            keep: opts.keep,
            linger: match opts.durability {
                Durability::Batched => opts.commit_interval,
                Durability::Strict => Duration::ZERO,
            },
            errors: persist_errors,
        };
        std::thread::Builder::new()
            .name("spendgate-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| other(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedStore {
            opts,
            shared,
            reader: Arc::new(Mutex::new(reader)),
            serving: Some(Serving {
                tx,
                counters: Mutex::new(counters),
                bind_lock: Mutex::new(()),
                bind_conn: Mutex::new(bind_conn),
                claims: Mutex::new(claims.into_iter().collect()),
                _lock_file: lock_file,
            }),
        })
    }

    /// Opens an existing database read-only (reports next to a running proxy): what is
    /// committed, without taking it over.
    pub fn open_read_only(opts: Options) -> Result<EmbeddedStore, OpenError> {
        if !opts.path.exists() {
            return Err(OpenError::Other {
                path: opts.path.display().to_string(),
                detail: "no database here yet (the proxy creates it at start)".into(),
            });
        }
        let reader = schema::open_reader(&opts.path)?;
        Ok(EmbeddedStore {
            opts,
            shared: Arc::new(Shared::default()),
            reader: Arc::new(Mutex::new(reader)),
            serving: None,
        })
    }

    fn serving(&self) -> Result<&Serving, StoreError> {
        self.serving
            .as_ref()
            .ok_or_else(|| StoreError::Other("the embedded store is open read-only".into()))
    }

    /// Applies a settlement to the counters in memory and hands it to the writer.
    fn settle_serving(&self, s: &Serving, mut st: Settlement) {
        {
            let now = Utc::now().timestamp();
            let mut c = s.counters.lock();
            for (k, d) in &st.deltas {
                c.add(k, *d, now);
            }
        }
        // Never refused: the call was admitted, its charge is kept whatever happens.
        st.deltas.retain(|(_, d)| *d != 0);
        self.send(
            s,
            Rec::Settle {
                id: st.id,
                deltas: st.deltas,
                record: st.record,
            },
            None,
        );
    }

    /// Checks a reservation against the counters in memory and adds it when admitted; then
    /// also the record the writer gets for it.
    fn reserve_in_memory(&self, s: &Serving, req: &ReserveRequest) -> Result<(ReserveOutcome, Option<Rec>), StoreError> {
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        let outcome = s.counters.lock().reserve(&req.ops, Utc::now().timestamp());
        if !matches!(outcome, ReserveOutcome::Admitted { .. }) {
            return Ok((outcome, None));
        }
        let rec = Rec::Reserve {
            call: req.call.clone(),
            ops: req.ops.clone(),
        };
        Ok((outcome, Some(rec)))
    }

    /// Hands a record to the writer.
    fn send(&self, s: &Serving, rec: Rec, done: Option<oneshot::Sender<Result<(), String>>>) {
        self.shared.unwritten.fetch_add(1, Ordering::AcqRel);
        if s.tx.send(Msg::Rec(Box::new(rec), done)).is_err() {
            // Only when the writer thread died (it never returns while the store lives).
            tracing::error!("embedded store: the writer thread is gone; a record is lost");
        }
    }

    /// Waits until everything handed over so far is committed (or its commit failed).
    async fn barrier(&self) {
        let Some(s) = &self.serving else { return };
        let (done, wait) = oneshot::channel();
        if s.tx.send(Msg::Barrier(done)).is_ok() {
            let _ = tokio::time::timeout(STRICT_WAIT, wait).await;
        }
    }

    /// Why new calls are refused, if they are: writes failing under `on_error: closed`, or
    /// too much unwritten.
    fn refusal(&self) -> Option<StoreError> {
        let unwritten = self.shared.unwritten.load(Ordering::Acquire);
        if unwritten >= self.opts.max_unwritten {
            return Some(StoreError::Saturated(format!(
                "{unwritten} records wait to be written to {} ({})",
                self.opts.path.display(),
                self.shared.last_error.lock()
            )));
        }
        if self.opts.on_error == OnError::Closed && self.shared.failing.load(Ordering::Acquire) {
            return Some(unavailable(format!(
                "cannot write {}: {}",
                self.opts.path.display(),
                self.shared.last_error.lock()
            )));
        }
        None
    }

    /// Runs a read on the reader connection off the async threads, after the writer has
    /// committed what came before (a report sees every settled call).
    async fn query<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static) -> Result<T, StoreError> {
        self.barrier().await;
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock()))
            .await
            .map_err(|e| StoreError::Other(e.to_string()))?
            .map_err(|e| StoreError::Other(format!("embedded store read failed: {e}")))
    }

    /// Drops the window buckets no limit reads any more, from memory and the database, and
    /// the expired alert claims from memory (housekeeping deletes them from the database).
    fn sweep(&self, s: &Serving) {
        let now = Utc::now().timestamp();
        s.claims.lock().retain(|_, expires| *expires > now);
        let expired = s.counters.lock().take_expired(now);
        for (window, bucket) in expired.ids.iter().cloned() {
            self.send(s, Rec::Prune { window, bucket }, None);
        }
        drop(expired);
    }

    /// (window, bucket) entries held in memory.
    pub fn counter_entries(&self) -> usize {
        self.serving.as_ref().map_or(0, |s| s.counters.lock().entries())
    }
}

/// Takes `<path>.lock`: one serving process per database.
fn take_lock(path: &Path) -> Result<File, OpenError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| OpenError::NotWritable {
            path: path.display().to_string(),
            detail: format!("cannot create the lock file {}: {e}", lock_path.display()),
        })?;
    // A previous owner in this process (a restart in place) may still be letting go.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked {
                    path: path.display().to_string(),
                    detail: format!("{} is held", lock_path.display()),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(OpenError::Other {
                    path: path.display().to_string(),
                    detail: format!("cannot lock {}: {e}", lock_path.display()),
                })
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn reserve_now(&self, req: &ReserveRequest) -> Option<Result<ReserveOutcome, StoreError>> {
        // Strict durability waits for the commit: only batched reservations are done here.
        if self.opts.durability != Durability::Batched {
            return None;
        }
        Some(self.serving().and_then(|s| {
            let (outcome, rec) = self.reserve_in_memory(s, req)?;
            if let Some(rec) = rec {
                self.send(s, rec, None);
            }
            Ok(outcome)
        }))
    }

    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        if let Some(done) = self.reserve_now(req) {
            return done;
        }
        let s = self.serving()?;
        let (outcome, rec) = self.reserve_in_memory(s, req)?;
        let Some(rec) = rec else { return Ok(outcome) };
        // Strict: the reservation is durable before the request goes anywhere.
        let (done, wait) = oneshot::channel();
        self.send(s, rec, Some(done));
        let failure = match tokio::time::timeout(STRICT_WAIT, wait).await {
            Ok(Ok(Ok(()))) => return Ok(outcome),
            Ok(Ok(Err(e))) => e,
            Ok(Err(_)) => "the writer is gone".to_string(),
            Err(_) => format!("no commit within {STRICT_WAIT:?}"),
        };
        if self.opts.on_error == OnError::Open && self.shared.unwritten.load(Ordering::Acquire) < self.opts.max_unwritten {
            // Kept in memory and retried: counted, just not yet durable.
            return Ok(outcome);
        }
        // Not forwarded: take the reservation back, in memory and in the queue behind it.
        let undo: Vec<(CounterKey, i64)> = req.ops.iter().filter(|op| op.amount != 0).map(|op| (op.key.clone(), -op.amount)).collect();
        {
            let now = Utc::now().timestamp();
            let mut c = s.counters.lock();
            for (k, d) in &undo {
                c.add(k, *d, now);
            }
        }
        let id = req.call.as_ref().map(|c| c.id.clone()).unwrap_or_default();
        self.send(s, Rec::Cancel { id, deltas: undo }, None);
        Err(unavailable(format!(
            "cannot make the reservation durable in {}: {failure}",
            self.opts.path.display()
        )))
    }

    async fn settle(&self, st: &Settlement) -> Result<(), StoreError> {
        self.settle_owned(st.clone()).await
    }

    async fn settle_owned(&self, st: Settlement) -> Result<(), StoreError> {
        self.settle_serving(self.serving()?, st);
        Ok(())
    }

    fn settle_now(&self, st: Settlement) -> Option<Settlement> {
        // Not serving (opened to read): handed back, so that `settle_owned` reports it.
        match &self.serving {
            Some(s) => {
                self.settle_serving(s, st);
                None
            }
            None => Some(st),
        }
    }

    async fn read(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        match &self.serving {
            Some(s) => {
                let c = s.counters.lock();
                Ok(keys.iter().map(|k| c.get(k)).collect())
            }
            None => {
                let keys = keys.to_vec();
                self.query(move |c| read::counters(c, &keys)).await
            }
        }
    }

    async fn history(&self, scope: Scope, tenant: &str, days: &[String], recent: usize) -> Result<History, StoreError> {
        let (tenant, days) = (tenant.to_string(), days.to_vec());
        self.query(move |c| read::history(c, scope, &tenant, &days, recent)).await
    }

    async fn tenants(&self, scope: Scope) -> Result<Vec<String>, StoreError> {
        self.query(move |c| read::tenants(c, scope)).await
    }

    async fn tenant_totals(&self, scope: Scope, periods: &[String]) -> Result<HashMap<String, Totals>, StoreError> {
        let periods = periods.to_vec();
        self.query(move |c| read::tenant_totals(c, scope, &periods)).await
    }

    async fn bind_org(&self, profile: &str, org: Option<&str>) -> Result<Option<String>, StoreError> {
        let s = self.serving()?;
        let _one_at_a_time = s.bind_lock.lock();
        if let Some(bound) = self.shared.pending_binds.lock().get(profile) {
            return Ok(bound.clone());
        }
        let found = read::binding(&s.bind_conn.lock(), profile).map_err(|e| StoreError::Other(format!("embedded store read failed: {e}")))?;
        if let Some(bound) = found {
            return Ok(bound);
        }
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        let org = org.map(str::to_string);
        // Pending until committed: answered from memory until the database has it.
        self.shared.pending_binds.lock().insert(profile.to_string(), org.clone());
        self.send(
            s,
            Rec::Bind {
                profile: profile.to_string(),
                org: org.clone(),
            },
            None,
        );
        Ok(org)
    }

    fn keeps_open_calls(&self) -> bool {
        true
    }

    /// One process owns the database, so the claim is decided in memory; it is written
    /// through, so a restart does not send the alert again.
    async fn claim_alert(&self, key: &str, expires: DateTime<Utc>) -> Result<bool, StoreError> {
        let s = self.serving()?;
        let now = Utc::now().timestamp();
        let expires = expires.timestamp();
        {
            let mut claims = s.claims.lock();
            if claims.get(key).is_some_and(|e| *e > now) {
                return Ok(false);
            }
            claims.insert(key.to_string(), expires);
        }
        self.send(s, Rec::Claim { key: key.to_string(), expires }, None);
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.serving.is_none() {
            return self.query(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await;
        }
        if self.shared.failing.load(Ordering::Acquire) {
            return Err(unavailable(format!(
                "cannot write {}: {}",
                self.opts.path.display(),
                self.shared.last_error.lock()
            )));
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        if let Some(s) = &self.serving {
            self.sweep(s);
        }
        self.barrier().await;
        if self.shared.failing.load(Ordering::Acquire) {
            return Err(unavailable(format!(
                "{} records not yet written to {}: {}",
                self.shared.unwritten.load(Ordering::Acquire),
                self.opts.path.display(),
                self.shared.last_error.lock()
            )));
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests;
