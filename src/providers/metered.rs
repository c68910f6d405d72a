//! The one extractor skeleton and the one settle rule every provider's answers are read with.
//!
//! [`Metered`] frames the decoded body (SSE events or JSON records, see [`crate::wire`]),
//! counts what it framed and what could not be read, and hands each event or record to a
//! provider's [`Reader`]. The reader only reads: the usage reported, the text streamed, an
//! in-band error, the model. When the body ends, [`settle`] decides, for every provider:
//!
//! - **usage reported**: that usage, with the fees the reader adds. It is
//!   [`Source::Reported`] when it is the provider's last word (a final usage chunk, a whole
//!   JSON body) or the body ended normally without an in-band error; otherwise (a running
//!   total cut short, or followed by an error) [`Source::Partial`], with [`Anomaly::Cut`] when
//!   the body was cut.
//! - **no usage, but output streamed or the input reported**: [`Source::Partial`]: the input
//!   side (reported, else the estimate's) plus the output seen. The anomaly is `cut` for a cut
//!   body, none after an in-band error (documented behaviour), `malformed` or `missing`
//!   otherwise.
//! - **nothing usable**: an in-band error on a complete body costs nothing
//!   ([`Source::UpstreamError`]); anything else is charged the estimate, labelled `cut`,
//!   `malformed` (unreadable events or records, or none at all) or `missing`.
//!
//! (A cut body's [`Source::Partial`] and [`Source::Estimated`] outcomes are raised to the
//! reservation field by field when settled, see `proxy::settle`.)

use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use super::{output_tokens_from_text, Anomaly, BodyEnd, Settled, Source, Usage, UsageExtractor};
use crate::wire::json_scan::{JsonScanner, Record};
use crate::wire::sse::SseParser;

/// A usage the body reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub usage: Usage,
    /// The provider's last word on the call (a final usage event, a whole JSON body): a body
    /// cut after it still bills exactly this. False for running totals that may still grow.
    pub last: bool,
}

impl Report {
    /// A usage that is the provider's last word, if there is one.
    pub fn last(usage: Option<Usage>) -> Option<Report> {
        usage.map(|usage| Report { usage, last: true })
    }
}

/// What every reader notes besides the usage; the settle rule reads it.
#[derive(Debug, Default)]
pub struct Noted {
    /// The model the body names.
    pub model: Option<String>,
    /// The body carried an error (an error event, an error member).
    pub error: bool,
    /// Bytes of output text streamed (charged as output when the usage never came).
    pub text_bytes: u64,
}

/// What a provider reads out of its answers; [`Metered`] does the framing and [`settle`] the
/// charging.
pub trait Reader: Send {
    /// One SSE event's data. False when it cannot be read (the body is then malformed).
    fn event(&mut self, _data: &[u8]) -> bool {
        false
    }
    /// One committed JSON record. False when a member it needs cannot be read.
    fn record(&mut self, _record: &Record) -> bool {
        false
    }
    /// Every decoded chunk as it passes, before framing (for readers that scan more).
    fn bytes(&mut self, _chunk: &[u8]) {}
    /// The usage the body reported, once it ended.
    fn reported(&mut self) -> Option<Report>;
    /// The input side reported before any final usage (a stream's start), when there is one.
    fn input_seen(&mut self) -> Option<Usage> {
        None
    }
    /// What the reader noted besides the usage.
    fn noted(&mut self) -> &mut Noted;
    /// Fees and premiums on top of a usage read from the body (reported or partial), given
    /// the estimate (what the request asked for).
    fn fees(&self, _usage: &mut Usage, _estimate: &Usage) {}
    /// See [`UsageExtractor::later`].
    fn later(&self) -> Option<String> {
        None
    }
}

enum Framing {
    Sse(SseParser),
    Json(JsonScanner),
}

/// The extractor skeleton: a body framed as SSE events or JSON records, read by `R`.
pub struct Metered<R> {
    framing: Framing,
    reader: R,
    estimate: Usage,
    events: u64,
    unreadable: u64,
}

impl<R: Reader> Metered<R> {
    /// An SSE stream.
    pub fn sse(reader: R, estimate: &Usage) -> Self {
        Self::framed(Framing::Sse(SseParser::default()), reader, estimate)
    }

    /// A JSON body (or JSON-array stream) read by `scanner`'s records.
    pub fn json(reader: R, scanner: JsonScanner, estimate: &Usage) -> Self {
        Self::framed(Framing::Json(scanner), reader, estimate)
    }

    fn framed(framing: Framing, reader: R, estimate: &Usage) -> Self {
        Self {
            framing,
            reader,
            estimate: estimate.clone(),
            events: 0,
            unreadable: 0,
        }
    }

    /// No event or record could be read whole, or one could not be read at all.
    fn malformed(&self) -> bool {
        let (framed, broken) = match &self.framing {
            Framing::Sse(_) => (self.events, false),
            Framing::Json(s) => (s.records(), s.malformed()),
        };
        broken || framed == 0 || self.unreadable > 0
    }
}

impl<R: Reader> UsageExtractor for Metered<R> {
    fn feed(&mut self, chunk: &[u8]) {
        let Self {
            framing,
            reader,
            events,
            unreadable,
            ..
        } = self;
        reader.bytes(chunk);
        match framing {
            Framing::Sse(p) => p.feed(chunk, &mut |ev| {
                *events += 1;
                if ev.oversized || !reader.event(&ev.data) {
                    *unreadable += 1;
                }
            }),
            Framing::Json(s) => s.feed(chunk, &mut |r| {
                if !reader.record(&r) {
                    *unreadable += 1;
                }
            }),
        }
    }

    fn finish(&mut self, end: BodyEnd) -> Settled {
        let malformed = self.malformed();
        settle(&mut self.reader, &self.estimate, malformed, end)
    }

    fn later(&self) -> Option<String> {
        self.reader.later()
    }
}

/// The settle rule (see the module docs), the same for every provider and body shape.
pub fn settle(reader: &mut dyn Reader, estimate: &Usage, malformed: bool, end: BodyEnd) -> Settled {
    let cut = end == BodyEnd::Cut;
    let Noted {
        model: response_model,
        error,
        text_bytes: text,
    } = std::mem::take(reader.noted());
    if let Some(Report { mut usage, last }) = reader.reported() {
        reader.fees(&mut usage, estimate);
        let whole = last || (!cut && !error);
        return Settled {
            usage,
            source: if whole { Source::Reported } else { Source::Partial },
            response_model,
            anomaly: (cut && !whole).then_some(Anomaly::Cut),
        };
    }
    let why = match end {
        BodyEnd::Cut => Anomaly::Cut,
        BodyEnd::Complete if malformed => Anomaly::Malformed,
        BodyEnd::Complete => Anomaly::Missing,
    };
    let input = reader.input_seen();
    if text == 0 && input.is_none() {
        if error && !cut {
            return Settled::upstream_error();
        }
        return Settled::estimated(estimate, why);
    }
    let mut usage = input.unwrap_or_else(|| estimate.input_side());
    usage.output_tokens = usage.output_tokens.max(output_tokens_from_text(text));
    reader.fees(&mut usage, estimate);
    Settled {
        usage,
        source: Source::Partial,
        response_model,
        // An upstream that reports an in-band error is behaving as documented.
        anomaly: (cut || !error).then_some(why),
    }
}

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

impl ErrorMark {
    /// The top-level members read: the usage, the model, the error mark, and (OpenAI) the
    /// service tier an [`Extra`] may read.
    fn members(self) -> &'static [&'static str] {
        match self {
            ErrorMark::ErrorMember => &["usage", "model", "error", "service_tier"],
            ErrorMark::TypeIsError => &["usage", "model", "type"],
        }
    }
}

/// What a provider reads from a plain JSON answer beyond its `usage` (fees, tiers).
pub trait Extra: Send {
    fn bytes(&mut self, _chunk: &[u8]) {}
    fn record(&mut self, _record: &Record) {}
    fn fees(&self, _usage: &mut Usage, _estimate: &Usage) {}
}

impl Extra for () {}

/// The reader of a plain (non-streamed) JSON answer whose usage is a top-level `usage` member,
/// of the wire type `W` (OpenAI, Anthropic); `X` reads what else is billed.
pub struct UsageMember<W, X = ()> {
    mark: ErrorMark,
    usage: Option<Usage>,
    noted: Noted,
    extra: X,
    wire: PhantomData<fn() -> W>,
}

impl<W: ToUsage, X: Extra> UsageMember<W, X> {
    /// The extractor of such an answer.
    pub fn metered(mark: ErrorMark, extra: X, estimate: &Usage) -> Metered<Self> {
        let reader = Self {
            mark,
            usage: None,
            noted: Noted::default(),
            extra,
            wire: PhantomData,
        };
        Metered::json(reader, JsonScanner::new(1, mark.members(), &[]), estimate)
    }
}

impl<W: ToUsage, X: Extra> Reader for UsageMember<W, X> {
    fn bytes(&mut self, chunk: &[u8]) {
        self.extra.bytes(chunk);
    }

    fn record(&mut self, r: &Record) -> bool {
        self.extra.record(r);
        self.noted.model = r.get("model").and_then(|m| serde_json::from_slice(m).ok());
        self.noted.error = match self.mark {
            ErrorMark::ErrorMember => r.get("error").is_some_and(|e| e != b"null"),
            ErrorMark::TypeIsError => r.get("type").is_some_and(|t| t == br#""error""#),
        };
        match r.get("usage").map(serde_json::from_slice::<Option<W>>) {
            Some(Ok(Some(u))) => self.usage = Some(u.to_usage()),
            Some(Ok(None)) | None => {}
            Some(Err(_)) => return false,
        }
        true
    }

    fn reported(&mut self) -> Option<Report> {
        Report::last(self.usage.take())
    }

    fn noted(&mut self) -> &mut Noted {
        &mut self.noted
    }

    fn fees(&self, usage: &mut Usage, estimate: &Usage) {
        self.extra.fees(usage, estimate);
    }
}
