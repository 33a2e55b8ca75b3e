//! Optional source NAT for LANs with no route back to the pools (Linux, nftables): one table of
//! our own (`ip sshvpn_<tun>`), created by [`Masquerade::install`] and deleted when the
//! [`Masquerade`] is dropped; nothing else in the ruleset is touched. Uses the `nft` program;
//! the scripts come from [`super::plan`]. Reached through `NetSetup::masquerade` (the caller
//! holds it as a `RestoreGuard`).

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use super::NetSetupError;
use super::plan::{masquerade_nft, nat_table_name};

/// The masquerade table, removed on drop.
pub struct Masquerade {
    table: String,
}

fn nft(script: &str) -> Result<(), NetSetupError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetSetupError::failed("running nft (install nftables for --masquerade)", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetSetupError::failed("writing to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetSetupError::failed("waiting for nft", e))?;
    if !out.status.success() {
        return Err(NetSetupError::failed(
            "nft",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

impl Masquerade {
    /// Masquerades IPv4 traffic from `pool` leaving through `iface`.
    pub fn install(tun: &str, pool: IpNet, iface: &str) -> Result<Masquerade, NetSetupError> {
        let table = nat_table_name(tun);
        // A table left by a killed run is replaced, not duplicated.
        let _ = nft(&format!("delete table ip {table}\n"));
        nft(&masquerade_nft(&table, pool, iface))?;
        tracing::info!("masquerading {pool} out of {iface} (nftables table ip {table})");
        Ok(Masquerade { table })
    }
}

impl Drop for Masquerade {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table ip {}\n", self.table)) {
            tracing::warn!("removing the masquerade table: {}", super::error_chain(&e));
        }
    }
}
