//! Limits managed live: `GET|PUT|DELETE /v1/{profiles,orgs}/{id}/limits`,
//! `POST .../grants`, `POST .../reset` and `GET /v1/audit`.
//!
//! Input is read strictly (unknown fields refused, every value checked as the YAML's are);
//! a bad one answers 400 naming the field, and nothing is written. A write reads the tenant's
//! record, changes it and writes it back with compare-and-set, retrying when another write
//! came first, so each of two concurrent writes is applied whole. The replica that wrote
//! installs the change at once; the others within their poll interval.

// Errors here are finished admin responses, returned once per admin call: their size is no cost.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use http::{Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::usage::store_failed;
use super::{error, forbidden, invalid, query_param, AdminBody};
use crate::app::App;
use crate::config::{LimitSpec, Positive};
use crate::domain::money::usd_to_nanos;
use crate::domain::window::Window;
use crate::domain::{Metric, Scope};
use crate::quota::control::{self, AuditEntry, AuditQuery, CasOutcome, Grant, LimitEntry, OverrideMeta, Reset, TenantControl, TenantRef};
use crate::quota::ledger::CounterKey;
use crate::quota::limit::Limit;
use crate::usage::LimitStatus;

/// Tries of a compare-and-set write before giving up with 409.
const WRITE_TRIES: usize = 8;
/// Longest reason kept.
const MAX_REASON: usize = 500;
/// Default and largest page of the audit log.
const AUDIT_PAGE: usize = 100;
const AUDIT_PAGE_MAX: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    limits: Vec<LimitSpec>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    metric: Metric,
    window: Window,
    amount: Positive,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    metric: Metric,
    window: Window,
    reason: String,
}

/// Parses a JSON body; a 400 naming the offending field otherwise.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response<AdminBody>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("body", "a JSON object is needed"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut field = e.path().to_string();
        let message = e.inner().to_string();
        // Missing fields are reported at their parent: name the field itself.
        for marker in ["unknown field `", "missing field `"] {
            if let Some(name) = message.split(marker).nth(1).and_then(|r| r.split('`').next()) {
                if field != name && !field.ends_with(&format!(".{name}")) {
                    field = if field == "." { name.to_string() } else { format!("{field}.{name}") };
                }
            }
        }
        if field == "." || field.is_empty() || field.starts_with('[') {
            field = "body".into();
        }
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        invalid(&field, &message)
    })
}

/// A reason as given: trimmed, at most `MAX_REASON` characters; `None` when empty.
fn reason(r: Option<String>) -> Result<Option<String>, Response<AdminBody>> {
    let r = r.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    match r {
        Some(s) if s.chars().count() > MAX_REASON => Err(invalid("reason", &format!("at most {MAX_REASON} characters"))),
        r => Ok(r),
    }
}

fn required_reason(r: String) -> Result<String, Response<AdminBody>> {
    reason(Some(r))?.ok_or_else(|| invalid("reason", "a reason is needed"))
}

fn check_id(id: &str) -> Result<(), Response<AdminBody>> {
    crate::domain::tenant_id::validate_id(id).map_err(|e| invalid("id", &e))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A limit as the API shows it.
fn entry_json(e: &LimitEntry) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

/// The tenant's YAML list, in the stored form.
fn yaml_entries(app: &App, scope: Scope, id: &str) -> Vec<LimitEntry> {
    let runtime = app.runtime();
    let l = &runtime.config.limits;
    let list = match scope {
        Scope::Profile => l.profiles.get(id).unwrap_or(&l.default_profile),
        Scope::Org => l.orgs.get(id).unwrap_or(&l.default_org),
    };
    list.iter().map(LimitEntry::from_spec).collect()
}

/// `GET .../limits`: the effective list, where it comes from, the current window's top-ups
/// and reset, and the YAML list underneath.
pub async fn get(app: &App, scope: Scope, id: &str) -> Response<AdminBody> {
    if let Err(r) = check_id(id) {
        return r;
    }
    match view(app, scope, id).await {
        Ok(v) => super::json(StatusCode::OK, &v),
        Err(r) => r,
    }
}

async fn view(app: &App, scope: Scope, id: &str) -> Result<Value, Response<AdminBody>> {
    let runtime = app.runtime();
    let now = app.clock.now();
    let overlay = app.control_cache.load_full();
    let statuses = crate::usage::limit_statuses(app, &runtime, scope, id, now)
        .await
        .map_err(|e| store_failed(&e))?;
    let record = overlay.tenant(scope, id).map(|t| t.record.clone()).unwrap_or_default();
    let yaml = yaml_entries(app, scope, id);
    let (entries, source) = match (&record.limits, overlay.tenant(scope, id).and_then(|t| t.limits.as_ref())) {
        (Some(list), Some(_)) => (list.clone(), "override"),
        _ => (yaml.clone(), overlay.limits(&runtime.limits, scope, id).1.as_str(scope)),
    };
    let limits: Vec<Value> = entries.iter().zip(&statuses).map(|(e, s)| limit_json(e, s, &record, now)).collect();
    Ok(json!({
        "scope": scope.as_str(),
        "id": id,
        "source": source,
        "limits": limits,
        "yaml": yaml.iter().map(entry_json).collect::<Vec<_>>(),
        "override": record.override_meta.as_ref().map(|m| json!({"token": m.token, "at": time(m.at), "reason": m.reason})),
        "grants": record.grants.iter().filter(|g| g.expires_at > now).map(grant_json).collect::<Vec<_>>(),
        "resets": record.resets.iter().filter(|r| r.expires_at > now).map(reset_json).collect::<Vec<_>>(),
        "version": overlay.version,
    }))
}

fn grant_json(g: &Grant) -> Value {
    json!({
        "metric": g.metric.as_str(), "window": g.window.as_str(), "window_id": g.bucket,
        "amount": g.metric.display(g.amount), "reason": g.reason, "token": g.token,
        "at": time(g.at), "expires_at": time(g.expires_at),
    })
}

fn reset_json(r: &Reset) -> Value {
    json!({
        "metric": r.metric.as_str(), "window": r.window.as_str(), "window_id": r.bucket,
        "reason": r.reason, "token": r.token, "at": time(r.at), "expires_at": time(r.expires_at),
    })
}

fn limit_json(e: &LimitEntry, s: &LimitStatus, record: &TenantControl, now: DateTime<Utc>) -> Value {
    let m = s.limit.metric;
    let mut v = entry_json(e);
    let in_window = |metric: Metric, window: Window, bucket: &str| metric == m && window == s.limit.window && bucket == s.window_id;
    v["source"] = json!(s.source);
    v["grants"] = json!(record
        .grants
        .iter()
        .filter(|g| g.expires_at > now && in_window(g.metric, g.window, &g.bucket))
        .map(grant_json)
        .collect::<Vec<_>>());
    v["reset"] = record
        .resets
        .iter()
        .rev()
        .find(|r| in_window(r.metric, r.window, &r.bucket))
        .map_or(Value::Null, reset_json);
    v["effective_max"] = json!(m.display(s.limit.max));
    v["current"] = json!(m.display(s.current));
    v["remaining"] = json!(m.display(s.remaining()));
    v["ratio"] = json!(s.ratio());
    v["unit"] = json!(m.unit());
    v["window_id"] = json!(s.window_id);
    v["resets_at"] = json!(time(s.resets_at));
    v
}

/// Applies `change` to the tenant's record with compare-and-set (retrying when another write
/// came first), records the audit entry it returns, and installs the result here at once.
async fn write(
    app: &App,
    tenant: &TenantRef,
    mut change: impl FnMut(&mut TenantControl) -> Result<AuditEntry, Response<AdminBody>>,
) -> Result<(), Response<AdminBody>> {
    for _ in 0..WRITE_TRIES {
        let (version, mut record) = app.control.get(tenant).await.map_err(|e| store_failed(&e))?;
        record.prune(app.clock.now());
        let audit = change(&mut record)?;
        match app.control.update(tenant, version, &record, &audit).await.map_err(|e| store_failed(&e))? {
            CasOutcome::Written { .. } => {
                if let Err(e) = app.refresh_control().await {
                    tracing::warn!(error = %e, "the change is written but could not be read back yet");
                }
                tracing::info!(token = %audit.token, action = %audit.action, scope = %tenant.scope, id = %tenant.id, "limits changed");
                return Ok(());
            }
            CasOutcome::Conflict => continue,
        }
    }
    Err(error(
        StatusCode::CONFLICT,
        "conflict",
        "the tenant's limits kept changing during this write; try again",
    ))
}

fn audit_entry(app: &App, who: &Principal, action: &str, tenant: &TenantRef, old: Value, new: Value, reason: Option<String>) -> AuditEntry {
    AuditEntry {
        at: app.clock.now(),
        token: who.name.clone(),
        action: action.into(),
        tenant: Some(tenant.clone()),
        old,
        new,
        reason,
    }
}

/// The stored list's form in the audit log (`null`: the YAML applies).
fn list_json(list: &Option<Vec<LimitEntry>>) -> Value {
    list.as_ref().map_or(Value::Null, |l| json!(l))
}

/// `PUT .../limits`: sets the override.
pub async fn put(app: &App, who: &Principal, scope: Scope, id: &str, body: &[u8]) -> Response<AdminBody> {
    if let Err(r) = check_id(id) {
        return r;
    }
    let body: PutBody = match parse(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let reason = match reason(body.reason) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let runtime = app.runtime();
    let known_provider = |s: &str| runtime.config.providers.contains_key(s) || runtime.config.providers.values().any(|p| p.kind.as_str() == s);
    for (i, l) in body.limits.iter().enumerate() {
        if let Some(p) = l.matcher.as_ref().and_then(|m| m.provider.as_deref()) {
            if !known_provider(p) {
                return invalid(
                    &format!("limits[{i}].match.provider"),
                    &format!("no provider named or of kind `{p}` is configured"),
                );
            }
        }
    }
    if let Some(i) = control::duplicate(&body.limits) {
        let l = &body.limits[i];
        return invalid(
            &format!("limits[{i}]"),
            &format!("a second {} {} limit with the same match; merge them", l.window, l.metric),
        );
    }
    if let Some(org) = who.org() {
        if let Err(m) = within_org_limits(app, org, &body.limits) {
            return forbidden(&format!("{}: {m}", who.describe()));
        }
    }
    let entries: Vec<LimitEntry> = body.limits.iter().map(LimitEntry::from_spec).collect();
    let tenant = TenantRef::new(scope, id);
    let result = write(app, &tenant, |rec| {
        let old = list_json(&rec.limits);
        rec.limits = Some(entries.clone());
        rec.override_meta = Some(OverrideMeta {
            token: who.name.clone(),
            at: app.clock.now(),
            reason: reason.clone(),
        });
        Ok(audit_entry(app, who, "override_set", &tenant, old, list_json(&rec.limits), reason.clone()))
    })
    .await;
    respond(app, scope, id, result).await
}

/// An org token may set its profiles' limits, never above the org's own: every limit needs an
/// org limit of the same metric and window (without `match`) whose max it does not pass.
fn within_org_limits(app: &App, org: &str, limits: &[LimitSpec]) -> Result<(), String> {
    let runtime = app.runtime();
    let overlay = app.control_cache.load();
    let (org_list, _) = overlay.limits(&runtime.limits, Scope::Org, org);
    for l in limits {
        let max = Limit::new(l).max;
        let bound = org_list
            .iter()
            .filter(|o| o.metric == l.metric && o.window == l.window && o.matcher.is_none() && o.enabled)
            .map(|o| o.max)
            .min();
        match bound {
            None => return Err(format!("org `{org}` has no {} {} limit to bound a profile's", l.window, l.metric)),
            Some(b) if max > b => {
                return Err(format!(
                    "a {} {} limit of {} is above org `{org}`'s own ({})",
                    l.window,
                    l.metric,
                    l.metric.describe(max),
                    l.metric.describe(b)
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `DELETE .../limits`: removes the override; the YAML applies again.
pub async fn delete(app: &App, who: &Principal, scope: Scope, id: &str, body: &[u8]) -> Response<AdminBody> {
    if let Err(r) = check_id(id) {
        return r;
    }
    let body: DeleteBody = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteBody::default()
    } else {
        match parse(body) {
            Ok(b) => b,
            Err(r) => return r,
        }
    };
    let reason = match reason(body.reason) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let tenant = TenantRef::new(scope, id);
    let result = write(app, &tenant, |rec| {
        if rec.limits.is_none() {
            return Err(error(
                StatusCode::NOT_FOUND,
                "no_override",
                &format!("{scope} `{id}` has no override; its YAML limits apply"),
            ));
        }
        let old = list_json(&rec.limits);
        rec.limits = None;
        rec.override_meta = None;
        Ok(audit_entry(app, who, "override_removed", &tenant, old, Value::Null, reason.clone()))
    })
    .await;
    respond(app, scope, id, result).await
}

async fn respond(app: &App, scope: Scope, id: &str, result: Result<(), Response<AdminBody>>) -> Response<AdminBody> {
    match result {
        Ok(()) => get(app, scope, id).await,
        Err(r) => r,
    }
}

/// The effective limits of the tenant with this metric and window.
fn matching_limits(app: &App, scope: Scope, id: &str, metric: Metric, window: Window) -> Vec<Limit> {
    let runtime = app.runtime();
    let overlay = app.control_cache.load();
    let (list, _) = overlay.limits(&runtime.limits, scope, id);
    list.iter().filter(|l| l.metric == metric && l.window == window).cloned().collect()
}

fn no_such_limit(scope: Scope, id: &str, metric: Metric, window: Window) -> Response<AdminBody> {
    invalid("metric", &format!("{scope} `{id}` has no {window} {metric} limit"))
}

/// `POST .../grants`: raises the tenant's limits of that metric and window for the current
/// window only.
pub async fn grant(app: &App, who: &Principal, scope: Scope, id: &str, body: &[u8]) -> Response<AdminBody> {
    if let Err(r) = check_id(id) {
        return r;
    }
    let body: GrantBody = match parse(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let reason = match required_reason(body.reason) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if matching_limits(app, scope, id, body.metric, body.window).is_empty() {
        return no_such_limit(scope, id, body.metric, body.window);
    }
    let amount = match body.metric {
        Metric::CostUsd => usd_to_nanos(body.amount.0),
        _ => body.amount.0.ceil() as i64,
    }
    .max(1);
    let now = app.clock.now();
    let bucket = app.runtime().calendar.bucket(body.window, now);
    let g = Grant {
        metric: body.metric,
        window: body.window,
        bucket: bucket.id.to_string(),
        amount,
        reason: reason.clone(),
        token: who.name.clone(),
        at: now,
        expires_at: bucket.resets_at,
    };
    let tenant = TenantRef::new(scope, id);
    let result = write(app, &tenant, |rec| {
        rec.grants.push(g.clone());
        Ok(audit_entry(app, who, "grant", &tenant, Value::Null, grant_json(&g), Some(reason.clone())))
    })
    .await;
    respond(app, scope, id, result).await
}

/// `POST .../reset`: usage of the current window is counted from now on. Counters are not
/// touched: the reset records their values now, and the history keeps what was spent.
pub async fn reset(app: &App, who: &Principal, scope: Scope, id: &str, body: &[u8]) -> Response<AdminBody> {
    if let Err(r) = check_id(id) {
        return r;
    }
    let body: ResetBody = match parse(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let reason = match required_reason(body.reason) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let limits = matching_limits(app, scope, id, body.metric, body.window);
    if limits.is_empty() {
        return no_such_limit(scope, id, body.metric, body.window);
    }
    let now = app.clock.now();
    let bucket = app.runtime().calendar.bucket(body.window, now);
    let mut fields: Vec<String> = limits.iter().map(|l| l.field().to_string()).collect();
    fields.push(body.metric.field().to_string());
    fields.sort();
    fields.dedup();
    let keys: Vec<CounterKey> = fields
        .iter()
        .map(|f| CounterKey {
            scope,
            tenant: Arc::from(id),
            window: body.window,
            bucket: bucket.id.clone(),
            field: Arc::from(f.as_str()),
        })
        .collect();
    let values = match app.store.read(&keys).await {
        Ok(v) => v,
        Err(e) => return store_failed(&e),
    };
    let offsets: BTreeMap<String, i64> = fields.into_iter().zip(values).collect();
    let r = Reset {
        metric: body.metric,
        window: body.window,
        bucket: bucket.id.to_string(),
        offsets,
        reason: reason.clone(),
        token: who.name.clone(),
        at: now,
        expires_at: bucket.resets_at,
    };
    let tenant = TenantRef::new(scope, id);
    let result = write(app, &tenant, |rec| {
        let used: BTreeMap<String, f64> = r.offsets.iter().map(|(f, v)| (f.clone(), r.metric.display(*v))).collect();
        rec.resets.retain(|x| !(x.metric == r.metric && x.window == r.window && x.bucket == r.bucket));
        rec.resets.push(r.clone());
        let mut new = reset_json(&r);
        new["used_before"] = json!(used);
        Ok(audit_entry(app, who, "reset", &tenant, Value::Null, new, Some(reason.clone())))
    })
    .await;
    respond(app, scope, id, result).await
}

/// `GET /v1/audit?tenant=ID&scope=profile|org&offset=N&limit=M`, newest first. An org token
/// sees the entries of its org and its profiles.
pub async fn audit(app: &App, who: &Principal, query: Option<&str>) -> Response<AdminBody> {
    let number = |name: &str, default: usize| -> Result<usize, Response<AdminBody>> {
        match query_param(query, name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| invalid(name, &format!("must be a whole number, got `{v}`"))),
        }
    };
    let (offset, limit) = match (number("offset", 0), number("limit", AUDIT_PAGE)) {
        (Ok(o), Ok(l)) => (o, l.min(AUDIT_PAGE_MAX)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let scope = match query_param(query, "scope").as_deref() {
        None => None,
        Some("profile") => Some(Scope::Profile),
        Some("org") => Some(Scope::Org),
        Some(other) => return invalid("scope", &format!("`{other}` is neither profile nor org")),
    };
    let tenant = query_param(query, "tenant");
    if let Some(t) = &tenant {
        if let Err(e) = crate::domain::tenant_id::validate_id(t) {
            return invalid("tenant", &e);
        }
    }
    let Some(org) = who.org() else {
        let q = AuditQuery { tenant, scope, offset, limit };
        return match app.control.audit(&q).await {
            Ok(page) => page_json(page.total, &page.entries, offset),
            Err(e) => store_failed(&e),
        };
    };
    // An org token: read the whole log and keep what it may see.
    let q = AuditQuery {
        tenant,
        scope,
        offset: 0,
        limit: control::AUDIT_MAX,
    };
    let page = match app.control.audit(&q).await {
        Ok(p) => p,
        Err(e) => return store_failed(&e),
    };
    let mut seen: BTreeMap<String, bool> = BTreeMap::new();
    let mut visible = Vec::new();
    for e in page.entries {
        let ok = match &e.tenant {
            None => false,
            Some(t) if t.scope == Scope::Org => t.id == org,
            Some(t) => match seen.get(&t.id) {
                Some(ok) => *ok,
                None => {
                    let ok = super::scope::org_of(app, &t.id).await.as_deref() == Some(org);
                    seen.insert(t.id.clone(), ok);
                    ok
                }
            },
        };
        if ok {
            visible.push(e);
        }
    }
    let total = visible.len();
    let entries: Vec<AuditEntry> = visible.into_iter().skip(offset).take(limit).collect();
    page_json(total, &entries, offset)
}

fn page_json(total: usize, entries: &[AuditEntry], offset: usize) -> Response<AdminBody> {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "at": e.at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "token": e.token,
                "action": e.action,
                "scope": e.tenant.as_ref().map(|t| t.scope.as_str()),
                "id": e.tenant.as_ref().map(|t| t.id.as_str()),
                "old": e.old,
                "new": e.new,
                "reason": e.reason,
            })
        })
        .collect();
    super::json(StatusCode::OK, &json!({"total": total, "offset": offset, "entries": list}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Response<AdminBody>) -> String {
        use http_body_util::BodyExt;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = futures_util::FutureExt::now_or_never(r.into_body().collect()).unwrap().unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["error"]["field"].as_str().unwrap().to_string()
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            (r#"{"limits": [{"metric": "dollars", "window": "monthly", "max": 1}]}"#, "limits[0].metric"),
            (r#"{"limits": [{"metric": "cost_usd", "window": "weekly", "max": 1}]}"#, "limits[0].window"),
            (r#"{"limits": [{"metric": "cost_usd", "window": "monthly", "max": 0}]}"#, "limits[0].max"),
            (r#"{"limits": [{"metric": "cost_usd", "window": "monthly", "max": -3}]}"#, "limits[0].max"),
            (
                r#"{"limits": [{"metric": "cost_usd", "window": "monthly", "max": 1, "alert_at": 0}]}"#,
                "limits[0].alert_at",
            ),
            (
                r#"{"limits": [{"metric": "cost_usd", "window": "monthly", "max": 1, "alert_at": 1.5}]}"#,
                "limits[0].alert_at",
            ),
            (
                r#"{"limits": [{"metric": "cost_usd", "window": "monthly", "max": 1, "colour": "red"}]}"#,
                "limits[0].colour",
            ),
            (r#"{"limits": [{"metric": "cost_usd", "window": "monthly"}]}"#, "limits[0].max"),
            (r#"{"limits": [], "extra": 1}"#, "extra"),
            (r#"{"limits": "none"}"#, "limits"),
            ("[1", "body"),
            ("", "body"),
        ];
        for (body, field) in cases {
            let r = parse::<PutBody>(body.as_bytes()).err().unwrap_or_else(|| panic!("accepted {body}"));
            assert_eq!(field_of(r), field, "{body}");
        }
        assert!(parse::<PutBody>(br#"{"limits": [{"metric": "cost_usd", "window": "monthly", "max": 1, "alert_at": 1}], "reason": "x"}"#).is_ok());
        let r = parse::<GrantBody>(br#"{"metric": "cost_usd", "window": "monthly", "amount": 0, "reason": "x"}"#)
            .err()
            .unwrap();
        assert_eq!(field_of(r), "amount");
        assert_eq!(field_of(check_id("a b").unwrap_err()), "id");
        assert_eq!(field_of(required_reason("  ".into()).unwrap_err()), "reason");
    }
}
