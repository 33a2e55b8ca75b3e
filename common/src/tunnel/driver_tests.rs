//! Driver tests without root: two [`Tunnel`]s over an in-memory transport (a tokio duplex pipe),
//! each with an in-memory TUN ([`FakeTun`]). Timers are short real timers (the session reads the
//! system clock, so tokio's paused clock would not move it).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::packet::VirtioNetHdr;
use crate::packet::checksum::{checksum_add, checksum_fold};
use crate::packet::outbound::tests::{mss_of, tcp_syn};
use crate::packet::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
use crate::tun::VNET_HDR_LEN;
use crate::tun::fake::FakeTun;
use crate::tunnel::feed::{WhenFull, feed_queue};
use crate::tunnel::queue::{QueueSender, packet_queue};
use crate::tunnel::transport::{StreamRx, StreamTx};
use crate::tunnel::wire_meter::{Downstream, WireMeter};

const CLIENT_ADDR: [u8; 4] = [10, 9, 0, 2];
const SERVER_ADDR: [u8; 4] = [10, 9, 0, 1];
/// Long enough for anything the tests wait for; a failing test fails at this deadline.
const PATIENCE: Duration = Duration::from_secs(5);

/// A transport half that can be told to stop reading: a peer whose SSH window stays shut.
struct StallableRx {
    inner: StreamRx<ReadHalf<DuplexStream>>,
    stalled: Arc<AtomicBool>,
}

impl TransportRx for StallableRx {
    async fn recv(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if self.stalled.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        self.inner.recv(buf).await
    }
}

type Rx = StallableRx;
type Tx = StreamTx<WriteHalf<DuplexStream>>;

/// One side's settings.
#[derive(Clone, Copy)]
struct Side {
    vnet_hdr: bool,
    features: Features,
    mtu: u16,
    timers: Timers,
    /// Outbound queue size in packets.
    queue: usize,
    when_full: WhenFull,
    /// The writer reads the TUN itself (the client's way) instead of a queue fed by a reader.
    direct: bool,
    /// The fake TUN takes UDP GSO super-packets (implies `vnet_hdr`).
    udp_gso: bool,
}

impl Default for Side {
    fn default() -> Self {
        Side {
            vnet_hdr: false,
            features: Features::default(),
            mtu: 1400,
            timers: Timers {
                handshake_timeout: Duration::from_secs(5),
                keepalive_interval: Duration::from_millis(200),
                dead_peer_timeout: Duration::from_secs(5),
            },
            queue: 1024,
            when_full: WhenFull::Wait,
            direct: false,
            udp_gso: false,
        }
    }
}

/// One running end: its fake TUN, counters, queue (for the TUN reader) and the driver task.
struct End {
    tun: Arc<FakeTun>,
    stats: Arc<TunnelStats>,
    queue: QueueSender,
    /// Set to make this end stop reading its transport.
    stalled: Arc<AtomicBool>,
    run: JoinHandle<Result<(), TunnelError>>,
    _stop: oneshot::Sender<()>,
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

/// Runs the hello exchange of a client and a server tunnel against each other.
async fn handshake_both<R1: TransportRx, T1: TransportTx, R2: TransportRx, T2: TransportTx>(
    c: &mut Tunnel<R1, T1>,
    s: &mut Tunnel<R2, T2>,
) {
    let (ce, se) = tokio::join!(
        c.handshake(|_| Err((CloseCode::ProtocolError, "not a server".into()))),
        s.handshake(|_| Ok(TunnelConfig::default())),
    );
    ce.expect("client handshake");
    se.expect("server handshake");
}

/// Connects a client and a server tunnel over a duplex pipe of `pipe` bytes per direction and
/// runs the handshake.
async fn connect(client: Side, server: Side, pipe: usize) -> (Tunnel<Rx, Tx>, Tunnel<Rx, Tx>, [Arc<AtomicBool>; 2]) {
    let (c_io, s_io) = tokio::io::duplex(pipe);
    let (c_rx, c_tx) = tokio::io::split(c_io);
    let (s_rx, s_tx) = tokio::io::split(s_io);
    let flags = [Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))];
    let rx = |r, f: &Arc<AtomicBool>| StallableRx {
        inner: StreamRx(r),
        stalled: f.clone(),
    };
    let mut c = Tunnel::new(
        Role::Client,
        Hello::new(client.features, client.mtu),
        client.timers,
        rx(c_rx, &flags[0]),
        StreamTx(c_tx),
    );
    let mut s = Tunnel::new(
        Role::Server,
        Hello::new(server.features, server.mtu),
        server.timers,
        rx(s_rx, &flags[1]),
        StreamTx(s_tx),
    );
    handshake_both(&mut c, &mut s).await;
    (c, s, flags)
}

/// Starts the data phase of one end: a fake TUN read into its queue, the driver over it.
/// `peer`: the one address the peer may send from, and the source of ICMP replies.
fn start(tunnel: Tunnel<Rx, Tx>, side: Side, stalled: Arc<AtomicBool>, peer: IpAddr) -> End {
    let tun = Arc::new(if side.udp_gso {
        FakeTun::with_udp_gso("fake0")
    } else {
        FakeTun::new("fake0", side.vnet_hdr)
    });
    let stats = Arc::new(TunnelStats::default());
    let (queue, outbound) = packet_queue(side.queue, 4 << 20);
    let outbound = if side.direct {
        PacketSource::Tun
    } else {
        let (tun, queue, stats) = (tun.clone(), queue.clone(), stats.clone());
        tokio::spawn(async move { feed_queue(&*tun, &queue, &stats, side.when_full).await });
        outbound.into()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let data = DataPath {
        tun: tun.clone(),
        outbound,
        admit: Box::new(move |a: &PacketAddrs| a.src == peer),
        stats: stats.clone(),
        icmp_sources: vec![peer],
    };
    let run = tokio::spawn(tunnel.run(data, async move {
        let _ = stopped.await;
        (CloseCode::Normal, "test over".to_string())
    }));
    End {
        tun,
        stats,
        queue,
        stalled,
        run,
        _stop: stop,
    }
}

/// Both ends running with the given settings, over a 256 KiB pipe.
async fn running(client: Side, server: Side) -> (End, End) {
    let (c, s, [cf, sf]) = connect(client, server, 256 * 1024).await;
    let c = start(c, client, cf, v4(SERVER_ADDR));
    let s = start(s, server, sf, v4(CLIENT_ADDR));
    (c, s)
}

fn udp(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .udp(5000, 6000)
        .write(&mut out, &vec![0xab; len - 28])
        .unwrap();
    out
}

async fn written(tun: &FakeTun) -> Bytes {
    tokio::time::timeout(PATIENCE, tun.next_written_ip())
        .await
        .expect("a packet is written to the TUN")
}

/// Waits until `cond` holds, or fails the test.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_writer_reading_its_tun_directly_sends_what_it_reads() {
    let direct = Side {
        direct: true,
        ..Side::default()
    };
    let (c, s) = running(direct, Side::default()).await;
    for len in [64, 1400] {
        let up = udp(CLIENT_ADDR, SERVER_ADDR, len);
        assert!(c.tun.inject_ip(&up));
        assert_eq!(&written(&s.tun).await[..], &up[..]);
    }
    assert_eq!(c.stats.snapshot().tx_packets, 2);
    // A TUN that fails ends the session with that error.
    c.tun.close();
    let end = tokio::time::timeout(PATIENCE, c.run)
        .await
        .expect("session ends")
        .unwrap();
    assert!(matches!(end, Err(TunnelError::TunRead(_))), "{end:?}");
}

#[tokio::test]
async fn datagrams_of_one_flow_arriving_together_are_written_as_one_udp_gso_packet() {
    let gso = Side {
        udp_gso: true,
        vnet_hdr: true,
        ..Side::default()
    };
    let (c, s) = running(Side::default(), gso).await;
    // IDs counting up, as a connected socket sends them.
    let sent: Vec<Vec<u8>> = (0..3u16)
        .map(|i| {
            let mut out = Vec::new();
            PacketBuilder::ipv4(CLIENT_ADDR, SERVER_ADDR, 64)
                .udp(5000, 6000)
                .write(&mut out, &[i as u8; 36])
                .unwrap();
            out[4..6].copy_from_slice(&(100 + i).to_be_bytes());
            out[10..12].copy_from_slice(&[0, 0]);
            let sum = !checksum_fold(checksum_add(0, &out[..20]));
            out[10..12].copy_from_slice(&sum.to_be_bytes());
            out
        })
        .collect();
    for p in &sent {
        assert!(c.tun.inject_ip(p));
    }
    // One write: a GSO header, then the super-packet, which splits back into the datagrams.
    let write = tokio::time::timeout(PATIENCE, s.tun.next_written())
        .await
        .expect("a write");
    let hdr = VirtioNetHdr::decode(&write).unwrap();
    assert_eq!(
        (hdr.gso_type, hdr.gso_size),
        (crate::packet::vnet::VIRTIO_NET_HDR_GSO_UDP_L4, 36)
    );
    let mut segments = Vec::new();
    crate::packet::gso::segment(&hdr, &write[VNET_HDR_LEN..], &mut Vec::new(), |p| {
        segments.push(p.to_vec())
    })
    .unwrap();
    assert_eq!(segments, sent);
    assert_eq!(s.stats.snapshot().rx_packets, 3);
    // Another flow's datagram comes out on its own.
    let other = udp(CLIENT_ADDR, SERVER_ADDR, 100);
    assert!(c.tun.inject_ip(&other));
    assert_eq!(&written(&s.tun).await[..], &other[..]);
}

#[tokio::test]
async fn packets_cross_both_ways_and_spoofed_ones_are_dropped() {
    let (c, s) = running(Side::default(), Side::default()).await;
    let up = udp(CLIENT_ADDR, SERVER_ADDR, 300);
    assert!(c.tun.inject_ip(&up));
    assert_eq!(&written(&s.tun).await[..], &up[..]);
    let down = udp(SERVER_ADDR, CLIENT_ADDR, 1400);
    assert!(s.tun.inject_ip(&down));
    assert_eq!(&written(&c.tun).await[..], &down[..]);

    // The client admits only the server's address as a source.
    let spoofed = udp([10, 9, 0, 77], CLIENT_ADDR, 100);
    s.tun.inject_ip(&spoofed);
    s.tun.inject_ip(&down);
    assert_eq!(&written(&c.tun).await[..], &down[..], "the spoofed packet was written");
    let (cs, ss) = (c.stats.snapshot(), s.stats.snapshot());
    assert_eq!((cs.tx_packets, cs.tx_bytes), (1, 300));
    assert_eq!((cs.rx_packets, cs.rx_bytes, cs.drop_spoofed), (2, 2800, 1));
    assert_eq!((ss.tx_packets, ss.rx_packets), (3, 1));
    assert!(!c.run.is_finished() && !s.run.is_finished());
}

#[tokio::test]
async fn a_syn_has_its_mss_clamped_to_the_tunnel_mtu() {
    let side = Side {
        mtu: 1280,
        ..Side::default()
    };
    let (c, s) = running(side, Side::default()).await;
    // The smaller MTU of both ends applies, in both directions.
    c.tun.inject_ip(&tcp_syn(CLIENT_ADDR, SERVER_ADDR, 1460));
    let got = written(&s.tun).await;
    assert_eq!(mss_of(&got), Some(1240));
    s.tun.inject_ip(&tcp_syn(SERVER_ADDR, CLIENT_ADDR, 1460));
    assert_eq!(mss_of(&written(&c.tun).await), Some(1240));
    // A smaller MSS is left alone.
    c.tun.inject_ip(&tcp_syn(CLIENT_ADDR, SERVER_ADDR, 1000));
    assert_eq!(mss_of(&written(&s.tun).await), Some(1000));
    // The clamped packet is still valid: etherparse checks lengths; the checksum is verified
    // by packet::mss's own tests.
    assert!(SlicedPacket::from_ip(&got).is_ok());
}

#[tokio::test]
async fn a_packet_too_big_is_answered_with_icmp_to_its_sender() {
    let side = Side {
        mtu: 1280,
        ..Side::default()
    };
    let (c, s) = running(side, side).await;
    let big = udp(CLIENT_ADDR, SERVER_ADDR, 1281);
    c.tun.inject_ip(&big);
    let reply = written(&c.tun).await;
    let p = SlicedPacket::from_ip(&reply).expect("an IP packet");
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4: {p:?}");
    };
    // From the far end of the tunnel, to the sender.
    assert_eq!(ip.header().source(), SERVER_ADDR);
    assert_eq!(ip.header().destination(), CLIENT_ADDR);
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
        panic!("not ICMP: {p:?}");
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1280
        })
    );
    // Nothing crossed: the next packet the server's TUN sees is the one sent after it.
    let fits = udp(CLIENT_ADDR, SERVER_ADDR, 1280);
    c.tun.inject_ip(&fits);
    assert_eq!(&written(&s.tun).await[..], &fits[..]);
    assert_eq!(c.stats.snapshot().drop_too_big, 1);
    assert_eq!(s.stats.snapshot().rx_packets, 1);
}

#[tokio::test]
async fn offloaded_packets_cross_whole_or_are_segmented_for_a_peer_without_offloads() {
    let gso_side = Side {
        vnet_hdr: true,
        features: Features::GSO,
        ..Side::default()
    };
    // A TCP super-packet of 3000 payload bytes in 1000-byte segments.
    let mut ip = Vec::new();
    PacketBuilder::ipv4(CLIENT_ADDR, SERVER_ADDR, 64)
        .tcp(40000, 80, 1, 64000)
        .write(&mut ip, &[0x5a; 3000])
        .unwrap();
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: 1000,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut pkt = hdr.to_bytes().to_vec();
    pkt.extend_from_slice(&ip);

    // Both ends take offloads: the super-packet crosses as one, header included.
    let (c, s) = running(gso_side, gso_side).await;
    c.tun.inject(pkt.clone());
    let got = tokio::time::timeout(PATIENCE, s.tun.next_written()).await.unwrap();
    assert_eq!(&got[..], &pkt[..]);
    drop((c, s));

    // The server has no offloads: the client segments in software.
    let (c, s) = running(gso_side, Side::default()).await;
    c.tun.inject(pkt);
    let mut payload = Vec::new();
    for _ in 0..3 {
        let seg = written(&s.tun).await;
        assert_eq!(seg.len(), 1040);
        let p = SlicedPacket::from_ip(&seg).expect("a valid segment");
        assert!(matches!(p.transport, Some(TransportSlice::Tcp(_))), "{p:?}");
        payload.extend_from_slice(&seg[40..]);
    }
    assert_eq!(payload, vec![0x5a; 3000]);
    assert_eq!(c.stats.snapshot().tx_packets, 3);
    assert!(s.tun.take_written().is_empty());
}

/// A client whose peer stops reading: its writer blocks, its queue (drop-when-full, as the
/// server's switch does) fills, and after the dead-peer timeout the session ends as stalled.
#[tokio::test]
async fn a_full_queue_drops_and_counts_and_a_peer_that_never_reads_is_ended_as_stalled() {
    let stall = Duration::from_millis(800);
    let client = Side {
        queue: 8,
        when_full: WhenFull::Drop,
        timers: Timers {
            dead_peer_timeout: stall,
            ..Side::default().timers
        },
        ..Side::default()
    };
    // The server keeps sending keepalives (so the client's dead-peer timer never fires) and keeps
    // a long timeout of its own.
    let server = Side {
        timers: Timers {
            dead_peer_timeout: Duration::from_secs(30),
            ..Side::default().timers
        },
        ..Side::default()
    };
    let (c, s, [cf, sf]) = connect(client, server, 16 * 1024).await;
    sf.store(true, Ordering::Relaxed);
    let c = start(c, client, cf, v4(SERVER_ADDR));
    let s = start(s, server, sf, v4(CLIENT_ADDR));
    assert!(s.stalled.load(Ordering::Relaxed));
    let started = tokio::time::Instant::now();
    const SENT: u64 = 300;
    // Paced, so that the writer drains the queue into the pipe until the pipe is full.
    for _ in 0..SENT {
        c.tun.inject_ip(&udp(CLIENT_ADDR, SERVER_ADDR, 1000));
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    // Every packet is accounted for: framed for the peer, waiting in the queue, or dropped.
    eventually("all packets accounted for", || {
        let st = c.stats.snapshot();
        st.tx_packets + st.drop_queue_full + c.queue.queued_bytes() as u64 / 1000 == SENT
    })
    .await;
    let st = c.stats.snapshot();
    assert!(st.drop_queue_full > 0, "{st}");
    // More than fit in the pipe and the queue were framed: the writer blocked on a full pipe.
    assert!(st.tx_packets >= 16 && st.tx_packets < SENT, "{st}");

    let result = tokio::time::timeout(PATIENCE, c.run)
        .await
        .expect("the session ends")
        .unwrap();
    assert!(
        matches!(result, Err(TunnelError::Stalled(d)) if d == stall),
        "{result:?}"
    );
    let took = started.elapsed();
    assert!(took >= stall && took < stall * 4, "ended after {took:?}");
    // Nothing reached the server's TUN.
    assert!(s.tun.take_written().is_empty());
}

/// A peer that floods keepalives and never reads: the answers do not pile up. Once it reads
/// again it gets the data it was sent and one answer (to its latest keepalive), not thousands.
#[tokio::test]
async fn a_keepalive_flood_leaves_the_pending_answers_bounded() {
    const FLOOD: u64 = 20_000;
    const DATA: usize = 100;
    let (c, s, [cf, _]) = connect(Side::default(), Side::default(), 16 * 1024).await;
    let c = start(c, Side::default(), cf, v4(SERVER_ADDR));
    // The server end is driven by hand, as raw frames over its half of the pipe.
    let Tunnel {
        rx: StallableRx {
            inner: StreamRx(mut raw_rx),
            ..
        },
        tx: StreamTx(mut raw_tx),
        mut rbuf,
        decoder,
        ..
    } = s;
    // Fill the pipe towards the server, so the client's writer is blocked.
    for _ in 0..DATA {
        c.tun.inject_ip(&udp(CLIENT_ADDR, SERVER_ADDR, 1000));
    }
    eventually("the client's writer took the data", || {
        c.stats.snapshot().tx_packets == DATA as u64
    })
    .await;
    let mut flood = BytesMut::new();
    for token in 0..FLOOD {
        Control::Keepalive(token).encode_frame(&mut flood);
    }
    tokio::time::timeout(PATIENCE, raw_tx.write_all(&flood))
        .await
        .expect("the client reads the flood while its writer is blocked")
        .unwrap();
    // Read what the client sends: the data and the answer to the latest keepalive, then 300 ms
    // more to catch any further answers (its own keepalives, every 200 ms, keep coming).
    let (mut data, mut acks, mut last_ack) = (0, 0, None);
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let mut end = None;
    loop {
        while let Some(frame) = decoder.decode(&mut rbuf).unwrap() {
            match frame.kind {
                FrameType::Ip => data += 1,
                kind => {
                    if let Control::KeepaliveAck(t) = Control::decode(kind, &frame.payload).unwrap() {
                        acks += 1;
                        last_ack = Some(t);
                    }
                }
            }
        }
        if end.is_none() && data == DATA && last_ack == Some(FLOOD - 1) {
            end = Some(tokio::time::Instant::now() + Duration::from_millis(300));
        }
        rbuf.reserve(64 * 1024);
        match tokio::time::timeout_at(end.unwrap_or(give_up), raw_rx.read_buf(&mut rbuf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => break,
        }
    }
    assert_eq!(data, DATA);
    assert_eq!(last_ack, Some(FLOOD - 1), "the latest keepalive is answered");
    assert!(
        (1..=3).contains(&acks),
        "{acks} keepalive answers for {FLOOD} keepalives"
    );
    if c.run.is_finished() {
        panic!("the flood ended the session: {:?}", c.run.await);
    }
}

#[tokio::test]
async fn a_tun_write_error_is_counted_and_the_session_goes_on() {
    let (c, s) = running(Side::default(), Side::default()).await;
    s.tun.fail_writes(true);
    c.tun.inject_ip(&udp(CLIENT_ADDR, SERVER_ADDR, 100));
    eventually("the write failure is counted", || {
        s.stats.snapshot().drop_tun_error == 1
    })
    .await;
    s.tun.fail_writes(false);
    let p = udp(CLIENT_ADDR, SERVER_ADDR, 200);
    c.tun.inject_ip(&p);
    assert_eq!(&written(&s.tun).await[..], &p[..]);
}

#[tokio::test]
async fn a_local_shutdown_closes_both_ends() {
    let (c, s) = running(Side::default(), Side::default()).await;
    drop(c._stop);
    let r = tokio::time::timeout(PATIENCE, c.run).await.unwrap().unwrap();
    assert!(r.is_ok(), "{r:?}");
    let r = tokio::time::timeout(PATIENCE, s.run).await.unwrap().unwrap();
    assert!(
        matches!(&r, Err(TunnelError::PeerClosed { code: CloseCode::Normal, reason }) if reason == "test over"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_peer_breaking_the_handshake_is_told_why() {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (r, w) = tokio::io::split(ours);
    let mut server = Tunnel::new(
        Role::Server,
        Hello::new(Features::default(), 1400),
        Side::default().timers,
        StreamRx(r),
        StreamTx(w),
    );
    let (mut peer_r, mut peer_w) = tokio::io::split(theirs);
    // A configuration before any hello, and to a server: a protocol violation.
    let mut bad = BytesMut::new();
    Control::Config(TunnelConfig::default()).encode_frame(&mut bad);
    peer_w.write_all(&bad).await.unwrap();
    let result = tokio::time::timeout(
        PATIENCE,
        server.handshake(|_| Err((CloseCode::Internal, "unused".into()))),
    )
    .await
    .expect("handshake ends");
    assert!(matches!(result, Err(TunnelError::Session(_))), "{result:?}");
    let mut buf = BytesMut::new();
    let decoder = FrameDecoder::default();
    let mut seen = Vec::new();
    let (code, reason) = 'answer: loop {
        while let Some(f) = decoder.decode(&mut buf).unwrap() {
            seen.push(f.kind);
            if let Ok(Control::Close { code, reason }) = Control::decode(f.kind, &f.payload) {
                break 'answer (code, reason);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, peer_r.read(&mut chunk))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(n > 0, "closed without a reason after {seen:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(code, CloseCode::ProtocolError);
    assert!(reason.contains("unexpected config"), "{reason}");
}

/// russh's way of sending, faked: a send only queues the bytes (russh's channel holds hundreds of
/// messages), and a task writes them to the socket — here a pipe, counted by a [`WireMeter`].
struct QueuedTx(tokio::sync::mpsc::Sender<Bytes>);

impl TransportTx for QueuedTx {
    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        self.0.send(data).await.map_err(|_| io::ErrorKind::BrokenPipe.into())
    }
    async fn finish(&mut self) {}
}

fn queued_tx(w: WriteHalf<DuplexStream>, meter: Arc<WireMeter>) -> QueuedTx {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let mut w = crate::tunnel::MeteredStream::new(w, meter);
        while let Some(b) = rx.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    QueuedTx(tx)
}

fn udp_from(sport: u16, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(CLIENT_ADDR, SERVER_ADDR, 64)
        .udp(sport, 6000)
        .write(&mut out, &vec![0xab; len - 28])
        .unwrap();
    out
}

/// A client whose link is slow (the pipe to the server is full and the server reads nothing yet)
/// has a bulk flow's 100 packets in flight and 50 more waiting, then one packet of another flow.
/// Returns where that packet arrives among the 151.
async fn sparse_packet_position(fair: bool) -> usize {
    const FIRST: usize = 100;
    const MORE: usize = 50;
    let side = Side::default();
    let (c_io, s_io) = tokio::io::duplex(16 * 1024);
    let (c_rx, c_tx) = tokio::io::split(c_io);
    let (s_rx, s_tx) = tokio::io::split(s_io);
    let meter = WireMeter::new();
    let mut c = Tunnel::new(
        Role::Client,
        Hello::new(side.features, side.mtu),
        side.timers,
        StreamRx(c_rx),
        queued_tx(c_tx, meter.clone()),
    );
    let mut s = Tunnel::new(
        Role::Server,
        Hello::new(side.features, side.mtu),
        side.timers,
        StreamRx(s_rx),
        StreamTx(s_tx),
    );
    handshake_both(&mut c, &mut s).await;
    let tun = Arc::new(FakeTun::new("fake0", false));
    let stats = Arc::new(TunnelStats::default());
    let data = DataPath {
        tun: tun.clone(),
        outbound: if fair {
            PacketSource::FairTun(Downstream {
                meter: meter.clone(),
                socket: None,
            })
        } else {
            PacketSource::Tun
        },
        admit: Box::new(|_: &PacketAddrs| true),
        stats: stats.clone(),
        icmp_sources: vec![v4(SERVER_ADDR)],
    };
    let (_stop, stopped) = oneshot::channel::<()>();
    let _run = AbortOnDrop(tokio::spawn(c.run(data, async move {
        let _ = stopped.await;
        (CloseCode::Normal, "test over".to_string())
    })));
    // The server end reads nothing until told: the pipe fills and the link "is slow".
    let Tunnel {
        rx: StreamRx(mut raw_rx),
        mut rbuf,
        decoder,
        ..
    } = s;
    for _ in 0..FIRST {
        tun.inject_ip(&udp_from(5000, 1200));
    }
    eventually("the first packets are handed over", || {
        stats.snapshot().tx_packets == FIRST as u64 && meter.is_blocked()
    })
    .await;
    for _ in 0..MORE {
        tun.inject_ip(&udp_from(5000, 1200));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    tun.inject_ip(&udp_from(7000, 60));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Now read: the order in which the packets crossed.
    let mut ports = Vec::new();
    while ports.len() < FIRST + MORE + 1 {
        while let Some(frame) = decoder.decode(&mut rbuf).unwrap() {
            if frame.kind == FrameType::Ip {
                ports.push(u16::from_be_bytes([frame.payload[20], frame.payload[21]]));
            }
        }
        rbuf.reserve(64 * 1024);
        let n = tokio::time::timeout(PATIENCE, raw_rx.read_buf(&mut rbuf))
            .await
            .expect("the client goes on sending")
            .unwrap();
        assert!(n > 0, "the client hung up");
    }
    ports
        .iter()
        .position(|&p| p == 7000)
        .expect("the sparse packet crossed")
}

#[tokio::test]
async fn a_sparse_flow_overtakes_a_backlog_that_waits_for_a_slow_link() {
    // Fair: the 50 waited in the writer's fair queue, and the new flow's packet went ahead of them.
    assert_eq!(sparse_packet_position(true).await, 100);
    // Without: everything went to the SSH layer at once, in order, and the packet came last.
    assert_eq!(sparse_packet_position(false).await, 150);
}
