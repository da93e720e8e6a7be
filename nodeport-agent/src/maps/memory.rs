//! An in-memory [`MapWriter`], the reconciler's test double: holds a
//! [`MapState`], records every successful operation in order, keeps fake
//! flows so that the purges return meaningful counts, and can fail a
//! chosen write.

use std::collections::BTreeSet;

use nodeport_common::names;

use super::{MapError, MapState, MapWriter, TableWrite};

/// One successful operation, as recorded by [`MemoryMaps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write(TableWrite),
    PurgeFlows(BTreeSet<u32>),
    PurgeUdpFlows(BTreeSet<(u32, u32)>),
}

impl Op {
    /// The map the operation writes (the conntrack map for purges).
    #[must_use]
    pub fn map(&self) -> &'static str {
        match self {
            Self::Write(w) => w.map(),
            Self::PurgeFlows(_) | Self::PurgeUdpFlows(_) => names::CONNTRACK,
        }
    }

    /// `put`, `delete` or `purge`.
    #[must_use]
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Write(w) => w.verb(),
            Self::PurgeFlows(_) | Self::PurgeUdpFlows(_) => "purge",
        }
    }

    fn key(&self) -> String {
        match self {
            Self::Write(w) => w.key_text(),
            Self::PurgeFlows(ids) => format!("backend ids {ids:?}"),
            Self::PurgeUdpFlows(pairs) => format!("(service id, backend id) {pairs:?}"),
        }
    }
}

/// The error an injected failure reports.
#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
pub struct InjectedFailure;

type FailWhen = Box<dyn FnMut(&Op) -> bool + Send>;

/// Service maps in memory, with an operation log and failure injection.
#[derive(Default)]
pub struct MemoryMaps {
    /// What the maps hold.
    pub state: MapState,
    /// Every successful write, in order.
    pub ops: Vec<Op>,
    /// Fake established flows, one backend id each.
    flows: Vec<u32>,
    /// Fake UDP flows, (service id, backend id) each.
    udp_flows: Vec<(u32, u32)>,
    /// Ids with counters: (service ids, backend ids).
    pub counters: (BTreeSet<u32>, BTreeSet<u32>),
    /// Writes left before the injected failure (1 = the next write fails).
    fail_in: Option<usize>,
    fail_when: Option<FailWhen>,
}

impl std::fmt::Debug for MemoryMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryMaps")
            .field("state", &self.state)
            .field("ops", &self.ops)
            .field("flows", &self.flows)
            .field("udp_flows", &self.udp_flows)
            .field("counters", &self.counters)
            .field("fail_in", &self.fail_in)
            .field("fail_when", &self.fail_when.is_some())
            .finish()
    }
}

impl MemoryMaps {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps that already hold `state` (as pinned maps found on start).
    #[must_use]
    pub fn with_state(state: MapState) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }

    /// Returns and clears the operation log.
    pub fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    /// Makes the `n`-th write from now fail once (1 = the next one). Reads
    /// never fail; a failed write changes nothing and is not logged.
    pub fn fail_nth_write(&mut self, n: usize) {
        self.fail_in = Some(n.max(1));
    }

    /// Makes the first write matching `pred` fail once.
    pub fn fail_when(&mut self, pred: impl FnMut(&Op) -> bool + Send + 'static) {
        self.fail_when = Some(Box::new(pred));
    }

    /// Records a UDP flow of service `service_id` to `backend_id`.
    pub fn add_udp_flow(&mut self, service_id: u32, backend_id: u32) {
        self.udp_flows.push((service_id, backend_id));
    }

    /// How many fake UDP flows of `service_id` go to `backend_id`.
    #[must_use]
    pub fn udp_flows_to(&self, service_id: u32, backend_id: u32) -> usize {
        self.udp_flows
            .iter()
            .filter(|p| **p == (service_id, backend_id))
            .count()
    }

    /// Records an established flow to `backend_id`.
    pub fn add_flow(&mut self, backend_id: u32) {
        self.flows.push(backend_id);
    }

    /// How many fake flows go to `backend_id`.
    #[must_use]
    pub fn flows_to(&self, backend_id: u32) -> usize {
        self.flows.iter().filter(|id| **id == backend_id).count()
    }

    /// Checks the injected failures, then applies and logs `op`.
    fn record(&mut self, op: Op) -> Result<(), MapError> {
        let mut fail = false;
        if let Some(n) = self.fail_in {
            if n <= 1 {
                self.fail_in = None;
                fail = true;
            } else {
                self.fail_in = Some(n - 1);
            }
        }
        if !fail
            && let Some(pred) = self.fail_when.as_mut()
            && pred(&op)
        {
            self.fail_when = None;
            fail = true;
        }
        if fail {
            return Err(MapError {
                map: op.map(),
                op: op.verb(),
                key: op.key(),
                source: Box::new(InjectedFailure),
            });
        }
        match &op {
            Op::Write(w) => w.apply_to(&mut self.state),
            Op::PurgeFlows(ids) => self.flows.retain(|id| !ids.contains(id)),
            Op::PurgeUdpFlows(pairs) => self.udp_flows.retain(|p| !pairs.contains(p)),
        }
        self.ops.push(op);
        Ok(())
    }
}

impl MapWriter for MemoryMaps {
    fn write(&mut self, write: &TableWrite) -> Result<(), MapError> {
        self.record(Op::Write(*write))
    }

    fn purge_flows(
        &mut self,
        backend_ids: &std::collections::BTreeSet<u32>,
    ) -> Result<usize, MapError> {
        let before = self.flows.len();
        self.record(Op::PurgeFlows(backend_ids.clone()))?;
        Ok(before - self.flows.len())
    }

    fn purge_udp_flows(
        &mut self,
        service_backends: &std::collections::BTreeSet<(u32, u32)>,
    ) -> Result<usize, MapError> {
        let before = self.udp_flows.len();
        self.record(Op::PurgeUdpFlows(service_backends.clone()))?;
        Ok(before - self.udp_flows.len())
    }

    fn read_state(&self) -> Result<MapState, MapError> {
        Ok(self.state.clone())
    }

    fn forget_counters(
        &mut self,
        service_ids: &BTreeSet<u32>,
        backend_ids: &BTreeSet<u32>,
    ) -> Result<(), MapError> {
        self.counters.0.retain(|id| !service_ids.contains(id));
        self.counters.1.retain(|id| !backend_ids.contains(id));
        Ok(())
    }

    fn counter_ids(&self) -> Result<(BTreeSet<u32>, BTreeSet<u32>), MapError> {
        Ok(self.counters.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::Write;
    use nodeport_common::{Backend, BackendKey, Slot, SlotKey};

    fn put_backend(k: BackendKey, v: Backend) -> TableWrite {
        TableWrite::Backend(Write::Put(k, v))
    }

    fn delete_backend(k: BackendKey) -> TableWrite {
        TableWrite::Backend(Write::Delete(k))
    }

    #[test]
    fn writes_log_and_fail_on_demand() {
        let mut m = MemoryMaps::new();
        let k = BackendKey { backend_id: 1 };
        let v = Backend {
            addr_be: 1,
            port_be: 2,
            flags: 0,
            pad: 0,
        };
        let nine = BackendKey { backend_id: 9 };
        m.write(&put_backend(k, v)).unwrap();
        m.write(&delete_backend(nine)).unwrap();
        assert_eq!(
            m.take_ops(),
            vec![
                Op::Write(put_backend(k, v)),
                Op::Write(delete_backend(nine))
            ]
        );

        m.fail_nth_write(2);
        m.write(&delete_backend(k)).unwrap();
        let err = m.write(&put_backend(k, v)).unwrap_err();
        assert_eq!((err.map, err.op), (names::BACKENDS, "put"));
        assert!(
            m.state.backends.is_empty(),
            "a failed write changes nothing"
        );
        assert_eq!(m.take_ops(), vec![Op::Write(delete_backend(k))]);
        m.write(&put_backend(k, v)).unwrap();

        m.fail_when(|op| matches!(op, Op::Write(TableWrite::Slot(Write::Put(..)))));
        m.write(&put_backend(k, v)).unwrap();
        let slot = TableWrite::Slot(Write::Put(
            SlotKey {
                service_id: 1,
                slot: 0,
            },
            Slot { backend_id: 1 },
        ));
        assert!(m.write(&slot).is_err());
        m.write(&slot).unwrap();
        assert_eq!(m.read_state().unwrap().slots.len(), 1);
    }

    #[test]
    fn purge_counts_flows() {
        let mut m = MemoryMaps::new();
        for id in [1, 1, 2, 3] {
            m.add_flow(id);
        }
        assert_eq!(m.purge_flows(&BTreeSet::from([1, 3])).unwrap(), 3);
        assert_eq!((m.flows_to(1), m.flows_to(2)), (0, 1));
        assert_eq!(m.purge_flows(&BTreeSet::from([1])).unwrap(), 0);
    }
}
