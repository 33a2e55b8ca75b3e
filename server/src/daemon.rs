//! The composition root: `sshvpnd` start-up (configuration, TUN, pools, key files, policy, the
//! listeners) and shutdown. It builds the [`ServerState`] and hands each server task the part
//! it needs; no other module imports this one, and it holds no state of its own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use russh::{MethodKind, MethodSet};
use sshvpn_common::keys::fingerprint;
use sshvpn_common::netconf::{self, InterfaceConfig, NetSetup};
use sshvpn_common::pool::AddressPool;
use sshvpn_common::proto::Timers;
use sshvpn_common::tun::TunDevice;
use tokio::net::TcpListener;

use crate::access::{Access, AttachPolicy};
use crate::addressing::Addressing;
use crate::cli::Args;
use crate::config::{self, Peers};
use crate::control;
use crate::leases::LeaseFile;
use crate::limits::LogEvery;
use crate::routes::PeerRoutes;
use crate::session_policy::{SessionPolicy, SessionSlots};
use crate::ssh::admission::Admission;
use crate::ssh::listener;
use crate::state::ServerState;
use crate::switch::Switch;

fn ssh_config(host_key: russh::keys::PrivateKey, args: &Args) -> russh::server::Config {
    let rekey = (args.rekey_limit_mib << 20) as usize;
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
        // Tunnels send keepalives every few seconds, so this only ends connections that have gone
        // quiet in other ways (e.g. a peer that never closes after a disconnect).
        inactivity_timeout: Some(Duration::from_secs((args.tunnel.dead_peer_timeout * 4).max(60))),
        max_auth_attempts: args.max_auth_tries,
        limits: russh::Limits::new(rekey, rekey, Duration::from_secs(3600)),
        ..Default::default()
    }
}

/// Fills unset command-line options from the configuration file and validates its peers.
fn merge_config(args: &mut Args) -> anyhow::Result<(Peers, bool)> {
    let Some(path) = args.config.clone() else {
        return Ok((Peers::default(), false));
    };
    let (file, text) = config::load(&path)?;
    args.listen = args.listen.or(file.listen);
    args.host_key = args.host_key.take().or(file.host_key.clone());
    args.authorized_keys = args.authorized_keys.take().or(file.authorized_keys.clone());
    args.pool = args.pool.or(file.pool);
    args.pool6 = args.pool6.or(file.pool6);
    args.masquerade = args.masquerade.take().or(file.masquerade.clone());
    args.push_routes.extend(file.push_routes.iter().copied());
    args.push_dns.extend(file.dns.iter().copied());
    args.push_search.extend(file.search.iter().cloned());
    // Key management (issue 13).
    args.trusted_user_ca_keys = args.trusted_user_ca_keys.take().or(file.trusted_user_ca_keys.clone());
    args.revoked_keys = args.revoked_keys.take().or(file.revoked_keys.clone());
    args.host_certificate = args.host_certificate.take().or(file.host_certificate.clone());
    args.strict_modes = args.strict_modes.or(file.strict_modes);
    let peers = config::validate(&text, &file, args.pool, args.pool6).map_err(|errs| {
        anyhow::anyhow!(
            "configuration rejected:\n{}",
            errs.iter()
                .map(|e| config::format_error(&path, e))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    Ok((peers, file.peers_only))
}

/// Raises the open-files soft limit to the hard limit: each client holds a socket.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err()
    {
        tracing::debug!("cannot raise the open-files limit from {soft}");
    }
}

/// Sets everything up, then serves until SIGINT/SIGTERM.
pub async fn run(mut args: Args) -> anyhow::Result<()> {
    raise_fd_limit();
    let (peers, peers_only) = merge_config(&mut args)?;
    args.validate()?;
    // The SSH listener is optional: clients may come through sshd and `sshvpnd attach` only.
    let mut host_key = None;
    if let (Some(key_path), Some(_)) = (&args.host_key, &args.authorized_keys) {
        // Root or the daemon's user may own the host key (OpenSSH's rules otherwise).
        let mut owners = vec![0, nix::unistd::geteuid().as_raw()];
        if let Some(user) = &args.user
            && let Ok(Some(u)) = nix::unistd::User::from_name(user)
        {
            owners.push(u.uid.as_raw());
        }
        let (key, generated) = crate::host_key::load_or_generate(key_path, &owners)?;
        if generated {
            tracing::info!(
                "generated host key {} ({})",
                key_path.display(),
                fingerprint(key.public_key())
            );
        }
        // Key management (issue 13): authorized_keys is loaded (and watched) by the key store.
        host_key = Some(key);
    }
    let pool4 = AddressPool::new(args.pool.context("--pool is required")?)?;
    let pool6 = args.pool6.map(AddressPool::new).transpose()?;
    let statics: Vec<(String, Vec<std::net::IpAddr>)> = peers
        .0
        .iter()
        .map(|(fp, p)| {
            let addrs = p
                .address
                .map(std::net::IpAddr::V4)
                .into_iter()
                .chain(p.address6.map(std::net::IpAddr::V6));
            (fp.clone(), addrs.collect())
        })
        .collect();
    let addressing = Addressing::new(
        pool4,
        pool6,
        LeaseFile::new(Some(args.state_dir.join("leases"))),
        &statics,
    );

    let tun = Arc::new(TunDevice::create(&args.tunnel.tun_name, !args.tunnel.no_offload)?);
    let addresses = addressing.server_addresses();
    let mut net = netconf::open()?;
    let iface = InterfaceConfig {
        name: args.tunnel.tun_name.clone(),
        mtu: u32::from(args.tunnel.mtu),
        addresses: addresses.clone(),
    };
    net.configure(&iface)
        .await
        .context("configuring the tunnel interface")?;
    let listener = match args.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?,
        ),
        None => None,
    };
    let control = control::bind(&args.control, args.control_group.as_deref())?;
    let control_access = control::ControlAccess::new(args.control_admin_group.as_deref())?;
    let metrics = match args.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics on {addr}"))?,
        ),
        None => None,
    };
    let _masquerade = match &args.masquerade {
        Some(iface) => Some(
            net.masquerade(&args.tunnel.tun_name, args.pool.context("--pool")?, iface)
                .context("installing the masquerade rule")?,
        ),
        None => None,
    };
    let peer_routes = PeerRoutes::new(args.tunnel.tun_name.clone(), netconf::open()?);
    // Key management (issue 13): the key files, watched while the daemon runs; StrictModes
    // as sshd's (root or the daemon's user own them, nobody else may write them).
    let strict = crate::strict_modes::StrictModes::new(args.strict_modes.unwrap_or(true), args.user.as_deref());
    let key_store = crate::credentials::KeyStore::load_with_config(
        args.authorized_keys.as_deref().filter(|_| host_key.is_some()),
        args.trusted_user_ca_keys.as_deref(),
        args.revoked_keys.as_deref(),
        args.config.as_deref().map(|c| (c, args.pool, args.pool6)),
        strict.clone(),
    )
    .context("loading key files")?;
    if host_key.is_some() && args.listen.is_some() && {
        let sets = key_store.current();
        sets.authorized.entries.is_empty() && sets.cas.is_empty()
    } {
        tracing::warn!("no usable authorized keys or user CAs: nobody can connect over SSH");
    }
    let host_certificates = match (&args.host_certificate, &host_key) {
        (Some(p), Some(k)) => vec![crate::credentials::load_host_certificate(p, k.public_key(), &strict)?],
        _ => Vec::new(),
    };
    // Access control and audit (issue 14): policy table and audit log, before privileges go.
    let pools = [args.pool, args.pool6];
    let (policy, audit_path) = match &args.config {
        Some(path) => crate::policy_runtime::load(path, pools)?,
        None => (Default::default(), None),
    };
    let policy =
        crate::policy_runtime::PolicyRuntime::start(&args.tunnel.tun_name, pools, args.config.clone(), policy).await?;
    let _policy_table = policy.firewall.guard();
    let audit = crate::audit::Audit::for_daemon(args.audit_log.clone().or(audit_path).as_deref())?;
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    if let Some(user) = &args.user {
        crate::privileges::drop_to(user)?;
    }
    // Key management (issue 13): warn if the files cannot be re-read as that user.
    key_store.warn_unreadable();

    let switch = Arc::new(Switch::default());
    let state = Arc::new(ServerState {
        session: SessionPolicy {
            push_routes: args.push_routes.clone(),
            push_dns: args.push_dns.clone(),
            push_search: args.push_search.clone(),
            mtu: args.tunnel.mtu,
            client_queue: args.client_queue,
            client_queue_bytes: args.client_queue_kib * 1024,
            timers: Timers {
                keepalive_interval: Duration::from_secs(args.tunnel.keepalive),
                dead_peer_timeout: Duration::from_secs(args.tunnel.dead_peer_timeout),
                ..Timers::default()
            },
            max_frame: (args.max_frame_kib as usize * 1024)
                .min(sshvpn_common::proto::frame::MAX_PAYLOAD_LIMIT)
                .max(args.tunnel.mtu as usize),
            max_sessions_per_identity: args.max_sessions_per_identity,
        },
        slots: SessionSlots::new(args.max_clients),
        access: Access {
            key_store,
            peers,
            peers_only,
            attach: AttachPolicy {
                users: args.allow_users.clone(),
                groups: args.allow_groups.clone(),
            },
        },
        metrics: Default::default(),
        tun: tun.clone(),
        switch: switch.clone(),
        addressing,
        peer_routes,
        limit_log: LogEvery::new(Duration::from_secs(10)),
        policy,
        audit,
    });
    let admission = Arc::new(Admission::new(
        Duration::from_secs(args.login_grace_time),
        args.max_startups,
        args.per_source_max_startups,
    ));
    let background = state.clone();
    tokio::spawn(async move { background.policy.background(&background.audit, hangup).await });
    tokio::spawn(crate::memory_release::run(state.clone()));
    let leases = state.clone();
    tokio::spawn(async move { leases.addressing.persist().await });
    let addrs = addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    let ssh = match (&listener, &host_key) {
        (Some(l), Some(k)) => format!(
            "listening on {} (host key {})",
            l.local_addr()?,
            fingerprint(k.public_key())
        ),
        _ => "no SSH listener".to_string(),
    };
    tracing::info!(
        "sshvpnd {ssh}; control socket {}; tunnel {} {addrs}",
        args.control.display(),
        args.tunnel.tun_name
    );
    sshvpn_common::sd_notify::ready(&format!("serving; tunnel {} {addrs}", args.tunnel.tun_name));
    let mut tun_reader = tokio::spawn(switch.run_tun_reader(tun));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ssh_listener = async {
        match (listener, host_key) {
            (Some(l), Some(k)) => {
                let config = russh::server::Config {
                    certificates: host_certificates,
                    ..ssh_config(k, &args)
                };
                listener::serve(state.clone(), admission, l, Arc::new(config)).await
            }
            _ => std::future::pending().await,
        }
    };
    let metrics_server = async {
        match metrics {
            Some(l) => crate::metrics_http::serve(state.clone(), l).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = metrics_server => r,
        r = ssh_listener => r,
        r = control::serve(state.clone(), control, control_access) => r,
        r = state.access.watch(&state.switch, &state.audit) => r,
        r = &mut tun_reader => {
            let why = match r { Ok(Err(e)) => e.to_string(), Ok(Ok(())) => "closed".into(), Err(e) => e.to_string() };
            Err(anyhow::anyhow!("tunnel interface failed: {why}"))
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = sigterm.recv() => Ok(()),
    };
    let _ = std::fs::remove_file(&args.control);
    tracing::info!("shutting down");
    state.addressing.save_now();
    crate::policy_runtime::shutting_down(&state.audit, &state.switch);
    state.audit.sync(Duration::from_secs(2));
    result
}
