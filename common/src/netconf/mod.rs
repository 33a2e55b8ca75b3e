//! OS network setup for a tunnel interface: MTU, addresses, link state and routes, with an undo
//! log so that whatever was added is removed again on exit (and only that).

#[cfg(target_os = "linux")]
mod linux;
pub mod plan;
#[cfg(target_os = "linux")]
pub use linux::LinuxNetSetup;

use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum NetSetupError {
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("{step} failed: {reason}")]
    Failed { step: String, reason: String },
}

/// Addresses and MTU for a tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

/// What every OS implementation offers. The setup remembers what it changed; `undo` reverts it.
#[allow(async_fn_in_trait)]
pub trait NetSetup {
    /// Sets MTU and addresses and brings the interface up.
    async fn configure(&mut self, iface: &InterfaceConfig) -> Result<(), NetSetupError>;
    /// Routes `net` through the interface. Routes that already exist are left alone (and not
    /// recorded as ours).
    async fn add_route(&mut self, ifname: &str, net: IpNet) -> Result<(), NetSetupError>;
    /// Removes one route this setup added.
    async fn remove_route(&mut self, ifname: &str, net: IpNet) -> Result<(), NetSetupError>;
    /// Removes an address from the interface (missing ones are not an error).
    async fn remove_address(&mut self, ifname: &str, net: IpNet) -> Result<(), NetSetupError>;
    /// Removes every route this setup added.
    async fn undo(&mut self);
    /// Routes currently recorded as added by this setup.
    fn routes(&self) -> Vec<IpNet>;
}
