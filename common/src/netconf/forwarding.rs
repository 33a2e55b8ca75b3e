//! IP forwarding for site gateways (Linux, /proc/sys): enabled while a [`Forwarding`] lives and
//! restored when it is dropped; what was changed is also saved as a restore record, so that the
//! next run can undo what a killed one left. Reached through `NetSetup::enable_forwarding` (the
//! caller holds it as a `RestoreGuard`).

use std::path::Path;
use std::sync::Arc;

use super::{NetSetupError, RestoreRecords};

/// The sysctls forwarding sets.
const FORWARD_SYSCTLS: [&str; 2] = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"];

/// The restore record's kind.
const RECORD: &str = "sysctl";

/// Enables forwarding; remembers what it changed.
pub struct Forwarding {
    records: Arc<dyn RestoreRecords>,
    changed: Vec<(String, String)>,
}

impl Forwarding {
    pub fn enable(records: Arc<dyn RestoreRecords>) -> Result<Forwarding, NetSetupError> {
        let mut changed = Vec::new();
        for key in FORWARD_SYSCTLS {
            let path = Path::new("/proc/sys").join(key);
            let shown = key.replace('/', ".");
            let old = std::fs::read_to_string(&path)
                .map_err(|e| NetSetupError::failed(format!("reading sysctl {shown}"), e))?
                .trim()
                .to_string();
            if old != "1" {
                std::fs::write(&path, "1").map_err(|e| NetSetupError::failed(format!("setting sysctl {shown}"), e))?;
                tracing::info!("set sysctl {shown}=1 (was {old}); restored on exit");
                changed.push((key.to_string(), old));
            }
        }
        let record: String = changed.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        if !changed.is_empty() {
            records.save(RECORD, record.as_bytes());
        }
        Ok(Forwarding { records, changed })
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        // A record this guard did not write (a killed run's, kept while other clients run) is
        // not its to remove.
        let saved = !self.changed.is_empty();
        for (key, old) in self.changed.drain(..) {
            if let Err(e) = std::fs::write(Path::new("/proc/sys").join(&key), &old) {
                tracing::warn!("cannot restore sysctl {}: {e}", key.replace('/', "."));
            }
        }
        if saved {
            self.records.remove(RECORD);
        }
    }
}

/// Restores the sysctls a killed previous run left changed.
pub(super) fn recover(records: &dyn RestoreRecords) {
    let Some(record) = records.load(RECORD) else {
        return;
    };
    for line in String::from_utf8_lossy(&record).lines() {
        if let Some((key, value)) = line.split_once(' ') {
            let _ = std::fs::write(Path::new("/proc/sys").join(key), value);
            tracing::warn!(
                "restored sysctl {} = {value} left by a previous run",
                key.replace('/', ".")
            );
        }
    }
    records.remove(RECORD);
}
