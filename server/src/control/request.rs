//! The requesting side of the daemon's control socket (`sshvpnd status`, `sshvpnd policy`): one
//! request line, one answer read to the end. Imports nothing of the daemon, so that the
//! reporting modules can use it without an import cycle. Holds every request line of the protocol.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, anyhow};

/// First line on the control socket for a tunnel (`sshvpnd attach`).
pub const ATTACH_REQUEST: &[u8] = b"attach\n";
/// Request line of `sshvpnd status`.
pub const STATUS_REQUEST: &[u8] = b"status\n";
/// Request line of `sshvpnd policy`.
pub const POLICY_REQUEST: &[u8] = b"policy\n";

/// Sends `request` to the daemon at `control` and returns its whole answer; `what` names the
/// answer in errors.
pub fn ask(control: &Path, request: &[u8], what: &str) -> anyhow::Result<String> {
    let mut sock = UnixStream::connect(control).map_err(|e| {
        anyhow!(
            "cannot reach the daemon at {}: {e} (is sshvpnd running?)",
            control.display()
        )
    })?;
    sock.write_all(request)?;
    let mut text = String::new();
    sock.read_to_string(&mut text)
        .with_context(|| format!("reading the {what}"))?;
    Ok(text)
}
