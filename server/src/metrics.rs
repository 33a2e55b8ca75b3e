//! The server's own counters (ended sessions' traffic, refused logins, the handshake-duration
//! histogram) and their Prometheus registration through `prometheus-client`. Serving them over
//! HTTP is `metrics_http`'s; this module reads nothing but what it is given.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sshvpn_common::tunnel::TunnelStats;

use crate::switch::Switch;

/// Upper bounds (seconds) of the handshake-duration histogram buckets.
pub const HANDSHAKE_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A metric family keyed by one label.
pub type ByLabel = Family<Vec<(&'static str, String)>, Counter>;

/// Counters of the server as a whole (live sessions' own counters are read from the switch).
pub struct Metrics {
    /// Counters of sessions that have ended.
    pub totals: TunnelStats,
    auth_failures: Counter,
    handshakes: Histogram,
    /// Handshakes, refused logins and ended sessions: what allocates and frees per-connection
    /// memory (see [`Metrics::churn`]).
    churn: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            totals: TunnelStats::default(),
            auth_failures: Counter::default(),
            handshakes: Histogram::new(HANDSHAKE_BUCKETS),
            churn: Default::default(),
        }
    }
}

/// A counter family with one sample per `(label value, count)`.
pub fn by_label(label: &'static str, samples: impl IntoIterator<Item = (String, u64)>) -> ByLabel {
    let family = ByLabel::default();
    for (value, n) in samples {
        family.get_or_create(&vec![(label, value)]).inc_by(n);
    }
    family
}

impl Metrics {
    pub fn record_handshake(&self, took: Duration) {
        self.handshakes.observe(took.as_secs_f64());
        self.churned();
    }

    /// One refused authentication attempt.
    pub fn auth_failed(&self) {
        self.auth_failures.inc();
        self.churned();
    }

    /// A session ended.
    pub fn session_ended(&self, stats: &sshvpn_common::tunnel::StatsSnapshot) {
        self.totals.absorb(stats);
        self.churned();
    }

    fn churned(&self) {
        self.churn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Grows with every handshake, refused login and ended session.
    pub fn churn(&self) -> u64 {
        self.churn.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers these counters, the `clients` connected and the switch's, as they are now.
    pub fn register(&self, clients: usize, switch: &Switch, registry: &mut Registry) {
        let mut totals = self.totals.snapshot();
        totals += switch.traffic();
        let connected = Gauge::<i64>::default();
        connected.set(i64::try_from(clients).unwrap_or(i64::MAX));
        registry.register("sshvpn_clients", "Connected clients", connected);
        let direction = |from: u64, to: u64| {
            by_label(
                "direction",
                [("from_clients".to_string(), from), ("to_clients".to_string(), to)],
            )
        };
        registry.register(
            "sshvpn_bytes",
            "Bytes of IP packets moved, by direction as seen from the clients' side",
            direction(totals.rx_bytes, totals.tx_bytes),
        );
        registry.register(
            "sshvpn_packets",
            "Packets moved",
            direction(totals.rx_packets, totals.tx_packets),
        );
        let drops = [
            ("spoofed", totals.drop_spoofed),
            ("local_scope", totals.drop_local_scope),
            ("malformed", totals.drop_malformed),
            ("queue_full", totals.drop_queue_full),
            ("too_big", totals.drop_too_big),
            ("tun_error", totals.drop_tun_error),
            ("bad_offload", totals.drop_bad_offload),
            ("no_route", switch.stats.no_route.load(Relaxed)),
        ];
        registry.register(
            "sshvpn_drops",
            "Packets dropped, by reason",
            by_label("reason", drops.map(|(r, n)| (r.to_string(), n))),
        );
        registry.register(
            "sshvpn_auth_failures",
            "Refused authentication attempts",
            self.auth_failures.clone(),
        );
        registry.register(
            "sshvpn_handshake_seconds",
            "Time from tunnel start to established",
            self.handshakes.clone(),
        );
        if let Some(heap) = sshvpn_common::memory::heap_usage() {
            let gauges = Family::<Vec<(&'static str, String)>, Gauge<i64>>::default();
            for (kind, bytes) in [("in_use", heap.in_use), ("free", heap.free)] {
                gauges
                    .get_or_create(&vec![("kind", kind.to_string())])
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            registry.register(
                "sshvpn_heap_bytes",
                "Allocator memory: in use, and freed but kept for reuse as address space (a leak grows in_use)",
                gauges,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_keeps_the_metric_names_and_labels() {
        let m = Metrics::default();
        m.auth_failed();
        m.record_handshake(Duration::from_millis(70));
        let mut registry = Registry::default();
        m.register(0, &Switch::default(), &mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "sshvpn_clients 0",
            "sshvpn_bytes_total{direction=\"from_clients\"} 0",
            "sshvpn_packets_total{direction=\"to_clients\"} 0",
            "sshvpn_drops_total{reason=\"spoofed\"} 0",
            "sshvpn_drops_total{reason=\"no_route\"} 0",
            "sshvpn_auth_failures_total 1",
            "sshvpn_handshake_seconds_bucket{le=\"0.05\"} 0",
            "sshvpn_handshake_seconds_bucket{le=\"0.1\"} 1",
            "sshvpn_handshake_seconds_bucket{le=\"+Inf\"} 1",
            "sshvpn_handshake_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        for prefix in [
            "sshvpn_heap_bytes{kind=\"in_use\"} ",
            "sshvpn_heap_bytes{kind=\"free\"} ",
        ] {
            let value = text.lines().find_map(|l| l.strip_prefix(prefix));
            assert!(
                value.is_some_and(|v| v.parse::<u64>().is_ok()),
                "no {prefix:?} in:\n{text}"
            );
        }
    }
}
