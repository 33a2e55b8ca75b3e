//! Kernel routes for the subnets behind connected peers, towards the server's TUN: added when
//! the first session owning a subnet comes up and removed when the last one goes (a replacing
//! session and its ghost may overlap).

use std::collections::HashMap;

use ipnet::IpNet;
use sshvpn_common::netconf::{NetSetup, OsNetSetup, error_chain};
use tokio::sync::Mutex;

pub struct PeerRoutes {
    tun: String,
    inner: Mutex<(OsNetSetup, HashMap<IpNet, usize>)>,
}

impl PeerRoutes {
    pub fn new(tun: String, net: OsNetSetup) -> Self {
        PeerRoutes {
            tun,
            inner: Mutex::new((net, HashMap::new())),
        }
    }

    pub async fn add(&self, subnets: &[IpNet]) {
        let mut guard = self.inner.lock().await;
        let (net, counts) = &mut *guard;
        for s in subnets {
            let n = counts.entry(*s).or_insert(0);
            *n += 1;
            if *n == 1
                && let Err(e) = net.add_route(&self.tun, *s).await
            {
                tracing::warn!("cannot route {s} to {}: {}", self.tun, error_chain(&e));
            }
        }
    }

    pub async fn remove(&self, subnets: &[IpNet]) {
        let mut guard = self.inner.lock().await;
        let (net, counts) = &mut *guard;
        for s in subnets {
            if let Some(n) = counts.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(s);
                    if let Err(e) = net.remove_route(&self.tun, *s).await {
                        tracing::warn!("cannot remove route {s}: {}", error_chain(&e));
                    }
                }
            }
        }
    }
}
