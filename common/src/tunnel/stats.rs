//! Per-session counters, updated with relaxed atomics from the data path.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Packets and bytes sent to the peer (TUN -> transport).
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Packets and bytes received from the peer (transport -> TUN).
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Packets from the peer whose source address it does not own.
    pub drop_spoofed: AtomicU64,
    /// Packets from the peer with a link-local or unspecified source, or a multicast
    /// destination: never routed through the tunnel (IPv6 router solicitations, MLD, ...).
    pub drop_local_scope: AtomicU64,
    /// Packets from the peer that are not valid IP packets.
    pub drop_malformed: AtomicU64,
    /// Packets for the peer dropped because its queue was full.
    pub drop_queue_full: AtomicU64,
    /// Packets too large for the negotiated limits.
    pub drop_too_big: AtomicU64,
    /// Packets the local TUN refused.
    pub drop_tun_error: AtomicU64,
    /// Offloaded frames from the peer whose virtio-net header contradicts the packet or asks for
    /// too many segments (`crate::packet::offload_check`).
    pub drop_bad_offload: AtomicU64,
    /// Round-trip time of the last keepalive, in microseconds (0: none yet).
    pub rtt_us: AtomicU64,
}

/// A plain copy of the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drop_spoofed: u64,
    pub drop_local_scope: u64,
    pub drop_malformed: u64,
    pub drop_queue_full: u64,
    pub drop_too_big: u64,
    pub drop_tun_error: u64,
    pub drop_bad_offload: u64,
}

impl TunnelStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Adds a finished session's counters to these totals.
    pub fn absorb(&self, s: &StatsSnapshot) {
        for (c, n) in [
            (&self.tx_packets, s.tx_packets),
            (&self.tx_bytes, s.tx_bytes),
            (&self.rx_packets, s.rx_packets),
            (&self.rx_bytes, s.rx_bytes),
            (&self.drop_spoofed, s.drop_spoofed),
            (&self.drop_local_scope, s.drop_local_scope),
            (&self.drop_malformed, s.drop_malformed),
            (&self.drop_queue_full, s.drop_queue_full),
            (&self.drop_too_big, s.drop_too_big),
            (&self.drop_tun_error, s.drop_tun_error),
            (&self.drop_bad_offload, s.drop_bad_offload),
        ] {
            c.fetch_add(n, Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            drop_spoofed: self.drop_spoofed.load(Relaxed),
            drop_local_scope: self.drop_local_scope.load(Relaxed),
            drop_malformed: self.drop_malformed.load(Relaxed),
            drop_queue_full: self.drop_queue_full.load(Relaxed),
            drop_too_big: self.drop_too_big.load(Relaxed),
            drop_tun_error: self.drop_tun_error.load(Relaxed),
            drop_bad_offload: self.drop_bad_offload.load(Relaxed),
        }
    }
}

impl std::ops::AddAssign for StatsSnapshot {
    fn add_assign(&mut self, o: StatsSnapshot) {
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.drop_spoofed += o.drop_spoofed;
        self.drop_local_scope += o.drop_local_scope;
        self.drop_malformed += o.drop_malformed;
        self.drop_queue_full += o.drop_queue_full;
        self.drop_too_big += o.drop_too_big;
        self.drop_tun_error += o.drop_tun_error;
        self.drop_bad_offload += o.drop_bad_offload;
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tx {} pkts/{} bytes, rx {} pkts/{} bytes, dropped spoofed={} local_scope={} malformed={} queue_full={} too_big={} tun_error={} bad_offload={}",
            self.tx_packets,
            self.tx_bytes,
            self.rx_packets,
            self.rx_bytes,
            self.drop_spoofed,
            self.drop_local_scope,
            self.drop_malformed,
            self.drop_queue_full,
            self.drop_too_big,
            self.drop_tun_error,
            self.drop_bad_offload
        )
    }
}
