//! Hostile peers, both ways: a server that lies to the client (addresses with wide prefixes,
//! routes over the client's LAN, bad MTUs, search domains with control characters, injected
//! packets from foreign sources), and an authenticated client that tries to exhaust the server
//! (keepalive floods while never reading, idle control connections, many instances of one
//! identity). Each rule is checked with a fake peer that speaks the protocol.

use std::time::{Duration, Instant};

use sshvpn_common::proto::{CloseCode, Control};
use sshvpn_tests::fake_peer::{FakeClient, rss_kib};
use sshvpn_tests::topo::{LAN6, SSH_PORT};
use sshvpn_tests::{Bin, NetnsEtc, Process, Topology, wait_until};

/// `sshvpn connect` in client namespace 0 against the fake server with these arguments.
fn connect_to_liar(t: &Topology, lies: &[&str], report: &std::path::Path) -> Process {
    connect_to_liar_with(t, &[], lies, report)
}

/// The same with extra client arguments.
fn connect_to_liar_with(t: &Topology, client: &[&str], lies: &[&str], report: &std::path::Path) -> Process {
    let fake = Bin::path("sshvpn-fake-server");
    let mut words = vec![fake.to_str().unwrap().to_string()];
    words.extend(lies.iter().map(|w| format!("'{w}'")));
    words.push("--report".into());
    words.push(report.to_str().unwrap().into());
    let cmd = words.join(" ");
    let log = t.log(&format!("liar-client-{}.log", rand::random::<u32>()));
    let mut args = vec!["connect", "--ssh-command", &cmd];
    args.extend_from_slice(client);
    Process::spawn(&t.clients[0], "sshvpn", &args, log)
}

fn report_count(report: &std::path::Path, source: &str) -> u64 {
    std::fs::read_to_string(report)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(source)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_lying_server_cannot_take_over_routes_addresses_or_dns() {
    let t = Topology::new(1);
    let original = "nameserver 192.0.2.1\n";
    let etc = NetnsEtc::with_resolv_conf(&t.clients[0], original);
    let report = t.log("replies");
    // The client's LAN is 10.200.1.0/24 and fd00:200:1::/64.
    let lies = [
        "--addr4",
        "10.203.0.130/1",
        "--addr6",
        "2001:db8::2/3",
        "--peer4",
        "10.203.0.1",
        "--peer6",
        "fd00:203::1",
        "--route",
        "10.200.1.128/25",
        "--route",
        "2000::/3",
        "--route",
        "0.0.0.0/0",
        "--route",
        "10.210.0.0/16",
        "--dns",
        "10.203.0.53",
        "--search",
        "evil.example\noptions ndots:15 trust-ad",
        "--search",
        "good.example",
        "--ping-from",
        "10.203.0.1",
        "--ping-from",
        "192.0.2.77",
    ];
    let mut client = connect_to_liar(&t, &lies, &report);
    client.wait_for_log("tunnel up", 20.0);
    let ns = &t.clients[0];

    let addrs = ns.ip(&["addr", "show", "dev", "sshvpn0"]);
    assert!(
        addrs.contains("inet 10.203.0.130/32") && addrs.contains("inet6 2001:db8::2/128"),
        "assigned addresses are host addresses whatever prefix the server sends:\n{addrs}"
    );
    let routes4 = ns.ip(&["-4", "route", "show"]);
    let routes6 = ns.ip(&["-6", "route", "show"]);
    for refused in ["0.0.0.0/1", "128.0.0.0/1", "10.200.1.128/25", "default dev sshvpn0"] {
        assert!(!routes4.contains(refused), "{refused} must not be routed:\n{routes4}");
    }
    assert!(!routes6.contains("2000::/3"), "all global IPv6 taken over:\n{routes6}");
    assert!(
        routes4.contains("10.210.0.0/16 dev sshvpn0") && routes4.contains("10.203.0.1 dev sshvpn0"),
        "the acceptable route and the server's tunnel address:\n{routes4}"
    );
    let log = client.log_text();
    assert!(
        log.contains("not installing pushed route 10.200.1.128/25: it overlaps the local network 10.200.1.0/24"),
        "{log}"
    );
    assert!(log.contains("ignoring pushed search domain"), "{log}");

    let resolv = etc.resolv_conf();
    assert!(
        resolv.contains("nameserver 10.203.0.53") && resolv.contains("search good.example\n"),
        "{resolv}"
    );
    assert!(
        !resolv.contains("options") && !resolv.contains("evil"),
        "pushed text reached resolv.conf:\n{resolv}"
    );

    // Injected packets: from the server's tunnel address they are answered, from a source no
    // route of the client points into the tunnel for they are dropped and counted.
    assert!(
        wait_until(10.0, || report_count(&report, "10.203.0.1") >= 5),
        "echo requests from the server's tunnel address get replies"
    );
    assert_eq!(report_count(&report, "192.0.2.77"), 0, "a spoofed source got answers");
    let status = ns.exec(&[Bin::path("sshvpn").to_str().unwrap(), "status", "--json"]);
    let text = String::from_utf8_lossy(&status.stdout);
    let spoofed: u64 = text
        .split("\"spoofed\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(spoofed >= 5, "spoofed packets counted in `sshvpn status`: {text}");

    assert!(client.stop().success());
    assert_eq!(etc.resolv_conf(), original, "resolv.conf restored");
}

#[test]
fn a_configuration_the_client_cannot_accept_ends_the_client_with_the_reason() {
    let t = Topology::new(1);
    let report = t.log("unused");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--addr4", "10.203.0.2/24", "--mtu", "100"],
            "pushed MTU 100 is outside",
        ),
        (
            &["--addr4", "10.203.0.2/24", "--addr6", "fd00:203::2/64", "--mtu", "1000"],
            "below IPv6's minimum",
        ),
        (
            &["--addr4", "10.200.1.77/24"],
            "lies inside the local network 10.200.1.0/24",
        ),
    ];
    for (lies, reason) in cases {
        let mut client = connect_to_liar(&t, lies, &report);
        let status = client.wait_exit(15.0).expect("the client gives up");
        assert!(!status.success(), "{lies:?}: exit status {status}");
        let log = client.log_text();
        assert!(
            log.contains("the server's configuration is refused") && log.contains(reason),
            "{lies:?}:\n{log}"
        );
        let addrs = t.clients[0].ip(&["addr", "show"]);
        assert!(!addrs.contains("10.200.1.77/"), "nothing applied:\n{addrs}");
    }
}

#[test]
fn a_client_flooding_keepalives_without_reading_is_disconnected_with_bounded_memory() {
    let mut t = Topology::new(1);
    let s = t.start_daemon(&["--allow-user", "root", "--keepalive", "1", "--dead-peer-timeout", "3"]);
    let pid = t.process(s).child.id();
    let mut fake = FakeClient::attach(&t.control_socket(), None);
    let answer = fake.handshake(10.0);
    let Some(Control::Config(config)) = answer else {
        panic!("no configuration: {answer:?}")
    };
    let before = rss_kib(pid);
    // Flood: batches of 4096 keepalives (13 bytes each), never reading a byte. Each batch also
    // pings the server's tunnel address, so that its answers fill our receive buffer quickly and
    // the daemon's writes to us block (keepalive answers alone take long to fill it).
    let (Some(own), Some(server)) = (config.addr4, config.peer4) else {
        panic!("no IPv4 assignment: {config:?}")
    };
    let std::net::IpAddr::V4(own) = own.addr() else {
        panic!("addr4 is not IPv4")
    };
    let mut batch = bytes::BytesMut::new();
    for token in 0..4096u64 {
        Control::Keepalive(token).encode_frame(&mut batch);
        if token % 256 == 0 {
            let ping =
                etherparse::PacketBuilder::ipv4(own.octets(), server.octets(), 64).icmpv4_echo_request(7, token as u16);
            let mut pkt = Vec::new();
            ping.write(&mut pkt, &[0u8; 1000]).unwrap();
            sshvpn_common::proto::frame::encode(&mut batch, sshvpn_common::proto::frame::FrameType::Ip, &pkt);
        }
    }
    fake.stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let started = Instant::now();
    let mut peak = before;
    let mut sent = 0u64;
    let ended = loop {
        if started.elapsed() > Duration::from_secs(40) {
            break None;
        }
        match std::io::Write::write_all(&mut fake.stream, &batch) {
            Ok(()) => sent += 4096,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break Some(started.elapsed()),
        }
        peak = peak.max(rss_kib(pid));
    };
    let took = ended.expect("the flooding client was never disconnected");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "keepalive flood: {sent} keepalives in {:.1}s, disconnected after {:.1}s; server RSS {before} KiB -> peak {peak} KiB (+{growth} KiB)",
        took.as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(sent > 100_000, "the flood reached the server ({sent} keepalives)");
    assert!(growth < 32 * 1024, "server memory grew by {growth} KiB under the flood");
    t.process(s).wait_for_log("peer stopped reading", 5.0);
    // The daemon still serves others.
    let mut other = FakeClient::attach(&t.control_socket(), Some("other"));
    assert!(matches!(other.handshake(10.0), Some(Control::Config(_))));
}

#[test]
fn one_identity_gets_a_bounded_number_of_sessions_and_attach_respects_max_clients() {
    let mut t = Topology::new(1);
    t.start_daemon(&[
        "--allow-user",
        "root",
        "--max-sessions-per-identity",
        "3",
        "--max-clients",
        "5",
    ]);
    let control = t.control_socket();
    let mut held = Vec::new();
    for tag in ["a", "b", "c"] {
        let mut c = FakeClient::attach(&control, Some(tag));
        let answer = c.handshake(10.0);
        assert!(matches!(answer, Some(Control::Config(_))), "instance {tag}: {answer:?}");
        held.push(c);
    }
    let mut fourth = FakeClient::attach(&control, Some("d"));
    match fourth.handshake(10.0) {
        Some(Control::Close { code, reason }) => {
            assert_eq!(code, CloseCode::PoolExhausted);
            assert!(reason.contains("--max-sessions-per-identity"), "{reason}");
        }
        other => panic!("a fourth instance of one identity was not refused: {other:?}"),
    }
    // Reconnecting an instance that is connected replaces it rather than counting twice.
    let mut again = FakeClient::attach(&control, Some("a"));
    assert!(matches!(again.handshake(10.0), Some(Control::Config(_))));
    held.push(again);
    // An instance tag that is not a short word of safe characters is refused.
    let mut bad = FakeClient::attach(&control, Some("x\ny"));
    let answer = bad.handshake(10.0);
    assert!(
        matches!(
            answer,
            Some(Control::Close {
                code: CloseCode::ProtocolError,
                ..
            })
        ),
        "refused with a reason: {answer:?}"
    );
    // --max-clients counts attached sessions: the uid the tests run as is one identity, so
    // fill the rest with sessions that stay in the handshake's accepted state.
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let mut all = Vec::new();
    for tag in ["p", "q", "r"] {
        let mut c = FakeClient::attach(&control, Some(tag));
        let answer = c.handshake(10.0);
        assert!(matches!(answer, Some(Control::Config(_))), "instance {tag}: {answer:?}");
        all.push(c);
    }
    // Two more connections that never say hello hold client slots too (they count from the
    // moment the tunnel protocol starts).
    let _idle: Vec<_> = (0..2)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&control).unwrap();
            std::io::Write::write_all(&mut s, b"attach\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut full = FakeClient::attach(&control, Some("s"));
    match full.handshake(10.0) {
        Some(Control::Close { code, reason }) => {
            assert_eq!(code, CloseCode::PoolExhausted);
            assert!(reason.contains("server full"), "{reason}");
        }
        other => panic!("attach beyond --max-clients was not refused: {other:?}"),
    }
}

#[test]
fn the_control_socket_survives_a_flood_of_idle_connections() {
    let mut t = Topology::new(1);
    // Few descriptors, so that the flood exhausts them and accept() fails.
    t.server_wrapper = vec!["prlimit".into(), "--nofile=48:48".into()];
    let s = t.start_server(&[]);
    let control = t.control_socket();
    let flood = std::thread::spawn({
        let control = control.clone();
        move || {
            (0..120)
                .filter_map(|_| std::os::unix::net::UnixStream::connect(&control).ok())
                .collect::<Vec<_>>()
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        t.process(s).child.try_wait().unwrap().is_none(),
        "the daemon died under the flood:\n{}",
        t.process(s).log_text()
    );
    // Idle connections are closed after the request deadline; then the daemon serves again.
    let status = || {
        let out = std::process::Command::new(Bin::path("sshvpnd"))
            .args(["status", "--control", control.to_str().unwrap()])
            .output()
            .unwrap();
        out.status.success()
    };
    assert!(wait_until(60.0, status), "status works again after the flood");
    let held = flood.join().unwrap();
    assert!(held.len() >= 60, "the flood opened {} connections", held.len());
    let log = t.process(s).log_text();
    assert!(
        log.contains("control socket: accept failed"),
        "the flood exhausted descriptors:\n{log}"
    );
    t.start_client(0, &[]);
    assert!(t.clients[0].ping("10.203.0.1", 5), "a tunnel works after the flood");
    drop(held);
}

#[test]
fn full_tunnel_against_an_ipv4_only_server_does_not_leak_ipv6() {
    let mut t = Topology::new(1);
    let ns = &t.clients[0];
    // The underlay routes IPv6 to the LAN host through the server namespace.
    ns.ip(&["-6", "route", "add", "default", "via", "fd00:200:1::1"]);
    assert!(ns.ping(LAN6, 5), "IPv6 reaches the LAN host over the underlay");
    t.ipv6 = false;
    t.start_server(&[]);
    let c = t.start_client(0, &["--default-route", "--no-accept-routes"]);
    let ns = &t.clients[0];
    let out = ns.exec(&["ping", "-6", "-c", "1", "-W", "2", LAN6]);
    let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "IPv6 left past the tunnel: {said}");
    let said_lc = said.to_lowercase();
    assert!(
        said_lc.contains("unreachable") || said_lc.contains("no route to host"),
        "an immediate error, not a timeout: {said}"
    );
    let routes6 = ns.ip(&["-6", "route", "show", "table", "main"]);
    assert!(
        routes6.contains("unreachable ::/1") && routes6.contains("unreachable 8000::/1"),
        "{routes6}"
    );
    assert!(ns.ping("10.202.0.2", 5), "IPv4 goes through the tunnel");
    assert!(t.process(c).stop().success());
    let ns = &t.clients[0];
    let routes6 = ns.ip(&["-6", "route", "show"]);
    assert!(!routes6.contains("unreachable"), "removed on exit:\n{routes6}");
    assert!(ns.ping(LAN6, 5), "IPv6 works again after the tunnel");
}

#[test]
fn a_squatted_status_socket_name_does_not_stop_connect() {
    let mut t = Topology::new(1);
    // Another local user binds the name the status socket used to have (an abstract socket
    // anyone can take first).
    let _squatter = t.clients[0].run(|| {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"sshvpn-sshvpn0").unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).expect("squat the abstract name")
    });
    t.start_server(&[]);
    let c = t.start_client(0, &[]);
    let out = t.clients[0].exec(&[Bin::path("sshvpn").to_str().unwrap(), "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("connected:   true"), "{text}");
    // A second client on the same interface in the same namespace is still refused.
    let second = t.spawn_client(0, &[]);
    let status = t.process(second).wait_exit(15.0).expect("second client exits");
    assert!(!status.success());
    assert!(
        t.process(c).child.try_wait().unwrap().is_none(),
        "the first client keeps running"
    );
}

/// The routes through the tunnel in client namespace 0, as `ip route` prints their destinations.
fn tunnel_routes(t: &Topology) -> Vec<String> {
    let mut all = t.clients[0].ip(&["-4", "route", "show", "dev", "sshvpn0"]);
    all += &t.clients[0].ip(&["-6", "route", "show", "dev", "sshvpn0"]);
    all.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The tunnel's own addresses: what every fake-server test below is assigned.
const TUNNEL: [&str; 4] = ["--addr4", "10.203.0.2/24", "--peer4", "10.203.0.1"];

#[test]
fn a_server_pushing_every_slash_8_gets_one_slash_8_and_one_warning() {
    let t = Topology::new(1);
    // A resolver on the client's LAN (10.0.0.0/8 is refused as overlapping it anyway).
    let _etc = NetnsEtc::with_resolv_conf(&t.clients[0], "nameserver 10.200.1.53\n");
    let report = t.log("unused");
    let slash8: Vec<String> = (1..=223).map(|i| format!("{i}.0.0.0/8")).collect();
    let mut lies: Vec<&str> = TUNNEL.to_vec();
    for r in &slash8 {
        lies.extend(["--route", r]);
    }
    let mut client = connect_to_liar(&t, &lies, &report);
    client.wait_for_log("tunnel up", 20.0);
    let routes = tunnel_routes(&t);
    let wide: Vec<&String> = routes.iter().filter(|r| r.ends_with("/8")).collect();
    assert_eq!(wide, ["1.0.0.0/8"], "the budget is one /8 of IPv4:\n{routes:?}");
    let v4: Vec<&String> = routes.iter().filter(|r| !r.contains(':')).collect();
    assert_eq!(v4, ["1.0.0.0/8", "10.203.0.1"], "one /8 and the server's host route");
    let log = client.log_text();
    let budget: Vec<&str> = log.lines().filter(|l| l.contains("beyond the budget")).collect();
    assert_eq!(budget.len(), 1, "one warning sums up the routes refused:\n{log}");
    assert!(budget[0].contains("not installing 219 pushed routes"), "{}", budget[0]);
    assert!(client.stop().success());
}

#[test]
fn pushed_routes_never_cover_the_hosts_resolvers_or_link_local_even_without_dns() {
    let t = Topology::new(1);
    let original = "nameserver 8.8.8.8\n";
    let etc = NetnsEtc::with_resolv_conf(&t.clients[0], original);
    let report = t.log("unused");
    let mut lies: Vec<&str> = TUNNEL.to_vec();
    lies.extend([
        "--route",
        "8.0.0.0/8",
        "--route",
        "169.254.0.0/16",
        "--route",
        "10.210.0.0/16",
        "--dns",
        "8.8.8.8",
    ]);
    let mut client = connect_to_liar_with(&t, &["--no-dns"], &lies, &report);
    client.wait_for_log("tunnel up", 20.0);
    let routes = tunnel_routes(&t);
    assert!(routes.contains(&"10.210.0.0/16".to_string()), "{routes:?}");
    for refused in ["8.0.0.0/8", "169.254.0.0/16"] {
        assert!(
            !routes.contains(&refused.to_string()),
            "{refused} routed into the tunnel: {routes:?}"
        );
    }
    let log = client.log_text();
    assert!(
        log.contains("not installing pushed route 8.0.0.0/8: it covers this host's resolver 8.8.8.8"),
        "{log}"
    );
    assert!(
        log.contains("not installing pushed route 169.254.0.0/16: it touches link-local addresses"),
        "{log}"
    );
    let path = t.clients[0].exec(&["ip", "-4", "route", "get", "8.8.8.8"]);
    let path = String::from_utf8_lossy(&path.stdout);
    assert!(!path.contains("sshvpn0"), "DNS goes into the tunnel: {path}");
    assert!(client.stop().success());
    assert_eq!(etc.resolv_conf(), original);
}

#[test]
fn accept_routes_within_is_an_allow_list() {
    let t = Topology::new(1);
    let report = t.log("unused");
    let mut lies: Vec<&str> = TUNNEL.to_vec();
    lies.extend([
        "--route",
        "10.1.0.0/16",
        "--route",
        "11.0.0.0/8",
        "--route",
        "10.210.0.0/16",
    ]);
    let mut client = connect_to_liar_with(&t, &["--accept-routes-within", "10.0.0.0/8"], &lies, &report);
    client.wait_for_log("tunnel up", 20.0);
    let routes = tunnel_routes(&t);
    assert!(
        routes.contains(&"10.1.0.0/16".to_string()) && routes.contains(&"10.210.0.0/16".to_string()),
        "{routes:?}"
    );
    assert!(!routes.contains(&"11.0.0.0/8".to_string()), "{routes:?}");
    let log = client.log_text();
    assert!(
        log.contains("not installing pushed route 11.0.0.0/8: it is outside every --accept-routes-within network"),
        "{log}"
    );
    assert!(client.stop().success());
}

#[test]
fn close_reasons_from_the_server_reach_the_terminal_escaped() {
    let t = Topology::new(1);
    let report = t.log("unused");
    let reason = "bye\n[fake] ERROR forged line\x1b[2J\u{202e}";
    let escaped = "bye\\n[fake] ERROR forged line\\x1b[2J\\u{202e}";
    // Refused at the handshake: the reason ends the client (its last line on stderr) ...
    let mut lies: Vec<&str> = TUNNEL.to_vec();
    lies.extend(["--refuse-reason", reason]);
    let mut client = connect_to_liar(&t, &lies, &report);
    assert!(client.wait_exit(15.0).is_some_and(|s| !s.success()));
    // ... and closed after the configuration: the reason is logged before reconnecting.
    let mut lies: Vec<&str> = TUNNEL.to_vec();
    lies.extend(["--close-reason", reason]);
    let mut lost = connect_to_liar_with(&t, &["--max-retries", "0"], &lies, &report);
    assert!(lost.wait_exit(20.0).is_some_and(|s| !s.success()));
    for (log, context) in [
        (client.log_text(), "server refused the tunnel: "),
        (lost.log_text(), "peer closed the session (Normal): "),
    ] {
        assert!(log.contains(&format!("{context}{escaped}")), "{log}");
        // (The log's own colours are ESC sequences too: look for the peer's.)
        assert!(
            !log.contains("\x1b[2J") && !log.contains('\u{202e}'),
            "raw escapes:\n{log:?}"
        );
        assert!(!log.lines().any(|l| l.starts_with("[fake]")), "a forged line:\n{log}");
    }
}

#[test]
fn a_host_certificate_for_an_address_is_not_accepted_for_a_name_resolving_there() {
    let mut t = Topology::new(1);
    let host_ca = t.keys.generate("host_ca");
    let host_key = t.host_key.clone();
    let keygen = |args: &[&str]| sshvpn_tests::net::run_ok("ssh-keygen", args);
    keygen(&["-q", "-t", "ed25519", "-N", "", "-f", host_key.to_str().unwrap()]);
    // The hub's only principal is its address.
    keygen(&[
        "-q",
        "-s",
        host_ca.to_str().unwrap(),
        "-h",
        "-I",
        "hub",
        "-n",
        "10.200.1.1",
        "-V",
        "-5m:+1h",
        host_key.with_extension("pub").to_str().unwrap(),
    ]);
    let cert = t.log("host_key-cert.pub");
    t.start_server(&["--host-certificate", cert.to_str().unwrap()]);
    let ca_line = format!("@cert-authority * {}\n", t.keys.public(&host_ca).trim());
    std::fs::write(t.known_hosts(0), &ca_line).unwrap();
    // hub.example resolves to that address in the client's namespace (its own /etc/hosts).
    let etc = NetnsEtc::with_resolv_conf(&t.clients[0], "nameserver 192.0.2.1\n");
    std::fs::write(etc.0.join("hosts"), "127.0.0.1 localhost\n10.200.1.1 hub.example\n").unwrap();
    let key = t.client_keys[0].clone();
    let kh = t.known_hosts(0);
    let spawn = |t: &mut Topology, extra: &[&str]| {
        let mut args = vec![
            "connect",
            "root@hub.example",
            "-p",
            SSH_PORT,
            "-i",
            key.to_str().unwrap(),
            "--known-hosts",
            kh.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let log = t.log(&format!("client-cert-{}.log", t.processes.len()));
        t.processes.push(Process::spawn(&t.clients[0], "sshvpn", &args, log));
        t.processes.len() - 1
    };
    let refused = spawn(&mut t, &[]);
    assert!(
        t.process(refused).wait_exit(20.0).is_some_and(|s| !s.success()),
        "a certificate for 10.200.1.1 accepted for hub.example"
    );
    let log = t.process(refused).log_text();
    assert!(
        log.contains("its host certificate was refused: it is for 10.200.1.1, not for hub.example"),
        "{log}"
    );
    // The user says which name the certificate must carry: accepted, nothing recorded.
    let accepted = spawn(&mut t, &["--host-key-alias", "10.200.1.1"]);
    t.process(accepted).wait_for_log("tunnel up", 20.0);
    assert!(
        t.process(accepted)
            .log_text()
            .contains("host certificate \"hub\" accepted")
    );
    assert_eq!(std::fs::read_to_string(t.known_hosts(0)).unwrap(), ca_line);
    assert!(t.process(accepted).stop().success());
}

/// A 1000-byte TCP packet from `own` to the LAN host's port 9, behind a virtio-net header asking
/// the server's kernel to split it in `gso_size`-byte segments.
fn offloaded_tcp(own: std::net::Ipv4Addr, gso_size: u16) -> (Vec<u8>, Vec<u8>) {
    use sshvpn_common::packet::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VirtioNetHdr};
    let mut ip = Vec::new();
    etherparse::PacketBuilder::ipv4(own.octets(), [10, 202, 0, 2], 64)
        .tcp(40000, 9, 1, 64000)
        .write(&mut ip, &[0x5a; 1000])
        .unwrap();
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr.to_bytes().to_vec(), ip)
}

/// The fake client's IPv4 tunnel address from its configuration.
fn own_addr4(answer: Option<Control>) -> std::net::Ipv4Addr {
    let Some(Control::Config(config)) = answer else {
        panic!("no configuration: {answer:?}")
    };
    match config.addr4.map(|a| a.addr()) {
        Some(std::net::IpAddr::V4(a)) => a,
        other => panic!("no IPv4 assignment: {other:?}"),
    }
}

/// TCP packets to port 9 the LAN host has received so far (an nftables counter in its namespace).
fn lan_port9_packets(t: &Topology) -> u64 {
    let out = t.lan.exec_ok(&["nft", "list", "counter", "inet", "gsocount", "port9"]);
    out.split("packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_gso_frame_without_the_negotiated_feature_ends_the_session_with_the_reason() {
    let mut t = Topology::new(1);
    let s = t.start_daemon(&["--allow-user", "root"]);
    let mut fake = FakeClient::attach(&t.control_socket(), Some("nogso"));
    let own = own_addr4(fake.handshake(10.0));
    let (hdr, ip) = offloaded_tcp(own, 536);
    fake.send_data(sshvpn_common::proto::frame::FrameType::Gso, &[&hdr, &ip]);
    let mut closed = None;
    while let Some(msg) = fake.next_control(10.0) {
        if let Control::Close { code, reason } = msg {
            closed = Some((code, reason));
            break;
        }
    }
    let (code, reason) = closed.expect("the session was not ended");
    assert_eq!(code, CloseCode::ProtocolError);
    assert!(reason.contains("did not negotiate the GSO feature"), "{reason}");
    t.process(s).wait_for_log("did not negotiate the GSO feature", 5.0);
}

#[test]
fn a_gso_frame_with_a_one_byte_segment_size_is_dropped_and_counted() {
    let mut t = Topology::new(1);
    t.lan.nft(
        "table inet gsocount {\n counter port9 {}\n chain pre {\n  type filter hook prerouting priority -300;\n  tcp dport 9 counter name \"port9\"\n }\n}\n",
    );
    let s = t.start_daemon(&["--allow-user", "root"]);
    let control = t.control_socket();
    let mut fake = FakeClient::attach_with(&control, Some("gso"), sshvpn_common::proto::Features::GSO);
    let own = own_addr4(fake.handshake(10.0));
    let offered = fake.peer_hello.as_ref().map(|h| h.features);
    assert!(
        offered.is_some_and(|f| f.contains(sshvpn_common::proto::Features::GSO)),
        "the server offers GSO (offloads on): {offered:?}"
    );
    // A well-formed super-packet crosses (the count works; veth may carry it whole).
    let (hdr, ip) = offloaded_tcp(own, 536);
    fake.send_data(sshvpn_common::proto::frame::FrameType::Gso, &[&hdr, &ip]);
    assert!(
        wait_until(10.0, || lan_port9_packets(&t) >= 1),
        "a valid super-packet reaches the LAN"
    );
    std::thread::sleep(Duration::from_millis(300));
    let valid = lan_port9_packets(&t);
    // gso_size 1: the kernel would emit 1000 one-byte segments.
    let (hdr, ip) = offloaded_tcp(own, 1);
    fake.send_data(sshvpn_common::proto::frame::FrameType::Gso, &[&hdr, &ip]);
    let json = || {
        let out = std::process::Command::new(Bin::path("sshvpnd"))
            .args(["status", "--json", "--control", control.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(
        wait_until(10.0, || json().contains("\"bad_offload\":1")),
        "counted as bad_offload in `sshvpnd status`: {}",
        json()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lan_port9_packets(&t), valid, "nothing of the bad frame reached the LAN");
    // The session goes on.
    fake.send(&Control::Keepalive(7));
    let mut acked = false;
    while let Some(msg) = fake.next_control(5.0) {
        if msg == Control::KeepaliveAck(7) {
            acked = true;
            break;
        }
    }
    assert!(acked, "the session is still up");
    assert!(t.process(s).child.try_wait().unwrap().is_none());
}

#[test]
fn a_close_reason_with_forged_lines_is_one_escaped_line_in_the_daemon_log_and_the_audit_log() {
    let mut t = Topology::new(1);
    let audit = t.log("audit.jsonl");
    let s = t.start_daemon(&["--allow-user", "root", "--audit-log", audit.to_str().unwrap()]);
    let mut fake = FakeClient::attach(&t.control_socket(), Some("forger"));
    assert!(matches!(fake.handshake(10.0), Some(Control::Config(_))));
    let forged = "bye\nFeb 30 00:00:00 sshvpnd: client connected: peer 6.6.6.6\r\x1b[2J\u{202e}";
    fake.send(&Control::Close {
        code: CloseCode::Normal,
        reason: forged.into(),
    });
    t.process(s).wait_for_log("client disconnected", 10.0);
    let log = t.process(s).log_text();
    let line = log
        .lines()
        .find(|l| l.contains("client disconnected"))
        .expect("the disconnect line");
    assert!(
        line.contains(
            "closed by client (bye\\nFeb 30 00:00:00 sshvpnd: client connected: peer 6.6.6.6\\r\\x1b[2J\\u{202e})"
        ),
        "the reason on one line, escaped:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("Feb 30")) && !log.contains("\x1b[2J") && !log.contains('\u{202e}'),
        "a forged line or a raw control character in the daemon log:\n{log}"
    );
    assert!(
        wait_until(5.0, || std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains("session_end")),
        "session_end audited"
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
        if v["event"] == "session_end" {
            let reason = v["reason"].as_str().unwrap();
            assert_eq!(
                reason,
                "closed by client (bye\\nFeb 30 00:00:00 sshvpnd: client connected: peer 6.6.6.6\\r\\x1b[2J\\u{202e})"
            );
        }
    }
}
