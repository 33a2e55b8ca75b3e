//! A lean UDP flood for `scripts/bench.sh`'s small-packet row: `send` writes datagrams of one size
//! to one address as fast as the socket takes them, one `send` per datagram (as an application
//! does); `sink` receives and discards them, many per system call. Both cost less per datagram
//! than iperf3, which writes a timestamp and a sequence number into every datagram and keeps its
//! own rate accounting: on 2 vCPUs that work made the sender, not the tunnel, the limit
//! (docs/performance.md, round 7).

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, setsockopt, sockopt};

#[derive(Parser)]
#[command(name = "sshvpn-udpflood", about = "Lean UDP sender and sink for benchmarks")]
enum Cli {
    /// Sends datagrams to TARGET for SECONDS; prints how many the socket accepted.
    Send {
        target: SocketAddr,
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// Payload bytes per datagram.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Receives and discards datagrams on PORT until killed.
    Sink { port: u16 },
}

/// Datagrams taken per `recvmmsg` call by the sink.
const SINK_BATCH: usize = 32;
/// Sends between two looks at the clock.
const CLOCK_EVERY: u32 = 256;

/// Sends for `seconds`; returns how many datagrams the socket accepted.
fn send(target: SocketAddr, seconds: f64, size: usize) -> anyhow::Result<u64> {
    anyhow::ensure!(
        seconds.is_finite() && seconds > 0.0 && size <= 65_507,
        "send: --seconds must be positive and --size at most 65507"
    );
    let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .context("send: bind address")?;
    let socket = UdpSocket::bind(bind).context("send: binding the socket")?;
    socket
        .connect(target)
        .with_context(|| format!("send: connecting to {target}"))?;
    let payload = vec![0x5a_u8; size];
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut sent: u64 = 0;
    loop {
        for _ in 0..CLOCK_EVERY {
            // A full queue (ENOBUFS) or an ICMP error from an earlier datagram (ECONNREFUSED):
            // not sent, not counted; keep going.
            if socket.send(&payload).is_ok() {
                sent += 1;
            }
        }
        if Instant::now() >= end {
            break;
        }
    }
    Ok(sent)
}

fn sink(port: u16) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("sink: binding UDP port {port}"))?;
    // Best effort: a larger queue rides out the sender's bursts.
    let _ = setsockopt(&socket, sockopt::RcvBuf, &(8 << 20));
    let mut bufs = vec![[0u8; 2048]; SINK_BATCH];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(SINK_BATCH, None);
    loop {
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
        recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::empty(),
            None,
        )
        .context("sink: receiving")?;
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse() {
        Cli::Send { target, seconds, size } => send(target, seconds, size).map(|sent| println!("{sent}")),
        Cli::Sink { port } => sink(port),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sshvpn-udpflood: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_delivers_datagrams_of_the_asked_size() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let target = receiver.local_addr().unwrap();
        let sent = send(target, 0.05, 64).unwrap();
        assert!(sent > 0, "nothing was sent");
        let mut buf = [0u8; 2048];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(n, 64);
        assert!(buf[..n].iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn send_refuses_bad_arguments() {
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(send(target, 0.0, 64).is_err());
        assert!(send(target, 1.0, 70_000).is_err());
    }
}
