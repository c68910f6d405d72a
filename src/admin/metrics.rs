//! `GET /metrics`. The quota gauges are read from the store at scrape time, so they show the
//! shared counters as they are (whichever replica counted them), follow window roll-overs and
//! reloaded maxima, and cover limits with a `match` as well.
//!
//! They are kept for tenants with a label of their own (`metrics.tenant_labels`, capped by
//! `metrics.max_tenants`): those that sent traffic to this process and those named in the
//! config. Folding several tenants into `other` would make a ratio meaningless.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Response, StatusCode};

use super::{respond, AdminBody};
use crate::app::App;
use crate::domain::window::Window;
use crate::domain::{Metric, Scope};
use crate::metrics::QuotaGauge;
use crate::usage::limit_statuses_many;

/// A scrape never waits longer than this for the store (the gauges keep their last values).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn render(app: &App) -> Response<AdminBody> {
    let gauges = quota_gauges(app).await;
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        app.metrics.render_with_quota(gauges.as_deref()),
    )
}

/// The current quota gauges, or `None` when the store cannot be read (the previous values
/// stay; the store counts the failure in `store_errors_total{op="read"}`).
async fn quota_gauges(app: &App) -> Option<Vec<QuotaGauge>> {
    let runtime = app.runtime();
    if !runtime.config.metrics.tenant_labels {
        return Some(Vec::new());
    }
    for scope in [Scope::Profile, Scope::Org] {
        for id in runtime.limits.named(scope) {
            app.metrics.note_quota_tenant(scope, id);
        }
    }
    let tenants = app.metrics.quota_tenants();
    let read = limit_statuses_many(app, &runtime, &tenants, app.clock.now());
    let statuses = match tokio::time::timeout(REFRESH_TIMEOUT, read).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "quota gauges not refreshed");
            return None;
        }
        Err(_) => {
            tracing::debug!("quota gauges not refreshed: the store did not answer in time");
            return None;
        }
    };
    let mut best: BTreeMap<(&str, Scope, Metric, Window), (f64, f64)> = BTreeMap::new();
    for ((scope, id), limits) in tenants.iter().zip(&statuses) {
        for s in limits.iter().filter(|s| s.limit.enabled) {
            let entry = best.entry((id.as_str(), *scope, s.limit.metric, s.limit.window)).or_insert((f64::MIN, 0.0));
            if s.ratio() > entry.0 {
                *entry = (s.ratio(), s.limit.alert_at);
            }
        }
    }
    Some(
        best.into_iter()
            .map(|((tenant, scope, metric, window), (ratio, alert_at))| QuotaGauge {
                tenant: tenant.to_string(),
                scope,
                metric,
                window,
                ratio,
                alert_at,
            })
            .collect(),
    )
}
