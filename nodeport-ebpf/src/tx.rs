//! Counting the datapath's own transmit failures per device, from the
//! kernel's XDP tracepoints. An XDP program cannot see whether a frame it
//! returned `XDP_TX` or redirected for was transmitted: a veth whose peer
//! has neither GRO nor an XDP program drops it silently, a full ring drops
//! it. The kernel reports each batch in a tracepoint; these programs add
//! its sent and dropped frames to `device_tx` of the device.
//!
//! The tracepoints fire for every network namespace, where device indices
//! repeat. A report counts only when this CPU's XDP program armed the same
//! device (`tx_armed`) since the last report, which ties it to this
//! datapath: the kernel reports within the same NAPI poll, on the same
//! CPU, before another device's program runs.

use aya_ebpf::programs::TracePointContext;
use nodeport_common::DeviceKey;

use crate::maps::{DEVICE_TX, TX_ARMED};

/// `XDP_TX` and `XDP_REDIRECT`, the actions that transmit.
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Field offsets of the `xdp` tracepoints (`events/xdp/*/format`; stable:
/// the common header is 8 bytes).
mod offset {
    pub mod bulk_tx {
        pub const IFINDEX: usize = 8;
        pub const DROPS: usize = 16;
        pub const SENT: usize = 20;
    }
    pub mod devmap_xmit {
        pub const FROM_IFINDEX: usize = 8;
        pub const DROPS: usize = 20;
        pub const SENT: usize = 24;
    }
    pub mod exception {
        pub const ACT: usize = 12;
        pub const IFINDEX: usize = 16;
    }
    pub mod redirect_err {
        pub const IFINDEX: usize = 16;
    }
}

#[inline(always)]
fn read_i32(ctx: &TracePointContext, at: usize) -> i32 {
    // SAFETY: reads a field of the tracepoint's record.
    unsafe { ctx.read_at::<i32>(at) }.unwrap_or(0)
}

/// Adds a report for `ifindex` if this CPU's XDP program armed it.
#[inline(always)]
fn account(ifindex: i32, sent: i32, failed: i32) {
    let Some(armed) = TX_ARMED.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot of this CPU.
    if ifindex <= 0 || unsafe { (*armed).ifindex } != ifindex as u32 {
        return;
    }
    // SAFETY: as above; the report is consumed.
    unsafe { (*armed).ifindex = 0 };
    let key = DeviceKey {
        ifindex: ifindex as u32,
    };
    if let Some(tx) = DEVICE_TX.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            (*tx).sent += u64::from(sent.max(0) as u32);
            (*tx).failed += u64::from(failed.max(0) as u32);
        }
    }
}

/// `xdp:xdp_bulk_tx`: a driver's `XDP_TX` batch (veth).
pub fn bulk_tx(ctx: &TracePointContext) {
    use offset::bulk_tx as o;
    account(
        read_i32(ctx, o::IFINDEX),
        read_i32(ctx, o::SENT),
        read_i32(ctx, o::DROPS),
    );
}

/// `xdp:xdp_devmap_xmit`: a batch of redirected frames.
pub fn devmap_xmit(ctx: &TracePointContext) {
    use offset::devmap_xmit as o;
    account(
        read_i32(ctx, o::FROM_IFINDEX),
        read_i32(ctx, o::SENT),
        read_i32(ctx, o::DROPS),
    );
}

/// `xdp:xdp_exception`: a frame a driver (or generic XDP) failed to send.
pub fn exception(ctx: &TracePointContext) {
    use offset::exception as o;
    let act = read_i32(ctx, o::ACT) as u32;
    if act == XDP_TX || act == XDP_REDIRECT {
        account(read_i32(ctx, o::IFINDEX), 0, 1);
    }
}

/// `xdp:xdp_redirect_err`: a redirect that failed at once.
pub fn redirect_err(ctx: &TracePointContext) {
    account(read_i32(ctx, offset::redirect_err::IFINDEX), 0, 1);
}
