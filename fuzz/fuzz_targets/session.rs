//! Session state machine driven by untrusted frames, the way `tunnel::driver` drives it.
//!
//! Input: byte 0 picks the role (bit 0: server) and the local features (bit 1: GSO). The rest
//! is a list of operations, each one byte:
//! - `op & 3 == 0`: decode the next frame from the remaining input (the frame follows directly).
//!   Data frames count as activity; control frames are decoded and handed to `handle_control`.
//!   A frame error or an incomplete frame ends the run (the driver closes the connection).
//! - `op & 3 == 1`: the clock advances by `(op >> 2) * 250 ms`, then `handle_timeout`.
//! - `op & 3 == 2`: the peer answers our last keepalive (`KeepaliveAck` with its token).
//! - `op & 3 == 3`: local close with code `op >> 2`.
//!
//! Session errors close the session with the error's close code, as the driver does; a server
//! accepts every `ClientHello`. After each step, every queued message must survive encoding and
//! the peer's decoding, and the session's invariants must hold.

#![no_main]

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use sshvpn_common::proto::control::{CloseCode, Control, Features, Hello, TunnelConfig};
use sshvpn_common::proto::frame::{FrameDecoder, MAX_PAYLOAD_LIMIT};
use sshvpn_common::proto::session::{Event, Role, Session, Timers};

struct Harness {
    s: Session,
    now: Instant,
    last_keepalive: Option<u64>,
    closed_sent: bool,
}

impl Harness {
    fn handle(&mut self, msg: Control) {
        let res = self.s.handle_control(self.now, msg);
        self.after(res.err());
    }

    fn after(&mut self, err: Option<sshvpn_common::proto::session::SessionError>) {
        if let Some(e) = err {
            self.s.close(e.close_code(), e.to_string());
        }
        while let Some(ev) = self.s.poll_event() {
            match ev {
                Event::ClientHello(n) => {
                    assert_eq!(self.s.role(), Role::Server, "ClientHello on a client");
                    assert!(n.mtu >= 576 && n.peer_max_payload <= MAX_PAYLOAD_LIMIT);
                    self.s
                        .accept(TunnelConfig {
                            addr4: Some("10.99.0.2/24".parse().unwrap()),
                            mtu: n.mtu,
                            ..Default::default()
                        })
                        .expect("accept after ClientHello");
                }
                Event::Established { negotiated, config } => {
                    assert!(self.s.is_established() || self.s.is_closed());
                    assert_eq!(config.is_some(), self.s.role() == Role::Client);
                    assert!(negotiated.mtu >= 576);
                    assert!(negotiated.peer_max_payload <= MAX_PAYLOAD_LIMIT);
                }
                Event::Rtt(_) => assert!(self.s.last_rtt().is_some()),
                Event::Closed { .. } => assert!(self.s.is_closed()),
            }
        }
        let dec = FrameDecoder::new(usize::MAX);
        while let Some(out) = self.s.poll_transmit() {
            assert!(!self.closed_sent, "{out:?} queued after a close was sent");
            if let Control::Keepalive(t) = out {
                self.last_keepalive = Some(t);
            }
            if let Control::Close { .. } = out {
                self.closed_sent = true;
            }
            let mut wire = BytesMut::new();
            out.encode_frame(&mut wire);
            let f = dec.decode(&mut wire).unwrap().unwrap();
            assert!(wire.is_empty());
            assert_eq!(Control::decode(f.kind, &f.payload).as_ref(), Ok(&out));
        }
        if self.s.is_established() {
            assert!(self.s.negotiated().is_some());
        }
        if self.s.is_closed() {
            assert!(!self.s.is_established());
        }
        // Deadline arithmetic must not panic.
        let _ = self.s.poll_timeout();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, ops)) = data.split_first() else {
        return;
    };
    let role = if cfg & 1 != 0 { Role::Server } else { Role::Client };
    let features = if cfg & 2 != 0 {
        Features::GSO
    } else {
        Features::default()
    };
    let start = Instant::now();
    let local = Hello::new(features, 1500);
    let max = FrameDecoder::new(local.max_payload as usize);
    let mut h = Harness {
        s: Session::new(role, local, Timers::default(), start),
        now: start,
        last_keepalive: None,
        closed_sent: false,
    };
    h.after(None);

    let mut buf = BytesMut::from(ops);
    while buf.has_remaining() {
        let op = buf.get_u8();
        match op & 3 {
            0 => match max.decode(&mut buf) {
                Ok(Some(f)) if f.kind.is_data() => h.s.handle_activity(h.now),
                Ok(Some(f)) => match Control::decode(f.kind, &f.payload) {
                    Ok(msg) => h.handle(msg),
                    Err(_) => return, // the driver ends the connection
                },
                Ok(None) | Err(_) => return,
            },
            1 => {
                h.now += Duration::from_millis(250) * u32::from(op >> 2);
                let res = h.s.handle_timeout(h.now);
                h.after(res.err());
            }
            2 => {
                if let Some(t) = h.last_keepalive {
                    h.handle(Control::KeepaliveAck(t));
                }
            }
            _ => {
                h.s.close(CloseCode::from_u16(u16::from(op >> 2)), "local close");
                h.after(None);
            }
        }
    }
});
