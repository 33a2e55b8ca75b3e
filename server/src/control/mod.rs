//! The daemon's control socket: local processes ask for a tunnel (`sshvpnd attach`, run by sshd
//! for an authenticated user). The Unix user is taken from the socket's peer credentials
//! (SO_PEERCRED) and must be allowed by `--allow-user` / `--allow-group`; its identity is
//! `user:NAME`, so its addresses stick to the user like a key's do.
//!
//! The whole control protocol lives in this folder: the request lines (`request`), the dispatch
//! here, the attach relay run by sshd (`attach`), `sshvpnd status` (`status`) and
//! `sshvpnd policy` (`policy`). Sessions themselves are `client_session`'s.

pub mod attach;
pub mod policy;
pub mod request;
pub mod status;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::unistd::{Gid, Group, Uid, User};
use sshvpn_common::proto::CloseCode;
use sshvpn_common::tunnel::{StreamRx, StreamTx};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};

use crate::control::request::{ATTACH_REQUEST, POLICY_REQUEST, STATUS_REQUEST};
use crate::listeners::{AcceptLoop, ConnectionSlot, ConnectionSlots};
use crate::state::ServerState;

/// Binds the control socket at `path`: mode 0660, group `group` if given. No operation by path
/// follows the `bind`: the mode comes from the umask in force during `bind` and the group from
/// the effective gid (root switches its effective gid for the `bind`; a daemon already running
/// as its user changes the group with `fchownat(AT_SYMLINK_NOFOLLOW)`, which cannot reach
/// another account's file). A stale socket is removed with `unlinkat`, which never follows a
/// link. The directory is opened once (`O_NOFOLLOW`) and everything else is relative to it.
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::{FileStat, Mode, SFlag, fstatat, umask};
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("control socket {}: not a file name", path.display()))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir_fd = nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening the control socket's directory {}", dir.display()))?;
    let gid = match group {
        Some(group) => Some(
            Group::from_name(group)
                .with_context(|| format!("looking up group {group}"))?
                .ok_or_else(|| anyhow::anyhow!("no such group: {group}"))?
                .gid,
        ),
        None => None,
    };
    let existing: Option<FileStat> = fstatat(&dir_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
    if let Some(st) = existing {
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK
            && std::os::unix::net::UnixStream::connect(path).is_ok()
        {
            anyhow::bail!(
                "control socket {} is in use: is another sshvpnd running?",
                path.display()
            );
        }
        // Whatever it is (stale socket, link planted by another account), only the name goes.
        nix::unistd::unlinkat(&dir_fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .with_context(|| format!("removing stale {}", path.display()))?;
    }
    let root = nix::unistd::geteuid().is_root();
    let old_egid = nix::unistd::getegid();
    let switch_gid = gid.filter(|g| root && *g != old_egid);
    if let Some(g) = switch_gid {
        nix::unistd::setegid(g).with_context(|| format!("setegid {g} for the control socket"))?;
    }
    // Sockets are made 0777 & !umask: 0660.
    let old_umask = umask(Mode::from_bits_truncate(0o117));
    let bound = UnixListener::bind(path);
    umask(old_umask);
    if switch_gid.is_some() {
        nix::unistd::setegid(old_egid).context("restoring the effective gid")?;
    }
    let listener = bound.with_context(|| format!("binding control socket {}", path.display()))?;
    if let Some(g) = gid.filter(|g| !root && *g != old_egid) {
        nix::unistd::fchownat(&dir_fd, name, None, Some(g), AtFlags::AT_SYMLINK_NOFOLLOW)
            .with_context(|| format!("giving {} to group {}", path.display(), group.unwrap_or("?")))?;
    }
    // Checked, not changed: what is now at the name must be the socket just made.
    let st =
        fstatat(&dir_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).with_context(|| format!("checking {}", path.display()))?;
    let is_socket = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK;
    if !is_socket || st.st_mode & 0o777 != 0o660 || gid.is_some_and(|g| g.as_raw() != st.st_gid) {
        anyhow::bail!(
            "control socket {} changed while it was made (mode {:o}, gid {}): refusing to serve it",
            path.display(),
            st.st_mode,
            st.st_gid
        );
    }
    Ok(listener)
}

/// Who sees what on the control socket. Root, the daemon's own user and members of the admin
/// group (`--control-admin-group`) see every session and the policy; anyone else who can open
/// the socket (the control group) sees only the sessions attached as their own Unix user
/// (identity `user:NAME`), and no policy.
#[derive(Debug, Clone, Default)]
pub struct ControlAccess {
    pub admin_group: Option<Gid>,
}

impl ControlAccess {
    /// Resolves `--control-admin-group`.
    pub fn new(admin_group: Option<&str>) -> anyhow::Result<ControlAccess> {
        let admin_group = match admin_group {
            Some(name) => Some(
                Group::from_name(name)
                    .with_context(|| format!("looking up group {name}"))?
                    .ok_or_else(|| anyhow::anyhow!("--control-admin-group: no such group: {name}"))?
                    .gid,
            ),
            None => None,
        };
        Ok(ControlAccess { admin_group })
    }

    /// Whether `user` (the socket's peer) sees everything.
    pub fn is_admin(&self, user: &User) -> bool {
        if user.uid.is_root() || user.uid == nix::unistd::geteuid() {
            return true;
        }
        let Some(admin) = self.admin_group else {
            return false;
        };
        if user.gid == admin {
            return true;
        }
        let name = std::ffi::CString::new(user.name.clone()).unwrap_or_default();
        nix::unistd::getgrouplist(&name, user.gid).is_ok_and(|groups| groups.contains(&admin))
    }
}

/// How long a connection has to send its request line.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections that have not sent their request yet, at most; more are closed at once.
const MAX_PENDING: usize = 64;

/// Serves the control socket until the daemon stops. Errors of `accept` (out of descriptors,
/// for instance) are logged and retried with backoff: no local user can end the daemon's loop.
pub async fn serve(state: Arc<ServerState>, listener: UnixListener, access: ControlAccess) -> anyhow::Result<()> {
    let slots = ConnectionSlots::new(MAX_PENDING);
    let mut accept = AcceptLoop::new("control socket");
    let access = Arc::new(access);
    loop {
        let Some((stream, _)) = accept.next(listener.accept().await, &state.limit_log).await else {
            continue;
        };
        let Some(slot) = slots.take() else {
            if let Some(n) = state.limit_log.check(std::time::Instant::now()) {
                tracing::warn!(
                    "control socket: {MAX_PENDING} connections have not sent a request yet; closing new ones \
                     ({n} more limit hits since last report)"
                );
            }
            continue;
        };
        tokio::spawn(handle(state.clone(), stream, slot, access.clone()));
    }
}

/// One request line, read byte by byte so nothing after it is consumed.
async fn read_request(stream: &mut UnixStream) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    while line.len() < 32 {
        match stream.read_u8().await {
            Ok(b'\n') => {
                line.push(b'\n');
                break;
            }
            Ok(b) => line.push(b),
            Err(_) => return None,
        }
    }
    Some(line)
}

async fn handle(state: Arc<ServerState>, mut stream: UnixStream, pending: ConnectionSlot, access: Arc<ControlAccess>) {
    let Ok(cred) = stream.peer_cred() else { return };
    let uid = Uid::from_raw(cred.uid());
    let user = match User::from_uid(uid) {
        Ok(Some(u)) => u,
        _ => User {
            name: format!("uid{}", uid.as_raw()),
            passwd: Default::default(),
            uid,
            gid: Gid::from_raw(cred.gid()),
            gecos: Default::default(),
            dir: Default::default(),
            shell: Default::default(),
        },
    };
    let line = match tokio::time::timeout(REQUEST_DEADLINE, read_request(&mut stream)).await {
        Ok(Some(line)) => line,
        Ok(None) => return,
        Err(_) => {
            tracing::debug!("control socket: no request from uid {uid} within {REQUEST_DEADLINE:?}");
            return;
        }
    };
    drop(pending);
    if line == STATUS_REQUEST {
        // Root and the admin group see every session; others their own (see ControlAccess).
        let own = format!("user:{}", user.name);
        let view = if access.is_admin(&user) {
            status::View::All
        } else {
            status::View::Identity(&own)
        };
        let report = status::report(&state, view).await;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, report.as_bytes()).await;
        return;
    }
    if line == POLICY_REQUEST {
        // Rule counters and group sizes describe everyone's traffic: admins only (an empty
        // answer tells the others).
        if !access.is_admin(&user) {
            tracing::debug!("control socket: policy refused to uid {uid} (not an admin)");
            return;
        }
        let report = policy::report(&state.policy).await;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, report.as_bytes()).await;
        return;
    }
    if line != ATTACH_REQUEST {
        tracing::debug!("control socket: unknown request from uid {}", uid);
        return;
    }
    let peer = format!("unix:{}(uid {})", user.name, uid);
    let refusal = if !state.access.may_attach(&user) {
        Some((
            CloseCode::NotAuthorized,
            format!("user {} is not allowed to attach", user.name),
        ))
    } else {
        // Attached sessions count against --max-clients like SSH ones.
        crate::client_session::capacity_refusal(&state)
    };
    let (r, w) = stream.into_split();
    crate::client_session::serve(
        state,
        StreamRx(r),
        StreamTx(w),
        format!("user:{}", user.name),
        peer,
        refusal,
    )
    .await;
}
