//! Usage reports: what a tenant spent over a range of days and where it stands against each
//! of its limits, assembled from the store. The usage API renders a report as JSON
//! ([`json`]) and `spendgate usage` as a table ([`table`]); both come from the functions here.

pub mod cli;
pub mod json;
pub mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::app::{App, Runtime};
use crate::domain::window::{Calendar, Window};
use crate::domain::Scope;
use crate::quota::control::Adjustment;
use crate::quota::ledger::{CounterKey, History, StoreError, Totals, UsageRecord};
use crate::quota::limit::Limit;

/// Longest a report's store call may take; admin reads are off the request path, so this is
/// generous, but an unreachable store must not hang the API.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reports assembled at once for a listing.
const LIST_CONCURRENCY: usize = 8;

/// The span of days a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// As asked for: `7d`, `30d`, `all`, `month`, or `2026-11-01..2026-11-15`.
    pub label: String,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The last N local days, today included.
    Last(u32),
    /// Local days from..=to.
    Dates { from: NaiveDate, to: NaiveDate },
}

impl Range {
    /// The default range of the usage API.
    pub fn default_range() -> Range {
        Range {
            label: "30d".into(),
            span: Span::Last(30),
        }
    }

    /// Parses `<N>d` (1 up to the retained days) or `all` (every retained day).
    pub fn parse(s: &str, retention_days: u32) -> Result<Range, String> {
        // Today plus `retention_days` days back are kept.
        let retained = retention_days.saturating_add(1);
        if s == "all" {
            return Ok(Range {
                label: "all".into(),
                span: Span::Last(retained),
            });
        }
        let days = s
            .strip_suffix('d')
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..=retained).contains(n))
            .ok_or_else(|| format!("range `{s}` is not one of month, 7d, 30d, 90d, all (or <N>d with N from 1 to {retained})"))?;
        Ok(Range {
            label: s.to_string(),
            span: Span::Last(days),
        })
    }

    /// Parses `from` and `to` (ISO dates, inclusive; `to` defaults to today), clamped to the
    /// retained days (`today` is the local date now).
    pub fn dates(from: &str, to: Option<&str>, retention_days: u32, today: NaiveDate) -> Result<Range, String> {
        let date = |name: &str, v: &str| NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| format!("`{name}` must be a date like 2026-11-01, got `{v}`"));
        let from = date("from", from)?;
        let to = match to {
            Some(t) => date("to", t)?,
            None => today,
        };
        if from > to {
            return Err(format!("`from` ({from}) is after `to` ({to})"));
        }
        let oldest = today - chrono::Duration::days(i64::from(retention_days));
        let (first, last) = (from.max(oldest), to.min(today));
        if first > last {
            return Err(format!("{from}..{to} is outside the retained history ({oldest} to {today})"));
        }
        Ok(Range {
            label: format!("{from}..{to}"),
            span: Span::Dates { from: first, to: last },
        })
    }

    /// The local day ids covered, newest first.
    pub fn days(&self, calendar: &Calendar, now: DateTime<Utc>) -> Vec<String> {
        match self.span {
            Span::Last(n) => calendar.recent_days(now, n),
            Span::Dates { from, to } => from
                .iter_days()
                .take_while(|d| *d <= to)
                .map(|d| d.format("%Y-%m-%d").to_string())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect(),
        }
    }
}

/// The range of a usage request: `range=` (`<N>d`, `all`, or `month`: the current calendar
/// month up to today) or `from=`/`to=` (not both).
pub fn range_from(range: Option<&str>, from: Option<&str>, to: Option<&str>, retention_days: u32, today: NaiveDate) -> Result<Range, String> {
    match (range, from, to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err("give either `range` or `from`/`to`, not both".into()),
        (_, None, Some(_)) => Err("`to` needs `from`".into()),
        (_, Some(f), t) => Range::dates(f, t, retention_days, today),
        (Some("month"), None, None) => {
            let first = today.with_day(1).expect("every month has a first day");
            let mut r = Range::dates(&first.format("%Y-%m-%d").to_string(), None, retention_days, today)?;
            r.label = "month".into();
            Ok(r)
        }
        (Some(r), None, None) => Range::parse(r, retention_days),
        (None, None, None) => Ok(Range::default_range()),
    }
}

/// What `spendgate usage --by` breaks spend down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Tag,
    Provider,
    Model,
}

impl By {
    pub fn parse(s: &str) -> Result<By, String> {
        match s {
            "tag" => Ok(By::Tag),
            "provider" => Ok(By::Provider),
            "model" => Ok(By::Model),
            _ => Err(format!("`--by {s}` is not one of tag, provider, model")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            By::Tag => "tag",
            By::Provider => "provider",
            By::Model => "model",
        }
    }

    /// The breakdown of a history this dimension selects.
    pub fn of(self, h: &History) -> &BTreeMap<String, Totals> {
        match self {
            By::Tag => &h.by_tag,
            By::Provider => &h.by_provider,
            By::Model => &h.by_model,
        }
    }
}

/// Spend over `range` broken down `by` one dimension: of one tenant, or (`None`) of the whole
/// fleet, summed over every profile (each call counts for exactly one profile).
pub async fn breakdown(app: &App, tenant: Option<(Scope, &str)>, by: By, range: &Range) -> Result<BTreeMap<String, Totals>, StoreError> {
    let runtime = app.runtime();
    let days = range.days(&runtime.calendar, app.clock.now());
    let tenants: Vec<(Scope, String)> = match tenant {
        Some((scope, id)) => vec![(scope, id.to_string())],
        None => bounded(app.store.tenants(Scope::Profile))
            .await?
            .into_iter()
            .map(|id| (Scope::Profile, id))
            .collect(),
    };
    let days = &days;
    let histories: Vec<History> = stream::iter(tenants)
        .map(|(scope, id)| async move { history(app, scope, &id, days, 0).await })
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect()
        .await?;
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for h in &histories {
        for (k, t) in by.of(h) {
            out.entry(k.clone()).or_default().add(t);
        }
    }
    Ok(out)
}

/// One limit of a tenant and the value of its counter in the current window.
#[derive(Debug, Clone)]
pub struct LimitStatus {
    /// The limit, its max raised by the current window's grants.
    pub limit: Limit,
    /// Where the tenant's list comes from (`override`, `profile`, `default_profile`, ...).
    pub source: &'static str,
    /// The current window's grants and last reset.
    pub adjustment: Adjustment,
    /// Usage since the window began (or since its last reset), in the metric's integer unit
    /// (nano-dollars for cost).
    pub current: i64,
    /// The current window's id (`2026-11-22`, `2026-11`).
    pub window_id: String,
    pub resets_at: DateTime<Utc>,
}

impl LimitStatus {
    pub fn ratio(&self) -> f64 {
        self.current as f64 / self.limit.max as f64
    }

    pub fn remaining(&self) -> i64 {
        (self.limit.max - self.current).max(0)
    }
}

/// A tenant's usage over a range, its current windows, its limits and its recent requests.
#[derive(Debug, Clone)]
pub struct Report {
    pub scope: Scope,
    pub id: String,
    pub range: Range,
    /// The first and last local day covered, and how many days.
    pub from: String,
    pub to: String,
    pub days: usize,
    pub generated_at: DateTime<Utc>,
    pub timezone: String,
    /// Over the range.
    pub totals: Totals,
    pub by_provider: BTreeMap<String, Totals>,
    pub by_model: BTreeMap<String, Totals>,
    /// By attribution tag (a call with several tags counts under each; a tenant's tags past
    /// `store.max_tags` are `other`).
    pub by_tag: BTreeMap<String, Totals>,
    /// The current local day and month.
    pub today: Totals,
    pub month: Totals,
    pub limits: Vec<LimitStatus>,
    /// Newest first.
    pub recent: Vec<UsageRecord>,
    /// Every day of the range, oldest first, with its totals (zero on days without traffic).
    pub daily: Vec<(String, Totals)>,
}

/// A tenant in a listing: its current day and month, and its limits.
#[derive(Debug, Clone)]
pub struct Summary {
    pub id: String,
    /// Named under `limits.profiles` / `limits.orgs` (else on the default list).
    pub named: bool,
    pub today: Totals,
    pub month: Totals,
    pub limits: Vec<LimitStatus>,
}

impl Summary {
    /// How close the tenant is to its nearest limit: see [`closest_ratio`].
    pub fn ratio(&self) -> Option<f64> {
        closest_ratio(&self.limits)
    }
}

/// The highest ratio to its max among the enabled limits (1.0 = used up); `None` without an
/// enabled limit. A limit of max 0 counts as used up.
pub fn closest_ratio(limits: &[LimitStatus]) -> Option<f64> {
    limits
        .iter()
        .filter(|l| l.limit.enabled)
        .map(|l| if l.limit.max > 0 { l.ratio() } else { 1.0 })
        .max_by(f64::total_cmp)
}

/// What a listing is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// The tenant id.
    #[default]
    Name,
    /// [`closest_ratio`]: the tenants nearest to a limit first when descending.
    Ratio,
    /// Spend in the current month.
    Cost,
}

impl SortKey {
    pub fn parse(s: &str) -> Result<SortKey, String> {
        match s {
            "name" | "id" => Ok(SortKey::Name),
            "ratio" => Ok(SortKey::Ratio),
            "cost" => Ok(SortKey::Cost),
            _ => Err(format!("`sort` must be one of ratio, cost, name, got `{s}`")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Ratio => "ratio",
            SortKey::Cost => "cost",
        }
    }

    /// The order when none is asked for: names A to Z, ratios and costs largest first.
    pub fn descending_by_default(self) -> bool {
        self != SortKey::Name
    }
}

/// Which tenants of a listing, in which order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Keeps the tenants whose id contains this, ignoring case.
    pub search: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    pub offset: usize,
    /// At most this many tenants (all of them when `None`).
    pub limit: Option<usize>,
}

/// Every known tenant of a scope, summarised.
#[derive(Debug, Clone)]
pub struct Listing {
    pub scope: Scope,
    pub generated_at: DateTime<Utc>,
    pub timezone: String,
    /// How many tenants match the search (before `offset`/`limit`): what a pager counts.
    pub total: usize,
    /// How many tenants are known in all (before the search).
    pub known: usize,
    pub query: ListQuery,
    pub tenants: Vec<Summary>,
}

/// Runs a store call with a timeout (the store itself times and counts it).
async fn bounded<T>(fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    match tokio::time::timeout(READ_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout(READ_TIMEOUT)),
    }
}

/// The day ids of the current local month up to today, newest first.
fn month_days(calendar: &Calendar, now: DateTime<Utc>) -> Vec<String> {
    calendar.recent_days(now, calendar.local_date(now).day())
}

fn sum_days<'a>(days: impl IntoIterator<Item = &'a Totals>) -> Totals {
    let mut t = Totals::default();
    for d in days {
        t.add(d);
    }
    t
}

/// The current value of every limit of a tenant (its own list or the scope's default).
pub async fn limit_statuses(app: &App, runtime: &Runtime, scope: Scope, id: &str, now: DateTime<Utc>) -> Result<Vec<LimitStatus>, StoreError> {
    let mut all = limit_statuses_many(app, runtime, &[(scope, id.to_string())], now).await?;
    Ok(all.pop().unwrap_or_default())
}

/// The limits of several tenants, read from the store in one call.
pub async fn limit_statuses_many(app: &App, runtime: &Runtime, tenants: &[(Scope, String)], now: DateTime<Utc>) -> Result<Vec<Vec<LimitStatus>>, StoreError> {
    let buckets = Window::ALL.map(|w| runtime.calendar.bucket(w, now));
    let bucket = |w: Window| &buckets[w as usize];
    let overlay = app.control_cache.load_full();
    let mut keys = Vec::new();
    for (scope, id) in tenants {
        for limit in overlay.limits(&runtime.limits, *scope, id).0.iter() {
            keys.push(CounterKey {
                scope: *scope,
                tenant: Arc::from(id.as_str()),
                window: limit.window,
                bucket: bucket(limit.window).id.clone(),
                field: limit.field(),
            });
        }
    }
    let values = if keys.is_empty() { Vec::new() } else { bounded(app.store.read(&keys)).await? };
    if values.len() != keys.len() {
        return Err(StoreError::Other(format!(
            "the store answered {} values for {} counters",
            values.len(),
            keys.len()
        )));
    }
    let mut values = values.into_iter();
    Ok(tenants
        .iter()
        .map(|(scope, id)| {
            let (list, source) = overlay.limits(&runtime.limits, *scope, id);
            list.iter()
                .zip(values.by_ref())
                .map(|(limit, counter)| {
                    let b = bucket(limit.window);
                    let adjustment = overlay.adjustment(*scope, id, limit, &b.id);
                    let mut limit = limit.clone();
                    limit.max = limit.max.saturating_add(adjustment.granted);
                    LimitStatus {
                        limit,
                        source: source.as_str(*scope),
                        adjustment,
                        current: (counter - adjustment.offset).max(0),
                        window_id: b.id.to_string(),
                        resets_at: b.resets_at,
                    }
                })
                .collect()
        })
        .collect())
}

async fn history(app: &App, scope: Scope, id: &str, days: &[String], recent: usize) -> Result<History, StoreError> {
    bounded(app.store.history(scope, id, days, recent)).await
}

/// True when the tenant is named in the config or has history in the store.
async fn is_known(app: &App, runtime: &Runtime, scope: Scope, id: &str, range_history: &History) -> Result<bool, StoreError> {
    if runtime.limits.named(scope).any(|n| n == id)
        || app.control_cache.load().tenant(scope, id).is_some()
        || !range_history.days.is_empty()
        || !range_history.recent.is_empty()
    {
        return Ok(true);
    }
    Ok(bounded(app.store.tenants(scope)).await?.iter().any(|t| t == id))
}

/// A tenant's report, or `None` when the tenant is unknown (not named in the config and
/// without history).
pub async fn report(app: &App, scope: Scope, id: &str, range: Range) -> Result<Option<Report>, StoreError> {
    if crate::domain::tenant_id::validate_id(id).is_err() {
        return Ok(None);
    }
    let runtime = app.runtime();
    let now = app.clock.now();
    let calendar = &runtime.calendar;
    let range_days = range.days(calendar, now);
    let month = month_days(calendar, now);
    let recent = runtime.config.store.recent_max;
    // The month needs its own read when the range does not cover it.
    let month_in_range = {
        let covered: BTreeSet<&String> = range_days.iter().collect();
        month.iter().all(|d| covered.contains(d))
    };
    let (h, month_history, limits) = tokio::try_join!(
        history(app, scope, id, &range_days, recent),
        async {
            if month_in_range {
                Ok(None)
            } else {
                history(app, scope, id, &month, 0).await.map(Some)
            }
        },
        limit_statuses(app, &runtime, scope, id, now),
    )?;
    if !is_known(app, &runtime, scope, id, &h).await? {
        return Ok(None);
    }
    let month_source = month_history.as_ref().unwrap_or(&h);
    let today_id = &month[0];
    Ok(Some(Report {
        scope,
        id: id.to_string(),
        range,
        from: range_days.last().cloned().unwrap_or_default(),
        to: range_days.first().cloned().unwrap_or_default(),
        days: range_days.len(),
        generated_at: now,
        timezone: calendar.tz.name().to_string(),
        totals: sum_days(h.days.values()),
        today: month_source.days.get(today_id).cloned().unwrap_or_default(),
        month: sum_days(month.iter().filter_map(|d| month_source.days.get(d))),
        by_provider: h.by_provider,
        by_model: h.by_model,
        by_tag: h.by_tag,
        limits,
        daily: range_days
            .iter()
            .rev()
            .map(|d| (d.clone(), h.days.get(d).cloned().unwrap_or_default()))
            .collect(),
        recent: h.recent,
    }))
}

/// The ids from `offset`, at most `limit` of them.
fn page<T>(items: Vec<T>, q: &ListQuery) -> Vec<T> {
    items.into_iter().skip(q.offset).take(q.limit.unwrap_or(usize::MAX)).collect()
}

/// Every tenant of a scope known to the store or named in the config, sorted by id, from
/// `offset`, at most `limit` of them (see [`search`]).
pub async fn listing(
    app: &App,
    scope: Scope,
    offset: usize,
    limit: Option<usize>,
    only: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> Result<Listing, StoreError> {
    let q = ListQuery {
        offset,
        limit,
        ..ListQuery::default()
    };
    search(app, scope, &q, only).await
}

/// The tenants of a scope known to the store or named in the config that match `q.search`,
/// ordered by `q.sort`, one page of them summarised.
/// `only`, when given, keeps the tenants it answers true for (a scoped token's view).
///
/// Cost: the ids come from one store call; sorting by ratio reads the current counters of
/// every matching tenant in one call (memory for the embedded store), sorting by cost reads
/// every tenant's month in one call ([`crate::quota::ledger::Store::tenant_totals`]); only
/// the page's tenants are then read one by one.
pub async fn search(app: &App, scope: Scope, q: &ListQuery, only: Option<&(dyn Fn(&str) -> bool + Sync)>) -> Result<Listing, StoreError> {
    let runtime = app.runtime();
    let now = app.clock.now();
    let mut ids: BTreeSet<String> = bounded(app.store.tenants(scope)).await?.into_iter().collect();
    ids.extend(runtime.limits.named(scope).cloned());
    ids.extend(app.control_cache.load().tenants().filter(|(t, _)| t.scope == scope).map(|(t, _)| t.id));
    if let Some(keep) = only {
        ids.retain(|id| keep(id));
    }
    let known = ids.len();
    if let Some(needle) = q.search.as_deref().map(str::to_lowercase).filter(|n| !n.is_empty()) {
        ids.retain(|id| id.to_lowercase().contains(&needle));
    }
    let total = ids.len();
    let ids: Vec<String> = ids.into_iter().collect();
    let month_id = runtime.calendar.bucket(Window::Monthly, now).id.to_string();
    let today_id = runtime.calendar.bucket(Window::Daily, now).id.to_string();
    // The page, with what was read to order it.
    let (page_ids, mut statuses): (Vec<String>, Option<Vec<Vec<LimitStatus>>>) = match q.sort {
        SortKey::Name => {
            let mut ids = ids;
            if q.descending {
                ids.reverse();
            }
            (page(ids, q), None)
        }
        SortKey::Ratio => {
            let tenants: Vec<(Scope, String)> = ids.into_iter().map(|id| (scope, id)).collect();
            let all = limit_statuses_many(app, &runtime, &tenants, now).await?;
            let mut rows: Vec<(Option<f64>, String, Vec<LimitStatus>)> = tenants.into_iter().zip(all).map(|((_, id), l)| (closest_ratio(&l), id, l)).collect();
            // Ties (and tenants without limits, last when descending) by id, A to Z.
            let key = |r: &Option<f64>| r.unwrap_or(-1.0);
            if q.descending {
                rows.sort_by(|a, b| key(&b.0).total_cmp(&key(&a.0)).then_with(|| a.1.cmp(&b.1)));
            } else {
                rows.sort_by(|a, b| key(&a.0).total_cmp(&key(&b.0)).then_with(|| a.1.cmp(&b.1)));
            }
            let (ids, limits): (Vec<String>, Vec<Vec<LimitStatus>>) = page(rows, q).into_iter().map(|(_, id, l)| (id, l)).unzip();
            (ids, Some(limits))
        }
        SortKey::Cost => {
            let spent = bounded(app.store.tenant_totals(scope, std::slice::from_ref(&month_id))).await?;
            let cost = |id: &str| spent.get(id).map_or(0, |t| t.cost_nanos);
            let mut rows: Vec<(i64, String)> = ids.into_iter().map(|id| (cost(&id), id)).collect();
            if q.descending {
                rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            } else {
                rows.sort();
            }
            (page(rows, q).into_iter().map(|(_, id)| id).collect(), None)
        }
    };
    let limits = match statuses.take() {
        Some(l) => l,
        None => {
            let tenants: Vec<(Scope, String)> = page_ids.iter().map(|id| (scope, id.clone())).collect();
            limit_statuses_many(app, &runtime, &tenants, now).await?
        }
    };
    let periods = [today_id.clone(), month_id.clone()];
    let reads: Vec<_> = page_ids.iter().map(|id| history(app, scope, id, &periods, 0)).collect();
    let histories: Vec<History> = stream::iter(reads).buffered(LIST_CONCURRENCY).try_collect().await?;
    let tenants = page_ids
        .into_iter()
        .zip(limits)
        .zip(histories)
        .map(|((id, limits), mut h)| Summary {
            named: runtime.limits.named(scope).any(|n| *n == id),
            today: h.days.remove(&today_id).unwrap_or_default(),
            month: h.days.remove(&month_id).unwrap_or_default(),
            limits,
            id,
        })
        .collect();
    Ok(Listing {
        scope,
        generated_at: now,
        timezone: runtime.calendar.tz.name().to_string(),
        total,
        known,
        query: q.clone(),
        tenants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(Range::parse("7d", 400).unwrap().span, Span::Last(7));
        assert_eq!(Range::parse("90d", 400).unwrap().span, Span::Last(90));
        assert_eq!(Range::parse("all", 400).unwrap().span, Span::Last(401));
        for bad in ["", "0d", "7", "d", "-1d", "402d", "7D", "1w", " 7d"] {
            assert!(Range::parse(bad, 400).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn date_ranges() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 29).unwrap();
        let cal = Calendar::new(chrono_tz::UTC);
        let now = Utc::now();
        let r = range_from(None, Some("2026-11-01"), Some("2026-11-03"), 400, today).unwrap();
        assert_eq!(r.label, "2026-11-01..2026-11-03");
        assert_eq!(r.days(&cal, now), ["2026-11-03", "2026-11-02", "2026-11-01"]);
        // `to` defaults to today and is clamped to it; `from` to the retained days.
        let r = range_from(None, Some("2026-11-28"), None, 400, today).unwrap();
        assert_eq!(
            r.span,
            Span::Dates {
                from: NaiveDate::from_ymd_opt(2026, 11, 28).unwrap(),
                to: today
            }
        );
        let r = range_from(None, Some("2020-01-01"), Some("2027-01-01"), 10, today).unwrap();
        assert_eq!(
            r.span,
            Span::Dates {
                from: NaiveDate::from_ymd_opt(2026, 11, 19).unwrap(),
                to: today
            }
        );
        for (range, from, to) in [
            (Some("7d"), Some("2026-11-01"), None),
            (None, None, Some("2026-11-01")),
            (None, Some("2026-11-05"), Some("2026-11-01")),
            (None, Some("2026-13-01"), None),
            (None, Some("yesterday"), None),
            (None, Some("2020-01-01"), Some("2020-02-01")),
        ] {
            assert!(range_from(range, from, to, 400, today).is_err(), "{range:?} {from:?} {to:?}");
        }
        assert_eq!(range_from(None, None, None, 400, today).unwrap(), Range::default_range());
        // The current calendar month, up to today, within the retained days.
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        let r = range_from(Some("month"), None, None, 400, today).unwrap();
        assert_eq!((r.label.as_str(), r.span), ("month", Span::Dates { from: day(1), to: today }));
        assert_eq!(r.days(&cal, now).len(), 29);
        let r = range_from(Some("month"), None, None, 10, today).unwrap();
        assert_eq!(r.span, Span::Dates { from: day(19), to: today });
        let first = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert_eq!(
            range_from(Some("month"), None, None, 400, first).unwrap().span,
            Span::Dates { from: first, to: first }
        );
        assert!(range_from(Some("month"), Some("2026-11-01"), None, 400, today).is_err());
    }
}
