//! The server's packet switch: one TUN, many clients. Packets read from the TUN go to the client
//! owning the destination address (longest-prefix match), through that client's bounded queue;
//! a full queue drops the packet and counts it, so one slow client never stalls the others.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ipnet::IpNet;
use sshvpn_common::allowed_ips::AllowedIps;
use sshvpn_common::packet::packet_addrs;
use sshvpn_common::tun::{RecvArena, TunIo, VNET_HDR_LEN};
use sshvpn_common::tunnel::{QueueSender, StatsSnapshot, TunnelStats};
use tokio::sync::Notify;

/// Most packets read from the TUN per table lock (one wait, then what is ready).
const READ_BATCH: usize = 257;

/// The switch's handle on one connected client.
#[derive(Debug)]
pub struct PeerPort {
    pub id: u64,
    pub identity: String,
    pub addresses: Vec<IpNet>,
    pub queue: QueueSender,
    pub stats: Arc<TunnelStats>,
    /// Where the client came from (socket address or Unix user) and since when.
    pub peer: String,
    pub since: std::time::SystemTime,
    /// Notified when this session must end (e.g. replaced by a newer one of the same identity).
    pub evict: Notify,
    /// Key management: set when this session's credential is no longer authorized (removed,
    /// revoked, expired); the eviction then closes it with CLOSE "not authorized".
    pub not_authorized: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
pub struct SwitchStats {
    /// Packets read from the TUN for which no client owns the destination.
    pub no_route: AtomicU64,
    pub malformed: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Switch {
    table: RwLock<Table>,
    pub stats: SwitchStats,
}

/// Who owns which address, and every attached session by id: listing the sessions must not
/// walk the routes (with 5000 clients, `ports` did so for every new connection, quadratically,
/// and connecting all of them took minutes).
#[derive(Debug, Default)]
struct Table {
    routes: AllowedIps<Arc<PeerPort>>,
    ports: BTreeMap<u64, Arc<PeerPort>>,
}

impl Switch {
    /// Routes the port's addresses to it. Ports of other sessions holding any of those addresses
    /// are unhooked and told to leave (the newest session of an identity wins).
    pub fn attach(&self, port: Arc<PeerPort>) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let Table { routes, ports } = &mut *table;
        ports.insert(port.id, port.clone());
        for net in &port.addresses {
            if let Some(old) = routes.insert(*net, port.clone())
                && old.id != port.id
            {
                routes.retain(|p| p.id != old.id);
                ports.remove(&old.id);
                tracing::info!("session {} of {} replaced by session {}", old.id, old.identity, port.id);
                old.evict.notify_one();
            }
        }
    }

    /// Every attached session, once each, by id.
    pub fn ports(&self) -> Vec<Arc<PeerPort>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.ports.values().cloned().collect()
    }

    /// The counters of all attached sessions, added up.
    pub fn traffic(&self) -> StatsSnapshot {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut sum = StatsSnapshot::default();
        for p in table.ports.values() {
            sum += p.stats.snapshot();
        }
        sum
    }

    /// How many attached sessions `pred` holds for.
    pub fn count(&self, pred: impl Fn(&PeerPort) -> bool) -> usize {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.ports.values().filter(|p| pred(p)).count()
    }

    /// Whether some session of `identity` is attached.
    pub fn has_identity(&self, identity: &str) -> bool {
        self.count(|p| p.identity == identity) > 0
    }

    /// Removes the port's routes, if they still point at it.
    pub fn detach(&self, port: &PeerPort) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if table.ports.remove(&port.id).is_some() {
            table.routes.retain(|p| p.id != port.id);
        }
    }

    /// Hands one packet read from the TUN to its client.
    fn dispatch(&self, table: &AllowedIps<Arc<PeerPort>>, pkt: Bytes, vnet_hdr: bool) {
        let ip = if vnet_hdr {
            pkt.get(VNET_HDR_LEN..).unwrap_or_default()
        } else {
            &pkt[..]
        };
        let Some(addrs) = packet_addrs(ip) else {
            self.stats.malformed.fetch_add(1, Relaxed);
            return;
        };
        let Some(port) = table.lookup(addrs.dst) else {
            self.stats.no_route.fetch_add(1, Relaxed);
            return;
        };
        if port.queue.try_push(pkt).is_err() {
            TunnelStats::add(&port.stats.drop_queue_full, 1);
        }
    }

    /// Reads the TUN forever, dispatching packets; returns only on a TUN error.
    pub async fn run_tun_reader<T: TunIo>(self: Arc<Self>, tun: Arc<T>) -> std::io::Result<()> {
        let mut arena = RecvArena::default();
        let vnet = tun.has_vnet_hdr();
        let mut batch = Vec::with_capacity(READ_BATCH);
        loop {
            tun.recv_batch(&mut arena, &mut batch, READ_BATCH).await?;
            // Take the table lock once for everything that is ready now.
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            for pkt in batch.drain(..) {
                self.dispatch(&table.routes, pkt, vnet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sshvpn_common::tunnel::packet_queue;

    fn port(id: u64, identity: &str, addr: &str) -> Arc<PeerPort> {
        Arc::new(PeerPort {
            id,
            identity: identity.into(),
            addresses: vec![addr.parse().unwrap()],
            queue: packet_queue(4, 4096).0,
            stats: Arc::default(),
            peer: "test".into(),
            since: std::time::SystemTime::now(),
            evict: Notify::new(),
            not_authorized: Default::default(),
        })
    }

    #[test]
    fn sessions_are_listed_once_replaced_ones_leave_and_detach_frees_the_routes() {
        let switch = Switch::default();
        switch.attach(port(1, "a", "10.9.0.2/32"));
        switch.attach(port(2, "b", "10.9.0.3/32"));
        let ids = |s: &Switch| s.ports().iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(ids(&switch), [1, 2]);
        assert!(switch.has_identity("a"));
        // A newer session of the same address replaces the older one.
        let newer = port(3, "a", "10.9.0.2/32");
        switch.attach(newer.clone());
        assert_eq!(ids(&switch), [2, 3]);
        assert_eq!(switch.count(|p| p.identity == "a"), 1);
        switch.detach(&newer);
        assert_eq!(ids(&switch), [2]);
        assert!(!switch.has_identity("a"));
        let table = switch.table.read().unwrap();
        assert!(table.routes.lookup("10.9.0.2".parse().unwrap()).is_none());
        assert!(table.routes.lookup("10.9.0.3".parse().unwrap()).is_some());
    }

    #[test]
    fn traffic_adds_up_the_attached_sessions_only() {
        let switch = Switch::default();
        let (a, b) = (port(1, "a", "10.9.0.2/32"), port(2, "b", "10.9.0.3/32"));
        TunnelStats::add(&a.stats.rx_packets, 3);
        TunnelStats::add(&b.stats.rx_packets, 4);
        TunnelStats::add(&b.stats.tx_bytes, 100);
        switch.attach(a.clone());
        switch.attach(b);
        let t = switch.traffic();
        assert_eq!((t.rx_packets, t.tx_bytes), (7, 100));
        switch.detach(&a);
        assert_eq!(switch.traffic().rx_packets, 4);
    }
}
