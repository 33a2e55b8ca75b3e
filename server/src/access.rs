//! Who may have a tunnel: the live key store (authorized keys, user CAs, revocations), the
//! configured peers, `peers_only`, and who may attach through the control socket. Owns the login
//! decision (`authorize`), the attach decision (`may_attach`) and the re-checks of live sessions
//! when key files change; it must not run sessions or read the rest of the server's state.

use std::net::IpAddr;

use anyhow::Context;
use nix::unistd::{Group, User};

use crate::audit::Audit;
use crate::config::Peers;
use crate::credentials::{CHECK_INTERVAL, Credential, Grant, KeyStore, Refusal};
use crate::switch::Switch;

/// Who may attach through the control socket (`--allow-user`, `--allow-group`).
#[derive(Debug, Clone, Default)]
pub struct AttachPolicy {
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

impl AttachPolicy {
    /// Whether the user (with primary group `gid`) may attach.
    fn allows(&self, user: &User) -> bool {
        if self.users.contains(&user.name) {
            return true;
        }
        if self.groups.is_empty() {
            return false;
        }
        let name = std::ffi::CString::new(user.name.clone()).unwrap_or_default();
        let groups = nix::unistd::getgrouplist(&name, user.gid).unwrap_or_else(|_| vec![user.gid]);
        groups.into_iter().any(|g| {
            Group::from_gid(g)
                .ok()
                .flatten()
                .is_some_and(|grp| self.groups.contains(&grp.name))
        })
    }
}

/// The access rules in force.
pub struct Access {
    /// Key management (issue 13): live key files, login decisions, re-checks of live sessions.
    pub key_store: KeyStore,
    /// Peers from the configuration file, by key fingerprint.
    pub peers: Peers,
    /// Only configured peers may connect.
    pub peers_only: bool,
    pub attach: AttachPolicy,
}

impl Access {
    /// The login decision for `credential` offered as `user` from `source`; a refusal says why
    /// (for the log and the audit log).
    pub fn authorize(&self, credential: &Credential, user: &str, source: IpAddr) -> Result<Grant, Refusal> {
        self.key_store
            .authorize(&self.peers, self.peers_only, credential, user, source)
    }

    /// Whether a local user may attach through the control socket.
    pub fn may_attach(&self, user: &User) -> bool {
        self.attach.allows(user)
    }

    /// Every second (and on SIGHUP): re-reads changed key files and closes the sessions they no
    /// longer authorize. Runs for the daemon's lifetime.
    pub async fn watch(&self, switch: &Switch, audit: &Audit) -> anyhow::Result<()> {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                _ = hup.recv() => true,
            };
            if force {
                tracing::info!("SIGHUP: re-reading the key files");
            }
            self.key_store.refresh(force);
            self.key_store.recheck(&self.peers, self.peers_only, switch, audit);
        }
    }
}
