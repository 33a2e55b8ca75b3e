//! The server's own counters (ended sessions' traffic, refused logins, the handshake-duration
//! histogram) and their Prometheus text exposition. Serving them over HTTP is `metrics_http`'s;
//! this module reads nothing but what it is given.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sshvpn_common::tunnel::TunnelStats;

use crate::switch::Switch;

/// Upper bounds (seconds) of the handshake-duration histogram buckets.
pub const HANDSHAKE_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counters of the server as a whole (live sessions' own counters are read from the switch).
#[derive(Default)]
pub struct Metrics {
    /// Counters of sessions that have ended.
    pub totals: TunnelStats,
    pub auth_failures: AtomicU64,
    /// Handshake durations: per-bucket counts, sum of seconds, count.
    handshakes: Mutex<([u64; 8], f64, u64)>,
}

impl Metrics {
    pub fn record_handshake(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let mut h = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = HANDSHAKE_BUCKETS.iter().position(|le| secs <= *le) {
            h.0[i] += 1;
        }
        h.1 += secs;
        h.2 += 1;
    }

    /// The text exposition of these counters, the `clients` connected and the switch's.
    pub fn render(&self, clients: usize, switch: &Switch) -> String {
        let mut totals = self.totals.snapshot();
        for p in switch.ports() {
            let s = p.stats.snapshot();
            totals.rx_bytes += s.rx_bytes;
            totals.tx_bytes += s.tx_bytes;
            totals.rx_packets += s.rx_packets;
            totals.tx_packets += s.tx_packets;
            totals.drop_spoofed += s.drop_spoofed;
            totals.drop_local_scope += s.drop_local_scope;
            totals.drop_malformed += s.drop_malformed;
            totals.drop_queue_full += s.drop_queue_full;
            totals.drop_too_big += s.drop_too_big;
            totals.drop_tun_error += s.drop_tun_error;
        }
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP sshvpn_clients Connected clients.\n# TYPE sshvpn_clients gauge"
        );
        let _ = writeln!(o, "sshvpn_clients {}", clients);
        let _ = writeln!(
            o,
            "# HELP sshvpn_bytes_total Bytes of IP packets moved, by direction as seen from the clients' side."
        );
        let _ = writeln!(o, "# TYPE sshvpn_bytes_total counter");
        let _ = writeln!(
            o,
            "sshvpn_bytes_total{{direction=\"from_clients\"}} {}",
            totals.rx_bytes
        );
        let _ = writeln!(o, "sshvpn_bytes_total{{direction=\"to_clients\"}} {}", totals.tx_bytes);
        let _ = writeln!(
            o,
            "# HELP sshvpn_packets_total Packets moved.\n# TYPE sshvpn_packets_total counter"
        );
        let _ = writeln!(
            o,
            "sshvpn_packets_total{{direction=\"from_clients\"}} {}",
            totals.rx_packets
        );
        let _ = writeln!(
            o,
            "sshvpn_packets_total{{direction=\"to_clients\"}} {}",
            totals.tx_packets
        );
        let _ = writeln!(
            o,
            "# HELP sshvpn_drops_total Packets dropped, by reason.\n# TYPE sshvpn_drops_total counter"
        );
        for (reason, n) in [
            ("spoofed", totals.drop_spoofed),
            ("local_scope", totals.drop_local_scope),
            ("malformed", totals.drop_malformed),
            ("queue_full", totals.drop_queue_full),
            ("too_big", totals.drop_too_big),
            ("tun_error", totals.drop_tun_error),
            ("no_route", switch.stats.no_route.load(Relaxed)),
        ] {
            let _ = writeln!(o, "sshvpn_drops_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP sshvpn_auth_failures_total Refused authentication attempts.");
        let _ = writeln!(
            o,
            "# TYPE sshvpn_auth_failures_total counter\nsshvpn_auth_failures_total {}",
            self.auth_failures.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP sshvpn_handshake_seconds Time from tunnel start to established."
        );
        let _ = writeln!(o, "# TYPE sshvpn_handshake_seconds histogram");
        let h = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        let mut cumulative = 0;
        for (i, le) in HANDSHAKE_BUCKETS.iter().enumerate() {
            cumulative += h.0[i];
            let _ = writeln!(o, "sshvpn_handshake_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(o, "sshvpn_handshake_seconds_bucket{{le=\"+Inf\"}} {}", h.2);
        let _ = writeln!(
            o,
            "sshvpn_handshake_seconds_sum {}\nsshvpn_handshake_seconds_count {}",
            h.1, h.2
        );
        drop(h);
        o
    }
}
