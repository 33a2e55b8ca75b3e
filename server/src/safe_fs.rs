//! Opening files without being tricked by another account: the daemon may start as root while
//! the directories it uses (`/var/lib/sshvpn`, `/run/sshvpn`, the audit log's directory) belong
//! to its unprivileged user. Every file opened there by root is opened with `O_NOFOLLOW` (a
//! symbolic link put in its place makes the open fail instead of reaching another file),
//! created with `O_EXCL`, and checked on the open descriptor (`fstat`), never by path again.
//! See docs/security.md, "Privileges".

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading, refusing a symbolic link as its last component (ELOOP) and never
/// blocking on a FIFO.
pub fn open_read_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Creates `path` (it must not exist: `O_EXCL`, which also refuses a symbolic link) with `mode`.
pub fn create_new_nofollow(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates or truncates `path` for writing with `mode`; a symbolic link as its last component
/// is refused.
pub fn create_truncate_nofollow(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Opens `path` for appending, creating it with `mode` if missing; a symbolic link as its last
/// component is refused.
pub fn open_append_nofollow(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Whether an open error means "a symbolic link was refused".
pub fn is_symlink_refusal(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// What a private file (a key) must be, checked on its open descriptor: OpenSSH's rules for
/// private keys (a regular file, no access for group or others), owned by one of `owners`, and
/// with a single name (a hard link to another account's key cannot pose as ours). Returns the
/// problem in words, or `None` when the file passes.
pub fn private_file_problem(meta: &std::fs::Metadata, owners: &[u32]) -> Option<String> {
    if !meta.file_type().is_file() {
        return Some("is not a regular file".into());
    }
    if !owners.contains(&meta.uid()) {
        let names: Vec<String> = owners.iter().map(|u| format!("uid {u}")).collect();
        return Some(format!("is owned by uid {}, not by {}", meta.uid(), names.join(" or ")));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "has permissions {mode:04o}: a private key must not be accessible by group or others (chmod 600)"
        ));
    }
    if meta.nlink() > 1 {
        return Some(format!(
            "has {} hard links: a private key must have one name",
            meta.nlink()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("safe-fs-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn symlinks_are_refused_by_every_opener() {
        let d = dir();
        let target = d.join("target");
        std::fs::write(&target, "secret").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(is_symlink_refusal(&open_read_nofollow(&link).unwrap_err()));
        assert!(is_symlink_refusal(&open_append_nofollow(&link, 0o640).unwrap_err()));
        assert_eq!(
            create_new_nofollow(&link, 0o600).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        // A dangling link is not followed to create its target either.
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
        assert!(create_new_nofollow(&dangling, 0o600).is_err());
        assert!(open_append_nofollow(&dangling, 0o600).is_err());
        assert!(!d.join("nowhere").exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn private_files_follow_openssh_rules() {
        let d = dir();
        let key = d.join("key");
        create_new_nofollow(&key, 0o600).unwrap().write_all(b"k").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let meta = || open_read_nofollow(&key).unwrap().metadata().unwrap();
        assert_eq!(private_file_problem(&meta(), &[me]), None);
        let other = me.wrapping_add(1);
        assert!(private_file_problem(&meta(), &[other]).unwrap().contains("owned by"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(private_file_problem(&meta(), &[me]).unwrap().contains("0640"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::hard_link(&key, d.join("second")).unwrap();
        assert!(private_file_problem(&meta(), &[me]).unwrap().contains("hard links"));
        let dmeta = std::fs::metadata(&d).unwrap();
        assert!(private_file_problem(&dmeta, &[me]).unwrap().contains("regular"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
