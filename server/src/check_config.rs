//! `sshvpnd check-config`: reads a configuration file as the daemon would and reports every
//! problem with its line, or a one-line summary. Reads the file only; changes nothing.

use crate::config;

/// `sshvpnd check-config`: every problem with its line, or a one-line summary.
pub fn check_config(path: &std::path::Path) -> Result<String, String> {
    let (file, text) = config::load(path)?;
    let peers = config::validate(&text, &file, file.pool, file.pool6).map_err(|errs| {
        errs.iter()
            .map(|e| config::format_error(path, e))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    // Access control (issue 14): the policy, checked against the peers.
    let (policy, _) = crate::policy_runtime::load(path, [None, None])?;
    Ok(format!(
        "{}: OK ({} peers); {}",
        path.display(),
        peers.0.len(),
        crate::policy_runtime::summary(&policy)
    ))
}
