//! The usage API: `GET /v1/{profiles,orgs}` and `GET /v1/{profiles,orgs}/{id}/usage`.

use std::collections::BTreeSet;

use http::{Response, StatusCode};

use super::auth::Principal;
use super::{error, json, query_param, AdminBody};
use crate::app::App;
use crate::domain::Scope;
use crate::quota::ledger::StoreError;
use crate::usage;

pub(super) fn store_failed(e: &StoreError) -> Response<AdminBody> {
    tracing::warn!(error = %e, "usage API: the store could not be read");
    error(StatusCode::SERVICE_UNAVAILABLE, "quota_store_unavailable", &e.to_string())
}

fn number(query: Option<&str>, name: &str) -> Result<Option<usize>, String> {
    match query_param(query, name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| format!("`{name}` must be a whole number, got `{v}`")),
    }
}

/// The listing's query: `q`, `sort`, `order`, `offset`, `limit`.
fn list_query(query: Option<&str>) -> Result<usage::ListQuery, String> {
    let sort = match query_param(query, "sort") {
        Some(s) => usage::SortKey::parse(&s)?,
        None => usage::SortKey::Name,
    };
    let descending = match query_param(query, "order").as_deref() {
        None => sort.descending_by_default(),
        Some("desc") => true,
        Some("asc") => false,
        Some(o) => return Err(format!("`order` must be asc or desc, got `{o}`")),
    };
    Ok(usage::ListQuery {
        search: query_param(query, "q").filter(|q| !q.is_empty()),
        sort,
        descending,
        offset: number(query, "offset")?.unwrap_or(0),
        limit: number(query, "limit")?,
    })
}

/// Every known tenant of a scope (an org token: its org, or its org's profiles). Optional
/// `?q=` (a substring of the id), `?sort=ratio|cost|name&order=asc|desc` and
/// `?offset=N&limit=M` search, order and page through large fleets.
pub async fn listing(app: &App, who: &Principal, scope: Scope, query: Option<&str>) -> Response<AdminBody> {
    let q = match list_query(query) {
        Ok(q) => q,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", &m),
    };
    let allowed: Option<BTreeSet<String>> = match (who.org(), scope) {
        (None, _) => None,
        (Some(org), Scope::Org) => Some(BTreeSet::from([org.to_string()])),
        (Some(org), Scope::Profile) => {
            let runtime = app.runtime();
            let mut candidates: BTreeSet<String> = match app.store.tenants(Scope::Profile).await {
                Ok(t) => t.into_iter().collect(),
                Err(e) => return store_failed(&e),
            };
            candidates.extend(runtime.limits.named(Scope::Profile).cloned());
            candidates.extend(runtime.config.tenant.orgs.get(org).into_iter().flatten().cloned());
            candidates.extend(app.control_cache.load().tenants().filter(|(t, _)| t.scope == Scope::Profile).map(|(t, _)| t.id));
            Some(super::scope::profiles_of(app, org, candidates).await)
        }
    };
    let only = allowed.map(|set| move |id: &str| set.contains(id));
    let only_ref = only.as_ref().map(|f| f as &(dyn Fn(&str) -> bool + Sync));
    match usage::search(app, scope, &q, only_ref).await {
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
