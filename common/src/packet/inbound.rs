//! The receive-path rules: whether one packet from the peer may be written to the TUN, before the
//! caller's own admission check (which addresses this peer may send from). A packet must be a
//! well-formed IP header (behind a virtio-net header when it came as an offloaded frame, which
//! only a TUN with offloads takes) and must not be link-local traffic.
//!
//! Pure: no I/O, no counters; the tunnel driver counts the rejections.

use super::ip::{PacketAddrs, packet_addrs};
use super::vnet::VIRTIO_NET_HDR_LEN;

/// A packet that passed: its IP part and addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted<'a> {
    pub ip: &'a [u8],
    pub addrs: PacketAddrs,
}

/// Why a packet from the peer is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not an IP packet, or an offloaded frame where offloads were not negotiated for this TUN.
    Malformed,
    /// Link-local or unspecified source, or multicast/broadcast destination.
    LocalScope,
}

/// Checks one packet from the peer: `payload` of a plain frame, or of an offloaded frame
/// (`offloaded`: a virtio-net header, then the IP packet) for a TUN with `tun_vnet_hdr`.
pub fn check(payload: &[u8], offloaded: bool, tun_vnet_hdr: bool) -> Result<Accepted<'_>, Reject> {
    let ip = if offloaded {
        match payload.get(VIRTIO_NET_HDR_LEN..) {
            Some(ip) if tun_vnet_hdr => ip,
            _ => return Err(Reject::Malformed),
        }
    } else {
        payload
    };
    let addrs = packet_addrs(ip).ok_or(Reject::Malformed)?;
    if addrs.is_local_scope() {
        return Err(Reject::LocalScope);
    }
    Ok(Accepted { ip, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(src, dst, 64)
            .udp(1, 2)
            .write(&mut out, b"x")
            .unwrap();
        out
    }

    #[test]
    fn accepts_routable_ip_and_rejects_the_rest() {
        let ok = udp([10, 0, 0, 2], [10, 0, 0, 1]);
        let a = check(&ok, false, false).unwrap();
        assert_eq!((a.ip, a.addrs.src), (&ok[..], "10.0.0.2".parse().unwrap()));
        assert_eq!(check(&[0x45; 10], false, true), Err(Reject::Malformed));
        assert_eq!(
            check(&udp([169, 254, 0, 1], [10, 0, 0, 1]), false, false),
            Err(Reject::LocalScope)
        );
        assert_eq!(
            check(&udp([10, 0, 0, 2], [224, 0, 0, 1]), false, false),
            Err(Reject::LocalScope)
        );
    }

    #[test]
    fn offloaded_frames_need_a_tun_with_offloads() {
        let mut framed = vec![0u8; VIRTIO_NET_HDR_LEN];
        framed.extend_from_slice(&udp([10, 0, 0, 2], [10, 0, 0, 1]));
        assert_eq!(check(&framed, true, false), Err(Reject::Malformed));
        let a = check(&framed, true, true).unwrap();
        assert_eq!(a.ip, &framed[VIRTIO_NET_HDR_LEN..]);
        assert_eq!(check(&framed[..4], true, true), Err(Reject::Malformed));
    }
}
