//! Optional source NAT for LANs with no route back to the pools: one nftables table of our own
//! (`ip sshvpn_<tun>`), created at start and deleted at exit; nothing else in the ruleset is
//! touched. Uses the `nft` program.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use ipnet::IpNet;

pub struct Masquerade {
    table: String,
}

fn nft(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables for --masquerade)")?;
    child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Masquerade {
    /// Masquerades IPv4 traffic from `pool` leaving through `iface`.
    pub fn install(tun: &str, pool: IpNet, iface: &str) -> anyhow::Result<Masquerade> {
        let table = format!("sshvpn_{}", tun.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        // A table left by a killed run is replaced, not duplicated.
        let _ = nft(&format!("delete table ip {table}\n"));
        nft(&format!(
            "table ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {pool} oifname \"{iface}\" masquerade\n  }}\n}}\n"
        ))
        .context("installing the masquerade rule")?;
        tracing::info!("masquerading {pool} out of {iface} (nftables table ip {table})");
        Ok(Masquerade { table })
    }
}

impl Drop for Masquerade {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table ip {}\n", self.table)) {
            tracing::warn!("removing the masquerade table: {e:#}");
        }
    }
}
