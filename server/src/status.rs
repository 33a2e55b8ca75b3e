//! `sshvpnd status`: one line per connected client (identity, peer, addresses, since, bytes,
//! current rates, drops), or JSON; served on the control socket to root and the control group.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use sshvpn_common::tunnel::StatsSnapshot;

use crate::daemon::Daemon;
use crate::switch::PeerPort;

/// Request line on the control socket.
pub const STATUS_REQUEST: &[u8] = b"status\n";

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn client_json(p: &PeerPort, s: &StatsSnapshot, rate: (f64, f64)) -> String {
    let addrs: Vec<String> = p.addresses.iter().map(|a| json_str(&a.to_string())).collect();
    let since = p.since.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!(
        "{{\"identity\":{},\"peer\":{},\"addresses\":[{}],\"since\":{since},\"rx_bytes\":{},\"tx_bytes\":{},\
         \"rx_packets\":{},\"tx_packets\":{},\"rx_bps\":{:.0},\"tx_bps\":{:.0},\"drops\":{{\"spoofed\":{},\
         \"local_scope\":{},\"malformed\":{},\"queue_full\":{},\"too_big\":{},\"tun_error\":{}}}}}",
        json_str(&p.identity),
        json_str(&p.peer),
        addrs.join(","),
        s.rx_bytes,
        s.tx_bytes,
        s.rx_packets,
        s.tx_packets,
        rate.0,
        rate.1,
        s.drop_spoofed,
        s.drop_local_scope,
        s.drop_malformed,
        s.drop_queue_full,
        s.drop_too_big,
        s.drop_tun_error
    )
}

/// The status report: a JSON array, rates measured over one second.
pub async fn report(daemon: &Arc<Daemon>) -> String {
    let ports = daemon.switch.ports();
    let first: Vec<StatsSnapshot> = ports.iter().map(|p| p.stats.snapshot()).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let items: Vec<String> = ports
        .iter()
        .zip(first)
        .map(|(p, a)| {
            let b = p.stats.snapshot();
            let rate = (
                (b.rx_bytes - a.rx_bytes) as f64 * 8.0,
                (b.tx_bytes - a.tx_bytes) as f64 * 8.0,
            );
            client_json(p, &b, rate)
        })
        .collect();
    format!("[{}]\n", items.join(",\n "))
}

/// Client side of `sshvpnd status`.
pub fn query(control: &Path, json: bool) -> anyhow::Result<String> {
    let mut sock = UnixStream::connect(control).map_err(|e| {
        anyhow!(
            "cannot reach the daemon at {}: {e} (is sshvpnd running?)",
            control.display()
        )
    })?;
    sock.write_all(STATUS_REQUEST)?;
    let mut text = String::new();
    sock.read_to_string(&mut text).context("reading the status")?;
    if json {
        return Ok(text);
    }
    Ok(table(&text))
}

/// A human table from the JSON report (parsed loosely: it is our own output).
fn table(json: &str) -> String {
    let field = |obj: &str, key: &str| -> String {
        let pat = format!("\"{key}\":");
        let Some(i) = obj.find(&pat) else { return String::new() };
        let rest = &obj[i + pat.len()..];
        if let Some(r) = rest.strip_prefix('"') {
            r.split('"').next().unwrap_or_default().to_string()
        } else if let Some(r) = rest.strip_prefix('[') {
            r.split(']').next().unwrap_or_default().replace('"', "")
        } else {
            rest.split([',', '}']).next().unwrap_or_default().to_string()
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut out = format!(
        "{:<56} {:<24} {:<30} {:>8} {:>12} {:>12} {:>10} {:>10} {:>6}\n",
        "IDENTITY", "PEER", "ADDRESSES", "SINCE", "RX BYTES", "TX BYTES", "RX Mbit/s", "TX Mbit/s", "DROPS"
    );
    let body = json.trim().trim_start_matches('[').trim_end_matches(']');
    for obj in body.split("\n ").filter(|o| o.contains("identity")) {
        let since: u64 = field(obj, "since").parse().unwrap_or(now);
        let drops: u64 = [
            "spoofed",
            "local_scope",
            "malformed",
            "queue_full",
            "too_big",
            "tun_error",
        ]
        .iter()
        .map(|k| field(obj, k).parse::<u64>().unwrap_or(0))
        .sum();
        let mbps = |k: &str| field(obj, k).parse::<f64>().unwrap_or(0.0) / 1e6;
        out.push_str(&format!(
            "{:<56} {:<24} {:<30} {:>7}s {:>12} {:>12} {:>10.2} {:>10.2} {:>6}\n",
            field(obj, "identity"),
            field(obj, "peer"),
            field(obj, "addresses"),
            now.saturating_sub(since),
            field(obj, "rx_bytes"),
            field(obj, "tx_bytes"),
            mbps("rx_bps"),
            mbps("tx_bps"),
            drops
        ));
    }
    out
}
