//! Resolvers pushed by the server, on Linux: systemd-resolved per-link DNS when it runs,
//! otherwise /etc/resolv.conf rewritten in place with the original restored. Applied while a
//! [`Dns`] lives; the original resolv.conf is also saved as a host-wide restore record (one per
//! resolv.conf file, whichever client wrote it), so that the next run can undo what a killed one
//! left. One resolv.conf has one manager: the first client to rewrite it claims it until it
//! exits, and another client that wants to rewrite the same file is refused with a clear error
//! (it can run with `--no-dns`). The commands and text come from [`super::plan`].
//! Reached through `NetSetup::apply_dns` (the caller holds it as a `RestoreGuard`).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use super::plan::{resolv_conf_text, resolvectl_plan};
use super::{NetSetupError, RestoreRecords};

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// This process's claim on the resolv.conf it rewrites, once taken: kept until the process
/// exits (also while the tunnel is down and the original is back in place), so that no other
/// client takes the file over between two sessions.
static CLAIM: std::sync::Mutex<Option<Box<dyn Send + Sync>>> = std::sync::Mutex::new(None);

/// The host-wide restore record and claim for the resolv.conf this process sees (per file: a
/// network namespace may show its own through a bind mount).
fn resolv_kind() -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(RESOLV_CONF) {
        Ok(m) => format!("host-resolv-{:x}-{}", m.dev(), m.ino()),
        Err(_) => "host-resolv".to_string(),
    }
}

/// Takes (once per process) the claim on this resolv.conf.
fn claim(records: &dyn RestoreRecords, kind: &str) -> Result<(), NetSetupError> {
    let mut held = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
    if held.is_none() {
        let guard = records.claim(kind).map_err(|why| {
            NetSetupError::failed(
                format!("taking over {RESOLV_CONF}"),
                format!("{why}; run this client with --no-dns (or stop the other one)"),
            )
        })?;
        *held = Some(guard);
    }
    Ok(())
}

/// Resolver settings applied for the tunnel.
pub enum Dns {
    Resolved {
        link: String,
    },
    ResolvConf {
        records: Arc<dyn RestoreRecords>,
        kind: String,
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
        let kind = resolv_kind();
        claim(&*records, &kind)?;
        // A killed manager of this file may have left it rewritten: that is not the original.
        restore_record(&*records, &kind);
        let original = std::fs::read(RESOLV_CONF).unwrap_or_default();
        records.save(&kind, &original);
        let text = resolv_conf_text(
            servers,
            search,
            "written by sshvpn while the tunnel is up; the original is restored on exit",
        );
        // In place (not rename): /etc/resolv.conf may be a bind mount.
        std::fs::write(RESOLV_CONF, text).map_err(|e| NetSetupError::failed(format!("writing {RESOLV_CONF}"), e))?;
        tracing::info!("DNS: {RESOLV_CONF} now points at {servers:?}; the original is restored on exit");
        Ok(Some(Dns::ResolvConf {
            records,
            kind,
            original,
        }))
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        match self {
            Dns::Resolved { link } => {
                let _ = Command::new("resolvectl").arg("revert").arg(&*link).status();
            }
            Dns::ResolvConf {
                records,
                kind,
                original,
            } => {
                if let Err(e) = std::fs::write(RESOLV_CONF, &*original) {
                    tracing::warn!("cannot restore {RESOLV_CONF}: {e}");
                }
                records.remove(kind);
            }
        }
    }
}

/// Writes back the original a killed manager of this resolv.conf saved, if any.
fn restore_record(records: &dyn RestoreRecords, kind: &str) {
    let Some(original) = records.load(kind) else {
        return;
    };
    if std::fs::write(RESOLV_CONF, original).is_ok() {
        tracing::warn!("restored {RESOLV_CONF} left by a previous run");
    }
    records.remove(kind);
}

/// Restores the resolv.conf a killed previous run left rewritten, unless a live client manages
/// it (its record is then not a leftover).
pub(super) fn recover(records: &dyn RestoreRecords) {
    let kind = resolv_kind();
    if CLAIM.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
        restore_record(records, &kind);
        return;
    }
    match records.claim(&kind) {
        Ok(_held_until_done) => restore_record(records, &kind),
        Err(why) => tracing::debug!("not recovering {RESOLV_CONF}: {why}"),
    }
}
