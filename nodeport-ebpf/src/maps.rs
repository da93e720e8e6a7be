//! The datapath's BTF maps. Capacities here are defaults; the agent sets the
//! real sizes at load time, creates and pins every map under its bpffs root.

use aya_ebpf::{
    btf_maps::{HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use nodeport_common::{
    Affinity, AffinityKey, Backend, BackendKey, CtEntry, DEVICE_F_REDIRECT_TX, Device, DeviceKey,
    FlowKey, Frontend, FrontendKey, NodeAddr, NodeAddrKey, RevNat, Slot, SlotKey, SockRev,
    SockRevKey, capacity, stat,
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

/// Per-CPU counters, one per verdict reason (`nodeport_common::stat`).
#[btf_map(name = "stats")]
pub static STATS: PerCpuArray<u64, { stat::COUNT as usize }> = PerCpuArray::new();

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

/// Whether packets sent back out of `ifindex` must be redirected to it
/// rather than `XDP_TX`ed (see `DEVICE_F_REDIRECT_TX`).
#[inline(always)]
pub fn redirect_tx(ifindex: u32) -> bool {
    DEVICES
        .get_ptr(DeviceKey { ifindex })
        // SAFETY: the value is read at once.
        .is_some_and(|p| unsafe { (*p).flags } & DEVICE_F_REDIRECT_TX != 0)
}
