//! The one place store calls are timed and counted: a wrapper around any [`Store`] that
//! records every call's latency in `spendgate_store_duration_seconds{op}` and every failed
//! call in `spendgate_store_errors_total{op}`. Backends count only what no caller sees: work
//! of their own (a journal replay, script loading) and failures they absorb (a Redis call
//! that timed out but was journaled).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use prometheus::{Histogram, HistogramVec, IntCounterVec};

use crate::domain::Scope;
use crate::quota::ledger::{CounterKey, History, ReserveOutcome, ReserveRequest, Settlement, Store, StoreError, Totals};

/// The calls timed, in the order of [`Timed::durations`].
const OPS: [&str; 10] = [
    "reserve",
    "settle",
    "read",
    "history",
    "tenants",
    "tenant_totals",
    "bind",
    "claim_alert",
    "flush",
    "ping",
];

/// A store whose calls are timed and counted.
pub struct Timed {
    inner: Arc<dyn Store>,
    errors: IntCounterVec,
    duration: HistogramVec,
    /// Each op's histogram, resolved from its label on first use: a request makes two calls,
    /// and a lookup by label string hashes and locks each time.
    durations: [OnceLock<Histogram>; OPS.len()],
}

impl Timed {
    pub fn new(inner: Arc<dyn Store>, errors: IntCounterVec, duration: HistogramVec) -> Self {
        Self {
            inner,
            errors,
            duration,
            durations: Default::default(),
        }
    }

    /// `op`'s histogram (looked up by label for an op missing from [`OPS`]).
    fn observe(&self, op: &'static str, seconds: f64) {
        match OPS.iter().position(|o| *o == op) {
            Some(i) => self.durations[i].get_or_init(|| self.duration.with_label_values(&[op])).observe(seconds),
            None => self.duration.with_label_values(&[op]).observe(seconds),
        }
    }

    async fn call<T>(&self, op: &'static str, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let mut record = Record {
            timed: self,
            op,
            started: Instant::now(),
            failed: true,
        };
        let result = fut.await;
        record.failed = result.is_err();
        result
    }
}

/// Records one call when it ends, also when its caller gives up on it (a timeout drops the
/// call: counted as failed).
struct Record<'a> {
    timed: &'a Timed,
    op: &'static str,
    started: Instant,
    failed: bool,
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        let t = self.timed;
        t.observe(self.op, self.started.elapsed().as_secs_f64());
        if self.failed {
            t.errors.with_label_values(&[self.op]).inc();
        }
    }
}

#[async_trait]
impl Store for Timed {
    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        self.call("reserve", self.inner.reserve(req)).await
    }

    async fn settle(&self, s: &Settlement) -> Result<(), StoreError> {
        self.call("settle", self.inner.settle(s)).await
    }

    async fn read(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        self.call("read", self.inner.read(keys)).await
    }

    async fn history(&self, scope: Scope, tenant: &str, days: &[String], recent: usize) -> Result<History, StoreError> {
        self.call("history", self.inner.history(scope, tenant, days, recent)).await
    }

    async fn tenants(&self, scope: Scope) -> Result<Vec<String>, StoreError> {
        self.call("tenants", self.inner.tenants(scope)).await
    }

    async fn tenant_totals(&self, scope: Scope, periods: &[String]) -> Result<HashMap<String, Totals>, StoreError> {
        self.call("tenant_totals", self.inner.tenant_totals(scope, periods)).await
    }

    async fn bind_org(&self, profile: &str, org: Option<&str>) -> Result<Option<String>, StoreError> {
        self.call("bind", self.inner.bind_org(profile, org)).await
    }

    async fn settle_owned(&self, s: Settlement) -> Result<(), StoreError> {
        self.call("settle", self.inner.settle_owned(s)).await
    }

    fn reserve_now(&self, req: &ReserveRequest) -> Option<Result<ReserveOutcome, StoreError>> {
        let started = Instant::now();
        let result = self.inner.reserve_now(req)?;
        self.observe("reserve", started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors.with_label_values(&["reserve"]).inc();
        }
        Some(result)
    }

    fn settle_now(&self, s: Settlement) -> Option<Settlement> {
        // Synchronous: nothing can give up on it half-way, so no guard is needed.
        let started = Instant::now();
        let result = self.inner.settle_now(s);
        // A settlement handed back is timed (and its failure counted) by the awaited call
        // that follows.
        if result.is_none() {
            self.observe("settle", started.elapsed().as_secs_f64());
        }
        result
    }

    fn keeps_open_calls(&self) -> bool {
        self.inner.keeps_open_calls()
    }

    fn reserves_unwatched(&self) -> bool {
        self.inner.reserves_unwatched()
    }

    async fn claim_alert(&self, key: &str, expires: chrono::DateTime<chrono::Utc>) -> Result<bool, StoreError> {
        self.call("claim_alert", self.inner.claim_alert(key, expires)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", self.inner.ping()).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.call("flush", self.inner.flush()).await
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// A store whose awaited reservations fail and whose reads never answer; with `at_once`,
    /// it reserves and settles at once (counting what it settled), otherwise it never does.
    #[derive(Default)]
    struct Broken {
        at_once: bool,
        settled: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Store for Broken {
        async fn reserve(&self, _: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
            Err(StoreError::Saturated("full".into()))
        }
        fn reserve_now(&self, _: &ReserveRequest) -> Option<Result<ReserveOutcome, StoreError>> {
            self.at_once.then(|| Ok(ReserveOutcome::Admitted { before: Vec::new() }))
        }
        async fn settle(&self, _: &Settlement) -> Result<(), StoreError> {
            Ok(())
        }
        fn settle_now(&self, s: Settlement) -> Option<Settlement> {
            if !self.at_once {
                return Some(s);
            }
            self.settled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
        async fn read(&self, _: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
            std::future::pending().await
        }
        async fn history(&self, _: Scope, _: &str, _: &[String], _: usize) -> Result<History, StoreError> {
            Ok(History::default())
        }
        async fn tenants(&self, _: Scope) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
        async fn bind_org(&self, _: &str, org: Option<&str>) -> Result<Option<String>, StoreError> {
            Ok(org.map(str::to_string))
        }
        async fn claim_alert(&self, _: &str, _: chrono::DateTime<chrono::Utc>) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn keeps_open_calls(&self) -> bool {
            true
        }
        fn reserves_unwatched(&self) -> bool {
            false
        }
        fn name(&self) -> &'static str {
            "broken"
        }
    }

    fn settlement() -> Settlement {
        let now = chrono::Utc::now();
        Settlement {
            deltas: Vec::new(),
            record: crate::quota::ledger::UsageRecord {
                at: now,
                day: "2026-11-30".into(),
                profile: "p".into(),
                org: None,
                provider: "openai".into(),
                model: "m".into(),
                path: "/v1/chat/completions".into(),
                status: 200,
                tags: Vec::new(),
                totals: Totals::default(),
                reason: None,
            },
            id: "id-1".into(),
            expires: crate::quota::ledger::Expiry::all(now),
        }
    }

    /// Reserving and settling at once go through the wrapper, timed; a store that cannot
    /// hands the call back untimed (the awaited call that follows is timed instead).
    #[test]
    fn reserving_and_settling_at_once_pass_through_and_are_timed() {
        let m = Metrics::new(&crate::config::MetricsConfig::default());
        let inner = Arc::new(Broken {
            at_once: true,
            ..Broken::default()
        });
        let store = Timed::new(inner.clone(), m.store_errors.clone(), m.store_duration.clone());
        assert!(store.settle_now(settlement()).is_none());
        assert_eq!(inner.settled.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(m.store_duration.with_label_values(&["settle"]).get_sample_count(), 1);
        let waits = Timed::new(Arc::new(Broken::default()), m.store_errors.clone(), m.store_duration.clone());
        assert!(waits.settle_now(settlement()).is_some(), "handed back");
        assert_eq!(m.store_duration.with_label_values(&["settle"]).get_sample_count(), 1);
        // Reserving at once, likewise.
        let req = ReserveRequest {
            ops: Vec::new().into(),
            expires: crate::quota::ledger::Expiry::all(chrono::Utc::now()),
            call: None,
        };
        assert!(matches!(store.reserve_now(&req), Some(Ok(ReserveOutcome::Admitted { .. }))));
        assert_eq!(m.store_duration.with_label_values(&["reserve"]).get_sample_count(), 1);
        assert!(waits.reserve_now(&req).is_none());
        assert_eq!(m.store_duration.with_label_values(&["reserve"]).get_sample_count(), 1);
    }

    /// The wrapper answers what the store it wraps answers about itself.
    #[test]
    fn the_store_s_own_answers_pass_through() {
        let m = Metrics::new(&crate::config::MetricsConfig::default());
        let store = Timed::new(Arc::new(Broken::default()), m.store_errors.clone(), m.store_duration.clone());
        assert!(store.keeps_open_calls());
        assert!(!store.reserves_unwatched());
        assert_eq!(store.name(), "broken");
    }

    #[tokio::test]
    async fn every_call_is_timed_and_each_failure_counted_once() {
        let m = Metrics::new(&crate::config::MetricsConfig::default());
        let store = Timed::new(Arc::new(Broken::default()), m.store_errors.clone(), m.store_duration.clone());
        let req = ReserveRequest {
            ops: Vec::new().into(),
            expires: crate::quota::ledger::Expiry::all(chrono::Utc::now()),
            call: None,
        };
        assert!(store.reserve(&req).await.is_err());
        assert_eq!(m.store_errors.with_label_values(&["reserve"]).get(), 1);
        store.ping().await.unwrap();
        assert_eq!(m.store_errors.with_label_values(&["ping"]).get(), 0);
        assert_eq!(m.store_duration.with_label_values(&["ping"]).get_sample_count(), 1);
        // A caller that gives up on a call (a timeout) still has it counted, as failed.
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(10), store.read(&[])).await;
        assert!(gave_up.is_err());
        assert_eq!(m.store_errors.with_label_values(&["read"]).get(), 1);
        assert_eq!(m.store_duration.with_label_values(&["read"]).get_sample_count(), 1);
        // Handles resolved once still count into the same series.
        for _ in 0..3 {
            store.ping().await.unwrap();
        }
        assert_eq!(m.store_duration.with_label_values(&["ping"]).get_sample_count(), 4);
    }
}
