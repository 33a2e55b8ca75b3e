//! Admission limits modelled on OpenSSH's sshd: early random drop of unauthenticated
//! connections (MaxStartups), per-source penalties (PerSourcePenalties), and log lines that
//! appear at most once per interval however often a limit is hit. Pure logic: time and randomness
//! are passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `start:rate:full`: below `start` unauthenticated connections all are accepted; from `start`
/// on a new one is refused with probability `rate`%, rising linearly to 100% at `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStartups {
    pub start: usize,
    pub rate: u32,
    pub full: usize,
}

impl Default for MaxStartups {
    fn default() -> Self {
        MaxStartups {
            start: 10,
            rate: 30,
            full: 100,
        }
    }
}

/// A `--max-startups` value that is not `START:RATE:FULL` with START <= FULL, FULL > 0 and
/// RATE a percentage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected START:RATE:FULL, e.g. 10:30:100")]
pub struct MaxStartupsError(String);

impl std::str::FromStr for MaxStartups {
    type Err = MaxStartupsError;
    fn from_str(s: &str) -> Result<Self, MaxStartupsError> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || MaxStartupsError(s.to_string());
        let [start, rate, full] = parts[..] else {
            return Err(bad());
        };
        let m = MaxStartups {
            start: start.parse().map_err(|_| bad())?,
            rate: rate.parse().map_err(|_| bad())?,
            full: full.parse().map_err(|_| bad())?,
        };
        if m.start > m.full || m.rate > 100 || m.full == 0 {
            return Err(bad());
        }
        Ok(m)
    }
}

impl MaxStartups {
    /// Whether to accept a new connection while `unauthenticated` are pending; `roll` is a
    /// uniform random number in [0, 1).
    pub fn admit(&self, unauthenticated: usize, roll: f64) -> bool {
        if unauthenticated < self.start {
            return true;
        }
        if unauthenticated >= self.full {
            return false;
        }
        let span = (self.full - self.start) as f64;
        let p = f64::from(self.rate) / 100.0
            + (1.0 - f64::from(self.rate) / 100.0) * (unauthenticated - self.start) as f64 / span;
        roll >= p
    }
}

/// What a source did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// A connection ended with failed authentication attempts.
    AuthFailure,
    /// A connection did not authenticate within the login deadline.
    NoAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltyPolicy {
    pub auth_failure: Duration,
    pub no_auth: Duration,
    /// Penalties shorter than this are only accumulated, not enforced.
    pub min: Duration,
    pub max: Duration,
    /// Sources tracked at most (the table is bounded).
    pub max_sources: usize,
}

impl Default for PenaltyPolicy {
    fn default() -> Self {
        PenaltyPolicy {
            auth_failure: Duration::from_secs(5),
            no_auth: Duration::from_secs(2),
            min: Duration::from_secs(15),
            max: Duration::from_secs(600),
            max_sources: 4096,
        }
    }
}

/// Per-source penalty table: each offence extends the source's penalty; once the accumulated
/// penalty reaches the minimum, new connections from that source are refused until it ends.
#[derive(Debug, Default)]
pub struct Penalties {
    policy: PenaltyPolicy,
    sources: HashMap<IpAddr, Penalty>,
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    until: Instant,
    enforced: bool,
}

impl Penalties {
    pub fn new(policy: PenaltyPolicy) -> Self {
        Penalties {
            policy,
            sources: HashMap::new(),
        }
    }

    /// Remaining penalty of `ip`, if it is currently refused.
    pub fn refused(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let p = *self.sources.get(&ip)?;
        if p.until <= now {
            self.sources.remove(&ip);
            return None;
        }
        p.enforced.then(|| p.until - now)
    }

    pub fn record(&mut self, ip: IpAddr, offence: Offence, now: Instant) {
        let add = match offence {
            Offence::AuthFailure => self.policy.auth_failure,
            Offence::NoAuth => self.policy.no_auth,
        };
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.policy.max_sources {
            self.sources.retain(|_, p| p.until > now);
            if self.sources.len() >= self.policy.max_sources {
                // Still full: forget the source whose penalty ends first.
                if let Some(first) = self.sources.iter().min_by_key(|(_, p)| p.until).map(|(ip, _)| *ip) {
                    self.sources.remove(&first);
                }
            }
        }
        let p = self.sources.entry(ip).or_insert(Penalty {
            until: now,
            enforced: false,
        });
        p.until = (p.until.max(now) + add).min(now + self.policy.max);
        if p.until - now >= self.policy.min {
            p.enforced = true;
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sources.len()
    }
}

/// Lets a message through at most once per interval (for limit hits under attack).
#[derive(Debug)]
pub struct LogEvery {
    interval: Duration,
    epoch: Instant,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogEvery {
    pub fn new(interval: Duration) -> Self {
        LogEvery {
            interval,
            epoch: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if the caller should log now; `n` earlier occurrences were suppressed.
    pub fn check(&self, now: Instant) -> Option<u64> {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || ms >= last + self.interval.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_startups_drops_early_and_randomly() {
        let m: MaxStartups = "10:30:100".parse().unwrap();
        assert!(m.admit(9, 0.0));
        assert!(!m.admit(10, 0.29) && m.admit(10, 0.31));
        assert!(!m.admit(55, 0.6) && m.admit(55, 0.7), "65% drop halfway");
        assert!(!m.admit(100, 0.999));
        assert_eq!(
            "1:2".parse::<MaxStartups>().unwrap_err().to_string(),
            "\"1:2\": expected START:RATE:FULL, e.g. 10:30:100"
        );
        assert!("50:30:10".parse::<MaxStartups>().is_err());
    }

    #[test]
    fn penalties_accumulate_enforce_and_expire() {
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut p = Penalties::new(PenaltyPolicy::default());
        p.record(a, Offence::AuthFailure, now);
        p.record(a, Offence::AuthFailure, now);
        assert_eq!(p.refused(a, now), None, "10 s is below the 15 s minimum");
        p.record(a, Offence::AuthFailure, now);
        assert_eq!(p.refused(a, now), Some(Duration::from_secs(15)));
        assert_eq!(p.refused(b, now), None, "other sources unaffected");
        assert_eq!(
            p.refused(a, now + Duration::from_secs(10)),
            Some(Duration::from_secs(5)),
            "enforced to the end"
        );
        assert_eq!(p.refused(a, now + Duration::from_secs(16)), None, "expired");
        for _ in 0..1000 {
            p.record(a, Offence::AuthFailure, now);
        }
        assert_eq!(p.refused(a, now), Some(Duration::from_secs(600)), "capped");
    }

    #[test]
    fn penalty_table_is_bounded() {
        let now = Instant::now();
        let mut p = Penalties::new(PenaltyPolicy {
            max_sources: 8,
            ..Default::default()
        });
        for i in 0..100u32 {
            p.record(
                IpAddr::from(i.to_be_bytes()),
                Offence::NoAuth,
                now + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(p.len() <= 8);
    }

    #[test]
    fn log_every_suppresses_and_counts() {
        let l = LogEvery::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(l.check(t), Some(0));
        assert_eq!(l.check(t + Duration::from_secs(1)), None);
        assert_eq!(l.check(t + Duration::from_secs(2)), None);
        assert_eq!(l.check(t + Duration::from_secs(11)), Some(2));
    }
}
