//! `sshvpn status`: what a running client is doing, asked over a local control socket (an
//! abstract Unix socket `sshvpn-<interface>`, private to the network namespace; root only).

use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use sshvpn_common::report::{ClientReport, Traffic, mbps};
use sshvpn_common::tunnel::TunnelStats;
use tokio::io::AsyncWriteExt;

/// What the status report is made of; updated by the connection loop.
#[derive(Default)]
pub struct ClientStatus {
    pub server: String,
    pub reconnects: AtomicU32,
    pub dropped_while_down: Arc<AtomicU64>,
    pub session: Mutex<Option<SessionInfo>>,
    pub started: Option<SystemTime>,
}

#[derive(Clone)]
pub struct SessionInfo {
    pub since: SystemTime,
    pub addresses: Vec<String>,
    pub routes: Vec<String>,
    pub stats: Arc<TunnelStats>,
}

fn socket_name(tun: &str) -> String {
    format!("sshvpn-{tun}")
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

async fn report(status: &ClientStatus) -> String {
    let session = status.session.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut r = ClientReport {
        server: status.server.clone(),
        started: status.started.map(secs).unwrap_or(0),
        reconnects: status.reconnects.load(Relaxed),
        dropped_while_disconnected: status.dropped_while_down.load(Relaxed),
        connected: session.is_some(),
        since: None,
        addresses: vec![],
        routes: vec![],
        rtt_ms: None,
        traffic: Traffic::default(),
    };
    if let Some(s) = session {
        let a = s.stats.snapshot();
        tokio::time::sleep(Duration::from_secs(1)).await;
        r.traffic = Traffic::between(&a, &s.stats.snapshot());
        r.since = Some(secs(s.since));
        r.addresses = s.addresses;
        r.routes = s.routes;
        let rtt = s.stats.rtt_us.load(Relaxed);
        r.rtt_ms = (rtt > 0).then(|| rtt as f64 / 1000.0);
    }
    serde_json::to_string(&r).unwrap_or_default() + "\n"
}

/// Serves status requests for the client of interface `tun` until the process ends.
pub fn serve(status: Arc<ClientStatus>, tun: &str) -> anyhow::Result<()> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(socket_name(tun).as_bytes())?;
    let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr)
        .with_context(|| format!("another sshvpn is already running on {tun}"))?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            // Root only: the abstract socket has no file permissions of its own.
            if !s.peer_cred().is_ok_and(|c| c.uid() == 0) {
                continue;
            }
            let status = status.clone();
            tokio::spawn(async move {
                let text = report(&status).await;
                let _ = s.write_all(text.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// `sshvpn status`: asks the client running on `tun`.
pub fn query(tun: &str, json: bool) -> anyhow::Result<String> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(socket_name(tun).as_bytes())?;
    let mut s = std::os::unix::net::UnixStream::connect_addr(&addr)
        .map_err(|e| anyhow!("no sshvpn client running on {tun} in this network namespace ({e})"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if json {
        return Ok(text);
    }
    let r: ClientReport = serde_json::from_str(&text).context("reading the status")?;
    let now = secs(SystemTime::now());
    let t = &r.traffic;
    let d = &t.drops;
    Ok(format!(
        "server:      {}\nconnected:   {}\nuptime:      {}s (this session {})\nreconnects:  {}\naddresses:   {}\n\
         routes:      {}\ntraffic:     rx {} bytes / {} packets, tx {} bytes / {} packets\n\
         rates:       rx {} Mbit/s, tx {} Mbit/s\nrtt:         {}\n\
         drops:       spoofed {} local_scope {} malformed {} queue_full {} too_big {} tun_error {}; {} while disconnected\n",
        r.server,
        r.connected,
        now.saturating_sub(r.started),
        r.since
            .map(|s| format!("{}s", now.saturating_sub(s)))
            .unwrap_or_else(|| "-".into()),
        r.reconnects,
        r.addresses.join(", "),
        r.routes.join(", "),
        t.rx_bytes,
        t.rx_packets,
        t.tx_bytes,
        t.tx_packets,
        mbps(t.rx_bps),
        mbps(t.tx_bps),
        r.rtt_ms.map(|v| format!("{v:.3} ms")).unwrap_or_else(|| "-".into()),
        d.spoofed,
        d.local_scope,
        d.malformed,
        d.queue_full,
        d.too_big,
        d.tun_error,
        r.dropped_while_disconnected
    ))
}
