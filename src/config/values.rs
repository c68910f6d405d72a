//! Scalar config values that validate themselves while they are parsed, so that the parser
//! reports the offending key and line for them.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use chrono_tz::Tz;
use globset::GlobMatcher;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A number that must be greater than zero (limit maxima).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Positive(pub f64);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v <= 0.0 {
            return Err(de::Error::custom(format!("must be a number greater than 0, got {v}")));
        }
        Ok(Positive(v))
    }
}

/// A number that must be zero or more (prices).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NonNegative(pub f64);

impl<'de> Deserialize<'de> for NonNegative {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v < 0.0 {
            return Err(de::Error::custom(format!("must be a number of 0 or more, got {v}")));
        }
        Ok(NonNegative(v))
    }
}

/// A fraction in (0, 1] (alert thresholds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio(pub f64);

impl Default for Ratio {
    fn default() -> Self {
        Ratio(0.8)
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v <= 0.0 || v > 1.0 {
            return Err(de::Error::custom(format!("must be a fraction in (0, 1], got {v}")));
        }
        Ok(Ratio(v))
    }
}

/// `alert_at`: one fraction or a list of them (`[0.5, 0.8, 0.95]`), each in (0, 1]; kept
/// sorted, without repeats. Defaults to `[0.8]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertAt(pub Vec<f64>);

/// Most thresholds one limit may have.
pub const MAX_THRESHOLDS: usize = 8;

impl Default for AlertAt {
    fn default() -> Self {
        AlertAt(vec![0.8])
    }
}

impl<'de> Deserialize<'de> for AlertAt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(f64),
            Many(Vec<f64>),
        }
        let mut v = match OneOrMany::deserialize(d).map_err(|_| de::Error::custom("expected a fraction in (0, 1] or a list of them, e.g. [0.5, 0.8, 0.95]"))? {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        };
        if v.is_empty() || v.len() > MAX_THRESHOLDS {
            return Err(de::Error::custom(format!("needs 1 to {MAX_THRESHOLDS} thresholds, got {}", v.len())));
        }
        if let Some(bad) = v.iter().find(|x| !x.is_finite() || **x <= 0.0 || **x > 1.0) {
            return Err(de::Error::custom(format!("must be a fraction in (0, 1], got {bad}")));
        }
        v.sort_by(f64::total_cmp);
        v.dedup();
        Ok(AlertAt(v))
    }
}

/// Seconds, as a positive number (fractions allowed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds(pub std::time::Duration);

impl Seconds {
    pub fn from_secs(s: u64) -> Self {
        Seconds(std::time::Duration::from_secs(s))
    }
    pub fn from_millis(ms: u64) -> Self {
        Seconds(std::time::Duration::from_millis(ms))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v <= 0.0 || v > 1e9 {
            return Err(de::Error::custom(format!("must be a positive number of seconds, got {v}")));
        }
        Ok(Seconds(std::time::Duration::from_secs_f64(v)))
    }
}

/// A `host:port` socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SocketAddr::from_str(s.trim())
            .map(ListenAddr)
            .map_err(|e| de::Error::custom(format!("`{s}` is not a listen address like 127.0.0.1:8080 ({e})")))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An IANA time zone name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(pub Tz);

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone(chrono_tz::UTC)
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Tz::from_str(s.trim())
            .map(TimeZone)
            .map_err(|_| de::Error::custom(format!("unknown time zone `{s}` (use an IANA name such as UTC or Europe/Berlin)")))
    }
}

/// A shell-style glob (`*`, `?`, `[...]`), compiled once. `*` also matches `/`.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    matcher: GlobMatcher,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, String> {
        let glob = globset::GlobBuilder::new(source)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("bad glob `{source}`: {}", e.kind()))?;
        Ok(Self {
            source: source.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }

    /// True when the pattern has no glob metacharacters (an exact name).
    pub fn is_literal(&self) -> bool {
        !self.source.contains(['*', '?', '[', '{', '\\'])
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_across_slashes() {
        let p = Pattern::new("imagen-*").unwrap();
        assert!(p.is_match("imagen-4.0-generate-001"));
        assert!(!p.is_match("gemini-2.5-flash"));
        let p = Pattern::new("/v1*/models/*").unwrap();
        assert!(p.is_match("/v1beta/models/gemini-2.5-flash:generateContent"));
        assert!(Pattern::new("a[").is_err());
        assert!(Pattern::new("gemini-2.5-flash").unwrap().is_literal());
    }
}
