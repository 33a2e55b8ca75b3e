//! The daemon: owns the TUN, the address pools and the switch; accepts SSH connections and
//! serves each client's tunnel.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::IpNet;
use russh::keys::PublicKey;
use russh::server::Msg;
use russh::{Channel, MethodKind, MethodSet};
use sshvpn_common::keys::{self, AuthorizedKeys, fingerprint};
use sshvpn_common::netconf::{InterfaceConfig, LinuxNetSetup, NetSetup};
use sshvpn_common::pool::AddressPool;
use sshvpn_common::proto::{CloseCode, Features, Hello, Role, Timers, TunnelConfig};
use sshvpn_common::tun::TunDevice;
use sshvpn_common::tunnel::{
    ChannelRx, ChannelTx, DataPath, Tunnel, TunnelError, TunnelStats, packet_queue,
};
use tokio::net::TcpListener;

use crate::cli::Args;
use crate::handler::ConnectionHandler;
use crate::switch::{PeerPort, Switch};

pub struct Daemon {
    authorized: AuthorizedKeys,
    pool4: Mutex<AddressPool>,
    pool6: Option<Mutex<AddressPool>>,
    push_routes: Vec<IpNet>,
    mtu: u16,
    client_queue: usize,
    client_queue_bytes: usize,
    tun: Arc<TunDevice>,
    switch: Arc<Switch>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Daemon {
    pub fn is_authorized(&self, key: &PublicKey) -> bool {
        self.authorized.contains(key)
    }

    /// Addresses and configuration for a client identity.
    fn assign(&self, identity: &str) -> Result<(Vec<IpNet>, TunnelConfig), String> {
        let mut pool4 = lock(&self.pool4);
        let a4 = pool4.lease(identity).map_err(|e| e.to_string())?;
        let mut config = TunnelConfig {
            addr4: Some(pool4.with_prefix(a4)),
            peer4: match pool4.server_addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            },
            mtu: self.mtu,
            routes: self.push_routes.clone(),
            ..Default::default()
        };
        let mut own = vec![IpNet::from(a4)];
        if let Some(pool6) = &self.pool6 {
            let mut pool6 = lock(pool6);
            let a6 = pool6.lease(identity).map_err(|e| e.to_string())?;
            config.addr6 = Some(pool6.with_prefix(a6));
            config.peer6 = match pool6.server_addr() {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            };
            own.push(IpNet::from(a6));
        }
        Ok((own, config))
    }

    /// Runs one client's tunnel on its SSH channel until it ends, and logs the outcome.
    pub async fn serve_client(
        self: Arc<Self>,
        channel: Channel<Msg>,
        key: PublicKey,
        peer: Option<SocketAddr>,
    ) {
        let started = Instant::now();
        let identity = fingerprint(&key);
        let peer = peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        let (rx, tx) = channel.split();
        let features = if self.tun.has_vnet_hdr() {
            Features::GSO
        } else {
            Features::default()
        };
        let hello = Hello::new(features, self.mtu);
        let mut tunnel = Tunnel::new(
            Role::Server,
            hello,
            Timers::default(),
            ChannelRx(rx),
            ChannelTx(tx),
        );
        let (queue, outbound) = packet_queue(self.client_queue, self.client_queue_bytes);
        let stats = Arc::new(TunnelStats::default());
        let id = self.next_id.fetch_add(1, Relaxed);
        let mut port: Option<Arc<PeerPort>> = None;
        let handshake = tunnel
            .handshake(|_negotiated| {
                let (own, config) = self
                    .assign(&identity)
                    .map_err(|e| (CloseCode::PoolExhausted, e))?;
                let p = Arc::new(PeerPort {
                    id,
                    identity: identity.clone(),
                    addresses: own,
                    queue: queue.clone(),
                    stats: stats.clone(),
                    evict: Default::default(),
                });
                self.switch.attach(p.clone());
                port = Some(p);
                Ok(config)
            })
            .await;
        drop(queue);
        let (established, port) = match (handshake, port) {
            (Ok(established), Some(port)) => (established, port),
            (Ok(_), None) => return,
            (Err(e), port) => {
                if let Some(p) = port {
                    self.switch.detach(&p);
                }
                tracing::info!("client {peer} key {identity}: handshake failed: {e}");
                return;
            }
        };
        let addresses = port
            .addresses
            .iter()
            .map(|n| n.addr().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let offload = if established.negotiated.features.contains(Features::GSO) {
            "on"
        } else {
            "off"
        };
        tracing::info!(
            "client connected: peer {peer} key {identity} addresses {addresses} ({}, offload {offload})",
            established.negotiated.peer_software
        );
        let own = port.addresses.clone();
        let data = DataPath {
            tun: self.tun.clone(),
            outbound,
            admit: Box::new(move |a| own.iter().any(|n| n.contains(&a.src))),
            stats: stats.clone(),
            // ICMP errors for packets too big for this client appear to come from the client.
            icmp_sources: port.addresses.iter().map(|n| n.addr()).collect(),
        };
        let evicted = {
            let port = port.clone();
            async move {
                port.evict.notified().await;
                (
                    CloseCode::Replaced,
                    "replaced by a newer session of the same key".to_string(),
                )
            }
        };
        let result = tunnel.run(data, evicted).await;
        self.switch.detach(&port);
        let reason = match result {
            Ok(()) => "closed by server".to_string(),
            Err(TunnelError::PeerClosed { reason, .. }) => format!("closed by client ({reason})"),
            Err(TunnelError::Eof) => "connection closed".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::info!(
            "client disconnected: peer {peer} key {identity} addresses {addresses} after {:.1}s: {reason}; {}",
            started.elapsed().as_secs_f64(),
            stats.snapshot()
        );
    }
}

fn ssh_config(host_key: russh::keys::PrivateKey) -> russh::server::Config {
    russh::server::Config {
        keys: vec![host_key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        preferred: sshvpn_common::ssh::preferred(),
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        window_size: sshvpn_common::ssh::WINDOW_SIZE,
        maximum_packet_size: sshvpn_common::ssh::MAX_PACKET_SIZE,
        channel_buffer_size: 256,
        nodelay: true,
        inactivity_timeout: Some(Duration::from_secs(300)),
        max_auth_attempts: 6,
        ..Default::default()
    }
}

/// Sets everything up, then serves until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let (host_key, generated) = keys::load_or_generate_host_key(&args.host_key)?;
    let host_fp = fingerprint(host_key.public_key());
    if generated {
        tracing::info!("generated host key {} ({host_fp})", args.host_key.display());
    }
    let authorized = AuthorizedKeys::load(&args.authorized_keys)
        .with_context(|| "loading authorized keys".to_string())?;
    if authorized.is_empty() {
        tracing::warn!(
            "{} lists no usable keys: nobody can connect",
            args.authorized_keys.display()
        );
    }
    let pool4 = AddressPool::new(args.pool)?;
    let pool6 = args.pool6.map(AddressPool::new).transpose()?;

    let tun = Arc::new(TunDevice::create(&args.tun_name, !args.no_offload)?);
    let mut addresses = vec![pool4.with_prefix(pool4.server_addr())];
    if let Some(p6) = &pool6 {
        addresses.push(p6.with_prefix(p6.server_addr()));
    }
    let mut net = LinuxNetSetup::new()?;
    net.configure(&InterfaceConfig {
        name: args.tun_name.clone(),
        mtu: u32::from(args.mtu),
        addresses: addresses.clone(),
    })
    .await
    .context("configuring the tunnel interface")?;

    let switch = Arc::new(Switch::default());
    let daemon = Arc::new(Daemon {
        authorized,
        pool4: Mutex::new(pool4),
        pool6: pool6.map(Mutex::new),
        push_routes: args.push_routes.clone(),
        mtu: args.mtu,
        client_queue: args.client_queue,
        client_queue_bytes: args.client_queue_kib * 1024,
        tun: tun.clone(),
        switch: switch.clone(),
        next_id: AtomicU64::new(1),
    });
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addrs = addresses
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(
        "sshvpnd listening on {} (host key {host_fp}); tunnel {} {addrs}",
        args.listen,
        args.tun_name
    );
    let config = Arc::new(ssh_config(host_key));
    let mut tun_reader = tokio::spawn(switch.run_tun_reader(tun));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let handler = ConnectionHandler { daemon: daemon.clone(), peer: Some(peer), key: None, channel: None, tunnel_started: false };
                let config = config.clone();
                tokio::spawn(async move {
                    match russh::server::run_stream(config, socket, handler).await {
                        Ok(session) => {
                            if let Err(e) = session.await {
                                tracing::debug!("{peer}: SSH session ended: {e}");
                            }
                        }
                        Err(e) => tracing::debug!("{peer}: SSH handshake failed: {e}"),
                    }
                });
            }
            r = &mut tun_reader => {
                anyhow::bail!("tunnel interface failed: {}", match r { Ok(Err(e)) => e.to_string(), Ok(Ok(())) => "closed".into(), Err(e) => e.to_string() });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("shutting down");
    Ok(())
}
