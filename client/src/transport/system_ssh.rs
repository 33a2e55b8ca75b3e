//! The tunnel over the system `ssh`: a child `ssh ... -s sshvpn` whose stdin/stdout carry the
//! tunnel. Everything `ssh` does applies (config file, ProxyJump, agent, certificates,
//! known_hosts, ControlMaster); its stderr (prompts, host-key questions, errors) goes to ours.

use std::process::Stdio;

use anyhow::Context;
use sshvpn_common::ssh::SUBSYSTEM;
use sshvpn_common::tunnel::{StreamRx, StreamTx};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::cli::ConnectArgs;

pub struct SshChild {
    /// Killed when dropped.
    pub child: Child,
    pub rx: StreamRx<ChildStdout>,
    pub tx: StreamTx<ChildStdin>,
}

/// The command line: `ssh [-p PORT] [-i KEY] [-o BatchMode=yes] [-o HostKeyAlias=A] -s -- TARGET
/// sshvpn`, or `--ssh-command` as given followed by `[-o BatchMode=yes] [-o HostKeyAlias=A] -s sshvpn`.
pub fn command_line(args: &ConnectArgs) -> anyhow::Result<Vec<String>> {
    let mut words = match &args.ssh_command {
        Some(cmd) => shell_words::split(cmd).context("--ssh-command")?,
        None => {
            let mut w = vec!["ssh".to_string()];
            if let Some(p) = args.port {
                w.extend(["-p".into(), p.to_string()]);
            }
            if let Some(i) = &args.identity {
                w.extend(["-i".into(), i.display().to_string()]);
            }
            if args.batch {
                w.extend(["-o".into(), "BatchMode=yes".into()]);
            }
            if let Some(alias) = &args.host_key_alias {
                w.extend(["-o".into(), format!("HostKeyAlias={alias}")]);
            }
            // `--`: a destination starting with '-' is never read as an option.
            w.extend(["-s".into(), "--".into(), args.target.clone().unwrap_or_default()]);
            w.push(SUBSYSTEM.into());
            return Ok(w);
        }
    };
    if args.batch {
        words.extend(["-o".into(), "BatchMode=yes".into()]);
    }
    if let Some(alias) = &args.host_key_alias {
        words.extend(["-o".into(), format!("HostKeyAlias={alias}")]);
    }
    words.extend(["-s".into(), SUBSYSTEM.into()]);
    Ok(words)
}

pub fn spawn(args: &ConnectArgs) -> anyhow::Result<SshChild> {
    let words = command_line(args)?;
    tracing::debug!("running {}", words.join(" "));
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", words[0]))?;
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        anyhow::bail!("no pipes to {}", words[0]);
    };
    Ok(SshChild {
        child,
        rx: StreamRx(stdout),
        tx: StreamTx(stdin),
    })
}

/// The address the system `ssh` connects to for `--ssh` (from `ssh -G`: its `hostname`, or the
/// first ProxyJump hop's), so that the same rules apply as with the built-in transport (no route
/// may cover it; the full tunnel pins it). Unknown for `--ssh-command` and ProxyCommand.
pub async fn server_address(args: &ConnectArgs) -> Option<std::net::IpAddr> {
    if args.ssh_command.is_some() {
        return None;
    }
    let target = args.target.clone()?;
    let mut settings = ssh_g(&target, args.port).await?;
    if settings.proxy_command {
        tracing::debug!("ProxyCommand in use: the server's address is not known");
        return None;
    }
    if let Some(jump) = settings.proxy_jump.take() {
        let first = jump.split(',').next().unwrap_or_default().to_string();
        settings = ssh_g(&first, None).await?;
    }
    let addr = tokio::net::lookup_host((settings.hostname.as_str(), settings.port))
        .await
        .ok()?
        .next()?;
    Some(addr.ip())
}

/// What `ssh -G` says about a destination.
#[derive(Debug, Default, PartialEq, Eq)]
struct SshSettings {
    hostname: String,
    port: u16,
    proxy_jump: Option<String>,
    proxy_command: bool,
}

fn parse_ssh_g(text: &str) -> SshSettings {
    let mut s = SshSettings {
        port: 22,
        ..Default::default()
    };
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "hostname" => s.hostname = value.to_string(),
            "port" => s.port = value.parse().unwrap_or(22),
            "proxyjump" if value != "none" => s.proxy_jump = Some(value.to_string()),
            "proxycommand" if value != "none" => s.proxy_command = true,
            _ => {}
        }
    }
    s
}

async fn ssh_g(target: &str, port: Option<u16>) -> Option<SshSettings> {
    let mut cmd = Command::new("ssh");
    cmd.arg("-G");
    if let Some(p) = port {
        cmd.arg("-p").arg(p.to_string());
    }
    // `ssh -G` evaluates the configuration only; it does not connect.
    let out = cmd.arg("--").arg(target).stdin(Stdio::null()).output().await.ok()?;
    if !out.status.success() {
        return None;
    }
    let s = parse_ssh_g(&String::from_utf8_lossy(&out.stdout));
    (!s.hostname.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_ssh_g_output() {
        let s = super::parse_ssh_g("user alice\nhostname 10.0.0.1\nport 2222\nproxyjump none\nproxycommand none\n");
        assert_eq!(
            (s.hostname.as_str(), s.port, s.proxy_jump, s.proxy_command),
            ("10.0.0.1", 2222, None, false)
        );
        let s = super::parse_ssh_g("hostname gw\nproxyjump bastion,other\n");
        assert_eq!(s.proxy_jump.as_deref(), Some("bastion,other"));
    }

    use super::*;
    use clap::Parser;

    fn args(line: &[&str]) -> ConnectArgs {
        match crate::cli::Cli::parse_from(line).command {
            crate::cli::Command::Connect(a) => a,
            other => panic!("not a connect command: {other:?}"),
        }
    }

    #[test]
    fn builds_ssh_command_lines() {
        let a = args(&["sshvpn", "connect", "--ssh", "alice@gw", "-p", "2222", "--batch"]);
        assert_eq!(
            command_line(&a).unwrap().join(" "),
            "ssh -p 2222 -o BatchMode=yes -s -- alice@gw sshvpn"
        );
        let a = args(&["sshvpn", "connect", "--ssh", "--", "-oProxyCommand=x"]);
        assert_eq!(command_line(&a).unwrap().join(" "), "ssh -s -- -oProxyCommand=x sshvpn");
        let a = args(&["sshvpn", "connect", "--ssh-command", "ssh -J 'bastion host' user@h"]);
        assert_eq!(
            command_line(&a).unwrap(),
            ["ssh", "-J", "bastion host", "user@h", "-s", "sshvpn"]
        );
        let a = args(&["sshvpn", "connect", "--ssh", "gw", "--host-key-alias", "10.0.0.1"]);
        assert_eq!(
            command_line(&a).unwrap().join(" "),
            "ssh -o HostKeyAlias=10.0.0.1 -s -- gw sshvpn"
        );
    }
}
