//! A stock OpenSSH sshd (Debian's openssh-server) started by a test in a namespace, with its own
//! config file, host key and authorized keys, and the `sshvpn` subsystem pointing at
//! `sshvpnd attach`.

use std::path::{Path, PathBuf};

use crate::net::{Netns, run_ok};
use crate::proc::{Bin, Process};

pub const SSHD: &str = "/usr/sbin/sshd";

/// Starts `sshd -D -e` in `ns` on `port`; `authorized_keys` lists the accepted keys; the subsystem
/// attaches to the daemon at `control`. `dir` holds its files; the process dies with the guard.
pub fn start(ns: &Netns, dir: &Path, port: u16, authorized_keys: &Path, control: Option<&Path>) -> Process {
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: apt-get install openssh-server"
    );
    std::fs::create_dir_all("/run/sshd").expect("privilege separation directory");
    let host_key = dir.join(format!("sshd_host_key_{port}"));
    if !host_key.exists() {
        run_ok(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", host_key.to_str().unwrap()],
        );
    }
    let mut config = format!(
        "ListenAddress 0.0.0.0:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n\
         PidFile {}\nLogLevel VERBOSE\n",
        host_key.display(),
        authorized_keys.display(),
        dir.join(format!("sshd_{port}.pid")).display(),
    );
    if let Some(control) = control {
        config.push_str(&format!(
            "Subsystem sshvpn {} attach --control {}\n",
            Bin::path("sshvpnd").display(),
            control.display()
        ));
    }
    let config_path = dir.join(format!("sshd_config_{port}"));
    std::fs::write(&config_path, config).expect("write sshd_config");
    let log = dir.join(format!("sshd_{port}.log"));
    let mut p = Process::spawn_cmd(ns, SSHD, &["-D", "-e", "-f", config_path.to_str().unwrap()], &[], log);
    p.wait_for_log(&format!("Server listening on 0.0.0.0 port {port}"), 10.0);
    p
}

/// An OpenSSH client config file with one `Host` block per entry (name, options).
pub fn client_config(path: &Path, hosts: &[(&str, Vec<(String, String)>)]) -> PathBuf {
    let mut text = String::new();
    for (name, options) in hosts {
        text.push_str(&format!("Host {name}\n"));
        for (k, v) in options {
            text.push_str(&format!("  {k} {v}\n"));
        }
    }
    std::fs::write(path, text).expect("write ssh config");
    path.to_path_buf()
}
