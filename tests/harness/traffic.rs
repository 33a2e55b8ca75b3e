//! Traffic generators run from inside namespaces: TCP bulk transfers with checksums, UDP probes.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::net::Netns;

/// Deterministic pseudo-random bytes (xorshift), so both ends can be checked without storing them.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Sends `len` bytes over TCP from namespace `from` to `to_addr:port` in namespace `to`, and checks
/// that the SHA-256 of what arrived equals that of what was sent.
pub fn tcp_transfer(from: &Netns, to: &Netns, to_addr: IpAddr, port: u16, len: usize) {
    let addr = SocketAddr::new(to_addr, port);
    let listener: TcpListener = to.run(move || TcpListener::bind(addr).expect("bind"));
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            let n = match s.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("read: {e}"),
            };
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n;
        }
        (total, h.finalize())
    });
    let mut stream: TcpStream =
        from.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect"));
    stream.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        fill(&mut buf[..n], &mut state);
        stream.write_all(&buf[..n]).expect("write");
        h.update(&buf[..n]);
        left -= n;
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, digest) = receiver.join().expect("receiver");
    assert_eq!(got, len, "bytes received");
    assert_eq!(digest, h.finalize(), "checksum of the received data");
}

/// A UDP socket bound in namespace `ns`.
pub fn udp_socket(ns: &Netns, bind: SocketAddr) -> UdpSocket {
    let s: UdpSocket = ns.run(move || UdpSocket::bind(bind).expect("udp bind"));
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

/// Every datagram that arrives on `s` within its read timeout.
pub fn udp_drain(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = s.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}
