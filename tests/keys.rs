//! Key management on one running daemon each: authorized_keys edits take effect without a
//! restart (added keys admitted, removed keys' sessions closed within 5 s, a broken edit keeps
//! the old set), `from=` and `expiry-time=` options, user certificates (principal, wrong user,
//! expired, not yet valid, revoked), host certificates through `@cert-authority`, and `sshvpnd
//! attach` explaining on the client why it cannot reach the daemon.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sshvpn_tests::net::run_ok;
use sshvpn_tests::sshd;
use sshvpn_tests::topo::{LAN4, SSH_PORT};
use sshvpn_tests::{Bin, Process, Topology};

/// What the client prints when the server ends its session for an unauthorized credential.
const CLOSED: &str = "server refused the tunnel: not authorized";

fn pubkey(t: &Topology, key: &Path) -> String {
    let mut s = t.keys.public(key).trim().to_string();
    s.push('\n');
    s
}

/// Replaces a file the way an editor does (new inode), so that the change is visible at once.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Starts `sshvpn connect` in client namespace `i` as `user` with `key`.
fn spawn(t: &mut Topology, i: usize, key: &Path, user: &str, extra: &[&str]) -> usize {
    let mut args = vec!["--accept-new-host-key"];
    args.extend_from_slice(extra);
    spawn_strict(t, i, key, user, &args)
}

/// Starts `sshvpn connect` without `--accept-new-host-key`.
fn spawn_strict(t: &mut Topology, i: usize, key: &Path, user: &str, extra: &[&str]) -> usize {
    let target = format!("{user}@10.200.{}.1", i + 1);
    let kh = t.known_hosts(i);
    let mut args = vec![
        "connect",
        &target,
        "-p",
        SSH_PORT,
        "-i",
        key.to_str().unwrap(),
        "--known-hosts",
        kh.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let log = t.log(&format!("client{i}-{}.log", t.processes.len()));
    let p = Process::spawn(&t.clients[i], "sshvpn", &args, log);
    t.processes.push(p);
    t.processes.len() - 1
}

fn admitted(t: &mut Topology, i: usize, key: &Path, user: &str, extra: &[&str]) -> usize {
    let p = spawn(t, i, key, user, extra);
    t.processes[p].wait_for_log("tunnel up", 20.0);
    assert!(t.clients[i].ping(LAN4, 5), "LAN reachable through the tunnel");
    p
}

/// The client gives up with `needle` in its log.
fn refused(t: &mut Topology, i: usize, key: &Path, user: &str, extra: &[&str], needle: &str) {
    let p = spawn(t, i, key, user, extra);
    let status = t.processes[p].wait_exit(20.0);
    let log = t.processes[p].log_text();
    assert!(status.is_some_and(|s| !s.success()), "client not refused:\n{log}");
    assert!(log.contains(needle), "expected {needle:?}:\n{log}");
}

/// Waits for the client's session to be closed as not authorized; returns how long it took.
fn closed_within(t: &mut Topology, p: usize, secs: f64) -> f64 {
    let start = Instant::now();
    t.processes[p].wait_for_log(CLOSED, secs + 2.0);
    let took = start.elapsed().as_secs_f64();
    assert!(took <= secs, "session closed only after {took:.1}s");
    assert!(
        t.processes[p].wait_exit(5.0).is_some(),
        "client exits after the refusal"
    );
    took
}

fn daemon_log(t: &Topology, d: usize) -> String {
    t.processes[d].log_text()
}

#[test]
fn authorized_keys_edits_apply_without_restart_and_a_broken_edit_keeps_the_old_set() {
    let mut t = Topology::new(2);
    let (k0, k1) = (t.client_keys[0].clone(), t.client_keys[1].clone());
    let (p0, p1) = (pubkey(&t, &k0), pubkey(&t, &k1));
    let ak = t.authorized_keys.clone();
    write(&ak, &p0);
    let d = t.start_server(&[]);
    admitted(&mut t, 0, &k0, "root", &[]);
    refused(&mut t, 1, &k1, "root", &[], "server refused key");

    // Added: admitted by the running daemon.
    write(&ak, &format!("{p0}{p1}"));
    let c1 = admitted(&mut t, 1, &k1, "root", &[]);

    // A bad line (an unknown option) is skipped with a warning naming it; the others apply.
    write(&ak, &format!("frobnicate {p0}{p0}{p1}"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(t.clients[1].ping(LAN4, 3), "session of key 1 survives the edit");
    let log = daemon_log(&t, d);
    assert!(
        log.contains(&format!(
            "{}:1: skipping authorized key: unknown option \"frobnicate\"",
            ak.display()
        )),
        "bad line reported with its line:\n{log}"
    );

    // Removed: its live session is closed within 5 s, with the key named in the log.
    write(&ak, &p0);
    let took = closed_within(&mut t, c1, 5.0);
    eprintln!("removed key's session closed after {took:.2}s");
    let log = daemon_log(&t, d);
    let fp1 = fingerprint(&k1);
    assert!(
        log.contains("no longer authorized") && log.contains(&fp1),
        "closing logged with the key:\n{log}"
    );
    refused(&mut t, 1, &k1, "root", &[], "server refused key");
    assert!(t.clients[0].ping(LAN4, 3), "the other session is untouched");

    // SIGHUP forces a re-read.
    write(&ak, &format!("{p0}{p1}"));
    t.processes[d].signal(nix::sys::signal::Signal::SIGHUP);
    t.processes[d].wait_for_log("SIGHUP: re-reading the key files", 5.0);
    admitted(&mut t, 1, &k1, "root", &[]);
}

/// One line sshvpnd cannot honour (`command=`) does not block an edit: deleting another line
/// of the same file still closes that key's live session within seconds. A `restrict` key
/// gets no tunnel, whatever it re-enables (sshd's `server_request_tun`).
#[test]
fn a_command_line_does_not_block_removing_a_key_and_restrict_gets_no_tunnel() {
    let mut t = Topology::new(2);
    let (k0, k1) = (t.client_keys[0].clone(), t.client_keys[1].clone());
    let (p0, p1) = (pubkey(&t, &k0), pubkey(&t, &k1));
    let ak = t.authorized_keys.clone();
    let command = format!("command=\"/usr/bin/rrsync -ro /srv\" {p1}");
    write(&ak, &format!("{command}{p0}{p1}"));
    let d = t.start_server(&[]);
    admitted(&mut t, 0, &k0, "root", &[]);
    let c1 = admitted(&mut t, 1, &k1, "root", &[]);
    write(&ak, &format!("{command}{p0}"));
    let took = closed_within(&mut t, c1, 3.5);
    eprintln!("deleted line's session closed after {took:.2}s");
    assert!(t.clients[0].ping(LAN4, 3), "the other session is untouched");
    let log = daemon_log(&t, d);
    assert!(
        log.contains(&format!("{}:1: skipping authorized key: command=", ak.display())),
        "{log}"
    );

    write(
        &ak,
        &format!("{command}{p0}restrict,port-forwarding,permitopen=\"10.0.1.20:443\" {p1}"),
    );
    std::thread::sleep(Duration::from_secs(3));
    refused(&mut t, 1, &k1, "root", &[], "server refused key");
    assert!(
        daemon_log(&t, d).contains("restrict: no tunnel forwarding"),
        "{}",
        daemon_log(&t, d)
    );
}

/// A truncating in-place write (`cat > authorized_keys`) seen while empty is not applied; a
/// group-writable authorized_keys is not trusted (StrictModes): the previous set stays.
#[test]
fn a_truncated_write_or_a_group_writable_file_keeps_the_keys() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut t = Topology::new(2);
    let (k0, k1) = (t.client_keys[0].clone(), t.client_keys[1].clone());
    let (p0, p1) = (pubkey(&t, &k0), pubkey(&t, &k1));
    let ak = t.authorized_keys.clone();
    write(&ak, &format!("{p0}{p1}"));
    let d = t.start_server(&[]);
    let c0 = admitted(&mut t, 0, &k0, "root", &[]);
    for _ in 0..4 {
        let mut f = std::fs::File::create(&ak).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        f.write_all(format!("{p0}{p1}").as_bytes()).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        t.processes[c0].wait_exit(0.1).is_none(),
        "session survives truncated writes"
    );
    assert!(t.clients[0].ping(LAN4, 3));

    std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o664)).unwrap();
    std::fs::write(&ak, &p1).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(t.processes[c0].wait_exit(0.1).is_none(), "untrusted edit not applied");
    assert!(t.clients[0].ping(LAN4, 3));
    let log = daemon_log(&t, d);
    assert!(
        log.contains("not trusted (StrictModes)") && log.contains("bad ownership or modes for file"),
        "{log}"
    );
}

#[test]
fn from_and_expiry_time_options() {
    let mut t = Topology::new(2);
    let (k0, k1) = (t.client_keys[0].clone(), t.client_keys[1].clone());
    let (p0, p1) = (pubkey(&t, &k0), pubkey(&t, &k1));
    let ak = t.authorized_keys.clone();
    // Both keys may only come from client 1's network.
    let from = "from=\"10.200.1.0/24\"";
    write(&ak, &format!("{from} {p0}{from} {p1}"));
    let d = t.start_server(&[]);
    let c0 = admitted(&mut t, 0, &k0, "root", &[]);
    refused(&mut t, 1, &k1, "root", &[], "server refused key");
    assert!(
        daemon_log(&t, d).contains("source 10.200.2.2 does not match from=\"10.200.1.0/24\""),
        "{}",
        daemon_log(&t, d)
    );

    // Expired, then valid for a few more seconds only.
    write(&ak, &format!("{from} {p0}expiry-time=\"20200101\" {p1}"));
    refused(&mut t, 1, &k1, "root", &[], "server refused key");
    let soon = run_ok("date", &["-u", "-d", "+10 seconds", "+%Y%m%d%H%M%SZ"]);
    write(&ak, &format!("{from} {p0}expiry-time=\"{}\" {p1}", soon.trim()));
    let c1 = admitted(&mut t, 1, &k1, "root", &[]);
    // Closed when it expires (at most 10 s from now, plus 5 s).
    closed_within(&mut t, c1, 15.0);
    assert!(
        daemon_log(&t, d).contains("expired (expiry-time"),
        "{}",
        daemon_log(&t, d)
    );

    // A negation for client 0's own address ends its live session.
    write(&ak, &format!("from=\"10.200.0.0/16,!10.200.1.2\" {p0}"));
    closed_within(&mut t, c0, 5.0);
    refused(&mut t, 0, &k0, "root", &[], "server refused key");
}

fn keygen(args: &[&str]) {
    run_ok("ssh-keygen", args);
}

/// Signs `key`.pub with `ca`: `KEY-cert.pub` appears next to the key.
fn certify(ca: &Path, key: &Path, id: &str, principals: &str, validity: &str) -> PathBuf {
    let pubkey = key.with_extension("pub");
    keygen(&[
        "-q",
        "-s",
        ca.to_str().unwrap(),
        "-I",
        id,
        "-n",
        principals,
        "-V",
        validity,
        pubkey.to_str().unwrap(),
    ]);
    let mut name = key.as_os_str().to_owned();
    name.push("-cert.pub");
    PathBuf::from(name)
}

fn fingerprint(key: &Path) -> String {
    let out = run_ok(
        "ssh-keygen",
        &["-l", "-E", "sha256", "-f", key.with_extension("pub").to_str().unwrap()],
    );
    out.split_whitespace().nth(1).unwrap_or_default().to_string()
}

#[test]
fn user_certificates_principal_wrong_user_validity_and_revocation() {
    let mut t = Topology::new(2);
    let ca = t.keys.generate("user_ca");
    let (good, wrong, old, early) = (
        t.keys.generate("carol"),
        t.keys.generate("dave"),
        t.keys.generate("old"),
        t.keys.generate("early"),
    );
    certify(&ca, &good, "carol-laptop", "root", "-5m:+1h");
    // Not next to its key: presented with --certificate.
    let dave_cert = certify(&ca, &wrong, "dave-laptop", "dave", "-5m:+1h");
    let elsewhere = t.log("dave.cert");
    std::fs::rename(&dave_cert, &elsewhere).unwrap();
    certify(&ca, &old, "old", "root", "-2h:-1h");
    certify(&ca, &early, "early", "root", "+1h:+2h");
    // No user keys at all: only certificates get in.
    write(&t.authorized_keys, "# certificates only\n");
    let cas = t.log("trusted_user_ca_keys");
    std::fs::write(&cas, pubkey(&t, &ca)).unwrap();
    let revoked = t.log("revoked_keys");
    std::fs::write(&revoked, "# nothing revoked yet\n").unwrap();
    let d = t.start_server(&[
        "--trusted-user-ca-keys",
        cas.to_str().unwrap(),
        "--revoked-keys",
        revoked.to_str().unwrap(),
    ]);

    let c0 = admitted(&mut t, 0, &good, "root", &[]);
    let log = daemon_log(&t, d);
    assert!(
        log.contains(&format!("key cert:{}:root", fingerprint(&ca))),
        "identity from the certificate:\n{log}"
    );

    refused(
        &mut t,
        1,
        &wrong,
        "root",
        &["--certificate", elsewhere.to_str().unwrap()],
        "server refused key",
    );
    assert!(
        daemon_log(&t, d).contains("user \"root\" is not among its principals (dave)"),
        "{}",
        daemon_log(&t, d)
    );
    refused(&mut t, 1, &old, "root", &[], "server refused key");
    refused(&mut t, 1, &early, "root", &[], "server refused key");
    // The plain key of a certified user is not enough.
    std::fs::remove_file(t.log("old-cert.pub")).unwrap();
    refused(&mut t, 1, &old, "root", &[], "server refused key");

    // Revoking the certified key closes its live session.
    let revoke_line = format!("# lost laptop\n{}", pubkey(&t, &good));
    write(&revoked, &revoke_line);
    let took = closed_within(&mut t, c0, 5.0);
    eprintln!("revoked certificate's session closed after {took:.2}s");
    assert!(
        daemon_log(&t, d).contains("its key is revoked"),
        "{}",
        daemon_log(&t, d)
    );
    refused(&mut t, 0, &good, "root", &[], "server refused key");

    // The same file turned into an OpenSSH KRL revoking a key ID: that certificate's session ends.
    let erin = t.keys.generate("erin");
    certify(&ca, &erin, "erin-laptop", "root", "-5m:+1h");
    // (From client 0: client 1's source is penalized for its failed logins by now.)
    let ce = admitted(&mut t, 0, &erin, "root", &[]);
    let spec = t.log("krl-spec");
    std::fs::write(&spec, "id: erin-laptop\n").unwrap();
    let krl = t.log("revoked.krl");
    let ca_pub = ca.with_extension("pub");
    keygen(&[
        "-q",
        "-k",
        "-f",
        krl.to_str().unwrap(),
        "-s",
        ca_pub.to_str().unwrap(),
        spec.to_str().unwrap(),
    ]);
    std::fs::rename(&krl, &revoked).unwrap();
    closed_within(&mut t, ce, 5.0);
    assert!(
        daemon_log(&t, d).contains("serial or key ID in the KRL"),
        "{}",
        daemon_log(&t, d)
    );
    // The KRL no longer lists carol's key: the plain list it replaced is gone.
    admitted(&mut t, 0, &good, "root", &[]);
}

/// `sshvpnd attach` behind a stock sshd, with no daemon listening on the control socket: the
/// client is told why, in the tunnel protocol.
#[test]
fn attach_without_the_daemon_tells_the_client_why() {
    let mut t = Topology::new(1);
    let control = t.control_socket();
    let cmd = stock_sshd_for_attach(&mut t, &control, "root");
    let log = t.log("client-attach.log");
    let bin = Bin::path("sshvpn");
    let mut c = Process::spawn_cmd(
        &t.clients[0],
        bin.to_str().unwrap(),
        &["connect", "--ssh-command", &cmd],
        &[],
        log,
    );
    let expected = format!(
        "server refused the tunnel: sshvpn daemon not reachable at {} (",
        control.display()
    );
    c.wait_for_log(&expected, 20.0);
    let text = c.log_text();
    assert!(text.contains("is sshvpnd running?"), "{text}");
    assert!(
        c.wait_exit(5.0).is_some_and(|s| !s.success()),
        "client gives up:\n{text}"
    );
}

#[test]
fn host_certificate_trusted_through_cert_authority_without_accept_new() {
    let mut t = Topology::new(2);
    let host_ca = t.keys.generate("host_ca");
    let host_key = t.host_key.clone();
    keygen(&["-q", "-t", "ed25519", "-N", "", "-f", host_key.to_str().unwrap()]);
    keygen(&[
        "-q",
        "-s",
        host_ca.to_str().unwrap(),
        "-h",
        "-I",
        "hub",
        "-n",
        "10.200.1.1,hub.example",
        "-V",
        "-5m:+1h",
        host_key.with_extension("pub").to_str().unwrap(),
    ]);
    let cert = t.log("host_key-cert.pub");
    t.start_server(&["--host-certificate", cert.to_str().unwrap()]);
    // A non-standard port: the name matched is [HOST]:PORT, as in OpenSSH.
    let ca_line = format!("@cert-authority [10.200.*]:{SSH_PORT} {}", pubkey(&t, &host_ca));
    for i in 0..2 {
        std::fs::write(t.known_hosts(i), &ca_line).unwrap();
    }
    // Trusted through the CA: no trust-on-first-use, nothing recorded.
    let k0 = t.client_keys[0].clone();
    let c0 = spawn_strict(&mut t, 0, &k0, "root", &[]);
    t.processes[c0].wait_for_log("tunnel up", 20.0);
    assert!(t.clients[0].ping(LAN4, 5));
    assert!(t.processes[c0].log_text().contains("host certificate \"hub\" accepted"));
    assert_eq!(
        std::fs::read_to_string(t.known_hosts(0)).unwrap(),
        ca_line,
        "known_hosts untouched"
    );
    // The same daemon reached as 10.200.2.1: the certificate is not for that name.
    let k1 = t.client_keys[1].clone();
    let c1 = spawn_strict(&mut t, 1, &k1, "root", &[]);
    assert!(t.processes[c1].wait_exit(20.0).is_some_and(|s| !s.success()));
    let log = t.processes[c1].log_text();
    assert!(
        log.contains("its host certificate was refused: it is for 10.200.1.1,hub.example, not for"),
        "{log}"
    );
}

/// Removes a Unix user created by a test.
struct TempUser(String);

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(&self.0).output();
    }
}

/// A Unix user who may log in through sshd but cannot open the daemon's control socket
/// (mode 0660, root's group): the client is told that, not "connection closed".
#[test]
fn attach_as_a_user_outside_the_control_group_tells_the_client_why() {
    let mut t = Topology::new(1);
    let name = format!("svk{}", std::process::id() % 100_000);
    let _ = std::process::Command::new("userdel").arg(&name).output();
    run_ok(
        "useradd",
        &["-M", "-N", "-d", "/nonexistent", "-s", "/bin/sh", "-p", "*", &name],
    );
    let _user = TempUser(name.clone());
    t.start_daemon(&["--allow-user", "root"]);
    let control = t.control_socket();
    let cmd = stock_sshd_for_attach(&mut t, &control, &name);
    let bin = Bin::path("sshvpn");
    let mut c = Process::spawn_cmd(
        &t.clients[0],
        bin.to_str().unwrap(),
        &["connect", "--ssh-command", &cmd],
        &[],
        t.log("client-attach-user.log"),
    );
    let expected = format!(
        "server refused the tunnel: sshvpn daemon not reachable at {} (permission denied: is this user in the control group?)",
        control.display()
    );
    c.wait_for_log(&expected, 20.0);
}

/// Starts a stock sshd (port 2222) whose `sshvpn` subsystem attaches to the daemon at `control`,
/// and returns the `--ssh-command` that logs in to it as `user` with client key 0.
fn stock_sshd_for_attach(t: &mut Topology, control: &Path, user: &str) -> String {
    let p = sshd::start(&t.server, &t.keys.dir.0, 2222, &t.authorized_keys, Some(control));
    t.processes.push(p);
    let opt = |k: &str, v: String| (k.to_string(), v);
    let host = vec![
        opt("HostName", "10.200.1.1".into()),
        opt("Port", "2222".into()),
        opt("User", user.to_string()),
        opt("IdentityFile", t.client_keys[0].display().to_string()),
        opt("IdentitiesOnly", "yes".into()),
        opt("StrictHostKeyChecking", "accept-new".into()),
        opt("UserKnownHostsFile", t.log("ssh_known_hosts").display().to_string()),
        opt("BatchMode", "yes".into()),
    ];
    let cfg = sshd::client_config(&t.log("ssh_config"), &[("vpnhost", host)]);
    format!("ssh -F {} vpnhost", cfg.display())
}
