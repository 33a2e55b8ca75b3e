//! `sshvpnd attach`: run by OpenSSH's sshd as the `sshvpn` subsystem for an authenticated user.
//! Connects to the daemon's control socket and relays the SSH channel (this process's stdin and
//! stdout) to it. The daemon identifies the user from the socket's peer credentials.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::anyhow;

use crate::control::request::ATTACH_REQUEST;

pub fn run(control: &Path) -> anyhow::Result<()> {
    let mut sock = match UnixStream::connect(control) {
        Ok(s) => s,
        Err(e) => {
            // sshd discards a subsystem's stderr: tell the client in the tunnel protocol.
            let _ = refuse_in_band(&mut std::io::stdout().lock(), &unreachable_reason(control, &e));
            return Err(anyhow!(
                "cannot reach the sshvpn daemon at {} ({})",
                control.display(),
                unreachable_hint(&e)
            ));
        }
    };
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

/// Why the daemon cannot be reached, as the client will show it.
pub fn unreachable_reason(control: &Path, e: &std::io::Error) -> String {
    format!(
        "sshvpn daemon not reachable at {} ({})",
        control.display(),
        unreachable_hint(e)
    )
}

fn unreachable_hint(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied => "permission denied: is this user in the control group?".to_string(),
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => format!("{e}: is sshvpnd running?"),
        _ => e.to_string(),
    }
}

/// Writes a HELLO and a CLOSE "not authorized" with `reason`: the client's handshake then
/// reports `server refused the tunnel: REASON` instead of a closed connection.
pub fn refuse_in_band(out: &mut impl Write, reason: &str) -> std::io::Result<()> {
    use sshvpn_common::proto::{CloseCode, Control, Features, Hello};
    let mut buf = bytes::BytesMut::new();
    Control::Hello(Hello::new(Features::default(), 1500)).encode_frame(&mut buf);
    Control::Close {
        code: CloseCode::NotAuthorized,
        reason: reason.to_string(),
    }
    .encode_frame(&mut buf);
    out.write_all(&buf)?;
    out.flush()
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

#[cfg(test)]
mod tests {
    use super::*;
    use sshvpn_common::proto::frame::FrameDecoder;
    use sshvpn_common::proto::{CloseCode, Control};

    #[test]
    fn unreachable_daemon_is_reported_as_hello_then_close() {
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let reason = unreachable_reason(Path::new("/run/sshvpn/control.sock"), &e);
        assert_eq!(
            reason,
            "sshvpn daemon not reachable at /run/sshvpn/control.sock (permission denied: is this user in the control group?)"
        );
        let mut out = Vec::new();
        refuse_in_band(&mut out, &reason).unwrap();
        let mut buf = bytes::BytesMut::from(&out[..]);
        let dec = FrameDecoder::new(64 * 1024);
        let hello = dec.decode(&mut buf).unwrap().unwrap();
        assert!(matches!(
            Control::decode(hello.kind, &hello.payload),
            Ok(Control::Hello(_))
        ));
        let close = dec.decode(&mut buf).unwrap().unwrap();
        match Control::decode(close.kind, &close.payload).unwrap() {
            Control::Close { code, reason: r } => {
                assert_eq!(code, CloseCode::NotAuthorized);
                assert_eq!(r, reason);
            }
            other => panic!("not a close: {other:?}"),
        }
        assert!(buf.is_empty());
    }
}
