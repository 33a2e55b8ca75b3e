//! `sshvpn status`: what a running client is doing, asked over a local control socket: a path
//! socket `/run/sshvpn-client/<interface>-<netns>.sock` (mode 0600) in a directory only root can
//! write, so no other local user can take its name (an abstract socket name can be bound first
//! by anyone), and `status` talks only to a listener running as root or as itself.

use std::io::Read;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use sshvpn_common::report::{
    ClientReport, Traffic, mbps, render, to_line, traffic_over_one_second, unix_now, unix_secs,
};
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

/// The socket of the client on `tun` in this network namespace (the same interface name may be
/// used in many namespaces).
fn socket_name(tun: &str) -> String {
    format!("{tun}-{}.sock", crate::run_dir::netns_id())
}

/// Whether the peer of a status connection runs as root or as this user.
fn trusted_peer(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

async fn report(status: &ClientStatus) -> String {
    let session = status.session.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut r = ClientReport {
        server: status.server.clone(),
        started: status.started.map(unix_secs).unwrap_or(0),
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
        r.traffic = traffic_over_one_second(&[&s.stats]).await.pop().unwrap_or_default();
        r.since = Some(unix_secs(s.since));
        r.addresses = s.addresses;
        r.routes = s.routes;
        let rtt = s.stats.rtt_us.load(Relaxed);
        r.rtt_ms = (rtt > 0).then(|| rtt as f64 / 1000.0);
    }
    to_line(&r)
}

/// Serves status requests for the client of interface `tun` until the process ends; fails if
/// another client runs on `tun` in this network namespace.
pub fn serve(status: Arc<ClientStatus>, tun: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = crate::run_dir::trusted()?.join(socket_name(tun));
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        anyhow::bail!("another sshvpn is already running on {tun} in this network namespace");
    }
    // Left by a killed run (the directory is ours, so nobody else put it there).
    let _ = std::fs::remove_file(&path);
    let std_listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the status socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    tokio::spawn(async move {
        let _remove = RemoveOnDrop(path);
        loop {
            let mut s = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, for instance: wait, and keep serving.
                    tracing::debug!("status socket: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if !s.peer_cred().is_ok_and(|c| trusted_peer(c.uid())) {
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

/// Removes the socket file when the serving task ends (at exit, the runtime drops it).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `sshvpn status`: asks the client running on `tun`.
pub fn query(tun: &str, json: bool) -> anyhow::Result<String> {
    sshvpn_common::netconf::check_ifname(tun)?;
    let path = std::path::Path::new(crate::run_dir::CLIENT_RUN_DIR).join(socket_name(tun));
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| anyhow!("no sshvpn client running on {tun} in this network namespace ({e})"))?;
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .context("reading the status socket's owner")?;
    if !trusted_peer(cred.uid()) {
        anyhow::bail!(
            "the status socket {} is served by uid {}, not root: refusing to trust it",
            path.display(),
            cred.uid()
        );
    }
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(render(text, json, "status", table)?)
}

/// What `sshvpn status` prints for people.
fn table(r: ClientReport) -> String {
    let now = unix_now();
    let t = &r.traffic;
    let d = &t.drops;
    format!(
        "server:      {}\nconnected:   {}\nuptime:      {}s (this session {})\nreconnects:  {}\naddresses:   {}\n\
         routes:      {}\ntraffic:     rx {} bytes / {} packets, tx {} bytes / {} packets\n\
         rates:       rx {} Mbit/s, tx {} Mbit/s\nrtt:         {}\n\
         drops:       spoofed {} local_scope {} malformed {} queue_full {} too_big {} tun_error {} bad_offload {}; {} while disconnected\n",
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
        d.bad_offload,
        r.dropped_while_disconnected
    )
}
