//! Tunnel-protocol clients written for tests that need a peer which misbehaves: they attach to
//! the daemon's control socket (as `sshvpnd attach` would for sshd) and speak the protocol by
//! hand with the real frame and control-message codecs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sshvpn_common::proto::frame::{FrameDecoder, FrameType};
use sshvpn_common::proto::{Control, Features, Hello};

/// A raw protocol connection to the daemon through its control socket.
pub struct FakeClient {
    pub stream: UnixStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// The daemon's hello, once [`FakeClient::handshake`] has seen it.
    pub peer_hello: Option<Hello>,
}

impl FakeClient {
    /// Connects as `attach` does and says hello, with an instance tag if given.
    pub fn attach(control: &Path, instance: Option<&str>) -> FakeClient {
        Self::attach_with(control, instance, Features::default())
    }

    /// The same, announcing `features` in the hello.
    pub fn attach_with(control: &Path, instance: Option<&str>, features: Features) -> FakeClient {
        let mut stream = UnixStream::connect(control).expect("connect to the control socket");
        stream.write_all(b"attach\n").expect("attach request");
        let mut c = FakeClient {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::default(),
            peer_hello: None,
        };
        let hello = Hello {
            instance: instance.map(str::to_string),
            software: "fake-client".into(),
            ..Hello::new(features, 1500)
        };
        c.send(&Control::Hello(hello));
        c
    }

    pub fn send(&mut self, msg: &Control) {
        let mut b = BytesMut::new();
        msg.encode_frame(&mut b);
        self.stream.write_all(&b).expect("send a control message");
    }

    /// Sends one data frame of type `kind` whose payload is `parts` concatenated.
    pub fn send_data(&mut self, kind: FrameType, parts: &[&[u8]]) {
        let mut b = BytesMut::new();
        sshvpn_common::proto::frame::encode_parts(&mut b, kind, parts);
        self.stream.write_all(&b).expect("send a data frame");
    }

    /// The next control message from the daemon (data frames are skipped), or None on end of
    /// stream or after `secs`.
    pub fn next_control(&mut self, secs: f64) -> Option<Control> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            while let Ok(Some(f)) = self.decoder.decode(&mut self.buf) {
                if !f.kind.is_data() {
                    return Control::decode(f.kind, &f.payload).ok();
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the daemon's answer to the hello: its configuration, or a close.
    pub fn handshake(&mut self, secs: f64) -> Option<Control> {
        loop {
            match self.next_control(secs)? {
                Control::Hello(h) => self.peer_hello = Some(h),
                other => return Some(other),
            }
        }
    }
}

/// The resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
