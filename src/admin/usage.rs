//! The usage API: `GET /v1/{profiles,orgs}` and `GET /v1/{profiles,orgs}/{id}/usage`.

use http::{Response, StatusCode};

use super::{error, json, query_param, AdminBody};
use crate::app::App;
use crate::domain::Scope;
use crate::quota::ledger::StoreError;
use crate::usage;

fn store_failed(e: &StoreError) -> Response<AdminBody> {
    tracing::warn!(error = %e, "usage API: the store could not be read");
    error(StatusCode::SERVICE_UNAVAILABLE, "quota_store_unavailable", &e.to_string())
}

fn number(query: Option<&str>, name: &str) -> Result<Option<usize>, String> {
    match query_param(query, name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| format!("`{name}` must be a whole number, got `{v}`")),
    }
}

/// Every known tenant of a scope. Optional `?offset=N&limit=M` pages through large fleets.
pub async fn listing(app: &App, scope: Scope, query: Option<&str>) -> Response<AdminBody> {
    let (offset, limit) = match (number(query, "offset"), number(query, "limit")) {
        (Ok(o), Ok(l)) => (o.unwrap_or(0), l),
        (Err(m), _) | (_, Err(m)) => return error(StatusCode::BAD_REQUEST, "bad_request", &m),
    };
    match usage::listing(app, scope, offset, limit).await {
        Ok(l) => json(StatusCode::OK, &usage::json::listing(&l)),
        Err(e) => store_failed(&e),
    }
}

/// One tenant's usage; `?range=` (default `30d`) or `?from=YYYY-MM-DD&to=YYYY-MM-DD`.
pub async fn report(app: &App, scope: Scope, id: &str, query: Option<&str>) -> Response<AdminBody> {
    let runtime = app.runtime();
    let today = runtime.calendar.local_date(app.clock.now());
    let [range, from, to] = ["range", "from", "to"].map(|n| query_param(query, n));
    let range = match usage::range_from(range.as_deref(), from.as_deref(), to.as_deref(), runtime.retention.daily_days, today) {
        Ok(r) => r,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_range", &m),
    };
    match usage::report(app, scope, id, range).await {
        Ok(Some(r)) => json(StatusCode::OK, &usage::json::report(&r)),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "tenant_not_found",
            &format!("no {scope} `{id}` is named in the config or has usage on record"),
        ),
        Err(e) => store_failed(&e),
    }
}
