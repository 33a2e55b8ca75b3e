//! Test harness: hosts made of network namespaces, and the real `sshvpnd` / `sshvpn` binaries
//! running in them. Everything a test creates is removed when its guard drops, also when an
//! assertion fails.

#![forbid(unsafe_code)]

pub mod fake_peer;
pub mod net;
pub mod proc;
pub mod sshd;
pub mod topo;
pub mod traffic;

pub use net::{Netns, NetnsEtc};
pub use proc::{Bin, Process};
pub use topo::{Keys, Topology};

/// Fails the test with a clear message unless running as root.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (it creates network namespaces and TUN devices): \
             run the suite as root, e.g. `sudo scripts/test.sh`"
        );
    }
}

/// Polls `f` every 50 ms until it returns true or `secs` pass.
pub fn wait_until(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
