//! Command-line interface of `sshvpn`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use sshvpn_common::cli_args::{ClientHelp, TunnelArgs, TunnelArgsError};

#[derive(Debug, Parser)]
#[command(name = "sshvpn", version, about = "sshvpn client: a layer-3 VPN over SSH")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to an sshvpn server and route traffic through the tunnel until interrupted.
    Connect(ConnectArgs),
    /// Run one command inside the remote network, in a namespace of its own (no root needed).
    Exec(ExecArgs),
    /// Show what the client running on an interface is doing.
    Status {
        /// The client's tunnel interface.
        #[arg(long, default_value = "sshvpn0", value_name = "NAME")]
        tun_name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: sshvpn_common::cli_docs::Shell,
    },
    /// Print the man page (roff) to stdout.
    Man,
    /// Internal: the namespace side of `exec`.
    #[command(name = "__netns-helper", hide = true)]
    NetnsHelper {
        #[arg(long)]
        sock_fd: i32,
        #[arg(long)]
        no_offload: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Server to connect to, as [USER@]HOST (a ~/.ssh/config alias works too).
    #[arg(value_name = "[USER@]HOST", required_unless_present = "ssh_command")]
    pub target: Option<String>,
    /// SSH port of the server (default: from ~/.ssh/config, else 22).
    #[arg(short, long)]
    pub port: Option<u16>,
    /// Private key to authenticate with (default: ssh-agent keys, then ~/.ssh/config's IdentityFile,
    /// then ~/.ssh/id_ed25519, id_ecdsa, id_rsa). Encrypted keys ask for their passphrase.
    #[arg(short = 'i', long = "identity", value_name = "KEY")]
    pub identity: Option<PathBuf>,
    /// known_hosts file to verify the server's host key against (default: ~/.ssh/known_hosts).
    #[arg(long, value_name = "PATH")]
    pub known_hosts: Option<PathBuf>,
    /// Trust and record the host key of a server not yet in known_hosts (a changed key is still refused).
    #[arg(long)]
    pub accept_new_host_key: bool,
    /// Check the host key and the host certificate's principals against NAME instead of the
    /// host name given (as ssh's HostKeyAlias; also passed to ssh with --ssh).
    #[arg(long, value_name = "NAME")]
    pub host_key_alias: Option<String>,
    /// Carry the tunnel over the system `ssh` (`ssh [USER@]HOST -s sshvpn`): its config file,
    /// agent, ProxyJump, certificates, known_hosts and ControlMaster all apply.
    #[arg(long)]
    pub ssh: bool,
    /// Like --ssh, with the whole ssh command line, e.g. "ssh -J bastion user@host" (`-s sshvpn` is appended).
    #[arg(long, value_name = "COMMAND", conflicts_with = "ssh")]
    pub ssh_command: Option<String>,
    /// With --ssh / --ssh-command: pass `-o BatchMode=yes` (never prompt).
    #[arg(long)]
    pub batch: bool,
    /// Extra route through the tunnel (repeatable), in addition to those the server pushes.
    #[arg(long = "route", value_name = "CIDR")]
    pub routes: Vec<IpNet>,
    /// Do not install the routes the server pushes (only `--route` ones).
    #[arg(long)]
    pub no_accept_routes: bool,
    /// Install the routes the server pushes (the default).
    #[arg(long, overrides_with = "no_accept_routes")]
    pub accept_routes: bool,
    /// Accept pushed routes only inside this network (repeatable), instead of the default
    /// budget (together at most one /8 of IPv4 and one /16 of IPv6, 256 routes).
    #[arg(long = "accept-routes-within", value_name = "CIDR")]
    pub accept_routes_within: Vec<IpNet>,
    /// Full tunnel: send all traffic (IPv4 and IPv6) through the tunnel; the SSH connection keeps
    /// its own path (0.0.0.0/1 + 128.0.0.0/1 over a host route to the server).
    #[arg(long)]
    pub default_route: bool,
    /// With --default-route: keep this network off the tunnel (repeatable).
    #[arg(long = "exclude", value_name = "CIDR", requires = "default_route")]
    pub excludes: Vec<IpNet>,
    /// Do not apply the DNS settings the server pushes.
    #[arg(long)]
    pub no_dns: bool,
    /// Site gateway: enable IP forwarding (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding)
    /// while connected; the previous values are restored on exit.
    #[arg(long)]
    pub forward: bool,
    /// `--tun-name`, `--mtu`, `--no-offload`, `--keepalive`, `--dead-peer-timeout`.
    #[command(flatten)]
    pub tunnel: TunnelArgs<ClientHelp>,
    /// Give up after this many failed reconnection attempts in a row (default: retry forever).
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Longest wait between reconnection attempts (the wait starts at 1 s and doubles).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub reconnect_max_delay: u64,
    /// Seconds to wait for the TCP connection and SSH handshake.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub connect_timeout: u64,
    // Key management (issue 13).
    /// OpenSSH user certificate to present with the key (default: KEY-cert.pub next to each key,
    /// when it exists).
    #[arg(long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,
}

/// A connection option clap cannot check.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error(transparent)]
    Tunnel(#[from] TunnelArgsError),
    #[error("invalid target {0:?}: expected [USER@]HOST")]
    Target(String),
    /// Shown with its cause (`{:#}`): "--ssh-command: missing closing quote".
    #[error("--ssh-command")]
    SshCommand(#[from] shell_words::ParseError),
    #[error("--ssh-command is empty")]
    EmptySshCommand,
    #[error("invalid --host-key-alias {0:?}: expected a host name, without spaces or control characters")]
    HostKeyAlias(String),
}

impl ConnectArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), ArgsError> {
        self.tunnel.validate()?;
        if let Some(t) = &self.target {
            split_target(t)?;
        }
        if let Some(cmd) = &self.ssh_command
            && shell_words::split(cmd)?.is_empty()
        {
            return Err(ArgsError::EmptySshCommand);
        }
        if let Some(alias) = &self.host_key_alias
            && (alias.is_empty() || alias.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ArgsError::HostKeyAlias(alias.clone()));
        }
        Ok(())
    }
}

/// Splits `[user@]host` (host may be `[v6addr]`).
pub fn split_target(target: &str) -> Result<(Option<String>, String), ArgsError> {
    let (user, host) = match target.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, target),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    if host.is_empty() || user.as_deref() == Some("") {
        return Err(ArgsError::Target(target.to_string()));
    }
    Ok((user, host))
}

/// `~/.ssh/NAME`
pub fn ssh_dir_file(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh").join(name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
