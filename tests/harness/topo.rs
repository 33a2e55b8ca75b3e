//! The standard test topology:
//!
//! ```text
//!  client i (10.200.i.2, fd00:200:i::2) --veth-- server (10.200.i.1 | 10.202.0.1) --veth-- lan (10.202.0.2)
//! ```
//! The server namespace forwards; the LAN host's default route points at it. The tunnel pool is
//! 10.203.0.0/24 and fd00:203::/64, and the server pushes the LAN prefixes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::net::{Netns, run_ok};
use crate::proc::Process;

pub const SSH_PORT: &str = "4022";
pub const LAN4: &str = "10.202.0.2";
pub const LAN6: &str = "fd00:202::2";
pub const POOL4: &str = "10.203.0.0/24";
pub const POOL6: &str = "fd00:203::/64";

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        // Under /run (root-owned, 0755), not /tmp (world-writable): sshvpnd's StrictModes
        // refuses key files below a directory others may write.
        let base = if nix::unistd::geteuid().is_root() {
            std::path::PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let p = base.join(format!("sshvpn-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        }
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SSH key material of a test.
pub struct Keys {
    pub dir: TempDir,
}

impl Keys {
    /// Generates an ed25519 key pair named `name` (private key at the returned path, `.pub` beside).
    pub fn generate(&self, name: &str) -> PathBuf {
        let p = self.dir.path(name);
        run_ok(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", p.to_str().unwrap()],
        );
        p
    }

    pub fn public(&self, key: &Path) -> String {
        std::fs::read_to_string(key.with_extension("pub")).expect("read public key")
    }
}

pub struct Topology {
    // Processes first: they are killed before the namespaces go.
    pub processes: Vec<Process>,
    pub server: Netns,
    pub lan: Netns,
    pub clients: Vec<Netns>,
    pub keys: Keys,
    /// authorized_keys of the server.
    pub authorized_keys: PathBuf,
    pub host_key: PathBuf,
    /// Client key `i` (index into `clients`) is `client_keys[i]`.
    pub client_keys: Vec<PathBuf>,
    /// Give the server an IPv6 pool (the default).
    pub ipv6: bool,
    /// A command the server runs under (e.g. `prlimit --nofile=40:40`).
    pub server_wrapper: Vec<String>,
}

impl Topology {
    /// Server, LAN host and `n` client hosts; each client has its own authorized key.
    pub fn new(n: usize) -> Topology {
        crate::require_root();
        let server = Netns::new("srv");
        let lan = Netns::new("lan");
        server.link("lan0", &lan, "eth0");
        server.ip(&["addr", "add", "10.202.0.1/24", "dev", "lan0"]);
        server.ip(&["addr", "add", "fd00:202::1/64", "dev", "lan0", "nodad"]);
        lan.ip(&["addr", "add", "10.202.0.2/24", "dev", "eth0"]);
        lan.ip(&["addr", "add", "fd00:202::2/64", "dev", "eth0", "nodad"]);
        lan.ip(&["route", "add", "default", "via", "10.202.0.1"]);
        lan.ip(&["-6", "route", "add", "default", "via", "fd00:202::1"]);
        server.sysctl("net.ipv4.ip_forward=1");
        server.sysctl("net.ipv6.conf.all.forwarding=1");
        let keys = Keys { dir: TempDir::new() };
        let mut clients = Vec::new();
        let mut client_keys = Vec::new();
        let mut authorized = String::new();
        for i in 1..=n {
            let c = Netns::new(&format!("c{i}"));
            let sif = format!("c{i}");
            server.link(&sif, &c, "eth0");
            server.ip(&["addr", "add", &format!("10.200.{i}.1/24"), "dev", &sif]);
            c.ip(&["addr", "add", &format!("10.200.{i}.2/24"), "dev", "eth0"]);
            server.ip(&["addr", "add", &format!("fd00:200:{i}::1/64"), "dev", &sif, "nodad"]);
            c.ip(&["addr", "add", &format!("fd00:200:{i}::2/64"), "dev", "eth0", "nodad"]);
            let key = keys.generate(&format!("client{i}"));
            authorized.push_str(&keys.public(&key));
            clients.push(c);
            client_keys.push(key);
        }
        let authorized_keys = keys.dir.path("authorized_keys");
        std::fs::write(&authorized_keys, authorized).expect("write authorized_keys");
        let host_key = keys.dir.path("host_key");
        Topology {
            processes: Vec::new(),
            server,
            lan,
            clients,
            keys,
            authorized_keys,
            host_key,
            client_keys,
            ipv6: true,
            server_wrapper: Vec::new(),
        }
    }

    /// The daemon's control socket (per test, so parallel tests never collide).
    pub fn control_socket(&self) -> PathBuf {
        self.keys.dir.path("control.sock")
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.keys.dir.path(name)
    }

    /// Starts sshvpnd in the server namespace with the standard pools and pushed routes.
    pub fn start_server(&mut self, extra: &[&str]) -> usize {
        self.start_sshvpnd(true, extra)
    }

    /// Starts sshvpnd without its own SSH listener (clients come through sshd + `sshvpnd attach`).
    pub fn start_daemon(&mut self, extra: &[&str]) -> usize {
        self.start_sshvpnd(false, extra)
    }

    fn start_sshvpnd(&mut self, listen: bool, extra: &[&str]) -> usize {
        let state = self.keys.dir.path("state");
        let control = self.control_socket();
        let listen_addr = format!("0.0.0.0:{SSH_PORT}");
        let mut args = vec![
            "--state-dir",
            state.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ];
        if listen {
            args.extend_from_slice(&[
                "--listen",
                &listen_addr,
                "--host-key",
                self.host_key.to_str().unwrap(),
                "--authorized-keys",
                self.authorized_keys.to_str().unwrap(),
            ]);
        }
        args.extend_from_slice(&["--pool", POOL4, "--push-route", "10.202.0.0/24"]);
        if self.ipv6 {
            args.extend_from_slice(&["--pool6", POOL6, "--push-route", "fd00:202::/64"]);
        }
        args.extend_from_slice(extra);
        let log = self.log(&format!("server-{}.log", self.processes.len()));
        let mut p = if self.server_wrapper.is_empty() {
            Process::spawn(&self.server, "sshvpnd", &args, log)
        } else {
            let bin = crate::Bin::path("sshvpnd");
            let mut full: Vec<&str> = self.server_wrapper[1..].iter().map(String::as_str).collect();
            full.push(bin.to_str().unwrap());
            full.extend_from_slice(&args);
            Process::spawn_cmd(&self.server, &self.server_wrapper[0], &full, &[], log)
        };
        p.wait_for_log("control socket", 20.0);
        self.processes.push(p);
        self.processes.len() - 1
    }

    /// The arguments to connect client `i` (0-based) with its own key to the server.
    pub fn client_args(&self, i: usize) -> Vec<String> {
        vec![
            "connect".into(),
            format!("root@10.200.{}.1", i + 1),
            "-p".into(),
            SSH_PORT.into(),
            "-i".into(),
            self.client_keys[i].to_str().unwrap().into(),
            "--known-hosts".into(),
            self.known_hosts(i).to_str().unwrap().into(),
            "--accept-new-host-key".into(),
        ]
    }

    pub fn known_hosts(&self, i: usize) -> PathBuf {
        self.keys.dir.path(&format!("known_hosts-{i}"))
    }

    /// Starts client `i` (0-based) and waits for its tunnel to come up. Returns its process index.
    pub fn start_client(&mut self, i: usize, extra: &[&str]) -> usize {
        let p = self.spawn_client(i, extra);
        self.processes[p].wait_for_log("tunnel up", 20.0);
        p
    }

    /// Starts client `i` without waiting.
    pub fn spawn_client(&mut self, i: usize, extra: &[&str]) -> usize {
        let mut args = self.client_args(i);
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.log(&format!("client{i}-{}.log", self.processes.len()));
        let p = Process::spawn(&self.clients[i], "sshvpn", &refs, log);
        self.processes.push(p);
        self.processes.len() - 1
    }

    pub fn process(&mut self, idx: usize) -> &mut Process {
        &mut self.processes[idx]
    }
}
