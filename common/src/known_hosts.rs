//! Host key verification with OpenSSH `known_hosts` semantics: plain, wildcard, negated and
//! hashed (`|1|salt|hash`) host patterns, `[host]:port` for non-standard ports, `@revoked`, and
//! host certificates signed by an `@cert-authority`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{KeyInit, Mac};
use russh::keys::PublicKey;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::ssh_key::{Certificate, HashAlg};

/// What the file says about a host and the key it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// The key is recorded for this host.
    Known,
    /// No key of this type is recorded for this host.
    Unknown,
    /// A different key of the same type is recorded: possible man-in-the-middle.
    Changed { line: usize },
    /// The key is marked `@revoked`.
    Revoked { line: usize },
}

/// The name under which OpenSSH records `host` at `port`.
pub fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// OpenSSH wildcard match (`*`, `?`), case-insensitive.
pub fn glob(pattern: &str, name: &str) -> bool {
    glob_case(pattern, name, true)
}

/// OpenSSH's `match_pattern`: `*`, `?`, case-insensitive only with `fold_case`.
fn glob_case(pattern: &str, name: &str, fold_case: bool) -> bool {
    let same = |a: u8, b: u8| if fold_case { a.eq_ignore_ascii_case(&b) } else { a == b };
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || same(p[pi], n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

fn patterns_match(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::Patterns(list) => {
            let mut matched = false;
            for pat in list {
                if let Some(neg) = pat.strip_prefix('!') {
                    if glob(neg, name) {
                        return false;
                    }
                } else if glob(pat, name) {
                    matched = true;
                }
            }
            matched
        }
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
    }
}

/// The readable entries of known_hosts text whose host patterns match `name`, with their
/// index (0-based line number); comments, blank and unreadable lines are skipped.
fn entries_for<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (usize, Entry)> + 'a {
    text.lines().enumerate().filter_map(move |(idx, raw)| {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let entry = line.parse::<Entry>().ok()?;
        patterns_match(entry.host_patterns(), name).then_some((idx, entry))
    })
}

/// Checks `key` for `host`:`port` against the known_hosts text `text`.
pub fn check_text(text: &str, host: &str, port: u16, key: &PublicKey) -> HostKeyStatus {
    let name = host_entry_name(host, port);
    let mut status = HostKeyStatus::Unknown;
    for (idx, entry) in entries_for(text, &name) {
        let same = entry.public_key().key_data() == key.key_data();
        match entry.marker() {
            Some(Marker::Revoked) if same => return HostKeyStatus::Revoked { line: idx + 1 },
            Some(_) => {}
            None if same => status = HostKeyStatus::Known,
            None if entry.public_key().algorithm() == key.algorithm() && status == HostKeyStatus::Unknown => {
                status = HostKeyStatus::Changed { line: idx + 1 }
            }
            None => {}
        }
    }
    status
}

/// What the file says about a host certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCertStatus {
    /// Signed by an `@cert-authority` of this host, valid now, for one of the names.
    Trusted { line: usize },
    /// The certificate's key or its CA is marked `@revoked`.
    Revoked { line: usize },
    /// Signed by a CA trusted for this host, but not acceptable (why).
    Invalid(String),
    /// No `@cert-authority` line for this host lists its CA.
    NoAuthority,
}

/// Checks a host certificate for `host`:`port` against `@cert-authority` and `@revoked` lines:
/// the CA must be listed for the host (its patterns matched against `[host]:port`, or `host`
/// for port 22: the name given or the HostKeyAlias, never the address, as ssh), the certificate
/// must be a valid host certificate now and one of its principals (wildcards allowed) must match
/// one of `names` (the name given and its HostName, or the HostKeyAlias).
pub fn check_cert_text(
    text: &str,
    host: &str,
    port: u16,
    names: &[String],
    cert: &Certificate,
    now: std::time::SystemTime,
) -> HostCertStatus {
    let entry_name = host_entry_name(host, port);
    let mut ca_line = None;
    for (idx, entry) in entries_for(text, &entry_name) {
        let key = entry.public_key().key_data();
        match entry.marker() {
            Some(Marker::Revoked) if key == cert.public_key() || key == cert.signature_key() => {
                return HostCertStatus::Revoked { line: idx + 1 };
            }
            Some(Marker::CertAuthority) if key == cert.signature_key() && ca_line.is_none() => {
                ca_line = Some(idx + 1);
            }
            _ => {}
        }
    }
    let Some(line) = ca_line else {
        return HostCertStatus::NoAuthority;
    };
    if cert.cert_type() != CertType::Host {
        return HostCertStatus::Invalid("it is a user certificate".into());
    }
    let secs = now
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let fp = cert.signature_key().fingerprint(HashAlg::Sha256);
    if cert.validate_at(secs, [&fp]).is_err() {
        return HostCertStatus::Invalid(if cert.verify_signature().is_err() {
            "its signature is invalid".into()
        } else if secs < cert.valid_after() {
            "it is not valid yet".into()
        } else {
            "it has expired".into()
        });
    }
    // As ssh (sshkey_cert_check_authority): a host certificate's principals may be wildcard
    // patterns, matched case-sensitively against the name checked (ssh lowercases host names,
    // not a HostKeyAlias); one without principals is for no host.
    let principals = cert.valid_principals();
    if !principals.iter().any(|p| names.iter().any(|n| glob_case(p, n, false))) {
        return HostCertStatus::Invalid(format!(
            "it is for {}, not for {}",
            if principals.is_empty() {
                "no names".to_string()
            } else {
                crate::escape::list_for_log(principals, ",")
            },
            crate::escape::list_for_log(names, " or ")
        ));
    }
    if let Some(name) = cert.critical_options().keys().next() {
        return HostCertStatus::Invalid(format!("unknown critical option \"{}\"", crate::escape::for_log(name)));
    }
    HostCertStatus::Trusted { line }
}

/// Checks `key` against the file at `path`; a missing file knows no hosts.
pub fn check(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<HostKeyStatus> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(check_text(&text, host, port, key)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostKeyStatus::Unknown),
        Err(e) => Err(e),
    }
}

/// Appends `host`'s key to the file (creating it and its directory), like `accept-new`.
pub fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let existing = std::fs::read(path).unwrap_or_default();
    let mut f = OpenOptions::new().create(true).append(true).mode(0o644).open(path)?;
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        f.write_all(b"\n")?;
    }
    let key = key.to_openssh().map_err(std::io::Error::other)?;
    // to_openssh includes the key's comment, if any; keep only "type base64".
    let mut fields = key.split_whitespace();
    let (kind, data) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
    writeln!(f, "{} {kind} {data}", host_entry_name(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use russh::keys::{Algorithm, PrivateKey};

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    fn line(hosts: &str, k: &PublicKey) -> String {
        format!("{hosts} {}\n", k.to_openssh().unwrap())
    }

    #[test]
    fn plain_port_and_wildcards() {
        let (k, other) = (key(), key());
        let text = line("gw.example,10.0.0.1", &k) + &line("[bastion]:2222", &k) + &line("*.corp,!evil.corp", &k);
        assert_eq!(check_text(&text, "gw.example", 22, &k), HostKeyStatus::Known);
        assert_eq!(check_text(&text, "10.0.0.1", 22, &k), HostKeyStatus::Known);
        assert_eq!(check_text(&text, "bastion", 2222, &k), HostKeyStatus::Known);
        assert_eq!(check_text(&text, "bastion", 22, &k), HostKeyStatus::Unknown);
        assert_eq!(check_text(&text, "a.corp", 22, &k), HostKeyStatus::Known);
        assert_eq!(check_text(&text, "evil.corp", 22, &k), HostKeyStatus::Unknown);
        assert_eq!(
            check_text(&text, "gw.example", 22, &other),
            HostKeyStatus::Changed { line: 1 }
        );
        assert_eq!(check_text(&text, "nowhere", 22, &k), HostKeyStatus::Unknown);
    }

    #[test]
    fn hashed_entries() {
        let k = key();
        let salt = [7u8; 20];
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(b"[10.1.2.3]:4022");
        let hash = mac.finalize().into_bytes();
        let b64 = base64::engine::general_purpose::STANDARD;
        let hosts = format!("|1|{}|{}", b64.encode(salt), b64.encode(hash));
        let text = line(&hosts, &k);
        assert_eq!(check_text(&text, "10.1.2.3", 4022, &k), HostKeyStatus::Known);
        assert_eq!(check_text(&text, "10.1.2.3", 22, &k), HostKeyStatus::Unknown);
        assert_eq!(
            check_text(&text, "10.1.2.3", 4022, &key()),
            HostKeyStatus::Changed { line: 1 }
        );
    }

    #[test]
    fn revoked_beats_known() {
        let k = key();
        let text = line("host", &k) + &format!("@revoked * {}\n", k.to_openssh().unwrap());
        assert_eq!(check_text(&text, "host", 22, &k), HostKeyStatus::Revoked { line: 2 });
    }

    #[test]
    fn host_certificates_through_cert_authority_lines() {
        use russh::keys::ssh_key::certificate::Builder;
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let host = key();
        let now = std::time::SystemTime::now();
        let secs = now.duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap().as_secs();
        let make = |names: &[&str], after: u64, before: u64, kind: CertType| {
            let mut b = Builder::new(vec![3u8; 32], host.key_data().clone(), after, before).unwrap();
            b.cert_type(kind).unwrap();
            for n in names {
                b.valid_principal(*n).unwrap();
            }
            b.sign(&ca).unwrap()
        };
        let good = make(&["hub.example", "10.0.0.1"], secs - 60, secs + 60, CertType::Host);
        let text = format!(
            "@cert-authority *.example,10.0.0.* {}\n",
            ca.public_key().to_openssh().unwrap()
        );
        let names = |n: &str| vec![n.to_string()];
        assert_eq!(
            check_cert_text(&text, "hub.example", 22, &names("hub.example"), &good, now),
            HostCertStatus::Trusted { line: 1 }
        );
        assert_eq!(
            check_cert_text(&text, "10.0.0.1", 4022, &names("10.0.0.1"), &good, now),
            HostCertStatus::NoAuthority,
            "[10.0.0.1]:4022 does not match 10.0.0.*"
        );
        assert!(matches!(
            check_cert_text(&text, "other.example", 22, &names("other.example"), &good, now),
            HostCertStatus::Invalid(why) if why.contains("not for other.example")
        ));
        assert_eq!(
            check_cert_text(&text, "elsewhere.org", 22, &names("elsewhere.org"), &good, now),
            HostCertStatus::NoAuthority
        );
        let expired = make(&["hub.example"], secs - 120, secs - 60, CertType::Host);
        assert!(matches!(
            check_cert_text(&text, "hub.example", 22, &names("hub.example"), &expired, now),
            HostCertStatus::Invalid(_)
        ));
        let user = make(&["hub.example"], secs - 60, secs + 60, CertType::User);
        assert!(matches!(
            check_cert_text(&text, "hub.example", 22, &names("hub.example"), &user, now),
            HostCertStatus::Invalid(_)
        ));
        let revoked = text.clone() + &format!("@revoked * {}\n", host.to_openssh().unwrap());
        assert_eq!(
            check_cert_text(&revoked, "hub.example", 22, &names("hub.example"), &good, now),
            HostCertStatus::Revoked { line: 2 }
        );
    }

    #[test]
    fn host_certificate_principals_are_names_or_patterns_never_guessed() {
        use russh::keys::ssh_key::certificate::Builder;
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let host = key();
        let now = std::time::SystemTime::now();
        let secs = now.duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap().as_secs();
        let make = |names: &[&str]| {
            let mut b = Builder::new(vec![3u8; 32], host.key_data().clone(), secs - 60, secs + 60).unwrap();
            b.cert_type(CertType::Host).unwrap();
            for n in names {
                b.valid_principal(*n).unwrap();
            }
            b.sign(&ca).unwrap()
        };
        let text = format!("@cert-authority * {}\n", ca.public_key().to_openssh().unwrap());
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let by_ip = make(&["10.210.0.2"]);
        // Connected to hub.example (which resolved to 10.210.0.2): the address is no name.
        assert!(matches!(
            check_cert_text(&text, "hub.example", 22, &names(&["hub.example"]), &by_ip, now),
            HostCertStatus::Invalid(why) if why == "it is for 10.210.0.2, not for hub.example"
        ));
        // With HostKeyAlias 10.210.0.2 (the caller passes it as the name).
        assert_eq!(
            check_cert_text(&text, "10.210.0.2", 22, &names(&["10.210.0.2"]), &by_ip, now),
            HostCertStatus::Trusted { line: 1 }
        );
        // Wildcard principals, as ssh allows for host certificates.
        let wild = make(&["*.corp.example"]);
        assert_eq!(
            check_cert_text(&text, "hub.corp.example", 22, &names(&["hub.corp.example"]), &wild, now),
            HostCertStatus::Trusted { line: 1 }
        );
        assert!(matches!(
            check_cert_text(&text, "corp.example", 22, &names(&["corp.example"]), &wild, now),
            HostCertStatus::Invalid(_)
        ));
        // Case matters, as in ssh (which lowercases the host name it checks).
        let upper = make(&["Hub.Example"]);
        assert!(matches!(
            check_cert_text(&text, "hub.example", 22, &names(&["hub.example"]), &upper, now),
            HostCertStatus::Invalid(_)
        ));
        // Principals reach the message escaped.
        let evil = make(&["x\n[fake] ERROR y\u{1b}[2J"]);
        assert!(matches!(
            check_cert_text(&text, "hub", 22, &names(&["hub"]), &evil, now),
            HostCertStatus::Invalid(why) if why == "it is for x\\n[fake] ERROR y\\x1b[2J, not for hub"
        ));
    }

    #[test]
    fn append_then_known() {
        let dir = std::env::temp_dir().join(format!("sshvpn-kh-{}", std::process::id()));
        let path = dir.join("sub/known_hosts");
        let _ = std::fs::remove_dir_all(&dir);
        let k = key();
        assert_eq!(check(&path, "h", 4022, &k).unwrap(), HostKeyStatus::Unknown);
        append(&path, "h", 4022, &k).unwrap();
        append(&path, "h2", 22, &key()).unwrap();
        assert_eq!(check(&path, "h", 4022, &k).unwrap(), HostKeyStatus::Known);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[h]:4022 ssh-ed25519 "), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
