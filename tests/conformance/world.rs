//! Two identical little networks ("worlds"): one runs OpenSSH (`sshd` + `ssh`), the other runs
//! sshvpn (`sshvpnd` + `sshvpn`). Both use the same addresses, names and ports, so a case's files
//! (authorized_keys, known_hosts with `[host]:port` patterns, certificates naming addresses) mean
//! the same thing in each, and the clients connect from the same source addresses.
//!
//! ```text
//!  a (10.77.1.2, fd00:77:1::2) --veth-- server (10.77.1.1, fd00:77:1::1 | 10.77.2.1) --veth-- b (10.77.2.2)
//! ```
//! `hub.example` and `hub` resolve to 10.77.1.1, `other.example` to 10.77.2.1 (per-namespace
//! /etc/hosts, which `ip netns exec` bind-mounts).

use std::path::{Path, PathBuf};

use sshvpn_tests::Netns;

pub const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n10.77.1.1 hub.example hub\n\
                         10.77.2.1 other.example\nfd00:77:1::1 hub6.example\n";

/// Where a client connects from, and the server address it uses for server-side cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// 10.77.1.2 → 10.77.1.1
    A4,
    /// 10.77.2.2 → 10.77.2.1
    B4,
    /// fd00:77:1::2 → fd00:77:1::1
    A6,
}

impl Src {
    pub fn server_addr(self) -> &'static str {
        match self {
            Src::A4 => "10.77.1.1",
            Src::B4 => "10.77.2.1",
            Src::A6 => "fd00:77:1::1",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Src::A4 => "10.77.1.2",
            Src::B4 => "10.77.2.2",
            Src::A6 => "fd00:77:1::2",
        }
    }
}

/// A per-namespace /etc directory, removed on drop.
struct EtcDir(PathBuf);

impl Drop for EtcDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct World {
    // Dropped first: the /etc/netns directories, then the namespaces.
    _etc: Vec<EtcDir>,
    pub server: Netns,
    pub a: Netns,
    pub b: Netns,
}

impl World {
    pub fn new(tag: &str) -> World {
        let server = Netns::new(&format!("{tag}s"));
        let a = Netns::new(&format!("{tag}a"));
        let b = Netns::new(&format!("{tag}b"));
        server.link("a0", &a, "eth0");
        server.link("b0", &b, "eth0");
        server.ip(&["addr", "add", "10.77.1.1/24", "dev", "a0"]);
        server.ip(&["addr", "add", "fd00:77:1::1/64", "dev", "a0", "nodad"]);
        server.ip(&["addr", "add", "10.77.2.1/24", "dev", "b0"]);
        a.ip(&["addr", "add", "10.77.1.2/24", "dev", "eth0"]);
        a.ip(&["addr", "add", "fd00:77:1::2/64", "dev", "eth0", "nodad"]);
        b.ip(&["addr", "add", "10.77.2.2/24", "dev", "eth0"]);
        let mut etc = Vec::new();
        for ns in [&a, &b] {
            let dir = Path::new("/etc/netns").join(&ns.name);
            std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/NAME");
            std::fs::write(dir.join("hosts"), HOSTS).expect("write hosts");
            etc.push(EtcDir(dir));
        }
        World {
            _etc: etc,
            server,
            a,
            b,
        }
    }

    pub fn client(&self, src: Src) -> &Netns {
        match src {
            Src::A4 | Src::A6 => &self.a,
            Src::B4 => &self.b,
        }
    }
}
