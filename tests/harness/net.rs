//! Network namespaces: created with a unique name, deleted on drop.

use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

/// Runs a command and returns its output; panics if it cannot be started.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Runs a command that must succeed.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    /// A new namespace named `sv<pid>-<n>-<role>`, with loopback up.
    pub fn new(role: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("sv{}-{n}-{role}", std::process::id());
        run_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // No duplicate address detection: links created later are usable at once.
        ns.sysctl("net.ipv6.conf.default.accept_dad=0");
        ns
    }

    /// `ip -n NAME args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }

    /// Runs a command in the namespace and returns its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run("ip", &full)
    }

    /// Runs a command in the namespace; it must succeed.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "[{}] {} failed: {}{}",
            self.name,
            cmd.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ping -c1` succeeds within `wait` seconds.
    pub fn ping(&self, addr: &str, wait: u32) -> bool {
        self.exec(&["ping", "-c1", "-W", &wait.to_string(), "-q", addr])
            .status
            .success()
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// Connects two namespaces with a veth pair named `a_if` / `b_if`.
    pub fn link(&self, a_if: &str, other: &Netns, b_if: &str) {
        self.ip(&[
            "link",
            "add",
            a_if,
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            &other.name,
        ]);
        self.ip(&["link", "set", a_if, "up"]);
        other.ip(&["link", "set", b_if, "up"]);
    }

    /// Runs an nft script in the namespace.
    pub fn nft(&self, script: &str) {
        self.exec_ok(&["nft", script]);
    }

    pub fn sysctl(&self, key_value: &str) {
        self.exec_ok(&["sysctl", "-qw", key_value]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A per-namespace /etc (`ip netns exec` shows /etc/netns/NAME/resolv.conf as /etc/resolv.conf,
/// so the host's file is never touched); removed on drop.
pub struct NetnsEtc(pub std::path::PathBuf);

impl NetnsEtc {
    /// Creates /etc/netns/NAME with a resolv.conf holding `resolv`.
    pub fn with_resolv_conf(ns: &Netns, resolv: &str) -> NetnsEtc {
        let dir = std::path::Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/NAME");
        std::fs::write(dir.join("resolv.conf"), resolv).expect("write resolv.conf");
        NetnsEtc(dir)
    }

    pub fn resolv_conf(&self) -> String {
        std::fs::read_to_string(self.0.join("resolv.conf")).unwrap_or_default()
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
