//! Receive-side UDP coalescing (wireguard-go's UDP GRO for TUN): consecutive datagrams of one
//! flow from the peer are written to the TUN as one UDP GSO super-packet
//! (`VIRTIO_NET_HDR_GSO_UDP_L4`), which the kernel routes once and splits again where it
//! delivers or forwards them. With small packets most of a TUN write's cost is the kernel's
//! per-packet path, so this is what moves the small-packet rate.
//!
//! The rules follow the kernel's own UDP GRO: same IP version, addresses, ports, TOS/traffic
//! class, TTL/hop limit and DF bit; IPv4 IDs counting up by one (the kernel numbers the segments
//! so, and what it writes must be what the peer sent); no IP options, IPv6 extension headers or
//! fragments; every
//! datagram carries `gso_size` payload bytes except the last, which may carry fewer; a valid,
//! non-zero UDP checksum (the kernel recomputes the checksums of the segments, so a bad one
//! must not be laundered into a good one) — or a partial one, for a datagram that came with a
//! virtio-net header asking for its checksum to be completed (`NEEDS_CSUM` at the UDP checksum
//! field), which the kernel would complete anyway. At most [`MAX_SEGMENTS`] datagrams and 64 KiB.
//!
//! Pure: no I/O; the driver writes what [`UdpCoalescer::flush`] returns.

use super::checksum::{checksum_add, checksum_fold, pseudo_header_sum};
use super::ip::{IPPROTO_UDP, IPV4_HDR_LEN, IPV6_HDR_LEN, UDP_HDR_LEN};
use super::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4, VirtioNetHdr};

/// Datagrams per super-packet at most (the kernel's UDP_MAX_SEGMENTS is 128).
pub const MAX_SEGMENTS: usize = 64;
/// Largest super-packet: its IPv4 total length (IPv6: payload length) is a 16-bit field.
const MAX_LEN: usize = 65535;

/// What [`UdpCoalescer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Taken: appended to the pending super-packet, or the first of a new one.
    Held,
    /// Coalescable, but not with what is pending: flush, then push it again.
    FlushFirst,
    /// Never coalesced (not UDP, options, fragment, bad checksum, ...): flush what is pending,
    /// then write this packet on its own.
    Alone,
}

/// Where a datagram's fields are, and what must match between datagrams of one super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    v6: bool,
    /// The IP header bytes that must be equal (v4: version/IHL, TOS, flags/fragment, TTL,
    /// protocol, addresses; v6: version/class/flow label, next header, hop limit, addresses)
    /// and the two UDP ports, packed.
    key: [u8; 44],
}

/// Builds one super-packet at a time.
#[derive(Debug, Default)]
pub struct UdpCoalescer {
    /// The pending packet: the first datagram whole, then the payloads of the others.
    buf: Vec<u8>,
    flow: Option<Flow>,
    /// UDP payload bytes of the first datagram: the segment size.
    gso_size: usize,
    segments: usize,
    /// A datagram shorter than `gso_size` was appended: it must be the last.
    closed: bool,
    /// IPv4 ID of the first datagram.
    first_id: u16,
    /// The first datagram's checksum is partial (a lone one is written with `NEEDS_CSUM`).
    first_partial: bool,
}

/// Source and destination address bytes of an IPv4 or IPv6 header.
fn addr_bytes(ip: &[u8], v6: bool) -> (&[u8], &[u8]) {
    if v6 {
        (&ip[8..24], &ip[24..40])
    } else {
        (&ip[12..16], &ip[16..20])
    }
}

fn ipv4_id(ip: &[u8]) -> u16 {
    u16::from_be_bytes([ip[4], ip[5]])
}

/// How a datagram's UDP checksum field is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// A complete checksum: verified before the datagram is coalesced.
    Complete,
    /// A partial one (the sender's virtio-net header said `NEEDS_CSUM` at the UDP checksum):
    /// the kernel completes it, and will for the super-packet.
    Partial,
}

/// The fields of one datagram, if it may be coalesced at all.
fn parse(ip: &[u8], csum: Checksum) -> Option<(Flow, usize)> {
    let mut key = [0u8; 44];
    let (v6, l4) = match ip.first()? >> 4 {
        4 => {
            if ip.len() < IPV4_HDR_LEN + UDP_HDR_LEN || ip[0] != 0x45 || ip[9] != IPPROTO_UDP {
                return None;
            }
            // Fragments (MF set or an offset) never; DF is part of the key.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            if usize::from(u16::from_be_bytes([ip[2], ip[3]])) != ip.len() {
                return None;
            }
            key[0] = ip[1];
            key[1] = ip[6];
            key[2] = ip[8];
            key[4..12].copy_from_slice(&ip[12..20]);
            (false, IPV4_HDR_LEN)
        }
        6 => {
            if ip.len() < IPV6_HDR_LEN + UDP_HDR_LEN || ip[6] != IPPROTO_UDP {
                return None;
            }
            if usize::from(u16::from_be_bytes([ip[4], ip[5]])) + IPV6_HDR_LEN != ip.len() {
                return None;
            }
            key[0..4].copy_from_slice(&ip[0..4]);
            key[4] = ip[7];
            key[8..40].copy_from_slice(&ip[8..40]);
            (true, IPV6_HDR_LEN)
        }
        _ => return None,
    };
    let udp = &ip[l4..];
    if usize::from(u16::from_be_bytes([udp[4], udp[5]])) != udp.len() {
        return None;
    }
    key[40..44].copy_from_slice(&udp[0..4]);
    // A checksum that is absent (IPv4 allows it) or wrong is left to the kernel to judge.
    let (src, dst) = addr_bytes(ip, v6);
    if csum == Checksum::Complete {
        let sum = checksum_add(pseudo_header_sum(src, dst, IPPROTO_UDP, udp.len() as u32), udp);
        if u16::from_be_bytes([udp[6], udp[7]]) == 0 || checksum_fold(sum) != 0xffff {
            return None;
        }
    }
    Some((Flow { v6, key }, l4 + UDP_HDR_LEN))
}

impl UdpCoalescer {
    /// Offers one IP packet (already accepted by the receive checks).
    pub fn push(&mut self, ip: &[u8], csum: Checksum) -> Push {
        let Some((flow, hdr_len)) = parse(ip, csum) else {
            return Push::Alone;
        };
        let payload = &ip[hdr_len..];
        let Some(pending) = self.flow else {
            if payload.is_empty() {
                return Push::Alone;
            }
            self.buf.clear();
            self.buf.extend_from_slice(ip);
            self.flow = Some(flow);
            self.gso_size = payload.len();
            self.segments = 1;
            self.closed = false;
            self.first_id = if flow.v6 { 0 } else { ipv4_id(ip) };
            self.first_partial = csum == Checksum::Partial;
            return Push::Held;
        };
        let fits = pending == flow
            && !self.closed
            && (flow.v6 || ipv4_id(ip) == self.first_id.wrapping_add(self.segments as u16))
            && !payload.is_empty()
            && payload.len() <= self.gso_size
            && self.segments < MAX_SEGMENTS
            && self.buf.len() + payload.len() - if flow.v6 { IPV6_HDR_LEN } else { 0 } <= MAX_LEN;
        if !fits {
            return Push::FlushFirst;
        }
        self.buf.extend_from_slice(payload);
        self.segments += 1;
        self.closed = payload.len() < self.gso_size;
        Push::Held
    }

    /// Whether a packet is pending.
    pub fn is_empty(&self) -> bool {
        self.flow.is_none()
    }

    /// The checksum kind of a packet that came with virtio-net header `hdr`, if it is one the
    /// coalescer takes: no GSO, and either no checksum work or `NEEDS_CSUM` at the UDP
    /// checksum field of a packet with a plain IP header.
    pub fn checksum_of(hdr: &VirtioNetHdr, ip: &[u8]) -> Option<Checksum> {
        if hdr.gso_type != super::vnet::VIRTIO_NET_HDR_GSO_NONE {
            return None;
        }
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 {
            return Some(Checksum::Complete);
        }
        let l4 = match ip.first()? >> 4 {
            4 => IPV4_HDR_LEN,
            6 => IPV6_HDR_LEN,
            _ => return None,
        };
        (usize::from(hdr.csum_start) == l4 && hdr.csum_offset == 6).then_some(Checksum::Partial)
    }

    /// The datagrams held and their bytes as they came (each with its own IP and UDP header).
    pub fn held(&self) -> (u64, u64) {
        let Some(flow) = self.flow else {
            return (0, 0);
        };
        let headers = if flow.v6 { IPV6_HDR_LEN } else { IPV4_HDR_LEN } + UDP_HDR_LEN;
        let bytes = self.buf.len() + (self.segments - 1) * headers;
        (self.segments as u64, bytes as u64)
    }

    /// Takes the pending packet: a single datagram as it came (`None`, or `NEEDS_CSUM` for one
    /// whose checksum is partial), or a GSO header and the super-packet for several. The slice
    /// is valid until the next `push`.
    pub fn flush(&mut self) -> Option<(Option<VirtioNetHdr>, &[u8])> {
        let flow = self.flow.take()?;
        let l4 = if flow.v6 { IPV6_HDR_LEN } else { IPV4_HDR_LEN };
        if self.segments == 1 {
            let hdr = self.first_partial.then_some(VirtioNetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                csum_start: l4 as u16,
                csum_offset: 6,
                ..VirtioNetHdr::default()
            });
            return Some((hdr, &self.buf));
        }
        let udp_len = self.buf.len() - l4;
        let b = &mut self.buf;
        if flow.v6 {
            b[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        } else {
            let total = b.len() as u16;
            b[2..4].copy_from_slice(&total.to_be_bytes());
            b[10..12].copy_from_slice(&[0, 0]);
            let c = !checksum_fold(checksum_add(0, &b[..IPV4_HDR_LEN]));
            b[10..12].copy_from_slice(&c.to_be_bytes());
        }
        b[l4 + 4..l4 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        // A partial checksum (NEEDS_CSUM): the pseudo-header sum, folded, not complemented; the
        // kernel completes it for every segment.
        let (src, dst) = addr_bytes(b, flow.v6);
        let partial = checksum_fold(pseudo_header_sum(src, dst, IPPROTO_UDP, udp_len as u32));
        b[l4 + 6..l4 + 8].copy_from_slice(&partial.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            hdr_len: (l4 + UDP_HDR_LEN) as u16,
            gso_size: self.gso_size as u16,
            csum_start: l4 as u16,
            csum_offset: 6,
        };
        Some((Some(hdr), &self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::gso;
    use crate::packet::vnet::VIRTIO_NET_HDR_GSO_NONE;
    use etherparse::PacketBuilder;

    /// IPv4 IDs count up from 0xfffe (wrapping), one per datagram built.
    fn udp4(src_port: u16, payload: &[u8]) -> Vec<u8> {
        use std::sync::atomic::{AtomicU16, Ordering};
        thread_local!(static NEXT_ID: AtomicU16 = const { AtomicU16::new(0xfffe) });
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .udp(src_port, 53)
            .write(&mut out, payload)
            .unwrap();
        let id = NEXT_ID.with(|n| n.fetch_add(1, Ordering::Relaxed));
        set_id(&mut out, id);
        out
    }

    fn set_id(ip: &mut [u8], id: u16) {
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = !checksum_fold(checksum_add(0, &ip[..20]));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }

    fn udp6(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5000, 6000)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    /// The datagrams a super-packet splits into, as the kernel would split it.
    fn split(hdr: Option<VirtioNetHdr>, pkt: &[u8]) -> Vec<Vec<u8>> {
        let Some(hdr) = hdr else { return vec![pkt.to_vec()] };
        let mut out = Vec::new();
        gso::segment(&hdr, pkt, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        out
    }

    #[test]
    fn one_flow_becomes_one_super_packet_that_splits_back_into_the_datagrams() {
        let v4 = |p: &[u8]| udp4(1, p);
        for make in [&v4 as &dyn Fn(&[u8]) -> Vec<u8>, &udp6] {
            let sent: Vec<Vec<u8>> = vec![make(&[1; 36]), make(&[2; 36]), make(&[3; 36]), make(&[4; 10])];
            let mut c = UdpCoalescer::default();
            for p in &sent {
                assert_eq!(c.push(p, Checksum::Complete), Push::Held);
            }
            let (hdr, pkt) = c.flush().unwrap();
            let hdr = hdr.expect("a GSO header");
            assert_eq!((hdr.gso_type, hdr.gso_size), (VIRTIO_NET_HDR_GSO_UDP_L4, 36));
            assert_eq!(split(Some(hdr), pkt), sent);
            // The partial checksum completes to the checksum of the whole super-packet.
            let whole = VirtioNetHdr {
                gso_type: VIRTIO_NET_HDR_GSO_NONE,
                ..hdr
            };
            let mut done = Vec::new();
            gso::segment(&whole, pkt, &mut Vec::new(), |s| done = s.to_vec()).unwrap();
            assert!(
                parse(&done, Checksum::Complete).is_some(),
                "valid checksum after completion"
            );
            assert!(c.is_empty());
        }
    }

    #[test]
    fn held_counts_the_datagrams_and_their_bytes_as_they_came() {
        let v4 = |p: &[u8]| udp4(1, p);
        for make in [&v4 as &dyn Fn(&[u8]) -> Vec<u8>, &udp6] {
            let mut c = UdpCoalescer::default();
            assert_eq!(c.held(), (0, 0));
            let sent = [make(&[1; 36]), make(&[2; 36]), make(&[3; 7])];
            for p in &sent {
                assert_eq!(c.push(p, Checksum::Complete), Push::Held);
            }
            let bytes: usize = sent.iter().map(Vec::len).sum();
            assert_eq!(c.held(), (3, bytes as u64));
            c.flush().unwrap();
            assert_eq!(c.held(), (0, 0));
        }
    }

    #[test]
    fn datagrams_with_a_partial_checksum_are_taken_unverified() {
        let mut partial = udp4(1, &[5; 30]);
        // What a sender with checksum offload hands over: the pseudo-header sum, folded.
        let sum = checksum_fold(pseudo_header_sum(&partial[12..16], &partial[16..20], IPPROTO_UDP, 38));
        partial[26..28].copy_from_slice(&sum.to_be_bytes());
        let needs = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..VirtioNetHdr::default()
        };
        assert_eq!(UdpCoalescer::checksum_of(&needs, &partial), Some(Checksum::Partial));
        let elsewhere = VirtioNetHdr {
            csum_offset: 16,
            ..needs
        };
        assert_eq!(UdpCoalescer::checksum_of(&elsewhere, &partial), None);
        let mut c = UdpCoalescer::default();
        assert_eq!(
            c.push(&partial, Checksum::Complete),
            Push::Alone,
            "not a valid checksum"
        );
        assert_eq!(c.push(&partial, Checksum::Partial), Push::Held);
        let next = udp4(1, &[6; 30]);
        assert_eq!(c.push(&next, Checksum::Complete), Push::Held);
        let (hdr, pkt) = c.flush().unwrap();
        let mut out = Vec::new();
        gso::segment(&hdr.unwrap(), pkt, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        assert_eq!(out[1], next);
        assert!(parse(&out[0], Checksum::Complete).is_some(), "completed by the split");
        // Alone, it keeps asking for its checksum to be completed.
        assert_eq!(c.push(&partial, Checksum::Partial), Push::Held);
        assert_eq!(c.flush(), Some((Some(needs), &partial[..])));
    }

    #[test]
    fn a_single_datagram_is_written_as_it_came() {
        let mut c = UdpCoalescer::default();
        let p = udp4(1, &[7; 20]);
        assert_eq!(c.push(&p, Checksum::Complete), Push::Held);
        assert_eq!(c.flush(), Some((None, &p[..])));
        assert_eq!(c.flush(), None);
    }

    #[test]
    fn other_flows_bigger_datagrams_and_datagrams_after_a_short_one_start_anew() {
        let mut c = UdpCoalescer::default();
        let first = udp4(1, &[0; 30]);
        let next = |n: u16, p: &[u8]| {
            let mut d = udp4(1, p);
            set_id(&mut d, ipv4_id(&first).wrapping_add(n));
            d
        };
        assert_eq!(c.push(&first, Checksum::Complete), Push::Held);
        let mut port = next(1, &[0; 30]);
        port[20..22].copy_from_slice(&2u16.to_be_bytes());
        port[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(
            c.push(&port, Checksum::Complete),
            Push::Alone,
            "its checksum no longer matches"
        );
        assert_eq!(
            c.push(&udp4(2, &[0; 30]), Checksum::Complete),
            Push::FlushFirst,
            "other port"
        );
        assert_eq!(
            c.push(&udp6(&[0; 30]), Checksum::Complete),
            Push::FlushFirst,
            "other family"
        );
        assert_eq!(
            c.push(&next(1, &[0; 31]), Checksum::Complete),
            Push::FlushFirst,
            "bigger than the segment size"
        );
        assert_eq!(c.push(&next(1, &[0; 12]), Checksum::Complete), Push::Held);
        assert_eq!(
            c.push(&next(2, &[0; 12]), Checksum::Complete),
            Push::FlushFirst,
            "a short one was the last"
        );
        let mut d = UdpCoalescer::default();
        let first = udp4(1, &[0; 30]);
        d.push(&first, Checksum::Complete);
        let mut ttl = udp4(1, &[0; 30]);
        ttl[8] = 3;
        let id = ipv4_id(&ttl);
        set_id(&mut ttl, id);
        assert_eq!(d.push(&ttl, Checksum::Complete), Push::FlushFirst, "other TTL");
        let mut gap = udp4(1, &[0; 30]);
        set_id(&mut gap, ipv4_id(&first).wrapping_add(5));
        assert_eq!(
            d.push(&gap, Checksum::Complete),
            Push::FlushFirst,
            "IDs must count up by one"
        );
    }

    #[test]
    fn at_most_max_segments_and_64_kib() {
        let mut c = UdpCoalescer::default();
        for _ in 0..MAX_SEGMENTS {
            assert_eq!(c.push(&udp4(1, &[0; 64]), Checksum::Complete), Push::Held);
        }
        assert_eq!(c.push(&udp4(1, &[0; 64]), Checksum::Complete), Push::FlushFirst);
        let mut big = UdpCoalescer::default();
        assert_eq!(big.push(&udp4(1, &[0; 1400]), Checksum::Complete), Push::Held);
        let mut n = 1;
        while big.push(&udp4(1, &[0; 1400]), Checksum::Complete) == Push::Held {
            n += 1;
        }
        assert_eq!(n, 46, "46 x 1400 + 28 <= 65535 < 47 x 1400 + 28");
        let (_, pkt) = big.flush().unwrap();
        assert!(pkt.len() <= 65535);
    }

    #[test]
    fn never_coalesced_tcp_fragments_options_and_bad_or_missing_checksums() {
        let mut c = UdpCoalescer::default();
        let mut tcp = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .tcp(1, 2, 0, 1000)
            .write(&mut tcp, b"x")
            .unwrap();
        assert_eq!(c.push(&tcp, Checksum::Complete), Push::Alone);
        let mut frag = udp4(1, &[0; 30]);
        frag[6] |= 0x20; // more fragments
        assert_eq!(c.push(&frag, Checksum::Complete), Push::Alone);
        let mut bad = udp4(1, &[0; 30]);
        bad[27] ^= 1;
        assert_eq!(
            c.push(&bad, Checksum::Complete),
            Push::Alone,
            "a wrong checksum is not laundered"
        );
        let mut none = udp4(1, &[0; 30]);
        none[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(c.push(&none, Checksum::Complete), Push::Alone);
        let mut opts = udp4(1, &[0; 30]);
        opts[0] = 0x46;
        assert_eq!(c.push(&opts, Checksum::Complete), Push::Alone);
        assert!(c.is_empty());
    }
}
