//! The request path: identify the tenant and the route, check and reserve quota (or refuse),
//! forward, and hand the response back wrapped in the meter that settles it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::SecondsFormat;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;

use super::headers::remove_hop_by_hop;
use super::metered_body::{settle_now, Meter, MeteredBody};
use super::reply::{self, ProxyBody};
use super::route::Route;
use super::settle::Settler;
use crate::app::{App, Runtime};
use crate::config::{OnError, Unpriced};
use crate::providers::{Call, Estimate, FixedCost, RequestInfo, Settled, Source, Usage};
use crate::quota::limit::{CallKey, Scope};
use crate::quota::{Amounts, Plan};
use crate::store::{ReserveOutcome, StoreError};
use crate::tenant;

/// Handles one data-plane request. `fixed_route` is set on a provider's dedicated listener.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, fixed_route: Option<Arc<Route>>) -> Response<ProxyBody> {
    let started = Instant::now();
    let runtime = app.runtime();
    let path = req.uri().path().to_string();
    let (route, upstream_path) = match &fixed_route {
        Some(r) => (r.clone(), path.clone()),
        None => match runtime.route_for(&path) {
            Some((r, rest)) => (r.clone(), rest.to_string()),
            None => return reply::error(StatusCode::NOT_FOUND, "route_not_found", &format!("no provider is mounted at {path}")),
        },
    };
    // The proxy's own answers are counted in requests_total like upstream ones.
    let own = |model: Option<&str>, status: StatusCode, kind: &str, message: &str| {
        let m = &app.metrics;
        m.requests
            .with_label_values(&[&route.name, &m.model(model.unwrap_or("unknown")), status.as_str()])
            .inc();
        reply::error(status, kind, message)
    };
    let tenant = match tenant::identify(req.headers(), &runtime.config.tenant) {
        Ok(t) => t,
        Err(e) => return own(None, StatusCode::BAD_REQUEST, e.kind(), &e.to_string()),
    };

    let (mut parts, body) = req.into_parts();
    let query = parts.uri.query().map(str::to_string);
    let mut call = route.provider.classify(&RequestInfo {
        method: &parts.method,
        path: &upstream_path,
        query: query.as_deref(),
        headers: &parts.headers,
    });

    // Metered calls whose estimate needs the body have it buffered (bounded); everything
    // else streams through untouched.
    let mut body = Either::Left(body);
    let mut estimate = Estimate::default();
    if call.metered {
        let mut buffered = Bytes::new();
        if call.needs_body {
            let Either::Left(incoming) = body else {
                unreachable!("the body is still the client's")
            };
            match Limited::new(incoming, runtime.config.server.max_request_body).collect().await {
                Ok(collected) => buffered = collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return own(
                        call.model.as_deref(),
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request_too_large",
                        &format!(
                            "the request body exceeds server.max_request_body ({} bytes)",
                            runtime.config.server.max_request_body
                        ),
                    );
                }
                Err(e) => {
                    return own(
                        call.model.as_deref(),
                        StatusCode::BAD_REQUEST,
                        "request_body_error",
                        &format!("could not read the request body: {e}"),
                    )
                }
            }
            body = Either::Right(Full::new(buffered.clone()));
            // The body is already read: the upstream gets it whole, with no handshake.
            parts.headers.remove(header::EXPECT);
        }
        let info = RequestInfo {
            method: &parts.method,
            path: &upstream_path,
            query: query.as_deref(),
            headers: &parts.headers,
        };
        estimate = match crate::providers::estimate_call(&*route.provider, &mut call, &info, &buffered, &runtime.config.reserve) {
            Ok(e) => e,
            Err(crate::providers::Refusal::InvalidBody(m)) => return own(None, StatusCode::BAD_REQUEST, "invalid_request_body", &m),
            Err(crate::providers::Refusal::NotMetered(m)) => return own(None, StatusCode::FORBIDDEN, "endpoint_not_metered", &m),
        };
        if let Some(new_body) = estimate.body.take() {
            body = Either::Right(Full::new(new_body));
        }
    }

    let call_key = CallKey {
        provider: &route.name,
        kind: route.kind,
        model: call.model.as_deref(),
        path: &upstream_path,
    };
    let cost_estimate = if call.metered {
        if runtime.prices.policy() == Unpriced::Reject && !runtime.prices.is_priced(&route.name, route.kind, call.model.as_deref()) {
            let model = call.model.as_deref().unwrap_or("unknown");
            return own(
                call.model.as_deref(),
                StatusCode::PAYMENT_REQUIRED,
                "model_unpriced",
                &format!("model {model} of provider {} has no price and `unpriced: reject` is set", route.name),
            );
        }
        runtime.prices.price(&route.name, route.kind, &[call.model.as_deref()], &estimate.usage).nanos
    } else {
        0
    };
    let amounts = Amounts::new(cost_estimate, &estimate.usage, 1);
    let now = app.clock.now();
    let plan = Plan::new(&runtime.limits, &runtime.calendar, runtime.retention, &tenant, &call_key, &amounts, now);

    let store_started = Instant::now();
    let outcome = app.store.reserve(&plan.reserve_request()).await;
    app.metrics
        .store_duration
        .with_label_values(&["reserve"])
        .observe(store_started.elapsed().as_secs_f64());
    app.metrics.note_quota_tenant(Scope::Profile, &tenant.profile);
    if let Some(org) = &tenant.org {
        app.metrics.note_quota_tenant(Scope::Org, org);
    }
    let before = match outcome {
        Ok(ReserveOutcome::Admitted { before }) => Some(before),
        Ok(ReserveOutcome::Refused { index, current }) => {
            let refusal = plan.refusal(index, current);
            let m = &app.metrics;
            m.quota_rejections
                .with_label_values(&[
                    &m.tenant(&refusal.tenant),
                    refusal.scope.as_str(),
                    refusal.limit.metric.as_str(),
                    refusal.limit.window.as_str(),
                ])
                .inc();
            m.requests
                .with_label_values(&[&route.name, &m.model(call.model.as_deref().unwrap_or("unknown")), "402"])
                .inc();
            tracing::info!(tenant = %refusal.tenant, scope = %refusal.scope, metric = %refusal.limit.metric, window = %refusal.limit.window, "refused: {}", refusal.message());
            let mut r = reply::json_response(StatusCode::PAYMENT_REQUIRED, &refusal.body());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(refusal.retry_after(now)));
            app.metrics.overhead.observe(started.elapsed().as_secs_f64());
            return r;
        }
        Err(e) => {
            app.metrics.store_errors.with_label_values(&["reserve"]).inc();
            // A saturated store cannot count what it would forward: refuse even when open.
            let on_error = if matches!(e, StoreError::Saturated(_)) {
                OnError::Closed
            } else {
                runtime.config.store.on_error
            };
            match on_error {
                OnError::Closed => {
                    tracing::error!(error = %e, "quota store unavailable; refusing (on_error: closed)");
                    let mut r = own(
                        call.model.as_deref(),
                        StatusCode::SERVICE_UNAVAILABLE,
                        "quota_store_unavailable",
                        &format!("the quota store is unavailable: {e}"),
                    );
                    r.headers_mut().insert("x-should-retry", HeaderValue::from_static("false"));
                    return r;
                }
                OnError::Open => {
                    tracing::warn!(error = %e, "quota store unavailable; forwarding (on_error: open)");
                    None
                }
            }
        }
    };

    // Forward.
    let uri = match route.upstream_uri(&upstream_path, route.upstream_query(query.as_deref()).as_deref()) {
        Ok(u) => u,
        Err(e) => {
            return own(
                call.model.as_deref(),
                StatusCode::BAD_REQUEST,
                "bad_path",
                &format!("cannot build the upstream URL: {e}"),
            )
        }
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    prepare_upstream_headers(&mut parts.headers, &runtime, &route);
    if let Either::Right(full) = &body {
        let len = http_body::Body::size_hint(full).exact().unwrap_or(0);
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let warning = before
        .as_ref()
        .and_then(|b| crate::alerts::on_admitted(&app, &runtime.config.alerts, &plan, b, now));
    let remaining = before.as_ref().and_then(|b| plan.tightest(b)).map(|(i, rem)| {
        let c = &plan.checks[i];
        (c.limit.metric, rem, c.resets_at)
    });
    let mut settler = Settler {
        app: app.clone(),
        runtime: runtime.clone(),
        route: route.clone(),
        tenant,
        call: call.clone(),
        path: upstream_path,
        status: 0,
        plan,
        before,
        estimate: estimate.usage.clone(),
        upstream_started: Instant::now(),
        overhead: std::time::Duration::ZERO,
    };
    // Time spent here before forwarding; the time after the upstream's answer, the meter's
    // work on the body and the settlement are added later (the upstream's time is not).
    settler.overhead = started.elapsed();
    let upstream_req = Request::from_parts(parts, body);
    let response = tokio::time::timeout(route.read_idle, route.client.request(upstream_req)).await;
    let after_upstream = Instant::now();
    let response = match response {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(provider = %route.name, error = %e, "upstream request failed");
            settler.note_upstream_failure("connect");
            settler.status = 502;
            settle_now(settler, Settled::upstream_error());
            return reply::error(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                &format!("provider {} could not be reached", route.name),
            );
        }
        Err(_) => {
            settler.note_upstream_failure("timeout");
            settler.status = 504;
            settle_now(settler, Settled::upstream_error());
            return reply::error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                &format!("provider {} did not answer within {:?}", route.name, route.read_idle),
            );
        }
    };

    let (mut parts, incoming) = response.into_parts();
    settler.status = parts.status.as_u16();
    remove_hop_by_hop(&mut parts.headers);
    if let Some((metric, rem, resets_at)) = remaining {
        let amount = if metric == crate::quota::limit::Metric::CostUsd {
            format!("{:.6}", crate::money::nanos_to_usd(rem.max(0)))
        } else {
            rem.max(0).to_string()
        };
        if let Ok(v) = HeaderValue::from_str(&format!("{amount} {}", metric.unit())) {
            parts.headers.insert("x-spendgate-remaining", v);
        }
        if let Ok(v) = HeaderValue::from_str(&resets_at.to_rfc3339_opts(SecondsFormat::Secs, true)) {
            parts.headers.insert("x-spendgate-reset", v);
        }
    }
    if let Some(w) = warning {
        parts.headers.insert("x-spendgate-warning", w);
    }
    let extractor = extractor_for(&call, &route, parts.status, &parts.headers, &estimate.usage);
    // A request rewritten to ask for more than the client did gets its response restored.
    let filter = if estimate.filter_response && parts.status.is_success() {
        route.provider.body_filter(&call, &parts.headers)
    } else {
        None
    };
    settler.overhead += after_upstream.elapsed();
    let meter = Meter::new(&mut parts.headers, extractor, filter, settler);
    let body = MeteredBody::new(incoming, route.read_idle, meter);
    Response::from_parts(parts, Either::Left(body))
}

/// The extractor for a response: free calls and errors cost nothing; successes are read.
fn extractor_for(call: &Call, route: &Route, status: StatusCode, headers: &http::HeaderMap, estimate: &Usage) -> Box<dyn crate::providers::UsageExtractor> {
    if !call.metered {
        return Box::new(FixedCost::new(Usage::default(), Source::Free));
    }
    if !status.is_success() {
        return Box::new(FixedCost::new(Usage::default(), Source::UpstreamError));
    }
    route.provider.extractor(call, status, headers, estimate)
}

/// The client's headers as they go upstream: no hop-by-hop headers, no tenant headers (when
/// configured), the configured key instead of the client's (when `api_key_env` is set), and
/// no Host: the client sets the upstream's (HTTP/1.1) or `:authority` (HTTP/2).
fn prepare_upstream_headers(headers: &mut http::HeaderMap, runtime: &Runtime, route: &Route) {
    remove_hop_by_hop(headers);
    let tenant_cfg = &runtime.config.tenant;
    if tenant_cfg.strip {
        headers.remove(tenant_cfg.profile_header.as_str());
        if let Some(h) = &tenant_cfg.org_header {
            headers.remove(h.as_str());
        }
    }
    headers.remove(header::HOST);
    route.set_credentials(headers);
}
