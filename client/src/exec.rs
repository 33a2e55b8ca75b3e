//! `sshvpn exec HOST -- CMD`: one command inside the remote network, without privileges.
//!
//! The SSH connection stays in the caller's network namespace; the command runs in a new (user +)
//! network namespace whose only way out is the tunnel. See `netns_helper` for the namespace side.
//! The command's exit status becomes ours; SIGINT/SIGTERM/SIGHUP/SIGQUIT go to the command; when it exits the
//! tunnel closes.

use std::io::{IoSliceMut, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use ipnet::IpNet;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use sshvpn_common::accept_policy::{self, AcceptOptions, Accepted, HostFacts};
use sshvpn_common::proto::TunnelConfig;
use sshvpn_common::tun::TunDevice;

use crate::cli::ExecArgs;
use crate::connect::{self, Shutdown};
use crate::interface::Interface;
use crate::netns_helper;
use crate::transport::Transport;

/// The interface inside the command's namespace, configured through the helper.
struct NamespaceInterface {
    tun: Arc<TunDevice>,
    sock: Option<UnixStream>,
    extra_routes: Vec<IpNet>,
    /// `--accept-routes-within`, and the host's resolvers (no pushed route may cover them).
    accept_routes_within: Vec<IpNet>,
    resolvers: Vec<IpAddr>,
    default_route: bool,
    accept_routes: bool,
    accept_dns: bool,
    applied: Option<TunnelConfig>,
    /// Told once the helper has configured the namespace and started the command.
    started: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Interface for NamespaceInterface {
    fn tun(&self) -> Arc<TunDevice> {
        self.tun.clone()
    }

    fn name(&self) -> &str {
        self.tun.name()
    }

    async fn apply(
        &mut self,
        config: &TunnelConfig,
        negotiated_mtu: u16,
        _server: Option<IpAddr>,
    ) -> anyhow::Result<Accepted> {
        // The same rules as on the host; inside the namespace there is no local network, and the
        // SSH connection runs outside it.
        let options = AcceptOptions {
            accept_routes: self.accept_routes,
            accept_dns: self.accept_dns,
            default_route: self.default_route,
            extra_routes: self.extra_routes.clone(),
            excludes: Vec::new(),
            accept_routes_within: self.accept_routes_within.clone(),
        };
        let host = HostFacts {
            resolvers: self.resolvers.clone(),
            ..HostFacts::default()
        };
        let accepted = accept_policy::accept(config, negotiated_mtu, &options, &host)
            .context("the server's configuration is refused")?;
        let v4 = accepted.addresses.iter().find(|a| a.addr().is_ipv4()).copied();
        let v6 = accepted.addresses.iter().find(|a| a.addr().is_ipv6()).copied();
        let wanted = TunnelConfig {
            addr4: v4,
            addr6: v6,
            mtu: accepted.mtu,
            routes: accepted.routes.clone(),
            dns: accepted.dns.clone(),
            search: accepted.search.clone(),
            ..config.clone()
        };
        if let Some(applied) = &self.applied {
            if applied.addresses().ne(wanted.addresses()) {
                tracing::error!(
                    "the server assigned other addresses after a reconnect; the command keeps the old ones"
                );
            }
            return Ok(accepted);
        }
        for w in &accepted.warnings {
            tracing::warn!("{w}");
        }
        let mut sock = self.sock.take().ok_or_else(|| anyhow!("namespace helper gone"))?;
        let frame = netns_helper::config_frame(&wanted);
        let answer = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            sock.write_all(&frame)?;
            let mut answer = String::new();
            sock.read_to_string(&mut answer)?;
            Ok(answer)
        })
        .await??;
        if answer.trim() != "ok" {
            bail!(
                "setting up the namespace: {}",
                answer.trim().trim_start_matches("error: ")
            );
        }
        self.applied = Some(wanted);
        if let Some(tx) = self.started.take() {
            let _ = tx.send(());
        }
        Ok(accepted)
    }

    async fn teardown(&mut self) {
        // The namespace and everything in it go away with the command.
    }
}

#[allow(unsafe_code)]
fn receive_tun(sock: &UnixStream) -> anyhow::Result<(OwnedFd, String, bool)> {
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .context("receiving the TUN from the namespace helper")?;
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: SCM_RIGHTS installed these descriptors in our table for us to own.
            fd = fds.first().map(|raw| unsafe { OwnedFd::from_raw_fd(*raw) });
        }
    }
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let Some(fd) = fd else {
        // No descriptor: the helper failed and says why.
        let mut rest = String::new();
        let _ = (&*sock).read_to_string(&mut rest);
        bail!("{}", format!("{text}{rest}").trim().trim_start_matches("error: "));
    };
    let mut parts = text.split_whitespace();
    let name = parts.next().unwrap_or(netns_helper::TUN_NAME).to_string();
    let vnet = parts.next() == Some("1");
    Ok((fd, name, vnet))
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    }
}

pub async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let mut connect = args.connect.clone();
    connect.validate()?;
    // An unreachable server should fail the job, not hang it.
    connect.max_retries = connect.max_retries.or(Some(2));
    let transport = Transport::from_args(&connect)?;

    let (ours, theirs) = UnixStream::pair()?;
    // The helper inherits its end of the pair (not close-on-exec) and is told its number.
    nix::fcntl::fcntl(&theirs, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
    let exe = std::env::current_exe().context("locating this program")?;
    let mut helper = tokio::process::Command::new(exe);
    helper
        .arg("__netns-helper")
        .arg("--sock-fd")
        .arg(theirs.as_raw_fd().to_string());
    if connect.tunnel.no_offload {
        helper.arg("--no-offload");
    }
    helper.arg("--").args(&args.command);
    let mut child = helper.spawn().context("starting the namespace helper")?;
    drop(theirs);
    let (fd, name, vnet) = tokio::task::block_in_place(|| receive_tun(&ours))?;
    let tun = Arc::new(TunDevice::from_fd(fd, name, vnet)?);

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let iface = NamespaceInterface {
        tun,
        sock: Some(ours),
        extra_routes: connect.routes.clone(),
        accept_routes_within: connect.accept_routes_within.clone(),
        resolvers: crate::interface::host_resolvers(),
        default_route: args.connect.default_route,
        accept_routes: !args.connect.no_accept_routes,
        accept_dns: !args.connect.no_dns,
        applied: None,
        started: Some(started_tx),
    };
    // Stop the tunnel when the command exits; pass the signals on to the command.
    let (stop_tx, stop) = Shutdown::manual();
    let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let (status_tx, status_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use nix::sys::signal::Signal;
        use tokio::signal::unix::{SignalKind, signal};
        // Each signal that would end `connect` is passed on to the command; the tunnel closes
        // when the command exits.
        let mut int = signal(SignalKind::interrupt()).ok();
        let mut term = signal(SignalKind::terminate()).ok();
        let mut hup = signal(SignalKind::hangup()).ok();
        let mut quit = signal(SignalKind::quit()).ok();
        let forward = |sig: Signal| {
            if let Some(p) = pid {
                let _ = nix::sys::signal::kill(p, sig);
            }
        };
        let status = loop {
            tokio::select! {
                s = child.wait() => break s,
                Some(_) = async { int.as_mut()?.recv().await } => forward(Signal::SIGINT),
                Some(_) = async { term.as_mut()?.recv().await } => forward(Signal::SIGTERM),
                Some(_) = async { hup.as_mut()?.recv().await } => forward(Signal::SIGHUP),
                Some(_) = async { quit.as_mut()?.recv().await } => forward(Signal::SIGQUIT),
            }
        };
        let _ = stop_tx.send(true);
        let _ = status_tx.send(status);
    });
    let instance = format!("exec-{:08x}", rand::random::<u32>());
    let status = Arc::new(crate::status::ClientStatus::default());
    let result = connect::run_with(&connect, &transport, iface, stop, Some(instance), status).await;
    let started = matches!(started_rx.await, Ok(()));
    match (result, started) {
        // The tunnel never came up: our own failure, not the command's.
        (Err(e), false) => {
            if let Some(p) = pid {
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            }
            Err(e)
        }
        (r, _) => {
            let status = status_rx
                .await
                .map_err(|_| anyhow!("lost the command"))?
                .context("waiting for the command")?;
            if let Err(e) = r {
                tracing::warn!("tunnel: {e:#}");
            }
            Ok(exit_code(status))
        }
    }
}
