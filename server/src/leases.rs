//! Address leases kept on disk, so a key gets the same addresses back after a server restart.
//!
//! A lease file (not a hash of the key) because a hash maps two keys to the same address sooner
//! or later, and resolving that collision by order of arrival would move addresses around
//! between restarts. One line per identity: `IDENTITY ADDRESS [ADDRESS]`. Written atomically
//! (temporary file + rename) within a second of new leases being made, and when the daemon stops.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug)]
pub struct LeaseFile {
    path: Option<PathBuf>,
}

impl LeaseFile {
    /// `None`: leases live in memory only.
    pub fn new(path: Option<PathBuf>) -> Self {
        LeaseFile { path }
    }

    /// The stored leases; a missing file is empty, unreadable lines are skipped with a warning.
    pub fn load(&self) -> Vec<(String, Vec<IpAddr>)> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        // Root reads this at start in a directory the daemon's user may own: no link followed.
        let text = match crate::safe_fs::open_read_nofollow(path).and_then(std::io::read_to_string) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!("cannot read leases {}: {e}", path.display());
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let mut fields = line.split_whitespace();
            let Some(identity) = fields.next() else {
                continue;
            };
            let addrs: Result<Vec<IpAddr>, _> = fields.map(str::parse).collect();
            match addrs {
                Ok(a) if !a.is_empty() => out.push((identity.to_string(), a)),
                _ => tracing::warn!("{}:{}: skipping unreadable lease", path.display(), n + 1),
            }
        }
        out
    }

    /// Replaces the file with `leases`.
    pub fn save(&self, leases: &BTreeMap<String, Vec<IpAddr>>) {
        let Some(path) = &self.path else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            let mut f = std::io::BufWriter::new(crate::safe_fs::create_truncate_nofollow(&tmp, 0o644)?);
            for (identity, addrs) in leases {
                let addrs: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                writeln!(f, "{identity} {}", addrs.join(" "))?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!("cannot write leases {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_lines() {
        let dir = std::env::temp_dir().join(format!("sshvpn-leases-{}", std::process::id()));
        let path = dir.join("state/leases");
        let _ = std::fs::remove_dir_all(&dir);
        let file = LeaseFile::new(Some(path.clone()));
        assert!(file.load().is_empty());
        let mut leases = BTreeMap::new();
        leases.insert(
            "SHA256:abc".to_string(),
            vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        );
        leases.insert("user:alice".to_string(), vec!["10.0.0.3".parse().unwrap()]);
        file.save(&leases);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("garbage not-an-address\n");
        std::fs::write(&path, text).unwrap();
        let loaded = file.load();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].1.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
