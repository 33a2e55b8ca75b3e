//! TUN devices behind one narrow interface, [`TunIo`]: batch reads (one wait for readiness, then
//! every packet already queued, up to a limit, each read into a shared arena), packet writes, and
//! whether packets carry a virtio-net header. Implemented by the Linux device ([`TunDevice`]) and
//! by an in-memory fake for tests ([`fake::FakeTun`]). The tunnel driver sees only the trait.
//!
//! A device opened with offloads carries a 10-byte virtio-net header in front of every packet
//! (IFF_VNET_HDR); the kernel then hands us TCP/UDP super-packets of up to 64 KiB.
//!
//! This module moves packets; what is done with them (segmentation, MSS clamping, ICMP replies)
//! belongs to `crate::packet`.

// The only module with unsafe code (ioctls, reads into uninitialised buffers, registering a
// descriptor with the reactor); every block carries a SAFETY comment.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{TunDevice, TunError, open_device, register_fd};

pub mod fake;

use std::future::Future;
use std::io;

use bytes::{Bytes, BytesMut};

/// Size of the virtio-net header in front of every packet of a device with offloads on.
pub const VNET_HDR_LEN: usize = crate::packet::vnet::VIRTIO_NET_HDR_LEN;

/// A TUN device as the data path sees it (wireguard-go's `tun.Device`).
///
/// Packets are in the device's own format: with a [`VNET_HDR_LEN`]-byte virtio-net header in
/// front when [`TunIo::has_vnet_hdr`] is true, plain IP packets otherwise.
pub trait TunIo: Send + Sync + 'static {
    /// The interface name.
    fn name(&self) -> &str;

    /// Whether packets carry a virtio-net header (offloads on).
    fn has_vnet_hdr(&self) -> bool;

    /// Whether the device takes UDP GSO super-packets (`VIRTIO_NET_HDR_GSO_UDP_L4`, the kernel's
    /// USO offload, Linux 6.2 and later), so that datagrams of one flow can be written together.
    fn takes_udp_gso(&self) -> bool {
        false
    }

    /// Waits until at least one packet can be read, then appends to `out` every packet that is
    /// ready, `max` at most (at least one even if `max` is 0). Returns how many were appended.
    fn recv_batch(
        &self,
        arena: &mut RecvArena,
        out: &mut Vec<Bytes>,
        max: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// Writes `head` followed by `body` as one packet, as is: together they must carry a
    /// virtio-net header if the device has them. `head` may be empty.
    fn send_raw(&self, head: &[u8], body: &[u8]) -> impl Future<Output = io::Result<()>> + Send;

    /// Writes one plain IP packet, adding an empty virtio-net header if the device needs one.
    fn send_ip(&self, pkt: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            if self.has_vnet_hdr() {
                self.send_raw(&[0u8; VNET_HDR_LEN], pkt).await
            } else {
                self.send_raw(&[], pkt).await
            }
        }
    }
}

/// Largest read a TUN can return: a 64 KiB GSO packet plus its virtio-net header.
pub const MAX_READ: usize = 65535 + 16;

/// Receive arena: reads land in one large allocation and each packet is split off as a
/// [`Bytes`] sharing it, so reading a packet costs no allocation of its own.
#[derive(Debug)]
pub struct RecvArena {
    buf: BytesMut,
    chunk: usize,
}

impl RecvArena {
    /// An arena allocating `chunk` bytes at a time (at least [`MAX_READ`]), the first time on
    /// the first read (a reader that never reads, such as one over the fake, costs nothing).
    pub fn new(chunk: usize) -> Self {
        RecvArena {
            buf: BytesMut::new(),
            chunk: chunk.max(MAX_READ),
        }
    }

    /// Spare room for one read of up to [`MAX_READ`] bytes.
    pub fn spare(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < MAX_READ {
            self.buf = BytesMut::with_capacity(self.chunk);
        }
        &mut self.buf
    }

    /// Takes the `len` bytes just read as one packet.
    pub fn take(&mut self, len: usize) -> Bytes {
        debug_assert!(len <= self.buf.len());
        self.buf.split_to(len).freeze()
    }
}

impl Default for RecvArena {
    fn default() -> Self {
        RecvArena::new(256 * 1024)
    }
}
