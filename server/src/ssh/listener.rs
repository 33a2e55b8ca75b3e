//! Accepting SSH connections under the admission limits: per-source penalties, early random drop
//! of unauthenticated connections, and a hard login deadline that traffic does not extend.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::limits::Offence;
use crate::ssh::admission::{Admission, Unauthenticated};
use crate::ssh::handler::{ConnectionHandler, ConnectionState};
use crate::state::ServerState;

pub async fn serve(
    state: Arc<ServerState>,
    admission: Arc<Admission>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
) -> anyhow::Result<()> {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = Instant::now();
        let penalised = admission.penalised(peer.ip(), now);
        if let Some(left) = penalised {
            if let Some(suppressed) = state.limit_log.check(now) {
                tracing::warn!(
                    "refusing {}: penalised for another {}s (and {suppressed} more limit hits since last report)",
                    peer.ip(),
                    left.as_secs()
                );
            }
            continue;
        }
        // One source may hold only a few unauthenticated connections (sshd's PerSourceMaxStartups),
        // so a single flooding host cannot push everybody else into the random drop below.
        let from_source = admission.pending_from(peer.ip());
        if from_source >= admission.per_source_max_startups {
            if let Some(suppressed) = state.limit_log.check(now) {
                tracing::warn!(
                    "dropping connection from {peer}: {from_source} unauthenticated connections from this source \
                     (and {suppressed} more limit hits since last report)"
                );
            }
            continue;
        }
        let pending = admission.pending();
        if !admission.max_startups.admit(pending, rand::random::<f64>()) {
            if let Some(suppressed) = state.limit_log.check(now) {
                tracing::warn!(
                    "dropping connection from {peer}: {pending} unauthenticated connections pending \
                     (and {suppressed} more limit hits since last report)"
                );
            }
            continue;
        }
        let unauth = admission.unauthenticated(peer.ip());
        tokio::spawn(connection(
            state.clone(),
            admission.clone(),
            unauth,
            socket,
            peer,
            config.clone(),
        ));
    }
}

async fn connection(
    server: Arc<ServerState>,
    admission: Arc<Admission>,
    mut unauth: Unauthenticated,
    socket: TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
) {
    let _ = socket.set_nodelay(true);
    // A second handle on the socket, to cut the connection at the deadline whatever the SSH
    // session is doing (a peer trickling bytes keeps russh's own timers from ever firing).
    // It is closed once the client has logged in, so a connected client costs one descriptor.
    let mut cutter = socket.as_fd().try_clone_to_owned().ok();
    let cut = |cutter: &Option<std::os::fd::OwnedFd>| {
        if let Some(fd) = cutter {
            let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    };
    let state = Arc::new(ConnectionState::default());
    let handler = ConnectionHandler::new(server, peer, state.clone());
    let deadline = tokio::time::sleep(admission.login_grace);
    tokio::pin!(deadline);
    // The SSH handshake itself runs inside run_stream; bound it by the login deadline too.
    let session = tokio::select! {
        r = russh::server::run_stream(config, socket, handler) => r,
        _ = &mut deadline => {
            penalise(&admission, peer, Offence::NoAuth, "login deadline expired during the SSH handshake");
            return;
        }
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("{peer}: SSH handshake failed: {e}");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    loop {
        tokio::select! {
            r = &mut session => {
                if let Err(e) = r {
                    tracing::debug!("{peer}: SSH session ended: {e}");
                }
                break;
            }
            _ = state.logged_in_signal.notified(), if !unauth.is_done() => {
                if state.logged_in.load(Relaxed) {
                    unauth.done();
                    cutter = None;
                }
            }
            _ = &mut deadline, if !state.logged_in.load(Relaxed) => {
                penalise(&admission, peer, Offence::NoAuth, "login deadline expired");
                let bye = handle.disconnect(russh::Disconnect::ByApplication, "login grace time expired".into(), "en".into());
                let _ = tokio::time::timeout(Duration::from_millis(200), bye).await;
                cut(&cutter);
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
                break;
            }
        }
    }
    if !state.logged_in.load(Relaxed) && state.auth_failures.load(Relaxed) > 0 {
        penalise(&admission, peer, Offence::AuthFailure, "authentication failed");
    }
}

fn penalise(admission: &Admission, peer: SocketAddr, offence: Offence, what: &str) {
    tracing::debug!("{peer}: {what}");
    admission.penalise(peer.ip(), offence, Instant::now());
}
