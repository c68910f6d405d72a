//! The admin plane (`admin.listen`): the open probes and metrics, and behind the admin token
//! the usage API, reload and the dashboard page.
//!
//! | path | method | what |
//! |---|---|---|
//! | `/metrics` | GET | Prometheus text format (behind the token unless `admin.public_metrics`) |
//! | `/healthz`, `/readyz` | GET | probes (open) |
//! | `/v1/profiles`, `/v1/orgs` | GET | every known tenant against its limits |
//! | `/v1/profiles/{id}/usage`, `/v1/orgs/{id}/usage` | GET | one tenant, `?range=7d\|30d\|90d\|all` |
//! | `/v1/reload` | POST | reload the config file now |
//! | `/` | GET | the dashboard page |

mod auth;
mod dashboard;
mod metrics;
mod reload;
mod usage;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::app::App;
use crate::domain::Scope;

pub type AdminBody = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<AdminBody> {
    respond(status, "application/json", serde_json::to_vec(v).unwrap_or_default())
}

/// The admin error envelope: `{"error": {"type": ..., "message": ...}}`.
pub fn error(status: StatusCode, kind: &str, message: &str) -> Response<AdminBody> {
    json(status, &json!({"error": {"type": kind, "message": message}}))
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Metrics,
    Healthz,
    Readyz,
    Dashboard,
    Listing(Scope),
    Usage(Scope, String),
    Reload,
}

impl Endpoint {
    fn parse(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/metrics" => Endpoint::Metrics,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/" => Endpoint::Dashboard,
            "/v1/profiles" => Endpoint::Listing(Scope::Profile),
            "/v1/orgs" => Endpoint::Listing(Scope::Org),
            "/v1/reload" => Endpoint::Reload,
            _ => {
                let rest = path.strip_prefix("/v1/")?;
                let (scope, rest) = match rest.split_once('/')? {
                    ("profiles", r) => (Scope::Profile, r),
                    ("orgs", r) => (Scope::Org, r),
                    _ => return None,
                };
                let id = rest.strip_suffix("/usage")?;
                if id.is_empty() || id.contains('/') {
                    return None;
                }
                let id = percent_encoding::percent_decode_str(id).decode_utf8().ok()?;
                Endpoint::Usage(scope, id.into_owned())
            }
        })
    }

    fn method(&self) -> Method {
        match self {
            Endpoint::Reload => Method::POST,
            _ => Method::GET,
        }
    }

    /// Everything but the probes needs the admin token; the metrics too unless they are
    /// made public (tenant ids and spend are in them).
    fn guarded(&self, public_metrics: bool) -> bool {
        match self {
            Endpoint::Healthz | Endpoint::Readyz => false,
            Endpoint::Metrics => !public_metrics,
            _ => true,
        }
    }
}

/// True when no admin token is configured (the admin API answers anyone).
pub fn open_to_anyone(cfg: &crate::config::AdminConfig) -> bool {
    auth::required_token(&cfg.token_env).is_none()
}

/// The value of a query parameter.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Handles one admin request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<AdminBody> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let Some(endpoint) = Endpoint::parse(&path) else {
        return error(StatusCode::NOT_FOUND, "not_found", &format!("no admin endpoint at {path}"));
    };
    let method = req.method();
    let allowed = endpoint.method();
    let head = allowed == Method::GET && method == Method::HEAD;
    if *method != allowed && !head {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("{path} answers {allowed} only"));
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static(if allowed == Method::POST { "POST" } else { "GET, HEAD" }),
        );
        return r;
    }
    let runtime = app.runtime();
    if endpoint.guarded(runtime.config.admin.public_metrics) {
        let token = auth::required_token(&runtime.config.admin.token_env);
        let query_token = (endpoint == Endpoint::Dashboard).then(|| query_param(query.as_deref(), "token")).flatten();
        if let Err(denied) = auth::check(token.as_deref(), req.headers(), query_token.as_deref()) {
            return denied_response(&endpoint, denied);
        }
    }
    let mut response = match endpoint {
        Endpoint::Metrics => metrics::render(&app).await,
        Endpoint::Healthz => json(StatusCode::OK, &json!({"status": "ok"})),
        Endpoint::Readyz => match app.store.ping().await {
            Ok(()) => json(StatusCode::OK, &json!({"status": "ready", "store": app.store.name()})),
            // With `on_error: open` the proxy keeps serving through a store outage: still
            // ready (so an outage does not pull every replica out of its Service at once),
            // but degraded. With `closed` it refuses paid calls: not ready.
            Err(e) if runtime.config.store.on_error == crate::config::OnError::Open => json(
                StatusCode::OK,
                &json!({"status": "degraded", "store": app.store.name(), "error": e.to_string()}),
            ),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "unavailable", "store": app.store.name(), "error": e.to_string()}),
            ),
        },
        Endpoint::Dashboard => dashboard::page(),
        Endpoint::Listing(scope) => usage::listing(&app, scope, query.as_deref()).await,
        Endpoint::Usage(scope, id) => usage::report(&app, scope, &id, query.as_deref()).await,
        Endpoint::Reload => reload::reload(&app).await,
    };
    if head {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn denied_response(endpoint: &Endpoint, denied: auth::Denied) -> Response<AdminBody> {
    let mut r = match (endpoint, denied) {
        (Endpoint::Dashboard, auth::Denied::Missing) => dashboard::login_page(StatusCode::UNAUTHORIZED, false),
        (Endpoint::Dashboard, auth::Denied::Wrong) => dashboard::login_page(StatusCode::FORBIDDEN, true),
        (_, auth::Denied::Missing) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <admin token>`",
        ),
        (_, auth::Denied::Wrong) => error(StatusCode::FORBIDDEN, "forbidden", "the admin token is wrong"),
    };
    if denied == auth::Denied::Missing {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"spendgate admin\""));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Endpoint::parse("/v1/profiles"), Some(Endpoint::Listing(Scope::Profile)));
        assert_eq!(Endpoint::parse("/v1/orgs/acme/usage"), Some(Endpoint::Usage(Scope::Org, "acme".into())));
        assert_eq!(
            Endpoint::parse("/v1/profiles/u%40x.com/usage"),
            Some(Endpoint::Usage(Scope::Profile, "u@x.com".into()))
        );
        for bad in [
            "/v1/profiles//usage",
            "/v1/profiles/a/b/usage",
            "/v1/teams/a/usage",
            "/v1/profiles/a",
            "/v2/profiles",
            "/index.html",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
        assert!(Endpoint::Metrics.guarded(false));
        assert!(!Endpoint::Metrics.guarded(true));
        assert!(!Endpoint::Healthz.guarded(false));
        assert!(Endpoint::Dashboard.guarded(true));
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param(Some("a=1&token=x%2By+z"), "token").as_deref(), Some("x+y z"));
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }
}
