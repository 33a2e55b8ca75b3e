//! The Internet checksum (RFC 1071): ones'-complement sums over packet bytes,
//! the TCP/UDP pseudo-header sum, and folding to 16 bits. Used by GSO
//! segmentation, MSS clamping and the ICMP replies.

/// Adds two ones'-complement partial sums (end-around carry).
#[inline]
fn add32(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s + u32::from(carry)
}

/// Folds a 64-bit partial sum into 32 bits, preserving it modulo 0xffff.
#[inline]
fn fold64(x: u64) -> u64 {
    let x = (x & 0xffff_ffff) + (x >> 32);
    (x & 0xffff_ffff) + (x >> 32)
}

/// Sum of `data` as native-endian 16-bit words, not folded (< 2^32).
///
/// Ones'-complement addition commutes with byte swapping (RFC 1071), so this
/// sums 8 bytes per step with no byte swaps; the caller swaps once at the end.
#[inline]
fn sum_native(data: &[u8]) -> u64 {
    let mut total = 0u64;
    // 64 KiB blocks: 8192 steps of < 2^33 each stay far below 2^64.
    for block in data.chunks(1 << 16) {
        let mut s = 0u64;
        let mut chunks = block.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            s += (v & 0xffff_ffff) + (v >> 32);
        }
        let mut rem = chunks.remainder();
        if rem.len() >= 4 {
            s += u64::from(u32::from_ne_bytes([rem[0], rem[1], rem[2], rem[3]]));
            rem = &rem[4..];
        }
        if rem.len() >= 2 {
            s += u64::from(u16::from_ne_bytes([rem[0], rem[1]]));
            rem = &rem[2..];
        }
        if let [b] = rem {
            // Odd length: pad with a zero byte (only the last block can be odd).
            s += u64::from(u16::from_ne_bytes([*b, 0]));
        }
        total = fold64(total + s);
    }
    total
}

/// Ones'-complement sum of `data` (big-endian 16-bit words, an odd final byte
/// padded with zero, `data` taken to start on a word boundary) added to
/// `initial`. Neither folded to 16 bits nor complemented; chain calls freely
/// and finish with `!checksum_fold(sum)`.
pub fn checksum_add(initial: u32, data: &[u8]) -> u32 {
    let native = checksum_fold(sum_native(data) as u32);
    add32(initial, u32::from(u16::from_be(native)))
}

/// Folds a partial sum to 16 bits with end-around carry. Does NOT complement:
/// the value to store in a checksum field is `!checksum_fold(sum)`.
pub fn checksum_fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Partial sum of the TCP/UDP pseudo-header: `src` and `dst` (4 bytes for
/// IPv4, 16 for IPv6), protocol `proto` and L4 length `len` (header + payload).
/// Same value for the IPv4 and IPv6 layouts. Not folded or complemented.
pub fn pseudo_header_sum(src: &[u8], dst: &[u8], proto: u8, len: u32) -> u32 {
    let s = checksum_add(checksum_add(0, src), dst);
    let s = add32(s, u32::from(proto));
    add32(s, (len >> 16) + (len & 0xffff))
}
