//! Threshold signals: when a limit's counter reaches one of its `alert_at` thresholds (one
//! fraction or several, `[0.5, 0.8, 0.95]`), log it and, if `alerts.webhook_url` is set, POST
//! an event there, once per limit, threshold and window across every replica; while it stays
//! past its lowest threshold, every admitted request carries an `X-Spendgate-Warning` header;
//! and a `shadow` limit that would have refused a request is counted in
//! `spendgate_shadow_refusals_total`.
//!
//! The counter compared is the one enforcement uses: at admission it includes this request's
//! reservation (and those of requests in flight); at settlement, the real usage. "Once" holds
//! across replicas and restarts: the first replica to see a threshold crossed claims it in the
//! store (`Store::claim_alert`, a `SET NX` on Redis) and only that claim fires; each process
//! also remembers what it saw, so a threshold costs the store one call per process and window.
//! The claim runs in a background task, never on the request path. When the store cannot be
//! reached, the alert fires anyway (a repeat is better than a missed alert). The embedded
//! memory store keeps its claims in memory: after a restart an alert may fire once more. Changing a
//! limit's max makes its thresholds new ones.
//!
//! The webhook is delivered by a background task fed through a bounded queue: a slow or
//! failing webhook never delays a proxied request (events beyond the queue are dropped and
//! counted). Each event is tried `1 + alerts.retries` times, each attempt bounded by
//! `alerts.timeout`, with exponential backoff between attempts.
//!
//! The body (`alerts.format: json`, the default):
//!
//! ```json
//! {"type": "quota_alert", "tenant": "p-123", "scope": "profile",
//!  "limit": {"metric": "cost_usd", "window": "monthly", "max": 10.0, "alert_at": 0.8,
//!            "thresholds": [0.5, 0.8], "mode": "enforce"},
//!  "current": 8.1, "max": 10.0, "ratio": 0.81, "alert_at": 0.8, "thresholds": [0.5, 0.8],
//!  "unit": "usd", "resets_at": "2026-12-01T00:00:00Z", "at": "2026-11-22T10:00:00.000Z"}
//! ```
//!
//! `alert_at` is the threshold crossed; `limit.match` describes a limit's `match`. With
//! `alerts.format: slack` the body is a Slack incoming-webhook message (also accepted by
//! Mattermost, Rocket.Chat and others): `{"text": "spendgate: profile p-123 reached 81% of its
//! monthly cost limit ($8.10 of $10.00; alert at 80%), resets 2026-12-01T00:00:00Z"}`.
//!
//! The warning header names the limit and its ratio after this request's reservation:
//! `X-Spendgate-Warning: <metric> <window> <scope> <tenant> at <ratio>`, e.g.
//! `cost_usd monthly profile p-123 at 0.85`, with ` (<match>)` appended for a limit with a
//! `match`, e.g. `requests daily org acme at 0.90 (provider gemini, model imagen-*)`. When
//! several limits are past their lowest threshold, the one with the highest ratio is named.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{header, HeaderValue, Method, Request};
use http_body_util::{Either, Full};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::task::TaskTracker;

use crate::config::{AlertFormat, AlertsConfig};
use crate::domain::window::Window;
use crate::domain::{Mode, Scope};
use crate::metrics::Metrics;
use crate::quota::ledger::Store;
use crate::quota::{Amounts, Check, Plan};
use prometheus::IntCounterVec;

/// Events waiting for delivery; past this, new events are dropped (and counted).
const QUEUE: usize = 1024;
/// Webhook deliveries in progress at once.
const PARALLEL_DELIVERIES: usize = 4;
/// Windows remembered as alerted; a safety bound far above any real fleet's live windows.
const MAX_REMEMBERED: usize = 100_000;
/// First retry delay; doubled on each further attempt, capped at [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One threshold of one limit in one window of one tenant, as configured when it fired.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Fired {
    scope: Scope,
    tenant: Arc<str>,
    window: Window,
    field: Arc<str>,
    resets_at: i64,
    max: i64,
    threshold_bits: u64,
}

impl Fired {
    /// The key claimed in the store, shared by every replica.
    fn store_key(&self, threshold: f64) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}:{threshold}",
            self.scope.tag(),
            self.tenant,
            self.window.as_str(),
            self.field,
            self.resets_at,
            self.max
        )
    }
}

/// A webhook delivery.
#[derive(Debug, Clone)]
pub struct Event {
    pub body: serde_json::Value,
    url: String,
    timeout: Duration,
    retries: u32,
}

pub struct Alerts {
    /// Thresholds already seen crossed by this process -> when their window resets (entries
    /// are dropped after that).
    fired: Mutex<HashMap<Fired, DateTime<Utc>>>,
    /// Claims each alert once across replicas.
    store: Arc<dyn Store>,
    /// The claims in flight (the process's settlement tracker: waiting for settlements also
    /// waits for the alerts they fired).
    tasks: TaskTracker,
    tx: mpsc::Sender<Event>,
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
}

fn ratio(value: i64, max: i64) -> f64 {
    value as f64 / max as f64
}

impl Alerts {
    pub fn new(store: Arc<dyn Store>, tasks: TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            fired: Mutex::new(HashMap::new()),
            store,
            tasks,
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// True the first time this process sees this threshold of this window crossed.
    fn first_time(&self, key: &Fired, resets_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let mut fired = self.fired.lock();
        if fired.contains_key(key) {
            return false;
        }
        if fired.len() >= MAX_REMEMBERED {
            fired.retain(|_, resets_at| *resets_at > now);
            if fired.len() >= MAX_REMEMBERED {
                tracing::warn!("too many alerted windows remembered; forgetting them (the store still claims each alert once)");
                fired.clear();
            }
        }
        fired.insert(key.clone(), resets_at);
        true
    }

    /// Fires the alert of every threshold of `check` that `value` reached and that has not
    /// fired in this window yet (claimed in the store in the background).
    pub fn observe(&self, metrics: &Metrics, cfg: &AlertsConfig, check: &Check, value: i64, now: DateTime<Utc>) {
        let limit = &check.limit;
        if !limit.enabled || ratio(value, limit.max) < limit.alert_at {
            return;
        }
        let r = ratio(value, limit.max);
        for &threshold in limit.thresholds.iter().filter(|t| r >= **t) {
            let key = Fired {
                scope: check.scope,
                tenant: check.tenant.clone(),
                window: limit.window,
                field: limit.field(),
                resets_at: check.resets_at.timestamp(),
                max: limit.max,
                threshold_bits: threshold.to_bits(),
            };
            if !self.first_time(&key, check.resets_at, now) {
                continue;
            }
            if tokio::runtime::Handle::try_current().is_err() {
                continue;
            }
            let store_key = key.store_key(threshold);
            let event = cfg.webhook_url.as_ref().map(|url| Event {
                body: match cfg.format {
                    AlertFormat::Json => json_body(check, value, threshold, now),
                    AlertFormat::Slack => slack_body(check, value, threshold),
                },
                url: url.clone(),
                timeout: cfg.timeout.0,
                retries: cfg.retries,
            });
            let (store, counter, tx) = (self.store.clone(), metrics.alerts.clone(), self.tx.clone());
            let (scope, tenant, metric, window) = (check.scope, check.tenant.clone(), limit.metric, limit.window);
            let (current, max) = (limit.metric.display(value), limit.metric.display(limit.max));
            // Kept until an hour past the window: no replica alerts for it after that.
            let expires = check.resets_at + chrono::Duration::hours(1);
            self.tasks.spawn(async move {
                let first = match store.claim_alert(&store_key, expires).await {
                    Ok(first) => first,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim an alert in the store; firing it from this replica");
                        true
                    }
                };
                if !first {
                    return;
                }
                counter.with_label_values(&["fired"]).inc();
                tracing::warn!(
                    %scope, %tenant, %metric, %window, current, max, ratio = r, alert_at = threshold,
                    "quota alert: a limit reached an alert threshold"
                );
                if let Some(event) = event {
                    if tx.try_send(event).is_err() {
                        counter.with_label_values(&["dropped"]).inc();
                        tracing::error!(%tenant, "alert webhook queue is full; event dropped");
                    }
                }
            });
        }
    }

    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Event>> {
        self.rx.lock().take()
    }
}

/// The `json` webhook body (documented in the module docs).
fn json_body(check: &Check, value: i64, threshold: f64, now: DateTime<Utc>) -> serde_json::Value {
    let limit = &check.limit;
    let thresholds: Vec<f64> = limit.thresholds.to_vec();
    let mut limit_json = json!({
        "metric": limit.metric.as_str(),
        "window": limit.window.as_str(),
        "max": limit.metric.display(limit.max),
        "alert_at": threshold,
        "thresholds": thresholds,
        "mode": match limit.mode { Mode::Enforce => "enforce", Mode::Shadow => "shadow" },
    });
    if let Some(m) = &limit.matcher {
        limit_json["match"] = json!(m.describe());
    }
    json!({
        "type": "quota_alert",
        "tenant": check.tenant,
        "scope": check.scope.as_str(),
        "limit": limit_json,
        "current": limit.metric.display(value),
        "max": limit.metric.display(limit.max),
        "ratio": ratio(value, limit.max),
        "alert_at": threshold,
        "thresholds": thresholds,
        "unit": limit.metric.unit(),
        "resets_at": check.resets_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "at": now.to_rfc3339_opts(SecondsFormat::Millis, true),
    })
}

/// The `slack` webhook body: one line of text.
fn slack_body(check: &Check, value: i64, threshold: f64) -> serde_json::Value {
    let limit = &check.limit;
    let filter = limit.matcher.as_ref().map(|m| format!(" ({})", m.describe())).unwrap_or_default();
    let mode = if limit.mode == Mode::Shadow { " shadow" } else { "" };
    let text = format!(
        "spendgate: {} {} reached {:.0}% of its {}{mode} {} limit{filter} ({} of {}; alert at {:.0}%), resets {}",
        check.scope,
        check.tenant,
        ratio(value, limit.max) * 100.0,
        limit.window.as_str(),
        limit.metric.noun(),
        limit.metric.describe(value),
        limit.metric.describe(limit.max),
        threshold * 100.0,
        check.resets_at.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    json!({ "text": text })
}

/// After a request is admitted (`before` = the counters before its reservation): fires the
/// alerts of limits now past their threshold, counts shadow refusals, and returns the
/// `X-Spendgate-Warning` value for the limit with the highest ratio past its threshold.
pub fn on_admitted(alerts: &Alerts, m: &Metrics, cfg: &AlertsConfig, plan: &Plan, before: &[i64], now: DateTime<Utc>) -> Option<HeaderValue> {
    let mut warn: Option<(f64, &Check)> = None;
    for (i, after) in plan.values_after(before) {
        let check = &plan.checks[i];
        let limit = &check.limit;
        if !limit.enabled {
            continue;
        }
        let current = before.get(check.op).copied().unwrap_or(0);
        if limit.mode == Mode::Shadow && plan.ops[check.op].amount > 0 && current >= limit.max {
            m.shadow_refusals
                .with_label_values(&[&m.tenant(&check.tenant), check.scope.as_str(), limit.metric.as_str(), limit.window.as_str()])
                .inc();
            tracing::debug!(tenant = %check.tenant, scope = %check.scope, "shadow limit would refuse: {}", limit.refusal_message(check.scope, &check.tenant, current));
        }
        let r = ratio(after, limit.max);
        if r >= limit.alert_at {
            alerts.observe(m, cfg, check, after, now);
            if warn.is_none_or(|(best, _)| r > best) {
                warn = Some((r, check));
            }
        }
    }
    let (r, check) = warn?;
    let base = format!("{} {} {} {} at {r:.2}", check.limit.metric, check.limit.window, check.scope, check.tenant);
    let with_match = check.limit.matcher.as_ref().map(|mt| format!("{base} ({})", mt.describe()));
    with_match
        .and_then(|v| HeaderValue::from_str(&v).ok())
        .or_else(|| HeaderValue::from_str(&base).ok())
}

/// After a request is settled: the real usage may push a limit past its threshold where the
/// estimate did not.
pub fn on_settled(alerts: &Alerts, m: &Metrics, cfg: &AlertsConfig, plan: &Plan, before: &[i64], actual: &Amounts, now: DateTime<Utc>) {
    for check in &plan.checks {
        let value = before.get(check.op).copied().unwrap_or(0) + actual.get(check.limit.metric);
        alerts.observe(m, cfg, check, value, now);
    }
}

/// Delivers the webhook events of `rx` until shutdown, counting each outcome in `counter`
/// (`spendgate_alerts_total`).
pub async fn deliver(mut rx: mpsc::Receiver<Event>, counter: IntCounterVec, mut shutdown: watch::Receiver<bool>) {
    use crate::upstream::client::{build, ClientOptions};
    let client = build(ClientOptions::public(Duration::from_secs(10))).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "alert webhooks are sent directly, not through the environment's proxy");
        build(ClientOptions {
            proxy: &crate::config::EgressProxy::Direct,
            ..ClientOptions::public(Duration::from_secs(10))
        })
        .expect("a direct client with the built-in roots always builds")
    });
    let slots = Arc::new(Semaphore::new(PARALLEL_DELIVERIES));
    loop {
        let event = tokio::select! {
            _ = crate::process::stopped(&mut shutdown) => break,
            e = rx.recv() => match e { Some(e) => e, None => break },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let (client, counter) = (client.clone(), counter.clone());
        tokio::spawn(async move {
            let outcome = send(&client, &event).await;
            match outcome {
                Ok(()) => counter.with_label_values(&["sent"]).inc(),
                Err(e) => {
                    counter.with_label_values(&["failed"]).inc();
                    tracing::error!(error = %e, url = %event.url, "alert webhook delivery failed");
                }
            }
            drop(slot);
        });
    }
}

fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

async fn send(client: &crate::upstream::client::UpstreamClient, event: &Event) -> Result<(), String> {
    let body = Bytes::from(serde_json::to_vec(&event.body).map_err(|e| e.to_string())?);
    let mut last = String::new();
    for attempt in 0..=event.retries {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let req = Request::builder()
            .method(Method::POST)
            .uri(&event.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("spendgate/", env!("CARGO_PKG_VERSION")))
            .body(Either::Right(Full::new(body.clone())))
            .map_err(|e| format!("bad webhook request: {e}"))?;
        match tokio::time::timeout(event.timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => return Ok(()),
            Ok(Ok(resp)) => {
                let s = resp.status();
                last = format!("the webhook answered {s}");
                // Other client errors will not change on a retry.
                if s.is_client_error() && s != http::StatusCode::REQUEST_TIMEOUT && s != http::StatusCode::TOO_MANY_REQUESTS {
                    break;
                }
            }
            Ok(Err(e)) => last = format!("cannot reach the webhook: {e}"),
            Err(_) => last = format!("the webhook did not answer within {:?}", event.timeout),
        }
        tracing::debug!(attempt, error = %last, "alert webhook attempt failed");
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
