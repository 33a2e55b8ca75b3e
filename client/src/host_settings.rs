//! Host settings a `connect` client changes while it runs and restores on exit: IP forwarding for
//! site gateways (`--forward`) and resolvers pushed by the server (systemd-resolved per-link DNS
//! when it runs, otherwise /etc/resolv.conf rewritten in place with the original restored).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// The sysctls `--forward` sets.
const FORWARD_SYSCTLS: [&str; 2] = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"];

/// Enables forwarding; remembers what it changed.
pub struct Forwarding {
    changed: Vec<(String, String)>,
}

impl Forwarding {
    pub fn enable() -> anyhow::Result<Forwarding> {
        let mut changed = Vec::new();
        for key in FORWARD_SYSCTLS {
            let path = Path::new("/proc/sys").join(key);
            let old = std::fs::read_to_string(&path)?.trim().to_string();
            if old != "1" {
                std::fs::write(&path, "1")?;
                tracing::info!("set sysctl {}=1 (was {old}); restored on exit", key.replace('/', "."));
                changed.push((key.to_string(), old));
            }
        }
        Ok(Forwarding { changed })
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for (key, old) in self.changed.drain(..) {
            if let Err(e) = std::fs::write(Path::new("/proc/sys").join(&key), &old) {
                tracing::warn!("cannot restore sysctl {}: {e}", key.replace('/', "."));
            }
        }
    }
}

/// Resolver settings applied for the tunnel.
pub enum Dns {
    Resolved { link: String },
    ResolvConf { original: Vec<u8> },
}

const RESOLV_CONF: &str = "/etc/resolv.conf";

fn resolved_running() -> bool {
    Path::new("/run/systemd/resolve/io.systemd.Resolve").exists()
        && Command::new("resolvectl")
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
}

impl Dns {
    pub fn apply(link: &str, servers: &[IpAddr], search: &[String]) -> anyhow::Result<Option<Dns>> {
        if servers.is_empty() {
            return Ok(None);
        }
        if resolved_running() {
            let mut cmd = Command::new("resolvectl");
            cmd.arg("dns").arg(link).args(servers.iter().map(IpAddr::to_string));
            anyhow::ensure!(cmd.status()?.success(), "resolvectl dns failed");
            if !search.is_empty() {
                let mut cmd = Command::new("resolvectl");
                cmd.arg("domain").arg(link).args(search);
                anyhow::ensure!(cmd.status()?.success(), "resolvectl domain failed");
            }
            tracing::info!("DNS for {link} via systemd-resolved: {servers:?}");
            return Ok(Some(Dns::Resolved { link: link.to_string() }));
        }
        let original = std::fs::read(RESOLV_CONF).unwrap_or_default();
        let mut text = String::from("# written by sshvpn while the tunnel is up; the original is restored on exit\n");
        for s in servers {
            text.push_str(&format!("nameserver {s}\n"));
        }
        if !search.is_empty() {
            text.push_str(&format!("search {}\n", search.join(" ")));
        }
        // In place (not rename): /etc/resolv.conf may be a bind mount.
        std::fs::write(RESOLV_CONF, text)?;
        tracing::info!("DNS: {RESOLV_CONF} now points at {servers:?}; the original is restored on exit");
        Ok(Some(Dns::ResolvConf { original }))
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        match self {
            Dns::Resolved { link } => {
                let _ = Command::new("resolvectl").arg("revert").arg(&*link).status();
            }
            Dns::ResolvConf { original } => {
                if let Err(e) = std::fs::write(RESOLV_CONF, original) {
                    tracing::warn!("cannot restore {RESOLV_CONF}: {e}");
                }
            }
        }
    }
}
