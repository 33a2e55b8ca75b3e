//! `sshvpnd policy`: the access-control policy in force, its rules' hit counters and its groups'
//! sessions, as JSON on the control socket and as a table for the requesting side.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sshvpn_common::report::{render, to_line};

use crate::control::request::{self, POLICY_REQUEST};
use crate::firewall;
use crate::policy::DefaultPolicy;
use crate::policy_runtime::PolicyRuntime;

/// `sshvpnd policy` as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyReport {
    pub default_policy: DefaultPolicy,
    /// The nftables table, when one is installed.
    pub table: Option<String>,
    pub rules: Vec<RuleReport>,
    pub groups: Vec<GroupReport>,
    pub denied_packets: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RuleReport {
    pub line: usize,
    pub rule: String,
    /// Packets that opened a flow through this rule (replies pass by conntrack, uncounted).
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GroupReport {
    pub name: String,
    pub sessions: usize,
    pub denied_packets: u64,
}

/// The `sshvpnd policy` answer (JSON) for the policy in force.
pub async fn report(policy_runtime: &PolicyRuntime) -> String {
    let fw = &policy_runtime.firewall;
    let policy = fw.policy().await;
    let counters = fw.counters().await;
    let active = fw.active().await;
    let get = |name: &str| counters.get(name).copied().unwrap_or_default();
    let sessions = fw.session_groups().await;
    let report = PolicyReport {
        default_policy: policy.default,
        table: active.then(|| format!("inet {}", fw.table())),
        rules: policy
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (packets, bytes) = get(&firewall::rule_counter(i));
                RuleReport {
                    line: r.line,
                    rule: r.text.clone(),
                    packets,
                    bytes,
                }
            })
            .collect(),
        groups: policy
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.implicit)
            .map(|(i, g)| GroupReport {
                name: g.name.clone(),
                sessions: sessions.values().filter(|v| v.contains(&g.name)).count(),
                denied_packets: get(&firewall::denied_counter(i)).0,
            })
            .collect(),
        denied_packets: get(firewall::DENIED_ALL).0,
    };
    to_line(&report)
}

/// Client side of `sshvpnd policy`.
pub fn query(control: &Path, json: bool) -> anyhow::Result<String> {
    let text = request::ask(control, POLICY_REQUEST, "policy")?;
    if text.is_empty() {
        anyhow::bail!(
            "the daemon at {} sent no policy: only root, the daemon's user and members of \
             --control-admin-group may see it",
            control.display()
        );
    }
    Ok(render(text, json, "policy", table)?)
}

/// The table of `sshvpnd policy`.
fn table(r: PolicyReport) -> String {
    let mut out = format!(
        "default policy: {}; {}\n",
        match r.default_policy {
            DefaultPolicy::Allow => "allow",
            DefaultPolicy::Deny => "deny",
        },
        match &r.table {
            Some(t) => format!("enforced by nftables table {t}"),
            None => "nothing enforced (no firewall table)".into(),
        }
    );
    out.push_str(&format!("{:>5} {:>12} {:>14}  RULE\n", "LINE", "PACKETS", "BYTES"));
    for rule in &r.rules {
        out.push_str(&format!(
            "{:>5} {:>12} {:>14}  {}\n",
            rule.line, rule.packets, rule.bytes, rule.rule
        ));
    }
    if r.default_policy == DefaultPolicy::Deny {
        out.push_str(&format!("{:>5} {:>12} {:>14}  (denied)\n", "-", r.denied_packets, "-"));
    }
    if !r.groups.is_empty() {
        out.push_str(&format!("\n{:<24} {:>9} {:>14}\n", "GROUP", "SESSIONS", "DENIED PKTS"));
        for g in &r.groups {
            out.push_str(&format!("{:<24} {:>9} {:>14}\n", g.name, g.sessions, g.denied_packets));
        }
    }
    out
}
