//! One session setup for both ends: from what an end offers (its TUN's offload support, MTU,
//! frame limit, timers) to the [`Hello`] it sends and a [`Tunnel`] ready for its handshake. The
//! client, the server and the load generator open their sessions here, so the offer is built in
//! one place. This module must not do I/O or decide policy (what the server pushes, what a
//! client accepts).

use crate::proto::frame::DEFAULT_MAX_PAYLOAD;
use crate::proto::{Features, Hello, Role, Timers};
use crate::tunnel::driver::Tunnel;
use crate::tunnel::transport::{TransportRx, TransportTx};

/// What one end offers when it opens a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The TUN moves virtio-net headers (offloads are on): GSO is offered when the frame limit
    /// also takes the 64 KiB packets it carries.
    pub vnet_hdr: bool,
    /// Largest IP packet this end accepts on its TUN.
    pub mtu: u16,
    /// Largest frame payload this end accepts.
    pub max_payload: u32,
    pub timers: Timers,
    /// Client only: tags concurrent sessions of one identity (`sshvpn exec`).
    pub instance: Option<String>,
}

impl Default for SessionOptions {
    /// No offloads, MTU 1500, the default frame limit and timers.
    fn default() -> Self {
        SessionOptions {
            vnet_hdr: false,
            mtu: 1500,
            max_payload: DEFAULT_MAX_PAYLOAD as u32,
            timers: Timers::default(),
            instance: None,
        }
    }
}

impl SessionOptions {
    /// The features this end offers.
    pub fn features(&self) -> Features {
        // Offloaded frames carry up to 64 KiB packets: only with a frame limit that takes them.
        if self.vnet_hdr && self.max_payload as usize >= DEFAULT_MAX_PAYLOAD {
            Features::GSO
        } else {
            Features::default()
        }
    }

    /// The hello this end sends.
    pub fn hello(&self) -> Hello {
        Hello {
            max_payload: self.max_payload,
            instance: self.instance.clone(),
            ..Hello::new(self.features(), self.mtu)
        }
    }
}

/// A session over `rx`/`tx`, ready for [`Tunnel::handshake`].
pub fn open<Rx: TransportRx, Tx: TransportTx>(role: Role, options: SessionOptions, rx: Rx, tx: Tx) -> Tunnel<Rx, Tx> {
    Tunnel::new(role, options.hello(), options.timers, rx, tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_is_offered_only_with_vnet_headers_and_a_frame_limit_that_takes_64k() {
        let plain = SessionOptions::default();
        assert_eq!(plain.features(), Features::default());
        assert_eq!(plain.hello(), Hello::new(Features::default(), 1500));
        let offload = SessionOptions {
            vnet_hdr: true,
            instance: Some("exec-1".into()),
            mtu: 9000,
            ..SessionOptions::default()
        };
        assert_eq!(offload.features(), Features::GSO);
        let hello = offload.hello();
        assert_eq!((hello.mtu, hello.instance.as_deref()), (9000, Some("exec-1")));
        let small_frames = SessionOptions {
            vnet_hdr: true,
            max_payload: 16 * 1024,
            ..SessionOptions::default()
        };
        assert_eq!(small_frames.features(), Features::default());
        assert_eq!(small_frames.hello().max_payload, 16 * 1024);
    }
}
