//! Control-message decoder.
//!
//! Input: one byte choosing the frame type, then the frame payload (a TLV list). A byte that is a
//! frame-type code is used as that type (so data and ignorable types check the `NotControl`
//! error); any other byte maps to one of the five control types.
//!
//! Properties: decoding never panics; a non-control type is always `NotControl`; a decoded
//! message has the frame type it was decoded from; and it round-trips: `encode_frame`, the frame
//! decoder and `Control::decode` give back an equal message, and encoding that again gives the
//! same bytes.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sshvpn_common::proto::control::{Control, ControlError};
use sshvpn_common::proto::frame::{FrameDecoder, FrameType};

const CONTROL: [FrameType; 5] = [
    FrameType::Hello,
    FrameType::Config,
    FrameType::Keepalive,
    FrameType::KeepaliveAck,
    FrameType::Close,
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let kind = FrameType::from_code(sel).unwrap_or(CONTROL[usize::from(sel) % CONTROL.len()]);

    let decoded = Control::decode(kind, payload);
    if !CONTROL.contains(&kind) {
        assert_eq!(decoded, Err(ControlError::NotControl(kind)));
        return;
    }
    let Ok(msg) = decoded else {
        return;
    };
    assert_eq!(msg.frame_type(), kind);

    let mut wire = BytesMut::new();
    msg.encode_frame(&mut wire);
    let encoded = wire.clone();
    // The frame must pass a decoder with the largest limit, as a peer would receive it.
    let frame = FrameDecoder::new(usize::MAX)
        .decode(&mut wire)
        .expect("re-encoded control frame is not a valid frame")
        .expect("re-encoded control frame is incomplete");
    assert!(wire.is_empty(), "encode_frame wrote more than one frame");
    assert_eq!(frame.kind, kind);
    let again = Control::decode(frame.kind, &frame.payload)
        .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
    assert_eq!(again, msg, "control message does not round-trip");

    let mut wire2 = BytesMut::new();
    again.encode_frame(&mut wire2);
    assert_eq!(wire2, encoded, "encoding is not deterministic");
});
