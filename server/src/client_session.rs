//! One client's tunnel, from hello to goodbye: address assignment, registration in the switch,
//! the data path with anti-spoofing, and the connect/disconnect log lines.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use sshvpn_common::proto::{CloseCode, Role, TunnelConfig};
use sshvpn_common::tunnel::{DataPath, TransportRx, TransportTx, TunnelError, TunnelStats, packet_queue};

use crate::log_escape::for_log;
use crate::state::ServerState;
use crate::switch::PeerPort;

/// Decrements the connected-clients count when the session ends.
struct ClientSlot(Arc<ServerState>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.slots.leave();
    }
}

/// Why a new session cannot be taken now (the server is full), if it cannot.
pub fn capacity_refusal(state: &ServerState) -> Option<(CloseCode, String)> {
    let n = state.slots.connected();
    (n >= state.slots.max_clients).then(|| {
        (
            CloseCode::PoolExhausted,
            format!("server full: {n} clients connected, the maximum"),
        )
    })
}

/// Whether a client-chosen instance tag is acceptable: it becomes part of an identity that is
/// logged and leased, so only a short word of safe characters.
fn valid_instance(tag: &str) -> bool {
    (1..=64).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Sessions of `base` other than `identity` (the same identity is replaced, not added).
fn concurrent_sessions(state: &ServerState, base: &str, identity: &str) -> usize {
    state
        .switch
        .count(|p| p.identity != identity && p.identity.split('#').next() == Some(base))
}

/// Runs one client's tunnel over any transport until it ends, and logs the outcome. `identity`
/// keys the address lease (a key fingerprint, or `user:NAME`); with a `refusal`, the client is
/// told why (close code and reason) and the session ends after the hello.
pub async fn serve<Rx: TransportRx, Tx: TransportTx>(
    state: Arc<ServerState>,
    rx: Rx,
    tx: Tx,
    identity: String,
    peer: String,
    refusal: Option<(CloseCode, String)>,
) {
    serve_session(state, rx, tx, identity, peer, refusal, None).await
}

/// [`serve`] with the session id chosen by the caller (`state.slots.next_id()`), so that the
/// key store's registry names the session by the id of its switch port.
pub async fn serve_session<Rx: TransportRx, Tx: TransportTx>(
    state: Arc<ServerState>,
    rx: Rx,
    tx: Tx,
    identity: String,
    peer: String,
    refusal: Option<(CloseCode, String)>,
    session_id: Option<u64>,
) {
    state.slots.enter();
    let _slot = ClientSlot(state.clone());
    let started = Instant::now();
    let options = sshvpn_common::tunnel::SessionOptions {
        vnet_hdr: state.tun.has_vnet_hdr(),
        mtu: state.session.mtu,
        max_payload: state.session.max_frame as u32,
        timers: state.session.timers,
        instance: None,
    };
    let mut tunnel = sshvpn_common::tunnel::open(Role::Server, options, rx, tx);
    let (queue, outbound) = packet_queue(state.session.client_queue, state.session.client_queue_bytes);
    let stats = Arc::new(TunnelStats::default());
    let id = session_id.unwrap_or_else(|| state.slots.next_id());
    let mut port: Option<Arc<PeerPort>> = None;
    let base_identity = identity;
    // Concurrent sessions of one identity (`sshvpn exec` runs) carry an instance tag and get
    // addresses of their own; the lease of such an instance ends with its session.
    let mut identity = base_identity.clone();
    let mut subnets = Vec::new();
    let handshake = tunnel
        .handshake(|negotiated| {
            if let Some(refused) = &refusal {
                return Err(refused.clone());
            }
            if let Some(instance) = &negotiated.peer_instance {
                if !valid_instance(instance) {
                    return Err((
                        CloseCode::ProtocolError,
                        "instance tag must be 1 to 64 letters, digits, '.', '_' or '-'".to_string(),
                    ));
                }
                identity = format!("{base_identity}#{instance}");
            }
            // Client-chosen instance tags must not let one identity take the whole pool.
            let max = state.session.max_sessions_per_identity;
            if concurrent_sessions(&state, &base_identity, &identity) >= max {
                return Err((
                    CloseCode::PoolExhausted,
                    format!("{max} sessions of this identity are connected already (--max-sessions-per-identity)"),
                ));
            }
            let a = state
                .addressing
                .assign(&identity)
                .map_err(|e| (CloseCode::PoolExhausted, e.to_string()))?;
            // A configured peer: the subnets behind it, and its extra pushed routes.
            let configured = state.access.peers.get(&base_identity);
            // The pools are pushed like any route: the client installs them only if it accepts
            // routes (its addresses are host addresses, with no prefix route of their own).
            let mut routes = state.addressing.pool_networks();
            routes.extend(state.session.push_routes.iter().copied());
            if let Some(p) = configured {
                routes.extend(p.routes.iter().copied());
                if p.push_other_subnets {
                    routes.extend(state.access.peers.other_subnets(&base_identity));
                }
            }
            routes.dedup();
            subnets = configured.map(|p| p.subnets.clone()).unwrap_or_default();
            let config = TunnelConfig {
                addr4: Some(a.addr4),
                addr6: a.addr6,
                peer4: match state.addressing.server_addr(false) {
                    Some(std::net::IpAddr::V4(s)) => Some(s),
                    _ => None,
                },
                peer6: match state.addressing.server_addr(true) {
                    Some(std::net::IpAddr::V6(s)) => Some(s),
                    _ => None,
                },
                mtu: state.session.mtu,
                routes,
                dns: state.session.push_dns.clone(),
                search: state.session.push_search.clone(),
                keepalive_ms: state.session.timers.keepalive_interval.as_millis() as u32,
            };
            let p = Arc::new(PeerPort {
                id,
                identity: identity.clone(),
                addresses: a.own.iter().chain(subnets.iter()).copied().collect(),
                queue: queue.clone(),
                stats: stats.clone(),
                peer: peer.clone(),
                since: std::time::SystemTime::now(),
                evict: Default::default(),
                not_authorized: Default::default(),
            });
            state.switch.attach(p.clone());
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
                state.switch.detach(&p);
            }
            tracing::info!(
                "client {peer} key {}: handshake failed: {}",
                for_log(&identity),
                for_log(&e.to_string())
            );
            state.addressing.release_ephemeral(&identity);
            return;
        }
    };
    state.metrics.record_handshake(started.elapsed());
    let addresses = port
        .addresses
        .iter()
        .map(|n| n.addr().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(
        "client connected: peer {peer} key {} addresses {addresses} (\"{}\", {})",
        for_log(&identity),
        for_log(&established.negotiated.peer_software),
        established.negotiated.offload()
    );
    state
        .policy
        .session_started(
            &state.audit,
            &state.access.peers,
            &port,
            &base_identity,
            &established.negotiated.peer_software,
        )
        .await;
    // Its own addresses and subnets: what it may send from (anti-spoofing) and what it receives.
    state.peer_routes.add(&subnets).await;
    let own = port.addresses.clone();
    let data = DataPath {
        tun: state.tun.clone(),
        outbound: outbound.into(),
        admit: Box::new(move |a| own.iter().any(|n| n.contains(&a.src))),
        stats: stats.clone(),
        // ICMP errors for packets too big for this client appear to come from the client.
        icmp_sources: port
            .addresses
            .iter()
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .map(|n| n.addr())
            .collect(),
    };
    let evicted = {
        let port = port.clone();
        async move {
            port.evict.notified().await;
            // Key management: a credential that is no longer authorized.
            if port.not_authorized.load(Relaxed) {
                return (CloseCode::NotAuthorized, "not authorized".to_string());
            }
            (
                CloseCode::Replaced,
                "replaced by a newer session of the same key".to_string(),
            )
        }
    };
    let result = tunnel.run(data, evicted).await;
    state.switch.detach(&port);
    state.peer_routes.remove(&subnets).await;
    state.metrics.session_ended(&stats.snapshot());
    if !state.switch.has_identity(&identity) {
        state.addressing.release_ephemeral(&identity);
    }
    // The client's close reason is its own text: escaped before the log and the audit log.
    let reason = match result {
        Ok(()) => "closed by server".to_string(),
        Err(TunnelError::PeerClosed { reason, .. }) => format!("closed by client ({})", for_log(&reason)),
        Err(TunnelError::Eof) => "connection closed".to_string(),
        Err(e) => for_log(&e.to_string()).into_owned(),
    };
    state
        .policy
        .session_ended(&state.audit, &port, started.elapsed(), &stats.snapshot(), &reason)
        .await;
    tracing::info!(
        "client disconnected: peer {peer} key {} addresses {addresses} after {:.1}s: {reason}; {}",
        for_log(&identity),
        started.elapsed().as_secs_f64(),
        stats.snapshot()
    );
}
