//! Settling an admitted request: price what it really used, replace the reservation with it
//! in the store, and record it in the metrics and the history.
//!
//! A [`Reservation`] is the guard of one admitted call: whatever ends the call (the response
//! body ends or fails, the upstream times out or fails, the client goes away before or after
//! the answer's head, the handler is dropped, the process stops) settles it exactly once.
//! What is charged (the one settle rule):
//!
//! - the usage the upstream reported, when it did;
//! - nothing when the upstream answered an error without usage, or when no connection to it
//!   was ever made;
//! - otherwise the call may have been billed without the proxy seeing the bill, so it is
//!   charged at least its reservation: for a body cut short, the larger of the usage seen so
//!   far and the reservation (field by field), and the reservation where nothing was seen.
//!
//! Every settlement carries a usage record; every one that charges an estimate is counted in
//! `spendgate_usage_estimated_total{provider,reason}`.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::app::{App, Runtime};
use crate::config::ProviderKind;
use crate::domain::window::Window;
use crate::providers::{Anomaly, BodyEnd, Call, Settled, Source, Usage};
use crate::quota::deferred::Deferred;
use crate::quota::ledger::{Settlement, Totals, UsageRecord};
use crate::quota::{Amounts, Plan};
use crate::tenant::Tenant;
use crate::upstream::route::Route;

/// Everything needed to settle one admitted request.
pub struct Settler {
    /// The call's id: its reservation's and its settlement's.
    pub id: String,
    pub app: Arc<App>,
    pub runtime: Arc<Runtime>,
    pub route: Arc<Route>,
    /// The price table the call is priced from (the route's, or its wire family's).
    pub prices: ProviderKind,
    pub tenant: Tenant,
    /// The request's attribution tags (`tenant.tag_header`).
    pub tags: Vec<String>,
    pub call: Call,
    /// The upstream path (the request path past the route's prefix).
    pub path: String,
    pub status: u16,
    pub plan: Plan,
    /// Counter values before this request (None when the store could not be reached).
    pub before: Option<Vec<i64>>,
    pub estimate: Usage,
    /// A fixed charge per call (an unmetered endpoint with `unmetered: {charge_usd}`), in
    /// nano-dollars, instead of a price.
    pub fixed_cost: Option<i64>,
    pub upstream_started: Instant,
    /// Time the proxy itself has spent on this request so far (upstream time excluded).
    pub overhead: Duration,
    /// The id under which a later answer reports this call's final usage (set by the meter
    /// from [`crate::providers::UsageExtractor::later`]).
    pub later: Option<String>,
}

/// Process-unique call and settlement ids (with the process start time, unique across
/// restarts).
pub fn next_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let boot = BOOT.get_or_init(|| format!("{:x}-{:x}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0)));
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    // `{boot}-{seq:x}`, without the formatting machinery: this runs for every call.
    let mut id = String::with_capacity(boot.len() + 17);
    id.push_str(boot);
    id.push('-');
    push_hex(&mut id, seq);
    id
}

/// `n` in lowercase hexadecimal, as `{:x}` writes it.
fn push_hex(s: &mut String, n: u64) {
    let digits = (64 - (n | 1).leading_zeros()).div_ceil(4);
    for k in (0..digits).rev() {
        s.push(char::from(b"0123456789abcdef"[((n >> (4 * k)) & 0xf) as usize]));
    }
}

/// The guard of an admitted call: settles it exactly once, on drop at the latest. The settler
/// is boxed: the guard travels from the admit phase through the forward phase into the
/// response body, and a pointer moves where several hundred bytes would be copied each time.
pub struct Reservation(Option<Box<Settler>>);

impl Reservation {
    pub fn new(settler: Settler) -> Self {
        Self(Some(Box::new(settler)))
    }

    pub fn settler(&self) -> &Settler {
        self.0.as_ref().expect("a reservation is settled only once")
    }

    pub fn settler_mut(&mut self) -> &mut Settler {
        self.0.as_mut().expect("a reservation is settled only once")
    }

    /// Settles with an outcome read from the response (or known without one).
    pub fn settle(mut self, settled: Settled, end: BodyEnd) {
        if let Some(s) = self.0.take() {
            s.settle(settled, end);
        }
    }

    /// Settles a call whose answer never came although the request may have reached the
    /// provider: the reservation is charged.
    pub fn settle_unanswered(self, why: Anomaly) {
        let estimate = self.settler().estimate.clone();
        self.settle(Settled::estimated(&estimate, why), BodyEnd::Cut);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            // Dropped before the answer's head: the client went away (or the process is
            // stopping); the request may already be with the provider.
            let why = if s.app.stopping.is_cancelled() {
                Anomaly::Shutdown
            } else {
                Anomaly::ClientGone
            };
            let estimate = s.estimate.clone();
            s.settle(Settled::estimated(&estimate, why), BodyEnd::Cut);
        }
    }
}

impl Settler {
    pub fn note_upstream_failure(&self, reason: &str) {
        self.app.metrics.upstream_failures.with_label_values(&[&self.route.name, reason]).inc();
    }

    /// What is charged for an outcome (see the module docs): the usage and its cost.
    fn charge_for(&self, settled: &Settled, end: BodyEnd, model: Option<&str>) -> (Usage, i64, bool) {
        if let Some(fixed) = self.fixed_cost {
            // An unmetered endpoint with a fixed charge: every call that reached the provider
            // and was not answered with an error pays it.
            let cost = if settled.source == Source::UpstreamError { 0 } else { fixed };
            return (Usage::default(), cost, false);
        }
        let charged = match settled.source {
            Source::Free | Source::UpstreamError => return (Usage::default(), 0, false),
            Source::Reported => settled.usage.clone(),
            // A cut body or an unanswered call may have been billed in full.
            Source::Partial | Source::Estimated if end == BodyEnd::Cut => settled.usage.max_with(&self.estimate),
            Source::Partial | Source::Estimated => settled.usage.clone(),
        };
        let priced = self
            .runtime
            .prices
            .price(&self.route.name, self.prices, &[settled.response_model.as_deref(), model], &charged);
        (charged, priced.nanos, priced.unpriced)
    }

    /// Prices and records the outcome. Never blocks: the store write runs as a tracked task.
    fn settle(self, settled: Settled, end: BodyEnd) {
        let started = Instant::now();
        self.route
            .upstream_duration(&self.app.metrics.upstream_duration)
            .observe(self.upstream_started.elapsed().as_secs_f64());

        if !self.call.metered && self.fixed_cost.is_none() {
            // A free call; its answer may carry the final usage of a call billed later.
            if let (Some(id), Source::Reported) = (&self.call.settles, settled.source) {
                self.correct_deferred(id, &settled);
            }
            return self.record(Settled::free(), end, started);
        }
        self.record(settled, end, started);
    }

    /// Replaces the reservation a deferred call was charged with its reported usage.
    fn correct_deferred(&self, id: &str, settled: &Settled) {
        let Some(d) = self.app.deferred.take(&self.route.name, id) else { return };
        let priced = self.runtime.prices.price(
            &self.route.name,
            d.prices,
            &[settled.response_model.as_deref(), d.model.as_deref()],
            &settled.usage,
        );
        let actual = Amounts::new(priced.nanos, &settled.usage, 1);
        let now = self.app.clock.now();
        let usage = &settled.usage;
        let settlement = Settlement {
            deltas: d.plan.deltas(&actual),
            // The history gets the difference; the call itself was recorded when it settled.
            record: UsageRecord {
                at: now,
                day: self.runtime.calendar.bucket(Window::Daily, now).id,
                profile: d.tenant.profile.clone(),
                org: d.tenant.org.clone(),
                provider: self.route.name.clone(),
                model: d.model.clone().unwrap_or_else(|| "unknown".into()),
                path: d.path.clone(),
                status: 200,
                tags: d.tags.clone(),
                totals: Totals {
                    requests: 0,
                    cost_nanos: actual.cost_nanos - d.charged.cost_nanos,
                    input_tokens: usage.input_total() as i64 - d.charged_usage.input_total() as i64,
                    output_tokens: usage.output_total() as i64 - d.charged_usage.output_total() as i64,
                    cached_tokens: usage.cached_input_tokens as i64 - d.charged_usage.cached_input_tokens as i64,
                    characters: 0,
                },
                reason: Some("adjustment".into()),
            },
            id: next_id(),
            expires: d.plan.expires,
        };
        tracing::info!(provider = %self.route.name, id = %super::reply::loggable(id), charged = d.charged.cost_nanos, reported = actual.cost_nanos, "a call billed later settles to its reported usage");
        spawn_store(&self.app, settlement);
    }

    /// Records an outcome: metrics, counters, history.
    fn record(mut self, settled: Settled, end: BodyEnd, started: Instant) {
        // The settler ends here: its strings move into the usage record instead of being
        // copied.
        let model = self.call.model.take();
        let (id, path, tags) = (std::mem::take(&mut self.id), std::mem::take(&mut self.path), std::mem::take(&mut self.tags));
        let tenant = Tenant {
            profile: std::mem::take(&mut self.tenant.profile),
            org: self.tenant.org.take(),
        };
        let app = &self.app;
        let m = &app.metrics;
        let provider: &str = &self.route.name;
        let (usage, cost, unpriced) = self.charge_for(&settled, end, model.as_deref());
        let model_label = super::reply::model_label(app, &self.runtime, &self.route.name, self.prices, model.as_deref());
        if unpriced {
            m.unpriced.with_label_values(&[provider, &model_label]).inc();
        }
        if let Some(a) = settled.anomaly {
            m.usage_estimated.with_label_values(&[provider, a.as_str()]).inc();
            let path = super::reply::loggable(&path);
            match a {
                // The client or the process ended the call: expected, and charged as documented.
                Anomaly::ClientGone | Anomaly::Shutdown => {
                    tracing::info!(provider, model = %model_label, %path, reason = a.as_str(), "the call ended before its answer; the reservation is charged")
                }
                _ => {
                    tracing::warn!(provider, model = %model_label, %path, reason = a.as_str(), end = ?end, "usage could not be read from the response; the reservation is charged")
                }
            }
        }
        let actual = Amounts::new(cost, &usage, 1);

        let tenant_label = m.tenant(&tenant.profile);
        let org_label = tenant.org.as_deref().map(|o| m.tenant(o)).unwrap_or_default();
        let mut status = itoa::Buffer::new();
        m.requests.with_label_values(&[provider, &model_label, status.format(self.status)]).inc();
        if cost > 0 {
            m.cost_usd
                .with_label_values(&[&tenant_label, &org_label, provider, &model_label])
                .inc_by(crate::domain::money::nanos_to_usd(cost));
        }
        for (kind, n) in [
            ("input", usage.input_total() - usage.cached_input_tokens),
            ("output", usage.output_total()),
            ("cached", usage.cached_input_tokens),
        ] {
            if n > 0 {
                m.tokens.with_label_values(&[&tenant_label, provider, &model_label, kind]).inc_by(n);
            }
        }
        if usage.characters > 0 {
            m.characters
                .with_label_values(&[&tenant_label, provider, &model_label])
                .inc_by(usage.characters);
        }

        m.note_tags(&tags, cost);

        // Without a reservation (store unreachable when admitted) the whole amount is added.
        let mut plan = self.plan;
        if self.before.is_none() {
            plan.set_amounts(|_, _| 0);
        }
        let now = app.clock.now();
        if let Some(before) = &self.before {
            crate::alerts::on_settled(&app.alerts, &app.metrics, &self.runtime.config.alerts, &plan, before, &actual, now);
        }
        if let Some(id) = self.later.clone() {
            let mut charged_plan = plan.clone();
            charged_plan.set_amounts(|_, metric| actual.get(metric));
            app.deferred.insert(
                provider,
                id,
                Deferred {
                    tenant: tenant.clone(),
                    plan: charged_plan,
                    charged: actual,
                    charged_usage: usage.clone(),
                    prices: self.prices,
                    model: model.clone(),
                    path: path.clone(),
                    tags: tags.clone(),
                },
            );
        }
        let settlement = Settlement {
            deltas: plan.deltas(&actual),
            record: UsageRecord {
                at: now,
                day: self.runtime.calendar.bucket(Window::Daily, now).id,
                profile: tenant.profile,
                org: tenant.org,
                provider: self.route.name.clone(),
                model: model.unwrap_or_else(|| "unknown".into()),
                path,
                status: self.status,
                tags,
                totals: Totals {
                    requests: 1,
                    cost_nanos: cost,
                    input_tokens: usage.input_total() as i64,
                    output_tokens: usage.output_total() as i64,
                    cached_tokens: usage.cached_input_tokens as i64,
                    characters: usage.characters as i64,
                },
                reason: settled.anomaly.map(|a| a.as_str().to_string()),
            },
            id,
            expires: plan.expires,
        };
        m.overhead.observe((self.overhead + started.elapsed()).as_secs_f64());
        spawn_store(&self.app, settlement);
    }
}

/// Writes a settlement to the store without blocking the caller: a store that settles at
/// once (the embedded one) does so here; one that has to wait (Redis) goes on as a tracked
/// task. A task per settlement, and the wake-up of another worker thread it costs, is saved
/// where nothing needs to wait.
fn spawn_store(app: &Arc<App>, settlement: Settlement) {
    // Settled at once, or handed back to be awaited.
    let Some(settlement) = app.store.settle_now(settlement) else { return };
    let store = app.store.clone();
    let mut write = Box::pin(async move {
        let tenant = settlement.record.profile.clone();
        if let Err(e) = store.settle_owned(settlement).await {
            tracing::error!(error = %e, %tenant, "could not record a settlement");
        }
    });
    // A future may be polled with any waker: the task's first poll registers its own, and
    // sees whatever became ready meanwhile.
    let mut cx = Context::from_waker(Waker::noop());
    if write.as_mut().poll(&mut cx).is_pending() {
        app.settlements.spawn(write);
    }
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn hex_digits_are_written_as_the_formatter_writes_them() {
        for n in [0, 1, 9, 10, 15, 16, 255, 256, 0xdead_beef, u64::MAX >> 4, u64::MAX] {
            let mut s = String::new();
            super::push_hex(&mut s, n);
            assert_eq!(s, format!("{n:x}"));
        }
        let (a, b) = (super::next_id(), super::next_id());
        assert_ne!(a, b);
        assert_eq!(a.rsplit_once('-').unwrap().0, b.rsplit_once('-').unwrap().0, "one process, one prefix");
    }
}
