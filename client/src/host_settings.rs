//! Host settings a `connect` client changes while it runs and restores on exit: IP forwarding for
//! site gateways (`--forward`) and resolvers pushed by the server (systemd-resolved per-link DNS
//! when it runs, otherwise /etc/resolv.conf rewritten in place with the original restored).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// Per interface and network namespace (the same interface name may exist in many namespaces).
fn restore_name(kind: &str, link: &str) -> String {
    format!("{link}-{}.{kind}.restore", crate::run_dir::netns_id())
}

/// Restores what a killed previous run on `link` left changed (forwarding sysctls, resolv.conf).
pub fn recover_after_crash(link: &str) {
    let Some(sysctls) = crate::run_dir::existing(&restore_name("sysctl", link)) else {
        return;
    };
    if let Ok(text) = std::fs::read_to_string(&sysctls) {
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(' ') {
                let _ = std::fs::write(Path::new("/proc/sys").join(key), value);
                tracing::warn!(
                    "restored sysctl {} = {value} left by a previous run",
                    key.replace('/', ".")
                );
            }
        }
        let _ = std::fs::remove_file(&sysctls);
    }
    let Some(resolv) = crate::run_dir::existing(&restore_name("resolv", link)) else {
        return;
    };
    if let Ok(original) = std::fs::read(&resolv) {
        if std::fs::write(RESOLV_CONF, original).is_ok() {
            tracing::warn!("restored {RESOLV_CONF} left by a previous run");
        }
        let _ = std::fs::remove_file(&resolv);
    }
}

fn save_restore(kind: &str, link: &str, content: &[u8]) {
    let saved =
        crate::run_dir::trusted().and_then(|dir| Ok(std::fs::write(dir.join(restore_name(kind, link)), content)?));
    if let Err(e) = saved {
        tracing::debug!("cannot save restore information: {e:#}");
    }
}

fn remove_restore(kind: &str, link: &str) {
    if let Some(path) = crate::run_dir::existing(&restore_name(kind, link)) {
        let _ = std::fs::remove_file(path);
    }
}

/// The sysctls `--forward` sets.
const FORWARD_SYSCTLS: [&str; 2] = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"];

/// Enables forwarding; remembers what it changed.
pub struct Forwarding {
    link: String,
    changed: Vec<(String, String)>,
}

impl Forwarding {
    pub fn enable(link: &str) -> anyhow::Result<Forwarding> {
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
        let record: String = changed.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        if !changed.is_empty() {
            save_restore("sysctl", link, record.as_bytes());
        }
        Ok(Forwarding {
            link: link.to_string(),
            changed,
        })
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for (key, old) in self.changed.drain(..) {
            if let Err(e) = std::fs::write(Path::new("/proc/sys").join(&key), &old) {
                tracing::warn!("cannot restore sysctl {}: {e}", key.replace('/', "."));
            }
        }
        remove_restore("sysctl", &self.link);
    }
}

/// Resolver settings applied for the tunnel.
pub enum Dns {
    Resolved { link: String },
    ResolvConf { link: String, original: Vec<u8> },
}

const RESOLV_CONF: &str = "/etc/resolv.conf";

fn resolved_running() -> bool {
    Path::new("/run/systemd/resolve/io.systemd.Resolve").exists()
        && Command::new("resolvectl")
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The `resolvectl` calls that give `link` these resolvers. With the full tunnel the link also
/// gets the `~.` routing domain and becomes the default DNS route, so that no query goes to
/// another link's resolvers.
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

/// The resolv.conf written while the tunnel is up. `servers` and `search` have been validated
/// (addresses, RFC 1123 names), so no line can carry anything else.
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

impl Dns {
    /// Applies validated resolver settings (see `accept_policy`).
    pub fn apply(link: &str, servers: &[IpAddr], search: &[String], full_tunnel: bool) -> anyhow::Result<Option<Dns>> {
        if servers.is_empty() {
            return Ok(None);
        }
        if resolved_running() {
            for args in resolvectl_plan(link, servers, search, full_tunnel) {
                let ok = Command::new("resolvectl").args(&args).status()?.success();
                if !ok {
                    // Leave nothing half-applied.
                    let _ = Command::new("resolvectl").arg("revert").arg(link).status();
                    anyhow::bail!("resolvectl {} failed", args.join(" "));
                }
            }
            tracing::info!("DNS for {link} via systemd-resolved: {servers:?}");
            return Ok(Some(Dns::Resolved { link: link.to_string() }));
        }
        let original = std::fs::read(RESOLV_CONF).unwrap_or_default();
        save_restore("resolv", link, &original);
        let text = resolv_conf_text(
            servers,
            search,
            "written by sshvpn while the tunnel is up; the original is restored on exit",
        );
        // In place (not rename): /etc/resolv.conf may be a bind mount.
        std::fs::write(RESOLV_CONF, text)?;
        tracing::info!("DNS: {RESOLV_CONF} now points at {servers:?}; the original is restored on exit");
        Ok(Some(Dns::ResolvConf {
            link: link.to_string(),
            original,
        }))
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        match self {
            Dns::Resolved { link } => {
                let _ = Command::new("resolvectl").arg("revert").arg(&*link).status();
            }
            Dns::ResolvConf { link, original } => {
                if let Err(e) = std::fs::write(RESOLV_CONF, &*original) {
                    tracing::warn!("cannot restore {RESOLV_CONF}: {e}");
                }
                remove_restore("resolv", link);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
