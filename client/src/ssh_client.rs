//! The built-in SSH transport: TCP connect, host key verification against known_hosts,
//! public-key authentication, and the `sshvpn` subsystem channel.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use russh::client::{self, Msg};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};
use sshvpn_common::keys::{self, fingerprint};
use sshvpn_common::known_hosts::{self, HostKeyStatus};
use sshvpn_common::ssh::SUBSYSTEM;

use crate::cli::{ConnectArgs, ssh_dir_file};

/// Why the host key was not accepted; reported after the connection fails.
#[derive(Debug, Clone)]
enum HostKeyProblem {
    Unknown { fingerprint: String },
    Changed { fingerprint: String, line: usize },
    Revoked { line: usize },
    Certificate,
    Io(String),
}

pub struct HostKeyChecker {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    problem: Arc<Mutex<Option<HostKeyProblem>>>,
}

impl HostKeyChecker {
    fn refuse(&self, p: HostKeyProblem) -> bool {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        false
    }
}

impl client::Handler for HostKeyChecker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                return Ok(self.refuse(HostKeyProblem::Certificate));
            }
        };
        let fp = fingerprint(key);
        match known_hosts::check(&self.known_hosts, &self.host, self.port, key) {
            Ok(HostKeyStatus::Known) => Ok(true),
            Ok(HostKeyStatus::Unknown) if self.accept_new => {
                if let Err(e) = known_hosts::append(&self.known_hosts, &self.host, self.port, key) {
                    return Ok(self.refuse(HostKeyProblem::Io(format!(
                        "cannot record host key in {}: {e}",
                        self.known_hosts.display()
                    ))));
                }
                tracing::warn!(
                    "added host key {fp} for {} to {}",
                    known_hosts::host_entry_name(&self.host, self.port),
                    self.known_hosts.display()
                );
                Ok(true)
            }
            Ok(HostKeyStatus::Unknown) => {
                Ok(self.refuse(HostKeyProblem::Unknown { fingerprint: fp }))
            }
            Ok(HostKeyStatus::Changed { line }) => Ok(self.refuse(HostKeyProblem::Changed {
                fingerprint: fp,
                line,
            })),
            Ok(HostKeyStatus::Revoked { line }) => {
                Ok(self.refuse(HostKeyProblem::Revoked { line }))
            }
            Err(e) => Ok(self.refuse(HostKeyProblem::Io(format!(
                "cannot read {}: {e}",
                self.known_hosts.display()
            )))),
        }
    }
}

/// An authenticated connection with the tunnel channel open.
pub struct Connected {
    pub handle: client::Handle<HostKeyChecker>,
    pub channel: Channel<Msg>,
    /// The server's IP address as connected to.
    pub server_addr: std::net::IpAddr,
}

fn identity_candidates(args: &ConnectArgs) -> Vec<PathBuf> {
    match &args.identity {
        Some(p) => vec![p.clone()],
        None => ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .filter_map(|n| ssh_dir_file(n))
            .filter(|p| p.exists())
            .collect(),
    }
}

pub fn load_identity(args: &ConnectArgs) -> anyhow::Result<(PathBuf, PrivateKey)> {
    let candidates = identity_candidates(args);
    let Some(path) = candidates.first() else {
        anyhow::bail!(
            "no identity key: pass -i KEY (none of ~/.ssh/id_ed25519, id_ecdsa, id_rsa exists)"
        );
    };
    let key = keys::load_private_key(path)?;
    Ok((path.clone(), key))
}

/// Why connecting failed, and whether trying again can help.
#[derive(Debug)]
pub struct ConnectError {
    pub error: anyhow::Error,
    /// Network trouble is worth retrying; a refused key or a wrong host key is not.
    pub retryable: bool,
}

impl ConnectError {
    fn fatal(error: anyhow::Error) -> Self {
        ConnectError {
            error,
            retryable: false,
        }
    }
    fn transient(error: anyhow::Error) -> Self {
        ConnectError {
            error,
            retryable: true,
        }
    }
}

macro_rules! bail {
    (transient, $($arg:tt)*) => { return Err(ConnectError::transient(anyhow!($($arg)*))) };
    (fatal, $($arg:tt)*) => { return Err(ConnectError::fatal(anyhow!($($arg)*))) };
}

/// Connects, verifies the host key, authenticates with `key` and opens the tunnel channel.
pub async fn connect(
    args: &ConnectArgs,
    key_path: &std::path::Path,
    key: &PrivateKey,
) -> Result<Connected, ConnectError> {
    let (user, host) = args
        .user_and_host()
        .map_err(|e| ConnectError::fatal(anyhow!(e)))?;
    let known_hosts = match &args.known_hosts {
        Some(p) => p.clone(),
        None => match ssh_dir_file("known_hosts") {
            Some(p) => p,
            None => bail!(fatal, "HOME is not set: pass --known-hosts"),
        },
    };
    let problem = Arc::new(Mutex::new(None));
    let checker = HostKeyChecker {
        host: host.clone(),
        port: args.port,
        known_hosts: known_hosts.clone(),
        accept_new: args.accept_new_host_key,
        problem: problem.clone(),
    };
    let config = Arc::new(client::Config {
        preferred: sshvpn_common::ssh::preferred(),
        window_size: sshvpn_common::ssh::WINDOW_SIZE,
        maximum_packet_size: sshvpn_common::ssh::MAX_PACKET_SIZE,
        channel_buffer_size: 256,
        nodelay: true,
        inactivity_timeout: None,
        ..Default::default()
    });
    let timeout = Duration::from_secs(args.connect_timeout);
    let addr = (host.as_str(), args.port);
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => bail!(
            transient,
            "cannot reach {host}:{}: timed out after {}s",
            args.port,
            args.connect_timeout
        ),
        Ok(Err(e)) => bail!(transient, "cannot reach {host}:{}: {e}", args.port),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let server_addr = match tcp.peer_addr() {
        Ok(a) => a.ip(),
        Err(e) => bail!(transient, "connection to {host}:{} lost: {e}", args.port),
    };
    let handshake =
        tokio::time::timeout(timeout, client::connect_stream(config, tcp, checker)).await;
    let mut handle = match handshake {
        Err(_) => bail!(
            transient,
            "SSH handshake with {host}:{} timed out",
            args.port
        ),
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let problem = problem.lock().unwrap_or_else(|e| e.into_inner()).take();
            let entry = known_hosts::host_entry_name(&host, args.port);
            let kh = known_hosts.display();
            let retryable = problem.is_none();
            let error = match problem {
                Some(HostKeyProblem::Unknown { fingerprint }) => anyhow!(
                    "host key for {entry} is not known ({fingerprint}); verify it, then connect once with \
                     --accept-new-host-key to record it in {kh}"
                ),
                Some(HostKeyProblem::Changed { fingerprint, line }) => anyhow!(
                    "@@@ HOST KEY FOR {entry} HAS CHANGED @@@ — someone may be intercepting the connection. \
                     The server now offers {fingerprint}, but {kh}:{line} records a different key. \
                     Refusing to connect; if the change is legitimate, remove that line."
                ),
                Some(HostKeyProblem::Revoked { line }) => {
                    anyhow!(
                        "host key for {entry} is marked @revoked in {kh}:{line}; refusing to connect"
                    )
                }
                Some(HostKeyProblem::Certificate) => {
                    anyhow!("{entry} presented a host certificate; not supported")
                }
                Some(HostKeyProblem::Io(msg)) => anyhow!(msg),
                None => anyhow!("SSH handshake with {host}:{} failed: {e}", args.port),
            };
            return Err(ConnectError { error, retryable });
        }
    };
    let transient = |e: russh::Error, step: &str| ConnectError::transient(anyhow!("{step}: {e}"));
    let hash = if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| transient(e, "authentication"))?
            .flatten()
    } else {
        None
    };
    let key_fp = fingerprint(key.public_key());
    let signer = PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash);
    let auth = handle
        .authenticate_publickey(&user, signer)
        .await
        .map_err(|e| transient(e, "authentication"))?;
    if !auth.success() {
        bail!(
            fatal,
            "server refused key {} ({key_fp}) for user {user}",
            key_path.display()
        );
    }
    let mut channel = handle
        .channel_open_session()
        .await
        .map_err(|e| transient(e, "opening the tunnel channel"))?;
    channel
        .request_subsystem(true, SUBSYSTEM)
        .await
        .map_err(|e| transient(e, "requesting the tunnel subsystem"))?;
    loop {
        match tokio::time::timeout(timeout, channel.wait()).await {
            Ok(Some(ChannelMsg::Success)) => break,
            Ok(Some(ChannelMsg::Failure)) => bail!(
                transient,
                "server refused the {SUBSYSTEM} subsystem (is sshvpnd serving this host?)"
            ),
            Ok(Some(_)) => continue,
            Ok(None) => bail!(
                transient,
                "server closed the channel before the tunnel started"
            ),
            Err(_) => bail!(transient, "no answer to the {SUBSYSTEM} subsystem request"),
        }
    }
    Ok(Connected {
        handle,
        channel,
        server_addr,
    })
}
