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
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;
use nix::unistd::{Gid, Group, Uid, User};
use sshvpn_common::proto::CloseCode;
use sshvpn_common::tunnel::{StreamRx, StreamTx};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};

use crate::control::request::{ATTACH_REQUEST, POLICY_REQUEST, STATUS_REQUEST};
use crate::state::ServerState;

/// Binds the control socket: removes a stale one, mode 0660, owned by `group` if given.
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "control socket {} is in use: is another sshvpnd running?",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding control socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(group) = group {
        let g = Group::from_name(group)?.ok_or_else(|| anyhow::anyhow!("no such group: {group}"))?;
        nix::unistd::chown(path, None, Some(g.gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(listener)
}

/// How long a connection has to send its request line.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections that have not sent their request yet, at most; more are closed at once.
const MAX_PENDING: usize = 64;

/// Serves the control socket until the daemon stops. Errors of `accept` (out of descriptors,
/// for instance) are logged and retried with backoff: no local user can end the daemon's loop.
pub async fn serve(state: Arc<ServerState>, listener: UnixListener) -> anyhow::Result<()> {
    let pending = Arc::new(AtomicUsize::new(0));
    let mut backoff = Duration::from_millis(10);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                if let Some(n) = state.limit_log.check(std::time::Instant::now()) {
                    tracing::warn!(
                        "control socket: accept failed: {e}; retrying in {backoff:?} ({n} more limit hits since last report)"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if pending.load(Relaxed) >= MAX_PENDING {
            if let Some(n) = state.limit_log.check(std::time::Instant::now()) {
                tracing::warn!(
                    "control socket: {MAX_PENDING} connections have not sent a request yet; closing new ones \
                     ({n} more limit hits since last report)"
                );
            }
            continue;
        }
        pending.fetch_add(1, Relaxed);
        tokio::spawn(handle(state.clone(), stream, PendingSlot(pending.clone())));
    }
}

/// Counts a connection as pending until its request has been read.
struct PendingSlot(Arc<AtomicUsize>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
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

async fn handle(state: Arc<ServerState>, mut stream: UnixStream, pending: PendingSlot) {
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
        // Anyone who can open the socket (root and the control group) may see the status.
        let report = status::report(&state).await;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, report.as_bytes()).await;
        return;
    }
    if line == POLICY_REQUEST {
        // Access control (issue 14): `sshvpnd policy`, like the status.
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
