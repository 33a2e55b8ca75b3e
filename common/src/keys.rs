//! SSH key files: the server's host key (loaded or generated), client identity keys and
//! OpenSSH `authorized_keys` files.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{self, LineEnding};
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The cause is the source, not repeated in the message (`{:#}` prints it once).
    #[error("cannot read key {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot load key {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("key {0} is protected by a passphrase; load it into ssh-agent or remove the passphrase")]
    Encrypted(PathBuf),
    #[error("cannot write host key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// `SHA256:...` fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Loads the host key at `path`, or generates an ed25519 key there (mode 0600) if none exists.
/// Returns the key and whether it was generated.
pub fn load_or_generate_host_key(path: &Path) -> Result<(PrivateKey, bool), KeyError> {
    if path.exists() {
        return load_private_key(path).map(|k| (k, false));
    }
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| KeyError::Parse {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let text = key.to_openssh(LineEnding::LF).map_err(|e| KeyError::Parse {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let write = |path: &Path| -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write(path).map_err(|source| KeyError::Write {
        path: path.into(),
        source,
    })?;
    Ok((key, true))
}

/// Loads an unencrypted OpenSSH private key.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let key = read_private_key(path)?;
    if key.is_encrypted() {
        return Err(KeyError::Encrypted(path.into()));
    }
    Ok(key)
}

/// Reads an OpenSSH private key file, encrypted or not (the client then asks for the
/// passphrase; the server refuses it, [`load_private_key`]).
pub fn read_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.into(),
        source,
    })?;
    let key = PrivateKey::from_openssh(&text).map_err(|e| KeyError::Parse {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Ok(key)
}

/// The public keys of an OpenSSH `authorized_keys` file. Options columns and comments are
/// accepted; lines that do not parse are reported and skipped, as sshd does.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    keys: Vec<PublicKey>,
}

impl AuthorizedKeys {
    pub fn load(path: &Path) -> Result<AuthorizedKeys, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        Ok(Self::parse(&text, &path.display().to_string()))
    }

    pub fn parse(text: &str, origin: &str) -> AuthorizedKeys {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.parse::<ssh_key::authorized_keys::Entry>() {
                Ok(e) => keys.push(e.public_key().clone()),
                Err(e) => tracing::warn!("{origin}:{}: skipping unreadable authorized key: {e}", n + 1),
            }
        }
        AuthorizedKeys { keys }
    }

    /// Whether `key` is listed (compared by key material, not comment).
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.iter().any(|k| k.key_data() == key.key_data())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_then_reloads_host_key_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sshvpn-keytest-{}", std::process::id()));
        let path = dir.join("host_key");
        let _ = std::fs::remove_dir_all(&dir);
        let (k1, generated) = load_or_generate_host_key(&path).unwrap();
        assert!(generated);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, generated) = load_or_generate_host_key(&path).unwrap();
        assert!(!generated);
        assert_eq!(k1.public_key(), k2.public_key());
        assert!(fingerprint(k1.public_key()).starts_with("SHA256:"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn authorized_keys_with_options_and_comments() {
        let k = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let other = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let line = k.public_key().to_openssh().unwrap();
        let text =
            format!("# comment\n\nno-pty,from=\"10.0.0.0/8,192.168.1.1\" {line} alice@laptop\nnot a key at all\n");
        let ak = AuthorizedKeys::parse(&text, "test");
        assert_eq!(ak.len(), 1);
        assert!(ak.contains(k.public_key()));
        assert!(!ak.contains(other.public_key()));
    }
}
