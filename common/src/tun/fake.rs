//! An in-memory TUN device for tests (wireguard-go's `tuntest`): a pair of queues. What a test
//! injects is what the device "reads" (the packets the kernel would route into the tunnel);
//! what the data path writes to the device is captured for the test to take. No root, no kernel.
//!
//! Packets are in the device's format, as with [`super::TunDevice`]: with a virtio-net header in
//! front when the fake was made with `vnet_hdr`, plain IP packets otherwise. The fake does not
//! validate what is written to it (the kernel would); tests check what they take.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{RecvArena, TunIo, VNET_HDR_LEN};

/// The in-memory TUN device; share it with `Arc` between the data path and the test.
#[derive(Debug)]
pub struct FakeTun {
    name: String,
    vnet_hdr: bool,
    udp_gso: bool,
    /// Injected packets waiting to be read; `None` once [`FakeTun::close`] was called.
    to_read_tx: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    to_read_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    written_tx: mpsc::UnboundedSender<Bytes>,
    written_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    fail_writes: AtomicBool,
}

impl FakeTun {
    /// A fake device named `name`; with `vnet_hdr`, its packets carry a virtio-net header.
    pub fn new(name: &str, vnet_hdr: bool) -> FakeTun {
        let (to_read_tx, to_read_rx) = mpsc::unbounded_channel();
        let (written_tx, written_rx) = mpsc::unbounded_channel();
        FakeTun {
            name: name.to_string(),
            vnet_hdr,
            udp_gso: false,
            to_read_tx: Mutex::new(Some(to_read_tx)),
            to_read_rx: tokio::sync::Mutex::new(to_read_rx),
            written_tx,
            written_rx: tokio::sync::Mutex::new(written_rx),
            fail_writes: AtomicBool::new(false),
        }
    }

    /// A fake with virtio-net headers that also takes UDP GSO super-packets (as a kernel with
    /// USO does).
    pub fn with_udp_gso(name: &str) -> FakeTun {
        FakeTun {
            udp_gso: true,
            ..FakeTun::new(name, true)
        }
    }

    /// Queues `pkt`, in the device's format, to be read from the device. Returns false if the
    /// device was closed.
    pub fn inject(&self, pkt: impl Into<Bytes>) -> bool {
        let guard = self.to_read_tx.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().is_some_and(|tx| tx.send(pkt.into()).is_ok())
    }

    /// Queues a plain IP packet to be read, with an empty virtio-net header in front if the
    /// device has them.
    pub fn inject_ip(&self, ip: &[u8]) -> bool {
        if self.vnet_hdr {
            let mut pkt = Vec::with_capacity(VNET_HDR_LEN + ip.len());
            pkt.extend_from_slice(&[0; VNET_HDR_LEN]);
            pkt.extend_from_slice(ip);
            self.inject(pkt)
        } else {
            self.inject(Bytes::copy_from_slice(ip))
        }
    }

    /// Ends reading: once the injected packets are read, reads fail (like a device that is gone).
    pub fn close(&self) {
        self.to_read_tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Makes every following write fail (`true`) or succeed again (`false`).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::Relaxed);
    }

    /// Waits for the next packet written to the device, in the device's format.
    pub async fn next_written(&self) -> Bytes {
        // The sending half lives in `self`, so the channel never ends while we wait.
        match self.written_rx.lock().await.recv().await {
            Some(pkt) => pkt,
            None => std::future::pending().await,
        }
    }

    /// Waits for the next packet written to the device and returns its IP packet (the
    /// virtio-net header, if any, removed).
    pub async fn next_written_ip(&self) -> Bytes {
        let pkt = self.next_written().await;
        if self.vnet_hdr {
            pkt.slice(VNET_HDR_LEN.min(pkt.len())..)
        } else {
            pkt
        }
    }

    /// Every packet written so far and not yet taken, without waiting (nothing while another
    /// task waits in [`FakeTun::next_written`]).
    pub fn take_written(&self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let Ok(mut rx) = self.written_rx.try_lock() {
            while let Ok(pkt) = rx.try_recv() {
                out.push(pkt);
            }
        }
        out
    }
}

impl TunIo for FakeTun {
    fn name(&self) -> &str {
        &self.name
    }

    fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn takes_udp_gso(&self) -> bool {
        self.udp_gso
    }

    /// The arena is not used: injected packets are handed over as they are.
    async fn recv_batch(&self, _arena: &mut RecvArena, out: &mut Vec<Bytes>, max: usize) -> io::Result<usize> {
        let mut rx = self.to_read_rx.lock().await;
        match rx.recv_many(out, max.max(1)).await {
            0 => Err(io::Error::new(io::ErrorKind::BrokenPipe, "fake TUN closed")),
            n => Ok(n),
        }
    }

    async fn send_raw(&self, head: &[u8], body: &[u8]) -> io::Result<()> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(io::Error::other("fake TUN write failure"));
        }
        let mut pkt = Vec::with_capacity(head.len() + body.len());
        pkt.extend_from_slice(head);
        pkt.extend_from_slice(body);
        // The receiving half lives in `self`: the send cannot fail.
        let _ = self.written_tx.send(Bytes::from(pkt));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_what_was_injected_in_batches_and_captures_writes() {
        let tun = FakeTun::new("fake0", false);
        for i in 0..5u8 {
            assert!(tun.inject(vec![0x45, i]));
        }
        let mut arena = RecvArena::default();
        let mut out = Vec::new();
        assert_eq!(tun.recv_batch(&mut arena, &mut out, 3).await.unwrap(), 3);
        assert_eq!(tun.recv_batch(&mut arena, &mut out, 10).await.unwrap(), 2);
        assert_eq!(out.iter().map(|p| p[1]).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);

        tun.send_ip(b"ip").await.unwrap();
        tun.send_raw(b"he", b"llo").await.unwrap();
        assert_eq!(&tun.next_written().await[..], b"ip");
        assert_eq!(tun.take_written(), vec![Bytes::from_static(b"hello")]);

        tun.fail_writes(true);
        assert!(tun.send_ip(b"x").await.is_err());
        assert!(tun.take_written().is_empty());

        tun.close();
        assert!(!tun.inject(vec![1]));
        assert!(tun.recv_batch(&mut arena, &mut out, 1).await.is_err());
    }

    #[tokio::test]
    async fn vnet_mode_adds_and_strips_the_header() {
        let tun = FakeTun::new("fake1", true);
        assert!(tun.has_vnet_hdr());
        tun.inject_ip(&[0x45, 7]);
        let mut out = Vec::new();
        tun.recv_batch(&mut RecvArena::default(), &mut out, 1).await.unwrap();
        assert_eq!(out[0].len(), VNET_HDR_LEN + 2);
        tun.send_ip(&[0x45, 9]).await.unwrap();
        assert_eq!(&tun.next_written_ip().await[..], &[0x45, 9]);
    }
}
