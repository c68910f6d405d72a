//! The admin plane (`admin.listen`): the open probes and metrics, and behind the admin token
//! the usage API, reload and the dashboard page.
//!
//! | path | method | what |
//! |---|---|---|
//! | `/metrics` | GET | Prometheus text format (behind the token unless `admin.public_metrics`) |
//! | `/healthz`, `/readyz` | GET | probes (open) |
//! | `/v1/profiles`, `/v1/orgs` | GET | every known tenant against its limits, `?q=&sort=ratio\|cost\|name&order=&offset=&limit=` |
//! | `/v1/profiles/{id}/usage`, `/v1/orgs/{id}/usage` | GET | one tenant, `?range=month\|7d\|30d\|90d\|all` or `?from=&to=` |
//! | `/v1/{profiles,orgs}/{id}/limits` | GET, PUT, DELETE | effective limits; set or remove a run-time override |
//! | `/v1/{profiles,orgs}/{id}/grants` | POST | a top-up for the current window |
//! | `/v1/{profiles,orgs}/{id}/reset` | POST | start the current window afresh |
//! | `/v1/audit` | GET | every change, `?tenant=&scope=&offset=&limit=` |
//! | `/v1/me` | GET | the token's name and role |
//! | `/v1/reload` | POST | reload the config file now |
//! | `/` | GET | the dashboard page |
//!
//! Tokens have roles (`auth`): `admin` may do everything, `viewer` may read everything,
//! `org:<id>` may read that org and its profiles (and, with `write_profiles`, set its
//! profiles' limits). Errors use one envelope: `{"error": {"type", "message"}}`, plus
//! `"field"` on a 400 that names the offending input.

mod auth;
mod dashboard;
mod limits;
mod metrics;
mod reload;
mod scope;
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

/// A 400 that names the offending input field (`limits[0].max`, `id`, `reason`).
pub fn invalid(field: &str, message: &str) -> Response<AdminBody> {
    json(
        StatusCode::BAD_REQUEST,
        &json!({"error": {"type": "invalid_request", "field": field, "message": format!("{field}: {message}")}}),
    )
}

/// A 403 for a token whose role does not allow what it asked.
pub fn forbidden(message: &str) -> Response<AdminBody> {
    error(StatusCode::FORBIDDEN, "forbidden", message)
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
    Limits(Scope, String),
    Grants(Scope, String),
    Reset(Scope, String),
    Audit,
    Me,
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
            "/v1/audit" => Endpoint::Audit,
            "/v1/me" => Endpoint::Me,
            _ => {
                let rest = path.strip_prefix("/v1/")?;
                let (scope, rest) = match rest.split_once('/')? {
                    ("profiles", r) => (Scope::Profile, r),
                    ("orgs", r) => (Scope::Org, r),
                    _ => return None,
                };
                let (id, what) = rest.rsplit_once('/')?;
                if id.is_empty() || id.contains('/') {
                    return None;
                }
                let id = percent_encoding::percent_decode_str(id).decode_utf8().ok()?.into_owned();
                match what {
                    "usage" => Endpoint::Usage(scope, id),
                    "limits" => Endpoint::Limits(scope, id),
                    "grants" => Endpoint::Grants(scope, id),
                    "reset" => Endpoint::Reset(scope, id),
                    _ => return None,
                }
            }
        })
    }

    /// The methods the endpoint answers (GET ones answer HEAD too).
    fn methods(&self) -> &'static [Method] {
        const GET: &[Method] = &[Method::GET];
        const POST: &[Method] = &[Method::POST];
        const LIMITS: &[Method] = &[Method::GET, Method::PUT, Method::DELETE];
        match self {
            Endpoint::Reload | Endpoint::Grants(..) | Endpoint::Reset(..) => POST,
            Endpoint::Limits(..) => LIMITS,
            _ => GET,
        }
    }

    /// The tenant the endpoint is about, if any.
    fn tenant(&self) -> Option<(Scope, &str)> {
        match self {
            Endpoint::Usage(s, id) | Endpoint::Limits(s, id) | Endpoint::Grants(s, id) | Endpoint::Reset(s, id) => Some((*s, id)),
            _ => None,
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
    matches!(auth::credentials(cfg), auth::Credentials::Open)
}

/// What a role allows before looking at the tenant: `Err` is the 403's message.
fn role_allows(who: &auth::Principal, endpoint: &Endpoint, method: &Method) -> Result<(), String> {
    use crate::config::Role;
    let reads = *method == Method::GET || *method == Method::HEAD;
    match &who.role {
        Role::Admin => Ok(()),
        Role::Viewer if reads => Ok(()),
        Role::Org(_) if matches!(endpoint, Endpoint::Metrics) => Err(format!("{} may not read the metrics of every tenant", who.describe())),
        Role::Org(_) if reads => Ok(()),
        _ => match endpoint {
            Endpoint::Limits(scope, _) if who.may_write_limits(*scope) => Ok(()),
            _ => Err(format!("{} may not {method} {}", who.describe(), endpoint_name(endpoint))),
        },
    }
}

fn endpoint_name(e: &Endpoint) -> &'static str {
    match e {
        Endpoint::Limits(..) => "limits",
        Endpoint::Grants(..) => "top-ups",
        Endpoint::Reset(..) => "resets",
        Endpoint::Reload => "the configuration",
        Endpoint::Metrics => "the metrics",
        _ => "this endpoint",
    }
}

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

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
    let method = req.method().clone();
    let allowed = endpoint.methods();
    let head = allowed.contains(&Method::GET) && method == Method::HEAD;
    if !allowed.contains(&method) && !head {
        let mut names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        if allowed.contains(&Method::GET) {
            names.insert(1, "HEAD");
        }
        let list = names.join(", ");
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("{path} answers {list} only"));
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_str(&list).expect("method names are header-safe"));
        return r;
    }
    let runtime = app.runtime();
    let mut who = auth::Principal::anonymous();
    if endpoint.guarded(runtime.config.admin.public_metrics) {
        let creds = auth::credentials(&runtime.config.admin);
        let query_token = (endpoint == Endpoint::Dashboard).then(|| query_param(query.as_deref(), "token")).flatten();
        match auth::check(&creds, req.headers(), query_token.as_deref()) {
            Ok(p) => who = p,
            Err(denied) => return denied_response(&endpoint, denied),
        }
        if let Err(m) = role_allows(&who, &endpoint, &method) {
            return forbidden(&m);
        }
        if let (Some(org), Some((scope, id))) = (who.org(), endpoint.tenant()) {
            if !scope::within(&app, org, scope, id).await {
                return forbidden(&format!(
                    "{} may not reach {scope} `{id}`: it is not org `{org}` or one of its profiles",
                    who.describe()
                ));
            }
        }
    }
    let body = if method == Method::PUT || method == Method::POST || method == Method::DELETE {
        use http_body_util::BodyExt;
        match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    &format!("the admin API reads bodies of at most {MAX_BODY} bytes"),
                )
            }
        }
    } else {
        Bytes::new()
    };
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
        Endpoint::Listing(scope) => usage::listing(&app, &who, scope, query.as_deref()).await,
        Endpoint::Usage(scope, id) => usage::report(&app, scope, &id, query.as_deref()).await,
        Endpoint::Limits(scope, id) => match method {
            Method::PUT => limits::put(&app, &who, scope, &id, &body).await,
            Method::DELETE => limits::delete(&app, &who, scope, &id, &body).await,
            _ => limits::get(&app, scope, &id).await,
        },
        Endpoint::Grants(scope, id) => limits::grant(&app, &who, scope, &id, &body).await,
        Endpoint::Reset(scope, id) => limits::reset(&app, &who, scope, &id, &body).await,
        Endpoint::Audit => limits::audit(&app, &who, query.as_deref()).await,
        Endpoint::Me => json(
            StatusCode::OK,
            &json!({"name": who.name, "role": who.role.describe(), "write_profiles": who.write_profiles,
                    "org": who.org(), "admin": who.is_admin()}),
        ),
        Endpoint::Reload => reload::reload(&app, &who).await,
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
            "/v1/profiles/a/nothing",
            "/v2/profiles",
            "/index.html",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
        assert_eq!(Endpoint::parse("/v1/orgs/acme/limits"), Some(Endpoint::Limits(Scope::Org, "acme".into())));
        assert_eq!(Endpoint::parse("/v1/profiles/p/grants"), Some(Endpoint::Grants(Scope::Profile, "p".into())));
        assert_eq!(Endpoint::parse("/v1/profiles/p/reset"), Some(Endpoint::Reset(Scope::Profile, "p".into())));
        assert_eq!(Endpoint::parse("/v1/audit"), Some(Endpoint::Audit));
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
