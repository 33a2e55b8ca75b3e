//! Running one case on each side: the real OpenSSH (sshd + ssh, or `ssh-keygen -Q`) and the real
//! sshvpn (sshvpnd + sshvpn), each in its own world, with the same files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sshvpn_tests::{Bin, Netns, Process};

use crate::world::{Src, World};

/// What one implementation decided for a case.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Server cases: a tunnel was granted. Host cases: the host key was accepted.
    Granted,
    /// Refused, with a short reason from the logs.
    Refused(String),
    /// The case could not be decided (a harness problem, e.g. a timeout): always a failure.
    Error(String),
    /// Not run: the implementation lacks an option the case needs.
    Skipped(String),
}

impl Decision {
    pub fn word(&self) -> &'static str {
        match self {
            Decision::Granted => "granted",
            Decision::Refused(_) => "refused",
            Decision::Error(_) => "ERROR",
            Decision::Skipped(_) => "skipped",
        }
    }
    pub fn detail(&self) -> &str {
        match self {
            Decision::Granted => "",
            Decision::Refused(s) | Decision::Error(s) | Decision::Skipped(s) => s,
        }
    }
}

/// Server side of a case: the files sshd and sshvpnd read, and the client's credential.
#[derive(Clone, Debug, Default)]
pub struct ServerFiles {
    pub authorized_keys: String,
    pub trusted_cas: Option<String>,
    pub revoked: Option<PathBuf>,
    /// Private key; a certificate, when the case has one, is `KEY-cert.pub` beside it.
    pub identity: PathBuf,
    /// Mode of the authorized_keys file (default 0644) and of its directory (default 0755).
    pub ak_mode: Option<u32>,
    pub dir_mode: Option<u32>,
}

/// Client side of a case: the server's host key (and certificate), the client's known_hosts
/// and the name it connects to.
#[derive(Clone, Debug)]
pub struct HostFiles {
    pub host_key: PathBuf,
    pub host_cert: Option<PathBuf>,
    pub known_hosts: String,
    pub host: String,
    pub port: u16,
    pub alias: Option<String>,
    /// The client key (authorized on both servers).
    pub identity: PathBuf,
}

#[derive(Clone, Debug)]
pub enum Question {
    Server(ServerFiles),
    Host(HostFiles),
}

/// The throwaway host key and the per-run paths both sides share.
pub struct Env {
    pub base: PathBuf,
    pub host_key: PathBuf,
    pub empty_home: PathBuf,
    pub sshvpn_has_alias: bool,
}

fn ip_netns_exec(ns: &Netns, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, "timeout", "20", program]);
    c.stdin(Stdio::null());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The first line of `log` containing one of `needles`, shortened.
fn reason(log: &str, needles: &[&str]) -> String {
    for n in needles {
        if let Some(line) = log.lines().find(|l| l.contains(n)) {
            return short(line);
        }
    }
    short(log.lines().last().unwrap_or(""))
}

pub fn short(s: &str) -> String {
    // Drop tracing's timestamp and level, if any (ANSI colours included).
    let s = strip_ansi(s);
    let s = s.trim();
    let s = match s.find(" INFO ").or(s.find(" WARN ")).or(s.find(" ERROR ")) {
        Some(i) if s.starts_with("20") => s[i..].trim_start().split_once(' ').map_or(s, |(_, r)| r),
        _ => s,
    };
    let s: String = s.chars().take(110).collect();
    s.replace('|', "/")
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn write_mode(path: &Path, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Writes the case's shared files into `dir` (both sides read these very files).
pub struct CasePaths {
    pub authorized_keys: PathBuf,
    pub trusted_cas: Option<PathBuf>,
    pub known_hosts: PathBuf,
}

pub fn write_files(dir: &Path, q: &Question) -> CasePaths {
    use std::os::unix::fs::PermissionsExt;
    let files = dir.join("files");
    std::fs::create_dir_all(&files).expect("mkdir files");
    let known_hosts = files.join("known_hosts");
    match q {
        Question::Server(s) => {
            let ak = files.join("authorized_keys");
            write_mode(&ak, &s.authorized_keys, s.ak_mode.unwrap_or(0o644));
            let cas = s.trusted_cas.as_ref().map(|text| {
                let p = files.join("trusted_user_ca_keys");
                write_mode(&p, text, 0o644);
                p
            });
            std::fs::set_permissions(&files, std::fs::Permissions::from_mode(s.dir_mode.unwrap_or(0o755)))
                .expect("chmod dir");
            CasePaths {
                authorized_keys: ak,
                trusted_cas: cas,
                known_hosts,
            }
        }
        Question::Host(h) => {
            let ak = files.join("authorized_keys");
            let key = std::fs::read_to_string(h.identity.with_extension("pub")).expect("client key");
            write_mode(&ak, &key, 0o644);
            write_mode(&known_hosts, &h.known_hosts, 0o644);
            CasePaths {
                authorized_keys: ak,
                trusted_cas: None,
                known_hosts,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OpenSSH

fn start_sshd(world: &World, dir: &Path, env: &Env, port: u16, body: &str) -> Result<Process, String> {
    std::fs::create_dir_all("/run/sshd").expect("privilege separation directory");
    let config = format!(
        "Port {port}\nListenAddress 0.0.0.0\nListenAddress ::\nPermitRootLogin yes\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nUsePAM no\nStrictModes yes\nPermitTunnel yes\nLogLevel VERBOSE\n\
         PidFile {}\n{body}",
        dir.join("sshd.pid").display()
    );
    let _ = env;
    let path = dir.join("sshd_config");
    std::fs::write(&path, config).expect("write sshd_config");
    let mut p = Process::spawn_cmd(
        &world.server,
        "/usr/sbin/sshd",
        &["-D", "-e", "-f", path.to_str().unwrap()],
        &[],
        dir.join("sshd.log"),
    );
    let ok = sshvpn_tests::wait_until(10.0, || {
        let t = p.log_text();
        t.contains(&format!("Server listening on 0.0.0.0 port {port}"))
            && t.contains(&format!("Server listening on :: port {port}"))
    });
    if !ok {
        let _ = p.stop();
        return Err(format!("sshd did not start: {}", short(&p.log_text())));
    }
    Ok(p)
}

fn ssh_common(cmd: &mut Command, identity: &Path, port: u16) {
    cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args([
            "-o",
            "IdentityAgent=none",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["-o", "UpdateHostKeys=no", "-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-i", identity.to_str().unwrap(), "-p", &port.to_string()]);
}

pub fn openssh(world: &World, env: &Env, dir: &Path, src: Src, q: &Question, paths: &CasePaths) -> Decision {
    let dir = dir.join("openssh");
    std::fs::create_dir_all(&dir).expect("mkdir");
    match q {
        Question::Server(s) => {
            let mut body = format!(
                "HostKey {}\nAuthorizedKeysFile {}\n",
                env.host_key.display(),
                paths.authorized_keys.display()
            );
            if let Some(cas) = &paths.trusted_cas {
                body.push_str(&format!("TrustedUserCAKeys {}\n", cas.display()));
            }
            if let Some(r) = &s.revoked {
                body.push_str(&format!("RevokedKeys {}\n", r.display()));
            }
            let mut sshd = match start_sshd(world, &dir, env, 22, &body) {
                Ok(p) => p,
                Err(e) => return Decision::Error(e),
            };
            // `ssh -N -v -w any`: the tunnel channel's answer shows in ssh's debug output
            // ("tunnel forward established" or "Tunnel forwarding failed"); ssh is then stopped.
            let mut cmd = ip_netns_exec(world.client(src), "ssh");
            ssh_common(&mut cmd, &s.identity, 22);
            // The common ssh options without `LogLevel=ERROR` (after "netns exec NS timeout 20 ssh").
            let args: Vec<String> = cmd
                .get_args()
                .skip(6)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let mut full: Vec<String> = Vec::new();
            let mut it = args.into_iter().peekable();
            while let Some(a) = it.next() {
                if a == "-o" && it.peek().is_some_and(|n| n.starts_with("LogLevel")) {
                    it.next();
                    continue;
                }
                full.push(a);
            }
            full.extend(
                [
                    "-v",
                    "-N",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-w",
                    "any",
                    "-o",
                    "Tunnel=point-to-point",
                    "-o",
                    "ExitOnForwardFailure=yes",
                ]
                .map(String::from),
            );
            full.push(format!("root@{}", src.server_addr()));
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            let mut ssh = Process::spawn_cmd(world.client(src), "ssh", &refs, &[], dir.join("ssh.log"));
            let deadline = Instant::now() + Duration::from_secs(15);
            let tunnel = loop {
                let t = ssh.log_text();
                if t.contains("tunnel forward established") {
                    break Some(true);
                }
                if t.contains("Tunnel forwarding failed") {
                    break Some(false);
                }
                if let Ok(Some(_)) = ssh.child.try_wait() {
                    break Some(false);
                }
                if Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let _ = ssh.stop();
            let _ = sshd.stop();
            let client = ssh.log_text();
            let log = sshd.log_text();
            let accepted = log.contains("Accepted publickey") || log.contains("Accepted certificate");
            match tunnel {
                Some(true) => Decision::Granted,
                Some(false) if accepted => Decision::Refused(format!(
                    "login accepted, tunnel refused: {}",
                    reason(&client, &["Tunnel", "error"])
                )),
                Some(false) if client.contains("Permission denied") => Decision::Refused(reason(
                    &log,
                    &[
                        "revoked",
                        "Authentication key",
                        "refused",
                        "Refused",
                        "not allowed",
                        "expired",
                        "bad option",
                        "bad key options",
                        "invalid",
                        "Certificate",
                        "not match",
                        "failed",
                    ],
                )),
                _ => Decision::Error(format!("ssh: {} / sshd: {}", short(&client), short(&log))),
            }
        }
        Question::Host(h) => {
            let mut body = format!(
                "HostKey {}\nAuthorizedKeysFile {}\n",
                h.host_key.display(),
                paths.authorized_keys.display()
            );
            if let Some(c) = &h.host_cert {
                body.push_str(&format!("HostCertificate {}\n", c.display()));
            }
            let mut sshd = match start_sshd(world, &dir, env, h.port, &body) {
                Ok(p) => p,
                Err(e) => return Decision::Error(e),
            };
            let mut cmd = ip_netns_exec(world.client(src), "ssh");
            ssh_common(&mut cmd, &h.identity, h.port);
            cmd.args(["-o", "StrictHostKeyChecking=yes", "-o"])
                .arg(format!("UserKnownHostsFile={}", paths.known_hosts.display()));
            if let Some(a) = &h.alias {
                cmd.args(["-o", &format!("HostKeyAlias={a}")]);
            }
            cmd.arg(format!("root@{}", h.host)).arg("true");
            let out = cmd.output().expect("run ssh");
            let _ = sshd.stop();
            let client = text(&out);
            if out.status.success() {
                Decision::Granted
            } else if client.contains("Host key verification failed")
                || client.contains("IDENTIFICATION HAS CHANGED")
                || client.contains("REVOKED")
            {
                Decision::Refused(reason(
                    &client,
                    &[
                        "REVOKED",
                        "IDENTIFICATION HAS CHANGED",
                        "No ",
                        "Certificate",
                        "Host key verification failed",
                    ],
                ))
            } else {
                Decision::Error(format!("ssh: {}", short(&client)))
            }
        }
    }
}

/// `ssh-keygen -Q -f KRL FILE`: whether OpenSSH's KRL code calls FILE revoked.
pub fn krl_query(krl: &Path, file: &Path) -> Result<bool, String> {
    let out = Command::new("ssh-keygen")
        .args(["-Q", "-f", krl.to_str().unwrap(), file.to_str().unwrap()])
        .output()
        .expect("run ssh-keygen -Q");
    let t = text(&out);
    match out.status.code() {
        Some(0) if t.contains(": ok") => Ok(false),
        Some(1) if t.contains("REVOKED") => Ok(true),
        _ => Err(short(&t)),
    }
}

// ---------------------------------------------------------------------------------------------
// sshvpn

fn start_sshvpnd(world: &World, dir: &Path, listen: &str, args: &[&str]) -> Result<Process, String> {
    let state = dir.join("state");
    let control = dir.join("control.sock");
    let mut full = vec![
        "--state-dir",
        state.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
        "--listen",
        listen,
        "--pool",
        "10.203.0.0/24",
    ];
    full.extend_from_slice(args);
    let mut p = Process::spawn(&world.server, "sshvpnd", &full, dir.join("sshvpnd.log"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if p.log_text().contains("control socket") {
            return Ok(p);
        }
        if let Ok(Some(_)) = p.child.try_wait() {
            return Err(format!(
                "sshvpnd did not start: {}",
                reason(&p.log_text(), &["ERROR", "error"])
            ));
        }
        if Instant::now() >= deadline {
            let _ = p.stop();
            return Err(format!("sshvpnd did not start in time: {}", short(&p.log_text())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `sshvpn connect ARGS` in `ns`: Granted once "tunnel up" is logged, else its exit.
fn run_sshvpn(ns: &Netns, env: &Env, dir: &Path, args: &[&str]) -> (Option<bool>, String) {
    let home = env.empty_home.to_str().unwrap();
    let mut p = Process::spawn_cmd(
        ns,
        Bin::path("sshvpn").to_str().unwrap(),
        args,
        &[("HOME", home), ("SSH_AUTH_SOCK", "/nonexistent/agent.sock")],
        dir.join("sshvpn.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let up = loop {
        let log = p.log_text();
        if log.contains("tunnel up") {
            break Some(true);
        }
        if let Ok(Some(_)) = p.child.try_wait() {
            break Some(false);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = p.stop();
    (up, p.log_text())
}

pub fn sshvpn(world: &World, env: &Env, dir: &Path, src: Src, q: &Question, paths: &CasePaths) -> Decision {
    let dir = dir.join("sshvpn");
    std::fs::create_dir_all(&dir).expect("mkdir");
    match q {
        Question::Server(s) => {
            let listen = match src {
                Src::A6 => "[::]:22",
                _ => "0.0.0.0:22",
            };
            let mut args = vec![
                "--host-key".to_string(),
                env.host_key.display().to_string(),
                "--authorized-keys".into(),
                paths.authorized_keys.display().to_string(),
            ];
            if let Some(c) = &paths.trusted_cas {
                args.extend(["--trusted-user-ca-keys".into(), c.display().to_string()]);
            }
            if let Some(r) = &s.revoked {
                args.extend(["--revoked-keys".into(), r.display().to_string()]);
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut d = match start_sshvpnd(world, &dir, listen, &refs) {
                Ok(p) => p,
                Err(e) => return Decision::Refused(e),
            };
            let target = format!("root@{}", src.server_addr());
            let kh = dir.join("known_hosts");
            let client = [
                "connect",
                &target,
                "-p",
                "22",
                "-i",
                s.identity.to_str().unwrap(),
                "--known-hosts",
                kh.to_str().unwrap(),
                "--accept-new-host-key",
                "--max-retries",
                "0",
                "--connect-timeout",
                "5",
            ];
            let (up, log) = run_sshvpn(world.client(src), env, &dir, &client);
            let _ = d.stop();
            let dlog = d.log_text();
            match up {
                Some(true) => Decision::Granted,
                Some(false) if log.contains("Connection refused") || log.contains("penalised") => {
                    Decision::Error(format!("client: {} / daemon: {}", short(&log), short(&dlog)))
                }
                Some(false) => Decision::Refused(reason(
                    &dlog,
                    &[
                        "refused",
                        "revoked",
                        "not authorized",
                        "not among",
                        "expired",
                        "does not match",
                        "WARN",
                    ],
                )),
                None => Decision::Error(format!("no decision within 20 s: {}", short(&log))),
            }
        }
        Question::Host(h) => {
            if h.alias.is_some() && !env.sshvpn_has_alias {
                return Decision::Skipped("sshvpn connect has no --host-key-alias".into());
            }
            let listen = match src {
                Src::A6 => format!("[::]:{}", h.port),
                _ => format!("0.0.0.0:{}", h.port),
            };
            let mut args = vec![
                "--host-key".to_string(),
                h.host_key.display().to_string(),
                "--authorized-keys".into(),
                paths.authorized_keys.display().to_string(),
            ];
            if let Some(c) = &h.host_cert {
                args.extend(["--host-certificate".into(), c.display().to_string()]);
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            // A daemon that refuses to serve the certificate cannot be accepted by any client.
            let mut d = match start_sshvpnd(world, &dir, &listen, &refs) {
                Ok(p) => p,
                Err(e) => return Decision::Refused(e),
            };
            let target = format!("root@{}", h.host);
            let port = h.port.to_string();
            let mut client = vec![
                "connect".to_string(),
                target,
                "-p".into(),
                port,
                "-i".into(),
                h.identity.display().to_string(),
                "--known-hosts".into(),
                paths.known_hosts.display().to_string(),
                "--max-retries".into(),
                "0".into(),
                "--connect-timeout".into(),
                "5".into(),
            ];
            if let Some(a) = &h.alias {
                client.extend(["--host-key-alias".into(), a.clone()]);
            }
            let refs: Vec<&str> = client.iter().map(String::as_str).collect();
            let (up, log) = run_sshvpn(world.client(src), env, &dir, &refs);
            let _ = d.stop();
            match up {
                Some(true) => Decision::Granted,
                Some(false) if log.contains("Connection refused") => Decision::Error(short(&log)),
                Some(false) => Decision::Refused(reason(
                    &log,
                    &["host certificate", "host key", "revoked", "known_hosts", "error"],
                )),
                None => Decision::Error(format!("no decision within 20 s: {}", short(&log))),
            }
        }
    }
}
