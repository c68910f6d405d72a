//! The forward phase: the admitted request goes upstream with its headers made the proxy's
//! (no hop-by-hop or tenant headers, the injected key, an `Accept-Encoding` the proxy can
//! decode), and the answer's head comes back wrapped in the meter. A call whose answer never
//! comes is settled here: free when no connection to the provider was made, its reservation
//! otherwise.

use std::time::Instant;

use chrono::SecondsFormat;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Either;

use super::admit::Admitted;
use super::headers::remove_hop_by_hop;
use super::meter::{Meter, MeteredBody};
use super::reply::{self, ProxyBody};
use crate::app::Runtime;
use crate::domain::Metric;
use crate::providers::{Anomaly, BodyEnd, Call, FixedCost, Provider, Settled, Source, Usage, UsageExtractor};
use crate::upstream::client::UpstreamBody;
use crate::upstream::route::Route;
use crate::wire::decode;

/// Forwards an admitted call and returns the metered answer (or the proxy's failure).
pub async fn forward(runtime: &Runtime, admitted: Box<Admitted>) -> Response<ProxyBody> {
    let Admitted {
        route,
        wire,
        call,
        estimate,
        mut parts,
        body,
        query,
        mut reservation,
        remaining,
        ratelimit,
        warning,
        buffered,
    } = *admitted;
    let provider: &dyn Provider = wire.map_or(&*route.provider, |w| w.provider);
    let upstream_path = &reservation.settler().path;
    parts.uri = match route.upstream_uri(upstream_path, route.upstream_query(query.as_deref()).as_deref()) {
        Ok(u) => u,
        Err(e) => {
            // Nothing was sent: the reservation is given back.
            reservation.settle(Settled::upstream_error(), BodyEnd::Complete);
            return reply::error(StatusCode::BAD_REQUEST, "non_canonical_path", &format!("cannot build the upstream URL: {e}"));
        }
    };
    parts.version = http::Version::HTTP_11;
    prepare_upstream_headers(&mut parts.headers, runtime, &route);
    if let Either::Right(full) = &body {
        let len = http_body::Body::size_hint(full).exact().unwrap_or(0);
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let upstream_req: Request<UpstreamBody> = Request::from_parts(parts, body);
    let sent = Instant::now();
    reservation.settler_mut().upstream_started = sent;
    let response = tokio::time::timeout(route.read_idle, route.client.request(upstream_req)).await;
    // The body is with the upstream (or dropped): its share of the buffering budget is free.
    drop(buffered);
    let after_upstream = Instant::now();
    let response = match response {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(provider = %route.name, error = %crate::upstream::egress::causes(&e), "upstream request failed");
            let s = reservation.settler_mut();
            s.note_upstream_failure("connect");
            s.status = 502;
            let connected = !e.is_connect();
            if connected {
                reservation.settle_unanswered(Anomaly::UpstreamError);
            } else {
                // No connection was made: the provider never saw the call.
                reservation.settle(Settled::upstream_error(), BodyEnd::Complete);
            }
            // The reason (a certificate, the egress proxy, the deadline) without addresses; the
            // log has the whole chain.
            return reply::error(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                &format!("provider {} could not be reached: {}", route.name, crate::upstream::egress::public_reason(&e)),
            );
        }
        Err(_) => {
            let s = reservation.settler_mut();
            s.note_upstream_failure("timeout");
            s.status = 504;
            reservation.settle_unanswered(Anomaly::Timeout);
            return reply::error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                &format!("provider {} did not answer within {:?}", route.name, route.read_idle),
            );
        }
    };

    let (mut parts, incoming) = response.into_parts();
    reservation.settler_mut().status = parts.status.as_u16();
    remove_hop_by_hop(&mut parts.headers);
    if let Some((metric, rem, resets_at)) = remaining {
        set_remaining_headers(&mut parts.headers, metric, rem, resets_at);
    }
    if let Some((policy, state)) = ratelimit {
        parts.headers.insert(RATELIMIT_POLICY, policy);
        parts.headers.insert(RATELIMIT, state);
    }
    if let Some(w) = warning {
        parts.headers.insert(WARNING, w);
    }
    let settles_deferred = call
        .settles
        .as_deref()
        .is_some_and(|id| reservation.settler().app.deferred.waits(&route.name, id));
    let extractor = extractor_for(provider, &call, settles_deferred, parts.status, &parts.headers, &estimate.usage);
    // A request rewritten to ask for more than the client did gets its response restored.
    let filter = if estimate.filter_response && parts.status.is_success() {
        provider.body_filter(&call, &parts.headers)
    } else {
        None
    };
    reservation.settler_mut().overhead += after_upstream.elapsed();
    let meter = Meter::new(&mut parts.headers, extractor, filter, reservation);
    let body = MeteredBody::new(incoming, route.read_idle, meter);
    Response::from_parts(parts, Either::Left(body))
}

// Names of the headers added to admitted responses, made once: a name given as a string
// is copied into a new allocation on every insert.
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const WARNING: HeaderName = HeaderName::from_static("x-spendgate-warning");
const REMAINING: HeaderName = HeaderName::from_static("x-spendgate-remaining");
const RESET: HeaderName = HeaderName::from_static("x-spendgate-reset");

/// `X-Spendgate-Remaining` (the tightest limit's remaining amount and unit) and
/// `X-Spendgate-Reset` (when its window resets).
fn set_remaining_headers(headers: &mut http::HeaderMap, metric: Metric, rem: i64, resets_at: chrono::DateTime<chrono::Utc>) {
    let rem = rem.max(0);
    let mut num = itoa::Buffer::new();
    let mut value = String::with_capacity(32);
    if metric == Metric::CostUsd {
        // Millionths of a dollar, rounded down: never more than is left.
        let micros = rem / 1000;
        value.push_str(num.format(micros / 1_000_000));
        value.push('.');
        let frac = num.format(micros % 1_000_000);
        value.extend(std::iter::repeat_n('0', 6 - frac.len()));
        value.push_str(frac);
    } else {
        value.push_str(num.format(rem));
    }
    value.push(' ');
    value.push_str(metric.unit());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(REMAINING, v);
    }
    headers.insert(RESET, reset_value(resets_at));
}

/// `X-Spendgate-Reset`'s value: the same for every request of a window, so each thread keeps
/// the last one it formatted.
fn reset_value(resets_at: chrono::DateTime<chrono::Utc>) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(chrono::DateTime<chrono::Utc>, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((at, v)) if *at == resets_at => v.clone(),
        _ => {
            let v = HeaderValue::from_str(&resets_at.to_rfc3339_opts(SecondsFormat::Secs, true)).expect("an RFC 3339 time is a valid header value");
            *last = Some((resets_at, v.clone()));
            v
        }
    })
}

/// The extractor for a response: free calls and errors cost nothing; successes are read, and
/// so is a free answer that carries the final usage of a call billed later (`settles`).
fn extractor_for(
    provider: &dyn Provider,
    call: &Call,
    settles: bool,
    status: StatusCode,
    headers: &http::HeaderMap,
    estimate: &Usage,
) -> Box<dyn UsageExtractor> {
    if settles && status.is_success() {
        return provider.extractor(call, status, headers, estimate);
    }
    if !call.metered {
        // Free calls cost nothing (unmetered ones with a fixed charge get it from the settler).
        return Box::new(FixedCost::new(Usage::default(), Source::Free));
    }
    if !status.is_success() {
        return Box::new(FixedCost::new(Usage::default(), Source::UpstreamError));
    }
    provider.extractor(call, status, headers, estimate)
}

/// The client's headers as they go upstream: no hop-by-hop headers, no tenant headers (when
/// configured), the configured key instead of the client's (when `api_key_env` is set), an
/// `Accept-Encoding` the proxy can decode, and no Host: the client sets the upstream's
/// (HTTP/1.1) or `:authority` (HTTP/2).
fn prepare_upstream_headers(headers: &mut http::HeaderMap, runtime: &Runtime, route: &Route) {
    remove_hop_by_hop(headers);
    runtime.tenant_headers.remove_from(headers, runtime.config.tenant.strip);
    let accept = decode::upstream_accept_encoding(headers);
    headers.insert(header::ACCEPT_ENCODING, accept);
    headers.remove(header::HOST);
    route.set_credentials(headers);
}
