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
//! The other way, an error from the client's side (its host, or a router
//! before it) about a reply the client got from the frontend is matched by
//! the client's flow in `conntrack` and goes to the backend, as about the
//! backend's own reply: forwarded to a remote backend from the node's SNAT
//! address, passed to the stack for a local one.
//!
//! Only plain 20-byte headers, outer and quoted, are handled; anything
//! else about a flow is left to the stack.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use nodeport_common::{CT_F_SNAT, CtEntry, FlowKey, PROTO_TCP, PROTO_UDP, checksum, stat};

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

/// An ICMP error as found in the packet: its outer header, the quoted
/// header and the quoted ports.
struct Quote {
    outer: [u8; IPV4_MIN_LEN],
    quoted: [u8; IPV4_MIN_LEN],
    from_port: u16,
    to_port: u16,
}

impl Quote {
    /// The reply of the quoted packet (its tuple reversed): a `rev_nat`
    /// key when the quoted packet is one the datapath translated towards a
    /// backend, the client's `conntrack` key when it is a reply the client
    /// got.
    #[inline(always)]
    fn reply(&self) -> FlowKey {
        FlowKey {
            saddr_be: word32(&self.quoted, ip::DADDR),
            daddr_be: word32(&self.quoted, ip::SADDR),
            sport_be: self.to_port,
            dport_be: self.from_port,
            proto: self.quoted[ip::PROTO],
            pad: [0; 3],
        }
    }
}

/// What an error becomes: sent from `error_from` to `error_to`, quoting a
/// packet from `sent_from:from_port` to `sent_to:to_port`.
struct Rewrite {
    error_from: u32,
    error_to: u32,
    sent_from: u32,
    from_port: u16,
    sent_to: u32,
    to_port: u16,
}

/// The ICMP error (destination unreachable, time exceeded) in `pkt`, with
/// plain 20-byte headers, quoting a TCP or UDP packet, addressed to that
/// packet's sender.
#[inline(always)]
fn parse(pkt: &Packet) -> Result<Option<Quote>, Error> {
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
    let quoted_frag = u16::from_be_bytes([quoted[ip::FRAG_OFF], quoted[ip::FRAG_OFF + 1]]);
    // A quoted later fragment has no ports where they are read.
    if quoted[0] != 0x45
        || (proto != PROTO_TCP && proto != PROTO_UDP)
        || quoted_frag & ip::OFFSET != 0
    {
        return Ok(None);
    }
    // The datagram holds what is read of it (not trailing frame bytes).
    let tot_len = usize::from(u16::from_be_bytes([
        outer[ip::TOT_LEN],
        outer[ip::TOT_LEN + 1],
    ]));
    if tot_len < QUOTED_L4 + UDP_LEN - OUTER || tot_len + ETH_LEN > pkt.len() {
        return Ok(None);
    }
    if word32(&outer, ip::DADDR) != word32(&quoted, ip::SADDR) {
        return Ok(None);
    }
    Ok(Some(Quote {
        outer,
        quoted,
        from_port: u16::from_ne_bytes([ports[l4::SPORT], ports[l4::SPORT + 1]]),
        to_port: u16::from_ne_bytes([ports[l4::DPORT], ports[l4::DPORT + 1]]),
    }))
}

/// XDP: an ICMP error about a translated flow. Quoting a packet SNATed to
/// a remote backend (from a router on the way or the backend), it goes to
/// the flow's client; quoting a reply the client got (from the client's
/// side), to the flow's backend. Every other packet the parser did not
/// take (not IPv4, not TCP/UDP) is not ours.
#[inline(always)]
pub fn translate_error(ctx: &XdpContext, device: &DeviceInfo) -> Result<Verdict, Error> {
    let pkt = packet(ctx);
    let Some(q) = parse(&pkt)? else {
        return Ok(Verdict::not_ours());
    };
    if let Some(mac) = device.mac()
        && pkt.read::<[u8; 6]>(0)? != mac
    {
        // Another host's frame: never translate or send it (as `ingress`).
        return Ok(Verdict::new(xdp_action::XDP_PASS, stat::PASS_OTHER_HOST));
    }
    let key = q.reply();
    // SAFETY: the values are copied out at once.
    let (new, stat) = if let Some(rev) = REV_NAT.get_ptr(key).map(|r| unsafe { *r }) {
        (
            to_client(rev.saddr_be, rev.sport_be, rev.daddr_be, rev.dport_be),
            stat::ICMP_ERROR_TO_CLIENT,
        )
    } else if let Some(ct) = CONNTRACK.get_ptr(key).map(|c| unsafe { *c }) {
        if ct.flags & CT_F_SNAT == 0 {
            // A local backend: the stack routes the error to the pod.
            rewrite(&packet(ctx), &q, &to_backend(&q, &ct), 0)?;
            return Ok(Verdict::new(
                xdp_action::XDP_PASS,
                stat::ICMP_ERROR_TO_BACKEND,
            ));
        }
        (to_backend(&q, &ct), stat::ICMP_ERROR_TO_BACKEND)
    } else {
        return Ok(Verdict::not_ours());
    };
    if q.outer[ip::TTL] <= 1 {
        return Err(Error::Ttl);
    }
    let tot_len = if device.skb_mode() {
        0
    } else {
        u16::from_be_bytes([q.outer[ip::TOT_LEN], q.outer[ip::TOT_LEN + 1]])
    };
    let Route::Via(hop) =
        route::lookup(ctx, PROTO_ICMP, new.error_from, new.error_to, 0, 0, tot_len)?
    else {
        return Err(Error::Fib);
    };
    // Pointers are taken anew after the helper.
    rewrite(&packet(ctx), &q, &new, 1)?;
    route::send(ctx, hop, device, stat)
}

/// TC egress: a local backend's own ICMP error about a client's flow (its
/// port unreachable, say), already routed to the client by the node,
/// leaves as about the client's packet to the frontend.
#[inline(always)]
pub fn error_to_client_tc(pkt: &Packet) -> Result<Verdict, Error> {
    let Some(q) = parse(pkt)? else {
        return Ok(Verdict::not_ours());
    };
    // SAFETY: the value is copied out at once.
    let Some(rev) = REV_NAT.get_ptr(q.reply()).map(|r| unsafe { *r }) else {
        return Ok(Verdict::not_ours());
    };
    // As for replies (`egress`): only about a flow still tracked, to this
    // backend, not one an old entry's tuple happens to match.
    let backend = word32(&q.quoted, ip::DADDR);
    // SAFETY: the value is copied out at once.
    let live = CONNTRACK
        .get_ptr(rev.client_flow(q.quoted[ip::PROTO]))
        .map(|c| unsafe { *c })
        .is_some_and(|ct| {
            ct.flags & CT_F_SNAT == 0
                && ct.backend_addr_be == backend
                && ct.backend_port_be == q.to_port
        });
    if !live {
        return Ok(Verdict::not_ours());
    }
    let new = to_client(rev.saddr_be, rev.sport_be, rev.daddr_be, rev.dport_be);
    rewrite(pkt, &q, &new, 0)?;
    Ok(Verdict::new(0, stat::ICMP_ERROR_TO_CLIENT))
}

/// To the client, from the frontend, about the client's packet to it.
#[inline(always)]
const fn to_client(frontend: u32, frontend_port: u16, client: u32, client_port: u16) -> Rewrite {
    Rewrite {
        error_from: frontend,
        error_to: client,
        sent_from: client,
        from_port: client_port,
        sent_to: frontend,
        to_port: frontend_port,
    }
}

/// To the backend, about its reply as it sent it: to the node's SNAT
/// address and port from that address (remote), or to the client from the
/// client (local).
#[inline(always)]
fn to_backend(q: &Quote, ct: &CtEntry) -> Rewrite {
    let (peer, peer_port, error_from) = if ct.flags & CT_F_SNAT != 0 {
        (ct.snat_addr_be, ct.snat_port_be, ct.snat_addr_be)
    } else {
        (
            word32(&q.quoted, ip::DADDR),
            q.to_port,
            word32(&q.outer, ip::SADDR),
        )
    };
    Rewrite {
        error_from,
        error_to: ct.backend_addr_be,
        sent_from: ct.backend_addr_be,
        from_port: ct.backend_port_be,
        sent_to: peer,
        to_port: peer_port,
    }
}

/// Rewrites the error to `new`, `ttl_step` hops on (1 where the datapath
/// forwards it; 0 where the node does or did): the outer addresses, the
/// quoted addresses and ports, and every checksum over them.
#[inline(always)]
fn rewrite(pkt: &Packet, q: &Quote, new: &Rewrite, ttl_step: u8) -> Result<(), Error> {
    let Quote {
        outer,
        quoted,
        from_port,
        to_port,
    } = q;
    let (error_from, error_to) = (word32(outer, ip::SADDR), word32(outer, ip::DADDR));
    let (sent_from, sent_to) = (word32(quoted, ip::SADDR), word32(quoted, ip::DADDR));

    let ttl = outer[ip::TTL] - ttl_step;
    let ttl_word = u16::from_ne_bytes([outer[ip::TTL], outer[ip::PROTO]]);
    let new_ttl_word = u16::from_ne_bytes([ttl, outer[ip::PROTO]]);
    let mut o_check: u16 = pkt.read(OUTER + ip::CHECK)?;
    o_check = checksum::replace4(o_check, error_from, new.error_from);
    o_check = checksum::replace4(o_check, error_to, new.error_to);
    o_check = checksum::replace2(o_check, ttl_word, new_ttl_word);
    pkt.write(OUTER + ip::TTL, ttl)?;
    pkt.write(OUTER + ip::SADDR, new.error_from)?;
    pkt.write(OUTER + ip::DADDR, new.error_to)?;
    pkt.write(OUTER + ip::CHECK, o_check)?;

    // The quoted header and ports; the ICMP checksum covers every byte
    // changed below.
    let mut icmp_check: u16 = pkt.read(ICMP + ICMP_CHECK)?;
    let old_quoted_check: u16 = pkt.read(QUOTED + ip::CHECK)?;
    let mut quoted_check = checksum::replace4(old_quoted_check, sent_from, new.sent_from);
    quoted_check = checksum::replace4(quoted_check, sent_to, new.sent_to);
    icmp_check = checksum::replace4(icmp_check, sent_from, new.sent_from);
    icmp_check = checksum::replace4(icmp_check, sent_to, new.sent_to);
    icmp_check = checksum::replace2(icmp_check, old_quoted_check, quoted_check);
    icmp_check = checksum::replace2(icmp_check, *from_port, new.from_port);
    icmp_check = checksum::replace2(icmp_check, *to_port, new.to_port);
    pkt.write(QUOTED + ip::SADDR, new.sent_from)?;
    pkt.write(QUOTED + ip::DADDR, new.sent_to)?;
    pkt.write(QUOTED + ip::CHECK, quoted_check)?;
    pkt.write(QUOTED_L4 + l4::SPORT, new.from_port)?;
    pkt.write(QUOTED_L4 + l4::DPORT, new.to_port)?;

    // The quoted segment's checksum, where the quote holds it (always for
    // UDP; for TCP when more than 8 bytes were quoted, as Linux does).
    let l4_check_at = if quoted[ip::PROTO] == PROTO_TCP {
        QUOTED_L4 + l4::TCP_CHECK
    } else {
        QUOTED_L4 + l4::UDP_CHECK
    };
    // Within the error's datagram, not trailing frame bytes; a zero UDP
    // checksum means none (a zero TCP checksum is a checksum).
    let tot_len = usize::from(u16::from_be_bytes([
        outer[ip::TOT_LEN],
        outer[ip::TOT_LEN + 1],
    ]));
    // (The packet read comes first: with the length comparison first, the
    // compiler drops the read's own bounds check as implied, and the
    // verifier cannot follow that.)
    if let Ok(old) = pkt.read::<u16>(l4_check_at)
        && l4_check_at + 2 <= ETH_LEN + tot_len
        && (old != 0 || quoted[ip::PROTO] == PROTO_TCP)
    {
        let mut c = checksum::replace4(old, sent_from, new.sent_from);
        c = checksum::replace4(c, sent_to, new.sent_to);
        c = checksum::replace2(c, *from_port, new.from_port);
        c = checksum::replace2(c, *to_port, new.to_port);
        if quoted[ip::PROTO] == PROTO_UDP {
            c = checksum::udp_fixup(old, c);
        }
        icmp_check = checksum::replace2(icmp_check, old, c);
        pkt.write(l4_check_at, c)?;
    }
    pkt.write(ICMP + ICMP_CHECK, icmp_check)
}
