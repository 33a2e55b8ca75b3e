//! `sshvpn status`: what a running client is doing, asked over a local control socket (an
//! abstract Unix socket `sshvpn-<interface>`, private to the network namespace; root only).

use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
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

fn list(v: &[String]) -> String {
    v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(",")
}

async fn report(status: &ClientStatus) -> String {
    let session = status.session.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut out = format!(
        "{{\"server\":\"{}\",\"started\":{},\"reconnects\":{},\"dropped_while_disconnected\":{},\"connected\":{}",
        status.server.replace('"', ""),
        status.started.map(secs).unwrap_or(0),
        status.reconnects.load(Relaxed),
        status.dropped_while_down.load(Relaxed),
        session.is_some()
    );
    if let Some(s) = session {
        let a = s.stats.snapshot();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = s.stats.snapshot();
        out.push_str(&format!(
            ",\"since\":{},\"addresses\":[{}],\"routes\":[{}],\"rx_bytes\":{},\"tx_bytes\":{},\"rx_packets\":{},\
             \"tx_packets\":{},\"rx_bps\":{},\"tx_bps\":{},\"rtt_ms\":{:.3},\"drops\":{{\"spoofed\":{},\"local_scope\":{},\
             \"malformed\":{},\"queue_full\":{},\"too_big\":{},\"tun_error\":{}}}",
            secs(s.since),
            list(&s.addresses),
            list(&s.routes),
            b.rx_bytes,
            b.tx_bytes,
            b.rx_packets,
            b.tx_packets,
            (b.rx_bytes - a.rx_bytes) * 8,
            (b.tx_bytes - a.tx_bytes) * 8,
            s.stats.rtt_us.load(Relaxed) as f64 / 1000.0,
            b.drop_spoofed,
            b.drop_local_scope,
            b.drop_malformed,
            b.drop_queue_full,
            b.drop_too_big,
            b.drop_tun_error
        ));
    }
    out.push_str("}\n");
    out
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
    let field = |key: &str| -> String {
        let pat = format!("\"{key}\":");
        let Some(i) = text.find(&pat) else { return "-".into() };
        let rest = &text[i + pat.len()..];
        if let Some(r) = rest.strip_prefix('"') {
            r.split('"').next().unwrap_or_default().to_string()
        } else if let Some(r) = rest.strip_prefix('[') {
            r.split(']').next().unwrap_or_default().replace('"', "")
        } else {
            rest.split([',', '}']).next().unwrap_or_default().to_string()
        }
    };
    let now = secs(SystemTime::now());
    let age = |k: &str| {
        field(k)
            .parse::<u64>()
            .map(|t| format!("{}s", now.saturating_sub(t)))
            .unwrap_or("-".into())
    };
    let mbps = |k: &str| {
        field(k)
            .parse::<f64>()
            .map(|v| format!("{:.2}", v / 1e6))
            .unwrap_or("-".into())
    };
    Ok(format!(
        "server:      {}\nconnected:   {}\nuptime:      {} (this session {})\nreconnects:  {}\naddresses:   {}\nroutes:      {}\n\
         traffic:     rx {} bytes / {} packets, tx {} bytes / {} packets\nrates:       rx {} Mbit/s, tx {} Mbit/s\n\
         rtt:         {} ms\ndrops:       spoofed {} local_scope {} malformed {} queue_full {} too_big {} tun_error {}; \
         {} while disconnected\n",
        field("server"),
        field("connected"),
        age("started"),
        age("since"),
        field("reconnects"),
        field("addresses"),
        field("routes"),
        field("rx_bytes"),
        field("rx_packets"),
        field("tx_bytes"),
        field("tx_packets"),
        mbps("rx_bps"),
        mbps("tx_bps"),
        field("rtt_ms"),
        field("spoofed"),
        field("local_scope"),
        field("malformed"),
        field("queue_full"),
        field("too_big"),
        field("tun_error"),
        field("dropped_while_disconnected")
    ))
}
