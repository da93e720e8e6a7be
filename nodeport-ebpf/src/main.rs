//! The nodeport datapath: XDP ingress on the node's external devices and TC
//! egress on the same devices.
//!
//! Where things live:
//! - [`packet`]: bounds-checked packet access (`ptr_at`), the only way to
//!   touch packet bytes;
//! - [`headers`]: Ethernet / IPv4 / TCP / UDP layouts and the parser;
//! - [`maps`]: the BTF maps;
//! - [`select`]: choosing a backend for a new flow;
//! - [`nat`]: address and port rewrites with checksum updates (XDP);
//! - [`reject`]: TCP RST / ICMP port unreachable for services without endpoints;
//! - [`ingress`]: the XDP program's logic; [`egress`]: the TC program's logic;
//! - [`error`]: how a failure becomes a verdict and a counter.
#![no_std]
#![no_main]

mod egress;
mod error;
mod headers;
mod ingress;
mod maps;
mod nat;
mod packet;
mod reject;
mod select;
mod sock_lb;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

/// XDP ingress: NodePort frontends, conntrack, DNAT/SNAT and replies of
/// backends on other nodes.
#[xdp]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_xdp(ctx: XdpContext) -> u32 {
    match ingress::try_ingress(&ctx) {
        Ok(v) => v.finish(),
        Err(e) => e.finish_xdp(),
    }
}

/// TC egress: translates replies of local backends back to the NodePort.
#[classifier]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn nodeport_tc_egress(ctx: TcContext) -> i32 {
    match egress::try_egress(&ctx) {
        Ok(v) => v.finish_tc(),
        Err(e) => e.finish_tc(),
    }
}

/// Socket LB, `connect()` of TCP and UDP sockets. Always allows the call.
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
