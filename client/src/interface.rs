//! The client's tunnel interface: the TUN device, and the addresses and routes applied to it.
//! It outlives individual sessions: across reconnects the interface, its addresses and routes stay
//! in place (applications keep their sockets); only a changed assignment is re-applied.
//! [`Interface`] is what the connect loop needs of an interface; `exec` implements it for the
//! interface inside its namespace. This module must not know about transports or sessions.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use ipnet::IpNet;
use sshvpn_common::accept_policy::{self, AcceptOptions, Accepted, HostFacts};
use sshvpn_common::netconf::{self, DnsConfig, InterfaceConfig, NetSetup, OsNetSetup, RestoreGuard, RestoreRecords};
use sshvpn_common::proto::TunnelConfig;
use sshvpn_common::tun::TunDevice;

use crate::run_dir::RestoreDir;

/// The tunnel interface as the connect loop sees it: a TUN, and a way to apply the server's assignment.
#[allow(async_fn_in_trait)]
pub trait Interface {
    fn tun(&self) -> Arc<TunDevice>;
    fn name(&self) -> &str;
    /// Applies what this client accepts of the server's configuration (addresses, MTU, routes,
    /// DNS; nothing if already applied) and returns it; an error if the configuration is refused.
    async fn apply(
        &mut self,
        config: &TunnelConfig,
        negotiated_mtu: u16,
        server_addr: Option<IpAddr>,
    ) -> anyhow::Result<Accepted>;
    /// Undoes what `apply` did.
    async fn teardown(&mut self);
}

/// The interface on the host (`sshvpn connect`).
pub struct TunnelInterface {
    pub tun: Arc<TunDevice>,
    net: OsNetSetup,
    /// Where DNS and forwarding keep their crash-restore records.
    records: Arc<dyn RestoreRecords>,
    /// What is applied now.
    applied: Option<Accepted>,
    /// What the user allows the server to change.
    accept: AcceptOptions,
    /// The host's resolvers before this client changed DNS (no pushed route may cover them).
    resolvers: Vec<IpAddr>,
    /// Pushed DNS while applied (restored on drop).
    dns: Option<RestoreGuard>,
    /// IP forwarding while the interface lives (restored on drop).
    _forwarding: Option<RestoreGuard>,
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
        accept_routes_within: Vec<IpNet>,
        options: HostOptions,
    ) -> anyhow::Result<TunnelInterface> {
        // A previous run killed with SIGKILL may have left host settings changed: restore them.
        let records: Arc<dyn RestoreRecords> = Arc::new(RestoreDir::new(name));
        netconf::recover_after_crash(&*records);
        // The original resolvers, read before this client changes any DNS setting.
        let resolvers = host_resolvers();
        let tun = Arc::new(TunDevice::create(name, offload)?);
        let net = netconf::open()?;
        let forwarding = if options.forward {
            Some(
                net.enable_forwarding(records.clone())
                    .context("enabling IP forwarding")?,
            )
        } else {
            None
        };
        Ok(TunnelInterface {
            tun,
            net,
            records,
            applied: None,
            accept: AcceptOptions {
                accept_routes: options.accept_routes,
                accept_dns: options.accept_dns,
                default_route: options.default_route,
                extra_routes,
                excludes,
                accept_routes_within,
            },
            resolvers,
            dns: None,
            _forwarding: forwarding,
        })
    }
}

impl Interface for TunnelInterface {
    fn tun(&self) -> Arc<TunDevice> {
        self.tun.clone()
    }

    fn name(&self) -> &str {
        self.tun.name()
    }

    /// Applies what this client accepts of the server's assignment (addresses, MTU, routes, DNS);
    /// does nothing if that is what is applied already.
    async fn apply(
        &mut self,
        config: &TunnelConfig,
        negotiated_mtu: u16,
        server_addr: Option<IpAddr>,
    ) -> anyhow::Result<Accepted> {
        if self.dns.is_none() {
            // Nothing of ours in the resolver settings: they may have changed since (DHCP).
            for r in host_resolvers() {
                if !self.resolvers.contains(&r) {
                    self.resolvers.push(r);
                }
            }
        }
        let host = HostFacts {
            local_networks: self.net.local_networks(self.tun.name()).await,
            server_addr,
            resolvers: self.resolvers.clone(),
        };
        let accepted = accept_policy::accept(config, negotiated_mtu, &self.accept, &host)
            .context("the server's configuration is refused")?;
        let same = |a: &Accepted| {
            a.addresses == accepted.addresses
                && a.mtu == accepted.mtu
                && a.routes == accepted.routes
                && a.unreachable == accepted.unreachable
        };
        if self.applied.as_ref().is_some_and(same) {
            return Ok(accepted);
        }
        for w in &accepted.warnings {
            tracing::warn!("{w}");
        }
        if self.applied.is_some() {
            tracing::info!("assignment changed; reconfiguring {}", self.name());
            self.clear().await;
        }
        let name = self.name().to_string();
        self.net
            .configure(&InterfaceConfig {
                name: name.clone(),
                mtu: u32::from(accepted.mtu),
                addresses: accepted.addresses.clone(),
            })
            .await
            .context("configuring the tunnel interface")?;
        if let Err(e) = self.install_routes(&name, &accepted, server_addr).await {
            self.net.undo().await;
            return Err(e);
        }
        let shown = |v: &[IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        tracing::info!(
            "{name}: address {} mtu {}, routes: {}{}",
            shown(&accepted.addresses),
            accepted.mtu,
            if accepted.routes.is_empty() {
                "none".into()
            } else {
                shown(&accepted.routes)
            },
            if accepted.unreachable.is_empty() {
                String::new()
            } else {
                format!(
                    "; unreachable (no address from the server): {}",
                    shown(&accepted.unreachable)
                )
            }
        );
        if self.accept.accept_dns && self.dns.is_none() {
            let dns = DnsConfig {
                servers: &accepted.dns,
                search: &accepted.search,
                full_tunnel: self.accept.default_route,
            };
            self.dns = self
                .net
                .apply_dns(&name, &dns, self.records.clone())
                .context("applying pushed DNS")?;
        }
        self.applied = Some(accepted.clone());
        Ok(accepted)
    }

    /// Undoes everything (the TUN itself goes when the process ends).
    async fn teardown(&mut self) {
        self.clear().await;
        self.dns = None;
    }
}

/// The host's resolvers: the `nameserver` lines of /etc/resolv.conf and, when
/// systemd-resolved runs (its stub 127.0.0.53 is all resolv.conf names), the upstream servers it
/// lists in /run/systemd/resolve/resolv.conf (global and per-link servers alike). Unreadable
/// files give none.
pub fn host_resolvers() -> Vec<IpAddr> {
    let mut all = Vec::new();
    for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for r in accept_policy::resolv_conf_nameservers(&text) {
            if !all.contains(&r) {
                all.push(r);
            }
        }
    }
    all
}

impl TunnelInterface {
    async fn install_routes(
        &mut self,
        name: &str,
        accepted: &Accepted,
        server_addr: Option<IpAddr>,
    ) -> anyhow::Result<()> {
        if self.accept.default_route {
            // Full tunnel: keep the SSH connection's own path (and --exclude networks) on the
            // current route, then cover everything else with two half-default routes per family,
            // which win over the default route without replacing it (restoring is deleting ours).
            let Some(server) = server_addr else {
                anyhow::bail!("--default-route needs the server's address: it could not be found for this transport");
            };
            self.net
                .pin_route(IpNet::from(server), server)
                .await
                .context("keeping the path to the server outside the tunnel")?;
            // Excluded networks keep the path they have now (either family), or else take the
            // path to the server.
            for net in self.accept.excludes.clone() {
                let pinned = match self.net.pin_route(net, net.addr()).await {
                    Err(_) if net.addr().is_ipv4() == server.is_ipv4() => self.net.pin_route(net, server).await,
                    other => other,
                };
                if let Err(e) = pinned {
                    tracing::warn!("cannot keep {net} outside the tunnel: {}", netconf::error_chain(&e));
                }
            }
            for net in &accepted.unreachable {
                self.net
                    .add_unreachable_route(*net)
                    .await
                    .context("blocking a family the server gives no address for")?;
            }
        }
        for r in &accepted.routes {
            self.net.add_route(name, *r).await.context("installing routes")?;
        }
        Ok(())
    }

    /// Removes the routes and addresses this client added.
    async fn clear(&mut self) {
        self.net.undo().await;
        if let Some(accepted) = self.applied.take() {
            let name = self.name().to_string();
            for a in accepted.addresses {
                let _ = self.net.remove_address(&name, a).await;
            }
        }
    }
}
