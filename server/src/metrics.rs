//! Prometheus metrics on an opt-in address (`--metrics 127.0.0.1:9810`): a minimal HTTP/1.1
//! responder for the text exposition format, whatever path is asked for.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::daemon::Daemon;

/// Upper bounds (seconds) of the handshake-duration histogram buckets.
pub const HANDSHAKE_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub fn render(daemon: &Daemon) -> String {
    let mut totals = daemon.totals.snapshot();
    for p in daemon.switch.ports() {
        let s = p.stats.snapshot();
        totals.rx_bytes += s.rx_bytes;
        totals.tx_bytes += s.tx_bytes;
        totals.rx_packets += s.rx_packets;
        totals.tx_packets += s.tx_packets;
        totals.drop_spoofed += s.drop_spoofed;
        totals.drop_local_scope += s.drop_local_scope;
        totals.drop_malformed += s.drop_malformed;
        totals.drop_queue_full += s.drop_queue_full;
        totals.drop_too_big += s.drop_too_big;
        totals.drop_tun_error += s.drop_tun_error;
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP sshvpn_clients Connected clients.\n# TYPE sshvpn_clients gauge"
    );
    let _ = writeln!(o, "sshvpn_clients {}", daemon.clients.load(Relaxed));
    let _ = writeln!(
        o,
        "# HELP sshvpn_bytes_total Bytes of IP packets moved, by direction as seen from the clients' side."
    );
    let _ = writeln!(o, "# TYPE sshvpn_bytes_total counter");
    let _ = writeln!(
        o,
        "sshvpn_bytes_total{{direction=\"from_clients\"}} {}",
        totals.rx_bytes
    );
    let _ = writeln!(o, "sshvpn_bytes_total{{direction=\"to_clients\"}} {}", totals.tx_bytes);
    let _ = writeln!(
        o,
        "# HELP sshvpn_packets_total Packets moved.\n# TYPE sshvpn_packets_total counter"
    );
    let _ = writeln!(
        o,
        "sshvpn_packets_total{{direction=\"from_clients\"}} {}",
        totals.rx_packets
    );
    let _ = writeln!(
        o,
        "sshvpn_packets_total{{direction=\"to_clients\"}} {}",
        totals.tx_packets
    );
    let _ = writeln!(
        o,
        "# HELP sshvpn_drops_total Packets dropped, by reason.\n# TYPE sshvpn_drops_total counter"
    );
    for (reason, n) in [
        ("spoofed", totals.drop_spoofed),
        ("local_scope", totals.drop_local_scope),
        ("malformed", totals.drop_malformed),
        ("queue_full", totals.drop_queue_full),
        ("too_big", totals.drop_too_big),
        ("tun_error", totals.drop_tun_error),
        ("no_route", daemon.switch.stats.no_route.load(Relaxed)),
    ] {
        let _ = writeln!(o, "sshvpn_drops_total{{reason=\"{reason}\"}} {n}");
    }
    let _ = writeln!(o, "# HELP sshvpn_auth_failures_total Refused authentication attempts.");
    let _ = writeln!(
        o,
        "# TYPE sshvpn_auth_failures_total counter\nsshvpn_auth_failures_total {}",
        daemon.auth_failures.load(Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP sshvpn_handshake_seconds Time from tunnel start to established."
    );
    let _ = writeln!(o, "# TYPE sshvpn_handshake_seconds histogram");
    let h = daemon.handshakes.lock().unwrap_or_else(|e| e.into_inner());
    let mut cumulative = 0;
    for (i, le) in HANDSHAKE_BUCKETS.iter().enumerate() {
        cumulative += h.0[i];
        let _ = writeln!(o, "sshvpn_handshake_seconds_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(o, "sshvpn_handshake_seconds_bucket{{le=\"+Inf\"}} {}", h.2);
    let _ = writeln!(
        o,
        "sshvpn_handshake_seconds_sum {}\nsshvpn_handshake_seconds_count {}",
        h.1, h.2
    );
    drop(h);
    o
}

/// [`render`] plus the access-control counters (read from the firewall first).
pub async fn render_all(daemon: &Daemon) -> String {
    crate::policy_runtime::refresh_counters(daemon).await;
    let policy = daemon.policy.firewall.policy().await;
    let mut o = render(daemon);
    crate::policy_runtime::render_metrics(daemon, &policy, &mut o);
    o
}

pub async fn serve(daemon: Arc<Daemon>, listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (mut s, _) = listener.accept().await?;
        let daemon = daemon.clone();
        tokio::spawn(async move {
            // Read the request head (bounded), then answer.
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await;
            let body = render_all(&daemon).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
