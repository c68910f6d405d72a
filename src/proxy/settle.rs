//! Settling a request once its response has ended: price the real usage, replace the
//! reservation with it in the store, and record it in the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::app::{App, Runtime};
use crate::providers::{BodyEnd, Call, Settled, Source, Usage};
use crate::quota::{Amounts, Plan};
use crate::store::{Settlement, Totals, UsageRecord};
use crate::tenant::Tenant;

use super::route::Route;

/// Everything needed to settle one admitted request.
pub struct Settler {
    pub app: Arc<App>,
    pub runtime: Arc<Runtime>,
    pub route: Arc<Route>,
    pub tenant: Tenant,
    pub call: Call,
    pub path: String,
    pub status: u16,
    pub plan: Plan,
    /// Counter values before this request (None when the store could not be reached).
    pub before: Option<Vec<i64>>,
    pub estimate: Usage,
    pub upstream_started: Instant,
    /// Time the proxy itself has spent on this request so far (upstream time excluded).
    pub overhead: Duration,
}

/// Process-unique settlement ids (with the process start time, unique across restarts).
fn next_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let boot = BOOT.get_or_init(|| format!("{:x}-{:x}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0)));
    format!("{boot}-{:x}", SEQ.fetch_add(1, Ordering::Relaxed))
}

impl Settler {
    pub fn note_upstream_failure(&self, reason: &str) {
        self.app.metrics.upstream_failures.with_label_values(&[&self.route.name, reason]).inc();
    }

    /// Prices and records the outcome. Never blocks: the store write runs as a tracked task.
    pub fn settle(self, settled: Settled, end: BodyEnd) {
        let started = Instant::now();
        let app = &self.app;
        let m = &app.metrics;
        let model = self.call.model.clone().unwrap_or_else(|| "unknown".into());
        let model_label = m.model(&model);
        let provider = self.route.name.as_str();
        m.upstream_duration
            .with_label_values(&[provider])
            .observe(self.upstream_started.elapsed().as_secs_f64());

        let (usage, cost) = match settled.source {
            Source::Free | Source::UpstreamError => (Usage::default(), 0),
            _ => {
                let priced = self.runtime.prices.price(
                    provider,
                    self.route.kind,
                    &[settled.response_model.as_deref(), self.call.model.as_deref()],
                    &settled.usage,
                );
                if priced.unpriced {
                    m.unpriced.with_label_values(&[provider, &model_label]).inc();
                }
                (settled.usage, priced.nanos)
            }
        };
        if let Some(a) = settled.anomaly {
            m.usage_estimated.with_label_values(&[provider, a.as_str()]).inc();
            tracing::warn!(provider, model = %model, path = %self.path, reason = a.as_str(), end = ?end, "usage could not be read from the response; the estimate is charged");
        }
        let actual = Amounts::new(cost, &usage, 1);

        let tenant_label = m.tenant(&self.tenant.profile);
        let org_label = self.tenant.org.as_deref().map(|o| m.tenant(o)).unwrap_or_default();
        m.requests.with_label_values(&[provider, &model_label, &self.status.to_string()]).inc();
        if cost > 0 {
            m.cost_usd
                .with_label_values(&[&tenant_label, &org_label, provider, &model_label])
                .inc_by(crate::money::nanos_to_usd(cost));
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

        // Without a reservation (store unreachable when admitted) the whole amount is added.
        let mut plan = self.plan;
        if self.before.is_none() {
            plan.ops.iter_mut().for_each(|op| op.amount = 0);
        }
        let now = app.clock.now();
        if let Some(before) = &self.before {
            crate::alerts::on_settled(app, &self.runtime.config.alerts, &plan, before, &actual, now);
        }
        let settlement = Settlement {
            deltas: plan.deltas(&actual),
            record: UsageRecord {
                at: now,
                day: self.runtime.calendar.local_date(now).format("%Y-%m-%d").to_string(),
                profile: self.tenant.profile.clone(),
                org: self.tenant.org.clone(),
                provider: provider.to_string(),
                model,
                path: self.path.clone(),
                status: self.status,
                totals: Totals {
                    requests: 1,
                    cost_nanos: cost,
                    input_tokens: usage.input_total() as i64,
                    output_tokens: usage.output_total() as i64,
                    cached_tokens: usage.cached_input_tokens as i64,
                    characters: usage.characters as i64,
                },
            },
            id: next_id(),
            expire_daily: plan.expire_daily,
            expire_monthly: plan.expire_monthly,
        };
        m.overhead.observe((self.overhead + started.elapsed()).as_secs_f64());
        let store = app.store.clone();
        let app2 = self.app.clone();
        app.settlements.spawn(async move {
            let t = Instant::now();
            let result = store.settle(&settlement).await;
            app2.metrics.store_duration.with_label_values(&["settle"]).observe(t.elapsed().as_secs_f64());
            if let Err(e) = result {
                app2.metrics.store_errors.with_label_values(&["settle"]).inc();
                tracing::error!(error = %e, tenant = %settlement.record.profile, "could not record a settlement");
            }
        });
    }
}
