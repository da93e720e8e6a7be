//! IPv4 headers with options (IHL 6 to 15), served as every other packet.
//! Every offset behind the IPv4 header is a constant in the programs,
//! which keeps their bounds checks within what the verifier can follow
//! (a variable L4 offset, tried, makes its state search over the whole
//! XDP program exceed its limit). So:
//!
//! - XDP ingress: the main program hands a TCP or UDP packet with options
//!   to the small program for its header length (`XDP_OPTIONS[IHL]`). That
//!   one checks the options, sets them aside in `OPTIONS_STASH` (per CPU)
//!   and removes them, leaving a 20-byte header, and calls the main program
//!   again (`XDP_OPTIONS[0]`), which serves the packet; then the program for
//!   the length (`XDP_RESTORE[IHL]`) puts the options back into whatever
//!   the packet became and returns the main program's verdict. Three
//!   programs run one after the other for one packet, on one CPU.
//! - TC egress: each header length has its own copy of the program
//!   (`headers::parse::<IP_HDR>`, `TC_OPTIONS[IHL]`); it is small enough
//!   for ten copies to verify in a few milliseconds.
//!
//! The options travel on unchanged; the IPv4 checksum is computed over
//! them. A source route (loose or strict) is not served: the packet names
//! its own next hops, which a NAT must not override; it goes to the stack,
//! which refuses source routes by default (`accept_source_route`). Options
//! whose lengths run past the header, and headers with a wrong checksum,
//! go to the stack too, which drops them.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, xdp_action, xdp_md},
    helpers::bpf_xdp_adjust_head,
    programs::{TcContext, XdpContext},
};
use nodeport_common::{OptionsStash, checksum, stat};

use crate::{
    error::Error,
    headers::{ETH_LEN, ETH_P_IP, IPV4_MAX_LEN, IPV4_MIN_LEN, ip},
    maps::{OPTIONS_STASH, TC_OPTIONS, XDP_OPTIONS, XDP_RESTORE, count},
    packet::Packet,
};

/// Bytes of options at most.
const MAX_OPT: usize = IPV4_MAX_LEN - IPV4_MIN_LEN;
/// Where the options start.
const OPT_AT: usize = ETH_LEN + IPV4_MIN_LEN;

/// End of option list, no operation, loose and strict source route.
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_LSRR: u8 = 131;
const OPT_SSRR: u8 = 137;

/// The IHL of the frame's IPv4 header (0 when the frame is too short).
#[inline(always)]
fn ihl(pkt: &Packet) -> u32 {
    pkt.read::<u8>(ETH_LEN).map_or(0, |v| u32::from(v & 0x0f))
}

/// Hands an XDP frame whose IPv4 header has options to the program that
/// sets them aside. Returns only when there is none (the map not filled).
#[inline(always)]
pub fn to_xdp_strip(ctx: &XdpContext) {
    let ihl = ihl(&Packet::new(ctx.data(), ctx.data_end()));
    // SAFETY: a tail call; on success control never returns here.
    unsafe { XDP_OPTIONS.tail_call(ctx, ihl) };
}

/// Hands a TC frame whose IPv4 header has options to the copy of the
/// egress program for its length.
#[inline(always)]
pub fn to_tc_copy(ctx: &TcContext) {
    let ihl = ihl(&Packet::new(ctx.data(), ctx.data_end()));
    // SAFETY: as above.
    unsafe { TC_OPTIONS.tail_call(ctx, ihl) };
}

/// What [`option_at`] returns besides an option's length.
const OPTION_END: u32 = 0x1_0000;
const OPTION_REFUSED: u32 = 0x2_0000;

/// The option at offset `at` of the frame: its length (1 for a no-op),
/// [`OPTION_END`] for the end of the list, [`OPTION_REFUSED`] for a source
/// route or a length below 2 or beyond the frame.
#[inline(always)]
fn option_at(pkt: &Packet, at: usize) -> u32 {
    // Type and length in one read: LLVM turns a one-byte bounds check at a
    // variable offset into `ptr >= end`, which the verifier does not take
    // as proof of a readable byte. (The L4 header follows the options, so
    // a one-byte option at their end has a byte behind it.)
    if at >= ETH_LEN + IPV4_MAX_LEN {
        return OPTION_REFUSED;
    }
    let Ok([kind, len]) = pkt.read::<[u8; 2]>(at) else {
        return OPTION_REFUSED;
    };
    match kind {
        OPT_EOL => OPTION_END,
        OPT_NOP => 1,
        OPT_LSRR | OPT_SSRR => OPTION_REFUSED,
        _ if len < 2 => OPTION_REFUSED,
        _ => u32::from(len),
    }
}

/// Whether the options of the IPv4 header at `ETH_LEN`, `hdr_len` bytes
/// long, are served: well formed, and no source route. `option` is
/// [`option_at`] behind a global function: each step leaves the loop or
/// moves on by one length, so the verifier follows a single path through
/// it rather than one per combination of option kinds.
#[inline(always)]
fn served(hdr_len: u32, option: impl Fn(u32) -> u32) -> bool {
    if hdr_len < IPV4_MIN_LEN as u32 || hdr_len > IPV4_MAX_LEN as u32 {
        return false;
    }
    let end = ETH_LEN as u32 + hdr_len;
    let mut at = (ETH_LEN + IPV4_MIN_LEN) as u32;
    // Every step moves on by one byte at least: 40 steps cover 40 bytes.
    for _ in 0..(IPV4_MAX_LEN - IPV4_MIN_LEN) {
        if at >= end {
            return true;
        }
        let len = option(at);
        if len == OPTION_END {
            return true;
        }
        if len > 0xff || at + len > end {
            return false;
        }
        at += len;
    }
    true
}

/// The frame's packet window, from a context whose first two words are
/// `data` and `data_end` (`xdp_md`, and `__sk_buff` at its own offsets).
macro_rules! window {
    ($ctx:expr) => {
        // SAFETY: the kernel passes a valid context; its data fields are read.
        unsafe { Packet::new((*$ctx).data as usize, (*$ctx).data_end as usize) }
    };
}

/// [`option_at`] of an XDP frame. A global function: verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nodeport_ip_option_xdp(ctx: *mut xdp_md, at: u32) -> u32 {
    option_at(&window!(ctx), at as usize)
}

/// [`served`] of an XDP frame whose IPv4 header is `hdr_len` bytes long:
/// 1 if its options are served, else 0. A global function, as the loop
/// unrolled would not fit a program's stack.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nodeport_ip_options_xdp(ctx: *mut xdp_md, hdr_len: u32) -> u32 {
    u32::from(served(hdr_len, |at| nodeport_ip_option_xdp(ctx, at)))
}

/// [`option_at`] of an skb at TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nodeport_ip_option_skb(ctx: *mut __sk_buff, at: u32) -> u32 {
    option_at(&window!(ctx), at as usize)
}

/// Whether a TC egress copy for `IP_HDR`-byte headers serves this
/// frame's options (the 20-byte copy has none).
#[inline(always)]
pub fn tc_served<const IP_HDR: usize>(ctx: &TcContext) -> bool {
    IP_HDR == IPV4_MIN_LEN
        || served(IP_HDR as u32, |at| {
            nodeport_ip_option_skb(ctx.as_ptr().cast(), at)
        })
}

/// Writes the IPv4 checksum of the header `fixed` followed by `options`.
#[inline(always)]
fn set_ip_check(fixed: &mut [u8; IPV4_MIN_LEN], options: &[u8]) {
    fixed[ip::CHECK] = 0;
    fixed[ip::CHECK + 1] = 0;
    let sum = checksum::add32(checksum::sum_ne(fixed), checksum::sum_ne(options));
    let check = !checksum::fold(sum);
    fixed[ip::CHECK..ip::CHECK + 2].copy_from_slice(&check.to_ne_bytes());
}

/// This CPU's stash.
#[inline(always)]
fn stash() -> Result<&'static mut OptionsStash, Error> {
    let p = OPTIONS_STASH.get_ptr_mut(0).ok_or(Error::MapUpdate)?;
    // SAFETY: this CPU's slot; the programs of one packet run on one CPU
    // without being preempted, one packet after the other.
    Ok(unsafe { &mut *p })
}

/// XDP, first step for headers with `OPT` bytes of options: checks them,
/// sets them aside and removes them, then runs the main program on the
/// packet as it is now. Returns only when it cannot.
#[inline(always)]
pub fn strip<const OPT: usize>(ctx: &XdpContext) -> u32 {
    match try_strip::<OPT>(ctx) {
        Ok(()) => {
            // SAFETY: a tail call; on success control never returns here.
            unsafe { XDP_OPTIONS.tail_call(ctx, 0) };
            // The main program is not there: the packet goes to the stack
            // without its options, and nothing stays set aside.
            take_stashed();
            Error::IpOptions.finish_xdp()
        }
        Err(e) => e.finish_xdp(),
    }
}

#[inline(always)]
fn try_strip<const OPT: usize>(ctx: &XdpContext) -> Result<(), Error> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let eth: [u8; ETH_LEN] = pkt.read(0)?;
    let mut fixed: [u8; IPV4_MIN_LEN] = pkt.read(ETH_LEN)?;
    let stash = stash()?;
    // Options are whole 32-bit words.
    for i in 0..OPT / 4 {
        let word: [u8; 4] = pkt.read(OPT_AT + 4 * i)?;
        stash.bytes[4 * i..4 * i + 4].copy_from_slice(&word);
    }
    let options = &stash.bytes[..OPT];
    let sum = checksum::add32(checksum::sum_ne(&fixed), checksum::sum_ne(options));
    if usize::from(fixed[0] & 0x0f) * 4 != IPV4_MIN_LEN + OPT
        || checksum::fold(sum) != 0xffff
        || nodeport_ip_options_xdp(ctx.as_ptr().cast(), (IPV4_MIN_LEN + OPT) as u32) == 0
    {
        return Err(Error::IpOptions);
    }
    // The header without its options.
    fixed[0] = 0x45;
    let tot_len = u16::from_be_bytes([fixed[ip::TOT_LEN], fixed[ip::TOT_LEN + 1]]);
    let tot_len = tot_len.checked_sub(OPT as u16).ok_or(Error::BadLength)?;
    fixed[ip::TOT_LEN..ip::TOT_LEN + 2].copy_from_slice(&tot_len.to_be_bytes());
    set_ip_check(&mut fixed, &[]);
    pkt.write(OPT, eth)?;
    pkt.write(OPT + ETH_LEN, fixed)?;
    // SAFETY: plain helper call; the packet is taken anew after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, OPT as i32) } != 0 {
        return Err(Error::Adjust);
    }
    stash.len = OPT as u32;
    count(stat::IP_OPTIONS_SERVED);
    Ok(())
}

/// The main program, at its end: takes the options set aside for this
/// packet (0 bytes: none).
#[inline(always)]
pub fn take_stashed() -> u32 {
    let Some(stash) = OPTIONS_STASH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, as above.
    unsafe {
        let len = (*stash).len;
        (*stash).len = 0;
        len
    }
}

/// The main program, at its end, for a packet whose `len` bytes of options
/// were set aside: hands `verdict` and the packet to the program that puts
/// them back. Returns only when there is none.
#[inline(always)]
pub fn to_xdp_restore(ctx: &XdpContext, len: u32, verdict: u32) {
    let Some(stash) = OPTIONS_STASH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, as above.
    unsafe { (*stash).verdict = verdict };
    // SAFETY: a tail call; on success control never returns here.
    unsafe { XDP_RESTORE.tail_call(ctx, (IPV4_MIN_LEN as u32 + len) / 4) };
}

/// XDP, last step for headers with `OPT` bytes of options: puts them back
/// behind the IPv4 header the packet now has, and returns the main
/// program's verdict. A packet the main program dropped stays dropped; one
/// that no longer starts with a 20-byte IPv4 header, or that cannot grow,
/// goes on as it is.
#[inline(always)]
pub fn restore<const OPT: usize>(ctx: &XdpContext) -> u32 {
    let Ok(stash) = stash() else {
        return xdp_action::XDP_ABORTED;
    };
    let verdict = stash.verdict;
    if verdict == xdp_action::XDP_DROP || verdict == xdp_action::XDP_ABORTED {
        return verdict;
    }
    let _ = try_restore::<OPT>(ctx, &stash.bytes);
    verdict
}

#[inline(always)]
fn try_restore<const OPT: usize>(ctx: &XdpContext, options: &[u8; MAX_OPT]) -> Result<(), Error> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let eth: [u8; ETH_LEN] = pkt.read(0)?;
    let mut fixed: [u8; IPV4_MIN_LEN] = pkt.read(ETH_LEN)?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP || fixed[0] != 0x45 {
        return Ok(());
    }
    // SAFETY: plain helper call; the packet is taken anew after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OPT as i32)) } != 0 {
        return Err(Error::Adjust);
    }
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    fixed[0] = 0x40 | ((IPV4_MIN_LEN + OPT) / 4) as u8;
    let tot_len = u16::from_be_bytes([fixed[ip::TOT_LEN], fixed[ip::TOT_LEN + 1]]) + OPT as u16;
    fixed[ip::TOT_LEN..ip::TOT_LEN + 2].copy_from_slice(&tot_len.to_be_bytes());
    set_ip_check(&mut fixed, &options[..OPT]);
    pkt.write(0, eth)?;
    pkt.write(ETH_LEN, fixed)?;
    for i in 0..OPT / 4 {
        let mut word = [0u8; 4];
        word.copy_from_slice(&options[4 * i..4 * i + 4]);
        pkt.write(OPT_AT + 4 * i, word)?;
    }
    Ok(())
}
