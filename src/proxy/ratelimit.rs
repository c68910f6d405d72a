//! The IETF `RateLimit-Policy` and `RateLimit` response headers
//! (draft-ietf-httpapi-ratelimit-headers-08 and later), computed from the values the
//! reservation already returned: no store call of their own.
//!
//! For each window a request is limited in, the tightest enforcing limit (the smallest
//! remaining fraction of its max, profile and org alike) is one quota policy, tightest window
//! first:
//!
//! ```text
//! RateLimit-Policy: "profile-requests-minute";q=60;w=60, "profile-cost_usd-monthly";q=50000000;qu="usd-micros";w=2592000
//! RateLimit: "profile-requests-minute";r=59;t=42, "profile-cost_usd-monthly";r=49997990;t=1180800
//! ```
//!
//! The policy name is `<scope>-<metric>-<window>`, plus `-<match id>` for a limit with a
//! `match`. `q` is the max and `r` what remains after this request's reservation (never below
//! 0), in the metric's unit: `qu` is omitted for requests (the draft's default unit) and is
//! `tokens`, `characters` or `usd-micros` (cost in millionths of a dollar, rounded down)
//! otherwise. `w` is the window's nominal length in seconds (a month counts 30 days) and `t`
//! the seconds until the current window ends.

use chrono::{DateTime, Utc};
use http::HeaderValue;

use crate::domain::window::Window;
use crate::domain::Metric;
use crate::quota::Plan;

/// `(RateLimit-Policy, RateLimit)` for an admitted request; `None` when no enforcing limit
/// watches it.
pub fn headers(plan: &Plan, before: &[i64], now: DateTime<Utc>) -> Option<(HeaderValue, HeaderValue)> {
    // The tightest check per window: (fraction left, check index, remaining).
    let mut best: [Option<(f64, usize, i64)>; 4] = [None; 4];
    for (i, after) in plan.values_after(before) {
        let check = &plan.checks[i];
        if !check.limit.enforcing() {
            continue;
        }
        let remaining = (check.limit.max - after).max(0);
        let fraction = remaining as f64 / check.limit.max as f64;
        let slot = &mut best[check.limit.window as usize];
        if slot.is_none_or(|(f, _, _)| fraction < f) {
            *slot = Some((fraction, i, remaining));
        }
    }
    let mut chosen = [(0.0, 0, 0); 4];
    let mut n = 0;
    for c in best.into_iter().flatten() {
        chosen[n] = c;
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let chosen = &mut chosen[..n];
    chosen.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Written straight into the two values, numbers by `itoa`: this runs for every admitted
    // request.
    let mut policy = String::with_capacity(64 * n);
    let mut state = String::with_capacity(48 * n);
    let mut num = itoa::Buffer::new();
    for (k, &(_, i, remaining)) in chosen.iter().enumerate() {
        let check = &plan.checks[i];
        let limit = &check.limit;
        let (q, r, unit) = match limit.metric {
            Metric::CostUsd => (limit.max / 1000, remaining / 1000, Some("usd-micros")),
            Metric::Tokens => (limit.max, remaining, Some("tokens")),
            Metric::Characters => (limit.max, remaining, Some("characters")),
            Metric::Requests => (limit.max, remaining, None),
        };
        let t = (check.resets_at - now).num_seconds().max(0);
        if k > 0 {
            policy.push_str(", ");
            state.push_str(", ");
        }
        for s in [&mut policy, &mut state] {
            s.push('"');
            s.push_str(check.scope.as_str());
            s.push('-');
            s.push_str(limit.policy_name());
            s.push('"');
        }
        policy.push_str(";q=");
        policy.push_str(num.format(q));
        if let Some(u) = unit {
            policy.push_str(";qu=\"");
            policy.push_str(u);
            policy.push('"');
        }
        policy.push_str(";w=");
        policy.push_str(num.format(nominal_seconds(limit.window)));
        state.push_str(";r=");
        state.push_str(num.format(r));
        state.push_str(";t=");
        state.push_str(num.format(t));
    }
    // The strings become the values without a copy.
    let value = |s: String| HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok();
    Some((value(policy)?, value(state)?))
}

/// A window's nominal length in seconds (a month counts 30 days).
fn nominal_seconds(w: Window) -> i64 {
    match w {
        Window::Minute => 60,
        Window::Hour => 3600,
        Window::Daily => 86_400,
        Window::Monthly => 30 * 86_400,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ProviderKind};
    use crate::domain::window::Calendar;
    use crate::quota::limit::{CallKey, LimitSet};
    use crate::quota::{Amounts, Retention};
    use crate::tenant::Tenant;

    #[test]
    fn the_tightest_limit_of_each_window_tightest_first() {
        let c = Config::from_yaml(
            "limits:\n  default_profile:\n    - {metric: requests, window: minute, max: 60}\n    - {metric: cost_usd, window: monthly, max: 50}\n    - {metric: tokens, window: monthly, max: 1000, mode: shadow}\n  default_org:\n    - {metric: cost_usd, window: monthly, max: 10}\n",
            "t",
        )
        .unwrap();
        let limits = LimitSet::new(&c.limits);
        let cal = Calendar::new(chrono_tz::UTC);
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:05:18Z").unwrap().with_timezone(&Utc);
        let tenant = Tenant {
            profile: "p1".into(),
            org: Some("acme".into()),
        };
        let call = CallKey {
            provider: "gemini",
            kind: ProviderKind::Gemini,
            model: Some("m"),
            path: "/x",
            tags: &[],
        };
        let amounts = Amounts {
            cost_nanos: 2_000_000_000,
            tokens: 10,
            requests: 1,
            characters: 0,
        };
        let ret = Retention {
            daily_days: 1,
            monthly_months: 1,
        };
        let plan = Plan::new(&limits, &crate::quota::control::Overlay::default(), &cal, ret, &tenant, &call, &amounts, now);
        // Nothing spent before: the org's $10 is tighter than the profile's $50 after $2.
        let before = vec![0; plan.ops.len()];
        let (policy, state) = headers(&plan, &before, now).unwrap();
        assert_eq!(
            policy,
            "\"org-cost_usd-monthly\";q=10000000;qu=\"usd-micros\";w=2592000, \"profile-requests-minute\";q=60;w=60"
        );
        assert_eq!(state, "\"org-cost_usd-monthly\";r=8000000;t=741282, \"profile-requests-minute\";r=59;t=42");
    }
}
