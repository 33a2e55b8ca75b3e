//! The receive-path check of an offloaded frame: a virtio-net header from the peer, and the IP
//! packet behind it, before both are written to the local TUN. The kernel acts on the header
//! (`virtio_net_hdr_to_skb`): it completes the checksum where `csum_start`/`csum_offset` point,
//! and splits a GSO super-packet into `payload / gso_size` segments. A hostile peer's header
//! must therefore agree with the packet it came with, and must not ask for more segments than a
//! well-behaved sender's kernel would ever hand out.
//!
//! The rules ([`check`]):
//! - `flags`: nothing, or exactly `NEEDS_CSUM` (a GSO frame must have `NEEDS_CSUM`, as every
//!   kernel-made one has; `DATA_VALID` and unknown bits are refused);
//! - `gso_type`: `NONE`, `TCPV4`, `TCPV6` (either with the `ECN` bit) or `UDP_L4`; `TCPV4` only
//!   for an IPv4 TCP packet, `TCPV6` only for IPv6 TCP, `UDP_L4` only for UDP; UFO and unknown
//!   types are refused;
//! - with `NEEDS_CSUM`: the packet is a whole (unfragmented) TCP or UDP packet whose IP length
//!   field matches its length, `csum_start` is its transport header and `csum_offset` that
//!   header's checksum field (16 for TCP, 6 for UDP);
//! - GSO: `hdr_len` at least the IP and transport headers and at most the packet; `gso_size` at
//!   least [`MIN_GSO_SIZE_TCP4`], [`MIN_GSO_SIZE_TCP6`] or [`MIN_GSO_SIZE_UDP`]; at most
//!   [`MAX_SEGMENTS`] segments; the packet at most [`MAX_PACKET`] bytes;
//! - not GSO: `gso_size` 0 and `hdr_len` inside the packet.
//!
//! Pure: no I/O, no counters; the tunnel driver drops what fails and counts it (`bad_offload`).

use super::ip::{IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, IPV6_HDR_LEN, UDP_HDR_LEN};
use super::vnet::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4, VirtioNetHdr,
};

/// Smallest `gso_size` accepted for IPv4 TCP: the minimum MSS every IPv4 host must accept.
pub const MIN_GSO_SIZE_TCP4: u16 = 536;
/// Smallest `gso_size` accepted for IPv6 TCP: the IPv6 minimum MTU (1280) less 60 bytes of headers.
pub const MIN_GSO_SIZE_TCP6: u16 = 1220;
/// Smallest `gso_size` accepted for UDP GSO: one UDP header's worth.
pub const MIN_GSO_SIZE_UDP: u16 = 8;
/// Most segments one offloaded frame may turn into (the kernel's `UDP_MAX_SEGMENTS`; a 64 KiB
/// TCP super-packet at the smallest IPv4 segment size is 123).
pub const MAX_SEGMENTS: usize = 128;
/// Largest offloaded IP packet: what a 16-bit IP length field describes (no BIG TCP jumbograms).
pub const MAX_PACKET: usize = 65535;

const TCP_CSUM_OFFSET: u16 = 16;
const UDP_CSUM_OFFSET: u16 = 6;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_DSTOPTS: u8 = 60;
/// At most this many IPv6 extension headers are walked.
const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Why an offloaded frame is dropped (each counts as `bad_offload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadOffload {
    #[error("virtio-net flags {0:#04x} (only NEEDS_CSUM is accepted)")]
    Flags(u8),
    #[error("unsupported gso_type {0:#04x}")]
    GsoType(u8),
    #[error("GSO without NEEDS_CSUM")]
    GsoWithoutChecksum,
    #[error("not a whole IPv4/IPv6 TCP or UDP packet")]
    Packet,
    #[error("packet of {0} bytes is longer than {MAX_PACKET}")]
    TooLong(usize),
    #[error("gso_type {0:#04x} does not match the packet's IP version and protocol")]
    TypeMismatch(u8),
    #[error("csum_start {got} is not the transport header offset {want}")]
    CsumStart { got: u16, want: usize },
    #[error("csum_offset {got} is not the checksum field offset {want}")]
    CsumOffset { got: u16, want: u16 },
    #[error("hdr_len {got} is outside {min}..={max}")]
    HdrLen { got: u16, min: usize, max: usize },
    #[error("gso_size {got} is below the minimum of {min}")]
    GsoSize { got: u16, min: u16 },
    #[error("{0} segments (at most {MAX_SEGMENTS})")]
    TooManySegments(usize),
}

/// The IP and transport layers of a packet, as parsed from the packet itself.
struct Layers {
    v6: bool,
    proto: u8,
    /// Offset of the transport header.
    l4_off: usize,
    /// Offset of the transport payload.
    payload_off: usize,
}

/// Checks the virtio-net header `hdr` that came from the peer with the IP packet `ip`.
pub fn check(hdr: &VirtioNetHdr, ip: &[u8]) -> Result<(), BadOffload> {
    if hdr.flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Err(BadOffload::Flags(hdr.flags));
    }
    let needs_csum = hdr.flags == VIRTIO_NET_HDR_F_NEEDS_CSUM;
    let base = hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
    let ecn = hdr.gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
    let min_size = match base {
        VIRTIO_NET_HDR_GSO_NONE if !ecn => None,
        VIRTIO_NET_HDR_GSO_TCPV4 => Some(MIN_GSO_SIZE_TCP4),
        VIRTIO_NET_HDR_GSO_TCPV6 => Some(MIN_GSO_SIZE_TCP6),
        VIRTIO_NET_HDR_GSO_UDP_L4 if !ecn => Some(MIN_GSO_SIZE_UDP),
        _ => return Err(BadOffload::GsoType(hdr.gso_type)),
    };
    let Some(min_size) = min_size else {
        // Not GSO: at most a checksum to complete.
        if hdr.gso_size != 0 {
            return Err(BadOffload::GsoSize {
                got: hdr.gso_size,
                min: 0,
            });
        }
        if usize::from(hdr.hdr_len) > ip.len() {
            return Err(BadOffload::HdrLen {
                got: hdr.hdr_len,
                min: 0,
                max: ip.len(),
            });
        }
        if needs_csum {
            check_csum(hdr, &layers(ip)?)?;
        }
        return Ok(());
    };
    if !needs_csum {
        return Err(BadOffload::GsoWithoutChecksum);
    }
    let l = layers(ip)?;
    let matches = match base {
        VIRTIO_NET_HDR_GSO_TCPV4 => !l.v6 && l.proto == IPPROTO_TCP,
        VIRTIO_NET_HDR_GSO_TCPV6 => l.v6 && l.proto == IPPROTO_TCP,
        _ => l.proto == IPPROTO_UDP,
    };
    if !matches {
        return Err(BadOffload::TypeMismatch(hdr.gso_type));
    }
    check_csum(hdr, &l)?;
    if usize::from(hdr.hdr_len) < l.payload_off || usize::from(hdr.hdr_len) > ip.len() {
        return Err(BadOffload::HdrLen {
            got: hdr.hdr_len,
            min: l.payload_off,
            max: ip.len(),
        });
    }
    if hdr.gso_size < min_size {
        return Err(BadOffload::GsoSize {
            got: hdr.gso_size,
            min: min_size,
        });
    }
    let segments = (ip.len() - l.payload_off).div_ceil(usize::from(hdr.gso_size));
    if segments > MAX_SEGMENTS {
        return Err(BadOffload::TooManySegments(segments));
    }
    Ok(())
}

/// `csum_start` at the transport header, `csum_offset` at its checksum field.
fn check_csum(hdr: &VirtioNetHdr, l: &Layers) -> Result<(), BadOffload> {
    if usize::from(hdr.csum_start) != l.l4_off {
        return Err(BadOffload::CsumStart {
            got: hdr.csum_start,
            want: l.l4_off,
        });
    }
    let want = if l.proto == IPPROTO_TCP {
        TCP_CSUM_OFFSET
    } else {
        UDP_CSUM_OFFSET
    };
    if hdr.csum_offset != want {
        return Err(BadOffload::CsumOffset {
            got: hdr.csum_offset,
            want,
        });
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

/// Parses a whole, unfragmented IPv4/IPv6 TCP or UDP packet whose IP length field is its length.
fn layers(ip: &[u8]) -> Result<Layers, BadOffload> {
    if ip.len() > MAX_PACKET {
        return Err(BadOffload::TooLong(ip.len()));
    }
    let first = *ip.first().ok_or(BadOffload::Packet)?;
    let (v6, l4_off, proto) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ip.len() < IPV4_HDR_LEN || ihl < IPV4_HDR_LEN || ihl > ip.len() || be16(ip, 2) != ip.len() {
                return Err(BadOffload::Packet);
            }
            // More-fragments flag or a fragment offset: not a whole transport packet.
            if be16(ip, 6) & 0x3fff != 0 {
                return Err(BadOffload::Packet);
            }
            (false, ihl, ip[9])
        }
        6 => {
            if ip.len() < IPV6_HDR_LEN || IPV6_HDR_LEN + be16(ip, 4) != ip.len() {
                return Err(BadOffload::Packet);
            }
            let mut next = ip[6];
            let mut off = IPV6_HDR_LEN;
            let mut walked = 0;
            while matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS) {
                walked += 1;
                let ext = ip.get(off..off + 8).ok_or(BadOffload::Packet)?;
                if walked > MAX_IPV6_EXT_HEADERS || (next == IPPROTO_ROUTING && ext[3] != 0) {
                    return Err(BadOffload::Packet);
                }
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            (true, off, next)
        }
        _ => return Err(BadOffload::Packet),
    };
    let l4_len = match proto {
        IPPROTO_TCP => usize::from(*ip.get(l4_off + 12).ok_or(BadOffload::Packet)? >> 4) * 4,
        IPPROTO_UDP => UDP_HDR_LEN,
        _ => return Err(BadOffload::Packet),
    };
    if (proto == IPPROTO_TCP && l4_len < 20) || l4_off + l4_len > ip.len() {
        return Err(BadOffload::Packet);
    }
    Ok(Layers {
        v6,
        proto,
        l4_off,
        payload_off: l4_off + l4_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::vnet::{VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_UDP};
    use etherparse::PacketBuilder;

    fn tcp4(payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 203, 0, 2], [10, 202, 0, 2], 64)
            .tcp(40000, 443, 1, 1000)
            .write(&mut out, &vec![7u8; payload])
            .unwrap();
        out
    }

    fn tcp6(payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0x20; 16], 64)
            .tcp(40000, 443, 1, 1000)
            .write(&mut out, &vec![7u8; payload])
            .unwrap();
        out
    }

    fn udp4(payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 203, 0, 2], [10, 202, 0, 2], 64)
            .udp(4000, 53)
            .write(&mut out, &vec![7u8; payload])
            .unwrap();
        out
    }

    fn udp6(payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0x20; 16], 64)
            .udp(4000, 53)
            .write(&mut out, &vec![7u8; payload])
            .unwrap();
        out
    }

    /// The header a sender's kernel puts in front of `ip` (as `virtio_net_hdr_from_skb` does).
    fn gso(gso_type: u8, gso_size: u16, l4_off: u16, hdr_len: u16, csum_offset: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len,
            gso_size,
            csum_start: l4_off,
            csum_offset,
        }
    }

    fn tso4(gso_size: u16) -> VirtioNetHdr {
        gso(VIRTIO_NET_HDR_GSO_TCPV4, gso_size, 20, 40, 16)
    }

    #[test]
    fn what_a_kernel_sends_is_accepted() {
        assert_eq!(check(&tso4(1448), &tcp4(60_000)), Ok(()));
        assert_eq!(check(&tso4(536), &tcp4(65_000)), Ok(()), "123 segments");
        let ecn = gso(VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 1448, 20, 40, 16);
        assert_eq!(check(&ecn, &tcp4(5000)), Ok(()));
        let tso6 = gso(VIRTIO_NET_HDR_GSO_TCPV6, 1220, 40, 60, 16);
        assert_eq!(check(&tso6, &tcp6(30_000)), Ok(()));
        assert_eq!(
            check(&gso(VIRTIO_NET_HDR_GSO_UDP_L4, 1200, 20, 28, 6), &udp4(12_000)),
            Ok(())
        );
        assert_eq!(
            check(&gso(VIRTIO_NET_HDR_GSO_UDP_L4, 1200, 40, 48, 6), &udp6(12_000)),
            Ok(())
        );
        // hdr_len may cover more than the headers (the kernel's skb_headlen).
        assert_eq!(
            check(&gso(VIRTIO_NET_HDR_GSO_TCPV4, 1448, 20, 1000, 16), &tcp4(5000)),
            Ok(())
        );
        // A partial checksum alone, and a plain packet.
        let csum = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..Default::default()
        };
        assert_eq!(check(&csum, &udp4(100)), Ok(()));
        assert_eq!(check(&VirtioNetHdr::default(), &udp4(100)), Ok(()));
        // A payload no larger than one segment is one packet.
        assert_eq!(check(&tso4(1448), &tcp4(0)), Ok(()));
    }

    #[test]
    fn each_bad_field_is_refused() {
        let pkt = tcp4(1000);
        let with = |f: &dyn Fn(&mut VirtioNetHdr)| {
            let mut h = tso4(536);
            f(&mut h);
            check(&h, &pkt)
        };
        assert_eq!(with(&|_| {}), Ok(()));
        assert_eq!(
            with(&|h| h.flags |= VIRTIO_NET_HDR_F_DATA_VALID),
            Err(BadOffload::Flags(3))
        );
        assert_eq!(with(&|h| h.flags = 0x80), Err(BadOffload::Flags(0x80)));
        assert_eq!(with(&|h| h.flags = 0), Err(BadOffload::GsoWithoutChecksum));
        assert_eq!(
            with(&|h| h.gso_type = VIRTIO_NET_HDR_GSO_UDP),
            Err(BadOffload::GsoType(VIRTIO_NET_HDR_GSO_UDP))
        );
        assert_eq!(with(&|h| h.gso_type = 9), Err(BadOffload::GsoType(9)));
        assert_eq!(
            with(&|h| h.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4 | VIRTIO_NET_HDR_GSO_ECN),
            Err(BadOffload::GsoType(0x85))
        );
        assert_eq!(
            with(&|h| h.gso_type = VIRTIO_NET_HDR_GSO_ECN),
            Err(BadOffload::GsoType(0x80))
        );
        assert_eq!(
            with(&|h| h.gso_type = VIRTIO_NET_HDR_GSO_TCPV6),
            Err(BadOffload::TypeMismatch(VIRTIO_NET_HDR_GSO_TCPV6))
        );
        assert_eq!(
            with(&|h| h.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4),
            Err(BadOffload::TypeMismatch(VIRTIO_NET_HDR_GSO_UDP_L4))
        );
        assert_eq!(
            with(&|h| h.csum_start = 0),
            Err(BadOffload::CsumStart { got: 0, want: 20 })
        );
        assert_eq!(
            with(&|h| h.csum_start = 60_000),
            Err(BadOffload::CsumStart { got: 60_000, want: 20 })
        );
        assert_eq!(
            with(&|h| h.csum_offset = 6),
            Err(BadOffload::CsumOffset { got: 6, want: 16 })
        );
        assert_eq!(
            with(&|h| h.csum_offset = 9000),
            Err(BadOffload::CsumOffset { got: 9000, want: 16 })
        );
        assert_eq!(
            with(&|h| h.hdr_len = 39),
            Err(BadOffload::HdrLen {
                got: 39,
                min: 40,
                max: 1040
            })
        );
        assert_eq!(
            with(&|h| h.hdr_len = 1041),
            Err(BadOffload::HdrLen {
                got: 1041,
                min: 40,
                max: 1040
            })
        );
        assert_eq!(with(&|h| h.gso_size = 1), Err(BadOffload::GsoSize { got: 1, min: 536 }));
        assert_eq!(with(&|h| h.gso_size = 0), Err(BadOffload::GsoSize { got: 0, min: 536 }));
        assert_eq!(
            with(&|h| h.gso_size = 535),
            Err(BadOffload::GsoSize { got: 535, min: 536 })
        );
    }

    #[test]
    fn minimum_segment_sizes_per_protocol() {
        let tso6 = |size| gso(VIRTIO_NET_HDR_GSO_TCPV6, size, 40, 60, 16);
        assert_eq!(
            check(&tso6(1219), &tcp6(3000)),
            Err(BadOffload::GsoSize { got: 1219, min: 1220 })
        );
        let uso = |size| gso(VIRTIO_NET_HDR_GSO_UDP_L4, size, 20, 28, 6);
        assert_eq!(check(&uso(8), &udp4(1024)), Ok(()), "128 segments");
        assert_eq!(check(&uso(7), &udp4(100)), Err(BadOffload::GsoSize { got: 7, min: 8 }));
        assert_eq!(check(&uso(8), &udp4(1025)), Err(BadOffload::TooManySegments(129)));
    }

    #[test]
    fn the_packet_must_match_its_length_and_be_whole() {
        let h = tso4(536);
        let mut pkt = tcp4(1000);
        pkt.push(0);
        assert_eq!(check(&h, &pkt), Err(BadOffload::Packet), "trailing byte");
        assert_eq!(check(&h, &pkt[..30]), Err(BadOffload::Packet), "truncated");
        let mut frag = tcp4(1000);
        frag[6] |= 0x20;
        assert_eq!(check(&h, &frag), Err(BadOffload::Packet), "more fragments");
        let mut bad_doff = tcp4(1000);
        bad_doff[20 + 12] = 0x40;
        assert_eq!(
            check(&h, &bad_doff),
            Err(BadOffload::Packet),
            "TCP header below 20 bytes"
        );
        let mut icmp = tcp4(1000);
        icmp[9] = 1;
        assert_eq!(check(&h, &icmp), Err(BadOffload::Packet), "not TCP or UDP");
        assert_eq!(check(&h, &[0x55; 100]), Err(BadOffload::Packet), "not IP");
        assert_eq!(check(&h, &[]), Err(BadOffload::Packet));
        let huge = vec![0x45; MAX_PACKET + 1];
        assert_eq!(check(&h, &huge), Err(BadOffload::TooLong(MAX_PACKET + 1)));
    }

    #[test]
    fn non_gso_frames_carry_no_segment_size() {
        let pkt = udp4(100);
        let h = VirtioNetHdr {
            gso_size: 1,
            ..Default::default()
        };
        assert_eq!(check(&h, &pkt), Err(BadOffload::GsoSize { got: 1, min: 0 }));
        let h = VirtioNetHdr {
            hdr_len: 1000,
            ..Default::default()
        };
        assert!(matches!(check(&h, &pkt), Err(BadOffload::HdrLen { .. })));
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 200,
            ..Default::default()
        };
        assert_eq!(check(&h, &pkt), Err(BadOffload::CsumOffset { got: 200, want: 6 }));
    }

    #[test]
    fn random_headers_never_panic() {
        let mut seed = 0x9e37_79b9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let pkts = [
            tcp4(3000),
            tcp6(3000),
            udp4(500),
            udp6(500),
            vec![0x60; 41],
            vec![0x46; 24],
        ];
        for _ in 0..20_000 {
            let r = next();
            let h = VirtioNetHdr {
                flags: (r & 3) as u8,
                gso_type: [0, 1, 3, 4, 5, 0x81, 0x84, 0x85][(r >> 2) as usize % 8],
                hdr_len: (next() % 4000) as u16,
                gso_size: (next() % 2000) as u16,
                csum_start: (next() % 80) as u16,
                csum_offset: [6, 16, 0, 200][(r >> 5) as usize % 4],
            };
            let pkt = &pkts[(r >> 8) as usize % pkts.len()];
            let cut = (next() as usize) % (pkt.len() + 1);
            let _ = check(&h, &pkt[..cut]);
        }
    }
}
