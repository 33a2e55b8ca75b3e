//! Command-line interface of `sshvpnd`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ipnet::IpNet;

#[derive(Debug, Parser)]
#[command(
    name = "sshvpnd",
    version,
    about = "sshvpn server: a layer-3 VPN over SSH"
)]
pub struct Args {
    /// Address and port to accept SSH connections on.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Host key (OpenSSH format); an ed25519 key is generated here if the file does not exist.
    #[arg(long, value_name = "PATH")]
    pub host_key: PathBuf,
    /// OpenSSH authorized_keys file listing the client keys allowed to connect.
    #[arg(long, value_name = "PATH")]
    pub authorized_keys: PathBuf,
    /// IPv4 address pool; the server takes its first address, clients get the next free ones.
    #[arg(long, value_name = "CIDR")]
    pub pool: IpNet,
    /// IPv6 address pool (optional).
    #[arg(long, value_name = "CIDR")]
    pub pool6: Option<IpNet>,
    /// Route to push to clients (repeatable), e.g. the LAN behind this server.
    #[arg(long = "push-route", value_name = "CIDR")]
    pub push_routes: Vec<IpNet>,
    /// Name of the TUN interface.
    #[arg(long, default_value = "sshvpn0", value_name = "NAME")]
    pub tun_name: String,
    /// MTU of the tunnel interface.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(1280..=65000))]
    pub mtu: u16,
    /// Do not use TUN offloads (virtio-net header, TSO/USO); move plain packets only.
    #[arg(long)]
    pub no_offload: bool,
    /// Packets queued per client before new ones are dropped.
    #[arg(long, default_value_t = 1024, value_name = "PACKETS")]
    pub client_queue: usize,
    /// Bytes (KiB) queued per client before new packets are dropped.
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    pub client_queue_kib: usize,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Args {
    /// Checks relations between arguments that clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if !self.pool.addr().is_ipv4() {
            return Err(format!(
                "--pool {} is not an IPv4 prefix (use --pool6 for IPv6)",
                self.pool
            ));
        }
        if let Some(p6) = self.pool6
            && !p6.addr().is_ipv6()
        {
            return Err(format!("--pool6 {p6} is not an IPv6 prefix"));
        }
        if self.tun_name.is_empty() || self.tun_name.len() > 15 {
            return Err(format!(
                "--tun-name {:?} must be 1 to 15 characters",
                self.tun_name
            ));
        }
        if self.client_queue == 0 {
            return Err("--client-queue must be at least 1".into());
        }
        Ok(())
    }
}
