//! What a client accepts of the configuration a server pushes (the client decides, as with
//! WireGuard's AllowedIPs or OpenVPN's `pull-filter`). Pure: the host facts (local networks, the
//! SSH server's address) are passed in, the result says what to apply; no I/O here.
//!
//! The rules:
//! * assigned addresses are applied as host addresses (/32, /128), so the kernel adds no prefix
//!   route for them; an address that is not unicast or lies inside a local network refuses the
//!   whole configuration (it would answer ARP/ND for a neighbour's address);
//! * the server's tunnel addresses get host routes through the tunnel;
//! * pushed routes (including the pool prefix) are installed only with `accept_routes`, and never
//!   one that overlaps a local network or an `--exclude`d one, covers the SSH server or one of the
//!   host's resolvers, or touches loopback, link-local, multicast or unspecified addresses;
//! * pushed routes then fit a budget: none broader than /8 (IPv4) or /16 (IPv6), their union at
//!   most one /8 of IPv4 and one /16 of IPv6, at most 256 of them; the rest is refused with one
//!   warning. `--accept-routes-within` replaces the budget with an allow-list: routes inside a
//!   listed network are accepted, others refused (the count limit stays);
//! * the pushed MTU must lie in [576, 65535], and be at least 1280 when IPv6 is assigned;
//! * pushed resolvers must be unicast addresses, search domains RFC 1123 host names;
//! * with the full tunnel, a family the server assigns no address for is made unreachable
//!   instead of leaking past the tunnel;
//! * the server may send only from its tunnel addresses and from what is routed through the
//!   tunnel (`sources`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::proto::TunnelConfig;

/// The smallest MTU any IPv4 host must accept, and IPv6's minimum link MTU.
pub const MIN_MTU: u16 = 576;
pub const MIN_MTU_V6: u16 = 1280;
/// Pushed routes broader than this are refused (choose them yourself with `--route` or
/// `--default-route`).
const BROADEST_PUSHED_V4: u8 = 8;
const BROADEST_PUSHED_V6: u8 = 16;
/// The default budget of pushed routes: the union covers at most this many addresses of each
/// family (one /8 of IPv4, one /16 of IPv6) ...
pub const BUDGET_V4: u128 = 1 << 24;
pub const BUDGET_V6: u128 = 1 << 112;
/// ... and at most this many routes are accepted, also with an allow-list.
pub const MAX_PUSHED_ROUTES: usize = 256;
/// Refused pushed routes warned about one by one; the others are counted in one warning.
const MAX_ROUTE_WARNINGS: usize = 16;
/// At most this many resolvers and search domains are taken (resolv.conf uses 3 and 6).
const MAX_DNS: usize = 8;
const MAX_SEARCH: usize = 6;

/// What the user of this client allows.
#[derive(Debug, Clone, Default)]
pub struct AcceptOptions {
    /// Install the routes the server pushes.
    pub accept_routes: bool,
    /// Apply the resolvers the server pushes.
    pub accept_dns: bool,
    /// Send everything through the tunnel (`--default-route`).
    pub default_route: bool,
    /// `--route`: the user's own routes through the tunnel.
    pub extra_routes: Vec<IpNet>,
    /// `--exclude`: networks kept off the tunnel.
    pub excludes: Vec<IpNet>,
    /// `--accept-routes-within`: when not empty, pushed routes must lie inside one of these
    /// networks, instead of fitting the default budget.
    pub accept_routes_within: Vec<IpNet>,
}

/// Facts about this host that the rules depend on.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// Networks of the addresses on the host's other interfaces.
    pub local_networks: Vec<IpNet>,
    /// The SSH server's address, if known.
    pub server_addr: Option<IpAddr>,
    /// The resolvers the host used before this client changed anything (resolv.conf's
    /// `nameserver` lines, systemd-resolved's upstream servers): no pushed route may cover them.
    pub resolvers: Vec<IpAddr>,
}

/// What the client applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accepted {
    /// Host addresses (/32, /128) for the tunnel interface.
    pub addresses: Vec<IpNet>,
    pub mtu: u16,
    /// Routes through the tunnel.
    pub routes: Vec<IpNet>,
    /// Full tunnel, families without an address: routes of type unreachable (no leak).
    pub unreachable: Vec<IpNet>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    /// Where packets from the server may come from: its tunnel addresses and the routes.
    pub sources: Vec<IpNet>,
    /// What was refused, for the log.
    pub warnings: Vec<String>,
}

/// A configuration the client refuses as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigRefused {
    #[error("pushed MTU {0} is outside [576, 65535]")]
    Mtu(u16),
    #[error("pushed MTU {0} is below IPv6's minimum of 1280, and an IPv6 address is assigned")]
    MtuV6(u16),
    #[error("assigned address {0} is not a unicast address of its family")]
    NotUnicast(IpAddr),
    #[error("assigned address {addr} lies inside the local network {local}")]
    InsideLocal { addr: IpAddr, local: IpNet },
    #[error("assigned address {addr} is {what}")]
    Reserved { addr: IpAddr, what: String },
    #[error("no address assigned")]
    NoAddress,
}

fn unicast_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() || a.is_link_local())
}

fn unicast_v6(a: Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_unicast_link_local())
}

fn is_unicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => unicast_v4(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none() && unicast_v6(v6),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// Addresses no pushed route may touch, and what they are.
const SPECIAL_USE: [(&str, &str); 8] = [
    ("0.0.0.0/8", "unspecified (\"this network\")"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// Why a server-chosen host address (the client's own or the server's tunnel address) may not be
/// used on this host: the SSH server, one of its resolvers, a special-use or an excluded network.
fn reserved_for_host(addr: IpAddr, host: &HostFacts, opts: &AcceptOptions) -> Option<String> {
    let net = IpNet::from(addr);
    if host.server_addr == Some(addr) {
        Some("the SSH server's address".to_string())
    } else if host.resolvers.contains(&addr) {
        Some("one of this host's resolvers".to_string())
    } else if let Some((special, what)) = special_use(&net) {
        Some(format!("a {what} address ({special})"))
    } else {
        opts.excludes
            .iter()
            .find(|x| x.contains(&addr))
            .map(|x| format!("inside the excluded network {x}"))
    }
}

fn special_use(net: &IpNet) -> Option<(IpNet, &'static str)> {
    SPECIAL_USE.iter().find_map(|(s, what)| {
        let special = s.parse::<IpNet>().ok()?;
        overlaps(&special, net).then_some((special, *what))
    })
}

/// The first and last address of `net`, as numbers (IPv4 in the low 32 bits).
fn span(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (u32::from(n.network()).into(), u32::from(n.broadcast()).into()),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// How many addresses the union of `nets` (all of one family) covers, saturating.
fn union_size(nets: &[IpNet]) -> u128 {
    let mut spans: Vec<(u128, u128)> = nets.iter().map(span).collect();
    spans.sort_unstable();
    let mut total: u128 = 0;
    let mut current: Option<(u128, u128)> = None;
    for (lo, hi) in spans {
        match current {
            Some((clo, chi)) if lo <= chi.saturating_add(1) => current = Some((clo, chi.max(hi))),
            _ => {
                if let Some((clo, chi)) = current {
                    total = total.saturating_add(chi - clo).saturating_add(1);
                }
                current = Some((lo, hi));
            }
        }
    }
    if let Some((clo, chi)) = current {
        total = total.saturating_add(chi - clo).saturating_add(1);
    }
    total
}

/// The `nameserver` addresses of resolv.conf text (a scope suffix `%eth0` is dropped; lines
/// that are not addresses are skipped), at most 32 of them.
pub fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let addr = words.next()?;
            addr.split('%').next()?.parse().ok()
        })
        .take(MAX_DNS * 4)
        .collect()
}

/// Whether `name` is an RFC 1123 host name: labels of 1 to 63 letters, digits and hyphens, not
/// starting or ending with a hyphen, 253 characters at most (one trailing dot allowed).
pub fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn half_defaults(v6: bool) -> [IpNet; 2] {
    let parse = |s: &str| s.parse::<IpNet>().unwrap_or_default();
    if v6 {
        [parse("::/1"), parse("8000::/1")]
    } else {
        [parse("0.0.0.0/1"), parse("128.0.0.0/1")]
    }
}

/// Decides what to apply of `config`; `negotiated_mtu` is the smaller of both ends' hello MTUs.
pub fn accept(
    config: &TunnelConfig,
    negotiated_mtu: u16,
    opts: &AcceptOptions,
    host: &HostFacts,
) -> Result<Accepted, ConfigRefused> {
    let mut out = Accepted::default();
    let warn = |out: &mut Accepted, w: String| out.warnings.push(w);

    // Addresses: host addresses only, unicast, outside every local network.
    let v4 = config.addr4.map(|n| n.addr()).filter(IpAddr::is_ipv4);
    let v6 = config.addr6.map(|n| n.addr()).filter(IpAddr::is_ipv6);
    if config.addr4.is_some() != v4.is_some() || config.addr6.is_some() != v6.is_some() {
        let bad = config
            .addresses()
            .map(|n| n.addr())
            .find(|a| v4 != Some(*a) && v6 != Some(*a));
        return Err(ConfigRefused::NotUnicast(
            bad.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ));
    }
    for addr in v4.iter().chain(v6.iter()).copied() {
        if !is_unicast(addr) {
            return Err(ConfigRefused::NotUnicast(addr));
        }
        if let Some(local) = host.local_networks.iter().find(|l| l.contains(&addr)) {
            return Err(ConfigRefused::InsideLocal { addr, local: *local });
        }
        if let Some(what) = reserved_for_host(addr, host, opts) {
            return Err(ConfigRefused::Reserved { addr, what });
        }
        out.addresses.push(IpNet::from(addr));
    }
    if out.addresses.is_empty() {
        return Err(ConfigRefused::NoAddress);
    }

    // MTU.
    if config.mtu < MIN_MTU {
        return Err(ConfigRefused::Mtu(config.mtu));
    }
    let mtu = config.mtu.min(negotiated_mtu);
    if v6.is_some() && mtu < MIN_MTU_V6 {
        return Err(ConfigRefused::MtuV6(mtu));
    }
    out.mtu = mtu;

    let covers_server = |net: &IpNet| host.server_addr.is_some_and(|s| net.contains(&s));
    let has_family = |net: &IpNet| {
        if net.addr().is_ipv4() {
            v4.is_some()
        } else {
            v6.is_some()
        }
    };
    let push = |out: &mut Accepted, net: IpNet| {
        if !out.routes.contains(&net) {
            out.routes.push(net);
        }
    };

    // The server's own tunnel addresses: host routes through the tunnel.
    let peers = config
        .peer4
        .map(IpAddr::V4)
        .into_iter()
        .chain(config.peer6.map(IpAddr::V6));
    for peer in peers {
        let net = IpNet::from(peer);
        if !is_unicast(peer) || !has_family(&net) {
            warn(&mut out, format!("ignoring server tunnel address {peer}: not usable"));
        } else if let Some(local) = host.local_networks.iter().find(|l| l.contains(&peer)) {
            warn(
                &mut out,
                format!("ignoring server tunnel address {peer}: inside the local network {local}"),
            );
        } else if covers_server(&net) {
            warn(
                &mut out,
                format!("ignoring server tunnel address {peer}: it is the SSH server itself"),
            );
        } else if let Some(what) = reserved_for_host(peer, host, opts) {
            warn(&mut out, format!("ignoring server tunnel address {peer}: it is {what}"));
        } else {
            push(&mut out, net);
            out.sources.push(net);
        }
    }

    // Pushed routes, through every filter, then the budget (or the allow-list).
    if opts.accept_routes {
        let allow_list = !opts.accept_routes_within.is_empty();
        let mut pushed: Vec<IpNet> = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        let mut over_budget: Vec<IpNet> = Vec::new();
        for net in config.routes.iter().map(IpNet::trunc) {
            let broadest = if net.addr().is_ipv4() {
                BROADEST_PUSHED_V4
            } else {
                BROADEST_PUSHED_V6
            };
            let refusal = if !allow_list && net.prefix_len() < broadest {
                Some(format!(
                    "it is broader than /{broadest} (choose that yourself with --route or --default-route)"
                ))
            } else if !has_family(&net) {
                Some("no address of that family is assigned".to_string())
            } else if let Some((special, what)) = special_use(&net) {
                Some(format!("it touches {what} addresses ({special})"))
            } else if covers_server(&net) {
                Some(format!(
                    "it covers the SSH server {} itself",
                    host.server_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                ))
            } else if let Some(r) = host.resolvers.iter().find(|r| net.contains(*r)) {
                Some(format!("it covers this host's resolver {r}"))
            } else if let Some(local) = host.local_networks.iter().find(|l| overlaps(l, &net)) {
                Some(format!("it overlaps the local network {local}"))
            } else if let Some(x) = opts.excludes.iter().find(|x| overlaps(x, &net)) {
                Some(format!("it overlaps the excluded network {x}"))
            } else if allow_list && !opts.accept_routes_within.iter().any(|w| w.contains(&net)) {
                Some("it is outside every --accept-routes-within network".to_string())
            } else {
                None
            };
            if let Some(why) = refusal {
                refused.push(format!("not installing pushed route {net}: {why}"));
                continue;
            }
            if pushed.contains(&net) {
                continue;
            }
            let fits = pushed.len() < MAX_PUSHED_ROUTES
                && (allow_list || {
                    let (family, budget): (Vec<IpNet>, u128) = if net.addr().is_ipv4() {
                        (
                            pushed.iter().copied().filter(|n| n.addr().is_ipv4()).collect(),
                            BUDGET_V4,
                        )
                    } else {
                        (
                            pushed.iter().copied().filter(|n| n.addr().is_ipv6()).collect(),
                            BUDGET_V6,
                        )
                    };
                    union_size(&[family, vec![net]].concat()) <= budget
                });
            if fits {
                pushed.push(net);
            } else {
                over_budget.push(net);
            }
        }
        let shown = refused.len().min(MAX_ROUTE_WARNINGS);
        for w in refused.drain(..shown) {
            warn(&mut out, w);
        }
        if !refused.is_empty() {
            warn(
                &mut out,
                format!(
                    "not installing {} more pushed routes refused for the same reasons",
                    refused.len()
                ),
            );
        }
        if !over_budget.is_empty() {
            let listed: Vec<String> = over_budget.iter().take(8).map(IpNet::to_string).collect();
            let more = if over_budget.len() > listed.len() { ", ..." } else { "" };
            let limit = if allow_list {
                format!("more than {MAX_PUSHED_ROUTES} routes")
            } else {
                format!(
                    "beyond the budget of one /8 of IPv4, one /16 of IPv6 and {MAX_PUSHED_ROUTES} routes; \
                     allow more with --accept-routes-within"
                )
            };
            warn(
                &mut out,
                format!(
                    "not installing {} pushed routes, {limit}: {}{more}",
                    over_budget.len(),
                    listed.join(", ")
                ),
            );
        }
        for net in pushed {
            push(&mut out, net);
        }
    }

    // The user's own routes: only the route to the SSH server itself is refused (the tunnel's
    // own packets would go into the tunnel), unless the full tunnel pins that path.
    for net in opts.extra_routes.iter().map(IpNet::trunc) {
        if covers_server(&net) && !opts.default_route {
            warn(
                &mut out,
                format!("not installing route {net}: it covers the SSH server itself"),
            );
        } else {
            push(&mut out, net);
        }
    }

    // Full tunnel: both families always; one without an address is made unreachable.
    if opts.default_route {
        for is_v6 in [false, true] {
            let have = if is_v6 { v6.is_some() } else { v4.is_some() };
            for net in half_defaults(is_v6) {
                if have {
                    push(&mut out, net);
                } else {
                    out.unreachable.push(net);
                }
            }
        }
    }
    for r in &out.routes {
        if !out.sources.contains(r) {
            out.sources.push(*r);
        }
    }

    // Resolvers and search domains.
    if opts.accept_dns {
        for d in &config.dns {
            if !is_unicast(*d) {
                warn(&mut out, format!("ignoring pushed resolver {d}: not a unicast address"));
            } else if out.dns.len() >= MAX_DNS {
                warn(&mut out, format!("ignoring pushed resolver {d}: more than {MAX_DNS}"));
            } else if !out.dns.contains(d) {
                out.dns.push(*d);
            }
        }
        for s in &config.search {
            if !is_host_name(s) {
                warn(
                    &mut out,
                    format!(
                        "ignoring pushed search domain \"{}\": not a valid host name",
                        crate::escape::for_log(s)
                    ),
                );
            } else if out.search.len() >= MAX_SEARCH {
                warn(
                    &mut out,
                    format!(
                        "ignoring pushed search domain \"{}\": more than {MAX_SEARCH}",
                        crate::escape::for_log(s)
                    ),
                );
            } else {
                out.search.push(s.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        if out.dns.is_empty() {
            out.search.clear();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn config() -> TunnelConfig {
        TunnelConfig {
            addr4: Some(net("10.203.0.2/24")),
            addr6: Some(net("fd00:203::2/64")),
            peer4: Some("10.203.0.1".parse().unwrap()),
            peer6: Some("fd00:203::1".parse().unwrap()),
            mtu: 1500,
            routes: vec![net("10.203.0.0/24"), net("10.202.0.0/24"), net("fd00:202::/64")],
            dns: vec!["10.202.0.53".parse().unwrap()],
            search: vec!["corp.example".into()],
            keepalive_ms: 5000,
        }
    }

    fn host() -> HostFacts {
        HostFacts {
            local_networks: vec![net("192.168.77.0/24"), net("2001:db8:1::/64")],
            server_addr: Some("192.168.77.1".parse().unwrap()),
            resolvers: Vec::new(),
        }
    }

    fn opts() -> AcceptOptions {
        AcceptOptions {
            accept_routes: true,
            accept_dns: true,
            ..Default::default()
        }
    }

    #[test]
    fn an_honest_configuration_is_applied_with_host_addresses() {
        let a = accept(&config(), 1400, &opts(), &host()).unwrap();
        assert_eq!(a.addresses, vec![net("10.203.0.2/32"), net("fd00:203::2/128")]);
        assert_eq!(a.mtu, 1400);
        assert_eq!(
            a.routes,
            vec![
                net("10.203.0.1/32"),
                net("fd00:203::1/128"),
                net("10.203.0.0/24"),
                net("10.202.0.0/24"),
                net("fd00:202::/64")
            ]
        );
        assert!(a.unreachable.is_empty() && a.warnings.is_empty(), "{a:?}");
        assert_eq!(a.search, vec!["corp.example".to_string()]);
        assert_eq!(a.sources, a.routes);
    }

    #[test]
    fn wide_prefixes_on_addresses_give_no_routes() {
        let mut c = config();
        c.addr4 = Some(net("10.203.0.130/1"));
        c.addr6 = Some(net("2001:db8::2/3"));
        c.routes.clear();
        for accept_routes in [true, false] {
            let o = AcceptOptions {
                accept_routes,
                ..opts()
            };
            let a = accept(&c, 1500, &o, &host()).unwrap();
            assert_eq!(a.addresses, vec![net("10.203.0.130/32"), net("2001:db8::2/128")]);
            assert_eq!(a.routes, vec![net("10.203.0.1/32"), net("fd00:203::1/128")]);
        }
    }

    #[test]
    fn addresses_inside_local_networks_or_not_unicast_refuse_the_config() {
        let mut c = config();
        c.addr4 = Some(net("192.168.77.130/25"));
        assert!(matches!(
            accept(&c, 1500, &opts(), &host()),
            Err(ConfigRefused::InsideLocal { .. })
        ));
        for bad in [
            "224.0.0.1/32",
            "127.0.0.2/8",
            "0.0.0.0/0",
            "255.255.255.255/32",
            "169.254.1.1/16",
        ] {
            c.addr4 = Some(net(bad));
            assert!(
                matches!(accept(&c, 1500, &opts(), &host()), Err(ConfigRefused::NotUnicast(_))),
                "{bad}"
            );
        }
        c.addr4 = Some(net("fd00::5/64"));
        assert!(accept(&c, 1500, &opts(), &host()).is_err(), "an IPv6 address as addr4");
        let none = TunnelConfig {
            mtu: 1500,
            ..Default::default()
        };
        assert_eq!(accept(&none, 1500, &opts(), &host()), Err(ConfigRefused::NoAddress));
    }

    #[test]
    fn pushed_routes_go_through_every_filter() {
        let mut c = config();
        c.routes = vec![
            net("192.168.77.128/25"), // inside the local network
            net("192.168.0.0/16"),    // contains the local network
            net("192.168.77.1/32"),   // the SSH server
            net("2000::/3"),          // all global IPv6
            net("0.0.0.0/0"),
            net("10.0.0.0/8"),    // fine
            net("172.16.0.0/12"), // excluded below
        ];
        let o = AcceptOptions {
            excludes: vec![net("172.16.5.0/24")],
            ..opts()
        };
        let a = accept(&c, 1500, &o, &host()).unwrap();
        assert_eq!(
            a.routes,
            vec![net("10.203.0.1/32"), net("fd00:203::1/128"), net("10.0.0.0/8")]
        );
        assert_eq!(a.warnings.len(), 6, "{:#?}", a.warnings);
        let none = AcceptOptions {
            accept_routes: false,
            ..opts()
        };
        let a = accept(&config(), 1500, &none, &host()).unwrap();
        assert_eq!(a.routes, vec![net("10.203.0.1/32"), net("fd00:203::1/128")]);
    }

    #[test]
    fn mtu_bounds() {
        let mut c = config();
        c.mtu = 575;
        assert_eq!(accept(&c, 1500, &opts(), &host()), Err(ConfigRefused::Mtu(575)));
        c.mtu = 1000;
        assert_eq!(accept(&c, 1500, &opts(), &host()), Err(ConfigRefused::MtuV6(1000)));
        c.addr6 = None;
        assert_eq!(accept(&c, 1500, &opts(), &host()).unwrap().mtu, 1000);
        c.mtu = 65535;
        assert_eq!(accept(&c, 9000, &opts(), &host()).unwrap().mtu, 9000);
    }

    #[test]
    fn dns_names_are_validated() {
        let mut c = config();
        c.search = vec![
            "evil.example\noptions ndots:15 trust-ad".into(),
            "has space.example".into(),
            "-bad.example".into(),
            "a..b".into(),
            "Good.Example.".into(),
            "x".repeat(64),
        ];
        c.dns = vec![
            "0.0.0.0".parse().unwrap(),
            "224.0.0.251".parse().unwrap(),
            "10.0.0.53".parse().unwrap(),
        ];
        let a = accept(&c, 1500, &opts(), &host()).unwrap();
        assert_eq!(a.search, vec!["good.example".to_string()]);
        assert_eq!(a.dns, vec!["10.0.0.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.warnings.len(), 7, "{:#?}", a.warnings);
        assert!(
            a.warnings
                .iter()
                .any(|w| w.contains("\"evil.example\\noptions ndots:15 trust-ad\""))
        );
        let no_dns = AcceptOptions {
            accept_dns: false,
            ..opts()
        };
        let a = accept(&c, 1500, &no_dns, &host()).unwrap();
        assert!(a.dns.is_empty() && a.search.is_empty());
        assert!(is_host_name("a-b.c0.example") && !is_host_name("") && !is_host_name("a_b.example"));
    }

    #[test]
    fn full_tunnel_without_ipv6_makes_ipv6_unreachable() {
        let mut c = config();
        c.addr6 = None;
        c.peer6 = None;
        c.routes.clear();
        let o = AcceptOptions {
            default_route: true,
            ..opts()
        };
        let a = accept(&c, 1500, &o, &host()).unwrap();
        assert_eq!(
            a.routes,
            vec![net("10.203.0.1/32"), net("0.0.0.0/1"), net("128.0.0.0/1")]
        );
        assert_eq!(a.unreachable, vec![net("::/1"), net("8000::/1")]);
        // With IPv6 both families go into the tunnel.
        let a = accept(&config(), 1500, &o, &host()).unwrap();
        assert!(a.unreachable.is_empty());
        assert!(a.routes.contains(&net("::/1")) && a.routes.contains(&net("8000::/1")));
    }

    #[test]
    fn sources_are_the_server_and_the_tunnel_routes() {
        let o = AcceptOptions {
            extra_routes: vec![net("10.250.0.0/16")],
            ..opts()
        };
        let a = accept(&config(), 1500, &o, &host()).unwrap();
        assert!(a.sources.contains(&net("10.203.0.1/32")));
        assert!(a.sources.contains(&net("10.250.0.0/16")));
        assert!(
            !a.sources
                .iter()
                .any(|n| n.contains(&"192.0.2.77".parse::<IpAddr>().unwrap()))
        );
    }

    fn with_routes(routes: Vec<IpNet>) -> TunnelConfig {
        TunnelConfig { routes, ..config() }
    }

    fn pushed_v4(a: &Accepted) -> Vec<IpNet> {
        a.routes
            .iter()
            .copied()
            .filter(|r| r.addr().is_ipv4() && r.prefix_len() < 32)
            .collect()
    }

    #[test]
    fn a_server_pushing_every_slash_8_gets_one_and_one_warning() {
        let routes = (1..=223u8).map(|i| net(&format!("{i}.0.0.0/8"))).collect();
        let a = accept(&with_routes(routes), 1500, &opts(), &host()).unwrap();
        assert_eq!(pushed_v4(&a), vec![net("1.0.0.0/8")]);
        let budget: Vec<&String> = a.warnings.iter().filter(|w| w.contains("budget")).collect();
        assert_eq!(budget.len(), 1, "{:#?}", a.warnings);
        assert!(
            budget[0].starts_with("not installing 219 pushed routes, beyond the budget"),
            "{}",
            budget[0]
        );
        assert!(
            budget[0].contains("2.0.0.0/8, 3.0.0.0/8") && budget[0].ends_with(", ..."),
            "{}",
            budget[0]
        );
        // 127/8 (loopback), 169/8 (link-local) and 192/8 (the local network) are refused by
        // the filters, whatever the budget.
        assert!(
            a.warnings
                .iter()
                .any(|w| w.contains("127.0.0.0/8: it touches loopback"))
        );
        assert!(
            a.warnings
                .iter()
                .any(|w| w.contains("169.0.0.0/8: it touches link-local"))
        );
        assert_eq!(a.warnings.len(), 4, "{:#?}", a.warnings);
    }

    #[test]
    fn the_budget_is_the_union_of_addresses_and_a_route_count() {
        // Overlapping routes count once: 10/8 and a /16 inside it fill exactly one /8.
        let a = accept(
            &with_routes(vec![net("10.0.0.0/8"), net("10.1.0.0/16"), net("11.0.0.0/24")]),
            1500,
            &opts(),
            &host(),
        )
        .unwrap();
        assert_eq!(pushed_v4(&a), vec![net("10.0.0.0/8"), net("10.1.0.0/16")]);
        // 256 /16s are one /8 and 256 routes: all fit; a 257th does not.
        let mut routes: Vec<IpNet> = (0..=255u8).map(|i| net(&format!("11.{i}.0.0/16"))).collect();
        routes.push(net("12.0.0.0/32"));
        let a = accept(&with_routes(routes), 1500, &opts(), &host()).unwrap();
        assert_eq!(pushed_v4(&a).len(), 256);
        assert!(!a.routes.contains(&net("12.0.0.0/32")), "{:?}", a.warnings);
        assert!(
            a.warnings
                .iter()
                .any(|w| w.starts_with("not installing 1 pushed routes, beyond the budget"))
        );
        let mut c = with_routes(
            (0..300u16)
                .map(|i| net(&format!("11.{}.{}.0/24", i / 256, i % 256)))
                .collect(),
        );
        c.peer4 = None;
        c.peer6 = None;
        let a = accept(&c, 1500, &opts(), &host()).unwrap();
        assert_eq!(a.routes.len(), MAX_PUSHED_ROUTES);
        assert!(
            a.warnings
                .iter()
                .any(|w| w.starts_with("not installing 44 pushed routes")),
            "{:#?}",
            a.warnings
        );
        // IPv6: one /16.
        let a = accept(
            &with_routes(vec![net("fd00::/16"), net("fd01::/16"), net("fd00:1::/32")]),
            1500,
            &opts(),
            &host(),
        )
        .unwrap();
        let v6: Vec<IpNet> = a
            .routes
            .iter()
            .copied()
            .filter(|r| r.addr().is_ipv6() && r.prefix_len() < 128)
            .collect();
        assert_eq!(v6, vec![net("fd00::/16"), net("fd00:1::/32")]);
        assert_eq!(
            union_size(&[net("10.0.0.0/8"), net("10.0.0.0/9"), net("11.0.0.0/31")]),
            (1 << 24) + 2
        );
        assert_eq!(union_size(&[net("::/0")]), u128::MAX);
    }

    #[test]
    fn server_chosen_host_addresses_never_take_a_resolver_the_server_or_special_addresses() {
        let h = HostFacts {
            resolvers: vec!["8.8.8.8".parse().unwrap()],
            ..host()
        };
        let o = AcceptOptions {
            accept_routes: false,
            accept_dns: false,
            excludes: vec![net("10.99.0.0/16")],
            ..opts()
        };
        // The server's tunnel address: ignored, even with --no-accept-routes.
        for peer in ["8.8.8.8", "169.254.169.254", "10.99.0.1"] {
            let c = TunnelConfig {
                peer4: Some(peer.parse().unwrap()),
                ..config()
            };
            let a = accept(&c, 1500, &o, &h).unwrap();
            let p: IpNet = net(&format!("{peer}/32"));
            assert!(
                !a.routes.contains(&p) && !a.sources.contains(&p),
                "{peer}: {:?}",
                a.routes
            );
            assert!(a.warnings.iter().any(|w| w.contains("ignoring server tunnel address")));
        }
        // The client's own address: the whole configuration is refused.
        for addr in ["8.8.8.8/32", "192.168.77.1/32", "10.99.0.5/24"] {
            let c = TunnelConfig {
                addr4: Some(net(addr)),
                ..config()
            };
            let h = HostFacts {
                local_networks: vec![],
                ..h.clone()
            };
            assert!(
                matches!(accept(&c, 1500, &o, &h), Err(ConfigRefused::Reserved { .. })),
                "{addr}"
            );
        }
    }

    #[test]
    fn resolvers_and_special_addresses_are_never_covered() {
        let h = HostFacts {
            resolvers: vec!["8.8.8.8".parse().unwrap(), "2001:4860:4860::8888".parse().unwrap()],
            ..host()
        };
        let routes = vec![
            net("8.0.0.0/8"),
            net("2001:4860::/32"),
            net("169.254.0.0/16"),
            net("169.254.169.254/32"),
            net("127.0.0.0/8"),
            net("224.0.0.0/8"),
            net("0.0.0.0/8"),
            net("fe80::/16"),
            net("ff02::/16"),
            net("::1/128"),
            net("9.0.0.0/8"),
        ];
        for accept_dns in [true, false] {
            for within in [vec![], vec![net("0.0.0.0/0"), net("::/0")]] {
                let o = AcceptOptions {
                    accept_dns,
                    accept_routes_within: within,
                    ..opts()
                };
                let a = accept(&with_routes(routes.clone()), 1500, &o, &h).unwrap();
                assert_eq!(pushed_v4(&a), vec![net("9.0.0.0/8")], "{:#?}", a.warnings);
                assert!(
                    a.routes.iter().all(|r| r.addr().is_ipv4() || r.prefix_len() == 128),
                    "{:?}",
                    a.routes
                );
                assert!(
                    a.warnings
                        .iter()
                        .any(|w| w == "not installing pushed route 8.0.0.0/8: it covers this host's resolver 8.8.8.8"),
                    "{:#?}",
                    a.warnings
                );
                assert_eq!(a.warnings.len(), 10, "{:#?}", a.warnings);
            }
        }
    }

    #[test]
    fn an_allow_list_replaces_the_budget() {
        let o = AcceptOptions {
            accept_routes_within: vec![net("10.0.0.0/8")],
            ..opts()
        };
        let c = with_routes(vec![
            net("10.1.0.0/16"),
            net("11.0.0.0/8"),
            net("10.0.0.0/8"),
            net("fd00:202::/64"),
        ]);
        let a = accept(&c, 1500, &o, &host()).unwrap();
        assert_eq!(pushed_v4(&a), vec![net("10.1.0.0/16"), net("10.0.0.0/8")]);
        assert!(
            a.warnings
                .iter()
                .any(|w| w
                    == "not installing pushed route 11.0.0.0/8: it is outside every --accept-routes-within network")
        );
        assert!(a.warnings.iter().any(|w| w.contains("fd00:202::/64: it is outside")));
        // Broader than /8 and beyond one /8 in total: the user allowed it.
        let o = AcceptOptions {
            accept_routes_within: vec![net("0.0.0.0/0")],
            ..opts()
        };
        let a = accept(
            &with_routes(vec![net("2.0.0.0/7"), net("20.0.0.0/6")]),
            1500,
            &o,
            &host(),
        )
        .unwrap();
        assert_eq!(pushed_v4(&a), vec![net("2.0.0.0/7"), net("20.0.0.0/6")]);
    }

    #[test]
    fn the_users_own_routes_are_outside_the_budget_and_warnings_are_bounded() {
        let mut routes: Vec<IpNet> = (0..1000u16)
            .map(|i| net(&format!("127.{}.{}.0/24", i / 256, i % 256)))
            .collect();
        routes.push(net("1.0.0.0/8"));
        routes.push(net("2.0.0.0/8"));
        let o = AcceptOptions {
            extra_routes: vec![net("20.0.0.0/6"), net("40.0.0.0/6")],
            ..opts()
        };
        let a = accept(&with_routes(routes), 1500, &o, &host()).unwrap();
        assert_eq!(
            pushed_v4(&a),
            vec![net("1.0.0.0/8"), net("20.0.0.0/6"), net("40.0.0.0/6")]
        );
        assert_eq!(a.warnings.len(), MAX_ROUTE_WARNINGS + 2, "{:#?}", a.warnings);
        assert!(
            a.warnings
                .iter()
                .any(|w| w == "not installing 984 more pushed routes refused for the same reasons")
        );
    }

    #[test]
    fn nameservers_of_resolv_conf() {
        let text = "# comment\nnameserver 8.8.8.8\nnameserver fe80::1%eth0\n nameserver  1.1.1.1 \nsearch x\nnameserver bogus\nnameserver\n";
        let want: Vec<IpAddr> = ["8.8.8.8", "fe80::1", "1.1.1.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(resolv_conf_nameservers(text), want);
    }
}
