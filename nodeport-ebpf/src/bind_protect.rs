//! NodePort bind protection (cgroup `bind4` hook): in the node's own
//! network namespace, a TCP or UDP socket that binds an allocated nodePort
//! on a node address that serves NodePorts, or on the wildcard address,
//! gets `EADDRINUSE`, as kube-proxy's held sockets gave it. The NodePort
//! keeps being served by the datapath either way; what is protected is the
//! port's meaning: no process on the node can take over a Service's port.
//! Pods (other network namespaces) bind what they like, and ephemeral binds
//! (port 0) never pick a nodePort: the agent keeps the NodePort range in
//! `net.ipv4.ip_local_reserved_ports`.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use nodeport_common::{FrontendKey, PROTO_TCP, PROTO_UDP, stat};

use crate::{
    error::{Error, Verdict},
    maps,
};

/// `EADDRINUSE` of Linux.
const EADDRINUSE: i32 = 98;

/// `bind()`: refused for an allocated nodePort, else let through.
#[allow(
    clippy::unnecessary_wraps,
    reason = "every program's logic is a try_* returning a Result (house rule)"
)]
pub fn try_bind(ctx: &SockAddrContext) -> Result<Verdict, Error> {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    let port_be = sa.user_port as u16;
    if (proto != PROTO_TCP && proto != PROTO_UDP) || port_be == 0 {
        return Ok(Verdict::not_ours());
    }
    let addr_be = sa.user_ip4;
    if addr_be != 0 && !maps::is_node_addr(addr_be) {
        return Ok(Verdict::not_ours());
    }
    let protected = maps::config().bind_protect_netns;
    // SAFETY: plain helper call on the program's context.
    if protected == 0 || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != protected {
        return Ok(Verdict::not_ours());
    }
    let key = FrontendKey {
        addr_be: 0,
        port_be,
        proto,
        pad: 0,
    };
    if maps::frontend(key).is_none() {
        return Ok(Verdict::not_ours());
    }
    // SAFETY: plain helper call; sets the error the refused bind returns.
    unsafe { bpf_set_retval(-EADDRINUSE) };
    Ok(Verdict::new(0, stat::BIND_REFUSED))
}
