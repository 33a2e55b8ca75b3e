//! Command-line options both binaries share: the tunnel group (`--tun-name`, `--mtu`,
//! `--no-offload`, `--keepalive`, `--dead-peer-timeout`), flattened into `sshvpn connect`/`exec`
//! and `sshvpnd` with `#[command(flatten)]`, with their one validation and the [`Timers`] they
//! give. Flag names and defaults are the same on both sides; only the help wording (what "the
//! peer" is) and the server's "Limits" heading differ, so the group is generic over a
//! [`TunnelHelp`] marker that holds those words. This module must not read files or know about
//! either binary's other options.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::time::Duration;

use crate::proto::Timers;

/// The words one binary uses in `--help` for the tunnel options (no final period, as clap
/// shows one-line doc comments).
pub trait TunnelHelp: Clone + Debug + Default + Send + Sync + 'static {
    const MTU: &'static str;
    const KEEPALIVE: &'static str;
    const DEAD_PEER_TIMEOUT: &'static str;
    /// Help heading of `--keepalive` and `--dead-peer-timeout` (`None`: the default "Options").
    const TIMERS_HEADING: Option<&'static str>;
}

/// `sshvpn`'s wording.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientHelp;

impl TunnelHelp for ClientHelp {
    const MTU: &'static str = "Largest packet this end takes; the tunnel uses the smaller of both ends' MTUs";
    const KEEPALIVE: &'static str = "Seconds between keepalives on the tunnel";
    const DEAD_PEER_TIMEOUT: &'static str =
        "The server is declared dead (and the client reconnects) after this many seconds of silence";
    const TIMERS_HEADING: Option<&'static str> = None;
}

/// `sshvpnd`'s wording.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerHelp;

impl TunnelHelp for ServerHelp {
    const MTU: &'static str = "MTU of the tunnel interface";
    const KEEPALIVE: &'static str = "Seconds between keepalives on each tunnel";
    const DEAD_PEER_TIMEOUT: &'static str = "A client silent for this many seconds is disconnected";
    const TIMERS_HEADING: Option<&'static str> = Some("Limits");
}

/// The tunnel options of either binary.
#[derive(Debug, Clone, clap::Args)]
pub struct TunnelArgs<H: TunnelHelp> {
    /// Name of the TUN interface.
    #[arg(long, default_value = "sshvpn0", value_name = "NAME")]
    pub tun_name: String,
    #[arg(long, help = H::MTU, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(1280..=65000))]
    pub mtu: u16,
    /// Do not use TUN offloads (virtio-net header, TSO/USO); move plain packets only.
    #[arg(long)]
    pub no_offload: bool,
    #[arg(long, help = H::KEEPALIVE, default_value_t = 5, value_name = "SECONDS", help_heading = H::TIMERS_HEADING)]
    pub keepalive: u64,
    #[arg(long, help = H::DEAD_PEER_TIMEOUT, default_value_t = 15, value_name = "SECONDS", help_heading = H::TIMERS_HEADING)]
    pub dead_peer_timeout: u64,
    #[arg(skip)]
    pub _help: PhantomData<H>,
}

/// A tunnel option clap cannot check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TunnelArgsError {
    #[error("--tun-name: {0}")]
    TunName(#[from] crate::netconf::BadInterfaceName),
}

impl<H: TunnelHelp> TunnelArgs<H> {
    /// Checks what clap cannot: the interface name by Linux's rules (it also names files, so
    /// `../x` and the like are refused).
    pub fn validate(&self) -> Result<(), TunnelArgsError> {
        crate::netconf::check_ifname(&self.tun_name)?;
        Ok(())
    }

    /// The session timers these options ask for: keepalives at least every second, and a dead
    /// peer after at least two (the server also refuses a timeout not longer than the interval).
    pub fn timers(&self) -> Timers {
        Timers {
            keepalive_interval: Duration::from_secs(self.keepalive.max(1)),
            dead_peer_timeout: Duration::from_secs(self.dead_peer_timeout.max(2)),
            ..Timers::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Client {
        #[command(flatten)]
        tunnel: TunnelArgs<ClientHelp>,
    }

    #[derive(Debug, Parser)]
    struct Server {
        #[command(flatten)]
        tunnel: TunnelArgs<ServerHelp>,
    }

    #[test]
    fn same_flags_and_defaults_on_both_sides_with_each_sides_help() {
        <Client as clap::CommandFactory>::command().debug_assert();
        <Server as clap::CommandFactory>::command().debug_assert();
        let c = Client::parse_from(["x"]).tunnel;
        let s = Server::parse_from(["x"]).tunnel;
        assert_eq!((c.tun_name.as_str(), c.mtu, c.no_offload), ("sshvpn0", 1500, false));
        assert_eq!((s.keepalive, s.dead_peer_timeout), (5, 15));
        assert_eq!(c.timers(), s.timers());
        let help = <Server as clap::CommandFactory>::command().render_help().to_string();
        assert!(help.contains("Limits:") && help.contains("A client silent"), "{help}");
        let help = <Client as clap::CommandFactory>::command().render_help().to_string();
        assert!(
            !help.contains("Limits:") && help.contains("The server is declared dead"),
            "{help}"
        );
    }

    #[test]
    fn validation_and_timers() {
        let t = Client::parse_from(["x", "--tun-name", "a-very-long-name0", "--keepalive", "0"]).tunnel;
        assert!(matches!(t.validate(), Err(TunnelArgsError::TunName(_))));
        let path = Client::parse_from(["x", "--tun-name", "../../tmp/x"]).tunnel;
        assert!(path.validate().unwrap_err().to_string().contains("'/'"));
        assert_eq!(t.timers().keepalive_interval, Duration::from_secs(1));
        let t = Client::parse_from(["x", "--dead-peer-timeout", "0"]).tunnel;
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.timers().dead_peer_timeout, Duration::from_secs(2));
        assert!(Client::try_parse_from(["x", "--mtu", "1000"]).is_err());
    }
}
