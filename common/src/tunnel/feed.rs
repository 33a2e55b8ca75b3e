//! Reads a TUN into one peer's outbound queue: the TUN side of a tunnel with a single peer, over
//! any [`TunIo`] (driver tests over the in-memory fake, tools). The server's switch does the same
//! for many peers; the client's reader also follows reconnects.

use std::io;

use crate::tun::{RecvArena, TunIo};

use super::queue::QueueSender;
use super::stats::TunnelStats;

/// Packets read from the TUN per batch.
const BATCH: usize = 256;

/// What to do with a packet when the peer's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for room (the client's way: the kernel's TUN queue drops instead).
    Wait,
    /// Drop the packet and count it in `drop_queue_full` (the server's way: one slow peer never
    /// stalls the reader).
    Drop,
}

/// Moves packets from `tun` into `queue` until the queue's receiver is gone (`Ok`) or the TUN
/// fails (`Err`).
pub async fn feed_queue<T: TunIo>(
    tun: &T,
    queue: &QueueSender,
    stats: &TunnelStats,
    when_full: WhenFull,
) -> io::Result<()> {
    let mut arena = RecvArena::default();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tun.recv_batch(&mut arena, &mut batch, BATCH).await?;
        for pkt in batch.drain(..) {
            let delivered = match when_full {
                WhenFull::Wait => queue.push(pkt).await.is_ok(),
                WhenFull::Drop => {
                    if queue.try_push(pkt).is_err() {
                        TunnelStats::add(&stats.drop_queue_full, 1);
                    }
                    !queue.is_closed()
                }
            };
            if !delivered {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tun::fake::FakeTun;
    use crate::tunnel::queue::packet_queue;

    #[tokio::test]
    async fn drops_and_counts_when_full_and_ends_when_the_receiver_is_gone() {
        let tun = FakeTun::new("fake0", false);
        let stats = TunnelStats::default();
        let (queue, mut rx) = packet_queue(2, 1 << 20);
        for i in 0..5u8 {
            tun.inject(vec![0x45, i]);
        }
        let feed = feed_queue(&tun, &queue, &stats, WhenFull::Drop);
        tokio::pin!(feed);
        // Runs until it waits for more packets.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut feed)
                .await
                .is_err()
        );
        assert_eq!(stats.snapshot().drop_queue_full, 3);
        let mut got = Vec::new();
        rx.recv_many(&mut got, 10).await;
        assert_eq!(got.iter().map(|p| p[1]).collect::<Vec<_>>(), [0, 1]);
        drop(rx);
        tun.inject(vec![0x45, 9]);
        assert!(feed.await.is_ok());
    }

    #[tokio::test]
    async fn a_closed_tun_is_an_error() {
        let tun = FakeTun::new("fake0", false);
        let (queue, _rx) = packet_queue(2, 1 << 20);
        tun.close();
        let r = feed_queue(&tun, &queue, &TunnelStats::default(), WhenFull::Wait).await;
        assert!(r.is_err());
    }
}
