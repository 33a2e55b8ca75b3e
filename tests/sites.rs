//! Site-to-site: a hub and two site gateways with a LAN host each, configured by file; subnets
//! routed both ways, anti-spoofing over subnets, masquerade, DNS push, configuration errors.

use std::path::PathBuf;

use sshvpn_tests::net::{NetnsEtc, run_ok};
use sshvpn_tests::topo::LAN4;
use sshvpn_tests::traffic::tcp_transfer;
use sshvpn_tests::{Bin, Netns, Topology, wait_until};

/// A LAN host behind client gateway `i`: gateway 192.168.{i+1}.1 / fd00:{a,b}::1, host .2 / ::2.
fn site_lan(t: &Topology, i: usize) -> Netns {
    let lan = Netns::new(&format!("site{i}"));
    let gw = &t.clients[i];
    gw.link("site0", &lan, "eth0");
    let n = i + 1;
    let v6 = if i == 0 { "a" } else { "b" };
    gw.ip(&["addr", "add", &format!("192.168.{n}.1/24"), "dev", "site0"]);
    gw.ip(&["addr", "add", &format!("fd00:{v6}::1/64"), "dev", "site0", "nodad"]);
    lan.ip(&["addr", "add", &format!("192.168.{n}.2/24"), "dev", "eth0"]);
    lan.ip(&["addr", "add", &format!("fd00:{v6}::2/64"), "dev", "eth0", "nodad"]);
    lan.ip(&["route", "add", "default", "via", &format!("192.168.{n}.1")]);
    lan.ip(&["-6", "route", "add", "default", "via", &format!("fd00:{v6}::1")]);
    lan
}

fn hub_config(t: &Topology, extra: &str) -> PathBuf {
    let key = |i: usize| t.keys.public(&t.client_keys[i]).trim().to_string();
    let text = format!(
        "peers_only = true\n{extra}\n\
         [[peer]]\nname = \"site-a\"\nkey = \"{}\"\naddress = \"10.203.0.10\"\n\
         subnets = [\"192.168.1.0/24\", \"fd00:a::/64\"]\npush_other_subnets = true\n\n\
         [[peer]]\nname = \"site-b\"\nkey = \"{}\"\nsubnets = [\"192.168.2.0/24\", \"fd00:b::/64\"]\npush_other_subnets = true\n",
        key(0),
        key(1)
    );
    let path = t.log("hub.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn two_sites_reach_each_other_through_the_hub_and_routes_follow_the_sessions() {
    let mut t = Topology::new(2);
    let lan_a = site_lan(&t, 0);
    let lan_b = site_lan(&t, 1);
    let cfg = hub_config(&t, "");
    t.start_server(&["--config", cfg.to_str().unwrap()]);
    t.start_client(0, &["--forward"]);
    let b = t.start_client(1, &["--forward"]);
    let addrs = t.clients[0].ip(&["-4", "addr", "show", "dev", "sshvpn0"]);
    assert!(
        addrs.contains("10.203.0.10/32"),
        "static address from the config:\n{addrs}"
    );
    let hub_routes = t.server.ip(&["route", "show", "dev", "sshvpn0"]);
    assert!(
        hub_routes.contains("192.168.1.0/24") && hub_routes.contains("192.168.2.0/24"),
        "{hub_routes}"
    );
    let gw_routes = t.clients[0].ip(&["route", "show", "dev", "sshvpn0"]);
    assert!(
        gw_routes.contains("192.168.2.0/24"),
        "site A gets site B's subnet:\n{gw_routes}"
    );

    assert!(lan_a.ping("192.168.2.2", 5), "LAN A reaches LAN B");
    assert!(lan_b.ping("192.168.1.2", 5), "LAN B reaches LAN A");
    assert!(lan_a.ping("fd00:b::2", 5), "and over IPv6");
    assert!(lan_a.ping(LAN4, 5), "and the hub's LAN");
    tcp_transfer(&lan_a, &lan_b, "192.168.2.2".parse().unwrap(), 5700, 20 << 20);
    tcp_transfer(&lan_b, &lan_a, "fd00:a::2".parse().unwrap(), 5701, 10 << 20);

    assert!(t.process(b).stop().success());
    assert!(
        wait_until(5.0, || !t
            .server
            .ip(&["route", "show", "dev", "sshvpn0"])
            .contains("192.168.2.0/24")),
        "site B's route goes with its session"
    );
    assert!(
        t.server
            .ip(&["route", "show", "dev", "sshvpn0"])
            .contains("192.168.1.0/24")
    );
    let forwarding = t.clients[1].exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(forwarding.trim(), "0", "--forward restored the sysctl on exit");
}

#[test]
fn a_site_can_send_only_from_its_own_subnets_and_addresses() {
    let mut t = Topology::new(2);
    let _lan_a = site_lan(&t, 0);
    let cfg = hub_config(&t, "");
    let s = t.start_server(&["--config", cfg.to_str().unwrap()]);
    let a = t.start_client(0, &["--forward"]);
    t.start_client(1, &[]);
    assert!(
        t.clients[0]
            .exec(&["ping", "-c1", "-W2", "-I", "192.168.1.1", LAN4])
            .status
            .success()
    );
    // A subnet that is not site A's, and site B's tunnel address.
    t.clients[0].ip(&["addr", "add", "192.168.7.1/32", "dev", "sshvpn0"]);
    t.clients[0].ip(&["addr", "add", "10.203.0.2/32", "dev", "sshvpn0"]);
    assert!(
        !t.clients[0]
            .exec(&["ping", "-c1", "-W1", "-I", "192.168.7.1", LAN4])
            .status
            .success()
    );
    assert!(
        !t.clients[0]
            .exec(&["ping", "-c1", "-W1", "-I", "10.203.0.2", LAN4])
            .status
            .success()
    );
    t.process(a).stop();
    let server = t.process(s);
    assert!(wait_until(5.0, || server.log_text().contains("key SHA256")
        && server.log_text().contains("disconnected")));
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("client disconnected") && l.contains("10.203.0.10"))
        .unwrap();
    let spoofed: u64 = line
        .split("spoofed=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(spoofed >= 2, "both spoofed pings counted: {line}");
}

#[test]
fn masquerade_lets_a_lan_without_a_route_back_answer_and_is_removed_on_exit() {
    let mut t = Topology::new(1);
    t.lan.ip(&["route", "del", "default"]);
    let before = t.server.exec_ok(&["nft", "list", "ruleset"]);
    let s = t.start_server(&["--masquerade", "lan0"]);
    let c = t.start_client(0, &[]);
    let _ = c;
    let during = t.server.exec_ok(&["nft", "list", "ruleset"]);
    assert!(during.contains("masquerade"), "{during}");
    assert!(
        t.clients[0].ping(LAN4, 5),
        "the LAN host answers the masqueraded client"
    );
    tcp_transfer(&t.clients[0], &t.lan, LAN4.parse().unwrap(), 5702, 5 << 20);
    t.process(s).stop();
    let after = t.server.exec_ok(&["nft", "list", "ruleset"]);
    assert_eq!(before, after, "ruleset restored");
}

#[test]
fn pushed_dns_is_applied_and_restored() {
    let mut t = Topology::new(1);
    let original = "nameserver 192.0.2.1\noptions edns0\n";
    let etc = NetnsEtc::with_resolv_conf(&t.clients[0], original);
    let resolv = etc.0.join("resolv.conf");
    t.start_server(&["--push-dns", "10.202.0.53", "--push-search", "corp.test"]);
    let c = t.start_client(0, &[]);
    let during = std::fs::read_to_string(&resolv).unwrap();
    assert!(
        during.contains("nameserver 10.202.0.53") && during.contains("search corp.test"),
        "{during}"
    );
    assert!(t.process(c).stop().success());
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), original, "restored on exit");
    // --no-dns leaves it alone.
    let c = t.start_client(0, &["--no-dns"]);
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), original);
    t.process(c).stop();
    // Killed with SIGKILL while the settings are applied: the next start restores them.
    let c = t.start_client(0, &[]);
    assert!(std::fs::read_to_string(&resolv).unwrap().contains("10.202.0.53"));
    t.process(c).signal(nix::sys::signal::Signal::SIGKILL);
    t.process(c).wait_exit(5.0).expect("killed");
    t.start_client(0, &["--no-dns"]);
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        original,
        "recovered after SIGKILL"
    );
}

#[test]
fn broken_configuration_files_are_rejected_with_line_and_reason() {
    let t = Topology::new(1);
    let key = t.keys.public(&t.client_keys[0]).trim().to_string();
    let other = t.keys.public(&t.keys.generate("other")).trim().to_string();
    let cases = [
        ("pool = \"10.9.0.0/24\"\nlisten = 12\n", ":2:", "invalid type"),
        ("pool = \"10.9.0.0/24\"\ncolour = \"blue\"\n", ":2:", "unknown field"),
        (
            &*format!("pool = \"10.9.0.0/24\"\n\n[[peer]]\nkey = \"{key}\"\naddress = \"10.8.0.5\"\n"),
            ":3:",
            "outside the pool",
        ),
        (
            &*format!("pool = \"10.9.0.0/24\"\n[[peer]]\nkey = \"{key}\"\n[[peer]]\nkey = \"{key}\"\n"),
            ":4:",
            "duplicate key",
        ),
        (
            &*format!(
                "pool = \"10.9.0.0/24\"\n[[peer]]\nkey = \"{key}\"\nsubnets = [\"10.1.0.0/16\"]\n[[peer]]\nkey = \"{other}\"\nsubnets = [\"10.1.2.0/24\"]\n"
            ),
            ":5:",
            "overlaps 10.1.0.0/16",
        ),
    ];
    for (i, (text, line, reason)) in cases.iter().enumerate() {
        let path = t.log(&format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(Bin::path("sshvpnd"))
            .args(["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(
            err.contains(&format!("bad{i}.toml{line}")) && err.contains(reason),
            "case {i}: {err}"
        );
        // And the daemon refuses to start on it, creating nothing.
        let out = t.server.exec(&[
            Bin::path("sshvpnd").to_str().unwrap(),
            "--config",
            path.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "case {i}");
        assert!(
            !t.server.ip(&["link", "show"]).contains("sshvpn0"),
            "nothing half-configured"
        );
    }
    let good = t.log("good.toml");
    std::fs::write(
        &good,
        format!("pool = \"10.9.0.0/24\"\n[[peer]]\nkey = \"{key}\"\nsubnets = [\"10.1.0.0/16\"]\n"),
    )
    .unwrap();
    let out = run_ok(
        Bin::path("sshvpnd").to_str().unwrap(),
        &["check-config", "--config", good.to_str().unwrap()],
    );
    assert!(out.contains("OK (1 peers)"), "{out}");
}
