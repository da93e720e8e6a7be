//! Per-service-frontend and per-backend counters (`service_stats`,
//! `backend_stats`): what each frontend received and what became of it,
//! what each backend was sent. Per CPU; the agent sums them.
//!
//! Both bumps are global functions taking only numbers: the verifier checks
//! each once on its own, and a call adds nothing to the states of the
//! program around it.

use aya_ebpf::bindings::BPF_NOEXIST;
use nodeport_common::{BackendStats, CONFIG_F_NO_SERVICE_COUNTERS, ServiceStats};

use crate::maps::{BACKEND_STATS, CONFIG, SERVICE_STATS};

/// What became of a frontend's packet, as [`nodeport_count_service`] takes it.
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

/// This CPU's counters of service `service_id`, made on first use.
#[inline(always)]
fn service_entry(service_id: u32) -> Option<*mut ServiceStats> {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_id) {
        return Some(s);
    }
    let _ = SERVICE_STATS.insert(
        service_id,
        ServiceStats {
            packets: 0,
            bytes: 0,
            new_flows: 0,
            rejected: 0,
            drop_no_local_backend: 0,
            drop_source_range: 0,
            drop_snat_exhausted: 0,
            drop_other: 0,
        },
        u64::from(BPF_NOEXIST),
    );
    SERVICE_STATS.get_ptr_mut(service_id)
}

/// Counts one packet of `len` bytes that reached the frontend of service
/// `service_id`, and its `outcome`. Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nodeport_count_service(service_id: u32, len: u32, outcome: u32) -> u32 {
    if off() {
        return 0;
    }
    let Some(s) = service_entry(service_id) else {
        return 0;
    };
    // SAFETY: this CPU's value of a per-CPU map entry.
    unsafe {
        (*s).packets += 1;
        (*s).bytes += u64::from(len);
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

/// Counts one packet of `len` bytes of service `service_id` sent to backend
/// `backend_id`; `new_flow` (0 or 1): the packet opened its flow, which
/// counts for the service too. Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nodeport_count_backend(
    service_id: u32,
    backend_id: u32,
    len: u32,
    new_flow: u32,
) -> u32 {
    if off() {
        return 0;
    }
    if BACKEND_STATS.get_ptr_mut(backend_id).is_none() {
        let _ = BACKEND_STATS.insert(
            backend_id,
            BackendStats {
                packets: 0,
                bytes: 0,
                new_flows: 0,
            },
            u64::from(BPF_NOEXIST),
        );
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: this CPU's value of a per-CPU map entry.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += u64::from(len);
            (*s).new_flows += u64::from(new_flow);
        }
    }
    if new_flow != 0
        && let Some(s) = service_entry(service_id)
    {
        // SAFETY: as above.
        unsafe { (*s).new_flows += 1 };
    }
    0
}
