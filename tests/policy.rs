//! Access control on the hub: two clients in different groups under `default_policy = "deny"`,
//! what passes and what does not (ports, protocols, other clients, the hub itself), stateful
//! replies, live reloads on SIGHUP (and a broken edit that keeps the policy), the audit log,
//! `sshvpnd status` / `sshvpnd policy` / metrics, and the nftables table going with the daemon.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sshvpn_tests::net::run_ok;
use sshvpn_tests::{Bin, Netns, Topology, wait_until};

const OPS: &str = "10.203.0.10";
const CI: &str = "10.203.0.20";
const HUB: &str = "10.203.0.1";
const LAN: &str = "10.202.0.2";
const LAN6: &str = "fd00:202::2";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A TCP connection from `from` to `addr` (a listener in `to`) is set up and the reply to a
/// request comes back (waiting long for flows that must pass, briefly for those that must not).
fn tcp_flow(from: &Netns, to: &Netns, addr: SocketAddr) -> bool {
    tcp_flow_within(from, to, addr, Duration::from_secs(5))
}

/// [`tcp_flow`] for a flow expected to be dropped: gives up after 1.5 s.
fn tcp_denied(from: &Netns, to: &Netns, addr: SocketAddr) -> bool {
    !tcp_flow_within(from, to, addr, Duration::from_millis(1500))
}

fn tcp_flow_within(from: &Netns, to: &Netns, addr: SocketAddr, wait: Duration) -> bool {
    let listener: TcpListener = to.run(move || TcpListener::bind(addr).expect("bind"));
    listener.set_nonblocking(true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + wait + Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let mut buf = [0u8; 4];
                    if s.read_exact(&mut buf).is_ok() && &buf == b"ping" {
                        let _ = s.write_all(b"pong");
                    }
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let ok = from.run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, wait) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"pong"
    });
    done.store(true, Ordering::Relaxed);
    server.join().unwrap();
    ok
}

/// A UDP datagram from `from` to `addr` (an echo socket in `to`) is answered.
fn udp_flow(from: &Netns, to: &Netns, addr: SocketAddr) -> bool {
    let echo: UdpSocket = to.run(move || UdpSocket::bind(addr).expect("udp bind"));
    echo.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        if let Ok((n, peer)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], peer);
        }
    });
    let ok = from.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let _ = s.send_to(b"ping", addr);
        let mut buf = [0u8; 64];
        matches!(s.recv_from(&mut buf), Ok((4, _)))
    });
    server.join().unwrap();
    ok
}

fn write_config(t: &Topology, name: &str, policy: &str) -> PathBuf {
    let key = |i: usize| t.keys.public(&t.client_keys[i]).trim().to_string();
    let text = format!(
        "peers_only = true\npool = \"10.203.0.0/24\"\npool6 = \"fd00:203::/64\"\n{policy}\n\
         [[peer]]\nname = \"laptop\"\nkey = \"{}\"\naddress = \"{OPS}\"\n\n\
         [[peer]]\nname = \"runner\"\nkey = \"{}\"\naddress = \"{CI}\"\n",
        key(0),
        key(1)
    );
    let path = t.log(name);
    std::fs::write(&path, text).unwrap();
    path
}

const POLICY: &str = r#"default_policy = "deny"
[[group]]
name = "ops"
members = ["laptop"]
[[group]]
name = "ci"
members = ["runner"]
[[policy]]
from = ["ops"]
to = ["10.202.0.0/24", "fd00:202::/64"]
ports = ["tcp/22", "tcp/443", "icmp"]
[[policy]]
from = ["ci"]
to = ["10.202.0.2"]
ports = ["tcp/8080"]
[[policy]]
from = ["ops"]
to = ["clients"]
ports = ["tcp/7000"]
"#;

fn audit_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?} is not JSON: {e}")))
        .collect()
}

fn tables(t: &Topology) -> String {
    t.server.exec_ok(&["nft", "list", "tables"])
}

fn metrics(t: &Topology) -> String {
    t.server.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:9812").expect("metrics listener");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
}

#[test]
fn groups_reach_only_what_their_rules_allow_and_replies_pass() {
    let mut t = Topology::new(2);
    let audit = t.log("audit.log");
    let cfg = write_config(
        &t,
        "hub.toml",
        &format!("audit_log = \"{}\"\n{POLICY}", audit.display()),
    );
    let out = run_ok(
        Bin::path("sshvpnd").to_str().unwrap(),
        &["check-config", "--config", cfg.to_str().unwrap()],
    );
    assert!(out.contains("default policy deny, 2 groups, 3 rules"), "{out}");
    let s = t.start_server(&["--config", cfg.to_str().unwrap(), "--metrics", "127.0.0.1:9812"]);
    assert!(
        tables(&t).contains("table inet sshvpnd_policy_sshvpn0"),
        "{}",
        tables(&t)
    );
    let ops = t.start_client(0, &[]);
    let ci = t.start_client(1, &[]);
    let (c0, c1, lan, hub) = (&t.clients[0], &t.clients[1], &t.lan, &t.server);

    // ops: SSH and HTTPS on the LAN (IPv4 and IPv6), ICMP; nothing else.
    assert!(tcp_flow(c0, lan, sa(LAN, 22)), "ops reaches the LAN's SSH");
    assert!(tcp_flow(c0, lan, sa(LAN, 443)), "ops reaches the LAN's HTTPS");
    assert!(tcp_flow(c0, lan, sa(LAN6, 443)), "and over IPv6");
    assert!(c0.ping(LAN, 3), "ops may ping the LAN");
    assert!(tcp_denied(c0, lan, sa(LAN, 80)), "ops: other port denied");
    assert!(!udp_flow(c0, lan, sa(LAN, 22)), "ops: other protocol denied");
    assert!(tcp_denied(c0, hub, sa(HUB, 22)), "ops: the hub's tunnel address denied");
    // ci: the artifact server's port only.
    assert!(tcp_flow(c1, lan, sa(LAN, 8080)), "ci reaches the artifact server");
    assert!(tcp_denied(c1, lan, sa(LAN, 22)), "ci: SSH on the LAN denied");
    assert!(
        tcp_denied(c1, lan, sa(LAN6, 8080)),
        "ci: only the IPv4 address was allowed"
    );
    assert!(!c1.ping(LAN, 1), "ci: ICMP denied");
    assert!(
        tcp_denied(c1, hub, sa("10.202.0.1", 8080)),
        "ci: the hub's LAN address denied"
    );
    // Client to client: ops -> ci allowed (and its replies come back), not the other way.
    assert!(
        tcp_flow(c0, c1, sa(CI, 7000)),
        "ops reaches ci on 7000 and gets the reply"
    );
    assert!(tcp_denied(c1, c0, sa(OPS, 7000)), "ci does not reach ops");
    assert!(tcp_denied(c0, c1, sa(CI, 7001)), "ops: other port of ci denied");
    // A flow the LAN starts is not blocked by the replying client's policy.
    assert!(tcp_flow(lan, c1, sa(CI, 9000)), "ci answers a connection from the LAN");

    // Visible: groups in the status, counters in `sshvpnd policy`, denied packets in metrics.
    let control = t.control_socket();
    let status = run_ok(
        Bin::path("sshvpnd").to_str().unwrap(),
        &["status", "--control", control.to_str().unwrap()],
    );
    let line = |addr: &str| {
        status
            .lines()
            .find(|l| l.contains(addr))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line(OPS).trim_end().ends_with(" ops"), "{status}");
    assert!(line(CI).trim_end().ends_with(" ci"), "{status}");
    let json = run_ok(
        Bin::path("sshvpnd").to_str().unwrap(),
        &["status", "--control", control.to_str().unwrap(), "--json"],
    );
    assert!(json.contains("\"groups\":[\"ops\"]"), "{json}");
    let policy = run_ok(
        Bin::path("sshvpnd").to_str().unwrap(),
        &["policy", "--control", control.to_str().unwrap()],
    );
    assert!(policy.contains("default policy: deny; enforced by nftables table inet sshvpnd_policy_sshvpn0"));
    let hits = |rule: &str| -> u64 {
        let l = policy
            .lines()
            .find(|l| l.contains(rule))
            .unwrap_or_else(|| panic!("{policy}"));
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(hits("ports tcp/22,tcp/443,icmp") >= 3, "{policy}");
    assert!(hits("ports tcp/8080") >= 1, "{policy}");
    assert!(hits("(denied)") >= 5, "{policy}");
    let m = metrics(&t);
    let denied = |group: &str| -> u64 {
        let key = format!("sshvpn_policy_denied_total{{group=\"{group}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("{key} not in\n{m}"))
            .parse()
            .unwrap()
    };
    assert!(denied("ops") >= 3 && denied("ci") >= 4 && denied("all") >= 7, "{m}");

    // A refused key is audited.
    let stranger = t.keys.generate("stranger");
    let _ = t.clients[0].exec(&[
        "ssh",
        "-i",
        stranger.to_str().unwrap(),
        "-p",
        "4022",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "root@10.200.1.1",
        "true",
    ]);

    // Denied traffic is summarized (every 10 s), not logged per packet.
    assert!(
        wait_until(15.0, || audit_events(&audit)
            .iter()
            .any(|e| e["event"] == "policy_denied"
                && e["destination"] == LAN
                && e["port"] == 80)),
        "{:#?}",
        audit_events(&audit)
    );
    t.process(ops).stop();
    t.process(ci).stop();
    let server = t.process(s);
    assert!(wait_until(5.0, || server
        .log_text()
        .matches("client disconnected")
        .count()
        == 2));
    assert!(server.stop().success());

    let events = audit_events(&audit);
    let of = |name: &str| events.iter().filter(|e| e["event"] == name).collect::<Vec<_>>();
    for e in &events {
        assert!(
            e["time"].as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z')),
            "{e}"
        );
    }
    let starts = of("session_start");
    assert_eq!(starts.len(), 2, "{events:#?}");
    let ops_start = starts
        .iter()
        .find(|e| e["peer"] == "laptop")
        .expect("laptop's session_start");
    assert_eq!(ops_start["groups"], serde_json::json!(["ops"]));
    assert!(
        ops_start["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "10.203.0.10/32")
    );
    assert!(ops_start["identity"].as_str().unwrap().starts_with("SHA256:"));
    let ends = of("session_end");
    assert_eq!(ends.len(), 2, "{events:#?}");
    for e in &ends {
        assert!(
            e["rx_bytes"].as_u64().unwrap() > 0 && e["tx_bytes"].as_u64().unwrap() > 0,
            "{e}"
        );
        assert!(e["rx_packets"].as_u64().unwrap() > 0, "{e}");
        assert!(
            e["drops"]["spoofed"].is_u64() && e["duration_s"].as_f64().unwrap() > 1.0,
            "{e}"
        );
        assert!(e["reason"].as_str().unwrap().contains("closed"), "{e}");
    }
    let denied: Vec<_> = of("policy_denied");
    let to80 = denied.iter().find(|e| e["port"] == 80).unwrap();
    assert_eq!(to80["protocol"], "tcp");
    assert_eq!(to80["source"], OPS);
    assert_eq!(to80["identity"], ops_start["identity"]);
    assert!(to80["packets"].as_u64().unwrap() >= 1);
    let udp = denied.iter().find(|e| e["protocol"] == "udp");
    assert!(udp.is_some_and(|e| e["port"] == 22), "{denied:#?}");
    let failed = of("auth_failed");
    assert!(
        failed
            .iter()
            .any(|e| e["user"] == "root" && e["source"].as_str().unwrap().starts_with("10.200.1.2:")),
        "{events:#?}"
    );

    // The policy state goes with the daemon.
    assert!(!tables(&t).contains("sshvpnd_policy"), "{}", tables(&t));
}

#[test]
fn sighup_swaps_the_policy_without_reconnecting_and_a_broken_edit_keeps_it() {
    let mut t = Topology::new(2);
    let audit = t.log("audit.log");
    let cfg = write_config(&t, "hub.toml", POLICY);
    let s = t.start_server(&[
        "--config",
        cfg.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let ci = t.start_client(1, &[]);
    let (c1, lan) = (&t.clients[1], &t.lan);
    assert!(tcp_flow(c1, lan, sa(LAN, 8080)));
    assert!(tcp_denied(c1, lan, sa(LAN, 8081)), "not allowed yet");

    // Allow ci a second port: applies to the connected client at once.
    let reloads = |t: &Topology, what: &str| t.processes[s].log_text().matches(what).count();
    let two_ports = POLICY.replace("\"tcp/8080\"", "\"tcp/8080\", \"tcp/8081\"");
    write_config(&t, "hub.toml", &two_ports);
    t.process(s).signal(nix::sys::signal::Signal::SIGHUP);
    assert!(wait_until(5.0, || reloads(&t, "configuration reloaded") == 1));
    let (c1, lan) = (&t.clients[1], &t.lan);
    assert!(tcp_flow(c1, lan, sa(LAN, 8081)), "the new rule is in force");
    assert!(tcp_flow(c1, lan, sa(LAN, 8080)), "and the old one still");

    // A broken edit: the error names its line; the policy in force stays.
    let broken = write_config(&t, "hub.toml", &two_ports.replace("\"tcp/8081\"", "\"tcp/80810\""));
    let broken = std::fs::read_to_string(broken).unwrap();
    // Errors name the line of the [[policy]] table.
    let header = broken[..broken.find("\"tcp/80810\"").unwrap()]
        .rfind("[[policy]]")
        .unwrap();
    let rule_line = broken[..header].lines().count() + 1;
    let out = std::process::Command::new(Bin::path("sshvpnd"))
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("hub.toml:{rule_line}: policy: port \"tcp/80810\"")),
        "{err}"
    );
    t.process(s).signal(nix::sys::signal::Signal::SIGHUP);
    assert!(wait_until(5.0, || reloads(&t, "configuration reload failed") == 1));
    let log = t.process(s).log_text();
    assert!(
        log.contains(&format!("hub.toml:{rule_line}: policy: port \"tcp/80810\"")),
        "{log}"
    );
    let (c1, lan) = (&t.clients[1], &t.lan);
    assert!(tcp_flow(c1, lan, sa(LAN, 8081)), "the previous policy stays in force");
    assert!(tcp_denied(c1, lan, sa(LAN, 22)));

    // Back to "allow" with no rules: no table at all, everything passes.
    write_config(&t, "hub.toml", "default_policy = \"allow\"\n");
    t.process(s).signal(nix::sys::signal::Signal::SIGHUP);
    assert!(wait_until(5.0, || reloads(&t, "configuration reloaded") == 2));
    assert!(!tables(&t).contains("sshvpnd_policy"), "{}", tables(&t));
    let (c1, lan) = (&t.clients[1], &t.lan);
    assert!(tcp_flow(c1, lan, sa(LAN, 22)), "allow: everything passes");

    // Never reconnected.
    let server_log = t.process(s).log_text();
    assert_eq!(server_log.matches("client connected").count(), 1, "{server_log}");
    assert_eq!(t.process(ci).log_text().matches("tunnel up").count(), 1);
    let events = audit_events(&audit);
    let reloaded: Vec<_> = events.iter().filter(|e| e["event"] == "config_reloaded").collect();
    assert_eq!(reloaded.len(), 3, "{events:#?}");
    assert_eq!(reloaded[0]["ok"], true);
    assert_eq!(reloaded[1]["ok"], false);
    assert!(reloaded[1]["detail"].as_str().unwrap().contains("tcp/80810"));
    assert_eq!(reloaded[2]["ok"], true);

    // Stopping the daemon under a connected client still records the session's end.
    assert!(t.process(s).stop().success());
    let events = audit_events(&audit);
    let end = events
        .iter()
        .find(|e| e["event"] == "session_end")
        .expect("session_end");
    assert_eq!(end["reason"], "daemon shutting down", "{end}");
    assert!(end["tx_bytes"].as_u64().unwrap() > 0, "{end}");
}

#[test]
fn no_policy_means_no_firewall_state_and_a_killed_run_leaves_nothing_behind() {
    let mut t = Topology::new(2);
    let before = t.server.exec_ok(&["nft", "list", "ruleset"]);
    let s = t.start_server(&[]);
    let c = t.start_client(0, &[]);
    assert!(t.clients[0].ping(LAN, 3));
    assert_eq!(
        t.server.exec_ok(&["nft", "list", "ruleset"]),
        before,
        "no table without a policy"
    );
    t.process(c).stop();
    t.process(s).stop();

    // With a policy, killed with SIGKILL: the table stays; the next start replaces it.
    let cfg = write_config(&t, "hub.toml", "default_policy = \"deny\"\n");
    let s = t.start_server(&["--config", cfg.to_str().unwrap()]);
    assert!(tables(&t).contains("sshvpnd_policy_sshvpn0"));
    t.process(s).signal(nix::sys::signal::Signal::SIGKILL);
    t.process(s).wait_exit(5.0).expect("killed");
    assert!(tables(&t).contains("sshvpnd_policy_sshvpn0"));
    let s = t.start_server(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(tables(&t).matches("sshvpnd_policy_sshvpn0").count(), 1);
    let c = t.start_client(0, &[]);
    assert!(!t.clients[0].ping(LAN, 1), "deny with no rules: nothing passes");
    t.process(c).stop();
    assert!(t.process(s).stop().success());
    assert_eq!(
        t.server.exec_ok(&["nft", "list", "ruleset"]),
        before,
        "ruleset restored"
    );

    // Unprivileged after setup (CAP_NET_ADMIN only): the sets still follow the sessions and
    // the table still goes at exit.
    let cfg = write_config(
        &t,
        "hub.toml",
        "default_policy = \"deny\"\n[[policy]]\nfrom = [\"laptop\"]\nto = [\"10.202.0.0/24\"]\nports = [\"icmp\"]\n",
    );
    let s = t.start_server(&["--config", cfg.to_str().unwrap(), "--user", "nobody"]);
    t.processes[s].wait_for_log("now running as nobody", 5.0);
    t.start_client(0, &[]);
    assert!(
        t.clients[0].ping(LAN, 3),
        "the laptop's address joined its set:\n{}",
        t.processes[s].log_text()
    );
    assert!(t.process(s).stop().success());
    assert_eq!(
        t.server.exec_ok(&["nft", "list", "ruleset"]),
        before,
        "ruleset restored"
    );
}

/// Data-path cost of a 10-rule policy: iperf3 (one TCP stream, client -> LAN host) with no
/// policy and with one, alternating in the same run and the same session (switched by SIGHUP).
/// `cargo build --release --workspace --bins && cargo test --release -p sshvpn-tests --test policy
/// -- --ignored --nocapture policy_cost` (POLICY_BENCH_SECS, POLICY_BENCH_ROUNDS: 5 s, 4 rounds).
#[test]
#[ignore = "benchmark: run on demand"]
fn policy_cost() {
    let mut t = Topology::new(2);
    let cfg = write_config(&t, "hub.toml", "");
    let s = t.start_server(&["--config", cfg.to_str().unwrap()]);
    t.start_client(0, &[]);
    let mut ten = String::from("default_policy = \"deny\"\n");
    for i in 0..9 {
        ten.push_str(&format!(
            "[[policy]]\nfrom = [\"runner\"]\nto = [\"10.{i}.0.0/16\", \"fd00:{i}::/64\"]\nports = [\"tcp/{}\", \"udp/53\"]\n",
            1000 + i
        ));
    }
    ten.push_str("[[policy]]\nfrom = [\"laptop\"]\nto = [\"10.202.0.0/24\"]\nports = [\"tcp/5201\", \"icmp\"]\n");
    let secs = std::env::var("POLICY_BENCH_SECS").unwrap_or_else(|_| "5".into());
    let mut results: Vec<(&str, f64)> = Vec::new();
    let rounds: usize = std::env::var("POLICY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    for round in 0..rounds {
        let with = round % 2 == 1;
        write_config(&t, "hub.toml", if with { &ten } else { "" });
        t.process(s).signal(nix::sys::signal::Signal::SIGHUP);
        let n = round + 1;
        assert!(wait_until(5.0, || t.processes[s]
            .log_text()
            .matches("configuration reloaded")
            .count()
            == n));
        assert_eq!(tables(&t).contains("sshvpnd_policy"), with);
        let log = t.log(&format!("iperf-{round}.log"));
        let mut server = sshvpn_tests::Process::spawn_cmd(&t.lan, "iperf3", &["-s", "-1", "-p", "5201"], &[], log);
        std::thread::sleep(Duration::from_millis(300));
        let out = t.clients[0].exec_ok(&["iperf3", "-c", LAN, "-p", "5201", "-t", &secs, "-J"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .expect("bits_per_second");
        server.wait_exit(5.0);
        results.push((if with { "10-rule policy" } else { "no policy" }, bps / 1e6));
    }
    for (what, mbps) in &results {
        println!("policy_cost: {what:>15}: {mbps:8.1} Mbit/s");
    }
    let avg = |w: &str| {
        let v: Vec<f64> = results.iter().filter(|(x, _)| *x == w).map(|(_, m)| *m).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!(
        "policy_cost: ratio with/without = {:.3}",
        avg("10-rule policy") / avg("no policy")
    );
}

#[test]
fn one_client_filling_the_denied_set_does_not_blind_the_audit_log_for_another() {
    let mut t = Topology::new(2);
    let audit = t.log("audit.log");
    let cfg = write_config(
        &t,
        "hub.toml",
        &format!("audit_log = \"{}\"\n{POLICY}", audit.display()),
    );
    t.start_server(&["--config", cfg.to_str().unwrap()]);
    t.start_client(0, &[]);
    t.start_client(1, &[]);
    // ops sends to 8000 distinct denied UDP ports of the LAN host: far more flows than the denied
    // set holds (4096).
    let sent = t.clients[0].run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        (1..=8000u16).filter(|p| s.send_to(b"x", sa(LAN, *p)).is_ok()).count()
    });
    assert_eq!(sent, 8000);
    std::thread::sleep(Duration::from_millis(500));
    // Then ci's one denied flow.
    t.clients[1].run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            let _ = s.send_to(b"ci", sa(LAN, 4444));
        }
    });
    let seen = |e: &serde_json::Value| {
        e["event"] == "policy_denied" && e["source"] == CI && e["destination"] == LAN && e["port"] == 4444
    };
    assert!(
        wait_until(25.0, || audit_events(&audit).iter().any(seen)),
        "ci's denied flow is audited: {} events, none from ci",
        audit_events(&audit).len()
    );
    assert!(
        wait_until(15.0, || audit_events(&audit)
            .iter()
            .any(|e| e["event"] == "denied_flows_suppressed" && e["source"] == OPS)),
        "ops is told to be over its share"
    );
    let suppressed = audit_events(&audit)
        .iter()
        .filter(|e| e["event"] == "denied_flows_suppressed")
        .count();
    assert_eq!(suppressed, 1, "one event for the greedy client");
    let recorded_ops = audit_events(&audit)
        .iter()
        .filter(|e| e["event"] == "policy_denied" && e["source"] == OPS)
        .count();
    assert!(
        recorded_ops <= 400,
        "ops recorded at most its burst and rate: {recorded_ops}"
    );
    let unrecorded = t.server.exec_ok(&[
        "nft",
        "list",
        "counter",
        "inet",
        "sshvpnd_policy_sshvpn0",
        "denied_unrecorded",
    ]);
    assert!(!unrecorded.contains("packets 0 "), "{unrecorded}");
}
