//! Writes the checked-in seed corpus to `fuzz/seeds/<target>/`.
//!
//! Run from `fuzz/`: `cargo run --example gen_seeds` (stable, no sanitizer needed). The output is
//! deterministic, so re-running it only changes files when the protocol encoders change.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use bytes::BytesMut;
use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, TcpOptionElement};
use sshvpn_common::packet::gso::{checksum_fold, pseudo_header_sum};
use sshvpn_common::packet::vnet::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4, VirtioNetHdr,
};
use sshvpn_common::proto::control::{CloseCode, Control, Features, Hello, TunnelConfig};
use sshvpn_common::proto::frame::{self, FrameType};

const C4: [u8; 4] = [10, 99, 0, 2];
const R4: [u8; 4] = [192, 0, 2, 7];
const C6: [u8; 16] = [0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const R6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap();
}

fn frame(kind: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    frame::encode(&mut b, kind, payload);
    b.to_vec()
}

fn ctl(c: &Control) -> Vec<u8> {
    let mut b = BytesMut::new();
    c.encode_frame(&mut b);
    b.to_vec()
}

fn hello() -> Control {
    Control::Hello(Hello::new(Features::GSO, 1500))
}

fn config() -> Control {
    Control::Config(TunnelConfig {
        addr4: Some("10.99.0.2/24".parse().unwrap()),
        addr6: Some("fd00:0:0:99::2/64".parse().unwrap()),
        peer4: Some(Ipv4Addr::new(10, 99, 0, 1)),
        peer6: Some("fd00:0:0:99::1".parse::<Ipv6Addr>().unwrap()),
        mtu: 1400,
        routes: vec!["10.2.0.0/16".parse().unwrap(), "fd01::/48".parse().unwrap()],
        dns: vec!["10.99.0.1".parse().unwrap()],
        search: vec!["corp.example".into()],
        keepalive_ms: 5000,
    })
}

fn controls() -> Vec<(&'static str, Control)> {
    vec![
        ("hello", hello()),
        ("hello_old_peer", Control::Hello(Hello::new(Features::default(), 1280))),
        (
            "hello_instance",
            Control::Hello(Hello {
                instance: Some("laptop-2".into()),
                ..Hello::new(Features::GSO, 1400)
            }),
        ),
        ("config", config()),
        (
            "config_minimal",
            Control::Config(TunnelConfig {
                mtu: 1500,
                ..Default::default()
            }),
        ),
        ("keepalive", Control::Keepalive(42)),
        ("keepalive_ack", Control::KeepaliveAck(u64::MAX)),
        (
            "close",
            Control::Close {
                code: CloseCode::Replaced,
                reason: "bye".into(),
            },
        ),
        (
            "close_other_code",
            Control::Close {
                code: CloseCode::Other(999),
                reason: String::new(),
            },
        ),
    ]
}

fn udp4(len: usize, df: bool) -> Vec<u8> {
    let mut h = Ipv4Header::new(0, 64, IpNumber::UDP, C4, R4).unwrap();
    h.dont_fragment = df;
    h.identification = 0x1234;
    let mut out = Vec::new();
    PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
        .udp(40000, 53)
        .write(&mut out, &vec![0xab; len])
        .unwrap();
    out
}

fn udp6(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(C6, R6, 64)
        .udp(40000, 443)
        .write(&mut out, &vec![0xcd; len])
        .unwrap();
    out
}

fn tcp4(syn: bool, payload: usize) -> Vec<u8> {
    let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, C4, R4).unwrap();
    h.dont_fragment = true;
    let b = PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default())).tcp(40000, 443, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(77).psh() };
    let b = b
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(7),
        ])
        .unwrap();
    let mut out = Vec::new();
    b.write(&mut out, &vec![0x5a; payload]).unwrap();
    out
}

fn tcp6(syn: bool, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv6(C6, R6, 64).tcp(40000, 443, 1000, 64240);
    let b = if syn { b.syn().ack(5) } else { b.ack(77).fin() };
    let b = b.options(&[TcpOptionElement::MaximumSegmentSize(1440)]).unwrap();
    let mut out = Vec::new();
    b.write(&mut out, &vec![0x6b; payload]).unwrap();
    out
}

/// Inserts an 8-byte hop-by-hop options header (PadN) after the fixed IPv6 header.
fn with_hop_by_hop(pkt: &[u8]) -> Vec<u8> {
    let mut out = pkt[..40].to_vec();
    let next = out[6];
    out[6] = 0;
    let plen = u16::from_be_bytes([out[4], out[5]]) + 8;
    out[4..6].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&pkt[40..]);
    out
}

fn icmp4_echo() -> Vec<u8> {
    let mut h = Ipv4Header::new(0, 64, IpNumber::ICMP, C4, R4).unwrap();
    h.dont_fragment = true;
    let mut out = Vec::new();
    PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
        .icmpv4_echo_request(7, 1)
        .write(&mut out, &[0x11; 200])
        .unwrap();
    out
}

fn icmp6_echo() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(C6, R6, 64)
        .icmpv6_echo_request(7, 1)
        .write(&mut out, &[0x22; 200])
        .unwrap();
    out
}

/// A packet with a partial checksum, as a TUN with `TUN_F_CSUM` hands it out: the checksum field
/// holds the folded pseudo-header sum.
fn partial_csum(mut pkt: Vec<u8>, l4: usize, csum_at: usize, proto: u8) -> Vec<u8> {
    let (src, dst) = if pkt[0] >> 4 == 6 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    };
    let ph = pseudo_header_sum(&pkt[src], &pkt[dst], proto, (pkt.len() - l4) as u32);
    let c = checksum_fold(ph);
    pkt[l4 + csum_at..l4 + csum_at + 2].copy_from_slice(&c.to_be_bytes());
    pkt
}

fn vnet(h: VirtioNetHdr, pkt: &[u8]) -> Vec<u8> {
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(pkt);
    v
}

fn gso_hdr(gso_type: u8, hdr_len: u16, gso_size: u16, csum_start: u16, csum_offset: u16) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len,
        gso_size,
        csum_start,
        csum_offset,
    }
}

fn packet_seeds(dir: &Path) {
    // Plain packets; hdr_len doubles as the MSS limit and gso_size as the ICMP MTU in the target.
    let plain = |max_mss: u16, mtu: u16| VirtioNetHdr {
        hdr_len: max_mss,
        gso_size: mtu,
        ..Default::default()
    };
    write(dir, "udp4_plain", &vnet(plain(0, 1400), &udp4(64, false)));
    write(dir, "udp4_df_too_big", &vnet(plain(0, 1280), &udp4(1400, true)));
    write(dir, "udp6_too_big", &vnet(plain(0, 1280), &udp6(1400)));
    write(dir, "tcp4_syn_mss", &vnet(plain(1360, 1400), &tcp4(true, 0)));
    write(dir, "tcp6_synack_mss", &vnet(plain(1220, 1280), &tcp6(true, 0)));
    write(dir, "icmp4_echo_df", &vnet(plain(0, 576), &icmp4_echo()));
    write(dir, "icmp6_echo", &vnet(plain(0, 1280), &icmp6_echo()));
    write(
        dir,
        "icmp6_echo_v4_source",
        &vnet(
            VirtioNetHdr {
                flags: 0x80,
                ..plain(0, 1280)
            },
            &icmp6_echo(),
        ),
    );

    // NEEDS_CSUM without GSO.
    let t = partial_csum(tcp4(false, 100), 20, 16, 6);
    write(dir, "tcp4_needs_csum", &vnet(gso_hdr(0, 0, 0, 20, 16), &t));
    let u = partial_csum(udp6(100), 40, 6, 17);
    write(dir, "udp6_needs_csum", &vnet(gso_hdr(0, 0, 0, 40, 6), &u));

    // GSO super-packets (small gso_size to keep the seeds small).
    let t4 = partial_csum(tcp4(false, 350), 20, 16, 6);
    let h = gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 48, 100, 20, 16);
    write(dir, "gso_tcp4", &vnet(h, &t4));
    let h = gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 48, 128, 20, 16);
    write(dir, "gso_tcp4_ecn", &vnet(h, &t4));
    let t6 = partial_csum(tcp6(false, 300), 40, 16, 6);
    let h = gso_hdr(VIRTIO_NET_HDR_GSO_TCPV6, 64, 96, 40, 16);
    write(dir, "gso_tcp6", &vnet(h, &t6));
    let t6x = with_hop_by_hop(&t6);
    let h = gso_hdr(VIRTIO_NET_HDR_GSO_TCPV6, 72, 96, 48, 16);
    write(dir, "gso_tcp6_hop_by_hop", &vnet(h, &t6x));
    let u4 = partial_csum(udp4(300, false), 20, 6, 17);
    let h = gso_hdr(VIRTIO_NET_HDR_GSO_UDP_L4, 28, 120, 20, 6);
    write(dir, "gso_udp4", &vnet(h, &u4));
    let u6 = partial_csum(udp6(250), 40, 6, 17);
    let h = gso_hdr(VIRTIO_NET_HDR_GSO_UDP_L4, 48, 100, 40, 6);
    write(dir, "gso_udp6", &vnet(h, &u6));

    // One big super-packet, as the kernel hands out with BIG TCP: 66,000 bytes, IPv4 total length 0
    // ("use the packet length"), MSS 1448. It also lifts libFuzzer's default -max_len for this target
    // to its size, so the 16-bit length limits get exercised.
    // (Built by hand: etherparse refuses an IPv4 packet over 65,535 bytes.)
    let mut big = tcp4(false, 0);
    big.resize(66_000, 0x5a);
    big[2..4].copy_from_slice(&[0, 0]);
    let big = partial_csum(big, 20, 16, 6);
    let h = gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 48, 1448, 20, 16);
    write(dir, "gso_tcp4_big_tcp_66000", &vnet(h, &big));
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let dirs = ["frame_decoder", "control_decoder", "packet_parsing", "session"];
    for d in dirs {
        let p = root.join(d);
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
    }
    let [frames, control, packets, session] = dirs.map(|d| root.join(d));

    // frame_decoder: one frame of each type, a batch, and the error cases.
    for (name, c) in controls() {
        write(&frames, name, &ctl(&c));
    }
    let ip = frame(FrameType::Ip, &udp4(40, false));
    write(&frames, "ip_udp4", &ip);
    let gso_payload = vnet(gso_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 48, 100, 20, 16), &tcp4(false, 250));
    write(&frames, "gso_tcp4", &frame(FrameType::Gso, &gso_payload));
    let mut batch = ctl(&hello());
    batch.extend(ctl(&config()));
    batch.extend(&ip);
    batch.extend(frame(FrameType::Ignorable(0x90), b"future"));
    batch.extend(frame(FrameType::Ip, &udp6(20)));
    batch.extend(ctl(&Control::Keepalive(7)));
    batch.extend(&ip[..ip.len() - 5]); // a frame cut short
    write(&frames, "batch_then_partial", &batch);
    write(&frames, "unknown_type", &[0x05, 0, 0, 0]);
    write(&frames, "empty_ip", &[0x01, 0, 0, 0]);
    write(&frames, "too_large", &[0x01, 0x01, 0x11, 0x70]);
    write(
        &frames,
        "ignorable_only",
        &frame(FrameType::Ignorable(0xff), &[1, 2, 3]),
    );

    // control_decoder: frame-type code, then the payload.
    for (name, c) in controls() {
        let f = ctl(&c);
        let mut seed = vec![f[0]];
        seed.extend_from_slice(&f[frame::HEADER_LEN..]);
        write(&control, name, &seed);
    }
    // Unknown tag before the version; a data type (NotControl).
    write(&control, "hello_unknown_tag", &[0x10, 200, 0, 2, 9, 9, 1, 0, 2, 0, 1]);
    write(&control, "not_control_ip", &[0x01, 0x45, 0, 0]);

    packet_seeds(&packets);

    // session: config byte, then operations (see fuzz_targets/session.rs).
    let with_op = |ops: &mut Vec<u8>, c: &Control| {
        ops.push(0);
        ops.extend(ctl(c));
    };
    // Advance the clock: each op moves it by (op >> 2) * 250 ms, at most 63 quarter seconds.
    let advance = |ops: &mut Vec<u8>, secs: u8| {
        let mut q = u32::from(secs) * 4;
        while q > 0 {
            let n = q.min(63);
            ops.push(1 | ((n as u8) << 2));
            q -= n;
        }
    };
    let mut client = vec![0x02];
    with_op(&mut client, &hello());
    with_op(&mut client, &config());
    client.push(0);
    client.extend(&ip);
    advance(&mut client, 6); // keepalive due
    client.push(2); // peer answers it
    with_op(&mut client, &Control::Keepalive(9));
    advance(&mut client, 15); // then silence: dead peer
    write(&session, "client_full", &client);

    let mut server = vec![0x03];
    with_op(&mut server, &hello());
    advance(&mut server, 6);
    server.push(2);
    with_op(
        &mut server,
        &Control::Close {
            code: CloseCode::Normal,
            reason: "done".into(),
        },
    );
    write(&session, "server_accepts_then_peer_closes", &server);

    let mut bad = vec![0x01];
    let mut old = Hello::new(Features::default(), 1500);
    old.version = 2;
    with_op(&mut bad, &Control::Hello(old));
    write(&session, "server_bad_version", &bad);

    let mut tiny = vec![0x00];
    with_op(&mut tiny, &Control::Hello(Hello::new(Features::GSO, 500)));
    write(&session, "client_bad_mtu", &tiny);

    let mut timeout = vec![0x00];
    with_op(&mut timeout, &hello());
    advance(&mut timeout, 16);
    write(&session, "client_handshake_timeout", &timeout);

    let mut local_close = vec![0x01];
    with_op(&mut local_close, &hello());
    local_close.push(3 | (4 << 2));
    with_op(&mut local_close, &Control::Keepalive(1));
    write(&session, "server_local_close", &local_close);

    let mut total = 0;
    for d in dirs {
        for e in fs::read_dir(root.join(d)).unwrap() {
            total += e.unwrap().metadata().unwrap().len();
        }
    }
    println!("wrote seeds to {} ({total} bytes)", root.display());
}
