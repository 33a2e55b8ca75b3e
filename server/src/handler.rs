//! The russh handler for one SSH connection: public-key authentication against
//! authorized_keys, and nothing but the `sshvpn` subsystem on a session channel.

use std::net::SocketAddr;
use std::sync::Arc;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use sshvpn_common::keys::fingerprint;
use sshvpn_common::ssh::SUBSYSTEM;

use crate::daemon::Daemon;

pub struct ConnectionHandler {
    pub daemon: Arc<Daemon>,
    pub peer: Option<SocketAddr>,
    /// The key that authenticated this connection.
    pub key: Option<PublicKey>,
    /// The session channel opened by the client, until it asks for the subsystem.
    pub channel: Option<Channel<Msg>>,
    pub tunnel_started: bool,
}

impl ConnectionHandler {
    fn peer(&self) -> String {
        self.peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "?".into())
    }
}

impl russh::server::Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.daemon.is_authorized(offer.public_key) {
            Ok(Auth::Accept)
        } else {
            tracing::info!(
                "{}: refused key {} for user {user:?} (not in authorized keys)",
                self.peer(),
                fingerprint(offer.public_key)
            );
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.daemon.is_authorized(key.public_key) {
            tracing::debug!(
                "{}: user {user:?} authenticated with {}",
                self.peer(),
                fingerprint(key.public_key)
            );
            self.key = Some(key.public_key.clone());
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
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
            tracing::info!("{}: refused subsystem {name:?}", self.peer());
            session.channel_failure(channel)?;
            return Ok(());
        }
        let (Some(chan), Some(key)) = (self.channel.take(), self.key.clone()) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        self.tunnel_started = true;
        let daemon = self.daemon.clone();
        let peer = self.peer;
        let handle = session.handle();
        tokio::spawn(async move {
            daemon.serve_client(chan, key, peer).await;
            // The tunnel is over: end the SSH connection too.
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "tunnel closed".into(),
                    "en".into(),
                )
                .await;
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!("{}: refused shell request", self.peer());
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!("{}: refused exec request", self.peer());
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
