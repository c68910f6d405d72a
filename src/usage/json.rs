//! The usage API's JSON (the shape is fixed by DESIGN.md; keys may be added, none renamed).
//!
//! Money is given twice: `cost_usd` in dollars (a float, for people and dashboards) and
//! `cost_nanos` in integer nano-dollars (exact, for programs).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::{LimitStatus, Listing, Report, Summary};
use crate::domain::money::nanos_to_usd;
use crate::domain::Mode;
use crate::quota::ledger::{Totals, UsageRecord};

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn totals(t: &Totals) -> Value {
    json!({
        "requests": t.requests,
        "cost_usd": nanos_to_usd(t.cost_nanos),
        "cost_nanos": t.cost_nanos,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cached_tokens": t.cached_tokens,
        "characters": t.characters,
    })
}

fn totals_map<'a>(m: impl IntoIterator<Item = (&'a String, &'a Totals)>) -> Value {
    Value::Object(m.into_iter().map(|(k, t)| (k.clone(), totals(t))).collect::<Map<_, _>>())
}

pub fn limit(s: &LimitStatus) -> Value {
    let m = s.limit.metric;
    let mut v = json!({
        "metric": m.as_str(),
        "window": s.limit.window.as_str(),
        "unit": m.unit(),
        "max": m.display(s.limit.max),
        "current": m.display(s.current),
        "ratio": s.ratio(),
        "remaining": m.display(s.remaining()),
        "alert_at": s.limit.alert_at,
        "thresholds": s.limit.thresholds.to_vec(),
        "enabled": s.limit.enabled,
        "mode": match s.limit.mode { Mode::Enforce => "enforce", Mode::Shadow => "shadow" },
        "window_id": s.window_id,
        "resets_at": time(s.resets_at),
        "source": s.source,
        "granted": m.display(s.adjustment.granted),
    });
    if let Some(matcher) = &s.limit.matcher {
        v["match"] = json!(matcher.describe());
    }
    v
}

pub fn record(r: &UsageRecord) -> Value {
    json!({
        "at": r.at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "profile": r.profile,
        "org": r.org,
        "provider": r.provider,
        "model": r.model,
        "path": r.path,
        "status": r.status,
        "reason": r.reason,
        "tags": r.tags,
        "cost_usd": nanos_to_usd(r.totals.cost_nanos),
        "cost_nanos": r.totals.cost_nanos,
        "input_tokens": r.totals.input_tokens,
        "output_tokens": r.totals.output_tokens,
        "cached_tokens": r.totals.cached_tokens,
        "characters": r.totals.characters,
    })
}

/// `spendgate usage --by ... --json`: `tenant` is `None` for the whole fleet.
pub fn breakdown(tenant: Option<(crate::domain::Scope, &str)>, by: super::By, range: &super::Range, map: &std::collections::BTreeMap<String, Totals>) -> Value {
    json!({
        "scope": tenant.map(|(s, _)| s.as_str()),
        "id": tenant.map(|(_, id)| id),
        "range": range.label,
        "by": by.as_str(),
        "breakdown": totals_map(map),
    })
}

/// `GET /v1/{profiles,orgs}/{id}/usage`.
pub fn report(r: &Report) -> Value {
    json!({
        "scope": r.scope.as_str(),
        "id": r.id,
        "range": r.range.label,
        "from": r.from,
        "to": r.to,
        "days": r.days,
        "timezone": r.timezone,
        "generated_at": time(r.generated_at),
        "totals": totals(&r.totals),
        "by_provider": totals_map(&r.by_provider),
        "by_model": totals_map(&r.by_model),
        "by_tag": totals_map(&r.by_tag),
        "today": totals(&r.today),
        "month": totals(&r.month),
        "limits": r.limits.iter().map(limit).collect::<Vec<_>>(),
        "recent": r.recent.iter().map(record).collect::<Vec<_>>(),
        "daily": r.daily.iter().map(|(date, t)| day(date, t)).collect::<Vec<_>>(),
    })
}

/// One day of a report's `daily`: the date and its totals.
fn day(date: &str, t: &Totals) -> Value {
    let mut v = totals(t);
    v["date"] = json!(date);
    v
}

fn summary(s: &Summary) -> Value {
    json!({
        "id": s.id,
        "named": s.named,
        "today": totals(&s.today),
        "month": totals(&s.month),
        "ratio": s.ratio(),
        "limits": s.limits.iter().map(limit).collect::<Vec<_>>(),
    })
}

/// `GET /v1/profiles`, `GET /v1/orgs`.
pub fn listing(l: &Listing) -> Value {
    let key = match l.scope {
        crate::domain::Scope::Profile => "profiles",
        crate::domain::Scope::Org => "orgs",
    };
    json!({
        "scope": l.scope.as_str(),
        "timezone": l.timezone,
        "generated_at": time(l.generated_at),
        "total": l.total,
        "known": l.known,
        "q": l.query.search,
        "sort": l.query.sort.as_str(),
        "order": if l.query.descending { "desc" } else { "asc" },
        "offset": l.query.offset,
        "limit": l.query.limit,
        key: l.tenants.iter().map(summary).collect::<Vec<_>>(),
    })
}
