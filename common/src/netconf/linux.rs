//! Linux implementation of [`NetSetup`]: the interface and routes over rtnetlink; DNS
//! (`dns.rs`), forwarding sysctls (`forwarding.rs`) and the NAT table (`nat.rs`) as guards.

use std::net::IpAddr;
use std::sync::Arc;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::route::{RouteHeader, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::dns::Dns;
use super::forwarding::Forwarding;
use super::nat::Masquerade;
use super::{DnsConfig, InterfaceConfig, NetSetup, NetSetupError, RestoreGuard, RestoreRecords};

const EEXIST: i32 = 17;
const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;

pub struct LinuxNetSetup {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
    /// The routes this setup added, newest last.
    added: Vec<AddedRoute>,
    /// The route protocol number its routes carry (`static` unless marked, see [`Self::marked`]).
    protocol: RouteProtocol,
}

/// One route this setup added, as needed to delete it again.
#[derive(Debug, Clone, Copy)]
struct AddedRoute {
    protocol: RouteProtocol,
    /// Output interface (none for unreachable routes).
    index: Option<u32>,
    net: IpNet,
    via: Option<IpAddr>,
    unreachable: bool,
}

impl AddedRoute {
    fn message(&self) -> Result<RouteMessage, NetSetupError> {
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.net.network(), self.net.prefix_len())
            .map_err(|e| failed(format!("route {}", self.net), e))?;
        let b = match self.index {
            Some(i) => b.output_interface(i),
            None => b,
        };
        let b = match self.via {
            Some(gw) => b
                .gateway(gw)
                .map_err(|e| failed(format!("route {} via {gw}", self.net), e))?,
            None => b,
        };
        let b = if self.unreachable {
            b.kind(netlink_packet_route::route::RouteType::Unreachable)
        } else {
            b
        };
        // Marked (the client's routes), so that a later run recognises what a killed one left.
        Ok(b.protocol(self.protocol).build())
    }
}

impl Drop for LinuxNetSetup {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// The destination of a route message (`None` if it has none, i.e. a default route).
fn destination(msg: &RouteMessage) -> Option<IpNet> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute};
    let len = msg.header.destination_prefix_length;
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => IpNet::new(IpAddr::V4(*v4), len).ok(),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => IpNet::new(IpAddr::V6(*v6), len).ok(),
        _ => None,
    })
}

fn failed(step: impl Into<String>, e: impl Into<super::Cause>) -> NetSetupError {
    NetSetupError::failed(step, e)
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl LinuxNetSetup {
    /// Opens a netlink connection in the calling thread's network namespace.
    pub fn new() -> Result<LinuxNetSetup, NetSetupError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| failed("netlink socket", e))?;
        let connection = tokio::spawn(conn);
        Ok(LinuxNetSetup {
            handle,
            connection,
            added: Vec::new(),
            protocol: RouteProtocol::Static,
        })
    }

    /// This setup with every route it adds marked [`super::ROUTE_PROTOCOL`] (the client's routes;
    /// the daemon's stay `static`, so that no client sweep ever takes them).
    pub fn marked(mut self) -> LinuxNetSetup {
        self.protocol = RouteProtocol::Other(super::ROUTE_PROTOCOL);
        self
    }

    pub async fn link_index(&self, name: &str) -> Result<u32, NetSetupError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) | Err(_) => Err(NetSetupError::NoInterface(name.to_string())),
        }
    }
}

impl NetSetup for LinuxNetSetup {
    async fn configure(&mut self, iface: &InterfaceConfig) -> Result<(), NetSetupError> {
        let index = self.link_index(&iface.name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(iface.mtu).build())
            .execute()
            .await
            .map_err(|e| failed(format!("set MTU {} on {}", iface.mtu, iface.name), e))?;
        for net in &iface.addresses {
            let mut req = self.handle.address().add(index, net.addr(), net.prefix_len());
            if net.addr().is_ipv6() {
                // No duplicate address detection: the address is usable at once.
                req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            }
            match req.execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(failed(format!("add address {net} to {}", iface.name), e)),
            }
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| failed(format!("bring {} up", iface.name), e))
    }

    async fn add_route(&mut self, ifname: &str, net: IpNet) -> Result<(), NetSetupError> {
        let net = net.trunc();
        let index = self.link_index(ifname).await?;
        let route = AddedRoute {
            protocol: self.protocol,
            index: Some(index),
            net,
            via: None,
            unreachable: false,
        };
        match self.handle.route().add(route.message()?).execute().await {
            Ok(()) => {
                self.added.push(route);
                Ok(())
            }
            Err(e) if errno(&e) == Some(EEXIST) => {
                tracing::warn!("route {net} already exists; leaving it as it is");
                Ok(())
            }
            Err(e) => Err(failed(format!("add route {net} via {ifname}"), e)),
        }
    }

    async fn remove_route(&mut self, ifname: &str, net: IpNet) -> Result<(), NetSetupError> {
        let net = net.trunc();
        let Some(pos) = self.added.iter().position(|r| r.net == net) else {
            return Ok(());
        };
        let route = self.added.remove(pos);
        match self.handle.route().del(route.message()?).execute().await {
            Ok(()) => Ok(()),
            // Gone already (e.g. the interface went away and took its routes).
            Err(e) if errno(&e) == Some(ESRCH) => Ok(()),
            Err(e) => Err(failed(format!("remove route {net} via {ifname}"), e)),
        }
    }

    async fn remove_address(&mut self, ifname: &str, net: IpNet) -> Result<(), NetSetupError> {
        let Ok(index) = self.link_index(ifname).await else {
            return Ok(());
        };
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Ok(Some(msg)) = addrs.try_next().await {
            let matches = msg.header.prefix_len == net.prefix_len()
                && msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == net.addr()));
            if matches {
                return match self.handle.address().del(msg).execute().await {
                    Ok(()) => Ok(()),
                    Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => Ok(()),
                    Err(e) => Err(failed(format!("remove address {net} from {ifname}"), e)),
                };
            }
        }
        Ok(())
    }

    async fn undo(&mut self) {
        while let Some(route) = self.added.pop() {
            if let Ok(msg) = route.message()
                && let Err(e) = self.handle.route().del(msg).execute().await
                && errno(&e) != Some(ESRCH)
            {
                tracing::warn!("could not remove route {}: {e}", route.net);
            }
        }
    }

    async fn sweep_marked_routes(&mut self, only: Option<&[IpNet]>) -> usize {
        let mut stale = Vec::new();
        let dumps = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ];
        for dump in dumps {
            let mut routes = self.handle.route().get(dump).execute();
            while let Ok(Some(msg)) = routes.try_next().await {
                if msg.header.protocol != RouteProtocol::Other(super::ROUTE_PROTOCOL)
                    || msg.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    continue;
                }
                let net = destination(&msg);
                if only.is_none_or(|nets| net.is_some_and(|n| nets.contains(&n))) {
                    stale.push((net, msg));
                }
            }
        }
        let mut removed = 0;
        for (net, msg) in stale {
            let shown = net.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
            match self.handle.route().del(msg).execute().await {
                Ok(()) => {
                    tracing::warn!("removed route {shown} left by a previous run");
                    removed += 1;
                }
                Err(e) if errno(&e) == Some(ESRCH) => {}
                Err(e) => tracing::warn!("could not remove route {shown} left by a previous run: {e}"),
            }
        }
        removed
    }

    fn routes(&self) -> Vec<IpNet> {
        self.added.iter().map(|r| r.net).collect()
    }

    /// The networks of every address on the host's other interfaces (not `exclude`, not
    /// loopback or link-local ones): what a pushed route must not take over.
    async fn local_networks(&self, exclude: &str) -> Vec<IpNet> {
        let skip = self.link_index(exclude).await.ok();
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Ok(Some(msg)) = addrs.try_next().await {
            if Some(msg.header.index) == skip {
                continue;
            }
            for a in &msg.attributes {
                if let AddressAttribute::Address(ip) = a {
                    let local = match ip {
                        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
                        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local(),
                    };
                    if !local && let Ok(n) = IpNet::new(*ip, msg.header.prefix_len) {
                        out.push(n.trunc());
                    }
                }
            }
        }
        out
    }

    /// How the kernel reaches `addr` now: (gateway, output interface index).
    async fn route_to(&self, addr: IpAddr) -> Result<(Option<IpAddr>, u32), NetSetupError> {
        let host = IpNet::from(addr);
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, host.prefix_len())
            .map_err(|e| failed(format!("route lookup {addr}"), e))?
            .build();
        let mut routes = self.handle.route().get(msg).execute();
        let route = routes
            .try_next()
            .await
            .map_err(|e| failed(format!("route lookup {addr}"), e))?
            .ok_or_else(|| failed(format!("route lookup {addr}"), "no route"))?;
        let mut gateway = None;
        let mut oif = None;
        for a in &route.attributes {
            match a {
                netlink_packet_route::route::RouteAttribute::Gateway(g) => {
                    gateway = match g {
                        netlink_packet_route::route::RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                        netlink_packet_route::route::RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                        _ => None,
                    }
                }
                netlink_packet_route::route::RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Ok((
            gateway,
            oif.ok_or_else(|| failed(format!("route lookup {addr}"), "no output interface"))?,
        ))
    }

    /// Routes `net` the way `addr` is reached now (keeps a path outside the tunnel); recorded
    /// for undo like every other route.
    async fn pin_route(&mut self, net: IpNet, addr: IpAddr) -> Result<(), NetSetupError> {
        let net = net.trunc();
        let (via, index) = self.route_to(addr).await?;
        let route = AddedRoute {
            protocol: self.protocol,
            index: Some(index),
            net,
            via,
            unreachable: false,
        };
        match self.handle.route().add(route.message()?).execute().await {
            Ok(()) => {
                self.added.push(route);
                Ok(())
            }
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(failed(format!("add route {net}"), e)),
        }
    }

    /// Routes `net` the way the host reaches `addr` without any route of ours: the longest
    /// matching unicast route of the main table not marked [`super::ROUTE_PROTOCOL`] (lowest
    /// metric first), so that a full tunnel already in place is not taken.
    async fn pin_route_outside(&mut self, net: IpNet, addr: IpAddr) -> Result<(), NetSetupError> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
        let net = net.trunc();
        let dump = match addr {
            IpAddr::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpAddr::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let mut best: Option<(u8, u32, Option<IpAddr>, u32)> = None;
        let mut routes = self.handle.route().get(dump).execute();
        while let Ok(Some(msg)) = routes.try_next().await {
            let h = &msg.header;
            if h.protocol == RouteProtocol::Other(super::ROUTE_PROTOCOL)
                || h.table != RouteHeader::RT_TABLE_MAIN
                || h.kind != RouteType::Unicast
            {
                continue;
            }
            let dest = destination(&msg).unwrap_or_else(|| IpNet::new(addr, 0).map(|n| n.trunc()).unwrap_or(net));
            if !dest.contains(&addr) {
                continue;
            }
            let (mut gw, mut oif, mut metric) = (None, None, 0);
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gw = Some(IpAddr::V4(*v4)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => gw = Some(IpAddr::V6(*v6)),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            let Some(oif) = oif else { continue };
            let better =
                best.is_none_or(|(len, m, _, _)| dest.prefix_len() > len || (dest.prefix_len() == len && metric < m));
            if better {
                best = Some((dest.prefix_len(), metric, gw, oif));
            }
        }
        let (_, _, via, index) =
            best.ok_or_else(|| failed(format!("route lookup {addr}"), "no route outside the tunnel"))?;
        let route = AddedRoute {
            protocol: self.protocol,
            index: Some(index),
            net,
            via,
            unreachable: false,
        };
        match self.handle.route().add(route.message()?).execute().await {
            Ok(()) => {
                self.added.push(route);
                Ok(())
            }
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(failed(format!("add route {net}"), e)),
        }
    }

    /// Makes `net` unreachable (applications get an immediate error instead of their packets
    /// taking another path); recorded for undo like every other route.
    async fn add_unreachable_route(&mut self, net: IpNet) -> Result<(), NetSetupError> {
        let route = AddedRoute {
            protocol: self.protocol,
            index: None,
            net: net.trunc(),
            via: None,
            unreachable: true,
        };
        match self.handle.route().add(route.message()?).execute().await {
            Ok(()) => {
                self.added.push(route);
                Ok(())
            }
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(failed(format!("add unreachable route {net}"), e)),
        }
    }

    fn apply_dns(
        &self,
        ifname: &str,
        dns: &DnsConfig<'_>,
        records: Arc<dyn RestoreRecords>,
    ) -> Result<Option<RestoreGuard>, NetSetupError> {
        let applied = Dns::apply(ifname, dns.servers, dns.search, dns.full_tunnel, records)?;
        Ok(applied.map(RestoreGuard::new))
    }

    fn enable_forwarding(&self, records: Arc<dyn RestoreRecords>) -> Result<RestoreGuard, NetSetupError> {
        Forwarding::enable(records).map(RestoreGuard::new)
    }

    fn masquerade(&self, tun: &str, pool: IpNet, out_iface: &str) -> Result<RestoreGuard, NetSetupError> {
        Masquerade::install(tun, pool, out_iface).map(RestoreGuard::new)
    }
}
