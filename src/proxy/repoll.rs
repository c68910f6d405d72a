//! Polling a client connection again at once when it wakes itself during its own poll.
//!
//! hyper serves a connection and its requests' handlers in one task. Reading a request, the
//! connection puts the body into the channel the handler already waits on, which wakes the
//! task while it is running. Tokio then treats the task as having yielded: it queues it
//! again and wakes an idle worker thread to come and help, which finds nothing and goes back
//! to sleep. That is a futex call and two context switches per request, most of the extra
//! scheduling a request cost against nginx at low load.
//!
//! [`Repoll`] gives the connection a waker of its own. A wake that arrives while the
//! connection is being polled is noted, and the connection is polled again straight away;
//! any other wake goes to the task as usual. After a few polls in a row it yields to the
//! scheduler as before, so a connection that keeps waking itself cannot starve the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls in a row before yielding to the scheduler.
const MAX_POLLS: usize = 4;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

struct State {
    phase: AtomicU8,
    /// The task's own waker, for wakes from outside a poll.
    task: AtomicWaker,
}

impl Wake for State {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self.phase.compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire) {
            // During a poll (or already noted): the poll loop looks again.
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A future polled again when it woke itself during its poll (see the module's text).
    pub struct Repoll<F> {
        #[pin]
        inner: F,
        state: Arc<State>,
        waker: Waker,
    }
}

impl<F> Repoll<F> {
    pub fn new(inner: F) -> Self {
        let state = Arc::new(State {
            phase: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(state.clone());
        Repoll { inner, state, waker }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        this.state.task.register(cx.waker());
        let mut inner_cx = Context::from_waker(this.waker);
        for _ in 0..MAX_POLLS {
            this.state.phase.store(POLLING, Ordering::Release);
            if let Poll::Ready(out) = this.inner.as_mut().poll(&mut inner_cx) {
                this.state.phase.store(IDLE, Ordering::Release);
                return Poll::Ready(out);
            }
            // From here on a wake goes to the task; one that came during the poll means
            // there is work now.
            if this.state.phase.swap(IDLE, Ordering::AcqRel) != WOKEN {
                return Poll::Pending;
            }
        }
        // Woken during every poll: let the other tasks run first, as a yield would.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes the task gets.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A task's waker that counts its wakes, and the count.
    fn counting_task() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_and_one_from_outside_reaches_the_task() {
        let (count, task) = counting_task();
        let mut cx = Context::from_waker(&task);
        // Wakes itself on its first poll, is ready on its second.
        let mut polls = 0;
        let mut f = Box::pin(Repoll::new(std::future::poll_fn(|cx| {
            polls += 1;
            if polls == 1 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        })));
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(2));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "no reschedule by the task's waker");

        // Pending without a wake: a later wake (from elsewhere) goes to the task.
        let kept: Arc<parking_lot::Mutex<Option<Waker>>> = Arc::default();
        let k = kept.clone();
        let mut g = Box::pin(Repoll::new(std::future::poll_fn(move |cx| {
            *k.lock() = Some(cx.waker().clone());
            Poll::<()>::Pending
        })));
        assert!(g.as_mut().poll(&mut cx).is_pending());
        kept.lock().take().unwrap().wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_future_that_always_wakes_itself_still_yields() {
        let (count, task) = counting_task();
        let mut cx = Context::from_waker(&task);
        let mut polls = 0;
        let mut f = Box::pin(Repoll::new(std::future::poll_fn(|cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        })));
        assert!(f.as_mut().poll(&mut cx).is_pending());
        drop(f);
        assert_eq!(polls, MAX_POLLS);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken to come back later");
    }
}
