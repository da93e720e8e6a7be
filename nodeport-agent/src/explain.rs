//! `nodeport-agent explain`: what the datapath would do with one packet
//! arriving from outside, read from the live pinned maps without sending
//! anything. It follows the XDP program's steps (`nodeport-ebpf`'s
//! `ingress.rs` and `select.rs`) on the same maps and the same flow hash:
//! the frontend the packet matches (or why none), the flow state it would
//! hit (conntrack, ClientIP affinity, a SNATed flow's reply), the backend
//! and slot it would get, the NAT, the verdict and the counter it bumps.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use nodeport_common::{
    AffinityKey, BACKEND_F_LOCAL, CT_F_CLOSING, CT_F_SNAT, FRONTEND_F_AFFINITY,
    FRONTEND_F_DROP_EMPTY, FRONTEND_F_EXTERNAL, FRONTEND_F_SOURCE_RANGES, FlowKey, FrontendKey,
    PROTO_TCP, PROTO_UDP, SlotKey, SnatPool, addr, flow_hash, stat,
};
use serde::Serialize;

use crate::cli::{ExplainArgs, OutputFormat};
use crate::desired::describe_frontend;
use crate::maps::MapError;
use crate::maps::bpf::BpfMaps;

/// Why `explain` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("opening the maps pinned under {}", path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("`{0}` is not tcp or udp")]
    Protocol(String),
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
}

/// A packet to explain: a TCP or UDP packet from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub proto: u8,
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    /// A TCP SYN (a new connection), for a tuple conntrack has as closing.
    pub syn: bool,
}

/// What the datapath would do with a [`Packet`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The frontend matched, as `inspect services` names it.
    pub frontend: Option<String>,
    pub service_id: Option<u32>,
    /// `established` (conntrack), `affinity`, `new` (flow hash), `reply`
    /// (of an SNATed flow), or none.
    pub flow: Option<&'static str>,
    pub backend: Option<String>,
    pub backend_id: Option<u32>,
    /// The backend's slot (new flows and affinity).
    pub slot: Option<u32>,
    /// The packet as it leaves, `src -> dst`.
    pub nat: Option<String>,
    /// `XDP_PASS`, `XDP_TX`/redirect (`forward`), `XDP_DROP`, a reject.
    pub verdict: &'static str,
    /// The `stats` counter it bumps (`inspect stats`).
    pub counter: &'static str,
    /// Each step, in words.
    pub steps: Vec<String>,
}

fn counter(index: u32) -> &'static str {
    stat::NAMES[index as usize]
}

fn ip(addr_be: u32) -> Ipv4Addr {
    addr::from_be(addr_be)
}

/// `CLOCK_MONOTONIC` in nanoseconds, the datapath's `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Explains `packet` against `maps`; `device_addr` is the ingress device's
/// address (the SNAT source of external frontends), if known.
#[allow(
    clippy::too_many_lines,
    reason = "the XDP program's steps in order, read top to bottom"
)]
pub fn explain(
    maps: &BpfMaps,
    packet: &Packet,
    device_addr: Option<Ipv4Addr>,
) -> Result<Explanation, MapError> {
    let mut out = Explanation::default();
    let flow = FlowKey {
        saddr_be: addr::to_be(*packet.from.ip()),
        daddr_be: addr::to_be(*packet.to.ip()),
        sport_be: packet.from.port().to_be(),
        dport_be: packet.to.port().to_be(),
        proto: packet.proto,
        pad: [0; 3],
    };
    let to_node = maps.node_addr(flow.daddr_be)?.is_some();
    out.steps.push(if to_node {
        format!("{} is a node address that serves NodePorts", packet.to.ip())
    } else {
        format!("{} is not a node address", packet.to.ip())
    });
    let key = FrontendKey {
        addr_be: if to_node { 0 } else { flow.daddr_be },
        port_be: flow.dport_be,
        proto: flow.proto,
        pad: 0,
    };
    let mut fe = maps.frontend(key)?.map(|f| (key, f));
    if fe.is_none() {
        let config = maps.config()?;
        let to_snat_addr = to_node || device_addr == Some(*packet.to.ip());
        if to_snat_addr && SnatPool::of(&config).contains(packet.to.port()) {
            if let Some(rev) = maps.rev_nat_entry(flow)? {
                out.flow = Some("reply");
                out.steps.push(format!(
                    "port {} is in the SNAT pool and a translated flow's reply is expected on it",
                    packet.to.port()
                ));
                out.nat = Some(format!(
                    "{}:{} -> {}:{}",
                    ip(rev.saddr_be),
                    u16::from_be(rev.sport_be),
                    ip(rev.daddr_be),
                    u16::from_be(rev.dport_be)
                ));
                out.verdict = "forward (XDP_TX / redirect to the next hop)";
                out.counter = counter(stat::REPLY_REMOTE);
                return Ok(out);
            }
            out.steps.push(format!(
                "port {} is in the SNAT pool but no translated flow expects this reply",
                packet.to.port()
            ));
        }
        if to_node {
            let exact = FrontendKey {
                addr_be: flow.daddr_be,
                ..key
            };
            fe = maps.frontend(exact)?.map(|f| (exact, f));
        }
    }
    let Some((fe_key, fe)) = fe else {
        out.steps.push(format!(
            "no frontend for {}/{} (nor a NodePort on this address): not a Service's",
            packet.to,
            crate::desired::proto_name(packet.proto)
        ));
        out.verdict = "XDP_PASS (to the stack, untouched)";
        out.counter = counter(stat::PASS_NOT_SERVICE);
        return Ok(out);
    };
    out.frontend = Some(describe_frontend(&fe_key));
    out.service_id = Some(fe.service_id);
    out.steps.push(format!(
        "frontend {} (service id {}, {} backend slots)",
        describe_frontend(&fe_key),
        fe.service_id,
        fe.backend_count
    ));
    if fe.flags & FRONTEND_F_SOURCE_RANGES != 0 {
        if !maps.source_allowed(fe.service_id, flow.saddr_be)? {
            out.steps.push(format!(
                "{} is outside the Service's loadBalancerSourceRanges",
                packet.from.ip()
            ));
            out.verdict = "XDP_DROP";
            out.counter = counter(stat::DROP_SOURCE_RANGE);
            return Ok(out);
        }
        out.steps
            .push("the client is inside the loadBalancerSourceRanges".to_owned());
    }

    let now = monotonic_ns();
    let mut chosen = None;
    if let Some(ct) = maps.conntrack_entry(flow)? {
        let reopened =
            packet.syn && (ct.flags & CT_F_CLOSING != 0 || maps.backend(ct.backend_id)?.is_none());
        if ct.service_id == fe.service_id && !reopened {
            out.flow = Some("established");
            out.steps.push(format!(
                "conntrack has this flow: it keeps backend id {}",
                ct.backend_id
            ));
            let snat = (ct.flags & CT_F_SNAT != 0).then_some((ct.snat_addr_be, ct.snat_port_be));
            chosen = Some((
                ct.backend_id,
                ct.backend_addr_be,
                ct.backend_port_be,
                snat,
                None,
            ));
        } else {
            out.steps.push(
                "conntrack has this tuple for another service or a closed flow: a new flow"
                    .to_owned(),
            );
        }
    }
    let chosen = if let Some(c) = chosen {
        c
    } else {
        if fe.backend_count == 0 {
            if fe.flags & FRONTEND_F_DROP_EMPTY != 0 {
                out.steps.push(
                    "no local endpoint under a Local traffic policy, endpoints elsewhere"
                        .to_owned(),
                );
                out.verdict = "XDP_DROP";
                out.counter = counter(stat::DROP_NO_LOCAL_BACKEND);
            } else {
                out.steps.push("the Service has no endpoints".to_owned());
                out.verdict = if packet.proto == PROTO_TCP {
                    "reject (TCP RST, XDP_TX)"
                } else {
                    "reject (ICMP port unreachable, XDP_TX)"
                };
                out.counter = counter(stat::REJECT_NO_BACKEND);
            }
            return Ok(out);
        }
        let mut slot = None;
        if fe.flags & FRONTEND_F_AFFINITY != 0 {
            let timeout_ns = u64::from(fe.affinity_timeout_s) * 1_000_000_000;
            let key = AffinityKey {
                service_id: fe.service_id,
                client_addr_be: flow.saddr_be,
            };
            if let Some(a) = maps.affinity_entry(key)?
                && now.wrapping_sub(a.last_used_ns) < timeout_ns
                && a.slot < fe.backend_count
                && maps
                    .slot(SlotKey {
                        service_id: fe.service_id,
                        slot: a.slot,
                    })?
                    .is_some_and(|s| s.backend_id == a.backend_id)
            {
                out.flow = Some("affinity");
                out.steps.push(format!(
                    "ClientIP affinity holds: slot {} for {} more seconds",
                    a.slot,
                    (timeout_ns - now.wrapping_sub(a.last_used_ns)) / 1_000_000_000
                ));
                slot = Some(a.slot);
            }
        }
        let slot = slot.unwrap_or_else(|| {
            out.flow = Some("new");
            let slot = flow_hash(&flow) % fe.backend_count;
            out.steps.push(format!(
                "a new flow: the flow hash picks slot {slot} of {}",
                fe.backend_count
            ));
            slot
        });
        let Some(s) = maps.slot(SlotKey {
            service_id: fe.service_id,
            slot,
        })?
        else {
            out.steps
                .push(format!("slot {slot} is missing (an update in progress)"));
            out.verdict = "XDP_DROP";
            out.counter = counter(stat::DROP_BACKEND_MISSING);
            return Ok(out);
        };
        let Some(b) = maps.backend(s.backend_id)? else {
            out.steps.push(format!(
                "backend id {} is missing (an update in progress)",
                s.backend_id
            ));
            out.verdict = "XDP_DROP";
            out.counter = counter(stat::DROP_BACKEND_MISSING);
            return Ok(out);
        };
        let snat = if b.flags & BACKEND_F_LOCAL == 0 {
            let source = if to_node {
                Some(flow.daddr_be)
            } else if fe.flags & FRONTEND_F_EXTERNAL != 0 {
                device_addr.map(addr::to_be)
            } else {
                None
            };
            let Some(a) = source else {
                out.backend = Some(format!("{}:{}", ip(b.addr_be), u16::from_be(b.port_be)));
                out.backend_id = Some(s.backend_id);
                out.slot = Some(slot);
                out.steps.push(
                    "a ClusterIP flow from outside to a backend on another node: left to the stack"
                        .to_owned(),
                );
                out.verdict = "XDP_PASS (to the stack)";
                out.counter = counter(stat::PASS_NOT_SERVICE);
                return Ok(out);
            };
            Some((a, 0))
        } else {
            None
        };
        (s.backend_id, b.addr_be, b.port_be, snat, Some(slot))
    };
    let (backend_id, backend_addr, backend_port, snat, slot) = chosen;
    let backend = format!("{}:{}", ip(backend_addr), u16::from_be(backend_port));
    out.backend = Some(backend.clone());
    out.backend_id = Some(backend_id);
    out.slot = slot;
    match snat {
        None => {
            out.steps.push(format!(
                "backend {backend} is on this node: DNAT, the client address kept"
            ));
            out.nat = Some(format!("{} -> {backend}", packet.from));
            out.verdict = "XDP_PASS (to the local pod)";
            out.counter = counter(stat::DNAT_LOCAL);
        }
        Some((snat_addr, snat_port)) => {
            let source = if snat_port == 0 {
                format!("{}:<a free SNAT port>", ip(snat_addr))
            } else {
                format!("{}:{}", ip(snat_addr), u16::from_be(snat_port))
            };
            out.steps.push(format!(
                "backend {backend} is on another node: DNAT and SNAT to {source}"
            ));
            out.nat = Some(format!("{source} -> {backend}"));
            out.verdict = "forward (XDP_TX / redirect to the backend's node)";
            out.counter = counter(stat::FORWARD_REMOTE);
        }
    }
    Ok(out)
}

/// `nodeport-agent explain`.
pub fn run(args: &ExplainArgs) -> Result<(), ExplainError> {
    let proto = match args.proto.to_ascii_lowercase().as_str() {
        "tcp" => PROTO_TCP,
        "udp" => PROTO_UDP,
        _ => return Err(ExplainError::Protocol(args.proto.clone())),
    };
    let maps = BpfMaps::open(&args.bpffs).map_err(|source| ExplainError::Open {
        path: args.bpffs.clone(),
        source,
    })?;
    let device_addr = args.interface.as_deref().and_then(|iface| {
        crate::node_addrs::local_ipv4()
            .ok()?
            .into_iter()
            .find(|a| a.iface == iface)
            .map(|a| a.addr)
    });
    let packet = Packet {
        proto,
        from: args.from,
        to: args.to,
        syn: args.syn,
    };
    let e = explain(&maps, &packet, device_addr)?;
    let text = match args.output {
        OutputFormat::Json => serde_json::to_string_pretty(&e)?,
        OutputFormat::Table => {
            let mut t = String::new();
            for (i, step) in e.steps.iter().enumerate() {
                let _ = writeln!(t, "{}. {step}", i + 1);
            }
            let _ = writeln!(t, "verdict: {}", e.verdict);
            let _ = writeln!(t, "counter: {}", e.counter);
            if let Some(nat) = &e.nat {
                let _ = writeln!(t, "leaves as: {nat}");
            }
            t.trim_end().to_owned()
        }
    };
    println!("{text}");
    Ok(())
}
