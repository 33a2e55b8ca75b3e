//! StrictModes for the files sshvpnd trusts (authorized keys, trusted CAs, revoked keys, host
//! certificate, configuration file), as OpenSSH's `safe_path` (misc.c, used by sshd for
//! authorized_keys) checks them: the path is resolved (`realpath`: symlinks are followed and
//! the resolved file is what is checked, the link itself is not), the file must be a regular
//! file owned by root or the daemon's user and not group- or world-writable, and so must every
//! directory from it up to `/`. `strict_modes = false` (`--strict-modes no`) turns it off, as
//! sshd's `StrictModes no` does.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a path is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsecurePath {
    #[error("realpath {} failed: {reason}", .path.display())]
    Realpath { path: PathBuf, reason: String },
    #[error("{} is not a regular file", .0.display())]
    NotRegular(PathBuf),
    #[error("bad ownership or modes for file {} (owner uid {uid}, mode {mode:o})", .path.display())]
    File { path: PathBuf, uid: u32, mode: u32 },
    #[error("bad ownership or modes for directory {} (owner uid {uid}, mode {mode:o})", .path.display())]
    Directory { path: PathBuf, uid: u32, mode: u32 },
}

/// Whether the checks are on, and who besides root may own the files.
#[derive(Debug, Clone, Default)]
pub struct StrictModes {
    pub enabled: bool,
    /// Owners accepted besides root (the daemon's user, after dropping privileges).
    pub owners: Vec<u32>,
}

impl StrictModes {
    /// On, with the current effective user and `user` (the `--user` the daemon drops to).
    pub fn new(enabled: bool, user: Option<&str>) -> StrictModes {
        let mut owners = vec![nix::unistd::geteuid().as_raw()];
        if let Some(u) = user.and_then(|u| nix::unistd::User::from_name(u).ok().flatten()) {
            owners.push(u.uid.as_raw());
        }
        StrictModes { enabled, owners }
    }

    #[cfg(test)]
    pub fn off() -> StrictModes {
        StrictModes::default()
    }

    fn owner_ok(&self, uid: u32) -> bool {
        uid == 0 || self.owners.contains(&uid)
    }

    /// `safe_path`: Ok when the checks are off or `path` passes them.
    pub fn check(&self, path: &Path) -> Result<(), InsecurePath> {
        if !self.enabled {
            return Ok(());
        }
        let real = std::fs::canonicalize(path).map_err(|e| InsecurePath::Realpath {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let meta = std::fs::metadata(&real).map_err(|e| InsecurePath::Realpath {
            path: real.clone(),
            reason: e.to_string(),
        })?;
        if !meta.is_file() {
            return Err(InsecurePath::NotRegular(real));
        }
        if !self.owner_ok(meta.uid()) || meta.mode() & 0o022 != 0 {
            return Err(InsecurePath::File {
                path: real,
                uid: meta.uid(),
                mode: meta.mode() & 0o7777,
            });
        }
        for dir in real.ancestors().skip(1) {
            let bad = |uid, mode| InsecurePath::Directory {
                path: dir.to_path_buf(),
                uid,
                mode,
            };
            let m = std::fs::metadata(dir).map_err(|_| bad(u32::MAX, 0))?;
            if !self.owner_ok(m.uid()) || m.mode() & 0o022 != 0 {
                return Err(bad(m.uid(), m.mode() & 0o7777));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A scratch directory under a root-owned 0755 parent (/tmp itself is world-writable).
    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = Path::new("/run").join(format!(
            "strict-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o755);
        d
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn group_or_world_writable_files_and_directories_are_not_trusted() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("needs root: skipped");
            return;
        }
        let d = dir();
        let strict = StrictModes::new(true, None);
        // The test's own ancestors must pass for the rest to mean anything.
        let f = d.join("authorized_keys");
        std::fs::write(&f, "").unwrap();
        chmod(&f, 0o600);
        if let Err(e) = strict.check(&f) {
            eprintln!("ancestors of {} are not safe ({e}): skipped", d.display());
            return;
        }
        chmod(&f, 0o620);
        assert!(matches!(strict.check(&f), Err(InsecurePath::File { .. })));
        chmod(&f, 0o602);
        assert!(matches!(strict.check(&f), Err(InsecurePath::File { .. })));
        chmod(&f, 0o644);
        assert!(strict.check(&f).is_ok());
        chmod(&d, 0o775);
        assert_eq!(
            strict.check(&f).unwrap_err().to_string(),
            format!(
                "bad ownership or modes for directory {} (owner uid 0, mode 775)",
                d.display()
            )
        );
        chmod(&d, 0o755);
        // A symlink is followed: the target and its directories are checked, as realpath does.
        let sub = d.join("open");
        std::fs::create_dir(&sub).unwrap();
        chmod(&sub, 0o1777);
        let link = sub.join("ak-link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(
            strict.check(&link).is_ok(),
            "link in a writable directory to a safe file"
        );
        let target = sub.join("ak");
        std::fs::write(&target, "").unwrap();
        chmod(&target, 0o600);
        let link2 = d.join("ak-link2");
        std::os::unix::fs::symlink(&target, &link2).unwrap();
        assert!(matches!(strict.check(&link2), Err(InsecurePath::Directory { .. })));
        // Another owner.
        nix::unistd::chown(&f, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        assert!(matches!(strict.check(&f), Err(InsecurePath::File { uid: 4242, .. })));
        let with_owner = StrictModes {
            enabled: true,
            owners: vec![4242],
        };
        assert!(with_owner.check(&f).is_ok());
        assert!(StrictModes::off().check(&link2).is_ok());
        assert!(matches!(strict.check(&d), Err(InsecurePath::NotRegular(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
