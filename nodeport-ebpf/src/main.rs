//! The nodeport datapath: XDP ingress on the node's external devices and TC
//! egress on the same devices.
//!
//! Where things live:
//! - [`packet`]: bounds-checked packet access (`ptr_at`), the only way to
//!   touch packet bytes;
//! - [`headers`]: Ethernet / IPv4 / TCP / UDP layouts and the parser;
//! - [`frag`]: later fragments of a datagram follow its first one;
//! - [`maps`]: the BTF maps;
//! - [`counters`]: per-service and per-backend counters;
//! - [`select`]: choosing a backend for a new flow;
//! - [`snat`]: choosing the source port of a flow SNATed to another node;
//! - [`l4sum`]: complete or partial L4 checksums, segment sums;
//! - [`nat`]: address and port rewrites with checksum updates (XDP);
//! - [`route`]: next hop of a frame the datapath sends, and how it is sent;
//! - [`neigh`]: frames whose next hop has no neighbour entry, sent from TC;
//! - [`reject`]: TCP RST / ICMP port unreachable for services without endpoints;
//! - [`icmp`]: ICMP errors about SNATed flows, translated for their clients;
//! - [`options`]: IPv4 headers with options: set aside and put back around
//!   the XDP program, a copy of the TC program per header length;
//! - [`ingress`]: the XDP program's logic; [`egress`]: the TC program's logic;
//! - [`tx`]: the kernel's transmit reports, counted per device;
//! - [`error`]: how a failure becomes a verdict and a counter.
#![no_std]
#![no_main]

mod bind_protect;
mod counters;
mod egress;
mod error;
mod frag;
mod headers;
mod icmp;
mod ingress;
mod l4sum;
mod maps;
mod nat;
mod neigh;
mod options;
mod packet;
mod reject;
mod route;
mod select;
mod snat;
mod sock_lb;
mod tx;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, tracepoint, xdp},
    programs::{SockAddrContext, TcContext, TracePointContext, XdpContext},
};
use error::Error;
use headers::IPV4_MIN_LEN;

/// XDP ingress: NodePort frontends, conntrack, DNAT/SNAT and replies of
/// backends on other nodes.
#[xdp]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_xdp(ctx: XdpContext) -> u32 {
    // Options set aside by the program for the header's length, which
    // then ran this one (`options`).
    let stashed = options::take_stashed();
    let verdict = match ingress::try_ingress(&ctx) {
        Ok(v) => v.finish(),
        Err(Error::IpOptions) if stashed == 0 => {
            options::to_xdp_strip(&ctx);
            Error::IpOptions.finish_xdp()
        }
        Err(e) => e.finish_xdp(),
    };
    if stashed != 0 {
        options::to_xdp_restore(&ctx, stashed, verdict);
    }
    verdict
}

/// TC egress: translates replies of local backends back to the NodePort.
#[classifier]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_tc_egress(ctx: TcContext) -> i32 {
    match egress::try_egress::<IPV4_MIN_LEN>(&ctx) {
        Ok(v) => v.finish_tc(),
        Err(Error::IpOptions) => {
            options::to_tc_copy(&ctx);
            Error::IpOptions.finish_tc()
        }
        Err(e) => e.finish_tc(),
    }
}

/// The programs for IPv4 headers of IHL 6 to 15 (`options`): the XDP
/// programs that set their options aside and put them back around the XDP
/// program, and the TC egress program's copy for each length.
macro_rules! with_options {
    ($($ihl:literal => $strip:ident, $restore:ident, $tc:ident;)*) => {$(
        #[xdp]
        #[allow(
            clippy::needless_pass_by_value,
            reason = "the program macro fixes the signature"
        )]
        pub fn $strip(ctx: XdpContext) -> u32 {
            options::strip::<{ $ihl * 4 - IPV4_MIN_LEN }>(&ctx)
        }

        #[xdp]
        #[allow(
            clippy::needless_pass_by_value,
            reason = "the program macro fixes the signature"
        )]
        pub fn $restore(ctx: XdpContext) -> u32 {
            options::restore::<{ $ihl * 4 - IPV4_MIN_LEN }>(&ctx)
        }

        #[classifier]
        #[allow(
            clippy::needless_pass_by_value,
            reason = "the program macro fixes the signature"
        )]
        pub fn $tc(ctx: TcContext) -> i32 {
            match egress::try_egress::<{ $ihl * 4 }>(&ctx) {
                Ok(v) => v.finish_tc(),
                Err(e) => e.finish_tc(),
            }
        }
    )*};
}

with_options! {
    6 => nodeport_xdp_strip_ihl6, nodeport_xdp_restore_ihl6, nodeport_tc_egress_ihl6;
    7 => nodeport_xdp_strip_ihl7, nodeport_xdp_restore_ihl7, nodeport_tc_egress_ihl7;
    8 => nodeport_xdp_strip_ihl8, nodeport_xdp_restore_ihl8, nodeport_tc_egress_ihl8;
    9 => nodeport_xdp_strip_ihl9, nodeport_xdp_restore_ihl9, nodeport_tc_egress_ihl9;
    10 => nodeport_xdp_strip_ihl10, nodeport_xdp_restore_ihl10, nodeport_tc_egress_ihl10;
    11 => nodeport_xdp_strip_ihl11, nodeport_xdp_restore_ihl11, nodeport_tc_egress_ihl11;
    12 => nodeport_xdp_strip_ihl12, nodeport_xdp_restore_ihl12, nodeport_tc_egress_ihl12;
    13 => nodeport_xdp_strip_ihl13, nodeport_xdp_restore_ihl13, nodeport_tc_egress_ihl13;
    14 => nodeport_xdp_strip_ihl14, nodeport_xdp_restore_ihl14, nodeport_tc_egress_ihl14;
    15 => nodeport_xdp_strip_ihl15, nodeport_xdp_restore_ihl15, nodeport_tc_egress_ihl15;
}

/// TC ingress: frames the XDP program handed over for neighbour resolution
/// go out with `bpf_redirect_neigh`; everything else goes on untouched.
#[classifier]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_tc_ingress(ctx: TcContext) -> i32 {
    neigh::try_tc_ingress(&ctx)
}

/// `xdp:xdp_bulk_tx`: counts the datapath's `XDP_TX` batches per device.
#[tracepoint]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_xdp_bulk_tx(ctx: TracePointContext) -> u32 {
    tx::bulk_tx(&ctx);
    0
}

/// `xdp:xdp_devmap_xmit`: counts the datapath's redirected batches.
#[tracepoint]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_xdp_devmap_xmit(ctx: TracePointContext) -> u32 {
    tx::devmap_xmit(&ctx);
    0
}

/// `xdp:xdp_exception`: counts transmit failures of drivers and generic XDP.
#[tracepoint]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_xdp_exception(ctx: TracePointContext) -> u32 {
    tx::exception(&ctx);
    0
}

/// `xdp:xdp_redirect_err`: counts redirects that failed at once.
#[tracepoint]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_xdp_redirect_err(ctx: TracePointContext) -> u32 {
    tx::redirect_err(&ctx);
    0
}

/// Socket LB, `connect()` of TCP and UDP sockets.
#[cgroup_sock_addr(connect4)]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_connect4(ctx: SockAddrContext) -> i32 {
    sock_lb::try_translate(&ctx).map_or_else(error::Error::finish_sock, error::Verdict::finish_sock)
}

/// Socket LB, `sendmsg()` of unconnected UDP sockets.
#[cgroup_sock_addr(sendmsg4)]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_lb::try_translate(&ctx).map_or_else(error::Error::finish_sock, error::Verdict::finish_sock)
}

/// Socket LB, `recvmsg()` of UDP sockets: replies come from the service.
#[cgroup_sock_addr(recvmsg4)]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_lb::try_reverse(&ctx).map_or_else(error::Error::finish_sock, error::Verdict::finish_sock)
}

/// NodePort bind protection, `bind()` of TCP and UDP sockets.
#[cgroup_sock_addr(bind4)]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_bind4(ctx: SockAddrContext) -> i32 {
    bind_protect::try_bind(&ctx).map_or_else(error::Error::finish_sock, error::Verdict::finish_sock)
}

/// The trivial program: `XDP_PASS` and nothing else. The benchmarks run it
/// beside the datapath to report its cost as a ratio.
#[xdp]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_xdp_pass(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
