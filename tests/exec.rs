//! `sshvpn exec`: one command inside the remote network, from an unprivileged user, in a
//! namespace of its own; nothing on the host changes.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Output;

use sshvpn_tests::net::run_ok;
use sshvpn_tests::topo::{LAN4, SSH_PORT};
use sshvpn_tests::{Bin, Netns, Topology};

const NOBODY: &str = "65534";

/// A home directory for the unprivileged user, holding a copy of client key `i`.
fn user_home(t: &Topology, i: usize) -> (PathBuf, PathBuf) {
    let home = t.keys.dir.path(&format!("home{i}"));
    std::fs::create_dir_all(&home).unwrap();
    let key = home.join("id_ed25519");
    std::fs::copy(&t.client_keys[i], &key).unwrap();
    run_ok("chown", &["-R", &format!("{NOBODY}:{NOBODY}"), home.to_str().unwrap()]);
    run_ok("chmod", &["755", t.keys.dir.0.to_str().unwrap()]);
    (home, key)
}

/// Runs `sshvpn exec ... -- cmd` as user nobody in the client namespace `ns`.
fn exec_as_nobody(ns: &Netns, home: &Path, key: &Path, server: &str, extra: &[&str], cmd: &[&str]) -> Output {
    let bin = Bin::path("sshvpn");
    let home_env = format!("HOME={}", home.display());
    let mut args = vec![
        "setpriv",
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "env",
        &home_env,
        bin.to_str().unwrap(),
        "exec",
        server,
        "-p",
        SSH_PORT,
        "-i",
        key.to_str().unwrap(),
        "--accept-new-host-key",
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(cmd);
    ns.exec(&args)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What the host looks like: routes, links and addresses of the namespace, and resolv.conf.
fn host_state(ns: &Netns) -> String {
    format!(
        "{}{}{}{}",
        ns.ip(&["route", "show"]),
        ns.ip(&["-6", "route", "show"]),
        ns.ip(&["addr", "show"]),
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    )
}

#[test]
fn unprivileged_command_reaches_the_lan_and_the_host_is_untouched() {
    let mut t = Topology::new(1);
    t.start_server(&["--push-dns", "10.202.0.53", "--push-search", "corp.test"]);
    let (home, key) = user_home(&t, 0);
    let addr = SocketAddr::new(LAN4.parse().unwrap(), 5600);
    let listener: TcpListener = t.lan.run(move || TcpListener::bind(addr).unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    });
    let probe = format!(
        "ping -c1 -W2 {LAN4} >/dev/null && bash -c 'echo hello-from-exec > /dev/tcp/{LAN4}/5600' && id -u && cat /etc/resolv.conf"
    );
    // Outside the VPN the same command fails: the LAN is unreachable.
    let outside = t.clients[0].exec(&[
        "setpriv",
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "ping",
        "-c1",
        "-W1",
        LAN4,
    ]);
    assert!(!outside.status.success(), "LAN unreachable without the VPN");

    let before = host_state(&t.clients[0]);
    let mut cmd = std::process::Command::new("ip");
    let bin = Bin::path("sshvpn");
    cmd.args([
        "netns",
        "exec",
        &t.clients[0].name,
        "setpriv",
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
    ])
    .arg("env")
    .arg(format!("HOME={}", home.display()))
    .arg(&bin)
    .args([
        "exec",
        "root@10.200.1.1",
        "-p",
        SSH_PORT,
        "-i",
        key.to_str().unwrap(),
        "--accept-new-host-key",
        "--",
    ])
    .args(["sh", "-c", &format!("{probe} && sleep 2")]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let during = host_state(&t.clients[0]);
    let out = child.wait_with_output().unwrap();
    let after = host_state(&t.clients[0]);
    let all = text(&out);
    assert!(out.status.success(), "exec succeeds:\n{all}");
    assert_eq!(
        server.join().unwrap().trim(),
        "hello-from-exec",
        "TCP reached the LAN host"
    );
    assert!(
        all.contains("\n0\n") || all.starts_with("0\n"),
        "root inside the user namespace:\n{all}"
    );
    assert!(
        all.contains("nameserver 10.202.0.53") && all.contains("search corp.test"),
        "pushed DNS inside:\n{all}"
    );
    assert_eq!(
        before, during,
        "host routes, interfaces and resolv.conf unchanged during the run"
    );
    assert_eq!(before, after, "and after it");
}

#[test]
fn exit_codes_propagate() {
    let mut t = Topology::new(1);
    t.start_server(&[]);
    let (home, key) = user_home(&t, 0);
    let out = exec_as_nobody(
        &t.clients[0],
        &home,
        &key,
        "root@10.200.1.1",
        &[],
        &["sh", "-c", "exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    // An unreachable server: sshvpn's own failure, not the command's.
    let out = exec_as_nobody(
        &t.clients[0],
        &home,
        &key,
        "root@10.200.1.99",
        &["--connect-timeout", "1"],
        &["sh", "-c", "exit 7"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot reach"), "{}", text(&out));
}

#[test]
fn concurrent_runs_of_one_user_get_separate_namespaces_and_addresses() {
    let mut t = Topology::new(1);
    t.start_server(&[]);
    let (home, key) = user_home(&t, 0);
    let run = |ns_name: String, home: PathBuf, key: PathBuf| {
        std::thread::spawn(move || {
            let bin = Bin::path("sshvpn");
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns_name,
                    "setpriv",
                    "--reuid",
                    NOBODY,
                    "--regid",
                    NOBODY,
                    "--clear-groups",
                ])
                .arg("env")
                .arg(format!("HOME={}", home.display()))
                .arg(bin)
                .args([
                    "exec",
                    "root@10.200.1.1",
                    "-p",
                    SSH_PORT,
                    "-i",
                    key.to_str().unwrap(),
                    "--accept-new-host-key",
                ])
                .args([
                    "--",
                    "sh",
                    "-c",
                    &format!("ip -4 -o addr show sshvpn0 && ping -c1 -W2 {LAN4} >/dev/null && sleep 2"),
                ])
                .output()
                .unwrap()
        })
    };
    let a = run(t.clients[0].name.clone(), home.clone(), key.clone());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let b = run(t.clients[0].name.clone(), home, key);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert!(a.status.success() && b.status.success(), "{}\n{}", text(&a), text(&b));
    let addr = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    assert_ne!(addr(&a), "", "{}", text(&a));
    assert_ne!(addr(&a), addr(&b), "separate tunnel addresses");
}
