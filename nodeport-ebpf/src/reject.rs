//! Answers for a frontend without endpoints, as kube-proxy's REJECT rule
//! does: a TCP RST for TCP, an ICMP port unreachable for UDP, built in place
//! and sent to the client's next hop (`route`).
//!
//! Only a frame the kernel itself would answer gets one (RFC 1122 3.2.2,
//! the checks of `nf_send_reset` / `icmp_send`): addressed to the ingress
//! device's MAC, from a unicast source MAC and a single-host source address
//! (not 0/8, 127/8, multicast, 240/4, nor a local or broadcast address of
//! the node's own subnets, which the FIB reports as not forwarded), with a
//! correct IPv4 header checksum, an L4 checksum the kernel accepts and
//! lengths that agree (`headers::parse`). Everything else is dropped and
//! counted (`drop_reject_invalid`): answering it would send frames with
//! another host's MAC as source, or to a broadcast.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use nodeport_common::{PROTO_TCP, checksum, stat};

use crate::{
    error::{Error, Verdict},
    headers::{ETH_LEN, ETH_P_IP, IPV4_MIN_LEN, PROTO_ICMP, Parsed, TCP_MIN_LEN, UDP_LEN, l4},
    l4sum,
    maps::DeviceInfo,
    packet::Packet,
    route::{self, NextHop, Route},
};

/// TTL of the answers the datapath originates.
const REPLY_TTL: u8 = 64;
const ICMP_LEN: usize = 8;
/// ICMP destination unreachable, code port unreachable.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// The quoted part of the offending datagram: its IP header and 8 bytes.
const QUOTE_LEN: usize = IPV4_MIN_LEN + 8;

#[inline(always)]
pub fn reject(ctx: &XdpContext, p: &Parsed, device: &DeviceInfo) -> Result<Verdict, Error> {
    // Only whole datagrams with plain 20-byte IP headers are answered
    // (the answer is built in place over those offsets); anything else is
    // dropped.
    if p.l4 != ETH_LEN + IPV4_MIN_LEN || p.fragment() {
        return Err(Error::RejectUnsupported);
    }
    let partial = answerable(ctx, p, device)?;
    let reply_len = if p.proto == PROTO_TCP {
        IPV4_MIN_LEN + TCP_MIN_LEN
    } else {
        IPV4_MIN_LEN + ICMP_LEN + QUOTE_LEN
    };
    let reply_proto = if p.proto == PROTO_TCP {
        PROTO_TCP
    } else {
        PROTO_ICMP
    };
    let Route::Via(hop) = route::lookup(
        ctx,
        reply_proto,
        p.daddr_be,
        p.saddr_be,
        p.dport_be,
        p.sport_be,
        reply_len as u16,
    )?
    else {
        // The source is one of the node's own or a broadcast address.
        return Err(Error::RejectInvalid);
    };
    if p.proto == PROTO_TCP {
        // A RST that stays an skb keeps the arriving frame's partial
        // checksum state (same offsets): it must carry a seed then.
        let seed = partial && hop.leaves_as_skb(device);
        tcp_rst(ctx, p, hop, device, seed)
    } else {
        icmp_port_unreachable(ctx, p, hop, device)
    }
}

/// Checks that the kernel would answer this frame (see the module docs);
/// returns whether its L4 checksum is a partial one.
#[inline(always)]
fn answerable(ctx: &XdpContext, p: &Parsed, device: &DeviceInfo) -> Result<bool, Error> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let Some(mac) = device.mac() else {
        return Err(Error::RejectInvalid);
    };
    let dst: [u8; 6] = pkt.read(0)?;
    let src: [u8; 6] = pkt.read(6)?;
    if dst != mac || src[0] & 1 != 0 || src == [0; 6] {
        return Err(Error::RejectInvalid);
    }
    let first = p.saddr_be.to_ne_bytes()[0];
    if first == 0 || first == 127 || first >= 224 {
        return Err(Error::RejectInvalid);
    }
    let header: [u8; IPV4_MIN_LEN] = pkt.read(p.l3)?;
    if checksum::compute(&header) != 0 {
        return Err(Error::RejectInvalid);
    }
    if p.proto != PROTO_TCP {
        let udp_len = u16::from_be(pkt.read::<u16>(p.l4 + 4)?);
        if usize::from(udp_len) < UDP_LEN || udp_len > p.l4_len() {
            return Err(Error::RejectInvalid);
        }
    }
    match l4sum::verify(ctx, &pkt, p)? {
        Some(partial) => Ok(partial),
        None => Err(Error::RejectInvalid),
    }
}

/// A 20-byte IPv4 header with its checksum, as bytes.
#[inline(always)]
fn ipv4_header(tot_len: u16, proto: u8, saddr_be: u32, daddr_be: u32) -> [u8; IPV4_MIN_LEN] {
    let mut h = [0u8; IPV4_MIN_LEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h[8] = REPLY_TTL;
    h[9] = proto;
    h[12..16].copy_from_slice(&saddr_be.to_ne_bytes());
    h[16..20].copy_from_slice(&daddr_be.to_ne_bytes());
    let c = checksum::compute(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

#[inline(always)]
fn trim_to(ctx: &XdpContext, len: usize) -> Result<(), Error> {
    let cur = ctx.data_end() - ctx.data();
    if cur > len {
        let delta = len as i32 - cur as i32;
        // SAFETY: shrinking the frame; pointers are re-derived by callers.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(Error::Adjust);
        }
    }
    Ok(())
}

fn tcp_rst(
    ctx: &XdpContext,
    p: &Parsed,
    hop: NextHop,
    device: &DeviceInfo,
    seed: bool,
) -> Result<Verdict, Error> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let flags: u8 = pkt.read(p.l4 + l4::TCP_FLAGS)?;
    if flags & l4::TCP_RST != 0 {
        // Never answer a reset.
        return Err(Error::RejectUnsupported);
    }
    let seq = u32::from_be(pkt.read(p.l4 + l4::TCP_SEQ)?);
    let ack = u32::from_be(pkt.read(p.l4 + l4::TCP_ACK)?);
    let payload = u32::from(p.l4_len() - p.l4_hdr_len);

    // RFC 793 reset generation: answer an ACK with its acknowledgment as our
    // sequence number, anything else with seq 0 and an ACK of what it used.
    let (out_seq, out_ack, out_flags) = if flags & l4::TCP_ACK_FLAG != 0 {
        (ack, 0, l4::TCP_RST)
    } else {
        let syn_fin = u32::from(flags & l4::TCP_SYN != 0) + u32::from(flags & l4::TCP_FIN != 0);
        (
            0,
            seq.wrapping_add(payload).wrapping_add(syn_fin),
            l4::TCP_RST | l4::TCP_ACK_FLAG,
        )
    };

    let ip = ipv4_header(
        (IPV4_MIN_LEN + TCP_MIN_LEN) as u16,
        PROTO_TCP,
        p.daddr_be,
        p.saddr_be,
    );
    let mut tcp = [0u8; TCP_MIN_LEN];
    tcp[0..2].copy_from_slice(&p.dport_be.to_ne_bytes());
    tcp[2..4].copy_from_slice(&p.sport_be.to_ne_bytes());
    tcp[4..8].copy_from_slice(&out_seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&out_ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = out_flags;
    if seed {
        let s = checksum::partial_seed(p.daddr_be, p.saddr_be, PROTO_TCP, TCP_MIN_LEN as u16);
        tcp[16..18].copy_from_slice(&s.to_ne_bytes());
    } else {
        let c = checksum::l4_ipv4(
            p.daddr_be.to_ne_bytes(),
            p.saddr_be.to_ne_bytes(),
            PROTO_TCP,
            &tcp,
        );
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
    }

    pkt.write(ETH_LEN, ip)?;
    pkt.write(ETH_LEN + IPV4_MIN_LEN, tcp)?;
    trim_to(ctx, ETH_LEN + IPV4_MIN_LEN + TCP_MIN_LEN)?;
    route::send(ctx, hop, device, stat::REJECT_NO_BACKEND)
}

/// The ICMP error quotes the datagram; an skb's partial checksum state of
/// the original cannot be carried over (its offsets now point into the
/// quote), which only matters for a reply that leaves through a device
/// with checksum offload to a local sender, which trusts it anyway.
fn icmp_port_unreachable(
    ctx: &XdpContext,
    p: &Parsed,
    hop: NextHop,
    device: &DeviceInfo,
) -> Result<Verdict, Error> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    pkt.ptr_at::<[u8; ETH_LEN + IPV4_MIN_LEN + UDP_LEN]>(0)?;

    // Grow the frame at the front by a new IP and ICMP header; the original
    // IP header and the first 8 bytes after it become the quoted part.
    let grow = (IPV4_MIN_LEN + ICMP_LEN) as i32;
    // SAFETY: grows headroom; pointers are re-derived right after.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(Error::Adjust);
    }
    let total = ETH_LEN + IPV4_MIN_LEN + ICMP_LEN + QUOTE_LEN;
    trim_to(ctx, total)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());

    let quote: [u8; QUOTE_LEN] = pkt.read(ETH_LEN + IPV4_MIN_LEN + ICMP_LEN)?;
    let mut icmp = [0u8; ICMP_LEN];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_PORT_UNREACH;
    let c = !checksum::fold(checksum::sum_be(checksum::sum_be(0, &icmp), &quote));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let ip = ipv4_header(
        (IPV4_MIN_LEN + ICMP_LEN + QUOTE_LEN) as u16,
        PROTO_ICMP,
        p.daddr_be,
        p.saddr_be,
    );

    pkt.write(12, ETH_P_IP.to_be())?;
    pkt.write(ETH_LEN, ip)?;
    pkt.write(ETH_LEN + IPV4_MIN_LEN, icmp)?;
    route::send(ctx, hop, device, stat::REJECT_NO_BACKEND)
}
