//! IP packet inspection and rewriting used on the data path. No I/O.

pub mod ip;

pub use ip::{IpVersion, PacketAddrs, packet_addrs};
