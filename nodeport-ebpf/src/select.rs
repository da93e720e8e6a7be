//! Choosing a backend for a new flow: a hash of the flow's 5-tuple picks one
//! of the frontend's slots, so every packet of a flow (and a retransmitted
//! SYN) lands on the same backend even before conntrack has it.

use aya_ebpf::bindings::BPF_ANY;
use nodeport_common::{
    Affinity, AffinityKey, Backend, FRONTEND_F_AFFINITY, FlowKey, Frontend, flow_hash,
};

use crate::{
    error::Error,
    maps::{self, AFFINITY},
};

/// Picks the backend of a new flow: the client's affinity backend when the
/// frontend asks for ClientIP affinity and it is still valid, else a slot by
/// flow hash.
#[inline(always)]
pub fn pick(fe: &Frontend, flow: &FlowKey, now_ns: u64) -> Result<(u32, Backend), Error> {
    let count = fe.backend_count;
    if count == 0 {
        return Err(Error::BackendMissing);
    }
    if fe.flags & FRONTEND_F_AFFINITY == 0 {
        let slot = flow_hash(flow) % count;
        let (backend_id, backend) = by_slot(fe, slot)?;
        return Ok((backend_id, backend));
    }
    let key = AffinityKey {
        service_id: fe.service_id,
        client_addr_be: flow.saddr_be,
    };
    let timeout_ns = u64::from(fe.affinity_timeout_s) * 1_000_000_000;
    if let Some(a) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup, used at once.
        let held = unsafe { *a };
        if now_ns.wrapping_sub(held.last_used_ns) < timeout_ns
            && held.slot < count
            && maps::slot(fe.service_id, held.slot) == Some(held.backend_id)
            && let Some(backend) = maps::backend(held.backend_id)
        {
            // SAFETY: as above.
            unsafe { (*a).last_used_ns = now_ns };
            return Ok((held.backend_id, backend));
        }
    }
    let slot = flow_hash(flow) % count;
    let (backend_id, backend) = by_slot(fe, slot)?;
    let entry = Affinity {
        backend_id,
        slot,
        last_used_ns: now_ns,
    };
    AFFINITY
        .insert(key, entry, u64::from(BPF_ANY))
        .map_err(|_| Error::MapUpdate)?;
    Ok((backend_id, backend))
}

/// Picks a backend for a socket (no packet, so no 5-tuple yet): a random
/// slot, as kube-proxy's iptables rules do.
#[inline(always)]
pub fn pick_random(fe: &Frontend) -> Result<(u32, Backend), Error> {
    if fe.backend_count == 0 {
        return Err(Error::BackendMissing);
    }
    // SAFETY: plain helper call.
    let r = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() };
    by_slot(fe, r % fe.backend_count)
}

#[inline(always)]
fn by_slot(fe: &Frontend, slot: u32) -> Result<(u32, Backend), Error> {
    let backend_id = maps::slot(fe.service_id, slot).ok_or(Error::BackendMissing)?;
    let backend = maps::backend(backend_id).ok_or(Error::BackendMissing)?;
    Ok((backend_id, backend))
}
