//! The datapath's BTF maps. Capacities here are defaults; the agent sets the
//! real sizes at load time, creates and pins every map under its bpffs root.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray,
        lpm_trie::Key,
    },
    macros::btf_map,
};
use nodeport_common::{
    Affinity, AffinityKey, Backend, BackendKey, Config, CtEntry, DEVICE_F_REDIRECT_TX,
    DEVICE_F_SKB_MODE, Device, DeviceKey, DeviceTx, FlowKey, FragKey, FragPorts, Frontend,
    FrontendKey, NodeAddr, NodeAddrKey, OptionsStash, PortRange, RevNat, SOURCE_RANGE_SERVICE_BITS,
    ServiceStats, ServiceStatsKey, ServiceStatsSlot, Slot, SlotKey, SnatPool, SockRev, SockRevKey,
    SourceRange, SourceRangeData, TxArmed, capacity, stat,
};

/// Node addresses that serve NodePorts.
#[btf_map(name = "node_addrs")]
pub static NODE_ADDRS: HashMap<NodeAddrKey, NodeAddr, { capacity::NODE_ADDRS as usize }> =
    HashMap::new();

/// (addr, port, proto) → service id, backend count, flags.
#[btf_map(name = "frontends")]
pub static FRONTENDS: HashMap<FrontendKey, Frontend, { capacity::FRONTENDS as usize }> =
    HashMap::new();

/// (service id, slot) → backend id.
#[btf_map(name = "backend_slots")]
pub static BACKEND_SLOTS: HashMap<SlotKey, Slot, { capacity::BACKEND_SLOTS as usize }> =
    HashMap::new();

/// Backend id → pod address and port.
#[btf_map(name = "backends")]
pub static BACKENDS: HashMap<BackendKey, Backend, { capacity::BACKENDS as usize }> = HashMap::new();

/// Client tuple → chosen backend and NAT state.
#[btf_map(name = "conntrack")]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry, { capacity::CONNTRACK as usize }> =
    LruHashMap::new();

/// Reply tuple → the tuple the reply must carry on its way to the client.
#[btf_map(name = "rev_nat")]
pub static REV_NAT: LruHashMap<FlowKey, RevNat, { capacity::REV_NAT as usize }> = LruHashMap::new();

/// (service id, client address) → backend, for `sessionAffinity: ClientIP`.
#[btf_map(name = "affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity, { capacity::AFFINITY as usize }> =
    LruHashMap::new();

/// (UDP socket, backend) → the service address its application sent to.
#[btf_map(name = "sock_rev")]
pub static SOCK_REV: LruHashMap<SockRevKey, SockRev, { capacity::SOCK_REV as usize }> =
    LruHashMap::new();

/// Devices the programs are attached to → how to transmit on them.
#[btf_map(name = "devices")]
pub static DEVICES: HashMap<DeviceKey, Device, { capacity::DEVICES as usize }> = HashMap::new();

/// Run-time settings written by the agent (`nodeport_common::config`).
#[btf_map(name = "config")]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Per device: frames sent back out that the kernel transmitted or failed
/// to (counted by the transmit tracepoints, `tx`).
#[btf_map(name = "device_tx")]
pub static DEVICE_TX: PerCpuHashMap<DeviceKey, DeviceTx, { capacity::DEVICES as usize }> =
    PerCpuHashMap::new();

/// Per CPU: the device this CPU's XDP program last sent a frame out of.
#[btf_map(name = "tx_armed")]
pub static TX_ARMED: PerCpuArray<TxArmed, 1> = PerCpuArray::new();

/// Per-CPU counters, one per verdict reason (`nodeport_common::stat`).
#[btf_map(name = "stats")]
pub static STATS: PerCpuArray<u64, { stat::COUNT as usize }> = PerCpuArray::new();

/// `loadBalancerSourceRanges` of frontends with `FRONTEND_F_SOURCE_RANGES`.
#[btf_map(name = "source_ranges")]
pub static SOURCE_RANGES: LpmTrie<
    SourceRangeData,
    SourceRange,
    { capacity::SOURCE_RANGES as usize },
> = LpmTrie::new();

/// First fragment of a served datagram → its ports (`frag`).
#[btf_map(name = "fragments")]
pub static FRAGMENTS: LruHashMap<FragKey, FragPorts, { capacity::FRAGMENTS as usize }> =
    LruHashMap::new();

/// Per service frontend and the backend its packets went to (key: both
/// ids; backend 0: none), per CPU: what it received. Entries are made on
/// the first such packet (not preallocated: memory follows what is served)
/// and removed by the agent with either id.
#[btf_map(name = "service_stats")]
pub static SERVICE_STATS: PerCpuHashMap<
    ServiceStatsKey,
    ServiceStats,
    { capacity::SERVICE_STATS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = PerCpuHashMap::new();

/// This CPU's recent `service_stats` entries (`ServiceStatsSlot`): the
/// packets of established flows are counted here without a hash lookup.
/// Fixed size: the slot of a key is computed with its size.
#[btf_map(name = "svc_stats_cache")]
pub static SERVICE_STATS_CACHE: PerCpuArray<
    ServiceStatsSlot,
    { ServiceStatsSlot::SLOTS as usize },
> = PerCpuArray::new();

/// Index 0: the XDP ingress program; IHL: the program setting aside the
/// options of IPv4 headers of that length before it (`options`).
#[btf_map(name = "xdp_options")]
pub static XDP_OPTIONS: ProgramArray<16> = ProgramArray::new();

/// IHL → the XDP program putting set-aside options of that header length
/// back (`options`).
#[btf_map(name = "xdp_restore")]
pub static XDP_RESTORE: ProgramArray<16> = ProgramArray::new();

/// Options set aside while the packet is served, per CPU (`options`).
#[btf_map(name = "options_stash")]
pub static OPTIONS_STASH: PerCpuArray<OptionsStash, 1> = PerCpuArray::new();

/// IHL → the TC egress program serving IPv4 headers of that length.
#[btf_map(name = "tc_options")]
pub static TC_OPTIONS: ProgramArray<16> = ProgramArray::new();

/// Bumps one counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate mid-run.
        unsafe { *p += 1 };
    }
}

/// Whether `addr_be` is a node address selected to serve NodePorts.
#[inline(always)]
pub fn is_node_addr(addr_be: u32) -> bool {
    NODE_ADDRS.get_ptr(NodeAddrKey { addr_be }).is_some()
}

/// Whether `loadBalancerSourceRanges` of service `service_id` admit the
/// client `saddr_be`.
#[inline(always)]
pub fn source_allowed(service_id: u32, saddr_be: u32) -> bool {
    let key = Key::new(
        SOURCE_RANGE_SERVICE_BITS + 32,
        SourceRangeData {
            service_id,
            addr_be: saddr_be,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

#[inline(always)]
pub fn frontend(key: FrontendKey) -> Option<Frontend> {
    // SAFETY: the value is copied out at once.
    FRONTENDS.get_ptr(key).map(|p| unsafe { *p })
}

#[inline(always)]
pub fn backend(backend_id: u32) -> Option<Backend> {
    BACKENDS
        .get_ptr(BackendKey { backend_id })
        // SAFETY: the value is copied out at once.
        .map(|p| unsafe { *p })
}

#[inline(always)]
pub fn slot(service_id: u32, slot: u32) -> Option<u32> {
    BACKEND_SLOTS
        .get_ptr(SlotKey { service_id, slot })
        // SAFETY: the value is copied out at once.
        .map(|p| unsafe { (*p).backend_id })
}

/// What the datapath knows of the device a frame arrived on (all zero for
/// a device the agent did not describe).
#[derive(Clone, Copy)]
pub struct DeviceInfo {
    flags: u32,
    mac: [u8; 6],
    /// The device's IPv4 address (network order); zero: unknown.
    pub addr_be: u32,
}

impl DeviceInfo {
    /// Packets sent back out are redirected to the device rather than
    /// `XDP_TX`ed (see `DEVICE_F_REDIRECT_TX`).
    #[inline(always)]
    pub fn redirect_tx(&self) -> bool {
        self.flags & DEVICE_F_REDIRECT_TX != 0
    }

    /// The program runs in generic (skb) mode: every frame stays an skb.
    #[inline(always)]
    pub fn skb_mode(&self) -> bool {
        self.flags & DEVICE_F_SKB_MODE != 0
    }

    /// The device's MAC, when the agent gave one.
    #[inline(always)]
    pub fn mac(&self) -> Option<[u8; 6]> {
        if self.mac == [0; 6] {
            None
        } else {
            Some(self.mac)
        }
    }
}

#[inline(always)]
pub fn device(ifindex: u32) -> DeviceInfo {
    match DEVICES.get_ptr(DeviceKey { ifindex }) {
        // SAFETY: the value is copied out at once.
        Some(p) => unsafe {
            DeviceInfo {
                flags: (*p).flags,
                mac: (*p).mac,
                addr_be: (*p).addr_be,
            }
        },
        None => DeviceInfo {
            flags: 0,
            mac: [0; 6],
            addr_be: 0,
        },
    }
}

/// The run-time settings (defaults where the agent wrote none).
#[inline(always)]
pub fn config() -> Config {
    match CONFIG.get_ptr(0) {
        // SAFETY: the value is copied out at once.
        Some(p) => unsafe { *p },
        None => Config::new([PortRange::EMPTY; 2], 0),
    }
}

/// The SNAT port pool in effect.
#[inline(always)]
pub fn snat_pool() -> SnatPool {
    SnatPool::of(&config())
}

/// Notes that this CPU just sent a frame out of `ifindex`, for the
/// transmit tracepoints to attribute the kernel's report to.
#[inline(always)]
pub fn arm_tx(ifindex: u32) {
    if let Some(p) = TX_ARMED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { (*p).ifindex = ifindex };
    }
}
