//! Operations: the server's status command and its Prometheus metrics.

use std::io::{Read, Write};
use std::net::TcpStream;

use sshvpn_tests::topo::LAN4;
use sshvpn_tests::{Bin, Topology};

fn scrape(t: &Topology) -> String {
    t.server.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:9810").expect("metrics listener");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn status_and_prometheus_metrics_describe_the_clients() {
    let mut t = Topology::new(2);
    t.start_server(&["--metrics", "127.0.0.1:9810"]);
    let before = scrape(&t);
    assert!(before.starts_with("HTTP/1.1 200 OK"), "{before}");
    assert_eq!(metric(&before, "sshvpn_clients"), 0.0);

    t.start_client(0, &[]);
    assert!(t.clients[0].ping(LAN4, 5));
    // A refused key counts as an authentication failure.
    let stranger = t.keys.generate("stranger");
    let mut args = t.client_args(1);
    let i = args.iter().position(|a| a == "-i").unwrap();
    args[i + 1] = stranger.to_str().unwrap().into();
    let bin = Bin::path("sshvpn");
    let mut cmd = vec![bin.to_str().unwrap()];
    cmd.extend(args.iter().map(String::as_str));
    assert!(!t.clients[1].exec(&cmd).status.success());

    let m = scrape(&t);
    assert_eq!(metric(&m, "sshvpn_clients"), 1.0, "{m}");
    assert!(
        metric(&m, "sshvpn_bytes_total{direction=\"from_clients\"}") > 0.0,
        "{m}"
    );
    assert!(
        metric(&m, "sshvpn_packets_total{direction=\"to_clients\"}") > 0.0,
        "{m}"
    );
    assert_eq!(metric(&m, "sshvpn_handshake_seconds_count"), 1.0, "{m}");
    assert!(metric(&m, "sshvpn_auth_failures_total") >= 1.0, "{m}");
    assert!(m.contains("sshvpn_drops_total{reason=\"spoofed\"}"), "{m}");

    let control = t.control_socket();
    let sshvpnd = Bin::path("sshvpnd");
    let out = std::process::Command::new(&sshvpnd)
        .args(["status", "--control", control.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        table.contains("SHA256:") && table.contains("10.203.0.2") && table.contains("10.200.1.2"),
        "{table}"
    );
    let out = std::process::Command::new(&sshvpnd)
        .args(["status", "--json", "--control", control.to_str().unwrap()])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        json.trim_start().starts_with('[') && json.contains("\"addresses\":[\"10.203.0.2/32\""),
        "{json}"
    );
}

#[test]
fn systemd_units_verify_and_the_daemon_notifies_readiness() {
    let mut t = Topology::new(1);
    let dir = t.keys.dir.path("units");
    std::fs::create_dir_all(&dir).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = Bin::path("sshvpnd").parent().unwrap().to_path_buf();
    for (unit, name) in [
        ("sshvpnd.service", "sshvpnd.service"),
        ("sshvpn@.service", "sshvpn@office.service"),
    ] {
        let text = std::fs::read_to_string(root.join("scripts").join(unit)).unwrap();
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
        std::fs::write(dir.join(name), text).unwrap();
    }
    if std::path::Path::new("/usr/bin/systemd-analyze").exists() {
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.join("sshvpnd.service"))
            .arg(dir.join("sshvpn@office.service"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    } else {
        eprintln!("systemd-analyze not installed: unit syntax not verified");
    }
    // Type=notify: the daemon sends READY=1 once it serves.
    let sock_path = t.keys.dir.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let log = t.log("notify-server.log");
    let state = t.keys.dir.path("state");
    let control = t.control_socket();
    let args = [
        "--pool",
        "10.203.0.0/24",
        "--state-dir",
        state.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
    ];
    let p = sshvpn_tests::Process::spawn_cmd(
        &t.server,
        Bin::path("sshvpnd").to_str().unwrap(),
        &args,
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
        log,
    );
    t.processes.push(p);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("readiness notification");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.contains("READY=1"), "{msg}");
}

#[test]
fn client_profiles_supply_the_options_and_bad_ones_name_the_line() {
    let mut t = Topology::new(1);
    t.start_server(&[]);
    let home = t.keys.dir.path("home");
    std::fs::create_dir_all(home.join(".config/sshvpn")).unwrap();
    let profile = format!(
        "host = \"10.200.1.1\"\nuser = \"root\"\nport = 4022\nidentity = \"{}\"\nknown_hosts = \"{}\"\nroutes = [\"10.250.0.0/16\"]\ntun_name = \"office0\"\n",
        t.client_keys[0].display(),
        t.known_hosts(0).display()
    );
    std::fs::write(home.join(".config/sshvpn/office.toml"), profile).unwrap();
    let bin = Bin::path("sshvpn");
    let log = t.log("profile-client.log");
    let env = [("HOME", home.to_str().unwrap())];
    let mut p = sshvpn_tests::Process::spawn_cmd(
        &t.clients[0],
        bin.to_str().unwrap(),
        &["connect", "office", "--accept-new-host-key"],
        &env,
        log,
    );
    p.wait_for_log("tunnel up", 20.0);
    t.processes.push(p);
    let routes = t.clients[0].ip(&["route", "show", "dev", "office0"]);
    assert!(
        routes.contains("10.250.0.0/16") && routes.contains("10.202.0.0/24"),
        "{routes}"
    );
    assert!(t.clients[0].ping(LAN4, 5));

    std::fs::write(
        home.join(".config/sshvpn/broken.toml"),
        "host = \"h\"\nport = 22\ndefault_gateway = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(&bin)
        .args(["connect", "broken"])
        .env("HOME", &home)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("broken.toml:3:") && err.contains("unknown field"), "{err}");
}

#[test]
fn full_tunnel_reaches_hosts_behind_the_server_and_keeps_the_ssh_path() {
    let mut t = Topology::new(1);
    t.start_server(&[]);
    assert!(!t.clients[0].ping(LAN4, 1), "no route to the LAN before");
    let c = t.start_client(
        0,
        &["--default-route", "--no-accept-routes", "--exclude", "192.0.2.0/24"],
    );
    let route = t.clients[0].ip(&["route", "get", LAN4]);
    assert!(
        route.contains("dev sshvpn0"),
        "LAN via the tunnel by the half-default routes:\n{route}"
    );
    let to_server = t.clients[0].ip(&["route", "get", "10.200.1.1"]);
    assert!(
        to_server.contains("dev eth0"),
        "the SSH server stays outside the tunnel:\n{to_server}"
    );
    let excluded = t.clients[0].ip(&["route", "show", "192.0.2.0/24"]);
    assert!(
        excluded.contains("dev eth0"),
        "--exclude keeps a network local:\n{excluded}"
    );
    let v6 = t.clients[0].ip(&["-6", "route", "show", "dev", "sshvpn0"]);
    assert!(v6.contains("::/1") && v6.contains("8000::/1"), "IPv6 too:\n{v6}");
    assert!(t.clients[0].ping(LAN4, 5));
    assert!(t.clients[0].ping("fd00:202::2", 5));
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(t.clients[0].ping(LAN4, 2), "the SSH connection survived");
    assert!(!t.processes[c].log_text().contains("reconnecting"));
    assert!(t.process(c).stop().success());
    let after = t.clients[0].ip(&["route", "show"]);
    assert!(
        !after.contains("0.0.0.0/1") && !after.contains("128.0.0.0/1") && !after.contains("192.0.2.0"),
        "{after}"
    );
    assert!(!after.contains("10.200.1.1 "), "host route removed:\n{after}");
}

#[test]
fn client_status_reports_the_session() {
    let mut t = Topology::new(1);
    t.start_server(&[]);
    t.start_client(0, &["--keepalive", "1", "--route", "10.250.0.0/16"]);
    assert!(t.clients[0].ping(LAN4, 5));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let bin = Bin::path("sshvpn");
    let text = t.clients[0].exec_ok(&[bin.to_str().unwrap(), "status"]);
    assert!(text.contains("connected:   true"), "{text}");
    assert!(
        text.contains("10.203.0.2/32") && text.contains("10.250.0.0/16"),
        "{text}"
    );
    assert!(text.contains("root@10.200.1.1"), "{text}");
    let json = t.clients[0].exec_ok(&[bin.to_str().unwrap(), "status", "--json"]);
    assert!(
        json.contains("\"connected\":true") && json.contains("\"reconnects\":0"),
        "{json}"
    );
    let rtt: f64 = json
        .split("\"rtt_ms\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rtt > 0.0, "keepalive RTT measured: {json}");
    let out = t.clients[0].exec(&[bin.to_str().unwrap(), "status", "--tun-name", "nothere0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no sshvpn client running"));
}
