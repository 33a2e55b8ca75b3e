//! Frame decoder: the whole input is a received byte stream.
//!
//! For three decoders (the default limit, the largest limit, and a small limit derived from the
//! input) the stream is decoded
//! - in one go, and checked against a small reference model of the framing rules
//!   (`docs/protocol.md`): same frames, same error, same bytes left over;
//! - again fed in small chunks, as a socket would deliver it, which must give exactly the same
//!   frames and the same final outcome.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sshvpn_common::proto::frame::{DEFAULT_MAX_PAYLOAD, Frame, FrameDecoder, FrameError, FrameType, MAX_PAYLOAD_LIMIT};

/// What decoding a whole stream ends with.
#[derive(Debug, PartialEq)]
enum End {
    /// `Ok(None)`: these bytes are an incomplete frame (or nothing).
    NeedMore(Vec<u8>),
    Error(FrameError),
}

/// Reference model of the framing rules, written independently of the decoder.
fn model(data: &[u8], limit: usize) -> (Vec<(FrameType, Vec<u8>)>, End) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &data[at..];
        if rest.len() < 4 {
            return (frames, End::NeedMore(rest.to_vec()));
        }
        let code = rest[0];
        let len = (usize::from(rest[1]) << 16) | (usize::from(rest[2]) << 8) | usize::from(rest[3]);
        let kind = match code {
            0x01 => FrameType::Ip,
            0x02 => FrameType::Gso,
            0x10 => FrameType::Hello,
            0x11 => FrameType::Config,
            0x12 => FrameType::Keepalive,
            0x13 => FrameType::KeepaliveAck,
            0x14 => FrameType::Close,
            c if c >= 0x80 => FrameType::Ignorable(c),
            c => return (frames, End::Error(FrameError::UnknownType(c))),
        };
        if len > limit {
            return (frames, End::Error(FrameError::TooLarge { len, limit }));
        }
        if matches!(kind, FrameType::Ip | FrameType::Gso) && len == 0 {
            return (frames, End::Error(FrameError::EmptyPacket));
        }
        if rest.len() < 4 + len {
            return (frames, End::NeedMore(rest.to_vec()));
        }
        if !matches!(kind, FrameType::Ignorable(_)) {
            frames.push((kind, rest[4..4 + len].to_vec()));
        }
        at += 4 + len;
    }
}

fn check_frame(dec: &FrameDecoder, f: &Frame) {
    assert!(!matches!(f.kind, FrameType::Ignorable(_)), "ignorable frame returned");
    assert!(f.payload.len() <= dec.max_payload());
    if f.kind.is_data() {
        assert!(!f.payload.is_empty());
    }
    assert_eq!(FrameType::from_code(f.kind.code()), Some(f.kind));
}

/// Decodes until `None` or an error.
fn drain(dec: &FrameDecoder, buf: &mut BytesMut, out: &mut Vec<(FrameType, Vec<u8>)>) -> Option<FrameError> {
    loop {
        match dec.decode(buf) {
            Ok(Some(f)) => {
                check_frame(dec, &f);
                out.push((f.kind, f.payload.to_vec()));
            }
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fn one_shot(dec: &FrameDecoder, data: &[u8]) -> (Vec<(FrameType, Vec<u8>)>, End) {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    let end = match drain(dec, &mut buf, &mut frames) {
        None => End::NeedMore(buf.to_vec()),
        Some(e) => End::Error(e),
    };
    (frames, end)
}

/// Feeds `data` in chunks whose sizes come from `sizes` (cycled), decoding after each chunk.
fn chunked(dec: &FrameDecoder, data: &[u8], sizes: &[usize]) -> (Vec<(FrameType, Vec<u8>)>, End) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - at);
        i += 1;
        buf.extend_from_slice(&data[at..at + n]);
        at += n;
        if let Some(e) = drain(dec, &mut buf, &mut frames) {
            return (frames, End::Error(e));
        }
    }
    (frames, End::NeedMore(buf.to_vec()))
}

fuzz_target!(|data: &[u8]| {
    // Cheap input-derived variety: a hash picks the small limit and the chunk pattern.
    let h = data
        .iter()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
    let small = (h % 2048) as usize;
    let sizes = [1 + (h >> 11) as usize % 7, 1 + (h >> 14) as usize % 64, 3, 1];

    assert_eq!(FrameDecoder::default().max_payload(), DEFAULT_MAX_PAYLOAD);
    assert_eq!(FrameDecoder::new(usize::MAX).max_payload(), MAX_PAYLOAD_LIMIT);
    assert_eq!(FrameDecoder::new(small).max_payload(), small);

    for dec in [
        FrameDecoder::default(),
        FrameDecoder::new(usize::MAX),
        FrameDecoder::new(small),
    ] {
        let whole = one_shot(&dec, data);
        assert_eq!(whole, model(data, dec.max_payload()), "decoder differs from the model");
        let pieces = chunked(&dec, data, &sizes);
        assert_eq!(whole, pieces, "chunked decoding differs from one-shot decoding");
    }
});
