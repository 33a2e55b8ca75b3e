//! Per-flow fair queue with priority for sparse flows: the scheduler of Linux's `fq_codel`
//! (RFC 8290, without the CoDel part), for packets waiting to go into the SSH connection.
//!
//! Why: the SSH connection is one ordered byte stream. Whatever is queued in front of a packet
//! (in russh, in the socket) delays it, so a bulk upload's standing queue used to delay every
//! interactive packet behind it. The writer now keeps that queue here instead, where it can be
//! reordered: each flow (addresses, protocol, ports) gets its own queue, a flow that has just
//! become active (a ping, a keystroke, a DNS query) is served before the backlogged ones, and the
//! backlogged ones share the link round-robin, by bytes (deficit round robin).
//!
//! Bounded in packets and in bytes. When full, packets are dropped from the head of the flow
//! holding the most bytes — the bulk flow that caused the queue pays, not the sparse ones.
//! No I/O: the caller pushes what it read and pops what it sends.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::packet::flow::hash_flow;
use crate::tun::VNET_HDR_LEN;

/// Number of flow buckets. Flows that hash into one bucket share its queue; the hash is keyed
/// per queue, so which flows collide cannot be chosen from outside.
const BUCKETS: usize = 128;
/// Bytes a backlogged flow may send per round (a few full-size packets; an offloaded 64 KiB
/// packet takes several rounds).
const QUANTUM: i64 = 16 * 1024;
/// A flow that queued nothing for this long is sparse when it sends again (a ping, a keystroke,
/// a DNS query); a bulk transfer never pauses that long while it has a backlog.
const SPARSE_GAP: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    No,
    New,
    Old,
}

#[derive(Debug)]
struct Flow {
    packets: VecDeque<Bytes>,
    bytes: usize,
    deficit: i64,
    listed: Listed,
    /// When the flow last queued a packet.
    last_push: Option<Instant>,
    /// Bytes it may still send ahead of a backlog, having become active after a quiet gap
    /// ([`FairQueue::pop_sparse`]); 0: not sparse.
    sparse_credit: i64,
}

#[derive(Debug)]
pub struct FairQueue {
    flows: Vec<Flow>,
    new_flows: VecDeque<usize>,
    old_flows: VecDeque<usize>,
    /// Flows with sparse credit, in the order they became sparse (entries whose flow has spent
    /// its credit or sent its packets are dropped when met).
    sparse_flows: VecDeque<usize>,
    bytes: usize,
    packets: usize,
    max_bytes: usize,
    max_packets: usize,
    /// Bytes of the TUN's own header in front of each packet (the virtio-net header).
    skip: usize,
    hasher: RandomState,
}

impl FairQueue {
    /// A queue of at most `max_packets` packets and `max_bytes` bytes, for packets that carry a
    /// virtio-net header in front of the IP header when `vnet_hdr` is true.
    pub fn new(max_packets: usize, max_bytes: usize, vnet_hdr: bool) -> Self {
        FairQueue {
            flows: (0..BUCKETS)
                .map(|_| Flow {
                    packets: VecDeque::new(),
                    bytes: 0,
                    deficit: 0,
                    listed: Listed::No,
                    last_push: None,
                    sparse_credit: 0,
                })
                .collect(),
            new_flows: VecDeque::new(),
            old_flows: VecDeque::new(),
            sparse_flows: VecDeque::new(),
            bytes: 0,
            packets: 0,
            max_bytes,
            max_packets: max_packets.max(1),
            skip: if vnet_hdr { VNET_HDR_LEN } else { 0 },
            hasher: RandomState::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.packets == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.packets
    }

    fn bucket(&self, pkt: &[u8]) -> usize {
        let mut h = self.hasher.build_hasher();
        hash_flow(pkt.get(self.skip..).unwrap_or(&[]), &mut h);
        (std::hash::Hasher::finish(&h) % BUCKETS as u64) as usize
    }

    /// Queues `pkt`, which arrived at `now`; returns how many packets had to be dropped to make
    /// room (possibly `pkt` itself, when its own flow is the largest).
    pub fn push(&mut self, pkt: Bytes, now: Instant) -> usize {
        let i = self.bucket(&pkt);
        let flow = &mut self.flows[i];
        let quiet = flow
            .last_push
            .is_none_or(|t| now.saturating_duration_since(t) >= SPARSE_GAP);
        if flow.packets.is_empty() && quiet {
            if flow.sparse_credit <= 0 {
                self.sparse_flows.push_back(i);
            }
            flow.sparse_credit = QUANTUM;
        }
        flow.last_push = Some(now);
        flow.bytes += pkt.len();
        self.bytes += pkt.len();
        self.packets += 1;
        flow.packets.push_back(pkt);
        if flow.listed == Listed::No {
            flow.listed = Listed::New;
            flow.deficit = QUANTUM;
            self.new_flows.push_back(i);
        }
        let mut dropped = 0;
        while self.packets > self.max_packets || (self.bytes > self.max_bytes && self.packets > 1) {
            self.drop_from_fattest();
            dropped += 1;
        }
        dropped
    }

    fn drop_from_fattest(&mut self) {
        let Some(fattest) = (0..BUCKETS).max_by_key(|&i| self.flows[i].bytes) else {
            return;
        };
        let flow = &mut self.flows[fattest];
        if let Some(p) = flow.packets.pop_front() {
            flow.bytes -= p.len();
            self.bytes -= p.len();
            self.packets -= 1;
        }
    }

    /// The next packet to send: new flows first, then the backlogged ones in turn.
    pub fn pop(&mut self) -> Option<Bytes> {
        self.pop_from(false)
    }

    /// The next packet of a flow that has just become active (a new flow's first quantum).
    pub fn pop_new(&mut self) -> Option<Bytes> {
        self.pop_from(true)
    }

    /// The next packet of a sparse flow — one that became active after a quiet gap (a ping, a
    /// keystroke, a DNS query) and has not sent its first quantum yet: what may go ahead of
    /// everything else, even of a batch that is still waiting for the link.
    pub fn pop_sparse(&mut self) -> Option<Bytes> {
        while let Some(&i) = self.sparse_flows.front() {
            let flow = &mut self.flows[i];
            match flow.packets.pop_front() {
                Some(p) if flow.sparse_credit > 0 => {
                    flow.bytes -= p.len();
                    flow.deficit -= p.len() as i64;
                    flow.sparse_credit -= p.len() as i64;
                    self.bytes -= p.len();
                    self.packets -= 1;
                    return Some(p);
                }
                Some(p) => flow.packets.push_front(p),
                None => {}
            }
            flow.sparse_credit = 0;
            self.sparse_flows.pop_front();
        }
        None
    }

    fn pop_from(&mut self, only_new: bool) -> Option<Bytes> {
        loop {
            let (i, from_new) = match self.new_flows.front() {
                Some(&i) => (i, true),
                None if only_new => return None,
                None => (*self.old_flows.front()?, false),
            };
            let flow = &mut self.flows[i];
            if flow.deficit <= 0 {
                // Used up its turn: to the back of the backlogged flows with a new quantum.
                flow.deficit += QUANTUM;
                flow.listed = Listed::Old;
                self.take_front(from_new);
                self.old_flows.push_back(i);
                continue;
            }
            match flow.packets.pop_front() {
                Some(p) => {
                    flow.bytes -= p.len();
                    flow.deficit -= p.len() as i64;
                    self.bytes -= p.len();
                    self.packets -= 1;
                    return Some(p);
                }
                None => {
                    // A new flow that emptied goes behind the backlogged ones once before it is
                    // forgotten (RFC 8290 §4.2: otherwise a flow could stay "new" for ever by
                    // sending one packet per turn and starve the others).
                    self.take_front(from_new);
                    if from_new && !self.old_flows.is_empty() {
                        self.flows[i].listed = Listed::Old;
                        self.old_flows.push_back(i);
                    } else {
                        self.flows[i].listed = Listed::No;
                    }
                }
            }
        }
    }

    fn take_front(&mut self, from_new: bool) {
        if from_new {
            self.new_flows.pop_front();
        } else {
            self.old_flows.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp(sport: u16, len: usize) -> Bytes {
        let mut v = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 2, 0, 9], 64)
            .udp(sport, 9)
            .write(&mut v, &vec![sport as u8; len])
            .unwrap();
        Bytes::from(v)
    }

    /// `ms` milliseconds after a fixed instant.
    fn at(ms: u64) -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    fn sport(p: &Bytes) -> u16 {
        u16::from_be_bytes([p[20], p[21]])
    }

    /// A queue whose flows 1..=n land in distinct buckets (the hash is random per queue).
    fn queue_with_distinct(n: u16, max_packets: usize, max_bytes: usize) -> (FairQueue, Vec<u16>) {
        loop {
            let q = FairQueue::new(max_packets, max_bytes, false);
            let mut seen = std::collections::HashSet::new();
            let ports: Vec<u16> = (1..=n).collect();
            if ports.iter().all(|&p| seen.insert(q.bucket(&udp(p, 1)))) {
                return (q, ports);
            }
        }
    }

    #[test]
    fn a_sparse_flow_overtakes_a_backlog() {
        let (mut q, _) = queue_with_distinct(2, 1000, 1 << 20);
        for _ in 0..100 {
            q.push(udp(1, 1400), at(0));
        }
        // The bulk flow has been served past its first quantum...
        for _ in 0..20 {
            assert_eq!(sport(&q.pop().unwrap()), 1);
        }
        // ...when a ping arrives: it goes next, not after the 80 packets in front of it.
        q.push(udp(2, 56), at(0));
        assert_eq!(sport(&q.pop().unwrap()), 2);
        assert_eq!(q.len(), 80);
        let rest: Vec<u16> = std::iter::from_fn(|| q.pop()).map(|p| sport(&p)).collect();
        assert_eq!(rest, vec![1; 80], "the flow keeps its order");
        assert!(q.is_empty() && q.bytes() == 0);
    }

    #[test]
    fn only_new_flows_can_go_ahead() {
        let (mut q, _) = queue_with_distinct(3, 1000, 1 << 20);
        for _ in 0..20 {
            q.push(udp(1, 1400), at(0));
        }
        // A bulk flow is new only for its first quantum; after that it waits its turn.
        let mut ahead = 0;
        while q.pop_new().is_some() {
            ahead += 1;
        }
        assert_eq!(ahead, 12, "one quantum of 16 KiB: 12 packets of 1428 bytes");
        q.push(udp(2, 56), at(0));
        q.push(udp(3, 56), at(0));
        assert_eq!(sport(&q.pop_new().unwrap()), 2);
        assert_eq!(sport(&q.pop_new().unwrap()), 3);
        assert!(q.pop_new().is_none(), "the rest is backlog");
        assert_eq!(q.len(), 8);
        assert_eq!(sport(&q.pop().unwrap()), 1);
    }

    #[test]
    fn only_a_flow_back_from_a_pause_is_sparse() {
        let (mut q, _) = queue_with_distinct(2, 1000, 1 << 20);
        // A bulk flow that keeps its queue busy, a millisecond at a time.
        for ms in 0..30 {
            q.push(udp(1, 1400), at(ms));
            q.pop();
        }
        // Its very first packet counted as sparse; that credit is gone once it was sent.
        while q.pop_sparse().is_some() {}
        q.push(udp(1, 1400), at(30));
        assert!(q.pop_sparse().is_none(), "no pause: not sparse");
        // A ping after 100 ms of silence is, for its first quantum.
        q.push(udp(2, 56), at(0));
        while q.pop_sparse().is_some() {}
        q.push(udp(2, 56), at(100));
        assert_eq!(sport(&q.pop_sparse().unwrap()), 2);
        assert!(q.pop_sparse().is_none());
        q.push(udp(2, 56), at(101));
        assert!(q.pop_sparse().is_none(), "1 ms after the last: not sparse");
        assert_eq!(q.len(), 2);
        // A sparse flow's credit is one quantum: a burst after a pause does not all go ahead.
        q.push(udp(2, 56), at(200));
        for ms in 0..20 {
            q.push(udp(2, 1400), at(200 + ms / 10));
        }
        let mut ahead = 0;
        while q.pop_sparse().is_some() {
            ahead += 1;
        }
        assert!(ahead <= 13, "{ahead} packets went ahead");
    }

    #[test]
    fn backlogged_flows_share_by_bytes() {
        let (mut q, _) = queue_with_distinct(2, 10_000, 1 << 24);
        // Flow 1 sends big packets, flow 2 small ones: each gets about the same bytes per round.
        for _ in 0..200 {
            q.push(udp(1, 8000), at(0));
        }
        for _ in 0..2000 {
            q.push(udp(2, 800), at(0));
        }
        let mut bytes = [0usize; 3];
        for _ in 0..600 {
            let p = q.pop().unwrap();
            bytes[sport(&p) as usize] += p.len();
        }
        let (a, b) = (bytes[1] as f64, bytes[2] as f64);
        assert!((a / b - 1.0).abs() < 0.2, "shares {a} vs {b}");
    }

    #[test]
    fn full_queue_drops_from_the_largest_flow() {
        let (mut q, _) = queue_with_distinct(2, 50, 1 << 20);
        for _ in 0..50 {
            assert_eq!(q.push(udp(1, 1000), at(0)), 0);
        }
        while q.pop_new().is_some() {} // the bulk flow's first quantum
        while q.len() < 50 {
            assert_eq!(q.push(udp(1, 1000), at(0)), 0);
        }
        // The queue is full: the sparse flow's packet gets in, the bulk flow loses its oldest.
        assert_eq!(q.push(udp(2, 40), at(0)), 1);
        assert_eq!(q.len(), 50);
        assert_eq!(sport(&q.pop().unwrap()), 2);
        // Byte bound: a queue of 10 000 bytes never holds more (beyond one packet).
        let (mut q, _) = queue_with_distinct(1, 1000, 10_000);
        for _ in 0..100 {
            q.push(udp(1, 1000), at(0));
            assert!(q.bytes() <= 10_000);
        }
        // A single packet larger than the bound is still taken into an empty queue.
        let (mut q, _) = queue_with_distinct(1, 10, 100);
        assert_eq!(q.push(udp(1, 5000), at(0)), 0);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_flow_cannot_stay_new_by_trickling() {
        let (mut q, _) = queue_with_distinct(2, 10_000, 1 << 24);
        for _ in 0..1000 {
            q.push(udp(1, 1400), at(0));
        }
        // Flow 2 sends one packet each time one is sent: it must not starve flow 1.
        let mut served = [0usize; 3];
        for _ in 0..200 {
            q.push(udp(2, 1400), at(0));
            served[sport(&q.pop().unwrap()) as usize] += 1;
        }
        assert!(served[1] >= 60, "bulk flow served {served:?}");
    }

    #[test]
    fn garbage_and_vnet_headers() {
        let mut q = FairQueue::new(10, 1000, true);
        q.push(Bytes::from_static(&[0u8; 3]), at(0)); // shorter than a virtio-net header
        q.push(Bytes::from_static(&[]), at(0));
        assert_eq!(q.len(), 2);
        assert!(q.pop().is_some() && q.pop().is_some() && q.pop().is_none());
    }
}
