//! TUN devices: creation, batched non-blocking reads into a shared arena, writes.
//!
//! A device opened with offloads carries a 10-byte virtio-net header in front of every packet
//! (IFF_VNET_HDR); the kernel then hands us TCP/UDP super-packets of up to 64 KiB.

// The only module with unsafe code (ioctls, reads into uninitialised buffers); every block
// carries a SAFETY comment.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{TunDevice, TunError, VNET_HDR_LEN, open_device};

use bytes::{Bytes, BytesMut};

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
    /// An arena allocating `chunk` bytes at a time (at least [`MAX_READ`]).
    pub fn new(chunk: usize) -> Self {
        let chunk = chunk.max(MAX_READ);
        RecvArena {
            buf: BytesMut::with_capacity(chunk),
            chunk,
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
