//! Quota: which counters a request touches, the atomic check-and-reserve before forwarding,
//! and the settlement that replaces the estimate with the real usage afterwards.
//!
//! A request is admitted while every enforcing limit that matches it, of its profile and of
//! its org, is below its max, where the counter already includes the reservations of
//! requests in flight. The request that crosses a max is admitted (its cost is not known
//! until it is reserved); the next one is refused. With exact estimates the final spend of
//! a window is therefore at most one request's cost past the max; with estimates, the
//! overshoot also includes the estimate error of the requests in flight.

pub mod control;
pub mod deferred;
pub mod ledger;
pub mod limit;
pub mod refusal;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::domain::window::{Bucket, Calendar, Window};
use crate::domain::{Metric, Scope};
use crate::providers::Usage;
use crate::tenant::Tenant;
use control::{Adjustment, Overlay};
use ledger::{CounterKey, CounterOp, Expiry, OpenCall, ReserveRequest};
use limit::{CallKey, Limit, LimitSet};
pub use refusal::Refusal;

/// A request's amount in each metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    pub cost_nanos: i64,
    pub tokens: i64,
    pub requests: i64,
    pub characters: i64,
}

impl Amounts {
    pub fn new(cost_nanos: i64, usage: &Usage, requests: i64) -> Self {
        Self {
            cost_nanos,
            tokens: i64::try_from(usage.tokens()).unwrap_or(i64::MAX),
            requests,
            characters: i64::try_from(usage.characters).unwrap_or(i64::MAX),
        }
    }

    pub fn get(&self, m: Metric) -> i64 {
        match m {
            Metric::CostUsd => self.cost_nanos,
            Metric::Tokens => self.tokens,
            Metric::Requests => self.requests,
            Metric::Characters => self.characters,
        }
    }
}

/// One limit that applies to a request, and the counter that holds it.
#[derive(Debug, Clone)]
pub struct Check {
    pub op: usize,
    pub scope: Scope,
    pub tenant: Arc<str>,
    /// The limit, its max raised by the window's grants.
    pub limit: Limit,
    pub resets_at: DateTime<Utc>,
    /// The counter's value at the window's last reset: usage is counted from it.
    pub offset: i64,
}

/// The counters a request touches and the limits that watch them.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Shared with the reservation request (and the store that keeps it) without copying
    /// every key; changed only through [`Plan::set_amounts`].
    pub ops: Arc<[CounterOp]>,
    /// The metric each op counts.
    pub metrics: Vec<Metric>,
    pub checks: Vec<Check>,
    pub expires: Expiry,
}

/// A plan's ops, metrics and checks while [`Plan::new`] gathers them.
struct Building {
    ops: Vec<CounterOp>,
    metrics: Vec<Metric>,
    checks: Vec<Check>,
}

impl Building {
    fn push_op(&mut self, scope: Scope, id: &Arc<str>, bucket: &Bucket, field: Arc<str>, metric: Metric, amount: i64) -> usize {
        self.ops.push(CounterOp {
            key: CounterKey {
                scope,
                tenant: id.clone(),
                window: bucket.window,
                bucket: bucket.id.clone(),
                field,
            },
            amount,
            max: None,
            watched: false,
        });
        self.metrics.push(metric);
        self.ops.len() - 1
    }
}

/// How long counters are kept after their window ends (rate windows: see [`Plan::new`]).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub daily_days: u32,
    pub monthly_months: u32,
}

impl Plan {
    /// Plans the counters of a request at `now`. Every tenant always gets its base counters
    /// (cost, tokens, requests, characters per day and month), so a limit added later sees
    /// what was already spent in its window; limits with a `match` get their own counter.
    /// The run-time `overlay` chooses each tenant's list (override or YAML) and raises maxima
    /// by the window's grants and its last reset's offset. Minute and hour counters exist only
    /// for the limits that use them (a rate window is short: a new one starts from zero soon
    /// enough); limits of one window and metric share one counter.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        limits: &LimitSet,
        overlay: &Overlay,
        calendar: &Calendar,
        retention: Retention,
        tenant: &Tenant,
        call: &CallKey<'_>,
        amounts: &Amounts,
        now: DateTime<Utc>,
    ) -> Plan {
        let daily = calendar.bucket(Window::Daily, now);
        let monthly = calendar.bucket(Window::Monthly, now);
        // Rate windows are kept a little past their end, for a settlement that arrives late.
        let expires = Expiry {
            minute: now + Window::Minute.rate_keep().expect("a rate window"),
            hour: now + Window::Hour.rate_keep().expect("a rate window"),
            daily: daily.resets_at + Duration::days(i64::from(retention.daily_days)),
            monthly: monthly.resets_at + Duration::days(31 * i64::from(retention.monthly_months)),
        };
        let mut plan = Building {
            ops: Vec::with_capacity(24),
            metrics: Vec::with_capacity(24),
            checks: Vec::new(),
        };
        let mut rate: [Option<Bucket>; 2] = [None, None];
        let scopes = std::iter::once((Scope::Profile, tenant.profile.as_str())).chain(tenant.org.as_deref().map(|o| (Scope::Org, o)));
        for (scope, id) in scopes {
            let name: Arc<str> = Arc::from(id);
            // The tenant's run-time control data, looked up once (none for most tenants).
            let run_time = overlay.tenant(scope, id);
            let list = run_time.and_then(|t| t.limits.as_ref()).unwrap_or_else(|| limits.for_tenant(scope, id));
            for window in Window::ALL {
                let mut applicable = list.iter().filter(|l| l.window == window && l.applies_to(call)).peekable();
                let bucket = match window {
                    Window::Daily => &daily,
                    Window::Monthly => &monthly,
                    Window::Minute | Window::Hour => {
                        if applicable.peek().is_none() {
                            continue;
                        }
                        let slot = &mut rate[usize::from(window == Window::Hour)];
                        &*slot.get_or_insert_with(|| calendar.bucket(window, now))
                    }
                };
                let base = plan.ops.len();
                if !window.is_rate() {
                    for metric in Metric::ALL {
                        plan.push_op(scope, &name, bucket, metric.counter_field(), metric, amounts.get(metric));
                    }
                }
                for limit in applicable {
                    let adj = run_time.map_or_else(Adjustment::default, |t| control::adjustment_of(&t.record, limit, &bucket.id));
                    let op = if limit.matcher.is_none() && !window.is_rate() {
                        base + Metric::ALL.iter().position(|m| *m == limit.metric).expect("every metric has a base counter")
                    } else {
                        let field = limit.field();
                        match plan.ops[base..].iter().position(|o| o.key.field == field) {
                            Some(i) => base + i,
                            None => plan.push_op(scope, &name, bucket, field, limit.metric, amounts.get(limit.metric)),
                        }
                    };
                    plan.ops[op].watched = true;
                    let mut limit = limit.clone();
                    limit.max = limit.max.saturating_add(adj.granted);
                    if limit.enforcing() {
                        let at = limit.max.saturating_add(adj.offset);
                        let max = &mut plan.ops[op].max;
                        *max = Some(max.map_or(at, |m| m.min(at)));
                    }
                    plan.checks.push(Check {
                        op,
                        scope,
                        tenant: name.clone(),
                        limit,
                        resets_at: bucket.resets_at,
                        offset: adj.offset,
                    });
                }
            }
        }
        Plan {
            ops: plan.ops.into(),
            metrics: plan.metrics,
            checks: plan.checks,
            expires,
        }
    }

    /// Sets each op's amount to `amount(op, its metric)`.
    pub fn set_amounts(&mut self, amount: impl Fn(&CounterOp, Metric) -> i64) {
        self.ops = self
            .ops
            .iter()
            .zip(&self.metrics)
            .map(|(op, m)| CounterOp {
                amount: amount(op, *m),
                ..op.clone()
            })
            .collect();
    }

    /// Reserves nothing on the counters no limit reads: their settlement adds the whole
    /// amount (`deltas` against a zero reservation). For a store that would rather not write
    /// them on the request's path ([`crate::quota::ledger::Store::reserves_unwatched`]).
    pub fn defer_unwatched(&mut self) {
        if self.ops.iter().any(|op| !op.watched && op.amount != 0) {
            self.set_amounts(|op, _| if op.watched { op.amount } else { 0 });
        }
    }

    pub fn reserve_request(&self, call: Option<OpenCall>) -> ReserveRequest {
        ReserveRequest {
            ops: self.ops.clone(),
            expires: self.expires,
            call: call.map(std::sync::Arc::new),
        }
    }

    /// The refusal for a store's `Refused { index, current }`.
    pub fn refusal(&self, index: usize, current: i64) -> Refusal {
        let check = self
            .checks
            .iter()
            .filter(|c| c.op == index && c.limit.enforcing())
            .min_by_key(|c| c.limit.max.saturating_add(c.offset))
            .or_else(|| self.checks.iter().find(|c| c.op == index))
            .expect("only ops with a max refuse, and only checks set a max");
        Refusal {
            scope: check.scope,
            tenant: check.tenant.to_string(),
            limit: check.limit.clone(),
            current: current - check.offset,
            resets_at: check.resets_at,
        }
    }

    /// The counter corrections once the real amounts are known.
    pub fn deltas(&self, actual: &Amounts) -> Vec<(CounterKey, i64)> {
        self.ops
            .iter()
            .zip(&self.metrics)
            .filter_map(|(op, m)| {
                let d = actual.get(*m) - op.amount;
                (d != 0).then(|| (op.key.clone(), d))
            })
            .collect()
    }

    /// Each check's value after this request's reservation, given the values before it
    /// (counted from the window's last reset).
    pub fn values_after<'a>(&'a self, before: &'a [i64]) -> impl Iterator<Item = (usize, i64)> + 'a {
        self.checks
            .iter()
            .enumerate()
            .map(|(i, c)| (i, before.get(c.op).copied().unwrap_or(0) + self.ops[c.op].amount - c.offset))
    }

    /// The tightest enabled limit after admission: `(check index, remaining)`, by the
    /// smallest remaining fraction of its max.
    pub fn tightest(&self, before: &[i64]) -> Option<(usize, i64)> {
        self.values_after(before)
            .filter(|(i, _)| self.checks[*i].limit.enabled)
            .map(|(i, v)| (i, self.checks[i].limit.max - v))
            .min_by(|(a, ra), (b, rb)| {
                let fa = *ra as f64 / self.checks[*a].limit.max as f64;
                let fb = *rb as f64 / self.checks[*b].limit.max as f64;
                fa.total_cmp(&fb)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ProviderKind};
    use crate::domain::window::Window;
    use crate::domain::Metric;

    fn setup(yaml: &str) -> (LimitSet, Calendar) {
        let c = Config::from_yaml(yaml, "t").unwrap();
        (LimitSet::new(&c.limits), Calendar::new(c.timezone.0))
    }

    const RET: Retention = Retention {
        daily_days: 400,
        monthly_months: 25,
    };

    fn call(model: &str) -> CallKey<'_> {
        CallKey {
            provider: "gemini",
            kind: ProviderKind::Gemini,
            model: Some(model),
            path: "/v1/models/x:predict",
            tags: &[],
        }
    }

    /// Profile p1 of org acme, and the instant the plans are made at.
    fn p1_of_acme() -> (Tenant, DateTime<Utc>) {
        let tenant = Tenant {
            profile: "p1".into(),
            org: Some("acme".into()),
        };
        (tenant, DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().with_timezone(&Utc))
    }

    #[test]
    fn base_counters_for_profile_and_org_and_filtered_limits() {
        let (limits, cal) = setup(
            "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 10}\n  orgs:\n    acme:\n      - {metric: requests, window: daily, max: 50, match: {provider: gemini, model: \"imagen-*\"}}\n",
        );
        let (tenant, now) = p1_of_acme();
        let amounts = Amounts {
            cost_nanos: 5,
            tokens: 0,
            requests: 1,
            characters: 0,
        };
        let plan = Plan::new(
            &limits,
            &Overlay::default(),
            &cal,
            RET,
            &tenant,
            &call("imagen-4.0-generate-001"),
            &amounts,
            now,
        );
        // 2 scopes x 2 windows x 4 base counters + 1 filtered.
        assert_eq!(plan.ops.len(), 17);
        assert_eq!(plan.checks.len(), 2);
        let monthly_cost = &plan.ops[plan.checks[0].op];
        assert_eq!(&*monthly_cost.key.field, "cost");
        assert_eq!(&*monthly_cost.key.bucket, "2026-11");
        assert_eq!(monthly_cost.max, Some(10_000_000_000));
        let filtered = &plan.ops[plan.checks[1].op];
        assert!(filtered.key.field.starts_with("requests#"));
        assert_eq!(filtered.amount, 1);
        assert_eq!(filtered.max, Some(50));
        // A model outside the match does not touch the filtered counter.
        let plan = Plan::new(&limits, &Overlay::default(), &cal, RET, &tenant, &call("gemini-2.5-flash"), &amounts, now);
        assert_eq!(plan.ops.len(), 16);
        let r = plan.refusal(plan.checks[0].op, 10_020_000_000);
        assert_eq!(r.message(), "Monthly cost limit reached for profile p1: used $10.02 of $10.00");
    }

    #[test]
    fn deferring_leaves_only_the_watched_counters_in_the_reservation() {
        // One enforcing limit and one that only alerts (a shadow limit is still read).
        let (limits, cal) = setup(
            "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 10}\n    - {metric: tokens, window: daily, max: 100, enabled: false}\n",
        );
        let (tenant, now) = p1_of_acme();
        let amounts = Amounts {
            cost_nanos: 5,
            tokens: 7,
            requests: 1,
            characters: 3,
        };
        let mut plan = Plan::new(&limits, &Overlay::default(), &cal, RET, &tenant, &call("gemini-2.5-flash"), &amounts, now);
        let watched: Vec<usize> = plan.checks.iter().map(|c| c.op).collect();
        assert_eq!(watched.len(), 2);
        assert_eq!(plan.ops.iter().filter(|op| op.watched).count(), 2);
        plan.defer_unwatched();
        for (i, op) in plan.ops.iter().enumerate() {
            let expected = if watched.contains(&i) { amounts.get(plan.metrics[i]) } else { 0 };
            assert_eq!(op.amount, expected, "{:?}", op.key);
        }
        // The settlement adds the whole actual amount to the deferred counters and corrects
        // the reserved ones.
        let actual = Amounts {
            cost_nanos: 4,
            tokens: 9,
            requests: 1,
            characters: 3,
        };
        let deltas: std::collections::HashMap<_, _> = plan.deltas(&actual).into_iter().collect();
        for (i, op) in plan.ops.iter().enumerate() {
            let m = plan.metrics[i];
            let expected = if watched.contains(&i) {
                actual.get(m) - amounts.get(m)
            } else {
                actual.get(m)
            };
            assert_eq!(deltas.get(&op.key).copied().unwrap_or(0), expected, "{:?}", op.key);
        }
        // Values after admission are unchanged for the limits.
        let before = vec![0; plan.ops.len()];
        let after: Vec<i64> = plan.values_after(&before).map(|(_, v)| v).collect();
        assert_eq!(after, vec![7, 5], "daily tokens, then monthly cost");
    }

    #[test]
    fn overrides_grants_and_resets_shape_the_plan() {
        use control::{ControlState, Grant, LimitEntry, Reset, TenantControl, TenantRef};
        let (limits, cal) = setup("limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 10}\n");
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().with_timezone(&Utc);
        let entries: Vec<LimitEntry> = Config::from_yaml(
            "limits:\n  default_profile:\n    - {metric: cost_usd, window: monthly, max: 20}\n    - {metric: requests, window: daily, max: 3}\n",
            "t",
        )
        .unwrap()
        .limits
        .default_profile
        .iter()
        .map(LimitEntry::from_spec)
        .collect();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let record = TenantControl {
            limits: Some(entries),
            grants: vec![Grant {
                metric: Metric::CostUsd,
                window: Window::Monthly,
                bucket: "2026-11".into(),
                amount: 5_000_000_000,
                reason: "r".into(),
                token: "ops".into(),
                at: now,
                expires_at: at("2026-12-01T00:00:00Z"),
            }],
            resets: vec![Reset {
                metric: Metric::CostUsd,
                window: Window::Monthly,
                bucket: "2026-11".into(),
                offsets: [("cost".to_string(), 7_000_000_000)].into(),
                reason: "r".into(),
                token: "ops".into(),
                at: now,
                expires_at: at("2026-12-01T00:00:00Z"),
            }],
            override_meta: None,
        };
        let overlay = Overlay::build(ControlState {
            version: 1,
            tenants: vec![(TenantRef::new(Scope::Profile, "p1"), record)],
        });
        let tenant = Tenant {
            profile: "p1".into(),
            org: None,
        };
        let plan = Plan::new(&limits, &overlay, &cal, RET, &tenant, &call("m"), &Amounts::default(), now);
        assert_eq!(plan.checks.len(), 2, "the override's list, not the YAML's");
        let cost = plan.checks.iter().find(|c| c.limit.metric == Metric::CostUsd).unwrap();
        assert_eq!(cost.limit.max, 25_000_000_000, "max plus the top-up");
        assert_eq!(plan.ops[cost.op].max, Some(32_000_000_000), "and the counter's value at the reset");
        let r = plan.refusal(cost.op, 32_500_000_000);
        assert_eq!(r.message(), "Monthly cost limit reached for profile p1: used $25.50 of $25.00");
        // Another tenant keeps the YAML.
        let other = Tenant {
            profile: "p2".into(),
            org: None,
        };
        let plan = Plan::new(&limits, &overlay, &cal, RET, &other, &call("m"), &Amounts::default(), now);
        assert_eq!(plan.ops[plan.checks[0].op].max, Some(10_000_000_000));
    }

    #[test]
    fn rate_windows_get_counters_only_where_a_limit_uses_them() {
        let (limits, cal) = setup(
            "limits:\n  default_profile:\n    - {metric: requests, window: minute, max: 10}\n    - {metric: cost_usd, window: minute, max: 1, match: {provider: gemini}}\n    - {metric: tokens, window: hour, max: 1000}\n",
        );
        let tenant = Tenant {
            profile: "p1".into(),
            org: Some("acme".into()),
        };
        let amounts = Amounts {
            cost_nanos: 5,
            tokens: 7,
            requests: 1,
            characters: 0,
        };
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:05:30Z").unwrap().with_timezone(&Utc);
        let plan = Plan::new(&limits, &Overlay::default(), &cal, RET, &tenant, &call("m"), &amounts, now);
        // 16 base counters + the profile's minute requests and cost#match and hour tokens;
        // the org (default_org is empty) gets no rate counters.
        assert_eq!(plan.ops.len(), 19);
        assert_eq!(plan.checks.len(), 3);
        let minute = &plan.ops[plan.checks[0].op];
        assert_eq!(
            (minute.key.window, &*minute.key.bucket, &*minute.key.field),
            (Window::Minute, "2026-11-22T10:05+00:00", "requests")
        );
        assert_eq!(minute.max, Some(10));
        assert_eq!(plan.checks[0].resets_at, now + Duration::seconds(30));
        let hour = &plan.ops[plan.checks[2].op];
        assert_eq!((hour.key.window, &*hour.key.bucket, hour.amount), (Window::Hour, "2026-11-22T10+00:00", 7));
        assert!(plan.expires.minute > plan.checks[0].resets_at);
        let r = plan.refusal(plan.checks[0].op, 10);
        assert_eq!((r.status(), r.kind()), (429, "rate_limited"));
        assert_eq!(r.retry_after(now), 30);
        assert_eq!(r.message(), "Per-minute request limit reached for profile p1: used 10 requests of 10 requests");
        assert_eq!(r.body()["error"]["status"], "RATE_LIMITED");
        // Without a limit on them, no rate counters at all.
        let (limits, cal) = setup("");
        assert_eq!(
            Plan::new(&limits, &Overlay::default(), &cal, RET, &tenant, &call("m"), &amounts, now).ops.len(),
            16
        );
    }

    #[test]
    fn shadow_and_disabled_limits_never_set_a_max() {
        let (limits, cal) = setup("limits:\n  default_profile:\n    - {metric: requests, window: daily, max: 1, mode: shadow}\n    - {metric: tokens, window: daily, max: 1, enabled: false}\n");
        let tenant = Tenant {
            profile: "p1".into(),
            org: None,
        };
        let plan = Plan::new(&limits, &Overlay::default(), &cal, RET, &tenant, &call("m"), &Amounts::default(), Utc::now());
        assert!(plan.ops.iter().all(|o| o.max.is_none()));
        assert_eq!(plan.checks.len(), 2);
    }

    #[test]
    fn deltas_replace_the_estimate() {
        let (limits, cal) = setup("");
        let tenant = Tenant {
            profile: "p1".into(),
            org: None,
        };
        let est = Amounts {
            cost_nanos: 100,
            tokens: 50,
            requests: 1,
            characters: 0,
        };
        let plan = Plan::new(&limits, &Overlay::default(), &cal, RET, &tenant, &call("m"), &est, Utc::now());
        let d = plan.deltas(&Amounts {
            cost_nanos: 70,
            tokens: 50,
            requests: 1,
            characters: 0,
        });
        assert_eq!(d.len(), 2, "daily and monthly cost");
        assert!(d.iter().all(|(k, v)| &*k.field == "cost" && *v == -30));
    }
}
