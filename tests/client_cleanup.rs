//! The client leaves the host as it found it however it ends (SIGHUP, SIGKILL and the next
//! start), never disturbs a live client, gives up on an unreachable server, and refuses names and
//! keys that are unsafe. Each test runs in namespaces of its own; resolv.conf is the namespace's
//! own (/etc/netns/NAME), never the host's.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sshvpn_tests::topo::LAN6;
use sshvpn_tests::{Bin, Netns, NetnsEtc, Process, Topology, wait_until};

const ORIGINAL_RESOLV: &str = "# the host's own\nnameserver 192.0.2.1\noptions edns0 trust-ad\n";

/// Both families of the main table.
fn routes(ns: &Netns) -> String {
    ns.ip(&["route", "show", "table", "main"]) + &ns.ip(&["-6", "route", "show", "table", "main"])
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.exec_ok(&["sysctl", "-n", key]).trim().to_string()
}

#[test]
fn sighup_to_a_full_tunnel_gateway_restores_routes_forwarding_and_resolv_conf() {
    let mut t = Topology::new(1);
    // No IPv6 pool: the full tunnel blocks IPv6 with `unreachable ::/1` and `8000::/1`.
    t.ipv6 = false;
    let etc = NetnsEtc::with_resolv_conf(&t.clients[0], ORIGINAL_RESOLV);
    let before_routes = routes(&t.clients[0]);
    let before_fwd = sysctl(&t.clients[0], "net.ipv4.ip_forward");
    assert_eq!(before_fwd, "0");
    t.start_server(&["--push-dns", "10.202.0.53"]);
    let c = t.start_client(0, &["--default-route", "--forward"]);
    let during = routes(&t.clients[0]);
    assert!(
        during.contains("0.0.0.0/1") && during.contains("unreachable ::/1"),
        "{during}"
    );
    assert_eq!(sysctl(&t.clients[0], "net.ipv4.ip_forward"), "1");
    assert!(etc.resolv_conf().contains("10.202.0.53"), "{}", etc.resolv_conf());
    t.process(c).signal(Signal::SIGHUP);
    let status = t.process(c).wait_exit(10.0).expect("the client exits on SIGHUP");
    assert!(
        status.success(),
        "a clean exit: {status:?}\n{}",
        t.process(c).log_text()
    );
    assert_eq!(routes(&t.clients[0]), before_routes, "routes as before");
    assert_eq!(
        sysctl(&t.clients[0], "net.ipv4.ip_forward"),
        before_fwd,
        "ip_forward restored"
    );
    assert_eq!(etc.resolv_conf(), ORIGINAL_RESOLV, "resolv.conf byte for byte");
}

#[test]
fn after_sigkill_the_next_start_sweeps_the_marked_routes() {
    let mut t = Topology::new(1);
    let ns = &t.clients[0];
    // The underlay routes IPv6 to the LAN host through the server namespace.
    ns.ip(&["-6", "route", "add", "default", "via", "fd00:200:1::1"]);
    assert!(ns.ping(LAN6, 5), "IPv6 reaches the LAN host over the underlay");
    t.ipv6 = false;
    t.start_server(&[]);
    let c = t.start_client(0, &["--default-route", "--no-accept-routes"]);
    t.process(c).signal(Signal::SIGKILL);
    t.process(c).wait_exit(5.0).expect("killed");
    let left = routes(&t.clients[0]);
    assert!(
        left.contains("unreachable ::/1") && left.contains("unreachable 8000::/1"),
        "what a killed client leaves:\n{left}"
    );
    assert!(left.contains("proto 115"), "marked as the client's:\n{left}");
    assert!(!t.clients[0].ping(LAN6, 2), "IPv6 blocked by the leftovers");
    // Someone else's routes (the admin's, a daemon's: not marked) are not the client's to sweep.
    t.clients[0].ip(&["route", "add", "192.0.2.0/24", "via", "10.200.1.1", "proto", "static"]);
    t.clients[0].ip(&["-6", "route", "add", "2001:db8::/32", "via", "fd00:200:1::1"]);
    // The next start (without the full tunnel) sweeps them.
    let c = t.start_client(0, &["--no-accept-routes"]);
    let now = routes(&t.clients[0]);
    assert!(!now.contains("unreachable"), "swept:\n{now}");
    assert!(
        now.contains("192.0.2.0/24 via 10.200.1.1") && now.contains("2001:db8::/32"),
        "unmarked routes kept:\n{now}"
    );
    assert!(t.clients[0].ping(LAN6, 5), "IPv6 works again");
    assert!(t.process(c).stop().success());
    let after = routes(&t.clients[0]);
    assert!(!after.contains("proto 115"), "no marked route remains:\n{after}");
}

#[test]
fn a_second_connect_on_the_same_interface_does_not_disturb_the_first() {
    let mut t = Topology::new(1);
    let etc = NetnsEtc::with_resolv_conf(&t.clients[0], ORIGINAL_RESOLV);
    t.start_server(&["--push-dns", "10.202.0.53"]);
    let first = t.start_client(0, &["--forward"]);
    assert_eq!(sysctl(&t.clients[0], "net.ipv4.ip_forward"), "1");
    let pushed = etc.resolv_conf();
    assert!(pushed.contains("10.202.0.53"), "{pushed}");
    let second = t.spawn_client(0, &["--forward"]);
    let status = t.process(second).wait_exit(15.0).expect("the second client exits");
    assert!(!status.success());
    let said = t.process(second).log_text();
    assert!(said.contains("already running on sshvpn0"), "{said}");
    assert!(
        !said.contains("restored"),
        "the second client restored something: {said}"
    );
    assert!(
        t.process(first).child.try_wait().unwrap().is_none(),
        "the first client keeps running"
    );
    assert_eq!(sysctl(&t.clients[0], "net.ipv4.ip_forward"), "1", "forwarding still on");
    assert_eq!(etc.resolv_conf(), pushed, "pushed DNS still in place");
    assert!(t.clients[0].ping("10.202.0.2", 5), "traffic still passes");
    assert!(t.process(first).stop().success());
    assert_eq!(etc.resolv_conf(), ORIGINAL_RESOLV);
    assert_eq!(sysctl(&t.clients[0], "net.ipv4.ip_forward"), "0");
}

#[test]
fn a_second_client_that_would_rewrite_the_same_resolv_conf_is_refused() {
    let mut t = Topology::new(2);
    let etc = NetnsEtc::with_resolv_conf(&t.clients[0], ORIGINAL_RESOLV);
    t.start_server(&["--push-dns", "10.202.0.53"]);
    let first = t.start_client(0, &[]);
    let pushed = etc.resolv_conf();
    assert!(pushed.contains("10.202.0.53"), "{pushed}");
    // Another client in the same namespace (its own key and interface).
    let mut args = t.client_args(0);
    let key = args.iter().position(|a| a == "-i").unwrap() + 1;
    args[key] = t.client_keys[1].to_str().unwrap().into();
    args.extend(["--tun-name".into(), "sshvpn1".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut second = Process::spawn(&t.clients[0], "sshvpn", &refs, t.log("second.log"));
    let status = second.wait_exit(20.0).expect("the second DNS-managing client exits");
    assert!(!status.success());
    let said = second.log_text();
    assert!(said.contains("--no-dns"), "a clear refusal: {said}");
    assert_eq!(etc.resolv_conf(), pushed, "the first client's DNS untouched");
    // With --no-dns it runs beside the first.
    args.push("--no-dns".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut second = Process::spawn(&t.clients[0], "sshvpn", &refs, t.log("second-nodns.log"));
    second.wait_for_log("tunnel up", 20.0);
    assert!(second.stop().success());
    assert_eq!(etc.resolv_conf(), pushed);
    assert!(t.process(first).stop().success());
    assert_eq!(etc.resolv_conf(), ORIGINAL_RESOLV, "the original after both exit");
}

#[test]
fn max_retries_gives_up_on_a_server_that_never_answers() {
    let t = Topology::new(1);
    // 192.0.2.1 is routed to the server namespace, which drops it silently: each attempt runs
    // into its connect timeout (longer than the stable-session threshold).
    t.clients[0].ip(&["route", "add", "192.0.2.0/24", "via", "10.200.1.1"]);
    t.server.ip(&["route", "add", "blackhole", "192.0.2.0/24"]);
    let mut args = t.client_args(0);
    args[1] = "root@192.0.2.1".into();
    args.extend(["--max-retries", "2", "--connect-timeout", "11"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut c = Process::spawn(&t.clients[0], "sshvpn", &refs, t.log("client.log"));
    let status = c.wait_exit(60.0);
    let said = c.log_text();
    let status = status.unwrap_or_else(|| panic!("still retrying after 60 s:\n{said}"));
    assert!(!status.success());
    assert!(said.contains("giving up after 2 retries"), "{said}");
    assert!(started.elapsed() >= Duration::from_secs(33), "three attempts of 11 s");
}

#[test]
fn exec_gives_up_on_a_server_that_never_answers() {
    let t = Topology::new(1);
    t.clients[0].ip(&["route", "add", "192.0.2.0/24", "via", "10.200.1.1"]);
    t.server.ip(&["route", "add", "blackhole", "192.0.2.0/24"]);
    let mut args = t.client_args(0);
    args[0] = "exec".into();
    args[1] = "root@192.0.2.1".into();
    args.extend(["--connect-timeout", "11", "--", "true"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Process::spawn(&t.clients[0], "sshvpn", &refs, t.log("exec.log"));
    // Its default is 2 retries: three attempts of 11 s.
    let status = c.wait_exit(60.0);
    let said = c.log_text();
    let status = status.unwrap_or_else(|| panic!("sshvpn exec still retrying after 60 s:\n{said}"));
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("giving up after 2 retries"), "{said}");
}

#[test]
fn interface_names_that_are_paths_are_refused() {
    let t = Topology::new(1);
    let mut args = t.client_args(0);
    args.extend(["--tun-name".into(), "../../tmp/x".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = t.clients[0].exec(&[&[Bin::path("sshvpn").to_str().unwrap()], &refs[..]].concat());
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(said.contains("invalid interface name"), "{said}");
    // The same from a profile.
    let home = t.keys.dir.path("config");
    std::fs::create_dir_all(home.join("sshvpn")).unwrap();
    std::fs::write(
        home.join("sshvpn/office.toml"),
        "host = \"10.200.1.1\"\ntun_name = \"../../tmp/x\"\n",
    )
    .unwrap();
    let bin = Bin::path("sshvpn");
    let mut p = Process::spawn_cmd(
        &t.clients[0],
        bin.to_str().unwrap(),
        &["connect", "office"],
        &[("XDG_CONFIG_HOME", home.to_str().unwrap())],
        t.log("profile.log"),
    );
    let status = p.wait_exit(10.0).expect("refused at once");
    assert!(!status.success());
    let said = p.log_text();
    assert!(said.contains("office.toml: tun_name: invalid interface name"), "{said}");
    assert!(
        !std::fs::read_dir("/tmp")
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("x-")),
        "nothing written in /tmp"
    );
}

#[test]
fn a_private_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut t = Topology::new(1);
    t.start_server(&[]);
    std::fs::set_permissions(&t.client_keys[0], std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = t.spawn_client(0, &[]);
    let status = t.process(c).wait_exit(10.0).expect("refused at once");
    assert!(!status.success());
    let said = t.process(c).log_text();
    assert!(said.contains("0644") && said.contains("too open"), "{said}");
    // Mode 0600: accepted.
    std::fs::set_permissions(&t.client_keys[0], std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = t.start_client(0, &[]);
    assert!(wait_until(5.0, || t.clients[0].ping("10.202.0.2", 1)));
    assert!(t.process(c).stop().success());
}

#[test]
fn pushed_dns_is_taken_back_while_down_and_reapplied_as_pushed_on_reconnect() {
    let mut t = Topology::new(1);
    let etc = NetnsEtc::with_resolv_conf(&t.clients[0], ORIGINAL_RESOLV);
    let s = t.start_server(&["--push-dns", "10.202.0.53"]);
    let c = t.start_client(0, &[]);
    assert!(etc.resolv_conf().contains("10.202.0.53"), "{}", etc.resolv_conf());
    t.process(s).signal(Signal::SIGKILL);
    t.process(s).wait_exit(5.0).expect("server dies");
    // While down: the host's own resolvers (a server given by name resolves with them).
    assert!(
        wait_until(20.0, || etc.resolv_conf() == ORIGINAL_RESOLV),
        "original resolv.conf while down, not {:?}\n{}",
        etc.resolv_conf(),
        t.process(c).log_text()
    );
    // The server comes back pushing another resolver: the client applies it.
    t.start_server(&["--push-dns", "10.202.0.54"]);
    assert!(
        wait_until(20.0, || etc.resolv_conf().contains("10.202.0.54")),
        "the new pushed DNS: {:?}\n{}",
        etc.resolv_conf(),
        t.process(c).log_text()
    );
    assert!(!etc.resolv_conf().contains("10.202.0.53"));
    assert!(t.process(c).stop().success());
    assert_eq!(etc.resolv_conf(), ORIGINAL_RESOLV, "the original after exit");
}

#[test]
fn with_the_full_tunnel_a_server_whose_address_changed_is_reached_outside_the_dead_tunnel() {
    let mut t = Topology::new(1);
    // The client's underlay has a default route; the server also answers on an address beyond it.
    t.clients[0].ip(&["route", "add", "default", "via", "10.200.1.1"]);
    t.server.ip(&["addr", "add", "198.51.100.1/32", "dev", "lo"]);
    let etc = NetnsEtc::with_resolv_conf(&t.clients[0], ORIGINAL_RESOLV);
    let hosts = etc.0.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.200.1.1 vpn.test\n").unwrap();
    let s = t.start_server(&[]);
    let mut args = t.client_args(0);
    args[1] = "root@vpn.test".into();
    args.extend(["--default-route", "--no-accept-routes"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Process::spawn(&t.clients[0], "sshvpn", &refs, t.log("client.log"));
    c.wait_for_log("tunnel up", 20.0);
    assert!(t.clients[0].ping("10.202.0.2", 5));
    t.process(s).signal(Signal::SIGKILL);
    t.process(s).wait_exit(5.0).expect("server dies");
    // The name now points at the other address, which the full tunnel's routes cover.
    std::fs::write(&hosts, "127.0.0.1 localhost\n198.51.100.1 vpn.test\n").unwrap();
    t.start_server(&[]);
    assert!(
        wait_until(30.0, || c.log_text().matches("tunnel up").count() >= 2),
        "back through the moved server:\n{}",
        c.log_text()
    );
    assert!(t.clients[0].ping("10.202.0.2", 5), "traffic through the tunnel");
    let route = t.clients[0].ip(&["route", "get", "198.51.100.1"]);
    assert!(route.contains("dev eth0"), "the server outside the tunnel: {route}");
    assert!(c.stop().success());
    let left = routes(&t.clients[0]);
    assert!(!left.contains("proto 115"), "{left}");
}

#[test]
fn the_sweep_after_a_crash_leaves_a_live_clients_routes_alone() {
    let mut t = Topology::new(2);
    t.ipv6 = false;
    t.start_server(&[]);
    // Client B runs beside A in the same namespace, on its own interface and key.
    let mut b_args = t.client_args(0);
    let key = b_args.iter().position(|a| a == "-i").unwrap() + 1;
    b_args[key] = t.client_keys[1].to_str().unwrap().into();
    b_args.extend(
        [
            "--tun-name",
            "sshvpn1",
            "--no-accept-routes",
            "--route",
            "10.250.0.0/16",
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let mut b = Process::spawn(&t.clients[0], "sshvpn", &refs, t.log("b.log"));
    b.wait_for_log("tunnel up", 20.0);
    let a = t.start_client(0, &["--default-route", "--no-accept-routes"]);
    t.process(a).signal(Signal::SIGKILL);
    t.process(a).wait_exit(5.0).expect("killed");
    assert!(routes(&t.clients[0]).contains("unreachable ::/1"));
    let a = t.start_client(0, &["--no-accept-routes"]);
    let now = routes(&t.clients[0]);
    assert!(!now.contains("unreachable"), "the killed client's routes swept:\n{now}");
    assert!(
        now.contains("10.250.0.0/16 dev sshvpn1 proto 115"),
        "the live client's route kept:\n{now}"
    );
    assert!(b.child.try_wait().unwrap().is_none(), "client B keeps running");
    assert!(t.process(a).stop().success());
    assert!(b.stop().success());
    assert!(!routes(&t.clients[0]).contains("proto 115"));
}

#[test]
fn sigquit_ends_the_client_cleanly() {
    let mut t = Topology::new(1);
    let before = routes(&t.clients[0]);
    t.start_server(&[]);
    let c = t.start_client(0, &["--forward"]);
    t.process(c).signal(Signal::SIGQUIT);
    let status = t.process(c).wait_exit(10.0).expect("the client exits on SIGQUIT");
    assert!(status.success(), "{status:?}");
    assert_eq!(routes(&t.clients[0]), before);
    assert_eq!(sysctl(&t.clients[0], "net.ipv4.ip_forward"), "0");
}

#[test]
fn exec_passes_sighup_to_its_command_and_exits_with_its_status() {
    let mut t = Topology::new(1);
    t.start_server(&[]);
    let mut args = t.client_args(0);
    args[0] = "exec".into();
    args.extend(
        [
            "--",
            "sh",
            "-c",
            "trap 'echo got-hup; exit 42' HUP; echo command-ready; while :; do sleep 0.1; done",
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Process::spawn(&t.clients[0], "sshvpn", &refs, t.log("exec.log"));
    c.wait_for_log("command-ready", 20.0);
    c.signal(Signal::SIGHUP);
    let status = c.wait_exit(10.0).expect("exec exits after its command");
    assert_eq!(status.code(), Some(42), "the command's status:\n{}", c.log_text());
    assert!(c.log_text().contains("got-hup"));
}
