//! The russh handler for one SSH connection: public-key authentication against
//! authorized_keys, and nothing but the `sshvpn` subsystem on a session channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use sshvpn_common::keys::fingerprint;
use sshvpn_common::ssh::SUBSYSTEM;

use crate::daemon::Daemon;
use crate::listener::ConnectionState;

pub struct ConnectionHandler {
    daemon: Arc<Daemon>,
    peer: SocketAddr,
    state: Arc<ConnectionState>,
    /// The key that authenticated this connection.
    key: Option<PublicKey>,
    /// The session channel opened by the client, until it asks for the subsystem.
    channel: Option<Channel<Msg>>,
    tunnel_started: bool,
}

impl ConnectionHandler {
    pub fn new(daemon: Arc<Daemon>, peer: SocketAddr, state: Arc<ConnectionState>) -> Self {
        ConnectionHandler {
            daemon,
            peer,
            state,
            key: None,
            channel: None,
            tunnel_started: false,
        }
    }
}

impl russh::server::Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        if self.daemon.is_authorized(offer.public_key) {
            return Ok(Auth::Accept);
        }
        self.state.auth_failures.fetch_add(1, Relaxed);
        self.daemon.auth_failures.fetch_add(1, Relaxed);
        tracing::info!(
            "{}: refused key {} for user {user:?} (not in authorized keys)",
            self.peer,
            fingerprint(offer.public_key)
        );
        crate::audit::auth_failed(&self.daemon, self.peer, user, offer.public_key, "unknown key");
        Ok(Auth::reject())
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if !self.daemon.is_authorized(key.public_key) {
            self.state.auth_failures.fetch_add(1, Relaxed);
            crate::audit::auth_failed(&self.daemon, self.peer, user, key.public_key, "unknown key");
            return Ok(Auth::reject());
        }
        tracing::debug!(
            "{}: user {user:?} authenticated with {}",
            self.peer,
            fingerprint(key.public_key)
        );
        self.key = Some(key.public_key.clone());
        Ok(Auth::Accept)
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
        if self.daemon.clients.load(Relaxed) >= self.daemon.max_clients {
            if let Some(n) = self.daemon.limit_log.check(std::time::Instant::now()) {
                tracing::warn!(
                    "{}: refused: {} clients connected, the maximum (and {n} more limit hits since last report)",
                    self.peer,
                    self.daemon.max_clients
                );
            }
            session.channel_failure(channel)?;
            return Ok(());
        }
        let (Some(chan), Some(key)) = (self.channel.take(), self.key.clone()) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        self.tunnel_started = true;
        self.state.logged_in.store(true, Relaxed);
        self.state.logged_in_signal.notify_one();
        let daemon = self.daemon.clone();
        let peer = self.peer;
        let handle = session.handle();
        tokio::spawn(async move {
            crate::client_session::serve_channel(daemon, chan, key, peer).await;
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
