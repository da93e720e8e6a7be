//! The XDP program's logic (DESIGN.md section 2): node-address and frontend
//! lookup, conntrack, backend choice, DNAT to local backends, DNAT+SNAT and
//! forwarding to backends on other nodes, translation of their replies, and
//! rejects for frontends without endpoints.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, BPF_NOEXIST, bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect},
    programs::XdpContext,
};
use nodeport_common::{
    BACKEND_F_LOCAL, Backend, CT_F_CLOSING, CT_F_SNAT, CtEntry, FRONTEND_F_DROP_EMPTY, FlowKey,
    Frontend, FrontendKey, PROTO_UDP, RevNat, SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_REUSE_CLOSED_NS,
    SNAT_REUSE_IDLE_NS, SNAT_REUSE_IDLE_UDP_NS, stat,
};

use crate::{
    error::{Error, Verdict},
    headers::{self, Parsed},
    maps::{self, CONNTRACK, REV_NAT},
    nat::{self, Tuple},
    packet::Packet,
    reject, select,
};

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
/// Ports probed when allocating an SNAT port before giving up.
const SNAT_PROBES: u16 = 16;

#[inline(always)]
fn packet(ctx: &XdpContext) -> Packet {
    Packet::new(ctx.data(), ctx.data_end())
}

pub fn try_ingress(ctx: &XdpContext) -> Result<Verdict, Error> {
    let pkt = packet(ctx);
    let Some(p) = headers::parse(&pkt)? else {
        return Ok(Verdict::not_ours());
    };
    let flow = p.flow();

    let to_node = maps::is_node_addr(p.daddr_be);
    let fe_key = FrontendKey {
        addr_be: if to_node { 0 } else { p.daddr_be },
        port_be: p.dport_be,
        proto: p.proto,
        pad: 0,
    };
    if let Some(fe) = maps::frontend(fe_key) {
        return service(ctx, &p, &flow, &fe, to_node);
    }
    if to_node && u16::from_be(p.dport_be) >= SNAT_PORT_MIN {
        // SAFETY: the value is copied out at once.
        if let Some(rev) = REV_NAT.get_ptr(flow).map(|r| unsafe { *r }) {
            return reply_from_remote(ctx, &p, &rev);
        }
    }
    Ok(Verdict::not_ours())
}

/// A packet to a frontend: find or choose its backend and translate.
#[inline(always)]
fn service(
    ctx: &XdpContext,
    p: &Parsed,
    flow: &FlowKey,
    fe: &Frontend,
    to_node: bool,
) -> Result<Verdict, Error> {
    let now = unsafe { bpf_ktime_get_ns() };
    // Established flow of this service: it keeps its backend, also when
    // the endpoint left the service (as kube-proxy's conntrack does). A SYN
    // on the tuple of a closed flow, or of a flow whose endpoint is gone,
    // opens a new connection that gets a backend of its own.
    if let Some(ct) = CONNTRACK.get_ptr_mut(flow) {
        // SAFETY: pointer from a successful lookup; copied, then fields written.
        let entry = unsafe { *ct };
        let reopened = p.opening()
            && (entry.flags & CT_F_CLOSING != 0 || maps::backend(entry.backend_id).is_none());
        if entry.service_id == fe.service_id && !reopened {
            let backend = Backend {
                addr_be: entry.backend_addr_be,
                port_be: entry.backend_port_be,
                flags: 0,
                pad: 0,
            };
            // SAFETY: as above.
            unsafe {
                (*ct).last_seen_ns = now;
                if p.closing() {
                    (*ct).flags |= CT_F_CLOSING;
                }
            }
            return translate(ctx, p, flow, &backend, &entry, false);
        }
    }

    if fe.backend_count == 0 {
        if fe.flags & FRONTEND_F_DROP_EMPTY != 0 {
            return Err(Error::NoLocalBackend);
        }
        return reject::reject(ctx, p);
    }
    let (backend_id, backend) = select::pick(fe, flow, now)?;
    let mut entry = CtEntry {
        backend_id,
        service_id: fe.service_id,
        snat_addr_be: 0,
        snat_port_be: 0,
        flags: 0,
        pad: 0,
        last_seen_ns: now,
        backend_addr_be: backend.addr_be,
        backend_port_be: backend.port_be,
        pad2: 0,
    };
    if backend.flags & BACKEND_F_LOCAL == 0 {
        if !to_node {
            // A ClusterIP flow to another node needs a node source address
            // the XDP path does not know yet: leave it to the stack.
            return Ok(Verdict::not_ours());
        }
        entry.flags = CT_F_SNAT;
        entry.snat_addr_be = p.daddr_be;
        entry.snat_port_be = alloc_snat_port(p, flow, &backend)?;
    }
    CONNTRACK
        .insert(flow, entry, u64::from(BPF_ANY))
        .map_err(|_| Error::MapUpdate)?;
    translate(ctx, p, flow, &backend, &entry, true)
}

/// Applies the flow's NAT and delivers: local backends through the stack,
/// remote ones straight back out of a device.
#[inline(always)]
fn translate(
    ctx: &XdpContext,
    p: &Parsed,
    flow: &FlowKey,
    backend: &Backend,
    entry: &CtEntry,
    new_flow: bool,
) -> Result<Verdict, Error> {
    if entry.flags & CT_F_SNAT == 0 {
        // Reply key as the backend's answer will carry it at TC egress.
        let rev_key = FlowKey {
            saddr_be: backend.addr_be,
            daddr_be: p.saddr_be,
            sport_be: backend.port_be,
            dport_be: p.sport_be,
            proto: p.proto,
            pad: [0; 3],
        };
        if new_flow || REV_NAT.get_ptr(rev_key).is_none() {
            let rev = RevNat {
                saddr_be: p.daddr_be,
                daddr_be: p.saddr_be,
                sport_be: p.dport_be,
                dport_be: p.sport_be,
            };
            REV_NAT
                .insert(rev_key, rev, u64::from(BPF_ANY))
                .map_err(|_| Error::MapUpdate)?;
        }
        let new = Tuple {
            saddr_be: p.saddr_be,
            daddr_be: backend.addr_be,
            sport_be: p.sport_be,
            dport_be: backend.port_be,
        };
        nat::rewrite(&packet(ctx), p, &new, false)?;
        return Ok(Verdict::new(xdp_action::XDP_PASS, stat::DNAT_LOCAL));
    }

    if !new_flow {
        // The reverse entry may have been evicted on its own: restore it.
        let rev_key = snat_rev_key(p, backend, entry.snat_port_be);
        if REV_NAT.get_ptr(rev_key).is_none() {
            REV_NAT
                .insert(rev_key, rev_nat_for(p, flow), u64::from(BPF_ANY))
                .map_err(|_| Error::MapUpdate)?;
        }
    }
    let new = Tuple {
        saddr_be: entry.snat_addr_be,
        daddr_be: backend.addr_be,
        sport_be: entry.snat_port_be,
        dport_be: backend.port_be,
    };
    forward(ctx, p, &new, stat::FORWARD_REMOTE)
}

/// Key of the reverse entry for an SNATed flow: the backend's reply to the
/// node address and allocated port.
#[inline(always)]
fn snat_rev_key(p: &Parsed, backend: &Backend, snat_port_be: u16) -> FlowKey {
    FlowKey {
        saddr_be: backend.addr_be,
        daddr_be: p.daddr_be,
        sport_be: backend.port_be,
        dport_be: snat_port_be,
        proto: p.proto,
        pad: [0; 3],
    }
}

/// What an SNATed flow's reply must become: from the NodePort to the client.
#[inline(always)]
fn rev_nat_for(p: &Parsed, flow: &FlowKey) -> RevNat {
    RevNat {
        saddr_be: p.daddr_be,
        daddr_be: flow.saddr_be,
        sport_be: p.dport_be,
        dport_be: flow.sport_be,
    }
}

/// Allocates a source port for an SNATed flow by inserting its reverse
/// entry; the first port that is free for this (node, backend) pair wins.
#[inline(always)]
fn alloc_snat_port(p: &Parsed, flow: &FlowKey, backend: &Backend) -> Result<u16, Error> {
    let span = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    let first = SNAT_PORT_MIN + (nodeport_common::flow_hash(flow) % span) as u16;
    let rev = rev_nat_for(p, flow);
    // First a port nobody holds; only then one whose flow is stale, so a
    // port rests as long as possible after its flow closed (the backend may
    // still hold the old connection in TIME_WAIT).
    let mut port = first;
    for _ in 0..SNAT_PROBES {
        let key = snat_rev_key(p, backend, port.to_be());
        if REV_NAT.insert(key, rev, u64::from(BPF_NOEXIST)).is_ok() {
            return Ok(port.to_be());
        }
        port = next_snat_port(port);
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut port = first;
    for _ in 0..SNAT_PROBES {
        let key = snat_rev_key(p, backend, port.to_be());
        if reclaimable(&key, now) {
            REV_NAT
                .insert(key, rev, u64::from(BPF_ANY))
                .map_err(|_| Error::MapUpdate)?;
            return Ok(port.to_be());
        }
        port = next_snat_port(port);
    }
    Err(Error::SnatExhausted)
}

#[inline(always)]
fn next_snat_port(port: u16) -> u16 {
    if port == SNAT_PORT_MAX {
        SNAT_PORT_MIN
    } else {
        port + 1
    }
}

/// Whether the SNAT port behind reverse entry `key` is free again: its flow
/// is gone, closed a while ago, or idle for long. A stale flow's conntrack
/// entry goes with it, so the old client tuple cannot claim the port again.
#[inline(always)]
fn reclaimable(key: &FlowKey, now: u64) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(old) = REV_NAT.get_ptr(key).map(|r| unsafe { *r }) else {
        return true;
    };
    let ct_key = old.client_flow(key.proto);
    // SAFETY: the value is copied out at once.
    let Some(ct) = CONNTRACK.get_ptr(ct_key).map(|c| unsafe { *c }) else {
        return true;
    };
    if ct.flags & CT_F_SNAT == 0 || ct.snat_port_be != key.dport_be {
        // The client's tuple moved on to another port: this entry is orphaned.
        return true;
    }
    let age = now.wrapping_sub(ct.last_seen_ns);
    let idle = if key.proto == PROTO_UDP {
        SNAT_REUSE_IDLE_UDP_NS
    } else {
        SNAT_REUSE_IDLE_NS
    };
    let stale = (ct.flags & CT_F_CLOSING != 0 && age > SNAT_REUSE_CLOSED_NS) || age > idle;
    if stale {
        let _ = CONNTRACK.remove(ct_key);
    }
    stale
}

/// A backend on another node answered an SNATed flow: restore the NodePort
/// as source and the client as destination, and send it back out.
#[inline(always)]
fn reply_from_remote(ctx: &XdpContext, p: &Parsed, rev: &RevNat) -> Result<Verdict, Error> {
    if p.closing() {
        let ct_key = rev.client_flow(p.proto);
        if let Some(ct) = CONNTRACK.get_ptr_mut(ct_key) {
            // SAFETY: pointer from a successful lookup; two fields written.
            unsafe {
                (*ct).flags |= CT_F_CLOSING;
                (*ct).last_seen_ns = bpf_ktime_get_ns();
            }
        }
    }
    let new = Tuple {
        saddr_be: rev.saddr_be,
        daddr_be: rev.daddr_be,
        sport_be: rev.sport_be,
        dport_be: rev.dport_be,
    };
    forward(ctx, p, &new, stat::REPLY_REMOTE)
}

/// Rewrites the packet to `new`, looks up the next hop and transmits it
/// (`XDP_TX` on the same device, redirect to another).
#[inline(always)]
fn forward(ctx: &XdpContext, p: &Parsed, new: &Tuple, stat: u32) -> Result<Verdict, Error> {
    let tot_len = p.ip_len(&packet(ctx))?;
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = p.proto;
    params.sport = new.sport_be;
    params.dport = new.dport_be;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.__bindgen_anon_3.ipv4_src = new.saddr_be;
    params.__bindgen_anon_4.ipv4_dst = new.daddr_be;
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
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return Err(Error::Fib);
    }
    // Pointers are taken anew after the helper.
    let pkt = packet(ctx);
    nat::rewrite(&pkt, p, new, true)?;
    pkt.write::<[u8; 6]>(0, params.dmac)?;
    pkt.write::<[u8; 6]>(6, params.smac)?;
    if params.ifindex == ctx.ingress_ifindex() as u32 {
        return Ok(Verdict::transmit(params.ifindex, stat));
    }
    // SAFETY: plain helper call; the result is an XDP action.
    let action = unsafe { bpf_redirect(params.ifindex, 0) } as u32;
    Ok(Verdict::new(action, stat))
}
