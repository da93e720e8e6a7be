//! The cluster objects the agent currently knows: [`ClusterState`], the
//! objects as a source delivers them, and [`Store`], what the desired-state
//! computation reads of them (`model`), shared and indexed by Service, kept
//! up to date change by change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{ServiceModel, SliceModel};
use crate::small_map::SmallMap;

/// `namespace/name` of an object (cluster-scoped objects have an empty
/// namespace). The names are shared (`Arc<str>`): the desired state keeps a
/// key per Service in several indexes, and a clone costs no allocation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    #[must_use]
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The zone a Node is in (`topology.kubernetes.io/zone`).
#[must_use]
pub fn node_zone(node: Option<&Node>) -> Option<&str> {
    node?
        .metadata
        .labels
        .as_ref()?
        .get(crate::k8s::LABEL_ZONE)
        .map(String::as_str)
        .filter(|z| !z.is_empty())
}

/// Every object a source has delivered and that passed validation.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
}

/// `key` with names of the store's own: the key `map` holds when it has
/// one, else a copy. A key kept for as long as its object lives is not
/// shared with the object a source delivered: that one was allocated where
/// the source decodes (another thread, so another allocator arena), and
/// one small allocation kept from each decoded object would keep most of
/// the pages they took resident after the objects are gone.
fn own_key<V>(map: &BTreeMap<ObjectKey, V>, key: &ObjectKey) -> ObjectKey {
    map.get_key_value(key).map_or_else(
        || ObjectKey::new(&key.namespace, &key.name),
        |(k, _)| k.clone(),
    )
}

/// What [`Store::replace`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Services whose share of the desired state may have changed.
    pub services: BTreeSet<ObjectKey>,
    /// Slices added or changed.
    pub slices: Vec<ObjectKey>,
}

/// What the desired state is computed from: every Service and
/// EndpointSlice as a model ([`crate::model`]), slices indexed by their
/// Service. Each change says which Services it touched.
#[derive(Clone, Debug)]
pub struct Store {
    node_name: String,
    /// This node's zone (its Node's `topology.kubernetes.io/zone`), for
    /// topology-aware routing.
    zone: Option<Arc<str>>,
    services: BTreeMap<ObjectKey, Arc<ServiceModel>>,
    slices: BTreeMap<ObjectKey, Arc<SliceModel>>,
    /// Slice keys by the Service they belong to.
    slices_of: BTreeMap<ObjectKey, SmallMap<ObjectKey, ()>>,
}

impl Store {
    /// An empty store for node `node_name` (endpoint locality is decided
    /// against it).
    #[must_use]
    pub fn new(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_owned(),
            zone: None,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slices_of: BTreeMap::new(),
        }
    }

    /// A store holding `state`.
    #[must_use]
    pub fn from_state(state: &ClusterState, node_name: &str) -> Self {
        let mut store = Self::new(node_name);
        store.set_zone(node_zone(state.nodes.get(node_name)));
        store.replace(state);
        store
    }

    #[must_use]
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// This node's zone, if known.
    #[must_use]
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// Sets this node's zone; returns whether it changed (then every
    /// Service's share may have).
    pub fn set_zone(&mut self, zone: Option<&str>) -> bool {
        if self.zone.as_deref() == zone {
            return false;
        }
        self.zone = zone.map(Arc::from);
        true
    }

    /// The key of every Service.
    pub fn service_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.services.keys()
    }

    /// Every Service, in key order.
    pub fn services(&self) -> impl Iterator<Item = (&ObjectKey, &ServiceModel)> {
        self.services.iter().map(|(k, v)| (k, v.as_ref()))
    }

    #[must_use]
    pub fn service(&self, key: &ObjectKey) -> Option<&ServiceModel> {
        self.services.get(key).map(AsRef::as_ref)
    }

    /// The slices of Service `key`, in key order.
    pub fn slices_of(&self, key: &ObjectKey) -> impl Iterator<Item = &SliceModel> {
        self.slices_of
            .get(key)
            .into_iter()
            .flat_map(SmallMap::keys)
            .filter_map(|k| self.slices.get(k).map(AsRef::as_ref))
    }

    /// Every slice, in key order.
    pub fn slices(&self) -> impl Iterator<Item = (&ObjectKey, &SliceModel)> {
        self.slices.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// The key of Service `key` as the store holds it (its names shared
    /// with every index that keeps them), or `key` itself when the store
    /// has no such Service.
    #[must_use]
    pub fn service_key(&self, key: &ObjectKey) -> ObjectKey {
        self.services
            .get_key_value(key)
            .map_or_else(|| key.clone(), |(k, _)| k.clone())
    }

    /// Sets (or with `None` removes) Service `key`; returns whether it
    /// changed.
    pub fn set_service(&mut self, key: &ObjectKey, svc: Option<&Service>) -> bool {
        let model = svc.map(ServiceModel::from_service);
        match (model, self.services.get(key)) {
            (Some(m), Some(old)) if **old == m => false,
            (Some(m), _) => {
                let key = own_key(&self.services, key);
                self.services.insert(key, Arc::new(m));
                true
            }
            (None, Some(_)) => {
                self.services.remove(key);
                true
            }
            (None, None) => false,
        }
    }

    /// Sets (or removes) EndpointSlice `key`; returns the Services whose
    /// endpoints it changed (the one it belonged to and the one it belongs
    /// to now).
    pub fn set_slice(&mut self, key: &ObjectKey, slice: Option<&EndpointSlice>) -> Vec<ObjectKey> {
        let model = slice.map(|s| SliceModel::from_slice(s, &self.node_name));
        let key = &own_key(&self.slices, key);
        let old = self.slices.get(key).cloned();
        if let (Some(m), Some(o)) = (&model, &old)
            && **o == *m
        {
            return Vec::new();
        }
        let service_of = |m: &SliceModel| {
            m.service.as_ref().map(|s| ObjectKey {
                namespace: Arc::clone(&key.namespace),
                name: Arc::clone(s),
            })
        };
        let mut touched = Vec::new();
        if let Some(svc) = old.as_deref().and_then(service_of) {
            if let Some(set) = self.slices_of.get_mut(&svc) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_of.remove(&svc);
                }
            }
            touched.push(svc);
        }
        match model {
            Some(m) => {
                if let Some(svc) = service_of(&m) {
                    self.slices_of
                        .entry(svc.clone())
                        .or_default()
                        .insert(key.clone(), ());
                    if !touched.contains(&svc) {
                        touched.push(svc);
                    }
                }
                self.slices.insert(key.clone(), Arc::new(m));
            }
            None => {
                self.slices.remove(key);
            }
        }
        touched
    }

    /// The trigger time of slice `key`.
    #[must_use]
    pub fn slice_trigger_time(&self, key: &ObjectKey) -> Option<Arc<str>> {
        self.slices.get(key)?.trigger_time.clone()
    }

    /// Makes the store hold exactly `state`; returns what changed.
    pub fn replace(&mut self, state: &ClusterState) -> Changed {
        let mut touched = BTreeSet::new();
        let mut slices = Vec::new();
        let gone: Vec<ObjectKey> = self
            .services
            .keys()
            .filter(|k| !state.services.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.set_service(&k, None);
            touched.insert(k);
        }
        for (k, svc) in &state.services {
            if self.set_service(k, Some(svc)) {
                touched.insert(k.clone());
            }
        }
        let gone: Vec<ObjectKey> = self
            .slices
            .keys()
            .filter(|k| !state.endpoint_slices.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            touched.extend(self.set_slice(&k, None));
        }
        for (k, slice) in &state.endpoint_slices {
            let t = self.set_slice(k, Some(slice));
            if !t.is_empty() {
                slices.push(k.clone());
            }
            touched.extend(t);
        }
        Changed {
            services: touched,
            slices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    fn service(cluster_ip: &str) -> Service {
        Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.to_owned()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn shares(a: &ObjectKey, b: &ObjectKey) -> bool {
        Arc::ptr_eq(&a.namespace, &b.namespace) || Arc::ptr_eq(&a.name, &b.name)
    }

    /// The keys the store keeps (and hands to the indexes) are its own
    /// copies, never the caller's: those come from the source's decoded
    /// objects.
    #[test]
    fn kept_keys_are_the_stores_own() {
        let mut store = Store::new("node1");
        let key = ObjectKey::new("default", "web");
        assert!(store.set_service(&key, Some(&service("10.96.0.10"))));
        let kept = store.service_key(&key);
        assert_eq!(kept, key);
        assert!(!shares(&kept, &key), "the store copies a new key");

        // An update keeps the key the store has.
        let again = ObjectKey::new("default", "web");
        assert!(store.set_service(&again, Some(&service("10.96.0.11"))));
        let after = store.service_key(&again);
        assert!(Arc::ptr_eq(&after.name, &kept.name) && !shares(&after, &again));

        // A slice's key, and the Service key it touches, are the store's too.
        let mut slice = EndpointSlice {
            address_type: "IPv4".to_owned(),
            ..EndpointSlice::default()
        };
        slice.metadata.labels = Some(BTreeMap::from([(
            crate::k8s::LABEL_SERVICE_NAME.to_owned(),
            "web".to_owned(),
        )]));
        let slice_key = ObjectKey::new("default", "web-abc");
        let touched = store.set_slice(&slice_key, Some(&slice));
        assert_eq!(touched, vec![key.clone()]);
        assert!(!shares(&touched[0], &slice_key));
        let (stored, _) = store
            .slices
            .get_key_value(&slice_key)
            .expect("the slice is kept");
        assert!(!shares(stored, &slice_key));
        assert_eq!(store.slices_of(&key).count(), 1);
    }
}
