//! The daemon's files in directories another account may write: a host key replaced by a
//! symbolic link is refused (naming the file), and a link planted at the control socket's path
//! is removed, never followed (its target keeps owner and mode).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use sshvpn_tests::{Process, Topology};

/// A root-only file standing for another service's secret (sshd's host key, say).
fn secret(t: &Topology, name: &str) -> std::path::PathBuf {
    let p = t.keys.dir.path(name);
    std::fs::write(&p, "secret").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn a_host_key_that_is_a_symlink_is_refused_naming_the_file() {
    let mut t = Topology::new(1);
    // A real private key elsewhere, root-only: loading it through the link must not happen.
    let other = t.keys.generate("other_service_key");
    std::os::unix::fs::symlink(&other, &t.host_key).unwrap();
    let control = t.control_socket();
    let log = t.log("server.log");
    let mut p = Process::spawn(
        &t.server,
        "sshvpnd",
        &[
            "--listen",
            "0.0.0.0:2222",
            "--host-key",
            t.host_key.to_str().unwrap(),
            "--authorized-keys",
            t.authorized_keys.to_str().unwrap(),
            "--pool",
            "10.99.0.0/24",
            "--control",
            control.to_str().unwrap(),
            "--state-dir",
            t.keys.dir.path("state").to_str().unwrap(),
        ],
        log,
    );
    let status = p.wait_exit(20.0).expect("sshvpnd kept running with a linked host key");
    assert!(!status.success());
    let text = p.log_text();
    assert!(
        text.contains(t.host_key.to_str().unwrap()) && text.contains("symbolic link"),
        "{text}"
    );
    t.processes.push(p);
}

#[test]
fn a_link_planted_at_the_control_socket_is_not_followed() {
    let mut t = Topology::new(1);
    let target = secret(&t, "root-only");
    let before = std::fs::metadata(&target).unwrap();
    std::os::unix::fs::symlink(&target, t.control_socket()).unwrap();
    t.start_daemon(&["--allow-user", "root", "--control-group", "nogroup"]);
    let after = std::fs::metadata(&target).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode())
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret");
    let sock = std::fs::symlink_metadata(t.control_socket()).unwrap();
    assert!(sock.file_type().is_socket(), "the control socket is not a socket");
    assert_eq!(sock.mode() & 0o777, 0o660);
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap().gid.as_raw();
    assert_eq!(sock.gid(), nogroup);
}

/// Runs `sshvpnd ARGS` as the user nobody (group nogroup) in the server namespace.
fn as_nobody(t: &Topology, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args([
        "netns",
        "exec",
        &t.server.name,
        "setpriv",
        "--reuid",
        "nobody",
        "--regid",
        "nogroup",
        "--clear-groups",
    ])
    .arg(sshvpn_tests::Bin::path("sshvpnd"))
    .args(args);
    c
}

#[test]
fn a_control_group_member_sees_only_its_own_sessions() {
    use std::io::Write;
    let mut t = Topology::new(1);
    // nobody must reach the socket: the directory traversable, the socket's group nogroup.
    std::fs::set_permissions(&t.keys.dir.0, std::fs::Permissions::from_mode(0o711)).unwrap();
    let control = t.control_socket();
    let ctl = control.to_str().unwrap().to_string();
    t.start_daemon(&[
        "--allow-user",
        "root",
        "--allow-user",
        "nobody",
        "--control-group",
        "nogroup",
    ]);
    // root's session, and nobody's through `sshvpnd attach` as sshd would run it.
    let mut root_session = sshvpn_tests::fake_peer::FakeClient::attach(&control, None);
    assert!(matches!(
        root_session.handshake(10.0),
        Some(sshvpn_common::proto::Control::Config(_))
    ));
    let mut attach = as_nobody(&t, &["attach", "--control", &ctl])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sshvpnd attach as nobody");
    let hello = sshvpn_common::proto::Hello {
        software: "fake-client".into(),
        ..sshvpn_common::proto::Hello::new(sshvpn_common::proto::Features::default(), 1500)
    };
    let mut frame = bytes::BytesMut::new();
    sshvpn_common::proto::Control::Hello(hello).encode_frame(&mut frame);
    let mut stdin = attach.stdin.take().unwrap();
    stdin.write_all(&frame).unwrap();
    let status_of = |cmd: &mut std::process::Command| {
        String::from_utf8_lossy(&cmd.output().expect("sshvpnd status").stdout).to_string()
    };
    let both = sshvpn_tests::wait_until(10.0, || {
        let all = status_of(std::process::Command::new(sshvpn_tests::Bin::path("sshvpnd")).args([
            "status",
            "--json",
            "--control",
            &ctl,
        ]));
        all.contains("user:root") && all.contains("user:nobody")
    });
    assert!(both, "root does not see both sessions");
    let own = status_of(&mut as_nobody(&t, &["status", "--json", "--control", &ctl]));
    assert!(own.contains("user:nobody"), "nobody does not see its session: {own}");
    assert!(!own.contains("user:root"), "nobody sees root's session: {own}");
    let policy = as_nobody(&t, &["policy", "--control", &ctl]).output().unwrap();
    assert!(!policy.status.success(), "nobody read the policy");
    drop(stdin);
    let _ = attach.kill();
    let _ = attach.wait();
}

#[test]
fn the_metrics_listener_survives_a_flood_of_idle_connections() {
    let mut t = Topology::new(1);
    // Few descriptors, so that the flood exhausts them and accept() fails.
    t.server_wrapper = vec!["prlimit".into(), "--nofile=64:64".into()];
    let s = t.start_server(&["--metrics", "127.0.0.1:9810"]);
    let held = t.server.run(|| {
        (0..120)
            .filter_map(|_| std::net::TcpStream::connect("127.0.0.1:9810").ok())
            .collect::<Vec<_>>()
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        t.process(s).child.try_wait().unwrap().is_none(),
        "the daemon died under the metrics flood:\n{}",
        t.process(s).log_text()
    );
    assert!(held.len() >= 60, "the flood opened {} connections", held.len());
    drop(held);
    // A tunnel still comes up and carries traffic.
    t.start_client(0, &[]);
    assert!(
        sshvpn_tests::wait_until(20.0, || t.clients[0].ping("10.202.0.2", 2)),
        "no traffic through a tunnel after the flood"
    );
    let log = t.process(s).log_text();
    assert!(
        log.contains("metrics listener: accept failed") || log.contains("metrics listener: 16 scrapes"),
        "the flood did not reach a limit:\n{log}"
    );
}

#[test]
fn swapping_the_control_socket_for_a_link_during_start_never_reowns_the_target() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = Topology::new(1);
    let target = secret(&t, "root-only");
    let before = std::fs::metadata(&target).unwrap();
    let control = t.control_socket();
    for attempt in 0..8 {
        let _ = std::fs::remove_file(&control);
        let stop = Arc::new(AtomicBool::new(false));
        // The other account's move: as soon as the socket exists, put a link in its place.
        let racer = std::thread::spawn({
            let (control, target, stop) = (control.clone(), target.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if std::fs::symlink_metadata(&control).is_ok_and(|m| m.file_type().is_socket()) {
                        let _ = std::fs::remove_file(&control);
                        let _ = std::os::unix::fs::symlink(&target, &control);
                    }
                }
            }
        });
        let log = t.log(&format!("server-{attempt}.log"));
        let mut p = Process::spawn(
            &t.server,
            "sshvpnd",
            &[
                "--pool",
                "10.99.0.0/24",
                "--allow-user",
                "root",
                "--control-group",
                "nogroup",
                "--control",
                control.to_str().unwrap(),
                "--state-dir",
                t.keys.dir.path("state").to_str().unwrap(),
            ],
            log,
        );
        let _ = p.wait_exit(1.5);
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        let _ = p.child.kill();
        let _ = p.child.wait();
        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode()),
            "start {attempt}: the daemon re-owned the link's target"
        );
    }
}
