//! ICMP "packet too big" replies.
//!
//! When a packet does not fit the tunnel MTU the VPN behaves like a router: it drops the packet and
//! tells the sender the MTU to use (path MTU discovery, RFC 1191 / RFC 8201). The reply is built into
//! a caller-owned buffer so that steady state allocates nothing.
//!
//! Rules applied (RFC 1812 4.3.2.7, RFC 4443 2.4):
//! - no reply to ICMP error messages (IPv4 types 3, 4, 5, 11, 12; ICMPv6 types < 128), nor to an ICMP
//!   message too short to tell its type;
//! - no reply to a source that is not a single host: IPv4 0.0.0.0/8, 127.0.0.0/8, multicast,
//!   240.0.0.0/4 (class E, including 255.255.255.255); IPv6 `::`, `::1`, multicast;
//! - IPv4: no reply to non-first fragments, to packets without DF (the caller may fragment instead),
//!   nor to packets sent to a multicast or limited-broadcast destination (RFC 1812);
//! - IPv6: packets to multicast destinations do get a reply (RFC 4443 2.4 (e.2)). Extension
//!   headers are walked to find an ICMPv6 error; behind a non-first fragment the upper layer is not
//!   visible, and the reply is sent (fragments are exactly what needs the PMTU signal);
//! - malformed or truncated packets (length fields beyond the buffer, bad IHL, broken extension
//!   header chain) get no reply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet::checksum::{checksum_add, checksum_fold, pseudo_header_sum};

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const REPLY_TTL: u8 = 64;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const ICMP_HEADER: usize = 8;
/// RFC 1812 4.3.2.3: an ICMP error should not exceed 576 bytes.
const IPV4_REPLY_MAX: usize = 576;
/// RFC 4443 2.4 (c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
const IPV6_REPLY_MAX: usize = 1280;

/// Builds the ICMP error a router would send back to the sender of `pkt` because `pkt` (a plain IPv4 or IPv6 packet)
/// is larger than `mtu`: IPv4 → ICMP type 3 code 4 "fragmentation needed" with next-hop MTU = mtu (only when DF is set;
/// return None if DF is clear — the caller may fragment or drop); IPv6 → ICMPv6 type 2 "packet too big" with MTU = mtu.
/// The reply's source is `from` (the VPN's own tunnel address of the right family), destination is pkt's source.
/// Quote as much of the original as fits: IPv4 — the original IP header + first 8 bytes of payload at least, up to a
/// 576-byte reply (RFC 1812 allows more); IPv6 — as much as fits in 1280 bytes total (RFC 4443). TTL/hop limit 64.
/// Correct IPv4 header checksum, ICMP checksum (v4: over ICMP message; v6: with pseudo-header, next header 58).
/// Never reply to an ICMP error (v4 types 3,4,5,11,12; v6 types < 128) nor to a packet whose source is unspecified,
/// multicast, broadcast or loopback, nor to a non-first fragment (v4 offset != 0). Writes into `out` (cleared first,
/// reused by the caller so steady state allocates nothing) and returns Some(len) or None.
///
/// Details (see the module docs for the full list of rules):
/// - whether `pkt` really exceeds `mtu` is the caller's decision and is not checked;
/// - `from` of the other family than `pkt` gives None;
/// - IPv4: the reply is also kept within `mtu` when `mtu` < 576 (but always quotes the IP header plus
///   8 bytes); it has DF clear, the identification of the quoted packet and TOS 0;
/// - bytes of `pkt` beyond the IP length field (padding) are not quoted;
/// - `out` is left empty when None is returned.
pub fn packet_too_big(pkt: &[u8], mtu: u16, from: IpAddr, out: &mut Vec<u8>) -> Option<usize> {
    out.clear();
    let built = match (pkt.first()? >> 4, from) {
        (4, IpAddr::V4(from)) => build_v4(pkt, mtu, from, out),
        (6, IpAddr::V6(from)) => build_v6(pkt, mtu, from, out),
        _ => None,
    };
    if built.is_none() {
        out.clear();
    }
    built
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// True if `a` may be the source of a packet we answer (RFC 1812 4.3.2.7).
fn is_single_host_v4(a: Ipv4Addr) -> bool {
    let first = a.octets()[0];
    !(first == 0 || a.is_loopback() || a.is_multicast() || first >= 240)
}

fn is_single_host_v6(a: Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast())
}

fn build_v4(pkt: &[u8], mtu: u16, from: Ipv4Addr, out: &mut Vec<u8>) -> Option<usize> {
    if pkt.len() < IPV4_HEADER {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(be16(pkt, 2));
    if ihl < IPV4_HEADER || total < ihl || total > pkt.len() {
        return None;
    }
    let frag = be16(pkt, 6);
    let dont_fragment = frag & 0x4000 != 0;
    if frag & 0x1fff != 0 || !dont_fragment {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    if !is_single_host_v4(src) || dst.is_multicast() || dst.is_broadcast() {
        return None;
    }
    if pkt[9] == PROTO_ICMP {
        if total == ihl {
            return None; // cannot tell whether it is an error
        }
        if matches!(pkt[ihl], 3 | 4 | 5 | 11 | 12) {
            return None;
        }
    }

    // Up to 576 bytes, within the reported MTU if that is smaller, but always header + 8 bytes.
    let cap = IPV4_REPLY_MAX
        .min(usize::from(mtu))
        .max(IPV4_HEADER + ICMP_HEADER + ihl + 8);
    let quote = &pkt[..total.min(cap - IPV4_HEADER - ICMP_HEADER)];
    let len = IPV4_HEADER + ICMP_HEADER + quote.len();
    let [len_hi, len_lo] = (len as u16).to_be_bytes();
    let [id_hi, id_lo] = [pkt[4], pkt[5]];
    let [mtu_hi, mtu_lo] = mtu.to_be_bytes();

    out.reserve(len);
    #[rustfmt::skip]
    out.extend_from_slice(&[
        0x45, 0, len_hi, len_lo,
        id_hi, id_lo, 0, 0,
        REPLY_TTL, PROTO_ICMP, 0, 0,
    ]);
    out.extend_from_slice(&from.octets());
    out.extend_from_slice(&src.octets());
    // Type 3 "destination unreachable", code 4 "fragmentation needed and DF set", next-hop MTU (RFC 1191).
    out.extend_from_slice(&[3, 4, 0, 0, 0, 0, mtu_hi, mtu_lo]);
    out.extend_from_slice(quote);

    let ip_csum = !checksum_fold(checksum_add(0, &out[..IPV4_HEADER]));
    out[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    let icmp_csum = !checksum_fold(checksum_add(0, &out[IPV4_HEADER..]));
    out[IPV4_HEADER + 2..IPV4_HEADER + 4].copy_from_slice(&icmp_csum.to_be_bytes());
    Some(len)
}

/// Walks the IPv6 extension header chain of `pkt` (already cut to its payload length).
/// Some(true) if the upper layer is an ICMPv6 error, Some(false) if it is something else or not
/// visible, None if the chain is malformed/truncated.
fn is_icmpv6_error(pkt: &[u8]) -> Option<bool> {
    let mut next = pkt[6];
    let mut off = IPV6_HEADER;
    loop {
        match next {
            PROTO_ICMPV6 => return Some(*pkt.get(off)? < 128),
            // Hop-by-hop, routing, destination options: length in 8-byte units, not counting the first 8.
            0 | 43 | 60 => {
                let h = pkt.get(off..off + 2)?;
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            // Fragment header.
            44 => {
                let h = pkt.get(off..off + 8)?;
                if be16(h, 2) & 0xfff8 != 0 {
                    return Some(false); // non-first fragment: upper layer not visible
                }
                next = h[0];
                off += 8;
            }
            // Authentication header: length in 4-byte units, not counting the first 2.
            51 => {
                let h = pkt.get(off..off + 2)?;
                next = h[0];
                off += (usize::from(h[1]) + 2) * 4;
            }
            _ => return Some(false),
        }
        if off > pkt.len() {
            return None;
        }
    }
}

fn build_v6(pkt: &[u8], mtu: u16, from: Ipv6Addr, out: &mut Vec<u8>) -> Option<usize> {
    if pkt.len() < IPV6_HEADER {
        return None;
    }
    let total = IPV6_HEADER + usize::from(be16(pkt, 4));
    if total > pkt.len() {
        return None;
    }
    let pkt = &pkt[..total];
    let src_bytes: [u8; 16] = pkt[8..24].try_into().ok()?;
    let src = Ipv6Addr::from(src_bytes);
    if !is_single_host_v6(src) || is_icmpv6_error(pkt)? {
        return None;
    }

    let quote = &pkt[..total.min(IPV6_REPLY_MAX - IPV6_HEADER - ICMP_HEADER)];
    let icmp_len = ICMP_HEADER + quote.len();
    let len = IPV6_HEADER + icmp_len;
    let [plen_hi, plen_lo] = (icmp_len as u16).to_be_bytes();

    out.reserve(len);
    out.extend_from_slice(&[0x60, 0, 0, 0, plen_hi, plen_lo, PROTO_ICMPV6, REPLY_TTL]);
    out.extend_from_slice(&from.octets());
    out.extend_from_slice(&src_bytes);
    // Type 2 "packet too big", code 0, checksum, 32-bit MTU.
    out.extend_from_slice(&[2, 0, 0, 0]);
    out.extend_from_slice(&u32::from(mtu).to_be_bytes());
    out.extend_from_slice(quote);

    let sum = pseudo_header_sum(&from.octets(), &src_bytes, PROTO_ICMPV6, icmp_len as u32);
    let csum = !checksum_fold(checksum_add(sum, &out[IPV6_HEADER..]));
    out[IPV6_HEADER + 2..IPV6_HEADER + 4].copy_from_slice(&csum.to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        IpHeaders, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, NetSlice, PacketBuilder, SlicedPacket,
        TransportSlice,
        icmpv4::DestUnreachableHeader,
        icmpv6::{DestUnreachableCode, TimeExceededCode},
        {Icmpv4Type, Icmpv6Type},
    };

    const HOST4: [u8; 4] = [10, 8, 0, 2];
    const REMOTE4: [u8; 4] = [198, 51, 100, 9];
    const VPN4: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 1);
    const HOST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const REMOTE6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    const VPN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

    fn v4_header(src: [u8; 4], dst: [u8; 4], df: bool) -> Ipv4Header {
        let mut h = Ipv4Header::new(0, 61, IpNumber::UDP, src, dst).unwrap();
        h.dont_fragment = df;
        h.identification = 0x1234;
        h
    }

    fn udp_v4(src: [u8; 4], dst: [u8; 4], df: bool, total_len: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..total_len - 28).map(|i| (i * 7) as u8).collect();
        let mut out = Vec::new();
        PacketBuilder::ip(IpHeaders::Ipv4(v4_header(src, dst, df), Default::default()))
            .udp(5000, 6000)
            .write(&mut out, &payload)
            .unwrap();
        assert_eq!(out.len(), total_len);
        out
    }

    fn udp_v6(src: [u8; 16], dst: [u8; 16], total_len: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..total_len - 48).map(|i| (i * 13) as u8).collect();
        let mut out = Vec::new();
        PacketBuilder::ipv6(src, dst, 60)
            .udp(5000, 6000)
            .write(&mut out, &payload)
            .unwrap();
        assert_eq!(out.len(), total_len);
        out
    }

    fn icmp_v4(t: Icmpv4Type, payload_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ip(IpHeaders::Ipv4(v4_header(HOST4, REMOTE4, true), Default::default()))
            .icmpv4(t)
            .write(&mut out, &vec![0x5a; payload_len])
            .unwrap();
        out
    }

    fn icmp_v6(t: Icmpv6Type, payload_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6(HOST6, REMOTE6, 60)
            .icmpv6(t)
            .write(&mut out, &vec![0x5a; payload_len])
            .unwrap();
        out
    }

    /// Parses a v4 reply with etherparse and checks every field that does not depend on the input.
    /// Returns (next-hop mtu, quoted bytes).
    fn check_v4_reply(reply: &[u8], expect_dst: [u8; 4]) -> (u16, Vec<u8>) {
        let sliced = SlicedPacket::from_ip(reply).expect("reply parses");
        let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not ipv4")
        };
        let h = ip.header();
        assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
        assert_eq!(usize::from(h.total_len()), reply.len());
        assert_eq!(h.ttl(), 64);
        assert_eq!(h.protocol(), IpNumber::ICMP);
        assert_eq!(h.source_addr(), VPN4);
        assert_eq!(h.destination(), expect_dst);
        assert_eq!(h.fragments_offset().value(), 0);
        assert!(!h.more_fragments());
        assert!(reply.len() <= 576);
        let Some(TransportSlice::Icmpv4(icmp)) = &sliced.transport else {
            panic!("not icmpv4")
        };
        assert_eq!(icmp.type_u8(), 3);
        assert_eq!(icmp.code_u8(), 4);
        assert_eq!(
            icmp.icmp_type().calc_checksum(icmp.payload()),
            icmp.checksum(),
            "icmp checksum"
        );
        let Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu }) =
            icmp.icmp_type()
        else {
            panic!("wrong icmp type {:?}", icmp.icmp_type());
        };
        (next_hop_mtu, icmp.payload().to_vec())
    }

    /// Parses a v6 reply with etherparse. Returns (mtu, quoted bytes).
    fn check_v6_reply(reply: &[u8], expect_dst: [u8; 16]) -> (u32, Vec<u8>) {
        let sliced = SlicedPacket::from_ip(reply).expect("reply parses");
        let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not ipv6")
        };
        let h = ip.header();
        assert_eq!(usize::from(h.payload_length()) + 40, reply.len());
        assert_eq!(h.hop_limit(), 64);
        assert_eq!(h.next_header(), IpNumber::IPV6_ICMP);
        assert_eq!(h.source_addr(), VPN6);
        assert_eq!(h.destination(), expect_dst);
        assert!(reply.len() <= 1280);
        let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
            panic!("not icmpv6")
        };
        assert!(icmp.is_checksum_valid(h.source(), h.destination()), "icmpv6 checksum");
        assert_eq!(icmp.code_u8(), 0);
        let Icmpv6Type::PacketTooBig { mtu } = icmp.icmp_type() else {
            panic!("wrong icmpv6 type {:?}", icmp.icmp_type());
        };
        (mtu, icmp.payload().to_vec())
    }

    #[test]
    fn v4_df_2000_bytes_mtu_1400() {
        let pkt = udp_v4(HOST4, REMOTE4, true, 2000);
        let mut out = Vec::new();
        let n = packet_too_big(&pkt, 1400, VPN4.into(), &mut out).unwrap();
        assert_eq!(n, out.len());
        assert_eq!(n, 576);
        let (mtu, quoted) = check_v4_reply(&out, HOST4);
        assert_eq!(mtu, 1400);
        assert_eq!(quoted.len(), 576 - 28);
        assert_eq!(&quoted[..], &pkt[..quoted.len()]);
    }

    #[test]
    fn v4_small_packet_quoted_whole() {
        // Whether the packet exceeds the MTU is the caller's call; only the quote size matters here.
        let pkt = udp_v4(HOST4, REMOTE4, true, 300);
        let mut out = Vec::new();
        let n = packet_too_big(&pkt, 1400, VPN4.into(), &mut out).unwrap();
        assert_eq!(n, 328);
        let (mtu, quoted) = check_v4_reply(&out, HOST4);
        assert_eq!(mtu, 1400);
        assert_eq!(quoted, pkt);
    }

    #[test]
    fn v4_padding_not_quoted() {
        let mut pkt = udp_v4(HOST4, REMOTE4, true, 100);
        let orig = pkt.clone();
        pkt.extend_from_slice(&[0xee; 10]);
        let mut out = Vec::new();
        packet_too_big(&pkt, 68, VPN4.into(), &mut out).unwrap();
        let (_, quoted) = check_v4_reply(&out, HOST4);
        assert_eq!(quoted, orig[..quoted.len()]);
    }

    #[test]
    fn v4_small_mtu_still_quotes_header_and_8_bytes() {
        // IHL 15 (40 bytes of options): header + 8 bytes must still be quoted with mtu 68.
        let mut h = v4_header(HOST4, REMOTE4, true);
        h.options = (&[1u8; 40][..]).try_into().unwrap();
        let mut pkt = Vec::new();
        PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
            .udp(1, 2)
            .write(&mut pkt, &[7; 1000])
            .unwrap();
        let mut out = Vec::new();
        let n = packet_too_big(&pkt, 68, VPN4.into(), &mut out).unwrap();
        let (mtu, quoted) = check_v4_reply(&out, HOST4);
        assert_eq!(mtu, 68);
        assert_eq!(quoted.len(), 60 + 8);
        assert_eq!(n, 28 + 68);
        assert_eq!(quoted, pkt[..68]);

        // With mtu 300, the reply stays within 300 bytes.
        let n = packet_too_big(&pkt, 300, VPN4.into(), &mut out).unwrap();
        assert_eq!(n, 300);
        let (_, quoted) = check_v4_reply(&out, HOST4);
        assert_eq!(quoted, pkt[..272]);
    }

    #[test]
    fn v4_without_df_no_reply() {
        let pkt = udp_v4(HOST4, REMOTE4, false, 2000);
        let mut out = vec![1, 2, 3];
        assert_eq!(packet_too_big(&pkt, 1400, VPN4.into(), &mut out), None);
        assert!(out.is_empty());
    }

    #[test]
    fn v4_fragments() {
        // Non-first fragment (offset != 0), even with DF forced on: no reply.
        let mut pkt = udp_v4(HOST4, REMOTE4, true, 2000);
        pkt[6] = 0x40;
        pkt[7] = 0xb9;
        let mut out = Vec::new();
        assert_eq!(packet_too_big(&pkt, 1400, VPN4.into(), &mut out), None);
        // First fragment (MF set, offset 0) with DF: replied to.
        let mut pkt = udp_v4(HOST4, REMOTE4, true, 2000);
        pkt[6] = 0x60;
        assert!(packet_too_big(&pkt, 1400, VPN4.into(), &mut out).is_some());
    }

    #[test]
    fn v4_no_reply_to_icmp_errors() {
        use etherparse::icmpv4::TimeExceededCode as Te4;
        let errors = [
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1000 }),
            Icmpv4Type::TimeExceeded(Te4::TtlExceededInTransit),
            Icmpv4Type::Unknown {
                type_u8: 4,
                code_u8: 0,
                bytes5to8: [0; 4],
            },
            Icmpv4Type::Unknown {
                type_u8: 5,
                code_u8: 1,
                bytes5to8: [0; 4],
            },
            Icmpv4Type::Unknown {
                type_u8: 12,
                code_u8: 0,
                bytes5to8: [0; 4],
            },
        ];
        let mut out = Vec::new();
        for t in errors {
            let pkt = icmp_v4(t.clone(), 1500);
            assert_eq!(packet_too_big(&pkt, 1400, VPN4.into(), &mut out), None, "{t:?}");
        }
        // Echo requests are not errors.
        let pkt = icmp_v4(
            Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 2 }),
            1500,
        );
        let n = packet_too_big(&pkt, 1400, VPN4.into(), &mut out).unwrap();
        let (_, quoted) = check_v4_reply(&out[..n], HOST4);
        assert_eq!(quoted, pkt[..548]);
        // ICMP with no room for a type byte: unknown, no reply.
        let mut pkt = udp_v4(HOST4, REMOTE4, true, 28);
        pkt[9] = PROTO_ICMP;
        pkt[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(packet_too_big(&pkt, 1400, VPN4.into(), &mut out), None);
    }

    #[test]
    fn v4_bad_sources_and_destinations() {
        let mut out = Vec::new();
        for src in [
            [224, 0, 0, 5],
            [239, 1, 2, 3],
            [255, 255, 255, 255],
            [240, 0, 0, 1],
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [127, 9, 9, 9],
        ] {
            let pkt = udp_v4(src, REMOTE4, true, 2000);
            assert_eq!(packet_too_big(&pkt, 1400, VPN4.into(), &mut out), None, "{src:?}");
        }
        for dst in [[224, 0, 0, 251], [255, 255, 255, 255]] {
            let pkt = udp_v4(HOST4, dst, true, 2000);
            assert_eq!(packet_too_big(&pkt, 1400, VPN4.into(), &mut out), None, "{dst:?}");
        }
    }

    #[test]
    fn family_mismatch_no_reply() {
        let mut out = Vec::new();
        let pkt = udp_v4(HOST4, REMOTE4, true, 2000);
        assert_eq!(packet_too_big(&pkt, 1400, VPN6.into(), &mut out), None);
        let pkt = udp_v6(HOST6, REMOTE6, 3000);
        assert_eq!(packet_too_big(&pkt, 1400, VPN4.into(), &mut out), None);
    }

    #[test]
    fn v6_3000_byte_udp() {
        let pkt = udp_v6(HOST6, REMOTE6, 3000);
        let mut out = Vec::new();
        let n = packet_too_big(&pkt, 1400, VPN6.into(), &mut out).unwrap();
        assert_eq!(n, out.len());
        assert_eq!(n, 1280);
        let (mtu, quoted) = check_v6_reply(&out, HOST6);
        assert_eq!(mtu, 1400);
        assert_eq!(quoted.len(), 1280 - 48);
        assert_eq!(quoted, pkt[..quoted.len()]);
        // Cross-check the checksum with etherparse's own computation.
        let stored = u16::from_be_bytes([out[42], out[43]]);
        let expect = Icmpv6Type::PacketTooBig { mtu: 1400 }
            .calc_checksum(VPN6.octets(), HOST6, &out[48..])
            .unwrap();
        assert_eq!(stored, expect);
    }

    #[test]
    fn v6_small_packet_and_multicast_destination() {
        let pkt = udp_v6(HOST6, REMOTE6, 200);
        let mut out = Vec::new();
        let n = packet_too_big(&pkt, 1280, VPN6.into(), &mut out).unwrap();
        assert_eq!(n, 248);
        let (mtu, quoted) = check_v6_reply(&out, HOST6);
        assert_eq!(mtu, 1280);
        assert_eq!(quoted, pkt);
        // RFC 4443 2.4 (e.2): packet too big is sent even for multicast destinations.
        let mut dst = [0u8; 16];
        dst[0] = 0xff;
        dst[1] = 0x0e;
        dst[15] = 0x42;
        let pkt = udp_v6(HOST6, dst, 2000);
        assert!(packet_too_big(&pkt, 1400, VPN6.into(), &mut out).is_some());
    }

    #[test]
    fn v6_no_reply_to_icmp_errors() {
        let mut out = Vec::new();
        for t in [
            Icmpv6Type::PacketTooBig { mtu: 1300 },
            Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
            Icmpv6Type::Unknown {
                type_u8: 127,
                code_u8: 0,
                bytes5to8: [0; 4],
            },
        ] {
            let pkt = icmp_v6(t, 2000);
            assert_eq!(packet_too_big(&pkt, 1400, VPN6.into(), &mut out), None, "{t:?}");
        }
        let pkt = icmp_v6(
            Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 1 }),
            2000,
        );
        assert!(packet_too_big(&pkt, 1400, VPN6.into(), &mut out).is_some());
        check_v6_reply(&out, HOST6);
    }

    /// Inserts `ext` (whose first byte must be the original next header) after the fixed header.
    fn with_ext(pkt: &[u8], ext_proto: u8, ext: &[u8]) -> Vec<u8> {
        let mut out = pkt[..40].to_vec();
        assert_eq!(ext[0], pkt[6]);
        out[6] = ext_proto;
        let plen = be16(pkt, 4) as usize + ext.len();
        out[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
        out.extend_from_slice(ext);
        out.extend_from_slice(&pkt[40..]);
        out
    }

    #[test]
    fn v6_extension_headers_walked() {
        let mut out = Vec::new();
        let err = icmp_v6(Icmpv6Type::PacketTooBig { mtu: 1300 }, 2000);
        let echo = icmp_v6(
            Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 1 }),
            2000,
        );
        let dest_opts = [58, 0, 1, 4, 0, 0, 0, 0];
        let hbh_then_dest = |p: &[u8]| {
            let inner = with_ext(p, 60, &dest_opts);
            with_ext(&inner, 0, &[60, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        };
        assert_eq!(
            packet_too_big(&with_ext(&err, 60, &dest_opts), 1400, VPN6.into(), &mut out),
            None
        );
        assert_eq!(packet_too_big(&hbh_then_dest(&err), 1400, VPN6.into(), &mut out), None);
        let pkt = hbh_then_dest(&echo);
        assert!(packet_too_big(&pkt, 1400, VPN6.into(), &mut out).is_some());
        let (_, quoted) = check_v6_reply(&out, HOST6);
        assert_eq!(quoted, pkt[..1232]);

        // First fragment of an ICMPv6 error: no reply. Non-first fragment: reply.
        let first = with_ext(&err, 44, &[58, 0, 0, 1, 0, 0, 0, 7]);
        assert_eq!(packet_too_big(&first, 1400, VPN6.into(), &mut out), None);
        let later = with_ext(&err, 44, &[58, 0, 0x05, 0x01, 0, 0, 0, 7]);
        assert!(packet_too_big(&later, 1400, VPN6.into(), &mut out).is_some());
        check_v6_reply(&out, HOST6);

        // AH (length 4 -> 24 bytes) in front of an ICMPv6 error.
        let mut ah = vec![58, 4];
        ah.resize(24, 0);
        assert_eq!(
            packet_too_big(&with_ext(&err, 51, &ah), 1400, VPN6.into(), &mut out),
            None
        );

        // Extension header claiming more bytes than the packet has: malformed.
        let mut p = with_ext(&echo, 60, &dest_opts);
        let plen = 8u16 + 8;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p[41] = 5; // 48 bytes, only 16 present
        assert_eq!(packet_too_big(&p, 1400, VPN6.into(), &mut out), None);
    }

    #[test]
    fn v6_bad_sources() {
        let mut out = Vec::new();
        let mut mcast = [0u8; 16];
        mcast[0] = 0xff;
        mcast[1] = 0x02;
        mcast[15] = 1;
        let mut lo = [0u8; 16];
        lo[15] = 1;
        for src in [mcast, [0u8; 16], lo] {
            let pkt = udp_v6(src, REMOTE6, 3000);
            assert_eq!(packet_too_big(&pkt, 1400, VPN6.into(), &mut out), None);
        }
    }

    #[test]
    fn v6_payload_length_respected() {
        // Trailing garbage past the payload length is not quoted.
        let pkt = udp_v6(HOST6, REMOTE6, 100);
        let mut padded = pkt.clone();
        padded.extend_from_slice(&[0xcc; 20]);
        let mut out = Vec::new();
        packet_too_big(&padded, 1280, VPN6.into(), &mut out).unwrap();
        let (_, quoted) = check_v6_reply(&out, HOST6);
        assert_eq!(quoted, pkt);
        // Fixed header built by etherparse with a flow label and traffic class still works.
        let h = Ipv6Header {
            traffic_class: 0xb8,
            flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
            payload_length: 0,
            next_header: IpNumber::UDP,
            hop_limit: 3,
            source: HOST6,
            destination: REMOTE6,
        };
        let mut pkt = Vec::new();
        PacketBuilder::ip(IpHeaders::Ipv6(h, Default::default()))
            .udp(1, 2)
            .write(&mut pkt, &[1; 1500])
            .unwrap();
        packet_too_big(&pkt, 1400, VPN6.into(), &mut out).unwrap();
        let (_, quoted) = check_v6_reply(&out, HOST6);
        assert_eq!(quoted, pkt[..1232]);
    }

    #[test]
    fn malformed_inputs_no_reply() {
        let mut out = Vec::new();
        let v4 = udp_v4(HOST4, REMOTE4, true, 600);
        let v6 = udp_v6(HOST6, REMOTE6, 600);
        for n in 0..v4.len() {
            assert_eq!(packet_too_big(&v4[..n], 1400, VPN4.into(), &mut out), None);
            assert!(out.is_empty());
        }
        for n in 0..v6.len() {
            assert_eq!(packet_too_big(&v6[..n], 1400, VPN6.into(), &mut out), None);
        }
        for ihl in [0u8, 4] {
            let mut p = v4.clone();
            p[0] = 0x40 | ihl;
            assert_eq!(packet_too_big(&p, 1400, VPN4.into(), &mut out), None);
        }
        // IHL larger than the total length.
        let mut p = v4.clone();
        p[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(packet_too_big(&p, 1400, VPN4.into(), &mut out), None);
        for version in [0u8, 5, 7, 15] {
            let mut p = v4.clone();
            p[0] = (version << 4) | 5;
            assert_eq!(packet_too_big(&p, 1400, VPN4.into(), &mut out), None);
            assert_eq!(packet_too_big(&p, 1400, VPN6.into(), &mut out), None);
        }
        assert_eq!(packet_too_big(&[], 1400, VPN4.into(), &mut out), None);
    }

    #[test]
    fn output_buffer_reused_without_reallocation() {
        let v4 = udp_v4(HOST4, REMOTE4, true, 2000);
        let v6 = udp_v6(HOST6, REMOTE6, 3000);
        let mut out = Vec::with_capacity(1280);
        let ptr = out.as_ptr();
        for _ in 0..3 {
            assert_eq!(packet_too_big(&v6, 1400, VPN6.into(), &mut out), Some(1280));
            assert_eq!(packet_too_big(&v4, 1400, VPN4.into(), &mut out), Some(576));
        }
        assert_eq!(out.as_ptr(), ptr);
        assert_eq!(out.capacity(), 1280);
    }

    use crate::packet::test_rng::Rng;

    /// Invariants of any reply, checked with the crate's own checksum helpers (etherparse may reject
    /// replies quoting garbage, so it is not used here).
    fn fuzz_one(pkt: &[u8], mtu: u16, from: IpAddr, out: &mut Vec<u8>) -> bool {
        let reply = packet_too_big(pkt, mtu, from, out);
        match reply {
            None => assert!(out.is_empty()),
            Some(n) => {
                assert_eq!(n, out.len());
                if out[0] >> 4 == 4 {
                    assert!(n <= 576);
                    assert_eq!(usize::from(be16(out, 2)), n);
                    assert_eq!(checksum_fold(checksum_add(0, &out[..20])), 0xffff);
                    assert_eq!(checksum_fold(checksum_add(0, &out[20..])), 0xffff);
                    assert_eq!(&out[28..], &pkt[..n - 28]);
                } else {
                    assert!(n <= 1280);
                    assert_eq!(usize::from(be16(out, 4)) + 40, n);
                    let ph = pseudo_header_sum(&out[8..24], &out[24..40], 58, (n - 40) as u32);
                    assert_eq!(checksum_fold(checksum_add(ph, &out[40..])), 0xffff);
                    assert_eq!(&out[48..], &pkt[..n - 48]);
                }
            }
        }
        reply.is_some()
    }

    #[test]
    fn fuzz_random_bytes_no_panic() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let mut pkt = Vec::new();
        let mut out = Vec::new();
        for _ in 0..20_000 {
            let len = rng.below(200);
            pkt.clear();
            pkt.extend((0..len).map(|_| rng.next() as u8));
            if len > 0 && rng.below(2) == 0 {
                pkt[0] = if rng.below(2) == 0 { 0x45 } else { 0x60 };
            }
            if len >= 8 && rng.below(2) == 0 {
                // Make the length field plausible so the deeper checks run.
                if pkt[0] >> 4 == 4 {
                    pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                } else if len >= 40 {
                    pkt[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
                }
            }
            let from: IpAddr = if rng.below(2) == 0 { VPN4.into() } else { VPN6.into() };
            let _ = fuzz_one(&pkt, rng.next() as u16, from, &mut out);
        }
    }

    #[test]
    fn fuzz_mutated_packets_no_panic() {
        let mut rng = Rng(4242);
        let mut replies = 0;
        let seeds: Vec<(Vec<u8>, IpAddr)> = vec![
            (udp_v4(HOST4, REMOTE4, true, 700), VPN4.into()),
            (
                icmp_v4(Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 9, seq: 9 }), 100),
                VPN4.into(),
            ),
            (udp_v6(HOST6, REMOTE6, 1500), VPN6.into()),
            (
                with_ext(
                    &icmp_v6(Icmpv6Type::PacketTooBig { mtu: 1300 }, 100),
                    60,
                    &[58, 0, 1, 4, 0, 0, 0, 0],
                ),
                VPN6.into(),
            ),
        ];
        let mut out = Vec::new();
        for i in 0..20_000 {
            let (seed, from) = &seeds[i % seeds.len()];
            let mut pkt = seed.clone();
            for _ in 0..1 + rng.below(3) {
                // Mostly the headers.
                let span = if rng.below(4) == 0 { pkt.len() } else { 64 };
                let at = rng.below(span);
                pkt[at] = rng.next() as u8;
            }
            if rng.below(6) == 0 {
                let n = rng.below(pkt.len() + 1);
                pkt.truncate(n);
            }
            replies += usize::from(fuzz_one(&pkt, rng.next() as u16, *from, &mut out));
        }
        // The loop must exercise the reply path, not only the rejections.
        assert!(replies > 1000, "only {replies} replies");
    }
}
