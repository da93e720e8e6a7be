//! Where the agent's view of the datapath meets the BPF maps.
//!
//! [`MapWriter`] is the only way the agent changes datapath state: one
//! [`Write`] of one [`Table`] at a time (the reconciler computes them with
//! [`diff`]), plus flow purges. [`bpf::BpfMaps`] writes the pinned kernel
//! maps; the reconciler's tests use an in-memory double.

pub mod bpf;
pub mod fill;
#[cfg(test)]
pub mod memory;
mod walk;

use std::collections::{BTreeMap, BTreeSet};

use nodeport_common::{
    Backend, BackendKey, Frontend, FrontendKey, NodeAddr, NodeAddrKey, Slot, SlotKey, SourceRange,
    SourceRangeKey, names,
};

/// What the service maps hold (flow state excluded): read back on start to
/// adopt a running datapath, and the shape the desired state is computed in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub node_addrs: BTreeMap<NodeAddrKey, NodeAddr>,
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<SlotKey, Slot>,
    pub backends: BTreeMap<BackendKey, Backend>,
    pub source_ranges: BTreeMap<SourceRangeKey, SourceRange>,
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

/// A service map the reconciler writes: its pin name, key and value, and
/// where [`MapState`] holds it. Every write of the agent to these maps is a
/// [`Write`] of one table.
pub trait Table {
    const NAME: &'static str;
    type Key: Copy + Ord + std::fmt::Debug;
    type Value: Copy + PartialEq + std::fmt::Debug;
    /// This table's entries in `state`.
    fn entries(state: &MapState) -> &BTreeMap<Self::Key, Self::Value>;
    fn entries_mut(state: &mut MapState) -> &mut BTreeMap<Self::Key, Self::Value>;
    /// A write of this table as a write of any table.
    fn wrap(write: Write<Self::Key, Self::Value>) -> TableWrite;
    /// The write of this table that `write` is, if it is one.
    fn unwrap(write: &TableWrite) -> Option<Write<Self::Key, Self::Value>>;
}

/// One entry written or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write<K, V> {
    Put(K, V),
    Delete(K),
}

impl<K: Copy, V> Write<K, V> {
    #[must_use]
    pub fn key(&self) -> K {
        match self {
            Self::Put(k, _) | Self::Delete(k) => *k,
        }
    }

    /// `put` or `delete`.
    #[must_use]
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Put(..) => "put",
            Self::Delete(_) => "delete",
        }
    }
}

/// A write of one of the service tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableWrite {
    NodeAddr(Write<NodeAddrKey, NodeAddr>),
    Frontend(Write<FrontendKey, Frontend>),
    Slot(Write<SlotKey, Slot>),
    Backend(Write<BackendKey, Backend>),
    SourceRange(Write<SourceRangeKey, SourceRange>),
}

impl TableWrite {
    /// The map written.
    #[must_use]
    pub fn map(&self) -> &'static str {
        match self {
            Self::NodeAddr(_) => NodeAddrs::NAME,
            Self::Frontend(_) => Frontends::NAME,
            Self::Slot(_) => Slots::NAME,
            Self::Backend(_) => Backends::NAME,
            Self::SourceRange(_) => SourceRanges::NAME,
        }
    }

    /// Whether the write puts an entry.
    #[must_use]
    pub fn is_put(&self) -> bool {
        match self {
            Self::NodeAddr(w) => matches!(w, Write::Put(..)),
            Self::Frontend(w) => matches!(w, Write::Put(..)),
            Self::Slot(w) => matches!(w, Write::Put(..)),
            Self::Backend(w) => matches!(w, Write::Put(..)),
            Self::SourceRange(w) => matches!(w, Write::Put(..)),
        }
    }

    /// `put` or `delete`.
    #[must_use]
    pub fn verb(&self) -> &'static str {
        match self {
            Self::NodeAddr(w) => w.verb(),
            Self::Frontend(w) => w.verb(),
            Self::Slot(w) => w.verb(),
            Self::Backend(w) => w.verb(),
            Self::SourceRange(w) => w.verb(),
        }
    }

    /// The key written, for errors.
    #[must_use]
    pub fn key_text(&self) -> String {
        match self {
            Self::NodeAddr(w) => format!("{:?}", w.key()),
            Self::Frontend(w) => format!("{:?}", w.key()),
            Self::Slot(w) => format!("{:?}", w.key()),
            Self::Backend(w) => format!("{:?}", w.key()),
            Self::SourceRange(w) => format!("{:?}", w.key()),
        }
    }

    /// Applies the write to `state`.
    pub fn apply_to(&self, state: &mut MapState) {
        fn apply<T: Table>(state: &mut MapState, w: Write<T::Key, T::Value>) {
            match w {
                Write::Put(k, v) => {
                    T::entries_mut(state).insert(k, v);
                }
                Write::Delete(k) => {
                    T::entries_mut(state).remove(&k);
                }
            }
        }
        match *self {
            Self::NodeAddr(w) => apply::<NodeAddrs>(state, w),
            Self::Frontend(w) => apply::<Frontends>(state, w),
            Self::Slot(w) => apply::<Slots>(state, w),
            Self::Backend(w) => apply::<Backends>(state, w),
            Self::SourceRange(w) => apply::<SourceRanges>(state, w),
        }
    }
}

macro_rules! table {
    ($(#[$doc:meta])* $name:ident, $pin:expr, $field:ident, $k:ty, $v:ty, $variant:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name;

        impl Table for $name {
            const NAME: &'static str = $pin;
            type Key = $k;
            type Value = $v;
            fn entries(state: &MapState) -> &BTreeMap<$k, $v> {
                &state.$field
            }
            fn entries_mut(state: &mut MapState) -> &mut BTreeMap<$k, $v> {
                &mut state.$field
            }
            fn wrap(write: Write<$k, $v>) -> TableWrite {
                TableWrite::$variant(write)
            }
            fn unwrap(write: &TableWrite) -> Option<Write<$k, $v>> {
                match write {
                    TableWrite::$variant(w) => Some(*w),
                    _ => None,
                }
            }
        }
    };
}

table!(
    /// The node addresses that serve NodePorts.
    NodeAddrs, names::NODE_ADDRS, node_addrs, NodeAddrKey, NodeAddr, NodeAddr
);
table!(
    /// The frontends.
    Frontends, names::FRONTENDS, frontends, FrontendKey, Frontend, Frontend
);
table!(
    /// The backend slots of each frontend.
    Slots, names::BACKEND_SLOTS, slots, SlotKey, Slot, Slot
);
table!(
    /// The backends.
    Backends, names::BACKENDS, backends, BackendKey, Backend, Backend
);
table!(
    /// The `loadBalancerSourceRanges` of frontends (an LPM trie).
    SourceRanges, names::SOURCE_RANGES, source_ranges, SourceRangeKey, SourceRange, SourceRange
);

/// The writes of table `T`.
pub type Writes<T> = Vec<Write<<T as Table>::Key, <T as Table>::Value>>;

/// The writes that make table `T` of `current` hold `wanted` for the keys
/// `wanted` names (`None`: the entry goes), in key order: the puts of new
/// or changed entries, and the deletes of present ones.
#[must_use]
pub fn diff<T: Table>(
    current: &MapState,
    wanted: &BTreeMap<T::Key, Option<T::Value>>,
) -> (Writes<T>, Writes<T>) {
    let entries = T::entries(current);
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for (k, v) in wanted {
        match v {
            Some(v) if entries.get(k) != Some(v) => puts.push(Write::Put(*k, *v)),
            None if entries.contains_key(k) => deletes.push(Write::Delete(*k)),
            _ => {}
        }
    }
    (puts, deletes)
}

/// A [`MapWriter::write_all`] that stopped: the writes before `written`
/// were carried out, the one at `written` failed with `error`.
#[derive(Debug)]
pub struct Stopped {
    pub written: usize,
    pub error: MapError,
}

/// Writes datapath state. Every write is idempotent: putting an existing
/// entry overwrites it, deleting a missing one succeeds.
pub trait MapWriter {
    /// Writes one entry of a service table.
    fn write(&mut self, write: &TableWrite) -> Result<(), MapError>;
    /// Carries out `writes` in order, as many [`MapWriter::write`] calls
    /// would, stopping at the first that fails. A writer may carry out a
    /// run of puts to one map at once (one system call for many entries).
    fn write_all(&mut self, writes: &[TableWrite]) -> Result<(), Stopped> {
        for (written, write) in writes.iter().enumerate() {
            self.write(write)
                .map_err(|error| Stopped { written, error })?;
        }
        Ok(())
    }
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
    /// Deletes the per-service and per-backend counters (the
    /// `service_stats` entries naming them) of ids that no longer name
    /// anything, so that an id
    /// given out again starts from zero and memory follows what is served.
    fn forget_counters(
        &mut self,
        service_ids: &BTreeSet<u32>,
        backend_ids: &BTreeSet<u32>,
    ) -> Result<(), MapError>;
    /// The ids that have counters: (service ids, backend ids).
    fn counter_ids(&self) -> Result<(BTreeSet<u32>, BTreeSet<u32>), MapError>;
}
