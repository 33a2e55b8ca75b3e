//! The client's runtime directory, `/run/sshvpn-client`: its status sockets and the restore
//! records of host settings it changed ([`RestoreDir`], handed to `netconf`). Kept apart from the daemon's `/run/sshvpn` (which a
//! package may give to the `sshvpn` system user), and trusted only when owned by root (or this
//! user) and writable by nobody else: what is in it is acted on as root (restored sysctls and
//! resolv.conf), and its socket names must not be taken by another user.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub const CLIENT_RUN_DIR: &str = "/run/sshvpn-client";

/// A number naming this network namespace (the same interface name may exist in many).
pub fn netns_id() -> u64 {
    std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0)
}

/// Whether `m` describes a directory nobody but root or this user can change.
fn is_trusted(m: &std::fs::Metadata) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    m.is_dir() && (m.uid() == 0 || m.uid() == me) && m.mode() & 0o022 == 0
}

/// The directory, created (mode 0755) if missing; an error if someone else could change it.
pub fn trusted() -> anyhow::Result<&'static Path> {
    let dir = Path::new(CLIENT_RUN_DIR);
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true).mode(0o755);
    b.create(dir).with_context(|| format!("creating {CLIENT_RUN_DIR}"))?;
    let m = std::fs::symlink_metadata(dir).with_context(|| format!("reading {CLIENT_RUN_DIR}"))?;
    if !is_trusted(&m) {
        anyhow::bail!(
            "{CLIENT_RUN_DIR} is not a directory owned by root and writable only by its owner \
             (owner uid {}, mode {:o}): refusing to use it",
            m.uid(),
            m.mode() & 0o7777
        );
    }
    Ok(dir)
}

/// `NAME` in the directory, if the directory exists and is trusted (for reading records).
pub fn existing(name: &str) -> Option<PathBuf> {
    let dir = Path::new(CLIENT_RUN_DIR);
    let m = std::fs::symlink_metadata(dir).ok()?;
    if !is_trusted(&m) {
        tracing::warn!("ignoring {CLIENT_RUN_DIR}: not owned by root or writable by others");
        return None;
    }
    Some(dir.join(name))
}

/// Whether `name` can be one file name in the directory: no '/', not hidden, not '.' or '..',
/// no control characters or whitespace, at most 100 bytes.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `NAME` in the trusted directory, opened (created mode 0600) without following a symlink.
fn open_in_dir(name: &str) -> anyhow::Result<std::fs::File> {
    if !is_safe_name(name) {
        anyhow::bail!("refusing to use {name:?} as a file name in {CLIENT_RUN_DIR}");
    }
    let path = trusted()?.join(name);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Held while a client runs on one interface in this network namespace (an exclusive `flock` on
/// `<interface>-<netns>.lock`, released by the kernel however the process ends).
pub struct InstanceLock {
    _file: std::fs::File,
}

fn lock_name(link: &str, netns: u64) -> String {
    format!("{link}-{netns}.lock")
}

/// Takes the lock of interface `link` in this network namespace: an error if another client
/// runs on it. Taken before anything else touches the host, so that a second `connect` never
/// "recovers" the settings of a live one.
pub fn lock_instance(link: &str) -> anyhow::Result<InstanceLock> {
    sshvpn_common::netconf::check_ifname(link).map_err(|e| anyhow::anyhow!("{e}"))?;
    let file = open_in_dir(&lock_name(link, netns_id()))?;
    match file.try_lock() {
        Ok(()) => Ok(InstanceLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!("another sshvpn is already running on {link} in this network namespace")
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).context(format!("locking {link}")),
    }
}

/// The other clients (interfaces) that have run in this network namespace, split into those
/// still running and those that are gone (their lock is free), `own` left out.
pub fn other_clients(own: &str) -> (Vec<String>, Vec<String>) {
    let (mut live, mut gone) = (Vec::new(), Vec::new());
    let suffix = format!("-{}.lock", netns_id());
    let Some(dir) = existing("") else {
        return (live, gone);
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (live, gone);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(link) = name.strip_suffix(&suffix) else {
            continue;
        };
        if link == own || sshvpn_common::netconf::check_ifname(link).is_err() {
            continue;
        }
        let Ok(file) = open_in_dir(&name) else {
            continue;
        };
        match file.try_lock() {
            Ok(()) => gone.push(link.to_string()),
            Err(_) => live.push(link.to_string()),
        }
    }
    (live, gone)
}

/// The restore records of one interface (in this network namespace) in the directory: what
/// `netconf` saves while it has host settings changed, and reads back after a crash.
pub struct RestoreDir {
    link: String,
}

impl RestoreDir {
    pub fn new(link: &str) -> RestoreDir {
        RestoreDir { link: link.to_string() }
    }

    /// Per interface and network namespace (the same interface name may exist in many);
    /// `host-` kinds once per host.
    fn name(&self, kind: &str) -> String {
        if kind.starts_with("host-") {
            format!("{kind}.restore")
        } else {
            format!("{}-{}.{kind}.restore", self.link, netns_id())
        }
    }
}

impl sshvpn_common::netconf::RestoreRecords for RestoreDir {
    fn save(&self, kind: &str, content: &[u8]) {
        use std::io::Write;
        let saved = open_in_dir(&self.name(kind)).and_then(|mut f| {
            f.set_len(0)?;
            f.write_all(content)?;
            Ok(())
        });
        if let Err(e) = saved {
            tracing::debug!("cannot save restore information: {e:#}");
        }
    }

    fn load(&self, kind: &str) -> Option<Vec<u8>> {
        use std::io::Read;
        let name = self.name(kind);
        if !is_safe_name(&name) {
            return None;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(existing(&name)?)
            .ok()?;
        // Records are small; a bigger file is not one of ours.
        let mut content = Vec::new();
        (&mut file).take(1 << 20).read_to_end(&mut content).ok()?;
        Some(content)
    }

    fn remove(&self, kind: &str) {
        let name = self.name(kind);
        if is_safe_name(&name)
            && let Some(path) = existing(&name)
        {
            let _ = std::fs::remove_file(path);
        }
    }

    fn claim(&self, resource: &str) -> Result<Box<dyn Send + Sync>, String> {
        let file = open_in_dir(&format!("{resource}.lock")).map_err(|e| format!("{e:#}"))?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err("another sshvpn client is managing it now (one client per host rewrites it)".into())
            }
            Err(std::fs::TryLockError::Error(e)) => Err(format!("locking {resource}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_in_the_directory_are_single_visible_components() {
        for good in ["sshvpn0-4026531840.lock", "host-resolv-803-1234.restore"] {
            assert!(is_safe_name(good), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "../x", "a/b", "a b", "a\nb", &"x".repeat(101)] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }
}
