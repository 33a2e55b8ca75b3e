//! Reconnection delays: exponential backoff with jitter. Pure logic, no clock.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay: the current step scaled by `jitter` (clamped to 0.5..=1.0, "equal jitter",
    /// so that clients cut off together do not come back together); the step then doubles up
    /// to the maximum.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let d = self.current.mul_f64(jitter.clamp(0.5, 1.0));
        self.current = (self.current * 2).min(self.max);
        d
    }

    /// Back to the initial step (after a session that worked).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let full: Vec<u64> = (0..7).map(|_| b.next_delay(1.0).as_secs()).collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(0.5), Duration::from_millis(500));
        assert_eq!(
            b.next_delay(0.0),
            Duration::from_secs(1),
            "jitter is clamped to at least half"
        );
        let mut tiny = Backoff::new(Duration::from_secs(5), Duration::from_secs(2));
        assert_eq!(tiny.next_delay(1.0), Duration::from_secs(2));
    }
}
