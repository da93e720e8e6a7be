//! Frames whose next hop has no neighbour entry yet (a client the node has
//! never talked to, an aged-out entry): XDP cannot resolve a neighbour, so
//! it hands the rewritten frame to TC ingress of the same device through
//! the frame's XDP metadata, and TC sends it with `bpf_redirect_neigh`,
//! which resolves the neighbour (queueing the frame meanwhile) as the
//! kernel's own forwarding would. The stack never routes such a frame
//! itself: TC ingress runs before IP, so a frame whose source is a node
//! address is not dropped as a martian.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_redir_neigh, xdp_md},
    helpers::{bpf_redirect_neigh, bpf_xdp_adjust_meta},
    programs::{TcContext, XdpContext},
};
use nodeport_common::stat;

use crate::{
    error::Error,
    maps::{self, count},
    packet::Packet,
};

/// Marks metadata written by [`hand_over`] ("npNH").
const MAGIC: u32 = 0x6e70_4e48;
const AF_INET: u32 = 2;

/// The XDP metadata of a handed-over frame.
#[repr(C)]
#[derive(Clone, Copy)]
struct Handoff {
    magic: u32,
    /// This node's `handoff_token` (`config`): skb metadata can survive a
    /// veth into another namespace, where another node's TC ingress must
    /// not act on it.
    token: u32,
    /// Egress device, from the FIB lookup.
    ifindex: u32,
    /// Next-hop address (network order), from the FIB lookup.
    nexthop_be: u32,
}

/// XDP side: attaches the next hop to the frame as metadata; the program
/// then returns `XDP_PASS`.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, ifindex: u32, nexthop_be: u32) -> Result<(), Error> {
    let len = core::mem::size_of::<Handoff>() as i32;
    // SAFETY: grows the metadata area in front of the frame; pointers are
    // taken anew right after.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -len) } != 0 {
        return Err(Error::Fib);
    }
    let md: *mut xdp_md = ctx.ctx;
    // SAFETY: reading the context's packet pointers.
    let (meta, data) = unsafe { ((*md).data_meta as usize, (*md).data as usize) };
    Packet::new(meta, data).write(
        0,
        Handoff {
            magic: MAGIC,
            token: maps::config().handoff_token,
            ifindex,
            nexthop_be,
        },
    )
}

/// TC ingress side: a frame carrying a handoff is sent to its next hop with
/// `bpf_redirect_neigh`; every other frame goes on untouched.
#[inline(always)]
pub fn try_tc_ingress(ctx: &TcContext) -> i32 {
    /// `TC_ACT_UNSPEC`: let the frame go on as if the program were not there.
    const CONTINUE: i32 = -1;
    let skb = ctx.skb.skb;
    // SAFETY: reading the context's packet pointers.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    let area = Packet::new(meta, data);
    let Ok(h) = area.read::<Handoff>(0) else {
        return CONTINUE;
    };
    if h.magic != MAGIC || h.token != maps::config().handoff_token {
        return CONTINUE;
    }
    // Consumed: the metadata may travel on with the skb.
    if area.write::<u32>(0, 0).is_err() {
        return CONTINUE;
    }
    let mut params = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: h.nexthop_be,
        },
    };
    // SAFETY: params is a valid bpf_redir_neigh of the given size.
    let rc = unsafe {
        bpf_redirect_neigh(
            h.ifindex,
            core::ptr::from_mut(&mut params),
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    if rc < 0 {
        count(stat::DROP_FIB);
        return TC_ACT_SHOT;
    }
    count(stat::NEIGH_REDIRECT);
    rc as i32
}
