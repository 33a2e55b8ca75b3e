//! Admission of SSH connections before they authenticate: how many may be pending (sshd's
//! MaxStartups, overall and per source), the penalties of sources that misbehave, and the login
//! deadline. Owned by the SSH listener; the decisions themselves are `limits`' pure functions.
//! Knows nothing of sessions or keys.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::limits::{MaxStartups, Offence, Penalties, PenaltyPolicy};

/// The listener's admission state.
pub struct Admission {
    pub login_grace: Duration,
    pub max_startups: MaxStartups,
    pub per_source_max_startups: usize,
    unauthenticated: AtomicUsize,
    unauthenticated_per_source: Mutex<HashMap<IpAddr, usize>>,
    penalties: Mutex<Penalties>,
}

impl Admission {
    pub fn new(login_grace: Duration, max_startups: MaxStartups, per_source_max_startups: usize) -> Admission {
        Admission {
            login_grace,
            max_startups,
            per_source_max_startups,
            unauthenticated: AtomicUsize::new(0),
            unauthenticated_per_source: Mutex::new(HashMap::new()),
            penalties: Mutex::new(Penalties::new(PenaltyPolicy::default())),
        }
    }

    /// How much longer `source` is refused, if it is penalised.
    pub fn penalised(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        self.penalties
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused(source, now)
    }

    pub fn penalise(&self, source: IpAddr, offence: Offence, now: Instant) {
        self.penalties
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(source, offence, now);
    }

    /// Unauthenticated connections from `source`.
    pub fn pending_from(&self, source: IpAddr) -> usize {
        let per_source = self
            .unauthenticated_per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        per_source.get(&source).copied().unwrap_or(0)
    }

    /// Unauthenticated connections in all.
    pub fn pending(&self) -> usize {
        self.unauthenticated.load(Relaxed)
    }

    /// Counts a new unauthenticated connection from `source` until the guard is done or dropped.
    pub fn unauthenticated(self: &Arc<Self>, source: IpAddr) -> Unauthenticated {
        self.unauthenticated.fetch_add(1, Relaxed);
        *self
            .unauthenticated_per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(source)
            .or_insert(0) += 1;
        Unauthenticated(self.clone(), false, source)
    }
}

/// Counts one unauthenticated connection while it lives and is not logged in.
pub struct Unauthenticated(Arc<Admission>, bool, IpAddr);

impl Unauthenticated {
    /// Whether the connection has stopped counting (it logged in).
    pub fn is_done(&self) -> bool {
        self.1
    }

    pub fn done(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.unauthenticated.fetch_sub(1, Relaxed);
            let mut per_source = self
                .0
                .unauthenticated_per_source
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_source.get_mut(&self.2) {
                *n -= 1;
                if *n == 0 {
                    per_source.remove(&self.2);
                }
            }
        }
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.done();
    }
}
