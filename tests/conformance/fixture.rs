//! Key material of a run, all made with ssh-keygen in the test: user keys, CAs, certificates
//! and KRLs. Nothing is checked in.

use std::path::{Path, PathBuf};

use sshvpn_tests::net::run_ok;

pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    pub fn new(dir: PathBuf) -> Fixture {
        std::fs::create_dir_all(&dir).expect("mkdir keys");
        Fixture { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new key pair `name` (`-t` type, e.g. "ed25519", "ecdsa", "rsa"); returns the private key.
    pub fn key(&self, name: &str, kind: &str) -> PathBuf {
        let p = self.path(name);
        let mut args = vec!["-q", "-t", kind, "-N", "", "-C", name, "-f", p.to_str().unwrap()];
        if kind == "rsa" {
            args.extend_from_slice(&["-b", "2048"]);
        }
        run_ok("ssh-keygen", &args);
        p
    }

    /// The public key line of `key` (no newline).
    pub fn public(&self, key: &Path) -> String {
        std::fs::read_to_string(key.with_extension("pub"))
            .expect("read public key")
            .trim()
            .to_string()
    }

    /// A new ed25519 key `name` with a certificate from `ca` (`KEY-cert.pub`, where ssh and
    /// sshvpn both pick it up); `args` are the extra `ssh-keygen -s` arguments (-n, -V, -O, -z, -h).
    pub fn certified(&self, name: &str, ca: &Path, id: &str, args: &[&str]) -> PathBuf {
        let key = self.key(name, "ed25519");
        self.sign(&key, ca, id, args);
        key
    }

    /// Signs `key`.pub with `ca`; returns the certificate's path.
    pub fn sign(&self, key: &Path, ca: &Path, id: &str, args: &[&str]) -> PathBuf {
        let pubkey = key.with_extension("pub");
        let mut full = vec!["-q", "-s", ca.to_str().unwrap(), "-I", id];
        full.extend_from_slice(args);
        full.push(pubkey.to_str().unwrap());
        run_ok("ssh-keygen", &full);
        cert_of(key)
    }

    /// A KRL `name` from a spec file (`serial:`, `id:`, `key:`, `hash:`, `sha256:` lines), for
    /// certificates of `ca` (None: key and hash lines only).
    pub fn krl_spec(&self, name: &str, ca: Option<&Path>, spec: &str) -> PathBuf {
        let spec_path = self.path(&format!("{name}.spec"));
        std::fs::write(&spec_path, spec).expect("write KRL spec");
        let krl = self.path(name);
        let ca_pub = ca.map(|c| c.with_extension("pub"));
        let mut args = vec!["-q", "-k", "-f", krl.to_str().unwrap()];
        if let Some(c) = &ca_pub {
            args.extend_from_slice(&["-s", c.to_str().unwrap()]);
        }
        args.push(spec_path.to_str().unwrap());
        run_ok("ssh-keygen", &args);
        krl
    }

    /// A KRL `name` revoking the public keys in `files` (explicit-key section).
    pub fn krl_keys(&self, name: &str, files: &[&Path]) -> PathBuf {
        let krl = self.path(name);
        let mut args = vec!["-q", "-k", "-f", krl.to_str().unwrap()];
        let pubs: Vec<PathBuf> = files.iter().map(|f| f.with_extension("pub")).collect();
        args.extend(pubs.iter().map(|p| p.to_str().unwrap()));
        run_ok("ssh-keygen", &args);
        krl
    }

    /// The SHA256 fingerprint of `key` (`SHA256:...`).
    pub fn fingerprint(&self, key: &Path) -> String {
        let out = run_ok(
            "ssh-keygen",
            &["-l", "-E", "sha256", "-f", key.with_extension("pub").to_str().unwrap()],
        );
        out.split_whitespace().nth(1).unwrap_or_default().to_string()
    }

    /// A known_hosts line hashed by `ssh-keygen -H`.
    pub fn hashed(&self, name: &str, line: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, format!("{line}\n")).expect("write known_hosts");
        run_ok("ssh-keygen", &["-q", "-H", "-f", p.to_str().unwrap()]);
        let text = std::fs::read_to_string(&p).expect("read hashed known_hosts");
        assert!(text.starts_with("|1|"), "ssh-keygen -H did not hash: {text}");
        text.trim().to_string()
    }
}

/// `KEY-cert.pub`
pub fn cert_of(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push("-cert.pub");
    PathBuf::from(name)
}
