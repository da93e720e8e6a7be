//! The differ: writes into the maps only what separates them from the
//! desired state, in an order that never lets the datapath see a dangling
//! reference.
//!
//! Ids. A backend id names one `(pod address, target port)`; its flags are
//! the value (merged over every frontend that uses it), so a backend that
//! turns terminating keeps its id and its established flows. A service id
//! names one frontend key for as long as that frontend exists. Ids found in
//! the maps are adopted; new ones come from a counter that starts above every
//! id seen and skips ids in use, so a freed id is not handed out again soon
//! (flow and affinity state may still name it). Id 0 is never allocated.
//!
//! Order of one [`Reconciler::apply`]:
//!
//! 1. put new node addresses;
//! 2. put new or changed backends;
//! 3. put new or changed slots (a frontend's slots exist before its count
//!    covers them);
//! 4. put new or changed frontends (raises counts; a shrinking frontend's
//!    count drops here, before its surplus slots go);
//! 5. delete frontends no longer wanted;
//! 6. delete slots no longer wanted (of deleted or shrunk frontends);
//! 7. delete backends no longer wanted, then purge the flows that still name
//!    them;
//! 8. delete node addresses no longer wanted.
//!
//! The reconciler's view of the maps is updated after every successful
//! write, so when a write fails the next `apply` redoes exactly what is
//! missing. A purge that failed is retried by the next `apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use nodeport_common::{
    Backend, BackendKey, Frontend, FrontendKey, NODE_ADDR_F_NODEPORT, NodeAddr, NodeAddrKey,
    SOURCE_RANGE_SERVICE_BITS, Slot, SlotKey, SourceRange, SourceRangeKey,
};

use crate::counters::{CounterNames, ServiceLabel};
use crate::desired::{Desired, DesiredFrontend, ServicePortRef, describe_frontend};
use crate::ids::Ids;
use crate::maps::{
    Backends, Frontends, MapError, MapState, MapWriter, NodeAddrs, Slots, SourceRanges, Table,
    TableWrite, Write, diff,
};
use crate::store::ObjectKey;

/// A map write that failed, with the object it was for.
#[derive(Debug, thiserror::Error)]
#[error("{object}: {op} on map {map} failed", op = .source.op, map = .source.map)]
pub struct ReconcileError {
    /// What the write was for, e.g. `service default/web:http (nodePort 30080/TCP)`.
    pub object: String,
    #[source]
    pub source: MapError,
}

impl ReconcileError {
    /// The map the failed write was for.
    #[must_use]
    pub fn map(&self) -> &'static str {
        self.source.map
    }

    /// The failed operation (`put`, `delete`, `purge`).
    #[must_use]
    pub fn op(&self) -> &'static str {
        self.source.op
    }
}

/// What one [`Reconciler::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Entries written (any map).
    pub puts: usize,
    /// Entries deleted (any map).
    pub deletes: usize,
    /// Backends whose flows were purged.
    pub purged_backends: usize,
    /// Flows purged.
    pub purged_flows: usize,
    /// Services whose frontends, slots or backends were written.
    pub changed_services: BTreeSet<ObjectKey>,
    /// Frontends removed that no known service owned (found in the maps on
    /// start and no longer wanted).
    pub unowned_frontends_removed: usize,
}

impl ApplyReport {
    /// Nothing was written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.puts == 0 && self.deletes == 0 && self.purged_backends == 0
    }
}

/// A backend's identity: pod address and target port.
pub type BackendAddr = (Ipv4Addr, u16);

fn backend_addr(b: Backend) -> BackendAddr {
    (
        nodeport_common::addr::from_be(b.addr_be),
        u16::from_be(b.port_be),
    )
}

fn node_addr_key(addr: Ipv4Addr) -> NodeAddrKey {
    NodeAddrKey {
        addr_be: nodeport_common::addr::to_be(addr),
    }
}

/// Keeps the maps equal to the desired state; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Reconciler {
    /// What the maps hold, as far as successful writes tell.
    current: MapState,
    /// Backend ids by identity: those in the maps, plus any allocated by an
    /// apply that failed before writing them.
    backend_ids: Ids<BackendAddr>,
    /// Service ids by frontend, likewise.
    service_ids: Ids<FrontendKey>,
    /// Who owns each frontend, for reports and errors.
    owners: BTreeMap<FrontendKey, ServicePortRef>,
    /// Deleted backends whose flows are still to be purged.
    pending_purge: BTreeSet<u32>,
    /// (service id, backend id) pairs whose UDP flows are still to be purged.
    pending_udp_purge: BTreeSet<(u32, u32)>,
    /// What each service id and backend id with counters stands for (shared
    /// with the metrics: clones of the reconciler share it too).
    names: CounterNames,
    /// Freed (service ids, backend ids) whose counters are still to be
    /// deleted.
    pending_forget: (BTreeSet<u32>, BTreeSet<u32>),
}

/// The map entries one apply touches, with ids assigned: what each must
/// hold, `None` where it goes.
#[derive(Default)]
struct Plan {
    /// All node addresses, when they are to be synced.
    node_addrs: Option<BTreeMap<NodeAddrKey, NodeAddr>>,
    backends: BTreeMap<BackendKey, Option<Backend>>,
    /// First service using each backend id (none: draining only).
    backend_owner: BTreeMap<u32, Option<ServicePortRef>>,
    frontends: BTreeMap<FrontendKey, Option<Frontend>>,
    slots: BTreeMap<SlotKey, Option<Slot>>,
    source_ranges: BTreeMap<SourceRangeKey, Option<SourceRange>>,
    /// Service id → frontend, for naming slots (deleted frontends included).
    slot_frontends: BTreeMap<u32, FrontendKey>,
    /// (service id, backend id) pairs whose UDP flows must go.
    left: BTreeSet<(u32, u32)>,
}

/// What the maps should hold, as the reconciler asks for it: the desired
/// state as one value ([`Desired`], a full sync) or kept up to date change
/// by change ([`crate::desired::index::DesiredIndex`]).
pub trait Wanted {
    /// The frontend `key` should have, if any.
    fn frontend(&self, key: &FrontendKey) -> Option<&DesiredFrontend>;
    /// What backend `(addr, port)` should be, if it should exist.
    fn backend(&self, addr: BackendAddr) -> Option<WantedBackend<'_>>;
    /// The node addresses that serve NodePorts.
    fn node_addrs(&self) -> &BTreeSet<Ipv4Addr>;
}

/// A backend that should exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WantedBackend<'a> {
    /// Merged over every frontend that selects it (or its draining flags).
    pub flags: u8,
    /// No frontend selects it: kept so established flows drain.
    pub draining: bool,
    /// The first frontend's service port that selects it.
    pub owner: Option<&'a ServicePortRef>,
}

/// What changed since the last apply: the keys an incremental apply looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub frontends: BTreeSet<FrontendKey>,
    pub backends: BTreeSet<BackendAddr>,
    /// The node addresses may have changed.
    pub node_addrs: bool,
    /// The services the changes came from (for logs).
    pub services: BTreeSet<ObjectKey>,
}

impl Delta {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.backends.is_empty() && !self.node_addrs
    }

    /// Adds what `other` names.
    pub fn merge(&mut self, other: Delta) {
        self.frontends.extend(other.frontends);
        self.backends.extend(other.backends);
        self.node_addrs |= other.node_addrs;
        self.services.extend(other.services);
    }
}

/// A [`Desired`] seen as [`Wanted`]: backends merged over frontends.
struct FullView<'a> {
    desired: &'a Desired,
    backends: BTreeMap<BackendAddr, WantedBackend<'a>>,
}

impl<'a> FullView<'a> {
    fn new(desired: &'a Desired) -> Self {
        let mut backends: BTreeMap<BackendAddr, WantedBackend<'a>> = BTreeMap::new();
        for f in desired.frontends.values() {
            for b in &f.backends {
                backends
                    .entry((b.addr, b.port))
                    .or_insert(WantedBackend {
                        flags: 0,
                        draining: false,
                        owner: Some(&f.owner),
                    })
                    .flags |= b.flags;
            }
        }
        for b in &desired.draining {
            backends
                .entry((b.addr, b.port))
                .or_insert(WantedBackend {
                    flags: 0,
                    draining: true,
                    owner: None,
                })
                .flags |= b.flags;
        }
        Self { desired, backends }
    }
}

impl Wanted for FullView<'_> {
    fn frontend(&self, key: &FrontendKey) -> Option<&DesiredFrontend> {
        self.desired.frontends.get(key)
    }

    fn backend(&self, addr: BackendAddr) -> Option<WantedBackend<'_>> {
        self.backends.get(&addr).copied()
    }

    fn node_addrs(&self) -> &BTreeSet<Ipv4Addr> {
        &self.desired.node_addrs
    }
}

impl Reconciler {
    /// Starts from what the maps hold (after an agent restart): their ids
    /// are kept for every frontend and backend that stays.
    #[must_use]
    pub fn adopt(current: MapState) -> Self {
        let mut backend_ids = BTreeMap::new();
        // Ascending ids: of duplicate entries the lowest id is kept, the
        // others are deleted by the next apply.
        for (k, v) in &current.backends {
            backend_ids.entry(backend_addr(*v)).or_insert(k.backend_id);
        }
        let mut service_ids = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (k, v) in &current.frontends {
            // Two frontends sharing a service id would share slots: the
            // second gets a fresh id.
            if seen.insert(v.service_id) {
                service_ids.insert(*k, v.service_id);
            }
        }
        let max_backend = current
            .backends
            .keys()
            .map(|k| k.backend_id)
            .chain(current.slots.values().map(|s| s.backend_id))
            .max()
            .unwrap_or(0);
        let max_service = current
            .frontends
            .values()
            .map(|f| f.service_id)
            .chain(current.slots.keys().map(|k| k.service_id))
            .max()
            .unwrap_or(0);
        Self {
            current,
            backend_ids: Ids::adopted(backend_ids, max_backend),
            service_ids: Ids::adopted(service_ids, max_service),
            owners: BTreeMap::new(),
            pending_purge: BTreeSet::new(),
            pending_udp_purge: BTreeSet::new(),
            names: CounterNames::default(),
            pending_forget: (BTreeSet::new(), BTreeSet::new()),
        }
    }

    /// Starts over from what `maps` hold now (e.g. after writes whose outcome
    /// is unknown). Known owners are kept.
    pub fn resync(&mut self, maps: &dyn MapWriter) -> Result<(), MapError> {
        let owners = std::mem::take(&mut self.owners);
        let pending = std::mem::take(&mut self.pending_purge);
        let forget = std::mem::take(&mut self.pending_forget);
        let names = self.names.clone();
        let (next_backend, next_service) = (self.backend_ids.next(), self.service_ids.next());
        *self = Self::adopt(maps.read_state()?);
        self.owners = owners;
        self.pending_purge = pending;
        self.pending_forget = forget;
        self.names = names;
        self.backend_ids.advance_to(next_backend);
        self.service_ids.advance_to(next_service);
        Ok(())
    }

    /// What the maps hold, as far as the reconciler knows.
    #[must_use]
    pub fn state(&self) -> &MapState {
        &self.current
    }

    /// What the ids with counters stand for, kept current by every apply.
    #[must_use]
    pub fn counter_names(&self) -> CounterNames {
        self.names.clone()
    }

    /// The service id of a frontend, if it has one.
    #[must_use]
    pub fn service_id(&self, key: &FrontendKey) -> Option<u32> {
        self.service_ids.get(key)
    }

    /// The backend id of `addr:port`, if it has one.
    #[must_use]
    pub fn backend_id(&self, addr: Ipv4Addr, port: u16) -> Option<u32> {
        self.backend_ids.get(&(addr, port))
    }

    /// Writes the difference between the maps and `desired` into `w`: a
    /// full sync, which also removes whatever the maps hold that `desired`
    /// does not name.
    pub fn apply(
        &mut self,
        desired: &Desired,
        w: &mut dyn MapWriter,
    ) -> Result<ApplyReport, ReconcileError> {
        let view = FullView::new(desired);
        let delta = Delta {
            frontends: desired
                .frontends
                .keys()
                .chain(self.current.frontends.keys())
                .copied()
                .collect(),
            backends: view
                .backends
                .keys()
                .copied()
                .chain(self.current.backends.values().map(|b| backend_addr(*b)))
                .collect(),
            node_addrs: true,
            services: BTreeSet::new(),
        };
        self.write(&view, &delta, true, w)
    }

    /// Writes what `delta` says changed in `wanted` (an incremental sync):
    /// only the frontends, backends and node addresses it names are looked
    /// at, so one change costs in proportion to what it touched.
    pub fn apply_delta(
        &mut self,
        wanted: &dyn Wanted,
        delta: &Delta,
        w: &mut dyn MapWriter,
    ) -> Result<ApplyReport, ReconcileError> {
        self.write(wanted, delta, false, w)
    }

    fn write(
        &mut self,
        wanted: &dyn Wanted,
        delta: &Delta,
        full: bool,
        w: &mut dyn MapWriter,
    ) -> Result<ApplyReport, ReconcileError> {
        for k in &delta.frontends {
            if let Some(f) = wanted.frontend(k) {
                self.owners.insert(*k, f.owner.clone());
            }
        }
        let plan = self.plan(wanted, delta, full);
        let mut report = ApplyReport::default();
        self.write_puts(&plan, w, &mut report)?;
        self.write_removals(&plan, w, &mut report)?;
        self.pending_udp_purge.extend(plan.left.iter().copied());
        if !self.pending_udp_purge.is_empty() {
            let pairs = &self.pending_udp_purge;
            let object = || format!("UDP flows of backends that left a service {pairs:?}");
            report.purged_flows += w.purge_udp_flows(pairs).map_err(err(object))?;
            self.pending_udp_purge.clear();
        }

        self.name_counters(&plan, full, w)?;
        // Everything is written: forget ids and owners of what is gone.
        for k in plan.frontends.keys() {
            if !self.current.frontends.contains_key(k) {
                self.service_ids.remove(k);
                self.owners.remove(k);
            }
        }
        if full {
            let current = &self.current;
            self.service_ids
                .retain(|k, _| current.frontends.contains_key(k));
            self.owners.retain(|k, _| current.frontends.contains_key(k));
            self.backend_ids.retain(|_, id| {
                current
                    .backends
                    .contains_key(&BackendKey { backend_id: id })
            });
        }
        Ok(report)
    }

    /// Names the counters of the frontends and backends `plan` touched and
    /// notes the ids that went, whose counters
    /// [`Reconciler::forget_freed_counters`] deletes (with `full`, at once,
    /// and those of every id that names nothing).
    fn name_counters(
        &mut self,
        plan: &Plan,
        full: bool,
        w: &mut dyn MapWriter,
    ) -> Result<(), ReconcileError> {
        for k in plan.frontends.keys() {
            match (self.current.frontends.get(k), self.owners.get(k)) {
                (Some(fe), Some(owner)) => self.names.set_service(
                    fe.service_id,
                    Some(ServiceLabel {
                        namespace: Arc::clone(&owner.service.namespace),
                        name: Arc::clone(&owner.service.name),
                        port: owner.port_name.clone(),
                        protocol: crate::desired::proto_name(k.proto),
                    }),
                ),
                (None, _) => {
                    if let Some(id) = self.service_ids.get(k) {
                        self.names.set_service(id, None);
                        self.pending_forget.0.insert(id);
                    }
                }
                (Some(_), None) => {}
            }
        }
        for k in plan.backends.keys() {
            if let Some(b) = self.current.backends.get(k) {
                let (addr, port) = backend_addr(*b);
                self.names
                    .set_backend(k.backend_id, Some(SocketAddrV4::new(addr, port)));
            } else {
                self.names.set_backend(k.backend_id, None);
                self.pending_forget.1.insert(k.backend_id);
            }
        }
        if full {
            let services: BTreeSet<u32> = self
                .current
                .frontends
                .values()
                .map(|f| f.service_id)
                .collect();
            let backends = &self.current.backends;
            let held = |id: u32| backends.contains_key(&BackendKey { backend_id: id });
            let (s, b) = w
                .counter_ids()
                .map_err(err(|| String::from("counters of services and backends")))?;
            self.pending_forget
                .0
                .extend(s.into_iter().filter(|id| !services.contains(id)));
            self.pending_forget
                .1
                .extend(b.into_iter().filter(|id| !held(*id)));
            self.names.retain(|id| services.contains(&id), held);
        }
        if full {
            self.forget_freed_counters(w)?;
        }
        Ok(())
    }

    /// Deletes the counters of the ids freed since the last call (a full
    /// apply does it too); returns whether there were any. Not part of an
    /// incremental apply: it reads the whole per-CPU cache of the counters
    /// (a few milliseconds), and a freed id's counters can wait, since ids
    /// are not handed out again soon after they were freed. The agent's
    /// loop calls it once a second.
    pub fn forget_freed_counters(&mut self, w: &mut dyn MapWriter) -> Result<bool, ReconcileError> {
        if self.pending_forget.0.is_empty() && self.pending_forget.1.is_empty() {
            return Ok(false);
        }
        let (s, b) = &self.pending_forget;
        let object = || format!("counters of removed service ids {s:?} and backend ids {b:?}");
        w.forget_counters(s, b).map_err(err(object))?;
        self.pending_forget.0.clear();
        self.pending_forget.1.clear();
        Ok(true)
    }

    /// Carries out the writes of one table in order, keeping the view of
    /// the maps current and the report up to date; `object` names what a
    /// write is for (in errors), `done` notes what a successful write means.
    fn exec<T: Table>(
        &mut self,
        writes: &[Write<T::Key, T::Value>],
        w: &mut dyn MapWriter,
        report: &mut ApplyReport,
        object: impl Fn(&Self, &Write<T::Key, T::Value>) -> String,
        mut done: impl FnMut(&mut Self, &Write<T::Key, T::Value>, &mut ApplyReport),
    ) -> Result<(), ReconcileError> {
        let wrapped: Vec<TableWrite> = writes.iter().map(|wr| T::wrap(*wr)).collect();
        let outcome = w.write_all(&wrapped);
        let written = outcome
            .as_ref()
            .map_or_else(|s| s.written, |()| writes.len());
        for (write, table_write) in writes.iter().zip(&wrapped).take(written) {
            table_write.apply_to(&mut self.current);
            match write {
                Write::Put(..) => report.puts += 1,
                Write::Delete(_) => report.deletes += 1,
            }
            done(self, write, report);
        }
        outcome.map_err(|stopped| ReconcileError {
            object: object(self, &writes[stopped.written]),
            source: stopped.error,
        })
    }

    /// Steps 1-4: node addresses, backends, slots, frontends.
    fn write_puts(
        &mut self,
        plan: &Plan,
        w: &mut dyn MapWriter,
        report: &mut ApplyReport,
    ) -> Result<(), ReconcileError> {
        let node_addr_object = |_: &Self, wr: &Write<NodeAddrKey, NodeAddr>| {
            format!(
                "node address {}",
                nodeport_common::addr::from_be(wr.key().addr_be)
            )
        };
        if let Some(node_addrs) = &plan.node_addrs {
            let wanted = node_addrs.iter().map(|(k, v)| (*k, Some(*v))).collect();
            let (puts, _) = diff::<NodeAddrs>(&self.current, &wanted);
            self.exec::<NodeAddrs>(&puts, w, report, node_addr_object, |_, _, _| {})?;
        }
        let (puts, _) = diff::<Backends>(&self.current, &plan.backends);
        self.exec::<Backends>(
            &puts,
            w,
            report,
            |_, wr| {
                let Write::Put(k, v) = wr else {
                    return String::new();
                };
                let (addr, port) = backend_addr(*v);
                match plan
                    .backend_owner
                    .get(&k.backend_id)
                    .and_then(Option::as_ref)
                {
                    Some(o) => format!("backend {addr}:{port} of service {o}"),
                    None => format!("backend {addr}:{port} (draining)"),
                }
            },
            |_, wr, report| {
                if let Some(o) = plan
                    .backend_owner
                    .get(&wr.key().backend_id)
                    .and_then(Option::as_ref)
                {
                    report.changed_services.insert(o.service.clone());
                }
            },
        )?;
        // Slots before the counts that cover them.
        let (puts, _) = diff::<Slots>(&self.current, &plan.slots);
        self.exec::<Slots>(
            &puts,
            w,
            report,
            |me, wr| me.slot_object(wr.key(), &plan.slot_frontends),
            |me, wr, report| me.note_changed(plan.slot_frontends.get(&wr.key().service_id), report),
        )?;
        // Source ranges before the flag that makes the datapath read them.
        let (puts, _) = diff::<SourceRanges>(&self.current, &plan.source_ranges);
        self.exec::<SourceRanges>(
            &puts,
            w,
            report,
            |me, wr| me.source_range_object(wr.key(), &plan.slot_frontends),
            |_, _, _| {},
        )?;
        // Frontends: raise (or lower) counts, set flags.
        let (puts, _) = diff::<Frontends>(&self.current, &plan.frontends);
        self.exec::<Frontends>(
            &puts,
            w,
            report,
            |me, wr| me.frontend_object(wr.key()),
            |me, wr, report| me.note_changed(Some(&wr.key()), report),
        )
    }

    /// Steps 5-8: frontends, slots, backends (and their flows), node addresses.
    fn write_removals(
        &mut self,
        plan: &Plan,
        w: &mut dyn MapWriter,
        report: &mut ApplyReport,
    ) -> Result<(), ReconcileError> {
        let (_, deletes) = diff::<Frontends>(&self.current, &plan.frontends);
        self.exec::<Frontends>(
            &deletes,
            w,
            report,
            |me, wr| me.frontend_object(wr.key()),
            |me, wr, report| {
                if me.owners.contains_key(&wr.key()) {
                    me.note_changed(Some(&wr.key()), report);
                } else {
                    report.unowned_frontends_removed += 1;
                }
            },
        )?;
        let (_, deletes) = diff::<SourceRanges>(&self.current, &plan.source_ranges);
        self.exec::<SourceRanges>(
            &deletes,
            w,
            report,
            |me, wr| me.source_range_object(wr.key(), &plan.slot_frontends),
            |_, _, _| {},
        )?;
        let (_, deletes) = diff::<Slots>(&self.current, &plan.slots);
        self.exec::<Slots>(
            &deletes,
            w,
            report,
            |me, wr| me.slot_object(wr.key(), &plan.slot_frontends),
            |me, wr, report| me.note_changed(plan.slot_frontends.get(&wr.key().service_id), report),
        )?;
        // Backends no longer wanted, then their flows.
        let (_, deletes) = diff::<Backends>(&self.current, &plan.backends);
        let gone: BTreeMap<u32, Backend> = deletes
            .iter()
            .filter_map(|wr| {
                let k = wr.key();
                self.current.backends.get(&k).map(|b| (k.backend_id, *b))
            })
            .collect();
        self.exec::<Backends>(
            &deletes,
            w,
            report,
            |_, wr| {
                let id = wr.key().backend_id;
                gone.get(&id).map_or_else(
                    || format!("backend id {id} (no longer used)"),
                    |b| {
                        let (addr, port) = backend_addr(*b);
                        format!("backend {addr}:{port} (no longer used)")
                    },
                )
            },
            |me, wr, _| {
                let id = wr.key().backend_id;
                if let Some(b) = gone.get(&id) {
                    let addr = backend_addr(*b);
                    me.backend_ids.remove_if(&addr, id);
                }
                me.pending_purge.insert(id);
            },
        )?;
        if !self.pending_purge.is_empty() {
            let ids = &self.pending_purge;
            let object = || format!("flows of removed backends {ids:?}");
            let purged = w.purge_flows(ids).map_err(err(object))?;
            report.purged_backends = self.pending_purge.len();
            report.purged_flows = purged;
            self.pending_purge.clear();
        }
        // Node addresses no longer wanted.
        if let Some(node_addrs) = &plan.node_addrs {
            let wanted = self
                .current
                .node_addrs
                .keys()
                .map(|k| (*k, node_addrs.get(k).copied()))
                .collect();
            let (_, deletes) = diff::<NodeAddrs>(&self.current, &wanted);
            self.exec::<NodeAddrs>(
                &deletes,
                w,
                report,
                |_, wr| {
                    format!(
                        "node address {}",
                        nodeport_common::addr::from_be(wr.key().addr_be)
                    )
                },
                |_, _, _| {},
            )?;
        }
        Ok(())
    }

    /// The backend ids in the current slots of a frontend.
    fn current_slot_backends(&self, fe: &Frontend) -> BTreeSet<u32> {
        (0..fe.backend_count)
            .filter_map(|slot| {
                self.current.slots.get(&SlotKey {
                    service_id: fe.service_id,
                    slot,
                })
            })
            .map(|s| s.backend_id)
            .collect()
    }

    /// Assigns ids and lays out the map entries `delta` touches: what each
    /// must hold (`None`: removed). With `full`, every entry the maps hold
    /// that is not wanted is removed too.
    fn plan(&mut self, wanted: &dyn Wanted, delta: &Delta, full: bool) -> Plan {
        let mut plan = Plan::default();
        let id_of = self.plan_backends(&mut plan, wanted, delta, full);
        self.plan_frontends(&mut plan, wanted, delta, full, &id_of);
        if delta.node_addrs {
            plan.node_addrs = Some(
                wanted
                    .node_addrs()
                    .iter()
                    .map(|a| {
                        (
                            node_addr_key(*a),
                            NodeAddr {
                                flags: NODE_ADDR_F_NODEPORT,
                            },
                        )
                    })
                    .collect(),
            );
        }
        plan
    }

    /// The backends `delta` touches, in address order (new ids are handed
    /// out in that order); returns the ids of the wanted ones.
    fn plan_backends(
        &mut self,
        plan: &mut Plan,
        wanted: &dyn Wanted,
        delta: &Delta,
        full: bool,
    ) -> BTreeMap<BackendAddr, u32> {
        let mut id_of: BTreeMap<BackendAddr, u32> = BTreeMap::new();
        for &(addr, port) in &delta.backends {
            match wanted.backend((addr, port)) {
                Some(b) => {
                    let (current, purging) = (&self.current.backends, &self.pending_purge);
                    let id = self.backend_ids.get_or_alloc(&(addr, port), |id| {
                        current.contains_key(&BackendKey { backend_id: id })
                            || purging.contains(&id)
                    });
                    id_of.insert((addr, port), id);
                    plan.backends.insert(
                        BackendKey { backend_id: id },
                        Some(Backend {
                            addr_be: nodeport_common::addr::to_be(addr),
                            port_be: port.to_be(),
                            flags: b.flags,
                            pad: 0,
                        }),
                    );
                    plan.backend_owner.insert(id, b.owner.cloned());
                }
                None => {
                    if let Some(id) = self.backend_ids.get(&(addr, port)) {
                        plan.backends.insert(BackendKey { backend_id: id }, None);
                    }
                }
            }
        }
        if full {
            // Duplicates adopted from the maps (same address, another id).
            for k in self.current.backends.keys() {
                plan.backends.entry(*k).or_insert(None);
            }
        }
        id_of
    }

    /// The frontends `delta` touches and their slots, in key order (new
    /// service ids are handed out in that order).
    fn plan_frontends(
        &mut self,
        plan: &mut Plan,
        wanted: &dyn Wanted,
        delta: &Delta,
        full: bool,
        id_of: &BTreeMap<BackendAddr, u32>,
    ) {
        for k in &delta.frontends {
            let before = self.current.frontends.get(k).copied();
            let before_ids = before.map(|fe| self.current_slot_backends(&fe));
            match wanted.frontend(k) {
                Some(f) => {
                    let slots = &self.current.slots;
                    // Free unless slots the maps hold still name it (ids of
                    // frontends the maps hold are in `service_ids`).
                    let service_id = self.service_ids.get_or_alloc(k, |id| {
                        slots
                            .range(
                                SlotKey {
                                    service_id: id,
                                    slot: 0,
                                }..=SlotKey {
                                    service_id: id,
                                    slot: u32::MAX,
                                },
                            )
                            .next()
                            .is_some()
                    });
                    let mut after_ids = BTreeSet::new();
                    for (slot, b) in (0u32..).zip(&f.backends) {
                        let backend_id = id_of
                            .get(&(b.addr, b.port))
                            .copied()
                            .or_else(|| self.backend_ids.get(&(b.addr, b.port)))
                            .unwrap_or(0);
                        after_ids.insert(backend_id);
                        plan.slots
                            .insert(SlotKey { service_id, slot }, Some(Slot { backend_id }));
                    }
                    let count = u32::try_from(f.backends.len()).unwrap_or(u32::MAX);
                    // Surplus slots of a shrinking frontend (or of the service
                    // id's earlier frontend).
                    let from = SlotKey {
                        service_id,
                        slot: count,
                    };
                    let to = SlotKey {
                        service_id,
                        slot: u32::MAX,
                    };
                    for sk in self.current.slots.range(from..=to).map(|(k, _)| *k) {
                        plan.slots.insert(sk, None);
                    }
                    if let Some(old) = before
                        && old.service_id != service_id
                    {
                        self.plan_slot_removal(plan, old);
                    }
                    self.plan_source_ranges(plan, service_id, &f.source_ranges);
                    plan.frontends.insert(
                        *k,
                        Some(Frontend {
                            service_id,
                            backend_count: count,
                            flags: f.flags,
                            affinity_timeout_s: f.affinity_timeout_s,
                        }),
                    );
                    plan.slot_frontends.insert(service_id, *k);
                    if let (Some(old), Some(before_ids)) = (before, before_ids) {
                        self.plan_udp_purge(plan, wanted, old.service_id, &before_ids, &after_ids);
                    }
                }
                None => {
                    if let Some(old) = before {
                        plan.frontends.insert(*k, None);
                        plan.slot_frontends.insert(old.service_id, *k);
                        self.plan_slot_removal(plan, old);
                        self.plan_source_ranges(plan, old.service_id, &[]);
                        if let Some(before_ids) = before_ids {
                            self.plan_udp_purge(
                                plan,
                                wanted,
                                old.service_id,
                                &before_ids,
                                &BTreeSet::new(),
                            );
                        }
                    }
                }
            }
        }
        if full {
            // Slots no wanted frontend covers (of frontends gone or renumbered).
            for k in self.current.slots.keys() {
                plan.slots.entry(*k).or_insert(None);
            }
            for k in self.current.source_ranges.keys() {
                plan.source_ranges.entry(*k).or_insert(None);
            }
            for (k, v) in &self.current.frontends {
                plan.slot_frontends.entry(v.service_id).or_insert(*k);
            }
        }
    }

    /// The `source_ranges` entries of service id `service_id` become
    /// `ranges`: the wanted ones are put, the others (of the id's earlier
    /// frontend too) go.
    fn plan_source_ranges(&self, plan: &mut Plan, service_id: u32, ranges: &[(Ipv4Addr, u8)]) {
        for k in self.current.source_ranges.keys() {
            if k.service_id == service_id {
                plan.source_ranges.entry(*k).or_insert(None);
            }
        }
        for &(addr, len) in ranges {
            let key = SourceRangeKey {
                prefix_len: SOURCE_RANGE_SERVICE_BITS + u32::from(len),
                service_id,
                addr_be: nodeport_common::addr::to_be(addr),
            };
            plan.source_ranges
                .insert(key, Some(SourceRange { allowed: 1 }));
        }
    }

    /// Every current slot of service id `old.service_id` goes.
    fn plan_slot_removal(&self, plan: &mut Plan, old: Frontend) {
        let from = SlotKey {
            service_id: old.service_id,
            slot: 0,
        };
        let to = SlotKey {
            service_id: old.service_id,
            slot: u32::MAX,
        };
        for sk in self.current.slots.range(from..=to).map(|(k, _)| *k) {
            plan.slots.entry(sk).or_insert(None);
        }
    }

    /// (service id, backend id) of backends that leave a frontend's slots
    /// (or whose frontend goes) but stay in the maps for another frontend and
    /// are not draining: their UDP flows of that service must go. Backends
    /// that go entirely are purged by id instead.
    fn plan_udp_purge(
        &self,
        plan: &mut Plan,
        wanted: &dyn Wanted,
        service_id: u32,
        before: &BTreeSet<u32>,
        after: &BTreeSet<u32>,
    ) {
        for id in before.difference(after) {
            let key = BackendKey { backend_id: *id };
            let Some(b) = plan
                .backends
                .get(&key)
                .copied()
                .unwrap_or_else(|| self.current.backends.get(&key).copied())
            else {
                continue;
            };
            if wanted.backend(backend_addr(b)).is_some_and(|w| !w.draining) {
                plan.left.insert((service_id, *id));
            }
        }
    }

    fn frontend_object(&self, key: FrontendKey) -> String {
        match self.owners.get(&key) {
            Some(owner) => format!("service {owner} ({})", describe_frontend(&key)),
            None => format!("frontend {} (no known service)", describe_frontend(&key)),
        }
    }

    fn slot_object(&self, key: SlotKey, frontends: &BTreeMap<u32, FrontendKey>) -> String {
        match frontends.get(&key.service_id) {
            Some(fk) => format!("slot {} of {}", key.slot, self.frontend_object(*fk)),
            None => format!(
                "slot {} of service id {} (no frontend)",
                key.slot, key.service_id
            ),
        }
    }

    fn source_range_object(
        &self,
        key: SourceRangeKey,
        frontends: &BTreeMap<u32, FrontendKey>,
    ) -> String {
        let range = format!(
            "{}/{}",
            nodeport_common::addr::from_be(key.addr_be),
            key.prefix_len.saturating_sub(SOURCE_RANGE_SERVICE_BITS)
        );
        match frontends.get(&key.service_id) {
            Some(fk) => format!("source range {range} of {}", self.frontend_object(*fk)),
            None => format!("source range {range} of service id {}", key.service_id),
        }
    }

    fn note_changed(&self, key: Option<&FrontendKey>, report: &mut ApplyReport) {
        if let Some(owner) = key.and_then(|k| self.owners.get(k)) {
            report.changed_services.insert(owner.service.clone());
        }
    }
}

/// Wraps a map error with the object the write was for.
fn err(object: impl FnOnce() -> String) -> impl FnOnce(MapError) -> ReconcileError {
    move |source| ReconcileError {
        object: object(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{DesiredBackend, DesiredFrontend, FrontendKind, frontend_key};
    use crate::maps::TableWrite;
    use crate::maps::memory::{MemoryMaps, Op};
    use nodeport_common::{
        BACKEND_F_LOCAL, BACKEND_F_TERMINATING, FRONTEND_F_AFFINITY, PROTO_TCP, names,
    };

    const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

    fn np(port: u16) -> FrontendKey {
        frontend_key(Ipv4Addr::UNSPECIFIED, port, PROTO_TCP)
    }

    fn cip(last: u8, port: u16) -> FrontendKey {
        frontend_key(Ipv4Addr::new(10, 96, 0, last), port, PROTO_TCP)
    }

    /// Backend `10.244.<node>.<last>:8080`; node 1 is this node.
    fn be(node: u8, last: u8) -> DesiredBackend {
        DesiredBackend {
            addr: Ipv4Addr::new(10, 244, node, last),
            port: 8080,
            flags: if node == 1 { BACKEND_F_LOCAL } else { 0 },
        }
    }

    fn frontend(service: &str, kind: FrontendKind, backends: &[DesiredBackend]) -> DesiredFrontend {
        DesiredFrontend {
            owner: ServicePortRef {
                service: ObjectKey {
                    namespace: "default".into(),
                    name: service.into(),
                },
                port_name: String::new(),
            },
            kind,
            flags: 0,
            affinity_timeout_s: 0,
            backends: backends.to_vec(),
            source_ranges: Vec::new(),
        }
    }

    /// Service `web` (nodePort 30080, `ClusterIP` 10.96.0.10:80) with `backends`.
    fn web(backends: &[DesiredBackend]) -> Desired {
        let mut d = Desired {
            node_addrs: BTreeSet::from([NODE_IP]),
            ..Desired::default()
        };
        d.frontends
            .insert(np(30080), frontend("web", FrontendKind::NodePort, backends));
        d.frontends.insert(
            cip(10, 80),
            frontend("web", FrontendKind::ClusterIp, backends),
        );
        d
    }

    /// `web` plus service `api` (nodePort 30081) with `api_backends`.
    fn web_and_api(backends: &[DesiredBackend], api_backends: &[DesiredBackend]) -> Desired {
        let mut d = web(backends);
        d.frontends.insert(
            np(30081),
            frontend("api", FrontendKind::NodePort, api_backends),
        );
        d
    }

    /// Ops in a compact form: `put backend 1=10.244.1.5:8080/1`.
    fn render(ops: &[Op]) -> Vec<String> {
        let b = |v: &Backend| {
            let (a, p) = backend_addr(*v);
            format!("{a}:{p}/{}", v.flags)
        };
        ops.iter()
            .map(|op| match op {
                Op::Write(TableWrite::NodeAddr(Write::Put(k, _))) => {
                    format!("put addr {}", nodeport_common::addr::from_be(k.addr_be))
                }
                Op::Write(TableWrite::NodeAddr(Write::Delete(k))) => {
                    format!("delete addr {}", nodeport_common::addr::from_be(k.addr_be))
                }
                Op::Write(TableWrite::Backend(Write::Put(k, v))) => {
                    format!("put backend {}={}", k.backend_id, b(v))
                }
                Op::Write(TableWrite::Backend(Write::Delete(k))) => {
                    format!("delete backend {}", k.backend_id)
                }
                Op::Write(TableWrite::Slot(Write::Put(k, v))) => {
                    format!("put slot {}/{}={}", k.service_id, k.slot, v.backend_id)
                }
                Op::Write(TableWrite::Slot(Write::Delete(k))) => {
                    format!("delete slot {}/{}", k.service_id, k.slot)
                }
                Op::Write(TableWrite::Frontend(Write::Put(k, v))) => format!(
                    "put frontend {}=svc{} n{} f{}",
                    describe_frontend(k),
                    v.service_id,
                    v.backend_count,
                    v.flags
                ),
                Op::Write(TableWrite::Frontend(Write::Delete(k))) => {
                    format!("delete frontend {}", describe_frontend(k))
                }
                Op::Write(TableWrite::SourceRange(Write::Put(k, _))) => format!(
                    "put range svc{} {}/{}",
                    k.service_id,
                    nodeport_common::addr::from_be(k.addr_be),
                    k.prefix_len - 32
                ),
                Op::Write(TableWrite::SourceRange(Write::Delete(k))) => format!(
                    "delete range svc{} {}/{}",
                    k.service_id,
                    nodeport_common::addr::from_be(k.addr_be),
                    k.prefix_len - 32
                ),
                Op::PurgeFlows(ids) => format!("purge {ids:?}"),
                Op::PurgeUdpFlows(pairs) => format!("purge udp {pairs:?}"),
            })
            .collect()
    }

    fn run(r: &mut Reconciler, d: &Desired, m: &mut MemoryMaps) -> (ApplyReport, Vec<String>) {
        let report = r.apply(d, m).expect("apply");
        assert_eq!(
            r.state(),
            &m.state,
            "the reconciler's view matches the maps"
        );
        (report, render(&m.take_ops()))
    }

    fn web_key() -> ObjectKey {
        ObjectKey {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn first_apply_writes_in_order_and_second_writes_nothing() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        let d = web(&[be(1, 5), be(2, 5)]);
        let (report, ops) = run(&mut r, &d, &mut m);
        // The NodePort key (address 0) sorts first: service id 1.
        assert_eq!(
            ops,
            [
                "put addr 192.168.1.10",
                "put backend 1=10.244.1.5:8080/1",
                "put backend 2=10.244.2.5:8080/0",
                "put slot 1/0=1",
                "put slot 1/1=2",
                "put slot 2/0=1",
                "put slot 2/1=2",
                "put frontend nodePort 30080/TCP=svc1 n2 f0",
                "put frontend 10.96.0.10:80/TCP=svc2 n2 f0",
            ]
        );
        assert_eq!((report.puts, report.deletes), (9, 0));
        assert_eq!(report.changed_services, BTreeSet::from([web_key()]));

        let (report, ops) = run(&mut r, &d, &mut m);
        assert!(ops.is_empty(), "{ops:?}");
        assert!(report.is_empty());
        assert!(report.changed_services.is_empty());
    }

    #[test]
    fn source_ranges_go_in_before_their_flag_and_out_after_it() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        let restricted = |ranges: &[(Ipv4Addr, u8)]| {
            let mut d = web(&[be(1, 5)]);
            let fe = d.frontends.get_mut(&np(30080)).expect("nodePort");
            fe.flags |= nodeport_common::FRONTEND_F_SOURCE_RANGES;
            fe.source_ranges = ranges.to_vec();
            d
        };
        run(&mut r, &web(&[be(1, 5)]), &mut m);
        let (_, ops) = run(
            &mut r,
            &restricted(&[(Ipv4Addr::new(10, 200, 0, 0), 24)]),
            &mut m,
        );
        assert_eq!(
            ops,
            [
                "put range svc1 10.200.0.0/24",
                "put frontend nodePort 30080/TCP=svc1 n1 f16",
            ]
        );
        let (_, ops) = run(
            &mut r,
            &restricted(&[(Ipv4Addr::new(192, 0, 2, 0), 25)]),
            &mut m,
        );
        assert_eq!(
            ops,
            [
                "put range svc1 192.0.2.0/25",
                "delete range svc1 10.200.0.0/24"
            ]
        );
        let (_, ops) = run(&mut r, &web(&[be(1, 5)]), &mut m);
        assert_eq!(
            ops,
            [
                "put frontend nodePort 30080/TCP=svc1 n1 f0",
                "delete range svc1 192.0.2.0/25",
            ]
        );
        assert!(m.read_state().expect("state").source_ranges.is_empty());
    }

    #[test]
    fn removing_an_endpoint_lowers_count_then_deletes_slot_then_backend_and_purges() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(&mut r, &web(&[be(1, 5), be(2, 5), be(2, 6)]), &mut m);
        m.add_flow(1);
        m.add_flow(1);
        m.add_flow(2);

        // 10.244.1.5 (id 1) goes away: the others move up a slot.
        let (report, ops) = run(&mut r, &web(&[be(2, 5), be(2, 6)]), &mut m);
        assert_eq!(
            ops,
            [
                "put slot 1/0=2",
                "put slot 1/1=3",
                "put slot 2/0=2",
                "put slot 2/1=3",
                "put frontend nodePort 30080/TCP=svc1 n2 f0",
                "put frontend 10.96.0.10:80/TCP=svc2 n2 f0",
                "delete slot 1/2",
                "delete slot 2/2",
                "delete backend 1",
                "purge {1}",
            ]
        );
        assert_eq!((report.purged_backends, report.purged_flows), (1, 2));
        assert_eq!((m.flows_to(1), m.flows_to(2)), (0, 1));
        assert_eq!(r.backend_id(Ipv4Addr::new(10, 244, 1, 5), 8080), None);

        // The last one that sits at the end: no slot moves.
        let (_, ops) = run(&mut r, &web(&[be(2, 5)]), &mut m);
        assert_eq!(
            ops,
            [
                "put frontend nodePort 30080/TCP=svc1 n1 f0",
                "put frontend 10.96.0.10:80/TCP=svc2 n1 f0",
                "delete slot 1/1",
                "delete slot 2/1",
                "delete backend 3",
                "purge {3}",
            ]
        );
    }

    #[test]
    fn adding_an_endpoint_writes_backend_then_slots_then_count() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(&mut r, &web(&[be(2, 5)]), &mut m);
        let (_, ops) = run(&mut r, &web(&[be(2, 5), be(2, 6)]), &mut m);
        assert_eq!(
            ops,
            [
                "put backend 2=10.244.2.6:8080/0",
                "put slot 1/1=2",
                "put slot 2/1=2",
                "put frontend nodePort 30080/TCP=svc1 n2 f0",
                "put frontend 10.96.0.10:80/TCP=svc2 n2 f0",
            ]
        );
    }

    #[test]
    fn deleting_a_service_deletes_frontends_then_slots_then_backends() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(
            &mut r,
            &web_and_api(&[be(1, 5), be(2, 5)], &[be(2, 9)]),
            &mut m,
        );
        m.add_flow(1);
        m.add_flow(3);

        let mut d = web_and_api(&[], &[be(2, 9)]);
        d.frontends.remove(&np(30080));
        d.frontends.remove(&cip(10, 80));
        let (report, ops) = run(&mut r, &d, &mut m);
        assert_eq!(
            ops,
            [
                "delete frontend nodePort 30080/TCP",
                "delete frontend 10.96.0.10:80/TCP",
                "delete slot 1/0",
                "delete slot 1/1",
                "delete slot 3/0",
                "delete slot 3/1",
                "delete backend 1",
                "delete backend 2",
                "purge {1, 2}",
            ]
        );
        assert_eq!(report.changed_services, BTreeSet::from([web_key()]));
        assert_eq!(report.purged_flows, 1);
        assert_eq!(m.flows_to(3), 1, "api's flows stay");
    }

    #[test]
    fn counters_are_named_while_their_ids_serve_and_deleted_with_them() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(
            &mut r,
            &web_and_api(&[be(1, 5), be(2, 5)], &[be(2, 9)]),
            &mut m,
        );
        let web_np = r.service_id(&np(30080)).expect("web's id");
        let api_backend = r
            .backend_id(be(2, 9).addr, be(2, 9).port)
            .expect("api's backend");
        let stats = |ids: &[u32]| {
            ids.iter()
                .map(|id| {
                    (
                        *id,
                        nodeport_common::ServiceStats {
                            packets: 1,
                            ..Default::default()
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        let all_services: Vec<u32> = r.state().frontends.values().map(|f| f.service_id).collect();
        let all_backends: Vec<u32> = r.state().backends.keys().map(|k| k.backend_id).collect();
        let named =
            crate::counters::label(&r.counter_names(), &stats(&all_services), &BTreeMap::new());
        let ports: Vec<String> = named
            .services
            .iter()
            .map(|(l, _)| l.name.to_string())
            .collect();
        assert_eq!(ports.len(), 2, "web and api, each one port: {named:?}");
        assert!(named.services.iter().all(|(_, s)| s.packets >= 1));
        m.counters = (
            all_services.iter().copied().collect(),
            all_backends.iter().copied().collect(),
        );

        // web goes, and with it its two frontends' and its backends' counters.
        let mut d = web_and_api(&[], &[be(2, 9)]);
        d.frontends.remove(&np(30080));
        d.frontends.remove(&cip(10, 80));
        run(&mut r, &d, &mut m);
        assert!(
            !m.counters.0.contains(&web_np),
            "web's counters deleted: {:?}",
            m.counters
        );
        assert_eq!(
            m.counters.0.len(),
            all_services.len() - 2,
            "{:?}",
            m.counters
        );
        assert_eq!(
            m.counters.1,
            BTreeSet::from([api_backend]),
            "api's backend keeps its counters"
        );
        let named =
            crate::counters::label(&r.counter_names(), &stats(&all_services), &BTreeMap::new());
        assert!(
            named.services.iter().all(|(l, _)| &*l.name != "web"),
            "{named:?}"
        );

        // A full sync also deletes counters of ids that name nothing.
        m.counters.0.insert(999);
        m.counters.1.insert(998);
        run(&mut r, &d, &mut m);
        assert!(!m.counters.0.contains(&999) && !m.counters.1.contains(&998));
    }

    #[test]
    fn an_incremental_apply_leaves_freed_ids_counters_to_forget_freed_counters() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(
            &mut r,
            &web_and_api(&[be(1, 5), be(2, 5)], &[be(2, 9)]),
            &mut m,
        );
        let gone = r
            .backend_id(be(2, 5).addr, be(2, 5).port)
            .expect("web's second backend");
        let kept = r
            .backend_id(be(1, 5).addr, be(1, 5).port)
            .expect("web's first backend");
        m.counters = (
            r.state().frontends.values().map(|f| f.service_id).collect(),
            r.state().backends.keys().map(|k| k.backend_id).collect(),
        );
        let services = m.counters.0.clone();

        // web loses its second backend in an incremental apply.
        let d = web_and_api(&[be(1, 5)], &[be(2, 9)]);
        let delta = Delta {
            frontends: BTreeSet::from([np(30080), cip(10, 80)]),
            backends: BTreeSet::from([(be(2, 5).addr, be(2, 5).port)]),
            node_addrs: false,
            services: BTreeSet::new(),
        };
        r.apply_delta(&FullView::new(&d), &delta, &mut m)
            .expect("incremental apply");
        assert_eq!(r.backend_id(be(2, 5).addr, be(2, 5).port), None);
        assert!(
            m.counters.1.contains(&gone),
            "the apply itself leaves the counters: {:?}",
            m.counters
        );

        assert!(r.forget_freed_counters(&mut m).expect("forget"));
        assert!(!m.counters.1.contains(&gone), "{:?}", m.counters);
        assert!(m.counters.1.contains(&kept), "{:?}", m.counters);
        assert_eq!(m.counters.0, services, "every service stays");
        assert!(
            !r.forget_freed_counters(&mut m).expect("forget"),
            "nothing is left to forget"
        );
    }

    #[test]
    fn udp_flows_of_a_service_a_backend_left_are_purged_and_others_stay() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(
            &mut r,
            &web_and_api(&[be(1, 5), be(2, 5)], &[be(2, 5)]),
            &mut m,
        );
        let web = r.service_id(&np(30080)).expect("web's service id");
        let api = r.service_id(&np(30081)).expect("api's service id");
        let shared = r
            .backend_id(Ipv4Addr::new(10, 244, 2, 5), 8080)
            .expect("shared backend id");
        m.add_udp_flow(web, shared);
        m.add_udp_flow(api, shared);

        // web drops the shared endpoint; api keeps it.
        let (report, _) = run(&mut r, &web_and_api(&[be(1, 5)], &[be(2, 5)]), &mut m);
        assert_eq!(
            m.udp_flows_to(web, shared),
            0,
            "web's UDP flows to the backend it left go"
        );
        assert_eq!(
            m.udp_flows_to(api, shared),
            1,
            "api's flows to the same backend stay"
        );
        assert!(report.purged_flows >= 1);
    }

    #[test]
    fn shared_backend_stays_while_used() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(&mut r, &web_and_api(&[be(2, 5)], &[be(2, 5)]), &mut m);
        let mut d = web_and_api(&[], &[be(2, 5)]);
        d.frontends.remove(&np(30080));
        d.frontends.remove(&cip(10, 80));
        let (_, ops) = run(&mut r, &d, &mut m);
        assert_eq!(
            ops,
            [
                "delete frontend nodePort 30080/TCP",
                "delete frontend 10.96.0.10:80/TCP",
                "delete slot 1/0",
                "delete slot 3/0",
                // The backend stays for api; web's UDP flows to it go.
                "purge udp {(1, 1), (3, 1)}",
            ]
        );
    }

    #[test]
    fn ready_to_terminating_keeps_id_and_flows() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(&mut r, &web(&[be(2, 5), be(2, 6)]), &mut m);
        m.add_flow(1);

        // 10.244.2.5 terminates while 10.244.2.6 is ready: unselected, draining.
        let mut d = web(&[be(2, 6)]);
        d.draining = vec![DesiredBackend {
            flags: BACKEND_F_TERMINATING,
            ..be(2, 5)
        }];
        let (report, ops) = run(&mut r, &d, &mut m);
        assert_eq!(
            ops,
            [
                "put backend 1=10.244.2.5:8080/2",
                "put slot 1/0=2",
                "put slot 2/0=2",
                "put frontend nodePort 30080/TCP=svc1 n1 f0",
                "put frontend 10.96.0.10:80/TCP=svc2 n1 f0",
                "delete slot 1/1",
                "delete slot 2/1",
            ]
        );
        assert_eq!(report.purged_flows, 0);
        assert_eq!(m.flows_to(1), 1);

        // It stops serving: now it goes, and its flows with it.
        let (_, ops) = run(&mut r, &web(&[be(2, 6)]), &mut m);
        assert_eq!(ops, ["delete backend 1", "purge {1}"]);
        assert_eq!(m.flows_to(1), 0);
    }

    #[test]
    fn flags_and_node_addresses_change_in_place() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(&mut r, &web(&[be(2, 5)]), &mut m);

        let mut d = web(&[be(2, 5)]);
        let f = d.frontends.get_mut(&np(30080)).unwrap();
        f.flags = FRONTEND_F_AFFINITY;
        f.affinity_timeout_s = 60;
        d.node_addrs = BTreeSet::from([Ipv4Addr::new(192, 168, 1, 11)]);
        let (_, ops) = run(&mut r, &d, &mut m);
        assert_eq!(
            ops,
            [
                "put addr 192.168.1.11",
                "put frontend nodePort 30080/TCP=svc1 n1 f2",
                "delete addr 192.168.1.10",
            ]
        );
    }

    #[test]
    fn adopt_keeps_ids_and_writes_nothing() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        // Build ids that are not simply 1..n: create, then remove some.
        run(
            &mut r,
            &web_and_api(&[be(1, 5), be(2, 5)], &[be(2, 9)]),
            &mut m,
        );
        let d = web(&[be(2, 5), be(2, 7)]);
        run(&mut r, &d, &mut m);

        // Agent restart: a new reconciler learns from the maps.
        let mut adopted = Reconciler::adopt(m.read_state().unwrap());
        let (report, ops) = run(&mut adopted, &d, &mut m);
        assert!(ops.is_empty(), "{ops:?}");
        assert!(report.is_empty());
        for k in d.frontends.keys() {
            assert_eq!(adopted.service_id(k), r.service_id(k));
        }
        for b in [be(2, 5), be(2, 7)] {
            assert_eq!(
                adopted.backend_id(b.addr, b.port),
                r.backend_id(b.addr, b.port)
            );
        }

        // New ids do not collide with adopted (or recently freed) ones.
        let (_, ops) = run(
            &mut adopted,
            &web_and_api(&[be(2, 5), be(2, 7)], &[be(3, 1)]),
            &mut m,
        );
        assert_eq!(
            ops,
            [
                "put backend 5=10.244.3.1:8080/0",
                "put slot 4/0=5",
                "put frontend nodePort 30081/TCP=svc4 n1 f0",
            ]
        );
    }

    #[test]
    fn adopt_removes_orphans() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        let d = web(&[be(2, 5)]);
        run(&mut r, &d, &mut m);
        // Leftovers of a crashed agent: a slot without frontend, an unused
        // backend, and a duplicate of a used one.
        let mut st = m.read_state().unwrap();
        st.slots.insert(
            SlotKey {
                service_id: 9,
                slot: 0,
            },
            Slot { backend_id: 7 },
        );
        let stray = DesiredBackend {
            addr: Ipv4Addr::new(10, 244, 9, 9),
            ..be(2, 5)
        };
        st.backends
            .insert(BackendKey { backend_id: 7 }, stray.to_backend());
        st.backends
            .insert(BackendKey { backend_id: 8 }, be(2, 5).to_backend());
        let mut m = MemoryMaps::with_state(st.clone());
        m.add_flow(7);
        let mut adopted = Reconciler::adopt(st);
        let (report, ops) = run(&mut adopted, &d, &mut m);
        assert_eq!(
            ops,
            [
                "delete slot 9/0",
                "delete backend 7",
                "delete backend 8",
                "purge {7, 8}"
            ]
        );
        assert_eq!(report.purged_flows, 1);
        assert_eq!(report.unowned_frontends_removed, 0);

        // A frontend nobody wants any more, owner unknown after restart.
        let mut adopted = Reconciler::adopt(m.read_state().unwrap());
        let mut d2 = d.clone();
        d2.frontends.remove(&cip(10, 80));
        let (report, ops) = run(&mut adopted, &d2, &mut m);
        assert_eq!(
            ops,
            [
                "delete frontend 10.96.0.10:80/TCP",
                "delete slot 2/0",
                "purge udp {(2, 1)}",
            ]
        );
        assert_eq!(report.unowned_frontends_removed, 1);
    }

    #[test]
    fn injected_failure_names_map_and_service_and_next_apply_converges() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(&mut r, &web(&[be(2, 5)]), &mut m);
        m.fail_when(|op| matches!(op, Op::Write(TableWrite::Frontend(Write::Put(..)))));
        let e = r.apply(&web(&[be(2, 5), be(2, 6)]), &mut m).unwrap_err();
        assert_eq!((e.map(), e.op()), (names::FRONTENDS, "put"));
        let msg = e.to_string();
        assert!(
            msg.contains(names::FRONTENDS) && msg.contains("default/web"),
            "{msg}"
        );
        assert_eq!(
            msg,
            format!(
                "service default/web (nodePort 30080/TCP): put on map {} failed",
                names::FRONTENDS
            )
        );
        assert_eq!(r.state(), &m.state);

        m.take_ops();
        let (_, ops) = run(&mut r, &web(&[be(2, 5), be(2, 6)]), &mut m);
        assert_eq!(
            ops,
            [
                "put frontend nodePort 30080/TCP=svc1 n2 f0",
                "put frontend 10.96.0.10:80/TCP=svc2 n2 f0",
            ]
        );
    }

    /// Fails every write of a sequence of applies in turn and checks that
    /// the next apply always converges to what an undisturbed run reaches.
    #[test]
    fn any_failed_write_is_retried() {
        let steps = [
            web_and_api(&[be(1, 5), be(2, 5)], &[be(2, 9)]),
            web(&[be(2, 6)]),
            Desired::default(),
            web_and_api(&[be(1, 1)], &[be(1, 1), be(2, 2)]),
        ];
        let mut reference = MemoryMaps::new();
        let mut ref_r = Reconciler::default();
        let mut expected = Vec::new();
        let mut writes = 0;
        for d in &steps {
            ref_r.apply(d, &mut reference).unwrap();
            writes += reference.take_ops().len();
            expected.push(reference.state.clone());
        }

        for n in 1..=writes {
            let mut m = MemoryMaps::new();
            let mut r = Reconciler::default();
            m.fail_nth_write(n);
            let mut failed = 0;
            for (i, d) in steps.iter().enumerate() {
                for _ in 0..5 {
                    m.add_flow(1);
                }
                if let Err(e) = r.apply(d, &mut m) {
                    failed += 1;
                    assert!(!e.object.is_empty());
                    assert_eq!(r.state(), &m.state, "n={n}: view stays consistent");
                    r.apply(d, &mut m)
                        .unwrap_or_else(|e| panic!("n={n}: retry failed: {e}"));
                }
                assert_eq!(m.state, expected[i], "n={n}, step {i}");
                let again = r.apply(d, &mut m).unwrap();
                assert!(again.is_empty(), "n={n}, step {i}: {again:?}");
            }
            assert_eq!(failed, 1, "n={n}");
        }
    }

    #[test]
    fn failed_purge_is_retried() {
        let mut m = MemoryMaps::new();
        let mut r = Reconciler::default();
        run(&mut r, &web(&[be(2, 5), be(2, 6)]), &mut m);
        m.add_flow(2);
        m.fail_when(|op| matches!(op, Op::PurgeFlows(_)));
        let e = r.apply(&web(&[be(2, 5)]), &mut m).unwrap_err();
        assert_eq!(e.op(), "purge");
        assert_eq!(m.flows_to(2), 1);
        m.take_ops();
        let (report, ops) = run(&mut r, &web(&[be(2, 5)]), &mut m);
        assert_eq!(ops, ["purge {2}"]);
        assert_eq!(report.purged_flows, 1);
        // The id is not handed out again right away.
        let (_, ops) = run(&mut r, &web(&[be(2, 5), be(2, 7)]), &mut m);
        assert_eq!(ops[0], "put backend 3=10.244.2.7:8080/0");
    }
}
