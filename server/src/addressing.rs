//! Who gets which tunnel addresses: the IPv4 and IPv6 pools, sticky per identity, persisted in the
//! lease file so that identities keep their addresses across server restarts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use sshvpn_common::pool::{AddressPool, PoolError};

use crate::leases::LeaseFile;

pub struct Addressing {
    pools: Mutex<(AddressPool, Option<AddressPool>)>,
    file: LeaseFile,
    /// A lease was made that the file does not have yet.
    unsaved: AtomicBool,
    /// Signalled when `unsaved` is set.
    changed: tokio::sync::Notify,
}

/// New leases are written out together, at most this often: rewriting the whole file for every
/// new client made connecting N clients cost O(N²) (5000 clients: 28 connects/s instead of
/// hundreds).
const SAVE_DELAY: Duration = Duration::from_secs(1);

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
            unsaved: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
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

    /// Writes new leases to the lease file, within [`SAVE_DELAY`] of their making; runs for the
    /// daemon's life. (The daemon calls [`Addressing::save_now`] once more when it stops.)
    pub async fn persist(&self) {
        loop {
            self.changed.notified().await;
            tokio::time::sleep(SAVE_DELAY).await;
            // The write ends with an fsync: keep it off the other tasks' way where possible.
            if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                tokio::task::block_in_place(|| self.save_now());
            } else {
                self.save_now();
            }
        }
    }

    /// Writes the lease file now if a lease was made since the last write.
    pub fn save_now(&self) {
        if !self.unsaved.swap(false, Ordering::AcqRel) {
            return;
        }
        let all = {
            let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            let mut all: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
            let leases = pools.0.leases().chain(pools.1.iter().flat_map(AddressPool::leases));
            for (id, a) in leases.filter(|(id, _)| !is_ephemeral(id)) {
                all.entry(id.to_string()).or_default().push(a);
            }
            all
        };
        self.file.save(&all);
    }

    /// The identity's addresses, leasing new ones if needed (the lease file follows within
    /// [`SAVE_DELAY`]).
    pub fn assign(&self, identity: &str) -> Result<Assignment, PoolError> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let known = pools.0.has_lease(identity);
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
            self.unsaved.store(true, Ordering::Release);
            self.changed.notify_one();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_leases_are_written_together_and_ephemeral_ones_never() {
        let dir = std::env::temp_dir().join(format!("sshvpn-addressing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("leases");
        let pool = AddressPool::new("10.9.0.0/24".parse().unwrap()).unwrap();
        let addressing = Addressing::new(pool, None, LeaseFile::new(Some(path.clone())), &[]);
        let a = addressing.assign("SHA256:a").unwrap();
        addressing.assign("SHA256:b").unwrap();
        addressing.assign("SHA256:c#laptop").unwrap();
        // Not written per lease: the background writer (or the daemon's stop) writes them.
        assert!(!path.exists());
        addressing.save_now();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(&format!("SHA256:a {}", a.own[0].addr())), "{text}");
        assert!(!text.contains('#'), "{text}");
        // Nothing new: the file is left alone.
        std::fs::remove_file(&path).unwrap();
        addressing.assign("SHA256:a").unwrap();
        addressing.save_now();
        assert!(!path.exists());
        // The writer task picks a new lease up within SAVE_DELAY.
        let writer = tokio::spawn({
            let addressing = std::sync::Arc::new(addressing);
            let a2 = addressing.clone();
            a2.assign("SHA256:d").unwrap();
            async move { addressing.persist().await }
        });
        tokio::time::sleep(SAVE_DELAY * 3).await;
        writer.abort();
        let text = std::fs::read_to_string(&path).expect("written by the writer task");
        assert!(text.contains("SHA256:d "), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
