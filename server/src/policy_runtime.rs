//! The access-control policy and audit log in the running daemon: loading the policy at start,
//! the session hooks (group sets, session_start / session_end audit events), SIGHUP reloads
//! (policy swapped live, audit log reopened; a broken file keeps the policy in force), the
//! rate-limited `policy_denied` summaries and the policy metrics (`sshvpnd policy` is
//! `control::policy`'s).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use prometheus_client::registry::Registry;
use serde_json::json;
use sshvpn_common::report::Drops;
use sshvpn_common::tunnel::StatsSnapshot;
use tokio::signal::unix::Signal;

use crate::audit::Audit;
use crate::config;
use crate::config::Peers;
use crate::firewall::{self, DeniedFlow, Firewall};
use crate::metrics::by_label;
use crate::policy::{self, DefaultPolicy, Policy};
use crate::switch::{PeerPort, Switch};

/// How often denied flows are summarized in the audit log.
pub const DENIED_SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Reads the policy (and the audit log path) from the configuration file, with the pools in
/// force; errors are `PATH:LINE: reason`, one per line.
pub fn load(path: &Path, pools: [Option<IpNet>; 2]) -> anyhow::Result<(Policy, Option<PathBuf>)> {
    let (file, text) = config::load(path)?;
    let fmt = |errs: Vec<config::ConfigError>| config::problems(path, &errs);
    // The peers are checked too (a reload of a file with broken peers is refused whole), and
    // names in the policy are those of the file's peers. Peers themselves (keys, addresses)
    // only change at a restart.
    let peers = config::validate(&text, &file, pools[0].or(file.pool), pools[1].or(file.pool6)).map_err(fmt)?;
    let policy = policy::compile(&text, &file, &peers).map_err(fmt)?;
    Ok((policy, file.audit_log.clone()))
}

/// `sshvpnd check-config`'s line about the policy.
pub fn summary(policy: &Policy) -> String {
    let groups = policy.groups.iter().filter(|g| !g.implicit).count();
    format!(
        "default policy {}, {} groups, {} rules",
        match policy.default {
            DefaultPolicy::Allow => "allow",
            DefaultPolicy::Deny => "deny",
        },
        groups,
        policy.rules.len()
    )
}

/// The daemon's policy state.
pub struct PolicyRuntime {
    pub firewall: Firewall,
    config: Option<PathBuf>,
    /// The pools in force (from the command line or the file at start).
    pools: [Option<IpNet>; 2],
    /// Packet counts of denied flows at the last summary.
    denied_seen: tokio::sync::Mutex<HashMap<DeniedFlow, u64>>,
    /// Sources over their share of the denied sets, and until when they are quiet.
    quieted: tokio::sync::Mutex<HashMap<IpAddr, Instant>>,
    /// Named counters as last read (for the metrics).
    counters: Mutex<HashMap<String, (u64, u64)>>,
}

impl PolicyRuntime {
    /// Puts `policy` in force (replacing a table left by a killed run).
    pub async fn start(
        tun: &str,
        pools: [Option<IpNet>; 2],
        config: Option<PathBuf>,
        policy: Policy,
    ) -> anyhow::Result<PolicyRuntime> {
        let firewall = Firewall::new(tun, pools.iter().flatten().map(IpNet::trunc).collect());
        let (rules, noop) = (policy.rules.len(), policy.is_noop());
        let text = summary(&policy);
        firewall.apply(policy).await?;
        if !noop {
            tracing::info!(
                "access control: {text} (nftables table inet {}, {rules} rules)",
                firewall.table()
            );
        }
        Ok(PolicyRuntime {
            firewall,
            config,
            pools,
            denied_seen: Default::default(),
            quieted: Default::default(),
            counters: Default::default(),
        })
    }
}

fn peer_name<'a>(peers: &'a Peers, base: &str) -> Option<&'a str> {
    peers.get(base).map(|p| p.name.as_str())
}

impl PolicyRuntime {
    /// Hook at "client connected": the session joins its groups' address sets (before any of its
    /// packets is forwarded) and the audit log gets `session_start`.
    pub async fn session_started(&self, audit: &Audit, peers: &Peers, port: &PeerPort, base: &str, software: &str) {
        let groups = self
            .firewall
            .session_start(port.id, &port.identity, base, peer_name(peers, base), &port.addresses)
            .await;
        audit.emit(
            "session_start",
            json!({
                "identity": port.identity,
                "peer": peer_name(peers, base),
                "source": port.peer,
                "addresses": port.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "software": software.chars().take(256).collect::<String>(),
                "groups": groups,
            }),
        );
    }

    /// Hook at "client disconnected": the session leaves the sets; `session_end` with its counters.
    pub async fn session_ended(
        &self,
        audit: &Audit,
        port: &PeerPort,
        duration: Duration,
        s: &StatsSnapshot,
        reason: &str,
    ) {
        self.firewall.session_end(port.id).await;
        audit_session_end(audit, port, duration, s, reason);
    }
}

/// At daemon exit: `session_end` for the sessions still connected (their tasks end with the
/// runtime, without reaching [`session_ended`]).
pub fn shutting_down(audit: &Audit, switch: &Switch) {
    for port in switch.ports() {
        let duration = port.since.elapsed().unwrap_or_default();
        audit_session_end(audit, &port, duration, &port.stats.snapshot(), "daemon shutting down");
    }
}

fn audit_session_end(audit: &Audit, port: &PeerPort, duration: Duration, s: &StatsSnapshot, reason: &str) {
    let drops = Drops {
        spoofed: s.drop_spoofed,
        local_scope: s.drop_local_scope,
        malformed: s.drop_malformed,
        queue_full: s.drop_queue_full,
        too_big: s.drop_too_big,
        tun_error: s.drop_tun_error,
        bad_offload: s.drop_bad_offload,
    };
    audit.emit(
        "session_end",
        json!({
            "identity": port.identity,
            "source": port.peer,
            "duration_s": (duration.as_secs_f64() * 1000.0).round() / 1000.0,
            "rx_bytes": s.rx_bytes,
            "tx_bytes": s.tx_bytes,
            "rx_packets": s.rx_packets,
            "tx_packets": s.tx_packets,
            "drops": drops,
            "reason": reason,
        }),
    );
}

/// Sources holding more than `quota` of the denied flows, with their number of flows.
fn over_quota(flows: &[(DeniedFlow, u64)], quota: usize) -> Vec<(IpAddr, usize)> {
    let mut per: HashMap<IpAddr, usize> = HashMap::new();
    for (f, _) in flows {
        *per.entry(f.source).or_default() += 1;
    }
    let mut over: Vec<_> = per.into_iter().filter(|(_, n)| *n > quota).collect();
    over.sort();
    over
}

impl PolicyRuntime {
    /// SIGHUP: re-reads the policy and swaps it for every session; reopens the audit log.
    pub async fn reload(&self, audit: &Audit) {
        audit.reopen();
        let Some(path) = &self.config else {
            tracing::info!("SIGHUP: audit log reopened (no configuration file to reload)");
            return;
        };
        let result = match load(path, self.pools) {
            Ok((policy, _)) => {
                let text = summary(&policy);
                self.firewall
                    .apply(policy)
                    .await
                    .map(|()| text)
                    .map_err(|e| format!("{e:#}"))
            }
            Err(e) => Err(format!("{e:#}")),
        };
        match result {
            Ok(text) => {
                tracing::info!("configuration reloaded: {text}");
                audit.config_reloaded(path, true, &text);
            }
            Err(e) => {
                tracing::error!("configuration reload failed, the previous policy stays in force:\n{e}");
                audit.config_reloaded(path, false, &e);
            }
        }
    }

    /// Audit lines for the denied flows whose counts grew since the last call.
    async fn summarize_denied(&self, audit: &Audit) {
        if !audit.enabled() {
            return;
        }
        let flows = self.firewall.denied_flows().await;
        self.quiet_greedy_sources(audit, &flows).await;
        let mut seen = self.denied_seen.lock().await;
        let mut next = HashMap::new();
        for (flow, packets) in flows {
            let before = seen.get(&flow).copied().unwrap_or(0);
            // A count below the last one: the entry timed out and came back.
            let new = if packets >= before { packets - before } else { packets };
            if new > 0 {
                let identity = self.firewall.identity_of(flow.source).await;
                audit.emit(
                    "policy_denied",
                    json!({
                        "identity": identity,
                        "source": flow.source.to_string(),
                        "destination": flow.destination.to_string(),
                        "protocol": flow.protocol,
                        "port": flow.port,
                        "packets": new,
                        "interval_s": DENIED_SUMMARY_EVERY.as_secs(),
                    }),
                );
            }
            next.insert(flow, packets);
        }
        *seen = next;
    }

    /// Fairness of the denied sets: a source holding more than its quota of entries is quieted
    /// (its denied packets are no longer recorded for a while, only counted), with one
    /// `denied_flows_suppressed` audit event, so that other clients' denied flows still find room.
    async fn quiet_greedy_sources(&self, audit: &Audit, flows: &[(DeniedFlow, u64)]) {
        let over = over_quota(flows, firewall::DENIED_QUOTA_PER_SOURCE);
        let now = Instant::now();
        let mut quieted = self.quieted.lock().await;
        quieted.retain(|_, until| *until > now);
        let new: Vec<(IpAddr, usize)> = over.into_iter().filter(|(a, _)| !quieted.contains_key(a)).collect();
        if new.is_empty() {
            return;
        }
        let sources: Vec<IpAddr> = new.iter().map(|(a, _)| *a).collect();
        if let Err(e) = self.firewall.quiet(&sources).await {
            tracing::warn!("quieting sources over their share of the denied sets: {e:#}");
            return;
        }
        let until = now + Duration::from_secs(firewall::DENIED_QUIET_SECS);
        for (source, entries) in new {
            quieted.insert(source, until);
            let identity = self.firewall.identity_of(source).await;
            tracing::info!(
                "denied flows from {source} are no longer recorded for {}s: {entries} recorded, over the share of {}",
                firewall::DENIED_QUIET_SECS,
                firewall::DENIED_QUOTA_PER_SOURCE
            );
            audit.emit(
                "denied_flows_suppressed",
                json!({
                    "identity": identity,
                    "source": source.to_string(),
                    "recorded_flows": entries,
                    "quota": firewall::DENIED_QUOTA_PER_SOURCE,
                    "suppressed_for_s": firewall::DENIED_QUIET_SECS,
                }),
            );
        }
    }

    /// Background work: SIGHUP reloads and denied-flow summaries. Runs for the daemon's lifetime.
    pub async fn background(&self, audit: &Audit, mut hangup: Signal) {
        let mut tick = tokio::time::interval(DENIED_SUMMARY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = hangup.recv() => {
                    if r.is_none() {
                        return;
                    }
                    self.reload(audit).await;
                }
                _ = tick.tick() => self.summarize_denied(audit).await,
            }
        }
    }

    /// Re-reads the counters for the metrics.
    pub async fn refresh_counters(&self) {
        let c = self.firewall.counters().await;
        *self.counters.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }

    /// `sshvpn_policy_denied_total{group=...}` and rule hits, from the last read counters.
    pub fn register_metrics(&self, policy: &Policy, registry: &mut Registry) {
        if policy.is_noop() {
            return;
        }
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let get = |name: &str| c.get(name).copied().unwrap_or_default();
        if policy.default == DefaultPolicy::Deny {
            let groups = policy
                .groups
                .iter()
                .enumerate()
                .map(|(g, group)| {
                    (
                        group.name.replace(['"', '\\'], "_"),
                        get(&firewall::denied_counter(g)).0,
                    )
                })
                .chain([("all".to_string(), get(firewall::DENIED_ALL).0)]);
            registry.register(
                "sshvpn_policy_denied",
                "Packets from clients dropped by the access policy, by the sender's group (\"all\": every denied packet)",
                by_label("group", groups),
            );
        }
        registry.register(
            "sshvpn_policy_denied_unrecorded",
            "Denied packets not recorded for the audit log (their source is over its share of the denied sets)",
            by_label("table", [("all".to_string(), get(firewall::DENIED_UNRECORDED).0)]),
        );
        let rules = policy
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.line.to_string(), get(&firewall::rule_counter(i)).0));
        registry.register(
            "sshvpn_policy_rule_packets",
            "Packets that started a flow allowed by a rule (by its line in the file)",
            by_label("line", rules),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, port: u16) -> (DeniedFlow, u64) {
        (
            DeniedFlow {
                source: src.parse().unwrap(),
                destination: "10.202.0.2".parse().unwrap(),
                protocol: "udp".into(),
                port,
            },
            1,
        )
    }

    #[test]
    fn only_sources_over_their_quota_are_quieted() {
        let mut flows: Vec<_> = (0..300).map(|p| flow("10.203.0.2", p)).collect();
        flows.extend((0..256).map(|p| flow("10.203.0.3", p)));
        flows.push(flow("fd00:203::2", 1));
        assert_eq!(
            over_quota(&flows, 256),
            vec![("10.203.0.2".parse::<IpAddr>().unwrap(), 300)]
        );
        assert!(over_quota(&flows, 300).is_empty());
    }
}
