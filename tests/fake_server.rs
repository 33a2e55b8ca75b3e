//! `sshvpn-fake-server`: a tunnel server that lies, for the hostile-peer tests. It speaks the
//! tunnel protocol on stdin/stdout (run it as the client's `--ssh-command`), pushes whatever
//! configuration it is told to (addresses with wide prefixes, routes over the client's LAN, bad
//! MTUs, search domains with control characters), then injects ICMP echo requests from the given
//! sources towards the client's address and counts the echo replies that come back, per source,
//! in a report file (`SOURCE COUNT` lines). It can also end the session with a reason of its
//! choosing (`--close-reason`, `--refuse-reason`), to check that the client escapes it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use clap::Parser;
use ipnet::IpNet;
use sshvpn_common::proto::frame::{self, FrameDecoder, FrameType};
use sshvpn_common::proto::{CloseCode, Control, Features, Hello, TunnelConfig};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    addr4: Option<IpNet>,
    #[arg(long)]
    addr6: Option<IpNet>,
    #[arg(long)]
    peer4: Option<Ipv4Addr>,
    #[arg(long)]
    peer6: Option<Ipv6Addr>,
    #[arg(long, default_value_t = 1400)]
    mtu: u16,
    #[arg(long = "route")]
    routes: Vec<IpNet>,
    #[arg(long = "dns")]
    dns: Vec<IpAddr>,
    #[arg(long = "search")]
    search: Vec<String>,
    /// Send the client an ICMP echo request from each of these sources every 100 ms.
    #[arg(long = "ping-from")]
    ping_from: Vec<Ipv4Addr>,
    /// Where the echo replies seen are counted.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Close the session with this reason (after the configuration, code `Normal`) ...
    #[arg(long)]
    close_reason: Option<String>,
    /// ... or instead of the configuration, code `NotAuthorized`.
    #[arg(long)]
    refuse_reason: Option<String>,
    /// What the client appends for ssh (`-s sshvpn`): ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

type Out = Arc<Mutex<std::io::Stdout>>;

fn send(out: &Out, bytes: &[u8]) -> std::io::Result<()> {
    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
    o.write_all(bytes)?;
    o.flush()
}

fn send_control(out: &Out, msg: Control) -> std::io::Result<()> {
    let mut b = BytesMut::new();
    msg.encode_frame(&mut b);
    send(out, &b)
}

fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64).icmpv4_echo_request(0x5a5a, seq);
    let payload = [0u8; 16];
    let mut pkt = Vec::with_capacity(builder.size(payload.len()));
    // Writing into a Vec cannot fail.
    let _ = builder.write(&mut pkt, &payload);
    pkt
}

/// The destination of an ICMP echo reply, if `ip` is one.
fn echo_reply_to(ip: &[u8]) -> Option<Ipv4Addr> {
    let p = etherparse::SlicedPacket::from_ip(ip).ok()?;
    let Some(etherparse::NetSlice::Ipv4(v4)) = &p.net else {
        return None;
    };
    match &p.transport {
        Some(etherparse::TransportSlice::Icmpv4(icmp))
            if matches!(icmp.icmp_type(), etherparse::Icmpv4Type::EchoReply(_)) =>
        {
            Some(v4.header().destination_addr())
        }
        _ => None,
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sshvpn-fake-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    let mut input = std::io::stdin();
    send_control(&out, Control::Hello(Hello::new(Features::default(), 1500)))?;
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut read_more = |buf: &mut BytesMut| -> anyhow::Result<bool> {
        let n = input.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    // The client's hello, then our (lying) configuration.
    loop {
        if let Some(f) = decoder.decode(&mut buf)? {
            if f.kind == FrameType::Hello {
                break;
            }
            continue;
        }
        if !read_more(&mut buf)? {
            return Ok(());
        }
    }
    if let Some(reason) = args.refuse_reason.clone() {
        send_control(
            &out,
            Control::Close {
                code: CloseCode::NotAuthorized,
                reason,
            },
        )?;
        return Ok(());
    }
    let config = TunnelConfig {
        addr4: args.addr4,
        addr6: args.addr6,
        peer4: args.peer4,
        peer6: args.peer6,
        mtu: args.mtu,
        routes: args.routes.clone(),
        dns: args.dns.clone(),
        search: args.search.clone(),
        keepalive_ms: 0,
    };
    send_control(&out, Control::Config(config))?;
    if let Some(reason) = args.close_reason.clone() {
        // Let the client configure its interface first.
        std::thread::sleep(Duration::from_millis(500));
        send_control(
            &out,
            Control::Close {
                code: CloseCode::Normal,
                reason,
            },
        )?;
        return Ok(());
    }

    let target = args.addr4.map(|a| a.addr());
    if let Some(IpAddr::V4(dst)) = target {
        let out = out.clone();
        let sources = args.ping_from.clone();
        std::thread::spawn(move || {
            for seq in 0u16.. {
                for src in &sources {
                    let mut b = BytesMut::new();
                    frame::encode(&mut b, FrameType::Ip, &echo_request(*src, dst, seq));
                    if send(&out, &b).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    let mut replies: BTreeMap<Ipv4Addr, u64> = args.ping_from.iter().map(|s| (*s, 0)).collect();
    loop {
        while let Some(f) = decoder.decode(&mut buf)? {
            match f.kind {
                FrameType::Ip => {
                    if let Some(to) = echo_reply_to(&f.payload)
                        && let Some(n) = replies.get_mut(&to)
                    {
                        *n += 1;
                        if let Some(path) = &args.report {
                            let text: String = replies.iter().map(|(s, n)| format!("{s} {n}\n")).collect();
                            std::fs::write(path, text)?;
                        }
                    }
                }
                kind if !kind.is_data() => match Control::decode(kind, &f.payload)? {
                    Control::Keepalive(t) => send_control(&out, Control::KeepaliveAck(t))?,
                    Control::Close { .. } => return Ok(()),
                    _ => {}
                },
                _ => {}
            }
        }
        if !read_more(&mut buf)? {
            return Ok(());
        }
    }
}
