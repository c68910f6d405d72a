//! The response body on its way to the client: every frame is passed on as soon as it
//! arrives (nothing is held back), while a decoded copy feeds the provider's usage extractor.
//! When the body ends, fails, stalls past the idle timeout, or the client goes away (the body
//! is dropped), the usage is settled exactly once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::settle::Settler;
use crate::providers::decode::{Decoded, Decoder};
use crate::providers::{Anomaly, BodyEnd, Settled, UsageExtractor};

/// Most decoded bytes read for usage from one body (a bound against decompression bombs).
const MAX_DECODED: u64 = 1 << 30;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Watches the bytes and settles at the end.
pub struct Meter {
    decoder: Option<Decoder>,
    extractor: Box<dyn UsageExtractor>,
    undecodable: bool,
    settler: Settler,
}

impl Meter {
    pub fn new(headers: &http::HeaderMap, extractor: Box<dyn UsageExtractor>, settler: Settler) -> Self {
        let decoder = Decoder::for_headers(headers, MAX_DECODED);
        Self {
            undecodable: decoder.is_none(),
            decoder,
            extractor,
            settler,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        let Some(d) = &mut self.decoder else { return };
        let started = std::time::Instant::now();
        match d.decode(data) {
            Decoded::Bytes(b) => {
                if !b.is_empty() {
                    self.extractor.feed(b);
                }
            }
            Decoded::Failed => {
                self.undecodable = true;
                self.decoder = None;
            }
        }
        // Reading usage is time the proxy adds to the body's way through.
        self.settler.overhead += started.elapsed();
    }

    fn finish(mut self, end: BodyEnd) {
        let mut settled = self.extractor.finish(end);
        if self.undecodable && settled.anomaly.is_none() && matches!(settled.source, crate::providers::Source::Reported) {
            // The copy could not be decoded, so "reported" usage is only what was read before.
            settled.anomaly = Some(Anomaly::Malformed);
        }
        self.settler.settle(settled, end);
    }
}

pin_project_lite::pin_project! {
    pub struct MeteredBody {
        #[pin]
        inner: Incoming,
        idle: Pin<Box<Sleep>>,
        idle_timeout: Duration,
        // True while the last poll found the upstream silent (the idle clock is running).
        waiting: bool,
        meter: Option<Meter>,
    }

    impl PinnedDrop for MeteredBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(meter) = this.meter.take() {
                // Dropped before the end: the client went away (or the body was empty and
                // never polled, which counts as complete).
                let end = if this.inner.is_end_stream() { BodyEnd::Complete } else { BodyEnd::Cut };
                meter.finish(end);
            }
        }
    }
}

impl MeteredBody {
    pub fn new(inner: Incoming, idle_timeout: Duration, meter: Meter) -> Self {
        Self {
            inner,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            waiting: false,
            meter: Some(meter),
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
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(meter)) = (frame.data_ref(), this.meter.as_mut()) {
                    meter.feed(data);
                }
                *this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(m) = this.meter.take() {
                    m.settler.note_upstream_failure("body");
                    m.finish(BodyEnd::Cut);
                }
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                if let Some(m) = this.meter.take() {
                    m.finish(BodyEnd::Complete);
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The idle clock measures upstream silence only, not a slow client.
                if !*this.waiting {
                    *this.waiting = true;
                    this.idle.as_mut().reset(Instant::now() + *this.idle_timeout);
                }
                match this.idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        if let Some(m) = this.meter.take() {
                            m.settler.note_upstream_failure("idle_timeout");
                            m.finish(BodyEnd::Cut);
                        }
                        Poll::Ready(Some(Err(Box::new(IdleTimeout(*this.idle_timeout)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Settles a response that is never streamed (the upstream failed before a body existed).
pub fn settle_now(settler: Settler, settled: Settled) {
    settler.settle(settled, BodyEnd::Complete);
}
