//! The client's runtime directory, `/run/sshvpn-client`: its status sockets and the restore
//! records of host settings it changed ([`RestoreDir`], handed to `netconf`). Kept apart from the daemon's `/run/sshvpn` (which a
//! package may give to the `sshvpn` system user), and trusted only when owned by root (or this
//! user) and writable by nobody else: what is in it is acted on as root (restored sysctls and
//! resolv.conf), and its socket names must not be taken by another user.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
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

/// The restore records of one interface (in this network namespace) in the directory: what
/// `netconf` saves while it has host settings changed, and reads back after a crash.
pub struct RestoreDir {
    link: String,
}

impl RestoreDir {
    pub fn new(link: &str) -> RestoreDir {
        RestoreDir { link: link.to_string() }
    }

    /// Per interface and network namespace (the same interface name may exist in many).
    fn name(&self, kind: &str) -> String {
        format!("{}-{}.{kind}.restore", self.link, netns_id())
    }
}

impl sshvpn_common::netconf::RestoreRecords for RestoreDir {
    fn save(&self, kind: &str, content: &[u8]) {
        let saved = trusted().and_then(|dir| Ok(std::fs::write(dir.join(self.name(kind)), content)?));
        if let Err(e) = saved {
            tracing::debug!("cannot save restore information: {e:#}");
        }
    }

    fn load(&self, kind: &str) -> Option<Vec<u8>> {
        std::fs::read(existing(&self.name(kind))?).ok()
    }

    fn remove(&self, kind: &str) {
        if let Some(path) = existing(&self.name(kind)) {
            let _ = std::fs::remove_file(path);
        }
    }
}
