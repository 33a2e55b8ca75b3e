//! Who to connect to and with which keys: the target resolved through `~/.ssh/config` (HostName,
//! User, Port, IdentityFile), ssh-agent (SSH_AUTH_SOCK), and key files, with passphrases asked
//! on the terminal (never echoed) or through SSH_ASKPASS, once, before the first connection.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use russh::keys::{Certificate, PrivateKey};

use crate::cli::{ConnectArgs, split_target, ssh_dir_file};

/// Where to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub user: String,
    /// The name as given (for known_hosts) ...
    pub alias: String,
    /// ... and the name or address to connect to (HostName from ~/.ssh/config, or the alias).
    pub host: String,
    pub port: u16,
    pub known_hosts: PathBuf,
    pub accept_new: bool,
    /// `--host-key-alias`: the name known_hosts and host certificates are checked against
    /// instead of `alias` (without the port, as ssh's HostKeyAlias).
    pub host_key_alias: Option<String>,
}

/// How to authenticate.
pub struct Credentials {
    /// Try the keys held by ssh-agent first.
    pub agent: bool,
    /// Key files, decrypted.
    pub keys: Vec<(PathBuf, PrivateKey)>,
    /// User certificates, presented (before the plain key) with the key or agent key they certify:
    /// `--certificate`, and `KEY-cert.pub` next to each key file, as ssh does.
    pub certificates: Vec<(PathBuf, Certificate)>,
}

fn ssh_config_for(alias: &str) -> Option<russh_config::Config> {
    let path = ssh_dir_file("config")?;
    if !path.exists() {
        return None;
    }
    match russh_config::parse_path(&path, alias) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            None
        }
    }
}

fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

pub fn resolve_target(args: &ConnectArgs) -> anyhow::Result<Target> {
    let target = args.target.as_deref().ok_or_else(|| anyhow!("no server given"))?;
    let (user, alias) = split_target(target)?;
    let config = ssh_config_for(&alias);
    let host = config
        .as_ref()
        .map(|c| c.host().to_string())
        .unwrap_or_else(|| alias.clone());
    let port = args
        .port
        .or(config.as_ref().and_then(|c| c.host_config.port))
        .unwrap_or(22);
    let user = user
        .or_else(|| config.as_ref().and_then(|c| c.host_config.user.clone()))
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".into());
    let known_hosts = match &args.known_hosts {
        Some(p) => p.clone(),
        None => ssh_dir_file("known_hosts").ok_or_else(|| anyhow!("HOME is not set: pass --known-hosts"))?,
    };
    Ok(Target {
        user,
        alias,
        host,
        port,
        known_hosts,
        accept_new: args.accept_new_host_key,
        host_key_alias: args.host_key_alias.clone(),
    })
}

/// Key files to use: -i, else ~/.ssh/config's IdentityFile, else the usual defaults that exist.
fn key_paths(args: &ConnectArgs, alias: &str) -> Vec<PathBuf> {
    if let Some(p) = &args.identity {
        return vec![p.clone()];
    }
    let configured: Vec<PathBuf> = ssh_config_for(alias)
        .and_then(|c| c.host_config.identity_file)
        .unwrap_or_default()
        .iter()
        .map(|p| expand_home(p))
        .filter(|p| p.exists())
        .collect();
    if !configured.is_empty() {
        return configured;
    }
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .filter_map(|n| ssh_dir_file(n))
        .filter(|p| p.exists())
        .collect()
}

pub fn load_credentials(args: &ConnectArgs, target: &Target) -> anyhow::Result<Credentials> {
    let agent = args.identity.is_none() && std::env::var_os("SSH_AUTH_SOCK").is_some();
    let mut keys = Vec::new();
    for path in key_paths(args, &target.alias) {
        match load_key(&path) {
            Ok(k) => keys.push((path, k)),
            // An explicit -i must work; a default key that does not load is skipped.
            Err(e) if args.identity.is_some() => return Err(e),
            Err(e) => tracing::warn!("skipping {}: {e:#}", path.display()),
        }
    }
    if keys.is_empty() && !agent {
        bail!("no identity key: pass -i KEY, run ssh-agent, or create ~/.ssh/id_ed25519");
    }
    let configured = ssh_dir_file("config")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|text| certificate_files(&text, &target.alias))
        .unwrap_or_default();
    let mut certificates = load_certificates(args.certificate.as_deref(), &keys)?;
    for path in configured.iter().map(|p| expand_home(p)) {
        match load_certificate(&path) {
            Ok(c) if !certificates.iter().any(|(p, _)| *p == path) => certificates.push((path, c)),
            Ok(_) => {}
            Err(e) => tracing::warn!("skipping CertificateFile {}: {e:#}", path.display()),
        }
    }
    Ok(Credentials {
        agent,
        keys,
        certificates,
    })
}

/// `--certificate FILE` (which must load), then `KEY-cert.pub` beside each key file (skipped
/// with a warning when unreadable).
fn load_certificates(
    explicit: Option<&Path>,
    keys: &[(PathBuf, PrivateKey)],
) -> anyhow::Result<Vec<(PathBuf, Certificate)>> {
    let mut certs = Vec::new();
    if let Some(path) = explicit {
        certs.push((path.to_path_buf(), load_certificate(path)?));
    }
    for (key_path, _) in keys {
        let mut name = key_path.as_os_str().to_owned();
        name.push("-cert.pub");
        let path = PathBuf::from(name);
        if !path.exists() || certs.iter().any(|(p, _)| *p == path) {
            continue;
        }
        match load_certificate(&path) {
            Ok(c) => certs.push((path, c)),
            Err(e) => tracing::warn!("skipping {}: {e:#}", path.display()),
        }
    }
    Ok(certs)
}

/// The `CertificateFile` values of the `Host` blocks of an ssh_config text that match `alias`
/// (russh-config does not read that keyword). `Match` blocks are skipped.
fn certificate_files(text: &str, alias: &str) -> Vec<PathBuf> {
    let mut applies = true;
    let mut files = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
            Some((k, v)) => (k, v.trim_start_matches(|c: char| c.is_whitespace() || c == '=').trim()),
            None => (line, ""),
        };
        if key.eq_ignore_ascii_case("host") {
            let mut positive = false;
            applies = true;
            for pat in value.split_whitespace() {
                match pat.strip_prefix('!') {
                    Some(neg) if sshvpn_common::known_hosts::glob(neg, alias) => {
                        applies = false;
                        break;
                    }
                    Some(_) => {}
                    None => positive |= sshvpn_common::known_hosts::glob(pat, alias),
                }
            }
            applies &= positive;
        } else if key.eq_ignore_ascii_case("match") {
            applies = false;
        } else if applies && key.eq_ignore_ascii_case("certificatefile") && !value.is_empty() {
            files.push(PathBuf::from(value.trim_matches('"')));
        }
    }
    files
}

fn load_certificate(path: &Path) -> anyhow::Result<Certificate> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read certificate {}", path.display()))?;
    Certificate::from_openssh(text.trim()).map_err(|e| anyhow!("cannot load certificate {}: {e}", path.display()))
}

/// OpenSSH's `sshkey_perm_ok`: a key file owned by the (real) user running us must not be
/// accessible by group or others; a file owned by another user is not checked.
fn key_permissions_ok(owner: u32, mode: u32, me: u32) -> bool {
    owner != me || mode & 0o077 == 0
}

/// Reads a private key file, refusing it as OpenSSH does when its permissions are too open
/// (checked on the opened file, so the file checked is the file read).
fn read_key_file(path: &Path) -> anyhow::Result<PrivateKey> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read key {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read key {}", path.display()))?;
    if !key_permissions_ok(meta.uid(), meta.mode(), nix::unistd::getuid().as_raw()) {
        bail!(
            "permissions 0{:o} for key {} are too open: private key files must not be accessible by \
             others (chmod 600); this key is ignored, as OpenSSH would",
            meta.mode() & 0o777,
            path.display()
        );
    }
    let mut text = String::new();
    (&mut file)
        .take(1 << 20)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read key {}", path.display()))?;
    PrivateKey::from_openssh(&text).map_err(|e| anyhow!("cannot load key {}: {e}", path.display()))
}

/// Loads a private key, asking for its passphrase if it is encrypted.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let key = read_key_file(path)?;
    if !key.is_encrypted() {
        return Ok(key);
    }
    let prompt = format!("Enter passphrase for key '{}': ", path.display());
    let passphrase = ask_passphrase(&prompt)?;
    key.decrypt(passphrase.as_bytes())
        .map_err(|_| anyhow!("wrong passphrase for key {}", path.display()))
}

/// OpenSSH's rules: SSH_ASKPASS when forced or when there is no terminal, else the terminal.
fn ask_passphrase(prompt: &str) -> anyhow::Result<String> {
    let askpass = std::env::var_os("SSH_ASKPASS");
    let forced = std::env::var("SSH_ASKPASS_REQUIRE").is_ok_and(|v| v == "force");
    let has_tty = std::fs::File::open("/dev/tty").is_ok();
    if let Some(program) = askpass.filter(|_| forced || !has_tty) {
        let out = std::process::Command::new(&program)
            .arg(prompt)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running SSH_ASKPASS {}", PathBuf::from(&program).display()))?;
        if !out.status.success() {
            bail!("SSH_ASKPASS gave no passphrase");
        }
        let s = String::from_utf8_lossy(&out.stdout);
        return Ok(s.trim_end_matches(['\n', '\r']).to_string());
    }
    if !has_tty {
        bail!(
            "the key is encrypted and there is no terminal to ask for its passphrase (set SSH_ASKPASS or use ssh-agent)"
        );
    }
    rpassword::prompt_password(prompt).context("reading the passphrase")
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::Algorithm;
    use russh::keys::ssh_key::certificate::{Builder, CertType};

    #[test]
    fn key_permissions_follow_openssh() {
        assert!(key_permissions_ok(0, 0o100600, 0));
        assert!(key_permissions_ok(0, 0o100400, 0));
        assert!(!key_permissions_ok(0, 0o100644, 0));
        assert!(!key_permissions_ok(0, 0o100640, 0));
        assert!(!key_permissions_ok(1000, 0o100604, 1000));
        // Another user's key is not checked (OpenSSH does the same).
        assert!(key_permissions_ok(1000, 0o100644, 0));
    }

    #[test]
    fn certificate_files_from_matching_host_blocks() {
        let text = "CertificateFile ~/.ssh/all-cert.pub\nHost vpn *.corp !bad.corp\n  CertificateFile=~/.ssh/vpn-cert.pub\n\
                    Host other\n  CertificateFile /x\nMatch user root\n  CertificateFile /y\n";
        let names = |a: &str| certificate_files(text, a);
        assert_eq!(
            names("vpn"),
            vec![
                PathBuf::from("~/.ssh/all-cert.pub"),
                PathBuf::from("~/.ssh/vpn-cert.pub")
            ]
        );
        assert_eq!(names("gw.corp").len(), 2);
        assert_eq!(names("bad.corp"), vec![PathBuf::from("~/.ssh/all-cert.pub")]);
        assert_eq!(
            names("other"),
            vec![PathBuf::from("~/.ssh/all-cert.pub"), PathBuf::from("/x")]
        );
    }

    #[test]
    fn certificates_next_to_keys_and_given_explicitly() {
        let dir = std::env::temp_dir().join(format!("sshvpn-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let mut b = Builder::new(vec![5u8; 32], key.public_key().key_data().clone(), 0, u64::MAX).unwrap();
        b.cert_type(CertType::User).unwrap();
        b.key_id("carol-laptop").unwrap();
        b.valid_principal("carol").unwrap();
        let cert = b.sign(&ca).unwrap();
        let key_path = dir.join("id_ed25519");
        let keys = vec![(key_path.clone(), key)];
        assert!(load_certificates(None, &keys).unwrap().is_empty(), "no certificate yet");
        std::fs::write(dir.join("id_ed25519-cert.pub"), cert.to_openssh().unwrap()).unwrap();
        let found = load_certificates(None, &keys).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, dir.join("id_ed25519-cert.pub"));
        assert_eq!(found[0].1.key_id(), "carol-laptop");
        // An explicit one is used too, and must load.
        let elsewhere = dir.join("other.cert");
        std::fs::write(&elsewhere, cert.to_openssh().unwrap()).unwrap();
        assert_eq!(load_certificates(Some(&elsewhere), &keys).unwrap().len(), 2);
        assert!(load_certificates(Some(&dir.join("missing")), &keys).is_err());
        // A broken certificate next to a key is skipped.
        std::fs::write(
            dir.join("id_ed25519-cert.pub"),
            "ssh-ed25519-cert-v01@openssh.com garbage",
        )
        .unwrap();
        assert!(load_certificates(None, &keys).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
