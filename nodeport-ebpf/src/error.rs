//! Outcomes of the programs: a [`Verdict`] on success, an [`Error`] on
//! failure. Both become the program's return code and bump one per-CPU
//! counter (never a per-packet log line).

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action};
use nodeport_common::stat;

use crate::{counters::outcome, maps::count};

/// What to do with a packet the program handled, and which counter says so.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub stat: u32,
    /// The device a frame is sent back out of (`XDP_TX` / redirect), whose
    /// transmit the kernel reports in its tracepoints; 0: none.
    pub tx_ifindex: u32,
}

impl Verdict {
    #[inline(always)]
    pub const fn new(action: u32, stat: u32) -> Self {
        Self {
            action,
            stat,
            tx_ifindex: 0,
        }
    }

    /// A frame sent out again by `action` (`XDP_TX`, or `XDP_REDIRECT` from
    /// a redirect helper) after arriving on `ingress_ifindex`.
    #[inline(always)]
    pub const fn sent(action: u32, stat: u32, ingress_ifindex: u32) -> Self {
        Self {
            action,
            stat,
            tx_ifindex: ingress_ifindex,
        }
    }

    /// Not ours: let the stack have it, untouched.
    #[inline(always)]
    pub const fn not_ours() -> Self {
        Self::new(xdp_action::XDP_PASS, stat::PASS_NOT_SERVICE)
    }

    /// Send the packet back out of the device it arrived on: `XDP_TX`, or a
    /// redirect to the same device where the device asks for it (native
    /// mode only).
    #[inline(always)]
    pub fn transmit(ingress_ifindex: u32, device: &crate::maps::DeviceInfo, stat: u32) -> Self {
        // In generic mode `XDP_TX` goes through the device's transmit path;
        // a generic redirect refuses skbs over the MTU (GSO, GRO ones).
        if device.redirect_tx() && !device.skb_mode() {
            // SAFETY: plain helper call; the result is an XDP action.
            let action = unsafe { aya_ebpf::helpers::bpf_redirect(ingress_ifindex, 0) } as u32;
            Self::sent(action, stat, ingress_ifindex)
        } else {
            Self::sent(xdp_action::XDP_TX, stat, ingress_ifindex)
        }
    }

    #[inline(always)]
    pub fn finish(self) -> u32 {
        count(self.stat);
        if self.tx_ifindex != 0
            && (self.action == xdp_action::XDP_TX || self.action == xdp_action::XDP_REDIRECT)
        {
            crate::maps::arm_tx(self.tx_ifindex);
        }
        self.action
    }

    /// Socket hooks: the call goes ahead (1) unless the verdict refuses it
    /// (0, with the error the program set); the counter tells what was done.
    #[inline(always)]
    pub fn finish_sock(self) -> i32 {
        count(self.stat);
        i32::from(!matches!(
            self.stat,
            stat::BIND_REFUSED | stat::SOCK_NO_LOCAL_BACKEND
        ))
    }

    /// TC: `XDP_PASS` maps to "continue" so other programs still see the
    /// packet; anything the TC program rewrote is `TC_ACT_OK`.
    #[inline(always)]
    pub fn finish_tc(self) -> i32 {
        count(self.stat);
        if self.stat == stat::PASS_NOT_SERVICE {
            TC_ACT_UNSPEC
        } else {
            TC_ACT_OK
        }
    }
}

/// Why a packet could not be handled as intended.
#[derive(Clone, Copy)]
pub enum Error {
    /// A header is shorter than it claims: the stack gets it and drops it.
    Truncated,
    /// A later fragment whose first fragment was not seen: the stack gets
    /// it untouched.
    Fragment,
    /// An IPv4 header this program does not serve: of another length (the
    /// entry points hand it to the copy for its length, `options`), or
    /// with a source route or malformed options (passed untouched).
    IpOptions,
    /// A frontend's slot or backend vanished (an update is in progress).
    BackendMissing,
    /// No route or neighbour towards the next hop.
    Fib,
    /// The TTL would expire on a packet the datapath forwards.
    Ttl,
    /// No free SNAT port.
    SnatExhausted,
    /// A map update failed.
    MapUpdate,
    /// A packet-resizing helper failed.
    Adjust,
    /// A reject could not be built from this packet.
    RejectUnsupported,
    /// `externalTrafficPolicy: Local` without a local endpoint.
    NoLocalBackend,
    /// IPv4 total length or TCP data offset disagreeing with the frame.
    BadLength,
    /// A client outside the frontend's `loadBalancerSourceRanges`.
    SourceRange,
    /// A frame the kernel would not answer (not to this host, a broadcast,
    /// multicast or invalid source, bad checksums): no reject is sent.
    RejectInvalid,
}

impl Error {
    /// What this failure means for a frontend's counters
    /// (`counters::outcome`): failures that pass the packet are served.
    #[inline(always)]
    pub const fn service_outcome(self) -> u32 {
        match self {
            Self::Truncated | Self::Fragment | Self::IpOptions | Self::BadLength => outcome::SERVED,
            Self::NoLocalBackend => outcome::DROP_NO_LOCAL_BACKEND,
            Self::SourceRange => outcome::DROP_SOURCE_RANGE,
            Self::SnatExhausted => outcome::DROP_SNAT_EXHAUSTED,
            _ => outcome::DROP_OTHER,
        }
    }

    #[inline(always)]
    const fn stat(self) -> u32 {
        match self {
            Self::Truncated => stat::PASS_TRUNCATED,
            Self::Fragment => stat::PASS_FRAGMENT,
            Self::IpOptions => stat::PASS_IP_OPTIONS,
            Self::BackendMissing => stat::DROP_BACKEND_MISSING,
            Self::SourceRange => stat::DROP_SOURCE_RANGE,
            Self::Fib => stat::DROP_FIB,
            Self::Ttl => stat::DROP_TTL,
            Self::SnatExhausted => stat::DROP_SNAT_EXHAUSTED,
            Self::MapUpdate => stat::DROP_MAP_UPDATE,
            Self::Adjust => stat::DROP_ADJUST,
            Self::RejectUnsupported => stat::DROP_REJECT_UNSUPPORTED,
            Self::NoLocalBackend => stat::DROP_NO_LOCAL_BACKEND,
            Self::BadLength => stat::PASS_BAD_LENGTH,
            Self::RejectInvalid => stat::DROP_REJECT_INVALID,
        }
    }

    /// A truncated or inconsistent packet is passed (the stack validates
    /// and drops it); every other failure is a drop.
    #[inline(always)]
    pub fn finish_xdp(self) -> u32 {
        count(self.stat());
        match self {
            Self::Truncated | Self::Fragment | Self::IpOptions | Self::BadLength => {
                xdp_action::XDP_PASS
            }
            _ => xdp_action::XDP_DROP,
        }
    }

    /// Socket hooks never fail the call: a failure leaves the address as
    /// the application gave it.
    #[inline(always)]
    pub fn finish_sock(self) -> i32 {
        count(self.stat());
        1
    }

    #[inline(always)]
    pub fn finish_tc(self) -> i32 {
        count(self.stat());
        match self {
            Self::Truncated | Self::Fragment | Self::IpOptions | Self::BadLength => TC_ACT_UNSPEC,
            _ => TC_ACT_SHOT,
        }
    }
}
