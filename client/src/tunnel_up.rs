//! Brings the tunnel up on an established transport: handshake, TUN, addresses, routes, then
//! the data path until the session ends or the user interrupts; then undoes its routes.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use ipnet::IpNet;
use sshvpn_common::netconf::{InterfaceConfig, LinuxNetSetup, NetSetup};
use sshvpn_common::proto::{CloseCode, Features, Hello, Role, Timers, TunnelConfig};
use sshvpn_common::tun::{RecvArena, TunDevice};
use sshvpn_common::tunnel::{
    DataPath, TransportRx, TransportTx, Tunnel, TunnelError, TunnelStats, packet_queue,
};

/// Packets read from the TUN waiting for the transport: at most this many, and this many bytes.
const OUTBOUND_PACKETS: usize = 1024;
const OUTBOUND_BYTES: usize = 512 * 1024;

pub struct TunnelOptions {
    /// MTU this client offers; the session uses the smaller of both sides.
    pub mtu: u16,
    pub extra_routes: Vec<IpNet>,
    /// The SSH server's address: routes covering it are refused (they would loop the tunnel).
    pub server_addr: Option<IpAddr>,
}

/// How the tunnel ended.
pub enum Outcome {
    /// The user asked to stop.
    Interrupted,
    /// The session ended on its own.
    Ended(TunnelError),
}

async fn shutdown_signal() -> (CloseCode, String) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return (CloseCode::Normal, "client interrupted".into());
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    (CloseCode::Normal, "client shutting down".into())
}

fn routes_to_install(config: &TunnelConfig, opts: &TunnelOptions) -> Vec<IpNet> {
    let mut routes = Vec::new();
    for net in config.routes.iter().chain(opts.extra_routes.iter()) {
        let net = net.trunc();
        if let Some(server) = opts.server_addr
            && net.contains(&server)
        {
            tracing::warn!("not installing route {net}: it covers the SSH server {server} itself");
            continue;
        }
        if !routes.contains(&net) {
            routes.push(net);
        }
    }
    routes
}

/// Creates the client's TUN device (before connecting: the hello announces its offloads).
pub fn create_tun(name: &str, offload: bool) -> anyhow::Result<Arc<TunDevice>> {
    Ok(Arc::new(TunDevice::create(name, offload)?))
}

pub async fn run<Rx: TransportRx, Tx: TransportTx>(
    tun: Arc<TunDevice>,
    rx: Rx,
    tx: Tx,
    opts: TunnelOptions,
) -> anyhow::Result<Outcome> {
    let features = if tun.has_vnet_hdr() {
        Features::GSO
    } else {
        Features::default()
    };
    let hello = Hello::new(features, opts.mtu);
    let mut tunnel = Tunnel::new(Role::Client, hello, Timers::default(), rx, tx);
    let established = tunnel
        .handshake(|_| {
            Err((
                CloseCode::ProtocolError,
                "client does not accept clients".into(),
            ))
        })
        .await
        .context("tunnel handshake")?;
    let config = established.config.clone().unwrap_or_default();
    let mtu = config.mtu.min(established.negotiated.mtu).max(576);

    let ifname = tun.name().to_string();
    let mut net = LinuxNetSetup::new()?;
    let addresses: Vec<IpNet> = config.addresses().collect();
    net.configure(&InterfaceConfig {
        name: ifname.clone(),
        mtu: u32::from(mtu),
        addresses: addresses.clone(),
    })
    .await
    .context("configuring the tunnel interface")?;
    let routes = routes_to_install(&config, &opts);
    let mut route_error = None;
    for r in &routes {
        if let Err(e) = net.add_route(&ifname, *r).await {
            route_error = Some(e);
            break;
        }
    }
    if let Some(e) = route_error {
        net.undo().await;
        return Err(e).context("installing routes");
    }
    let shown = |v: &[IpNet]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let offload = if established.negotiated.features.contains(Features::GSO) {
        "on"
    } else {
        "off"
    };
    tracing::info!(
        "tunnel up: {ifname} address {} mtu {mtu} offload {offload}, routes: {}",
        shown(&addresses),
        if routes.is_empty() {
            "none".into()
        } else {
            shown(&routes)
        }
    );

    let (queue, outbound) = packet_queue(OUTBOUND_PACKETS, OUTBOUND_BYTES);
    let reader_tun = tun.clone();
    let tun_reader = tokio::spawn(async move {
        let mut arena = RecvArena::default();
        loop {
            match reader_tun.recv(&mut arena).await {
                Ok(pkt) => {
                    if queue.push(pkt).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!("reading the tunnel interface: {e}");
                    return;
                }
            }
        }
    });
    let stats = Arc::new(TunnelStats::default());
    let data = DataPath {
        tun,
        outbound,
        admit: Box::new(|_| true),
        stats: stats.clone(),
        icmp_sources: config
            .peer4
            .map(IpAddr::V4)
            .into_iter()
            .chain(config.peer6.map(IpAddr::V6))
            .collect(),
    };
    let result = tunnel.run(data, shutdown_signal()).await;
    tun_reader.abort();
    net.undo().await;
    tracing::info!("tunnel down: {}", stats.snapshot());
    Ok(match result {
        Ok(()) => Outcome::Interrupted,
        Err(e) => Outcome::Ended(e),
    })
}
