//! `sshvpnd check-config`: reads a configuration file as the daemon would and reports every
//! problem with its line, or a one-line summary. Reads the file only; changes nothing.

use crate::config;

/// `sshvpnd check-config`: the one-line summary of a usable file, or an error listing every
/// problem found, `PATH:LINE: reason` one per line (the peers first, then the policy).
pub fn check_config(path: &std::path::Path) -> anyhow::Result<String> {
    let (file, text) = config::load(path)?;
    let peers = config::validate(&text, &file, file.pool, file.pool6).map_err(|errs| config::problems(path, &errs))?;
    // Access control (issue 14): the policy, checked against the peers.
    let (policy, _) = crate::policy_runtime::load(path, [None, None])?;
    Ok(format!(
        "{}: OK ({} peers); {}",
        path.display(),
        peers.0.len(),
        crate::policy_runtime::summary(&policy)
    ))
}
