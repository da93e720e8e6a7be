//! The desired state kept up to date change by change: each Service's share
//! ([`ServiceShare`]) is recomputed only when that Service or one of its
//! EndpointSlices changes, and the union (frontends with their winning
//! claim, backends with their merged flags, draining endpoints) is updated
//! only where that share touched it. Each update reports the frontends and
//! backends it changed ([`Delta`]), which is all an incremental apply of
//! the reconciler looks at.
//!
//! The result equals [`super::compute_store`] of the same objects: a
//! frontend claimed by several Service ports goes to the first in Service
//! and port order; a backend's flags are merged over the frontends that
//! select it; a serving endpoint no frontend selects drains. The property
//! test below checks that for random change sequences.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use nodeport_common::FrontendKey;

use super::{
    Desired, DesiredBackend, DesiredFrontend, FrontendConflict, HealthCheck, ServiceShare,
    service_share,
};
use crate::reconcile::{BackendAddr, Delta, Wanted, WantedBackend};
use crate::small_map::SmallMap;
use crate::store::{ObjectKey, Store};

/// The union of every Service's share, indexed for incremental updates.
#[derive(Clone, Debug, Default)]
pub struct DesiredIndex {
    shares: BTreeMap<ObjectKey, ServiceShare>,
    /// Who claims each frontend: (Service, position in its share), in
    /// claim order; the first one wins.
    claims: BTreeMap<FrontendKey, SmallMap<(ObjectKey, usize), ()>>,
    /// The winning claim of each frontend (shared with its share).
    frontends: BTreeMap<FrontendKey, Arc<DesiredFrontend>>,
    /// For each backend, the winning frontends that select it and the
    /// flags each gives it.
    selected_by: BTreeMap<BackendAddr, SmallMap<FrontendKey, u8>>,
    /// For each serving endpoint, the Services it serves and its flags there.
    serving_by: BTreeMap<BackendAddr, SmallMap<ObjectKey, u8>>,
    health_checks: BTreeMap<ObjectKey, HealthCheck>,
    node_addrs: BTreeSet<Ipv4Addr>,
    /// Number of winning frontends per Service.
    won: BTreeMap<ObjectKey, usize>,
}

impl DesiredIndex {
    /// An index of every Service of `store`.
    #[must_use]
    pub fn build(store: &Store, node_addrs: &[Ipv4Addr]) -> Self {
        let mut index = Self::default();
        let mut delta = Delta::default();
        index.set_node_addrs(node_addrs, &mut delta);
        for (key, _) in store.services() {
            index.update_service(store, key, &mut delta);
        }
        index
    }

    /// Recomputes the share of Service `key` from `store` (removing it when
    /// the Service is gone or not served) and records what changed.
    pub fn update_service(&mut self, store: &Store, key: &ObjectKey, delta: &mut Delta) {
        let share = store.service(key).and_then(|svc| {
            let slices: Vec<&crate::model::SliceModel> = store.slices_of(key).collect();
            service_share(key, svc, &slices, store.zone())
        });
        self.set_share(key, share, delta);
    }

    /// Sets the node addresses that serve NodePorts.
    pub fn set_node_addrs(&mut self, addrs: &[Ipv4Addr], delta: &mut Delta) {
        let addrs: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
        if addrs != self.node_addrs {
            self.node_addrs = addrs;
            delta.node_addrs = true;
        }
    }

    fn set_share(&mut self, key: &ObjectKey, share: Option<ServiceShare>, delta: &mut Delta) {
        if self.shares.get(key) == share.as_ref() {
            return;
        }
        delta.services.insert(key.clone());
        let mut dirty = BTreeSet::new();
        if let Some(old) = self.shares.remove(key) {
            for (i, (fk, _)) in old.frontends.iter().enumerate() {
                if let Some(c) = self.claims.get_mut(fk) {
                    c.remove(&(key.clone(), i));
                    if c.is_empty() {
                        self.claims.remove(fk);
                    }
                }
                dirty.insert(*fk);
            }
            for addr in old.serving.keys() {
                if let Some(s) = self.serving_by.get_mut(addr) {
                    s.remove(key);
                    if s.is_empty() {
                        self.serving_by.remove(addr);
                    }
                }
                delta.backends.insert(*addr);
            }
            self.health_checks.remove(key);
        }
        if let Some(new) = share {
            for (i, (fk, _)) in new.frontends.iter().enumerate() {
                self.claims
                    .entry(*fk)
                    .or_default()
                    .insert((key.clone(), i), ());
                dirty.insert(*fk);
            }
            for (addr, flags) in new.serving.iter() {
                self.serving_by
                    .entry(*addr)
                    .or_default()
                    .insert(key.clone(), *flags);
                delta.backends.insert(*addr);
            }
            if let Some(hc) = new.health_check {
                self.health_checks.insert(key.clone(), hc);
            }
            self.shares.insert(key.clone(), new);
        }
        for fk in dirty {
            self.refresh_frontend(fk, delta);
        }
    }

    /// Gives frontend `fk` to its first claim (or removes it) and updates
    /// the backends it selects.
    fn refresh_frontend(&mut self, fk: FrontendKey, delta: &mut Delta) {
        let winner = self
            .claims
            .get(&fk)
            .and_then(SmallMap::first)
            .and_then(|((svc, i), ())| self.shares.get(svc)?.frontends.get(*i))
            .map(|(_, f)| Arc::clone(f));
        if self.frontends.get(&fk) == winner.as_ref() {
            return;
        }
        delta.frontends.insert(fk);
        if let Some(old) = self.frontends.remove(&fk) {
            if let Some(n) = self.won.get_mut(&old.owner.service) {
                *n -= 1;
                if *n == 0 {
                    self.won.remove(&old.owner.service);
                }
            }
            for b in &old.backends {
                let addr = (b.addr, b.port);
                if let Some(s) = self.selected_by.get_mut(&addr) {
                    s.remove(&fk);
                    if s.is_empty() {
                        self.selected_by.remove(&addr);
                    }
                }
                delta.backends.insert(addr);
            }
        }
        if let Some(new) = winner {
            for b in &new.backends {
                let addr = (b.addr, b.port);
                *self
                    .selected_by
                    .entry(addr)
                    .or_default()
                    .entry_or_default(fk) |= b.flags;
                delta.backends.insert(addr);
            }
            *self.won.entry(new.owner.service.clone()).or_default() += 1;
            self.frontends.insert(fk, new);
        }
    }

    /// Number of Services with at least one frontend.
    #[must_use]
    pub fn service_count(&self) -> usize {
        self.won.len()
    }

    /// Whether a frontend selects a backend at `addr` that is not on this
    /// node.
    #[must_use]
    pub fn is_remote(&self, addr: Ipv4Addr) -> bool {
        self.selected_by
            .range((addr, 0)..=(addr, u16::MAX))
            .any(|(_, by)| {
                by.values().fold(0, |a, f| a | f) & nodeport_common::BACKEND_F_LOCAL == 0
            })
    }

    /// The healthCheckNodePorts of Local-policy Services.
    #[must_use]
    pub fn health_checks(&self) -> &BTreeMap<ObjectKey, HealthCheck> {
        &self.health_checks
    }

    /// Frontends (in `keys`) claimed by more than one Service port.
    #[must_use]
    pub fn conflicts<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a FrontendKey>,
    ) -> Vec<FrontendConflict> {
        self.conflicts_by_claim(keys)
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    /// Conflicts with the claim that lost each, in claim order.
    fn conflicts_by_claim<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a FrontendKey>,
    ) -> Vec<((ObjectKey, usize), FrontendConflict)> {
        let mut out = Vec::new();
        for fk in keys {
            let Some(claims) = self.claims.get(fk) else {
                continue;
            };
            let owner = |(svc, i): &(ObjectKey, usize)| {
                self.shares
                    .get(svc)
                    .and_then(|s| s.frontends.get(*i))
                    .map(|(_, f)| f.owner.clone())
            };
            let mut it = claims.keys();
            let Some(kept) = it.next().and_then(owner) else {
                continue;
            };
            for c in it {
                if let Some(dropped) = owner(c) {
                    out.push((
                        c.clone(),
                        FrontendConflict {
                            key: *fk,
                            kept: kept.clone(),
                            dropped,
                        },
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every frontend.
    #[must_use]
    pub fn frontends(&self) -> &BTreeMap<FrontendKey, Arc<DesiredFrontend>> {
        &self.frontends
    }

    /// Number of backends (selected or draining).
    #[must_use]
    pub fn backend_count(&self) -> usize {
        self.serving_by
            .keys()
            .chain(self.selected_by.keys())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The desired state as one value (what [`super::compute_store`] gives).
    #[must_use]
    pub fn to_desired(&self) -> Desired {
        let draining = self
            .serving_by
            .iter()
            .filter(|(addr, _)| !self.selected_by.contains_key(*addr))
            .map(|(&(addr, port), by)| DesiredBackend {
                addr,
                port,
                flags: by.values().fold(0, |a, f| a | f),
            })
            .collect();
        // In claim order, as a fold over the Services reports them.
        let conflicts = self.conflicts(self.claims.keys());
        Desired {
            node_addrs: self.node_addrs.clone(),
            frontends: self
                .frontends
                .iter()
                .map(|(k, f)| (*k, f.as_ref().clone()))
                .collect(),
            draining,
            health_checks: self.health_checks.clone(),
            conflicts,
        }
    }
}

impl Wanted for DesiredIndex {
    fn frontend(&self, key: &FrontendKey) -> Option<&DesiredFrontend> {
        self.frontends.get(key).map(AsRef::as_ref)
    }

    fn backend(&self, addr: BackendAddr) -> Option<WantedBackend<'_>> {
        if let Some(by) = self.selected_by.get(&addr) {
            let owner = by
                .keys()
                .next()
                .and_then(|fk| self.frontends.get(fk))
                .map(|f| &f.owner);
            return Some(WantedBackend {
                flags: by.values().fold(0, |a, f| a | f),
                draining: false,
                owner,
            });
        }
        self.serving_by.get(&addr).map(|by| WantedBackend {
            flags: by.values().fold(0, |a, f| a | f),
            draining: true,
            owner: None,
        })
    }

    fn node_addrs(&self) -> &BTreeSet<Ipv4Addr> {
        &self.node_addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::compute_store;
    use crate::maps::MapWriter as _;
    use crate::maps::memory::MemoryMaps;
    use crate::reconcile::Reconciler;
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use nodeport_common::{Backend, Frontend};

    const NODE: &str = "node-a";

    /// A deterministic generator (xorshift), so the test needs no crate.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// A random Service among a few names: types, policies, ports and
    /// nodePorts drawn from small sets so that claims collide.
    fn random_service(g: &mut Gen, name: &str) -> Service {
        let type_ = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"][g.below(4) as usize];
        let ports = (0..=g.below(2))
            .map(|i| ServicePort {
                name: Some(format!("p{i}")),
                protocol: Some(["TCP", "UDP"][g.below(2) as usize].into()),
                port: 80 + i32::try_from(g.below(2)).unwrap(),
                target_port: None,
                node_port: Some(30_000 + i32::try_from(g.below(4)).unwrap()),
                ..ServicePort::default()
            })
            .collect();
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: Some(format!("10.96.0.{}", 1 + g.below(3))),
                ports: Some(ports),
                external_traffic_policy: Some(["Cluster", "Local"][g.below(2) as usize].into()),
                health_check_node_port: g.chance(50).then_some(32_000),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// A random slice of one of the Services, endpoints from a small pool
    /// (shared between Services) with random conditions and nodes.
    fn random_slice(g: &mut Gen, services: &[&str]) -> EndpointSlice {
        let svc = services[g.below(services.len() as u64) as usize];
        let endpoints = (0..g.below(4))
            .map(|_| Endpoint {
                addresses: vec![format!("10.244.{}.{}", 1 + g.below(2), 1 + g.below(4))],
                node_name: Some(["node-a", "node-b"][g.below(2) as usize].into()),
                conditions: Some(EndpointConditions {
                    ready: Some(g.chance(70)),
                    serving: Some(g.chance(80)),
                    terminating: Some(g.chance(20)),
                }),
                ..Endpoint::default()
            })
            .collect();
        EndpointSlice {
            metadata: ObjectMeta {
                labels: Some([(crate::k8s::LABEL_SERVICE_NAME.to_owned(), svc.to_owned())].into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            ports: Some(
                (0..2)
                    .map(|i| EndpointPort {
                        name: Some(format!("p{i}")),
                        protocol: Some(["TCP", "UDP"][g.below(2) as usize].into()),
                        port: Some(8080 + i32::try_from(g.below(2)).unwrap()),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
            endpoints,
        }
    }

    /// The maps as addresses rather than ids, for comparing two
    /// reconcilers that handed out different ids.
    /// A frontend as compared: flags, affinity timeout, backends by slot.
    type NormalFrontend = (u32, u32, Vec<(Ipv4Addr, u16)>);

    #[derive(Debug, PartialEq, Eq)]
    struct Normalized {
        frontends: BTreeMap<FrontendKey, NormalFrontend>,
        backends: BTreeMap<(Ipv4Addr, u16), u8>,
        node_addrs: usize,
    }

    fn normalize(m: &MemoryMaps) -> Normalized {
        let state = m.read_state().unwrap();
        let addr = |b: &Backend| {
            (
                nodeport_common::addr::from_be(b.addr_be),
                u16::from_be(b.port_be),
            )
        };
        let frontends = state
            .frontends
            .iter()
            .map(|(k, f): (&FrontendKey, &Frontend)| {
                let slots = (0..f.backend_count)
                    .map(|slot| {
                        let s = state.slots[&nodeport_common::SlotKey {
                            service_id: f.service_id,
                            slot,
                        }];
                        addr(
                            &state.backends[&nodeport_common::BackendKey {
                                backend_id: s.backend_id,
                            }],
                        )
                    })
                    .collect();
                (*k, (f.flags, f.affinity_timeout_s, slots))
            })
            .collect();
        let backends = state
            .backends
            .values()
            .map(|b| (addr(b), b.flags))
            .collect();
        Normalized {
            frontends,
            backends,
            node_addrs: state.node_addrs.len(),
        }
    }

    /// Any sequence of random changes applied incrementally (index + delta
    /// apply) gives exactly the desired state and the maps that a
    /// from-scratch computation and a full apply give.
    #[test]
    fn incremental_equals_from_scratch_for_random_changes() {
        let names = ["a", "b", "c", "d"];
        for seed in 1..=40u64 {
            let mut g = Gen(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut store = Store::new(NODE);
            let addrs = [Ipv4Addr::new(192, 168, 1, 10)];
            let mut index = DesiredIndex::build(&store, &addrs);
            let mut incremental = Reconciler::default();
            let mut inc_maps = MemoryMaps::new();
            let mut first = Delta {
                node_addrs: true,
                ..Delta::default()
            };
            incremental
                .apply_delta(&index, &first, &mut inc_maps)
                .unwrap();
            for step in 0..60 {
                // A batch of one to three changes, applied together.
                let mut delta = Delta::default();
                for _ in 0..=g.below(2) {
                    let touched: Vec<ObjectKey> = match g.below(5) {
                        0 | 1 => {
                            let name = names[g.below(4) as usize];
                            store.set_service(&key(name), Some(&random_service(&mut g, name)));
                            vec![key(name)]
                        }
                        2 => {
                            let name = names[g.below(4) as usize];
                            store.set_service(&key(name), None);
                            vec![key(name)]
                        }
                        3 => {
                            let s = random_slice(&mut g, &names);
                            store.set_slice(&key(&format!("slice-{}", g.below(6))), Some(&s))
                        }
                        _ => store.set_slice(&key(&format!("slice-{}", g.below(6))), None),
                    };
                    for k in &touched {
                        index.update_service(&store, k, &mut delta);
                    }
                }
                let want = compute_store(&store, &addrs);
                let got = index.to_desired();
                assert_eq!(got.frontends, want.frontends, "seed {seed} step {step}");
                assert_eq!(got.draining, want.draining, "seed {seed} step {step}");
                assert_eq!(
                    got.health_checks, want.health_checks,
                    "seed {seed} step {step}"
                );
                assert_eq!(got.conflicts, want.conflicts, "seed {seed} step {step}");

                incremental
                    .apply_delta(&index, &delta, &mut inc_maps)
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                let mut scratch = MemoryMaps::new();
                Reconciler::default().apply(&want, &mut scratch).unwrap();
                assert_eq!(
                    normalize(&inc_maps),
                    normalize(&scratch),
                    "seed {seed} step {step}: maps differ"
                );
                first = Delta::default();
            }
            assert!(first.is_empty());
        }
    }
}
