//! Address and port rewrites in XDP with their checksum updates: the IPv4
//! header checksum and a complete L4 checksum by the one RFC 1624
//! incremental helper (`nodeport_common::checksum`); a partial L4 checksum
//! (see `l4sum`) as what it is. UDP's zero checksum ("none") stays zero.
//!
//! The TC program does not use these: an skb knows whether its checksum is
//! partial, and the kernel's skb-aware helpers update it; see `egress`.

use nodeport_common::{PROTO_UDP, checksum, stat};

use crate::{
    error::Error,
    headers::{Parsed, ip, l4},
    l4sum::Field,
    maps::count,
    packet::Packet,
};

/// The four translatable fields of a flow, network order.
#[derive(Clone, Copy)]
#[allow(clippy::struct_field_names, reason = "the suffix names the byte order")]
pub struct Tuple {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
}

/// How the frame leaves the program, which decides how a partial L4
/// checksum must be left.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Leaves {
    /// As an skb (`XDP_PASS`, or any verdict in generic mode): the skb
    /// stays `CHECKSUM_PARTIAL` and is completed on transmit, so the field
    /// must stay a seed, for the new addresses.
    AsSkb,
    /// As an XDP frame (`XDP_TX` / redirect in native mode): the partial
    /// state is lost, so the field must become the complete checksum.
    AsFrame,
}

/// Rewrites the packet's addresses and ports from what `p` describes to
/// `new`, updating both checksums for what the L4 field held (`field`) and
/// how the frame leaves (`leaves`); optionally decrements the TTL (the
/// datapath forwards the packet itself). A later fragment has no L4
/// header: only its IPv4 header is rewritten (see `frag`).
#[inline(always)]
pub fn rewrite(
    pkt: &Packet,
    p: &Parsed,
    new: &Tuple,
    field: Field,
    leaves: Leaves,
    decrement_ttl: bool,
) -> Result<(), Error> {
    if decrement_ttl && p.ttl <= 1 {
        return Err(Error::Ttl);
    }
    let mut ip_check: u16 = pkt.read(p.l3 + ip::CHECK)?;
    let has_l4 = p.has_l4();
    let l4_before: u16 = if has_l4 { pkt.read(p.l4_check)? } else { 0 };
    let mut l4_check = l4_before;

    if new.saddr_be != p.saddr_be {
        pkt.write(p.l3 + ip::SADDR, new.saddr_be)?;
        ip_check = checksum::replace4(ip_check, p.saddr_be, new.saddr_be);
        l4_check = checksum::replace4(l4_check, p.saddr_be, new.saddr_be);
    }
    if new.daddr_be != p.daddr_be {
        pkt.write(p.l3 + ip::DADDR, new.daddr_be)?;
        ip_check = checksum::replace4(ip_check, p.daddr_be, new.daddr_be);
        l4_check = checksum::replace4(l4_check, p.daddr_be, new.daddr_be);
    }
    if has_l4 && new.sport_be != p.sport_be {
        pkt.write(p.l4 + l4::SPORT, new.sport_be)?;
        l4_check = checksum::replace2(l4_check, p.sport_be, new.sport_be);
    }
    if has_l4 && new.dport_be != p.dport_be {
        pkt.write(p.l4 + l4::DPORT, new.dport_be)?;
        l4_check = checksum::replace2(l4_check, p.dport_be, new.dport_be);
    }
    if decrement_ttl {
        // TTL and protocol share one 16-bit word of the header.
        let old_word: u16 = pkt.read(p.l3 + ip::TTL)?;
        pkt.write::<u8>(p.l3 + ip::TTL, p.ttl - 1)?;
        let new_word: u16 = pkt.read(p.l3 + ip::TTL)?;
        ip_check = checksum::replace2(ip_check, old_word, new_word);
    }
    pkt.write(p.l3 + ip::CHECK, ip_check)?;
    if !has_l4 {
        return Ok(());
    }
    let l4_check = match field {
        Field::Complete if p.proto == PROTO_UDP => checksum::udp_fixup(l4_before, l4_check),
        Field::Complete => l4_check,
        Field::Partial { segment_sum } => {
            count(stat::CSUM_PARTIAL);
            partial(p, new, l4_before, segment_sum, leaves)?
        }
    };
    pkt.write(p.l4_check, l4_check)?;
    Ok(())
}

/// The new L4 field of a frame that arrived with a partial checksum
/// (`seed`): the seed for the new addresses when it stays an skb, the
/// complete checksum when it leaves as an XDP frame.
#[inline(always)]
fn partial(
    p: &Parsed,
    new: &Tuple,
    seed: u16,
    segment_sum: Option<u32>,
    leaves: Leaves,
) -> Result<u16, Error> {
    let pseudo = checksum::pseudo_ipv4(new.saddr_be, new.daddr_be, p.proto, p.l4_len());
    if leaves == Leaves::AsSkb {
        return Ok(checksum::fold(pseudo));
    }
    // The segment's bytes as they leave: the old sum without the seed,
    // with the new ports; then the pseudo-header of the new addresses.
    let Some(sum) = segment_sum else {
        return Err(Error::Truncated);
    };
    let mut acc = checksum::add32(sum, u32::from(!seed));
    acc = checksum::add32(acc, u32::from(!p.sport_be));
    acc = checksum::add32(acc, u32::from(new.sport_be));
    acc = checksum::add32(acc, u32::from(!p.dport_be));
    acc = checksum::add32(acc, u32::from(new.dport_be));
    let c = !checksum::fold(checksum::add32(acc, pseudo));
    Ok(if p.proto == PROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    })
}
