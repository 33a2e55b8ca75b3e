//! The server configuration file (`--config`, TOML): listener, pools, pushed routes and DNS,
//! masquerade, and `[[peer]]` entries keyed by an OpenSSH public key line (static addresses,
//! subnets behind the peer, extra routes). Parsing and validation are pure; every problem is
//! reported with its line, and a file with any problem is rejected whole.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::IpNet;
use russh::keys::PublicKey;
use serde::Deserialize;
use sshvpn_common::keys::fingerprint;
use sshvpn_common::pool::{AddressPool, PoolError};
use sshvpn_common::toml_errors::{line_of, line_of_span, located};
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub host_key: Option<PathBuf>,
    pub authorized_keys: Option<PathBuf>,
    pub pool: Option<IpNet>,
    pub pool6: Option<IpNet>,
    #[serde(default)]
    pub push_routes: Vec<IpNet>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    #[serde(default)]
    pub search: Vec<String>,
    /// Only keys listed as peers may connect (authorized_keys is not consulted).
    #[serde(default)]
    pub peers_only: bool,
    /// Masquerade traffic from the pools leaving through this interface.
    pub masquerade: Option<String>,
    #[serde(default, rename = "peer")]
    pub peers: Vec<Spanned<PeerEntry>>,
    // Key management (issue 13): as the command-line options of the same names.
    pub trusted_user_ca_keys: Option<PathBuf>,
    pub revoked_keys: Option<PathBuf>,
    pub host_certificate: Option<PathBuf>,
    /// StrictModes, like `--strict-modes` (default true).
    pub strict_modes: Option<bool>,
    // Access control and audit (issue 14): validated by `crate::policy`.
    /// What no `[[policy]]` rule allows: "allow" (default) or "deny".
    pub default_policy: Option<DefaultPolicy>,
    #[serde(default, rename = "group")]
    pub groups: Vec<Spanned<GroupEntry>>,
    #[serde(default, rename = "policy")]
    pub policies: Vec<Spanned<PolicyEntry>>,
    /// Audit log (JSON lines), like `--audit-log`.
    pub audit_log: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub name: Option<String>,
    /// An OpenSSH public key line: `ssh-ed25519 AAAA... comment`.
    pub key: String,
    pub address: Option<Ipv4Addr>,
    pub address6: Option<Ipv6Addr>,
    /// Networks behind this peer (its site's LAN): routed to it, and it may send from them.
    #[serde(default)]
    pub subnets: Vec<IpNet>,
    /// Extra routes pushed to this peer only.
    #[serde(default)]
    pub routes: Vec<IpNet>,
    /// Also push the other peers' subnets to this peer (site-to-site through the hub).
    #[serde(default)]
    pub push_other_subnets: bool,
}

/// A validated peer.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub key: PublicKey,
    pub address: Option<Ipv4Addr>,
    pub address6: Option<Ipv6Addr>,
    pub subnets: Vec<IpNet>,
    pub routes: Vec<IpNet>,
    pub push_other_subnets: bool,
}

/// Peers by key fingerprint.
#[derive(Debug, Clone, Default)]
pub struct Peers(pub HashMap<String, Peer>);

impl Peers {
    pub fn get(&self, fingerprint: &str) -> Option<&Peer> {
        self.0.get(fingerprint)
    }

    pub fn contains_key(&self, key: &PublicKey) -> bool {
        self.0.values().any(|p| p.key.key_data() == key.key_data())
    }

    /// Every peer's subnets except `except`'s.
    pub fn other_subnets(&self, except: &str) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = self
            .0
            .iter()
            .filter(|(fp, _)| fp.as_str() != except)
            .flat_map(|(_, p)| p.subnets.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub line: Option<usize>,
    pub message: String,
}

/// Parses the file's text; syntax and type errors carry toml's own line and column.
pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        line: line_of_span(text, e.span()),
        message: e.message().trim().to_string(),
    })
}

/// Checks the peers against each other and the pools; returns every problem found.
pub fn validate(
    text: &str,
    file: &FileConfig,
    pool: Option<IpNet>,
    pool6: Option<IpNet>,
) -> Result<Peers, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut peers = Peers::default();
    // (subnet, line, peer name) of everything routed to a peer so far.
    let mut claimed: Vec<(IpNet, usize, String)> = Vec::new();
    let mut statics: HashMap<IpAddr, String> = HashMap::new();
    for (i, spanned) in file.peers.iter().enumerate() {
        let line = line_of(text, spanned.span().start);
        let entry = spanned.get_ref();
        let name = entry.name.clone().unwrap_or_else(|| format!("peer #{}", i + 1));
        let mut err = |message: String| {
            errors.push(ConfigError {
                line: Some(line),
                message,
            })
        };
        let key = match PublicKey::from_openssh(entry.key.trim()) {
            Ok(k) => k,
            Err(e) => {
                err(format!("{name}: key is not an OpenSSH public key line: {e}"));
                continue;
            }
        };
        let fp = fingerprint(&key);
        if let Some(other) = peers.0.get(&fp) {
            err(format!("{name}: duplicate key (already used by {})", other.name));
            continue;
        }
        // A static address must be one a lease could hand out (not the pool's network, server
        // or broadcast address), in either family.
        let statics_of = [
            ("address", entry.address.map(IpAddr::V4), pool, "no IPv4 pool"),
            ("address6", entry.address6.map(IpAddr::V6), pool6, "no pool6"),
        ];
        for (field, addr, pool, missing) in statics_of {
            let Some(a) = addr else { continue };
            match pool.map(AddressPool::new) {
                Some(Ok(mut p)) => {
                    if let Err(e) = p.reserve(&name, a) {
                        let why = match e {
                            PoolError::Reserved(..) if a == p.server_addr() => {
                                "is the server's own address".to_string()
                            }
                            PoolError::Outside(_, net) => format!("is outside the pool {net}"),
                            other => format!("cannot be used: {other}"),
                        };
                        err(format!("{name}: {field} {a} {why}"));
                    }
                }
                Some(Err(e)) => err(format!("{name}: {field} {a}: {e}")),
                None => err(format!("{name}: {field} {a} given but {missing}")),
            }
            if let Some(other) = statics.insert(a, name.clone()) {
                err(format!("{name}: {field} {a} is also {other}'s"));
            }
        }
        for s in &entry.subnets {
            let s = s.trunc();
            for p in [pool, pool6].into_iter().flatten() {
                if p.contains(&s) || s.contains(&p) {
                    err(format!("{name}: subnet {s} overlaps the pool {p}"));
                }
            }
            for (other, other_line, other_name) in &claimed {
                if other.contains(&s) || s.contains(other) {
                    err(format!(
                        "{name}: subnet {s} overlaps {other} of {other_name} (line {other_line})"
                    ));
                }
            }
            claimed.push((s, line, name.clone()));
        }
        peers.0.insert(
            fp,
            Peer {
                name,
                key,
                address: entry.address,
                address6: entry.address6,
                subnets: entry.subnets.iter().map(IpNet::trunc).collect(),
                routes: entry.routes.clone(),
                push_other_subnets: entry.push_other_subnets,
            },
        );
    }
    if errors.is_empty() { Ok(peers) } else { Err(errors) }
}

/// Reads and parses a file (the peers are checked by [`validate`]); returns it with its text.
/// Errors read `PATH: reason` (the I/O error kept as the cause) or `PATH:LINE: reason`.
pub fn load(path: &Path) -> anyhow::Result<(FileConfig, String)> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let file = parse(&text).map_err(|e| anyhow::anyhow!(format_error(path, &e)))?;
    Ok((file, text))
}

/// Every problem of `errors`, `PATH:LINE: reason` one per line, as one error.
pub fn problems(path: &Path, errors: &[ConfigError]) -> anyhow::Error {
    anyhow::anyhow!(
        errors
            .iter()
            .map(|e| format_error(path, e))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

pub fn format_error(path: &Path, e: &ConfigError) -> String {
    located(path, e.line, &e.message)
}

// Access control (issue 14): the policy sections as written; `policy.rs` validates and compiles them.

/// What happens to traffic no rule allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Everything passes (today's behaviour); rules only count.
    #[default]
    Allow,
    /// Only what a rule allows passes (replies to allowed flows always do).
    Deny,
}

/// `[[group]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

/// `[[policy]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    #[serde(default)]
    pub from: Vec<String>,
    #[serde(default)]
    pub to: Vec<String>,
    pub ports: Option<Vec<String>>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use russh::keys::{Algorithm, PrivateKey};

    /// A fresh OpenSSH public key line (also used by the policy tests).
    pub(crate) fn key() -> String {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap()
    }

    fn check(text: &str) -> Result<Peers, Vec<ConfigError>> {
        let file = parse(text).map_err(|e| vec![e])?;
        validate(text, &file, file.pool, file.pool6)
    }

    #[test]
    fn a_good_file() {
        let text = format!(
            "pool = \"10.9.0.0/24\"\npool6 = \"fd00:9::/64\"\npush_routes = [\"10.0.0.0/8\"]\n\n[[peer]]\nname = \"a\"\nkey = \"{}\"\naddress = \"10.9.0.10\"\nsubnets = [\"192.168.1.0/24\"]\npush_other_subnets = true\n\n[[peer]]\nname = \"b\"\nkey = \"{}\"\nsubnets = [\"192.168.2.0/24\"]\n",
            key(),
            key()
        );
        let peers = check(&text).unwrap();
        assert_eq!(peers.0.len(), 2);
        let a = peers.0.values().find(|p| p.name == "a").unwrap();
        let a_fp = fingerprint(&a.key);
        assert_eq!(
            peers.other_subnets(&a_fp),
            vec!["192.168.2.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn errors_name_the_line_and_the_reason() {
        let k = key();
        let e = check("pool = \"10.9.0.0/24\"\nbogus = 1\n").unwrap_err();
        assert_eq!(e[0].line, Some(2));
        assert!(e[0].message.contains("unknown field"), "{e:?}");
        let e = check("pool = \"10.9.0.0/33\"\n").unwrap_err();
        assert_eq!(e[0].line, Some(1));
        let text = format!(
            "pool = \"10.9.0.0/24\"\n[[peer]]\nname=\"a\"\nkey=\"{k}\"\naddress=\"10.8.0.1\"\nsubnets=[\"192.168.0.0/16\"]\n[[peer]]\nname=\"b\"\nkey=\"{k}\"\n[[peer]]\nname=\"c\"\nkey=\"{}\"\nsubnets=[\"192.168.5.0/24\", \"10.9.0.128/25\"]\n",
            key()
        );
        let e = check(&text).unwrap_err();
        let msgs: Vec<String> = e
            .iter()
            .map(|e| format!("{}: {}", e.line.unwrap(), e.message))
            .collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("2: a: address 10.8.0.1 is outside the pool")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.starts_with("7: b: duplicate key")), "{msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("c: subnet 192.168.5.0/24 overlaps 192.168.0.0/16 of a (line 2)")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("c: subnet 10.9.0.128/25 overlaps the pool")),
            "{msgs:?}"
        );
    }

    #[test]
    fn static_addresses_must_be_leasable() {
        let text = format!(
            "pool = \"10.9.0.0/24\"\npool6 = \"fd00:9::/64\"\n[[peer]]\nname=\"a\"\nkey=\"{}\"\naddress6=\"fd00:9::1\"\n[[peer]]\nname=\"b\"\nkey=\"{}\"\naddress=\"10.9.0.255\"\n",
            key(),
            key()
        );
        let msgs: Vec<String> = check(&text).unwrap_err().into_iter().map(|e| e.message).collect();
        assert!(
            msgs.iter()
                .any(|m| m == "a: address6 fd00:9::1 is the server's own address"),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("b: address 10.9.0.255 cannot be used")),
            "{msgs:?}"
        );
    }
}
