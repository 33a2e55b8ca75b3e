//! Host key verification with OpenSSH `known_hosts` semantics: plain, wildcard, negated and
//! hashed (`|1|salt|hash`) host patterns, `[host]:port` for non-standard ports, `@revoked`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{KeyInit, Mac};
use russh::keys::PublicKey;
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};

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

pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi].eq_ignore_ascii_case(&n[ni])) {
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

/// Checks `key` for `host`:`port` against the known_hosts text `text`.
pub fn check_text(text: &str, host: &str, port: u16, key: &PublicKey) -> HostKeyStatus {
    let name = host_entry_name(host, port);
    let mut status = HostKeyStatus::Unknown;
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Ok(entry) = line.parse::<Entry>() else {
            continue;
        };
        if !patterns_match(entry.host_patterns(), &name) {
            continue;
        }
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
