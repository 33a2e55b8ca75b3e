//! Network setup expressed as plans of commands: macOS (utun, `ifconfig`, `route`, `scutil` for
//! DNS, `sysctl` for forwarding, a pf anchor for NAT) and FreeBSD (tun, `ifconfig`, `route`,
//! `resolvconf`, `sysctl`, pf), one plan per [`NetSetup`](super::NetSetup) method, and the
//! command and text builders of the Linux implementation (`resolvectl` calls, resolv.conf text,
//! the nftables masquerade script). A plan is pure data, so it is unit-tested on any system;
//! running it is a loop over `Command`s ([`run`]).
//!
//! Status: the macOS/FreeBSD plans are plans only: unit-tested here, executed by nothing yet
//! (there is no `NetSetup` implementation for those systems) and not exercised on macOS or
//! FreeBSD machines.

use std::net::IpAddr;

use ipnet::IpNet;

use super::InterfaceConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    MacOs,
    FreeBsd,
}

/// One command: program, arguments, and text for its standard input (scutil reads a script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: &'static str,
    pub args: Vec<String>,
    pub stdin: Option<String>,
}

impl Step {
    fn new(program: &'static str, args: &[&str]) -> Step {
        Step {
            program,
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: None,
        }
    }

    /// The command as a shell would show it.
    pub fn display(&self) -> String {
        std::iter::once(self.program.to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What to do, and what undoes it, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub apply: Vec<Step>,
    pub undo: Vec<Step>,
}

fn netmask_v4(prefix: u8) -> String {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    std::net::Ipv4Addr::from(bits).to_string()
}

/// Addresses, MTU and link up. `peer4` is the server's tunnel address: BSD tun and macOS utun
/// interfaces are point-to-point and want a destination address.
pub fn configure(os: Os, iface: &InterfaceConfig, peer4: Option<IpAddr>) -> Plan {
    let name = iface.name.as_str();
    let mtu = iface.mtu.to_string();
    let mut plan = Plan::default();
    for a in &iface.addresses {
        match a.addr() {
            IpAddr::V4(addr) => {
                let dest = peer4.map(|p| p.to_string()).unwrap_or_else(|| addr.to_string());
                let (addr, mask) = (addr.to_string(), netmask_v4(a.prefix_len()));
                plan.apply.push(Step::new(
                    "ifconfig",
                    &[name, "inet", &addr, &dest, "netmask", &mask, "mtu", &mtu, "up"],
                ));
                // Point-to-point interfaces get no route for the whole subnet by themselves.
                let subnet = a.trunc().to_string();
                plan.apply.push(Step::new(
                    "route",
                    &["-q", "-n", "add", "-inet", &subnet, "-interface", name],
                ));
                plan.undo.push(Step::new(
                    "route",
                    &["-q", "-n", "delete", "-inet", &subnet, "-interface", name],
                ));
            }
            IpAddr::V6(addr) => {
                let (addr, len) = (addr.to_string(), a.prefix_len().to_string());
                plan.apply.push(Step::new(
                    "ifconfig",
                    &[name, "inet6", &addr, "prefixlen", &len, "mtu", &mtu, "up"],
                ));
            }
        }
    }
    if os == Os::FreeBsd && iface.addresses.is_empty() {
        plan.apply.push(Step::new("ifconfig", &[name, "mtu", &mtu, "up"]));
    }
    plan.undo.reverse();
    plan
}

/// A route through the interface, and its removal.
pub fn route(_os: Os, ifname: &str, net: IpNet) -> Plan {
    let family = if net.addr().is_ipv4() { "-inet" } else { "-inet6" };
    let net = net.trunc().to_string();
    Plan {
        apply: vec![Step::new(
            "route",
            &["-q", "-n", "add", family, &net, "-interface", ifname],
        )],
        undo: vec![Step::new(
            "route",
            &["-q", "-n", "delete", family, &net, "-interface", ifname],
        )],
    }
}

/// A host route for `net` through `gateway` (or, without one, the interface `via_if`): keeps a
/// path outside the tunnel, as `NetSetup::pin_route` does on Linux.
pub fn pin_route(_os: Os, net: IpNet, gateway: Option<IpAddr>, via_if: &str) -> Plan {
    let family = if net.addr().is_ipv4() { "-inet" } else { "-inet6" };
    let net = net.trunc().to_string();
    let gw = gateway.map(|g| g.to_string());
    let target: Vec<&str> = match &gw {
        Some(g) => vec![g.as_str()],
        None => vec!["-interface", via_if],
    };
    let step = |verb: &str| {
        let mut args = vec!["-q", "-n", verb, family, net.as_str()];
        args.extend(&target);
        Step::new("route", &args)
    };
    Plan {
        apply: vec![step("add")],
        undo: vec![step("delete")],
    }
}

/// A reject route for `net` (applications get an immediate error), as
/// `NetSetup::add_unreachable_route` does on Linux.
pub fn unreachable_route(_os: Os, net: IpNet) -> Plan {
    let (family, lo) = if net.addr().is_ipv4() {
        ("-inet", "127.0.0.1")
    } else {
        ("-inet6", "::1")
    };
    let net = net.trunc().to_string();
    Plan {
        apply: vec![Step::new("route", &["-q", "-n", "add", family, &net, lo, "-reject"])],
        undo: vec![Step::new("route", &["-q", "-n", "delete", family, &net, lo, "-reject"])],
    }
}

/// The `resolvectl` calls (Linux, systemd-resolved) that give `link` these resolvers. With the
/// full tunnel the link also gets the `~.` routing domain and becomes the default DNS route, so
/// that no query goes to another link's resolvers.
pub fn resolvectl_plan(link: &str, servers: &[IpAddr], search: &[String], full_tunnel: bool) -> Vec<Vec<String>> {
    let mut dns = vec!["dns".to_string(), link.to_string()];
    dns.extend(servers.iter().map(IpAddr::to_string));
    let mut plan = vec![dns];
    let mut domains: Vec<String> = search.to_vec();
    if full_tunnel {
        domains.push("~.".into());
    }
    if !domains.is_empty() {
        let mut d = vec!["domain".to_string(), link.to_string()];
        d.extend(domains);
        plan.push(d);
    }
    if full_tunnel {
        plan.push(vec!["default-route".into(), link.to_string(), "true".into()]);
    }
    plan
}

/// The resolv.conf written while the tunnel is up (Linux without systemd-resolved, and the
/// namespace of `exec`). `servers` and `search` have been validated (addresses, RFC 1123
/// names), so no line can carry anything else.
pub fn resolv_conf_text(servers: &[IpAddr], search: &[String], header: &str) -> String {
    let mut text = format!("# {header}\n");
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text
}

/// The nftables table of the masquerade rule for tunnel `tun` (Linux): `sshvpn_<tun>`, with
/// anything but ASCII letters and digits replaced by `_`.
pub fn nat_table_name(tun: &str) -> String {
    format!("sshvpn_{}", tun.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

/// The nft script (Linux) that masquerades IPv4 traffic from `pool` leaving through `iface`.
pub fn masquerade_nft(table: &str, pool: IpNet, iface: &str) -> String {
    format!(
        "table ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {pool} oifname \"{iface}\" masquerade\n  }}\n}}\n"
    )
}

/// The sysctls that turn on IPv4 and IPv6 forwarding; macOS and FreeBSD name them alike.
pub fn forwarding_sysctls(_os: Os) -> [&'static str; 2] {
    ["net.inet.ip.forwarding", "net.inet6.ip6.forwarding"]
}

/// IP forwarding on for both families (macOS, FreeBSD), as `NetSetup::enable_forwarding` does on
/// Linux: `previous` is each of [`forwarding_sysctls`]' values as read before (`sysctl -n NAME`;
/// `None` if unknown). A sysctl already at 1 is left alone; the undo restores only what the plan
/// changed (to 0 where the old value is unknown). A plan only: nothing runs it yet.
pub fn forwarding(os: Os, previous: [Option<&str>; 2]) -> Plan {
    let mut plan = Plan::default();
    for (name, old) in forwarding_sysctls(os).into_iter().zip(previous) {
        let old = old.map(str::trim);
        if old == Some("1") {
            continue;
        }
        plan.apply.push(Step::new("sysctl", &["-w", &format!("{name}=1")]));
        plan.undo
            .push(Step::new("sysctl", &["-w", &format!("{name}={}", old.unwrap_or("0"))]));
    }
    plan.undo.reverse();
    plan
}

/// The pf anchor (macOS, FreeBSD) holding the masquerade rule. pf evaluates it only if the main
/// ruleset names it (`nat-anchor "sshvpn"` in /etc/pf.conf) and pf is enabled (`pfctl -e`);
/// neither is changed by the plan.
pub const PF_ANCHOR: &str = "sshvpn";

/// The pf rule (macOS, FreeBSD) that masquerades IPv4 traffic from `pool` leaving through
/// `iface`: translated to the interface's address, followed if it changes.
pub fn masquerade_pf(pool: IpNet, iface: &str) -> String {
    format!("nat on {iface} from {} to any -> ({iface})\n", pool.trunc())
}

/// Source NAT for `pool` out of `iface` (macOS, FreeBSD), as `NetSetup::masquerade` does on
/// Linux with its own nftables table: the rule is loaded into the [`PF_ANCHOR`] anchor with
/// `pfctl -a sshvpn -f -`, and the undo flushes that anchor's NAT rules only; nothing else in the
/// ruleset is touched. A plan only: nothing runs it yet.
pub fn masquerade(_os: Os, pool: IpNet, iface: &str) -> Plan {
    Plan {
        apply: vec![Step {
            program: "pfctl",
            args: vec!["-a".into(), PF_ANCHOR.into(), "-f".into(), "-".into()],
            stdin: Some(masquerade_pf(pool, iface)),
        }],
        undo: vec![Step::new("pfctl", &["-a", PF_ANCHOR, "-F", "nat"])],
    }
}

/// Resolvers for the tunnel. macOS: a dynamic-store DNS entry through `scutil` (supplemental
/// to the system's). FreeBSD: `resolvconf` with an interface-specific record.
pub fn dns(os: Os, ifname: &str, servers: &[IpAddr], search: &[String]) -> Plan {
    if servers.is_empty() {
        return Plan::default();
    }
    let servers: Vec<String> = servers.iter().map(IpAddr::to_string).collect();
    match os {
        Os::MacOs => {
            let key = format!("State:/Network/Service/sshvpn-{ifname}/DNS");
            let mut script = format!("d.init\nd.add ServerAddresses * {}\n", servers.join(" "));
            if !search.is_empty() {
                script.push_str(&format!("d.add SearchDomains * {}\n", search.join(" ")));
            }
            script.push_str(&format!("set {key}\n"));
            Plan {
                apply: vec![Step {
                    program: "scutil",
                    args: vec![],
                    stdin: Some(script),
                }],
                undo: vec![Step {
                    program: "scutil",
                    args: vec![],
                    stdin: Some(format!("remove {key}\n")),
                }],
            }
        }
        Os::FreeBsd => {
            let mut text: String = servers.iter().map(|s| format!("nameserver {s}\n")).collect();
            if !search.is_empty() {
                text.push_str(&format!("search {}\n", search.join(" ")));
            }
            Plan {
                apply: vec![Step {
                    program: "resolvconf",
                    args: vec!["-a".into(), ifname.into()],
                    stdin: Some(text),
                }],
                undo: vec![Step::new("resolvconf", &["-d", ifname])],
            }
        }
    }
}

/// Runs steps in order; stops at the first failure.
pub fn run(steps: &[Step]) -> std::io::Result<()> {
    use std::io::Write;
    for step in steps {
        let mut cmd = std::process::Command::new(step.program);
        cmd.args(&step.args).stdin(if step.stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut stdin)) = (&step.stdin, child.stdin.take()) {
            stdin.write_all(text.as_bytes())?;
        }
        let status = child.wait()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("{} failed: {status}", step.display())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str) -> InterfaceConfig {
        InterfaceConfig {
            name: name.into(),
            mtu: 1400,
            addresses: vec!["10.9.0.2/24".parse().unwrap(), "fd00:9::2/64".parse().unwrap()],
        }
    }

    fn shown(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::display).collect()
    }

    #[test]
    fn macos_utun_configuration_and_undo() {
        let plan = configure(Os::MacOs, &iface("utun4"), Some("10.9.0.1".parse().unwrap()));
        assert_eq!(
            shown(&plan.apply),
            [
                "ifconfig utun4 inet 10.9.0.2 10.9.0.1 netmask 255.255.255.0 mtu 1400 up",
                "route -q -n add -inet 10.9.0.0/24 -interface utun4",
                "ifconfig utun4 inet6 fd00:9::2 prefixlen 64 mtu 1400 up",
            ]
        );
        assert_eq!(
            shown(&plan.undo),
            ["route -q -n delete -inet 10.9.0.0/24 -interface utun4"]
        );
    }

    #[test]
    fn freebsd_routes_both_families() {
        let v4 = route(Os::FreeBsd, "tun0", "10.2.3.4/16".parse().unwrap());
        assert_eq!(shown(&v4.apply), ["route -q -n add -inet 10.2.0.0/16 -interface tun0"]);
        assert_eq!(
            shown(&v4.undo),
            ["route -q -n delete -inet 10.2.0.0/16 -interface tun0"]
        );
        let v6 = route(Os::FreeBsd, "tun0", "fd01::/48".parse().unwrap());
        assert_eq!(shown(&v6.apply), ["route -q -n add -inet6 fd01::/48 -interface tun0"]);
    }

    #[test]
    fn dns_plans() {
        let servers = ["10.0.0.53".parse().unwrap()];
        let mac = dns(Os::MacOs, "utun4", &servers, &["corp.example".into()]);
        let script = mac.apply[0].stdin.clone().unwrap();
        assert!(script.contains("d.add ServerAddresses * 10.0.0.53"), "{script}");
        assert!(script.contains("d.add SearchDomains * corp.example"), "{script}");
        assert!(
            script.ends_with("set State:/Network/Service/sshvpn-utun4/DNS\n"),
            "{script}"
        );
        assert_eq!(
            mac.undo[0].stdin.as_deref(),
            Some("remove State:/Network/Service/sshvpn-utun4/DNS\n")
        );
        let bsd = dns(Os::FreeBsd, "tun0", &servers, &[]);
        assert_eq!(shown(&bsd.apply), ["resolvconf -a tun0"]);
        assert_eq!(bsd.apply[0].stdin.as_deref(), Some("nameserver 10.0.0.53\n"));
        assert!(dns(Os::MacOs, "utun4", &[], &[]).apply.is_empty());
        assert_eq!(netmask_v4(0), "0.0.0.0");
        assert_eq!(netmask_v4(30), "255.255.255.252");
    }

    #[test]
    fn pinned_and_unreachable_routes() {
        let pin = pin_route(
            Os::MacOs,
            "203.0.113.7/32".parse().unwrap(),
            Some("192.168.1.1".parse().unwrap()),
            "en0",
        );
        assert_eq!(shown(&pin.apply), ["route -q -n add -inet 203.0.113.7/32 192.168.1.1"]);
        assert_eq!(
            shown(&pin.undo),
            ["route -q -n delete -inet 203.0.113.7/32 192.168.1.1"]
        );
        let direct = pin_route(Os::FreeBsd, "2001:db8::/64".parse().unwrap(), None, "em0");
        assert_eq!(
            shown(&direct.apply),
            ["route -q -n add -inet6 2001:db8::/64 -interface em0"]
        );
        let blocked = unreachable_route(Os::FreeBsd, "::/1".parse().unwrap());
        assert_eq!(shown(&blocked.apply), ["route -q -n add -inet6 ::/1 ::1 -reject"]);
        assert_eq!(shown(&blocked.undo), ["route -q -n delete -inet6 ::/1 ::1 -reject"]);
    }

    #[test]
    fn full_tunnel_makes_the_link_the_default_dns_route() {
        let servers = ["10.0.0.53".parse().unwrap()];
        let search = vec!["corp.example".to_string()];
        let plan = resolvectl_plan("sshvpn0", &servers, &search, true);
        let lines: Vec<String> = plan.iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "dns sshvpn0 10.0.0.53",
                "domain sshvpn0 corp.example ~.",
                "default-route sshvpn0 true"
            ]
        );
        let split = resolvectl_plan("sshvpn0", &servers, &[], false);
        assert_eq!(
            split,
            vec![vec!["dns".to_string(), "sshvpn0".into(), "10.0.0.53".into()]]
        );
    }

    #[test]
    fn resolv_conf_has_only_nameserver_and_search_lines() {
        let text = resolv_conf_text(&["10.0.0.53".parse().unwrap()], &["a.example".into()], "x");
        assert_eq!(text, "# x\nnameserver 10.0.0.53\nsearch a.example\n");
    }

    #[test]
    fn masquerade_table_and_script() {
        let table = nat_table_name("sshvpn-0.x");
        assert_eq!(table, "sshvpn_sshvpn_0_x");
        let script = masquerade_nft(&table, "10.9.0.0/24".parse().unwrap(), "eth0");
        assert_eq!(
            script,
            "table ip sshvpn_sshvpn_0_x {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr 10.9.0.0/24 oifname \"eth0\" masquerade\n  }\n}\n"
        );
    }

    #[test]
    fn forwarding_plans_set_both_families_and_restore_only_what_they_changed() {
        for os in [Os::MacOs, Os::FreeBsd] {
            assert_eq!(
                forwarding_sysctls(os),
                ["net.inet.ip.forwarding", "net.inet6.ip6.forwarding"]
            );
            let off = forwarding(os, [Some("0"), Some("0\n")]);
            assert_eq!(
                shown(&off.apply),
                [
                    "sysctl -w net.inet.ip.forwarding=1",
                    "sysctl -w net.inet6.ip6.forwarding=1"
                ]
            );
            assert_eq!(
                shown(&off.undo),
                [
                    "sysctl -w net.inet6.ip6.forwarding=0",
                    "sysctl -w net.inet.ip.forwarding=0"
                ]
            );
            // Already on: left alone, and not turned off on exit.
            let v4_on = forwarding(os, [Some("1"), None]);
            assert_eq!(shown(&v4_on.apply), ["sysctl -w net.inet6.ip6.forwarding=1"]);
            assert_eq!(shown(&v4_on.undo), ["sysctl -w net.inet6.ip6.forwarding=0"]);
            assert_eq!(forwarding(os, [Some("1"), Some("1")]), Plan::default());
        }
    }

    #[test]
    fn masquerade_plans_load_a_pf_anchor_and_flush_only_it() {
        for os in [Os::MacOs, Os::FreeBsd] {
            let plan = masquerade(os, "10.9.0.1/24".parse().unwrap(), "en0");
            assert_eq!(shown(&plan.apply), ["pfctl -a sshvpn -f -"]);
            assert_eq!(
                plan.apply[0].stdin.as_deref(),
                Some("nat on en0 from 10.9.0.0/24 to any -> (en0)\n")
            );
            assert_eq!(shown(&plan.undo), ["pfctl -a sshvpn -F nat"]);
        }
    }

    #[test]
    fn running_a_plan_reports_the_failing_step() {
        let ok = [Step::new("true", &[])];
        assert!(run(&ok).is_ok());
        let err = run(&[Step::new("false", &["x"])]).unwrap_err().to_string();
        assert!(err.starts_with("false x failed"), "{err}");
    }
}
