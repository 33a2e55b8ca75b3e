//! Drives a [`crate::proto::Session`] over a byte-stream transport and moves packets between
//! it and a TUN device (any [`crate::tun::TunIo`]). One implementation serves client and server
//! and every transport.

pub mod driver;
pub mod fair_queue;
pub mod feed;
pub mod open;
pub mod queue;
pub mod stats;
pub mod transport;
pub mod wire_meter;

pub use driver::{DataPath, Established, PacketSource, Tunnel, TunnelError};
pub use feed::{WhenFull, feed_queue};
pub use open::{SessionOptions, open};
pub use queue::{QueueReceiver, QueueSender, packet_queue};
pub use stats::{StatsSnapshot, TunnelStats};
pub use transport::{ChannelRx, ChannelTx, StreamRx, StreamTx, TransportRx, TransportTx};
pub use wire_meter::{MeteredStream, WireMeter};
