//! When the daemon hands freed memory back to the OS.
//!
//! The allocator keeps what the data path frees, for reuse (`sshvpn_common::memory`). The daemon
//! gives it back itself: after every few seconds in which connections came or went, and once
//! more when everything went quiet (no new connections, no packets), which also catches what
//! ended sessions free late. So its RSS follows the clients it has and what they send now, not
//! the most it ever had.

use std::sync::Arc;
use std::time::Duration;

use crate::state::ServerState;

/// How often the counters are looked at.
const INTERVAL: Duration = Duration::from_secs(5);

/// What one look at the counters showed: connections come and gone, packets moved (totals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub churn: u64,
    pub packets: u64,
}

/// Decides, from one look at the counters per interval, whether to trim now.
#[derive(Debug)]
pub struct QuietWatch {
    last: Activity,
    was_active: bool,
}

impl QuietWatch {
    pub fn new(now: Activity) -> Self {
        QuietWatch {
            last: now,
            was_active: false,
        }
    }

    /// True if memory should be handed back now: connections came or went since the last look,
    /// or something happened in the interval before and nothing in this one.
    pub fn observe(&mut self, now: Activity) -> bool {
        let churned = now.churn != self.last.churn;
        let active = churned || now.packets != self.last.packets;
        let trim = churned || (self.was_active && !active);
        self.last = now;
        self.was_active = active;
        trim
    }
}

fn activity(state: &ServerState) -> Activity {
    let traffic = state.switch.traffic();
    Activity {
        churn: state.metrics.churn(),
        packets: traffic.rx_packets + traffic.tx_packets,
    }
}

/// The daemon's background task.
pub async fn run(state: Arc<ServerState>) {
    let mut watch = QuietWatch::new(activity(&state));
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if watch.observe(activity(&state)) {
            sshvpn_common::memory::release_free_memory();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(churn: u64, packets: u64) -> Activity {
        Activity { churn, packets }
    }

    #[test]
    fn trims_after_churn_and_once_more_when_quiet() {
        let mut w = QuietWatch::new(at(0, 0));
        assert!(!w.observe(at(0, 0)), "nothing happened");
        assert!(w.observe(at(3, 10)), "connections came");
        assert!(w.observe(at(5, 20)), "more came");
        assert!(w.observe(at(5, 20)), "quiet after activity: once more");
        assert!(!w.observe(at(5, 20)), "still quiet: nothing to do");
        assert!(!w.observe(at(5, 20)));
    }

    #[test]
    fn steady_traffic_does_not_trim_until_it_stops() {
        let mut w = QuietWatch::new(at(1, 0));
        for p in 1..5 {
            assert!(!w.observe(at(1, p * 1000)), "packets moving, no churn");
        }
        assert!(w.observe(at(1, 4000)), "traffic stopped");
        assert!(!w.observe(at(1, 4000)));
    }

    #[test]
    fn a_session_leaving_counts_as_churn_even_if_the_packet_total_drops() {
        let mut w = QuietWatch::new(at(1, 500));
        assert!(w.observe(at(2, 100)));
        assert!(w.observe(at(2, 100)), "and once more when quiet");
    }
}
