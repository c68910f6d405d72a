//! The admin plane: metrics, health and readiness probes.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::app::App;

pub type AdminBody = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<AdminBody> {
    respond(status, "application/json", serde_json::to_vec(v).unwrap_or_default())
}

/// Handles one admin request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<AdminBody> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", app.metrics.render()),
        (&Method::GET, "/healthz") => json(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => match app.store.ping().await {
            Ok(()) => json(StatusCode::OK, &json!({"status": "ready", "store": app.store.name()})),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "unavailable", "store": app.store.name(), "error": e.to_string()}),
            ),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            &json!({"error": {"type": "not_found", "message": format!("no admin endpoint at {path}")}}),
        ),
    }
}
