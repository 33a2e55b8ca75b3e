//! Address pool: hands each client identity the next free address of a prefix, and the same
//! address again while the lease is kept. No I/O; persistence is the caller's business.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("address pool {0} is exhausted")]
    Exhausted(IpNet),
    #[error("pool {0} is too small: it needs room for the server and at least one client")]
    TooSmall(IpNet),
    #[error("{0} is outside the pool {1}")]
    Outside(IpAddr, IpNet),
    #[error("{0} is the network, server or broadcast address of the pool {1}")]
    Reserved(IpAddr, IpNet),
    #[error("{0} is leased to another identity already")]
    Taken(IpAddr),
}

#[derive(Debug, Clone)]
pub struct AddressPool {
    net: IpNet,
    /// identity -> address, kept after disconnect so the identity gets it back.
    leases: HashMap<String, IpAddr>,
    taken: HashSet<IpAddr>,
    /// Offset (from the network address) where the next search starts.
    cursor: u128,
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, v: u128) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

impl AddressPool {
    /// A pool over `net`; the first host address belongs to the server.
    pub fn new(net: IpNet) -> Result<AddressPool, PoolError> {
        let net = net.trunc();
        if Self::host_bits(&net) < 2 {
            return Err(PoolError::TooSmall(net));
        }
        Ok(AddressPool {
            net,
            leases: HashMap::new(),
            taken: HashSet::new(),
            cursor: 2,
        })
    }

    fn host_bits(net: &IpNet) -> u32 {
        u32::from(net.max_prefix_len() - net.prefix_len())
    }

    /// Number of usable offsets: IPv4 excludes network and broadcast addresses.
    fn size(&self) -> u128 {
        let bits = Self::host_bits(&self.net).min(127);
        let n = 1u128 << bits;
        if self.net.addr().is_ipv4() { n - 1 } else { n }
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    /// The server's own address: the first host of the prefix.
    pub fn server_addr(&self) -> IpAddr {
        self.at(1)
    }

    fn at(&self, offset: u128) -> IpAddr {
        from_u128(self.net.addr().is_ipv4(), to_u128(self.net.network()) + offset)
    }

    /// The address with the pool's prefix length, as configured on an interface.
    pub fn with_prefix(&self, addr: IpAddr) -> IpNet {
        IpNet::new(addr, self.net.prefix_len()).expect("prefix of a valid net")
    }

    /// The address leased to `identity`, leasing the next free one if it has none.
    pub fn lease(&mut self, identity: &str) -> Result<IpAddr, PoolError> {
        if let Some(a) = self.leases.get(identity) {
            return Ok(*a);
        }
        let size = self.size();
        for i in 0..size.saturating_sub(2) {
            let offset = 2 + (self.cursor - 2 + i) % (size - 2);
            let addr = self.at(offset);
            if !self.taken.contains(&addr) {
                self.taken.insert(addr);
                self.leases.insert(identity.to_string(), addr);
                self.cursor = offset + 1;
                if self.cursor >= size {
                    self.cursor = 2;
                }
                return Ok(addr);
            }
        }
        Err(PoolError::Exhausted(self.net))
    }

    /// Records a lease made earlier (e.g. loaded from disk or configured statically). Only
    /// addresses a lease could hand out are taken: never the network address, the server's
    /// or the IPv4 broadcast address.
    pub fn reserve(&mut self, identity: &str, addr: IpAddr) -> Result<(), PoolError> {
        if !self.net.contains(&addr) || addr.is_ipv4() != self.net.addr().is_ipv4() {
            return Err(PoolError::Outside(addr, self.net));
        }
        let offset = to_u128(addr) - to_u128(self.net.network());
        if offset < 2 || offset >= self.size() {
            return Err(PoolError::Reserved(addr, self.net));
        }
        if self.taken.contains(&addr) {
            return Err(PoolError::Taken(addr));
        }
        self.taken.insert(addr);
        self.leases.insert(identity.to_string(), addr);
        Ok(())
    }

    /// Forgets a lease so its address can go to someone else.
    pub fn release(&mut self, identity: &str) {
        if let Some(a) = self.leases.remove(identity) {
            self.taken.remove(&a);
        }
    }

    /// Whether `identity` holds a lease.
    pub fn has_lease(&self, identity: &str) -> bool {
        self.leases.contains_key(identity)
    }

    pub fn leases(&self) -> impl Iterator<Item = (&str, IpAddr)> {
        self.leases.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_sticky_and_exhaustion() {
        let mut p = AddressPool::new("10.9.0.0/29".parse().unwrap()).unwrap();
        assert_eq!(p.server_addr(), "10.9.0.1".parse::<IpAddr>().unwrap());
        let a = p.lease("alice").unwrap();
        let b = p.lease("bob").unwrap();
        assert_eq!(a, "10.9.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(b, "10.9.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(p.lease("alice").unwrap(), a, "same identity, same address");
        for name in ["c", "d", "e"] {
            p.lease(name).unwrap();
        }
        // .2 .. .6 are taken; .7 is the broadcast address of a /29 and never handed out.
        assert!(matches!(p.lease("f"), Err(PoolError::Exhausted(_))));
        p.release("bob");
        assert_eq!(p.lease("g").unwrap(), b);
        assert_eq!(p.with_prefix(a).to_string(), "10.9.0.2/29");
    }

    #[test]
    fn ipv6_and_tiny_pools() {
        let mut p = AddressPool::new("fd00:1::/64".parse().unwrap()).unwrap();
        assert_eq!(p.server_addr(), "fd00:1::1".parse::<IpAddr>().unwrap());
        assert_eq!(p.lease("x").unwrap(), "fd00:1::2".parse::<IpAddr>().unwrap());
        assert!(AddressPool::new("10.0.0.0/31".parse().unwrap()).is_err());
        assert!(AddressPool::new("10.0.0.0/30".parse().unwrap()).is_ok());
    }

    #[test]
    fn reserve_respects_pool_and_conflicts() {
        let mut p = AddressPool::new("10.9.0.0/24".parse().unwrap()).unwrap();
        assert!(p.reserve("a", "10.9.0.50".parse().unwrap()).is_ok());
        assert!(matches!(
            p.reserve("b", "10.9.0.50".parse().unwrap()),
            Err(PoolError::Taken(_))
        ));
        assert!(matches!(
            p.reserve("b", "10.10.0.50".parse().unwrap()),
            Err(PoolError::Outside(..))
        ));
        // A stale lease file must not hand out the network, server or broadcast address.
        for reserved in ["10.9.0.0", "10.9.0.1", "10.9.0.255"] {
            assert!(
                matches!(p.reserve("c", reserved.parse().unwrap()), Err(PoolError::Reserved(..))),
                "{reserved}"
            );
        }
        assert!(p.reserve("d", "10.9.0.254".parse().unwrap()).is_ok());
        let mut p6 = AddressPool::new("fd00:9::/120".parse().unwrap()).unwrap();
        assert!(matches!(
            p6.reserve("e", "fd00:9::1".parse().unwrap()),
            Err(PoolError::Reserved(..))
        ));
        assert!(p6.reserve("e", "fd00:9::ff".parse().unwrap()).is_ok());
        assert_eq!(p.lease("a").unwrap(), "10.9.0.50".parse::<IpAddr>().unwrap());
    }
}
