//! The XDP program's logic (DESIGN.md section 2): node-address and frontend
//! lookup, conntrack, backend choice, DNAT to local backends, DNAT+SNAT and
//! forwarding to backends on other nodes, translation of their replies, and
//! rejects for frontends without endpoints.

use aya_ebpf::{
    bindings::{BPF_ANY, xdp_action},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use nodeport_common::{
    BACKEND_F_LOCAL, Backend, CT_F_CLOSING, CT_F_SNAT, CtEntry, FRONTEND_F_DROP_EMPTY,
    FRONTEND_F_EXTERNAL, FRONTEND_F_SOURCE_RANGES, FlowKey, Frontend, FrontendKey, RevNat, stat,
};

use crate::{
    counters::{Sent, nodeport_count, outcome},
    error::{Error, Verdict},
    frag,
    headers::{self, IPV4_MIN_LEN, Parsed},
    icmp, l4sum,
    maps::{self, CONNTRACK, DeviceInfo, REV_NAT},
    nat::{self, Leaves, Tuple},
    packet::Packet,
    reject,
    route::{self, Route},
    select, snat,
};

#[inline(always)]
fn packet(ctx: &XdpContext) -> Packet {
    Packet::new(ctx.data(), ctx.data_end())
}

/// The program's logic. A TCP or UDP packet whose IPv4 header has options
/// is `Error::IpOptions`: the entry point sets them aside and runs this
/// again (`options`).
pub fn try_ingress(ctx: &XdpContext) -> Result<Verdict, Error> {
    let pkt = packet(ctx);
    let Some(mut p) = headers::parse::<IPV4_MIN_LEN>(&pkt, pkt.len())? else {
        return icmp::translate_error(ctx, &maps::device(ctx.ingress_ifindex() as u32));
    };
    frag::follow(&mut p)?;
    let device = maps::device(ctx.ingress_ifindex() as u32);
    if let Some(mac) = device.mac()
        && pkt.read::<[u8; 6]>(0)? != mac
    {
        // Another host's frame (flooded by a bridge, a promiscuous device):
        // the stack drops it as PACKET_OTHERHOST; never serve or answer it.
        return Ok(Verdict::new(xdp_action::XDP_PASS, stat::PASS_OTHER_HOST));
    }
    let flow = p.flow();

    let to_node = maps::is_node_addr(p.daddr_be);
    let fe_key = FrontendKey {
        addr_be: if to_node { 0 } else { p.daddr_be },
        port_be: p.dport_be,
        proto: p.proto,
        pad: 0,
    };
    let mut fe = maps::frontend(fe_key);
    if fe.is_none() {
        // Replies of SNATed flows come to a node address: the one the flow
        // came to, or the ingress device's for an external frontend.
        let to_snat_addr = to_node || (device.addr_be != 0 && p.daddr_be == device.addr_be);
        if to_snat_addr && maps::snat_pool().contains(u16::from_be(p.dport_be)) {
            // SAFETY: the value is copied out at once.
            if let Some(rev) = REV_NAT.get_ptr(flow).map(|r| unsafe { *r }) {
                return reply_from_remote(ctx, &p, &rev, &device);
            }
        }
        if to_node {
            // An externalIP or LoadBalancer IP that is also a node address.
            fe = maps::frontend(FrontendKey {
                addr_be: p.daddr_be,
                ..fe_key
            });
        }
    }
    let Some(fe) = fe else {
        return Ok(Verdict::not_ours());
    };
    frag::remember(&p);
    let mut sent = Sent::default();
    let verdict = service(ctx, &p, &flow, &fe, to_node, &device, &mut sent);
    let outcome = match &verdict {
        Ok(v) if v.stat == stat::REJECT_NO_BACKEND => outcome::REJECTED,
        Ok(_) => outcome::SERVED,
        Err(e) => e.service_outcome(),
    };
    nodeport_count(
        fe.service_id,
        sent.backend_id,
        u32::from(p.ip_len),
        outcome,
        sent.new_flow,
    );
    verdict
}

/// A packet to a frontend: find or choose its backend and translate.
#[inline(always)]
fn service(
    ctx: &XdpContext,
    p: &Parsed,
    flow: &FlowKey,
    fe: &Frontend,
    to_node: bool,
    device: &DeviceInfo,
    sent: &mut Sent,
) -> Result<Verdict, Error> {
    // `loadBalancerSourceRanges`, on every packet: a change of the ranges
    // applies to established flows too.
    if fe.flags & FRONTEND_F_SOURCE_RANGES != 0 && !maps::source_allowed(fe.service_id, p.saddr_be)
    {
        return Err(Error::SourceRange);
    }
    // SAFETY: plain helper call.
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
            sent.backend_id = entry.backend_id;
            return translate(ctx, p, flow, &backend, &entry, false, device);
        }
    }

    if fe.backend_count == 0 {
        if fe.flags & FRONTEND_F_DROP_EMPTY != 0 {
            return Err(Error::NoLocalBackend);
        }
        return reject::reject(ctx, p, device);
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
        // The SNAT source: the node address the flow came to, or for an
        // external frontend (externalIP, LoadBalancer IP) the ingress
        // device's address. A ClusterIP flow from outside to another node
        // is left to the stack.
        let snat_addr_be = if to_node {
            p.daddr_be
        } else if fe.flags & FRONTEND_F_EXTERNAL != 0 && device.addr_be != 0 {
            device.addr_be
        } else {
            return Ok(Verdict::not_ours());
        };
        entry.flags = CT_F_SNAT;
        entry.snat_addr_be = snat_addr_be;
        entry.snat_port_be = snat::alloc(p, flow, &backend, snat_addr_be, &maps::config())?;
    }
    CONNTRACK
        .insert(flow, entry, u64::from(BPF_ANY))
        .map_err(|_| Error::MapUpdate)?;
    sent.backend_id = entry.backend_id;
    sent.new_flow = 1;
    translate(ctx, p, flow, &backend, &entry, true, device)
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
    device: &DeviceInfo,
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
        let pkt = packet(ctx);
        let field = l4sum::classify(ctx, &pkt, p)?;
        nat::rewrite(&packet(ctx), p, &new, field, Leaves::AsSkb, false)?;
        return Ok(Verdict::new(xdp_action::XDP_PASS, stat::DNAT_LOCAL));
    }

    if !new_flow {
        // The reverse entry may have been evicted on its own: restore it.
        let rev_key = snat::rev_key(p, backend, entry.snat_addr_be, entry.snat_port_be);
        if REV_NAT.get_ptr(rev_key).is_none() {
            REV_NAT
                .insert(rev_key, snat::rev_nat_for(p, flow), u64::from(BPF_ANY))
                .map_err(|_| Error::MapUpdate)?;
        }
    }
    let new = Tuple {
        saddr_be: entry.snat_addr_be,
        daddr_be: backend.addr_be,
        sport_be: entry.snat_port_be,
        dport_be: backend.port_be,
    };
    forward(ctx, p, &new, device, stat::FORWARD_REMOTE)
}

/// A backend on another node answered an SNATed flow: restore the NodePort
/// as source and the client as destination, and send it back out.
#[inline(always)]
fn reply_from_remote(
    ctx: &XdpContext,
    p: &Parsed,
    rev: &RevNat,
    device: &DeviceInfo,
) -> Result<Verdict, Error> {
    frag::remember(p);
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
    forward(ctx, p, &new, device, stat::REPLY_REMOTE)
}

/// Rewrites the packet to `new`, looks up its next hop and sends it there
/// (`route::send`).
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    p: &Parsed,
    new: &Tuple,
    device: &DeviceInfo,
    stat: u32,
) -> Result<Verdict, Error> {
    // In generic mode a frame may be a GSO or GRO skb far larger than the
    // MTU, which the egress device segments: no MTU check for it.
    let tot_len = if device.skb_mode() { 0 } else { p.ip_len };
    let Route::Via(hop) = route::lookup(
        ctx,
        p.proto,
        new.saddr_be,
        new.daddr_be,
        new.sport_be,
        new.dport_be,
        tot_len,
    )?
    else {
        return Err(Error::Fib);
    };
    // Pointers are taken anew after the helper.
    let pkt = packet(ctx);
    let field = l4sum::classify(ctx, &pkt, p)?;
    let leaves = if hop.leaves_as_skb(device) {
        Leaves::AsSkb
    } else {
        Leaves::AsFrame
    };
    nat::rewrite(&packet(ctx), p, new, field, leaves, true)?;
    route::send(ctx, hop, device, stat)
}
