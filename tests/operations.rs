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
