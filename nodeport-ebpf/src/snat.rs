//! Choosing the source port of a flow SNATed to a backend on another node.
//!
//! The pool (`nodeport_common::config`) holds ≥ 28k ports for every (node
//! address, backend address:port, protocol); a port is held by inserting
//! the flow's reverse entry (`rev_nat`, keyed by the backend's reply to
//! that port) with `BPF_NOEXIST`. In order:
//!
//! 1. the client's own port, or its fixed image in the pool, so the same
//!    client tuple meets the backend under the same tuple each time (the
//!    backend's TIME_WAIT of the last connection then sees the client's own,
//!    newer timestamps and accepts the new SYN);
//! 2. up to [`PROBES`] random ports: the first one nobody holds, whose flow
//!    is gone, or whose flow closed at least the configured rest ago (60 s,
//!    the backend's TIME_WAIT) or went idle;
//! 3. under pressure (every probe held): the probed port whose flow closed
//!    longest ago, counted as an early reuse.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use nodeport_common::{
    Backend, CT_F_CLOSING, CT_F_SNAT, Config, FlowKey, PROTO_UDP, RevNat, SNAT_REUSE_IDLE_NS,
    SNAT_REUSE_IDLE_UDP_NS, SnatPool, stat,
};

use crate::{
    error::Error,
    headers::Parsed,
    maps::{CONNTRACK, REV_NAT, count},
};

/// Random ports probed after the preferred one: with 128, a new flow still
/// finds a free port with 99.8% odds when the pool is 95% full.
const PROBES: u32 = 128;

/// Key of the reverse entry for an SNATed flow: the backend's reply to the
/// node address `snat_addr_be` and the allocated port.
#[inline(always)]
pub fn rev_key(p: &Parsed, backend: &Backend, snat_addr_be: u32, snat_port_be: u16) -> FlowKey {
    FlowKey {
        saddr_be: backend.addr_be,
        daddr_be: snat_addr_be,
        sport_be: backend.port_be,
        dport_be: snat_port_be,
        proto: p.proto,
        pad: [0; 3],
    }
}

/// What an SNATed flow's reply must become: from the NodePort to the client.
#[inline(always)]
pub fn rev_nat_for(p: &Parsed, flow: &FlowKey) -> RevNat {
    RevNat {
        saddr_be: p.daddr_be,
        daddr_be: flow.saddr_be,
        sport_be: p.dport_be,
        dport_be: flow.sport_be,
    }
}

/// Who holds a pool port, as far as a new flow is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// Nobody, or an entry whose flow is gone or rested: take it.
    Free,
    /// A flow that closed `age_ns` ago, still resting.
    Resting { age_ns: u64 },
    /// A live flow.
    Live,
}

/// Allocates a source port (network order) for a flow SNATed to the node
/// address `snat_addr_be`.
#[inline(always)]
pub fn alloc(
    p: &Parsed,
    flow: &FlowKey,
    backend: &Backend,
    snat_addr_be: u32,
    cfg: &Config,
) -> Result<u16, Error> {
    let pool = SnatPool::of(cfg);
    let size = pool.size();
    if size == 0 {
        return Err(Error::SnatExhausted);
    }
    let rev = rev_nat_for(p, flow);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let rest_ns = cfg.rest_ns();

    let preferred = pool.preferred(flow.saddr_be, u16::from_be(flow.sport_be));
    if take_if_free(p, backend, snat_addr_be, &rev, preferred, now, rest_ns)? {
        return Ok(preferred.to_be());
    }
    let mut best_port = 0u16;
    let mut best_age = 0u64;
    for _ in 0..PROBES {
        // SAFETY: plain helper call.
        let port = pool.port_at(unsafe { bpf_get_prandom_u32() });
        let key = rev_key(p, backend, snat_addr_be, port.to_be());
        if REV_NAT.insert(key, rev, u64::from(BPF_NOEXIST)).is_ok() {
            return Ok(port.to_be());
        }
        match holder(&key, &rev, now, rest_ns) {
            Holder::Free => {
                take(&key, &rev)?;
                return Ok(port.to_be());
            }
            Holder::Resting { age_ns } if age_ns >= best_age => {
                best_port = port;
                best_age = age_ns;
            }
            Holder::Resting { .. } | Holder::Live => {}
        }
    }
    if best_port != 0 {
        let key = rev_key(p, backend, snat_addr_be, best_port.to_be());
        take(&key, &rev)?;
        count(stat::SNAT_PORT_EARLY_REUSE);
        return Ok(best_port.to_be());
    }
    Err(Error::SnatExhausted)
}

/// Takes `port` when nobody holds it or its holder is free to go.
#[inline(always)]
fn take_if_free(
    p: &Parsed,
    backend: &Backend,
    snat_addr_be: u32,
    rev: &RevNat,
    port: u16,
    now: u64,
    rest_ns: u64,
) -> Result<bool, Error> {
    let key = rev_key(p, backend, snat_addr_be, port.to_be());
    if REV_NAT.insert(key, *rev, u64::from(BPF_NOEXIST)).is_ok() {
        return Ok(true);
    }
    if holder(&key, rev, now, rest_ns) == Holder::Free {
        take(&key, rev)?;
        return Ok(true);
    }
    Ok(false)
}

/// Points the reverse entry `key` at the new flow. The old flow's conntrack
/// entry (if another client tuple's) goes with it, so that tuple cannot
/// claim the port again.
#[inline(always)]
fn take(key: &FlowKey, rev: &RevNat) -> Result<(), Error> {
    // SAFETY: the value is copied out at once.
    if let Some(old) = REV_NAT.get_ptr(key).map(|r| unsafe { *r })
        && old != *rev
    {
        let _ = CONNTRACK.remove(old.client_flow(key.proto));
    }
    REV_NAT
        .insert(key, *rev, u64::from(BPF_ANY))
        .map_err(|_| Error::MapUpdate)
}

/// Who holds the port behind reverse entry `key`, for a new flow of the
/// client tuple behind `rev`.
#[inline(always)]
fn holder(key: &FlowKey, rev: &RevNat, now: u64, rest_ns: u64) -> Holder {
    // SAFETY: the value is copied out at once.
    let Some(old) = REV_NAT.get_ptr(key).map(|r| unsafe { *r }) else {
        return Holder::Free;
    };
    if old == *rev {
        // The same client tuple again: its own TIME_WAIT, its own timestamps.
        return Holder::Free;
    }
    // SAFETY: the value is copied out at once.
    let Some(ct) = CONNTRACK
        .get_ptr(old.client_flow(key.proto))
        .map(|c| unsafe { *c })
    else {
        return Holder::Free;
    };
    if ct.flags & CT_F_SNAT == 0 || ct.snat_port_be != key.dport_be {
        // The old client tuple moved on to another port: orphaned entry.
        return Holder::Free;
    }
    let age = now.wrapping_sub(ct.last_seen_ns);
    let idle = if key.proto == PROTO_UDP {
        SNAT_REUSE_IDLE_UDP_NS
    } else {
        SNAT_REUSE_IDLE_NS
    };
    if age > idle {
        return Holder::Free;
    }
    if ct.flags & CT_F_CLOSING != 0 {
        if age >= rest_ns {
            return Holder::Free;
        }
        return Holder::Resting { age_ns: age };
    }
    Holder::Live
}
