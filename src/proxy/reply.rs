//! The proxy's own answers (refusals and failures), all in one JSON envelope that the
//! official SDKs read: an `error` object plus the older `detail` object. Every answer the
//! proxy makes itself goes through [`Own`], which counts it the same way as an upstream
//! answer (`requests_total` and the proxy's overhead).

use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use serde_json::json;

use super::meter::MeteredBody;
use crate::app::{App, Runtime};
use crate::config::ProviderKind;

/// The body of every response the data plane sends.
pub type ProxyBody = Either<MeteredBody, Full<Bytes>>;

/// A JSON response from a value.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(bytes))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error in the common envelope. `kind` is `error.type`, e.g. `tenant_missing`.
pub fn error(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
    let body = json!({
        "type": "error",
        "error": {
            "type": kind,
            "code": kind,
            "status": kind.to_ascii_uppercase(),
            "message": message,
        },
        "detail": {
            "error": kind,
            "status": kind,
            "message": message,
        }
    });
    let mut r = json_response(status, &body);
    // Stainless SDKs (OpenAI, Anthropic) retry 5xx unless told not to; the proxy's own
    // refusals do not get better by retrying at once.
    r.headers_mut().insert("x-should-retry", HeaderValue::from_static("false"));
    r
}

/// The `model` label of a call: the model when the price table knows it, `other` when it
/// does not (a client cannot mint label values), `unknown` when the call names none.
pub fn model_label(app: &App, runtime: &Runtime, provider: &str, prices: ProviderKind, model: Option<&str>) -> String {
    match model {
        None => app.metrics.model("unknown"),
        // A model labelled before was priced then: no second price lookup per request.
        Some(m) if app.metrics.models.has(m) => m.to_string(),
        Some(m) if runtime.prices.rates(provider, prices, m).is_some() => app.metrics.model(m),
        Some(_) => app.metrics.model("other"),
    }
}

/// A client-chosen string for a log line or a message: at most 200 characters, control
/// characters escaped (no raw newline reaches a log).
pub fn loggable(s: &str) -> String {
    let mut out: String = s.chars().take(200).flat_map(char::escape_default).collect();
    if s.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

/// Counts the proxy's own answers for one request.
pub struct Own<'a> {
    pub app: &'a App,
    /// The provider label (`unknown` before a route is found).
    pub provider: &'a str,
    pub started: Instant,
}

impl Own<'_> {
    /// Counts an answer built elsewhere (the quota refusal).
    pub fn send(&self, model_label: &str, response: Response<ProxyBody>) -> Response<ProxyBody> {
        let m = &self.app.metrics;
        m.requests.with_label_values(&[self.provider, model_label, response.status().as_str()]).inc();
        m.overhead.observe(self.started.elapsed().as_secs_f64());
        response
    }

    /// An error in the common envelope, counted.
    pub fn error(&self, model_label: &str, status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
        self.send(model_label, error(status, kind, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loggable_escapes_and_bounds() {
        assert_eq!(loggable("a\nb"), "a\\nb");
        let long = "x".repeat(1000);
        assert_eq!(loggable(&long).chars().count(), 201);
    }
}
