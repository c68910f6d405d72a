//! The answer when a limit is used up: 402 `quota_exceeded` for a daily or monthly limit, 429
//! `rate_limited` for a minute or hour limit (SDKs retry a 429 with backoff, which is right
//! for a window that ends within the hour; a spend refusal is never a 429). One body that every
//! official SDK surfaces readably (an `error` object) and that apps written against the older
//! in-app check keep reading (`detail.error == "quota_exceeded"`, `detail.current_costs`,
//! `detail.monthly_quota`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use super::limit::Limit;
use crate::domain::Scope;

/// Why a request was refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub scope: Scope,
    pub tenant: String,
    pub limit: Limit,
    /// The counter's value when the request arrived, in the metric's integer unit.
    pub current: i64,
    pub resets_at: DateTime<Utc>,
}

impl Refusal {
    pub fn message(&self) -> String {
        self.limit.refusal_message(self.scope, &self.tenant, self.current)
    }

    /// `rate_limited` for a minute or hour limit, else `quota_exceeded`.
    pub fn kind(&self) -> &'static str {
        if self.limit.window.is_rate() {
            "rate_limited"
        } else {
            "quota_exceeded"
        }
    }

    /// 429 for a minute or hour limit, else 402.
    pub fn status(&self) -> u16 {
        if self.limit.window.is_rate() {
            429
        } else {
            402
        }
    }

    /// Whole seconds until the window resets (at least 1), for `Retry-After`.
    pub fn retry_after(&self, now: DateTime<Utc>) -> i64 {
        let ms = (self.resets_at - now).num_milliseconds();
        ((ms + 999) / 1000).max(1)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let metric = self.limit.metric;
        let current = metric.display(self.current);
        let max = metric.display(self.limit.max);
        let message = self.message();
        let mut limit = json!({"metric": metric.as_str(), "window": self.limit.window.as_str(), "max": max});
        if let Some(m) = &self.limit.matcher {
            limit["match"] = json!(m.describe());
        }
        let kind = self.kind();
        json!({
            "type": "error",
            "error": {
                "type": kind,
                "code": kind,
                "status": kind.to_ascii_uppercase(),
                "message": message,
                "tenant": self.tenant,
                "scope": self.scope.as_str(),
                "limit": limit,
                "current": current,
                "resets_at": self.resets_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            },
            "detail": {
                "error": kind,
                "status": kind,
                "message": message,
                "current_costs": current,
                "monthly_quota": max,
            }
        })
    }
}
