//! hyper's header-read deadline on one tokio timer per connection.
//!
//! hyper asks its timer for a fresh sleep before every request head and drops it once the head
//! is read. With hyper-util's timer that costs, per request, a boxed tokio sleep holding a clone
//! of the runtime handle, a trip through the timer wheel's lock to register it and another to
//! clear it. On a kept-alive connection the deadlines only move forward, so here every deadline
//! of one connection moves the same registered tokio sleep, which tokio does with one atomic
//! compare-and-swap; the wheel is touched when the connection's first deadline is set and when
//! the connection closes. Measured with a redirect hit on one core: hyper-util's timer took
//! 3.1 % of the server's time, most of it in the wheel's lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One connection's timer: every sleep it hands out shares one tokio sleep.
#[derive(Clone)]
pub(crate) struct ConnectionTimer {
    shared: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl ConnectionTimer {
    /// Must be called inside the runtime whose timer the sleeps use.
    pub(crate) fn new() -> Self {
        Self {
            // Parked far ahead until hyper sets the first deadline; not registered until polled.
            shared: Arc::new(Mutex::new(Box::pin(tokio::time::sleep(
                Duration::from_secs(86_400),
            )))),
        }
    }
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadDeadline {
            shared: self.shared.clone(),
            deadline: deadline.into(),
            armed: false,
        })
    }

    /// The coarse clock (a few milliseconds behind at most): hyper reads it once per request
    /// to set a deadline seconds away.
    fn now(&self) -> Instant {
        coarse_instant()
    }
}

/// `Instant::now()` from the kernel's coarse monotonic clock, which is the same clock at a
/// few milliseconds' resolution and a fifth of the cost.
fn coarse_instant() -> Instant {
    static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();
    let (instant, millis) =
        *ORIGIN.get_or_init(|| (Instant::now(), proxyd_cache::clock::monotonic_millis()));
    instant + Duration::from_millis(proxyd_cache::clock::monotonic_millis().saturating_sub(millis))
}

/// One deadline, set on the connection's shared tokio sleep when first polled.
struct HeadDeadline {
    shared: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
    deadline: tokio::time::Instant,
    armed: bool,
}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Only this connection's task polls it: the lock is never contended.
        let mut sleep = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if !this.armed {
            this.armed = true;
            if sleep.deadline() != this.deadline {
                sleep.as_mut().reset(this.deadline);
            }
        }
        sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadDeadline {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[tokio::test(start_paused = true)]
    async fn each_deadline_fires_at_its_own_time_on_the_shared_sleep() {
        let timer = ConnectionTimer::new();
        let start = tokio::time::Instant::now();
        let after = |secs| (start + Duration::from_secs(secs)).into_std();
        timer.sleep_until(after(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // A later deadline after the first fired; one dropped before it fires; a later one set
        // while the dropped one is still registered; an earlier one than that.
        timer.sleep_until(after(15)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        let mut dropped = timer.sleep_until(after(30));
        assert!(futures::poll!(dropped.as_mut()).is_pending());
        drop(dropped);
        timer.sleep_until(after(40)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        let mut dropped = timer.sleep_until(after(60));
        assert!(futures::poll!(dropped.as_mut()).is_pending());
        drop(dropped);
        timer.sleep_until(after(45)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(45));
    }

    #[test]
    fn the_coarse_instant_follows_the_fine_one() {
        let fine = Instant::now();
        let coarse = coarse_instant();
        let gap = if coarse > fine {
            coarse - fine
        } else {
            fine - coarse
        };
        assert!(gap < Duration::from_millis(50), "{gap:?}");
    }
}
