//! How far the SSH layer has got with what the tunnel gave it: a byte stream wrapper that counts
//! what was written to the socket and whether the socket is pushing back.
//!
//! russh takes data from the tunnel's writer into a queue of its own and writes it to the socket
//! in order; the writer cannot reorder anything once it is there. So the writer hands over a
//! batch only when the previous one has reached the socket (see `HandOff`) and the socket holds
//! little that it has not sent yet ([`SshSocket`]), and keeps the rest in its fair queue, where an
//! interactive packet can still overtake a bulk transfer.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// What the writer watches to pace its hand-offs to the SSH layer.
#[derive(Debug)]
pub struct Downstream {
    /// Counts what the SSH layer writes to its socket.
    pub meter: Arc<WireMeter>,
    /// A duplicate of the SSH socket's descriptor, on which `TCP_NOTSENT_LOWAT` is set: it polls
    /// writable while its unsent bytes are below half of that mark (Linux's `tcp_poll`).
    pub socket: Option<OwnedFd>,
}

/// The SSH socket as the writer watches it (see [`Downstream::socket`]).
pub struct SshSocket {
    fd: AsyncFd<OwnedFd>,
    /// The `TCP_NOTSENT_LOWAT` set last.
    unsent_mark: u32,
}

impl SshSocket {
    /// Registers the descriptor with the runtime (it is only polled, never read or written).
    pub fn new(fd: OwnedFd, unsent_mark: u32) -> io::Result<Self> {
        let mut socket = SshSocket {
            fd: crate::tun::register_fd(fd, tokio::io::Interest::WRITABLE)?,
            unsent_mark: 0,
        };
        socket.set_unsent_mark(unsent_mark);
        Ok(socket)
    }

    /// Sets how many unsent bytes the socket may hold before it stops polling writable (twice
    /// what it holds when it starts polling writable again).
    pub fn set_unsent_mark(&mut self, bytes: u32) {
        if bytes != self.unsent_mark {
            let sock = socket2::SockRef::from(self.fd.get_ref());
            if let Err(e) = sock.set_tcp_notsent_lowat(bytes) {
                tracing::debug!("cannot set TCP_NOTSENT_LOWAT: {e}");
            }
            self.unsent_mark = bytes;
        }
    }

    /// Whether the socket's unsent queue is short now.
    pub fn has_room(&self) -> bool {
        let mut fds = [PollFd::new(self.fd.get_ref().as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::ZERO) {
            // An error or hang-up is the SSH layer's to report: do not hold packets back for it.
            Ok(n) if n > 0 => fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLOUT | PollFlags::POLLERR | PollFlags::POLLHUP)),
            Ok(_) => false,
            Err(_) => true,
        }
    }

    /// Resolves when the socket may have room again (an edge of its writability).
    pub async fn room(&self) {
        match self.fd.writable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => std::future::pending().await,
        }
    }
}

/// Shared between the stream wrapper (in the SSH layer's task) and the tunnel's writer.
#[derive(Debug, Default)]
pub struct WireMeter {
    written: AtomicU64,
    /// The last write found the socket full (it returned `Pending`).
    blocked: AtomicBool,
    /// The writer waits for progress: the next write wakes it.
    wanted: AtomicBool,
    progress: Notify,
}

impl WireMeter {
    pub fn new() -> Arc<Self> {
        Arc::new(WireMeter::default())
    }

    /// Bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether the socket pushed back on the last write and has not taken anything since.
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// Resolves at the next write to the socket after this call. Create it before checking
    /// [`Self::written`] and [`Self::is_blocked`], so that no progress is missed in between.
    pub fn progress(&self) -> tokio::sync::futures::Notified<'_> {
        let notified = self.progress.notified();
        self.wanted.store(true, Ordering::Release);
        notified
    }

    fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::AcqRel);
        self.blocked.store(false, Ordering::Release);
        if self.wanted.swap(false, Ordering::AcqRel) {
            self.progress.notify_waiters();
        }
    }

    fn pushed_back(&self) {
        self.blocked.store(true, Ordering::Release);
    }
}

/// A stream whose writes are counted into a [`WireMeter`]; reads pass through.
pub struct MeteredStream<S> {
    inner: S,
    meter: Arc<WireMeter>,
}

impl<S> MeteredStream<S> {
    pub fn new(inner: S, meter: Arc<WireMeter>) -> Self {
        MeteredStream { inner, meter }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MeteredStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> MeteredStream<S> {
    fn count(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &r {
            Poll::Ready(Ok(n)) => self.meter.wrote(*n),
            Poll::Pending => self.meter.pushed_back(),
            Poll::Ready(Err(_)) => self.meter.wrote(0),
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MeteredStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When the writer may hand the SSH layer its next batch, and how much may wait in front of a
/// new packet: pure bookkeeping over what the [`WireMeter`] reports.
///
/// A batch may go when the previous one has reached the socket (the socket has taken at least
/// that many bytes since the hand-off) and the socket is not pushing back. Both the batch and the
/// socket's unsent bytes are sized in time at the rate the socket drains: a fast link gets big
/// batches (few wake-ups), a slow one small batches and a short unsent queue, so what an
/// interactive packet waits behind stays under a millisecond or so.
#[derive(Debug, Clone, Default)]
pub struct HandOff {
    /// `written` must reach this before the next batch goes.
    until: u64,
    /// Start of the current rate window: when, and `written` then.
    window: Option<(Instant, u64)>,
    /// Bytes per second the socket drains, as last measured; `None` until the first window is
    /// over: as if fast, so that a bulk transfer starts at full speed.
    rate: Option<f64>,
    /// Packets waited for the socket in the current window: what it drained is the link's rate,
    /// not how much there was to send.
    waited: bool,
}

/// A batch holds about this long of the drain rate...
const BATCH_TIME: f64 = 0.000_5;
/// ...and the socket's unsent queue about this long.
const UNSENT_TIME: f64 = 0.000_25;
const MIN_BATCH: usize = 8 * 1024;
const MAX_BATCH: usize = 256 * 1024;
const MIN_UNSENT: u32 = 4 * 1024;
const MAX_UNSENT: u32 = 128 * 1024;
/// A drain rate above this (bytes per second) counts as fast: the largest budgets.
const FAST: f64 = 4e9;
/// The drain rate is measured over windows of this long.
const RATE_WINDOW: Duration = Duration::from_millis(10);

impl HandOff {
    /// The most bytes the next batch may hold.
    pub fn batch_limit(&self) -> usize {
        self.rate
            .map_or(MAX_BATCH, |r| ((r * BATCH_TIME) as usize).clamp(MIN_BATCH, MAX_BATCH))
    }

    /// The `TCP_NOTSENT_LOWAT` for the socket, a power of two (so that it changes rarely).
    pub fn unsent_mark(&self) -> u32 {
        let Some(rate) = self.rate else {
            return MAX_UNSENT;
        };
        let want = (rate * UNSENT_TIME).min(f64::from(MAX_UNSENT)) as u32;
        want.next_power_of_two().clamp(MIN_UNSENT, MAX_UNSENT)
    }

    /// Whether the previous batch has reached the socket, given the meter's readings now:
    /// `written`, and whether the socket pushes back (`blocked`: a write did not complete, or it
    /// holds too much unsent).
    /// Called only while packets wait to be handed over.
    pub fn ready(&mut self, written: u64, blocked: bool) -> bool {
        let ready = written >= self.until && !blocked;
        self.waited |= !ready;
        ready
    }

    /// A batch of `bytes` was handed over at `now`, when the meter read `written`.
    pub fn handed(&mut self, now: Instant, written: u64, bytes: usize) {
        self.until = written + bytes as u64;
        match self.window {
            None => self.window = Some((now, written)),
            Some((start, at)) => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= RATE_WINDOW {
                    let measured = (written - at) as f64 / elapsed.as_secs_f64();
                    self.rate = if self.waited {
                        // The link was the limit: this is its rate (halving at most per window,
                        // so that one bad window does not shrink the batches to nothing).
                        Some(self.rate.map_or(measured, |old| measured.max(old / 2.0)))
                    } else {
                        // Nothing waited for the link: it is faster than what was sent.
                        self.rate.map(|old| old.max(measured) * 2.0).filter(|&r| r < FAST)
                    };
                    self.waited = false;
                    self.window = Some((now, written));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn hand_off_waits_for_the_socket() {
        let mut h = HandOff::default();
        assert!(h.ready(0, false), "nothing handed yet");
        let t = Instant::now();
        h.handed(t, 0, 1000);
        assert!(!h.ready(500, false), "half of it written");
        assert!(!h.ready(1000, true), "written, but the socket pushes back");
        assert!(h.ready(1200, false));
    }

    #[test]
    fn budgets_follow_the_drain_rate() {
        let mut h = HandOff::default();
        assert_eq!(
            (h.batch_limit(), h.unsent_mark()),
            (MAX_BATCH, MAX_UNSENT),
            "fast until measured"
        );
        let t = Instant::now();
        // 100 Mbit/s: 12.5 MB/s, 125 000 bytes per 10 ms, with packets waiting for the link.
        h.handed(t, 0, 0);
        assert!(!h.ready(0, true));
        h.handed(t + RATE_WINDOW, 125_000, 0);
        assert_eq!(h.batch_limit(), MIN_BATCH, "6 KB of batch at 0.5 ms: the minimum");
        assert_eq!(h.unsent_mark(), 4096);
        // A window in which nothing waited for the link: the estimate doubles.
        h.handed(t + RATE_WINDOW * 2, 250_000, 0);
        assert_eq!(h.unsent_mark(), 8192, "25 MB/s * 0.25 ms = 6 KB: 8 KiB");
        // 6 Gbit/s with packets waiting: 750 MB/s.
        assert!(!h.ready(0, true));
        h.handed(t + RATE_WINDOW * 3, 250_000 + 7_500_000, 0);
        assert_eq!(h.batch_limit(), MAX_BATCH, "375 KB: capped");
        assert_eq!(h.unsent_mark(), MAX_UNSENT);
        // A window in which the link drained little while packets waited halves it at most.
        assert!(!h.ready(0, true));
        h.handed(t + RATE_WINDOW * 4, 250_000 + 7_500_000, 0);
        assert_eq!(h.batch_limit(), ((375e6 * BATCH_TIME) as usize).min(MAX_BATCH));
        // Fast enough, long enough: back to "fast".
        for w in 5..12 {
            h.handed(t + RATE_WINDOW * w, 250_000 + 7_500_000, 0);
        }
        assert_eq!((h.batch_limit(), h.unsent_mark()), (MAX_BATCH, MAX_UNSENT));
    }

    #[tokio::test]
    async fn metered_stream_counts_writes_and_pushback() {
        let meter = WireMeter::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = MeteredStream::new(a, meter.clone());
        s.write_all(b"hello").await.unwrap();
        assert_eq!(meter.written(), 5);
        assert!(!meter.is_blocked());
        // Fill the pipe: the next write is pushed back until the other end reads.
        s.write_all(&[0u8; 59]).await.unwrap();
        let progress = meter.progress();
        let writer = tokio::spawn(async move {
            s.write_all(b"more").await.unwrap();
            s
        });
        tokio::task::yield_now().await;
        assert!(meter.is_blocked());
        let mut sink = [0u8; 64];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut sink).await.unwrap();
        progress.await;
        let _s = writer.await.unwrap();
        assert_eq!(meter.written(), 68);
        assert!(!meter.is_blocked());
    }
}
