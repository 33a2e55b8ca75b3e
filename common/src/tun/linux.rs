//! Linux TUN device over /dev/net/tun, driven by tokio's reactor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use bytes::{BufMut, Bytes};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{MAX_READ, RecvArena, TunIo, VNET_HDR_LEN};
use crate::packet::vnet::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("no permission to create TUN device {name:?}: run as root or with CAP_NET_ADMIN")]
    Permission { name: String },
    #[error("/dev/net/tun is missing: load the tun kernel module (modprobe tun)")]
    NoDevice,
    #[error(
        "cannot open /dev/net/tun ({0}): without root it must be world read-writable \
         (mode 0666, the usual udev default): chmod 0666 /dev/net/tun"
    )]
    DeviceAccess(io::Error),
    #[error("cannot create TUN device {name:?}: {reason}")]
    Create { name: String, reason: String },
    #[error("TUN device setup: {0}")]
    Io(#[from] io::Error),
}

// TUNSETOFFLOAD = _IOW('T', 208, unsigned int)
nix::ioctl_write_int!(tunsetoffload, b'T', 208);

#[derive(Debug)]
pub struct TunDevice {
    fd: AsyncFd<OwnedFd>,
    name: String,
    vnet_hdr: bool,
    /// The kernel took the USO offload (UDP GSO super-packets may be written).
    uso: bool,
}

impl TunDevice {
    /// Creates (or attaches to) the TUN interface `name`. With `offload`, the device is opened
    /// with IFF_VNET_HDR and checksum/TSO (and USO where the kernel has it) offloads enabled; if
    /// the kernel refuses, the device falls back to plain packets.
    pub fn create(name: &str, offload: bool) -> Result<TunDevice, TunError> {
        let (fd, vnet_hdr) = open_device(name, offload)?;
        Self::from_fd(fd, name.to_string(), vnet_hdr)
    }

    /// Wraps an already opened TUN file descriptor (e.g. received from a namespace helper).
    pub fn from_fd(fd: OwnedFd, name: String, vnet_hdr: bool) -> Result<TunDevice, TunError> {
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(io::Error::from)?;
        // Setting the offloads again is harmless and tells whether USO is on (there is no
        // ioctl to read them back); a descriptor from a helper gets the same answer.
        let uso = vnet_hdr && enable_offloads(&fd).unwrap_or(false);
        let fd = register_fd(fd, Interest::READABLE | Interest::WRITABLE)?;
        Ok(TunDevice {
            fd,
            name,
            vnet_hdr,
            uso,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether packets carry a virtio-net header (offloads on).
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Reads one packet (with its virtio-net header when offloads are on) into the arena.
    pub async fn recv(&self, arena: &mut RecvArena) -> io::Result<Bytes> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read_into(fd.get_ref(), arena)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes `head` followed by `body` as one packet, as is: together they must carry a
    /// virtio-net header if the device has them. `head` may be empty.
    pub async fn send_raw(&self, head: &[u8], body: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| write_parts(fd.get_ref(), head, body)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one plain IP packet, adding an empty virtio-net header if the device needs one.
    pub async fn send_ip(&self, pkt: &[u8]) -> io::Result<()> {
        if self.vnet_hdr {
            self.send_raw(&[0u8; VNET_HDR_LEN], pkt).await
        } else {
            self.send_raw(&[], pkt).await
        }
    }
}

impl TunIo for TunDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn takes_udp_gso(&self) -> bool {
        self.uso
    }

    /// One readiness wait, then non-blocking reads (one system call per packet) until the
    /// device has nothing more or `max` packets were read. The read that finds the device empty
    /// clears its readiness, so the next call waits instead of paying that read again.
    async fn recv_batch(&self, arena: &mut RecvArena, out: &mut Vec<Bytes>, max: usize) -> io::Result<usize> {
        let max = max.max(1);
        let mut n = 0;
        loop {
            let mut guard = self.fd.readable().await?;
            while n < max {
                match guard.try_io(|fd| read_into(fd.get_ref(), arena)) {
                    Ok(Ok(pkt)) => {
                        out.push(pkt);
                        n += 1;
                    }
                    Ok(Err(e)) => return if n > 0 { Ok(n) } else { Err(e) },
                    // Empty now (readiness cleared): done if anything was read, else wait.
                    Err(_would_block) => break,
                }
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }

    async fn send_raw(&self, head: &[u8], body: &[u8]) -> io::Result<()> {
        TunDevice::send_raw(self, head, body).await
    }

    async fn send_ip(&self, pkt: &[u8]) -> io::Result<()> {
        TunDevice::send_ip(self, pkt).await
    }
}

/// Opens (creates) the TUN device `name` without registering it with a runtime: for a helper
/// that hands the descriptor to another process. Returns the descriptor and whether it carries
/// virtio-net headers (offloads on).
pub fn open_device(name: &str, offload: bool) -> Result<(OwnedFd, bool), TunError> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(TunError::NoDevice);
    }
    let fd = open(name, offload)?;
    if offload && enable_offloads(&fd).is_err() {
        tracing::warn!("kernel refused TUN offloads on {name}; using plain packets");
        // The device was opened with IFF_VNET_HDR; reopen without it.
        drop(fd);
        return Ok((open(name, false)?, false));
    }
    Ok((fd, offload))
}

fn open(name: &str, vnet_hdr: bool) -> Result<OwnedFd, TunError> {
    let mut config = tun::Configuration::default();
    config.tun_name(name);
    config.platform_config(|p| {
        p.ensure_root_privileges(false);
        p.vnet_hdr(vnet_hdr);
    });
    match tun::Device::new(&config) {
        Ok(dev) => {
            let raw = dev.into_raw_fd();
            // SAFETY: into_raw_fd hands over sole ownership of a valid, open descriptor.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        }
        Err(tun::Error::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
            if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
                return Err(TunError::DeviceAccess(e));
            }
            Err(TunError::Permission { name: name.into() })
        }
        Err(e) => Err(TunError::Create {
            name: name.into(),
            reason: e.to_string(),
        }),
    }
}

/// Turns the offloads on; `Ok(true)` if the kernel also took USO (UDP segmentation).
fn enable_offloads(fd: &OwnedFd) -> io::Result<bool> {
    let base = libc::c_ulong::from(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
    let uso = libc::c_ulong::from(TUN_F_USO4 | TUN_F_USO6);
    // SAFETY: TUNSETOFFLOAD takes an integer argument by value on a TUN descriptor we own.
    let with_uso = unsafe { tunsetoffload(fd.as_raw_fd(), base | uso) };
    if with_uso.is_ok() {
        return Ok(true);
    }
    // SAFETY: as above.
    unsafe { tunsetoffload(fd.as_raw_fd(), base) }
        .map(|_| false)
        .map_err(io::Error::from)
}

fn read_into(fd: &OwnedFd, arena: &mut RecvArena) -> io::Result<Bytes> {
    let buf = arena.spare();
    let spare = buf.chunk_mut();
    debug_assert!(spare.len() >= MAX_READ);
    // SAFETY: reading at most `spare.len()` bytes into the uninitialised tail of the buffer;
    // the kernel initialises exactly the `n` bytes it reports, and only those are committed.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel wrote `n` bytes, see above.
    unsafe { buf.advance_mut(n) };
    Ok(arena.take(n))
}

fn write_parts(fd: &OwnedFd, head: &[u8], body: &[u8]) -> io::Result<usize> {
    let result = if head.is_empty() {
        nix::unistd::write(fd, body)
    } else {
        nix::sys::uio::writev(fd, &[io::IoSlice::new(head), io::IoSlice::new(body)])
    };
    result.map_err(io::Error::from)
}

/// Registers a descriptor this process owns with the runtime's reactor (the TUN's, and the
/// duplicate of the SSH socket that the tunnel writer polls).
pub fn register_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor that stays open, and keeps returning the
    // same number, until the AsyncFd owning it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}
