//! Keys and values of every datapath map, their pin names and the constants
//! that give meaning to flag and counter fields.
//!
//! Lookup chain for a new flow: [`FrontendKey`] → [`Frontend`] (service id,
//! backend count) → [`SlotKey`] (service id, slot) → [`Slot`] (backend id) →
//! [`BackendKey`] → [`Backend`] (pod address and port). Established flows are
//! found in the conntrack map by [`FlowKey`]; replies are translated back by
//! the reverse-NAT map, keyed by the reply's own [`FlowKey`].

use core::mem::{offset_of, size_of};

/// IP protocol numbers the datapath serves.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Map names: the BTF map names in the object file, the kernel's map names
/// (at most 15 bytes) and the pin names under the bpffs root.
pub mod names {
    pub const NODE_ADDRS: &str = "node_addrs";
    pub const FRONTENDS: &str = "frontends";
    pub const BACKEND_SLOTS: &str = "backend_slots";
    pub const BACKENDS: &str = "backends";
    pub const CONNTRACK: &str = "conntrack";
    pub const REV_NAT: &str = "rev_nat";
    pub const STATS: &str = "stats";
    pub const DEVICES: &str = "devices";
    pub const AFFINITY: &str = "affinity";
    pub const SOCK_REV: &str = "sock_rev";
    pub const CONFIG: &str = "config";
    pub const DEVICE_TX: &str = "device_tx";
    pub const TX_ARMED: &str = "tx_armed";
    pub const SOURCE_RANGES: &str = "source_ranges";
    pub const FRAGMENTS: &str = "fragments";
    pub const SERVICE_STATS: &str = "service_stats";
    /// This CPU's recent `service_stats` entries, where the packets of an
    /// established flow are counted (per CPU, direct-mapped).
    pub const SERVICE_STATS_CACHE: &str = "svc_stats_cache";
    /// The programs that serve IPv4 headers with options, by header length
    /// in 32-bit words (IHL 6 to 15): one tail-call target each for XDP
    /// ingress and for TC egress.
    pub const XDP_OPTIONS: &str = "xdp_options";
    pub const TC_OPTIONS: &str = "tc_options";
    /// The XDP programs that put set-aside options back, by IHL.
    pub const XDP_RESTORE: &str = "xdp_restore";
    /// Options set aside while a packet is served (per CPU).
    pub const OPTIONS_STASH: &str = "options_stash";

    /// Maps of older datapaths that this one no longer has: removed when
    /// found pinned (at load and by `cleanup`).
    pub const RETIRED: [&str; 1] = ["backend_stats"];

    /// Every map, in the order the agent creates and pins them.
    pub const ALL: [&str; 21] = [
        NODE_ADDRS,
        FRONTENDS,
        BACKEND_SLOTS,
        BACKENDS,
        CONNTRACK,
        REV_NAT,
        STATS,
        DEVICES,
        AFFINITY,
        SOCK_REV,
        CONFIG,
        DEVICE_TX,
        TX_ARMED,
        SOURCE_RANGES,
        FRAGMENTS,
        SERVICE_STATS,
        SERVICE_STATS_CACHE,
        XDP_OPTIONS,
        TC_OPTIONS,
        XDP_RESTORE,
        OPTIONS_STASH,
    ];
}

/// Key and value size in bytes of every map, by name: what a map pinned by
/// an earlier agent must have to be adopted (a map of an older layout is
/// recreated).
pub const MAP_SIZES: [(&str, usize, usize); names::ALL.len()] = [
    (
        names::NODE_ADDRS,
        size_of::<NodeAddrKey>(),
        size_of::<NodeAddr>(),
    ),
    (
        names::FRONTENDS,
        size_of::<FrontendKey>(),
        size_of::<Frontend>(),
    ),
    (
        names::BACKEND_SLOTS,
        size_of::<SlotKey>(),
        size_of::<Slot>(),
    ),
    (
        names::BACKENDS,
        size_of::<BackendKey>(),
        size_of::<Backend>(),
    ),
    (names::CONNTRACK, size_of::<FlowKey>(), size_of::<CtEntry>()),
    (names::REV_NAT, size_of::<FlowKey>(), size_of::<RevNat>()),
    (names::STATS, size_of::<u32>(), size_of::<u64>()),
    (names::DEVICES, size_of::<DeviceKey>(), size_of::<Device>()),
    (
        names::AFFINITY,
        size_of::<AffinityKey>(),
        size_of::<Affinity>(),
    ),
    (
        names::SOCK_REV,
        size_of::<SockRevKey>(),
        size_of::<SockRev>(),
    ),
    (names::CONFIG, size_of::<u32>(), size_of::<crate::Config>()),
    (
        names::DEVICE_TX,
        size_of::<DeviceKey>(),
        size_of::<DeviceTx>(),
    ),
    (names::TX_ARMED, size_of::<u32>(), size_of::<TxArmed>()),
    (
        names::SOURCE_RANGES,
        size_of::<SourceRangeKey>(),
        size_of::<SourceRange>(),
    ),
    (
        names::FRAGMENTS,
        size_of::<FragKey>(),
        size_of::<FragPorts>(),
    ),
    (
        names::SERVICE_STATS,
        size_of::<ServiceStatsKey>(),
        size_of::<ServiceStats>(),
    ),
    (
        names::SERVICE_STATS_CACHE,
        size_of::<u32>(),
        size_of::<ServiceStatsSlot>(),
    ),
    (names::XDP_OPTIONS, size_of::<u32>(), size_of::<u32>()),
    (names::TC_OPTIONS, size_of::<u32>(), size_of::<u32>()),
    (names::XDP_RESTORE, size_of::<u32>(), size_of::<u32>()),
    (
        names::OPTIONS_STASH,
        size_of::<u32>(),
        size_of::<OptionsStash>(),
    ),
];

/// Program names (the functions in `nodeport-ebpf`).
pub mod programs {
    pub const XDP_INGRESS: &str = "nodeport_xdp";
    pub const TC_EGRESS: &str = "nodeport_tc_egress";
    /// `XDP_PASS` only: the baseline the benchmarks compare against.
    pub const XDP_PASS_BASELINE: &str = "nodeport_xdp_pass";
    /// Socket-level load balancing for traffic that starts on the node or
    /// in its pods (cgroup `connect4`, `sendmsg4`, `recvmsg4`).
    pub const SOCK_CONNECT4: &str = "nodeport_connect4";
    pub const SOCK_SENDMSG4: &str = "nodeport_sendmsg4";
    pub const SOCK_RECVMSG4: &str = "nodeport_recvmsg4";
    pub const SOCK_BIND4: &str = "nodeport_bind4";
    /// TC ingress: sends frames the XDP program handed over (next hop
    /// without a neighbour entry) with `bpf_redirect_neigh`.
    pub const TC_INGRESS: &str = "nodeport_tc_ingress";
    /// Tracepoints of the kernel's XDP transmit paths, counting the
    /// datapath's own transmit failures per device (`device_tx`).
    pub const TP_XDP_BULK_TX: &str = "nodeport_xdp_bulk_tx";
    pub const TP_XDP_DEVMAP_XMIT: &str = "nodeport_xdp_devmap_xmit";
    pub const TP_XDP_EXCEPTION: &str = "nodeport_xdp_exception";
    pub const TP_XDP_REDIRECT_ERR: &str = "nodeport_xdp_redirect_err";
    /// `(program, tracepoint name)` of every transmit tracepoint (category `xdp`).
    pub const TX_TRACEPOINTS: [(&str, &str); 4] = [
        (TP_XDP_BULK_TX, "xdp_bulk_tx"),
        (TP_XDP_DEVMAP_XMIT, "xdp_devmap_xmit"),
        (TP_XDP_EXCEPTION, "xdp_exception"),
        (TP_XDP_REDIRECT_ERR, "xdp_redirect_err"),
    ];
    /// `(index, program name)` entries of a program array.
    pub type ProgramsByIndex = [(u32, &'static str)];
    /// The programs of the `xdp_options` array, by index: 0 is
    /// [`XDP_INGRESS`] itself, IHL (6 to 15) the program that sets aside
    /// the options of an IPv4 header of IHL 32-bit words and calls
    /// [`XDP_INGRESS`] back at index 0.
    pub const XDP_STRIP: [(u32, &str); 11] = [
        (0, XDP_INGRESS),
        (6, "nodeport_xdp_strip_ihl6"),
        (7, "nodeport_xdp_strip_ihl7"),
        (8, "nodeport_xdp_strip_ihl8"),
        (9, "nodeport_xdp_strip_ihl9"),
        (10, "nodeport_xdp_strip_ihl10"),
        (11, "nodeport_xdp_strip_ihl11"),
        (12, "nodeport_xdp_strip_ihl12"),
        (13, "nodeport_xdp_strip_ihl13"),
        (14, "nodeport_xdp_strip_ihl14"),
        (15, "nodeport_xdp_strip_ihl15"),
    ];
    /// The programs of the `xdp_restore` array, by IHL: they put the
    /// options set aside back and return the verdict.
    pub const XDP_RESTORE: [(u32, &str); 10] = [
        (6, "nodeport_xdp_restore_ihl6"),
        (7, "nodeport_xdp_restore_ihl7"),
        (8, "nodeport_xdp_restore_ihl8"),
        (9, "nodeport_xdp_restore_ihl9"),
        (10, "nodeport_xdp_restore_ihl10"),
        (11, "nodeport_xdp_restore_ihl11"),
        (12, "nodeport_xdp_restore_ihl12"),
        (13, "nodeport_xdp_restore_ihl13"),
        (14, "nodeport_xdp_restore_ihl14"),
        (15, "nodeport_xdp_restore_ihl15"),
    ];
    /// The programs of the `tc_options` array, by IHL: copies of
    /// [`TC_EGRESS`] for IPv4 headers of that length.
    pub const TC_EGRESS_OPTIONS: [(u32, &str); 10] = [
        (6, "nodeport_tc_egress_ihl6"),
        (7, "nodeport_tc_egress_ihl7"),
        (8, "nodeport_tc_egress_ihl8"),
        (9, "nodeport_tc_egress_ihl9"),
        (10, "nodeport_tc_egress_ihl10"),
        (11, "nodeport_tc_egress_ihl11"),
        (12, "nodeport_tc_egress_ihl12"),
        (13, "nodeport_tc_egress_ihl13"),
        (14, "nodeport_tc_egress_ihl14"),
        (15, "nodeport_tc_egress_ihl15"),
    ];
    /// Every program array, the program that tail-calls into it (its
    /// entries are programs of the same kind) and its entries, in the
    /// order they are filled: an array is filled before the programs that
    /// call into it run.
    pub const PROGRAM_ARRAYS: [(&str, &str, &ProgramsByIndex); 3] = [
        (super::names::XDP_RESTORE, XDP_INGRESS, &XDP_RESTORE),
        (super::names::XDP_OPTIONS, XDP_INGRESS, &XDP_STRIP),
        (super::names::TC_OPTIONS, TC_EGRESS, &TC_EGRESS_OPTIONS),
    ];
}

/// Default capacities; the agent may override them at load time.
pub mod capacity {
    pub const NODE_ADDRS: u32 = 256;
    pub const DEVICES: u32 = 64;
    pub const FRONTENDS: u32 = 65_536;
    pub const BACKEND_SLOTS: u32 = 1_048_576;
    pub const BACKENDS: u32 = 262_144;
    pub const CONNTRACK: u32 = 262_144;
    pub const REV_NAT: u32 = 262_144;
    pub const AFFINITY: u32 = 65_536;
    pub const SOCK_REV: u32 = 65_536;
    pub const SOURCE_RANGES: u32 = 16_384;
    pub const FRAGMENTS: u32 = 8_192;
    /// One entry per (service, backend) pair in use, and one per service
    /// for what reached no backend.
    pub const SERVICE_STATS: u32 = 262_144;
}

/// Key of the node-address map: an IPv4 address that serves `NodePorts`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddrKey {
    pub addr_be: u32,
}

/// Value of the node-address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    /// `NODE_ADDR_F_*` bits.
    pub flags: u32,
}

/// The address serves `NodePorts` (it was selected by `--nodeport-addresses`).
pub const NODE_ADDR_F_NODEPORT: u32 = 1;

/// Key of the device map: a device the programs are attached to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    pub ifindex: u32,
}

/// Value of the device map: how the datapath transmits on this device.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// `DEVICE_F_*` bits.
    pub flags: u32,
    /// The device's own MAC address. Frames addressed to another MAC are
    /// not the node's (the stack drops them as `PACKET_OTHERHOST`) and are
    /// passed untouched; all zero: not checked.
    pub mac: [u8; 6],
    pub pad: u16,
    /// The device's IPv4 address (network order), the source of flows to
    /// external frontends (externalIPs, LoadBalancer IPs) SNATed to a
    /// backend on another node; zero: such flows are left to the stack.
    pub addr_be: u32,
}

/// Send packets back out of this device with `bpf_redirect` to itself
/// instead of `XDP_TX` (veth, where both need the peer to take XDP frames).
pub const DEVICE_F_REDIRECT_TX: u32 = 1;
/// The XDP program runs in generic (skb) mode on this device: a frame stays
/// an skb whatever the verdict, so a partial checksum stays partial and is
/// completed on transmit.
pub const DEVICE_F_SKB_MODE: u32 = 1 << 1;

/// Value of the per-CPU `device_tx` map, keyed by [`DeviceKey`]: frames the
/// datapath sent back out of a device (`XDP_TX` or redirect) that the
/// kernel reported transmitted or failed (from its XDP tracepoints). The
/// agent creates an entry for each device it attached to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceTx {
    pub sent: u64,
    pub failed: u64,
}

/// Value of the per-CPU `tx_armed` array (one entry): the device this CPU's
/// XDP program last sent a frame out of, until the kernel's transmit
/// tracepoint for it has been counted (0: none). It ties the kernel's
/// per-device events to this datapath's own transmits, also when other
/// network namespaces have devices with the same index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxArmed {
    pub ifindex: u32,
}

/// The options of an IPv4 header the XDP program set aside while it serves
/// the packet with a 20-byte header (per CPU, one packet at a time; see
/// `options` in the datapath): how many bytes, the verdict to return once
/// they are back in place, and the bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionsStash {
    /// Bytes of options set aside (0: none).
    pub len: u32,
    /// The XDP verdict of the packet, kept while the options are restored.
    pub verdict: u32,
    pub bytes: [u8; 40],
}

/// Key of the frontend map. `addr_be == 0` is a `NodePort` on any node address;
/// a set address is a `ClusterIP` (or other fixed) frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub pad: u8,
}

/// Value of the frontend map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frontend {
    /// Identifies the service port; the slots are keyed by it.
    pub service_id: u32,
    /// Number of valid slots, `0..backend_count`. Zero: reject.
    pub backend_count: u32,
    /// `FRONTEND_F_*` bits.
    pub flags: u32,
    /// `ClientIP` affinity timeout in seconds (used with `FRONTEND_F_AFFINITY`).
    pub affinity_timeout_s: u32,
}

/// `externalTrafficPolicy: Local`: only local backends, client IP kept.
pub const FRONTEND_F_LOCAL_ONLY: u32 = 1;
/// `sessionAffinity: ClientIP`.
pub const FRONTEND_F_AFFINITY: u32 = 1 << 1;
/// A `NodePort` with `externalTrafficPolicy: Local` and no local endpoint:
/// drop instead of rejecting, as kube-proxy does.
pub const FRONTEND_F_DROP_EMPTY: u32 = 1 << 2;
/// An external frontend (an `externalIPs` entry or a LoadBalancer ingress
/// IP): served for traffic from outside like a `NodePort`, backends on
/// other nodes reached with SNAT to the ingress device's address.
pub const FRONTEND_F_EXTERNAL: u32 = 1 << 3;
/// `loadBalancerSourceRanges`: only clients in one of the frontend's
/// `source_ranges` entries are served; others are dropped.
pub const FRONTEND_F_SOURCE_RANGES: u32 = 1 << 4;

/// Key of the `source_ranges` LPM trie: a prefix length, then the data it
/// covers, the service id (all 32 bits always match) and the client
/// address, network order (the range's own prefix matches). A range
/// `a.b.c.d/n` of service `id` is `{32 + n, id, a.b.c.d}`; a client is
/// looked up as `{64, id, client}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    pub prefix_len: u32,
    pub service_id: u32,
    pub addr_be: u32,
}

/// The bits of a [`SourceRangeKey`] that hold the service id.
pub const SOURCE_RANGE_SERVICE_BITS: u32 = 32;

/// The data of a [`SourceRangeKey`] (an LPM trie key after its length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeData {
    pub service_id: u32,
    pub addr_be: u32,
}

/// Value of the `source_ranges` map: the range admits its clients.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRange {
    /// 1.
    pub allowed: u32,
}

/// Key of the backend-slot map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service_id: u32,
    pub slot: u32,
}

/// Value of the backend-slot map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub backend_id: u32,
}

/// Key of the backend map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub backend_id: u32,
}

/// Value of the backend map: where a chosen flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr_be: u32,
    pub port_be: u16,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    pub pad: u8,
}

/// The backend's pod runs on this node: DNAT only, client IP preserved.
pub const BACKEND_F_LOCAL: u8 = 1;
/// The endpoint is terminating (served only as a fallback).
pub const BACKEND_F_TERMINATING: u8 = 1 << 1;

/// A flow's 5-tuple as seen in one direction (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// Conntrack value, keyed by the client's original [`FlowKey`]
/// (client → node address : nodePort).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub backend_id: u32,
    pub service_id: u32,
    /// Source address written when the flow is `SNATed` (remote backend);
    /// zero when the client address is preserved.
    pub snat_addr_be: u32,
    pub snat_port_be: u16,
    /// `CT_F_*` bits.
    pub flags: u8,
    pub pad: u8,
    /// `bpf_ktime_get_ns` of the last packet seen.
    pub last_seen_ns: u64,
    /// The backend the flow was sent to. An established TCP flow keeps it
    /// even when the endpoint leaves the Service (as kube-proxy's conntrack
    /// does); UDP flows of removed endpoints are purged by the agent.
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub pad2: u16,
}

/// The flow was SNATed to reach a backend on another node.
pub const CT_F_SNAT: u8 = 1;
/// A TCP FIN or RST was seen on the flow.
pub const CT_F_CLOSING: u8 = 1 << 1;

/// Key of the fragment map: one fragmented datagram as it arrived (IPv4
/// source, destination, identification and protocol; network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub id_be: u16,
    pub proto: u8,
    pub pad: u8,
}

/// The ports of a fragmented datagram, from its first fragment: the later
/// fragments, which carry none, follow the first one's translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragPorts {
    pub sport_be: u16,
    pub dport_be: u16,
}

/// Key of `service_stats`: a service and the backend its packets went to
/// (0: none, a packet rejected, dropped or passed before a backend was
/// chosen). One lookup per packet counts both: a service's counters are the
/// sum over its entries, a backend's the sum over the entries naming it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceStatsKey {
    pub service_id: u32,
    pub backend_id: u32,
}

/// Per-CPU counters of one service and backend ([`ServiceStatsKey`]), for
/// the packets the datapath received for the service (client → service).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    /// IPv4 total length of those packets.
    pub bytes: u64,
    /// Flows given a backend (conntrack entries created).
    pub new_flows: u64,
    /// Answered with a TCP RST / ICMP port unreachable (no endpoints).
    pub rejected: u64,
    /// `externalTrafficPolicy: Local` without a local endpoint.
    pub drop_no_local_backend: u64,
    /// A client outside `loadBalancerSourceRanges`.
    pub drop_source_range: u64,
    /// No free SNAT port towards a remote backend.
    pub drop_snat_exhausted: u64,
    /// Every other drop (route, TTL, map update, missing backend, …).
    pub drop_other: u64,
}

impl ServiceStats {
    /// Field-wise sum (of two CPUs' values).
    #[must_use]
    pub const fn plus(&self, o: &Self) -> Self {
        Self {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
            new_flows: self.new_flows + o.new_flows,
            rejected: self.rejected + o.rejected,
            drop_no_local_backend: self.drop_no_local_backend + o.drop_no_local_backend,
            drop_source_range: self.drop_source_range + o.drop_source_range,
            drop_snat_exhausted: self.drop_snat_exhausted + o.drop_snat_exhausted,
            drop_other: self.drop_other + o.drop_other,
        }
    }
}

/// One entry of `svc_stats_cache`: counters of the [`ServiceStatsKey`]
/// `key` not yet added to its `service_stats` entry. Each CPU has its own
/// array of these, indexed by [`ServiceStatsSlot::index`]: a packet whose
/// key is in its slot is counted there (an array lookup, no hash); a key
/// that finds another one in its slot moves that one's counters to
/// `service_stats` and takes the slot. A key of zeros is an empty slot
/// (service ids start at 1). A service's counters are the sum over its
/// `service_stats` entries and the slots holding its keys, on every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStatsSlot {
    pub key: ServiceStatsKey,
    pub stats: ServiceStats,
}

impl ServiceStatsSlot {
    /// Number of slots per CPU (a power of two).
    pub const SLOTS: u32 = 4096;

    /// The slot of `key`: the top bits of a multiplicative hash of it.
    #[inline(always)]
    #[must_use]
    pub const fn index(key: &ServiceStatsKey) -> u32 {
        let h = key.service_id.wrapping_mul(0x9E37_79B1) ^ key.backend_id.wrapping_mul(0x85EB_CA6B);
        h.wrapping_mul(0x2545_F491) >> (32 - Self::SLOTS.trailing_zeros())
    }
}

/// What was sent to one backend: the sum of the `service_stats` entries
/// naming it (not a map value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl BackendStats {
    /// What a `service_stats` entry counts of its backend.
    #[must_use]
    pub const fn of(s: &ServiceStats) -> Self {
        Self {
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
        }
    }

    /// Field-wise sum.
    #[must_use]
    pub const fn plus(&self, o: &Self) -> Self {
        Self {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
            new_flows: self.new_flows + o.new_flows,
        }
    }
}

/// An SNAT port whose TCP flow saw no packet for this long is free again.
pub const SNAT_REUSE_IDLE_NS: u64 = 300_000_000_000;
/// An SNAT port whose UDP flow saw no packet for this long is free again
/// (the kernel's own conntrack forgets such UDP flows after 30 s too).
pub const SNAT_REUSE_IDLE_UDP_NS: u64 = 30_000_000_000;

/// Key of the ClientIP session-affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client_addr_be: u32,
}

/// Value of the session-affinity map: the client's backend and when the
/// client last opened a flow to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affinity {
    pub backend_id: u32,
    /// The slot the backend was found in; the entry holds only while that
    /// slot still names the backend (endpoints removed or reordered end it).
    pub slot: u32,
    pub last_used_ns: u64,
}

/// Key of the socket reverse map: a UDP socket (by cookie) and the backend
/// its datagrams were sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr_be: u32,
    pub port_be: u16,
    pub pad: u16,
}

/// Value of the socket reverse map: the service address the application
/// sent to, reported back as the source of the backend's replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRev {
    pub addr_be: u32,
    pub port_be: u16,
    pub pad: u16,
}

/// Reverse-NAT value, keyed by the reply's [`FlowKey`] (backend → client, or
/// backend → node address : allocated port): the addresses and ports the
/// reply must carry when it leaves the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNat {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
}

impl RevNat {
    /// The conntrack key of the client's flow whose replies this entry
    /// translates: the tuple the reply leaves with, reversed.
    #[inline(always)]
    #[must_use]
    pub const fn client_flow(&self, proto: u8) -> FlowKey {
        FlowKey {
            saddr_be: self.daddr_be,
            daddr_be: self.saddr_be,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto,
            pad: [0; 3],
        }
    }
}

/// Indices of the per-CPU counter array: one per verdict reason.
pub mod stat {
    /// Not IPv4, not to a node address / frontend: passed untouched.
    pub const PASS_NOT_SERVICE: u32 = 0;
    /// A later fragment whose first fragment was not seen (out of order,
    /// or of a datagram the datapath does not serve): passed untouched.
    pub const PASS_FRAGMENT: u32 = 1;
    /// Headers shorter than they claim: passed to the stack, which drops them.
    pub const PASS_TRUNCATED: u32 = 2;
    /// New or established flow to a local backend: DNAT and pass.
    pub const DNAT_LOCAL: u32 = 3;
    /// Flow to a backend on another node: DNAT + SNAT, sent out again.
    pub const FORWARD_REMOTE: u32 = 4;
    /// Reply of a remote backend, translated back and sent to the client.
    pub const REPLY_REMOTE: u32 = 5;
    /// Reply of a local backend translated at TC egress.
    pub const REPLY_LOCAL: u32 = 6;
    /// Frontend without endpoints: rejected with TCP RST / ICMP unreachable.
    pub const REJECT_NO_BACKEND: u32 = 7;
    /// Frontend with `externalTrafficPolicy: Local` and no local endpoint.
    pub const DROP_NO_LOCAL_BACKEND: u32 = 8;
    /// A slot or backend entry was missing (an update in progress).
    pub const DROP_BACKEND_MISSING: u32 = 9;
    /// No route or neighbour for the backend's next hop.
    pub const DROP_FIB: u32 = 10;
    /// TTL would expire on the forwarded packet.
    pub const DROP_TTL: u32 = 11;
    /// No free SNAT port for the (node, backend) pair.
    pub const DROP_SNAT_EXHAUSTED: u32 = 12;
    /// A map update failed.
    pub const DROP_MAP_UPDATE: u32 = 13;
    /// A packet-resizing helper failed.
    pub const DROP_ADJUST: u32 = 14;
    /// A reject (RST / ICMP) could not be formed from this packet.
    pub const DROP_REJECT_UNSUPPORTED: u32 = 15;
    /// IPv4 header with options that are not served (a source route,
    /// malformed options), or a kernel where the programs serving options
    /// could not be reached: passed untouched.
    pub const PASS_IP_OPTIONS: u32 = 16;
    /// A socket's destination translated from a frontend to a backend.
    pub const SOCK_TRANSLATED: u32 = 17;
    /// A UDP reply's source translated back to the service address.
    pub const SOCK_REPLY: u32 = 18;
    /// A frame addressed to another host's MAC: passed untouched (the
    /// stack drops it, as it drops every `PACKET_OTHERHOST` frame).
    pub const PASS_OTHER_HOST: u32 = 19;
    /// The next hop has no neighbour entry yet: the frame was handed to TC
    /// ingress, which sends it with `bpf_redirect_neigh` (resolving it).
    pub const FORWARD_VIA_NEIGH: u32 = 20;
    /// TC ingress sent a handed-over frame with `bpf_redirect_neigh`.
    pub const NEIGH_REDIRECT: u32 = 21;
    /// No reject for a frame the kernel would not answer either (not to
    /// this host, broadcast/multicast/invalid source, bad checksum or
    /// length): dropped.
    pub const DROP_REJECT_INVALID: u32 = 22;
    /// A frame with a partial L4 checksum (a sender's checksum offload) was
    /// rewritten; the checksum was completed or its seed updated.
    pub const CSUM_PARTIAL: u32 = 23;
    /// A new flow's SNAT port was taken from a closed flow before its rest
    /// ended, because no rested port was found (the pool is under pressure).
    pub const SNAT_PORT_EARLY_REUSE: u32 = 24;
    /// An IPv4 total length that disagrees with the frame: passed to the
    /// stack, which drops it.
    pub const PASS_BAD_LENGTH: u32 = 25;
    /// A `bind()` of an allocated nodePort on a served node address (or the
    /// wildcard address) in the node's network namespace, refused with
    /// `EADDRINUSE`.
    pub const BIND_REFUSED: u32 = 26;
    /// A `connect()` / `sendmsg()` to a frontend under a Local traffic
    /// policy whose endpoints are all on other nodes, refused with
    /// `EHOSTUNREACH` (kube-proxy drops such traffic).
    pub const SOCK_NO_LOCAL_BACKEND: u32 = 27;
    /// A packet to a frontend with `loadBalancerSourceRanges` from a client
    /// outside them: dropped.
    pub const DROP_SOURCE_RANGE: u32 = 28;
    /// The first fragment of a served datagram: its ports were remembered
    /// for the later fragments.
    pub const FRAGMENT_FIRST: u32 = 29;
    /// A later fragment translated as its first fragment was.
    pub const FRAGMENT_FOLLOWED: u32 = 30;
    /// An ICMP error (destination unreachable, fragmentation needed, time
    /// exceeded) about a flow SNATed to a remote backend, translated and
    /// sent on to the client as if about its own packet to the frontend.
    pub const ICMP_ERROR_TO_CLIENT: u32 = 31;
    /// An ICMP error from the client's side about a reply the client got
    /// from a frontend, translated and sent on to the flow's backend as if
    /// about the backend's own reply.
    pub const ICMP_ERROR_TO_BACKEND: u32 = 32;
    /// A packet whose IPv4 header has options, set aside while it is
    /// served and put back after (`options` in the datapath).
    pub const IP_OPTIONS_SERVED: u32 = 33;

    /// Number of counters.
    pub const COUNT: u32 = 34;

    /// Human-readable names, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_service",
        "pass_fragment",
        "pass_truncated",
        "dnat_local",
        "forward_remote",
        "reply_remote",
        "reply_local",
        "reject_no_backend",
        "drop_no_local_backend",
        "drop_backend_missing",
        "drop_fib",
        "drop_ttl",
        "drop_snat_exhausted",
        "drop_map_update",
        "drop_adjust",
        "drop_reject_unsupported",
        "pass_ip_options",
        "sock_translated",
        "sock_reply",
        "pass_other_host",
        "forward_via_neigh",
        "neigh_redirect",
        "drop_reject_invalid",
        "csum_partial",
        "snat_port_early_reuse",
        "pass_bad_length",
        "bind_refused",
        "sock_no_local_backend",
        "drop_source_range",
        "fragment_first",
        "fragment_followed",
        "icmp_error_to_client",
        "icmp_error_to_backend",
        "ip_options_served",
    ];
}

// Layout guarantees: both sides and the BTF of the built object agree on these.
const _: () = {
    assert!(size_of::<NodeAddrKey>() == 4);
    assert!(size_of::<SourceRangeKey>() == 12);
    assert!(offset_of!(SourceRangeKey, service_id) == 4);
    assert!(offset_of!(SourceRangeKey, addr_be) == 8);
    assert!(size_of::<SourceRangeData>() == 8);
    assert!(size_of::<SourceRange>() == 4);
    assert!(size_of::<NodeAddr>() == 4);
    assert!(size_of::<DeviceKey>() == 4);
    assert!(size_of::<Device>() == 16);
    assert!(offset_of!(Device, mac) == 4);
    assert!(offset_of!(Device, addr_be) == 12);
    assert!(size_of::<DeviceTx>() == 16);
    assert!(size_of::<TxArmed>() == 4);
    assert!(size_of::<OptionsStash>() == 48);
    assert!(offset_of!(OptionsStash, verdict) == 4);
    assert!(offset_of!(OptionsStash, bytes) == 8);
    assert!(size_of::<FrontendKey>() == 8);
    assert!(offset_of!(FrontendKey, port_be) == 4);
    assert!(offset_of!(FrontendKey, proto) == 6);
    assert!(size_of::<Frontend>() == 16);
    assert!(offset_of!(Frontend, backend_count) == 4);
    assert!(offset_of!(Frontend, flags) == 8);
    assert!(size_of::<SlotKey>() == 8);
    assert!(size_of::<Slot>() == 4);
    assert!(size_of::<BackendKey>() == 4);
    assert!(size_of::<Backend>() == 8);
    assert!(offset_of!(Backend, port_be) == 4);
    assert!(offset_of!(Backend, flags) == 6);
    assert!(size_of::<FlowKey>() == 16);
    assert!(offset_of!(FlowKey, sport_be) == 8);
    assert!(offset_of!(FlowKey, proto) == 12);
    assert!(size_of::<CtEntry>() == 32);
    assert!(offset_of!(CtEntry, backend_addr_be) == 24);
    assert!(offset_of!(CtEntry, snat_port_be) == 12);
    assert!(offset_of!(CtEntry, last_seen_ns) == 16);
    assert!(size_of::<RevNat>() == 12);
    assert!(size_of::<AffinityKey>() == 8);
    assert!(size_of::<SockRevKey>() == 16);
    assert!(size_of::<SockRev>() == 8);
    assert!(size_of::<Affinity>() == 16);
    assert!(offset_of!(Affinity, last_used_ns) == 8);
    assert!(offset_of!(RevNat, sport_be) == 8);
    assert!(size_of::<FragKey>() == 12);
    assert!(offset_of!(FragKey, id_be) == 8);
    assert!(offset_of!(FragKey, proto) == 10);
    assert!(size_of::<FragPorts>() == 4);
    assert!(size_of::<ServiceStats>() == 64);
    assert!(offset_of!(ServiceStats, drop_other) == 56);
    assert!(size_of::<ServiceStatsKey>() == 8);
    assert!(offset_of!(ServiceStatsKey, backend_id) == 4);
    assert!(size_of::<ServiceStatsSlot>() == 72);
    assert!(offset_of!(ServiceStatsSlot, stats) == 8);
    assert!(ServiceStatsSlot::SLOTS.is_power_of_two());
};

/// A struct's name, size and `(field, offset)` list.
pub type Layout = (&'static str, usize, &'static [(&'static str, usize)]);

/// Expected layout of every map type, for checking against the BTF of the
/// built object.
pub const LAYOUTS: &[Layout] = &[
    ("NodeAddrKey", size_of::<NodeAddrKey>(), &[("addr_be", 0)]),
    (
        "SourceRangeData",
        size_of::<SourceRangeData>(),
        &[("service_id", 0), ("addr_be", 4)],
    ),
    ("SourceRange", size_of::<SourceRange>(), &[("allowed", 0)]),
    ("NodeAddr", size_of::<NodeAddr>(), &[("flags", 0)]),
    ("DeviceKey", size_of::<DeviceKey>(), &[("ifindex", 0)]),
    (
        "Device",
        size_of::<Device>(),
        &[("flags", 0), ("mac", 4), ("pad", 10), ("addr_be", 12)],
    ),
    (
        "DeviceTx",
        size_of::<DeviceTx>(),
        &[("sent", 0), ("failed", 8)],
    ),
    ("TxArmed", size_of::<TxArmed>(), &[("ifindex", 0)]),
    (
        "OptionsStash",
        size_of::<OptionsStash>(),
        &[("len", 0), ("verdict", 4), ("bytes", 8)],
    ),
    (
        "FrontendKey",
        size_of::<FrontendKey>(),
        &[("addr_be", 0), ("port_be", 4), ("proto", 6), ("pad", 7)],
    ),
    (
        "Frontend",
        size_of::<Frontend>(),
        &[
            ("service_id", 0),
            ("backend_count", 4),
            ("flags", 8),
            ("affinity_timeout_s", 12),
        ],
    ),
    (
        "SlotKey",
        size_of::<SlotKey>(),
        &[("service_id", 0), ("slot", 4)],
    ),
    ("Slot", size_of::<Slot>(), &[("backend_id", 0)]),
    ("BackendKey", size_of::<BackendKey>(), &[("backend_id", 0)]),
    (
        "Backend",
        size_of::<Backend>(),
        &[("addr_be", 0), ("port_be", 4), ("flags", 6), ("pad", 7)],
    ),
    (
        "FlowKey",
        size_of::<FlowKey>(),
        &[
            ("saddr_be", 0),
            ("daddr_be", 4),
            ("sport_be", 8),
            ("dport_be", 10),
            ("proto", 12),
            ("pad", 13),
        ],
    ),
    (
        "CtEntry",
        size_of::<CtEntry>(),
        &[
            ("backend_id", 0),
            ("service_id", 4),
            ("snat_addr_be", 8),
            ("snat_port_be", 12),
            ("flags", 14),
            ("pad", 15),
            ("last_seen_ns", 16),
            ("backend_addr_be", 24),
            ("backend_port_be", 28),
            ("pad2", 30),
        ],
    ),
    (
        "AffinityKey",
        size_of::<AffinityKey>(),
        &[("service_id", 0), ("client_addr_be", 4)],
    ),
    (
        "Affinity",
        size_of::<Affinity>(),
        &[("backend_id", 0), ("slot", 4), ("last_used_ns", 8)],
    ),
    (
        "SockRevKey",
        size_of::<SockRevKey>(),
        &[("cookie", 0), ("addr_be", 8), ("port_be", 12), ("pad", 14)],
    ),
    (
        "SockRev",
        size_of::<SockRev>(),
        &[("addr_be", 0), ("port_be", 4), ("pad", 6)],
    ),
    (
        "RevNat",
        size_of::<RevNat>(),
        &[
            ("saddr_be", 0),
            ("daddr_be", 4),
            ("sport_be", 8),
            ("dport_be", 10),
        ],
    ),
    (
        "FragKey",
        size_of::<FragKey>(),
        &[
            ("saddr_be", 0),
            ("daddr_be", 4),
            ("id_be", 8),
            ("proto", 10),
            ("pad", 11),
        ],
    ),
    (
        "FragPorts",
        size_of::<FragPorts>(),
        &[("sport_be", 0), ("dport_be", 2)],
    ),
    (
        "ServiceStats",
        size_of::<ServiceStats>(),
        &[
            ("packets", 0),
            ("bytes", 8),
            ("new_flows", 16),
            ("rejected", 24),
            ("drop_no_local_backend", 32),
            ("drop_source_range", 40),
            ("drop_snat_exhausted", 48),
            ("drop_other", 56),
        ],
    ),
    (
        "ServiceStatsKey",
        size_of::<ServiceStatsKey>(),
        &[("service_id", 0), ("backend_id", 4)],
    ),
    (
        "ServiceStatsSlot",
        size_of::<ServiceStatsSlot>(),
        &[("key", 0), ("stats", 8)],
    ),
];

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and have
    // explicit padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::NodeAddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SourceRangeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SourceRangeData {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SourceRange {}
    unsafe impl aya::Pod for super::NodeAddr {}
    unsafe impl aya::Pod for super::DeviceKey {}
    unsafe impl aya::Pod for super::Device {}
    unsafe impl aya::Pod for super::DeviceTx {}
    unsafe impl aya::Pod for super::TxArmed {}
    unsafe impl aya::Pod for super::OptionsStash {}
    unsafe impl aya::Pod for super::FrontendKey {}
    unsafe impl aya::Pod for super::Frontend {}
    unsafe impl aya::Pod for super::SlotKey {}
    unsafe impl aya::Pod for super::Slot {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::RevNat {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::SockRev {}
    unsafe impl aya::Pod for super::Affinity {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
    unsafe impl aya::Pod for super::ServiceStats {}
    unsafe impl aya::Pod for super::ServiceStatsKey {}
    unsafe impl aya::Pod for super::ServiceStatsSlot {}
}
