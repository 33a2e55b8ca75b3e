//! Property tests: whatever the content, encoding then decoding gives back the same frames and
//! control messages, in batches and however the stream is cut; and decoding arbitrary bytes
//! never panics.

use std::net::IpAddr;

use bytes::BytesMut;
use ipnet::IpNet;
use proptest::prelude::*;
use sshvpn_common::proto::frame::{self, FrameDecoder, FrameType};
use sshvpn_common::proto::{CloseCode, Control, Features, Hello, TunnelConfig};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from)
    ]
}

fn net() -> impl Strategy<Value = IpNet> {
    (ip(), any::<u8>()).prop_map(|(a, p)| {
        let max = if a.is_ipv4() { 32 } else { 128 };
        IpNet::new(a, p % (max + 1)).expect("prefix length within the family")
    })
}

fn net_of(v4: bool) -> impl Strategy<Value = IpNet> {
    net().prop_filter("family", move |n| n.addr().is_ipv4() == v4)
}

fn control() -> impl Strategy<Value = Control> {
    let hello = (
        any::<u16>(),
        any::<u32>(),
        576u16..,
        any::<u32>(),
        "[ -~]{0,40}",
        proptest::option::of("[a-z0-9-]{1,20}"),
    )
        .prop_map(|(version, f, mtu, max_payload, software, instance)| {
            Control::Hello(Hello {
                version,
                features: Features(f),
                mtu,
                max_payload,
                software,
                instance,
            })
        });
    let config = (
        proptest::option::of(net_of(true)),
        proptest::option::of(net_of(false)),
        proptest::collection::vec(net(), 0..8),
        proptest::collection::vec(ip(), 0..4),
        proptest::collection::vec("[a-z.]{1,30}", 0..3),
        any::<u16>(),
        any::<u32>(),
    )
        .prop_map(|(addr4, addr6, routes, dns, search, mtu, keepalive_ms)| {
            Control::Config(TunnelConfig {
                addr4,
                addr6,
                peer4: None,
                peer6: None,
                mtu,
                routes,
                dns,
                search,
                keepalive_ms,
            })
        });
    prop_oneof![
        hello,
        config,
        any::<u64>().prop_map(Control::Keepalive),
        any::<u64>().prop_map(Control::KeepaliveAck),
        (any::<u16>(), "[ -~]{0,60}").prop_map(|(c, reason)| Control::Close {
            code: CloseCode::from_u16(c),
            reason
        }),
    ]
}

#[derive(Debug, Clone)]
enum Item {
    Packet(FrameType, Vec<u8>),
    Control(Control),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..2000).prop_map(|p| Item::Packet(FrameType::Ip, p)),
        proptest::collection::vec(any::<u8>(), 11..3000).prop_map(|p| Item::Packet(FrameType::Gso, p)),
        control().prop_map(Item::Control),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn batches_round_trip_however_the_stream_is_cut(
        items in proptest::collection::vec(item(), 1..20),
        cuts in proptest::collection::vec(1usize..500, 1..10),
    ) {
        let mut wire = BytesMut::new();
        for it in &items {
            match it {
                Item::Packet(kind, p) => frame::encode(&mut wire, *kind, p),
                Item::Control(c) => c.encode_frame(&mut wire),
            }
        }
        // Feed the stream in pieces of the given sizes, as reads would deliver it.
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let (mut pos, mut i) = (0, 0);
        while pos < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            i += 1;
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out.len(), items.len());
        for (f, it) in out.iter().zip(&items) {
            match it {
                Item::Packet(kind, p) => {
                    prop_assert_eq!(f.kind, *kind);
                    prop_assert_eq!(&f.payload[..], &p[..]);
                }
                Item::Control(c) => prop_assert_eq!(&Control::decode(f.kind, &f.payload).unwrap(), c),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(f)) = dec.decode(&mut buf) {
            if !f.kind.is_data() {
                let _ = Control::decode(f.kind, &f.payload);
            }
        }
        for kind in [FrameType::Hello, FrameType::Config, FrameType::Keepalive, FrameType::KeepaliveAck, FrameType::Close] {
            let _ = Control::decode(kind, &bytes);
        }
    }
}
