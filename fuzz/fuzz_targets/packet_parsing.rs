//! Packet parsing and rewriting on the data path.
//!
//! Input: a 10-byte virtio-net header (`VirtioNetHdr::decode`, as a TUN with `IFF_VNET_HDR`
//! delivers it) followed by an IP packet. Shorter inputs only go through `packet_addrs`.
//!
//! - `packet_addrs`: version and addresses agree with the header bytes.
//! - `gso::segment`: nothing emitted on error; a plain packet is passed through; a
//!   `NEEDS_CSUM` packet changes only at its checksum field; GSO segments carry at most
//!   `gso_size` payload bytes, have consistent IP length fields, valid IPv4 header and L4
//!   checksums, consecutive TCP sequence numbers, and their payloads add up to the original.
//! - `mss::clamp_mss` (limit: the header's `hdr_len` field): changes only the TCP header, keeps
//!   a valid TCP checksum valid, leaves no MSS above the limit, and is idempotent.
//! - `icmp::packet_too_big` (MTU: the header's `gso_size` field; source address of the packet's
//!   family, or of the other family when flag bit 7 is set): reply invariants (lengths,
//!   checksums, addresses, quoted prefix), and `out` empty when there is no reply.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use sshvpn_common::packet::gso::{self, GsoError, checksum_add, checksum_fold, pseudo_header_sum};
use sshvpn_common::packet::vnet::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_LEN,
};
use sshvpn_common::packet::{IpVersion, VirtioNetHdr, icmp, mss, packet_addrs};

const VPN4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const VPN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn check_packet_addrs(pkt: &[u8]) {
    let Some(a) = packet_addrs(pkt) else {
        return;
    };
    match a.version {
        IpVersion::V4 => {
            assert!(pkt.len() >= 20 && pkt[0] >> 4 == 4 && pkt[0] & 0x0f >= 5);
            let src: [u8; 4] = pkt[12..16].try_into().unwrap();
            let dst: [u8; 4] = pkt[16..20].try_into().unwrap();
            assert_eq!(a.src, IpAddr::from(src));
            assert_eq!(a.dst, IpAddr::from(dst));
        }
        IpVersion::V6 => {
            assert!(pkt.len() >= 40 && pkt[0] >> 4 == 6);
            let src: [u8; 16] = pkt[8..24].try_into().unwrap();
            let dst: [u8; 16] = pkt[24..40].try_into().unwrap();
            assert_eq!(a.src, IpAddr::from(src));
            assert_eq!(a.dst, IpAddr::from(dst));
        }
    }
    let _ = a.is_local_scope();
}

/// Offset and protocol of the L4 header when it can be found without walking IPv6 extension
/// headers.
fn simple_l4(seg: &[u8]) -> Option<(usize, u8)> {
    match seg.first()? >> 4 {
        4 if seg.len() >= 20 => Some((usize::from(seg[0] & 0x0f) * 4, seg[9])),
        6 if seg.len() >= 40 => Some((40, seg[6])),
        _ => None,
    }
}

/// True if the TCP/UDP checksum of `seg` (an IP packet whose L4 header starts at `l4`) verifies.
fn l4_checksum_ok(seg: &[u8], l4: usize, proto: u8) -> bool {
    let (src, dst) = if seg[0] >> 4 == 6 {
        (&seg[8..24], &seg[24..40])
    } else {
        (&seg[12..16], &seg[16..20])
    };
    let ph = pseudo_header_sum(src, dst, proto, (seg.len() - l4) as u32);
    checksum_fold(checksum_add(ph, &seg[l4..])) == 0xffff
}

fn check_segment(hdr: &VirtioNetHdr, pkt: &[u8], scratch: &mut Vec<u8>) {
    let mut segs: Vec<Vec<u8>> = Vec::new();
    let res = gso::segment(hdr, pkt, scratch, |s| segs.push(s.to_vec()));
    if let Err(e) = res {
        assert!(segs.is_empty(), "{e:?} returned after emitting {} packets", segs.len());
        if let GsoError::Unsupported(t) = e {
            assert_eq!(t, hdr.gso_type);
        }
        return;
    }
    assert!(!segs.is_empty(), "Ok without any packet");

    if hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN == VIRTIO_NET_HDR_GSO_NONE {
        assert_eq!(segs.len(), 1);
        let out = &segs[0];
        assert_eq!(out.len(), pkt.len());
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 {
            assert_eq!(out, pkt);
        } else {
            let at = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
            for (i, (a, b)) in out.iter().zip(pkt).enumerate() {
                assert!(a == b || i == at || i == at + 1, "byte {i} changed");
            }
        }
        return;
    }

    // A GSO super-packet was split.
    let mss = usize::from(hdr.gso_size);
    let v6 = pkt[0] >> 4 == 6;
    for s in &segs {
        assert_eq!(s[0] >> 4, pkt[0] >> 4, "IP version changed");
        if v6 {
            assert_eq!(usize::from(be16(s, 4)) + 40, s.len(), "IPv6 payload length");
        } else {
            assert_eq!(usize::from(be16(s, 2)), s.len(), "IPv4 total length");
            let ihl = usize::from(s[0] & 0x0f) * 4;
            assert_eq!(
                checksum_fold(checksum_add(0, &s[..ihl])),
                0xffff,
                "IPv4 header checksum"
            );
        }
        if let Some((l4, proto)) = simple_l4(s)
            && (proto == 6 || proto == 17)
        {
            assert!(l4_checksum_ok(s, l4, proto), "L4 checksum of a segment");
            if proto == 17 {
                assert_eq!(usize::from(be16(s, l4 + 4)), s.len() - l4, "UDP length");
            }
        }
    }

    // All segments share one header length H: sum(len) = n*H + (pkt.len() - H).
    let n = segs.len();
    let total: usize = segs.iter().map(Vec::len).sum();
    let hdr_len = if n == 1 {
        assert_eq!(total, pkt.len());
        return;
    } else {
        assert!(total > pkt.len());
        assert_eq!(
            (total - pkt.len()) % (n - 1),
            0,
            "segments with different header lengths"
        );
        (total - pkt.len()) / (n - 1)
    };
    let mut payload = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert!(s.len() > hdr_len || (i == 0 && s.len() == hdr_len));
        let p = &s[hdr_len..];
        assert!(p.len() <= mss, "segment payload above gso_size");
        if i + 1 < n {
            assert_eq!(p.len(), mss, "only the last segment may be short");
        }
        if let Some((l4, 6)) = simple_l4(s) {
            let seq0 = u32::from_be_bytes(pkt[l4 + 4..l4 + 8].try_into().unwrap());
            let seq = u32::from_be_bytes(s[l4 + 4..l4 + 8].try_into().unwrap());
            assert_eq!(seq, seq0.wrapping_add(payload.len() as u32), "TCP sequence number");
        }
        payload.extend_from_slice(p);
    }
    assert_eq!(
        &payload[..],
        &pkt[hdr_len..],
        "segment payloads differ from the original"
    );
}

/// `(l4, end)` of the TCP segment `clamp_mss` considers, mirroring its documented scope.
fn tcp_range(pkt: &[u8]) -> Option<(usize, usize)> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(be16(pkt, 2));
            (ihl >= 20 && total >= ihl && total <= pkt.len() && be16(pkt, 6) & 0x3fff == 0 && pkt[9] == 6)
                .then_some((ihl, total))
        }
        6 if pkt.len() >= 40 => {
            let end = 40 + usize::from(be16(pkt, 4));
            (end <= pkt.len() && pkt[6] == 6).then_some((40, end))
        }
        _ => None,
    }
}

fn tcp_checksum_ok(pkt: &[u8], l4: usize, end: usize) -> bool {
    l4_checksum_ok(&pkt[..end], l4, 6)
}

/// Values of every well-formed MSS option (kind 2, length 4) of a TCP header, or None if the
/// option list is malformed.
fn mss_options(tcp: &[u8]) -> Option<Vec<u16>> {
    let doff = usize::from(*tcp.get(12)? >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 20;
    while i < doff {
        match tcp[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(*tcp[..doff].get(i + 1)?);
                if len < 2 || i + len > doff {
                    return None;
                }
                if kind == 2 && len == 4 {
                    out.push(be16(tcp, i + 2));
                }
                i += len;
            }
        }
    }
    Some(out)
}

fn check_clamp(pkt: &[u8], max_mss: u16) {
    let mut p = pkt.to_vec();
    let changed = mss::clamp_mss(&mut p, max_mss);
    let range = tcp_range(pkt);
    if !changed {
        assert_eq!(p, pkt, "clamp_mss returned false but changed the packet");
        return;
    }
    let (l4, end) = range.expect("clamp_mss changed a packet outside its scope");
    assert!(mss::is_tcp_syn(pkt), "clamp_mss changed a non-SYN");
    let doff = usize::from(pkt[l4 + 12] >> 4) * 4;
    for (i, (a, b)) in p.iter().zip(pkt).enumerate() {
        assert!(
            a == b || (l4..l4 + doff).contains(&i),
            "byte {i} outside the TCP header changed"
        );
    }
    if tcp_checksum_ok(pkt, l4, end) {
        assert!(tcp_checksum_ok(&p, l4, end), "clamp_mss broke a valid TCP checksum");
    }
    let opts = mss_options(&p[l4..end]).expect("option list became malformed");
    assert!(
        opts.iter().all(|&m| m <= max_mss),
        "an MSS above the limit is left: {opts:?}"
    );
    let before = p.clone();
    assert!(!mss::clamp_mss(&mut p, max_mss), "clamp_mss is not idempotent");
    assert_eq!(p, before);
}

fn check_icmp(pkt: &[u8], mtu: u16, from: IpAddr, out: &mut Vec<u8>) {
    let reply = icmp::packet_too_big(pkt, mtu, from, out);
    let Some(n) = reply else {
        assert!(out.is_empty(), "no reply but out holds {} bytes", out.len());
        return;
    };
    assert_eq!(n, out.len());
    let src_of_pkt: IpAddr = packet_addrs(pkt).expect("reply to a packet without addresses").src;
    match from {
        IpAddr::V4(from) => {
            assert_eq!(pkt[0] >> 4, 4);
            assert_eq!(out[0], 0x45);
            assert!(n <= 576);
            assert_eq!(usize::from(be16(out, 2)), n);
            assert_eq!(out[9], 1);
            assert_eq!(&out[12..16], &from.octets());
            assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&out[16..20]).unwrap()), src_of_pkt);
            assert_eq!(checksum_fold(checksum_add(0, &out[..20])), 0xffff, "IPv4 checksum");
            assert_eq!(checksum_fold(checksum_add(0, &out[20..])), 0xffff, "ICMP checksum");
            assert_eq!((out[20], out[21]), (3, 4));
            assert_eq!(be16(out, 26), mtu);
            let quoted = &out[28..];
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(be16(pkt, 2));
            assert_eq!(quoted, &pkt[..quoted.len()]);
            assert!(quoted.len() >= (ihl + 8).min(total), "quote shorter than header + 8");
            assert!(quoted.len() <= total, "quote beyond the IP length");
        }
        IpAddr::V6(from) => {
            assert_eq!(pkt[0] >> 4, 6);
            assert_eq!(out[0] >> 4, 6);
            assert!(n <= 1280);
            assert_eq!(usize::from(be16(out, 4)) + 40, n);
            assert_eq!(out[6], 58);
            assert_eq!(&out[8..24], &from.octets());
            assert_eq!(IpAddr::from(<[u8; 16]>::try_from(&out[24..40]).unwrap()), src_of_pkt);
            let ph = pseudo_header_sum(&out[8..24], &out[24..40], 58, (n - 40) as u32);
            assert_eq!(checksum_fold(checksum_add(ph, &out[40..])), 0xffff, "ICMPv6 checksum");
            assert_eq!((out[40], out[41]), (2, 0));
            assert_eq!(u32::from_be_bytes(out[44..48].try_into().unwrap()), u32::from(mtu));
            let quoted = &out[48..];
            assert_eq!(quoted, &pkt[..quoted.len()]);
            assert!(
                quoted.len() <= 40 + usize::from(be16(pkt, 4)),
                "quote beyond the IP length"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_packet_addrs(data);
    let Some(hdr) = VirtioNetHdr::decode(data) else {
        return;
    };
    assert_eq!(hdr.to_bytes()[..], data[..VIRTIO_NET_HDR_LEN]);
    let pkt = &data[VIRTIO_NET_HDR_LEN..];

    check_packet_addrs(pkt);
    let mut scratch = Vec::new();
    check_segment(&hdr, pkt, &mut scratch);
    check_clamp(pkt, hdr.hdr_len);

    let v6 = pkt.first().is_some_and(|b| b >> 4 == 6) != (hdr.flags & 0x80 != 0);
    let from = if v6 { IpAddr::V6(VPN6) } else { IpAddr::V4(VPN4) };
    let mut out = Vec::new();
    check_icmp(pkt, hdr.gso_size, from, &mut out);
});
