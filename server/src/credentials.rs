//! Live credentials: the key files sshvpnd authorizes SSH logins with (`--authorized-keys`,
//! `--trusted-user-ca-keys`, `--revoked-keys`), re-read when they change (a stat check before
//! each authentication and every second, and at once on SIGHUP); the decision for one login
//! (key or user certificate, login name, source address, now); the registry of live SSH sessions
//! with the credential each logged in with; and the periodic re-check that closes the sessions
//! whose credential is no longer authorized (removed, revoked, expired, `from=` no longer
//! matching) with CLOSE "not authorized". A line that cannot be used is skipped with a
//! `FILE:LINE: why` warning, at start and on every re-read; a changed file is applied once it
//! has been stable (same size, mtime, inode across two checks [`STABLE_FOR`] apart), so a
//! half-written file never takes effect; a file that cannot be read (or fails StrictModes)
//! keeps the previous set, except the revoked-keys file, which then refuses every key (as
//! sshd's RevokedKeys does). Also loads the host certificate (`--host-certificate`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use russh::keys::ssh_key::Certificate;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{HashAlg, PublicKey};
use sshvpn_common::authorized_keys::{
    self, AuthorizedKeysFile, CaRefusal, CertRefusal, KeyRefusal, LineError, Request,
};
use sshvpn_common::keys::fingerprint;

use crate::audit::Audit;
use crate::config::Peers;
use crate::strict_modes::StrictModes;
use crate::switch::Switch;

/// How often the key files are checked and the live sessions re-evaluated.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A changed file is applied once a later check, at least this long after the change was
/// first seen, finds it unchanged.
pub const STABLE_FOR: Duration = Duration::from_millis(750);

/// Why a login (or a live session's credential) is refused: logged, audited (`reason`) and
/// the cause of CLOSE "not authorized". `label` names the key or certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{label} is revoked")]
    KeyRevoked { label: String },
    /// The revoked-keys file cannot be read or parsed: every key is refused (fail closed).
    #[error("{label}: the revoked-keys file is unusable ({reason}): every key is refused")]
    RevocationUnavailable { label: String, reason: String },
    #[error("{label} is not a configured peer (peers_only)")]
    NotAPeer { label: String },
    /// authorized_keys refuses the key.
    #[error("{label}: {reason}")]
    Key { label: String, reason: KeyRefusal },
    #[error("{label}: its key is revoked")]
    CertKeyRevoked { label: String },
    #[error("{label}: its CA is revoked")]
    CaRevoked { label: String },
    #[error("{label}: it is revoked (serial or key ID in the KRL)")]
    CertRevoked { label: String },
    #[error("{label}: only configured peers may connect (peers_only)")]
    CertPeersOnly { label: String },
    /// Neither a trusted-CA file nor a `cert-authority` line knows its CA.
    #[error("{label}: its CA {ca} is not trusted")]
    UntrustedCa { label: String, ca: String },
    /// A trusted CA (`--trusted-user-ca-keys`) signed it, but the certificate is refused.
    #[error("{label}: {reason}")]
    Cert { label: String, reason: CertRefusal },
    /// authorized_keys' `cert-authority` lines refuse it.
    #[error("{label}: {reason}")]
    CertAuthority { label: String, reason: CaRefusal },
}

/// Why a key file (or the configuration file's peers) cannot be used. Causes are sources, not
/// repeated in the message (`{:#}` prints the chain).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The configuration file cannot be read or parsed (its own error says which and where).
    #[error(transparent)]
    Config(anyhow::Error),
    /// The configuration file's peers are invalid: `PATH:LINE: reason` for each.
    #[error("{}", describe_config(.errors, .path))]
    Peers {
        path: PathBuf,
        errors: Vec<crate::config::ConfigError>,
    },
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{} is a key revocation list, not a list of keys", .0.display())]
    UnexpectedKrl(PathBuf),
    #[error("{}: unreadable KRL", .path.display())]
    Krl {
        path: PathBuf,
        #[source]
        error: sshvpn_common::krl::KrlError,
    },
    #[error("{} is not a text file", .0.display())]
    NotText(PathBuf),
    /// StrictModes: the file or a directory above it may be written by others.
    #[error("{} is not trusted (StrictModes)", .path.display())]
    Insecure {
        path: PathBuf,
        #[source]
        error: crate::strict_modes::InsecurePath,
    },
    /// Lines that are not keys: `PATH:LINE: reason` for each.
    #[error("{}", describe(.errors, .path))]
    BadLines { path: PathBuf, errors: Vec<LineError> },
}

/// What a client proved it holds.
#[derive(Debug, Clone)]
pub enum Credential {
    Key(PublicKey),
    Cert(Box<Certificate>),
}

/// An accepted login: what it is re-checked with, and the identity its leases and logs use.
#[derive(Debug, Clone)]
pub struct Grant {
    pub credential: Credential,
    pub user: String,
    pub source: IpAddr,
    /// A key's `SHA256:...` fingerprint, or `cert:CA-FINGERPRINT:PRINCIPAL` for a certificate.
    pub identity: String,
    /// For log lines: which key or certificate.
    pub label: String,
    /// When it stops being valid by itself (certificate validity, `expiry-time=`), if ever.
    pub deadline: Option<SystemTime>,
}

/// A live session in the registry, and the key-set generation it was last checked against.
#[derive(Debug)]
struct Tracked {
    grant: Grant,
    checked: std::sync::atomic::AtomicU64,
}

/// Identity of a file version: a change of any of these means "re-read it".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The key sets in force.
#[derive(Debug, Default)]
pub struct KeySets {
    pub authorized: AuthorizedKeysFile,
    pub cas: Vec<PublicKey>,
    pub revoked: Vec<PublicKey>,
    /// Fingerprints of the `[[peer]]` keys the configuration file lists now (None: no file).
    /// A peer removed from the file is refused and its sessions closed; a peer added needs a
    /// restart (its addresses and subnets are set up at start).
    pub config_peers: Option<std::collections::HashSet<String>>,
    /// `--revoked-keys` as an OpenSSH KRL (instead of a list of keys).
    pub krl: Option<sshvpn_common::krl::Krl>,
    /// Why the revoked-keys file cannot be used now (every key is refused meanwhile).
    pub revocation_unavailable: Option<String>,
}

impl KeySets {
    fn is_revoked(&self, key: &KeyData) -> bool {
        self.revoked.iter().any(|r| r.key_data() == key) || self.krl.as_ref().is_some_and(|k| k.is_key_revoked(key))
    }

    fn is_cert_revoked(&self, cert: &Certificate) -> bool {
        self.krl.as_ref().is_some_and(|k| k.is_cert_revoked(cert))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    AuthorizedKeys,
    TrustedCas,
    Revoked,
    /// The configuration file (its peers), validated against these pools.
    Config(Option<ipnet::IpNet>, Option<ipnet::IpNet>),
}

#[derive(Debug)]
struct Watched {
    kind: Kind,
    path: PathBuf,
    stamp: Option<Stamp>,
    /// A change seen but not applied yet: its stamp, and when it was first seen.
    pending: Option<(Option<Stamp>, std::time::Instant)>,
}

/// Parsed content of one file.
enum Content {
    Authorized(AuthorizedKeysFile),
    Keys(Vec<PublicKey>),
    Peers(std::collections::HashSet<String>),
    Krl(sshvpn_common::krl::Krl),
}

fn describe(errors: &[LineError], path: &Path) -> String {
    errors
        .iter()
        .map(|e| format!("{}:{}: {}", path.display(), e.line, e.message()))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_config(errors: &[crate::config::ConfigError], path: &Path) -> String {
    errors
        .iter()
        .map(|e| crate::config::format_error(path, e))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads and parses one file (after the StrictModes check). A line that cannot be used is
/// skipped with a `FILE:LINE: why` warning (authorized keys, trusted CAs). A revocation list
/// must be entirely readable: a bad line in it is an error (sshd's `sshkey_in_file` stops at
/// it and RevokedKeys then refuses every key), as is a KRL that does not parse.
fn read(kind: Kind, path: &Path, strict: &StrictModes) -> Result<Content, KeyFileError> {
    strict.check(path).map_err(|error| KeyFileError::Insecure {
        path: path.to_path_buf(),
        error,
    })?;
    if let Kind::Config(pool, pool6) = kind {
        let (file, text) = crate::config::load(path).map_err(KeyFileError::Config)?;
        let peers = crate::config::validate(&text, &file, pool, pool6).map_err(|errors| KeyFileError::Peers {
            path: path.to_path_buf(),
            errors,
        })?;
        return Ok(Content::Peers(peers.0.into_keys().collect()));
    }
    let bytes = std::fs::read(path).map_err(|error| KeyFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    if bytes.starts_with(sshvpn_common::krl::MAGIC) {
        if kind != Kind::Revoked {
            return Err(KeyFileError::UnexpectedKrl(path.to_path_buf()));
        }
        return sshvpn_common::krl::Krl::parse(&bytes)
            .map(Content::Krl)
            .map_err(|error| KeyFileError::Krl {
                path: path.to_path_buf(),
                error,
            });
    }
    let text = String::from_utf8(bytes).map_err(|_| KeyFileError::NotText(path.to_path_buf()))?;
    let warn = |errors: &[LineError], what: &str| {
        for e in errors {
            tracing::warn!("{}:{}: skipping {what}: {}", path.display(), e.line, e.message());
        }
    };
    match kind {
        Kind::AuthorizedKeys => {
            let file = AuthorizedKeysFile::parse(&text);
            warn(&file.errors, "authorized key");
            Ok(Content::Authorized(file))
        }
        Kind::TrustedCas => {
            let (keys, errors) = authorized_keys::parse_key_list(&text);
            warn(&errors, "trusted CA key");
            Ok(Content::Keys(keys))
        }
        Kind::Revoked | Kind::Config(..) => {
            let (keys, errors) = authorized_keys::parse_key_list(&text);
            if !errors.is_empty() {
                return Err(KeyFileError::BadLines {
                    path: path.to_path_buf(),
                    errors,
                });
            }
            Ok(Content::Keys(keys))
        }
    }
}

/// The key files, the sets in force, and the live SSH sessions.
#[derive(Debug, Default)]
pub struct KeyStore {
    files: Mutex<Vec<Watched>>,
    current: RwLock<Arc<KeySets>>,
    /// Live tunnel sessions of SSH logins, by their unique session id (`PeerPort::id`).
    sessions: Mutex<HashMap<u64, Arc<Tracked>>>,
    /// StrictModes for every file read.
    strict: StrictModes,
    /// Counts replacements of `current`: sessions are re-checked once per generation.
    generation: std::sync::atomic::AtomicU64,
}

impl KeyStore {
    /// Loads the files given (a missing or unreadable one is an error at startup).
    #[cfg(test)]
    pub fn load(authorized: Option<&Path>, cas: Option<&Path>, revoked: Option<&Path>) -> anyhow::Result<KeyStore> {
        Self::load_with_config(authorized, cas, revoked, None, StrictModes::off())
    }

    /// Loads the files given; `config` also watches the configuration file's peers (its path
    /// and the pools in force).
    pub fn load_with_config(
        authorized: Option<&Path>,
        cas: Option<&Path>,
        revoked: Option<&Path>,
        config: Option<(&Path, Option<ipnet::IpNet>, Option<ipnet::IpNet>)>,
        strict: StrictModes,
    ) -> anyhow::Result<KeyStore> {
        let mut sets = KeySets::default();
        let mut files = Vec::new();
        let config = config.map(|(path, p4, p6)| (Kind::Config(p4, p6), Some(path)));
        for (kind, path) in [
            (Kind::AuthorizedKeys, authorized),
            (Kind::TrustedCas, cas),
            (Kind::Revoked, revoked),
        ]
        .into_iter()
        .chain(config)
        {
            let Some(path) = path else { continue };
            let st = stamp(path);
            let content = read(kind, path, &strict)?;
            install(&mut sets, kind, content);
            files.push(Watched {
                kind,
                path: path.to_path_buf(),
                stamp: st,
                pending: None,
            });
        }
        Ok(KeyStore {
            files: Mutex::new(files),
            current: RwLock::new(Arc::new(sets)),
            sessions: Mutex::default(),
            generation: Default::default(),
            strict,
        })
    }

    /// Logs the watched files this process cannot read (after dropping privileges): their
    /// changes would not be picked up.
    pub fn warn_unreadable(&self) {
        for w in self.files.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Err(e) = std::fs::File::open(&w.path) {
                tracing::warn!(
                    "{} cannot be re-read after dropping privileges ({e}): changes to it need a restart",
                    w.path.display()
                );
            }
        }
    }

    pub fn current(&self) -> Arc<KeySets> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the files that changed and have been stable since (all of them at once with
    /// `force`). A file that cannot be read keeps its previous content, except the revoked-keys
    /// file, whose failure refuses every key until it is fixed; the error is logged once per
    /// version. Returns how long until a change seen but not yet stable may be applied.
    pub fn refresh(&self, force: bool) -> Option<Duration> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: Option<KeySets> = None;
        let mut wait: Option<Duration> = None;
        let now = std::time::Instant::now();
        for w in files.iter_mut() {
            let st = stamp(&w.path);
            if !force {
                if st == w.stamp {
                    w.pending = None;
                    continue;
                }
                match w.pending {
                    Some((p, since)) if p == st && now.duration_since(since) >= STABLE_FOR => {}
                    Some((p, since)) if p == st => {
                        let left = STABLE_FOR - now.duration_since(since);
                        wait = Some(wait.map_or(left, |w| w.min(left)));
                        continue;
                    }
                    _ => {
                        w.pending = Some((st, now));
                        wait = Some(STABLE_FOR);
                        continue;
                    }
                }
            }
            w.pending = None;
            w.stamp = st;
            let sets = next.get_or_insert_with(|| {
                let cur = self.current();
                KeySets {
                    authorized: cur.authorized.clone(),
                    cas: cur.cas.clone(),
                    revoked: cur.revoked.clone(),
                    config_peers: cur.config_peers.clone(),
                    krl: cur.krl.clone(),
                    revocation_unavailable: cur.revocation_unavailable.clone(),
                }
            });
            match read(w.kind, &w.path, &self.strict) {
                Ok(content) => {
                    if w.kind == Kind::Revoked {
                        sets.revocation_unavailable = None;
                    }
                    let n = install(sets, w.kind, content);
                    tracing::info!("re-read {}: {n} entries", w.path.display());
                }
                Err(e) if w.kind == Kind::Revoked => {
                    let e = anyhow::Error::from(e);
                    tracing::error!("{e:#}; refusing every key until the revoked-keys file is fixed");
                    sets.revocation_unavailable = Some(format!("{e:#}"));
                }
                Err(e) => tracing::error!(
                    "{:#}; keeping the previous version of {}",
                    anyhow::Error::from(e),
                    w.path.display()
                ),
            }
        }
        if let Some(sets) = next {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sets);
            self.generation.fetch_add(1, Relaxed);
        }
        wait
    }

    /// Whether certificates can be accepted at all (some CA is configured).
    pub fn accepts_certificates(&self) -> bool {
        let s = self.current();
        !s.cas.is_empty() || s.authorized.has_cert_authorities()
    }

    /// The decision for one login. `peers` are the configuration file's peers (keys accepted
    /// whatever authorized_keys says); with `peers_only`, nothing else is.
    pub fn authorize(
        &self,
        peers: &Peers,
        peers_only: bool,
        credential: &Credential,
        user: &str,
        source: IpAddr,
    ) -> Result<Grant, Refusal> {
        let sets = self.current();
        let req = Request {
            user,
            source,
            now: SystemTime::now(),
        };
        let grant = |identity: String, label: String, deadline: Option<SystemTime>| Grant {
            credential: credential.clone(),
            user: user.to_string(),
            source,
            identity,
            label,
            deadline,
        };
        // Earliest of a certificate's end of validity and its line's expiry-time.
        let line_expiry = |line: Option<usize>| {
            line.and_then(|l| sets.authorized.entries.iter().find(|e| e.line == l))
                .and_then(|e| e.options.expiry)
        };
        let earliest = |a: Option<SystemTime>, b: Option<SystemTime>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(reason) = &sets.revocation_unavailable {
            let label = match credential {
                Credential::Key(key) => format!("key {}", fingerprint(key)),
                Credential::Cert(cert) => cert_label(cert),
            };
            return Err(Refusal::RevocationUnavailable {
                label,
                reason: reason.clone(),
            });
        }
        match credential {
            Credential::Key(key) => {
                let label = format!("key {}", fingerprint(key));
                if sets.is_revoked(key.key_data()) {
                    return Err(Refusal::KeyRevoked { label });
                }
                if peers.contains_key(key) {
                    let fp = fingerprint(key);
                    match &sets.config_peers {
                        // Removed from the configuration file since the start: it may still be
                        // an ordinary authorized key.
                        Some(now) if !now.contains(&fp) => {}
                        _ => return Ok(grant(fp, label, None)),
                    }
                }
                if peers_only {
                    return Err(Refusal::NotAPeer { label });
                }
                match sets.authorized.authorize_key(key.key_data(), &req) {
                    Ok(line) => Ok(grant(fingerprint(key), label, line_expiry(Some(line)))),
                    Err(reason) => Err(Refusal::Key { label, reason }),
                }
            }
            Credential::Cert(cert) => {
                let label = cert_label(cert);
                if sets.is_revoked(cert.public_key()) {
                    return Err(Refusal::CertKeyRevoked { label });
                }
                if sets.is_revoked(cert.signature_key()) {
                    return Err(Refusal::CaRevoked { label });
                }
                if sets.is_cert_revoked(cert) {
                    return Err(Refusal::CertRevoked { label });
                }
                if peers_only {
                    return Err(Refusal::CertPeersOnly { label });
                }
                let mut refusal = None;
                if let Some(ca) = sets.cas.iter().find(|ca| ca.key_data() == cert.signature_key()) {
                    match authorized_keys::check_user_cert(cert, ca.key_data(), None, &req) {
                        Ok(principal) => {
                            let until = cert.valid_before_time();
                            return Ok(grant(cert_identity(cert, &principal), label, until));
                        }
                        Err(why) => refusal = Some(why),
                    }
                }
                match sets.authorized.authorize_cert(cert, &req) {
                    Ok(g) => {
                        let until = earliest(cert.valid_before_time(), line_expiry(g.line));
                        Ok(grant(cert_identity(cert, &g.principal), label, until))
                    }
                    Err(_) if refusal.is_none() && !sets.authorized.has_cert_authorities() => {
                        Err(Refusal::UntrustedCa {
                            label,
                            ca: cert.signature_key().fingerprint(HashAlg::Sha256).to_string(),
                        })
                    }
                    // The trusted CA file's reason first, as it is checked first.
                    Err(reason) => Err(match refusal {
                        Some(reason) => Refusal::Cert { label, reason },
                        None => Refusal::CertAuthority { label, reason },
                    }),
                }
            }
        }
    }

    fn register(&self, id: u64, grant: Grant) {
        let tracked = Tracked {
            grant,
            // Checked once against the sets in force when its tunnel is up, whatever happened since the login.
            checked: u64::MAX.into(),
        };
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(tracked));
    }

    fn unregister(&self, id: u64) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Re-evaluates the live SSH sessions not yet checked against the key sets in force, or
    /// whose credential's validity has run out; those no longer authorized are told to close
    /// with CLOSE "not authorized". Returns how many were closed.
    pub fn recheck(&self, peers: &Peers, peers_only: bool, switch: &Switch, audit: &Audit) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if sessions.is_empty() {
            return 0;
        }
        let generation = self.generation.load(Relaxed);
        let now = SystemTime::now();
        let mut closed = 0;
        for port in switch.ports() {
            if port.not_authorized.load(Relaxed) {
                continue;
            }
            let Some(t) = sessions.get(&port.id) else { continue };
            let g = &t.grant;
            let stale = t.checked.swap(generation, Relaxed) != generation;
            if !stale && g.deadline.is_none_or(|d| now <= d) {
                continue;
            }
            if let Err(why) = self.authorize(peers, peers_only, &g.credential, &g.user, g.source) {
                tracing::warn!(
                    "closing session {} of {} (peer {}, user {:?}): no longer authorized: {why}",
                    port.id,
                    port.identity,
                    port.peer,
                    g.user
                );
                audit.key_revoked(&port.identity, &why.to_string());
                port.not_authorized.store(true, Relaxed);
                port.evict.notify_one();
                closed += 1;
            }
        }
        closed
    }
}

/// Installs parsed content; returns its entry count.
fn install(sets: &mut KeySets, kind: Kind, content: Content) -> usize {
    match (kind, content) {
        (Kind::AuthorizedKeys, Content::Authorized(f)) => {
            let n = f.entries.len();
            sets.authorized = f;
            n
        }
        (Kind::TrustedCas, Content::Keys(k)) => {
            let n = k.len();
            sets.cas = k;
            n
        }
        (Kind::Revoked, Content::Keys(k)) => {
            let n = k.len();
            sets.revoked = k;
            sets.krl = None;
            n
        }
        (Kind::Revoked, Content::Krl(krl)) => {
            sets.revoked.clear();
            sets.krl = Some(krl);
            1
        }
        (Kind::Config(..), Content::Peers(p)) => {
            let n = p.len();
            sets.config_peers = Some(p);
            n
        }
        _ => 0,
    }
}

/// Key IDs are chosen by whoever runs the CA: keep identities one printable token, bounded.
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_graphic() && c != '#' && c != ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "-".into() } else { t }
}

/// `cert:SHA256-OF-CA:PRINCIPAL`: the identity of a certificate login (leases, logs, status).
/// Keyed by who vouches (the CA) and for whom (the principal), not by the key ID: a CA minting
/// one key ID per login must not take a new address lease per login.
pub fn cert_identity(cert: &Certificate, principal: &str) -> String {
    format!(
        "cert:{}:{}",
        cert.signature_key().fingerprint(HashAlg::Sha256),
        token(principal)
    )
}

fn cert_label(cert: &Certificate) -> String {
    format!(
        "certificate {:?} (serial {}, key {}, CA {})",
        token(cert.key_id()),
        cert.serial(),
        cert.public_key().fingerprint(HashAlg::Sha256),
        cert.signature_key().fingerprint(HashAlg::Sha256)
    )
}

/// Removes a session from the registry when its tunnel ends.
pub struct Registered<'a>(&'a KeyStore, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}

impl KeyStore {
    /// Registers the tunnel of an SSH login, by its unique session id (the id its switch port
    /// gets), for re-checks while the guard lives.
    pub fn registered(&self, id: u64, grant: Grant) -> Registered<'_> {
        self.register(id, grant);
        Registered(self, id)
    }
}

/// Loads `--host-certificate`: an OpenSSH host certificate for the host key.
pub fn load_host_certificate(path: &Path, host_key: &PublicKey, strict: &StrictModes) -> anyhow::Result<Certificate> {
    strict
        .check(path)
        .with_context(|| format!("host certificate {} is not trusted (StrictModes)", path.display()))?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading host certificate {}", path.display()))?;
    let cert = Certificate::from_openssh(text.trim())
        .map_err(|e| anyhow::anyhow!("host certificate {}: {e}", path.display()))?;
    if cert.cert_type() != CertType::Host {
        anyhow::bail!(
            "{} is a user certificate, not a host certificate (ssh-keygen -h)",
            path.display()
        );
    }
    if cert.public_key() != host_key.key_data() {
        anyhow::bail!(
            "host certificate {} is for key {}, not for the host key {}",
            path.display(),
            cert.public_key().fingerprint(HashAlg::Sha256),
            fingerprint(host_key)
        );
    }
    if let Some(until) = cert.valid_before_time()
        && until < SystemTime::now()
    {
        tracing::warn!(
            "host certificate {} has expired: clients will refuse it",
            path.display()
        );
    }
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::{Algorithm, PrivateKey};

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "sshvpnd-cred-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn line(k: &PrivateKey) -> String {
        k.public_key().to_openssh().unwrap() + "\n"
    }

    /// Checks the files twice, [`STABLE_FOR`] apart: a change is applied once stable.
    fn settle(store: &KeyStore) {
        if store.refresh(false).is_some() {
            std::thread::sleep(STABLE_FOR);
            assert_eq!(store.refresh(false), None, "applied once stable");
        }
    }

    fn allowed(store: &KeyStore, k: &PrivateKey) -> Result<Grant, Refusal> {
        store.authorize(
            &Peers::default(),
            false,
            &Credential::Key(k.public_key().clone()),
            "root",
            "10.0.0.1".parse().unwrap(),
        )
    }

    #[test]
    fn reload_adds_and_removes_and_a_broken_edit_keeps_the_old_set() {
        let d = dir();
        let ak = d.join("authorized_keys");
        let (a, b, c) = (key(), key(), key());
        std::fs::write(&ak, line(&a)).unwrap();
        let store = KeyStore::load(Some(&ak), None, None).unwrap();
        assert!(allowed(&store, &a).is_ok());
        assert!(allowed(&store, &b).is_err());
        std::fs::write(&ak, line(&a) + &line(&b)).unwrap();
        settle(&store);
        assert!(allowed(&store, &b).is_ok(), "added key admitted");
        // A bad line (and a command= line) is skipped; the rest of the edit applies.
        std::fs::write(
            &ak,
            line(&a) + "command=\"/bin/true\" " + &line(&b) + "from=\"10.0.0.0/33\" " + &line(&c),
        )
        .unwrap();
        settle(&store);
        assert!(allowed(&store, &a).is_ok());
        assert!(allowed(&store, &b).is_err(), "its only line is unusable");
        assert!(allowed(&store, &c).is_err());
        // A truncated write seen while empty is not applied before it is stable.
        std::fs::write(&ak, "").unwrap();
        assert!(store.refresh(false).is_some(), "pending");
        std::fs::write(&ak, line(&a)).unwrap();
        settle(&store);
        assert!(allowed(&store, &a).is_ok());
        std::fs::remove_file(&ak).unwrap();
        settle(&store);
        assert!(allowed(&store, &a).is_ok(), "deleted file: previous set kept");
        std::fs::write(&ak, line(&b)).unwrap();
        settle(&store);
        assert!(allowed(&store, &a).is_err(), "removed key refused");
        assert!(allowed(&store, &b).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The audit log's `reason` and the log lines are the refusal's text.
    #[test]
    fn refusals_and_file_errors_read_as_before() {
        let d = dir();
        let (ak, rk) = (d.join("ak"), d.join("revoked"));
        let (a, b, c) = (key(), key(), key());
        std::fs::write(&ak, line(&a) + "from=\"192.0.2.0/24\" " + &line(&c)).unwrap();
        std::fs::write(&rk, line(&b)).unwrap();
        let store = KeyStore::load(Some(&ak), None, Some(&rk)).unwrap();
        let fp = |k: &PrivateKey| fingerprint(k.public_key());
        assert_eq!(
            allowed(&store, &b).unwrap_err().to_string(),
            format!("key {} is revoked", fp(&b))
        );
        let stranger = key();
        let why = allowed(&store, &stranger).unwrap_err();
        assert!(
            matches!(
                why,
                Refusal::Key {
                    reason: KeyRefusal::NotListed,
                    ..
                }
            ),
            "{why:?}"
        );
        assert_eq!(
            why.to_string(),
            format!("key {}: not in authorized keys", fp(&stranger))
        );
        assert_eq!(
            allowed(&store, &c).unwrap_err().to_string(),
            format!(
                "key {}: line 2: source 10.0.0.1 does not match from=\"192.0.2.0/24\"",
                fp(&c)
            )
        );
        let peers_only = store
            .authorize(
                &Peers::default(),
                true,
                &Credential::Key(a.public_key().clone()),
                "root",
                "10.0.0.1".parse().unwrap(),
            )
            .unwrap_err();
        assert_eq!(
            peers_only.to_string(),
            format!("key {} is not a configured peer (peers_only)", fp(&a))
        );
        // File errors: the cause is the source, and the chain reads as the old message did.
        let missing = d.join("missing");
        let err = anyhow::Error::from(read(Kind::AuthorizedKeys, &missing, &StrictModes::off()).err().unwrap());
        assert_eq!(err.to_string(), format!("cannot read {}", missing.display()));
        assert!(
            format!("{err:#}").starts_with(&format!("cannot read {}: No such file", missing.display())),
            "{err:#}"
        );
        std::fs::write(&rk, line(&a) + "garbage\n").unwrap();
        let err = read(Kind::Revoked, &rk, &StrictModes::off()).err().unwrap();
        assert!(
            err.to_string()
                .starts_with(&format!("{}:2: not a public key", rk.display())),
            "{err}"
        );
        // The configuration file's own error, whole.
        let cfg = d.join("sshvpnd.toml");
        std::fs::write(&cfg, "pool = 7\n").unwrap();
        let expected = format!("{:#}", crate::config::load(&cfg).unwrap_err());
        let err = anyhow::Error::from(read(Kind::Config(None, None), &cfg, &StrictModes::off()).err().unwrap());
        assert_eq!(format!("{err:#}"), expected);
        assert_eq!(
            format!(
                "{:#}",
                anyhow::Error::from(
                    read(Kind::Config(None, None), &missing, &StrictModes::off())
                        .err()
                        .unwrap()
                )
            ),
            format!("{:#}", crate::config::load(&missing).unwrap_err())
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn revoked_keys_and_krl_files() {
        let d = dir();
        let (ak, rk) = (d.join("ak"), d.join("revoked"));
        let (a, b) = (key(), key());
        std::fs::write(&ak, line(&a) + &line(&b)).unwrap();
        std::fs::write(&rk, "# none yet\n").unwrap();
        let store = KeyStore::load(Some(&ak), None, Some(&rk)).unwrap();
        assert!(allowed(&store, &a).is_ok());
        std::fs::write(&rk, line(&a)).unwrap();
        settle(&store);
        let why = allowed(&store, &a).unwrap_err().to_string();
        assert!(why.contains("revoked"), "{why}");
        assert!(allowed(&store, &b).is_ok());
        // A truncated KRL is broken: every key is refused (fail closed, as sshd's RevokedKeys),
        // and it cannot start a daemon.
        std::fs::write(&rk, b"SSHKRL\n\0\x00\x00\x00\x01").unwrap();
        settle(&store);
        assert!(allowed(&store, &a).is_err());
        let why = allowed(&store, &b).unwrap_err();
        assert!(matches!(why, Refusal::RevocationUnavailable { .. }), "{why}");
        // So does a bad line in a list of keys; fixing it lifts the refusal.
        std::fs::write(&rk, line(&a) + "garbage\n").unwrap();
        settle(&store);
        assert!(allowed(&store, &b).is_err());
        std::fs::write(&rk, line(&a)).unwrap();
        settle(&store);
        assert!(allowed(&store, &b).is_ok());
        std::fs::write(&rk, b"SSHKRL\n\0\x00\x00\x00\x01").unwrap();
        let err = KeyStore::load(Some(&ak), None, Some(&rk)).unwrap_err().to_string();
        assert!(err.contains("unreadable KRL"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_peer_removed_from_the_configuration_file_is_refused() {
        let d = dir();
        let cfg = d.join("sshvpnd.toml");
        let (a, b) = (key(), key());
        let peer = |k: &PrivateKey, name: &str| {
            format!(
                "[[peer]]\nname = \"{name}\"\nkey = \"{}\"\n",
                k.public_key().to_openssh().unwrap()
            )
        };
        let pool = Some("10.9.0.0/24".parse().unwrap());
        let head = "pool = \"10.9.0.0/24\"\n";
        std::fs::write(&cfg, format!("{head}{}{}", peer(&a, "a"), peer(&b, "b"))).unwrap();
        let store = KeyStore::load_with_config(None, None, None, Some((&cfg, pool, None)), StrictModes::off()).unwrap();
        let (text, file) = {
            let (file, text) = crate::config::load(&cfg).unwrap();
            (text, file)
        };
        let peers = crate::config::validate(&text, &file, pool, None).unwrap();
        let as_peer = |k: &PrivateKey| {
            store.authorize(
                &peers,
                true,
                &Credential::Key(k.public_key().clone()),
                "root",
                "10.0.0.1".parse().unwrap(),
            )
        };
        assert!(as_peer(&a).is_ok() && as_peer(&b).is_ok());
        std::fs::write(&cfg, format!("{head}{}", peer(&a, "a"))).unwrap();
        settle(&store);
        assert!(as_peer(&a).is_ok());
        assert!(as_peer(&b).is_err(), "removed peer refused");
        // A broken configuration keeps the previous peers.
        std::fs::write(&cfg, format!("{head}[[peer]]\nname = 1\n")).unwrap();
        settle(&store);
        assert!(as_peer(&a).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// KRLs as `ssh-keygen -k` writes them: a plain key, and certificates by serial and key ID.
    #[test]
    fn krl_from_ssh_keygen_revokes_keys_serials_and_key_ids() {
        use russh::keys::ssh_key::certificate::Builder;
        if std::process::Command::new("ssh-keygen").arg("-?").output().is_err() {
            eprintln!("ssh-keygen missing: skipped");
            return;
        }
        let d = dir();
        let (a, b, ca, user) = (key(), key(), key(), key());
        let (ak, krl, ca_pub, a_pub, spec) = (
            d.join("ak"),
            d.join("krl"),
            d.join("ca.pub"),
            d.join("a.pub"),
            d.join("spec"),
        );
        std::fs::write(&ak, line(&a) + &line(&b)).unwrap();
        std::fs::write(&ca_pub, line(&ca)).unwrap();
        std::fs::write(&a_pub, line(&a)).unwrap();
        std::fs::write(&spec, "serial: 5\nserial: 10-20\nid: lost-laptop\n").unwrap();
        let keygen = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("ssh-keygen").args(args).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        };
        keygen(&[
            "-q".as_ref(),
            "-k".as_ref(),
            "-f".as_ref(),
            krl.as_os_str(),
            "-s".as_ref(),
            ca_pub.as_os_str(),
            spec.as_os_str(),
        ]);
        keygen(&[
            "-q".as_ref(),
            "-k".as_ref(),
            "-u".as_ref(),
            "-f".as_ref(),
            krl.as_os_str(),
            a_pub.as_os_str(),
        ]);
        let cas = d.join("cas");
        std::fs::write(&cas, line(&ca)).unwrap();
        let store = KeyStore::load(Some(&ak), Some(&cas), Some(&krl)).unwrap();
        assert!(allowed(&store, &a).unwrap_err().to_string().contains("revoked"));
        assert!(allowed(&store, &b).is_ok());
        let cert = |serial: u64, id: &str| {
            let mut bld = Builder::new(vec![2u8; 32], user.public_key().key_data().clone(), 0, u64::MAX).unwrap();
            bld.cert_type(CertType::User).unwrap();
            bld.serial(serial).unwrap();
            bld.key_id(id).unwrap();
            bld.valid_principal("root").unwrap();
            let c = bld.sign(&ca).unwrap();
            store.authorize(
                &Peers::default(),
                false,
                &Credential::Cert(Box::new(c)),
                "root",
                "10.0.0.1".parse().unwrap(),
            )
        };
        assert!(cert(4, "ok").is_ok());
        assert!(cert(5, "ok").unwrap_err().to_string().contains("revoked"));
        assert!(cert(15, "ok").is_err());
        assert!(cert(21, "ok").is_ok());
        assert!(cert(30, "lost-laptop").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn certificate_identity_is_one_bounded_token() {
        let ca = key();
        let user = key();
        use russh::keys::ssh_key::certificate::Builder;
        let mut b = Builder::new(vec![1u8; 32], user.public_key().key_data().clone(), 0, u64::MAX).unwrap();
        b.cert_type(CertType::User).unwrap();
        b.key_id("carol's laptop #2:x").unwrap();
        b.valid_principal("carol").unwrap();
        let cert = b.sign(&ca).unwrap();
        let ca_fp = ca.public_key().fingerprint(HashAlg::Sha256);
        assert_eq!(cert_identity(&cert, "carol"), format!("cert:{ca_fp}:carol"));
        assert_eq!(cert_identity(&cert, "a b#c"), format!("cert:{ca_fp}:a_b_c"));
    }
}
