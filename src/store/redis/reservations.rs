//! Reservations of concurrent requests share one script call.
//!
//! A reservation joins a queue. The first to find the queue empty starts a task that first
//! lets the other ready tasks run (so that the reservations of requests arriving together
//! join), then sends everything queued as one `reserve.lua` call per hash slot, without
//! waiting for any call in flight: a reservation never waits behind another round trip, and
//! its request still makes exactly one round trip. At low load a batch is one reservation;
//! under load tens share one `EVALSHA`, and what the script does once per batch (the id
//! hash's expiry, the call itself) is no longer paid per request.
//!
//! The script applies a batch's reservations one after the other, each exactly as it would
//! alone (check, then reserve), so concurrent requests are admitted in the same order and
//! to the same count as one call each. Every reservation keeps its own id: when a batch
//! fails for another reason than a connection problem (Redis refused one of its keys), its
//! reservations are sent again one by one, and those the failed call had applied answer
//! "already applied".

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use redis::{RedisError, RedisResult, Value};
use tokio::sync::oneshot;

use super::batch::needs;
use super::conn::Conn;
use super::outage::{copy_error, is_connection_problem};
use super::scripts::{self, ReserveCall};
use super::Inner;
use crate::quota::ledger::ReserveOutcome;

/// Most reservations one script call applies.
const MAX_BATCH: usize = 64;

/// What a reservation learns from Redis (`None`: its id was already applied).
pub(super) type Reply = RedisResult<Option<ReserveOutcome>>;

struct Pending {
    slot: u16,
    call: ReserveCall,
    done: oneshot::Sender<Reply>,
}

/// The reservations waiting to be sent.
#[derive(Default)]
pub(super) struct Reservations {
    queue: Mutex<Vec<Pending>>,
}

impl Inner {
    /// Sends `call` (whose keys are in hash slot `slot`) with the reservations queued
    /// alongside it, and returns its reply.
    pub(super) async fn reserve_call(self: &Arc<Self>, slot: u16, call: ReserveCall) -> Reply {
        let (done, reply) = oneshot::channel();
        let lead = {
            let mut queue = self.reservations.queue.lock();
            queue.push(Pending { slot, call, done });
            queue.len() == 1
        };
        if lead {
            // A task of its own, so that a request that goes away does not strand the
            // reservations that joined it.
            let inner = self.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                let batch = std::mem::take(&mut *inner.reservations.queue.lock());
                inner.send_reservations(batch).await;
            });
        }
        reply
            .await
            .unwrap_or_else(|_| Err(RedisError::from((redis::ErrorKind::Client, "the store closed"))))
    }

    /// Sends a drained queue: one call per slot (and per [`MAX_BATCH`]), the last in this
    /// task and the others each in a task of its own.
    async fn send_reservations(self: &Arc<Self>, batch: Vec<Pending>) {
        let cluster = matches!(self.conn, Conn::Cluster(_));
        let mut slots: BTreeMap<u16, Vec<Pending>> = BTreeMap::new();
        for p in batch {
            slots.entry(if cluster { p.slot } else { 0 }).or_default().push(p);
        }
        let mut chunks = Vec::new();
        for mut group in slots.into_values() {
            while !group.is_empty() {
                let rest = group.split_off(group.len().min(MAX_BATCH));
                chunks.push(std::mem::replace(&mut group, rest));
            }
        }
        let Some(last) = chunks.pop() else { return };
        for chunk in chunks {
            let inner = self.clone();
            tokio::spawn(async move { inner.send_chunk(chunk).await });
        }
        self.send_chunk(last).await;
    }

    async fn send_chunk(&self, chunk: Vec<Pending>) {
        match self.run_reserve(&chunk).await {
            Err(e) if chunk.len() > 1 && !is_connection_problem(&e) => {
                tracing::warn!(error = %e, reservations = chunk.len(), "Redis refused a batch of reservations; sending them one by one");
                for p in chunk {
                    let reply = match self.run_reserve(std::slice::from_ref(&p)).await {
                        Ok(mut r) => r.pop().unwrap_or(Ok(None)),
                        Err(e) => Err(e),
                    };
                    let _ = p.done.send(reply);
                }
            }
            Ok(replies) => {
                for (p, r) in chunk.into_iter().zip(replies) {
                    let _ = p.done.send(r);
                }
            }
            Err(e) => {
                for p in chunk {
                    let _ = p.done.send(Err(copy_error(&e)));
                }
            }
        }
    }

    /// One `reserve.lua` call. The id hashes whose expiry it carried are confirmed when a
    /// reservation wrote its id in them (the hash exists); the others are sent again by the
    /// next call. A call that fails makes the store forget them all.
    async fn run_reserve(&self, chunk: &[Pending]) -> RedisResult<Vec<Reply>> {
        let mut sent: Vec<(String, i64)> = Vec::new();
        let inv = {
            let mut expiries = self.expiries.lock();
            scripts::reserve(chunk.iter().map(|p| &p.call), |k, at| needs(&mut expiries, &mut sent, k, at))
        };
        let mut c = self.conn.clone();
        let replies = match inv.run::<Value>(&self.scripts.reserve, &mut c).await {
            Ok(v) => scripts::reserve_replies(v, chunk.len()),
            Err(e) => Err(e),
        };
        match &replies {
            Ok(replies) if !sent.is_empty() => {
                let mut expiries = self.expiries.lock();
                for (p, r) in chunk.iter().zip(replies) {
                    let written = matches!(r, Ok(None) | Ok(Some(ReserveOutcome::Admitted { .. })));
                    if let Some((key, at)) = sent.iter().find(|(k, _)| *k == p.call.calls_key) {
                        if written {
                            expiries.confirm(key, *at);
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(_) => self.expiries.lock().forget(),
        }
        replies
    }
}
