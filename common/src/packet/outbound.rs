//! The send-path rules: what to do with one packet read from the TUN before it is framed for the
//! peer. Offloaded packets go to the peer as they are when it takes offloads, else they are
//! segmented in software; a packet too big for the tunnel MTU is dropped and answered with an
//! ICMP "packet too big"; a TCP SYN has its MSS lowered to what fits the MTU.
//!
//! Pure functions over byte slices: no I/O, no frames, no counters. The tunnel driver asks
//! [`Outbound::prepare`] and carries the answer out.

use std::net::IpAddr;

use super::vnet::{VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_LEN, VirtioNetHdr};
use super::{icmp, mss};

/// What the send path knows about both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    /// Packets read from the TUN carry a virtio-net header.
    pub vnet_hdr: bool,
    /// The peer accepts offloaded (GSO) frames.
    pub peer_gso: bool,
    /// The tunnel MTU: the largest plain packet the peer takes.
    pub mtu: u16,
}

/// What to do with one packet read from the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// A plain IP packet; see [`Plain`].
    Plain(Plain<'a>),
    /// An offloaded packet the peer takes as it is: send header and packet as one offloaded
    /// frame. `ip_len` is the length of the IP packet behind the header (for the counters).
    Offloaded { pkt: &'a [u8], ip_len: usize },
    /// An offloaded packet for a peer without offloads: split it in software
    /// ([`super::gso::segment`]) and send each segment as a plain packet.
    Segment { hdr: VirtioNetHdr, ip: &'a [u8] },
    /// A TCP SYN with a partial checksum: complete its checksum ([`super::gso::segment`] yields
    /// the one whole packet), then apply [`Outbound::prepare_ip`] to the result.
    CompleteChecksum { hdr: VirtioNetHdr, ip: &'a [u8] },
    /// The virtio-net header is missing: drop the packet.
    Malformed,
}

/// What to do with one plain IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain<'a> {
    /// Send it unchanged.
    Forward(&'a [u8]),
    /// A TCP SYN: send a copy with its MSS option lowered to `mss` ([`clamp_into`]).
    ClampMss { ip: &'a [u8], mss: u16 },
    /// Larger than the MTU: drop it and answer its sender ([`too_big_reply`]).
    TooBig(&'a [u8]),
}

impl Outbound {
    /// Decides for one packet in the TUN's format (with its virtio-net header if the TUN has
    /// them).
    pub fn prepare<'a>(&self, pkt: &'a [u8]) -> Action<'a> {
        if !self.vnet_hdr {
            return Action::Plain(self.prepare_ip(pkt));
        }
        let (Some(hdr), Some(ip)) = (VirtioNetHdr::decode(pkt), pkt.get(VIRTIO_NET_HDR_LEN..)) else {
            return Action::Malformed;
        };
        if hdr.is_plain() {
            Action::Plain(self.prepare_ip(ip))
        } else if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE && mss::is_tcp_syn(ip) {
            // Rare: the MSS clamp needs the whole checksum first.
            Action::CompleteChecksum { hdr, ip }
        } else if self.peer_gso {
            Action::Offloaded { pkt, ip_len: ip.len() }
        } else {
            Action::Segment { hdr, ip }
        }
    }

    /// Decides for one plain IP packet: too big for the MTU, a TCP SYN to clamp, or as is.
    pub fn prepare_ip<'a>(&self, ip: &'a [u8]) -> Plain<'a> {
        if ip.len() > usize::from(self.mtu) {
            Plain::TooBig(ip)
        } else if mss::is_tcp_syn(ip) {
            let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
            Plain::ClampMss {
                ip,
                mss: mss::mss_for_mtu(self.mtu, v6),
            }
        } else {
            Plain::Forward(ip)
        }
    }
}

/// Copies `ip` into `out` (cleared first) with its MSS lowered to `mss` where it is larger.
pub fn clamp_into(ip: &[u8], mss: u16, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(ip);
    mss::clamp_mss(out, mss);
}

/// Builds into `out` the ICMP "fragmentation needed" / ICMPv6 "packet too big" for the sender of
/// `ip`, from the first of `sources` of the same IP version (the far end of the tunnel: the
/// kernel drops injected packets whose source is one of its own addresses). False when no reply
/// is due (no source of that version, or a packet ICMP must not answer).
pub fn too_big_reply(ip: &[u8], mtu: u16, sources: &[IpAddr], out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some(v6) = ip.first().map(|b| b >> 4 == 6) else {
        return false;
    };
    let Some(from) = sources.iter().find(|a| a.is_ipv6() == v6).copied() else {
        return false;
    };
    icmp::packet_too_big(ip, mtu, from, out).is_some()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::packet::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
    use etherparse::{PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};

    fn syn_v4(mss: u16) -> Vec<u8> {
        tcp_syn([10, 0, 0, 2], [10, 0, 0, 1], mss)
    }

    /// An IPv4 TCP SYN carrying an MSS option (also used by the driver tests).
    pub(crate) fn tcp_syn(src: [u8; 4], dst: [u8; 4], mss: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(src, dst, 64)
            .tcp(40000, 80, 1, 64000)
            .syn()
            .options(&[TcpOptionElement::MaximumSegmentSize(mss)])
            .unwrap()
            .write(&mut out, &[])
            .unwrap();
        out
    }

    fn udp_v4(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .udp(1, 2)
            .write(&mut out, &vec![7; len - 28])
            .unwrap();
        out
    }

    fn with_hdr(hdr: VirtioNetHdr, ip: &[u8]) -> Vec<u8> {
        let mut v = hdr.to_bytes().to_vec();
        v.extend_from_slice(ip);
        v
    }

    /// The MSS option of a TCP packet (also used by the driver tests).
    pub(crate) fn mss_of(ip: &[u8]) -> Option<u16> {
        let p = SlicedPacket::from_ip(ip).ok()?;
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            return None;
        };
        tcp.options_iterator().find_map(|o| match o {
            Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
            _ => None,
        })
    }

    const PLAIN: Outbound = Outbound {
        vnet_hdr: false,
        peer_gso: false,
        mtu: 1400,
    };

    #[test]
    fn plain_packets_forward_clamp_or_bounce() {
        let small = udp_v4(100);
        assert_eq!(PLAIN.prepare(&small), Action::Plain(Plain::Forward(&small)));
        let exact = udp_v4(1400);
        assert_eq!(PLAIN.prepare(&exact), Action::Plain(Plain::Forward(&exact)));
        let big = udp_v4(1401);
        assert_eq!(PLAIN.prepare(&big), Action::Plain(Plain::TooBig(&big)));
        let syn = syn_v4(1460);
        assert_eq!(
            PLAIN.prepare(&syn),
            Action::Plain(Plain::ClampMss { ip: &syn, mss: 1360 })
        );
        // IPv6 leaves 20 more bytes of header.
        let v6 = [0x60u8; 40];
        assert!(matches!(PLAIN.prepare_ip(&v6), Plain::Forward(_)));
    }

    #[test]
    fn clamp_into_lowers_only_larger_mss() {
        let mut out = Vec::new();
        clamp_into(&syn_v4(1460), 1360, &mut out);
        assert_eq!(mss_of(&out), Some(1360));
        clamp_into(&syn_v4(1200), 1360, &mut out);
        assert_eq!(mss_of(&out), Some(1200));
    }

    #[test]
    fn offloaded_packets_pass_or_get_segmented() {
        let gso = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1000,
            ..Default::default()
        };
        let ip = udp_v4(3000);
        let pkt = with_hdr(gso, &ip);
        let to_gso_peer = Outbound {
            vnet_hdr: true,
            peer_gso: true,
            mtu: 1400,
        };
        assert_eq!(
            to_gso_peer.prepare(&pkt),
            Action::Offloaded {
                pkt: &pkt,
                ip_len: 3000
            }
        );
        let to_plain_peer = Outbound {
            peer_gso: false,
            ..to_gso_peer
        };
        assert_eq!(to_plain_peer.prepare(&pkt), Action::Segment { hdr: gso, ip: &ip });
        // A plain header: the plain rules, on the packet behind it.
        let big = with_hdr(VirtioNetHdr::default(), &udp_v4(1500));
        assert!(matches!(to_gso_peer.prepare(&big), Action::Plain(Plain::TooBig(p)) if p.len() == 1500));
        // A SYN with a partial checksum.
        let partial = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            ..Default::default()
        };
        let syn = syn_v4(1460);
        assert_eq!(
            to_gso_peer.prepare(&with_hdr(partial, &syn)),
            Action::CompleteChecksum { hdr: partial, ip: &syn }
        );
        // Shorter than a virtio-net header.
        assert_eq!(to_gso_peer.prepare(&[0; 4]), Action::Malformed);
    }

    #[test]
    fn too_big_reply_comes_from_a_source_of_the_same_version() {
        let big = udp_v4(1500);
        let mut out = Vec::new();
        let v6_only: Vec<IpAddr> = vec!["fd00::1".parse().unwrap()];
        assert!(!too_big_reply(&big, 1400, &v6_only, &mut out));
        assert!(out.is_empty());
        let both: Vec<IpAddr> = vec!["fd00::1".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        assert!(too_big_reply(&big, 1400, &both, &mut out));
        let reply = SlicedPacket::from_ip(&out).unwrap();
        let Some(etherparse::NetSlice::Ipv4(v4)) = reply.net else {
            panic!("not IPv4: {reply:?}");
        };
        assert_eq!(v4.header().source(), [10, 0, 0, 1]);
        assert_eq!(v4.header().destination(), [10, 0, 0, 2]);
        let mut none = Vec::new();
        assert!(!too_big_reply(&[], 1400, &both, &mut none));
    }
}
