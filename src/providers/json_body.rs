//! The extractor for a plain (non-streamed) JSON answer whose usage is a top-level `usage`
//! member, shared by the providers whose bodies have that shape (OpenAI, Anthropic).

use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use super::json_scan::{JsonScanner, Record};
use super::{Anomaly, BodyEnd, Settled, Source, Usage, UsageExtractor};

/// A provider's wire form of `usage`.
pub trait ToUsage: DeserializeOwned {
    fn to_usage(&self) -> Usage;
}

/// How a provider marks an error answer in a 2xx body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorMark {
    /// A non-null top-level `error` member (OpenAI).
    ErrorMember,
    /// A top-level `"type": "error"` (Anthropic).
    TypeIsError,
}

pub struct JsonUsageBody<W> {
    scanner: JsonScanner,
    mark: ErrorMark,
    usage: Option<Usage>,
    model: Option<String>,
    error: bool,
    bad: bool,
    estimate: Usage,
    wire: PhantomData<fn() -> W>,
}

impl<W: ToUsage> JsonUsageBody<W> {
    pub fn new(estimate: &Usage, mark: ErrorMark) -> Self {
        let members: &'static [&'static str] = match mark {
            ErrorMark::ErrorMember => &["usage", "model", "error"],
            ErrorMark::TypeIsError => &["usage", "model", "type"],
        };
        Self {
            scanner: JsonScanner::new(1, members, &[]),
            mark,
            usage: None,
            model: None,
            error: false,
            bad: false,
            estimate: estimate.clone(),
            wire: PhantomData,
        }
    }

    fn record(&mut self, r: &Record) {
        match r.get("usage").map(serde_json::from_slice::<Option<W>>) {
            Some(Ok(Some(u))) => self.usage = Some(u.to_usage()),
            Some(Ok(None)) | None => {}
            Some(Err(_)) => self.bad = true,
        }
        self.model = r.get("model").and_then(|m| serde_json::from_slice(m).ok());
        self.error = match self.mark {
            ErrorMark::ErrorMember => r.get("error").is_some_and(|e| e != b"null"),
            ErrorMark::TypeIsError => r.get("type").is_some_and(|t| t == br#""error""#),
        };
    }
}

impl<W: ToUsage> UsageExtractor for JsonUsageBody<W> {
    fn feed(&mut self, chunk: &[u8]) {
        let mut records = Vec::new();
        self.scanner.feed(chunk, &mut |r| records.push(r));
        for r in &records {
            self.record(r);
        }
    }

    fn finish(&mut self, end: BodyEnd) -> Settled {
        match self.usage.take() {
            Some(usage) => Settled {
                usage,
                source: Source::Reported,
                response_model: self.model.take(),
                anomaly: None,
            },
            None if self.error && end == BodyEnd::Complete => Settled::upstream_error(),
            None => Settled::estimated(
                &self.estimate,
                match end {
                    BodyEnd::Cut => Anomaly::Cut,
                    BodyEnd::Complete if self.bad || self.scanner.malformed() || self.scanner.records() == 0 => Anomaly::Malformed,
                    BodyEnd::Complete => Anomaly::Missing,
                },
            ),
        }
    }
}
