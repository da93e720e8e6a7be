//! ICMP errors about translated flows. A router between the nodes (or the
//! backend) that cannot deliver a packet the datapath SNATed to a remote
//! backend answers the node: destination unreachable (with "fragmentation
//! needed", the path MTU), or time exceeded, quoting the packet as the
//! node sent it (node address and SNAT port to backend). A local backend
//! answers the client directly, quoting the client's packet as DNATed to
//! it. Either way the client must get the error as if about its own packet
//! to the frontend, or path-MTU discovery black-holes and refusals turn
//! into timeouts. The error is matched by the quoted flow's reply key in
//! `rev_nat`, rewritten (outer addresses, the quoted header's addresses
//! and ports, every checksum incrementally) and sent to the client like a
//! reply: by XDP for remote backends, by TC egress for local ones.
//!
//! Only plain 20-byte headers, outer and quoted, are handled; anything
//! else about a flow is left to the stack.

use aya_ebpf::programs::XdpContext;
use nodeport_common::{CT_F_SNAT, FlowKey, PROTO_TCP, PROTO_UDP, RevNat, checksum, stat};

use crate::{
    error::{Error, Verdict},
    headers::{ETH_LEN, ETH_P_IP, IPV4_MIN_LEN, PROTO_ICMP, UDP_LEN, ip, l4},
    maps::{CONNTRACK, DeviceInfo, REV_NAT},
    packet::Packet,
    route::{self, Route},
};

/// ICMP header length (type, code, checksum, 4 bytes of rest).
const ICMP_LEN: usize = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Offset of the ICMP checksum.
const ICMP_CHECK: usize = 2;

/// Where the headers sit: outer IPv4, ICMP, quoted IPv4, quoted TCP/UDP.
const OUTER: usize = ETH_LEN;
const ICMP: usize = OUTER + IPV4_MIN_LEN;
const QUOTED: usize = ICMP + ICMP_LEN;
const QUOTED_L4: usize = QUOTED + IPV4_MIN_LEN;

#[inline(always)]
fn packet(ctx: &XdpContext) -> Packet {
    Packet::new(ctx.data(), ctx.data_end())
}

/// A 32-bit field at `at` of a header read as bytes, as it sits in the
/// packet.
#[inline(always)]
fn word32(h: &[u8; IPV4_MIN_LEN], at: usize) -> u32 {
    u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

/// An ICMP error about a translated flow, as found in the packet.
struct Found {
    outer: [u8; IPV4_MIN_LEN],
    quoted: [u8; IPV4_MIN_LEN],
    from_port: u16,
    to_port: u16,
    /// The reply of the quoted packet: frontend → client.
    rev: RevNat,
}

/// The ICMP error in `pkt` about a flow the datapath translated, if it
/// is one: `rev_nat` holds the reply of the packet it quotes, and it is
/// addressed to that packet's sender.
#[inline(always)]
fn find(pkt: &Packet) -> Result<Option<Found>, Error> {
    if u16::from_be(pkt.read::<u16>(12)?) != ETH_P_IP {
        return Ok(None);
    }
    let outer: [u8; IPV4_MIN_LEN] = pkt.read(OUTER)?;
    let frag = u16::from_be_bytes([outer[ip::FRAG_OFF], outer[ip::FRAG_OFF + 1]]);
    if outer[0] != 0x45 || outer[ip::PROTO] != PROTO_ICMP || frag & ip::MF_AND_OFFSET != 0 {
        return Ok(None);
    }
    let Ok(icmp) = pkt.read::<[u8; ICMP_LEN]>(ICMP) else {
        return Ok(None);
    };
    if icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED {
        return Ok(None);
    }
    // The quoted header and the first 8 bytes of its segment (ports; the
    // UDP checksum).
    let (Ok(quoted), Ok(ports)) = (
        pkt.read::<[u8; IPV4_MIN_LEN]>(QUOTED),
        pkt.read::<[u8; UDP_LEN]>(QUOTED_L4),
    ) else {
        return Ok(None);
    };
    let proto = quoted[ip::PROTO];
    if quoted[0] != 0x45 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Ok(None);
    }
    let sent_from = word32(&quoted, ip::SADDR);
    // The error goes to the sender of the quoted packet.
    if word32(&outer, ip::DADDR) != sent_from {
        return Ok(None);
    }
    let from_port = u16::from_ne_bytes([ports[l4::SPORT], ports[l4::SPORT + 1]]);
    let to_port = u16::from_ne_bytes([ports[l4::DPORT], ports[l4::DPORT + 1]]);
    let reply = FlowKey {
        saddr_be: word32(&quoted, ip::DADDR),
        daddr_be: sent_from,
        sport_be: to_port,
        dport_be: from_port,
        proto,
        pad: [0; 3],
    };
    // SAFETY: the value is copied out at once.
    let Some(rev) = REV_NAT.get_ptr(reply).map(|r| unsafe { *r }) else {
        return Ok(None);
    };
    Ok(Some(Found {
        outer,
        quoted,
        from_port,
        to_port,
        rev,
    }))
}

/// XDP: an ICMP error that quotes a flow SNATed to a remote backend (sent
/// to this node by a router on the way or by the backend) goes to that
/// flow's client, translated; every other packet the parser did not take
/// (not IPv4, not TCP/UDP) is not ours.
#[inline(always)]
pub fn error_to_client(ctx: &XdpContext, device: &DeviceInfo) -> Result<Verdict, Error> {
    let Some(found) = find(&packet(ctx))? else {
        return Ok(Verdict::not_ours());
    };
    if found.outer[ip::TTL] <= 1 {
        return Err(Error::Ttl);
    }
    let tot_len = if device.skb_mode() {
        0
    } else {
        u16::from_be_bytes([found.outer[ip::TOT_LEN], found.outer[ip::TOT_LEN + 1]])
    };
    let Route::Via(hop) = route::lookup(
        ctx,
        PROTO_ICMP,
        found.rev.saddr_be,
        found.rev.daddr_be,
        0,
        0,
        tot_len,
    )?
    else {
        return Err(Error::Fib);
    };
    // Pointers are taken anew after the helper.
    rewrite(&packet(ctx), &found, 1)?;
    route::send(ctx, hop, device, stat::ICMP_ERROR_TO_CLIENT)
}

/// TC egress: a local backend's own ICMP error about a client's flow (its
/// port unreachable, say), already routed to the client by the node,
/// leaves as about the client's packet to the frontend.
#[inline(always)]
pub fn error_to_client_tc(pkt: &Packet) -> Result<Verdict, Error> {
    let Some(found) = find(pkt)? else {
        return Ok(Verdict::not_ours());
    };
    // As for replies (`egress`): only about a flow still tracked, to this
    // backend, not one an old entry's tuple happens to match.
    let backend = word32(&found.quoted, ip::DADDR);
    // SAFETY: the value is copied out at once.
    let live = CONNTRACK
        .get_ptr(found.rev.client_flow(found.quoted[ip::PROTO]))
        .map(|c| unsafe { *c })
        .is_some_and(|ct| {
            ct.flags & CT_F_SNAT == 0
                && ct.backend_addr_be == backend
                && ct.backend_port_be == found.to_port
        });
    if !live {
        return Ok(Verdict::not_ours());
    }
    rewrite(pkt, &found, 0)?;
    Ok(Verdict::new(0, stat::ICMP_ERROR_TO_CLIENT))
}

/// Rewrites the error as if about the client's own packet: from the
/// frontend address to the client, quoting client:port → frontend:port.
#[inline(always)]
fn rewrite(pkt: &Packet, found: &Found, ttl_step: u8) -> Result<(), Error> {
    let Found {
        outer,
        quoted,
        from_port,
        to_port,
        rev,
    } = found;
    let (from_port, to_port) = (*from_port, *to_port);
    let (error_from, error_to) = (word32(outer, ip::SADDR), word32(outer, ip::DADDR));
    let (sent_from, sent_to) = (word32(quoted, ip::SADDR), word32(quoted, ip::DADDR));
    // What the client sent: client → frontend; its reply came from the
    // frontend. `rev` is that reply.
    let (client, frontend) = (rev.daddr_be, rev.saddr_be);
    let (client_port, frontend_port) = (rev.dport_be, rev.sport_be);

    // The outer header: from the frontend address to the client, `ttl_step`
    // hops on (1 where the datapath forwards it; 0 where the node did).
    let ttl = outer[ip::TTL] - ttl_step;
    let ttl_word = u16::from_ne_bytes([outer[ip::TTL], outer[ip::PROTO]]);
    let new_ttl_word = u16::from_ne_bytes([ttl, outer[ip::PROTO]]);
    let mut o_check: u16 = pkt.read(OUTER + ip::CHECK)?;
    o_check = checksum::replace4(o_check, error_from, frontend);
    o_check = checksum::replace4(o_check, error_to, client);
    o_check = checksum::replace2(o_check, ttl_word, new_ttl_word);
    pkt.write(OUTER + ip::TTL, ttl)?;
    pkt.write(OUTER + ip::SADDR, frontend)?;
    pkt.write(OUTER + ip::DADDR, client)?;
    pkt.write(OUTER + ip::CHECK, o_check)?;

    // The quoted header and ports; the ICMP checksum covers every byte
    // changed below.
    let mut icmp_check: u16 = pkt.read(ICMP + ICMP_CHECK)?;
    let old_quoted_check: u16 = pkt.read(QUOTED + ip::CHECK)?;
    let mut quoted_check = checksum::replace4(old_quoted_check, sent_from, client);
    quoted_check = checksum::replace4(quoted_check, sent_to, frontend);
    icmp_check = checksum::replace4(icmp_check, sent_from, client);
    icmp_check = checksum::replace4(icmp_check, sent_to, frontend);
    icmp_check = checksum::replace2(icmp_check, old_quoted_check, quoted_check);
    icmp_check = checksum::replace2(icmp_check, from_port, client_port);
    icmp_check = checksum::replace2(icmp_check, to_port, frontend_port);
    pkt.write(QUOTED + ip::SADDR, client)?;
    pkt.write(QUOTED + ip::DADDR, frontend)?;
    pkt.write(QUOTED + ip::CHECK, quoted_check)?;
    pkt.write(QUOTED_L4 + l4::SPORT, client_port)?;
    pkt.write(QUOTED_L4 + l4::DPORT, frontend_port)?;

    // The quoted segment's checksum, where the quote holds it (always for
    // UDP; for TCP when more than 8 bytes were quoted, as Linux does).
    let l4_check_at = if quoted[ip::PROTO] == PROTO_TCP {
        QUOTED_L4 + l4::TCP_CHECK
    } else {
        QUOTED_L4 + l4::UDP_CHECK
    };
    if let Ok(old) = pkt.read::<u16>(l4_check_at)
        && old != 0
    {
        let mut c = checksum::replace4(old, sent_from, client);
        c = checksum::replace4(c, sent_to, frontend);
        c = checksum::replace2(c, from_port, client_port);
        c = checksum::replace2(c, to_port, frontend_port);
        if quoted[ip::PROTO] == PROTO_UDP {
            c = checksum::udp_fixup(old, c);
        }
        icmp_check = checksum::replace2(icmp_check, old, c);
        pkt.write(l4_check_at, c)?;
    }
    pkt.write(ICMP + ICMP_CHECK, icmp_check)
}
