//! `sshvpnd attach`: run by OpenSSH's sshd as the `sshvpn` subsystem for an authenticated user.
//! Connects to the daemon's control socket and relays the SSH channel (this process's stdin and
//! stdout) to it. The daemon identifies the user from the socket's peer credentials.

use std::io::{Read, Write};
use std::os::fd::AsFd;
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
    // Raw descriptors (std's stdout is line-buffered: frames must go out at once), and a plain
    // read/write loop: every read is passed on immediately, whatever its size.
    let mut stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let up = std::thread::spawn(move || {
        let r = relay(&mut stdin, &mut to_daemon);
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
        r
    });
    let down = relay(&mut from_daemon, &mut stdout);
    // The daemon closed the tunnel: end, whatever the other direction is doing.
    drop(up);
    down.map_err(|e| anyhow!("relaying the tunnel: {e}"))
}

/// Copies until end of stream, writing out each read as it comes.
fn relay(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}
