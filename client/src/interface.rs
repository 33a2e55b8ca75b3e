//! The client's tunnel interface: the TUN device, and the addresses and routes applied to it.
//! It outlives individual sessions: across reconnects the interface, its addresses and routes stay
//! in place (applications keep their sockets); only a changed assignment is re-applied.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use ipnet::IpNet;
use sshvpn_common::netconf::{InterfaceConfig, LinuxNetSetup, NetSetup};
use sshvpn_common::proto::TunnelConfig;
use sshvpn_common::tun::TunDevice;

use crate::client_loop::Interface;
use crate::host_settings::{Dns, Forwarding};

pub struct TunnelInterface {
    pub tun: Arc<TunDevice>,
    net: LinuxNetSetup,
    /// What is applied now: (addresses, mtu, routes).
    applied: Option<(Vec<IpNet>, u16, Vec<IpNet>)>,
    extra_routes: Vec<IpNet>,
    /// Networks kept off the tunnel with --default-route.
    excludes: Vec<IpNet>,
    server_addr: Option<IpAddr>,
    options: HostOptions,
    dns: Option<Dns>,
    _forwarding: Option<Forwarding>,
}

/// What the client may change on the host besides its interface.
#[derive(Debug, Clone, Copy)]
pub struct HostOptions {
    /// Install the routes the server pushes.
    pub accept_routes: bool,
    /// Apply the DNS settings the server pushes.
    pub accept_dns: bool,
    /// Enable IP forwarding (site gateways).
    pub forward: bool,
    /// Send everything through the tunnel.
    pub default_route: bool,
}

impl TunnelInterface {
    pub fn create(
        name: &str,
        offload: bool,
        extra_routes: Vec<IpNet>,
        excludes: Vec<IpNet>,
        options: HostOptions,
    ) -> anyhow::Result<TunnelInterface> {
        // A previous run killed with SIGKILL may have left host settings changed: restore them.
        crate::host_settings::recover_after_crash(name);
        let tun = Arc::new(TunDevice::create(name, offload)?);
        let forwarding = if options.forward {
            Some(Forwarding::enable(name)?)
        } else {
            None
        };
        Ok(TunnelInterface {
            tun,
            net: LinuxNetSetup::new()?,
            applied: None,
            extra_routes,
            excludes,
            server_addr: None,
            options,
            dns: None,
            _forwarding: forwarding,
        })
    }

    /// Routes to install for `config`: pushed ones (unless refused) and `--route`, without any
    /// that covers the SSH server itself (that would send the tunnel's own packets into the
    /// tunnel) and without pushed ones that overlap a local network.
    async fn routes_for(&self, config: &TunnelConfig) -> Vec<IpNet> {
        let local = self.net.local_networks(self.tun.name()).await;
        let pushed = if self.options.accept_routes {
            config.routes.as_slice()
        } else {
            &[]
        };
        let mut full: Vec<IpNet> = Vec::new();
        if self.options.default_route {
            full.extend(
                ["0.0.0.0/1", "128.0.0.0/1"]
                    .iter()
                    .filter_map(|n| n.parse::<IpNet>().ok()),
            );
            if config.addr6.is_some() {
                full.extend(["::/1", "8000::/1"].iter().filter_map(|n| n.parse::<IpNet>().ok()));
            }
        }
        let ours = self.extra_routes.iter().chain(full.iter()).map(|n| (n, false));
        let mut routes = Vec::new();
        for (net, from_server) in pushed.iter().map(|n| (n, true)).chain(ours) {
            let net = net.trunc();
            if let Some(server) = self.server_addr
                && net.contains(&server)
                && !self.options.default_route
            {
                tracing::warn!("not installing route {net}: it covers the SSH server {server} itself");
                continue;
            }
            let own = config.addresses().map(|a| a.trunc()).collect::<Vec<_>>();
            if from_server
                && let Some(l) = local
                    .iter()
                    .find(|l| !own.contains(l) && (l.contains(&net) || net.contains(*l)))
            {
                tracing::warn!("not installing pushed route {net}: it overlaps the local network {l}");
                continue;
            }
            if !routes.contains(&net) {
                routes.push(net);
            }
        }
        routes
    }
}

impl Interface for TunnelInterface {
    fn tun(&self) -> Arc<TunDevice> {
        self.tun.clone()
    }

    fn name(&self) -> &str {
        self.tun.name()
    }

    /// Applies the server's assignment (addresses, MTU, routes); does nothing if it is what is
    /// applied already. Returns true if anything changed.
    async fn apply(&mut self, config: &TunnelConfig, mtu: u16, server_addr: Option<IpAddr>) -> anyhow::Result<bool> {
        self.server_addr = server_addr;
        let addresses: Vec<IpNet> = config.addresses().collect();
        let routes = self.routes_for(config).await;
        let wanted = (addresses.clone(), mtu, routes.clone());
        if self.applied.as_ref() == Some(&wanted) {
            return Ok(false);
        }
        if self.applied.is_some() {
            tracing::info!("assignment changed; reconfiguring {}", self.name());
            self.clear().await;
        }
        let name = self.name().to_string();
        self.net
            .configure(&InterfaceConfig {
                name: name.clone(),
                mtu: u32::from(mtu),
                addresses: addresses.clone(),
            })
            .await
            .context("configuring the tunnel interface")?;
        if self.options.default_route {
            // Full tunnel: keep the SSH connection's own path (and --exclude networks) on the
            // current route, then cover everything else with two half-default routes, which win
            // over the default route without replacing it (restoring is deleting ours).
            let Some(server) = server_addr else {
                anyhow::bail!("--default-route needs the server's address: use the built-in transport, not --ssh");
            };
            let pins = std::iter::once(IpNet::from(server)).chain(self.excludes.iter().copied());
            for net in pins.collect::<Vec<_>>() {
                if let Err(e) = self.net.pin_route(net, server).await {
                    self.net.undo().await;
                    return Err(e).context("keeping the path to the server outside the tunnel");
                }
            }
        }
        for r in &routes {
            if let Err(e) = self.net.add_route(&name, *r).await {
                self.net.undo().await;
                return Err(e).context("installing routes");
            }
        }
        let shown = |v: &[IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        tracing::info!(
            "{name}: address {} mtu {mtu}, routes: {}",
            shown(&addresses),
            if routes.is_empty() {
                "none".into()
            } else {
                shown(&routes)
            }
        );
        self.applied = Some(wanted);
        if self.options.accept_dns && self.dns.is_none() {
            self.dns = Dns::apply(&name, &config.dns, &config.search).context("applying pushed DNS")?;
        }
        Ok(true)
    }

    /// Undoes everything (the TUN itself goes when the process ends).
    async fn teardown(&mut self) {
        self.clear().await;
        self.dns = None;
    }
}

impl TunnelInterface {
    /// Removes the routes and addresses this client added.
    async fn clear(&mut self) {
        self.net.undo().await;
        if let Some((addresses, _, _)) = self.applied.take() {
            let name = self.name().to_string();
            for a in addresses {
                let _ = self.net.remove_address(&name, a).await;
            }
        }
    }
}
