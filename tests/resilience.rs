//! Resilience: reconnection, dead-peer detection, clean shutdown, and the server's admission
//! limits under hostile load. Real binaries in network namespaces.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sshvpn_tests::topo::{LAN4, SSH_PORT};
use sshvpn_tests::traffic::tcp_transfer;
use sshvpn_tests::{Topology, wait_until};

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn server_killed_and_restarted_client_is_back_within_5s_with_the_same_address() {
    let mut t = Topology::new(1);
    let s = t.start_server(&[]);
    let c = t.start_client(0, &["--route", "10.250.0.0/16"]);
    assert!(t.clients[0].ping(LAN4, 5));
    t.process(s).signal(Signal::SIGKILL);
    t.process(s).wait_exit(5.0).expect("server dies");
    let killed = Instant::now();
    t.start_server(&[]);
    let back = wait_until(5.0, || t.clients[0].ping(LAN4, 1));
    assert!(
        back,
        "client back within 5 s of the restart:\n{}",
        t.process(c).log_text()
    );
    assert!(killed.elapsed() < Duration::from_secs(6));
    let addrs = t.clients[0].ip(&["addr", "show", "dev", "sshvpn0"]);
    assert!(
        addrs.contains("10.203.0.2/32"),
        "same address after the server restart:\n{addrs}"
    );
    let routes = t.clients[0].ip(&["route", "show", "dev", "sshvpn0"]);
    assert!(
        routes.contains("10.202.0.0/24") && routes.contains("10.250.0.0/16"),
        "routes intact:\n{routes}"
    );
    assert!(t.process(c).log_text().contains("reconnecting in"));
}

#[test]
fn silent_path_loss_is_detected_and_a_tcp_connection_survives_the_outage() {
    let mut t = Topology::new(1);
    t.start_server(&["--keepalive", "1", "--dead-peer-timeout", "4"]);
    let c = t.start_client(0, &["--keepalive", "1", "--dead-peer-timeout", "4"]);
    // A long-running TCP connection across the tunnel.
    let addr = SocketAddr::new(ip(LAN4), 5100);
    let listener = t.lan.run(move || std::net::TcpListener::bind(addr).unwrap());
    let mut conn = t.clients[0].run(move || TcpStream::connect(addr).unwrap());
    let (mut far, _) = listener.accept().unwrap();
    conn.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    far.read_exact(&mut buf).unwrap();

    // Cut the underlay silently (packets dropped, no error) for 20 s.
    t.clients[0].nft(
        "add table inet cut; add chain inet cut in { type filter hook input priority 0; }; \
         add chain inet cut out { type filter hook output priority 0; }; \
         add rule inet cut in iifname eth0 drop; add rule inet cut out oifname eth0 drop",
    );
    let cut = Instant::now();
    let noticed = wait_until(10.0, || t.processes[c].log_text().contains("reconnecting in"));
    assert!(noticed, "dead peer noticed:\n{}", t.processes[c].log_text());
    assert!(
        cut.elapsed() < Duration::from_secs(7),
        "within the dead-peer timeout: {:?}",
        cut.elapsed()
    );
    conn.write_all(b"during").unwrap();
    std::thread::sleep(Duration::from_secs(20).saturating_sub(cut.elapsed()));
    t.clients[0].nft("delete table inet cut");

    // The tunnel comes back, and the TCP connection delivers what was written during the outage.
    assert!(
        wait_until(40.0, || t.clients[0].ping(LAN4, 1)),
        "tunnel back:\n{}",
        t.processes[c].log_text()
    );
    far.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    far.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");
    conn.write_all(b"after!").unwrap();
    far.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after!");
}

#[test]
fn sigterm_during_reconnect_backoff_leaves_nothing_behind() {
    let mut t = Topology::new(1);
    let s = t.start_server(&[]);
    let c = t.start_client(0, &["--route", "10.250.0.0/16", "--tun-name", "vpnx"]);
    t.process(s).stop();
    assert!(wait_until(5.0, || t.processes[c]
        .log_text()
        .contains("reconnecting in")));
    let status = t.process(c).stop();
    assert!(status.success(), "clean exit: {status}\n{}", t.processes[c].log_text());
    let routes = t.clients[0].ip(&["route", "show"]);
    assert!(
        !routes.contains("10.250.0.0") && !routes.contains("10.202.0.0"),
        "routes left:\n{routes}"
    );
    assert!(!t.clients[0].ip(&["link", "show"]).contains("vpnx"), "TUN left behind");
}

#[test]
fn unauthenticated_floods_are_cut_at_the_login_deadline_without_disturbing_clients() {
    let mut t = Topology::new(3);
    let s = t.start_server(&["--login-grace-time", "3"]);
    t.start_client(0, &[]);
    // 200 connections from another host: half idle, half trickling bytes (SSH_MSG_IGNORE-like).
    let target = SocketAddr::new(ip("10.200.2.1"), SSH_PORT.parse().unwrap());
    let conns: Vec<TcpStream> = t.clients[1].run(move || {
        (0..200)
            .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok())
            .collect()
    });
    assert!(conns.len() > 100, "connections accepted by the kernel: {}", conns.len());
    let opened = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                let _ = s.write_all(b"SSH-2.0-trickle\r\n");
                let mut buf = [0u8; 4096];
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(15) {
                    match s.read(&mut buf) {
                        Ok(0) => return Some(started.elapsed()),
                        Ok(_) => {}
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return Some(started.elapsed()),
                    }
                    if i % 2 == 1 && s.write_all(b"\0").is_err() {
                        return Some(started.elapsed());
                    }
                }
                None
            })
        })
        .collect();
    // Meanwhile the established client works, and a new one gets in within 5 s.
    assert!(t.clients[0].ping(LAN4, 2), "established client undisturbed");
    let newcomer = Instant::now();
    let c3 = t.spawn_client(2, &[]);
    assert!(
        wait_until(5.0, || t.processes[c3].log_text().contains("tunnel up")),
        "new client authenticates within 5 s:\n{}",
        t.processes[c3].log_text()
    );
    assert!(newcomer.elapsed() < Duration::from_secs(5));
    assert!(t.clients[2].ping(LAN4, 2));
    let closed: Vec<Option<Duration>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "every unauthenticated connection is closed");
    assert!(opened.elapsed() < Duration::from_secs(16));
    assert!(
        closed.iter().flatten().all(|d| *d < Duration::from_secs(6)),
        "closed by the 3 s deadline: {closed:?}"
    );
    assert!(t.clients[0].ping(LAN4, 2), "established client still fine");
    let log = t.process(s).log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn repeated_authentication_failures_penalise_only_that_source() {
    let mut t = Topology::new(2);
    let s = t.start_server(&[]);
    let stranger = t.keys.generate("stranger");
    // Fail authentication from client host 2 until the server refuses it outright.
    let mut args = t.client_args(1);
    args.extend(["--max-retries".to_string(), "0".to_string()]);
    let i = args.iter().position(|a| a == "-i").unwrap();
    args[i + 1] = stranger.to_str().unwrap().into();
    let bin = sshvpn_tests::Bin::path("sshvpn");
    let mut cmd = vec![bin.to_str().unwrap()];
    cmd.extend(args.iter().map(String::as_str));
    let mut penalised = false;
    for _ in 0..10 {
        let out = t.clients[1].exec(&cmd);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success());
        if !err.contains("refused key") {
            penalised = true; // the connection was closed before authentication
            break;
        }
    }
    assert!(
        penalised,
        "the failing source ends up refused:\n{}",
        t.processes[s].log_text()
    );
    assert!(wait_until(2.0, || t.processes[s].log_text().contains("penalised")));
    // Another source is unaffected.
    t.start_client(0, &[]);
    assert!(t.clients[0].ping(LAN4, 3));
}

#[test]
fn bulk_transfer_survives_frequent_rekeying() {
    let mut t = Topology::new(1);
    let s = t.start_server(&["--rekey-limit-mib", "64"]);
    let c = t.start_client(0, &[]);
    tcp_transfer(&t.clients[0], &t.lan, ip(LAN4), 5200, 512 << 20);
    tcp_transfer(&t.lan, &t.clients[0], ip("10.203.0.2"), 5201, 256 << 20);
    assert!(!t.processes[c].log_text().contains("reconnecting"), "no tunnel reset");
    assert_eq!(
        count(&t.processes[s].log_text(), "client connected"),
        1,
        "one session throughout"
    );
}

#[test]
fn a_client_that_stops_reading_costs_bounded_server_memory() {
    let mut t = Topology::new(2);
    let s = t.start_server(&[]);
    t.start_client(0, &[]);
    // Client 2 says hello through the stock ssh and then never reads its channel again.
    let key = t.client_keys[1].to_str().unwrap().to_string();
    let hello = t.log("hello");
    std::fs::write(&hello, [0x10u8, 0, 0, 10, 1, 0, 2, 0, 1, 3, 0, 2, 0x05, 0xdc]).unwrap();
    let cmd = format!(
        "(cat {}; sleep 30) | ssh -q -i {key} -p {SSH_PORT} -o BatchMode=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null root@10.200.2.1 -s sshvpn | sleep 30",
        hello.display()
    );
    let mut stuck = std::process::Command::new("ip")
        .args(["netns", "exec", &t.clients[1].name, "sh", "-c", &cmd])
        .spawn()
        .unwrap();
    assert!(wait_until(5.0, || count(
        &t.processes[s].log_text(),
        "client connected"
    ) == 2));
    // Flood the stuck client's address from the LAN for a few seconds.
    let sock = t.lan.run(|| std::net::UdpSocket::bind("10.202.0.2:0").unwrap());
    let payload = [0u8; 1400];
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let _ = sock.send_to(&payload, "10.203.0.3:9");
    }
    let pid = t.processes[s].child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(rss_kib < 96 * 1024, "server peak RSS {rss_kib} KiB");
    assert!(t.clients[0].ping(LAN4, 2), "other clients unaffected");
    tcp_transfer(&t.clients[0], &t.lan, ip(LAN4), 5300, 20 << 20);
    let _ = stuck.kill();
    let _ = stuck.wait();
}

#[test]
fn server_drops_to_an_unprivileged_user_keeping_only_cap_net_admin() {
    let mut t = Topology::new(1);
    let s = t.start_server(&["--user", "nobody"]);
    let pid = t.processes[s].child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_default()
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid.as_raw();
    assert!(
        field("Uid:").split_whitespace().all(|u| u == nobody.to_string()),
        "{status}"
    );
    // CAP_NET_ADMIN is bit 12.
    assert_eq!(field("CapEff:"), "0000000000001000", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000001000", "{status}");
    assert_eq!(field("CapBnd:"), "0000000000001000", "{status}");
    t.start_client(0, &[]);
    assert!(t.clients[0].ping(LAN4, 3), "the tunnel works after the drop");
}
