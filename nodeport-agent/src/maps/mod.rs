//! Where the agent's view of the datapath meets the BPF maps.
//!
//! [`MapWriter`] is the only way the agent changes datapath state; the
//! reconciler drives it and is tested against [`memory::MemoryMaps`], while
//! [`bpf::BpfMaps`] writes the pinned kernel maps.

pub mod bpf;
pub mod memory;

use std::collections::{BTreeMap, BTreeSet};

use nodeport_common::{
    Backend, BackendKey, Frontend, FrontendKey, NodeAddr, NodeAddrKey, Slot, SlotKey,
};

/// What the service maps hold (flow state excluded): read back on start to
/// adopt a running datapath, and the shape the desired state is computed in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub node_addrs: BTreeMap<NodeAddrKey, NodeAddr>,
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<SlotKey, Slot>,
    pub backends: BTreeMap<BackendKey, Backend>,
}

/// A failed map operation, naming the map, the operation and the key.
#[derive(Debug, thiserror::Error)]
#[error("{op} on map {map} (key {key}) failed")]
pub struct MapError {
    pub map: &'static str,
    pub op: &'static str,
    pub key: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Writes datapath state. Every method is idempotent: putting an existing
/// entry overwrites it, deleting a missing one succeeds.
pub trait MapWriter {
    fn put_node_addr(&mut self, key: NodeAddrKey, value: NodeAddr) -> Result<(), MapError>;
    fn delete_node_addr(&mut self, key: NodeAddrKey) -> Result<(), MapError>;
    fn put_frontend(&mut self, key: FrontendKey, value: Frontend) -> Result<(), MapError>;
    fn delete_frontend(&mut self, key: FrontendKey) -> Result<(), MapError>;
    fn put_slot(&mut self, key: SlotKey, value: Slot) -> Result<(), MapError>;
    fn delete_slot(&mut self, key: SlotKey) -> Result<(), MapError>;
    fn put_backend(&mut self, key: BackendKey, value: Backend) -> Result<(), MapError>;
    fn delete_backend(&mut self, key: BackendKey) -> Result<(), MapError>;
    /// Deletes the flow state (conntrack and reverse-NAT entries) of the
    /// connectionless (UDP) flows that were sent to any of `backend_ids`, and
    /// their ClientIP affinity; TCP connections keep their backend until they
    /// end, as with kube-proxy. Returns how many flows went.
    fn purge_flows(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize, MapError>;
    /// Deletes the flow state of UDP flows of service `.0` sent to backend
    /// `.1`, for each pair: the backend left that service but still serves
    /// another, so [`MapWriter::purge_flows`] does not cover it, and a UDP
    /// client reusing its source port must reach a current backend at once.
    fn purge_udp_flows(
        &mut self,
        service_backends: &BTreeSet<(u32, u32)>,
    ) -> Result<usize, MapError>;
    /// Reads the current service maps.
    fn read_state(&self) -> Result<MapState, MapError>;
}
