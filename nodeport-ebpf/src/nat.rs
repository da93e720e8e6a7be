//! Address and port rewrites in XDP, each followed by the RFC 1624
//! incremental checksum update of the IPv4 header and the L4 checksum
//! (`nodeport_common::checksum`). UDP's zero checksum ("none") stays zero.
//!
//! The TC program does not use these: an skb may carry a partial checksum
//! (checksum offload), which only the kernel's skb-aware helpers update
//! correctly; see `egress`.

use nodeport_common::{PROTO_UDP, checksum};

use crate::{
    error::Error,
    headers::{Parsed, ip, l4},
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

/// Rewrites the packet's addresses and ports from what `p` describes to
/// `new`, updating both checksums; optionally decrements the TTL (the
/// datapath forwards the packet itself).
#[inline(always)]
pub fn rewrite(pkt: &Packet, p: &Parsed, new: &Tuple, decrement_ttl: bool) -> Result<(), Error> {
    if decrement_ttl && p.ttl <= 1 {
        return Err(Error::Ttl);
    }
    let mut ip_check: u16 = pkt.read(p.l3 + ip::CHECK)?;
    let l4_before: u16 = pkt.read(p.l4_check)?;
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
    if new.sport_be != p.sport_be {
        pkt.write(p.l4 + l4::SPORT, new.sport_be)?;
        l4_check = checksum::replace2(l4_check, p.sport_be, new.sport_be);
    }
    if new.dport_be != p.dport_be {
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
    if p.proto == PROTO_UDP {
        l4_check = checksum::udp_fixup(l4_before, l4_check);
    }
    pkt.write(p.l4_check, l4_check)?;
    Ok(())
}
