//! The russh handler for one SSH connection: public-key authentication against
//! authorized_keys, and nothing but the `sshvpn` subsystem on a session channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use sshvpn_common::ssh::SUBSYSTEM;
use sshvpn_common::tunnel::{ChannelRx, ChannelTx};

use crate::credentials::{Credential, Grant, Refusal};
use crate::state::ServerState;

/// What the handler reports back about one connection.
#[derive(Default)]
pub struct ConnectionState {
    /// Authenticated and tunnel started: the login deadline no longer applies.
    pub logged_in: AtomicBool,
    pub auth_failures: AtomicU32,
    pub logged_in_signal: tokio::sync::Notify,
}

pub struct ConnectionHandler {
    server: Arc<ServerState>,
    peer: SocketAddr,
    state: Arc<ConnectionState>,
    /// The key that authenticated this connection.
    key: Option<PublicKey>,
    /// The session channel opened by the client, until it asks for the subsystem.
    channel: Option<Channel<Msg>>,
    tunnel_started: bool,
    /// Key management: the accepted login (key or certificate, user, source).
    grant: Option<Grant>,
}

impl ConnectionHandler {
    pub fn new(server: Arc<ServerState>, peer: SocketAddr, state: Arc<ConnectionState>) -> Self {
        ConnectionHandler {
            server,
            peer,
            state,
            key: None,
            channel: None,
            tunnel_started: false,
            grant: None,
        }
    }
}

// Key management (issue 13): login decisions through the live key store.
impl ConnectionHandler {
    fn authorize(&self, credential: &Credential, user: &str) -> Result<Grant, Refusal> {
        self.server.access.authorize(credential, user, self.peer.ip())
    }

    fn refused(&self, user: &str, key: &PublicKey, why: &Refusal) {
        self.state.auth_failures.fetch_add(1, Relaxed);
        self.server.metrics.auth_failed();
        tracing::info!(
            "{}: refused user \"{}\": {}",
            self.peer,
            crate::log_escape::for_log(user),
            crate::log_escape::for_log(&why.to_string())
        );
        self.server
            .audit
            .auth_failed(self.peer, user, Some(key), &why.to_string());
    }

    fn accept(&mut self, user: &str, credential: &Credential, key: PublicKey) -> Result<Auth, russh::Error> {
        match self.authorize(credential, user) {
            Ok(grant) => {
                tracing::debug!(
                    "{}: user \"{}\" authenticated with {}",
                    self.peer,
                    crate::log_escape::for_log(user),
                    crate::log_escape::for_log(&grant.label)
                );
                self.key = Some(key);
                self.grant = Some(grant);
                Ok(Auth::Accept)
            }
            Err(why) => {
                self.refused(user, &key, &why);
                Ok(Auth::reject())
            }
        }
    }
}

impl ConnectionHandler {
    /// Applies the key files' changes before a login decision, waiting for a change seen but
    /// not yet stable (a half-written file is never applied).
    async fn settle_key_files(&self) {
        let store = &self.server.access.key_store;
        if let Some(wait) = store.refresh(false) {
            tokio::time::sleep(wait).await;
            store.refresh(false);
        }
    }
}

impl russh::server::Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        // Key files changed since the last login are re-read first (a stat per file); a change
        // not yet stable is waited for (at most STABLE_FOR), so that a key just added works.
        self.settle_key_files().await;
        let credential = Credential::Key(offer.public_key.clone());
        match self.authorize(&credential, user) {
            Ok(_) => return Ok(Auth::Accept),
            // A certificate's key is offered here as a plain key: with a CA configured, the
            // decision is taken once the certificate is seen (auth_openssh_certificate).
            Err(_) if self.server.access.key_store.accepts_certificates() => return Ok(Auth::Accept),
            Err(why) => self.refused(user, offer.public_key, &why),
        }
        Ok(Auth::reject())
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let credential = Credential::Key(key.public_key.clone());
        self.accept(user, &credential, key.public_key.clone())
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        self.settle_key_files().await;
        let key = PublicKey::new(certificate.public_key().clone(), "");
        let credential = Credential::Cert(Box::new(certificate.clone()));
        self.accept(user, &credential, key)
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.state.auth_failures.fetch_add(1, Relaxed);
        Ok(Auth::reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channel.is_some() || self.tunnel_started || self.key.is_none() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.channel = Some(channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ours = self.channel.as_ref().is_some_and(|c| c.id() == channel);
        if name != SUBSYSTEM || !ours {
            tracing::info!("{}: refused subsystem {name:?}", self.peer);
            session.channel_failure(channel)?;
            return Ok(());
        }
        if self.server.slots.full() {
            if let Some(n) = self.server.limit_log.check(std::time::Instant::now()) {
                tracing::warn!(
                    "{}: refused: {} clients connected, the maximum (and {n} more limit hits since last report)",
                    self.peer,
                    self.server.slots.max_clients
                );
            }
            session.channel_failure(channel)?;
            return Ok(());
        }
        let (Some(chan), Some(grant)) = (self.channel.take(), self.grant.clone()) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        self.tunnel_started = true;
        self.state.logged_in.store(true, Relaxed);
        self.state.logged_in_signal.notify_one();
        let server = self.server.clone();
        let peer = self.peer;
        let handle = session.handle();
        tokio::spawn(async move {
            serve_authenticated(server, chan, grant, peer).await;
            // The tunnel is over: end the SSH connection too.
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "tunnel closed".into(), "en".into())
                .await;
        });
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        tracing::info!("{}: refused shell request", self.peer);
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!("{}: refused exec request", self.peer);
        session.channel_failure(channel)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }
}

/// Runs the tunnel of an SSH login, registered for re-checks while it lasts.
async fn serve_authenticated(state: Arc<ServerState>, channel: Channel<Msg>, grant: Grant, peer: SocketAddr) {
    let id = state.slots.next_id();
    let identity = grant.identity.clone();
    let _registered = state.access.key_store.registered(id, grant);
    let (rx, tx) = channel.split();
    crate::client_session::serve_session(
        state.clone(),
        ChannelRx(rx),
        ChannelTx(tx),
        identity,
        peer.to_string(),
        None,
        Some(id),
    )
    .await;
}
