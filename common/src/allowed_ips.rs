//! Longest-prefix-match table from IP prefixes to values (peers).
//!
//! One hash map per prefix length present, probed from the longest length down: a lookup costs
//! a handful of hash probes whatever the number of peers. Used by the server's switch for the
//! destination lookup (which peer gets this packet) and by the client for its source check (may
//! the server send from this address: its tunnel address or a route through the tunnel). The
//! server's per-session anti-spoofing check scans that session's few prefixes instead.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: Family<T>,
    v6: Family<T>,
}

#[derive(Debug, Clone)]
struct Family<T> {
    /// prefix length -> (masked network address -> value); iterated longest first.
    by_len: BTreeMap<u8, HashMap<u128, T>>,
}

impl<T> Default for Family<T> {
    fn default() -> Self {
        Family {
            by_len: BTreeMap::new(),
        }
    }
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps {
            v4: Family::default(),
            v6: Family::default(),
        }
    }
}

fn key(addr: IpAddr, len: u8) -> u128 {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            u128::from(if len == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - u32::from(len)))
            })
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            if len == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - u32::from(len)))
            }
        }
    }
}

impl<T> AllowedIps<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&self, addr: IpAddr) -> &Family<T> {
        if addr.is_ipv4() { &self.v4 } else { &self.v6 }
    }

    fn family_mut(&mut self, addr: IpAddr) -> &mut Family<T> {
        if addr.is_ipv4() { &mut self.v4 } else { &mut self.v6 }
    }

    /// Inserts `net -> value`, returning the value it replaced for exactly that prefix.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        let len = net.prefix_len();
        let k = key(net.addr(), len);
        self.family_mut(net.addr())
            .by_len
            .entry(len)
            .or_default()
            .insert(k, value)
    }

    pub fn remove(&mut self, net: &IpNet) -> Option<T> {
        let len = net.prefix_len();
        let k = key(net.addr(), len);
        let fam = self.family_mut(net.addr());
        let map = fam.by_len.get_mut(&len)?;
        let v = map.remove(&k);
        if map.is_empty() {
            fam.by_len.remove(&len);
        }
        v
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        self.family(addr)
            .by_len
            .iter()
            .rev()
            .find_map(|(len, map)| map.get(&key(addr, *len)))
    }

    /// Calls `f` on every value.
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        for fam in [&self.v4, &self.v6] {
            for map in fam.by_len.values() {
                map.values().for_each(&mut f);
            }
        }
    }

    /// Removes every entry whose value matches `pred`.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for fam in [&mut self.v4, &mut self.v6] {
            for map in fam.by_len.values_mut() {
                map.retain(|_, v| keep(v));
            }
            fam.by_len.retain(|_, m| !m.is_empty());
        }
    }

    pub fn len(&self) -> usize {
        [&self.v4, &self.v6]
            .iter()
            .map(|f| f.by_len.values().map(HashMap::len).sum::<usize>())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.1.0.0/16"), 2);
        t.insert(net("10.1.2.3/32"), 3);
        t.insert(net("fd00::/64"), 4);
        t.insert(net("0.0.0.0/0"), 5);
        assert_eq!(t.lookup("10.1.2.3".parse().unwrap()), Some(&3));
        assert_eq!(t.lookup("10.1.2.4".parse().unwrap()), Some(&2));
        assert_eq!(t.lookup("10.9.9.9".parse().unwrap()), Some(&1));
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), Some(&5));
        assert_eq!(t.lookup("fd00::77".parse().unwrap()), Some(&4));
        assert_eq!(t.lookup("fd01::77".parse().unwrap()), None);
        assert_eq!(t.remove(&net("10.1.0.0/16")), Some(2));
        assert_eq!(t.lookup("10.1.2.4".parse().unwrap()), Some(&1));
        t.retain(|v| *v != 1);
        assert_eq!(t.lookup("10.1.2.4".parse().unwrap()), Some(&5));
        assert_eq!(t.len(), 3);
    }

    /// An address in fd00::/16 whose varying bits sit where prefixes of all lengths cut.
    fn v6_addr(rng: &mut StdRng) -> u128 {
        0xfd00u128 << 112 | u128::from(rng.random::<u16>()) << 88 | u128::from(rng.random::<u8>())
    }

    /// Random prefixes and addresses, checked against a linear scan.
    #[test]
    fn matches_linear_scan() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..20 {
            let mut table = AllowedIps::new();
            let mut naive: Vec<(IpNet, usize)> = Vec::new();
            for i in 0..200 {
                let v6 = round % 2 == 1;
                let n = if v6 {
                    let a = v6_addr(&mut rng);
                    IpNet::new(IpAddr::V6(a.into()), rng.random_range(0..=128))
                        .unwrap()
                        .trunc()
                } else {
                    let a: u32 = rng.random::<u32>() & 0x0a0f_ffff | 0x0a00_0000;
                    IpNet::new(IpAddr::V4(a.into()), rng.random_range(0..=32))
                        .unwrap()
                        .trunc()
                };
                table.insert(n, i);
                naive.retain(|(m, _)| *m != n);
                naive.push((n, i));
            }
            for _ in 0..2000 {
                let addr = if round % 2 == 1 {
                    IpAddr::V6(v6_addr(&mut rng).into())
                } else {
                    IpAddr::V4((rng.random::<u32>() & 0x0a0f_ffff | 0x0a00_0000).into())
                };
                let expect = naive
                    .iter()
                    .filter(|(n, _)| n.contains(&addr))
                    .max_by_key(|(n, _)| n.prefix_len())
                    .map(|(_, v)| v);
                assert_eq!(table.lookup(addr), expect, "{addr}");
            }
        }
    }
}
