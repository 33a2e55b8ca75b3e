//! The session driver: handshake, then two loops.
//!
//! * reader: transport bytes -> frames -> (control: session state machine) / (packets: admission
//!   check, then TUN write);
//! * writer: packets queued for this peer (bounded queue filled by the TUN reader) and control
//!   messages -> one batch of frames -> one transport write.
//!
//! Both loops touch the session only for control messages, timers and once per received chunk,
//! never per packet. What is done to each packet (segmentation, MSS clamp, ICMP "too big"
//! replies, receive checks) is decided by `crate::packet::{outbound, inbound}`; the driver does
//! the I/O, the framing and the counting. The TUN is any [`TunIo`] (the Linux device, or the
//! in-memory fake in tests).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::fair_queue::FairQueue;
use super::queue::QueueReceiver;
use super::stats::TunnelStats;
use super::transport::{TransportRx, TransportTx};
use super::wire_meter::{Downstream, HandOff, SshSocket, WireMeter};
use crate::packet::PacketAddrs;
use crate::packet::VirtioNetHdr;
use crate::packet::coalesce::{Checksum, Push, UdpCoalescer};
use crate::packet::gso;
use crate::packet::inbound::{self, Reject};
use crate::packet::offload_check;
use crate::packet::outbound::{self, Action, Outbound, Plain};
use crate::proto::control::ControlError;
use crate::proto::frame::{self, FrameDecoder, FrameError, FrameType};
use crate::proto::{
    CloseCode, Control, Event, Features, Hello, Negotiated, Role, Session, SessionError, Timers, TunnelConfig,
};
use crate::tun::{RecvArena, TunIo};

/// Packets taken from the outbound queue per batch.
const BATCH_PACKETS: usize = 256;
/// A batch this small means the load is light: the batch vector shrinks back to this.
const IDLE_BATCH: usize = 16;
/// A batch is handed to the transport once it holds this many bytes.
const FLUSH_BYTES: usize = 256 * 1024;
/// ICMP replies written back to the TUN per batch at most; the rest of a burst gets none.
const MAX_REPLIES: usize = 64;
/// Initial size of the handshake's receive buffer: small, so that a session costs little; it
/// grows with the traffic. (The batch buffer is allocated per batch, at the batch's size.)
const INITIAL_BUFFER: usize = 4 * 1024;
/// Bytes a frame adds to its payload, at most.
const FRAME_OVERHEAD: usize = frame::HEADER_LEN;
/// The fair queue of [`PacketSource::FairTun`]: packets and bytes it holds at most.
const FAIR_QUEUE_PACKETS: usize = 2048;
const FAIR_QUEUE_BYTES: usize = 2 * 1024 * 1024;
/// Bytes of sparse flows' packets that go ahead of a backlog per wake-up, at most (a flow is
/// sparse for one quantum after a quiet gap: see `FairQueue::pop_sparse`).
const URGENT_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("transport error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame from peer: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed control message from peer: {0}")]
    Control(#[from] ControlError),
    #[error("{0}")]
    Session(#[from] SessionError),
    /// `reason` is the peer's text, shown escaped ([`crate::escape::for_log`]).
    #[error("peer closed the session ({code:?}): {}", crate::escape::for_log(.reason))]
    PeerClosed { code: CloseCode, reason: String },
    #[error("refused: {reason}")]
    Refused { code: CloseCode, reason: String },
    #[error("connection closed by peer")]
    Eof,
    #[error("peer stopped reading: nothing could be sent for {0:?}")]
    Stalled(Duration),
    #[error("data frame before the handshake completed")]
    EarlyData,
    #[error("offloaded (GSO) frame from a peer that did not negotiate the GSO feature")]
    UnnegotiatedGso,
    #[error("reading the tunnel interface: {0}")]
    TunRead(io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl TunnelError {
    /// The close code to send the peer for this error, if the peer should be told at all.
    fn close_code(&self) -> Option<CloseCode> {
        match self {
            TunnelError::Frame(_) | TunnelError::Control(_) | TunnelError::EarlyData | TunnelError::UnnegotiatedGso => {
                Some(CloseCode::ProtocolError)
            }
            TunnelError::Session(e) => Some(e.close_code()),
            TunnelError::Internal(_) => Some(CloseCode::Internal),
            TunnelError::Stalled(_) => Some(CloseCode::Timeout),
            _ => None,
        }
    }
}

/// Outcome of a successful handshake.
#[derive(Debug, Clone)]
pub struct Established {
    pub negotiated: Negotiated,
    /// The server's configuration (client side only).
    pub config: Option<TunnelConfig>,
}

/// What the data phase needs besides the transport.
pub struct DataPath<T> {
    pub tun: Arc<T>,
    /// Where the packets for this peer come from.
    pub outbound: PacketSource,
    /// Whether the peer may send a packet with these addresses (anti-spoofing).
    pub admit: Box<dyn Fn(&PacketAddrs) -> bool + Send + Sync>,
    pub stats: Arc<TunnelStats>,
    /// Sources of the ICMP "packet too big" errors this side injects into its TUN: the far end
    /// of the tunnel (the kernel drops injected packets whose source is one of its own addresses).
    pub icmp_sources: Vec<IpAddr>,
}

/// Where the writer takes the packets it sends to the peer, in the TUN's own format (with a
/// virtio-net header when the TUN has them).
pub enum PacketSource {
    /// A queue filled by another task (the server's switch: one TUN, many peers).
    Queue(QueueReceiver),
    /// The TUN itself, read by the writer: for a TUN with a single peer (the client). A packet
    /// goes from the TUN to the transport without a hop through another task and a queue.
    Tun,
    /// The TUN, read by the writer into a per-flow fair queue, and handed to a transport whose
    /// socket writes this meter counts one batch at a time: the standing queue of a bulk upload
    /// waits where an interactive packet can overtake it (see [`super::fair_queue`]).
    FairTun(Downstream),
}

impl From<QueueReceiver> for PacketSource {
    fn from(q: QueueReceiver) -> Self {
        PacketSource::Queue(q)
    }
}

/// The writer's side of a [`PacketSource`].
enum Source {
    Queue(QueueReceiver),
    Tun(RecvArena),
}

/// The writer's fair queue and the pacing of its hand-offs ([`PacketSource::FairTun`]).
struct Paced {
    queue: FairQueue,
    /// Segments of an offloaded packet that was too big for one batch: sent first.
    carry: VecDeque<Bytes>,
    scratch: Vec<u8>,
    meter: Arc<WireMeter>,
    socket: Option<SshSocket>,
    handoff: HandOff,
    /// Since when packets have been waiting for the socket with no progress: after the stall
    /// timeout the peer is taken to have stopped reading.
    waiting_since: Option<tokio::time::Instant>,
}

impl Paced {
    /// A batch of `bytes` went to the transport when the meter read `mark`.
    fn handed(&mut self, mark: u64, bytes: usize) {
        self.handoff.handed(Instant::now(), mark, bytes);
        if let Some(socket) = self.socket.as_mut() {
            socket.set_unsent_mark(self.handoff.unsent_mark());
        }
    }

    fn has_backlog(&self) -> bool {
        !self.queue.is_empty() || !self.carry.is_empty()
    }

    /// Splits the offloaded packet `pkt` (with its virtio-net header) into its segments, each
    /// with an empty virtio-net header, into [`Self::carry`]. False if it is not an offloaded
    /// TCP/UDP packet (it is then sent whole).
    fn split(&mut self, pkt: &Bytes) -> bool {
        let (Some(hdr), Some(ip)) = (VirtioNetHdr::decode(pkt), pkt.get(crate::tun::VNET_HDR_LEN..)) else {
            return false;
        };
        if hdr.gso_type == crate::packet::vnet::VIRTIO_NET_HDR_GSO_NONE {
            return false;
        }
        let carry = &mut self.carry;
        gso::segment(&hdr, ip, &mut self.scratch, |seg| {
            let mut framed = BytesMut::with_capacity(crate::tun::VNET_HDR_LEN + seg.len());
            framed.extend_from_slice(&[0; crate::tun::VNET_HDR_LEN]);
            framed.extend_from_slice(seg);
            carry.push_back(framed.freeze());
        })
        .is_ok()
    }

    fn may_hand_off(&mut self) -> bool {
        // A full socket is pushing back as much as a write that would not complete.
        let full = self.meter.is_blocked() || !self.socket.as_ref().is_none_or(SshSocket::has_room);
        self.handoff.ready(self.meter.written(), full)
    }

    /// Resolves when the SSH layer or its socket has made progress (`progress` was taken from the
    /// meter before [`Self::may_hand_off`] said no).
    async fn progress(&self, progress: tokio::sync::futures::Notified<'_>) {
        match &self.socket {
            Some(socket) => tokio::select! {
                _ = progress => {}
                _ = socket.room() => {}
            },
            None => progress.await,
        }
    }
}

impl Source {
    /// Appends the next packets to `batch`, waiting for at least one; `Ok(0)` means the queue
    /// is closed.
    async fn recv<T: TunIo>(&mut self, tun: &T, batch: &mut Vec<Bytes>) -> io::Result<usize> {
        match self {
            Source::Queue(q) => Ok(q.recv_many(batch, BATCH_PACKETS).await),
            Source::Tun(arena) => tun.recv_batch(arena, batch, BATCH_PACKETS).await,
        }
    }
}

struct Shared {
    session: Mutex<Session>,
    /// Signalled when the session has control messages to send.
    transmit: Notify,
}

impl Shared {
    fn session(&self) -> MutexGuard<'_, Session> {
        // A panic while holding the lock is a bug elsewhere; keep the data it protects.
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Tunnel<Rx, Tx> {
    rx: Rx,
    tx: Tx,
    rbuf: BytesMut,
    decoder: FrameDecoder,
    session: Session,
    timers: Timers,
}

/// Largest piece handed to the transport at once: the stall deadline applies per piece, so a
/// slow but live peer (a 256 KiB batch over a slow link) is not mistaken for one that stopped
/// reading.
const SEND_PIECE: usize = 64 * 1024;

/// Sends `data` in pieces, each of which must be accepted by the transport within `stall`: a peer
/// that stops reading (its SSH window or socket buffer stays full) ends the session instead of
/// blocking the writer for ever.
async fn send_bounded<Tx: TransportTx>(tx: &mut Tx, mut data: Bytes, stall: Duration) -> Result<(), TunnelError> {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(SEND_PIECE));
        let mut send = std::pin::pin!(tx.send(piece));
        // Most sends complete at once (there is room in the channel): only a send that has to
        // wait gets a deadline (arming a timer per send is measurable at high packet rates).
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(send.as_mut().poll(cx))).await;
        match first {
            std::task::Poll::Ready(r) => r?,
            std::task::Poll::Pending => match tokio::time::timeout(stall, send).await {
                Ok(r) => r?,
                Err(_) => return Err(TunnelError::Stalled(stall)),
            },
        }
    }
    Ok(())
}

impl<Rx: TransportRx, Tx: TransportTx> Tunnel<Rx, Tx> {
    pub fn new(role: Role, hello: Hello, timers: Timers, rx: Rx, tx: Tx) -> Self {
        let decoder = FrameDecoder::new(hello.max_payload as usize);
        Tunnel {
            rx,
            tx,
            rbuf: BytesMut::with_capacity(INITIAL_BUFFER),
            decoder,
            session: Session::new(role, hello, timers, Instant::now()),
            timers,
        }
    }

    async fn flush_transmits(&mut self) -> Result<(), TunnelError> {
        let mut out = BytesMut::new();
        while let Some(c) = self.session.poll_transmit() {
            c.encode_frame(&mut out);
        }
        if !out.is_empty() {
            send_bounded(&mut self.tx, out.freeze(), self.timers.dead_peer_timeout).await?;
        }
        Ok(())
    }

    /// Runs the hello exchange. On the server, `decide` turns the client's hello into its
    /// configuration, or refuses it with a close code and reason that are sent to the client.
    pub async fn handshake(
        &mut self,
        decide: impl FnMut(&Negotiated) -> Result<TunnelConfig, (CloseCode, String)>,
    ) -> Result<Established, TunnelError> {
        // The session's own handshake timer runs only between reads; this deadline also covers a
        // peer that never reads our hello (a blocked write).
        let limit = self.timers.handshake_timeout;
        let err = match tokio::time::timeout(limit, self.handshake_inner(decide)).await {
            Ok(Ok(established)) => return Ok(established),
            Ok(Err(e)) => e,
            Err(_) => TunnelError::Session(SessionError::HandshakeTimeout(limit)),
        };
        // A malformed or out-of-order message from the peer: tell it why before hanging up
        // (a refusal has been sent already; a write that blocks is not waited for long).
        if let Some(code) = err.close_code()
            && !self.session.is_closed()
        {
            self.session.close(code, err.to_string());
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush_transmits()).await;
            self.tx.finish().await;
        }
        Err(err)
    }

    async fn handshake_inner(
        &mut self,
        mut decide: impl FnMut(&Negotiated) -> Result<TunnelConfig, (CloseCode, String)>,
    ) -> Result<Established, TunnelError> {
        loop {
            self.flush_transmits().await?;
            let deadline = tokio::time::Instant::from_std(self.session.poll_timeout());
            let n = tokio::select! {
                r = self.rx.recv(&mut self.rbuf) => r?,
                _ = tokio::time::sleep_until(deadline) => {
                    self.session.handle_timeout(Instant::now())?;
                    continue;
                }
            };
            if n == 0 {
                return Err(TunnelError::Eof);
            }
            let now = Instant::now();
            // Stop decoding as soon as the session is up: what follows is data for the data phase.
            while let Some(frame) = self.decoder.decode(&mut self.rbuf)? {
                if frame.kind.is_data() {
                    return Err(TunnelError::EarlyData);
                }
                let msg = Control::decode(frame.kind, &frame.payload)?;
                self.session.handle_control(now, msg)?;
                while let Some(event) = self.session.poll_event() {
                    match event {
                        Event::ClientHello(n) => match decide(&n) {
                            Ok(config) => self.session.accept(config)?,
                            Err((code, reason)) => {
                                self.session.close(code, reason.clone());
                                self.flush_transmits().await?;
                                self.tx.finish().await;
                                return Err(TunnelError::Refused { code, reason });
                            }
                        },
                        Event::Established { negotiated, config } => {
                            self.flush_transmits().await?;
                            return Ok(Established { negotiated, config });
                        }
                        Event::Closed { code, reason } => {
                            return Err(TunnelError::PeerClosed { code, reason });
                        }
                        Event::Rtt(_) => {}
                    }
                }
            }
        }
    }

    /// Moves packets until the peer goes away, an error occurs, or `shutdown` resolves (then a
    /// close message with its code and reason is sent). Returns `Ok` only for a local shutdown
    /// or when the outbound queue is closed.
    pub async fn run<T, F>(self, data: DataPath<T>, shutdown: F) -> Result<(), TunnelError>
    where
        T: TunIo,
        F: Future<Output = (CloseCode, String)> + Send,
    {
        let Tunnel {
            rx,
            tx,
            rbuf,
            decoder,
            session,
            timers,
        } = self;
        let negotiated = session
            .negotiated()
            .cloned()
            .ok_or_else(|| TunnelError::Internal("run before handshake".into()))?;
        let shared = Arc::new(Shared {
            session: Mutex::new(session),
            transmit: Notify::new(),
        });
        let DataPath {
            tun,
            outbound,
            admit,
            stats,
            icmp_sources,
        } = data;
        let reader = Reader {
            rx,
            rbuf,
            decoder,
            shared: shared.clone(),
            delivery: Delivery {
                coalescer: tun.takes_udp_gso().then(UdpCoalescer::default),
                tun: tun.clone(),
                admit,
                stats: stats.clone(),
                gso: negotiated.features.contains(Features::GSO),
            },
        };
        let mut reader = AbortOnDrop(tokio::spawn(reader.run()));
        let (source, paced) = match outbound {
            PacketSource::Queue(q) => (Source::Queue(q), None),
            PacketSource::Tun => (Source::Tun(RecvArena::default()), None),
            PacketSource::FairTun(Downstream { meter, socket }) => (
                Source::Tun(RecvArena::default()),
                Some(Paced {
                    queue: FairQueue::new(FAIR_QUEUE_PACKETS, FAIR_QUEUE_BYTES, tun.has_vnet_hdr()),
                    carry: VecDeque::new(),
                    scratch: Vec::new(),
                    meter,
                    socket: socket
                        .map(|fd| SshSocket::new(fd, HandOff::default().unsent_mark()))
                        .transpose()?,
                    handoff: HandOff::default(),
                    waiting_since: None,
                }),
            ),
        };
        let writer = Writer {
            tx,
            shared: shared.clone(),
            source,
            paced,
            stats,
            rules: Outbound {
                vnet_hdr: tun.has_vnet_hdr(),
                peer_gso: negotiated.features.contains(Features::GSO),
                mtu: negotiated.mtu,
            },
            peer_max_payload: negotiated.peer_max_payload,
            out: BytesMut::new(),
            scratch: Vec::new(),
            tun: tun.clone(),
            icmp_sources,
            replies: Vec::new(),
            stall: timers.dead_peer_timeout,
        };
        let writer = writer.run(shutdown);
        tokio::pin!(writer);
        tokio::select! {
            r = &mut writer => r,
            // Keepalives and the dead-peer check run here, apart from the writer, so that they
            // fire even while a write is blocked on a peer that stopped reading.
            e = run_timers(&shared) => Err(e),
            r = &mut reader.0 => {
                let err = match r {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => TunnelError::Eof,
                    Err(e) => TunnelError::Internal(format!("reader task: {e}")),
                };
                if let Some(code) = err.close_code() {
                    // Tell the peer why, giving the writer a moment to send it.
                    shared.session().close(code, err.to_string());
                    shared.transmit.notify_one();
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
                }
                Err(err)
            }
        }
    }
}

/// Drives the session's timers until one of them ends the session.
async fn run_timers(shared: &Shared) -> TunnelError {
    loop {
        let deadline = tokio::time::Instant::from_std(shared.session().poll_timeout());
        tokio::time::sleep_until(deadline).await;
        let mut session = shared.session();
        if let Err(e) = session.handle_timeout(Instant::now()) {
            return e.into();
        }
        if session.pending_transmits() > 0 {
            shared.transmit.notify_one();
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Reader<Rx, T> {
    rx: Rx,
    rbuf: BytesMut,
    decoder: FrameDecoder,
    shared: Arc<Shared>,
    delivery: Delivery<T>,
}

/// The TUN side of the reader: admission check and write.
struct Delivery<T> {
    tun: Arc<T>,
    admit: Box<dyn Fn(&PacketAddrs) -> bool + Send + Sync>,
    stats: Arc<TunnelStats>,
    /// Datagrams of one flow, written together at the end of each received chunk (when the TUN
    /// takes UDP GSO super-packets).
    coalescer: Option<UdpCoalescer>,
    /// Both sides negotiated the GSO feature: offloaded frames are accepted (and checked).
    gso: bool,
}

impl<Rx: TransportRx, T: TunIo> Reader<Rx, T> {
    async fn run(mut self) -> Result<(), TunnelError> {
        loop {
            // Frames left over from the handshake's last read come first.
            let mut control = false;
            let now = Instant::now();
            while let Some(frame) = self.decoder.decode(&mut self.rbuf)? {
                match frame.kind {
                    FrameType::Ip => self.delivery.deliver(&frame.payload, false).await,
                    // An offloaded frame the peer was never offered is a protocol error: its
                    // header would go to the kernel unchecked on a TUN without offloads.
                    FrameType::Gso if !self.delivery.gso => return Err(TunnelError::UnnegotiatedGso),
                    FrameType::Gso => self.delivery.deliver(&frame.payload, true).await,
                    kind => {
                        let msg = Control::decode(kind, &frame.payload)?;
                        let mut session = self.shared.session();
                        session.handle_control(now, msg)?;
                        while let Some(event) = session.poll_event() {
                            match event {
                                Event::Closed { code, reason } => {
                                    return Err(TunnelError::PeerClosed { code, reason });
                                }
                                Event::Rtt(rtt) => self
                                    .delivery
                                    .stats
                                    .rtt_us
                                    .store(rtt.as_micros() as u64, std::sync::atomic::Ordering::Relaxed),
                                _ => {}
                            }
                        }
                        control = true;
                    }
                }
            }
            if control {
                self.shared.transmit.notify_one();
            }
            self.delivery.flush().await;
            if self.rx.recv(&mut self.rbuf).await? == 0 {
                return Err(TunnelError::Eof);
            }
            self.shared.session().handle_activity(Instant::now());
        }
    }
}

impl<T: TunIo> Delivery<T> {
    /// Checks one packet from the peer and writes it to the TUN (or holds it, to be written
    /// with the next datagrams of its flow). Bad packets are counted and dropped; they do not
    /// end the session.
    async fn deliver(&mut self, payload: &Bytes, gso: bool) {
        let (ip, addrs) = match inbound::check(payload, gso, self.tun.has_vnet_hdr()) {
            Ok(a) => (a.ip, a.addrs),
            Err(Reject::Malformed) => {
                TunnelStats::add(&self.stats.drop_malformed, 1);
                return;
            }
            Err(Reject::LocalScope) => {
                TunnelStats::add(&self.stats.drop_local_scope, 1);
                return;
            }
        };
        // The virtio-net header goes to the kernel, which completes checksums and splits
        // super-packets as it says: it must agree with the packet (hostile input).
        let hdr = if gso {
            match VirtioNetHdr::decode(payload).map(|h| offload_check::check(&h, ip).map(|()| h)) {
                Some(Ok(h)) => Some(h),
                Some(Err(e)) => {
                    tracing::debug!("dropping an offloaded frame: {e}");
                    TunnelStats::add(&self.stats.drop_bad_offload, 1);
                    return;
                }
                None => {
                    TunnelStats::add(&self.stats.drop_malformed, 1);
                    return;
                }
            }
        } else {
            None
        };
        if !(self.admit)(&addrs) {
            TunnelStats::add(&self.stats.drop_spoofed, 1);
            return;
        }
        if let Some(c) = self.coalescer.as_mut() {
            // A frame with a virtio-net header may still be a lone datagram whose checksum the
            // sender left for the kernel to complete (the usual case from a TUN with offloads).
            let csum = if let Some(h) = hdr {
                UdpCoalescer::checksum_of(&h, ip)
            } else {
                Some(Checksum::Complete)
            };
            let mut held = csum.map_or(Push::Alone, |k| c.push(ip, k));
            if held == Push::FlushFirst {
                self.flush().await;
                held = match (self.coalescer.as_mut(), csum) {
                    (Some(c), Some(k)) => c.push(ip, k),
                    _ => Push::Alone,
                };
            }
            if held == Push::Held {
                return; // counted when written
            }
            // Written on its own, after what was held (packets keep their order).
            self.flush().await;
        }
        let result = if gso {
            self.tun.send_raw(&[], payload).await
        } else {
            self.tun.send_ip(ip).await
        };
        self.count_write(result, 1, ip.len() as u64);
    }

    fn count_write(&self, result: io::Result<()>, packets: u64, bytes: u64) {
        match result {
            Ok(()) => {
                TunnelStats::add(&self.stats.rx_packets, packets);
                TunnelStats::add(&self.stats.rx_bytes, bytes);
            }
            Err(e) => {
                tracing::debug!("TUN write failed: {e}");
                TunnelStats::add(&self.stats.drop_tun_error, packets);
            }
        }
    }

    /// Writes the held datagrams, as one UDP GSO super-packet when there are several.
    async fn flush(&mut self) {
        let Some(coalescer) = self.coalescer.as_mut() else {
            return;
        };
        let (packets, bytes) = coalescer.held();
        let Some((hdr, pkt)) = coalescer.flush() else {
            return;
        };
        let result = match hdr {
            Some(hdr) => self.tun.send_raw(&hdr.to_bytes(), pkt).await,
            None => self.tun.send_ip(pkt).await,
        };
        self.count_write(result, packets, bytes);
    }
}

struct Writer<Tx, T> {
    tx: Tx,
    shared: Arc<Shared>,
    source: Source,
    /// With [`PacketSource::FairTun`]: packets wait here, not in the transport.
    paced: Option<Paced>,
    stats: Arc<TunnelStats>,
    /// The send-path rules: TUN format, peer offloads, tunnel MTU.
    rules: Outbound,
    peer_max_payload: usize,
    out: BytesMut,
    /// Reused by software segmentation and MSS clamping.
    scratch: Vec<u8>,
    /// Where ICMP replies go, and their source addresses.
    tun: Arc<T>,
    icmp_sources: Vec<IpAddr>,
    /// ICMP errors to write back to the TUN after this batch (rare).
    replies: Vec<Vec<u8>>,
    /// A write the peer does not take within this long ends the session (it stopped reading).
    stall: Duration,
}

impl<Tx: TransportTx, T: TunIo> Writer<Tx, T> {
    async fn run<F>(mut self, shutdown: F) -> Result<(), TunnelError>
    where
        F: Future<Output = (CloseCode, String)> + Send,
    {
        tokio::pin!(shutdown);
        // Grows to BATCH_PACKETS under load and shrinks back once the load is gone (256 packet
        // handles are 8 KiB: most of an idle session's share of the driver).
        let mut batch: Vec<Bytes> = Vec::new();
        let mut queue_open = true;
        loop {
            // Paced: packets that wait for the socket to take the previous batch wake the writer
            // at the socket's next progress (and end the session if there is none for too long).
            let meter = self.paced.as_ref().map(|p| p.meter.clone());
            let progress = meter.as_deref().map(WireMeter::progress);
            let (send_now, wire_deadline) = match self.paced.as_mut() {
                Some(p) if p.has_backlog() => {
                    if p.may_hand_off() {
                        p.waiting_since = None;
                        (true, None)
                    } else {
                        let since = *p.waiting_since.get_or_insert_with(tokio::time::Instant::now);
                        (false, Some(since + self.stall))
                    }
                }
                _ => (false, None),
            };
            tokio::select! {
                biased;
                (code, reason) = &mut shutdown => {
                    self.shared.session().close(code, reason);
                }
                _ = self.shared.transmit.notified() => {}
                n = self.source.recv(&*self.tun, &mut batch), if queue_open => {
                    if n.map_err(TunnelError::TunRead)? == 0 {
                        queue_open = false;
                        self.shared.session().close(CloseCode::Normal, "tunnel interface closed");
                    }
                }
                _ = std::future::ready(()), if send_now => {}
                Some(()) = async {
                    match (self.paced.as_ref(), progress) {
                        (Some(paced), Some(p)) => {
                            paced.progress(p).await;
                            Some(())
                        }
                        _ => None,
                    }
                }, if wire_deadline.is_some() => {
                    // Progress: the deadline counts from here again (a slow link is not a dead one).
                    if let Some(p) = self.paced.as_mut() {
                        p.waiting_since = None;
                    }
                }
                _ = tokio::time::sleep_until(wire_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if wire_deadline.is_some() => return Err(TunnelError::Stalled(self.stall)),
            }
            let (handoff_mark, urgent) = self.take_fair_share(&mut batch);
            let closed = {
                let mut session = self.shared.session();
                while let Some(c) = session.poll_transmit() {
                    c.encode_frame(&mut self.out);
                }
                session.is_closed()
            };
            // One allocation per batch, sized for it (frames add a few bytes per packet); the
            // buffer goes to the transport whole, so an idle session keeps none.
            let wanted: usize = batch.iter().map(|p| p.len() + FRAME_OVERHEAD).sum();
            self.out.reserve(wanted.min(FLUSH_BYTES + SEND_PIECE));
            if batch.len() < IDLE_BATCH {
                batch.shrink_to(IDLE_BATCH);
            }
            let mut handed = 0;
            for (i, pkt) in batch.drain(..).enumerate() {
                self.encode_packet(&pkt);
                // What goes ahead of the backlog goes in an SSH packet of its own: the peer can
                // decrypt it without waiting for a bulk batch to arrive whole.
                if self.out.len() >= FLUSH_BYTES || i + 1 == urgent {
                    handed += self.out.len();
                    send_bounded(&mut self.tx, self.out.split().freeze(), self.stall).await?;
                }
            }
            if !self.out.is_empty() {
                handed += self.out.len();
                send_bounded(&mut self.tx, self.out.split().freeze(), self.stall).await?;
            }
            self.out = BytesMut::new();
            if let (Some(p), Some(mark)) = (self.paced.as_mut(), handoff_mark)
                && handed > 0
            {
                p.handed(mark, handed);
            }
            for reply in self.replies.drain(..) {
                if self.tun.send_ip(&reply).await.is_err() {
                    TunnelStats::add(&self.stats.drop_tun_error, 1);
                }
            }
            if closed {
                self.tx.finish().await;
                return Ok(());
            }
        }
    }

    /// Paced: moves what was just read into the fair queue and takes out what goes now: the
    /// packets of sparse flows go at once (up to [`URGENT_BYTES`]), in an SSH packet of their own, the
    /// rest only when the socket has taken the previous batch. Returns the meter's reading at this
    /// hand-off (`None`: no batch is handed over now, or not paced) and how many packets at the
    /// front of `batch` go ahead.
    fn take_fair_share(&mut self, batch: &mut Vec<Bytes>) -> (Option<u64>, usize) {
        let Some(p) = self.paced.as_mut() else {
            return (None, 0);
        };
        let now = Instant::now();
        for pkt in batch.drain(..) {
            let dropped = p.queue.push(pkt, now);
            if dropped > 0 {
                TunnelStats::add(&self.stats.drop_queue_full, dropped as u64);
            }
        }
        let mut urgent_bytes = 0;
        while urgent_bytes < URGENT_BYTES
            && let Some(pkt) = p.queue.pop_sparse()
        {
            urgent_bytes += pkt.len();
            batch.push(pkt);
        }
        let urgent = batch.len();
        // Read the meter before looking at readiness: bytes written after this count for the batch.
        let mark = p.meter.written();
        if !p.has_backlog() || !p.may_hand_off() {
            // Control messages and new flows' packets go at once; they do not count as a batch.
            return (None, urgent);
        }
        let limit = p.handoff.batch_limit();
        let mut taken = 0;
        while taken < limit {
            let Some(pkt) = p.carry.pop_front().or_else(|| p.queue.pop()) else {
                break;
            };
            // An offloaded packet larger than a whole batch (a slow link) goes in pieces: its
            // segments, spread over the next hand-offs.
            if pkt.len() > limit && self.rules.vnet_hdr && p.split(&pkt) {
                continue;
            }
            taken += pkt.len();
            batch.push(pkt);
        }
        (Some(mark), urgent)
    }

    /// Appends one packet from the TUN as one frame, or as several when an offloaded packet must
    /// be segmented in software for a peer without offloads.
    fn encode_packet(&mut self, pkt: &[u8]) {
        match self.rules.prepare(pkt) {
            Action::Plain(plain) => self.encode_plain(plain),
            Action::Offloaded { pkt, ip_len } => self.encode_frame(FrameType::Gso, pkt, ip_len),
            Action::CompleteChecksum { hdr, ip } => {
                let mut whole = Vec::with_capacity(ip.len());
                match gso::segment(&hdr, ip, &mut self.scratch, |p| whole.extend_from_slice(p)) {
                    Ok(()) => {
                        let plain = self.rules.prepare_ip(&whole);
                        self.encode_plain(plain)
                    }
                    Err(_) => TunnelStats::add(&self.stats.drop_malformed, 1),
                }
            }
            Action::Segment { hdr, ip } => {
                let Writer {
                    out, stats, scratch, ..
                } = self;
                let result = gso::segment(&hdr, ip, scratch, |seg| {
                    frame::encode(out, FrameType::Ip, seg);
                    TunnelStats::add(&stats.tx_packets, 1);
                    TunnelStats::add(&stats.tx_bytes, seg.len() as u64);
                });
                if let Err(e) = result {
                    tracing::debug!("cannot segment offloaded packet: {e}");
                    TunnelStats::add(&self.stats.drop_malformed, 1);
                }
            }
            Action::Malformed => TunnelStats::add(&self.stats.drop_malformed, 1),
        }
    }

    /// One ordinary IP packet: as is, with its MSS clamped, or (too big for the peer) dropped
    /// and answered with an ICMP error written back to the TUN after this batch.
    fn encode_plain(&mut self, plain: Plain<'_>) {
        match plain {
            Plain::Forward(ip) => self.encode_frame(FrameType::Ip, ip, ip.len()),
            Plain::ClampMss { ip, mss } => {
                let mut pkt = std::mem::take(&mut self.scratch);
                outbound::clamp_into(ip, mss, &mut pkt);
                self.encode_frame(FrameType::Ip, &pkt, pkt.len());
                self.scratch = pkt;
            }
            Plain::TooBig(ip) => {
                TunnelStats::add(&self.stats.drop_too_big, 1);
                let mut reply = Vec::new();
                if self.replies.len() < MAX_REPLIES
                    && outbound::too_big_reply(ip, self.rules.mtu, &self.icmp_sources, &mut reply)
                {
                    self.replies.push(reply);
                }
            }
        }
    }

    fn encode_frame(&mut self, kind: FrameType, body: &[u8], ip_len: usize) {
        if body.is_empty() {
            return;
        }
        if body.len() > self.peer_max_payload {
            TunnelStats::add(&self.stats.drop_too_big, 1);
            return;
        }
        frame::encode(&mut self.out, kind, body);
        TunnelStats::add(&self.stats.tx_packets, 1);
        TunnelStats::add(&self.stats.tx_bytes, ip_len as u64);
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
