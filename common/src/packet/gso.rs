//! Software GSO segmentation and checksum completion for packets read from a
//! Linux TUN device with `IFF_VNET_HDR` and `TUNSETOFFLOAD`.
//!
//! With offloads enabled the kernel hands user space TCP/UDP "super-packets"
//! (up to ~64 KiB) and packets whose L4 checksum is only partial. A peer
//! without offloads must receive ordinary, MTU-sized packets with complete
//! checksums; [`segment`] produces exactly those.
//!
//! Semantics follow the kernel (`tcp_gso_segment`, `__udp_gso_segment`,
//! `inet_gso_segment`, `skb_checksum_help`) and wireguard-go's
//! `tun/offload_linux.go` (`gsoSplit`, `handleVirtioRead`).

use crate::packet::checksum::{checksum_add, checksum_fold, pseudo_header_sum};
use crate::packet::ip::{IPPROTO_TCP, IPPROTO_UDP, IPV6_HDR_LEN};
use crate::packet::vnet::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4, VirtioNetHdr,
};
use core::fmt;

/// Why a packet could not be turned into ordinary packets. Nothing has been
/// emitted when an error is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoError {
    /// The vnet header is invalid or contradicts the packet (gso_size 0, GSO
    /// type not matching the IP version or L4 protocol, IHL < 5, TCP data
    /// offset < 5, IP fragment, inconsistent IP length field, a segment that
    /// would not fit a 16-bit length, not an IP packet).
    BadHeader,
    /// The packet is shorter than its own headers, its IP length field, or the
    /// checksum position the vnet header points at.
    Truncated,
    /// A GSO request this module does not handle; carries the raw `gso_type`
    /// (UFO, unknown types, IPv6 routing header with segments left).
    Unsupported(u8),
    /// The super-packet would produce more than [`MAX_SEGMENTS`] segments.
    TooManySegments,
}

impl fmt::Display for GsoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GsoError::BadHeader => f.write_str("virtio-net header inconsistent with packet"),
            GsoError::Truncated => f.write_str("packet truncated"),
            GsoError::Unsupported(t) => write!(f, "unsupported GSO type {t:#x}"),
            GsoError::TooManySegments => f.write_str("too many GSO segments"),
        }
    }
}

impl std::error::Error for GsoError {}

/// Upper bound on segments per super-packet (the kernel's `GSO_MAX_SEGS`).
pub const MAX_SEGMENTS: usize = 65535;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_DSTOPTS: u8 = 60;

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_PSH: u8 = 0x08;
const TCP_FLAG_CWR: u8 = 0x80;

/// At most this many IPv6 extension headers are walked before giving up.
const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Turns one packet read from a TUN with `IFF_VNET_HDR` (its header `hdr` and
/// the IP packet `pkt` that followed it) into ordinary IP packets with
/// complete, correct checksums, passing each to `emit`.
///
/// `scratch` is where segments are built; keep it across calls so the steady
/// state allocates nothing. Its contents on return are unspecified.
///
/// - `GSO_NONE` without `NEEDS_CSUM`: `pkt` is emitted as is (no copy).
/// - `GSO_NONE` with `NEEDS_CSUM`: like the kernel's `skb_checksum_help`, the
///   ones'-complement sum over `pkt[csum_start..]` (the field already holds the
///   folded pseudo-header sum) is complemented and stored at
///   `csum_start + csum_offset`; a result of 0 is stored as 0xffff. The packet
///   is not parsed, so this also works for any inet-checksummed protocol.
/// - `GSO_TCPV4`, `GSO_TCPV6` (with or without `GSO_ECN`), `GSO_UDP_L4`: the
///   IP and L4 headers are parsed from the packet itself; `hdr_len`,
///   `csum_start` and `csum_offset` are ignored (the kernel's `hdr_len` can be
///   wrong on the forward path). Each segment carries at most `gso_size`
///   payload bytes; IPv4 total length, ID (+ segment index, wrapping) and
///   header checksum, IPv6 payload length, TCP sequence number and flags (FIN
///   and PSH only on the last segment, CWR only on the first), UDP length and
///   all L4 checksums are rewritten. A super-packet without payload yields one
///   packet.
/// - `GSO_UDP` (UFO) and unknown types: [`GsoError::Unsupported`].
///
/// All validation happens before the first `emit`, so on error nothing was emitted.
pub fn segment(
    hdr: &VirtioNetHdr,
    pkt: &[u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), GsoError> {
    let kind = match hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => {
            if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 {
                emit(pkt);
            } else {
                complete_checksum(hdr, pkt, scratch)?;
                emit(scratch);
            }
            return Ok(());
        }
        VIRTIO_NET_HDR_GSO_TCPV4 => Kind::Tcp { v6: false },
        VIRTIO_NET_HDR_GSO_TCPV6 => Kind::Tcp { v6: true },
        VIRTIO_NET_HDR_GSO_UDP_L4 => Kind::Udp,
        _ => return Err(GsoError::Unsupported(hdr.gso_type)),
    };
    if hdr.gso_size == 0 {
        return Err(GsoError::BadHeader);
    }
    let l = Layout::parse(pkt, kind, hdr.gso_type)?;
    let mss = usize::from(hdr.gso_size);
    let payload = &pkt[l.hdr_len..];
    let nseg = payload.len().div_ceil(mss).max(1);
    if nseg > MAX_SEGMENTS {
        return Err(GsoError::TooManySegments);
    }
    // The largest segment is the first one; its lengths must fit 16-bit fields.
    let max_seg_len = l.hdr_len + payload.len().min(mss);
    let max_len_field = if l.v6 { max_seg_len - IPV6_HDR_LEN } else { max_seg_len };
    if max_len_field > usize::from(u16::MAX) {
        return Err(GsoError::BadHeader);
    }

    let (src, dst) = if l.v6 {
        (&pkt[8..24], &pkt[24..40])
    } else {
        (&pkt[12..16], &pkt[16..20])
    };
    let l4 = l.l4_off;
    let (proto, csum_at) = if l.tcp {
        (IPPROTO_TCP, l4 + 16)
    } else {
        (IPPROTO_UDP, l4 + 6)
    };
    let ip_id = be16(pkt, 4);
    let (seq, tcp_flags) = if l.tcp {
        let seq = u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]]);
        (seq, pkt[l4 + 13])
    } else {
        (0, 0)
    };

    scratch.clear();
    scratch.reserve(max_seg_len);
    for i in 0..nseg {
        let start = i * mss;
        let end = (start + mss).min(payload.len());
        let last = i + 1 == nseg;

        scratch.clear();
        scratch.extend_from_slice(&pkt[..l.hdr_len]);
        scratch.extend_from_slice(&payload[start..end]);
        let seg = scratch.as_mut_slice();
        let seg_len = seg.len();
        let l4_len = seg_len - l4;

        if l.v6 {
            put16(seg, 4, (seg_len - IPV6_HDR_LEN) as u16);
        } else {
            put16(seg, 2, seg_len as u16);
            put16(seg, 4, ip_id.wrapping_add(i as u16));
            put16(seg, 10, 0);
            let c = !checksum_fold(checksum_add(0, &seg[..l4]));
            put16(seg, 10, c);
        }

        if l.tcp {
            let s = seq.wrapping_add(start as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            let mut flags = tcp_flags;
            if !last {
                flags &= !(TCP_FLAG_FIN | TCP_FLAG_PSH);
            }
            if i != 0 {
                flags &= !TCP_FLAG_CWR;
            }
            seg[l4 + 13] = flags;
        } else {
            put16(seg, l4 + 4, l4_len as u16);
        }

        put16(seg, csum_at, 0);
        let sum = checksum_add(pseudo_header_sum(src, dst, proto, l4_len as u32), &seg[l4..]);
        let mut c = !checksum_fold(sum);
        if !l.tcp && c == 0 {
            // UDP: zero means "no checksum"; transmit the other zero.
            c = 0xffff;
        }
        put16(seg, csum_at, c);

        emit(seg);
    }
    Ok(())
}

/// Completes a `NEEDS_CSUM` checksum into a copy of `pkt` in `scratch`.
fn complete_checksum(hdr: &VirtioNetHdr, pkt: &[u8], scratch: &mut Vec<u8>) -> Result<(), GsoError> {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > pkt.len() {
        return Err(GsoError::Truncated);
    }
    scratch.clear();
    scratch.extend_from_slice(pkt);
    let c = match !checksum_fold(checksum_add(0, &scratch[start..])) {
        0 => 0xffff, // CSUM_MANGLED_0, as skb_checksum_help does
        c => c,
    };
    put16(scratch, at, c);
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp { v6: bool },
    Udp,
}

/// Offsets of a GSO super-packet, derived from the packet itself.
struct Layout {
    v6: bool,
    tcp: bool,
    /// Start of the L4 header (IP header length incl. options/extensions).
    l4_off: usize,
    /// Start of the L4 payload.
    hdr_len: usize,
}

impl Layout {
    fn parse(pkt: &[u8], kind: Kind, gso_type: u8) -> Result<Layout, GsoError> {
        let first = *pkt.first().ok_or(GsoError::Truncated)?;
        let v6 = match first >> 4 {
            4 => false,
            6 => true,
            _ => return Err(GsoError::BadHeader),
        };
        let (tcp, want_proto) = match kind {
            Kind::Tcp { v6: want_v6 } if want_v6 != v6 => return Err(GsoError::BadHeader),
            Kind::Tcp { .. } => (true, IPPROTO_TCP),
            Kind::Udp => (false, IPPROTO_UDP),
        };

        let (l4_off, proto) = if v6 {
            if pkt.len() < IPV6_HDR_LEN {
                return Err(GsoError::Truncated);
            }
            check_ip_len(pkt.len(), be16(pkt, 4), IPV6_HDR_LEN)?;
            let mut next = pkt[6];
            let mut off = IPV6_HDR_LEN;
            let mut walked = 0;
            while matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS) {
                walked += 1;
                if walked > MAX_IPV6_EXT_HEADERS {
                    return Err(GsoError::BadHeader);
                }
                let ext = pkt.get(off..off + 8).ok_or(GsoError::Truncated)?;
                // The pseudo-header would need the final destination from the
                // routing header; the kernel never hands us such GSO packets.
                if next == IPPROTO_ROUTING && ext[3] != 0 {
                    return Err(GsoError::Unsupported(gso_type));
                }
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            (off, next)
        } else {
            if pkt.len() < 20 {
                return Err(GsoError::Truncated);
            }
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 {
                return Err(GsoError::BadHeader);
            }
            if ihl > pkt.len() {
                return Err(GsoError::Truncated);
            }
            check_ip_len(pkt.len(), be16(pkt, 2), 0)?;
            // More-fragments flag or a fragment offset: not a GSO packet.
            if be16(pkt, 6) & 0x3fff != 0 {
                return Err(GsoError::BadHeader);
            }
            (ihl, pkt[9])
        };
        if proto != want_proto {
            return Err(GsoError::BadHeader);
        }

        let l4_hdr_len = if tcp {
            let doff_byte = *pkt.get(l4_off + 12).ok_or(GsoError::Truncated)?;
            let thl = usize::from(doff_byte >> 4) * 4;
            if thl < 20 {
                return Err(GsoError::BadHeader);
            }
            thl
        } else {
            8
        };
        let hdr_len = l4_off + l4_hdr_len;
        if hdr_len > pkt.len() {
            return Err(GsoError::Truncated);
        }
        Ok(Layout {
            v6,
            tcp,
            l4_off,
            hdr_len,
        })
    }
}

/// Checks an IP length field against the packet length. `base` is what the
/// field does not count (0 for the IPv4 total length, 40 for the IPv6 payload
/// length). Zero means "use the packet length" (BIG TCP / jumbograms).
fn check_ip_len(actual: usize, field: u16, base: usize) -> Result<(), GsoError> {
    if field == 0 {
        return Ok(());
    }
    match (base + usize::from(field)).cmp(&actual) {
        core::cmp::Ordering::Greater => Err(GsoError::Truncated),
        core::cmp::Ordering::Less => Err(GsoError::BadHeader),
        core::cmp::Ordering::Equal => Ok(()),
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::vnet::*;
    use etherparse::checksum::Sum16BitWords;
    use etherparse::{
        IpHeaders, Ipv4Header, Ipv6Extensions, Ipv6FlowLabel, Ipv6Header, Ipv6RawExtHeader, NetHeaders, PacketBuilder,
        PacketHeaders, TcpHeader, TcpOptionElement, TransportHeader, ip_number,
    };

    const SRC4: [u8; 4] = [10, 7, 0, 1];
    const DST4: [u8; 4] = [192, 0, 2, 200];
    const SRC6: [u8; 16] = [0xfd, 0, 0xaa, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0x01];
    const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 7, 0, 0, 0, 0, 0x12, 0x34, 0, 2];

    use crate::packet::test_rng::Rng;

    /// Textbook RFC 1071 sum, word by word.
    fn naive_sum(initial: u32, data: &[u8]) -> u16 {
        let mut s = u64::from(initial);
        for w in data.chunks(2) {
            s += u64::from(w[0]) << 8 | u64::from(*w.get(1).unwrap_or(&0));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[derive(Clone, Copy)]
    enum L4 {
        Tcp { seq: u32, fin: bool, psh: bool, cwr: bool },
        Udp,
    }

    fn tcp_header(seq: u32, fin: bool, psh: bool, cwr: bool) -> TcpHeader {
        let mut t = TcpHeader::new(40000, 443, seq, 502);
        t.ack = true;
        t.acknowledgment_number = 0x0102_0304;
        t.fin = fin;
        t.psh = psh;
        t.cwr = cwr;
        t.ece = true;
        t.set_options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(0x1122_3344, 0x5566_7788),
        ])
        .unwrap();
        t
    }

    /// A packet with correct checksums, built by etherparse. `extra` adds a
    /// hop-by-hop options header (IPv6) or 4 bytes of options (IPv4).
    fn build(v6: bool, l4: L4, payload: &[u8], ip_id: u16, extra: bool) -> Vec<u8> {
        let ip = if v6 {
            let mut exts = Ipv6Extensions::default();
            if extra {
                exts.hop_by_hop_options = Some(Ipv6RawExtHeader::new_raw(ip_number::TCP, &[1, 4, 0, 0, 0, 0]).unwrap());
            }
            IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
                    payload_length: 0,
                    next_header: ip_number::TCP,
                    hop_limit: 64,
                    source: SRC6,
                    destination: DST6,
                },
                exts,
            )
        } else {
            let mut h = Ipv4Header::new(0, 64, ip_number::TCP, SRC4, DST4).unwrap();
            h.identification = ip_id;
            h.dont_fragment = true;
            if extra {
                // NOP, NOP, NOP, EOL
                h.options = [1u8, 1, 1, 0][..].try_into().unwrap();
            }
            IpHeaders::Ipv4(h, Default::default())
        };
        let b = PacketBuilder::ip(ip);
        let mut out = Vec::new();
        match l4 {
            L4::Tcp { seq, fin, psh, cwr } => b
                .tcp_header(tcp_header(seq, fin, psh, cwr))
                .write(&mut out, payload)
                .unwrap(),
            L4::Udp => b.udp(5353, 51820).write(&mut out, payload).unwrap(),
        }
        out
    }

    fn l4_offset(v6: bool, extra: bool) -> usize {
        match (v6, extra) {
            (false, false) => 20,
            (false, true) => 24,
            (true, false) => 40,
            (true, true) => 48,
        }
    }

    /// Turns a complete packet into what the kernel hands a TUN reader with
    /// offloads: the L4 checksum field holds the folded pseudo-header sum
    /// (CHECKSUM_PARTIAL), and a matching vnet header.
    fn kernelize(pkt: &mut [u8], v6: bool, l4: L4, extra: bool, gso_size: u16) -> VirtioNetHdr {
        let off = l4_offset(v6, extra);
        let (src, dst) = if v6 {
            (&SRC6[..], &DST6[..])
        } else {
            (&SRC4[..], &DST4[..])
        };
        let (proto, csum_off, l4_hdr) = match l4 {
            L4::Tcp { .. } => (6, 16, 32),
            L4::Udp => (17, 6, 8),
        };
        let l4_len = (pkt.len() - off) as u32;
        let partial = checksum_fold(pseudo_header_sum(src, dst, proto, l4_len));
        // Independent check of the pseudo-header sum.
        let mut ph = Vec::new();
        ph.extend_from_slice(src);
        ph.extend_from_slice(dst);
        ph.extend_from_slice(&[0, proto]);
        ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
        if l4_len <= 0xffff {
            assert_eq!(partial, naive_sum(0, &ph));
        }
        put16(pkt, off + csum_off, partial);
        let gso_type = match (l4, v6) {
            (L4::Udp, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
            (L4::Tcp { cwr: true, .. }, false) => VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            (L4::Tcp { cwr: true, .. }, true) => VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN,
            (L4::Tcp { .. }, false) => VIRTIO_NET_HDR_GSO_TCPV4,
            (L4::Tcp { .. }, true) => VIRTIO_NET_HDR_GSO_TCPV6,
        };
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if gso_size == 0 {
                VIRTIO_NET_HDR_GSO_NONE
            } else {
                gso_type
            },
            hdr_len: (off + l4_hdr) as u16,
            gso_size,
            csum_start: off as u16,
            csum_offset: csum_off as u16,
        }
    }

    fn run(hdr: &VirtioNetHdr, pkt: &[u8]) -> Result<Vec<Vec<u8>>, GsoError> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let r = segment(hdr, pkt, &mut scratch, |p| out.push(p.to_vec()));
        if r.is_err() {
            assert!(out.is_empty(), "emitted before failing");
        }
        r.map(|()| out)
    }

    /// Checks every segment with etherparse and returns the payload concatenation.
    fn check_segments(segs: &[Vec<u8>], v6: bool, l4: L4, ip_id: u16, mss: usize, total: usize) -> Vec<u8> {
        let n = total.div_ceil(mss).max(1);
        assert_eq!(segs.len(), n);
        let mut joined = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == n;
            let h = PacketHeaders::from_ip_slice(seg).unwrap();
            let payload = h.payload.slice();
            let want_len = if last { total - i * mss } else { mss };
            assert_eq!(payload.len(), want_len, "segment {i}");
            let transport = h.transport.clone().unwrap();
            let t_len = transport.header_len();
            match h.net.clone().unwrap() {
                NetHeaders::Ipv4(ip, _) => {
                    assert!(!v6);
                    assert_eq!(usize::from(ip.total_len), seg.len());
                    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                    assert_eq!(ip.identification, ip_id.wrapping_add(i as u16));
                    assert!(ip.dont_fragment);
                    match transport {
                        TransportHeader::Tcp(t) => {
                            assert_eq!(t.checksum, t.calc_checksum_ipv4(&ip, payload).unwrap())
                        }
                        TransportHeader::Udp(u) => {
                            assert_eq!(u.checksum, u.calc_checksum_ipv4(&ip, payload).unwrap())
                        }
                        _ => unreachable!(),
                    }
                }
                NetHeaders::Ipv6(ip, _) => {
                    assert!(v6);
                    assert_eq!(usize::from(ip.payload_length), seg.len() - 40);
                    assert_eq!(ip.flow_label.value(), 0x12345);
                    match transport {
                        TransportHeader::Tcp(t) => {
                            assert_eq!(t.checksum, t.calc_checksum_ipv6(&ip, payload).unwrap())
                        }
                        TransportHeader::Udp(u) => {
                            assert_eq!(u.checksum, u.calc_checksum_ipv6(&ip, payload).unwrap())
                        }
                        _ => unreachable!(),
                    }
                }
                NetHeaders::Arp(_) => unreachable!(),
            }
            match (h.transport.unwrap(), l4) {
                (TransportHeader::Tcp(t), L4::Tcp { seq, fin, psh, cwr }) => {
                    assert_eq!(t.sequence_number, seq.wrapping_add((i * mss) as u32));
                    assert_eq!(t.fin, fin && last, "FIN on segment {i}");
                    assert_eq!(t.psh, psh && last, "PSH on segment {i}");
                    assert_eq!(t.cwr, cwr && i == 0, "CWR on segment {i}");
                    assert!(t.ack && t.ece && !t.syn && !t.rst);
                    assert_eq!(t.acknowledgment_number, 0x0102_0304);
                    assert_eq!(t.options, tcp_header(0, false, false, false).options);
                }
                (TransportHeader::Udp(u), L4::Udp) => {
                    assert_eq!(usize::from(u.length), 8 + payload.len());
                    assert_eq!((u.source_port, u.destination_port), (5353, 51820));
                }
                _ => panic!("wrong transport"),
            }
            // Receiver-side check with the textbook sum: pseudo-header plus
            // L4 header and payload (checksum included) must sum to 0xffff.
            let l4_off = seg.len() - payload.len() - t_len;
            let l4_len = seg.len() - l4_off;
            let proto = if matches!(l4, L4::Udp) { 17 } else { 6 };
            let mut all = Vec::new();
            if v6 {
                all.extend_from_slice(&SRC6);
                all.extend_from_slice(&DST6);
                all.extend_from_slice(&(l4_len as u32).to_be_bytes());
                all.extend_from_slice(&[0, 0, 0, proto]);
            } else {
                all.extend_from_slice(&SRC4);
                all.extend_from_slice(&DST4);
                all.extend_from_slice(&[0, proto]);
                all.extend_from_slice(&(l4_len as u16).to_be_bytes());
                assert_eq!(naive_sum(0, &seg[..l4_off]), 0xffff, "IPv4 header sum");
            }
            all.extend_from_slice(&seg[l4_off..]);
            assert_eq!(naive_sum(0, &all), 0xffff, "L4 sum of segment {i}");
            joined.extend_from_slice(payload);
        }
        assert_eq!(joined.len(), total);
        joined
    }

    fn gso_case(v6: bool, l4: L4, total: usize, mss: u16, extra: bool) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ total as u64 ^ u64::from(mss));
        let payload = rng.bytes(total);
        let ip_id = 0xfff0;
        let mut pkt = build(v6, l4, &payload, ip_id, extra);
        let hdr = kernelize(&mut pkt, v6, l4, extra, mss);
        let segs = run(&hdr, &pkt).unwrap();
        let joined = check_segments(&segs, v6, l4, ip_id, usize::from(mss), total);
        assert_eq!(joined, payload);
    }

    const TCP: L4 = L4::Tcp {
        seq: 0xffff_0000, // wraps within the super-packet
        fin: true,
        psh: true,
        cwr: false,
    };
    const TCP_ECN: L4 = L4::Tcp {
        seq: 12345,
        fin: false,
        psh: true,
        cwr: true,
    };

    #[test]
    fn tcpv4_super_packet() {
        gso_case(false, TCP, 64000, 1448, false);
        assert_eq!(64000usize.div_ceil(1448), 45);
    }

    #[test]
    fn tcpv4_ecn_and_ip_options() {
        gso_case(false, TCP_ECN, 30000, 1400, true);
    }

    #[test]
    fn tcpv6_super_packet() {
        gso_case(true, TCP, 64000, 1428, false);
        gso_case(true, TCP_ECN, 20000, 1428, true);
    }

    #[test]
    fn udp_l4_v4_and_v6() {
        gso_case(false, L4::Udp, 64000, 1472, false);
        gso_case(true, L4::Udp, 64000, 1452, false);
        gso_case(true, L4::Udp, 5000, 1200, true);
        gso_case(false, L4::Udp, 5000, 1200, true);
    }

    #[test]
    fn exact_multiple_and_small_and_empty() {
        for v6 in [false, true] {
            for l4 in [TCP, TCP_ECN, L4::Udp] {
                gso_case(v6, l4, 1448 * 10, 1448, false);
                gso_case(v6, l4, 1448, 1448, false);
                gso_case(v6, l4, 100, 1448, false);
                gso_case(v6, l4, 1449, 1448, false);
                gso_case(v6, l4, 0, 1448, false);
                gso_case(v6, l4, 777, 1, false);
            }
        }
    }

    #[test]
    fn hdr_len_is_not_trusted() {
        // The kernel may report hdr_len as the whole first packet (forward path).
        let payload = Rng(5).bytes(9000);
        let mut pkt = build(false, TCP, &payload, 7, false);
        let mut hdr = kernelize(&mut pkt, false, TCP, false, 1448);
        hdr.hdr_len = 52 + 1448;
        let segs = run(&hdr, &pkt).unwrap();
        check_segments(&segs, false, TCP, 7, 1448, 9000);
        hdr.hdr_len = 0;
        hdr.csum_start = 0;
        hdr.csum_offset = 0;
        assert_eq!(run(&hdr, &pkt).unwrap(), segs);
    }

    #[test]
    fn big_tcp_v6_zero_payload_length() {
        // Super-packet above 64 KiB: IPv6 payload length 0, length from the buffer.
        let payload = Rng(11).bytes(100_000);
        let mut pkt = build(true, TCP, &payload[..1000], 0, false);
        pkt.truncate(40 + 32);
        pkt.extend_from_slice(&payload);
        put16(&mut pkt, 4, 0);
        let hdr = kernelize(&mut pkt, true, TCP, false, 1428);
        let segs = run(&hdr, &pkt).unwrap();
        check_segments(&segs, true, TCP, 0, 1428, 100_000);
    }

    #[test]
    fn too_many_segments() {
        let mut pkt = build(true, L4::Udp, &[], 0, false);
        pkt.resize(pkt.len() + MAX_SEGMENTS + 1, 0xab);
        put16(&mut pkt, 4, 0);
        let hdr = VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            gso_size: 1,
            ..Default::default()
        };
        assert_eq!(run(&hdr, &pkt), Err(GsoError::TooManySegments));
        pkt.truncate(pkt.len() - 1);
        assert_eq!(run(&hdr, &pkt).unwrap().len(), MAX_SEGMENTS);
    }

    #[test]
    fn segment_too_big_for_length_field() {
        // gso_size larger than what fits in one IPv4 packet.
        let payload = vec![1u8; 65535 - 20 - 8];
        let mut pkt = build(false, L4::Udp, &payload, 0, false);
        let mut hdr = kernelize(&mut pkt, false, L4::Udp, false, u16::MAX);
        assert_eq!(run(&hdr, &pkt).unwrap().len(), 1);
        pkt.push(0);
        put16(&mut pkt, 2, 0); // BIG TCP style
        assert_eq!(run(&hdr, &pkt), Err(GsoError::BadHeader));
        hdr.gso_size = 65000;
        assert_eq!(run(&hdr, &pkt).unwrap().len(), 2);
    }

    /// NONE + NEEDS_CSUM: the single packet must come out byte-identical to
    /// etherparse's, checksum included.
    #[test]
    fn needs_csum_without_gso() {
        for v6 in [false, true] {
            for l4 in [TCP, L4::Udp] {
                for len in [0usize, 1, 2, 3, 511, 1400] {
                    let payload = Rng(len as u64 + 1).bytes(len);
                    let good = build(v6, l4, &payload, 99, v6);
                    let mut pkt = good.clone();
                    let hdr = kernelize(&mut pkt, v6, l4, v6, 0);
                    assert_ne!(pkt, good);
                    assert!(!hdr.is_plain());
                    let out = run(&hdr, &pkt).unwrap();
                    assert_eq!(out.len(), 1);
                    let at = usize::from(hdr.csum_start + hdr.csum_offset);
                    let want = be16(&good, at);
                    let got = be16(&out[0], at);
                    // etherparse writes 0 for a TCP checksum of zero; we (like
                    // the kernel) write 0xffff, which is the same in ones'
                    // complement.
                    assert!(got == want || (want == 0 && got == 0xffff), "{got:#x} {want:#x}");
                    if got == want {
                        assert_eq!(out[0], good);
                    }
                }
            }
        }
    }

    #[test]
    fn needs_csum_zero_result_is_ffff() {
        // A UDP packet crafted so that the checksum comes out as zero.
        let mut pkt = build(false, L4::Udp, &[0, 0], 0, false);
        let hdr = kernelize(&mut pkt, false, L4::Udp, false, 0);
        let sum = checksum_fold(checksum_add(0, &pkt[20..]));
        // Choose payload so the total sums to 0xffff (complement 0).
        let fix = 0xffffu16.wrapping_sub(sum);
        let fix = if u32::from(sum) + u32::from(fix) > 0xffff {
            fix.wrapping_sub(1)
        } else {
            fix
        };
        put16(&mut pkt, 28, fix);
        assert_eq!(!checksum_fold(checksum_add(0, &pkt[20..])), 0);
        let out = run(&hdr, &pkt).unwrap();
        assert_eq!(be16(&out[0], 26), 0xffff);
    }

    #[test]
    fn plain_is_emitted_untouched() {
        let pkt = build(false, TCP, b"hello", 1, false);
        let mut scratch = Vec::new();
        let mut seen = 0;
        segment(&VirtioNetHdr::default(), &pkt, &mut scratch, |p| {
            assert_eq!(p.as_ptr(), pkt.as_ptr());
            seen += 1;
        })
        .unwrap();
        assert_eq!(seen, 1);
        let dv = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            ..Default::default()
        };
        assert_eq!(run(&dv, &pkt).unwrap(), vec![pkt.clone()]);
        // Plain headers pass anything through, even garbage.
        assert_eq!(run(&dv, &[1, 2, 3]).unwrap(), vec![vec![1, 2, 3]]);
    }

    #[test]
    fn malformed() {
        let payload = Rng(3).bytes(5000);
        let mut tcp4 = build(false, TCP, &payload, 0, false);
        let h_tcp4 = kernelize(&mut tcp4, false, TCP, false, 1448);
        let mut udp4 = build(false, L4::Udp, &payload, 0, false);
        let h_udp4 = kernelize(&mut udp4, false, L4::Udp, false, 1448);
        let mut tcp6 = build(true, TCP, &payload, 0, false);
        let h_tcp6 = kernelize(&mut tcp6, true, TCP, false, 1448);
        assert!(run(&h_tcp4, &tcp4).is_ok());
        assert!(run(&h_udp4, &udp4).is_ok());
        assert!(run(&h_tcp6, &tcp6).is_ok());

        use GsoError::*;
        // Truncated packets.
        for cut in [0, 1, 10, 19, 20, 30, 51, 52, 100, tcp4.len() - 1] {
            assert_eq!(run(&h_tcp4, &tcp4[..cut]), Err(Truncated), "cut {cut}");
        }
        for cut in [0, 39, 40, 50, tcp6.len() - 1] {
            assert_eq!(run(&h_tcp6, &tcp6[..cut]), Err(Truncated), "cut {cut}");
        }
        // Packet longer than its IP length field.
        let mut longer = tcp4.clone();
        longer.push(0);
        assert_eq!(run(&h_tcp4, &longer), Err(BadHeader));
        // gso_size 0.
        let h0 = VirtioNetHdr { gso_size: 0, ..h_tcp4 };
        assert_eq!(run(&h0, &tcp4), Err(BadHeader));
        // Header claiming TCP on a UDP packet and vice versa; wrong IP version.
        assert_eq!(run(&h_tcp4, &udp4), Err(BadHeader));
        assert_eq!(run(&h_udp4, &tcp4), Err(BadHeader));
        assert_eq!(run(&h_tcp4, &tcp6), Err(BadHeader));
        assert_eq!(run(&h_tcp6, &tcp4), Err(BadHeader));
        // IHL too small.
        let mut bad = tcp4.clone();
        bad[0] = 0x44;
        assert_eq!(run(&h_tcp4, &bad), Err(BadHeader));
        // Not IP.
        bad[0] = 0x55;
        assert_eq!(run(&h_tcp4, &bad), Err(BadHeader));
        // IPv4 fragment.
        let mut bad = tcp4.clone();
        bad[6] |= 0x20;
        assert_eq!(run(&h_tcp4, &bad), Err(BadHeader));
        // TCP data offset too small / beyond the packet.
        let mut bad = tcp4.clone();
        bad[20 + 12] = 0x40;
        assert_eq!(run(&h_tcp4, &bad), Err(BadHeader));
        let short = build(false, TCP, &[], 0, false);
        let mut bad = short[..40].to_vec();
        put16(&mut bad, 2, 40);
        bad[20 + 12] = 0xf0;
        assert_eq!(run(&h_tcp4, &bad), Err(Truncated));
        // IP header only, protocol TCP: shorter than its headers.
        let mut bad = short[..20].to_vec();
        put16(&mut bad, 2, 20);
        assert_eq!(run(&h_tcp4, &bad), Err(Truncated));
        // IHL larger than the packet.
        let mut bad = short[..24].to_vec();
        bad[0] = 0x4f;
        put16(&mut bad, 2, 24);
        assert_eq!(run(&h_tcp4, &bad), Err(Truncated));
        // UFO and unknown GSO types.
        for t in [VIRTIO_NET_HDR_GSO_UDP, 2, 6, 0x7f, VIRTIO_NET_HDR_GSO_UDP | 0x80] {
            let h = VirtioNetHdr { gso_type: t, ..h_udp4 };
            assert_eq!(run(&h, &udp4), Err(Unsupported(t)));
        }
        // NEEDS_CSUM pointing past the end.
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        assert_eq!(run(&h, &tcp4[..37]), Err(Truncated));
        assert!(run(&h, &tcp4[..38]).is_ok());
        let h = VirtioNetHdr {
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..h
        };
        assert_eq!(run(&h, &tcp4), Err(Truncated));
        // IPv6 routing header with segments left.
        let mut rt = tcp6[..40].to_vec();
        rt[6] = 43;
        rt.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 0]);
        rt.extend_from_slice(&tcp6[40..]);
        let n = (rt.len() - 40) as u16;
        put16(&mut rt, 4, n);
        assert_eq!(run(&h_tcp6, &rt), Err(Unsupported(h_tcp6.gso_type)));
        rt[43] = 0; // segments left 0: fine
        let segs = run(&h_tcp6, &rt).unwrap();
        assert_eq!(segs.len(), 5000usize.div_ceil(1448));
        // Endless chain of extension headers.
        let mut chain = tcp6[..40].to_vec();
        chain[6] = 60;
        for _ in 0..20 {
            chain.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        }
        let n = (chain.len() - 40) as u16;
        put16(&mut chain, 4, n);
        assert_eq!(run(&h_tcp6, &chain), Err(BadHeader));
        chain.truncate(40 + 8 * 3);
        let n = (chain.len() - 40) as u16;
        put16(&mut chain, 4, n);
        assert_eq!(run(&h_tcp6, &chain), Err(Truncated));
    }

    /// Random headers over random and mutated packets: errors are fine, panics are not.
    #[test]
    fn random_input_never_panics() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let bases: Vec<Vec<u8>> = [
            build(false, TCP, &rng.bytes(3000), 1, false),
            build(false, L4::Udp, &rng.bytes(3000), 1, true),
            build(true, TCP_ECN, &rng.bytes(3000), 1, true),
            build(true, L4::Udp, &rng.bytes(3000), 1, false),
            build(false, L4::Udp, &[], 1, false),
            build(true, L4::Udp, &[7], 1, true),
            build(false, TCP, &[], 1, true),
            build(true, TCP, &[1, 2, 3], 1, false),
        ]
        .into();
        let types = [0u8, 1, 3, 4, 5, 0x81, 0x84, 0x80, 0x85, 2, 0xff];
        let mut scratch = Vec::new();
        let mut ok = 0;
        for i in 0..20_000 {
            let mut pkt = if i % 4 == 0 {
                let n = rng.below(120);
                rng.bytes(n)
            } else {
                let mut p = bases[rng.below(bases.len())].clone();
                for _ in 0..rng.below(4) {
                    let at = rng.below(80.min(p.len()));
                    p[at] = rng.next() as u8;
                }
                if rng.below(3) == 0 {
                    p.truncate(rng.below(p.len() + 1));
                }
                p
            };
            if i % 7 == 0 && !pkt.is_empty() {
                pkt[0] = if rng.below(2) == 0 { 0x45 } else { 0x60 };
            }
            let r = rng.next();
            let hdr = VirtioNetHdr {
                flags: r as u8 & 3,
                gso_type: types[rng.below(types.len())],
                hdr_len: (r >> 8) as u16,
                gso_size: if i % 3 == 0 {
                    (r >> 24) as u16
                } else {
                    (r >> 24) as u16 % 2000
                },
                csum_start: if i % 2 == 0 {
                    (r >> 40) as u16 % 64
                } else {
                    (r >> 40) as u16
                },
                csum_offset: (r >> 56) as u16 % 24,
            };
            let mut emitted = 0usize;
            if segment(&hdr, &pkt, &mut scratch, |p| {
                assert!(!p.is_empty() || pkt.is_empty());
                emitted += 1;
            })
            .is_ok()
            {
                assert!(emitted >= 1);
                ok += 1;
            }
        }
        assert!(ok > 1000, "only {ok} accepted");
    }

    #[test]
    fn checksum_add_matches_references() {
        let mut rng = Rng(42);
        let big = rng.bytes(70_000);
        for _ in 0..2000 {
            let start = rng.below(64);
            let len = rng.below(300);
            let data = &big[start..start + len];
            let init = match rng.below(4) {
                0 => 0,
                1 => u32::MAX,
                2 => rng.next() as u32 & 0xffff,
                _ => rng.next() as u32,
            };
            assert_eq!(checksum_fold(checksum_add(init, data)), naive_sum(init, data));
            assert_eq!(
                !checksum_fold(checksum_add(0, data)),
                Sum16BitWords::new().add_slice(data).ones_complement().to_be() // etherparse sums in native order
            );
        }
        for len in [65535, 65536, 65537, 70_000] {
            let data = &big[..len];
            assert_eq!(checksum_fold(checksum_add(0, data)), naive_sum(0, data));
        }
        let ones = vec![0xffu8; 200_001];
        assert_eq!(checksum_fold(checksum_add(0, &ones)), naive_sum(0, &ones));
        assert_eq!(checksum_fold(checksum_add(u32::MAX, &ones)), naive_sum(u32::MAX, &ones));
        assert_eq!(checksum_add(0, &[]), 0);
        assert_eq!(checksum_add(7, &[]), 7);
        assert_eq!(checksum_add(0, &[0x12]), 0x1200);
        // Chaining equals one call when the split is at an even offset.
        let d = &big[..1001];
        assert_eq!(
            checksum_fold(checksum_add(checksum_add(0, &d[..500]), &d[500..])),
            checksum_fold(checksum_add(0, d))
        );
        assert_eq!(checksum_fold(0x1_fffe), 0xffff);
        assert_eq!(checksum_fold(0), 0);
        assert_eq!(checksum_fold(u32::MAX), 0xffff);
    }

    #[test]
    fn pseudo_header_v4_and_v6_layouts_agree() {
        let v4 = Sum16BitWords::new()
            .add_slice(&SRC4)
            .add_slice(&DST4)
            .add_2bytes([0, 6])
            .add_2bytes(1234u16.to_be_bytes())
            .ones_complement()
            .to_be();
        assert_eq!(!checksum_fold(pseudo_header_sum(&SRC4, &DST4, 6, 1234)), v4);
        let v6 = Sum16BitWords::new()
            .add_slice(&SRC6)
            .add_slice(&DST6)
            .add_slice(&100_000u32.to_be_bytes())
            .add_slice(&[0, 0, 0, 17])
            .ones_complement()
            .to_be();
        assert_eq!(!checksum_fold(pseudo_header_sum(&SRC6, &DST6, 17, 100_000)), v6);
    }

    /// `cargo test --release -- --ignored --nocapture checksum_speed`
    #[test]
    #[ignore]
    fn checksum_speed() {
        let data = Rng(1).bytes(65536);
        let t = std::time::Instant::now();
        let mut acc = 0u32;
        let rounds = 100_000;
        for _ in 0..rounds {
            acc = checksum_add(acc, std::hint::black_box(&data));
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "checksum_add: {:.2} GB/s ({acc:#x})",
            65536.0 * f64::from(rounds) / secs / 1e9
        );
        let payload = Rng(2).bytes(64000);
        let mut pkt = build(false, TCP, &payload, 0, false);
        let hdr = kernelize(&mut pkt, false, TCP, false, 1448);
        let mut scratch = Vec::new();
        let t = std::time::Instant::now();
        let mut n = 0usize;
        for _ in 0..20_000 {
            segment(&hdr, &pkt, &mut scratch, |p| n += p.len()).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        println!("segment tcpv4 64000/1448: {:.2} GB/s out", n as f64 / secs / 1e9);
    }
}
