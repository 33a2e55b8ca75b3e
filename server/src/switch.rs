//! The server's packet switch: one TUN, many clients. Packets read from the TUN go to the client
//! owning the destination address (longest-prefix match), through that client's bounded queue;
//! a full queue drops the packet and counts it, so one slow client never stalls the others.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ipnet::IpNet;
use sshvpn_common::allowed_ips::AllowedIps;
use sshvpn_common::packet::packet_addrs;
use sshvpn_common::tun::{RecvArena, TunIo, VNET_HDR_LEN};
use sshvpn_common::tunnel::{QueueSender, TunnelStats};
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
    table: RwLock<AllowedIps<Arc<PeerPort>>>,
    pub stats: SwitchStats,
}

impl Switch {
    /// Routes the port's addresses to it. Ports of other sessions holding any of those addresses
    /// are unhooked and told to leave (the newest session of an identity wins).
    pub fn attach(&self, port: Arc<PeerPort>) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        for net in &port.addresses {
            if let Some(old) = table.insert(*net, port.clone())
                && old.id != port.id
            {
                table.retain(|p| p.id != old.id);
                tracing::info!("session {} of {} replaced by session {}", old.id, old.identity, port.id);
                old.evict.notify_one();
            }
        }
    }

    /// Every attached session, once each.
    pub fn ports(&self) -> Vec<Arc<PeerPort>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Arc<PeerPort>> = Vec::new();
        table.for_each(|p| {
            if !v.iter().any(|q| q.id == p.id) {
                v.push(p.clone());
            }
        });
        v.sort_by_key(|p| p.id);
        v
    }

    /// Whether some session of `identity` is attached.
    pub fn has_identity(&self, identity: &str) -> bool {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut found = false;
        table.for_each(|p| found |= p.identity == identity);
        found
    }

    /// Removes the port's routes, if they still point at it.
    pub fn detach(&self, port: &PeerPort) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        table.retain(|p| p.id != port.id);
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
                self.dispatch(&table, pkt, vnet);
            }
        }
    }
}
