//! Command-line interface of `sshvpnd`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ipnet::IpNet;
use sshvpn_common::cli_args::{ServerHelp, TunnelArgs};

use crate::limits::MaxStartups;

/// Where the daemon's control socket lives unless `--control` says otherwise.
pub const DEFAULT_CONTROL: &str = "/run/sshvpn/control.sock";

#[derive(Debug, Parser)]
#[command(
    name = "sshvpnd",
    version,
    about = "sshvpn server: a layer-3 VPN over SSH",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Args,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect this process's stdin/stdout to the running daemon as a tunnel: the program an
    /// OpenSSH `Subsystem sshvpn` line runs for an already authenticated user.
    Attach {
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_CONTROL, value_name = "PATH")]
        control: PathBuf,
    },
    /// Show the connected clients (from the running daemon).
    Status {
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_CONTROL, value_name = "PATH")]
        control: PathBuf,
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
    /// Validate a configuration file without starting (exit status 1 and every problem, with its
    /// line, if it is broken).
    CheckConfig {
        /// The file to check.
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Show the access-control rules in force with their hit counters (from the running daemon).
    Policy {
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_CONTROL, value_name = "PATH")]
        control: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Running the daemon.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML); command-line options override it.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (off by default), e.g. 127.0.0.1:9810.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Masquerade (source NAT) tunnel traffic leaving through this interface, for LANs without a
    /// route back to the pools.
    #[arg(long, value_name = "IFACE")]
    pub masquerade: Option<String>,
    /// Address and port to accept SSH connections on (optional when clients come through an
    /// OpenSSH sshd and `sshvpnd attach`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Host key (OpenSSH format); an ed25519 key is generated here if the file does not exist.
    #[arg(long, value_name = "PATH")]
    pub host_key: Option<PathBuf>,
    /// OpenSSH authorized_keys file listing the client keys allowed to connect.
    #[arg(long, value_name = "PATH")]
    pub authorized_keys: Option<PathBuf>,
    /// IPv4 address pool; the server takes its first address, clients get the next free ones.
    #[arg(long, value_name = "CIDR")]
    pub pool: Option<IpNet>,
    /// IPv6 address pool (optional).
    #[arg(long, value_name = "CIDR")]
    pub pool6: Option<IpNet>,
    /// Route to push to clients (repeatable), e.g. the LAN behind this server.
    #[arg(long = "push-route", value_name = "CIDR")]
    pub push_routes: Vec<IpNet>,
    /// DNS server to push to clients (repeatable).
    #[arg(long = "push-dns", value_name = "IP")]
    pub push_dns: Vec<std::net::IpAddr>,
    /// DNS search domain to push to clients (repeatable).
    #[arg(long = "push-search", value_name = "DOMAIN")]
    pub push_search: Vec<String>,
    /// `--tun-name`, `--mtu`, `--no-offload`, and under "Limits" `--keepalive` and
    /// `--dead-peer-timeout` (shared with the client).
    #[command(flatten)]
    pub tunnel: TunnelArgs<ServerHelp>,
    /// Directory for state that survives restarts (the address lease file).
    #[arg(long, default_value = "/var/lib/sshvpn", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Control socket for `sshvpnd attach` (mode 0660).
    #[arg(long, default_value = DEFAULT_CONTROL, value_name = "PATH")]
    pub control: PathBuf,
    /// Group owning the control socket (users who may attach must be in it).
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// Group whose members see every session in `sshvpnd status` and the policy (root and the
    /// daemon's user always do; other members of the control group see only their own sessions).
    #[arg(long, value_name = "GROUP")]
    pub control_admin_group: Option<String>,
    /// Unix user allowed to attach through sshd (repeatable); identity `user:NAME`.
    #[arg(long = "allow-user", value_name = "USER")]
    pub allow_users: Vec<String>,
    /// Unix group whose members may attach through sshd (repeatable).
    #[arg(long = "allow-group", value_name = "GROUP")]
    pub allow_groups: Vec<String>,
    /// After setup, switch to this user, keeping only CAP_NET_ADMIN.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Packets queued per client before new ones are dropped.
    #[arg(long, default_value_t = 1024, value_name = "PACKETS", help_heading = "Limits")]
    pub client_queue: usize,
    /// Bytes (KiB) queued per client before new packets are dropped.
    #[arg(long, default_value_t = 1024, value_name = "KIB", help_heading = "Limits")]
    pub client_queue_kib: usize,
    /// Connected clients at most.
    #[arg(long, default_value_t = 1024, value_name = "N", help_heading = "Limits")]
    pub max_clients: usize,
    /// Seconds a connection has to authenticate and start its tunnel (traffic does not extend it).
    #[arg(long, default_value_t = 20, value_name = "SECONDS", help_heading = "Limits")]
    pub login_grace_time: u64,
    /// Unauthenticated connections: START:RATE:FULL as in sshd's MaxStartups.
    #[arg(
        long,
        default_value = "10:30:100",
        value_name = "START:RATE:FULL",
        help_heading = "Limits"
    )]
    pub max_startups: MaxStartups,
    /// Unauthenticated connections one source address may hold (like sshd's PerSourceMaxStartups).
    #[arg(long, default_value_t = 8, value_name = "N", help_heading = "Limits")]
    pub per_source_max_startups: usize,
    /// Largest tunnel frame accepted from a client, in KiB (at most 128; below 65 offloads are off).
    #[arg(long, default_value_t = 65, value_parser = clap::value_parser!(u64).range(2..=128), value_name = "KIB", help_heading = "Limits")]
    pub max_frame_kib: u64,
    /// Authentication attempts per connection.
    #[arg(long, default_value_t = 6, value_name = "N", help_heading = "Limits")]
    pub max_auth_tries: usize,
    /// Concurrent sessions one identity (key, certificate or Unix user) may hold; each `sshvpn
    /// exec` run is one.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024), value_name = "N", help_heading = "Limits")]
    pub max_sessions_per_identity: usize,
    /// Re-key each SSH connection after this many MiB in either direction (at most 1024).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1024), value_name = "MIB", help_heading = "Limits")]
    pub rekey_limit_mib: u64,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    // Key management (issue 13).
    /// CA keys trusted to sign user certificates, one per line (like sshd's TrustedUserCAKeys);
    /// the login user name must be among a certificate's principals.
    #[arg(long, value_name = "PATH")]
    pub trusted_user_ca_keys: Option<PathBuf>,
    /// Revoked keys (like sshd's RevokedKeys): public keys one per line, or an OpenSSH KRL
    /// (`ssh-keygen -k`). Re-read when it changes; live sessions of revoked keys end.
    #[arg(long, value_name = "PATH")]
    pub revoked_keys: Option<PathBuf>,
    /// Host certificate to serve with the host key (like sshd's HostCertificate), e.g. made by
    /// `ssh-keygen -s CA -h -I NAME -n HOST host_key.pub`.
    #[arg(long, value_name = "PATH")]
    pub host_certificate: Option<PathBuf>,
    /// StrictModes (like sshd's): refuse key files, the host certificate and the configuration
    /// file that others than root or the daemon's user may write (the file or a directory above
    /// it). Default yes.
    #[arg(long, value_name = "yes|no", value_parser = parse_yes_no)]
    pub strict_modes: Option<bool>,
    // Access control and audit (issue 14).
    /// Append an audit log (JSON lines: logins, sessions, denied traffic, reloads) to this file;
    /// reopened on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
}

impl Args {
    /// Checks relations between arguments that clap cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.listen.is_some() && (self.host_key.is_none() || self.authorized_keys.is_none()) {
            anyhow::bail!("--listen needs --host-key and --authorized-keys");
        }
        let Some(pool) = self.pool else {
            anyhow::bail!("--pool is required: the IPv4 prefix clients get their addresses from");
        };
        if !pool.addr().is_ipv4() {
            anyhow::bail!("--pool {pool} is not an IPv4 prefix (use --pool6 for IPv6)");
        }
        if let Some(p6) = self.pool6
            && !p6.addr().is_ipv6()
        {
            anyhow::bail!("--pool6 {p6} is not an IPv6 prefix");
        }
        self.tunnel.validate()?;
        if self.client_queue == 0 || self.client_queue_kib == 0 {
            anyhow::bail!("--client-queue and --client-queue-kib must be at least 1");
        }
        if self.login_grace_time == 0
            || self.tunnel.keepalive == 0
            || self.tunnel.dead_peer_timeout <= self.tunnel.keepalive
        {
            anyhow::bail!(
                "--login-grace-time and --keepalive must be positive, --dead-peer-timeout longer than --keepalive"
            );
        }
        Ok(())
    }
}

/// `yes` / `no` (also `true` / `false`), as sshd_config spells booleans.
fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(format!("{s:?}: expected yes or no")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
