//! `sshvpnd status`: one line per connected client (identity, peer, addresses, since, bytes,
//! current rates, drops, access-control groups), or JSON; served on the control socket: every
//! session to root and the admin group, their own sessions to other members of the control group.

use sshvpn_common::report::{ServerClient, mbps, to_line, traffic_over_one_second, unix_now, unix_secs};
use sshvpn_common::tunnel::TunnelStats;
use std::path::Path;

use crate::control::request::{self, STATUS_REQUEST};
use crate::state::ServerState;

/// Which sessions a status report shows.
#[derive(Debug, Clone, Copy)]
pub enum View<'a> {
    All,
    /// Only the sessions of this identity (`user:NAME` for a member of the control group).
    Identity(&'a str),
}

/// The status report as JSON, rates measured over one second.
pub async fn report(state: &ServerState, view: View<'_>) -> String {
    let ports: Vec<_> = state
        .switch
        .ports()
        .into_iter()
        .filter(|p| match view {
            View::All => true,
            View::Identity(id) => p.identity == id,
        })
        .collect();
    let groups = state.policy.firewall.session_groups().await;
    let stats: Vec<&TunnelStats> = ports.iter().map(|p| &*p.stats).collect();
    let traffic = traffic_over_one_second(&stats).await;
    let clients: Vec<ServerClient> = ports
        .iter()
        .zip(traffic)
        .map(|(p, traffic)| ServerClient {
            identity: p.identity.clone(),
            peer: p.peer.clone(),
            addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
            since: unix_secs(p.since),
            traffic,
            groups: groups.get(&p.id).cloned().unwrap_or_default(),
        })
        .collect();
    to_line(&clients)
}

/// Client side of `sshvpnd status`.
pub fn query(control: &Path, json: bool) -> anyhow::Result<String> {
    let text = request::ask(control, STATUS_REQUEST, "status")?;
    Ok(sshvpn_common::report::render(text, json, "status", table)?)
}

/// The table of `sshvpnd status`.
fn table(clients: Vec<ServerClient>) -> String {
    let now = unix_now();
    let mut out = format!(
        "{:<56} {:<24} {:<32} {:>8} {:>12} {:>12} {:>9} {:>9} {:>6} GROUPS\n",
        "IDENTITY", "PEER", "ADDRESSES", "SINCE", "RX BYTES", "TX BYTES", "RX Mb/s", "TX Mb/s", "DROPS"
    );
    for c in clients {
        out.push_str(&format!(
            "{:<56} {:<24} {:<32} {:>7}s {:>12} {:>12} {:>9} {:>9} {:>6} {}\n",
            c.identity,
            c.peer,
            c.addresses.join(","),
            now.saturating_sub(c.since),
            c.traffic.rx_bytes,
            c.traffic.tx_bytes,
            mbps(c.traffic.rx_bps),
            mbps(c.traffic.tx_bps),
            c.traffic.drops.total(),
            if c.groups.is_empty() {
                "-".to_string()
            } else {
                c.groups.join(",")
            }
        ));
    }
    out
}
