//! Which flow a packet belongs to, for fair queueing: source and destination address, protocol,
//! and the ports of TCP and UDP (of the first fragment only; later fragments carry none and hash
//! by addresses and protocol). Reads only fixed header fields; no I/O, no allocation.

use std::hash::Hasher;

use super::ip::{IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, IPV6_HDR_LEN};

/// Feeds the flow identity of the IP packet `ip` into `h`. Anything that is not a well-formed
/// IPv4 or IPv6 header hashes as one flow of its own (by its first byte), so it cannot crowd the
/// flows of real traffic.
pub fn hash_flow<H: Hasher>(ip: &[u8], h: &mut H) {
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= IPV4_HDR_LEN => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let proto = ip[9];
            h.write(&ip[12..20]);
            h.write_u8(proto);
            // Fragment offset 0: the first fragment (or an unfragmented packet) holds the ports.
            let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
            if first_fragment && ihl >= IPV4_HDR_LEN {
                write_ports(ip, ihl, proto, h);
            }
        }
        Some(6) if ip.len() >= IPV6_HDR_LEN => {
            let next = ip[6];
            h.write(&ip[8..40]);
            h.write_u8(next);
            write_ports(ip, IPV6_HDR_LEN, next, h);
        }
        first => h.write_u16(0xff00 | u16::from(first.unwrap_or(0))),
    }
}

fn write_ports<H: Hasher>(ip: &[u8], at: usize, proto: u8, h: &mut H) {
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
        && let Some(ports) = ip.get(at..at + 4)
    {
        h.write(ports);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use std::hash::{BuildHasher, RandomState};

    fn udp(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv4(src, [10, 2, 0, 9], 64)
            .udp(sport, dport)
            .write(&mut v, b"payload")
            .unwrap();
        v
    }

    fn key(s: &RandomState, ip: &[u8]) -> u64 {
        let mut h = s.build_hasher();
        hash_flow(ip, &mut h);
        h.finish()
    }

    #[test]
    fn same_flow_same_key_other_ports_other_key() {
        let s = RandomState::new();
        let a = udp([10, 0, 0, 2], 1000, 53);
        let mut a2 = udp([10, 0, 0, 2], 1000, 53);
        a2[8] = 3; // another TTL: the same flow
        assert_eq!(key(&s, &a), key(&s, &a2));
        assert_ne!(key(&s, &a), key(&s, &udp([10, 0, 0, 2], 1001, 53)));
        assert_ne!(key(&s, &a), key(&s, &udp([10, 0, 0, 3], 1000, 53)));
    }

    #[test]
    fn v6_and_later_fragments_and_garbage() {
        let s = RandomState::new();
        let mut v6 = Vec::new();
        PacketBuilder::ipv6([1; 16], [2; 16], 64)
            .tcp(5000, 22, 1, 1000)
            .write(&mut v6, b"x")
            .unwrap();
        let mut other = v6.clone();
        other[40] = 0x99; // another source port
        assert_ne!(key(&s, &v6), key(&s, &other));
        // A later fragment hashes without ports: the same key whatever its payload says.
        let mut frag = udp([10, 0, 0, 2], 1000, 53);
        frag[6] = 0x00;
        frag[7] = 0x10;
        let mut frag2 = frag.clone();
        frag2[20] = 0x77;
        assert_eq!(key(&s, &frag), key(&s, &frag2));
        // Garbage and truncated headers do not panic.
        for bad in [&[][..], &[0x45; 10][..], &[0x60; 39][..], &[0xff; 3][..]] {
            key(&s, bad);
        }
    }
}
