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
    /// The session ended and the client will try again: put back what must not stay while the
    /// tunnel is down (pushed DNS, so that the server's name resolves with the host's own
    /// resolvers).
    async fn session_down(&mut self) {}
    /// About to dial `addr` (the server, resolved): keep the path to it outside the tunnel.
    async fn before_connect(&mut self, addr: IpAddr) {
        let _ = addr;
    }
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
    /// The servers and search domains `dns` applied.
    dns_applied: Option<(Vec<IpAddr>, Vec<String>)>,
    /// The server address the full tunnel keeps outside it.
    pinned_server: Option<IpAddr>,
    /// The host's own resolvers, kept outside the full tunnel while it is down.
    resolver_pins: Vec<IpNet>,
    /// Held while this client runs on the interface.
    _lock: crate::run_dir::InstanceLock,
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

/// The restore record of the routes a client added (one destination a line).
const ROUTES_RECORD: &str = "routes";

/// The `nameserver` addresses of a resolv.conf (at most 8; scoped IPv6 ones left out).
fn resolv_conf_nameservers(text: &[u8]) -> Vec<IpAddr> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()?.parse().ok())?
        })
        .take(8)
        .collect()
}

fn parse_routes_record(text: &[u8]) -> Vec<IpNet> {
    String::from_utf8_lossy(text)
        .lines()
        .take(10_000)
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes what killed clients in this network namespace left: their marked routes (all marked
/// routes when no other client runs here; otherwise only those a dead client recorded), and
/// their sysctl and resolv.conf records when no other client runs.
async fn sweep_leftovers(net: &mut OsNetSetup, name: &str, live: &[String], gone: Vec<String>) {
    for link in std::iter::once(name.to_string()).chain(gone) {
        let records = RestoreDir::new(&link);
        if link != name && live.is_empty() {
            netconf::recover_after_crash(&records, false);
        }
        if let Some(text) = records.load(ROUTES_RECORD) {
            net.sweep_marked_routes(Some(&parse_routes_record(&text))).await;
            records.remove(ROUTES_RECORD);
        }
    }
    if live.is_empty() {
        net.sweep_marked_routes(None).await;
    } else {
        tracing::debug!(
            "other clients run here ({}): sweeping only recorded routes",
            live.join(", ")
        );
    }
}

impl TunnelInterface {
    pub async fn create(
        name: &str,
        offload: bool,
        extra_routes: Vec<IpNet>,
        excludes: Vec<IpNet>,
        accept_routes_within: Vec<IpNet>,
        options: HostOptions,
    ) -> anyhow::Result<TunnelInterface> {
        // First make sure no client runs on this interface: what follows restores host
        // settings, which must never be a live client's.
        let lock = crate::run_dir::lock_instance(name)?;
        // A previous run killed with SIGKILL may have left host settings changed: restore them.
        let own = RestoreDir::new(name);
        let (live, gone) = crate::run_dir::other_clients(name);
        netconf::recover_after_crash(&own, !live.is_empty());
        let mut net = netconf::open_marked()?;
        sweep_leftovers(&mut net, name, &live, gone).await;
        let records: Arc<dyn RestoreRecords> = Arc::new(own);
        // The original resolvers, read before this client changes any DNS setting.
        let resolvers = host_resolvers();
        let tun = Arc::new(TunDevice::create(name, offload)?);
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
            dns_applied: None,
            pinned_server: None,
            resolver_pins: Vec::new(),
            _lock: lock,
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
        // Up again: the host's resolvers go back into the tunnel.
        for net in std::mem::take(&mut self.resolver_pins) {
            let _ = self.net.remove_route(self.tun.name(), net).await;
        }
        let same = |a: &Accepted| {
            a.addresses == accepted.addresses
                && a.mtu == accepted.mtu
                && a.routes == accepted.routes
                && a.unreachable == accepted.unreachable
        };
        let server_moved = self.accept.default_route && server_addr != self.pinned_server;
        if self.applied.as_ref().is_some_and(same) && !server_moved {
            self.apply_dns(&accepted)?;
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
        self.pinned_server = server_addr.filter(|_| self.accept.default_route);
        self.applied = Some(accepted.clone());
        self.save_routes();
        self.apply_dns(&accepted)?;
        Ok(accepted)
    }

    /// Undoes everything (the TUN itself goes when the process ends).
    async fn teardown(&mut self) {
        self.clear().await;
        self.dns = None;
        self.dns_applied = None;
        self.records.remove(ROUTES_RECORD);
    }

    async fn session_down(&mut self) {
        if self.dns.take().is_some() {
            tracing::info!("tunnel down: the host's own resolvers are back until it is up again");
        }
        self.dns_applied = None;
        // The full tunnel covers the host's resolvers too: while it is down, reach them the way
        // the server is reached, so that the server's name can be resolved.
        if self.pinned_server.is_none() || !self.accept.default_route {
            return;
        }
        let local = self.net.local_networks(self.tun.name()).await;
        let text = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        for ns in resolv_conf_nameservers(&text) {
            let net = IpNet::from(ns);
            if ns.is_loopback()
                || self.pinned_server == Some(ns)
                || local.iter().any(|l| l.contains(&ns))
                || self.resolver_pins.contains(&net)
            {
                continue;
            }
            match self.net.pin_route_outside(net, ns).await {
                Ok(()) => {
                    tracing::info!("tunnel down: resolver {ns} reached outside the tunnel until it is up again");
                    self.resolver_pins.push(net);
                }
                Err(e) => tracing::warn!(
                    "cannot reach resolver {ns} outside the tunnel: {}",
                    netconf::error_chain(&e)
                ),
            }
        }
        self.save_routes();
    }

    async fn before_connect(&mut self, addr: IpAddr) {
        // Only the full tunnel covers the server's address: a server that moved is reached
        // outside it too (the way the host reaches it without the tunnel's routes).
        let Some(old) = self.pinned_server.filter(|_| self.accept.default_route) else {
            return;
        };
        if old == addr {
            return;
        }
        match self.net.pin_route_outside(IpNet::from(addr), addr).await {
            Ok(()) => {
                tracing::info!("the server is now at {addr}: reaching it outside the tunnel");
                self.save_routes();
            }
            Err(e) => tracing::warn!("cannot keep {addr} outside the tunnel: {}", netconf::error_chain(&e)),
        }
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

    /// Applies the pushed DNS if it is not applied as it is now (first time, after the tunnel
    /// was down, or changed by the server).
    fn apply_dns(&mut self, accepted: &Accepted) -> anyhow::Result<()> {
        if !self.accept.accept_dns {
            return Ok(());
        }
        let wanted = (accepted.dns.clone(), accepted.search.clone());
        if self.dns_applied.as_ref() == Some(&wanted) {
            return Ok(());
        }
        if self.dns_applied.is_some() {
            tracing::info!("the server pushes other DNS settings; applying them");
        }
        // The original comes back first, so it is what is saved again.
        self.dns = None;
        self.dns_applied = None;
        let dns = DnsConfig {
            servers: &accepted.dns,
            search: &accepted.search,
            full_tunnel: self.accept.default_route,
        };
        self.dns = self
            .net
            .apply_dns(self.tun.name(), &dns, self.records.clone())
            .context("applying pushed DNS")?;
        self.dns_applied = Some(wanted);
        Ok(())
    }

    /// Records the routes this client added (they are also marked), for the sweep after a crash.
    fn save_routes(&self) {
        let text: String = self.net.routes().iter().map(|n| format!("{n}\n")).collect();
        self.records.save(ROUTES_RECORD, text.as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_of_a_resolv_conf() {
        let text = b"# comment\nnameserver 192.0.2.1\nnameserver  2001:db8::1\nnameserver fe80::1%eth0\nsearch x\nnameserver bogus\n";
        let got = resolv_conf_nameservers(text);
        assert_eq!(
            got,
            ["192.0.2.1".parse::<IpAddr>().unwrap(), "2001:db8::1".parse().unwrap()]
        );
        assert_eq!(parse_routes_record(b"0.0.0.0/1\n::/1\njunk\n").len(), 2);
    }
}
