//! The TC egress program's logic: a reply of a local backend (pod → client)
//! leaving through the external device gets the NodePort back as its
//! source; so does the backend's ICMP error about the client's flow
//! (`icmp`).
//!
//! skbs may carry a partial checksum (offload), so the rewrites use the
//! kernel's skb-aware checksum helpers rather than the XDP path's
//! incremental update, and every write goes through the context.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use nodeport_common::{CT_F_SNAT, PROTO_UDP, RevNat, stat};

use crate::{
    error::{Error, Verdict},
    frag,
    headers::{self, ETH_LEN, IPV4_MAX_LEN, IPV4_MIN_LEN, Parsed, TCP_MIN_LEN, ip, l4},
    icmp,
    maps::{CONNTRACK, REV_NAT},
    options,
    packet::Packet,
};

/// `BPF_F_MARK_MANGLED_0`: keep a zero UDP checksum zero.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
/// Bytes that must be linear for the parser: Ethernet, the longest IPv4
/// header and a TCP header.
const PULL_LEN: u32 = (ETH_LEN + IPV4_MAX_LEN + TCP_MIN_LEN) as u32;

#[inline(always)]
fn packet(ctx: &TcContext) -> Packet {
    Packet::new(ctx.data(), ctx.data_end())
}

/// The program's logic for IPv4 headers of `IP_HDR` bytes (`options`).
#[inline(always)]
pub fn try_egress<const IP_HDR: usize>(ctx: &TcContext) -> Result<Verdict, Error> {
    let mut pkt = packet(ctx);
    if (pkt.len() as u32) < PULL_LEN && ctx.len() > pkt.len() as u32 {
        // Headers may sit in paged data; make them linear (best effort).
        let _ = ctx.pull_data(PULL_LEN.min(ctx.len()));
        pkt = packet(ctx);
    }
    let Some(mut p) = headers::parse::<IP_HDR>(&pkt, ctx.len() as usize)? else {
        if IP_HDR != IPV4_MIN_LEN {
            // Only TCP and UDP reach the copies for options.
            return Ok(Verdict::not_ours());
        }
        return icmp::error_to_client_tc(&pkt);
    };
    if !options::tc_served::<IP_HDR>(ctx) {
        return Err(Error::IpOptions);
    }
    frag::follow(&mut p)?;
    let key = p.flow();
    // SAFETY: the value is copied out at once.
    let Some(rev) = REV_NAT.get_ptr(key).map(|r| unsafe { *r }) else {
        return Ok(Verdict::not_ours());
    };
    // Only a reply of a flow the datapath still tracks, to this backend, is
    // translated: an entry left behind by an ended flow must not rewrite an
    // unrelated connection that happens to reuse the tuple.
    let ct_key = rev.client_flow(p.proto);
    // SAFETY: the value is copied out at once.
    let live = CONNTRACK
        .get_ptr(ct_key)
        .map(|c| unsafe { *c })
        .is_some_and(|ct| {
            ct.flags & CT_F_SNAT == 0
                && ct.backend_addr_be == p.saddr_be
                && ct.backend_port_be == p.sport_be
        });
    if !live {
        let _ = REV_NAT.remove(key);
        return Ok(Verdict::not_ours());
    }
    frag::remember(&p);
    rewrite(ctx, &p, &rev)?;
    Ok(Verdict::new(0, stat::REPLY_LOCAL))
}

/// Rewrites the reply to `rev`; a later fragment has no L4 header, so only
/// its addresses and IPv4 checksum change (`frag`).
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Parsed, rev: &RevNat) -> Result<(), Error> {
    let udp = if p.proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    let ip_check = (p.l3 + ip::CHECK) as u32;
    // No L4 checksum to update in a later fragment.
    let l4_check = if p.has_l4() { p.l4_check as u32 } else { 0 };
    if rev.saddr_be != p.saddr_be {
        set_addr(
            ctx,
            p.l3 + ip::SADDR,
            p.saddr_be,
            rev.saddr_be,
            ip_check,
            l4_check,
            udp,
        )?;
    }
    if rev.daddr_be != p.daddr_be {
        set_addr(
            ctx,
            p.l3 + ip::DADDR,
            p.daddr_be,
            rev.daddr_be,
            ip_check,
            l4_check,
            udp,
        )?;
    }
    if !p.has_l4() {
        return Ok(());
    }
    if rev.sport_be != p.sport_be {
        set_port(
            ctx,
            p.l4 + l4::SPORT,
            p.sport_be,
            rev.sport_be,
            l4_check,
            udp,
        )?;
    }
    if rev.dport_be != p.dport_be {
        set_port(
            ctx,
            p.l4 + l4::DPORT,
            p.dport_be,
            rev.dport_be,
            l4_check,
            udp,
        )?;
    }
    Ok(())
}

#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    at: usize,
    old: u32,
    new: u32,
    ip_check: u32,
    l4_check: u32,
    udp: u64,
) -> Result<(), Error> {
    // 0: a later fragment, no L4 checksum.
    if l4_check != 0 {
        ctx.l4_csum_replace(
            l4_check as usize,
            u64::from(old),
            u64::from(new),
            u64::from(BPF_F_PSEUDO_HDR) | udp | 4,
        )
        .map_err(|_| Error::MapUpdate)?;
    }
    ctx.l3_csum_replace(ip_check as usize, u64::from(old), u64::from(new), 4)
        .map_err(|_| Error::MapUpdate)?;
    ctx.store(at, &new, 0).map_err(|_| Error::MapUpdate)
}

#[inline(always)]
fn set_port(
    ctx: &TcContext,
    at: usize,
    old: u16,
    new: u16,
    l4_check: u32,
    udp: u64,
) -> Result<(), Error> {
    ctx.l4_csum_replace(l4_check as usize, u64::from(old), u64::from(new), udp | 2)
        .map_err(|_| Error::MapUpdate)?;
    ctx.store(at, &new, 0).map_err(|_| Error::MapUpdate)
}
