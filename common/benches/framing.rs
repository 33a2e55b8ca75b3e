//! Framing path benchmarks: batch encode/decode for small, MTU-sized and 64 KiB payloads, and
//! software segmentation of a 64 KiB TCP super-packet. Reported as bytes/s and packets/s.

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sshvpn_common::packet::gso;
use sshvpn_common::packet::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VirtioNetHdr};
use sshvpn_common::proto::frame::{self, FrameDecoder, FrameType};

/// Payload sizes and how many frames make one batch (about 256 KiB, what the writer flushes).
const CASES: [(usize, usize); 3] = [(64, 4096), (1400, 187), (65535, 4)];

fn batch(size: usize, count: usize) -> BytesMut {
    let pkt = vec![0x45u8; size];
    let mut out = BytesMut::with_capacity(count * (size + frame::HEADER_LEN));
    for _ in 0..count {
        frame::encode(&mut out, FrameType::Ip, &pkt);
    }
    out
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (size, count) in CASES {
        let pkt = vec![0x45u8; size];
        let mut out = BytesMut::with_capacity(count * (size + frame::HEADER_LEN));
        g.throughput(Throughput::Bytes((size * count) as u64));
        g.bench_function(format!("{size}B x{count} (bytes)"), |b| {
            b.iter(|| {
                out.clear();
                for _ in 0..count {
                    frame::encode(&mut out, FrameType::Ip, &pkt);
                }
                std::hint::black_box(&out);
            })
        });
        g.throughput(Throughput::Elements(count as u64));
        g.bench_function(format!("{size}B x{count} (packets)"), |b| {
            b.iter(|| {
                out.clear();
                for _ in 0..count {
                    frame::encode(&mut out, FrameType::Ip, &pkt);
                }
                std::hint::black_box(&out);
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let dec = FrameDecoder::default();
    for (size, count) in CASES {
        let template = batch(size, count);
        for (unit, throughput) in [
            ("bytes", Throughput::Bytes((size * count) as u64)),
            ("packets", Throughput::Elements(count as u64)),
        ] {
            g.throughput(throughput);
            g.bench_function(format!("{size}B x{count} ({unit})"), |b| {
                b.iter_batched_ref(
                    || template.clone(),
                    |buf| {
                        let mut n = 0;
                        while let Ok(Some(f)) = dec.decode(buf) {
                            n += f.payload.len();
                        }
                        std::hint::black_box(n)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

/// A 64 000-byte TCP/IPv4 super-packet as a TUN with offloads hands it over.
fn super_packet() -> (VirtioNetHdr, Vec<u8>) {
    let payload = 64_000usize;
    let mut p = vec![0u8; 40 + payload];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 0, 2]);
    p[16..20].copy_from_slice(&[10, 0, 0, 3]);
    p[20..22].copy_from_slice(&1234u16.to_be_bytes());
    p[22..24].copy_from_slice(&80u16.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x18; // PSH ACK
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: 1448,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, p)
}

fn segmentation(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment");
    let (hdr, pkt) = super_packet();
    let mut scratch = Vec::new();
    let mut out = BytesMut::with_capacity(128 * 1024);
    g.throughput(Throughput::Bytes(pkt.len() as u64));
    g.bench_function("64000B TCPv4 into 1448B segments", |b| {
        b.iter(|| {
            out.clear();
            gso::segment(&hdr, &pkt, &mut scratch, |seg| {
                frame::encode(&mut out, FrameType::Ip, seg)
            })
            .expect("the test packet segments");
            std::hint::black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, encode, decode, segmentation);
criterion_main!(benches);
