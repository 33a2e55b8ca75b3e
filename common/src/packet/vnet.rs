//! `struct virtio_net_hdr`, the 10-byte header that a Linux TUN device opened
//! with `IFF_VNET_HDR` puts in front of every packet it hands to user space
//! (and expects in front of every packet written to it).
//!
//! Layout (`include/uapi/linux/virtio_net.h`), all multi-byte fields in the
//! byte order the TUN device uses for the vnet header:
//!
//! | offset | size | field         |
//! |--------|------|---------------|
//! | 0      | 1    | `flags`       |
//! | 1      | 1    | `gso_type`    |
//! | 2      | 2    | `hdr_len`     |
//! | 4      | 2    | `gso_size`    |
//! | 6      | 2    | `csum_start`  |
//! | 8      | 2    | `csum_offset` |
//!
//! This module always encodes and decodes little-endian. That is what the TUN
//! device uses on little-endian hosts (x86_64, aarch64, riscv64, ...). On a
//! big-endian host the device uses host order unless `TUNSETVNETLE` was issued
//! (needs `CONFIG_TUN_VNET_CROSS_LE`), so issue it there.
//!
//! Packets written to the TUN device also need a header; for an ordinary,
//! fully checksummed packet that is ten zero bytes
//! (`VirtioNetHdr::default().to_bytes()`).

/// Length of the legacy `struct virtio_net_hdr` (the TUN default vnet header size).
pub const VIRTIO_NET_HDR_LEN: usize = 10;

/// `flags`: checksum is partial; complete it over `[csum_start..]` and store it
/// at `csum_start + csum_offset` (the field already holds the pseudo-header sum).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: checksum has already been validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: IPv4 TCP (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: IPv4 UDP fragmentation offload (UFO, legacy).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: IPv6 TCP (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (USO), IPv4 or IPv6.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: TCP has ECN set (CWR in the super-packet).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// `ifreq.ifr_flags` bit for `TUNSETIFF`: prepend a `virtio_net_hdr` to every packet.
pub const IFF_VNET_HDR: u16 = 0x4000;
/// `ioctl` request `_IOW('T', 208, unsigned int)`: set the `TUN_F_*` offloads.
pub const TUNSETOFFLOAD: u32 = 0x4004_54d0;
/// `ioctl` request `_IOW('T', 216, int)`: set the vnet header size.
pub const TUNSETVNETHDRSZ: u32 = 0x4004_54d8;
/// `ioctl` request `_IOW('T', 220, int)`: little-endian vnet header on big-endian hosts.
pub const TUNSETVNETLE: u32 = 0x4004_54dc;

/// `TUNSETOFFLOAD` bit: user space accepts packets with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUNSETOFFLOAD` bit: user space accepts TCPv4 GSO super-packets.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUNSETOFFLOAD` bit: user space accepts TCPv6 GSO super-packets.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUNSETOFFLOAD` bit: user space accepts TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUNSETOFFLOAD` bit: UFO (legacy; not handled by [`crate::gso::segment`]).
pub const TUN_F_UFO: u32 = 0x10;
/// `TUNSETOFFLOAD` bit: user space accepts UDPv4 GSO (USO, Linux >= 6.2).
pub const TUN_F_USO4: u32 = 0x20;
/// `TUNSETOFFLOAD` bit: user space accepts UDPv6 GSO (USO, Linux >= 6.2).
pub const TUN_F_USO6: u32 = 0x40;

/// `struct virtio_net_hdr` (10 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, optionally `| VIRTIO_NET_HDR_GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (IP + L4) of a GSO packet. Not reliable: the
    /// kernel may set it to the whole first packet on the forward path.
    pub hdr_len: u16,
    /// Maximum L4 payload per segment (MSS for TCP).
    pub gso_size: u16,
    /// Offset where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Offset of the checksum field, relative to `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Decodes the first [`VIRTIO_NET_HDR_LEN`] bytes of `b`; `None` if `b` is shorter.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; VIRTIO_NET_HDR_LEN] = b.get(..VIRTIO_NET_HDR_LEN)?.try_into().ok()?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8; VIRTIO_NET_HDR_LEN]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// Encodes into a new array.
    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut out = [0; VIRTIO_NET_HDR_LEN];
        self.encode(&mut out);
        out
    }

    /// True if the packet behind this header is an ordinary packet that can be
    /// forwarded as is: no GSO and no partial checksum to complete.
    pub fn is_plain(&self) -> bool {
        self.gso_type == VIRTIO_NET_HDR_GSO_NONE && self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_layout() {
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 0x81, 0x02, 0x01, 0xa8, 0x05, 20, 0, 16, 0]);
        assert_eq!(VirtioNetHdr::decode(&b), Some(h));
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[0x45, 0]);
        assert_eq!(VirtioNetHdr::decode(&longer), Some(h));
        assert_eq!(VirtioNetHdr::decode(&b[..9]), None);
        assert_eq!(VirtioNetHdr::decode(&[]), None);
        assert!(!h.is_plain());
    }

    #[test]
    fn plain() {
        assert!(VirtioNetHdr::default().is_plain());
        assert_eq!(VirtioNetHdr::default().to_bytes(), [0; 10]);
        let dv = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            ..Default::default()
        };
        assert!(dv.is_plain());
        let csum = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            ..Default::default()
        };
        assert!(!csum.is_plain());
        let gso = VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            ..Default::default()
        };
        assert!(!gso.is_plain());
    }

    #[test]
    fn ioctl_numbers() {
        // _IOW(type, nr, size) = 1 << 30 | size << 16 | type << 8 | nr
        let iow = |nr: u32| (1 << 30) | (4 << 16) | ((b'T' as u32) << 8) | nr;
        assert_eq!(TUNSETOFFLOAD, iow(208));
        assert_eq!(TUNSETVNETHDRSZ, iow(216));
        assert_eq!(TUNSETVNETLE, iow(220));
    }
}
