//! IP packet inspection and rewriting used on the data path. No I/O.

pub mod gso;
pub mod icmp;
pub mod ip;
pub mod mss;
#[cfg(test)]
mod test_rng;
pub mod vnet;

pub use ip::{IpVersion, PacketAddrs, packet_addrs};
pub use vnet::VirtioNetHdr;
