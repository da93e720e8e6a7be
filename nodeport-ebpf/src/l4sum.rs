//! What the L4 checksum field of an arriving frame holds, and the sum over
//! a segment that telling it needs.
//!
//! A frame from a wire carries a complete checksum. A frame from a local
//! sender with checksum offload (a veth whose peer has TX checksum offload
//! on, the kernel's default) carries only a seed: the folded pseudo-header
//! sum (`CHECKSUM_PARTIAL`), which the device completes on transmit. The
//! two look alike only when the complete checksum happens to equal the
//! seed (1 in 65,536); then the whole segment is summed to tell them apart.
//! `nat` then updates the field as what it is.

use aya_ebpf::{bindings::xdp_md, helpers::bpf_csum_diff, programs::XdpContext};
use nodeport_common::{PROTO_UDP, checksum};

use crate::{
    error::Error,
    headers::{ETH_LEN, IPV4_MAX_LEN, Parsed},
    packet::Packet,
};

/// Longest segment that is summed. Native XDP frames fit in a page; a
/// longer segment (a GSO skb in generic mode, always partial) whose field
/// equals the seed is taken as partial without summing.
pub const MAX_SUM_LEN: u16 = 4096;

/// The farthest the L4 header lies in a frame: behind the longest IPv4
/// header.
const MAX_L4: usize = ETH_LEN + IPV4_MAX_LEN;
/// `bpf_csum_diff` sums at most this many bytes per call.
const CHUNK: usize = 512;
/// Returned by [`nodeport_l4_sum`] when the segment is not in the frame.
const SUM_ERROR: u64 = u64::MAX;

/// The L4 checksum field of a frame as it arrived.
#[derive(Clone, Copy)]
pub enum Field {
    /// A complete checksum (or UDP's zero, "none"): update it incrementally.
    Complete,
    /// A partial checksum's seed. `segment_sum`: the one's-complement sum of
    /// the whole segment as it arrived (seed included), when it was summed.
    Partial { segment_sum: Option<u32> },
}

/// Tells what the L4 checksum field of `p` holds.
#[inline(always)]
pub fn classify(ctx: &XdpContext, pkt: &Packet, p: &Parsed) -> Result<Field, Error> {
    if p.fragment() {
        // A fragmented datagram's checksum is complete (see `frag`); its
        // field lies in the first fragment only.
        return Ok(Field::Complete);
    }
    let field: u16 = pkt.read(p.l4_check)?;
    if p.proto == PROTO_UDP && field == 0 {
        return Ok(Field::Complete);
    }
    let l4_len = p.l4_len();
    let pseudo = checksum::pseudo_ipv4(p.saddr_be, p.daddr_be, p.proto, l4_len);
    if field != checksum::fold(pseudo) {
        return Ok(Field::Complete);
    }
    if l4_len > MAX_SUM_LEN {
        return Ok(Field::Partial { segment_sum: None });
    }
    let sum = segment_sum(ctx, p.l4, l4_len)?;
    if checksum::fold(checksum::add32(sum, pseudo)) == 0xffff {
        // The rare complete checksum that equals the seed.
        return Ok(Field::Complete);
    }
    Ok(Field::Partial {
        segment_sum: Some(sum),
    })
}

/// Whether the kernel would accept the L4 checksum of `p`: `Some(partial)`
/// for a correct complete checksum (`false`) or a partial checksum's seed
/// (`true`, trusted as the kernel trusts `CHECKSUM_PARTIAL`); `None` for a
/// wrong one, or one too long to verify here.
#[inline(always)]
pub fn verify(ctx: &XdpContext, pkt: &Packet, p: &Parsed) -> Result<Option<bool>, Error> {
    let field: u16 = pkt.read(p.l4_check)?;
    if p.proto == PROTO_UDP && field == 0 {
        return Ok(Some(false));
    }
    let l4_len = p.l4_len();
    let pseudo = checksum::pseudo_ipv4(p.saddr_be, p.daddr_be, p.proto, l4_len);
    if field == checksum::fold(pseudo) {
        return Ok(Some(true));
    }
    if l4_len > MAX_SUM_LEN {
        return Ok(None);
    }
    let sum = segment_sum(ctx, p.l4, l4_len)?;
    Ok((checksum::fold(checksum::add32(sum, pseudo)) == 0xffff).then_some(false))
}

/// The one's-complement sum (memory order, 32 bits) of the `len` bytes of
/// the L4 segment at offset `l4`.
#[inline(always)]
pub fn segment_sum(ctx: &XdpContext, l4: usize, len: u16) -> Result<u32, Error> {
    let r = nodeport_l4_sum(ctx.ctx, l4 as u32, u32::from(len));
    if r == SUM_ERROR {
        return Err(Error::Truncated);
    }
    Ok(r as u32)
}

/// Sums `len` bytes of the frame from the L4 header at `l4` on. A global
/// function: the verifier checks it once on its own rather than on every
/// path of the program that reaches it. Returns [`SUM_ERROR`] when the
/// bytes are not all in the frame, `l4` lies beyond the longest IPv4 header
/// or `len` exceeds [`MAX_SUM_LEN`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nodeport_l4_sum(ctx: *mut xdp_md, l4: u32, len: u32) -> u64 {
    // SAFETY: the kernel passes a valid context; its data fields are read.
    let pkt = unsafe { Packet::new((*ctx).data as usize, (*ctx).data_end as usize) };
    match sum_bytes(&pkt, l4 as usize, len as usize) {
        Ok(s) => u64::from(s),
        Err(_) => SUM_ERROR,
    }
}

#[inline(always)]
fn sum_bytes(pkt: &Packet, l4: usize, len: usize) -> Result<u32, Error> {
    if len > MAX_SUM_LEN as usize || l4 > MAX_L4 {
        return Err(Error::Truncated);
    }
    let mut sum = 0u32;
    let mut at = l4;
    let mut left = len;
    for _ in 0..(MAX_SUM_LEN as usize / CHUNK) {
        if left < CHUNK {
            break;
        }
        sum = chunk::<CHUNK>(pkt, at, sum)?;
        at += CHUNK;
        left -= CHUNK;
    }
    // Below one chunk: at most one step of each power of two.
    macro_rules! step {
        ($n:literal) => {
            if left >= $n {
                sum = chunk::<$n>(pkt, at, sum)?;
                at += $n;
                left -= $n;
            }
        };
    }
    step!(256);
    step!(128);
    step!(64);
    step!(32);
    step!(16);
    step!(8);
    step!(4);
    if left >= 2 {
        let w: u16 = pkt.read(at)?;
        sum = checksum::add32(sum, u32::from(w));
        at += 2;
        left -= 2;
    }
    if left == 1 {
        // Read with the byte before it (the L4 header lies behind the IPv4
        // header, so `at > 0`): LLVM turns a one-byte bounds check at a
        // variable offset into `ptr >= end`, which the verifier does not
        // take as proof of one readable byte.
        let [_, b]: [u8; 2] = pkt.read(at - 1)?;
        sum = checksum::add32(sum, u32::from(u16::from_ne_bytes([b, 0])));
    }
    Ok(sum)
}

/// Adds `N` bytes (a multiple of 4, at most 512) at `at` to `sum`.
#[inline(always)]
fn chunk<const N: usize>(pkt: &Packet, at: usize, sum: u32) -> Result<u32, Error> {
    let p = pkt.ptr_at::<[u8; N]>(at)?;
    // SAFETY: `ptr_at` checked that the N bytes lie in the packet; the
    // helper only reads them.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), N as u32, sum) };
    if r < 0 {
        return Err(Error::Truncated);
    }
    Ok(r as u32)
}
