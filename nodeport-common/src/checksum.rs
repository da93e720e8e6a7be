//! Internet checksum arithmetic: the one incremental-update helper (RFC 1624,
//! equation 3) that the datapath uses after rewriting addresses and ports,
//! and a from-scratch computation (RFC 1071) to check it against.
//!
//! All 16-bit values are taken exactly as they sit in the packet, read as
//! native integers. One's-complement sums do not depend on byte order as long
//! as every operand is read the same way, so no swapping is needed; a 32-bit
//! field is treated as its two 16-bit halves in memory order.

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
#[must_use]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Incremental update of a checksum after a sequence of 16-bit words changed
/// from `old` to `new` (RFC 1624 eq. 3: `HC' = ~(~HC + ~m + m')`).
///
/// `old` and `new` are given as pairs of memory-order halves so that one
/// function serves 16- and 32-bit fields alike.
#[inline(always)]
#[must_use]
pub const fn update(check: u16, old: [u16; 2], new: [u16; 2]) -> u16 {
    let sum = (!check) as u32 + (!old[0]) as u32 + (!old[1]) as u32 + new[0] as u32 + new[1] as u32;
    !fold(sum)
}

/// Splits a 32-bit field, read natively from packet memory, into its two
/// memory-order 16-bit halves.
#[inline(always)]
#[must_use]
pub const fn halves(v: u32) -> [u16; 2] {
    let b = v.to_ne_bytes();
    [
        u16::from_ne_bytes([b[0], b[1]]),
        u16::from_ne_bytes([b[2], b[3]]),
    ]
}

/// Checksum update for a 32-bit field (an IPv4 address) that changed.
#[inline(always)]
#[must_use]
pub const fn replace4(check: u16, old: u32, new: u32) -> u16 {
    update(check, halves(old), halves(new))
}

/// Checksum update for a 16-bit field (a port) that changed.
#[inline(always)]
#[must_use]
pub const fn replace2(check: u16, old: u16, new: u16) -> u16 {
    // A word that did not change contributes ~x + x = 0xffff, i.e. -0: neutral.
    update(check, [old, 0xffff], [new, 0])
}

/// Adds two 32-bit one's-complement partial sums (end-around carry), as
/// the kernel's `csum_add` does.
#[inline(always)]
#[must_use]
pub const fn add32(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s.wrapping_add(carry as u32)
}

/// One's-complement sum, memory order and not folded, of the IPv4
/// pseudo-header of a TCP/UDP segment of `l4_len` bytes.
#[inline(always)]
#[must_use]
pub const fn pseudo_ipv4(saddr_be: u32, daddr_be: u32, proto: u8, l4_len: u16) -> u32 {
    let s = halves(saddr_be);
    let d = halves(daddr_be);
    let proto_word = u16::from_ne_bytes([0, proto]);
    let len_word = u16::from_ne_bytes(l4_len.to_be_bytes());
    s[0] as u32 + s[1] as u32 + d[0] as u32 + d[1] as u32 + proto_word as u32 + len_word as u32
}

/// What a sender with checksum offload leaves in a TCP/UDP checksum field
/// (the kernel's `CHECKSUM_PARTIAL`: "the device completes it"): the folded
/// pseudo-header sum, not inverted. The device (or the stack, before a
/// device without offload) later sums the segment over it and writes the
/// real checksum. Memory order, as the field is read.
#[inline(always)]
#[must_use]
pub const fn partial_seed(saddr_be: u32, daddr_be: u32, proto: u8, l4_len: u16) -> u16 {
    fold(pseudo_ipv4(saddr_be, daddr_be, proto, l4_len))
}

/// One's-complement sum of `data` read as memory-order 16-bit words (odd
/// trailing byte padded with zero), not folded: what the kernel's
/// `csum_partial` (and `bpf_csum_diff`) computes.
#[must_use]
pub fn sum_ne(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = add32(sum, u32::from(u16::from_ne_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = add32(sum, u32::from(u16::from_ne_bytes([*last, 0])));
    }
    sum
}

/// UDP's variant: a zero checksum means "none" and stays zero, and a computed
/// zero is sent as all ones (RFC 768).
#[inline(always)]
#[must_use]
pub const fn udp_fixup(check_before: u16, check_after: u16) -> u16 {
    if check_before == 0 {
        0
    } else if check_after == 0 {
        0xffff
    } else {
        check_after
    }
}

/// One's-complement sum of `data` (odd trailing byte padded with zero),
/// added to `initial`, not yet folded or inverted. Words are read in network
/// order, so the folded result is a host-order value.
#[must_use]
pub fn sum_be(initial: u32, data: &[u8]) -> u32 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    // Two folds always suffice for a 64-bit accumulator of 16-bit words and
    // keep the loop count fixed, which the BPF verifier needs.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum as u32
}

/// The Internet checksum of `data` (RFC 1071), host order, ready to be
/// written with `to_be_bytes`.
#[must_use]
pub fn compute(data: &[u8]) -> u16 {
    !fold(sum_be(0, data))
}

/// The TCP/UDP checksum over the IPv4 pseudo-header and `segment` (whose own
/// checksum field must be zero), host order.
#[must_use]
pub fn l4_ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(sum_be(sum_be(0, &pseudo), segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic byte generator (xorshift) so the property test needs
    /// no dependency.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn rd16(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }
    fn rd32(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn incremental_matches_recomputation_for_random_rewrites() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = 20 + (g.next() % 40) as usize;
            let mut data = [0u8; 64];
            for b in &mut data[..len] {
                *b = g.next() as u8;
            }
            // Checksum lives at bytes 10..12 as in an IPv4 header.
            data[10] = 0;
            data[11] = 0;
            let c = compute(&data[..len]);
            data[10..12].copy_from_slice(&c.to_be_bytes());
            let mut check = rd16(&data, 10);

            // Rewrite a 32-bit field at 12 and a 16-bit field at 16.
            let old4 = rd32(&data, 12);
            let new4 = g.next() as u32;
            data[12..16].copy_from_slice(&new4.to_ne_bytes());
            check = replace4(check, old4, new4);
            let old2 = rd16(&data, 16);
            let new2 = g.next() as u16;
            data[16..18].copy_from_slice(&new2.to_ne_bytes());
            check = replace2(check, old2, new2);

            data[10] = 0;
            data[11] = 0;
            let want = compute(&data[..len]);
            data[10..12].copy_from_slice(&check.to_ne_bytes());
            // 0x0000 and 0xffff are the same value in one's complement; the
            // incremental form may produce either for an all-zero sum.
            let got = u16::from_be_bytes([data[10], data[11]]);
            assert!(
                got == want || (got == 0xffff && want == 0) || (got == 0 && want == 0xffff),
                "incremental {got:#06x} != recomputed {want:#06x}"
            );
        }
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // Example header from RFC 1071 discussions (checksum field zeroed).
        let hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(compute(&hdr), 0xb861);
    }

    #[test]
    fn partial_seed_completes_to_the_real_checksum() {
        // A sender with offload writes the seed; summing the segment over it
        // gives the checksum a full computation gives.
        let mut g = Gen(0x1234_5678_9abc_def1);
        for _ in 0..2_000 {
            let len = 8 + (g.next() % 60) as usize;
            let mut seg = [0u8; 68];
            for b in &mut seg[..len] {
                *b = g.next() as u8;
            }
            let (src, dst) = ((g.next() as u32).to_ne_bytes(), (g.next() as u32).to_ne_bytes());
            seg[6] = 0;
            seg[7] = 0;
            let want = l4_ipv4(src, dst, 17, &seg[..len]);
            let seed = partial_seed(
                u32::from_ne_bytes(src),
                u32::from_ne_bytes(dst),
                17,
                len as u16,
            );
            seg[6..8].copy_from_slice(&seed.to_ne_bytes());
            let got = !fold(sum_ne(&seg[..len]));
            // Bytes as they go into the packet: memory order vs network order.
            assert_eq!(got.to_ne_bytes(), want.to_be_bytes(), "len {len}");
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(udp_fixup(0, 0x1234), 0);
        assert_eq!(udp_fixup(0x1111, 0), 0xffff);
        assert_eq!(udp_fixup(0x1111, 0x2222), 0x2222);
    }
}
