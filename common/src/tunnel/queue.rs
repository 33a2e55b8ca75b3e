//! Bounded packet queue between a TUN reader and a session's writer.
//!
//! Bounded in packets and in bytes (a 64 KiB offloaded packet weighs what it weighs), so memory
//! and queueing delay stay bounded whatever the packet mix. The server's switch uses `try_push`
//! (a full queue drops the packet: one slow client never stalls the others); the client's TUN
//! reader uses `push` (it waits, and the kernel's TUN queue drops instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

struct Budget {
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Signalled when the consumer frees bytes.
    freed: Notify,
}

#[derive(Clone)]
pub struct QueueSender {
    tx: mpsc::Sender<Bytes>,
    budget: Arc<Budget>,
}

pub struct QueueReceiver {
    rx: mpsc::Receiver<Bytes>,
    budget: Arc<Budget>,
}

/// A queue of at most `max_packets` packets and `max_bytes` bytes.
pub fn packet_queue(max_packets: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::channel(max_packets.max(1));
    let budget = Arc::new(Budget {
        bytes: AtomicUsize::new(0),
        max_bytes,
        freed: Notify::new(),
    });
    (
        QueueSender {
            tx,
            budget: budget.clone(),
        },
        QueueReceiver { rx, budget },
    )
}

impl std::fmt::Debug for QueueSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSender")
            .field("queued_bytes", &self.queued_bytes())
            .finish()
    }
}

impl QueueSender {
    fn reserve_bytes(&self, len: usize) -> bool {
        let b = &self.budget;
        let mut cur = b.bytes.load(Ordering::Relaxed);
        loop {
            // One packet always fits into an empty queue.
            if cur != 0 && cur + len > b.max_bytes {
                return false;
            }
            match b
                .bytes
                .compare_exchange_weak(cur, cur + len, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Queues `pkt` unless the queue is full; gives it back if so.
    pub fn try_push(&self, pkt: Bytes) -> Result<(), Bytes> {
        let len = pkt.len();
        if !self.reserve_bytes(len) {
            return Err(pkt);
        }
        self.tx.try_send(pkt).map_err(|e| {
            self.budget.bytes.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            }
        })
    }

    /// Queues `pkt`, waiting for room. Fails only if the receiver is gone.
    pub async fn push(&self, pkt: Bytes) -> Result<(), Bytes> {
        let len = pkt.len();
        loop {
            let freed = self.budget.freed.notified();
            if self.reserve_bytes(len) {
                break;
            }
            if self.tx.is_closed() {
                return Err(pkt);
            }
            freed.await;
        }
        self.tx.send(pkt).await.map_err(|e| {
            self.budget.bytes.fetch_sub(len, Ordering::AcqRel);
            e.0
        })
    }

    pub fn queued_bytes(&self) -> usize {
        self.budget.bytes.load(Ordering::Relaxed)
    }

    /// Whether the receiver is gone: nothing pushed will be read any more.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl QueueReceiver {
    /// Takes up to `limit` packets, waiting for at least one; 0 means all senders are gone.
    pub async fn recv_many(&mut self, out: &mut Vec<Bytes>, limit: usize) -> usize {
        let start = out.len();
        let n = self.rx.recv_many(out, limit).await;
        let bytes: usize = out[start..].iter().map(Bytes::len).sum();
        if bytes > 0 {
            self.budget.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.budget.freed.notify_waiters();
        }
        n
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        self.rx.close();
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_by_packets_and_bytes() {
        let (tx, mut rx) = packet_queue(4, 1000);
        assert!(tx.try_push(Bytes::from(vec![0; 600])).is_ok());
        assert!(tx.try_push(Bytes::from(vec![0; 600])).is_err(), "byte budget");
        assert!(tx.try_push(Bytes::from(vec![0; 100])).is_ok());
        assert!(tx.try_push(Bytes::from(vec![0; 100])).is_ok());
        assert!(tx.try_push(Bytes::from(vec![0; 100])).is_ok());
        assert!(tx.try_push(Bytes::from(vec![0; 10])).is_err(), "packet budget");
        assert_eq!(tx.queued_bytes(), 900);
        let mut out = Vec::new();
        assert_eq!(rx.recv_many(&mut out, 10).await, 4);
        assert_eq!(tx.queued_bytes(), 0);
        // An oversized packet still fits into an empty queue.
        assert!(tx.try_push(Bytes::from(vec![0; 5000])).is_ok());
    }

    #[tokio::test]
    async fn push_waits_for_room() {
        let (tx, mut rx) = packet_queue(8, 100);
        tx.push(Bytes::from(vec![0; 80])).await.unwrap();
        let waiter = tokio::spawn(async move { tx.push(Bytes::from(vec![0; 80])).await.is_ok() });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut out = Vec::new();
        rx.recv_many(&mut out, 8).await;
        assert!(waiter.await.unwrap());
        out.clear();
        assert_eq!(rx.recv_many(&mut out, 8).await, 1);
        drop(rx);
    }
}
