//! Framing of the tunnel byte stream: a 4-byte header (type, 24-bit length) and a payload.
//!
//! Owns only the byte layout; it never touches a socket. Decoding hands out payloads as
//! [`Bytes`] split off the caller's receive buffer, so a batch of packets is parsed without
//! copying or allocating per packet. See `docs/protocol.md` for the specification.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the frame header on the wire.
pub const HEADER_LEN: usize = 4;

/// Largest payload this implementation ever accepts, whatever the peer announces.
/// A 64 KiB GSO packet plus its virtio-net header fits with room to spare.
pub const MAX_PAYLOAD_LIMIT: usize = 128 * 1024;

/// Default maximum payload announced in the hello.
pub const DEFAULT_MAX_PAYLOAD: usize = 65535 + 64;

/// Frame types. Unknown types at or above [`FrameType::FIRST_IGNORABLE`] are skipped so that
/// later versions can add optional frames; unknown types below it are a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// One IPv4 or IPv6 packet.
    Ip,
    /// A virtio-net header (10 bytes) followed by one IP packet, possibly a GSO super-packet.
    Gso,
    /// Hello: version and features (control).
    Hello,
    /// Address assignment and routes, server to client (control).
    Config,
    /// Keepalive request carrying an opaque token (control).
    Keepalive,
    /// Answer to a keepalive, echoing its token (control).
    KeepaliveAck,
    /// The sender is closing the session, with a code and a reason (control).
    Close,
    /// An optional frame type this version does not know; skipped.
    Ignorable(u8),
}

impl FrameType {
    /// Types from this value up are optional extensions and may be ignored.
    pub const FIRST_IGNORABLE: u8 = 0x80;

    pub fn code(self) -> u8 {
        match self {
            FrameType::Ip => 0x01,
            FrameType::Gso => 0x02,
            FrameType::Hello => 0x10,
            FrameType::Config => 0x11,
            FrameType::Keepalive => 0x12,
            FrameType::KeepaliveAck => 0x13,
            FrameType::Close => 0x14,
            FrameType::Ignorable(c) => c,
        }
    }

    pub fn from_code(code: u8) -> Option<FrameType> {
        Some(match code {
            0x01 => FrameType::Ip,
            0x02 => FrameType::Gso,
            0x10 => FrameType::Hello,
            0x11 => FrameType::Config,
            0x12 => FrameType::Keepalive,
            0x13 => FrameType::KeepaliveAck,
            0x14 => FrameType::Close,
            c if c >= Self::FIRST_IGNORABLE => FrameType::Ignorable(c),
            _ => return None,
        })
    }

    /// Data frames carry packets; everything else is control.
    pub fn is_data(self) -> bool {
        matches!(self, FrameType::Ip | FrameType::Gso)
    }
}

/// One decoded frame. The payload shares the receive buffer's allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameType,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("empty data frame")]
    EmptyPacket,
}

/// Splits frames off a receive buffer. Holds only the negotiated size limit.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameDecoder {
    pub fn new(max_payload: usize) -> Self {
        FrameDecoder {
            max_payload: max_payload.min(MAX_PAYLOAD_LIMIT),
        }
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Takes the next complete frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a frame (read more and call again). An error
    /// means the stream is corrupt: the session must end, since framing cannot resynchronise.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let code = buf[0];
            let len = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]) as usize;
            let kind = FrameType::from_code(code).ok_or(FrameError::UnknownType(code))?;
            if len > self.max_payload {
                return Err(FrameError::TooLarge {
                    len,
                    limit: self.max_payload,
                });
            }
            if kind.is_data() && len == 0 {
                return Err(FrameError::EmptyPacket);
            }
            if buf.len() < HEADER_LEN + len {
                // Make room for the rest of this frame in one go.
                buf.reserve(HEADER_LEN + len - buf.len());
                return Ok(None);
            }
            buf.advance(HEADER_LEN);
            let payload = buf.split_to(len).freeze();
            if let FrameType::Ignorable(_) = kind {
                continue;
            }
            return Ok(Some(Frame { kind, payload }));
        }
    }
}

/// Appends one frame with the given payload to `out`.
pub fn encode(out: &mut BytesMut, kind: FrameType, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LIMIT);
    put_header(out, kind, payload.len());
    out.put_slice(payload);
}

/// Appends one frame whose payload is `parts` concatenated (e.g. a header and a packet).
pub fn encode_parts(out: &mut BytesMut, kind: FrameType, parts: &[&[u8]]) {
    let len = parts.iter().map(|p| p.len()).sum();
    put_header(out, kind, len);
    for p in parts {
        out.put_slice(p);
    }
}

/// Appends just a frame header announcing `len` payload bytes; the caller appends the payload.
pub fn put_header(out: &mut BytesMut, kind: FrameType, len: usize) {
    let len = len as u32;
    out.put_u32((u32::from(kind.code()) << 24) | (len & 0x00ff_ffff));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_batch() {
        let mut buf = BytesMut::new();
        encode(&mut buf, FrameType::Ip, &[0x45, 1, 2, 3]);
        encode(&mut buf, FrameType::Hello, b"");
        encode_parts(&mut buf, FrameType::Gso, &[&[9; 10], &[0x60, 0, 0]]);
        let dec = FrameDecoder::default();
        let f1 = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f1.kind, FrameType::Ip);
        assert_eq!(&f1.payload[..], &[0x45, 1, 2, 3]);
        let f2 = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f2.kind, FrameType::Hello);
        assert!(f2.payload.is_empty());
        let f3 = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f3.kind, FrameType::Gso);
        assert_eq!(f3.payload.len(), 13);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_input_waits_for_more() {
        let mut whole = BytesMut::new();
        encode(&mut whole, FrameType::Ip, &[0x45; 100]);
        let dec = FrameDecoder::default();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(dec.decode(&mut part).unwrap(), None, "cut at {cut}");
            assert_eq!(part.len(), cut, "nothing consumed at cut {cut}");
        }
    }

    #[test]
    fn oversized_frame_is_an_error() {
        let mut buf = BytesMut::new();
        put_header(&mut buf, FrameType::Ip, 70_000);
        let err = FrameDecoder::new(65_600).decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 70_000,
                limit: 65_600
            }
        );
    }

    #[test]
    fn unknown_types() {
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::from(&[0x05, 0, 0, 0][..]);
        assert_eq!(dec.decode(&mut buf), Err(FrameError::UnknownType(5)));
        // Optional extension frames are skipped.
        let mut buf = BytesMut::from(&[0x90, 0, 0, 2, 7, 7][..]);
        encode(&mut buf, FrameType::Ip, &[0x45]);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap().kind, FrameType::Ip);
    }

    #[test]
    fn empty_data_frame_is_an_error() {
        let mut buf = BytesMut::from(&[0x01, 0, 0, 0][..]);
        assert_eq!(FrameDecoder::default().decode(&mut buf), Err(FrameError::EmptyPacket));
    }

    #[test]
    fn garbage_never_panics() {
        let dec = FrameDecoder::default();
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut v = Vec::new();
            for _ in 0..(seed % 64) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                v.push((seed >> 16) as u8);
            }
            let mut buf = BytesMut::from(&v[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }
    }
}
