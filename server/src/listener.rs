//! Accepting SSH connections under the admission limits: per-source penalties, early random drop
//! of unauthenticated connections, and a hard login deadline that traffic does not extend.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::daemon::Daemon;
use crate::handler::ConnectionHandler;
use crate::limits::Offence;

/// What the handler reports back about one connection.
#[derive(Default)]
pub struct ConnectionState {
    /// Authenticated and tunnel started: the login deadline no longer applies.
    pub logged_in: AtomicBool,
    pub auth_failures: AtomicU32,
    pub logged_in_signal: tokio::sync::Notify,
}

/// Counts one unauthenticated connection while it lives and is not logged in.
struct Unauthenticated(Arc<Daemon>, bool, std::net::IpAddr);

impl Unauthenticated {
    fn done(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.unauthenticated.fetch_sub(1, Relaxed);
            let mut per_source = self
                .0
                .unauthenticated_per_source
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_source.get_mut(&self.2) {
                *n -= 1;
                if *n == 0 {
                    per_source.remove(&self.2);
                }
            }
        }
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.done();
    }
}

pub async fn serve(
    daemon: Arc<Daemon>,
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
        let penalised = daemon
            .penalties
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused(peer.ip(), now);
        if let Some(left) = penalised {
            if let Some(suppressed) = daemon.limit_log.check(now) {
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
        let from_source = {
            let per_source = daemon
                .unauthenticated_per_source
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            per_source.get(&peer.ip()).copied().unwrap_or(0)
        };
        if from_source >= daemon.per_source_max_startups {
            if let Some(suppressed) = daemon.limit_log.check(now) {
                tracing::warn!(
                    "dropping connection from {peer}: {from_source} unauthenticated connections from this source \
                     (and {suppressed} more limit hits since last report)"
                );
            }
            continue;
        }
        let pending = daemon.unauthenticated.load(Relaxed);
        if !daemon.max_startups.admit(pending, rand::random::<f64>()) {
            if let Some(suppressed) = daemon.limit_log.check(now) {
                tracing::warn!(
                    "dropping connection from {peer}: {pending} unauthenticated connections pending \
                     (and {suppressed} more limit hits since last report)"
                );
            }
            continue;
        }
        daemon.unauthenticated.fetch_add(1, Relaxed);
        *daemon
            .unauthenticated_per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer.ip())
            .or_insert(0) += 1;
        tokio::spawn(connection(daemon.clone(), socket, peer, config.clone()));
    }
}

async fn connection(daemon: Arc<Daemon>, socket: TcpStream, peer: SocketAddr, config: Arc<russh::server::Config>) {
    let mut unauth = Unauthenticated(daemon.clone(), false, peer.ip());
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
    let handler = ConnectionHandler::new(daemon.clone(), peer, state.clone());
    let deadline = tokio::time::sleep(daemon.login_grace);
    tokio::pin!(deadline);
    // The SSH handshake itself runs inside run_stream; bound it by the login deadline too.
    let session = tokio::select! {
        r = russh::server::run_stream(config, socket, handler) => r,
        _ = &mut deadline => {
            penalise(&daemon, peer, Offence::NoAuth, "login deadline expired during the SSH handshake");
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
            _ = state.logged_in_signal.notified(), if !unauth.1 => {
                if state.logged_in.load(Relaxed) {
                    unauth.done();
                    cutter = None;
                }
            }
            _ = &mut deadline, if !state.logged_in.load(Relaxed) => {
                penalise(&daemon, peer, Offence::NoAuth, "login deadline expired");
                let bye = handle.disconnect(russh::Disconnect::ByApplication, "login grace time expired".into(), "en".into());
                let _ = tokio::time::timeout(Duration::from_millis(200), bye).await;
                cut(&cutter);
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
                break;
            }
        }
    }
    if !state.logged_in.load(Relaxed) && state.auth_failures.load(Relaxed) > 0 {
        penalise(&daemon, peer, Offence::AuthFailure, "authentication failed");
    }
}

fn penalise(daemon: &Daemon, peer: SocketAddr, offence: Offence, what: &str) {
    tracing::debug!("{peer}: {what}");
    daemon
        .penalties
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(peer.ip(), offence, Instant::now());
}
