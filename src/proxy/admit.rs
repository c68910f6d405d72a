//! The admit phase: everything decided before a byte goes upstream. It answers the request
//! itself (refuses it) or hands [`Admitted`] to the forward phase with a [`Reservation`] that
//! settles the call whatever ends it.
//!
//! In order: find the route; refuse paths the provider could read differently from the proxy
//! (`non_canonical_path`); identify the tenant and the org its profile belongs to
//! (`tenant_conflict`); classify the call with the provider's endpoint table and apply the
//! `unmetered` policy to endpoints the proxy cannot charge (`endpoint_not_metered`); buffer
//! and strictly read the body of a metered call (`request_too_large`, `overloaded`,
//! `invalid_request_body`); estimate and price it (`model_unpriced`); and reserve it against
//! every matching limit atomically (`quota_exceeded`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use http::{header, request, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use super::reply::{self, Own, ProxyBody};
use super::settle::{Reservation, Settler};
use crate::app::{App, Runtime};
use crate::config::{OnError, Unmetered, Unpriced};
use crate::domain::{Metric, Scope};
use crate::process::BudgetShare;
use crate::providers::{self, Call, Estimate, Provider, Refusal, RequestInfo, Wire};
use crate::quota::ledger::{OpenCall, ReserveOutcome, StoreError, Totals, UsageRecord};
use crate::quota::limit::CallKey;
use crate::quota::{Amounts, Plan};
use crate::tenant::{self, Tenant};
use crate::upstream::client::UpstreamBody;
use crate::upstream::route::Route;

/// A call admitted and reserved, ready to be forwarded.
pub struct Admitted {
    pub route: Arc<Route>,
    /// The family whose wire format the call uses, when not the route's own.
    pub wire: Option<Wire>,
    pub call: Call,
    pub estimate: Estimate,
    /// The client's request head (rewritten for the upstream by the forward phase).
    pub parts: request::Parts,
    pub body: UpstreamBody,
    pub query: Option<String>,
    /// Settles the call exactly once.
    pub reservation: Reservation,
    /// The tightest limit's remaining amount after this call's reservation, and its reset.
    pub remaining: Option<(Metric, i64, DateTime<Utc>)>,
    /// The `RateLimit-Policy` and `RateLimit` headers (`super::ratelimit`).
    pub ratelimit: Option<(HeaderValue, HeaderValue)>,
    /// The `X-Spendgate-Warning` header, when a limit crossed its alert threshold.
    pub warning: Option<HeaderValue>,
    /// The share of the buffering budget the body holds (released once it is sent).
    pub buffered: Option<BudgetShare>,
}

impl Admitted {
    /// The provider family that reads this call.
    pub fn provider(&self) -> &dyn Provider {
        match &self.wire {
            Some(w) => w.provider,
            None => &*self.route.provider,
        }
    }
}

/// Admits a request, or answers it.
pub async fn admit(
    app: &Arc<App>,
    runtime: &Arc<Runtime>,
    req: Request<Incoming>,
    fixed_route: Option<Arc<Route>>,
    started: Instant,
) -> Result<Box<Admitted>, Response<ProxyBody>> {
    let path = req.uri().path();
    let (route, upstream_path) = match &fixed_route {
        Some(r) => (r.clone(), path.to_string()),
        None => match runtime.route_for(path) {
            Some((r, rest)) => (r.clone(), rest.to_string()),
            None => {
                let own = Own {
                    app,
                    provider: "unknown",
                    started,
                };
                return Err(own.error(
                    &app.metrics.model("unknown"),
                    StatusCode::NOT_FOUND,
                    "route_not_found",
                    &format!("no provider is mounted at {}", reply::loggable(path)),
                ));
            }
        },
    };
    let own = Own {
        app,
        provider: &route.name,
        started,
    };
    let unknown = || app.metrics.model("unknown");
    if let Err(why) = canonical(&upstream_path) {
        return Err(own.error(
            &unknown(),
            StatusCode::BAD_REQUEST,
            "non_canonical_path",
            &format!(
                "the path {} {why}; the proxy forwards only paths that every server reads the same way",
                reply::loggable(req.uri().path())
            ),
        ));
    }
    let tenant = tenant::identify(req.headers(), &runtime.config.tenant, &runtime.tenant_headers)
        .map_err(|e| own.error(&unknown(), StatusCode::BAD_REQUEST, e.kind(), &e.to_string()))?;
    let tags = tenant::tags(req.headers(), &runtime.config.tenant, &runtime.tenant_headers)
        .map_err(|m| own.error(&unknown(), StatusCode::BAD_REQUEST, "invalid_tag", &m))?;
    let tenant = org_of(app, runtime, tenant)
        .await
        .map_err(|(status, kind, msg)| own.error(&unknown(), status, kind, &msg))?;

    let (mut parts, incoming) = req.into_parts();
    let query = parts.uri.query().map(str::to_string);
    let head = RequestInfo {
        method: &parts.method,
        path: &upstream_path,
        query: query.as_deref(),
        headers: &parts.headers,
    };
    let wire = route.provider.wire_for(&head);
    let provider: &dyn Provider = wire.map_or(&*route.provider, |w| w.provider);
    let prices = wire.map_or(route.kind, |w| w.prices);
    let mut call = provider.classify(&head);
    if parts.headers.contains_key(header::UPGRADE) {
        call = Call::not_metered("websocket", "WebSocket sessions are not metered by the proxy");
    }
    let label = |call: &Call| reply::model_label(app, runtime, &route.name, prices, call.model.as_deref());
    if let Some(model) = &call.model {
        if let Err(Refusal::InvalidBody(m) | Refusal::NotMetered(m)) = providers::validate_model(model) {
            return Err(own.error(&unknown(), StatusCode::BAD_REQUEST, "invalid_request_body", &m));
        }
    }
    let unmetered = runtime.config.providers.get(&*route.name).map_or(Unmetered::Reject, |p| p.unmetered);
    let mut fixed_cost = None;
    if let Some(why) = call.unmetered {
        match unmetered {
            Unmetered::Reject => {
                return Err(own.error(
                    &label(&call),
                    StatusCode::FORBIDDEN,
                    "endpoint_not_metered",
                    &format!(
                        "{} {} is not metered by spendgate: {why}. Set providers.{}.unmetered to `allow` (or `{{charge_usd: <USD per call>}}`) to forward it anyway",
                        parts.method,
                        reply::loggable(&upstream_path),
                        route.name
                    ),
                ))
            }
            Unmetered::Allow => {}
            Unmetered::Charge(nanos) => fixed_cost = Some(nanos),
        }
        app.metrics.unmetered.with_label_values(&[&route.name]).inc();
    }

    // Metered calls whose estimate needs the body have it buffered (bounded, within the
    // process-wide budget); everything else streams through untouched.
    let mut body: UpstreamBody = Either::Left(incoming);
    let mut estimate = Estimate::default();
    let mut buffered = None;
    if call.metered {
        let mut bytes = Bytes::new();
        if call.needs_body {
            let Either::Left(incoming) = body else {
                unreachable!("the body is still the client's")
            };
            let (b, mut share) = read_body(app, runtime, incoming, &parts.headers)
                .await
                .map_err(|f| f.answer(&own, &label(&call)))?;
            // Parsed JSON takes about as much memory again as its text, until the estimate
            // is made: that is in the budget too.
            let parsed = if call.json_body { b.len() as u64 } else { 0 };
            if !share.grow(parsed) {
                let max = runtime.config.server.max_buffered_bytes;
                return Err(BodyFailure::Overloaded(max).answer(&own, &label(&call)));
            }
            bytes = b;
            buffered = Some((share, parsed));
            body = Either::Right(Full::new(bytes.clone()));
            // The body is already read: the upstream gets it whole, with no handshake.
            parts.headers.remove(header::EXPECT);
        }
        let head = RequestInfo {
            method: &parts.method,
            path: &upstream_path,
            query: query.as_deref(),
            headers: &parts.headers,
        };
        estimate = providers::estimate_call(provider, &mut call, &head, &bytes, &runtime.config.reserve).map_err(|r| match r {
            Refusal::InvalidBody(m) => own.error(&unknown(), StatusCode::BAD_REQUEST, "invalid_request_body", &m),
            Refusal::NotMetered(m) => own.error(&unknown(), StatusCode::FORBIDDEN, "endpoint_not_metered", &m),
        })?;
        if let Some(new_body) = estimate.body.take() {
            body = Either::Right(Full::new(new_body));
        }
    }
    // The parsed body is gone; the bytes stay in the budget until they are sent.
    let buffered = buffered.map(|(mut share, parsed)| {
        share.shrink(parsed);
        share
    });

    let cost = match (fixed_cost, call.metered) {
        (Some(nanos), _) => nanos,
        (None, true) => {
            if runtime.prices.policy() == Unpriced::Reject && !runtime.prices.is_priced(&route.name, prices, call.model.as_deref()) {
                let model = call.model.as_deref().map_or_else(|| "unknown".to_string(), reply::loggable);
                return Err(own.error(
                    &label(&call),
                    StatusCode::PAYMENT_REQUIRED,
                    "model_unpriced",
                    &format!("model {model} of provider {} has no price and `unpriced: reject` is set", route.name),
                ));
            }
            runtime.prices.price(&route.name, prices, &[call.model.as_deref()], &estimate.usage).nanos
        }
        (None, false) => 0,
    };
    let mut amounts = Amounts::new(cost, &estimate.usage, 1);
    if call.metered || fixed_cost.is_some() {
        // A paid call reserves at least one unit of every metric, so that a used-up cost,
        // token or character limit refuses it whatever its estimate; the settlement takes
        // the unit back.
        amounts.cost_nanos = amounts.cost_nanos.max(1);
        amounts.tokens = amounts.tokens.max(1);
        amounts.characters = amounts.characters.max(1);
    }

    let call_key = CallKey {
        provider: &route.name,
        kind: route.kind,
        model: call.model.as_deref(),
        path: &upstream_path,
        tags: &tags,
    };
    let now = app.clock.now();
    let mut plan = Plan::new(
        &runtime.limits,
        &app.control_cache.load(),
        &runtime.calendar,
        runtime.retention,
        &tenant,
        &call_key,
        &amounts,
        now,
    );
    if !app.store.reserves_unwatched() {
        plan.defer_unwatched();
    }
    let id = super::settle::next_id();
    let open = app.store.keeps_open_calls().then(|| OpenCall {
        id: id.clone(),
        record: UsageRecord {
            at: now,
            day: runtime.calendar.bucket(crate::domain::window::Window::Daily, now).id,
            profile: tenant.profile.clone(),
            org: tenant.org.clone(),
            provider: route.name.clone(),
            model: call.model.clone().unwrap_or_else(|| "unknown".into()),
            path: upstream_path.clone(),
            status: 0,
            tags: tags.clone(),
            totals: Totals {
                requests: 1,
                cost_nanos: amounts.cost_nanos,
                input_tokens: estimate.usage.input_total() as i64,
                output_tokens: estimate.usage.output_total() as i64,
                cached_tokens: estimate.usage.cached_input_tokens as i64,
                characters: estimate.usage.characters as i64,
            },
            reason: None,
        },
    });
    let before = reserve(app, runtime, &plan, &tenant, now, open).await.map_err(|r| own.send(&label(&call), r))?;

    let warning = before
        .as_ref()
        .and_then(|b| crate::alerts::on_admitted(&app.alerts, &app.metrics, &runtime.config.alerts, &plan, b, now));
    let remaining = before.as_ref().and_then(|b| plan.tightest(b)).map(|(i, rem)| {
        let c = &plan.checks[i];
        (c.limit.metric, rem, c.resets_at)
    });
    let ratelimit = before.as_ref().and_then(|b| super::ratelimit::headers(&plan, b, now));
    let reservation = Reservation::new(Settler {
        id,
        app: app.clone(),
        runtime: runtime.clone(),
        route: route.clone(),
        prices,
        tenant,
        tags,
        call: call.clone(),
        // The upstream path: the forward phase reads it from here.
        path: upstream_path,
        status: 0,
        plan,
        before,
        estimate: estimate.usage.clone(),
        fixed_cost,
        upstream_started: Instant::now(),
        // Time spent here before forwarding; the time after the upstream's answer, the
        // meter's work on the body and the settlement are added later.
        overhead: started.elapsed(),
        later: None,
    });
    // Boxed: the handler moves it from this phase into the forward phase.
    Ok(Box::new(Admitted {
        route,
        wire,
        call,
        estimate,
        parts,
        body,
        query,
        reservation,
        remaining,
        ratelimit,
        warning,
        buffered,
    }))
}

/// Longest upstream path accepted.
const MAX_PATH: usize = 2048;

/// Why a path is not canonical: empty segments (`//`), dot segments (`.`, `..`),
/// percent-encoded characters or backslashes. Front ends and servers disagree on these, so
/// the path the proxy classifies could differ from the one the provider serves. A trailing
/// slash is allowed.
pub fn canonical(path: &str) -> Result<(), &'static str> {
    // Paths reach the history and the logs: no API needs more.
    if path.len() > MAX_PATH {
        return Err("is longer than 2048 bytes");
    }
    match memchr::memchr2(b'%', b'\\', path.as_bytes()).map(|i| path.as_bytes()[i]) {
        Some(b'%') => return Err("contains percent-encoded characters"),
        Some(_) => return Err("contains a backslash"),
        None => {}
    }
    // Segment by segment after the leading `/`, without collecting them: this runs on every
    // request.
    let mut rest = path.strip_prefix('/').unwrap_or(path);
    loop {
        let (seg, next) = match memchr::memchr(b'/', rest.as_bytes()) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if seg.is_empty() && next.is_some() {
            return Err("contains an empty segment (`//`)");
        }
        if seg == "." || seg == ".." {
            return Err("contains a dot segment (`.` or `..`)");
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    Ok(())
}

type Answer = (StatusCode, &'static str, String);

/// The tenant with the org its profile belongs to: named in `tenant.orgs`, else the first
/// org it was seen with (remembered in the store, shared by replicas). A request naming
/// another org is refused; one naming none counts for the profile's org.
async fn org_of(app: &App, runtime: &Runtime, mut tenant: Tenant) -> Result<Tenant, Answer> {
    let cfg = &runtime.config.tenant;
    if cfg.org_header.is_none() && cfg.orgs.is_empty() {
        return Ok(tenant);
    }
    let configured = cfg.orgs.iter().find(|(_, ps)| ps.contains(&tenant.profile)).map(|(o, _)| o.clone());
    let bound = match configured {
        Some(org) => Some(org),
        None => match app.orgs.get(&tenant.profile) {
            Some(bound) => bound,
            None => match app.store.bind_org(&tenant.profile, tenant.org.as_deref()).await {
                Ok(bound) => {
                    app.orgs.insert(&tenant.profile, bound.clone());
                    bound
                }
                Err(e) => {
                    if runtime.config.store.on_error == OnError::Closed {
                        return Err((
                            StatusCode::SERVICE_UNAVAILABLE,
                            "quota_store_unavailable",
                            format!("the quota store is unavailable: {e}"),
                        ));
                    }
                    // Best effort while the store is down: the org the request names.
                    tenant.org.clone()
                }
            },
        },
    };
    match (&tenant.org, &bound) {
        (Some(named), Some(org)) if named != org => Err(org_conflict(&tenant.profile, named, Some(org))),
        (Some(named), None) => Err(org_conflict(&tenant.profile, named, None)),
        _ => {
            tenant.org = bound;
            Ok(tenant)
        }
    }
}

fn org_conflict(profile: &str, named: &str, org: Option<&str>) -> Answer {
    let belongs = match org {
        Some(o) => format!("belongs to org {o}"),
        None => "belongs to no org (it was first seen without one)".to_string(),
    };
    (
        StatusCode::CONFLICT,
        "tenant_conflict",
        format!("profile {profile} {belongs}, not to org {named}; a profile's org is fixed by tenant.orgs or by its first request"),
    )
}

/// Reserves a call; `Ok(None)` when the store is down and `on_error: open` lets it through.
async fn reserve(
    app: &App,
    runtime: &Runtime,
    plan: &Plan,
    tenant: &Tenant,
    now: DateTime<Utc>,
    call: Option<OpenCall>,
) -> Result<Option<Vec<i64>>, Response<ProxyBody>> {
    let req = plan.reserve_request(call);
    // A store that can reserve at once (the embedded one) spares the awaited call.
    let outcome = match app.store.reserve_now(&req) {
        Some(outcome) => outcome,
        None => app.store.reserve(&req).await,
    };
    app.metrics.note_quota_tenant(Scope::Profile, &tenant.profile);
    if let Some(org) = &tenant.org {
        app.metrics.note_quota_tenant(Scope::Org, org);
    }
    match outcome {
        Ok(ReserveOutcome::Admitted { before }) => Ok(Some(before)),
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
            tracing::info!(tenant = %refusal.tenant, scope = %refusal.scope, metric = %refusal.limit.metric, window = %refusal.limit.window, "refused: {}", refusal.message());
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::PAYMENT_REQUIRED);
            let mut r = reply::json_response(status, &refusal.body());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(refusal.retry_after(now)));
            Err(r)
        }
        Err(e) => {
            // A saturated store cannot count what it would forward: refuse even when open.
            let on_error = if matches!(e, StoreError::Saturated(_)) {
                OnError::Closed
            } else {
                runtime.config.store.on_error
            };
            match on_error {
                OnError::Closed => {
                    tracing::error!(error = %e, "quota store unavailable; refusing (on_error: closed)");
                    Err(reply::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "quota_store_unavailable",
                        &format!("the quota store is unavailable: {e}"),
                    ))
                }
                OnError::Open => {
                    tracing::warn!(error = %e, "quota store unavailable; forwarding (on_error: open)");
                    Ok(None)
                }
            }
        }
    }
}

/// Why a request body could not be buffered.
enum BodyFailure {
    TooLarge(usize),
    Overloaded(u64),
    Timeout(Duration),
    Read(String),
}

impl BodyFailure {
    fn answer(self, own: &Own<'_>, model_label: &str) -> Response<ProxyBody> {
        match self {
            BodyFailure::TooLarge(max) => own.error(
                model_label,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                &format!("the request body exceeds server.max_request_body ({max} bytes)"),
            ),
            BodyFailure::Overloaded(max) => {
                let mut r = reply::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    &format!("the proxy is already buffering server.max_buffered_bytes ({max} bytes) of request bodies; retry shortly"),
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                // Retrying after a moment is right here (unlike the proxy's other refusals).
                r.headers_mut().insert("x-should-retry", HeaderValue::from_static("true"));
                own.send(model_label, r)
            }
            BodyFailure::Timeout(t) => own.error(
                model_label,
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                &format!("the request body did not arrive within server.body_timeout ({}s)", t.as_secs()),
            ),
            BodyFailure::Read(e) => own.error(
                model_label,
                StatusCode::BAD_REQUEST,
                "invalid_request_body",
                &format!("could not read the request body: {e}"),
            ),
        }
    }
}

/// Reads a metered call's body: at most `server.max_request_body` bytes, within
/// `server.body_timeout`, taking its share of the process-wide buffering budget as it grows.
async fn read_body(app: &App, runtime: &Runtime, mut incoming: Incoming, headers: &http::HeaderMap) -> Result<(Bytes, BudgetShare), BodyFailure> {
    let server = &runtime.config.server;
    let limit = server.max_request_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyFailure::TooLarge(limit));
    }
    let mut share = BudgetShare::new(&app.body_budget, server.max_buffered_bytes);
    if !share.grow(declared.unwrap_or(0)) {
        return Err(BodyFailure::Overloaded(server.max_buffered_bytes));
    }
    let deadline = tokio::time::Instant::now() + server.body_timeout.0;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    loop {
        let frame = match tokio::time::timeout_at(deadline, incoming.frame()).await {
            Err(_) => return Err(BodyFailure::Timeout(server.body_timeout.0)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyFailure::Read(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > limit {
            return Err(BodyFailure::TooLarge(limit));
        }
        let needed = (buf.len() + data.len()) as u64;
        if needed > share.bytes && !share.grow(needed - share.bytes) {
            return Err(BodyFailure::Overloaded(server.max_buffered_bytes));
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), share))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The segment checks as they were written first, by splitting into a vector.
    fn canonical_by_split(path: &str) -> bool {
        if path.len() > MAX_PATH || path.contains('%') || path.contains('\\') {
            return false;
        }
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let last = segments.len().saturating_sub(1);
        segments
            .iter()
            .enumerate()
            .all(|(i, seg)| !(seg.is_empty() && i != last) && *seg != "." && *seg != "..")
    }

    proptest::proptest! {
        /// The byte walk accepts exactly the paths the split accepts (client paths always
        /// start with `/`).
        #[test]
        fn walking_segments_agrees_with_splitting(
            segs in proptest::collection::vec(proptest::sample::select(vec!["v1", "", ".", "..", "a.b", "..x", "%2e", "a\\b", "é"]), 0..6),
            trail in proptest::bool::ANY,
        ) {
            let path = format!("/{}{}", segs.join("/"), if trail { "/" } else { "" });
            proptest::prop_assert_eq!(canonical(&path).is_ok(), canonical_by_split(&path), "{}", path);
        }
    }

    #[test]
    fn canonical_paths() {
        for ok in [
            "/",
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1/a.b/c..d",
        ] {
            assert!(canonical(ok).is_ok(), "{ok}");
        }
        for bad in [
            "//v1/chat/completions",
            "/v1//chat/completions",
            "/v1/x/../chat/completions",
            "/v1/./chat/completions",
            "/v1/chat/completions/..",
            "/v1/chat/%63ompletions",
            "/v1\\chat",
            &format!("/v1/{}", "a".repeat(3000)),
        ] {
            assert!(canonical(bad).is_err(), "{bad}");
        }
    }
}
