//! The server's SSH host key: loaded from its file, or generated there (ed25519, mode 0600) on
//! the first start. The file sits in the state directory, which the daemon's user may own, so
//! it is opened without following a symbolic link and checked on the open descriptor with
//! OpenSSH's rules for private keys (see [`crate::safe_fs`]): a link to another key (sshd's own
//! host key, say) is refused with an error naming the file, never loaded.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};

use crate::safe_fs;

/// Host key files larger than this are refused (an ed25519 key is about 400 bytes).
const MAX_KEY_BYTES: u64 = 64 * 1024;

/// Loads the host key at `path`, or generates one there if none exists. `owners` are the uids
/// the file may belong to (root and the daemon's user). Returns the key and whether it was
/// generated.
pub fn load_or_generate(path: &Path, owners: &[u32]) -> anyhow::Result<(PrivateKey, bool)> {
    match safe_fs::open_read_nofollow(path) {
        Ok(file) => load(path, file, owners).map(|k| (k, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(path).map(|k| (k, true)),
        Err(e) if safe_fs::is_symlink_refusal(&e) => bail!(
            "host key {}: is a symbolic link; refusing it (the host key must be a regular file)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot open host key {}", path.display())),
    }
}

fn load(path: &Path, mut file: std::fs::File, owners: &[u32]) -> anyhow::Result<PrivateKey> {
    let meta = file
        .metadata()
        .with_context(|| format!("host key {}: fstat", path.display()))?;
    if let Some(problem) = safe_fs::private_file_problem(&meta, owners) {
        bail!("host key {}: {problem}; refusing it", path.display());
    }
    if meta.len() > MAX_KEY_BYTES {
        bail!("host key {}: larger than {MAX_KEY_BYTES} bytes", path.display());
    }
    let mut text = String::new();
    (&mut file)
        .take(MAX_KEY_BYTES)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read host key {}", path.display()))?;
    let key = PrivateKey::from_openssh(&text).map_err(|e| anyhow!("cannot load host key {}: {e}", path.display()))?;
    if key.is_encrypted() {
        bail!(
            "host key {} is protected by a passphrase; the daemon needs an unencrypted key",
            path.display()
        );
    }
    Ok(key)
}

fn generate(path: &Path) -> anyhow::Result<PrivateKey> {
    let key =
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| anyhow!("generating a host key: {e}"))?;
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| anyhow!("encoding the host key: {e}"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = safe_fs::create_new_nofollow(path, 0o600)
        .with_context(|| format!("cannot write host key {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write host key {}", path.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_reloads_and_refuses_links_and_loose_modes() {
        let d = std::env::temp_dir().join(format!("host-key-{}-{}", std::process::id(), rand::random::<u32>()));
        let path = d.join("sub/host_key");
        let me = [nix::unistd::geteuid().as_raw()];
        let (k1, generated) = load_or_generate(&path, &me).unwrap();
        assert!(generated);
        let (k2, generated) = load_or_generate(&path, &me).unwrap();
        assert!(!generated);
        assert_eq!(k1.public_key(), k2.public_key());
        // A symbolic link to a valid key is refused, naming the file.
        let link = d.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = load_or_generate(&link, &me).unwrap_err().to_string();
        assert!(
            e.contains(&link.display().to_string()) && e.contains("symbolic link"),
            "{e}"
        );
        // Loose permissions.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_generate(&path, &me).unwrap_err().to_string();
        assert!(e.contains("0644"), "{e}");
        // Another owner.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_generate(&path, &[me[0].wrapping_add(1)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("owned by"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
