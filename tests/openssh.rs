//! OpenSSH interop: the server half behind a stock sshd (`Subsystem sshvpn sshvpnd attach`), the
//! client over the system `ssh` (config file, ProxyJump), and the built-in transport with
//! ssh-agent and passphrase-protected keys.

use std::path::Path;

use sshvpn_tests::net::run_ok;
use sshvpn_tests::sshd;
use sshvpn_tests::topo::LAN4;
use sshvpn_tests::traffic::tcp_transfer;
use sshvpn_tests::{Bin, Netns, Process, Topology};

fn opt(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// Client options shared by every Host block: the test's key, a private known_hosts, no prompts.
fn common_options(t: &Topology, key: &Path) -> Vec<(String, String)> {
    vec![
        opt("User", "root"),
        opt("IdentityFile", key.display()),
        opt("IdentitiesOnly", "yes"),
        opt("StrictHostKeyChecking", "accept-new"),
        opt("UserKnownHostsFile", t.log("ssh_known_hosts").display()),
        opt("BatchMode", "yes"),
    ]
}

fn spawn_client(t: &mut Topology, i: usize, args: &[&str], env: &[(&str, &str)]) -> usize {
    let log = t.log(&format!("client{i}-{}.log", t.processes.len()));
    let bin = Bin::path("sshvpn");
    let p = Process::spawn_cmd(&t.clients[i], bin.to_str().unwrap(), args, env, log);
    t.processes.push(p);
    t.processes.len() - 1
}

#[test]
fn server_half_behind_stock_sshd_and_client_over_system_ssh() {
    let mut t = Topology::new(1);
    // A lease stored for the Unix user: the address must follow the user, not arrival order.
    std::fs::create_dir_all(t.keys.dir.path("state")).unwrap();
    std::fs::write(t.keys.dir.path("state/leases"), "user:root 10.203.0.77 fd00:203::77\n").unwrap();
    let d = t.start_daemon(&["--allow-user", "root"]);
    let control = t.control_socket();
    let p = sshd::start(&t.server, &t.keys.dir.0, 2222, &t.authorized_keys, Some(&control));
    t.processes.push(p);
    let mut host = vec![opt("HostName", "10.200.1.1"), opt("Port", 2222)];
    host.extend(common_options(&t, &t.client_keys[0]));
    let cfg = sshd::client_config(&t.log("ssh_config"), &[("vpnhost", host)]);
    let cmd = format!("ssh -F {} vpnhost", cfg.display());
    let c = spawn_client(&mut t, 0, &["connect", "--ssh-command", &cmd], &[]);
    t.processes[c].wait_for_log("tunnel up", 20.0);
    let addrs = t.clients[0].ip(&["addr", "show", "dev", "sshvpn0"]);
    assert!(
        addrs.contains("10.203.0.77/32"),
        "address sticky for the user:\n{addrs}"
    );
    assert!(t.clients[0].ping(LAN4, 5));
    tcp_transfer(&t.clients[0], &t.lan, LAN4.parse().unwrap(), 5400, 20 << 20);
    let log = t.processes[d].log_text();
    assert!(
        log.contains("client connected: peer unix:root(uid 0) key user:root"),
        "peer is the Unix user:\n{log}"
    );
    assert!(t.processes[c].stop().success());
}

#[test]
fn system_ssh_through_a_proxyjump_bastion() {
    let mut t = Topology::new(1);
    // client -- bastion -- server: the client has no route to 10.210.0.1, only the bastion does.
    let bastion = Netns::new("bastion");
    t.clients[0].link("jump0", &bastion, "eth0");
    t.clients[0].ip(&["addr", "add", "10.211.0.1/24", "dev", "jump0"]);
    bastion.ip(&["addr", "add", "10.211.0.2/24", "dev", "eth0"]);
    t.server.link("bast0", &bastion, "eth1");
    t.server.ip(&["addr", "add", "10.210.0.1/24", "dev", "bast0"]);
    bastion.ip(&["addr", "add", "10.210.0.2/24", "dev", "eth1"]);
    assert!(
        !t.clients[0].ping("10.210.0.1", 1),
        "no direct path to the server's address"
    );
    t.start_daemon(&["--allow-user", "root"]);
    let control = t.control_socket();
    let p = sshd::start(&t.server, &t.keys.dir.0, 2222, &t.authorized_keys, Some(&control));
    t.processes.push(p);
    let p = sshd::start(&bastion, &t.keys.dir.0, 2223, &t.authorized_keys, None);
    t.processes.push(p);
    let mut jump = vec![opt("HostName", "10.211.0.2"), opt("Port", 2223)];
    jump.extend(common_options(&t, &t.client_keys[0]));
    let mut host = vec![
        opt("HostName", "10.210.0.1"),
        opt("Port", 2222),
        opt("ProxyJump", "bastion"),
    ];
    host.extend(common_options(&t, &t.client_keys[0]));
    let cfg = sshd::client_config(&t.log("ssh_config"), &[("bastion", jump), ("vpnhost", host)]);
    let cmd = format!("ssh -F {} vpnhost", cfg.display());
    let c = spawn_client(&mut t, 0, &["connect", "--ssh-command", &cmd], &[]);
    t.processes[c].wait_for_log("tunnel up", 20.0);
    assert!(t.clients[0].ping(LAN4, 5), "LAN reached through the bastion");
    tcp_transfer(&t.clients[0], &t.lan, LAN4.parse().unwrap(), 5401, 10 << 20);
    drop(bastion);
}

#[test]
fn builtin_transport_with_ssh_agent_and_with_a_passphrase_protected_key() {
    let mut t = Topology::new(2);
    t.start_server(&[]);
    let home = t.keys.dir.path("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    // ~/.ssh/config alias for the built-in transport.
    let cfg = "Host vpn\n  HostName 10.200.1.1\n  Port 4022\n  User root\n";
    std::fs::write(home.join(".ssh/config"), cfg).unwrap();

    // 1. Agent: the key lives only in ssh-agent.
    let sock = t.keys.dir.path("agent.sock");
    let agent_out = run_ok("ssh-agent", &["-a", sock.to_str().unwrap()]);
    let agent_pid: i32 = agent_out
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.parse().ok())
        .expect("agent pid");
    let _agent = KillOnDrop(agent_pid);
    let add = std::process::Command::new("ssh-add")
        .arg(&t.client_keys[0])
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let kh = t.known_hosts(0);
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("SSH_AUTH_SOCK", sock.to_str().unwrap()),
    ];
    let c = spawn_client(
        &mut t,
        0,
        &[
            "connect",
            "vpn",
            "--known-hosts",
            kh.to_str().unwrap(),
            "--accept-new-host-key",
        ],
        &env,
    );
    t.processes[c].wait_for_log("tunnel up", 20.0);
    assert!(t.clients[0].ping(LAN4, 5), "agent-authenticated tunnel works");

    // 2. A key protected by a passphrase, given through SSH_ASKPASS.
    let key = t.client_keys[1].clone();
    run_ok(
        "ssh-keygen",
        &["-q", "-p", "-N", "s3cret passphrase", "-f", key.to_str().unwrap()],
    );
    let askpass = t.keys.dir.path("askpass.sh");
    std::fs::write(&askpass, "#!/bin/sh\necho 's3cret passphrase'\n").unwrap();
    run_ok("chmod", &["+x", askpass.to_str().unwrap()]);
    let mut args = t.client_args(1);
    args.push("--max-retries".into());
    args.push("0".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("SSH_ASKPASS", askpass.to_str().unwrap()),
        ("SSH_ASKPASS_REQUIRE", "force"),
    ];
    let c2 = spawn_client(&mut t, 1, &refs, &env);
    t.processes[c2].wait_for_log("tunnel up", 20.0);
    assert!(t.clients[1].ping(LAN4, 5), "passphrase-protected key works");
    // A wrong passphrase is a clear error, not a retry loop.
    std::fs::write(&askpass, "#!/bin/sh\necho wrong\n").unwrap();
    let bin = Bin::path("sshvpn");
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &t.clients[1].name])
        .arg(bin)
        .args(&refs)
        .envs(env.iter().copied());
    let out = cmd.args(["--tun-name", "other0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wrong passphrase"), "{err}");
}

#[test]
fn a_user_not_allowed_by_the_daemon_is_refused_although_sshd_let_it_in() {
    let mut t = Topology::new(1);
    let d = t.start_daemon(&["--allow-user", "somebody-else"]);
    let control = t.control_socket();
    let p = sshd::start(&t.server, &t.keys.dir.0, 2222, &t.authorized_keys, Some(&control));
    t.processes.push(p);
    let mut host = vec![opt("HostName", "10.200.1.1"), opt("Port", 2222)];
    host.extend(common_options(&t, &t.client_keys[0]));
    let cfg = sshd::client_config(&t.log("ssh_config"), &[("vpnhost", host)]);
    let cmd = format!("ssh -F {} vpnhost", cfg.display());
    let bin = Bin::path("sshvpn");
    let out = t.clients[0].exec(&[
        bin.to_str().unwrap(),
        "connect",
        "--ssh-command",
        &cmd,
        "--max-retries",
        "2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(err.contains("user root is not allowed to attach"), "{err}");
    assert!(!t.processes[d].log_text().contains("client connected"));
}

#[test]
fn attach_without_a_daemon_says_so() {
    let out = std::process::Command::new(Bin::path("sshvpnd"))
        .args(["attach", "--control", "/nonexistent/control.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot reach the sshvpn daemon") && err.contains("is sshvpnd running?"),
        "{err}"
    );
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGTERM);
    }
}
