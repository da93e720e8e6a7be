//! Socket-level load balancing (cgroup `sock_addr` hooks) for connections
//! that start on the node or in its pods: `connect()` and `sendmsg()` to a
//! frontend (a node address's NodePort, or a ClusterIP) are pointed at a
//! backend before any packet exists, so no NAT is needed on the wire. This
//! is how a pod reaches its own Service through `nodeIP:nodePort`
//! (hairpin): the packet that leaves it is already addressed to a backend,
//! possibly itself. UDP replies get the service address back as their
//! source at `recvmsg()`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_ANY,
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use nodeport_common::{
    FRONTEND_F_DROP_EMPTY, FrontendKey, PROTO_TCP, PROTO_UDP, SockRev, SockRevKey, stat,
};

use crate::{
    error::{Error, Verdict},
    maps::{self, SOCK_REV},
    select,
};

/// `EHOSTUNREACH` of Linux.
const EHOSTUNREACH: i32 = 113;

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: plain helper call on the program's context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// `connect()` / `sendmsg()`: a frontend destination becomes a backend.
pub fn try_translate(ctx: &SockAddrContext) -> Result<Verdict, Error> {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(Verdict::not_ours());
    }
    let addr_be = sa.user_ip4;
    let port_be = sa.user_port as u16;
    let key = FrontendKey {
        addr_be: if maps::is_node_addr(addr_be) {
            0
        } else {
            addr_be
        },
        port_be,
        proto,
        pad: 0,
    };
    // A node address's NodePort, else an externalIP or LoadBalancer IP that
    // is also a node address.
    let fe = maps::frontend(key).or_else(|| {
        (key.addr_be == 0)
            .then(|| maps::frontend(FrontendKey { addr_be, ..key }))
            .flatten()
    });
    let Some(fe) = fe else {
        return Ok(Verdict::not_ours());
    };
    if fe.backend_count == 0 {
        if fe.flags & FRONTEND_F_DROP_EMPTY != 0 {
            // A Local traffic policy whose endpoints are all elsewhere:
            // kube-proxy drops the traffic; the call fails at once.
            // SAFETY: plain helper call; sets the error the call returns.
            unsafe { bpf_set_retval(-EHOSTUNREACH) };
            return Ok(Verdict::new(0, stat::SOCK_NO_LOCAL_BACKEND));
        }
        // Left to the stack: a local nodePort has no listener (refused),
        // another node's datapath rejects.
        return Ok(Verdict::not_ours());
    }
    let (_, backend) = select::pick_random(&fe)?;
    sa.user_ip4 = backend.addr_be;
    sa.user_port = u32::from(backend.port_be);
    if proto == PROTO_UDP {
        let rev_key = SockRevKey {
            cookie: cookie(ctx),
            addr_be: backend.addr_be,
            port_be: backend.port_be,
            pad: 0,
        };
        let rev = SockRev {
            addr_be,
            port_be,
            pad: 0,
        };
        SOCK_REV
            .insert(rev_key, rev, u64::from(BPF_ANY))
            .map_err(|_| Error::MapUpdate)?;
    }
    Ok(Verdict::new(0, stat::SOCK_TRANSLATED))
}

/// `recvmsg()` on a UDP socket: a backend's reply is reported as coming
/// from the service address the application sent to.
#[allow(
    clippy::unnecessary_wraps,
    reason = "every program's logic is a try_* returning a Result (house rule)"
)]
pub fn try_reverse(ctx: &SockAddrContext) -> Result<Verdict, Error> {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = SockRevKey {
        cookie: cookie(ctx),
        addr_be: sa.user_ip4,
        port_be: sa.user_port as u16,
        pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(rev) = SOCK_REV.get_ptr(key).map(|r| unsafe { *r }) else {
        return Ok(Verdict::not_ours());
    };
    sa.user_ip4 = rev.addr_be;
    sa.user_port = u32::from(rev.port_be);
    Ok(Verdict::new(0, stat::SOCK_REPLY))
}
