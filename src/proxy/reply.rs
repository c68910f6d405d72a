//! The proxy's own answers (refusals and failures), all in one JSON envelope that the
//! official SDKs read: an `error` object plus the older `detail` object.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use serde_json::json;

use super::metered_body::MeteredBody;

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
