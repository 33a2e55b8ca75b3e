//! Enforcement of the access-control policy with the kernel's firewall: one nftables table of
//! our own (`inet sshvpnd_policy_<tun>`, apart from the masquerade table) with a forward and an
//! input chain for packets from the tunnel, per-group address sets kept in step with the
//! sessions, named counters per rule and per group, and dynamic sets recording what was denied.
//! The whole table is replaced in one `nft -f` transaction when the policy changes, and deleted
//! on exit. A policy with nothing to enforce (`allow`, no rules) creates no table at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use anyhow::Context;
use ipnet::IpNet;

use crate::policy::{DefaultPolicy, Dest, Policy, PortSpec, Proto, SessionNames, Source};

/// Seconds a denied flow stays in the dynamic set after its last packet.
pub const DENIED_TIMEOUT_SECS: u64 = 60;
/// Entries of each dynamic denied set at most (beyond, packets are still dropped, not recorded).
pub const DENIED_SET_SIZE: u32 = 4096;

pub fn table_name(tun: &str) -> String {
    format!(
        "sshvpnd_policy_{}",
        tun.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

fn set_name(index: usize, name: &str, v6: bool) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    format!("grp_{index}_{clean}_{}", if v6 { 6 } else { 4 })
}

/// Name of the named counter of rule `i`.
pub fn rule_counter(i: usize) -> String {
    format!("rule_{i}")
}

/// Name of the named counter of packets denied to group `g`.
pub fn denied_counter(g: usize) -> String {
    format!("denied_{g}")
}

pub const DENIED_ALL: &str = "denied_all";
/// Named counter of denied packets not recorded in the denied sets (their source is over its
/// share: [`DENIED_NEW_PER_SECOND`], [`DENIED_NEW_BURST`], [`DENIED_QUOTA_PER_SOURCE`]).
pub const DENIED_UNRECORDED: &str = "denied_unrecorded";
/// New denied flows one source may add to a denied set: a burst of this many...
pub const DENIED_NEW_BURST: u32 = 300;
/// ...then this many per second.
pub const DENIED_NEW_PER_SECOND: u32 = 4;
/// A source holding more entries than this in a denied set is quieted: its denied packets are
/// no longer recorded for [`DENIED_QUIET_SECS`] (one `denied_flows_suppressed` audit event).
pub const DENIED_QUOTA_PER_SOURCE: usize = 256;
pub const DENIED_QUIET_SECS: u64 = 300;
/// Sources tracked for the per-source rate of new denied flows, at most.
const DENIED_RATE_SOURCES: u32 = 65536;
const RECORD_CHAIN: &str = "record_denied";

/// The regular chain recording a denied packet in the denied sets, jumped to before the drop.
/// A source quieted by the daemon (over [`DENIED_QUOTA_PER_SOURCE`]) is not recorded; a packet of
/// a flow already recorded refreshes it; a new flow is recorded only within its source's rate
/// ([`DENIED_NEW_BURST`], then [`DENIED_NEW_PER_SECOND`]): one client cannot fill the
/// [`DENIED_SET_SIZE`] entries that the audit log's `policy_denied` summaries come from.
fn record_chain(out: &mut String) {
    let _ = writeln!(out, "  chain {RECORD_CHAIN} {{");
    for (ip, v) in [("ip", "4"), ("ip6", "6")] {
        let nf = if v == "4" { "ipv4" } else { "ipv6" };
        let _ = writeln!(
            out,
            "    meta nfproto {nf} {ip} saddr @quiet{v} counter name \"{DENIED_UNRECORDED}\" return"
        );
        // (A constant cannot be looked up in a concatenation: other protocols' packets go
        // through the rate below, known flow or not.)
        let key = format!("{ip} saddr . {ip} daddr . meta l4proto . th dport");
        let _ = writeln!(
            out,
            "    meta nfproto {nf} meta l4proto {{ tcp, udp }} {key} @denied{v} update @denied{v} {{ {key} }} return"
        );
        let _ = writeln!(
            out,
            "    meta nfproto {nf} update @rate{v} {{ {ip} saddr limit rate over {DENIED_NEW_PER_SECOND}/second burst {DENIED_NEW_BURST} packets }} counter name \"{DENIED_UNRECORDED}\" return"
        );
        for (l4, port) in [
            ("meta l4proto { tcp, udp }", "th dport"),
            ("meta l4proto != { tcp, udp }", "0"),
        ] {
            let key = format!("{ip} saddr . {ip} daddr . meta l4proto . {port}");
            let _ = writeln!(out, "    meta nfproto {nf} {l4} update @denied{v} {{ {key} }}");
        }
    }
    let _ = writeln!(out, "  }}");
}

fn nets_of(v6: bool, nets: &BTreeSet<IpNet>) -> Vec<String> {
    nets.iter()
        .filter(|n| n.addr().is_ipv6() == v6)
        .map(|n| n.to_string())
        .collect()
}

fn port_clauses(ports: &[PortSpec], v6: bool) -> Vec<String> {
    if ports.is_empty() {
        return vec![String::new()];
    }
    let mut out = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        let name = if proto == Proto::Tcp { "tcp" } else { "udp" };
        let specs: Vec<Option<(u16, u16)>> = ports
            .iter()
            .filter_map(|p| match p {
                PortSpec::Port(q, r) if *q == proto => Some(*r),
                _ => None,
            })
            .collect();
        if specs.is_empty() {
            continue;
        }
        if specs.contains(&None) {
            out.push(format!("meta l4proto {name}"));
            continue;
        }
        let mut list: Vec<(u16, u16)> = specs.into_iter().flatten().collect();
        list.sort();
        list.dedup();
        let items: Vec<String> = list
            .iter()
            .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
            .collect();
        out.push(format!("{name} dport {{ {} }}", items.join(", ")));
    }
    if ports.contains(&PortSpec::Icmp) {
        out.push(
            if v6 {
                "meta l4proto ipv6-icmp"
            } else {
                "meta l4proto icmp"
            }
            .to_string(),
        );
    }
    out
}

/// The rules of one chain; `forward` includes the pools for `clients` destinations.
fn chain_rules(policy: &Policy, pools: &[IpNet], forward: bool, out: &mut String) {
    for (i, rule) in policy.rules.iter().enumerate() {
        for v6 in [false, true] {
            let ip = if v6 { "ip6" } else { "ip" };
            let mut any = false;
            let mut dests = BTreeSet::new();
            for d in &rule.to {
                match d {
                    Dest::Any => any = true,
                    Dest::Net(n) => {
                        dests.insert(*n);
                    }
                    Dest::Clients if forward => dests.extend(pools.iter().copied()),
                    Dest::Clients => {}
                }
            }
            let daddr = if any {
                String::new()
            } else {
                let list = nets_of(v6, &dests);
                if list.is_empty() {
                    continue;
                }
                format!("{ip} daddr {{ {} }} ", list.join(", "))
            };
            for src in &rule.from {
                let saddr = match src {
                    Source::Any => String::new(),
                    Source::Group(g) => format!("{ip} saddr @{} ", set_name(*g, &policy.groups[*g].name, v6)),
                };
                let family = if saddr.is_empty() && daddr.is_empty() {
                    format!("meta nfproto {} ", if v6 { "ipv6" } else { "ipv4" })
                } else {
                    String::new()
                };
                for proto in port_clauses(&rule.ports, v6) {
                    let proto = if proto.is_empty() { proto } else { proto + " " };
                    let _ = writeln!(
                        out,
                        "    {family}{saddr}{daddr}{proto}counter name \"{}\" accept",
                        rule_counter(i)
                    );
                }
            }
        }
    }
    if policy.default == DefaultPolicy::Deny {
        for (g, group) in policy.groups.iter().enumerate() {
            for v6 in [false, true] {
                let ip = if v6 { "ip6" } else { "ip" };
                let _ = writeln!(
                    out,
                    "    {ip} saddr @{} counter name \"{}\"",
                    set_name(g, &group.name, v6),
                    denied_counter(g)
                );
            }
        }
        // What is recorded in the denied sets, fairly per source (see `record_chain`).
        let _ = writeln!(out, "    jump {RECORD_CHAIN}");
        let _ = writeln!(out, "    counter name \"{DENIED_ALL}\" drop");
    }
}

/// The nft script replacing the whole table in one transaction; `members[g]` are the addresses
/// (client addresses and peer subnets) currently in group `g`.
pub fn render(policy: &Policy, tun: &str, pools: &[IpNet], members: &[BTreeSet<IpNet>]) -> String {
    let table = table_name(tun);
    let mut o = String::new();
    // Creating the table first makes the delete valid whether or not it exists.
    let _ = writeln!(
        o,
        "table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{"
    );
    for i in 0..policy.rules.len() {
        let _ = writeln!(o, "  counter {} {{}}", rule_counter(i));
    }
    if policy.default == DefaultPolicy::Deny {
        for g in 0..policy.groups.len() {
            let _ = writeln!(o, "  counter {} {{}}", denied_counter(g));
        }
        let _ = writeln!(o, "  counter {DENIED_ALL} {{}}");
        let _ = writeln!(o, "  counter {DENIED_UNRECORDED} {{}}");
        for (v, t) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
            let _ = writeln!(
                o,
                "  set denied{v} {{ type {t} . {t} . inet_proto . inet_service; flags dynamic,timeout; timeout {DENIED_TIMEOUT_SECS}s; size {DENIED_SET_SIZE}; counter; }}"
            );
            let _ = writeln!(
                o,
                "  set rate{v} {{ type {t}; flags dynamic,timeout; timeout {DENIED_TIMEOUT_SECS}s; size {DENIED_RATE_SOURCES}; }}"
            );
            let _ = writeln!(o, "  set quiet{v} {{ type {t}; flags timeout; }}");
        }
        record_chain(&mut o);
    }
    for (g, group) in policy.groups.iter().enumerate() {
        for v6 in [false, true] {
            let t = if v6 { "ipv6_addr" } else { "ipv4_addr" };
            let empty = BTreeSet::new();
            let elems = nets_of(v6, members.get(g).unwrap_or(&empty));
            let elements = if elems.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", elems.join(", "))
            };
            let _ = writeln!(
                o,
                "  set {} {{ type {t}; flags interval;{elements} }}",
                set_name(g, &group.name, v6)
            );
        }
    }
    for (chain, forward) in [("forward", true), ("input", false)] {
        let _ = writeln!(
            o,
            "  chain {chain} {{\n    type filter hook {chain} priority filter; policy accept;\n    iifname != \"{tun}\" accept\n    ct state established,related accept"
        );
        chain_rules(policy, pools, forward, &mut o);
        let _ = writeln!(o, "  }}");
    }
    let _ = writeln!(o, "}}");
    o
}

/// `add element` / `delete element` commands turning `from` into `to` (per group).
pub fn element_changes(policy: &Policy, tun: &str, from: &[BTreeSet<IpNet>], to: &[BTreeSet<IpNet>]) -> String {
    let table = table_name(tun);
    let empty = BTreeSet::new();
    let mut o = String::new();
    for (g, group) in policy.groups.iter().enumerate() {
        let (a, b) = (from.get(g).unwrap_or(&empty), to.get(g).unwrap_or(&empty));
        for v6 in [false, true] {
            let set = set_name(g, &group.name, v6);
            let gone: BTreeSet<IpNet> = a.difference(b).copied().collect();
            let new: BTreeSet<IpNet> = b.difference(a).copied().collect();
            let (gone, new) = (nets_of(v6, &gone), nets_of(v6, &new));
            if !gone.is_empty() {
                let _ = writeln!(o, "delete element inet {table} {set} {{ {} }}", gone.join(", "));
            }
            if !new.is_empty() {
                let _ = writeln!(o, "add element inet {table} {set} {{ {} }}", new.join(", "));
            }
        }
    }
    o
}

use crate::firewall_runner::nft;

struct SessionEntry {
    identity: String,
    base: String,
    peer: Option<String>,
    addresses: Vec<IpNet>,
}

impl SessionEntry {
    fn names(&self) -> SessionNames<'_> {
        SessionNames {
            identity: &self.identity,
            base: &self.base,
            peer: self.peer.as_deref(),
        }
    }
}

struct State {
    policy: Arc<Policy>,
    sessions: BTreeMap<u64, SessionEntry>,
    /// Per group: the addresses in its sets, as installed.
    installed: Vec<BTreeSet<IpNet>>,
    /// The table exists.
    active: bool,
}

/// A denied flow from the dynamic sets, with its packet count so far.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeniedFlow {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: String,
    pub port: u16,
}

/// The policy in force and the sessions it applies to.
pub struct Firewall {
    tun: String,
    table: String,
    pools: Vec<IpNet>,
    state: tokio::sync::Mutex<State>,
    /// The table may exist (cleared when it is deleted): read by the exit guard.
    installed: Arc<AtomicBool>,
}

/// Deletes the table when dropped (daemon exit, also on error paths).
pub struct FirewallGuard {
    table: String,
    installed: Arc<AtomicBool>,
}

impl Drop for FirewallGuard {
    fn drop(&mut self) {
        if self.installed.swap(false, Relaxed) {
            let args = ["delete", "table", "inet", &self.table];
            match crate::firewall_runner::nft_blocking(&args, std::time::Duration::from_secs(5)) {
                Ok(_) => tracing::info!("removed the policy table inet {}", self.table),
                Err(e) => tracing::warn!("removing the policy table: {e:#}"),
            }
        }
    }
}

impl Firewall {
    pub fn new(tun: &str, pools: Vec<IpNet>) -> Firewall {
        Firewall {
            tun: tun.to_string(),
            table: table_name(tun),
            pools,
            state: tokio::sync::Mutex::new(State {
                policy: Arc::new(Policy::default()),
                sessions: BTreeMap::new(),
                installed: Vec::new(),
                active: false,
            }),
            installed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn guard(&self) -> FirewallGuard {
        FirewallGuard {
            table: self.table.clone(),
            installed: self.installed.clone(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn members(policy: &Policy, sessions: &BTreeMap<u64, SessionEntry>) -> Vec<BTreeSet<IpNet>> {
        let mut m = vec![BTreeSet::new(); policy.groups.len()];
        for s in sessions.values() {
            for g in policy.groups_of(&s.names()) {
                m[g].extend(s.addresses.iter().copied());
            }
        }
        m
    }

    /// Puts `policy` in force for every session (one transaction); on failure the previous
    /// policy stays in force, in the kernel and here.
    pub async fn apply(&self, policy: Policy) -> anyhow::Result<()> {
        let mut st = self.state.lock().await;
        let members = Self::members(&policy, &st.sessions);
        if policy.is_noop() {
            // Also removes a table left by a killed run (there is none unless nf_tables is
            // loaded: nothing is run, nothing loaded, when no policy was ever used). An absent
            // nft is no error here.
            let maybe_left = !self.installed.load(Relaxed) && std::path::Path::new("/sys/module/nf_tables").exists();
            if st.active || maybe_left {
                let _ = nft(&["delete", "table", "inet", &self.table], None).await;
            }
            self.installed.store(false, Relaxed);
            st.active = false;
        } else {
            // Marked first: if nft succeeds and we die, the guard still removes the table.
            self.installed.store(true, Relaxed);
            let script = render(&policy, &self.tun, &self.pools, &members);
            if let Err(e) = nft(&["-f", "-"], Some(&script)).await {
                self.installed.store(st.active, Relaxed);
                return Err(e).context(format!("installing the policy table inet {}", self.table));
            }
            st.active = true;
        }
        st.installed = members;
        st.policy = Arc::new(policy);
        Ok(())
    }

    pub async fn policy(&self) -> Arc<Policy> {
        self.state.lock().await.policy.clone()
    }

    async fn sync(&self, st: &mut State) {
        let want = Self::members(&st.policy, &st.sessions);
        if st.active {
            let script = element_changes(&st.policy, &self.tun, &st.installed, &want);
            if !script.is_empty()
                && let Err(e) = nft(&["-f", "-"], Some(&script)).await
            {
                // The transaction did not happen: the sets are still `installed`, and the next
                // change (a session starting or ending) carries this one too.
                tracing::warn!("updating the policy's address sets: {e:#}");
                return;
            }
        }
        st.installed = want;
    }

    /// A session started: its addresses join its groups' sets. Returns its group names.
    pub async fn session_start(
        &self,
        id: u64,
        identity: &str,
        base: &str,
        peer: Option<&str>,
        addresses: &[IpNet],
    ) -> Vec<String> {
        let mut st = self.state.lock().await;
        let entry = SessionEntry {
            identity: identity.to_string(),
            base: base.to_string(),
            peer: peer.map(str::to_string),
            addresses: addresses.to_vec(),
        };
        let groups = st.policy.group_names(&entry.names());
        st.sessions.insert(id, entry);
        self.sync(&mut st).await;
        groups
    }

    /// A session ended: its addresses leave the sets (unless another session holds them).
    pub async fn session_end(&self, id: u64) {
        let mut st = self.state.lock().await;
        if st.sessions.remove(&id).is_some() {
            self.sync(&mut st).await;
        }
    }

    /// Group names of each session, by session id.
    pub async fn session_groups(&self) -> HashMap<u64, Vec<String>> {
        let st = self.state.lock().await;
        st.sessions
            .iter()
            .map(|(id, s)| (*id, st.policy.group_names(&s.names())))
            .collect()
    }

    /// The identity of the session owning `addr` (most specific prefix).
    pub async fn identity_of(&self, addr: IpAddr) -> Option<String> {
        let st = self.state.lock().await;
        st.sessions
            .values()
            .flat_map(|s| s.addresses.iter().map(move |n| (n, &s.identity)))
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, id)| id.clone())
    }

    pub async fn active(&self) -> bool {
        self.state.lock().await.active
    }

    /// Stops recording the denied flows of `sources` for [`DENIED_QUIET_SECS`] (they are over
    /// their share of the denied sets).
    pub async fn quiet(&self, sources: &[IpAddr]) -> anyhow::Result<()> {
        if sources.is_empty() || !self.active().await {
            return Ok(());
        }
        let mut script = String::new();
        for (v6, v) in [(false, "4"), (true, "6")] {
            let elems: Vec<String> = sources
                .iter()
                .filter(|a| a.is_ipv6() == v6)
                .map(|a| format!("{a} timeout {DENIED_QUIET_SECS}s"))
                .collect();
            if !elems.is_empty() {
                let _ = writeln!(
                    script,
                    "add element inet {} quiet{v} {{ {} }}",
                    self.table,
                    elems.join(", ")
                );
            }
        }
        nft(&["-f", "-"], Some(&script)).await.map(|_| ())
    }

    /// Named counters of the table: name -> (packets, bytes). Empty without a table.
    pub async fn counters(&self) -> HashMap<String, (u64, u64)> {
        if !self.active().await {
            return HashMap::new();
        }
        match nft(&["-j", "list", "counters", "table", "inet", &self.table], None).await {
            Ok(text) => parse_counters(&text),
            Err(e) => {
                tracing::debug!("reading the policy counters: {e:#}");
                HashMap::new()
            }
        }
    }

    /// Denied flows recorded in the dynamic sets, with their packet counts.
    pub async fn denied_flows(&self) -> Vec<(DeniedFlow, u64)> {
        if !self.active().await || self.policy().await.default != DefaultPolicy::Deny {
            return Vec::new();
        }
        let mut flows = Vec::new();
        for set in ["denied4", "denied6"] {
            match nft(&["-j", "list", "set", "inet", &self.table, set], None).await {
                Ok(text) => flows.extend(parse_denied(&text)),
                Err(e) => tracing::debug!("reading the denied set {set}: {e:#}"),
            }
        }
        flows
    }
}

/// Reads `nft -j list counters` output.
pub fn parse_counters(text: &str) -> HashMap<String, (u64, u64)> {
    let mut out = HashMap::new();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return out;
    };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["counter"];
        if let (Some(name), Some(p), Some(b)) = (c["name"].as_str(), c["packets"].as_u64(), c["bytes"].as_u64()) {
            out.insert(name.to_string(), (p, b));
        }
    }
    out
}

fn proto_name(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(match n.as_u64()? {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            58 => "ipv6-icmp".into(),
            n => n.to_string(),
        }),
        _ => None,
    }
}

/// Reads `nft -j list set` output of a denied set: each element and its packet counter.
pub fn parse_denied(text: &str) -> Vec<(DeniedFlow, u64)> {
    let mut out = Vec::new();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return out;
    };
    for item in v["nftables"].as_array().into_iter().flatten() {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            let elem = &e["elem"];
            let Some(parts) = elem["val"]["concat"].as_array() else {
                continue;
            };
            let packets = elem["counter"]["packets"].as_u64().unwrap_or(0);
            let (Some(src), Some(dst), Some(proto), Some(port)) = (
                parts.first().and_then(|s| s.as_str()?.parse().ok()),
                parts.get(1).and_then(|s| s.as_str()?.parse().ok()),
                parts.get(2).and_then(proto_name),
                parts
                    .get(3)
                    .and_then(|p| p.as_u64())
                    .and_then(|p| u16::try_from(p).ok()),
            ) else {
                continue;
            };
            out.push((
                DeniedFlow {
                    source: src,
                    destination: dst,
                    protocol: proto,
                    port,
                },
                packets,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Group, Member, Rule};

    fn example() -> Policy {
        Policy {
            default: DefaultPolicy::Deny,
            groups: vec![
                Group {
                    name: "ops".into(),
                    members: vec![Member::Peer("branch-a".into())],
                    implicit: false,
                },
                Group {
                    name: "user:bob".into(),
                    members: vec![Member::Identity("user:bob".into())],
                    implicit: true,
                },
            ],
            rules: vec![
                Rule {
                    line: 3,
                    from: vec![Source::Group(0)],
                    to: vec![
                        Dest::Net("10.0.1.0/24".parse().unwrap()),
                        Dest::Net("fd00:1::/64".parse().unwrap()),
                    ],
                    ports: vec![
                        PortSpec::Port(Proto::Tcp, Some((22, 22))),
                        PortSpec::Port(Proto::Tcp, Some((443, 443))),
                        PortSpec::Icmp,
                    ],
                    text: String::new(),
                },
                Rule {
                    line: 8,
                    from: vec![Source::Group(1), Source::Any],
                    to: vec![Dest::Clients],
                    ports: vec![PortSpec::Port(Proto::Udp, None)],
                    text: String::new(),
                },
            ],
        }
    }

    #[test]
    fn renders_rules_sets_and_the_deny_tail() {
        let pools = vec!["10.203.0.0/24".parse().unwrap(), "fd00:203::/64".parse().unwrap()];
        let members = vec![
            ["10.203.0.2/32", "192.168.1.0/24", "fd00:203::2/128"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            BTreeSet::new(),
        ];
        let s = render(&example(), "sshvpn0", &pools, &members);
        let has = |needle: &str| assert!(s.contains(needle), "{needle:?} not in\n{s}");
        has("table inet sshvpnd_policy_sshvpn0 {}\ndelete table inet sshvpnd_policy_sshvpn0\n");
        has("set grp_0_ops_4 { type ipv4_addr; flags interval; elements = { 10.203.0.2/32, 192.168.1.0/24 }; }");
        has("set grp_0_ops_6 { type ipv6_addr; flags interval; elements = { fd00:203::2/128 }; }");
        has("set grp_1_user_bob_4 { type ipv4_addr; flags interval; }");
        has("iifname != \"sshvpn0\" accept\n    ct state established,related accept\n");
        has("ip saddr @grp_0_ops_4 ip daddr { 10.0.1.0/24 } tcp dport { 22, 443 } counter name \"rule_0\" accept");
        has("ip saddr @grp_0_ops_4 ip daddr { 10.0.1.0/24 } meta l4proto icmp counter name \"rule_0\" accept");
        has("ip6 saddr @grp_0_ops_6 ip6 daddr { fd00:1::/64 } meta l4proto ipv6-icmp counter name \"rule_0\" accept");
        // Clients: the pools, in the forward chain only.
        has("ip saddr @grp_1_user_bob_4 ip daddr { 10.203.0.0/24 } meta l4proto udp counter name \"rule_1\" accept");
        has("ip daddr { 10.203.0.0/24 } meta l4proto udp counter name \"rule_1\" accept");
        let input = &s[s.find("chain input").unwrap()..];
        assert!(!input.contains("rule_1"), "{input}");
        assert!(input.contains("rule_0"), "{input}");
        has("ip saddr @grp_0_ops_4 counter name \"denied_0\"\n");
        has("update @denied4 { ip saddr . ip daddr . meta l4proto . th dport }");
        has("jump record_denied\n    counter name \"denied_all\" drop");
        has("ip saddr @quiet4 counter name \"denied_unrecorded\" return");
        has(
            "update @rate6 { ip6 saddr limit rate over 4/second burst 300 packets } counter name \"denied_unrecorded\" return",
        );
        let record = &s[s.find("chain record_denied").unwrap()..];
        let known = record.find("@denied4 update @denied4").unwrap();
        let rate = record.find("update @rate4").unwrap();
        let new = record.rfind("meta l4proto { tcp, udp } update @denied4").unwrap();
        assert!(
            known < rate && rate < new,
            "refresh, then the rate, then record:\n{record}"
        );
        has("counter name \"denied_all\" drop\n  }");
        // Under allow: counts, never drops.
        let allow = Policy {
            default: DefaultPolicy::Allow,
            ..example()
        };
        let s = render(&allow, "sshvpn0", &pools, &members);
        assert!(!s.contains("drop") && !s.contains("denied"), "{s}");
    }

    #[test]
    fn element_changes_are_a_diff() {
        let p = example();
        let a: Vec<BTreeSet<IpNet>> = vec![["10.203.0.2/32".parse().unwrap()].into(), BTreeSet::new()];
        let b: Vec<BTreeSet<IpNet>> = vec![
            ["10.203.0.3/32".parse().unwrap()].into(),
            ["fd00:203::9/128".parse().unwrap()].into(),
        ];
        let s = element_changes(&p, "sshvpn0", &a, &b);
        assert_eq!(
            s,
            "delete element inet sshvpnd_policy_sshvpn0 grp_0_ops_4 { 10.203.0.2/32 }\n\
             add element inet sshvpnd_policy_sshvpn0 grp_0_ops_4 { 10.203.0.3/32 }\n\
             add element inet sshvpnd_policy_sshvpn0 grp_1_user_bob_6 { fd00:203::9/128 }\n"
        );
        assert_eq!(element_changes(&p, "sshvpn0", &b, &b), "");
    }

    #[test]
    fn parses_nft_json() {
        let c = r#"{"nftables": [{"metainfo": {}}, {"counter": {"family": "inet", "name": "rule_0", "table": "t", "handle": 2, "packets": 5, "bytes": 300}}]}"#;
        assert_eq!(parse_counters(c)["rule_0"], (5, 300));
        let d = r#"{"nftables": [{"set": {"name": "denied4", "elem": [{"elem": {"val": {"concat": ["10.203.0.2", "10.202.0.2", "tcp", 23]}, "timeout": 60, "expires": 59, "counter": {"packets": 3, "bytes": 180}}}, {"elem": {"val": {"concat": ["10.203.0.2", "10.202.0.2", 1, 0]}, "counter": {"packets": 1, "bytes": 84}}}]}}]}"#;
        let flows = parse_denied(d);
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].0.protocol, "tcp");
        assert_eq!(flows[0].0.port, 23);
        assert_eq!(flows[0].1, 3);
        assert_eq!(flows[1].0.protocol, "icmp");
        assert!(parse_denied("not json").is_empty());
    }
}
