//! The namespace side of `sshvpn exec`: a fresh process (this binary, re-executed with the hidden
//! `__netns-helper` command, so it is single-threaded when it unshares) that
//!
//! 1. enters a new network and mount namespace, and a new user namespace when not root
//!    (mapping the caller to root inside, so no privilege is needed);
//! 2. creates the TUN there and hands its descriptor to the parent over a Unix socket pair
//!    (SCM_RIGHTS), with its name and whether it carries virtio-net headers;
//! 3. waits for the server's assignment (a CONFIG frame of the tunnel protocol), applies it
//!    (addresses, MTU, routes, loopback, a private resolv.conf for pushed DNS) and answers;
//! 4. replaces itself with the command (execvp), which thus runs inside the namespace.
//!
//! The host's routes, interfaces and resolv.conf are never touched.

use std::ffi::CString;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use anyhow::{Context, anyhow, bail};
use nix::sched::CloneFlags;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use sshvpn_common::netconf::{self, InterfaceConfig, NetSetup};
use sshvpn_common::proto::frame::FrameDecoder;
use sshvpn_common::proto::{Control, TunnelConfig};

/// Name of the TUN inside the namespace.
pub const TUN_NAME: &str = "sshvpn0";

fn enter_namespaces() -> anyhow::Result<()> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let mut flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS;
    if !uid.is_root() {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    nix::sched::unshare(flags).map_err(|e| {
        if uid.is_root() {
            anyhow!("cannot create a network namespace: {e}")
        } else {
            anyhow!(
                "cannot create an unprivileged user namespace: {e}. The kernel forbids it here: check \
                 `sysctl user.max_user_namespaces` (must be > 0), `kernel.unprivileged_userns_clone` (Debian, \
                 must be 1) or `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu, must be 0)"
            )
        }
    })?;
    if !uid.is_root() {
        std::fs::write("/proc/self/setgroups", "deny").context("setgroups deny")?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).context("writing uid_map")?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).context("writing gid_map")?;
    }
    // Our mounts (the private resolv.conf) must not propagate back to the host.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making mounts private")?;
    Ok(())
}

fn send_tun(sock: &UnixStream, fd: &OwnedFd, vnet_hdr: bool) -> anyhow::Result<()> {
    let header = format!("{TUN_NAME} {}\n", u8::from(vnet_hdr));
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(header.as_bytes())],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .context("handing the TUN to the parent")?;
    Ok(())
}

fn read_config(sock: &mut UnixStream) -> anyhow::Result<Option<TunnelConfig>> {
    let mut buf = bytes::BytesMut::new();
    let dec = FrameDecoder::default();
    loop {
        if let Some(f) = dec.decode(&mut buf)? {
            return match Control::decode(f.kind, &f.payload)? {
                Control::Config(c) => Ok(Some(c)),
                other => Err(anyhow!("unexpected message from the parent: {other:?}")),
            };
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn write_resolv_conf(config: &TunnelConfig) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if config.dns.is_empty() {
        return Ok(());
    }
    let text = sshvpn_common::netconf::plan::resolv_conf_text(
        &config.dns,
        &config.search,
        "written by sshvpn exec for this namespace only",
    );
    // A file that exists only as long as the mount: created in a private directory of our own
    // (mkdtemp: mode 0700, unpredictable name), never following a link nor reusing a file,
    // bind-mounted, then removed with its directory.
    let base = std::env::var_os("XDG_RUNTIME_DIR").unwrap_or_else(|| "/tmp".into());
    let dir = nix::unistd::mkdtemp(&std::path::Path::new(&base).join(".sshvpn-XXXXXX"))
        .context("creating a private directory for the namespace's resolv.conf")?;
    let path = dir.join("resolv.conf");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    let mounted = written.context("writing the namespace's resolv.conf").and_then(|()| {
        nix::mount::mount(
            Some(&path),
            "/etc/resolv.conf",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("bind-mounting the namespace's resolv.conf")
    });
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    mounted
}

async fn apply(config: &TunnelConfig) -> anyhow::Result<()> {
    let mut net = netconf::open()?;
    net.configure(&InterfaceConfig {
        name: "lo".into(),
        mtu: 65536,
        addresses: vec![],
    })
    .await?;
    let addresses = config.addresses().collect();
    net.configure(&InterfaceConfig {
        name: TUN_NAME.into(),
        mtu: u32::from(config.mtu),
        addresses,
    })
    .await?;
    for r in &config.routes {
        net.add_route(TUN_NAME, *r).await?;
    }
    Ok(())
}

/// Entry point of the helper process; returns only on error (success ends in execvp).
#[allow(unsafe_code)]
pub fn main(sock_fd: i32, offload: bool, command: &[String]) -> anyhow::Result<std::convert::Infallible> {
    if sock_fd < 3 || std::fs::metadata(format!("/proc/self/fd/{sock_fd}")).is_err() {
        bail!("internal command: no socket descriptor {sock_fd}");
    }
    // SAFETY: the parent passed this open descriptor (its end of a socket pair) for us to own,
    // and nothing else in this fresh process refers to it.
    let mut sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(sock_fd) });
    let result = (|| -> anyhow::Result<TunnelConfig> {
        enter_namespaces()?;
        let (fd, vnet_hdr) = sshvpn_common::tun::open_device(TUN_NAME, offload)?;
        send_tun(&sock, &fd, vnet_hdr)?;
        drop(fd);
        let Some(config) = read_config(&mut sock)? else {
            bail!("the tunnel never came up");
        };
        write_resolv_conf(&config)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(apply(&config))?;
        Ok(config)
    })();
    match result {
        Ok(_) => sock.write_all(b"ok\n")?,
        Err(e) => {
            let _ = sock.write_all(format!("error: {e:#}\n").as_bytes());
            return Err(e);
        }
    }
    drop(sock);
    let program = CString::new(command[0].clone())?;
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()?;
    let err = nix::unistd::execvp(&program, &argv).unwrap_err();
    Err(anyhow!("cannot run {}: {err}", command[0]))
}

/// Encodes the assignment for the helper as a CONFIG frame.
pub fn config_frame(config: &TunnelConfig) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    Control::Config(config.clone()).encode_frame(&mut out);
    out.to_vec()
}
