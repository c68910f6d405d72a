//! Prometheus metrics (prefix `spendgate_`), on a registry owned by the process state so
//! that several proxies in one test process do not share series.

use std::collections::{BTreeSet, HashSet};

use parking_lot::Mutex;
use prometheus::{CounterVec, GaugeVec};
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::config::MetricsConfig;
use crate::domain::window::Window;
use crate::domain::{Metric, Scope};

/// Caps the distinct values of a label; past the cap values fold into `other`.
pub struct LabelCap {
    enabled: bool,
    max: usize,
    /// Looked up on every request: a fast hasher (the set is bounded by `max`).
    seen: Mutex<HashSet<String, foldhash::fast::RandomState>>,
}

impl LabelCap {
    pub fn new(enabled: bool, max: usize) -> Self {
        Self {
            enabled,
            max,
            seen: Mutex::new(HashSet::default()),
        }
    }

    /// The label value to use for `value`: itself while under the cap, `other` past it, and
    /// the empty string (no label) when switched off.
    pub fn label(&self, value: &str) -> String {
        if !self.enabled {
            return String::new();
        }
        self.own(value).unwrap_or_else(|| "other".to_string())
    }

    /// `Some(value)` when `value` has (or now gets) a label of its own.
    pub fn own(&self, value: &str) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let mut seen = self.seen.lock();
        if seen.contains(value) {
            return Some(value.to_string());
        }
        if seen.len() < self.max {
            seen.insert(value.to_string());
            return Some(value.to_string());
        }
        None
    }

    /// True when `value` already has a label of its own.
    pub fn has(&self, value: &str) -> bool {
        self.enabled && self.seen.lock().contains(value)
    }

    pub fn reconfigure(&mut self, enabled: bool, max: usize) {
        self.enabled = enabled;
        self.max = max;
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub cost_usd: CounterVec,
    pub tokens: IntCounterVec,
    pub characters: IntCounterVec,
    pub quota_rejections: IntCounterVec,
    pub shadow_refusals: IntCounterVec,
    pub store_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub unpriced: IntCounterVec,
    pub usage_estimated: IntCounterVec,
    pub unmetered: IntCounterVec,
    pub upstream_failures: IntCounterVec,
    pub quota_usage_ratio: GaugeVec,
    pub quota_alert_threshold: GaugeVec,
    pub alerts: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub overhead: Histogram,
    pub store_duration: HistogramVec,
    /// Spend and calls per attribution tag (only with `metrics.tag_labels`).
    pub tag_cost_usd: CounterVec,
    pub tag_requests: IntCounterVec,
    pub tenants: Mutex<LabelCap>,
    pub models: LabelCap,
    pub tags: Mutex<LabelCap>,
    /// Tenants with their own label whose limits the quota gauges report.
    /// Per scope (profiles, orgs).
    quota_tenants: Mutex<[BTreeSet<String>; 2]>,
    /// Held while the quota gauges are replaced and the registry is encoded, so a scrape
    /// never sees a half-replaced set.
    render_lock: Mutex<()>,
}

/// One series of the quota gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaGauge {
    pub tenant: String,
    pub scope: Scope,
    pub metric: Metric,
    pub window: Window,
    pub ratio: f64,
    pub alert_at: f64,
}

/// Most distinct model names labelled; models come from requests, so they are capped.
const MAX_MODEL_LABELS: usize = 500;

impl Metrics {
    pub fn new(cfg: &MetricsConfig) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(format!("spendgate_{name}"), help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let requests = counter(
            "requests_total",
            "Requests forwarded upstream, by upstream status (or the proxy's own answer).",
            &["provider", "model", "status"],
        );
        let tokens = counter("tokens_total", "Tokens billed, by kind.", &["tenant", "provider", "model", "kind"]);
        let characters = counter("characters_total", "Characters billed.", &["tenant", "provider", "model"]);
        let quota_rejections = counter(
            "quota_rejections_total",
            "Requests refused because a limit was used up (402 for a daily or monthly limit, 429 for a minute or hour limit).",
            &["tenant", "scope", "metric", "window"],
        );
        let shadow_refusals = counter(
            "shadow_refusals_total",
            "Requests a shadow-mode limit would have refused.",
            &["tenant", "scope", "metric", "window"],
        );
        let store_errors = counter("store_errors_total", "Store calls that failed or timed out.", &["op"]);
        let config_reloads = counter("config_reloads_total", "Configuration reloads.", &["result"]);
        let unpriced = counter(
            "unpriced_total",
            "Responses for models without a price (the unpriced policy applied).",
            &["provider", "model"],
        );
        let usage_estimated = counter(
            "usage_estimated_total",
            "Responses whose usage could not be read and were charged the estimate.",
            &["provider", "reason"],
        );
        let unmetered = counter(
            "unmetered_total",
            "Calls to endpoints the proxy cannot meter, forwarded because `unmetered` allows them.",
            &["provider"],
        );
        let alerts = counter(
            "alerts_total",
            "Quota alerts: fired (a limit crossed its alert_at, once per window), and webhook deliveries sent, failed or dropped.",
            &["result"],
        );
        let upstream_failures = counter(
            "upstream_failures_total",
            "Upstream connections or bodies that failed.",
            &["provider", "reason"],
        );
        let cost_usd = CounterVec::new(
            Opts::new("spendgate_cost_usd_total", "Cost charged, in US dollars."),
            &["tenant", "org", "provider", "model"],
        )
        .expect("valid metric");
        registry.register(Box::new(cost_usd.clone())).expect("metric registered once");
        let quota_usage_ratio = GaugeVec::new(
            Opts::new(
                "spendgate_quota_usage_ratio",
                "Current value of a limit divided by its max (the highest such ratio among a tenant's enabled limits of that metric and window), read from the store at scrape time.",
            ),
            &["tenant", "scope", "metric", "window"],
        )
        .expect("valid metric");
        registry.register(Box::new(quota_usage_ratio.clone())).expect("metric registered once");
        let quota_alert_threshold = GaugeVec::new(
            Opts::new(
                "spendgate_quota_alert_threshold",
                "The alert_at of the limit reported by spendgate_quota_usage_ratio for the same labels.",
            ),
            &["tenant", "scope", "metric", "window"],
        )
        .expect("valid metric");
        registry.register(Box::new(quota_alert_threshold.clone())).expect("metric registered once");
        let latency_buckets = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "spendgate_upstream_duration_seconds",
                "Time from forwarding a request to the end of the upstream response.",
            )
            .buckets(latency_buckets),
            &["provider"],
        )
        .expect("valid metric");
        registry.register(Box::new(upstream_duration.clone())).expect("metric registered once");
        let fine = vec![
            0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
        ];
        let overhead = Histogram::with_opts(
            HistogramOpts::new(
                "spendgate_overhead_seconds",
                "Time the proxy itself adds to a request (identification, quota, forwarding setup), excluding upstream time.",
            )
            .buckets(fine.clone()),
        )
        .expect("valid metric");
        registry.register(Box::new(overhead.clone())).expect("metric registered once");
        let store_duration = HistogramVec::new(
            HistogramOpts::new("spendgate_store_duration_seconds", "Store call latency.").buckets(fine),
            &["op"],
        )
        .expect("valid metric");
        registry.register(Box::new(store_duration.clone())).expect("metric registered once");
        let tag_requests = counter(
            "tag_requests_total",
            "Settled calls per attribution tag (metrics.tag_labels; a call with several tags counts under each).",
            &["tag"],
        );
        let tag_cost_usd = CounterVec::new(
            Opts::new(
                "spendgate_tag_cost_usd_total",
                "Cost in USD per attribution tag (metrics.tag_labels; a call with several tags counts under each).",
            ),
            &["tag"],
        )
        .expect("valid metric");
        registry.register(Box::new(tag_cost_usd.clone())).expect("metric registered once");
        let m = Self {
            registry,
            tag_cost_usd,
            tag_requests,
            requests,
            cost_usd,
            tokens,
            characters,
            quota_rejections,
            shadow_refusals,
            store_errors,
            config_reloads,
            unpriced,
            usage_estimated,
            unmetered,
            upstream_failures,
            quota_usage_ratio,
            quota_alert_threshold,
            alerts,
            upstream_duration,
            overhead,
            store_duration,
            tenants: Mutex::new(LabelCap::new(cfg.tenant_labels, cfg.max_tenants)),
            models: LabelCap::new(true, MAX_MODEL_LABELS),
            tags: Mutex::new(LabelCap::new(cfg.tag_labels, cfg.max_tags)),
            quota_tenants: Mutex::new([BTreeSet::new(), BTreeSet::new()]),
            render_lock: Mutex::new(()),
        };
        // Series that alert rules watch exist from the start, at zero.
        for result in ["success", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for op in ["reserve", "settle", "flush", "read", "history", "bind"] {
            m.store_errors.with_label_values(&[op]);
        }
        for result in ["fired", "sent", "failed", "dropped"] {
            m.alerts.with_label_values(&[result]);
        }
        m
    }

    /// The name of every metric family this process exports.
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 20] = [
            &self.requests,
            &self.tag_requests,
            &self.tag_cost_usd,
            &self.cost_usd,
            &self.tokens,
            &self.characters,
            &self.quota_rejections,
            &self.shadow_refusals,
            &self.store_errors,
            &self.config_reloads,
            &self.unpriced,
            &self.usage_estimated,
            &self.unmetered,
            &self.upstream_failures,
            &self.quota_usage_ratio,
            &self.quota_alert_threshold,
            &self.alerts,
            &self.upstream_duration,
            &self.overhead,
            &self.store_duration,
        ];
        collectors.iter().flat_map(|c| c.desc()).map(|d| d.fq_name.clone()).collect()
    }

    /// Remembers a tenant for the quota gauges, if it has a label of its own.
    pub fn note_quota_tenant(&self, scope: Scope, id: &str) {
        let i = usize::from(scope == Scope::Org);
        if self.quota_tenants.lock()[i].contains(id) {
            return;
        }
        if self.tenants.lock().own(id).is_some() {
            self.quota_tenants.lock()[i].insert(id.to_string());
        }
    }

    /// The tenants the quota gauges report.
    pub fn quota_tenants(&self) -> Vec<(Scope, String)> {
        let sets = self.quota_tenants.lock();
        let profiles = sets[0].iter().map(|t| (Scope::Profile, t.clone()));
        profiles.chain(sets[1].iter().map(|t| (Scope::Org, t.clone()))).collect()
    }

    /// The label for a tenant id (capped or switched off per config).
    pub fn tenant(&self, id: &str) -> String {
        self.tenants.lock().label(id)
    }

    /// Counts a settled call under each of its tags, when `metrics.tag_labels` is on.
    pub fn note_tags(&self, tags: &[String], cost_nanos: i64) {
        if tags.is_empty() {
            return;
        }
        let caps = self.tags.lock();
        for tag in tags {
            let label = caps.label(tag);
            if label.is_empty() {
                return;
            }
            self.tag_requests.with_label_values(&[&label]).inc();
            if cost_nanos > 0 {
                self.tag_cost_usd
                    .with_label_values(&[&label])
                    .inc_by(crate::domain::money::nanos_to_usd(cost_nanos));
            }
        }
    }

    /// The label for a model name (capped).
    pub fn model(&self, model: &str) -> String {
        self.models.label(model)
    }

    /// Applies a reloaded `metrics:` section.
    pub fn reconfigure(&self, cfg: &MetricsConfig) {
        self.tenants.lock().reconfigure(cfg.tenant_labels, cfg.max_tenants);
        self.tags.lock().reconfigure(cfg.tag_labels, cfg.max_tags);
    }

    /// The text exposition format, with the quota gauges replaced by `quota` first (kept as
    /// they were when `None`, e.g. when the store could not be read).
    pub fn render_with_quota(&self, quota: Option<&[QuotaGauge]>) -> Vec<u8> {
        let _guard = self.render_lock.lock();
        if let Some(gauges) = quota {
            self.quota_usage_ratio.reset();
            self.quota_alert_threshold.reset();
            for g in gauges {
                let labels = [g.tenant.as_str(), g.scope.as_str(), g.metric.as_str(), g.window.as_str()];
                self.quota_usage_ratio.with_label_values(&labels).set(g.ratio);
                self.quota_alert_threshold.with_label_values(&labels).set(g.alert_at);
            }
        }
        self.render()
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_cap_folds_into_other() {
        let c = LabelCap::new(true, 2);
        assert_eq!(c.label("a"), "a");
        assert_eq!(c.label("b"), "b");
        assert_eq!(c.label("c"), "other");
        assert_eq!(c.label("a"), "a");
        assert_eq!(LabelCap::new(false, 2).label("a"), "");
    }

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new(&MetricsConfig::default());
        m.requests.with_label_values(&["gemini", "m", "200"]).inc();
        m.overhead.observe(0.0001);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("spendgate_requests_total{model=\"m\",provider=\"gemini\",status=\"200\"} 1"));
        assert!(text.contains("spendgate_overhead_seconds_bucket"));
    }
}
