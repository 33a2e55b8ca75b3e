//! Resolvers pushed by the server, on Linux: systemd-resolved per-link DNS when it runs,
//! otherwise /etc/resolv.conf rewritten in place with the original restored. Applied while a
//! [`Dns`] lives; the original resolv.conf is also saved as a restore record, so that the next
//! run can undo what a killed one left. The commands and text come from [`super::plan`].
//! Reached through `NetSetup::apply_dns` (the caller holds it as a `RestoreGuard`).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use super::plan::{resolv_conf_text, resolvectl_plan};
use super::{NetSetupError, RestoreRecords};

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The restore record's kind.
const RECORD: &str = "resolv";

/// Resolver settings applied for the tunnel.
pub enum Dns {
    Resolved {
        link: String,
    },
    ResolvConf {
        records: Arc<dyn RestoreRecords>,
        original: Vec<u8>,
    },
}

fn resolved_running() -> bool {
    Path::new("/run/systemd/resolve/io.systemd.Resolve").exists()
        && Command::new("resolvectl")
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
}

impl Dns {
    /// Applies validated resolver settings (see `accept_policy`) to `link`; nothing (`None`)
    /// without servers. With the full tunnel the link becomes the default DNS route.
    pub fn apply(
        link: &str,
        servers: &[IpAddr],
        search: &[String],
        full_tunnel: bool,
        records: Arc<dyn RestoreRecords>,
    ) -> Result<Option<Dns>, NetSetupError> {
        if servers.is_empty() {
            return Ok(None);
        }
        if resolved_running() {
            for args in resolvectl_plan(link, servers, search, full_tunnel) {
                let step = format!("resolvectl {}", args.join(" "));
                let status = Command::new("resolvectl")
                    .args(&args)
                    .status()
                    .map_err(|e| NetSetupError::failed(step.clone(), e))?;
                if !status.success() {
                    // Leave nothing half-applied.
                    let _ = Command::new("resolvectl").arg("revert").arg(link).status();
                    return Err(NetSetupError::failed(step, status.to_string()));
                }
            }
            tracing::info!("DNS for {link} via systemd-resolved: {servers:?}");
            return Ok(Some(Dns::Resolved { link: link.to_string() }));
        }
        let original = std::fs::read(RESOLV_CONF).unwrap_or_default();
        records.save(RECORD, &original);
        let text = resolv_conf_text(
            servers,
            search,
            "written by sshvpn while the tunnel is up; the original is restored on exit",
        );
        // In place (not rename): /etc/resolv.conf may be a bind mount.
        std::fs::write(RESOLV_CONF, text).map_err(|e| NetSetupError::failed(format!("writing {RESOLV_CONF}"), e))?;
        tracing::info!("DNS: {RESOLV_CONF} now points at {servers:?}; the original is restored on exit");
        Ok(Some(Dns::ResolvConf { records, original }))
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        match self {
            Dns::Resolved { link } => {
                let _ = Command::new("resolvectl").arg("revert").arg(&*link).status();
            }
            Dns::ResolvConf { records, original } => {
                if let Err(e) = std::fs::write(RESOLV_CONF, &*original) {
                    tracing::warn!("cannot restore {RESOLV_CONF}: {e}");
                }
                records.remove(RECORD);
            }
        }
    }
}

/// Restores the resolv.conf a killed previous run left rewritten.
pub(super) fn recover(records: &dyn RestoreRecords) {
    let Some(original) = records.load(RECORD) else {
        return;
    };
    if std::fs::write(RESOLV_CONF, original).is_ok() {
        tracing::warn!("restored {RESOLV_CONF} left by a previous run");
    }
    records.remove(RECORD);
}
