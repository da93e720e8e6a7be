//! From cluster objects to map writes, change by change: the [`Store`]
//! takes each changed object, the [`DesiredIndex`] recomputes the share of
//! each Service it touched, and the [`Reconciler`] writes only the
//! frontends and backends those shares changed. Changes that arrive
//! together are applied together; what a failed write left unwritten stays
//! pending and is written by the next apply.
//!
//! A full sync (`full_apply`: every frontend and backend compared, whatever
//! the maps hold and nobody wants removed) is used on start, to take over a
//! datapath left by an earlier agent.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::desired::index::DesiredIndex;
use crate::desired::{FrontendConflict, HealthCheck};
use crate::maps::MapWriter;
use crate::reconcile::{ApplyReport, Delta, ReconcileError, Reconciler};
use crate::store::{ClusterState, ObjectKey, Store};

/// The agent's objects, desired state and map writer, kept in step.
#[derive(Debug)]
pub struct Pipeline {
    store: Store,
    index: DesiredIndex,
    reconciler: Reconciler,
    /// Changed since the last successful apply.
    pending: Delta,
    /// Slices changed since the last successful apply (their trigger times
    /// measure the network programming latency).
    changed_slices: Vec<ObjectKey>,
    /// Backends on other nodes (their next hops are kept resolved).
    remote: BTreeSet<Ipv4Addr>,
    /// A full sync is due (on start).
    full: bool,
}

/// What one successful apply did, beyond the map writes.
#[derive(Debug, Default)]
pub struct Applied {
    pub report: ApplyReport,
    /// Frontends the changes touched that two Service ports claim.
    pub conflicts: Vec<FrontendConflict>,
    /// Slices whose change is now in the maps.
    pub slices: Vec<ObjectKey>,
    /// The set of remote backend addresses changed.
    pub remote_changed: bool,
}

impl Pipeline {
    /// A pipeline for node `node_name` over maps the reconciler already
    /// knows (adopted from a running datapath, or empty).
    #[must_use]
    pub fn new(node_name: &str, reconciler: Reconciler) -> Self {
        Self {
            store: Store::new(node_name),
            index: DesiredIndex::default(),
            reconciler,
            pending: Delta::default(),
            changed_slices: Vec::new(),
            remote: BTreeSet::new(),
            full: true,
        }
    }

    /// A source's complete state (its first delivery, a re-list): whatever
    /// differs from what the store holds is taken as changed.
    pub fn replace_state(&mut self, state: &ClusterState) {
        let changed = self.store.replace(state);
        for key in &changed.services {
            let key = self.store.service_key(key);
            self.index
                .update_service(&self.store, &key, &mut self.pending);
        }
        self.changed_slices.extend(changed.slices);
    }

    /// Service `key` was added, changed (`Some`) or deleted (`None`).
    pub fn set_service(&mut self, key: &ObjectKey, svc: Option<&Service>) {
        if self.store.set_service(key, svc) {
            let key = self.store.service_key(key);
            self.index
                .update_service(&self.store, &key, &mut self.pending);
        }
    }

    /// EndpointSlice `key` was added, changed or deleted.
    pub fn set_slice(&mut self, key: &ObjectKey, slice: Option<&EndpointSlice>) {
        let touched = self.store.set_slice(key, slice);
        if touched.is_empty() {
            return;
        }
        for svc in &touched {
            let svc = self.store.service_key(svc);
            self.index
                .update_service(&self.store, &svc, &mut self.pending);
        }
        self.changed_slices.push(key.clone());
    }

    /// The node addresses that serve NodePorts.
    /// Sets this node's zone (topology-aware routing); a change recomputes
    /// every Service.
    pub fn set_zone(&mut self, zone: Option<&str>) {
        if self.store.set_zone(zone) {
            let keys: Vec<ObjectKey> = self.store.service_keys().cloned().collect();
            for key in &keys {
                self.index
                    .update_service(&self.store, key, &mut self.pending);
            }
        }
    }

    pub fn set_node_addrs(&mut self, addrs: &[Ipv4Addr]) {
        self.index.set_node_addrs(addrs, &mut self.pending);
    }

    /// Whether anything is waiting to be written.
    #[must_use]
    pub fn has_pending(&self) -> bool {
        self.full || !self.pending.is_empty()
    }

    /// Writes what changed (everything, on the first apply).
    pub fn apply(&mut self, w: &mut dyn MapWriter) -> Result<Applied, ReconcileError> {
        let report = if self.full {
            let desired = self.index.to_desired();
            let report = self.reconciler.apply(&desired, w)?;
            self.full = false;
            report
        } else {
            self.reconciler.apply_delta(&self.index, &self.pending, w)?
        };
        let delta = std::mem::take(&mut self.pending);
        let conflicts = self.index.conflicts(&delta.frontends);
        let remote_changed = self.update_remote(&delta);
        Ok(Applied {
            report,
            conflicts,
            slices: std::mem::take(&mut self.changed_slices),
            remote_changed,
        })
    }

    /// Deletes the counters of the ids freed since the last call (see
    /// [`Reconciler::forget_freed_counters`]).
    pub fn forget_freed_counters(&mut self, w: &mut dyn MapWriter) -> Result<bool, ReconcileError> {
        self.reconciler.forget_freed_counters(w)
    }

    /// Keeps the set of remote backend addresses up to date for the
    /// backends `delta` touched; returns whether it changed.
    fn update_remote(&mut self, delta: &Delta) -> bool {
        let addrs: BTreeSet<Ipv4Addr> = delta.backends.iter().map(|(a, _)| *a).collect();
        let mut changed = false;
        for addr in addrs {
            changed |= if self.index.is_remote(addr) {
                self.remote.insert(addr)
            } else {
                self.remote.remove(&addr)
            };
        }
        changed
    }

    /// Remote backend addresses.
    /// The SCTP ports (port numbers) of Service `key`, which the datapath
    /// does not serve.
    #[must_use]
    pub fn sctp_ports(&self, key: &ObjectKey) -> Vec<u16> {
        self.store
            .service(key)
            .and_then(|s| s.served.as_ref())
            .map(|s| {
                s.ports
                    .iter()
                    .filter(|p| p.proto == nodeport_common::PROTO_SCTP)
                    .map(|p| p.port)
                    .collect()
            })
            .unwrap_or_default()
    }

    #[must_use]
    pub fn remote_backends(&self) -> &BTreeSet<Ipv4Addr> {
        &self.remote
    }

    /// Health checks of Local-policy Services.
    #[must_use]
    pub fn health_checks(&self) -> &std::collections::BTreeMap<ObjectKey, HealthCheck> {
        self.index.health_checks()
    }

    /// The trigger time of slice `key` (network programming latency).
    #[must_use]
    pub fn trigger_time(&self, key: &ObjectKey) -> Option<Arc<str>> {
        self.store.slice_trigger_time(key)
    }

    /// Frontends, Services with frontends and backends in the maps.
    #[must_use]
    pub fn served(&self) -> (usize, usize, usize) {
        (
            self.index.frontends().len(),
            self.index.service_count(),
            self.reconciler.state().backends.len(),
        )
    }

    #[must_use]
    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }
}
