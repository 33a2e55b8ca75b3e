//! TCP MSS clamping on SYN segments.
//!
//! Packets travelling through the tunnel have to fit its MTU. Rather than relying on path MTU
//! discovery alone (ICMP is often filtered), the MSS option of every SYN / SYN-ACK is lowered in
//! place so that both endpoints agree on segments that fit. The TCP checksum is patched
//! incrementally (RFC 1624), so the payload is never read and the cost is constant.
//!
//! Scope:
//! - plain IPv4 or IPv6 packets (no link-layer header);
//! - IPv4: any IHL; fragments (offset != 0 or MF set) are left alone;
//! - IPv6: only when the fixed header's next header is TCP. Packets with extension headers are
//!   left untouched (SYNs virtually never carry them);
//! - every well-formed MSS option (kind 2, length 4) larger than the limit is lowered. If the
//!   option list is malformed (length byte < 2 or running past the header) nothing is changed.

use crate::packet::checksum::{checksum_add, checksum_fold};

const PROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_MIN_HEADER: usize = 20;
const TCP_CHECKSUM_OFFSET: usize = 16;
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_MSS_LEN: usize = 4;

/// If `pkt` (a plain IPv4 or IPv6 packet, no link header) is a TCP SYN (SYN set, with or without ACK) carrying an MSS
/// option larger than `max_mss`, lower it to `max_mss` and update the TCP checksum incrementally. Returns true if the
/// packet was changed. Never panics on malformed input (returns false). IPv4: skip fragments (offset != 0 or MF);
/// respect IHL. IPv6: only when next header is TCP directly (no extension headers): a SYN behind extension
/// headers is left unchanged.
///
/// The packet is also left unchanged when the IP length field claims more bytes than `pkt` holds, when the
/// TCP data offset is invalid or runs past the segment, or when the TCP option list is malformed.
pub fn clamp_mss(pkt: &mut [u8], max_mss: u16) -> bool {
    match tcp_segment_range(pkt) {
        Some((start, end)) => clamp_segment(&mut pkt[start..end], max_mss),
        None => false,
    }
}

/// Whether `pkt` is a TCP segment with SYN set (IPv4, or IPv6 with TCP as the first next header):
/// a cheap test run on every packet before the rare rewrite.
pub fn is_tcp_syn(pkt: &[u8]) -> bool {
    let (proto, l4) = match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => (pkt[9], usize::from(pkt[0] & 0x0f) * 4),
        Some(6) if pkt.len() >= 40 => (pkt[6], 40),
        _ => return false,
    };
    proto == 6 && pkt.get(l4 + 13).is_some_and(|flags| flags & 0x02 != 0)
}

/// The MSS that fits a path MTU: mtu - 40 for IPv4, mtu - 60 for IPv6.
///
/// Saturates at 0 for MTUs smaller than the headers.
pub fn mss_for_mtu(mtu: u16, ipv6: bool) -> u16 {
    mtu.saturating_sub(if ipv6 { 60 } else { 40 })
}

/// Locates the TCP segment (header and payload) inside an IP packet: `pkt[start..end]`.
fn tcp_segment_range(pkt: &[u8]) -> Option<(usize, usize)> {
    let first = *pkt.first()?;
    match first >> 4 {
        4 => {
            if pkt.len() < 20 {
                return None;
            }
            let ihl = usize::from(first & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
            // 0x3fff: MF flag + 13-bit fragment offset.
            if ihl < 20 || total < ihl || total > pkt.len() || frag & 0x3fff != 0 {
                return None;
            }
            (pkt[9] == PROTO_TCP).then_some((ihl, total))
        }
        6 => {
            if pkt.len() < 40 {
                return None;
            }
            let end = 40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            if end > pkt.len() {
                return None;
            }
            (pkt[6] == PROTO_TCP).then_some((40, end))
        }
        _ => None,
    }
}

/// Clamps the MSS option(s) of one TCP segment, patching its checksum.
fn clamp_segment(seg: &mut [u8], max_mss: u16) -> bool {
    if seg.len() < TCP_MIN_HEADER || seg[13] & TCP_FLAG_SYN == 0 {
        return false;
    }
    let data_offset = usize::from(seg[12] >> 4) * 4;
    if data_offset < TCP_MIN_HEADER || data_offset > seg.len() {
        return false;
    }

    // First pass: validate the whole option list and find the MSS options. Receivers act on the last
    // MSS option they see, so every oversized one is lowered, but only if the list is well formed.
    let mut found = [0usize; 10]; // at most 40 / 4 MSS options fit in the option space
    let mut count = 0;
    let mut i = TCP_MIN_HEADER;
    while i < data_offset {
        match seg[i] {
            OPT_EOL => break,
            OPT_NOP => i += 1,
            kind => {
                if i + 1 >= data_offset {
                    return false; // no room for the length byte
                }
                let len = usize::from(seg[i + 1]);
                if len < 2 || i + len > data_offset {
                    return false;
                }
                // An MSS option of the wrong length is ignored by receivers; leave it too.
                if kind == OPT_MSS && len == OPT_MSS_LEN && count < found.len() {
                    found[count] = i + 2;
                    count += 1;
                }
                i += len;
            }
        }
    }

    let mut changed = false;
    for &off in &found[..count] {
        let old = u16::from_be_bytes([seg[off], seg[off + 1]]);
        if old > max_mss {
            replace_u16(seg, off, max_mss);
            changed = true;
        }
    }
    changed
}

/// Writes `value` at `seg[off..off + 2]` and updates the TCP checksum incrementally
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')). `off` may be odd; the 16-bit words
/// covering the changed bytes are used.
fn replace_u16(seg: &mut [u8], off: usize, value: u16) {
    // Even-aligned window (relative to the TCP header start) covering the two bytes.
    let lo = off & !1;
    let hi = (off + 3) & !1;
    let mut old = [0u8; 4];
    let window = hi - lo;
    old[..window].copy_from_slice(&seg[lo..hi]);

    seg[off..off + 2].copy_from_slice(&value.to_be_bytes());

    let old_sum = checksum_fold(checksum_add(0, &old[..window]));
    let new_sum = checksum_add(0, &seg[lo..hi]);
    let hc = u16::from_be_bytes([seg[TCP_CHECKSUM_OFFSET], seg[TCP_CHECKSUM_OFFSET + 1]]);
    let sum = u32::from(!hc) + u32::from(!old_sum) + new_sum;
    let new_hc = !checksum_fold(sum);
    seg[TCP_CHECKSUM_OFFSET..TCP_CHECKSUM_OFFSET + 2].copy_from_slice(&new_hc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum::pseudo_header_sum;
    use etherparse::{
        IpHeaders, IpNumber, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice,
    };

    const SRC4: [u8; 4] = [10, 0, 0, 1];
    const DST4: [u8; 4] = [192, 0, 2, 7];
    const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    #[derive(Clone, Copy)]
    enum Flags {
        Syn,
        SynAck,
        Ack,
    }

    fn tcp_v4(flags: Flags, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4(SRC4, DST4, 64).tcp(40000, 443, 1000, 64240);
        let b = match flags {
            Flags::Syn => b.syn(),
            Flags::SynAck => b.syn().ack(77),
            Flags::Ack => b.ack(77),
        };
        let b = b.options_raw(options).unwrap();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn tcp_v6(flags: Flags, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv6(SRC6, DST6, 64).tcp(40000, 443, 1000, 64240);
        let b = match flags {
            Flags::Syn => b.syn(),
            Flags::SynAck => b.syn().ack(77),
            Flags::Ack => b.ack(77),
        };
        let b = b.options_raw(options).unwrap();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// Parses `pkt` with etherparse, asserts that the stored TCP checksum equals etherparse's
    /// recomputation, and returns the MSS options found.
    fn check_tcp(pkt: &[u8]) -> Vec<u16> {
        let sliced = SlicedPacket::from_ip(pkt).expect("etherparse parses packet");
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("not tcp");
        };
        let expected = match sliced.net {
            Some(NetSlice::Ipv4(ip)) => tcp
                .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
                .unwrap(),
            Some(NetSlice::Ipv6(ip)) => tcp
                .calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                .unwrap(),
            _ => panic!("no ip"),
        };
        assert_eq!(tcp.checksum(), expected, "tcp checksum must be valid");
        tcp.options_iterator()
            .filter_map(|o| match o {
                Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// Ones'-complement sum over pseudo-header + segment, reduced mod 0xffff (so +0 == -0).
    /// Equal before/after an incremental update iff the update preserved checksum validity.
    fn full_sum(pkt: &[u8]) -> Option<u32> {
        let (start, end) = tcp_segment_range(pkt)?;
        let (src, dst) = if pkt[0] >> 4 == 4 {
            (&pkt[12..16], &pkt[16..20])
        } else {
            (&pkt[8..24], &pkt[24..40])
        };
        let len = (end - start) as u32;
        let s = checksum_add(pseudo_header_sum(src, dst, PROTO_TCP, len), &pkt[start..end]);
        Some(u32::from(checksum_fold(s)) % 0xffff)
    }

    const MSS1460: [u8; 4] = [2, 4, 0x05, 0xb4];

    #[test]
    fn syn_v4_clamped() {
        let mut pkt = tcp_v4(Flags::Syn, &MSS1460, &[]);
        assert_eq!(check_tcp(&pkt), vec![1460]);
        assert!(clamp_mss(&mut pkt, 1360));
        assert_eq!(check_tcp(&pkt), vec![1360]);
        // Idempotent.
        assert!(!clamp_mss(&mut pkt, 1360));
    }

    #[test]
    fn syn_v6_clamped() {
        let mut pkt = tcp_v6(Flags::Syn, &MSS1460, &[]);
        assert!(clamp_mss(&mut pkt, 1360));
        assert_eq!(check_tcp(&pkt), vec![1360]);
    }

    #[test]
    fn syn_ack_clamped_v4_and_v6() {
        let mut pkt = tcp_v4(Flags::SynAck, &MSS1460, &[]);
        assert!(clamp_mss(&mut pkt, 1360));
        assert_eq!(check_tcp(&pkt), vec![1360]);
        let mut pkt = tcp_v6(Flags::SynAck, &MSS1460, &[]);
        assert!(clamp_mss(&mut pkt, 1300));
        assert_eq!(check_tcp(&pkt), vec![1300]);
    }

    #[test]
    fn syn_with_payload_clamped() {
        // TCP Fast Open style SYN with data; odd payload length.
        let payload: Vec<u8> = (0..101u8).collect();
        let mut pkt = tcp_v4(Flags::Syn, &MSS1460, &payload);
        assert!(clamp_mss(&mut pkt, 1200));
        assert_eq!(check_tcp(&pkt), vec![1200]);
    }

    #[test]
    fn mss_at_or_below_limit_untouched() {
        for mss in [1360u16, 1200, 536] {
            let [hi, lo] = mss.to_be_bytes();
            let orig = tcp_v4(Flags::Syn, &[2, 4, hi, lo], &[]);
            let mut pkt = orig.clone();
            assert!(!clamp_mss(&mut pkt, 1360));
            assert_eq!(pkt, orig);
        }
    }

    #[test]
    fn non_syn_untouched() {
        let orig = tcp_v4(Flags::Ack, &MSS1460, &[1, 2, 3]);
        let mut pkt = orig.clone();
        assert!(!clamp_mss(&mut pkt, 1360));
        assert_eq!(pkt, orig);
        let orig = tcp_v6(Flags::Ack, &MSS1460, &[]);
        let mut pkt = orig.clone();
        assert!(!clamp_mss(&mut pkt, 1360));
        assert_eq!(pkt, orig);
    }

    #[test]
    fn syn_without_mss_untouched() {
        let orig = tcp_v4(Flags::Syn, &[1, 1, 3, 3, 7, 0, 0, 0], &[]);
        let mut pkt = orig.clone();
        assert!(!clamp_mss(&mut pkt, 1360));
        assert_eq!(pkt, orig);
    }

    #[test]
    fn mss_after_nops_window_scale_and_timestamps() {
        // Linux-like layout but with the MSS last: NOP NOP TS(10) NOP WS(3) SACKOK(2) MSS(4) + pad.
        #[rustfmt::skip]
        let opts = [
            1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0,
            1, 3, 3, 7,
            4, 2,
            2, 4, 0x23, 0x28, // 9000
            0, 0,
        ];
        let mut pkt = tcp_v4(Flags::Syn, &opts, &[]);
        assert!(clamp_mss(&mut pkt, 1360));
        assert_eq!(check_tcp(&pkt), vec![1360]);

        let mut pkt = tcp_v6(Flags::SynAck, &opts, &[]);
        assert!(clamp_mss(&mut pkt, 1380));
        assert_eq!(check_tcp(&pkt), vec![1380]);
    }

    #[test]
    fn mss_at_odd_offset() {
        // A single NOP puts the MSS value at an odd offset within the TCP header.
        for opts in [
            &[1, 2, 4, 0x05, 0xb4, 0, 0, 0][..],
            &[1, 1, 1, 2, 4, 0xff, 0xff, 0],
            &[1, 3, 3, 7, 2, 4, 0x05, 0xb4],
        ] {
            for max in [0u16, 1, 0x00ff, 0x0100, 1000, 1360, 1459] {
                let mut pkt = tcp_v4(Flags::Syn, opts, &[9, 9, 9]);
                assert!(clamp_mss(&mut pkt, max));
                assert_eq!(check_tcp(&pkt), vec![max]);
                let mut pkt = tcp_v6(Flags::Syn, opts, &[]);
                assert!(clamp_mss(&mut pkt, max));
                assert_eq!(check_tcp(&pkt), vec![max]);
            }
        }
    }

    #[test]
    fn duplicate_mss_options_all_clamped() {
        let opts = [2, 4, 0x05, 0xb4, 2, 4, 0x23, 0x28];
        let mut pkt = tcp_v4(Flags::Syn, &opts, &[]);
        assert!(clamp_mss(&mut pkt, 1360));
        assert_eq!(check_tcp(&pkt), vec![1360, 1360]);
    }

    #[test]
    fn options_after_eol_ignored() {
        let orig = tcp_v4(Flags::Syn, &[0, 0, 0, 0, 2, 4, 0x05, 0xb4], &[]);
        let mut pkt = orig.clone();
        assert!(!clamp_mss(&mut pkt, 1360));
        assert_eq!(pkt, orig);
    }

    #[test]
    fn ipv4_with_options_respects_ihl() {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, SRC4, DST4).unwrap();
        // Record-route-ish filler: NOPs then EOL (8 bytes -> IHL 7).
        ip.options = (&[1u8, 1, 1, 1, 1, 1, 1, 0][..]).try_into().unwrap();
        let b = PacketBuilder::ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(1, 2, 3, 4)
            .syn()
            .options_raw(&MSS1460)
            .unwrap();
        let mut pkt = Vec::new();
        b.write(&mut pkt, &[]).unwrap();
        assert_eq!(pkt[0] & 0x0f, 7);
        assert!(clamp_mss(&mut pkt, 1360));
        assert_eq!(check_tcp(&pkt), vec![1360]);
    }

    #[test]
    fn trailing_bytes_beyond_ip_length_ignored() {
        let mut pkt = tcp_v4(Flags::Syn, &MSS1460, &[]);
        pkt.extend_from_slice(&[0xaa; 6]); // e.g. padding
        assert!(clamp_mss(&mut pkt, 1360));
        assert_eq!(check_tcp(&pkt), vec![1360]);
        assert_eq!(&pkt[pkt.len() - 6..], &[0xaa; 6]);
    }

    #[test]
    fn fragments_untouched() {
        // MF set.
        let orig = {
            let mut p = tcp_v4(Flags::Syn, &MSS1460, &[]);
            p[6] |= 0x20;
            p
        };
        let mut pkt = orig.clone();
        assert!(!clamp_mss(&mut pkt, 1360));
        assert_eq!(pkt, orig);
        // Non-zero offset.
        let mut pkt = tcp_v4(Flags::Syn, &MSS1460, &[]);
        pkt[7] = 1;
        let orig = pkt.clone();
        assert!(!clamp_mss(&mut pkt, 1360));
        assert_eq!(pkt, orig);
    }

    #[test]
    fn ipv6_extension_headers_untouched() {
        // Insert an 8-byte destination options header (next header 60) in front of TCP.
        let base = tcp_v6(Flags::Syn, &MSS1460, &[]);
        let mut pkt = base[..40].to_vec();
        pkt[6] = 60;
        let plen = u16::from_be_bytes([pkt[4], pkt[5]]) + 8;
        pkt[4..6].copy_from_slice(&plen.to_be_bytes());
        pkt.extend_from_slice(&[PROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
        pkt.extend_from_slice(&base[40..]);
        let orig = pkt.clone();
        assert!(!clamp_mss(&mut pkt, 1360));
        assert_eq!(pkt, orig);
    }

    #[test]
    fn non_tcp_untouched() {
        let mut out = Vec::new();
        PacketBuilder::ipv4(SRC4, DST4, 64)
            .udp(1, 2)
            .write(&mut out, &[0x02; 40])
            .unwrap();
        let orig = out.clone();
        assert!(!clamp_mss(&mut out, 100));
        assert_eq!(out, orig);
    }

    #[test]
    fn malformed_options_untouched() {
        let cases: &[&[u8]] = &[
            // Option length 0 / 1 before the MSS.
            &[3, 0, 0, 0, 2, 4, 0x05, 0xb4],
            &[3, 1, 0, 0, 2, 4, 0x05, 0xb4],
            // Bogus length after the MSS.
            &[2, 4, 0x05, 0xb4, 8, 200, 0, 0],
            // MSS option running past the header.
            &[1, 1, 1, 1, 1, 2, 4, 0x05],
            // Length byte missing at the very end.
            &[1, 1, 1, 1, 1, 1, 1, 8],
            // MSS with wrong length (ignored by receivers) — unchanged but not malformed.
            &[2, 6, 0x05, 0xb4, 0, 0, 0, 0],
        ];
        for opts in cases {
            for v6 in [false, true] {
                let orig = if v6 {
                    tcp_v6(Flags::Syn, opts, &[])
                } else {
                    tcp_v4(Flags::Syn, opts, &[])
                };
                let mut pkt = orig.clone();
                assert!(!clamp_mss(&mut pkt, 1360), "{opts:?}");
                assert_eq!(pkt, orig);
            }
        }
    }

    #[test]
    fn truncated_and_bogus_headers_return_false() {
        let good4 = tcp_v4(Flags::Syn, &MSS1460, &[]);
        let good6 = tcp_v6(Flags::Syn, &MSS1460, &[]);
        // Every strict prefix is truncated (IP length no longer fits).
        for good in [&good4, &good6] {
            for n in 0..good.len() {
                let mut p = good[..n].to_vec();
                assert!(!clamp_mss(&mut p, 1360), "prefix {n}");
                assert_eq!(&p[..], &good[..n]);
            }
        }
        // Bad IHL values.
        for ihl in [0u8, 4, 15] {
            let mut p = good4.clone();
            p[0] = 0x40 | ihl;
            assert!(!clamp_mss(&mut p, 1360));
        }
        // TCP data offset < 5 or beyond the segment.
        for doff in [0u8, 4, 7, 15] {
            let mut p = good4.clone();
            p[20 + 12] = (doff << 4) | (p[32] & 0x0f);
            assert!(!clamp_mss(&mut p, 1360), "doff {doff}");
        }
        // IP total length shorter than the TCP header.
        let mut p = good4.clone();
        p[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert!(!clamp_mss(&mut p, 1360));
        // IPv6 payload length larger than the buffer.
        let mut p = good6.clone();
        p[4..6].copy_from_slice(&1000u16.to_be_bytes());
        assert!(!clamp_mss(&mut p, 1360));
        // Unknown version.
        let mut p = good4.clone();
        p[0] = 0x55;
        assert!(!clamp_mss(&mut p, 1360));
    }

    #[test]
    fn mss_for_mtu_values() {
        assert_eq!(mss_for_mtu(1500, false), 1460);
        assert_eq!(mss_for_mtu(1500, true), 1440);
        assert_eq!(mss_for_mtu(1400, false), 1360);
        assert_eq!(mss_for_mtu(1280, true), 1220);
        assert_eq!(mss_for_mtu(30, false), 0);
        assert_eq!(mss_for_mtu(0, true), 0);
    }

    use crate::packet::test_rng::Rng;

    /// Checks the invariants of one `clamp_mss` call on arbitrary input.
    fn fuzz_one(pkt: &mut [u8], max: u16) -> bool {
        let before = pkt.to_vec();
        let sum_before = full_sum(pkt);
        let changed = clamp_mss(pkt, max);
        if changed {
            assert_ne!(&pkt[..], &before[..]);
            assert_eq!(pkt.len(), before.len());
            // Incremental update preserves the checksum's (in)validity.
            assert_eq!(full_sum(pkt), sum_before);
            // Only bytes of the TCP header changed.
            let (start, _) = tcp_segment_range(pkt).unwrap();
            let doff = usize::from(pkt[start + 12] >> 4) * 4;
            assert_eq!(&pkt[..start + 16], &before[..start + 16]);
            assert_eq!(&pkt[start + doff..], &before[start + doff..]);
            // And a second pass is a no-op.
            assert!(!clamp_mss(pkt, max));
        } else {
            assert_eq!(&pkt[..], &before[..]);
        }
        changed
    }

    #[test]
    fn fuzz_random_bytes_no_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            let len = rng.below(120);
            buf.clear();
            buf.extend((0..len).map(|_| rng.next() as u8));
            // Bias towards plausible headers so the deeper code is reached.
            if len > 0 && rng.below(2) == 0 {
                buf[0] = if rng.below(2) == 0 { 0x45 } else { 0x60 };
            }
            let _ = fuzz_one(&mut buf, rng.next() as u16);
        }
    }

    #[test]
    fn fuzz_mutated_syns_no_panic() {
        let mut rng = Rng(12345);
        let mut changed = 0;
        #[rustfmt::skip]
        let opts = [2, 4, 0x05, 0xb4, 1, 3, 3, 7, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1, 0, 0];
        let seeds = [
            tcp_v4(Flags::Syn, &opts, &[1, 2, 3]),
            tcp_v6(Flags::SynAck, &opts, &[]),
            tcp_v4(Flags::Syn, &MSS1460, &[]),
        ];
        for i in 0..30_000 {
            let mut pkt = seeds[i % seeds.len()].clone();
            let start = if pkt[0] >> 4 == 6 { 40 } else { 20 };
            let flips = 1 + rng.below(4);
            for _ in 0..flips {
                // Mostly mutate the TCP header/options region.
                let at = if rng.below(4) == 0 {
                    rng.below(pkt.len())
                } else {
                    start + 12 + rng.below(pkt.len() - start - 12)
                };
                pkt[at] = rng.next() as u8;
            }
            if rng.below(8) == 0 {
                let n = rng.below(pkt.len() + 1);
                pkt.truncate(n);
            }
            changed += usize::from(fuzz_one(&mut pkt, rng.below(2000) as u16));
        }
        // The loop must exercise the rewriting path, not only the rejections.
        assert!(changed > 1000, "only {changed} packets clamped");
    }

    #[test]
    fn random_valid_syns_keep_valid_checksum() {
        let mut rng = Rng(777);
        for _ in 0..2_000 {
            let mss = rng.next() as u16;
            let max = rng.next() as u16;
            let nops = rng.below(4);
            let mut opts: Vec<u8> = vec![1; nops];
            opts.extend_from_slice(&[2, 4]);
            opts.extend_from_slice(&mss.to_be_bytes());
            while !opts.len().is_multiple_of(4) {
                opts.push(0);
            }
            let payload: Vec<u8> = (0..rng.below(50)).map(|_| rng.next() as u8).collect();
            let mut pkt = if rng.below(2) == 0 {
                tcp_v4(Flags::Syn, &opts, &payload)
            } else {
                tcp_v6(Flags::SynAck, &opts, &payload)
            };
            let changed = clamp_mss(&mut pkt, max);
            assert_eq!(changed, mss > max);
            // full_sum == 0 (mod 0xffff) means a valid checksum, including the +0/-0 corner case
            // that a bit-exact comparison with a freshly computed value cannot accept.
            assert_eq!(full_sum(&pkt), Some(0));
            let got = check_tcp_lenient(&pkt);
            assert_eq!(got, vec![mss.min(max)]);
        }
    }

    /// Like `check_tcp` but only returns the MSS options (checksum checked separately).
    fn check_tcp_lenient(pkt: &[u8]) -> Vec<u16> {
        let sliced = SlicedPacket::from_ip(pkt).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("not tcp");
        };
        tcp.options_iterator()
            .filter_map(|o| match o {
                Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
                _ => None,
            })
            .collect()
    }
}
