//! Control messages (hello, config, keepalive, close) and their TLV encoding.
//!
//! A control payload is a sequence of `tag:u8 len:u16be value[len]` items. Unknown tags are
//! skipped, so either side may add fields without a version bump. No I/O here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnet::IpNet;

use super::frame::{self, FrameType};

/// Protocol version spoken by this implementation.
pub const PROTOCOL_VERSION: u16 = 1;

/// Feature bits announced in the hello; the session uses the intersection of both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features(pub u32);

impl Features {
    /// The sender can write virtio-net GSO packets to its TUN: it accepts `Gso` frames.
    pub const GSO: Features = Features(1 << 0);

    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn intersect(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }
    pub fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub features: Features,
    /// Largest IP packet the sender will accept on its TUN (its MTU).
    pub mtu: u16,
    /// Largest frame payload the sender accepts.
    pub max_payload: u32,
    pub software: String,
    /// Client only: distinguishes concurrent sessions of one identity (e.g. several `sshvpn exec`
    /// runs with the same key), each with its own addresses. Absent: one session per identity.
    pub instance: Option<String>,
}

impl Hello {
    pub fn new(features: Features, mtu: u16) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            features,
            mtu,
            max_payload: frame::DEFAULT_MAX_PAYLOAD as u32,
            software: concat!("sshvpn ", env!("CARGO_PKG_VERSION")).to_string(),
            instance: None,
        }
    }
}

/// What the server assigns to a client: addresses, MTU, routes and resolver settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunnelConfig {
    /// Client's IPv4 address with the pool's prefix length.
    pub addr4: Option<IpNet>,
    /// Client's IPv6 address with the pool's prefix length.
    pub addr6: Option<IpNet>,
    /// The server's tunnel addresses (the client's next hop).
    pub peer4: Option<Ipv4Addr>,
    pub peer6: Option<Ipv6Addr>,
    pub mtu: u16,
    /// Routes the client should send through the tunnel.
    pub routes: Vec<IpNet>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    /// Keepalive interval the server expects, in milliseconds (0: client's choice).
    pub keepalive_ms: u32,
}

impl TunnelConfig {
    /// All addresses the client may use as a source.
    pub fn addresses(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.addr4.iter().chain(self.addr6.iter()).copied()
    }
}

/// Reason codes carried by `Close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Normal,
    ProtocolError,
    NotAuthorized,
    PoolExhausted,
    Replaced,
    Timeout,
    Internal,
    Other(u16),
}

impl CloseCode {
    pub fn to_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::ProtocolError => 1,
            CloseCode::NotAuthorized => 2,
            CloseCode::PoolExhausted => 3,
            CloseCode::Replaced => 4,
            CloseCode::Timeout => 5,
            CloseCode::Internal => 6,
            CloseCode::Other(c) => c,
        }
    }
    pub fn from_u16(c: u16) -> CloseCode {
        match c {
            0 => CloseCode::Normal,
            1 => CloseCode::ProtocolError,
            2 => CloseCode::NotAuthorized,
            3 => CloseCode::PoolExhausted,
            4 => CloseCode::Replaced,
            5 => CloseCode::Timeout,
            6 => CloseCode::Internal,
            c => CloseCode::Other(c),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Hello(Hello),
    Config(TunnelConfig),
    Keepalive(u64),
    KeepaliveAck(u64),
    Close { code: CloseCode, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("truncated control field")]
    Truncated,
    #[error("bad value for control field {tag} of a {msg} message")]
    BadField { msg: &'static str, tag: u8 },
    #[error("{msg} message lacks required field {tag}")]
    Missing { msg: &'static str, tag: u8 },
    #[error("frame type {0:?} is not a control message")]
    NotControl(FrameType),
}

mod tag {
    // Hello
    pub const VERSION: u8 = 1;
    pub const FEATURES: u8 = 2;
    pub const MTU: u8 = 3;
    pub const MAX_PAYLOAD: u8 = 4;
    pub const SOFTWARE: u8 = 5;
    pub const INSTANCE: u8 = 6;
    // Config
    pub const ADDR4: u8 = 1;
    pub const ADDR6: u8 = 2;
    pub const PEER4: u8 = 3;
    pub const PEER6: u8 = 4;
    pub const CFG_MTU: u8 = 5;
    pub const ROUTE: u8 = 6;
    pub const DNS: u8 = 7;
    pub const SEARCH: u8 = 8;
    pub const KEEPALIVE_MS: u8 = 9;
    // Keepalive / Close
    pub const TOKEN: u8 = 1;
    pub const CODE: u8 = 1;
    pub const REASON: u8 = 2;
}

/// Informational strings are capped (at a character boundary) on both ends, so that what is
/// decoded always encodes back to the same bytes.
const MAX_SOFTWARE: usize = 256;
const MAX_REASON: usize = 1024;

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A received informational string: invalid UTF-8 replaced, then capped.
fn text(v: &[u8], max: usize) -> String {
    cap(&String::from_utf8_lossy(v), max).to_string()
}

struct TlvWriter<'a>(&'a mut BytesMut);

impl TlvWriter<'_> {
    fn put(&mut self, tag: u8, value: &[u8]) {
        let len = value.len().min(u16::MAX as usize);
        self.0.put_u8(tag);
        self.0.put_u16(len as u16);
        self.0.put_slice(&value[..len]);
    }
    fn net(&mut self, tag: u8, net: IpNet) {
        let mut v = [0u8; 17];
        let n = match net.addr() {
            IpAddr::V4(a) => {
                v[..4].copy_from_slice(&a.octets());
                4
            }
            IpAddr::V6(a) => {
                v[..16].copy_from_slice(&a.octets());
                16
            }
        };
        v[n] = net.prefix_len();
        self.put(tag, &v[..=n]);
    }
    fn ip(&mut self, tag: u8, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.put(tag, &a.octets()),
            IpAddr::V6(a) => self.put(tag, &a.octets()),
        }
    }
}

/// Iterates `(tag, value)` pairs of a TLV payload.
struct TlvReader<'a>(&'a [u8]);

impl<'a> Iterator for TlvReader<'a> {
    type Item = Result<(u8, &'a [u8]), ControlError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        if self.0.len() < 3 {
            self.0 = &[];
            return Some(Err(ControlError::Truncated));
        }
        let tag = self.0[0];
        let len = u16::from_be_bytes([self.0[1], self.0[2]]) as usize;
        if self.0.len() < 3 + len {
            self.0 = &[];
            return Some(Err(ControlError::Truncated));
        }
        let value = &self.0[3..3 + len];
        self.0 = &self.0[3 + len..];
        Some(Ok((tag, value)))
    }
}

fn parse_ip(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
        _ => None,
    }
}

fn parse_net(v: &[u8]) -> Option<IpNet> {
    let (addr, prefix) = v.split_last().map(|(p, a)| (a, *p))?;
    IpNet::new(parse_ip(addr)?, prefix).ok()
}

fn be_uint(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

impl Control {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Control::Hello(_) => FrameType::Hello,
            Control::Config(_) => FrameType::Config,
            Control::Keepalive(_) => FrameType::Keepalive,
            Control::KeepaliveAck(_) => FrameType::KeepaliveAck,
            Control::Close { .. } => FrameType::Close,
        }
    }

    /// Appends this message as one complete frame to `out`.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        let mut w = TlvWriter(&mut body);
        match self {
            Control::Hello(h) => {
                w.put(tag::VERSION, &h.version.to_be_bytes());
                w.put(tag::FEATURES, &h.features.0.to_be_bytes());
                w.put(tag::MTU, &h.mtu.to_be_bytes());
                w.put(tag::MAX_PAYLOAD, &h.max_payload.to_be_bytes());
                w.put(tag::SOFTWARE, cap(&h.software, MAX_SOFTWARE).as_bytes());
                if let Some(i) = &h.instance {
                    w.put(tag::INSTANCE, i.as_bytes());
                }
            }
            Control::Config(c) => {
                if let Some(a) = c.addr4 {
                    w.net(tag::ADDR4, a);
                }
                if let Some(a) = c.addr6 {
                    w.net(tag::ADDR6, a);
                }
                if let Some(p) = c.peer4 {
                    w.ip(tag::PEER4, p.into());
                }
                if let Some(p) = c.peer6 {
                    w.ip(tag::PEER6, p.into());
                }
                w.put(tag::CFG_MTU, &c.mtu.to_be_bytes());
                for r in &c.routes {
                    w.net(tag::ROUTE, *r);
                }
                for d in &c.dns {
                    w.ip(tag::DNS, *d);
                }
                for s in &c.search {
                    w.put(tag::SEARCH, s.as_bytes());
                }
                if c.keepalive_ms != 0 {
                    w.put(tag::KEEPALIVE_MS, &c.keepalive_ms.to_be_bytes());
                }
            }
            Control::Keepalive(t) | Control::KeepaliveAck(t) => {
                w.put(tag::TOKEN, &t.to_be_bytes());
            }
            Control::Close { code, reason } => {
                w.put(tag::CODE, &code.to_u16().to_be_bytes());
                w.put(tag::REASON, cap(reason, MAX_REASON).as_bytes());
            }
        }
        frame::encode(out, self.frame_type(), &body);
    }

    /// Decodes the payload of a control frame of type `kind`.
    pub fn decode(kind: FrameType, payload: &[u8]) -> Result<Control, ControlError> {
        match kind {
            FrameType::Hello => decode_hello(payload).map(Control::Hello),
            FrameType::Config => decode_config(payload).map(Control::Config),
            FrameType::Keepalive | FrameType::KeepaliveAck => {
                let msg = "keepalive";
                let mut token = None;
                for item in TlvReader(payload) {
                    let (t, v) = item?;
                    if t == tag::TOKEN {
                        token = Some(be_uint(v).ok_or(ControlError::BadField { msg, tag: t })?);
                    }
                }
                let token = token.ok_or(ControlError::Missing { msg, tag: tag::TOKEN })?;
                Ok(if kind == FrameType::Keepalive {
                    Control::Keepalive(token)
                } else {
                    Control::KeepaliveAck(token)
                })
            }
            FrameType::Close => {
                let msg = "close";
                let mut code = CloseCode::Normal;
                let mut reason = String::new();
                for item in TlvReader(payload) {
                    let (t, v) = item?;
                    match t {
                        tag::CODE => {
                            let c = be_uint(v)
                                .filter(|c| *c <= u64::from(u16::MAX))
                                .ok_or(ControlError::BadField { msg, tag: t })?;
                            code = CloseCode::from_u16(c as u16);
                        }
                        tag::REASON => reason = text(v, MAX_REASON),
                        _ => {}
                    }
                }
                Ok(Control::Close { code, reason })
            }
            other => Err(ControlError::NotControl(other)),
        }
    }
}

fn decode_hello(payload: &[u8]) -> Result<Hello, ControlError> {
    let msg = "hello";
    let bad = |tag| ControlError::BadField { msg, tag };
    let mut h = Hello {
        version: 0,
        features: Features::default(),
        mtu: 0,
        max_payload: frame::DEFAULT_MAX_PAYLOAD as u32,
        software: String::new(),
        instance: None,
    };
    let mut seen_version = false;
    for item in TlvReader(payload) {
        let (t, v) = item?;
        match t {
            tag::VERSION => {
                h.version = be_uint(v).and_then(|x| u16::try_from(x).ok()).ok_or(bad(t))?;
                seen_version = true;
            }
            tag::FEATURES => h.features = Features(be_uint(v).and_then(|x| u32::try_from(x).ok()).ok_or(bad(t))?),
            tag::MTU => h.mtu = be_uint(v).and_then(|x| u16::try_from(x).ok()).ok_or(bad(t))?,
            tag::MAX_PAYLOAD => h.max_payload = be_uint(v).and_then(|x| u32::try_from(x).ok()).ok_or(bad(t))?,
            tag::SOFTWARE => h.software = text(v, MAX_SOFTWARE),
            tag::INSTANCE => {
                // Printable, short: it ends up in identities and logs.
                let ok = !v.is_empty() && v.len() <= 64 && v.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
                if !ok {
                    return Err(bad(t));
                }
                h.instance = Some(String::from_utf8_lossy(v).into_owned());
            }
            _ => {}
        }
    }
    if !seen_version {
        return Err(ControlError::Missing { msg, tag: tag::VERSION });
    }
    Ok(h)
}

fn decode_config(payload: &[u8]) -> Result<TunnelConfig, ControlError> {
    let msg = "config";
    let bad = |tag| ControlError::BadField { msg, tag };
    let mut c = TunnelConfig::default();
    for item in TlvReader(payload) {
        let (t, v) = item?;
        match t {
            tag::ADDR4 => c.addr4 = Some(parse_net(v).filter(|n| n.addr().is_ipv4()).ok_or(bad(t))?),
            tag::ADDR6 => c.addr6 = Some(parse_net(v).filter(|n| n.addr().is_ipv6()).ok_or(bad(t))?),
            tag::PEER4 => match parse_ip(v) {
                Some(IpAddr::V4(a)) => c.peer4 = Some(a),
                _ => return Err(bad(t)),
            },
            tag::PEER6 => match parse_ip(v) {
                Some(IpAddr::V6(a)) => c.peer6 = Some(a),
                _ => return Err(bad(t)),
            },
            tag::CFG_MTU => c.mtu = be_uint(v).and_then(|x| u16::try_from(x).ok()).ok_or(bad(t))?,
            tag::ROUTE => c.routes.push(parse_net(v).ok_or(bad(t))?),
            tag::DNS => c.dns.push(parse_ip(v).ok_or(bad(t))?),
            tag::SEARCH => c.search.push(String::from_utf8(v.to_vec()).map_err(|_| bad(t))?),
            tag::KEEPALIVE_MS => c.keepalive_ms = be_uint(v).and_then(|x| u32::try_from(x).ok()).ok_or(bad(t))?,
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::FrameDecoder;

    fn round_trip(c: &Control) -> Control {
        let mut buf = BytesMut::new();
        c.encode_frame(&mut buf);
        let f = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        Control::decode(f.kind, &f.payload).unwrap()
    }

    #[test]
    fn all_messages_round_trip() {
        let cfg = TunnelConfig {
            addr4: Some("10.9.0.2/24".parse().unwrap()),
            addr6: Some("fd00::2/64".parse().unwrap()),
            peer4: Some("10.9.0.1".parse().unwrap()),
            peer6: Some("fd00::1".parse().unwrap()),
            mtu: 1400,
            routes: vec!["10.2.0.0/16".parse().unwrap(), "fd01::/48".parse().unwrap()],
            dns: vec!["10.9.0.1".parse().unwrap()],
            search: vec!["corp.example".into()],
            keepalive_ms: 5000,
        };
        for c in [
            Control::Hello(Hello::new(Features::GSO, 1500)),
            Control::Hello(Hello {
                instance: Some("exec-1f2e".into()),
                ..Hello::new(Features::default(), 1400)
            }),
            Control::Config(cfg),
            Control::Keepalive(42),
            Control::KeepaliveAck(u64::MAX),
            Control::Close {
                code: CloseCode::Replaced,
                reason: "bye".into(),
            },
        ] {
            assert_eq!(round_trip(&c), c);
        }
    }

    #[test]
    fn long_or_invalid_strings_are_capped_and_round_trip() {
        // A hello whose software field is 21846 bytes of invalid UTF-8 (found by fuzzing).
        let mut body = BytesMut::new();
        TlvWriter(&mut body).put(tag::VERSION, &1u16.to_be_bytes());
        TlvWriter(&mut body).put(tag::SOFTWARE, &[0xff; 21846]);
        let h = decode_hello(&body).unwrap();
        assert!(h.software.len() <= MAX_SOFTWARE);
        assert_eq!(round_trip(&Control::Hello(h.clone())), Control::Hello(h));
        let long = Control::Close {
            code: CloseCode::Normal,
            reason: "é".repeat(5000),
        };
        let Control::Close { reason, .. } = round_trip(&long) else {
            panic!()
        };
        assert!(reason.len() <= MAX_REASON && reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn unknown_tags_are_skipped() {
        let mut body = BytesMut::new();
        TlvWriter(&mut body).put(200, b"future");
        TlvWriter(&mut body).put(tag::VERSION, &1u16.to_be_bytes());
        let h = decode_hello(&body).unwrap();
        assert_eq!(h.version, 1);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(decode_hello(&[]), Err(ControlError::Missing { msg: "hello", tag: 1 }));
        assert_eq!(decode_hello(&[1, 0]), Err(ControlError::Truncated));
        assert_eq!(decode_hello(&[1, 0, 5, 0]), Err(ControlError::Truncated));
        assert!(decode_config(&[tag::ADDR4, 0, 2, 10, 0]).is_err());
        // IPv4 address with a /40 prefix
        assert!(decode_config(&[tag::ADDR4, 0, 5, 10, 0, 0, 1, 40]).is_err());
        // an IPv6 address in the IPv4 slot
        let mut body = BytesMut::new();
        TlvWriter(&mut body).net(tag::ADDR4, "fd00::1/64".parse().unwrap());
        assert!(decode_config(&body).is_err());
        assert!(Control::decode(FrameType::Ip, &[]).is_err());
        assert!(Control::decode(FrameType::Keepalive, &[]).is_err());
    }
}
