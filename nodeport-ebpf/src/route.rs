//! Where a frame the XDP program sends goes next, and how it gets there:
//! `bpf_fib_lookup` gives the egress device and the MACs; when the next hop
//! has no neighbour entry yet, the frame is handed to TC ingress (`neigh`),
//! which sends it with `bpf_redirect_neigh` so the kernel resolves the
//! neighbour instead of the frame being lost.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};

use crate::{
    error::{Error, Verdict},
    maps::DeviceInfo,
    neigh,
    packet::Packet,
};

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
/// The destination is local, a broadcast or multicast: not forwarded.
const BPF_FIB_LKUP_RET_NOT_FWDED: i64 = 4;
/// The route's next hop has no (valid) neighbour entry.
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// The next hop of a frame: egress device and next-hop address, and its
/// MACs when the neighbour is resolved. (A plain struct, every field always
/// set: the verifier rejects reads of registers an enum variant left
/// unset.)
#[derive(Clone, Copy)]
pub struct NextHop {
    pub ifindex: u32,
    pub nexthop_be: u32,
    /// The next hop's neighbour entry exists: `smac` / `dmac` are valid.
    pub resolved: bool,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

impl NextHop {
    /// Whether the frame stays an skb on its way: handed over to TC, or
    /// the program runs in generic mode.
    #[inline(always)]
    pub fn leaves_as_skb(&self, device: &DeviceInfo) -> bool {
        device.skb_mode() || !self.resolved
    }
}

/// What the FIB says of a frame from `saddr_be` to `daddr_be`.
pub enum Route {
    Via(NextHop),
    /// The destination is not a unicast host (local, broadcast, multicast).
    NotForwarded,
}

/// Looks up the route of an IPv4 frame with the given addresses, ports and
/// total length, as if it arrived on the ingress device.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the fields of one lookup")]
pub fn lookup(
    ctx: &XdpContext,
    proto: u8,
    saddr_be: u32,
    daddr_be: u32,
    sport_be: u16,
    dport_be: u16,
    tot_len: u16,
) -> Result<Route, Error> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.sport = sport_be;
    params.dport = dport_be;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.__bindgen_anon_3.ipv4_src = saddr_be;
    params.__bindgen_anon_4.ipv4_dst = daddr_be;
    params.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: params is a valid, writable bpf_fib_lookup of the given size.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            core::ptr::from_mut(&mut params),
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NOT_FWDED {
        return Ok(Route::NotForwarded);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return Err(Error::Fib);
    }
    // On NO_NEIGH the kernel filled in the egress device and the next hop
    // address, not the MACs.
    Ok(Route::Via(NextHop {
        ifindex: params.ifindex,
        // SAFETY: union field written by the helper for IPv4.
        nexthop_be: unsafe { params.__bindgen_anon_4.ipv4_dst },
        resolved: rc == BPF_FIB_LKUP_RET_SUCCESS,
        smac: params.smac,
        dmac: params.dmac,
    }))
}

/// Sends the (already rewritten) frame to `hop`: with its new MACs back out
/// of the ingress device (`XDP_TX`, or a redirect where the device asks for
/// it) or redirected to another device; or, without a neighbour entry,
/// handed to TC ingress. `stat` counts a frame sent directly.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    hop: NextHop,
    device: &DeviceInfo,
    stat: u32,
) -> Result<Verdict, Error> {
    let ingress = ctx.ingress_ifindex() as u32;
    if !hop.resolved {
        neigh::hand_over(ctx, hop.ifindex, hop.nexthop_be)?;
        return Ok(Verdict::new(
            xdp_action::XDP_PASS,
            nodeport_common::stat::FORWARD_VIA_NEIGH,
        ));
    }
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    pkt.write::<[u8; 6]>(0, hop.dmac)?;
    pkt.write::<[u8; 6]>(6, hop.smac)?;
    if hop.ifindex == ingress {
        return Ok(Verdict::transmit(ingress, device, stat));
    }
    // SAFETY: plain helper call; the result is an XDP action.
    let action = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
    Ok(Verdict::sent(action, stat, ingress))
}
