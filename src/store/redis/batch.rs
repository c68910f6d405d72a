//! Settlements in batches, off the request's path.
//!
//! A settlement is queued and its caller awaits the batch it joined. One task sends the
//! batches: whatever is queued when it is free goes out at once, as one `settle.lua` call
//! (one per hash slot on a cluster, a tenant's entries together), and whatever arrives while
//! that call is in flight joins the next one. At low load a batch is one settlement, sent
//! without delay; under load (a batch of at least [`LINGER_FROM`]) the sender waits
//! [`LINGER`] before taking the next one, so that hundreds of settlements share one round
//! trip and one script call and a tenant's several settlements write its counters, history
//! fields and recent list once. The journal replay applies its entries in batches through
//! the same script.
//!
//! Exactly once is unchanged: every entry keeps its id, and the script skips ids it has
//! applied before. A batch that fails, or that its settlements stop waiting for, is handled
//! per settlement as a single call was: journaled, and replayed unless the batch turns out
//! to have been applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use redis::{FromRedisValue, RedisError, RedisResult};
use tokio::sync::{oneshot, Notify};

use super::conn::Conn;
use super::expiries::Expiries;
use super::journal::Entry;
use super::keys::Tag;
use super::outage::{copy_error, is_connection_problem};
use super::{scripts, Inner};

/// Most entries one script call applies, so that no call holds Redis for long.
const MAX_BATCH: usize = 256;
/// Under load (the previous batch carried at least `LINGER_FROM` settlements) the sender
/// waits `LINGER` before taking the next batch, so that a tenant's settlements share it and
/// its counters, history fields and recent list are written once for several.
const LINGER_FROM: usize = 32;
pub(super) const LINGER: std::time::Duration = std::time::Duration::from_millis(25);

/// What a settlement learns from its batch: applied, or the failure.
pub(super) type Outcome = Result<(), String>;

struct Waiting {
    tag: Tag,
    entry: Arc<Entry>,
    done: oneshot::Sender<Outcome>,
}

/// The queue of settlements waiting for the next batch.
#[derive(Default)]
pub(super) struct Batches {
    queue: Mutex<Vec<Waiting>>,
    wake: Notify,
}

impl Batches {
    /// Queues an entry for the next batch; the receiver gets the batch's outcome.
    pub(super) fn push(&self, tag: Tag, entry: Arc<Entry>) -> oneshot::Receiver<Outcome> {
        let (done, outcome) = oneshot::channel();
        self.queue.lock().push(Waiting { tag, entry, done });
        self.wake.notify_one();
        outcome
    }
}

/// The task that sends the batches, for as long as the store lives.
pub(super) async fn sender(inner: Arc<Inner>) {
    let mut last = 0;
    loop {
        if last >= LINGER_FROM {
            tokio::time::sleep(LINGER).await;
        }
        let waiting = std::mem::take(&mut *inner.batches.queue.lock());
        last = waiting.len();
        if waiting.is_empty() {
            inner.batches.wake.notified().await;
            continue;
        }
        let entries: Vec<(&Tag, &Entry)> = waiting.iter().map(|w| (&w.tag, &*w.entry)).collect();
        let results = inner.apply_entries(&entries, false).await;
        let mut failure = None;
        for (w, r) in waiting.into_iter().zip(results) {
            let outcome = r.map_err(|e| {
                if is_connection_problem(&e) {
                    failure = Some(());
                }
                e.to_string()
            });
            let _ = w.done.send(outcome);
        }
        // One failed round trip counts once towards the breaker, however many it carried.
        match failure {
            Some(()) => inner.failed(),
            None => inner.breaker.success(),
        }
    }
}

impl Inner {
    /// Applies entries with `settle.lua`: grouped by hash slot on a cluster (every entry on
    /// a standalone server goes together), at most [`MAX_BATCH`] per call, the calls in
    /// parallel. One result per entry, in order. When Redis refuses a batch for another
    /// reason than a connection problem, its entries are tried one by one, so that one bad
    /// entry does not hold back the others.
    pub(super) async fn apply_entries(&self, entries: &[(&Tag, &Entry)], replay: bool) -> Vec<RedisResult<()>> {
        let cluster = matches!(self.conn, Conn::Cluster(_));
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, (tag, _)) in entries.iter().enumerate() {
            groups.entry(if cluster { tag.slot() } else { 0 }).or_default().push(i);
        }
        // A tenant's entries go in the same call, where their writes are summed.
        for g in groups.values_mut() {
            g.sort_by_key(|&i| entries[i].0.as_str());
        }
        let calls: Vec<Vec<usize>> = groups
            .into_values()
            .flat_map(|g| g.chunks(MAX_BATCH).map(<[usize]>::to_vec).collect::<Vec<_>>())
            .collect();
        let sent = calls.iter().map(|members| async move {
            let result = self.apply_batch(members.iter().map(|&i| entries[i]), replay).await;
            match result {
                Err(e) if members.len() > 1 && !is_connection_problem(&e) => {
                    tracing::warn!(error = %e, entries = members.len(), "Redis refused a batch; applying its entries one by one");
                    let mut each = Vec::with_capacity(members.len());
                    for &i in members {
                        each.push(self.apply_batch(std::iter::once(entries[i]), replay).await);
                    }
                    each
                }
                r => members.iter().map(|_| r.as_ref().map(|_| ()).map_err(copy_error)).collect(),
            }
        });
        let done = futures_util::future::join_all(sent).await;
        let mut results: Vec<Option<RedisResult<()>>> = (0..entries.len()).map(|_| None).collect();
        for (members, rs) in calls.iter().zip(done) {
            for (&i, r) in members.iter().zip(rs) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RedisError::from((redis::ErrorKind::Client, "entry not sent")))))
            .collect()
    }

    /// One script call: `settle_sums.lua` for first calls when it can take the batch, else
    /// (or when it finds an entry applied before) `settle.lua`. Replays are timed and
    /// counted per entry as `replay`.
    async fn apply_batch<'a>(&self, entries: impl Iterator<Item = (&'a Tag, &'a Entry)> + Clone, replay: bool) -> RedisResult<()> {
        let n = entries.clone().count();
        let started = Instant::now();
        let summed = if replay { None } else { self.apply_sums(entries.clone()).await };
        let result = match summed {
            Some(r) => r,
            None => {
                let mut sent = Vec::new();
                let inv = {
                    let mut expiries = self.expiries.lock();
                    scripts::settle(&self.keys, entries, replay, &self.apply, |k, at| needs(&mut expiries, &mut sent, k, at))
                };
                let mut c = self.conn.clone();
                let result = if replay {
                    let r = tokio::time::timeout(self.read_timeout, inv.run::<(i64, String)>(&self.scripts.settle, &mut c)).await;
                    r.unwrap_or_else(|_| Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "replay timed out"))))
                } else {
                    inv.run::<(i64, String)>(&self.scripts.settle, &mut c).await
                };
                // Every entry applied: every id hash and list it named exists, with its expiry.
                if matches!(&result, Ok((applied, _)) if *applied == n as i64) {
                    self.confirm(&sent);
                }
                result
            }
        };
        if !matches!(&result, Ok((_, failed)) if failed.is_empty()) {
            // The expiries sent may not have been set.
            self.expiries.lock().forget();
        }
        if let Ok((_, failed)) = &result {
            if !failed.is_empty() {
                // Applied (ids recorded) except the writes Redis refused: counted, and left
                // for an operator, since retrying would apply the rest twice.
                self.metrics.error("settle");
                tracing::error!(error = %failed, entries = n, "Redis refused part of a settlement batch (a key of the wrong type?); the rest is applied once");
            }
        }
        if replay {
            for _ in 0..n {
                self.metrics.observe("replay", started);
                if result.is_err() {
                    self.metrics.error("replay");
                }
            }
        }
        result.map(|_| ())
    }

    /// The batch through `settle_sums.lua` (the caller has summed its writes): `None` when
    /// that script cannot take it (tags, a sum too large) or found an entry applied before,
    /// having changed nothing; the batch then goes through `settle.lua`.
    async fn apply_sums<'a>(&self, entries: impl Iterator<Item = (&'a Tag, &'a Entry)>) -> Option<RedisResult<(i64, String)>> {
        let mut sent = Vec::new();
        let inv = {
            let mut expiries = self.expiries.lock();
            scripts::settle_sums(&self.keys, entries, &self.apply, |k, at| needs(&mut expiries, &mut sent, k, at))?
        };
        let mut c = self.conn.clone();
        let reply = inv.run::<Vec<redis::Value>>(&self.scripts.settle_sums, &mut c).await;
        let reply = match reply {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let int = |v: Option<&redis::Value>| v.and_then(|v| i64::from_redis_value_ref(v).ok());
        match int(reply.first()) {
            Some(1) => {
                let failed = reply.get(1).and_then(|v| String::from_redis_value_ref(v).ok()).unwrap_or_default();
                if failed.is_empty() {
                    self.confirm(&sent);
                }
                Some(Ok((1, failed)))
            }
            Some(0) => {
                // Nothing was written, the expiries sent included.
                self.expiries.lock().forget();
                None
            }
            _ => Some(Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply from settle_sums.lua",
            )))),
        }
    }

    /// The expiries a successful call carried are set.
    fn confirm(&self, sent: &[(String, i64)]) {
        if !sent.is_empty() {
            let mut expiries = self.expiries.lock();
            for (key, at) in sent {
                expiries.confirm(key, *at);
            }
        }
    }
}

/// Asks the memo whether `key`'s expiry must be sent, noting the ones that are.
pub(super) fn needs(expiries: &mut Expiries, sent: &mut Vec<(String, i64)>, key: &str, at: i64) -> bool {
    let needed = expiries.needs(key, at);
    if needed {
        sent.push((key.to_string(), at));
    }
    needed
}
