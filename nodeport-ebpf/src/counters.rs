//! Per-service-frontend and per-backend counters (`service_stats`): what
//! each frontend received, what became of it and which backend it went
//! to, in one entry per (service, backend) pair. Per CPU; the agent sums
//! them by service and by backend.
//!
//! A packet is counted in this CPU's slot of its key in `svc_stats_cache`
//! (an array lookup): the packets of an established flow keep finding
//! their key there. A key that finds another in its slot moves that one's
//! counters to its `service_stats` entry (a hash lookup) and takes the
//! slot; the agent sums both maps.
//!
//! The bump is a global function taking only numbers: the verifier checks
//! it once on its own, and the call adds nothing to the states of the
//! program around it.

use aya_ebpf::bindings::BPF_NOEXIST;
use nodeport_common::{
    CONFIG_F_NO_SERVICE_COUNTERS, ServiceStats, ServiceStatsKey, ServiceStatsSlot,
};

use crate::maps::{CONFIG, SERVICE_STATS, SERVICE_STATS_CACHE};

/// What became of a frontend's packet, as [`nodeport_count`] takes it.
pub mod outcome {
    /// Translated, delivered or passed on as the Service says.
    pub const SERVED: u32 = 0;
    /// Answered by a reject (no endpoints).
    pub const REJECTED: u32 = 1;
    /// Dropped: `externalTrafficPolicy: Local` without a local endpoint.
    pub const DROP_NO_LOCAL_BACKEND: u32 = 2;
    /// Dropped: client outside `loadBalancerSourceRanges`.
    pub const DROP_SOURCE_RANGE: u32 = 3;
    /// Dropped: no free SNAT port.
    pub const DROP_SNAT_EXHAUSTED: u32 = 4;
    /// Dropped for another reason (the node-wide `stats` tells which).
    pub const DROP_OTHER: u32 = 5;
}

/// Whether the agent asked for no per-service and per-backend counters.
#[inline(always)]
fn off() -> bool {
    // SAFETY: one field read from the array's value.
    CONFIG
        .get_ptr(0)
        .is_some_and(|c| unsafe { (*c).flags } & CONFIG_F_NO_SERVICE_COUNTERS != 0)
}

/// The first value of a new entry. Read-only data rather than a local, so
/// that the call's stack stays small beside the program's (the verifier
/// limits the stack of a call chain to 512 bytes).
static ZERO: ServiceStats = ServiceStats {
    packets: 0,
    bytes: 0,
    new_flows: 0,
    rejected: 0,
    drop_no_local_backend: 0,
    drop_source_range: 0,
    drop_snat_exhausted: 0,
    drop_other: 0,
};

/// What became of a frontend's packet beyond its outcome: the backend it
/// was sent to (0: none) and whether it opened its flow (0 or 1). Filled
/// on the way through the service, counted once at the end.
#[derive(Clone, Copy, Default)]
pub struct Sent {
    pub backend_id: u32,
    pub new_flow: u32,
}

/// Counts one packet of `len` bytes that reached the frontend of service
/// `service_id`, its `outcome`, and where it was `sent`: in this CPU's
/// cache slot of the (service, backend) key, after moving what the slot
/// held for another key to `service_stats`. Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nodeport_count(
    service_id: u32,
    backend_id: u32,
    len: u32,
    outcome: u32,
    new_flow: u32,
) -> u32 {
    if off() {
        return 0;
    }
    let key = ServiceStatsKey {
        service_id,
        backend_id,
    };
    let Some(slot) = SERVICE_STATS_CACHE.get_ptr_mut(ServiceStatsSlot::index(&key)) else {
        return 0;
    };
    // SAFETY: this CPU's value of a per-CPU array entry.
    unsafe {
        if (*slot).key != key {
            if (*slot).key.service_id != 0 {
                flush(&(*slot).key, &(*slot).stats);
            }
            (*slot).key = key;
            (*slot).stats = ZERO;
        }
        let s = &raw mut (*slot).stats;
        (*s).packets += 1;
        (*s).bytes += u64::from(len);
        (*s).new_flows += u64::from(new_flow);
        match outcome {
            outcome::SERVED => {}
            outcome::REJECTED => (*s).rejected += 1,
            outcome::DROP_NO_LOCAL_BACKEND => (*s).drop_no_local_backend += 1,
            outcome::DROP_SOURCE_RANGE => (*s).drop_source_range += 1,
            outcome::DROP_SNAT_EXHAUSTED => (*s).drop_snat_exhausted += 1,
            _ => (*s).drop_other += 1,
        }
    }
    0
}

/// Adds `stats` to this CPU's `service_stats` entry of `key` (made if
/// missing). A full map loses them: the agent's pressure check reports it.
#[inline(always)]
fn flush(key: &ServiceStatsKey, stats: &ServiceStats) {
    let s = if let Some(s) = SERVICE_STATS.get_ptr_mut(*key) {
        s
    } else {
        #[allow(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, the 64-byte value would be copied to the stack"
        )]
        let _ = SERVICE_STATS.insert(*key, &ZERO, u64::from(BPF_NOEXIST));
        let Some(s) = SERVICE_STATS.get_ptr_mut(*key) else {
            return;
        };
        s
    };
    // SAFETY: this CPU's value of a per-CPU map entry.
    unsafe {
        (*s).packets += stats.packets;
        (*s).bytes += stats.bytes;
        (*s).new_flows += stats.new_flows;
        (*s).rejected += stats.rejected;
        (*s).drop_no_local_backend += stats.drop_no_local_backend;
        (*s).drop_source_range += stats.drop_source_range;
        (*s).drop_snat_exhausted += stats.drop_snat_exhausted;
        (*s).drop_other += stats.drop_other;
    }
}
