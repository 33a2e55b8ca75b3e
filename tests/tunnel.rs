//! End-to-end tunnel tests: real `sshvpnd` and `sshvpn` binaries in network namespaces.

use std::net::{IpAddr, SocketAddr};

use sshvpn_tests::topo::{LAN4, LAN6, SSH_PORT};
use sshvpn_tests::traffic::{tcp_transfer, udp_drain, udp_socket};
use sshvpn_tests::{Bin, Topology, wait_until};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ping_and_bulk_transfer_over_ipv4_and_ipv6() {
    let mut t = Topology::new(1);
    t.start_server(&[]);
    let c = t.start_client(0, &[]);
    let log = t.process(c).log_text();
    assert!(
        log.contains("offload on"),
        "both ends offload by default:
{log}"
    );
    assert!(t.clients[0].ping(LAN4, 5), "IPv4 ping through the tunnel");
    assert!(t.clients[0].ping(LAN6, 5), "IPv6 ping through the tunnel");
    tcp_transfer(&t.clients[0], &t.lan, ip(LAN4), 5001, 50 << 20);
    tcp_transfer(&t.clients[0], &t.lan, ip(LAN6), 5002, 50 << 20);
    // And the other way round: the LAN host sends to the client's tunnel address.
    tcp_transfer(&t.lan, &t.clients[0], ip("10.203.0.2"), 5003, 20 << 20);
    // Every offloaded frame a kernel made passed the receive check, both ways.
    let out = t.clients[0].exec(&[sshvpn_tests::Bin::path("sshvpn").to_str().unwrap(), "status", "--json"]);
    let client = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(client.contains("\"bad_offload\":0"), "{client}");
    let out = std::process::Command::new(sshvpn_tests::Bin::path("sshvpnd"))
        .args(["status", "--json", "--control", t.control_socket().to_str().unwrap()])
        .output()
        .unwrap();
    let server = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(server.contains("\"bad_offload\":0"), "{server}");
}

#[test]
fn address_and_routes_are_installed_and_removed() {
    let mut t = Topology::new(1);
    t.start_server(&[]);
    let c = t.start_client(0, &["--route", "10.250.0.0/16", "--tun-name", "vpn7"]);
    let addrs = t.clients[0].ip(&["addr", "show", "dev", "vpn7"]);
    assert!(addrs.contains("inet 10.203.0.2/32"), "client TUN address:\n{addrs}");
    assert!(
        addrs.contains("inet6 fd00:203::2/128"),
        "client TUN IPv6 address:\n{addrs}"
    );
    let routes = t.clients[0].ip(&["route", "show", "dev", "vpn7"]);
    assert!(routes.contains("10.202.0.0/24"), "pushed route:\n{routes}");
    assert!(routes.contains("10.250.0.0/16"), "--route:\n{routes}");
    let routes6 = t.clients[0].ip(&["-6", "route", "show", "dev", "vpn7"]);
    assert!(routes6.contains("fd00:202::/64"), "pushed IPv6 route:\n{routes6}");
    let status = t.process(c).stop();
    assert!(status.success(), "client exits cleanly on SIGTERM: {status}");
    let after = t.clients[0].ip(&["route", "show"]);
    assert!(
        !after.contains("10.202.0.0/24") && !after.contains("10.250.0.0/16"),
        "routes left behind:\n{after}"
    );
    let links = t.clients[0].ip(&["link", "show"]);
    assert!(!links.contains("vpn7"), "TUN left behind:\n{links}");
}

#[test]
fn two_clients_get_distinct_addresses_and_reach_the_lan_and_each_other() {
    let mut t = Topology::new(2);
    t.start_server(&[]);
    t.start_client(0, &[]);
    t.start_client(1, &[]);
    let a = t.clients[0].ip(&["-4", "addr", "show", "dev", "sshvpn0"]);
    let b = t.clients[1].ip(&["-4", "addr", "show", "dev", "sshvpn0"]);
    assert!(
        a.contains("10.203.0.2/32") && b.contains("10.203.0.3/32"),
        "addresses:\n{a}\n{b}"
    );
    assert!(t.clients[0].ping(LAN4, 5));
    assert!(t.clients[1].ping(LAN4, 5));
    assert!(t.clients[0].ping("10.203.0.3", 5), "client 1 reaches client 2");
    assert!(
        t.clients[1].ping("fd00:203::2", 5),
        "client 2 reaches client 1 over IPv6"
    );
    tcp_transfer(&t.clients[0], &t.clients[1], ip("10.203.0.3"), 5004, 10 << 20);
}

#[test]
fn unknown_changed_and_unauthorized_keys_are_refused_and_the_server_keeps_serving() {
    let mut t = Topology::new(2);
    t.start_server(&[]);
    // Unknown host key, without --accept-new-host-key.
    let mut args = t.client_args(0);
    args.retain(|a| a != "--accept-new-host-key");
    let out = run_client(&t.clients[0], &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unknown host key must be refused");
    assert!(
        err.contains("is not known") && err.contains("SHA256:"),
        "message names the fingerprint: {err}"
    );
    assert!(
        !t.known_hosts(0).exists(),
        "nothing recorded without --accept-new-host-key"
    );

    // Changed host key: known_hosts records another key for this server.
    let other = t.keys.generate("impostor");
    let line = format!("[10.200.1.1]:{SSH_PORT} {}", t.keys.public(&other));
    std::fs::write(t.known_hosts(0), line).unwrap();
    let args = t.client_args(0);
    let out = run_client(&t.clients[0], &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "changed host key must be refused even with --accept-new-host-key"
    );
    assert!(err.contains("CHANGED"), "loud message: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // A client key the server does not know.
    let stranger = t.keys.generate("stranger");
    std::fs::remove_file(t.known_hosts(0)).unwrap();
    let mut args = t.client_args(0);
    let i = args.iter().position(|a| a == "-i").unwrap();
    args[i + 1] = stranger.to_str().unwrap().into();
    let out = run_client(&t.clients[0], &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unauthorized key must be refused");
    assert!(
        err.contains("refused key") && err.contains("stranger"),
        "names the key tried: {err}"
    );

    // The server is still serving authorized clients.
    t.start_client(1, &[]);
    assert!(t.clients[1].ping(LAN4, 5));
}

#[test]
fn spoofed_source_addresses_are_dropped() {
    let mut t = Topology::new(1);
    let s = t.start_server(&[]);
    let c = t.start_client(0, &[]);
    // A second address on the client's TUN that the server never assigned.
    t.clients[0].ip(&["addr", "add", "10.203.0.99/32", "dev", "sshvpn0"]);
    let sink = udp_socket(&t.lan, SocketAddr::new(ip(LAN4), 7000));
    let dst = SocketAddr::new(ip(LAN4), 7000);
    let honest = udp_socket(&t.clients[0], SocketAddr::new(ip("10.203.0.2"), 0));
    let spoofed = udp_socket(&t.clients[0], SocketAddr::new(ip("10.203.0.99"), 0));
    for _ in 0..3 {
        spoofed.send_to(b"spoofed", dst).unwrap();
        honest.send_to(b"honest", dst).unwrap();
    }
    let got = udp_drain(&sink);
    assert!(got.iter().any(|d| d == b"honest"), "honest datagrams arrive: {got:?}");
    assert!(
        !got.iter().any(|d| d == b"spoofed"),
        "spoofed datagrams must not arrive: {got:?}"
    );
    assert!(
        !t.clients[0]
            .exec(&["ping", "-c1", "-W1", "-I", "10.203.0.99", LAN4])
            .status
            .success()
    );
    t.process(c).stop();
    let server = t.process(s);
    assert!(wait_until(5.0, || server.log_text().contains("client disconnected")));
    let log = server.log_text();
    let spoofed: u64 = log
        .split("spoofed=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in the server log:\n{log}"));
    assert!(spoofed >= 4, "server counted {spoofed} spoofed packets:\n{log}");
}

/// Sends `payload` on the `sshvpn` subsystem with the stock OpenSSH client, as a misbehaving
/// peer would, and returns its process once started.
fn raw_subsystem_peer(t: &Topology, client: usize, payload: &[u8], name: &str) -> std::process::Child {
    let input = t.log(name);
    std::fs::write(&input, payload).unwrap();
    let key = t.client_keys[client].to_str().unwrap().to_string();
    let cmd = format!(
        "exec ssh -q -i {key} -p {SSH_PORT} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         root@10.200.{}.1 -s sshvpn < {} > /dev/null",
        client + 1,
        input.display()
    );
    std::process::Command::new("ip")
        .args(["netns", "exec", &t.clients[client].name, "sh", "-c", &cmd])
        .spawn()
        .expect("start ssh")
}

#[test]
fn malformed_frames_end_only_that_session() {
    let mut t = Topology::new(2);
    let s = t.start_server(&[]);
    t.start_client(0, &[]);
    assert!(t.clients[0].ping(LAN4, 5));
    // A valid hello (version 1, MTU 1500) so the session is established, then garbage.
    let hello: &[u8] = &[0x10, 0, 0, 10, 1, 0, 2, 0, 1, 3, 0, 2, 0x05, 0xdc];
    let cases: [(&str, Vec<u8>); 3] = [
        ("garbage", [hello, b"GET / HTTP/1.1\r\n\r\n"].concat()),
        (
            "oversized",
            [hello, &[0x01, 0xff, 0xff, 0xff][..], &[0x45; 64][..]].concat(),
        ),
        ("garbage before hello", b"\x00\x01\x02\x03 not a frame".to_vec()),
    ];
    for (name, payload) in cases {
        let mut peer = raw_subsystem_peer(&t, 1, &payload, name);
        let ended = wait_until(10.0, || matches!(peer.try_wait(), Ok(Some(_))));
        if !ended {
            let _ = peer.kill();
        }
        assert!(ended, "{name}: the server must end the session");
        assert!(t.clients[0].ping(LAN4, 3), "{name}: the other client keeps working");
    }
    let log = t.process(s).log_text();
    assert!(log.contains("unknown frame type"), "garbage is reported:\n{log}");
    assert!(log.contains("exceeds the limit"), "oversized frame is reported:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    tcp_transfer(&t.clients[0], &t.lan, ip(LAN4), 5005, 5 << 20);
}

#[test]
fn bad_arguments_give_clear_errors() {
    let out = run_cmd(
        "sshvpnd",
        &[
            "--listen",
            "0.0.0.0:1",
            "--host-key",
            "/x",
            "--authorized-keys",
            "/x",
            "--pool",
            "banana",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'banana'"));
    let out = run_cmd(
        "sshvpnd",
        &[
            "--listen",
            "0.0.0.0:1",
            "--host-key",
            "/nonexistent/dir/hk",
            "--authorized-keys",
            "/nonexistent/ak",
            "--pool",
            "fd00::/64",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not an IPv4 prefix"), "{err}");
    let out = run_cmd("sshvpn", &["connect", "root@", "-i", "/nonexistent"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid target") && !err.contains("panicked"), "{err}");
    let out = run_cmd("sshvpn", &["connect", "root@127.0.0.1", "-i", "/nonexistent/key"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read key /nonexistent/key"), "{err}");
}

fn run_cmd(bin: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(Bin::path(bin))
        .args(args)
        .output()
        .expect("run")
}

/// Runs the client binary in a namespace with the given arguments.
fn run_client(ns: &sshvpn_tests::Netns, args: &[String]) -> std::process::Output {
    let bin = Bin::path("sshvpn");
    let mut cmd = vec![bin.to_str().unwrap()];
    cmd.extend(args.iter().map(String::as_str));
    ns.exec(&cmd)
}

/// Offloaded (GSO) frames between two offload peers are covered above; here every mix with a
/// peer that moves plain packets only: the offload side must segment in software, with correct
/// checksums, in both directions and over IPv6 too.
#[test]
fn offload_and_plain_peers_interoperate() {
    for (server_offload, client_offload) in [(true, false), (false, true), (false, false)] {
        let mut t = Topology::new(1);
        t.start_server(if server_offload { &[] } else { &["--no-offload"] });
        let c = t.start_client(0, if client_offload { &[] } else { &["--no-offload"] });
        let log = t.process(c).log_text();
        assert!(log.contains("offload off"), "offload negotiated off:\n{log}");
        tcp_transfer(&t.clients[0], &t.lan, ip(LAN4), 5010, 20 << 20);
        tcp_transfer(&t.lan, &t.clients[0], ip("10.203.0.2"), 5011, 20 << 20);
        tcp_transfer(&t.clients[0], &t.lan, ip(LAN6), 5012, 10 << 20);
        tcp_transfer(&t.lan, &t.clients[0], ip("fd00:203::2"), 5013, 10 << 20);
    }
}

/// The tunnel MTU is the smaller of both ends'; a packet too big for it gets an ICMP error back
/// to its sender, and TCP SYNs crossing the tunnel have their MSS clamped to fit.
#[test]
fn mtu_is_negotiated_too_big_packets_get_icmp_and_mss_is_clamped() {
    let mut t = Topology::new(1);
    t.start_server(&[]);
    let c = t.start_client(0, &["--mtu", "1400"]);
    assert!(t.process(c).log_text().contains("mtu 1400"), "negotiated MTU");
    let link = t.clients[0].ip(&["link", "show", "dev", "sshvpn0"]);
    assert!(link.contains("mtu 1400"), "client TUN MTU:\n{link}");

    // Let the client's kernel advertise a 1460-byte MSS; the tunnel must clamp it to 1360.
    t.clients[0].ip(&["link", "set", "dev", "sshvpn0", "mtu", "1500"]);
    let addr = SocketAddr::new(ip(LAN4), 5020);
    let listener = t.lan.run(move || std::net::TcpListener::bind(addr).unwrap());
    let client = t.clients[0].run(move || std::net::TcpStream::connect(addr).unwrap());
    let (server_side, _) = listener.accept().unwrap();
    let ss = t
        .lan
        .exec_ok(&["ss", "-tin", "state", "established", "sport", "= :5020"]);
    // ss shows the MSS in use, less TCP options (timestamps): 1348 when the SYN said 1360.
    let mss: u32 = ss
        .split("mss:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no mss in:\n{ss}"));
    assert!(
        (1000..=1360).contains(&mss),
        "MSS clamped on the SYN crossing the tunnel:\n{ss}"
    );
    drop((client, server_side));
    t.clients[0].ip(&["link", "set", "dev", "sshvpn0", "mtu", "1400"]);

    let out = t
        .lan
        .exec(&["ping", "-c1", "-W2", "-M", "do", "-s", "1472", "10.203.0.2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mtu = 1400"),
        "ICMP fragmentation needed from the tunnel:\n{text}"
    );
    let out = t
        .lan
        .exec(&["ping", "-6", "-c1", "-W2", "-M", "do", "-s", "1452", "fd00:203::2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mtu=1400"),
        "ICMPv6 packet too big from the tunnel:\n{text}"
    );
    assert!(t.lan.ping("10.203.0.2", 3), "packets that fit still pass");
}
