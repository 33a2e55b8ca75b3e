//! `sshvpnd attach`: run by OpenSSH's sshd as the `sshvpn` subsystem for an authenticated user.
//! Connects to the daemon's control socket and relays the SSH channel (this process's stdin and
//! stdout) to it. The daemon identifies the user from the socket's peer credentials.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::anyhow;

/// First line on the control socket for a tunnel.
pub const ATTACH_REQUEST: &[u8] = b"attach\n";

pub fn run(control: &Path) -> anyhow::Result<()> {
    let mut sock = UnixStream::connect(control).map_err(|e| {
        anyhow!(
            "cannot reach the sshvpn daemon at {}: {e} (is sshvpnd running?)",
            control.display()
        )
    })?;
    sock.write_all(ATTACH_REQUEST)?;
    let mut to_daemon = sock.try_clone()?;
    let mut from_daemon = sock;
    // std::io::copy moves data between descriptors with splice where it can.
    let up = std::thread::spawn(move || {
        let r = std::io::copy(&mut std::io::stdin().lock(), &mut to_daemon);
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
        r
    });
    let mut stdout = std::io::stdout().lock();
    let down = std::io::copy(&mut from_daemon, &mut stdout);
    let _ = stdout.flush();
    // The daemon closed the tunnel: end, whatever the other direction is doing.
    drop(up);
    down.map(|_| ()).map_err(|e| anyhow!("relaying the tunnel: {e}"))
}
