//! The built-in SSH transport: TCP connect, host key verification against known_hosts,
//! public-key authentication, and the `sshvpn` subsystem channel.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use russh::client::{self, Msg};
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};
use sshvpn_common::escape;
use sshvpn_common::keys::fingerprint;
use sshvpn_common::known_hosts::{self, HostCertStatus, HostKeyStatus};
use sshvpn_common::ssh::SUBSYSTEM;
use sshvpn_common::tunnel::wire_meter::Downstream;
use sshvpn_common::tunnel::{MeteredStream, WireMeter};

use crate::transport::credentials::{Credentials, Target};

/// Why the host key was not accepted; reported after the connection fails.
#[derive(Debug, Clone)]
enum HostKeyProblem {
    Unknown { fingerprint: String },
    Changed { fingerprint: String, line: usize },
    Revoked { line: usize },
    Io(String),
}

pub struct HostKeyChecker {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    problem: Arc<Mutex<Option<HostKeyProblem>>>,
    /// Names a host certificate's principals are matched against: `--host-key-alias`, else the
    /// name given and its `HostName` (never the address connected to, as ssh); and why a
    /// presented host certificate was not accepted (then its plain key is checked).
    cert_names: Vec<String>,
    cert_note: Arc<Mutex<Option<String>>>,
}

impl HostKeyChecker {
    fn refuse(&self, p: HostKeyProblem) -> bool {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        false
    }
}

impl client::Handler for HostKeyChecker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let cert_key;
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(cert) => {
                // As ssh does: a certificate from a CA trusted for this host is enough; otherwise
                // its plain key is checked against known_hosts.
                let text = match std::fs::read_to_string(&self.known_hosts) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(e) => {
                        let kh = self.known_hosts.display();
                        return Ok(self.refuse(HostKeyProblem::Io(format!("cannot read {kh}: {e}"))));
                    }
                };
                let now = std::time::SystemTime::now();
                match known_hosts::check_cert_text(&text, &self.host, self.port, &self.cert_names, cert, now) {
                    HostCertStatus::Trusted { line } => {
                        tracing::info!(
                            "host certificate \"{}\" accepted (CA at {}:{line})",
                            escape::for_log(cert.key_id()),
                            self.known_hosts.display()
                        );
                        return Ok(true);
                    }
                    HostCertStatus::Revoked { line } => return Ok(self.refuse(HostKeyProblem::Revoked { line })),
                    HostCertStatus::Invalid(why) => {
                        tracing::warn!("host certificate refused: {why}; checking its key as a plain host key");
                        *self.cert_note.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    }
                    HostCertStatus::NoAuthority => {}
                }
                cert_key = russh::keys::PublicKey::new(cert.public_key().clone(), "");
                &cert_key
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
            Ok(HostKeyStatus::Unknown) => Ok(self.refuse(HostKeyProblem::Unknown { fingerprint: fp })),
            Ok(HostKeyStatus::Changed { line }) => Ok(self.refuse(HostKeyProblem::Changed { fingerprint: fp, line })),
            Ok(HostKeyStatus::Revoked { line }) => Ok(self.refuse(HostKeyProblem::Revoked { line })),
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
    /// What russh has written to the socket, and the socket: the tunnel paces its hand-offs by
    /// them.
    pub downstream: Downstream,
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
        ConnectError { error, retryable: true }
    }
}

macro_rules! bail {
    (transient, $($arg:tt)*) => { return Err(ConnectError::transient(anyhow!($($arg)*))) };
    (fatal, $($arg:tt)*) => { return Err(ConnectError::fatal(anyhow!($($arg)*))) };
}

/// Connects, verifies the host key, authenticates and opens the tunnel channel.
pub async fn connect(target: &Target, creds: &Credentials, timeout: Duration) -> Result<Connected, ConnectError> {
    let Target {
        user,
        host,
        alias,
        port,
        known_hosts,
        accept_new,
        host_key_alias,
    } = target;
    let (host, port, known_hosts) = (host.clone(), *port, known_hosts.clone());
    let problem = Arc::new(Mutex::new(None));
    let cert_note = Arc::new(Mutex::new(None));
    // As ssh: known_hosts and the principals of a host certificate are checked against the
    // HostKeyAlias when given (no port appended), else against the name given. The address
    // connected to is never a name a certificate may be for: whoever controls the resolver
    // would choose it.
    // Host names are lowercased for the principals (ssh does the same; the alias is kept).
    let (lookup_name, lookup_port, cert_names) = match host_key_alias {
        Some(a) => (a.clone(), 22, vec![a.clone()]),
        None => {
            let mut names = vec![alias.to_ascii_lowercase()];
            if !host.eq_ignore_ascii_case(alias) {
                names.push(host.to_ascii_lowercase());
            }
            (alias.clone(), port, names)
        }
    };
    let checker = HostKeyChecker {
        host: lookup_name.clone(),
        port: lookup_port,
        known_hosts: known_hosts.clone(),
        accept_new: *accept_new,
        problem: problem.clone(),
        cert_names,
        cert_note: cert_note.clone(),
    };
    let config = Arc::new(sshvpn_common::ssh::client_config());
    let addr = (host.as_str(), port);
    tracing::info!("connecting to {host}:{port} ...");
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => bail!(
            transient,
            "cannot reach {host}:{port}: timed out after {}s",
            timeout.as_secs()
        ),
        Ok(Err(e)) => bail!(transient, "cannot reach {host}:{}: {e}", port),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let server_addr = match tcp.peer_addr() {
        Ok(a) => a.ip(),
        Err(e) => bail!(transient, "connection to {host}:{} lost: {e}", port),
    };
    tracing::info!("TCP connected to {server_addr}; SSH handshake ...");
    let downstream = Downstream {
        meter: WireMeter::new(),
        socket: tcp.as_fd().try_clone_to_owned().ok(),
    };
    let tcp = MeteredStream::new(tcp, downstream.meter.clone());
    let handshake = tokio::time::timeout(timeout, client::connect_stream(config, tcp, checker)).await;
    let mut handle = match handshake {
        Err(_) => bail!(transient, "SSH handshake with {host}:{} timed out", port),
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let problem = problem.lock().unwrap_or_else(|e| e.into_inner()).take();
            let entry = known_hosts::host_entry_name(&lookup_name, lookup_port);
            let kh = known_hosts.display();
            let retryable = problem.is_none();
            let cert_note = cert_note
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map(|why| format!(" (its host certificate was refused: {why})"))
                .unwrap_or_default();
            let error = match problem {
                Some(HostKeyProblem::Unknown { fingerprint }) => anyhow!(
                    "host key for {entry} is not known ({fingerprint}){cert_note}; verify it, then connect once with \
                     --accept-new-host-key to record it in {kh}"
                ),
                Some(HostKeyProblem::Changed { fingerprint, line }) => anyhow!(
                    "@@@ HOST KEY FOR {entry} HAS CHANGED @@@ — someone may be intercepting the connection. \
                     The server now offers {fingerprint}, but {kh}:{line} records a different key. \
                     Refusing to connect; if the change is legitimate, remove that line."
                ),
                Some(HostKeyProblem::Revoked { line }) => {
                    anyhow!("host key for {entry} is marked @revoked in {kh}:{line}; refusing to connect")
                }
                Some(HostKeyProblem::Io(msg)) => anyhow!(msg),
                None => anyhow!("SSH handshake with {host}:{} failed: {e}", port),
            };
            return Err(ConnectError { error, retryable });
        }
    };
    if !authenticate(&mut handle, user, creds)
        .await
        .map_err(ConnectError::transient)?
    {
        let tried: Vec<String> = creds
            .keys
            .iter()
            .map(|(p, k)| format!("{} ({})", p.display(), fingerprint(k.public_key())))
            .chain(creds.agent.then(|| "ssh-agent keys".to_string()))
            .chain(
                creds
                    .certificates
                    .iter()
                    .map(|(p, c)| format!("certificate {} (\"{}\")", p.display(), escape::for_log(c.key_id()))),
            )
            .collect();
        bail!(fatal, "server refused key {} for user {user}", tried.join(", "));
    }
    let transient = |e: russh::Error, step: &str| ConnectError::transient(anyhow!("{step}: {e}"));
    tracing::info!("authenticated; starting the tunnel ...");
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
            Ok(None) => bail!(transient, "server closed the channel before the tunnel started"),
            Err(_) => bail!(transient, "no answer to the {SUBSYSTEM} subsystem request"),
        }
    }
    Ok(Connected {
        handle,
        channel,
        server_addr,
        downstream,
    })
}

/// Tries the agent's keys, then the key files. Ok(false): every key was refused.
async fn authenticate(
    handle: &mut client::Handle<HostKeyChecker>,
    user: &str,
    creds: &Credentials,
) -> anyhow::Result<bool> {
    if creds.agent {
        match AgentClient::connect_env().await {
            Ok(mut agent) => {
                let identities = agent.request_identities().await.unwrap_or_default();
                for id in identities {
                    let key = id.public_key().into_owned();
                    let hash = if key.algorithm().is_rsa() {
                        handle.best_supported_rsa_hash().await?.flatten()
                    } else {
                        None
                    };
                    // Key management: certificates of this agent key first.
                    for (path, cert) in creds
                        .certificates
                        .iter()
                        .filter(|(_, c)| c.public_key() == key.key_data())
                    {
                        match handle
                            .authenticate_certificate_with(user, cert.clone(), hash, &mut agent)
                            .await
                        {
                            Ok(r) if r.success() => return Ok(true),
                            Ok(_) => tracing::debug!("certificate {} refused", path.display()),
                            Err(e) => tracing::debug!("agent signing failed: {e}"),
                        }
                    }
                    match handle.authenticate_publickey_with(user, key, hash, &mut agent).await {
                        Ok(r) if r.success() => return Ok(true),
                        Ok(_) => {}
                        Err(e) => tracing::debug!("agent signing failed: {e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("cannot use ssh-agent: {e}"),
        }
    }
    for (path, key) in &creds.keys {
        // Key management: the certificates of this key first, as ssh does.
        for (cert_path, cert) in creds
            .certificates
            .iter()
            .filter(|(_, c)| c.public_key() == key.public_key().key_data())
        {
            let r = handle
                .authenticate_openssh_cert(user, Arc::new(key.clone()), cert.clone())
                .await?;
            if r.success() {
                return Ok(true);
            }
            tracing::debug!("certificate {} refused", cert_path.display());
        }
        let hash = if key.algorithm().is_rsa() {
            handle.best_supported_rsa_hash().await?.flatten()
        } else {
            None
        };
        let signer = PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash);
        if handle.authenticate_publickey(user, signer).await?.success() {
            return Ok(true);
        }
        tracing::debug!("key {} refused", path.display());
    }
    Ok(false)
}
