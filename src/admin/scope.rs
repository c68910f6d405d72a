//! What an `org:<id>` token reaches: that org and the profiles that belong to it. A profile's
//! org is the one the config names for it (`tenant.orgs`), else the one this replica has seen
//! it with, else the org of its most recent request on record (read-only: looking a profile
//! up never binds it to an org).

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use crate::app::App;
use crate::domain::Scope;

/// How far back the history is read for a profile's last request.
const LOOKBACK_DAYS: u32 = 62;

/// The org a profile belongs to, if it is known.
pub async fn org_of(app: &App, profile: &str) -> Option<String> {
    let runtime = app.runtime();
    if let Some((org, _)) = runtime.config.tenant.orgs.iter().find(|(_, ps)| ps.iter().any(|p| p == profile)) {
        return Some(org.clone());
    }
    if let Some(bound) = app.orgs.get(profile) {
        return bound;
    }
    let days = runtime.calendar.recent_days(app.clock.now(), LOOKBACK_DAYS);
    let read = app.store.history(Scope::Profile, profile, &days, 1);
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(h)) => h.recent.first().and_then(|r| r.org.clone()),
        _ => None,
    }
}

/// True when `org`'s token may reach the tenant.
pub async fn within(app: &App, org: &str, scope: Scope, id: &str) -> bool {
    match scope {
        Scope::Org => id == org,
        Scope::Profile => org_of(app, id).await.as_deref() == Some(org),
    }
}

/// The profiles of `org` among `candidates`.
pub async fn profiles_of(app: &App, org: &str, candidates: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    stream::iter(candidates)
        .map(|p| async move { (org_of(app, &p).await.as_deref() == Some(org)).then_some(p) })
        .buffer_unordered(8)
        .filter_map(|p| async move { p })
        .collect()
        .await
}
