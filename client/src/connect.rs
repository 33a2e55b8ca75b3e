//! `sshvpn connect`, and the connect/reconnect loop `exec` shares: create the interface, then
//! connect over a [`Transport`], run the tunnel, and reconnect with backoff after any transport
//! failure until told to stop. The interface, its addresses and routes stay in place across
//! reconnects; packets sent while disconnected are dropped. This module owns the session
//! lifecycle; it must not configure the host itself (that is [`crate::interface`]) nor speak SSH
//! (that is [`crate::transport`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::anyhow;

use sshvpn_common::allowed_ips::AllowedIps;
use sshvpn_common::escape;
use sshvpn_common::proto::{CloseCode, Role};
use sshvpn_common::tun::{RecvArena, TunDevice};
use sshvpn_common::tunnel::{
    ChannelRx, ChannelTx, DataPath, PacketSource, SessionOptions, TransportRx, TransportTx, TunnelError, TunnelStats,
};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::cli::ConnectArgs;
use crate::interface::{HostOptions, Interface, TunnelInterface};
use crate::status::{ClientStatus, SessionInfo};
use crate::transport::system_ssh::{self, SshChild};
use crate::transport::{Transport, ssh_client};

/// A session that carried a configured tunnel for this long resets the backoff and the retry
/// count; anything else (no TCP, no SSH, no tunnel, or a tunnel that fell at once) is a failed
/// attempt for `--max-retries`.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Resolves once the client must stop (SIGINT/SIGTERM/SIGHUP/SIGQUIT for `connect`, the command's exit for
/// `exec`); can be awaited from many places.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A shutdown triggered through the returned sender.
    pub fn manual() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// A shutdown triggered by SIGINT, SIGTERM, SIGHUP (the terminal closed) or SIGQUIT: each
    /// ends the client the same way, with the host restored.
    pub fn install() -> anyhow::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = watch::channel(false);
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut quit = signal(SignalKind::quit())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
                _ = quit.recv() => {}
            }
            let _ = tx.send(true);
        });
        Ok(Shutdown(rx))
    }

    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Reads the TUN while no session is up, dropping (and counting) what it reads: packets sent
/// while disconnected are never buffered for later. While a session is up, its writer reads the
/// TUN itself (no task and queue between the TUN and the transport).
fn spawn_drain_while_down(tun: Arc<TunDevice>, mut session_up: watch::Receiver<bool>, dropped: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let mut arena = RecvArena::new(0);
        loop {
            if session_up.wait_for(|up| !*up).await.is_err() {
                return;
            }
            tokio::select! {
                r = tun.recv(&mut arena) => match r {
                    Ok(_) => {
                        dropped.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        tracing::error!("reading the tunnel interface: {e}");
                        return;
                    }
                },
                _ = session_up.wait_for(|up| *up) => {}
            }
        }
    });
}

/// How one session ended.
enum SessionEnd {
    /// SIGINT/SIGTERM.
    Shutdown,
    /// The session ended; reconnecting may help.
    Lost(String),
    /// The session ended after a configured tunnel carried it for this long; reconnecting may help.
    LostAfterUp(String, Duration),
    /// Reconnecting will not help (refused by the server).
    Fatal(anyhow::Error),
}

/// `sshvpn connect`: a local interface, until SIGINT/SIGTERM.
pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    args.validate()?;
    let transport = Transport::from_args(&args)?;
    let shutdown = Shutdown::install()?;
    let options = HostOptions {
        accept_routes: !args.no_accept_routes,
        accept_dns: !args.no_dns,
        forward: args.forward,
        default_route: args.default_route,
    };
    let iface = TunnelInterface::create(
        &args.tunnel.tun_name,
        !args.tunnel.no_offload,
        args.routes.clone(),
        args.excludes.clone(),
        args.accept_routes_within.clone(),
        options,
    )
    .await?;
    let server = args.target.clone().or(args.ssh_command.clone()).unwrap_or_default();
    let status = Arc::new(ClientStatus {
        server,
        started: Some(std::time::SystemTime::now()),
        ..Default::default()
    });
    crate::status::serve(status.clone(), &args.tunnel.tun_name)?;
    run_with(&args, &transport, iface, shutdown, None, status).await
}

/// Connects and reconnects over `transport` until `shutdown`, moving packets for `iface`.
/// `instance` tags the sessions so that concurrent runs with one key get addresses of their own.
pub async fn run_with<I: Interface>(
    args: &ConnectArgs,
    transport: &Transport,
    mut iface: I,
    mut shutdown: Shutdown,
    instance: Option<String>,
    status: Arc<ClientStatus>,
) -> anyhow::Result<()> {
    let (set_session_up, session_up) = watch::channel(false);
    let dropped = status.dropped_while_down.clone();
    spawn_drain_while_down(iface.tun(), session_up, dropped.clone());

    let mut backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(args.reconnect_max_delay.max(1)),
    );
    let mut failures: u32 = 0;
    let mut result = Ok(());
    loop {
        let end = tokio::select! {
            end = session(args, transport, &instance, &mut iface, &set_session_up, &status, shutdown.clone()) => end,
            _ = shutdown.wait() => SessionEnd::Shutdown,
        };
        let _ = set_session_up.send(false);
        *status.session.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let reason = match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Fatal(e) => {
                result = Err(e);
                break;
            }
            SessionEnd::Lost(reason) => reason,
            SessionEnd::LostAfterUp(reason, up) => {
                if up >= STABLE_SESSION {
                    backoff.reset();
                    failures = 0;
                }
                reason
            }
        };
        iface.session_down().await;
        failures += 1;
        if let Some(max) = args.max_retries
            && failures > max
        {
            result = Err(anyhow!("{reason}; giving up after {max} retries"));
            break;
        }
        status.reconnects.fetch_add(1, Relaxed);
        let delay = backoff.next_delay(rand::random_range(0.5..=1.0));
        tracing::warn!(
            "{reason}; reconnecting in {:.1}s (attempt {failures})",
            delay.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => break,
        }
    }
    iface.teardown().await;
    let lost = dropped.load(Relaxed);
    if lost > 0 {
        tracing::debug!("{lost} packets dropped while disconnected");
    }
    result
}

/// One connection: transport, handshake, interface configuration, then the data path.
async fn session<I: Interface>(
    args: &ConnectArgs,
    transport: &Transport,
    instance: &Option<String>,
    iface: &mut I,
    session_up: &watch::Sender<bool>,
    status: &ClientStatus,
    shutdown: Shutdown,
) -> SessionEnd {
    match transport {
        Transport::Builtin { target, creds } => {
            let timeout = Duration::from_secs(args.connect_timeout);
            // Resolved here first (with the host's own resolvers: pushed DNS is not in place
            // while the tunnel is down), so that the path to the server is kept outside the
            // tunnel before dialling it.
            let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
            if let Ok(Ok(addrs)) = tokio::time::timeout(timeout, lookup).await {
                for a in addrs.take(8) {
                    iface.before_connect(a.ip()).await;
                }
            }
            let connected = match ssh_client::connect(target, creds, timeout).await {
                Ok(c) => c,
                Err(e) if e.retryable => return SessionEnd::Lost(format!("{:#}", e.error)),
                Err(e) => return SessionEnd::Fatal(e.error),
            };
            let (rx, tx) = connected.channel.split();
            // The built-in transport lets the writer see what russh has written to the socket:
            // packets wait in the writer's fair queue instead of russh's (docs/performance.md).
            let outbound = PacketSource::FairTun(connected.downstream);
            let end = tunnel_session(
                args,
                instance,
                ChannelRx(rx),
                ChannelTx(tx),
                outbound,
                Some(connected.server_addr),
                iface,
                session_up,
                status,
                shutdown,
            )
            .await;
            drop(connected.handle);
            end
        }
        Transport::SystemSsh => {
            // Where the system ssh connects to, so that no route may cover it (and, with the
            // full tunnel, kept outside it before ssh dials).
            let server_addr = system_ssh::server_address(args).await;
            if let Some(a) = server_addr {
                iface.before_connect(a).await;
            }
            let child = match system_ssh::spawn(args) {
                Ok(c) => c,
                Err(e) => return SessionEnd::Fatal(e),
            };
            let SshChild { child, rx, tx } = child;
            let end = tunnel_session(
                args,
                instance,
                rx,
                tx,
                PacketSource::Tun,
                server_addr,
                iface,
                session_up,
                status,
                shutdown,
            )
            .await;
            drop(child);
            end
        }
    }
}

/// The tunnel on an open transport.
#[allow(clippy::too_many_arguments)]
async fn tunnel_session<I: Interface, Rx: TransportRx, Tx: TransportTx>(
    args: &ConnectArgs,
    instance: &Option<String>,
    rx: Rx,
    tx: Tx,
    outbound: PacketSource,
    server_addr: Option<std::net::IpAddr>,
    iface: &mut I,
    session_up: &watch::Sender<bool>,
    status: &ClientStatus,
    mut shutdown: Shutdown,
) -> SessionEnd {
    let tun = iface.tun();
    let options = SessionOptions {
        vnet_hdr: tun.has_vnet_hdr(),
        mtu: args.tunnel.mtu,
        timers: args.tunnel.timers(),
        instance: instance.clone(),
        ..SessionOptions::default()
    };
    let mut tunnel = sshvpn_common::tunnel::open(Role::Client, options, rx, tx);
    let established = match tunnel
        .handshake(|_| Err((CloseCode::ProtocolError, "not a server".into())))
        .await
    {
        Ok(e) => e,
        Err(TunnelError::PeerClosed {
            code: CloseCode::NotAuthorized,
            reason,
        }) => {
            return SessionEnd::Fatal(anyhow!("server refused the tunnel: {}", escape::for_log(&reason)));
        }
        Err(e) => return SessionEnd::Lost(format!("tunnel handshake failed: {e}")),
    };
    let config = established.config.clone().unwrap_or_default();
    let accepted = match iface.apply(&config, established.negotiated.mtu, server_addr).await {
        Ok(a) => a,
        Err(e) => return SessionEnd::Fatal(e),
    };
    let via = server_addr.map(|a| a.to_string()).unwrap_or_else(|| "ssh".into());
    tracing::info!(
        "tunnel up: {} via {via} ({})",
        iface.name(),
        established.negotiated.offload()
    );
    sshvpn_common::sd_notify::ready(&format!("tunnel up via {via}"));

    let _ = session_up.send(true);
    let up_since = Instant::now();
    let stats = Arc::new(TunnelStats::default());
    *status.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(SessionInfo {
        since: std::time::SystemTime::now(),
        addresses: accepted.addresses.iter().map(|a| a.to_string()).collect(),
        routes: accepted.routes.iter().map(|r| r.to_string()).collect(),
        stats: stats.clone(),
    });
    let icmp_sources = config
        .peer4
        .map(std::net::IpAddr::V4)
        .into_iter()
        .chain(config.peer6.map(std::net::IpAddr::V6))
        .collect();
    // The server may send only from its tunnel addresses and what is routed through the tunnel
    // (WireGuard's rule, applied to the server): anything else is dropped and counted as spoofed.
    let mut sources = AllowedIps::default();
    for net in &accepted.sources {
        sources.insert(*net, ());
    }
    let data = DataPath {
        tun,
        outbound,
        admit: Box::new(move |a| sources.lookup(a.src).is_some()),
        stats: stats.clone(),
        icmp_sources,
    };
    let stop = async move {
        shutdown.wait().await;
        (CloseCode::Normal, "client shutting down".to_string())
    };
    let result = tunnel.run(data, stop).await;
    tracing::info!("tunnel down: {}", stats.snapshot());
    match result {
        Ok(()) => SessionEnd::Shutdown,
        Err(TunnelError::PeerClosed {
            code: CloseCode::NotAuthorized,
            reason,
        }) => SessionEnd::Fatal(anyhow!("server refused the tunnel: {}", escape::for_log(&reason))),
        // The interface is gone (deleted under us): reconnecting will not bring it back.
        Err(e @ TunnelError::TunRead(_)) => SessionEnd::Fatal(e.into()),
        Err(e) => SessionEnd::LostAfterUp(format!("connection lost: {e}"), up_since.elapsed()),
    }
}
