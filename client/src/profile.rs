//! Client profiles: `~/.config/sshvpn/NAME.toml` (then `/etc/sshvpn/NAME.toml`) hold the settings
//! of one connection, so `sshvpn connect NAME` needs nothing else. Options given on the command
//! line win over the profile. Unknown keys are errors, reported with their line.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use ipnet::IpNet;
use serde::Deserialize;
use sshvpn_common::toml_errors;

use crate::cli::ConnectArgs;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub host: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub host_key_alias: Option<String>,
    pub ssh_command: Option<String>,
    #[serde(default)]
    pub routes: Vec<IpNet>,
    pub accept_routes: Option<bool>,
    #[serde(default)]
    pub accept_routes_within: Vec<IpNet>,
    pub default_route: Option<bool>,
    #[serde(default)]
    pub exclude: Vec<IpNet>,
    pub dns: Option<bool>,
    pub forward: Option<bool>,
    pub tun_name: Option<String>,
    pub mtu: Option<u16>,
    pub keepalive: Option<u64>,
    pub dead_peer_timeout: Option<u64>,
    pub max_retries: Option<u32>,
    pub reconnect_max_delay: Option<u64>,
}

/// Where a profile named `name` would be, in the order they are looked for.
pub fn candidates(name: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(dir) = config_home {
        v.push(dir.join("sshvpn").join(format!("{name}.toml")));
    }
    v.push(Path::new("/etc/sshvpn").join(format!("{name}.toml")));
    v
}

/// Parses a profile; errors name the file, the line and the reason.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Profile> {
    toml::from_str(text).map_err(|e| {
        anyhow!(toml_errors::located(
            path,
            toml_errors::line_of_span(text, e.span()),
            e.message().trim()
        ))
    })
}

/// If `args.target` names a profile, fills in every option the command line did not set.
/// `cli_set(id)` tells whether an option was given on the command line.
pub fn apply(args: &mut ConnectArgs, cli_set: impl Fn(&str) -> bool) -> anyhow::Result<Option<PathBuf>> {
    let Some(name) = args.target.clone().filter(|t| !t.contains('@') && !t.contains('/')) else {
        return Ok(None);
    };
    let Some(path) = candidates(&name).into_iter().find(|p| p.exists()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let p = parse(&path, &text)?;
    if let Some(name) = &p.tun_name {
        sshvpn_common::netconf::check_ifname(name).map_err(|e| anyhow!("{}: tun_name: {e}", path.display()))?;
    }
    let host = p.host.clone().ok_or_else(|| anyhow!("{}: no host", path.display()))?;
    args.target = Some(match &p.user {
        Some(u) => format!("{u}@{host}"),
        None => host,
    });
    macro_rules! fill {
        ($($field:ident).+, $id:literal, $value:expr) => {
            if !cli_set($id)
                && let Some(v) = $value
            {
                args.$($field).+ = v;
            }
        };
    }
    if !cli_set("port") {
        args.port = args.port.or(p.port);
    }
    if !cli_set("identity") {
        args.identity = args.identity.take().or(p.identity);
    }
    if !cli_set("known_hosts") {
        args.known_hosts = args.known_hosts.take().or(p.known_hosts);
    }
    if !cli_set("host_key_alias") {
        args.host_key_alias = args.host_key_alias.take().or(p.host_key_alias);
    }
    if !cli_set("accept_routes_within") {
        args.accept_routes_within.extend(p.accept_routes_within);
    }
    if !cli_set("ssh_command") && !args.ssh {
        args.ssh_command = args.ssh_command.take().or(p.ssh_command);
    }
    if !cli_set("routes") {
        args.routes.extend(p.routes);
    }
    fill!(no_accept_routes, "no_accept_routes", p.accept_routes.map(|a| !a));
    fill!(no_dns, "no_dns", p.dns.map(|d| !d));
    fill!(forward, "forward", p.forward);
    fill!(default_route, "default_route", p.default_route);
    if !cli_set("excludes") {
        args.excludes.extend(p.exclude);
    }
    fill!(tunnel.tun_name, "tun_name", p.tun_name);
    fill!(tunnel.mtu, "mtu", p.mtu);
    fill!(tunnel.keepalive, "keepalive", p.keepalive);
    fill!(tunnel.dead_peer_timeout, "dead_peer_timeout", p.dead_peer_timeout);
    fill!(reconnect_max_delay, "reconnect_max_delay", p.reconnect_max_delay);
    if !cli_set("max_retries") {
        args.max_retries = args.max_retries.or(p.max_retries);
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let path = Path::new("office.toml");
        let e = parse(path, "host = \"gw\"\nport = 22\ncolour = \"red\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("office.toml:3:") && e.contains("unknown field"), "{e}");
        let e = parse(path, "host = \"gw\"\nport = \"twenty\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("office.toml:2:"), "{e}");
        let p = parse(
            path,
            "host = \"gw\"\nuser = \"alice\"\nroutes = [\"10.0.0.0/8\"]\ndns = false\n",
        )
        .unwrap();
        assert_eq!(p.routes.len(), 1);
        assert_eq!(p.dns, Some(false));
        let p = parse(
            path,
            "host = \"gw\"\naccept_routes_within = [\"10.0.0.0/8\"]\nhost_key_alias = \"10.0.0.1\"\n",
        )
        .unwrap();
        assert_eq!(p.accept_routes_within, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(p.host_key_alias.as_deref(), Some("10.0.0.1"));
    }
}
