//! What limits count (metrics), whose limits they are (scopes), and whether they refuse
//! (modes): words config, quota, the stores, metrics and the admin plane share.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    CostUsd,
    Tokens,
    Requests,
    Characters,
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::CostUsd, Metric::Tokens, Metric::Requests, Metric::Characters];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::CostUsd => "cost_usd",
            Metric::Tokens => "tokens",
            Metric::Requests => "requests",
            Metric::Characters => "characters",
        }
    }

    /// The short store field name, shared (counter keys hold it without allocating).
    pub fn counter_field(self) -> std::sync::Arc<str> {
        static FIELDS: std::sync::LazyLock<[std::sync::Arc<str>; 4]> = std::sync::LazyLock::new(|| Metric::ALL.map(|m| std::sync::Arc::from(m.field())));
        FIELDS[self as usize].clone()
    }

    /// The short store field name.
    pub fn field(self) -> &'static str {
        match self {
            Metric::CostUsd => "cost",
            Metric::Tokens => "tokens",
            Metric::Requests => "requests",
            Metric::Characters => "chars",
        }
    }

    /// A counter value in the metric's display unit (dollars for cost).
    pub fn display(self, raw: i64) -> f64 {
        match self {
            Metric::CostUsd => super::money::nanos_to_usd(raw),
            _ => raw as f64,
        }
    }

    /// Human text for messages: `$1.23`, `1000 tokens`.
    pub fn describe(self, raw: i64) -> String {
        match self {
            Metric::CostUsd => super::money::format_usd(raw),
            m => format!("{raw} {}", m.unit()),
        }
    }

    /// The unit name used in headers and messages.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::CostUsd => "usd",
            Metric::Tokens => "tokens",
            Metric::Requests => "requests",
            Metric::Characters => "characters",
        }
    }

    /// Noun for messages ("cost", "token").
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Metric::CostUsd => "cost",
            Metric::Tokens => "token",
            Metric::Requests => "request",
            Metric::Characters => "character",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `enforce` refuses; `shadow` counts and alerts but never refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// Whose limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Profile,
    Org,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Profile => "profile",
            Scope::Org => "org",
        }
    }
    /// One-letter tag used in store keys.
    pub fn tag(self) -> &'static str {
        match self {
            Scope::Profile => "p",
            Scope::Org => "o",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
