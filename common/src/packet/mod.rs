//! IP packet inspection and rewriting used on the data path, and the rules the tunnel driver
//! applies to each packet (`outbound`: send path, `inbound`: receive path). No I/O.

pub mod checksum;
pub mod coalesce;
pub mod flow;
pub mod gso;
pub mod icmp;
pub mod inbound;
pub mod ip;
pub mod mss;
pub mod offload_check;
pub mod outbound;
#[cfg(test)]
mod test_rng;
pub mod vnet;

pub use ip::{IpVersion, PacketAddrs, packet_addrs};
pub use vnet::VirtioNetHdr;
