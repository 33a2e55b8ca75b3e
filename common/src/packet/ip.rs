//! Minimal, allocation-free reading of IPv4/IPv6 headers: version, source and destination.
//! The kernel validates the rest when a packet is written to a TUN.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers the data path looks at.
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
/// Fixed header sizes: IPv4 without options, IPv6 without extension headers, UDP.
pub(crate) const IPV4_HDR_LEN: usize = 20;
pub(crate) const IPV6_HDR_LEN: usize = 40;
pub(crate) const UDP_HDR_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketAddrs {
    pub version: IpVersion,
    pub src: IpAddr,
    pub dst: IpAddr,
}

impl PacketAddrs {
    /// Link-local or unspecified source, or multicast/broadcast destination: traffic that belongs
    /// to one link and is never routed through the tunnel.
    pub fn is_local_scope(&self) -> bool {
        let src_local = match self.src {
            IpAddr::V4(a) => a.is_unspecified() || a.is_link_local(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_unicast_link_local(),
        };
        let dst_group = match self.dst {
            IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_multicast(),
        };
        src_local || dst_group
    }
}

/// Reads the version and addresses of an IP packet; `None` if it is not a well-formed header.
pub fn packet_addrs(pkt: &[u8]) -> Option<PacketAddrs> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 && (pkt[0] & 0x0f) >= 5 => Some(PacketAddrs {
            version: IpVersion::V4,
            src: IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15])),
            dst: IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19])),
        }),
        6 if pkt.len() >= 40 => {
            let src: [u8; 16] = pkt[8..24].try_into().ok()?;
            let dst: [u8; 16] = pkt[24..40].try_into().ok()?;
            Some(PacketAddrs {
                version: IpVersion::V6,
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    #[test]
    fn reads_v4_and_v6_addresses() {
        let mut v4 = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 2, 0, 9], 64)
            .udp(1, 2)
            .write(&mut v4, b"hi")
            .unwrap();
        let a = packet_addrs(&v4).unwrap();
        assert_eq!(a.src, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(a.dst, "10.2.0.9".parse::<IpAddr>().unwrap());
        let mut v6 = Vec::new();
        let s: Ipv6Addr = "fd00::2".parse().unwrap();
        let d: Ipv6Addr = "fd00::1".parse().unwrap();
        PacketBuilder::ipv6(s.octets(), d.octets(), 64)
            .udp(1, 2)
            .write(&mut v6, b"hi")
            .unwrap();
        let a = packet_addrs(&v6).unwrap();
        assert_eq!((a.version, a.src, a.dst), (IpVersion::V6, s.into(), d.into()));
    }

    #[test]
    fn local_scope() {
        let v6 = |s: &str, d: &str| PacketAddrs {
            version: IpVersion::V6,
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
        };
        assert!(v6("fe80::1", "ff02::2").is_local_scope());
        assert!(v6("::", "ff02::16").is_local_scope());
        assert!(v6("fd00::2", "ff02::1").is_local_scope());
        assert!(!v6("fd00::2", "fd00::1").is_local_scope());
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert_eq!(packet_addrs(&[]), None);
        assert_eq!(packet_addrs(&[0x45; 19]), None);
        assert_eq!(packet_addrs(&[0x60; 39]), None);
        assert_eq!(packet_addrs(&[0x15; 60]), None);
        assert_eq!(packet_addrs(&[0x44; 60]), None); // IHL below 5
    }
}
