//! Who gets which tunnel addresses: the IPv4 and IPv6 pools, sticky per identity, persisted in the
//! lease file so that identities keep their addresses across server restarts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;
use sshvpn_common::pool::{AddressPool, PoolError};

use crate::leases::LeaseFile;

pub struct Addressing {
    pools: Mutex<(AddressPool, Option<AddressPool>)>,
    file: LeaseFile,
}

/// The addresses of one client: host routes (/32, /128) it may send from, and the same addresses
/// with the pools' prefix lengths, as configured on its interface.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub own: Vec<IpNet>,
    pub addr4: IpNet,
    pub addr6: Option<IpNet>,
}

/// Identities with an instance tag (`KEY#INSTANCE`) are leased for one session only.
fn is_ephemeral(identity: &str) -> bool {
    identity.contains('#')
}

impl Addressing {
    /// Ends the lease of an ephemeral identity (its addresses go back to the pool).
    pub fn release_ephemeral(&self, identity: &str) {
        if !is_ephemeral(identity) {
            return;
        }
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.0.release(identity);
        if let Some(p6) = pools.1.as_mut() {
            p6.release(identity);
        }
    }

    /// Pools with `statics` (configured addresses, which win) and the stored leases.
    pub fn new(
        pool4: AddressPool,
        pool6: Option<AddressPool>,
        file: LeaseFile,
        statics: &[(String, Vec<IpAddr>)],
    ) -> Addressing {
        let mut pools = (pool4, pool6);
        for (identity, addrs) in statics {
            for a in addrs {
                let pool = if a.is_ipv4() {
                    Some(&mut pools.0)
                } else {
                    pools.1.as_mut()
                };
                if let Some(p) = pool
                    && let Err(e) = p.reserve(identity, *a)
                {
                    tracing::warn!("static address of {identity} is not available: {e}");
                }
            }
        }
        let has_static = |id: &str, v4: bool| {
            statics
                .iter()
                .any(|(s, addrs)| s == id && addrs.iter().any(|a| a.is_ipv4() == v4))
        };
        for (identity, addrs) in file.load() {
            for a in addrs.into_iter().filter(|a| !has_static(&identity, a.is_ipv4())) {
                let pool = if a.is_ipv4() {
                    Some(&mut pools.0)
                } else {
                    pools.1.as_mut()
                };
                match pool {
                    Some(p) => {
                        if let Err(e) = p.reserve(&identity, a) {
                            tracing::warn!("ignoring stored lease of {identity}: {e}");
                        }
                    }
                    None => tracing::warn!("ignoring stored lease {a} of {identity}: no IPv6 pool"),
                }
            }
        }
        Addressing {
            pools: Mutex::new(pools),
            file,
        }
    }

    /// The server's own addresses with the pools' prefixes.
    pub fn server_addresses(&self) -> Vec<IpNet> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = vec![pools.0.with_prefix(pools.0.server_addr())];
        if let Some(p6) = &pools.1 {
            v.push(p6.with_prefix(p6.server_addr()));
        }
        v
    }

    /// The pools' prefixes (pushed to clients as routes).
    pub fn pool_networks(&self) -> Vec<IpNet> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        std::iter::once(pools.0.net())
            .chain(pools.1.as_ref().map(AddressPool::net))
            .collect()
    }

    pub fn server_addr(&self, v6: bool) -> Option<IpAddr> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if v6 {
            pools.1.as_ref().map(AddressPool::server_addr)
        } else {
            Some(pools.0.server_addr())
        }
    }

    /// The identity's addresses, leasing new ones (and saving the lease file) if needed.
    pub fn assign(&self, identity: &str) -> Result<Assignment, PoolError> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let known = pools.0.leases().any(|(id, _)| id == identity);
        let a4 = pools.0.lease(identity)?;
        let a6 = match pools.1.as_mut() {
            Some(p6) => match p6.lease(identity) {
                Ok(a) => Some(a),
                Err(e) => {
                    pools.0.release(identity);
                    return Err(e);
                }
            },
            None => None,
        };
        if !known && !is_ephemeral(identity) {
            let mut all: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
            for (id, a) in pools.0.leases() {
                all.entry(id.to_string()).or_default().push(a);
            }
            if let Some(p6) = &pools.1 {
                for (id, a) in p6.leases() {
                    all.entry(id.to_string()).or_default().push(a);
                }
            }
            self.file.save(&all);
        }
        let mut own = vec![IpNet::from(a4)];
        own.extend(a6.map(IpNet::from));
        Ok(Assignment {
            own,
            addr4: pools.0.with_prefix(a4),
            addr6: a6.and_then(|a| pools.1.as_ref().map(|p| p.with_prefix(a))),
        })
    }
}
