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

/// The command line: `--ssh-command` as given, or `ssh [-p PORT] [-i KEY] TARGET`, then
/// `[-o BatchMode=yes] -s sshvpn`.
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
            w.push(args.target.clone().unwrap_or_default());
            w
        }
    };
    if args.batch {
        words.extend(["-o".into(), "BatchMode=yes".into()]);
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

#[cfg(test)]
mod tests {
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
            "ssh -p 2222 alice@gw -o BatchMode=yes -s sshvpn"
        );
        let a = args(&["sshvpn", "connect", "--ssh-command", "ssh -J 'bastion host' user@h"]);
        assert_eq!(
            command_line(&a).unwrap(),
            ["ssh", "-J", "bastion host", "user@h", "-s", "sshvpn"]
        );
    }
}
