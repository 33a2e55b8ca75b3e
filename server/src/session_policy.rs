//! What every session gets and may take: what is pushed to clients (routes, DNS, MTU, timers),
//! the per-session queue and frame limits, and the count of sessions against `--max-clients`.
//! Plain values and counters read by the session code; no I/O, nothing else of the server.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use ipnet::IpNet;
use sshvpn_common::proto::Timers;

/// The session policy pushed to clients and applied to each session.
pub struct SessionPolicy {
    pub push_routes: Vec<IpNet>,
    pub push_dns: Vec<IpAddr>,
    pub push_search: Vec<String>,
    pub mtu: u16,
    pub client_queue: usize,
    pub client_queue_bytes: usize,
    pub timers: Timers,
    /// Largest frame payload accepted from clients.
    pub max_frame: usize,
    /// Concurrent sessions one identity may hold (instance-tagged `sshvpn exec` runs).
    pub max_sessions_per_identity: usize,
}

/// Sessions running, against the `--max-clients` capacity, and their ids.
pub struct SessionSlots {
    next_id: AtomicU64,
    clients: AtomicUsize,
    pub max_clients: usize,
}

impl SessionSlots {
    pub fn new(max_clients: usize) -> SessionSlots {
        SessionSlots {
            next_id: AtomicU64::new(1),
            clients: AtomicUsize::new(0),
            max_clients,
        }
    }

    /// Sessions running now (from transport start to end, handshake included).
    pub fn connected(&self) -> usize {
        self.clients.load(Relaxed)
    }

    /// Whether the server is full.
    pub fn full(&self) -> bool {
        self.connected() >= self.max_clients
    }

    /// A fresh session id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    pub fn enter(&self) {
        self.clients.fetch_add(1, Relaxed);
    }

    pub fn leave(&self) {
        self.clients.fetch_sub(1, Relaxed);
    }
}
