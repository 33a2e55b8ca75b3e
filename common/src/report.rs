//! Status reports shared by the binaries and their `status` commands (JSON on the control
//! sockets, a table for people): the report types, rates measured over one second, one report
//! written as a JSON line, and one answer read back as JSON or rendered for people. The sockets
//! themselves (paths, permissions, who may ask) belong to each binary.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::tunnel::{StatsSnapshot, TunnelStats};

/// An answer that is not the report it should be; `what` names the report ("status").
#[derive(Debug, thiserror::Error)]
#[error("reading the {what}")]
pub struct ReportError {
    pub what: &'static str,
    #[source]
    pub source: serde_json::Error,
}

/// One report as a control socket carries it: JSON and a newline.
pub fn to_line<T: Serialize>(report: &T) -> String {
    serde_json::to_string(report).unwrap_or_default() + "\n"
}

/// A reporting command's output from the socket's answer `text`: the JSON as is with `json`,
/// otherwise the parsed report (`what`, named in errors) rendered for people by `render`.
pub fn render<T: DeserializeOwned>(
    text: String,
    json: bool,
    what: &'static str,
    render: impl FnOnce(T) -> String,
) -> Result<String, ReportError> {
    if json {
        return Ok(text);
    }
    let report = serde_json::from_str(&text).map_err(|source| ReportError { what, source })?;
    Ok(render(report))
}

/// The traffic of each of `stats`, rates measured over the coming second (one wait for all).
pub async fn traffic_over_one_second(stats: &[&TunnelStats]) -> Vec<Traffic> {
    let first: Vec<StatsSnapshot> = stats.iter().map(|s| s.snapshot()).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stats
        .iter()
        .zip(first)
        .map(|(s, a)| Traffic::between(&a, &s.snapshot()))
        .collect()
}

/// Packets dropped, by reason.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Drops {
    pub spoofed: u64,
    pub local_scope: u64,
    pub malformed: u64,
    pub queue_full: u64,
    pub too_big: u64,
    pub tun_error: u64,
    /// Offloaded frames whose virtio-net header was refused.
    #[serde(default)]
    pub bad_offload: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.spoofed
            + self.local_scope
            + self.malformed
            + self.queue_full
            + self.too_big
            + self.tun_error
            + self.bad_offload
    }
}

/// Traffic counters of one session, with rates measured over the last second.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bps: u64,
    pub tx_bps: u64,
    pub drops: Drops,
}

impl Traffic {
    /// Counters from `now`, rates from the change since `second_ago`.
    pub fn between(second_ago: &StatsSnapshot, now: &StatsSnapshot) -> Traffic {
        Traffic {
            rx_bytes: now.rx_bytes,
            tx_bytes: now.tx_bytes,
            rx_packets: now.rx_packets,
            tx_packets: now.tx_packets,
            rx_bps: now.rx_bytes.saturating_sub(second_ago.rx_bytes) * 8,
            tx_bps: now.tx_bytes.saturating_sub(second_ago.tx_bytes) * 8,
            drops: Drops {
                spoofed: now.drop_spoofed,
                local_scope: now.drop_local_scope,
                malformed: now.drop_malformed,
                queue_full: now.drop_queue_full,
                too_big: now.drop_too_big,
                tun_error: now.drop_tun_error,
                bad_offload: now.drop_bad_offload,
            },
        }
    }
}

/// One client as the server sees it (`sshvpnd status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerClient {
    pub identity: String,
    pub peer: String,
    pub addresses: Vec<String>,
    /// Seconds since the Unix epoch.
    pub since: u64,
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Access-control groups the client is in (issue 14).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The client's own view (`sshvpn status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientReport {
    pub server: String,
    pub started: u64,
    pub reconnects: u32,
    pub dropped_while_disconnected: u64,
    pub connected: bool,
    pub since: Option<u64>,
    pub addresses: Vec<String>,
    pub routes: Vec<String>,
    pub rtt_ms: Option<f64>,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// Seconds since the Unix epoch at `t` (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

/// Mbit/s with two decimals.
pub fn mbps(bps: u64) -> String {
    format!("{:.2}", bps as f64 / 1e6)
}
