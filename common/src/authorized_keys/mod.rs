//! OpenSSH `authorized_keys` with key options, read as sshd(8) reads it (AUTHORIZED_KEYS FILE
//! FORMAT), and the decisions that follow from it: may this key (or this user certificate)
//! connect from this address now, and if not, why not.
//!
//! Honoured: `from="pattern-list"` (address / CIDR / wildcard patterns, `!` negation),
//! `expiry-time="YYYYMMDD[HHMM[SS]][Z]"` (local time unless `Z`), `cert-authority` with
//! `principals="..."`, and `restrict` (no tunnel, as sshd's `server_request_tun`). The options
//! column is parsed as sshd parses it ([`options`]); what a tunnel cannot honour (`command=`,
//! `verify-required`, `no-touch-required`, security-key user keys) makes that line unusable,
//! like an unknown or malformed option, with a warning naming the line.
//! Pure: no I/O, time is passed in.

use std::net::IpAddr;
use std::time::SystemTime;

use ipnet::IpNet;

mod options;
pub use options::{KeyOptions, TunnelDevice, parse_option_column, split_options};
use russh::keys::PublicKey;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::{self, Certificate, Fingerprint, HashAlg, public::KeyData};

/// Longest line considered (sshd's limit is 16 KiB per line too).
pub const MAX_LINE: usize = 16 * 1024;
/// Patterns in one `from=` / `principals=` list, at most.
pub(crate) const MAX_LIST: usize = 256;

/// One usable line.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    /// 1-based line number in its file.
    pub line: usize,
    pub options: KeyOptions,
    pub key: PublicKey,
}

/// Why one line of an `authorized_keys` file or of a key list is unusable. A cause from the key
/// parser is the source, not repeated in the message ([`LineError`] and `{:#}` print it once).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizedKeysError {
    #[error("line longer than {} bytes", MAX_LINE)]
    TooLong,
    /// The options column is malformed, or an option makes the key unusable.
    #[error(transparent)]
    Option(#[from] KeyOptionError),
    #[error("a certificate is not a key: list its CA with cert-authority instead")]
    CertificateNotKey,
    #[error("unknown key type {0:?}")]
    UnknownKeyType(String),
    #[error("security-key ({0}) user keys are not supported: sshvpnd cannot check their user-presence flag")]
    SecurityKey(String),
    #[error("unreadable key")]
    UnreadableKey(#[source] ssh_key::Error),
    /// A key list's certificate line (its key is listed) whose certificate cannot be read.
    #[error("unreadable certificate")]
    BadCertificate(#[source] ssh_key::Error),
    /// A key list's line that is not a public key.
    #[error("not a public key")]
    NotAPublicKey(#[source] ssh_key::Error),
}

/// What is wrong with the options column of a line (sshd rejects the line for any of these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyOptionError {
    #[error("option {name}= needs a double-quoted value")]
    Unquoted { name: String },
    #[error("option {name}= has no closing quote")]
    NoClosingQuote { name: String },
    #[error("options but no key")]
    NoKey,
    #[error("option {name} takes no value")]
    TakesNoValue { name: String },
    #[error("{name}= given twice")]
    Twice { name: &'static str },
    #[error("unknown option {name:?}")]
    Unknown { name: String },
    #[error("options end with a comma")]
    TrailingComma,
    #[error("{name}=\"{value}\" is not valid")]
    BadValue { name: &'static str, value: String },
    #[error("verify-required (FIDO user verification) cannot be checked by sshvpnd: key not usable")]
    VerifyRequired,
    #[error("no-touch-required (FIDO) cannot be honoured by sshvpnd: key not usable")]
    NoTouchRequired,
    #[error("command= (a forced command) cannot be honoured by a VPN tunnel: key not usable")]
    ForcedCommand,
    #[error("from= lists more than {} patterns", MAX_LIST)]
    FromTooLong,
    #[error("from=\"{list}\" has an empty pattern")]
    FromEmptyPattern { list: String },
    #[error("from= pattern {pattern:?} is not a valid network (address/prefix, no host bits)")]
    FromBadNetwork { pattern: String },
    #[error("expiry-time=\"{value}\" is not YYYYMMDD[HHMM[SS]][Z]")]
    BadExpiry { value: String },
    #[error("principals=\"{value}\" is not a list of names")]
    BadPrincipals { value: String },
    #[error("principals= is only allowed with cert-authority")]
    PrincipalsWithoutCertAuthority,
}

/// Why a line's restrictions (`expiry-time=`, `from=`) refuse a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionRefusal {
    #[error("expired (expiry-time {})", format_time(.expiry))]
    Expired { expiry: SystemTime },
    #[error("source {addr} does not match from=\"{}\"", .from.join(","))]
    Source { addr: IpAddr, from: Vec<String> },
}

/// Why a user certificate is refused (by [`check_user_cert`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    #[error("it is a host certificate, not a user certificate")]
    HostCertificate,
    #[error("it is signed by another CA")]
    OtherCa,
    #[error("its signature is invalid")]
    BadSignature,
    #[error("not valid before {}", format_unix(*.after))]
    NotYetValid { after: u64 },
    #[error("expired at {}", format_unix(*.before))]
    Expired { before: u64 },
    #[error("it names no principals")]
    NoPrincipals,
    #[error("none of its principals ({}) is in principals=\"{}\"", .principals.join(","), .allowed.join(","))]
    PrincipalNotAllowed {
        principals: Vec<String>,
        allowed: Vec<String>,
    },
    #[error("user {user:?} is not among its principals ({})", .principals.join(","))]
    UserNotPrincipal { user: String, principals: Vec<String> },
    #[error("its source-address {value:?} is not a CIDR list")]
    BadSourceAddress { value: String },
    #[error("source {addr} is not in its source-address {value}")]
    SourceAddress { addr: IpAddr, value: String },
    #[error("it has a force-command, which a VPN tunnel cannot honour")]
    ForceCommand,
    #[error("it has verify-required (FIDO user verification), which sshvpnd cannot check")]
    VerifyRequired,
    #[error("its key is a security key ({0}), whose user-presence flag sshvpnd cannot check")]
    SecurityKey(String),
    #[error("unknown critical option {name:?}")]
    UnknownCriticalOption { name: String },
}

/// Why [`AuthorizedKeysFile::authorize_key`] refuses a plain key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error("not in authorized keys")]
    NotListed,
    #[error("line {line} lists it as a cert-authority, which only signs certificates")]
    CertAuthority { line: usize },
    /// sshd refuses tunnel forwarding to a `restrict` key (serverloop.c `server_request_tun`).
    #[error("line {line}: restrict: no tunnel forwarding")]
    Restricted { line: usize },
    /// The first line listing the key refuses the request.
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: OptionRefusal },
}

/// Why [`AuthorizedKeysFile::authorize_cert`] refuses a user certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaRefusal {
    #[error("its CA is not a cert-authority in authorized keys")]
    NotListed,
    /// The CA's line has `restrict`: sshd refuses tunnel forwarding.
    #[error("line {line}: restrict: no tunnel forwarding")]
    Restricted { line: usize },
    /// The first `cert-authority` line of its CA refuses the request.
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: OptionRefusal },
    /// The certificate itself is refused (for the first `cert-authority` line of its CA).
    #[error("line {line}: {reason}")]
    Certificate { line: usize, reason: CertRefusal },
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in its file.
    pub line: usize,
    pub error: AuthorizedKeysError,
}

impl LineError {
    /// Why, followed by the parser's error if there is one (`unreadable key: ...`): the text
    /// of the warnings and logs that name the line. The parser's message already includes its
    /// own causes, so only that one is added.
    pub fn message(&self) -> String {
        match std::error::Error::source(&self.error) {
            Some(cause) => format!("{}: {cause}", self.error),
            None => self.error.to_string(),
        }
    }
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message())
    }
}

/// A parsed `authorized_keys` file: the usable lines, and the ones skipped.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeysFile {
    pub entries: Vec<AuthorizedKey>,
    pub errors: Vec<LineError>,
}

/// Who is asking: the login user name, where the connection comes from, and when.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub user: &'a str,
    pub source: IpAddr,
    pub now: SystemTime,
}

/// What allowed a certificate: the principal it was accepted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertGrant {
    pub principal: String,
    /// The `authorized_keys` line of the CA (None for a CA from a trusted-CA file).
    pub line: Option<usize>,
}

impl AuthorizedKeysFile {
    /// Parses the whole text; every skipped line is in `errors`.
    pub fn parse(text: &str) -> AuthorizedKeysFile {
        let mut file = AuthorizedKeysFile::default();
        for (idx, raw) in text.lines().enumerate() {
            match parse_line(raw) {
                Ok(Some((options, key))) => file.entries.push(AuthorizedKey {
                    line: idx + 1,
                    options,
                    key,
                }),
                Ok(None) => {}
                Err(error) => file.errors.push(LineError { line: idx + 1, error }),
            }
        }
        file
    }

    /// Whether `key` is listed as a user key (whatever its options say).
    pub fn lists_key(&self, key: &KeyData) -> bool {
        self.entries
            .iter()
            .any(|e| !e.options.cert_authority && e.key.key_data() == key)
    }

    /// Whether some line is a `cert-authority` line.
    pub fn has_cert_authorities(&self) -> bool {
        self.entries.iter().any(|e| e.options.cert_authority)
    }

    /// sshd's decision for a plain key: the first line listing the key whose options allow the
    /// request wins (Ok: its line number); otherwise the reason the first listing line refused.
    /// `cert-authority` lines never match a plain key.
    pub fn authorize_key(&self, key: &KeyData, req: &Request<'_>) -> Result<usize, KeyRefusal> {
        let mut refusal = None;
        for e in self.entries.iter().filter(|e| e.key.key_data() == key) {
            if e.options.cert_authority {
                refusal.get_or_insert(KeyRefusal::CertAuthority { line: e.line });
                continue;
            }
            match e.options.check(req) {
                Ok(()) if e.options.restricted => return Err(KeyRefusal::Restricted { line: e.line }),
                Ok(()) => return Ok(e.line),
                Err(reason) => {
                    refusal.get_or_insert(KeyRefusal::Line { line: e.line, reason });
                }
            }
        }
        Err(refusal.unwrap_or(KeyRefusal::NotListed))
    }

    /// sshd's decision for a user certificate against the `cert-authority` lines: the CA must be
    /// listed, its line's options must allow the request, and the certificate must be valid for
    /// the user (or, with `principals=`, for one of those principals).
    pub fn authorize_cert(&self, cert: &Certificate, req: &Request<'_>) -> Result<CertGrant, CaRefusal> {
        let mut refusal = None;
        for e in self
            .entries
            .iter()
            .filter(|e| e.options.cert_authority && e.key.key_data() == cert.signature_key())
        {
            let r = e
                .options
                .check(req)
                .map_err(|reason| CaRefusal::Line { line: e.line, reason })
                .and_then(|()| {
                    check_user_cert(cert, e.key.key_data(), e.options.principals.as_deref(), req)
                        .map_err(|reason| CaRefusal::Certificate { line: e.line, reason })
                });
            match r {
                Ok(_) if e.options.restricted => return Err(CaRefusal::Restricted { line: e.line }),
                Ok(principal) => {
                    return Ok(CertGrant {
                        principal,
                        line: Some(e.line),
                    });
                }
                Err(why) => {
                    refusal.get_or_insert(why);
                }
            }
        }
        Err(refusal.unwrap_or(CaRefusal::NotListed))
    }
}

impl KeyOptions {
    /// Whether the line's restrictions allow `req`.
    pub fn check(&self, req: &Request<'_>) -> Result<(), OptionRefusal> {
        if let Some(expiry) = self.expiry
            && req.now > expiry
        {
            return Err(OptionRefusal::Expired { expiry });
        }
        if let Some(from) = &self.from
            && !match_source(from, req.source)
        {
            return Err(OptionRefusal::Source {
                addr: req.source,
                from: from.clone(),
            });
        }
        Ok(())
    }
}

/// Checks a user certificate signed by `ca` (already known to be trusted) for `req`: type,
/// signature, validity period, principals (the user name, or with `allowed` one of those),
/// and critical options (`source-address` honoured; `force-command` cannot be; others unknown).
/// Ok: the principal it is accepted for.
pub fn check_user_cert(
    cert: &Certificate,
    ca: &KeyData,
    allowed: Option<&[String]>,
    req: &Request<'_>,
) -> Result<String, CertRefusal> {
    if cert.cert_type() != CertType::User {
        return Err(CertRefusal::HostCertificate);
    }
    if cert.signature_key() != ca {
        return Err(CertRefusal::OtherCa);
    }
    if is_security_key(cert.public_key()) {
        return Err(CertRefusal::SecurityKey(cert.public_key().algorithm().to_string()));
    }
    let now = unix_seconds(req.now);
    let fp: Fingerprint = ca.fingerprint(HashAlg::Sha256);
    if cert.validate_at(now, [&fp]).is_err() {
        if cert.verify_signature().is_err() {
            return Err(CertRefusal::BadSignature);
        }
        return Err(if now < cert.valid_after() {
            CertRefusal::NotYetValid {
                after: cert.valid_after(),
            }
        } else {
            CertRefusal::Expired {
                before: cert.valid_before(),
            }
        });
    }
    let principals = cert.valid_principals();
    if principals.is_empty() {
        return Err(CertRefusal::NoPrincipals);
    }
    let principal = match allowed {
        Some(list) => principals
            .iter()
            .find(|p| list.iter().any(|a| a == *p))
            .cloned()
            .ok_or_else(|| CertRefusal::PrincipalNotAllowed {
                principals: principals.to_vec(),
                allowed: list.to_vec(),
            })?,
        None => principals
            .iter()
            .find(|p| p.as_str() == req.user)
            .cloned()
            .ok_or_else(|| CertRefusal::UserNotPrincipal {
                user: req.user.to_string(),
                principals: principals.to_vec(),
            })?,
    };
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "source-address" => {
                let list: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
                let mut ok = false;
                for entry in &list {
                    match parse_net(entry) {
                        Some(net) => ok |= net.contains(&canonical(req.source)),
                        None => return Err(CertRefusal::BadSourceAddress { value: value.clone() }),
                    }
                }
                if !ok {
                    return Err(CertRefusal::SourceAddress {
                        addr: req.source,
                        value: value.clone(),
                    });
                }
            }
            // A FIDO user-verification requirement: russh does not expose the signature's flags.
            "verify-required" => return Err(CertRefusal::VerifyRequired),
            "force-command" => return Err(CertRefusal::ForceCommand),
            other => {
                return Err(CertRefusal::UnknownCriticalOption {
                    name: other.to_string(),
                });
            }
        }
    }
    Ok(principal)
}

/// Parses one line: Ok(None) for blank and comment lines.
pub fn parse_line(raw: &str) -> Result<Option<(KeyOptions, PublicKey)>, AuthorizedKeysError> {
    if raw.len() > MAX_LINE {
        return Err(AuthorizedKeysError::TooLong);
    }
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let first = line.split_ascii_whitespace().next().unwrap_or_default();
    let (options, rest) = if is_key_type(first) {
        (KeyOptions::default(), line)
    } else {
        let (column, rest) = split_options(line)?;
        if rest.trim().is_empty() {
            return Err(KeyOptionError::NoKey.into());
        }
        (parse_option_column(column)?, rest)
    };
    let rest = rest.trim_start();
    let kind = rest.split_ascii_whitespace().next().unwrap_or_default();
    if kind.contains("-cert-v01@openssh.com") {
        return Err(AuthorizedKeysError::CertificateNotKey);
    }
    if !is_key_type(kind) {
        return Err(AuthorizedKeysError::UnknownKeyType(kind.to_string()));
    }
    let key = PublicKey::from_openssh(rest).map_err(AuthorizedKeysError::UnreadableKey)?;
    if is_security_key(key.key_data()) && !options.cert_authority {
        return Err(AuthorizedKeysError::SecurityKey(key.algorithm().to_string()));
    }
    Ok(Some((options, key)))
}

/// A FIDO security key (`sk-...`): its signatures carry user-presence / verification flags
/// that russh verifies but does not expose, so sshvpnd cannot enforce them.
pub fn is_security_key(key: &KeyData) -> bool {
    matches!(key, KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_))
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-sha2-") || s.starts_with("sk-")
}

/// `ADDR/LEN` with no host bits set, or a bare address.
pub(crate) fn parse_net(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return (net.trunc() == net).then_some(net);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// IPv4-mapped IPv6 sources are matched as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// sshd's `match_host_and_ip` with the address as the host name (UseDNS no): an entry matches
/// as a network (CIDR or bare address) or as a `*`/`?` wildcard against the address text. Any
/// negated match refuses, whatever else matches; otherwise a positive match accepts.
pub fn match_source(patterns: &[String], source: IpAddr) -> bool {
    let ip = canonical(source);
    let text = ip.to_string();
    let mut positive = false;
    for p in patterns {
        let (negated, body) = match p.strip_prefix('!') {
            Some(b) => (true, b),
            None => (false, p.as_str()),
        };
        let hit = match parse_net(body) {
            Some(net) => net.contains(&ip),
            None => crate::known_hosts::glob(body, &text),
        };
        if hit && negated {
            return false;
        }
        positive |= hit;
    }
    positive
}

/// `YYYYMMDD[HHMM[SS]][Z]`: local time unless it ends in `Z` (UTC), as sshd reads it.
pub fn parse_expiry(s: &str) -> Option<SystemTime> {
    use chrono::{NaiveDate, TimeZone};
    let (digits, utc) = match s.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (s, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|d| d.parse::<u32>().ok());
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(4..6)?, num(6..8)?)?;
    let (h, m, sec) = match digits.len() {
        8 => (0, 0, 0),
        12 => (num(8..10)?, num(10..12)?, 0),
        _ => (num(8..10)?, num(10..12)?, num(12..14)?),
    };
    let naive = date.and_hms_opt(h, m, sec)?;
    let ts = if utc {
        naive.and_utc().timestamp()
    } else {
        chrono::Local.from_local_datetime(&naive).earliest()?.timestamp()
    };
    let secs = u64::try_from(ts).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn format_unix(secs: u64) -> String {
    if secs == u64::MAX {
        return "forever".into();
    }
    match chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => secs.to_string(),
    }
}

fn format_time(t: &SystemTime) -> String {
    format_unix(unix_seconds(*t))
}

/// A plain list of public keys, one per line (TrustedUserCAKeys, or revoked keys), with
/// comments and blank lines. Every line that is not a key is an error.
pub fn parse_key_list(text: &str) -> (Vec<PublicKey>, Vec<LineError>) {
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() > MAX_LINE {
            errors.push(LineError {
                line: idx + 1,
                error: AuthorizedKeysError::TooLong,
            });
            continue;
        }
        // A certificate line lists its key (ssh-keygen -k would list the certificate itself).
        if line
            .split_ascii_whitespace()
            .next()
            .is_some_and(|k| k.contains("-cert-v01@openssh.com"))
        {
            match Certificate::from_openssh(line) {
                Ok(c) => keys.push(PublicKey::new(c.public_key().clone(), "")),
                Err(e) => errors.push(LineError {
                    line: idx + 1,
                    error: AuthorizedKeysError::BadCertificate(e),
                }),
            }
            continue;
        }
        match PublicKey::from_openssh(line) {
            Ok(k) => keys.push(k),
            Err(e) => errors.push(LineError {
                line: idx + 1,
                error: AuthorizedKeysError::NotAPublicKey(e),
            }),
        }
    }
    (keys, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::{Algorithm, PrivateKey};
    use std::time::Duration;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn line(k: &PrivateKey) -> String {
        k.public_key().to_openssh().unwrap()
    }

    fn req(source: &str) -> Request<'static> {
        Request {
            user: "carol",
            source: source.parse().unwrap(),
            now: SystemTime::now(),
        }
    }

    fn pats(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn options_with_quotes_escapes_and_case() {
        let k = key();
        let text = format!(
            "NO-PTY,from=\"10.0.0.0/8,!10.9.9.9\",environment=\"A=\\\"b c\\\"\",restrict {} c@x",
            line(&k)
        );
        let (opts, key) = parse_line(&text).unwrap().unwrap();
        assert_eq!(key.key_data(), k.public_key().key_data());
        assert_eq!(opts.from, Some(pats("10.0.0.0/8,!10.9.9.9")));
        assert!(!opts.cert_authority);
        assert_eq!(parse_line("  # comment").unwrap(), None);
        assert_eq!(parse_line("").unwrap(), None);
    }

    #[test]
    fn malformed_and_unknown_options_reject_the_line() {
        let l = line(&key());
        for bad in [
            format!("frobnicate {l}"),
            format!("from=10.0.0.1 {l}"),
            format!("from=\"10.0.0.1 {l}"),
            format!("from=\"10.0.0.1/33\" {l}"),
            format!("from=\"10.0.0.1/8\" {l}"),
            format!("expiry-time=\"2026131\" {l}"),
            format!("expiry-time=\"20261301\" {l}"),
            format!("principals=\"carol\" {l}"),
            format!("command=\"/bin/backup\" {l}"),
            format!("no-pty=\"x\" {l}"),
            format!("cert-authority,no-pty, {l}"),
            "no-pty".to_string(),
            "ssh-ed25519 AAAAnotbase64".to_string(),
        ] {
            assert!(parse_line(&bad).is_err(), "accepted: {bad}");
        }
        let text = format!("{l}\nfrobnicate {l}\n\n{l}\n");
        let f = AuthorizedKeysFile::parse(&text);
        assert_eq!(f.entries.iter().map(|e| e.line).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(f.errors.len(), 1);
        assert_eq!(f.errors[0].line, 2);
        assert!(
            f.errors[0].to_string().contains("unknown option \"frobnicate\""),
            "{}",
            f.errors[0]
        );
    }

    #[test]
    fn from_patterns_negation_overrides_wherever_it_is() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = pats("10.210.1.0/24");
        assert!(match_source(&p, ip("10.210.1.7")));
        assert!(!match_source(&p, ip("10.210.2.7")));
        // Negation overrides, whatever the order.
        for list in ["!10.210.1.5,10.210.1.0/24", "10.210.1.0/24,!10.210.1.5"] {
            let p = pats(list);
            assert!(!match_source(&p, ip("10.210.1.5")), "{list}");
            assert!(match_source(&p, ip("10.210.1.6")), "{list}");
        }
        // Wildcards on the address text, bare addresses, IPv6, IPv4-mapped.
        assert!(match_source(&pats("10.1.*"), ip("10.1.200.3")));
        assert!(match_source(&pats("10.1.2.?"), ip("10.1.2.3")));
        assert!(!match_source(&pats("10.1.2.?"), ip("10.1.2.33")));
        assert!(match_source(&pats("192.0.2.1"), ip("192.0.2.1")));
        assert!(match_source(&pats("fd00::/16"), ip("fd00:1::2")));
        assert!(match_source(&pats("10.0.0.0/8"), ip("::ffff:10.1.1.1")));
        // Only negative patterns: nothing is accepted.
        assert!(!match_source(&pats("!10.0.0.1"), ip("10.0.0.2")));
        assert!(!match_source(&pats("*,!10.0.0.1"), ip("10.0.0.1")));
        assert!(match_source(&pats("*,!10.0.0.1"), ip("10.0.0.2")));
    }

    #[test]
    fn first_permitting_line_wins_and_cert_authority_lines_are_not_user_keys() {
        let k = key();
        let l = line(&k);
        let text = format!(
            "from=\"10.1.0.0/16\" {l}\nfrom=\"10.2.0.0/16\" {l}\ncert-authority {}\n",
            line(&key())
        );
        let f = AuthorizedKeysFile::parse(&text);
        assert_eq!(f.authorize_key(k.public_key().key_data(), &req("10.1.0.1")), Ok(1));
        assert_eq!(f.authorize_key(k.public_key().key_data(), &req("10.2.0.1")), Ok(2));
        let why = f
            .authorize_key(k.public_key().key_data(), &req("10.3.0.1"))
            .unwrap_err()
            .to_string();
        assert!(why.starts_with("line 1: source 10.3.0.1 does not match"), "{why}");
        let ca = key();
        let f = AuthorizedKeysFile::parse(&format!("cert-authority {}\n", line(&ca)));
        assert!(f.authorize_key(ca.public_key().key_data(), &req("10.1.0.1")).is_err());
        assert!(f.has_cert_authorities());
        assert!(!f.lists_key(ca.public_key().key_data()));
        let other = key();
        assert_eq!(
            f.authorize_key(other.public_key().key_data(), &req("10.1.0.1")),
            Err(KeyRefusal::NotListed)
        );
    }

    #[test]
    fn expiry_time_utc_and_local() {
        let t = parse_expiry("20300102Z").unwrap();
        assert_eq!(unix_seconds(t), 1_893_542_400);
        assert_eq!(
            unix_seconds(parse_expiry("203001020304Z").unwrap()),
            1_893_542_400 + 3 * 3600 + 4 * 60
        );
        assert_eq!(
            unix_seconds(parse_expiry("20300102030405z").unwrap()),
            1_893_542_400 + 3 * 3600 + 4 * 60 + 5
        );
        // Local time: equal to UTC shifted by the local offset on that date.
        let local = unix_seconds(parse_expiry("20300102").unwrap()) as i64;
        let offset = {
            use chrono::{Offset, TimeZone};
            let naive = chrono::NaiveDate::from_ymd_opt(2030, 1, 2)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap();
            chrono::Local
                .from_local_datetime(&naive)
                .earliest()
                .unwrap()
                .offset()
                .fix()
                .local_minus_utc() as i64
        };
        assert_eq!(local, 1_893_542_400 - offset);
        for bad in [
            "2030010",
            "203001021",
            "20301302",
            "20300230",
            "2030010224",
            "2030x102",
            "",
        ] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
        let k = key();
        let past = format!("expiry-time=\"20200101Z\" {}", line(&k));
        let f = AuthorizedKeysFile::parse(&past);
        let why = f
            .authorize_key(k.public_key().key_data(), &req("10.0.0.1"))
            .unwrap_err()
            .to_string();
        assert!(why.contains("expired"), "{why}");
        let future = format!("expiry-time=\"20991231Z\" {}", line(&k));
        let f = AuthorizedKeysFile::parse(&future);
        assert_eq!(f.authorize_key(k.public_key().key_data(), &req("10.0.0.1")), Ok(1));
        // An hour later the same line refuses.
        let later = Request {
            now: parse_expiry("20991231Z").unwrap() + Duration::from_secs(3600),
            ..req("10.0.0.1")
        };
        assert!(f.authorize_key(k.public_key().key_data(), &later).is_err());
    }

    fn cert(ca: &PrivateKey, user: &PrivateKey, principals: &[&str], after: u64, before: u64) -> Certificate {
        use russh::keys::ssh_key::certificate::Builder;
        let mut b = Builder::new(vec![7u8; 32], user.public_key().key_data().clone(), after, before).unwrap();
        b.cert_type(CertType::User).unwrap();
        b.key_id("laptop").unwrap();
        for p in principals {
            b.valid_principal(*p).unwrap();
        }
        if principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        b.sign(ca).unwrap()
    }

    #[test]
    fn user_certificates_against_cert_authority_lines() {
        let (ca, user, other_ca) = (key(), key(), key());
        let now = unix_seconds(SystemTime::now());
        let good = cert(&ca, &user, &["carol", "ops"], now - 60, now + 3600);
        let f = AuthorizedKeysFile::parse(&format!("cert-authority {}\n", line(&ca)));
        assert_eq!(f.authorize_cert(&good, &req("10.0.0.1")).unwrap().principal, "carol");
        let dave = Request {
            user: "dave",
            ..req("10.0.0.1")
        };
        let why = f.authorize_cert(&good, &dave).unwrap_err().to_string();
        assert!(why.contains("not among its principals"), "{why}");
        let expired = cert(&ca, &user, &["carol"], now - 7200, now - 3600);
        assert!(
            f.authorize_cert(&expired, &req("10.0.0.1"))
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        let early = cert(&ca, &user, &["carol"], now + 3600, now + 7200);
        assert!(
            f.authorize_cert(&early, &req("10.0.0.1"))
                .unwrap_err()
                .to_string()
                .contains("not valid before")
        );
        let none = cert(&ca, &user, &[], now - 60, now + 3600);
        assert!(
            f.authorize_cert(&none, &req("10.0.0.1"))
                .unwrap_err()
                .to_string()
                .contains("no principals")
        );
        let foreign = cert(&other_ca, &user, &["carol"], now - 60, now + 3600);
        assert!(f.authorize_cert(&foreign, &req("10.0.0.1")).is_err());
        // principals= replaces the user-name rule; from= applies to the CA line.
        let f = AuthorizedKeysFile::parse(&format!(
            "cert-authority,principals=\"ops,admins\",from=\"10.0.0.0/8\" {}\n",
            line(&ca)
        ));
        assert_eq!(f.authorize_cert(&good, &dave).unwrap().principal, "ops");
        assert!(
            f.authorize_cert(&good, &req("192.168.0.1"))
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
        // A plain user key line for the CA's key does not make it a CA.
        let f = AuthorizedKeysFile::parse(&format!("{}\n", line(&ca)));
        assert!(f.authorize_cert(&good, &req("10.0.0.1")).is_err());
    }

    #[test]
    fn certificate_critical_options() {
        use russh::keys::ssh_key::certificate::Builder;
        let (ca, user) = (key(), key());
        let now = unix_seconds(SystemTime::now());
        let with = |name: &str, value: &str| {
            let mut b = Builder::new(vec![7u8; 32], user.public_key().key_data().clone(), now - 60, now + 60).unwrap();
            b.cert_type(CertType::User).unwrap();
            b.valid_principal("carol").unwrap();
            b.critical_option(name, value).unwrap();
            b.sign(&ca).unwrap()
        };
        let ca_data = ca.public_key().key_data();
        let c = with("source-address", "10.0.0.0/8,192.0.2.7");
        assert!(check_user_cert(&c, ca_data, None, &req("10.3.3.3")).is_ok());
        assert!(check_user_cert(&c, ca_data, None, &req("192.0.2.7")).is_ok());
        assert!(check_user_cert(&c, ca_data, None, &req("192.0.2.8")).is_err());
        assert!(check_user_cert(&with("force-command", "/bin/true"), ca_data, None, &req("10.0.0.1")).is_err());
        assert!(check_user_cert(&with("no-such-option", ""), ca_data, None, &req("10.0.0.1")).is_err());
    }

    /// The typed errors print what sshd-style warnings, logs and the audit log showed before.
    #[test]
    fn messages_name_the_option_and_keep_their_cause() {
        let l = line(&key());
        let msg = |text: String| parse_line(&text).unwrap_err();
        for (text, expected) in [
            (format!("frobnicate {l}"), "unknown option \"frobnicate\"".to_string()),
            (
                format!("from=10.0.0.1 {l}"),
                "option from= needs a double-quoted value".into(),
            ),
            (
                format!("from=\"10.0.0.1 {l}"),
                "option from= has no closing quote".into(),
            ),
            (
                format!("from=\"10.0.0.1/8\" {l}"),
                "from= pattern \"10.0.0.1/8\" is not a valid network (address/prefix, no host bits)".into(),
            ),
            (
                format!("from=\"a,,b\" {l}"),
                "from=\"a,,b\" has an empty pattern".into(),
            ),
            (format!("from=\"a\",from=\"b\" {l}"), "from= given twice".into()),
            (
                format!("expiry-time=\"2026131\" {l}"),
                "expiry-time=\"2026131\" is not YYYYMMDD[HHMM[SS]][Z]".into(),
            ),
            (
                format!("principals=\"carol\" {l}"),
                "principals= is only allowed with cert-authority".into(),
            ),
            (
                format!("cert-authority,principals=\"a,\" {l}"),
                "principals=\"a,\" is not a list of names".into(),
            ),
            (
                format!("cert-authority=\"x\" {l}"),
                "option cert-authority takes no value".into(),
            ),
            (format!("permitopen {l}"), "unknown option \"permitopen\"".into()),
            (
                format!("command=\"/bin/backup\" {l}"),
                "command= (a forced command) cannot be honoured by a VPN tunnel: key not usable".into(),
            ),
            (format!("cert-authority,no-pty, {l}"), "options end with a comma".into()),
            (format!("no-pty;x {l}"), "unknown option \"no-pty;x\"".into()),
            ("no-pty".into(), "options but no key".into()),
            ("no-pty foo AAAA".into(), "unknown key type \"foo\"".into()),
            (
                "ssh-ed25519-cert-v01@openssh.com AAAA".into(),
                "a certificate is not a key: list its CA with cert-authority instead".into(),
            ),
            ("x".repeat(MAX_LINE + 1), format!("line longer than {MAX_LINE} bytes")),
        ] {
            assert_eq!(msg(text.clone()).to_string(), expected, "{text}");
        }
        // A parser error is the source, printed once after the message.
        let f = AuthorizedKeysFile::parse("ssh-ed25519 AAAAnotbase64\n");
        let e = &f.errors[0];
        assert!(matches!(e.error, AuthorizedKeysError::UnreadableKey(_)), "{e:?}");
        assert_eq!(e.error.to_string(), "unreadable key");
        let cause = std::error::Error::source(&e.error).expect("a source").to_string();
        assert_eq!(e.to_string(), format!("line 1: unreadable key: {cause}"));
        let (_, errors) = parse_key_list("ssh-ed25519 AAAAnotbase64\n");
        assert!(errors[0].message().starts_with("not a public key: "), "{}", errors[0]);
    }

    #[test]
    fn refusals_print_the_reason_sshd_would_log() {
        let k = key();
        let f = AuthorizedKeysFile::parse(&format!("cert-authority {}\n", line(&k)));
        assert_eq!(
            f.authorize_key(k.public_key().key_data(), &req("10.0.0.1"))
                .unwrap_err()
                .to_string(),
            "line 1 lists it as a cert-authority, which only signs certificates"
        );
        let f = AuthorizedKeysFile::parse(&format!("from=\"10.1.0.0/16,!10.1.2.3\" {}\n", line(&k)));
        assert_eq!(
            f.authorize_key(k.public_key().key_data(), &req("10.2.0.1")),
            Err(KeyRefusal::Line {
                line: 1,
                reason: OptionRefusal::Source {
                    addr: "10.2.0.1".parse().unwrap(),
                    from: pats("10.1.0.0/16,!10.1.2.3"),
                },
            })
        );
        assert_eq!(
            f.authorize_key(k.public_key().key_data(), &req("10.2.0.1"))
                .unwrap_err()
                .to_string(),
            "line 1: source 10.2.0.1 does not match from=\"10.1.0.0/16,!10.1.2.3\""
        );
        let f = AuthorizedKeysFile::parse(&format!("expiry-time=\"20200101Z\" {}\n", line(&k)));
        assert_eq!(
            f.authorize_key(k.public_key().key_data(), &req("10.0.0.1"))
                .unwrap_err()
                .to_string(),
            "line 1: expired (expiry-time 2020-01-01T00:00:00Z)"
        );
        let (ca, user) = (key(), key());
        let now = unix_seconds(SystemTime::now());
        let c = cert(&ca, &user, &["dave", "ops"], now - 60, now + 3600);
        let f = AuthorizedKeysFile::parse(&format!("cert-authority {}\n", line(&ca)));
        assert_eq!(
            f.authorize_cert(&c, &req("10.0.0.1")).unwrap_err().to_string(),
            "line 1: user \"carol\" is not among its principals (dave,ops)"
        );
        let f = AuthorizedKeysFile::parse(&format!("cert-authority,principals=\"admins\" {}\n", line(&ca)));
        assert_eq!(
            f.authorize_cert(&c, &req("10.0.0.1")).unwrap_err().to_string(),
            "line 1: none of its principals (dave,ops) is in principals=\"admins\""
        );
        let f = AuthorizedKeysFile::parse(&format!("{}\n", line(&ca)));
        assert_eq!(
            f.authorize_cert(&c, &req("10.0.0.1")).unwrap_err().to_string(),
            "its CA is not a cert-authority in authorized keys"
        );
        let old = cert(&ca, &user, &["carol"], 0, 86_400);
        assert_eq!(
            check_user_cert(&old, ca.public_key().key_data(), None, &req("10.0.0.1"))
                .unwrap_err()
                .to_string(),
            "expired at 1970-01-02T00:00:00Z"
        );
    }

    #[test]
    fn key_lists_report_bad_lines() {
        let k = key();
        let text = format!("# revoked\n{}\ngarbage\n", line(&k));
        let (keys, errors) = parse_key_list(&text);
        assert_eq!(keys.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 3);
    }

    const SK_ED25519: &str = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAICFo/k5LU8863u66YC9eUO2170QduohPURkQnbLa/dczAAAABHNzaDo= u@x";

    /// One line sshvpnd cannot honour makes that line unusable, never the others.
    #[test]
    fn unusable_lines_are_skipped_one_by_one() {
        let (a, b) = (key(), key());
        let text = format!(
            "command=\"/usr/bin/rrsync -ro /srv\" {}\nverify-required {}\nno-touch-required {}\n{SK_ED25519}\nfrom=\"a\",from=\"b\" {}\nfrobnicate {}\nbroken\n{}",
            line(&b),
            line(&b),
            line(&b),
            line(&b),
            line(&b),
            line(&a)
        );
        let f = AuthorizedKeysFile::parse(&text);
        assert_eq!(f.entries.iter().map(|e| e.line).collect::<Vec<_>>(), vec![8]);
        assert_eq!(
            f.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6, 7]
        );
        assert!(f.errors[3].to_string().contains("security-key"), "{}", f.errors[3]);
        assert_eq!(f.authorize_key(a.public_key().key_data(), &req("10.0.0.1")), Ok(8));
        assert!(f.authorize_key(b.public_key().key_data(), &req("10.0.0.1")).is_err());
        // An sk key may still be a CA (its signature on a certificate has no presence flag).
        let f = AuthorizedKeysFile::parse(&format!("cert-authority {SK_ED25519}\n"));
        assert!(f.errors.is_empty() && f.has_cert_authorities());
    }

    /// sshd refuses tunnel forwarding to `restrict` keys, whatever is re-enabled after it;
    /// `tunnel=` and the forwarding options do not.
    #[test]
    fn restrict_refuses_the_tunnel_and_other_options_do_not() {
        let k = key();
        let l = line(&k);
        let kd = k.public_key().key_data();
        for opts in [
            "restrict",
            "restrict,port-forwarding,permitopen=\"10.0.1.20:443\"",
            "restrict,pty,agent-forwarding,x11-forwarding,user-rc",
            "no-pty,RESTRICT",
        ] {
            let f = AuthorizedKeysFile::parse(&format!("{opts} {l}"));
            assert_eq!(f.errors, vec![], "{opts}");
            assert_eq!(
                f.authorize_key(kd, &req("10.0.0.1")),
                Err(KeyRefusal::Restricted { line: 1 }),
                "{opts}"
            );
        }
        for opts in [
            "no-port-forwarding",
            "tunnel=\"0\"",
            "tunnel=\"any\"",
            "permitopen=\"10.0.1.20:443\",no-agent-forwarding,no-x11-forwarding,no-pty,no-user-rc",
            "environment=\"A=b\"",
        ] {
            let f = AuthorizedKeysFile::parse(&format!("{opts} {l}"));
            assert_eq!(f.authorize_key(kd, &req("10.0.0.1")), Ok(1), "{opts}");
        }
        // The first line whose from= matches decides, as in sshd.
        let f = AuthorizedKeysFile::parse(&format!("from=\"10.9.0.0/16\" {l}\nrestrict {l}\n"));
        assert_eq!(f.authorize_key(kd, &req("10.9.0.1")), Ok(1));
        assert_eq!(
            f.authorize_key(kd, &req("10.0.0.1")),
            Err(KeyRefusal::Restricted { line: 2 })
        );
        // A restricted cert-authority line: its certificates get no tunnel either.
        let (ca, user) = (key(), key());
        let now = unix_seconds(SystemTime::now());
        let c = cert(&ca, &user, &["carol"], now - 60, now + 3600);
        let f = AuthorizedKeysFile::parse(&format!("cert-authority,restrict {}", line(&ca)));
        assert_eq!(
            f.authorize_cert(&c, &req("10.0.0.1")),
            Err(CaRefusal::Restricted { line: 1 })
        );
    }

    #[test]
    fn fido_requirements_on_certificates_are_refused() {
        use russh::keys::ssh_key::certificate::Builder;
        let (ca, user) = (key(), key());
        let now = unix_seconds(SystemTime::now());
        let mut b = Builder::new(vec![7u8; 32], user.public_key().key_data().clone(), now - 60, now + 60).unwrap();
        b.cert_type(CertType::User).unwrap();
        b.valid_principal("carol").unwrap();
        b.critical_option("verify-required", "").unwrap();
        let c = b.sign(&ca).unwrap();
        assert_eq!(
            check_user_cert(&c, ca.public_key().key_data(), None, &req("10.0.0.1")),
            Err(CertRefusal::VerifyRequired)
        );
        let sk = PublicKey::from_openssh(SK_ED25519).unwrap();
        let mut b = Builder::new(vec![7u8; 32], sk.key_data().clone(), now - 60, now + 60).unwrap();
        b.cert_type(CertType::User).unwrap();
        b.valid_principal("carol").unwrap();
        let c = b.sign(&ca).unwrap();
        assert!(matches!(
            check_user_cert(&c, ca.public_key().key_data(), None, &req("10.0.0.1")),
            Err(CertRefusal::SecurityKey(_))
        ));
    }
}
