//! What every auxiliary listener of the daemon (the control socket, the metrics port) shares:
//! an accept loop that survives `accept` errors (out of descriptors, for instance: logged and
//! retried with backoff, never the end of the daemon), and a bound on the connections served
//! at once (more are closed as soon as they are accepted).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::limits::LogEvery;

/// First wait after a failed `accept`; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The backoff state of one listener's accept loop.
pub struct AcceptLoop {
    what: &'static str,
    backoff: Duration,
}

impl AcceptLoop {
    /// `what` names the listener in the log.
    pub fn new(what: &'static str) -> AcceptLoop {
        AcceptLoop {
            what,
            backoff: FIRST_BACKOFF,
        }
    }

    /// The accepted connection, or `None` after logging the error (rate-limited) and waiting
    /// out the backoff.
    pub async fn next<T>(&mut self, accepted: std::io::Result<T>, log: &LogEvery) -> Option<T> {
        match accepted {
            Ok(conn) => {
                self.backoff = FIRST_BACKOFF;
                Some(conn)
            }
            Err(e) => {
                if let Some(n) = log.check(Instant::now()) {
                    tracing::warn!(
                        "{}: accept failed: {e}; retrying in {:?} ({n} more limit hits since last report)",
                        self.what,
                        self.backoff
                    );
                }
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                None
            }
        }
    }
}

/// At most `max` connections at once.
pub struct ConnectionSlots {
    used: Arc<AtomicUsize>,
    max: usize,
}

/// One connection's place; given back when dropped.
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlots {
    pub fn new(max: usize) -> ConnectionSlots {
        ConnectionSlots {
            used: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or `None` when all are taken.
    pub fn take(&self) -> Option<ConnectionSlot> {
        self.used
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| ConnectionSlot(self.used.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let slots = ConnectionSlots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop(a);
        assert!(slots.take().is_some());
    }

    #[tokio::test]
    async fn accept_errors_back_off_and_reset() {
        let log = LogEvery::new(Duration::from_secs(10));
        let mut l = AcceptLoop::new("test");
        let emfile = || Err::<(), _>(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert!(l.next(emfile(), &log).await.is_none());
        assert!(l.next(emfile(), &log).await.is_none());
        assert_eq!(l.backoff, Duration::from_millis(40));
        assert_eq!(l.next(Ok(7), &log).await, Some(7));
        assert_eq!(l.backoff, FIRST_BACKOFF);
    }
}
