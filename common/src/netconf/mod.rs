//! OS network setup, in one place: the tunnel interface (MTU, addresses, link state, routes,
//! with an undo log so that whatever was added is removed again on exit, and only that), DNS
//! for the tunnel, IP forwarding and source NAT. One [`NetSetup`] signature for every OS: the Linux
//! implementation (rtnetlink, resolvectl or resolv.conf, /proc/sys, nftables) and the
//! macOS/FreeBSD command plans ([`plan`]) side by side. Callers use only the trait, [`open`],
//! [`OsNetSetup`] and [`recover_after_crash`]; DNS, forwarding and NAT come back as
//! [`RestoreGuard`]s, so no caller names an OS's own types. Callers pass in where crash-restore
//! records live ([`RestoreRecords`]); this module hard-codes no caller's paths.

// The Linux implementation: `linux.rs` (the trait, over rtnetlink) and the host settings it
// applies (`dns.rs`, `forwarding.rs`, `nat.rs`), private to this module.
#[cfg(target_os = "linux")]
mod dns;
#[cfg(target_os = "linux")]
mod forwarding;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
mod nat;
pub mod plan;
#[cfg(target_os = "linux")]
pub use linux::LinuxNetSetup;

/// The [`NetSetup`] implementation of the OS this is built for.
#[cfg(target_os = "linux")]
pub type OsNetSetup = LinuxNetSetup;

/// Opens the network setup of this OS (on Linux: a netlink connection in the calling
/// thread's network namespace).
#[cfg(target_os = "linux")]
pub fn open() -> Result<OsNetSetup, NetSetupError> {
    LinuxNetSetup::new()
}

/// [`open`], with every route the setup adds marked [`ROUTE_PROTOCOL`] (the client's setup).
#[cfg(target_os = "linux")]
pub fn open_marked() -> Result<OsNetSetup, NetSetupError> {
    Ok(LinuxNetSetup::new()?.marked())
}

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// The route protocol number (`proto 115` in `ip route`) that marks every route the client adds
/// (through a setup opened with [`open_marked`]; the daemon's routes stay `static`)
/// (routes through the tunnel, pinned routes to the server and excluded networks, the
/// `unreachable` full-tunnel blockers): a later run recognises routes a killed one left behind by
/// it, even when they still exist, and sweeps them ([`NetSetup::sweep_marked_routes`]). Not
/// assigned in iproute2's `rt_protos`; documented in docs/security.md.
pub const ROUTE_PROTOCOL: u8 = 115;

/// An interface name that Linux would refuse, or that is unsafe in a file name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid interface name {name:?}: {why}")]
pub struct BadInterfaceName {
    pub name: String,
    pub why: &'static str,
}

/// Checks an interface name by Linux's rules (`dev_valid_name`): 1 to 15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace; also printable ASCII only. Interface names become parts of
/// file names (restore records, status sockets), so this is checked before any is used.
pub fn check_ifname(name: &str) -> Result<(), BadInterfaceName> {
    let bad = |why| {
        Err(BadInterfaceName {
            name: name.chars().take(64).collect(),
            why,
        })
    };
    if name.is_empty() || name.len() > 15 {
        return bad("it must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not interface names");
    }
    if name.contains('/') || name.contains(':') {
        return bad("'/' and ':' are not allowed");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only printable ASCII without whitespace is allowed");
    }
    Ok(())
}

/// The cause of a failed step, kept for the error chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum NetSetupError {
    #[error("interface {0} not found")]
    NoInterface(String),
    /// A step failed; `source` says why (print the chain, e.g. `{:#}` through anyhow).
    #[error("{step} failed")]
    Failed {
        step: String,
        #[source]
        source: Cause,
    },
    /// Not implemented on this OS.
    #[error("{0} is not supported on this system")]
    Unsupported(&'static str),
}

impl NetSetupError {
    /// `step` failed because of `source`.
    pub fn failed(step: impl Into<String>, source: impl Into<Cause>) -> NetSetupError {
        NetSetupError::Failed {
            step: step.into(),
            source: source.into(),
        }
    }
}

/// The error and every cause below it, joined with ": " (for log lines).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Where the caller keeps crash-restore records (what a killed run left changed on the host):
/// one record per `kind` ("sysctl", "routes"), named and placed by the caller (e.g. in its
/// trusted runtime directory, per interface and namespace). Kinds starting with `host-` name a
/// record about something the whole host shares (one resolv.conf file): one such record per
/// host, whichever client wrote it.
pub trait RestoreRecords: Send + Sync {
    /// Saves a record (failures are logged, not fatal: restoring on a clean exit still works).
    fn save(&self, kind: &str, content: &[u8]);
    /// A record left behind, if any.
    fn load(&self, kind: &str) -> Option<Vec<u8>>;
    /// Removes a record (a missing one is not an error).
    fn remove(&self, kind: &str);
    /// Claims `resource` (e.g. one resolv.conf) for this process alone while the returned value
    /// lives; `Err` (saying why) while another live process holds it. By default always granted.
    fn claim(&self, resource: &str) -> Result<Box<dyn Send + Sync>, String> {
        let _ = resource;
        Ok(Box::new(()))
    }
}

/// Restores what a killed previous run left changed (forwarding sysctls, resolv.conf), as
/// its restore records say. With `others_running` (other clients live in this network
/// namespace, which may rely on forwarding being on) the forwarding record is kept for a later
/// start; resolv.conf is restored only when no live client manages it.
#[cfg(target_os = "linux")]
pub fn recover_after_crash(records: &dyn RestoreRecords, others_running: bool) {
    if !others_running {
        forwarding::recover(records);
    }
    dns::recover(records);
}

/// A change to the host outside the interface (DNS, IP forwarding, a NAT rule), in force while
/// this lives: dropping it restores what was there before. What it holds is the OS
/// implementation's business.
#[must_use = "dropping the guard undoes the change at once"]
pub struct RestoreGuard {
    _applied: Box<dyn Send + Sync>,
}

impl RestoreGuard {
    /// Guards `applied`, whose `Drop` restores the host.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn new(applied: impl Send + Sync + 'static) -> RestoreGuard {
        RestoreGuard {
            _applied: Box::new(applied),
        }
    }
}

impl std::fmt::Debug for RestoreGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestoreGuard")
    }
}

/// Resolvers for the tunnel, already validated (see `accept_policy`).
#[derive(Debug, Clone, Copy)]
pub struct DnsConfig<'a> {
    pub servers: &'a [IpAddr],
    pub search: &'a [String],
    /// Full tunnel: the interface becomes the host's default DNS route, so that no query
    /// goes to another link's resolvers.
    pub full_tunnel: bool,
}

/// Addresses and MTU for a tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

/// What every OS implementation offers. The setup remembers what it changed; `undo` reverts it.
#[allow(async_fn_in_trait)]
pub trait NetSetup {
    /// Sets MTU and addresses and brings the interface up.
    async fn configure(&mut self, iface: &InterfaceConfig) -> Result<(), NetSetupError>;
    /// Routes `net` through the interface. Routes that already exist are left alone (and not
    /// recorded as ours).
    async fn add_route(&mut self, ifname: &str, net: IpNet) -> Result<(), NetSetupError>;
    /// Removes one route this setup added.
    async fn remove_route(&mut self, ifname: &str, net: IpNet) -> Result<(), NetSetupError>;
    /// Removes an address from the interface (missing ones are not an error).
    async fn remove_address(&mut self, ifname: &str, net: IpNet) -> Result<(), NetSetupError>;
    /// Removes every route this setup added.
    async fn undo(&mut self);
    /// Removes the routes of the main table marked with [`ROUTE_PROTOCOL`] (left by a killed
    /// run): all of them (`None`), or only those to the given destinations. Returns how many.
    async fn sweep_marked_routes(&mut self, only: Option<&[IpNet]>) -> usize;
    /// Routes currently recorded as added by this setup.
    fn routes(&self) -> Vec<IpNet>;
    /// The networks of every address on the host's other interfaces (not `exclude`, not
    /// loopback or link-local ones): what a pushed route must not take over.
    async fn local_networks(&self, exclude: &str) -> Vec<IpNet>;
    /// How the host reaches `addr` now: (gateway, output interface index).
    async fn route_to(&self, addr: IpAddr) -> Result<(Option<IpAddr>, u32), NetSetupError>;
    /// Routes `net` the way `addr` is reached now (keeps a path outside the tunnel); recorded
    /// for undo like every other route.
    async fn pin_route(&mut self, net: IpNet, addr: IpAddr) -> Result<(), NetSetupError>;
    /// Routes `net` the way the host reaches `addr` without any of the routes marked
    /// [`ROUTE_PROTOCOL`] (a full tunnel already in place is not taken); recorded for undo.
    async fn pin_route_outside(&mut self, net: IpNet, addr: IpAddr) -> Result<(), NetSetupError>;
    /// Makes `net` unreachable (applications get an immediate error instead of their packets
    /// taking another path); recorded for undo like every other route.
    async fn add_unreachable_route(&mut self, net: IpNet) -> Result<(), NetSetupError>;

    // Host settings beyond the interface: each is undone when its guard is dropped, and saved
    // in `records` where a killed run would leave it changed ([`recover_after_crash`]).

    /// Gives `ifname` the resolvers of `dns` until the guard is dropped; nothing (`None`)
    /// without servers. Linux: systemd-resolved per-link DNS when it runs, otherwise
    /// /etc/resolv.conf rewritten in place (the original saved in `records`). macOS/FreeBSD:
    /// [`plan::dns`].
    fn apply_dns(
        &self,
        ifname: &str,
        dns: &DnsConfig<'_>,
        records: Arc<dyn RestoreRecords>,
    ) -> Result<Option<RestoreGuard>, NetSetupError>;
    /// Turns IPv4 and IPv6 forwarding on (site gateways) until the guard is dropped; what was
    /// changed is saved in `records`. Linux: /proc/sys. macOS/FreeBSD: [`plan::forwarding`].
    fn enable_forwarding(&self, records: Arc<dyn RestoreRecords>) -> Result<RestoreGuard, NetSetupError>;
    /// Masquerades IPv4 traffic from `pool` leaving through `out_iface` (for LANs with no route
    /// back to the pool) until the guard is dropped; `tun` names the rule set. Linux: an
    /// nftables table of its own. macOS/FreeBSD: [`plan::masquerade`].
    fn masquerade(&self, tun: &str, pool: IpNet, out_iface: &str) -> Result<RestoreGuard, NetSetupError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_restores_when_dropped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        struct Applied(Arc<AtomicBool>);
        impl Drop for Applied {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let restored = Arc::new(AtomicBool::new(false));
        let guard = RestoreGuard::new(Applied(restored.clone()));
        assert!(!restored.load(Ordering::SeqCst));
        drop(guard);
        assert!(restored.load(Ordering::SeqCst));
    }

    #[test]
    fn interface_names_follow_the_kernels_rules() {
        for good in ["sshvpn0", "tun", "a", "x-1_2.3", "fifteen_chars_x"] {
            assert_eq!(check_ifname(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../tmp/x",
            "a/b",
            "a:b",
            "with space",
            "tab\t",
            "sixteen_chars_xx",
            "caf\u{e9}",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_failed_step_keeps_its_cause() {
        let io = std::io::Error::from_raw_os_error(17);
        let e = NetSetupError::failed("add route 10.0.0.0/8", io);
        assert_eq!(e.to_string(), "add route 10.0.0.0/8 failed");
        let cause = std::error::Error::source(&e).expect("a source");
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
        let chain = error_chain(&e);
        assert!(chain.starts_with("add route 10.0.0.0/8 failed: "), "{chain}");
        assert!(chain.len() > "add route 10.0.0.0/8 failed: ".len(), "{chain}");
    }
}
