//! The meter phase: the response body on its way to the client. Every frame is passed on as
//! soon as it arrives (nothing is held back), while a decoded copy feeds the provider's usage
//! extractor. When the body ends, fails or stalls past the idle timeout, the usage is settled
//! exactly once.
//!
//! When the client goes away first (the body is dropped), the rest of the upstream body is
//! still read in the background, up to the idle timeout and until the process stops, so that
//! a provider that finishes (and bills) the work anyway is charged what it reports.
//!
//! A response whose request the provider rewrote (see [`crate::providers::BodyFilter`]) goes
//! through the provider's filter instead: the decoded body is filtered and passed on
//! unencoded (without `Content-Encoding` and `Content-Length`, which no longer describe it).
//! The filter holds back at most an incomplete event; what it holds when the body ends or
//! fails is passed on before the end (or the error). When the body's coding cannot be
//! decoded, the filter is skipped and the upstream's bytes pass unchanged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::settle::Reservation;
use crate::providers::{Anomaly, BodyEnd, BodyFilter, UsageExtractor};
use crate::wire::decode::{Decoded, Decoder};

/// Most decoded bytes read for usage from one body (a bound against decompression bombs).
const MAX_DECODED: u64 = 1 << 30;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A filtered body whose coding turned out to be corrupt (or past the decoding bound): the
/// rest cannot be given to the client.
#[derive(Debug, thiserror::Error)]
#[error("the upstream body could not be decoded for filtering")]
pub struct Undecodable;

/// Watches the bytes and settles at the end.
pub struct Meter {
    decoder: Option<Decoder>,
    extractor: Box<dyn UsageExtractor>,
    filter: Option<Box<dyn BodyFilter>>,
    undecodable: bool,
    reservation: Reservation,
}

impl Meter {
    /// A meter for a response with these headers. With a filter, the headers are adjusted to
    /// the filtered body (or the filter is dropped when the body cannot be decoded).
    pub fn new(headers: &mut http::HeaderMap, extractor: Box<dyn UsageExtractor>, filter: Option<Box<dyn BodyFilter>>, reservation: Reservation) -> Self {
        let decoder = Decoder::for_headers(headers, MAX_DECODED);
        let filter = match (filter, &decoder) {
            (Some(f), Some(_)) => {
                headers.remove(CONTENT_LENGTH);
                headers.remove(CONTENT_ENCODING);
                Some(f)
            }
            (Some(_), None) => {
                tracing::warn!(provider = %reservation.settler().route.name, "the response uses a coding the proxy cannot decode; it passes unfiltered");
                None
            }
            (None, _) => None,
        };
        Self {
            undecodable: decoder.is_none(),
            decoder,
            extractor,
            filter,
            reservation,
        }
    }

    fn filtering(&self) -> bool {
        self.filter.is_some()
    }

    /// Feeds the decoded copy of a chunk to the extractor. Without a filter the chunk itself
    /// goes to the client (`Ok(None)`); with one, the filtered bytes do.
    fn pass(&mut self, data: &[u8]) -> Result<Option<Bytes>, Undecodable> {
        let started = std::time::Instant::now();
        let result = self.read(data);
        // Reading usage is time the proxy adds to the body's way through.
        self.reservation.settler_mut().overhead += started.elapsed();
        result
    }

    fn read(&mut self, data: &[u8]) -> Result<Option<Bytes>, Undecodable> {
        let Meter {
            decoder,
            extractor,
            filter,
            undecodable,
            ..
        } = self;
        let Some(d) = decoder else { return Ok(None) };
        match d.decode(data) {
            Decoded::Bytes(b) => {
                if !b.is_empty() {
                    extractor.feed(b);
                }
                Ok(filter.as_mut().map(|f| f.filter(b)))
            }
            Decoded::Failed => {
                *undecodable = true;
                *decoder = None;
                if filter.is_some() {
                    Err(Undecodable)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// What the filter still holds (empty without a filter).
    fn flush(&mut self) -> Bytes {
        self.filter.as_mut().map(|f| f.finish()).unwrap_or_default()
    }

    fn finish(mut self, end: BodyEnd) {
        let mut settled = self.extractor.finish(end);
        self.reservation.settler_mut().later = self.extractor.later();
        if self.undecodable && settled.anomaly.is_none() && matches!(settled.source, crate::providers::Source::Reported) {
            // The copy could not be decoded, so "reported" usage is only what was read before.
            settled.anomaly = Some(Anomaly::Malformed);
        }
        self.reservation.settle(settled, end);
    }

    fn note_upstream_failure(&self, reason: &str) {
        self.reservation.settler().note_upstream_failure(reason);
    }
}

pin_project_lite::pin_project! {
    pub struct MeteredBody {
        // Taken by the background drain when the client goes away first.
        inner: Option<Incoming>,
        idle: Pin<Box<Sleep>>,
        idle_timeout: Duration,
        // True while the last poll found the upstream silent (the idle clock is running).
        waiting: bool,
        // Boxed: the body travels inside the response through the server's futures, which
        // then move a pointer instead of the meter.
        meter: Option<Box<Meter>>,
        // The body goes through a filter (its size is no longer the upstream's).
        filtered: bool,
        // Filtered bodies: bytes the filter held when the upstream ended or failed, passed on
        // before `pending` and the end.
        tail: Bytes,
        // A frame or error to pass on after `tail`.
        pending: Option<Result<Frame<Bytes>, BoxError>>,
        // The upstream body ended (or failed): nothing more is read from it.
        done: bool,
    }

    impl PinnedDrop for MeteredBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(meter) = this.meter.take() else { return };
            match this.inner.take() {
                // An empty body that was never polled counts as complete.
                Some(inner) if inner.is_end_stream() => meter.finish(BodyEnd::Complete),
                // The client went away before the end: read the rest without it.
                Some(inner) => drain(inner, meter, *this.idle_timeout),
                None => meter.finish(BodyEnd::Cut),
            }
        }
    }
}

impl MeteredBody {
    pub fn new(inner: Incoming, idle_timeout: Duration, meter: Meter) -> Self {
        Self {
            inner: Some(inner),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            waiting: false,
            filtered: meter.filtering(),
            meter: Some(Box::new(meter)),
            tail: Bytes::new(),
            pending: None,
            done: false,
        }
    }
}

/// The upstream went silent for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}")]
pub struct IdleTimeout(Duration);

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        loop {
            if !this.tail.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(std::mem::take(this.tail)))));
            }
            if let Some(p) = this.pending.take() {
                return Poll::Ready(Some(p));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *this.waiting = false;
                    let Some(meter) = this.meter.as_mut() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => {
                            // Trailers end the body: what the filter holds goes first.
                            *this.tail = meter.flush();
                            *this.pending = Some(Ok(trailers));
                            continue;
                        }
                    };
                    match meter.pass(&data) {
                        Ok(None) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        // The filter held everything back so far: read on.
                        Ok(Some(out)) if out.is_empty() => continue,
                        Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => {
                            if let Some(m) = this.meter.take() {
                                m.note_upstream_failure("decode");
                                m.finish(BodyEnd::Cut);
                            }
                            *this.done = true;
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(mut m) = this.meter.take() {
                        *this.tail = m.flush();
                        m.note_upstream_failure("body");
                        m.finish(BodyEnd::Cut);
                    }
                    *this.pending = Some(Err(Box::new(e)));
                    *this.done = true;
                }
                Poll::Ready(None) => {
                    if let Some(mut m) = this.meter.take() {
                        *this.tail = m.flush();
                        m.finish(BodyEnd::Complete);
                    }
                    *this.done = true;
                }
                Poll::Pending => {
                    // The idle clock measures upstream silence only, not a slow client.
                    if !*this.waiting {
                        *this.waiting = true;
                        this.idle.as_mut().reset(Instant::now() + *this.idle_timeout);
                    }
                    match this.idle.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            if let Some(mut m) = this.meter.take() {
                                *this.tail = m.flush();
                                m.note_upstream_failure("idle_timeout");
                                m.finish(BodyEnd::Cut);
                            }
                            *this.pending = Some(Err(Box::new(IdleTimeout(*this.idle_timeout))));
                            *this.done = true;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.filtered {
            self.done && self.tail.is_empty() && self.pending.is_none()
        } else {
            self.inner.as_ref().is_none_or(Body::is_end_stream)
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) if !self.filtered => inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// Reads the rest of an upstream body whose client went away, so that the usage the
/// provider reports at the end is what is charged. Bounded by the idle timeout between
/// frames; the process stopping ends it at once (charged as a cut body).
fn drain(mut inner: Incoming, mut meter: Box<Meter>, idle: Duration) {
    use http_body_util::BodyExt;
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        meter.finish(BodyEnd::Cut);
        return;
    };
    let app = meter.reservation.settler().app.clone();
    let tracker = app.settlements.clone();
    handle.spawn(tracker.track_future(async move {
        let stopping = app.stopping.clone();
        let end = loop {
            let frame = tokio::select! {
                _ = stopping.cancelled() => break BodyEnd::Cut,
                f = tokio::time::timeout(idle, inner.frame()) => f,
            };
            match frame {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        // Nothing goes to a client any more: a filter failure only stops
                        // the filtering.
                        meter.filter = None;
                        let _ = meter.read(&data);
                    }
                }
                Ok(None) => break BodyEnd::Complete,
                Ok(Some(Err(_))) | Err(_) => break BodyEnd::Cut,
            }
        };
        meter.finish(end);
    }));
}
