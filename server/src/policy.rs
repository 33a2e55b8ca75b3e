//! Access-control policy from the configuration file (`default_policy`, `[[group]]`,
//! `[[policy]]`): the TOML types, validation with line numbers, and the compiled form the
//! firewall renders (groups, rules, destinations, ports) plus group membership of a session.
//! Pure: no I/O.

use std::collections::HashMap;

pub use crate::config::DefaultPolicy;
use crate::config::{ConfigError, FileConfig, Peers};
use ipnet::IpNet;
use sshvpn_common::toml_errors::line_of;

/// Who belongs to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// A `[[peer]]` by name.
    Peer(String),
    /// An identity string as sessions carry it: `SHA256:...`, `user:NAME`, `cert:PRINCIPAL`.
    Identity(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub members: Vec<Member>,
    /// Made for a peer name or identity used directly in a rule's `from`.
    pub implicit: bool,
}

/// Where a rule lets traffic go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Net(IpNet),
    /// The tunnel pools (other clients); not the hub's own tunnel addresses.
    Clients,
    /// Anywhere (`"*"`), the hub included.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One entry of `ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSpec {
    /// A protocol with a port range (inclusive), or every port.
    Port(Proto, Option<(u16, u16)>),
    /// ICMP (ICMPv6 towards IPv6 destinations).
    Icmp,
}

/// Who a rule is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Any,
    /// Index into [`Policy::groups`].
    Group(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Line of the `[[policy]]` table in the file.
    pub line: usize,
    pub from: Vec<Source>,
    pub to: Vec<Dest>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortSpec>,
    /// The rule as written, for `sshvpnd policy`.
    pub text: String,
}

/// A validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub default: DefaultPolicy,
    pub groups: Vec<Group>,
    pub rules: Vec<Rule>,
}

/// What a session is known by, for group membership.
#[derive(Debug, Clone, Default)]
pub struct SessionNames<'a> {
    /// Full identity (with an `#instance` tag for `sshvpn exec` runs).
    pub identity: &'a str,
    /// Identity without the instance tag.
    pub base: &'a str,
    /// Name of the configured `[[peer]]`, if it is one.
    pub peer: Option<&'a str>,
}

/// Longest group name accepted (they become parts of nftables set names).
const MAX_NAME: usize = 32;

fn is_identity(s: &str) -> bool {
    ["SHA256:", "user:", "cert:"].iter().any(|p| s.starts_with(p))
}

/// Why an identity in `members` or `from` (`SHA256:...`, `user:NAME`, `cert:PRINCIPAL`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{identity:?}: nothing after \"{prefix}:\"")]
    Empty { identity: String, prefix: String },
    #[error("{0:?}: not a valid identity")]
    Invalid(String),
    #[error("{0:?}: not a key fingerprint (SHA256: and 43 base64 characters, as ssh-keygen -l prints)")]
    NotAFingerprint(String),
}

/// Why an entry of `ports` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port {0:?}: expected tcp/PORT, udp/PORT, tcp/LOW-HIGH, tcp, udp or icmp")]
    Protocol(String),
    #[error("port {spec:?}: {port:?} is not a port number (1-65535)")]
    Number { spec: String, port: String },
    #[error("port {0:?}: range is backwards")]
    Backwards(String),
}

fn check_identity(s: &str) -> Result<(), IdentityError> {
    let (prefix, rest) = s.split_once(':').unwrap_or((s, ""));
    if rest.is_empty() {
        return Err(IdentityError::Empty {
            identity: s.to_string(),
            prefix: prefix.to_string(),
        });
    }
    if rest.len() > 256 || rest.chars().any(|c| c.is_control() || c == '"') {
        return Err(IdentityError::Invalid(s.to_string()));
    }
    if prefix == "SHA256"
        && !(rest.len() == 43 && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'))
    {
        return Err(IdentityError::NotAFingerprint(s.to_string()));
    }
    Ok(())
}

fn parse_ports(s: &str) -> Result<PortSpec, PortError> {
    let lower = s.trim().to_ascii_lowercase();
    if lower == "icmp" || lower == "icmpv6" {
        return Ok(PortSpec::Icmp);
    }
    let (proto, range) = lower
        .split_once('/')
        .map_or((lower.as_str(), None), |(p, r)| (p, Some(r)));
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(PortError::Protocol(s.to_string())),
    };
    let Some(range) = range else {
        return Ok(PortSpec::Port(proto, None));
    };
    let port = |p: &str| -> Result<u16, PortError> {
        match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(PortError::Number {
                spec: s.to_string(),
                port: p.to_string(),
            }),
        }
    };
    let (lo, hi) = match range.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(range)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(PortError::Backwards(s.to_string()));
    }
    Ok(PortSpec::Port(proto, Some((lo, hi))))
}

/// Validates the policy part of a parsed file against the configured peers (by name). Returns
/// every problem, each with its line.
pub fn compile(text: &str, file: &FileConfig, peers: &Peers) -> Result<Policy, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let peer_names: Vec<&str> = peers.0.values().map(|p| p.name.as_str()).collect();
    let mut policy = Policy {
        default: file.default_policy.unwrap_or_default(),
        ..Policy::default()
    };
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for spanned in &file.groups {
        let line = line_of(text, spanned.span().start);
        let g = spanned.get_ref();
        let mut err = |message: String| {
            errors.push(ConfigError {
                line: Some(line),
                message,
            })
        };
        let name = g.name.trim();
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            err(format!(
                "group {name:?}: names are 1 to {MAX_NAME} letters, digits, '-' or '_'"
            ));
            continue;
        }
        if name == "clients" {
            err("group \"clients\": the name is reserved (it means the tunnel pools in `to`)".into());
            continue;
        }
        if by_name.contains_key(name) {
            err(format!("group {name:?} is defined twice"));
            continue;
        }
        if peer_names.contains(&name) {
            err(format!("group {name:?} has the name of a peer: rename one of them"));
            continue;
        }
        let mut members = Vec::new();
        for m in &g.members {
            let m = m.trim();
            if is_identity(m) {
                match check_identity(m) {
                    Ok(()) => members.push(Member::Identity(m.to_string())),
                    Err(e) => err(format!("group {name:?}: member {e}")),
                }
            } else if peer_names.contains(&m) {
                members.push(Member::Peer(m.to_string()));
            } else {
                err(format!(
                    "group {name:?}: member {m:?} is not a [[peer]] name, nor user:NAME, SHA256:..., cert:PRINCIPAL"
                ));
            }
        }
        by_name.insert(name.to_string(), policy.groups.len());
        policy.groups.push(Group {
            name: name.to_string(),
            members,
            implicit: false,
        });
    }
    for spanned in &file.policies {
        let line = line_of(text, spanned.span().start);
        let p = spanned.get_ref();
        let mut errs = Vec::new();
        let mut from = Vec::new();
        if p.from.is_empty() {
            errs.push("policy: `from` is empty or missing (use [\"*\"] for everyone)".to_string());
        }
        for f in &p.from {
            let f = f.trim();
            if f == "*" {
                from.push(Source::Any);
                continue;
            }
            if let Some(&i) = by_name.get(f) {
                from.push(Source::Group(i));
                continue;
            }
            let member = if is_identity(f) {
                match check_identity(f) {
                    Ok(()) => Member::Identity(f.to_string()),
                    Err(e) => {
                        errs.push(format!("policy: from {e}"));
                        continue;
                    }
                }
            } else if peer_names.contains(&f) {
                Member::Peer(f.to_string())
            } else {
                errs.push(format!(
                    "policy: from {f:?} is not a group, a [[peer]] name, an identity (user:, SHA256:, cert:) or \"*\""
                ));
                continue;
            };
            // A peer or identity named directly: a group of its own.
            let i = *by_name.entry(f.to_string()).or_insert_with(|| {
                policy.groups.push(Group {
                    name: f.to_string(),
                    members: vec![member],
                    implicit: true,
                });
                policy.groups.len() - 1
            });
            from.push(Source::Group(i));
        }
        let mut to = Vec::new();
        if p.to.is_empty() {
            errs.push("policy: `to` is empty or missing (prefixes, \"clients\" or \"*\")".to_string());
        }
        for t in &p.to {
            let t = t.trim();
            match t {
                "*" => to.push(Dest::Any),
                "clients" => to.push(Dest::Clients),
                _ => match t
                    .parse::<IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
                {
                    Ok(n) => to.push(Dest::Net(n.trunc())),
                    Err(_) => errs.push(format!(
                        "policy: to {t:?} is not a prefix (10.0.1.0/24, fd00:1::/64, an address), \"clients\" or \"*\""
                    )),
                },
            }
        }
        let mut ports = Vec::new();
        if let Some(list) = &p.ports {
            if list.is_empty() {
                errs.push("policy: `ports` is empty (leave it out for every protocol and port)".to_string());
            }
            for s in list {
                match parse_ports(s) {
                    Ok(spec) => ports.push(spec),
                    Err(e) => errs.push(format!("policy: {e}")),
                }
            }
        }
        if errs.is_empty() {
            from.dedup();
            let text = format!(
                "from {} to {}{}",
                p.from.join(","),
                p.to.join(","),
                p.ports
                    .as_ref()
                    .map(|v| format!(" ports {}", v.join(",")))
                    .unwrap_or_default()
            );
            policy.rules.push(Rule {
                line,
                from,
                to,
                ports,
                text,
            });
        } else {
            errors.extend(errs.into_iter().map(|message| ConfigError {
                line: Some(line),
                message,
            }));
        }
    }
    if errors.is_empty() { Ok(policy) } else { Err(errors) }
}

/// `cert:PRINCIPAL` names every certificate login for that principal, whose identity is
/// `cert:CA-FINGERPRINT:PRINCIPAL` (see `credentials::cert_identity`).
fn principal_matches(member: &str, identity: &str) -> bool {
    match (member.strip_prefix("cert:"), identity.strip_prefix("cert:")) {
        (Some(principal), Some(rest)) if !principal.contains(':') => {
            rest.rsplit_once(':').is_some_and(|(_, p)| p == principal)
        }
        _ => false,
    }
}

impl Policy {
    /// `default_policy = "allow"` and no rules: nothing to enforce, no firewall state at all.
    pub fn is_noop(&self) -> bool {
        self.default == DefaultPolicy::Allow && self.rules.is_empty()
    }

    /// Indexes of the groups a session belongs to.
    pub fn groups_of(&self, s: &SessionNames<'_>) -> Vec<usize> {
        (0..self.groups.len())
            .filter(|&i| {
                self.groups[i].members.iter().any(|m| match m {
                    Member::Peer(name) => s.peer == Some(name.as_str()),
                    Member::Identity(id) => id == s.identity || id == s.base || principal_matches(id, s.base),
                })
            })
            .collect()
    }

    /// Names of the declared (not implicit) groups a session belongs to.
    pub fn group_names(&self, s: &SessionNames<'_>) -> Vec<String> {
        self.groups_of(s)
            .into_iter()
            .filter(|&i| !self.groups[i].implicit)
            .map(|i| self.groups[i].name.clone())
            .collect()
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortSpec::Icmp => write!(f, "icmp"),
            PortSpec::Port(p, r) => {
                let p = match p {
                    Proto::Tcp => "tcp",
                    Proto::Udp => "udp",
                };
                match r {
                    None => write!(f, "{p}"),
                    Some((a, b)) if a == b => write!(f, "{p}/{a}"),
                    Some((a, b)) => write!(f, "{p}/{a}-{b}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::key;

    fn check(text: &str) -> Result<Policy, Vec<ConfigError>> {
        let file = crate::config::parse(text).map_err(|e| vec![e])?;
        let peers = crate::config::validate(text, &file, file.pool, file.pool6)?;
        compile(text, &file, &peers)
    }

    fn peers_text() -> String {
        format!(
            "pool = \"10.9.0.0/24\"\n[[peer]]\nname = \"branch-a\"\nkey = \"{}\"\n[[peer]]\nname = \"ci-1\"\nkey = \"{}\"\n",
            key(),
            key()
        )
    }

    #[test]
    fn absent_policy_is_allow_with_nothing_to_do() {
        let p = check("pool = \"10.9.0.0/24\"\n").unwrap();
        assert!(p.is_noop());
        let p = check("pool = \"10.9.0.0/24\"\ndefault_policy = \"allow\"\n").unwrap();
        assert!(p.is_noop());
    }

    #[test]
    fn a_worked_example_compiles() {
        let text = format!(
            "default_policy = \"deny\"\n{}[[group]]\nname = \"ops\"\nmembers = [\"branch-a\", \"user:alice\"]\n\
             [[group]]\nname = \"ci\"\nmembers = [\"ci-1\", \"cert:runner\"]\n\
             [[policy]]\nfrom = [\"ops\"]\nto = [\"10.0.1.0/24\", \"fd00:1::1/64\"]\nports = [\"tcp/22\", \"TCP/443\", \"udp/5000-5010\", \"icmp\"]\n\
             [[policy]]\nfrom = [\"ci\", \"user:bob\", \"branch-a\"]\nto = [\"10.0.1.5\", \"clients\"]\n",
            peers_text()
        );
        let p = check(&text).unwrap();
        assert_eq!(p.default, DefaultPolicy::Deny);
        assert!(!p.is_noop());
        assert_eq!(p.rules.len(), 2);
        let r = &p.rules[0];
        assert_eq!(r.from, vec![Source::Group(0)]);
        assert_eq!(
            r.to,
            vec![
                Dest::Net("10.0.1.0/24".parse().unwrap()),
                Dest::Net("fd00:1::/64".parse().unwrap())
            ]
        );
        assert_eq!(
            r.ports,
            vec![
                PortSpec::Port(Proto::Tcp, Some((22, 22))),
                PortSpec::Port(Proto::Tcp, Some((443, 443))),
                PortSpec::Port(Proto::Udp, Some((5000, 5010))),
                PortSpec::Icmp
            ]
        );
        let r = &p.rules[1];
        // user:bob and branch-a named directly become implicit groups.
        assert_eq!(r.from, vec![Source::Group(1), Source::Group(2), Source::Group(3)]);
        assert!(p.groups[2].implicit && p.groups[3].implicit);
        assert_eq!(r.to, vec![Dest::Net("10.0.1.5/32".parse().unwrap()), Dest::Clients]);
        assert!(r.ports.is_empty());
        // Membership.
        let alice = SessionNames {
            identity: "user:alice",
            base: "user:alice",
            peer: None,
        };
        assert_eq!(p.groups_of(&alice), vec![0]);
        let branch = SessionNames {
            identity: "SHA256:x#7",
            base: "SHA256:x",
            peer: Some("branch-a"),
        };
        assert_eq!(p.groups_of(&branch), vec![0, 3]);
        assert_eq!(p.group_names(&branch), vec!["ops".to_string()]);
        let runner = SessionNames {
            identity: "cert:runner-7:runner",
            base: "cert:runner-7:runner",
            peer: None,
        };
        assert_eq!(p.group_names(&runner), vec!["ci".to_string()]);
        let nobody = SessionNames {
            identity: "user:eve",
            base: "user:eve",
            peer: None,
        };
        assert!(p.groups_of(&nobody).is_empty());
    }

    #[test]
    fn errors_name_the_line_and_the_reason() {
        let text = format!(
            "default_policy = \"deny\"\n{}# the policy\n\
             [[group]]\nname = \"ops\"\nmembers = [\"nobody\", \"SHA256:short\"]\n\
             [[group]]\nname = \"ops\"\n\
             [[group]]\nname = \"bad name\"\n\
             [[policy]]\nfrom = [\"ops\"]\nto = [\"10.0.1.0/33\"]\nports = [\"tcp/0\", \"sctp/1\", \"udp/9-3\"]\n\
             [[policy]]\nfrom = [\"ghost\"]\nto = []\n",
            peers_text()
        );
        let base = peers_text().lines().count() + 1;
        let e = check(&text).unwrap_err();
        let msgs: Vec<String> = e
            .iter()
            .map(|e| format!("{}: {}", e.line.unwrap() - base, e.message))
            .collect();
        let has = |s: &str| assert!(msgs.iter().any(|m| m.contains(s)), "{s:?} not in {msgs:#?}");
        has("2: group \"ops\": member \"nobody\" is not a [[peer]] name");
        has("2: group \"ops\": member \"SHA256:short\": not a key fingerprint");
        has("5: group \"ops\" is defined twice");
        has("7: group \"bad name\": names are");
        has("9: policy: to \"10.0.1.0/33\" is not a prefix");
        has("9: policy: port \"tcp/0\"");
        has("9: policy: port \"sctp/1\"");
        has("9: policy: port \"udp/9-3\": range is backwards");
        has("13: policy: from \"ghost\" is not a group");
        has("13: policy: `to` is empty");
        let e = check("pool = \"10.9.0.0/24\"\ndefault_policy = \"deny!\"\n").unwrap_err();
        assert_eq!(e[0].line, Some(2));
        assert!(e[0].message.contains("unknown variant"), "{e:?}");
    }
}
