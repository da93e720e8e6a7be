//! The desired datapath state of one node: a pure function of the cluster
//! objects, the node's name and the node addresses that serve `NodePorts`.
//!
//! The result names no map ids: the reconciler assigns service and backend
//! ids when it writes the difference into the maps.
//!
//! Semantics follow kube-proxy:
//!
//! - A Service is served unless it is `ExternalName`, headless
//!   (`clusterIP: None`) or labelled `service.kubernetes.io/service-proxy-name`.
//!   Every served port gets a `ClusterIP` frontend (when the Service has an IPv4
//!   cluster IP); `NodePort` and `LoadBalancer` Services also get a `NodePort`
//!   frontend (node address "any", port = `nodePort`) per port that has one.
//! - Endpoints come from the IPv4 `EndpointSlices` labelled
//!   `kubernetes.io/service-name` in the Service's namespace; only an
//!   endpoint's first address is used. A service port takes the slice port of
//!   the same name and protocol, whose number is the target port (so a named
//!   `targetPort` resolves per slice). A slice without ports, or a matching
//!   port without a number ("any port"), falls back to a numeric `targetPort`
//!   (or `port` when `targetPort` is absent): hand-written manifests often
//!   omit them.
//! - Ready endpoints serve (`ready` absent means ready; `serving` absent
//!   defers to `ready`). Without ready endpoints, endpoints that are serving
//!   and terminating serve. Others never do. `publishNotReadyAddresses`
//!   makes every endpoint ready.
//! - `externalTrafficPolicy: Local` restricts the `NodePort` frontend to local
//!   endpoints (same fallback, applied to local ones only); without any local
//!   one the frontend drops, unless the Service has no usable endpoint
//!   anywhere, where it rejects as every empty frontend does.
//!   `internalTrafficPolicy: Local` does the same for the `ClusterIP` frontend.
//! - Serving endpoints that no frontend selects (terminating while ready ones
//!   exist) are listed in [`Desired::draining`]: their backend entries stay so
//!   that established flows finish, as with kube-proxy, which only purges
//!   flows of endpoints that stopped serving or went away.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use nodeport_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, Backend, FRONTEND_F_AFFINITY, FRONTEND_F_DROP_EMPTY,
    FRONTEND_F_EXTERNAL, FRONTEND_F_LOCAL_ONLY, FRONTEND_F_SOURCE_RANGES, FrontendKey,
};

use crate::model::{PortModel, Served, ServiceModel, SliceModel};
use crate::small_map::SmallMap;
use crate::store::{ClusterState, ObjectKey, Store};

pub mod index;

pub use crate::k8s::{DEFAULT_AFFINITY_TIMEOUT_S, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME};

/// What this node's datapath must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Node addresses that serve `NodePorts`.
    pub node_addrs: BTreeSet<Ipv4Addr>,
    /// Every frontend with its ordered backends (slot `i` = `backends[i]`).
    pub frontends: BTreeMap<FrontendKey, DesiredFrontend>,
    /// Serving endpoints no frontend selects: kept as backends without slots
    /// so established flows drain. Sorted by address and port.
    pub draining: Vec<DesiredBackend>,
    /// Services with `externalTrafficPolicy: Local` and a `healthCheckNodePort`.
    pub health_checks: BTreeMap<ObjectKey, HealthCheck>,
    /// Frontends claimed by more than one service port (validation should
    /// prevent it); the first in service order keeps the frontend.
    pub conflicts: Vec<FrontendConflict>,
}

/// One frontend: a `NodePort` (`addr_be == 0`) or a `ClusterIP`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// The service port this frontend serves (for logs and reports).
    pub owner: ServicePortRef,
    pub kind: FrontendKind,
    /// `FRONTEND_F_*` bits.
    pub flags: u32,
    /// `ClientIP` affinity timeout in seconds; 0 without affinity.
    pub affinity_timeout_s: u32,
    /// Deduplicated, sorted by address then port.
    pub backends: Vec<DesiredBackend>,
    /// `loadBalancerSourceRanges` (IPv4, network address and prefix
    /// length), with `FRONTEND_F_SOURCE_RANGES`; empty otherwise.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    NodePort,
    ClusterIp,
    /// An `externalIPs` entry or a LoadBalancer ingress IP.
    External,
}

/// A port of a Service, by name (empty for a single unnamed port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortRef {
    pub service: ObjectKey,
    pub port_name: String,
}

impl fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port_name)
        }
    }
}

/// Where a frontend sends new flows: a pod address and target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DesiredBackend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// `BACKEND_F_*` bits: `LOCAL` when the endpoint's `nodeName` is this
    /// node, `TERMINATING` when the endpoint says it is terminating.
    pub flags: u8,
}

impl DesiredBackend {
    /// The backend map value (network byte order).
    #[must_use]
    pub fn to_backend(&self) -> Backend {
        Backend {
            addr_be: nodeport_common::addr::to_be(self.addr),
            port_be: self.port.to_be(),
            flags: self.flags,
            pad: 0,
        }
    }
}

/// kube-proxy compatible health check of a Local-policy service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub node_port: u16,
    /// Distinct addresses of ready endpoints on this node.
    pub local_endpoints: usize,
}

/// Two service ports claim the same frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConflict {
    pub key: FrontendKey,
    pub kept: ServicePortRef,
    pub dropped: ServicePortRef,
}

/// The frontend key of `addr:port/proto` (`addr` unspecified for a `NodePort`).
#[must_use]
pub fn frontend_key(addr: Ipv4Addr, port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr_be: nodeport_common::addr::to_be(addr),
        port_be: port.to_be(),
        proto,
        pad: 0,
    }
}

/// `TCP`, `UDP`, `SCTP` or the protocol number.
#[must_use]
pub fn proto_name(proto: u8) -> String {
    crate::k8s::protocol_name(proto)
}

/// A frontend for humans: `nodePort 30080/TCP` or `10.96.0.10:80/TCP`.
#[must_use]
pub fn describe_frontend(key: &FrontendKey) -> String {
    let port = u16::from_be(key.port_be);
    let proto = proto_name(key.proto);
    if key.addr_be == 0 {
        format!("nodePort {port}/{proto}")
    } else {
        let addr = nodeport_common::addr::from_be(key.addr_be);
        format!("{addr}:{port}/{proto}")
    }
}

/// The effective state of one endpoint for one service port.
#[allow(clippy::struct_excessive_bools)] // Reason: the API's endpoint conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointState {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    /// It carries zone hints, and whether they name this node's zone.
    hinted: bool,
    in_zone: bool,
    /// It carries node hints, and whether they name this node.
    node_hinted: bool,
    for_node: bool,
}

impl EndpointState {
    /// Used as a fallback when nothing is ready.
    fn serving_terminating(self) -> bool {
        self.serving && self.terminating
    }

    /// The same endpoint listed twice (two slices): the better view wins, as
    /// kube-proxy prefers the ready copy.
    fn merge(self, other: Self) -> Self {
        Self {
            ready: self.ready || other.ready,
            serving: self.serving || other.serving,
            terminating: self.terminating && other.terminating,
            local: self.local || other.local,
            hinted: self.hinted && other.hinted,
            in_zone: self.in_zone || other.in_zone,
            node_hinted: self.node_hinted && other.node_hinted,
            for_node: self.for_node || other.for_node,
        }
    }

    fn flags(self) -> u8 {
        let mut flags = 0;
        if self.local {
            flags |= BACKEND_F_LOCAL;
        }
        if self.terminating {
            flags |= BACKEND_F_TERMINATING;
        }
        flags
    }
}

type Endpoints = BTreeMap<(Ipv4Addr, u16), EndpointState>;

/// One Service's share of the desired state: what it alone contributes,
/// computed from the Service and its slices only. The desired state is the
/// union of every Service's share (a frontend two Services claim goes to
/// the first); [`index::DesiredIndex`] keeps that union up to date share by
/// share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceShare {
    /// Its frontends in claim order: per port, the ClusterIP, then the
    /// NodePort (shared with the index's winners).
    pub frontends: Vec<(FrontendKey, Arc<DesiredFrontend>)>,
    /// Its serving endpoints and their flags.
    pub serving: SmallMap<(Ipv4Addr, u16), u8>,
    pub health_check: Option<HealthCheck>,
}

/// The share of Service `key` (`None`: not served).
#[must_use]
pub fn service_share(
    key: &ObjectKey,
    svc: &ServiceModel,
    slices: &[&SliceModel],
    zone: Option<&str>,
) -> Option<ServiceShare> {
    let info = svc.served.as_ref()?;
    let mut share = ServiceShare::default();
    let mut local_ready: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for port in &info.ports {
        let owner = ServicePortRef {
            service: key.clone(),
            port_name: port.name.clone(),
        };
        let endpoints = endpoints_for_port(slices, port, info.publish_not_ready, zone);
        // Topology-aware routing narrows what Cluster-policy frontends use;
        // Local-policy ones keep the node's own endpoints.
        let close = by_topology(&endpoints);
        let cluster_endpoints = close.as_ref().unwrap_or(&endpoints);
        let endpoints_for = |local_only: bool| {
            if local_only {
                &endpoints
            } else {
                cluster_endpoints
            }
        };
        for (&(addr, target), ep) in &endpoints {
            if ep.serving || ep.ready {
                *share.serving.entry_or_default((addr, target)) |= ep.flags();
            }
            if ep.local && ep.ready {
                local_ready.insert(addr);
            }
        }
        if let Some(cluster_ip) = info.cluster_ip {
            share.frontends.push((
                frontend_key(cluster_ip, port.port, port.proto),
                Arc::new(build_frontend(
                    &owner,
                    FrontendKind::ClusterIp,
                    info.internal_local,
                    info,
                    endpoints_for(info.internal_local),
                )),
            ));
        }
        let external = info.external_ips.iter().map(|ip| (ip, false));
        let load_balancer = info.load_balancer_ips.iter().map(|ip| (ip, true));
        for (&ip, restricted) in external.chain(load_balancer) {
            let mut frontend = build_frontend(
                &owner,
                FrontendKind::External,
                info.external_local,
                info,
                endpoints_for(info.external_local),
            );
            frontend.flags |= FRONTEND_F_EXTERNAL;
            if restricted {
                restrict_sources(&mut frontend, info);
            }
            share
                .frontends
                .push((frontend_key(ip, port.port, port.proto), Arc::new(frontend)));
        }
        if info.node_ports
            && let Some(node_port) = port.node_port
        {
            share.frontends.push((
                frontend_key(Ipv4Addr::UNSPECIFIED, node_port, port.proto),
                Arc::new({
                    let mut frontend = build_frontend(
                        &owner,
                        FrontendKind::NodePort,
                        info.external_local,
                        info,
                        endpoints_for(info.external_local),
                    );
                    restrict_sources(&mut frontend, info);
                    frontend
                }),
            ));
        }
    }
    if info.external_local
        && let Some(node_port) = info.health_check_node_port
    {
        share.health_check = Some(HealthCheck {
            node_port,
            local_endpoints: local_ready.len(),
        });
    }
    Some(share)
}

/// Computes what this node's datapath must hold from `state`, from scratch.
#[must_use]
pub fn compute(state: &ClusterState, node_name: &str, node_addrs: &[Ipv4Addr]) -> Desired {
    compute_store(&Store::from_state(state, node_name), node_addrs)
}

/// Computes what this node's datapath must hold from `store`, from scratch:
/// every Service's share, folded in Service order.
#[must_use]
pub fn compute_store(store: &Store, node_addrs: &[Ipv4Addr]) -> Desired {
    let mut desired = Desired {
        node_addrs: node_addrs.iter().copied().collect(),
        ..Desired::default()
    };
    // Every serving endpoint of a served port, and those some frontend selects.
    let mut serving: BTreeMap<(Ipv4Addr, u16), u8> = BTreeMap::new();
    let mut selected: BTreeSet<(Ipv4Addr, u16)> = BTreeSet::new();
    for (key, svc) in store.services() {
        let slices: Vec<&SliceModel> = store.slices_of(key).collect();
        let Some(share) = service_share(key, svc, &slices, store.zone()) else {
            continue;
        };
        for (addr, flags) in share.serving.iter() {
            *serving.entry(*addr).or_default() |= flags;
        }
        for (fkey, frontend) in share.frontends {
            let frontend = Arc::unwrap_or_clone(frontend);
            if let Some(existing) = desired.frontends.get(&fkey) {
                desired.conflicts.push(FrontendConflict {
                    key: fkey,
                    kept: existing.owner.clone(),
                    dropped: frontend.owner,
                });
                continue;
            }
            selected.extend(frontend.backends.iter().map(|b| (b.addr, b.port)));
            desired.frontends.insert(fkey, frontend);
        }
        if let Some(hc) = share.health_check {
            desired.health_checks.insert(key.clone(), hc);
        }
    }
    desired.draining = serving
        .into_iter()
        .filter(|(k, _)| !selected.contains(k))
        .map(|((addr, port), flags)| DesiredBackend { addr, port, flags })
        .collect();
    desired
}

/// One frontend of a service port: its flags and the endpoints it selects.
fn build_frontend(
    owner: &ServicePortRef,
    kind: FrontendKind,
    local_only: bool,
    info: &Served,
    endpoints: &Endpoints,
) -> DesiredFrontend {
    let pick = |f: &dyn Fn(&EndpointState) -> bool| -> Vec<DesiredBackend> {
        endpoints
            .iter()
            .filter(|(_, ep)| f(ep))
            .map(|(&(addr, port), ep)| DesiredBackend {
                addr,
                port,
                flags: ep.flags(),
            })
            .collect()
    };
    let mut flags = 0;
    let backends = if local_only {
        flags |= FRONTEND_F_LOCAL_ONLY;
        let mut backends = pick(&|ep| ep.local && ep.ready);
        if backends.is_empty() {
            backends = pick(&|ep| ep.local && ep.serving_terminating());
        }
        // kube-proxy drops when endpoints exist elsewhere, and rejects when
        // the service has none at all.
        if backends.is_empty()
            && endpoints
                .values()
                .any(|ep| ep.ready || ep.serving_terminating())
        {
            flags |= FRONTEND_F_DROP_EMPTY;
        }
        backends
    } else {
        let backends = pick(&|ep| ep.ready);
        if backends.is_empty() {
            pick(&|ep| ep.serving_terminating())
        } else {
            backends
        }
    };
    let affinity_timeout_s = info.affinity_timeout_s.unwrap_or(0);
    if info.affinity_timeout_s.is_some() {
        flags |= FRONTEND_F_AFFINITY;
    }
    DesiredFrontend {
        owner: owner.clone(),
        kind,
        flags,
        affinity_timeout_s,
        backends,
        source_ranges: Vec::new(),
    }
}

/// Applies `loadBalancerSourceRanges` to a LoadBalancer's frontend (its
/// ingress IPs and, as kube-proxy does, its nodePorts; not its
/// `externalIPs`).
fn restrict_sources(frontend: &mut DesiredFrontend, info: &Served) {
    if !info.source_ranges.is_empty() {
        frontend.flags |= FRONTEND_F_SOURCE_RANGES;
        frontend.source_ranges.clone_from(&info.source_ranges);
    }
}

/// The endpoints of one service port, merged over its slices.
/// Topology-aware routing as kube-proxy decides it from the hints the
/// EndpointSlice controller writes for `trafficDistribution`: the endpoints
/// hinted for this node when every ready endpoint has node hints and one
/// names this node (`PreferSameNode`), else those hinted for this node's
/// zone when every ready endpoint has zone hints and one names the zone;
/// `None`: every endpoint serves.
fn by_topology(endpoints: &Endpoints) -> Option<Endpoints> {
    let ready: Vec<&EndpointState> = endpoints.values().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return None;
    }
    let keep = |f: fn(&EndpointState) -> bool| -> Endpoints {
        endpoints
            .iter()
            .filter(|(_, e)| f(e))
            .map(|(k, e)| (*k, *e))
            .collect()
    };
    if ready.iter().all(|e| e.node_hinted) && ready.iter().any(|e| e.for_node) {
        return Some(keep(|e| e.for_node));
    }
    if ready.iter().all(|e| e.hinted) && ready.iter().any(|e| e.in_zone) {
        return Some(keep(|e| e.in_zone));
    }
    None
}

fn endpoints_for_port(
    slices: &[&SliceModel],
    port: &PortModel,
    publish_not_ready: bool,
    zone: Option<&str>,
) -> Endpoints {
    let mut endpoints = Endpoints::new();
    for slice in slices {
        let Some(target) = slice.target_port(port) else {
            continue;
        };
        for ep in &slice.endpoints {
            let state = EndpointState {
                ready: publish_not_ready || ep.ready,
                serving: publish_not_ready || ep.serving,
                terminating: ep.terminating,
                local: ep.local,
                hinted: ep.zone_hints.is_some(),
                in_zone: zone.is_some_and(|z| {
                    ep.zone_hints
                        .as_deref()
                        .is_some_and(|hints| hints.iter().any(|h| &**h == z))
                }),
                node_hinted: ep.for_this_node.is_some(),
                for_node: ep.for_this_node == Some(true),
            };
            endpoints
                .entry((ep.addr, target))
                .and_modify(|s| *s = s.merge(state))
                .or_insert(state);
        }
    }
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
        ServiceStatus, SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use nodeport_common::{PROTO_TCP, PROTO_UDP};

    const NODE: &str = "node-a";
    const L: u8 = BACKEND_F_LOCAL;
    const T: u8 = BACKEND_F_TERMINATING;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// A service port: `(name, protocol, port, targetPort, nodePort)`.
    fn sport(
        name: &str,
        proto: &str,
        port: i32,
        target: Option<IntOrString>,
        node_port: Option<i32>,
    ) -> ServicePort {
        ServicePort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            protocol: Some(proto.to_owned()),
            port,
            target_port: target,
            node_port,
            ..ServicePort::default()
        }
    }

    #[allow(clippy::unnecessary_wraps)] // Reason: reads as a `targetPort` value.
    fn int(n: i32) -> Option<IntOrString> {
        Some(IntOrString::Int(n))
    }

    #[allow(clippy::unnecessary_wraps)] // Reason: reads as a `targetPort` value.
    fn named(s: &str) -> Option<IntOrString> {
        Some(IntOrString::String(s.to_owned()))
    }

    fn service(name: &str, type_: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: Some(cluster_ip.into()),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// The usual `NodePort` service `web`: 80 → 8080, nodePort 30080.
    fn web() -> Service {
        service(
            "web",
            "NodePort",
            "10.96.0.10",
            vec![sport("", "TCP", 80, int(8080), Some(30080))],
        )
    }

    fn with_spec(mut svc: Service, f: impl FnOnce(&mut ServiceSpec)) -> Service {
        f(svc.spec.as_mut().unwrap());
        svc
    }

    /// `web` as a LoadBalancer, its spec changed by `f`, with ingress IPs
    /// `(ip, ipMode)`.
    fn load_balancer(
        f: impl FnOnce(&mut ServiceSpec),
        ingress: &[(&str, Option<&str>)],
    ) -> Service {
        let mut svc = with_spec(web(), |s| {
            s.type_ = Some("LoadBalancer".into());
            f(s);
        });
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ingress
                        .iter()
                        .map(|(ip, mode)| LoadBalancerIngress {
                            ip: Some((*ip).into()),
                            ip_mode: mode.map(Into::into),
                            ..LoadBalancerIngress::default()
                        })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
        svc
    }

    /// An endpoint: `(address, node, ready, serving, terminating)`.
    fn ep(
        addr: &str,
        node: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Endpoint {
        Endpoint {
            addresses: vec![addr.into()],
            node_name: Some(node.into()),
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            ..Endpoint::default()
        }
    }

    fn ready(addr: &str, node: &str) -> Endpoint {
        ep(addr, node, Some(true), Some(true), Some(false))
    }

    fn terminating(addr: &str, node: &str) -> Endpoint {
        ep(addr, node, Some(false), Some(true), Some(true))
    }

    /// A slice of service `svc` with ports `(name, protocol, port)`.
    fn slice(svc: &str, ports: &[(&str, &str, i32)], endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                labels: Some([(LABEL_SERVICE_NAME.to_owned(), svc.to_owned())].into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, proto, port)| EndpointPort {
                        name: (!name.is_empty()).then(|| (*name).to_owned()),
                        protocol: Some((*proto).to_owned()),
                        port: Some(*port),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
            endpoints,
        }
    }

    fn state(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ClusterState {
        let mut st = ClusterState::default();
        for svc in services {
            let name = svc.metadata.name.clone().unwrap();
            st.services.insert(key(&name), svc);
        }
        for (i, s) in slices.into_iter().enumerate() {
            st.endpoint_slices.insert(key(&format!("slice-{i}")), s);
        }
        st
    }

    /// Expected frontend: (description, flags, affinity timeout, backends).
    type Want = (&'static str, u32, u32, &'static [(&'static str, u16, u8)]);
    /// A frontend as compared: (description, flags, affinity timeout, backends).
    type Rendered = (String, u32, u32, Vec<(String, u16, u8)>);
    /// (name, services, slices, expected frontends).
    type Case = (&'static str, Vec<Service>, Vec<EndpointSlice>, Vec<Want>);

    fn render(d: &Desired) -> Vec<Rendered> {
        d.frontends
            .iter()
            .map(|(k, f)| {
                (
                    describe_frontend(k),
                    f.flags,
                    f.affinity_timeout_s,
                    f.backends
                        .iter()
                        .map(|b| (b.addr.to_string(), b.port, b.flags))
                        .collect(),
                )
            })
            .collect()
    }

    fn expect(want: &[Want]) -> Vec<Rendered> {
        let mut v: Vec<_> = want
            .iter()
            .map(|(d, flags, t, b)| {
                (
                    (*d).to_owned(),
                    *flags,
                    *t,
                    b.iter()
                        .map(|(a, p, f)| ((*a).to_owned(), *p, *f))
                        .collect(),
                )
            })
            .collect();
        // Frontend keys order by address bytes; compare as sets.
        v.sort();
        v
    }

    const LOCAL_ONLY: u32 = FRONTEND_F_LOCAL_ONLY;
    const DROP: u32 = FRONTEND_F_DROP_EMPTY;
    const EXT: u32 = FRONTEND_F_EXTERNAL;
    const SRC: u32 = FRONTEND_F_SOURCE_RANGES;
    const AFF: u32 = FRONTEND_F_AFFINITY;

    #[test]
    #[allow(clippy::too_many_lines)] // Reason: one table, one case per scenario.
    fn compute_table() {
        let two_nodes = || {
            slice(
                "web",
                &[("", "TCP", 8080)],
                vec![ready("10.244.2.5", "node-b"), ready("10.244.1.5", NODE)],
            )
        };
        let local = |s: Service| with_spec(s, |s| s.external_traffic_policy = Some("Local".into()));
        let cases: Vec<Case> = vec![
            (
                "NodePort, Cluster policy, endpoints on two nodes",
                vec![web()],
                vec![two_nodes()],
                vec![
                    (
                        "nodePort 30080/TCP",
                        0,
                        0,
                        &[("10.244.1.5", 8080, L), ("10.244.2.5", 8080, 0)],
                    ),
                    (
                        "10.96.0.10:80/TCP",
                        0,
                        0,
                        &[("10.244.1.5", 8080, L), ("10.244.2.5", 8080, 0)],
                    ),
                ],
            ),
            (
                "Local policy with a local endpoint",
                vec![local(web())],
                vec![two_nodes()],
                vec![
                    (
                        "nodePort 30080/TCP",
                        LOCAL_ONLY,
                        0,
                        &[("10.244.1.5", 8080, L)],
                    ),
                    (
                        "10.96.0.10:80/TCP",
                        0,
                        0,
                        &[("10.244.1.5", 8080, L), ("10.244.2.5", 8080, 0)],
                    ),
                ],
            ),
            (
                "Local policy without a local endpoint drops",
                vec![local(web())],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![ready("10.244.2.5", "node-b")],
                )],
                vec![
                    ("nodePort 30080/TCP", LOCAL_ONLY | DROP, 0, &[]),
                    ("10.96.0.10:80/TCP", 0, 0, &[("10.244.2.5", 8080, 0)]),
                ],
            ),
            (
                "Local policy without any endpoint rejects",
                vec![local(web())],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![ep("10.244.2.5", "node-b", Some(false), Some(false), None)],
                )],
                vec![
                    ("nodePort 30080/TCP", LOCAL_ONLY, 0, &[]),
                    ("10.96.0.10:80/TCP", 0, 0, &[]),
                ],
            ),
            (
                "Local policy falls back to local terminating, not to remote ready",
                vec![local(web())],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![
                        terminating("10.244.1.5", NODE),
                        ready("10.244.2.5", "node-b"),
                    ],
                )],
                vec![
                    (
                        "nodePort 30080/TCP",
                        LOCAL_ONLY,
                        0,
                        &[("10.244.1.5", 8080, L | T)],
                    ),
                    ("10.96.0.10:80/TCP", 0, 0, &[("10.244.2.5", 8080, 0)]),
                ],
            ),
            (
                "externalIPs and LoadBalancer ingress IPs (not ipMode Proxy) are external frontends",
                vec![load_balancer(
                    |s| s.external_ips = Some(vec!["192.0.2.10".into(), "2001:db8::1".into()]),
                    &[("198.51.100.7", None), ("198.51.100.8", Some("Proxy"))],
                )],
                vec![two_nodes()],
                {
                    const BOTH: &[(&str, u16, u8)] =
                        &[("10.244.1.5", 8080, L), ("10.244.2.5", 8080, 0)];
                    vec![
                        ("nodePort 30080/TCP", 0, 0, BOTH),
                        ("10.96.0.10:80/TCP", 0, 0, BOTH),
                        ("192.0.2.10:80/TCP", EXT, 0, BOTH),
                        ("198.51.100.7:80/TCP", EXT, 0, BOTH),
                    ]
                },
            ),
            (
                "loadBalancerSourceRanges restrict ingress IPs and nodePorts, not externalIPs",
                vec![load_balancer(
                    |s| {
                        s.external_ips = Some(vec!["192.0.2.10".into()]);
                        s.load_balancer_source_ranges =
                            Some(vec!["10.200.0.0/24".into(), "2001:db8::/32".into()]);
                    },
                    &[("198.51.100.7", None)],
                )],
                vec![two_nodes()],
                {
                    const BOTH: &[(&str, u16, u8)] =
                        &[("10.244.1.5", 8080, L), ("10.244.2.5", 8080, 0)];
                    vec![
                        ("nodePort 30080/TCP", SRC, 0, BOTH),
                        ("10.96.0.10:80/TCP", 0, 0, BOTH),
                        ("192.0.2.10:80/TCP", EXT, 0, BOTH),
                        ("198.51.100.7:80/TCP", EXT | SRC, 0, BOTH),
                    ]
                },
            ),
            (
                "externalTrafficPolicy Local applies to externalIPs, also of a ClusterIP Service",
                vec![with_spec(web(), |s| {
                    s.type_ = Some("ClusterIP".into());
                    s.ports.as_mut().unwrap()[0].node_port = None;
                    s.external_ips = Some(vec!["192.0.2.10".into()]);
                    s.external_traffic_policy = Some("Local".into());
                })],
                vec![two_nodes()],
                vec![
                    (
                        "10.96.0.10:80/TCP",
                        0,
                        0,
                        &[("10.244.1.5", 8080, L), ("10.244.2.5", 8080, 0)],
                    ),
                    (
                        "192.0.2.10:80/TCP",
                        EXT | LOCAL_ONLY,
                        0,
                        &[("10.244.1.5", 8080, L)],
                    ),
                ],
            ),
            (
                "internalTrafficPolicy Local restricts the ClusterIP frontend",
                vec![with_spec(web(), |s| {
                    s.internal_traffic_policy = Some("Local".into());
                })],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![ready("10.244.2.5", "node-b")],
                )],
                vec![
                    ("nodePort 30080/TCP", 0, 0, &[("10.244.2.5", 8080, 0)]),
                    ("10.96.0.10:80/TCP", LOCAL_ONLY | DROP, 0, &[]),
                ],
            ),
            (
                "no ready endpoint: serving terminating ones serve",
                vec![web()],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![
                        terminating("10.244.2.5", "node-b"),
                        ep("10.244.2.6", "node-b", Some(false), Some(false), Some(true)),
                        ep("10.244.2.7", "node-b", Some(false), Some(false), None),
                    ],
                )],
                vec![
                    ("nodePort 30080/TCP", 0, 0, &[("10.244.2.5", 8080, T)]),
                    ("10.96.0.10:80/TCP", 0, 0, &[("10.244.2.5", 8080, T)]),
                ],
            ),
            (
                "terminating ones are not used while a ready one exists",
                vec![web()],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![
                        terminating("10.244.2.5", "node-b"),
                        ready("10.244.2.9", "node-b"),
                    ],
                )],
                vec![
                    ("nodePort 30080/TCP", 0, 0, &[("10.244.2.9", 8080, 0)]),
                    ("10.96.0.10:80/TCP", 0, 0, &[("10.244.2.9", 8080, 0)]),
                ],
            ),
            (
                "not serving excluded; absent conditions mean ready; serving absent defers to ready",
                vec![web()],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![
                        ep(
                            "10.244.2.5",
                            "node-b",
                            Some(false),
                            Some(false),
                            Some(false),
                        ),
                        ep("10.244.2.6", "node-b", Some(false), None, None),
                        ep("10.244.2.7", "node-b", None, None, None),
                        Endpoint {
                            addresses: vec!["10.244.2.8".into()],
                            ..Endpoint::default()
                        },
                    ],
                )],
                vec![
                    (
                        "nodePort 30080/TCP",
                        0,
                        0,
                        &[("10.244.2.7", 8080, 0), ("10.244.2.8", 8080, 0)],
                    ),
                    (
                        "10.96.0.10:80/TCP",
                        0,
                        0,
                        &[("10.244.2.7", 8080, 0), ("10.244.2.8", 8080, 0)],
                    ),
                ],
            ),
            (
                "publishNotReadyAddresses serves every endpoint",
                vec![with_spec(web(), |s| {
                    s.publish_not_ready_addresses = Some(true);
                })],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![
                        ep("10.244.2.5", "node-b", Some(false), Some(false), None),
                        ep("10.244.1.5", NODE, Some(false), None, None),
                        ready("10.244.2.6", "node-b"),
                    ],
                )],
                vec![
                    (
                        "nodePort 30080/TCP",
                        0,
                        0,
                        &[
                            ("10.244.1.5", 8080, L),
                            ("10.244.2.5", 8080, 0),
                            ("10.244.2.6", 8080, 0),
                        ],
                    ),
                    (
                        "10.96.0.10:80/TCP",
                        0,
                        0,
                        &[
                            ("10.244.1.5", 8080, L),
                            ("10.244.2.5", 8080, 0),
                            ("10.244.2.6", 8080, 0),
                        ],
                    ),
                ],
            ),
            (
                "named targetPort resolved per slice by the service port's name",
                vec![service(
                    "web",
                    "NodePort",
                    "10.96.0.10",
                    vec![sport("http", "TCP", 80, named("web-http"), Some(30080))],
                )],
                vec![
                    slice(
                        "web",
                        &[("http", "TCP", 8080)],
                        vec![ready("10.244.1.5", NODE)],
                    ),
                    // A second slice (another pod template) exposes it on 8081.
                    slice(
                        "web",
                        &[("http", "TCP", 8081)],
                        vec![ready("10.244.2.5", "node-b")],
                    ),
                    // A port of another name does not match.
                    slice(
                        "web",
                        &[("admin", "TCP", 9000)],
                        vec![ready("10.244.2.6", "node-b")],
                    ),
                ],
                vec![
                    (
                        "nodePort 30080/TCP",
                        0,
                        0,
                        &[("10.244.1.5", 8080, L), ("10.244.2.5", 8081, 0)],
                    ),
                    (
                        "10.96.0.10:80/TCP",
                        0,
                        0,
                        &[("10.244.1.5", 8080, L), ("10.244.2.5", 8081, 0)],
                    ),
                ],
            ),
            (
                "numeric targetPort is used when the slice names no ports",
                vec![web()],
                vec![EndpointSlice {
                    ports: None,
                    ..slice("web", &[], vec![ready("10.244.2.5", "node-b")])
                }],
                vec![
                    ("nodePort 30080/TCP", 0, 0, &[("10.244.2.5", 8080, 0)]),
                    ("10.96.0.10:80/TCP", 0, 0, &[("10.244.2.5", 8080, 0)]),
                ],
            ),
            (
                "multi-port: each port its own nodePort and target port",
                vec![service(
                    "web",
                    "NodePort",
                    "10.96.0.10",
                    vec![
                        sport("http", "TCP", 80, int(8080), Some(30080)),
                        sport("metrics", "TCP", 9090, named("prom"), Some(30090)),
                    ],
                )],
                vec![slice(
                    "web",
                    &[("http", "TCP", 8080), ("metrics", "TCP", 9100)],
                    vec![ready("10.244.2.5", "node-b")],
                )],
                vec![
                    ("nodePort 30080/TCP", 0, 0, &[("10.244.2.5", 8080, 0)]),
                    ("nodePort 30090/TCP", 0, 0, &[("10.244.2.5", 9100, 0)]),
                    ("10.96.0.10:80/TCP", 0, 0, &[("10.244.2.5", 8080, 0)]),
                    ("10.96.0.10:9090/TCP", 0, 0, &[("10.244.2.5", 9100, 0)]),
                ],
            ),
            (
                "same port number over TCP and UDP",
                vec![service(
                    "dns",
                    "NodePort",
                    "10.96.0.53",
                    vec![
                        sport("dns", "UDP", 53, int(5353), Some(30053)),
                        sport("dns-tcp", "TCP", 53, int(5353), Some(30053)),
                    ],
                )],
                vec![slice(
                    "dns",
                    &[("dns", "UDP", 5353), ("dns-tcp", "TCP", 5354)],
                    vec![ready("10.244.2.5", "node-b")],
                )],
                vec![
                    ("nodePort 30053/TCP", 0, 0, &[("10.244.2.5", 5354, 0)]),
                    ("nodePort 30053/UDP", 0, 0, &[("10.244.2.5", 5353, 0)]),
                    ("10.96.0.53:53/TCP", 0, 0, &[("10.244.2.5", 5354, 0)]),
                    ("10.96.0.53:53/UDP", 0, 0, &[("10.244.2.5", 5353, 0)]),
                ],
            ),
            (
                "ClientIP affinity, default timeout",
                vec![with_spec(web(), |s| {
                    s.session_affinity = Some("ClientIP".into());
                })],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![ready("10.244.2.5", "node-b")],
                )],
                vec![
                    (
                        "nodePort 30080/TCP",
                        AFF,
                        10_800,
                        &[("10.244.2.5", 8080, 0)],
                    ),
                    ("10.96.0.10:80/TCP", AFF, 10_800, &[("10.244.2.5", 8080, 0)]),
                ],
            ),
            (
                "ClientIP affinity, explicit timeout, with Local policy",
                vec![local(with_spec(web(), |s| {
                    s.session_affinity = Some("ClientIP".into());
                    s.session_affinity_config = Some(SessionAffinityConfig {
                        client_ip: Some(ClientIPConfig {
                            timeout_seconds: Some(600),
                        }),
                    });
                }))],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![ready("10.244.1.5", NODE)],
                )],
                vec![
                    (
                        "nodePort 30080/TCP",
                        AFF | LOCAL_ONLY,
                        600,
                        &[("10.244.1.5", 8080, L)],
                    ),
                    ("10.96.0.10:80/TCP", AFF, 600, &[("10.244.1.5", 8080, L)]),
                ],
            ),
            (
                "ExternalName, headless and service-proxy-name services are not served",
                vec![
                    with_spec(
                        service(
                            "ext",
                            "ExternalName",
                            "",
                            vec![sport("", "TCP", 80, None, None)],
                        ),
                        |s| {
                            s.cluster_ip = None;
                            s.external_name = Some("example.com".into());
                        },
                    ),
                    service(
                        "headless",
                        "ClusterIP",
                        "None",
                        vec![sport("", "TCP", 80, int(8080), None)],
                    ),
                    {
                        let mut s = web();
                        s.metadata.labels = Some(
                            [(LABEL_SERVICE_PROXY_NAME.to_owned(), "other".to_owned())].into(),
                        );
                        s
                    },
                ],
                vec![
                    slice(
                        "headless",
                        &[("", "TCP", 8080)],
                        vec![ready("10.244.2.5", "node-b")],
                    ),
                    slice(
                        "web",
                        &[("", "TCP", 8080)],
                        vec![ready("10.244.2.5", "node-b")],
                    ),
                ],
                vec![],
            ),
            (
                "ClusterIP service: ClusterIP frontend only",
                vec![service(
                    "web",
                    "ClusterIP",
                    "10.96.0.10",
                    vec![sport("", "TCP", 80, int(8080), Some(30080))],
                )],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![ready("10.244.2.5", "node-b")],
                )],
                vec![("10.96.0.10:80/TCP", 0, 0, &[("10.244.2.5", 8080, 0)])],
            ),
            (
                "LoadBalancer: nodePorts served",
                vec![service(
                    "lb",
                    "LoadBalancer",
                    "10.96.0.20",
                    vec![
                        sport("a", "TCP", 443, int(8443), Some(31443)),
                        // allocateLoadBalancerNodePorts: false leaves a port without one.
                        sport("b", "TCP", 444, int(8444), None),
                    ],
                )],
                vec![slice(
                    "lb",
                    &[("a", "TCP", 8443), ("b", "TCP", 8444)],
                    vec![ready("10.244.2.5", "node-b")],
                )],
                vec![
                    ("nodePort 31443/TCP", 0, 0, &[("10.244.2.5", 8443, 0)]),
                    ("10.96.0.20:443/TCP", 0, 0, &[("10.244.2.5", 8443, 0)]),
                    ("10.96.0.20:444/TCP", 0, 0, &[("10.244.2.5", 8444, 0)]),
                ],
            ),
            (
                "an endpoint in two slices once, sorted; other services' and IPv6 slices ignored",
                vec![web()],
                vec![
                    slice(
                        "web",
                        &[("", "TCP", 8080)],
                        vec![
                            ready("10.244.2.5", "node-b"),
                            ready("10.244.10.1", "node-b"),
                        ],
                    ),
                    // The stale copy says terminating; the ready view wins.
                    slice(
                        "web",
                        &[("", "TCP", 8080)],
                        vec![
                            terminating("10.244.2.5", "node-b"),
                            ready("10.244.1.5", NODE),
                        ],
                    ),
                    slice(
                        "api",
                        &[("", "TCP", 8080)],
                        vec![ready("10.244.3.1", "node-b")],
                    ),
                    EndpointSlice {
                        address_type: "IPv6".into(),
                        ..slice(
                            "web",
                            &[("", "TCP", 8080)],
                            vec![ready("fd00::1", "node-b")],
                        )
                    },
                ],
                vec![
                    (
                        "nodePort 30080/TCP",
                        0,
                        0,
                        &[
                            ("10.244.1.5", 8080, L),
                            ("10.244.2.5", 8080, 0),
                            ("10.244.10.1", 8080, 0),
                        ],
                    ),
                    (
                        "10.96.0.10:80/TCP",
                        0,
                        0,
                        &[
                            ("10.244.1.5", 8080, L),
                            ("10.244.2.5", 8080, 0),
                            ("10.244.10.1", 8080, 0),
                        ],
                    ),
                ],
            ),
            (
                "no cluster IP: NodePort frontend only",
                vec![with_spec(web(), |s| s.cluster_ip = None)],
                vec![slice(
                    "web",
                    &[("", "TCP", 8080)],
                    vec![ready("10.244.2.5", "node-b")],
                )],
                vec![("nodePort 30080/TCP", 0, 0, &[("10.244.2.5", 8080, 0)])],
            ),
        ];

        for (name, services, slices, want) in cases {
            let d = compute(&state(services, slices), NODE, &[]);
            let mut got = render(&d);
            got.sort();
            assert_eq!(got, expect(&want), "case: {name}");
            assert!(d.conflicts.is_empty(), "case: {name}");
        }
    }

    /// Topology hints (written by the EndpointSlice controller for
    /// `trafficDistribution`): Cluster-policy frontends use the endpoints
    /// hinted for this node, else for its zone, when every ready endpoint
    /// has such hints and one names it (kube-proxy's rule), else all of
    /// them; a Local-policy frontend keeps the node's own endpoints.
    #[test]
    fn topology_hints_prefer_this_zone_with_kube_proxys_fallbacks() {
        use k8s_openapi::api::core::v1::Node;
        use k8s_openapi::api::discovery::v1::{EndpointHints, ForNode, ForZone};
        let hinted = |addr: &str, node: &str, zone: Option<&str>| {
            let mut e = ready(addr, node);
            e.hints = zone.map(|z| EndpointHints {
                for_zones: Some(vec![ForZone { name: z.into() }]),
                for_nodes: None,
            });
            e
        };
        let node_hinted = |addr: &str, node: &str| {
            let mut e = hinted(addr, node, Some("zone-a"));
            if let Some(h) = e.hints.as_mut() {
                h.for_nodes = Some(vec![ForNode { name: node.into() }]);
            }
            e
        };
        let close =
            |s: Service| with_spec(s, |s| s.traffic_distribution = Some("PreferClose".into()));
        let with_zone = |mut st: ClusterState, zone: &str| {
            let mut node = Node::default();
            node.metadata.labels =
                Some([(crate::k8s::LABEL_ZONE.to_owned(), zone.to_owned())].into());
            st.nodes.insert(NODE.to_owned(), node);
            st
        };
        let addrs_of = |d: &Desired, k: &FrontendKey| -> Vec<String> {
            d.frontends[k]
                .backends
                .iter()
                .map(|b| b.addr.to_string())
                .collect()
        };
        let np = frontend_key(Ipv4Addr::UNSPECIFIED, 30080, PROTO_TCP);
        let cip = frontend_key(Ipv4Addr::new(10, 96, 0, 10), 80, PROTO_TCP);
        let both = vec![
            hinted("10.244.1.5", NODE, Some("zone-a")),
            hinted("10.244.2.5", "node-b", Some("zone-b")),
        ];
        let st = |svc: Service, eps: Vec<Endpoint>, zone: &str| {
            with_zone(
                state(vec![svc], vec![slice("web", &[("", "TCP", 8080)], eps)]),
                zone,
            )
        };
        let d = compute(&st(close(web()), both.clone(), "zone-a"), NODE, &[]);
        assert_eq!(addrs_of(&d, &np), ["10.244.1.5"], "this zone's endpoint");
        assert_eq!(addrs_of(&d, &cip), ["10.244.1.5"]);
        let d = compute(&st(close(web()), both.clone(), "zone-b"), NODE, &[]);
        assert_eq!(addrs_of(&d, &np), ["10.244.2.5"], "the other node's zone");
        let all = ["10.244.1.5", "10.244.2.5"];
        let d = compute(&st(close(web()), both.clone(), "zone-c"), NODE, &[]);
        assert_eq!(addrs_of(&d, &np), all, "no endpoint for the zone: all");
        let d = compute(&st(web(), both.clone(), "zone-a"), NODE, &[]);
        assert_eq!(
            addrs_of(&d, &np),
            ["10.244.1.5"],
            "hints are followed wherever the controller wrote them"
        );
        let same_node = vec![
            node_hinted("10.244.1.5", NODE),
            node_hinted("10.244.1.6", "node-b"),
        ];
        let d = compute(&st(close(web()), same_node.clone(), "zone-a"), NODE, &[]);
        assert_eq!(addrs_of(&d, &np), ["10.244.1.5"], "node hints first");
        let mut partly = same_node;
        partly.push(hinted("10.244.1.7", "node-b", Some("zone-a")));
        let d = compute(&st(close(web()), partly, "zone-a"), NODE, &[]);
        assert_eq!(
            addrs_of(&d, &np).len(),
            3,
            "an endpoint without node hints: zone hints (all three in zone-a)"
        );
        let mut unhinted = both.clone();
        unhinted.push(hinted("10.244.2.6", "node-b", None));
        let d = compute(&st(close(web()), unhinted, "zone-a"), NODE, &[]);
        assert_eq!(addrs_of(&d, &np).len(), 3, "an endpoint without hints: all");
        let d = compute(
            &state(
                vec![close(web())],
                vec![slice("web", &[("", "TCP", 8080)], both.clone())],
            ),
            NODE,
            &[],
        );
        assert_eq!(addrs_of(&d, &np), all, "a node without a zone: all");
        let local = with_spec(close(web()), |s| {
            s.external_traffic_policy = Some("Local".into());
        });
        let d = compute(&st(local, both, "zone-b"), NODE, &[]);
        assert_eq!(
            addrs_of(&d, &np),
            ["10.244.1.5"],
            "externalTrafficPolicy Local: the node's own endpoint"
        );
        assert_eq!(addrs_of(&d, &cip), ["10.244.2.5"], "ClusterIP: zone-b's");
    }

    #[test]
    fn owners_and_kinds() {
        let svc = service(
            "web",
            "NodePort",
            "10.96.0.10",
            vec![sport("http", "TCP", 80, int(8080), Some(30080))],
        );
        let d = compute(&state(vec![svc], vec![]), NODE, &[]);
        let np = &d.frontends[&frontend_key(Ipv4Addr::UNSPECIFIED, 30080, PROTO_TCP)];
        assert_eq!(np.kind, FrontendKind::NodePort);
        assert_eq!(np.owner.to_string(), "default/web:http");
        assert!(np.backends.is_empty());
        let cip = &d.frontends[&frontend_key(Ipv4Addr::new(10, 96, 0, 10), 80, PROTO_TCP)];
        assert_eq!(cip.kind, FrontendKind::ClusterIp);
        assert_eq!(cip.flags, 0, "an empty Cluster-policy frontend rejects");
    }

    #[test]
    fn node_addrs_draining_and_health_checks() {
        let svc = with_spec(web(), |s| {
            s.external_traffic_policy = Some("Local".into());
            s.health_check_node_port = Some(32000);
        });
        let sl = slice(
            "web",
            &[("", "TCP", 8080)],
            vec![
                ready("10.244.1.5", NODE),
                ready("10.244.1.6", NODE),
                terminating("10.244.1.7", NODE),
                ready("10.244.2.5", "node-b"),
                ep("10.244.2.6", "node-b", Some(false), Some(false), Some(true)),
            ],
        );
        let addrs = [
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 1, 10),
        ];
        let d = compute(&state(vec![svc], vec![sl]), NODE, &addrs);
        assert_eq!(
            d.node_addrs,
            BTreeSet::from([Ipv4Addr::new(192, 168, 1, 10)])
        );
        assert_eq!(
            d.draining,
            vec![DesiredBackend {
                addr: Ipv4Addr::new(10, 244, 1, 7),
                port: 8080,
                flags: L | T
            }]
        );
        assert_eq!(
            d.health_checks,
            BTreeMap::from([(
                key("web"),
                HealthCheck {
                    node_port: 32000,
                    local_endpoints: 2
                }
            )])
        );
    }

    #[test]
    fn conflicting_frontends_keep_the_first() {
        let a = service(
            "a",
            "NodePort",
            "10.96.0.1",
            vec![sport("", "TCP", 80, int(8080), Some(30080))],
        );
        let b = service(
            "b",
            "NodePort",
            "10.96.0.2",
            vec![sport("", "TCP", 80, int(8080), Some(30080))],
        );
        let d = compute(&state(vec![b, a], vec![]), NODE, &[]);
        assert_eq!(d.frontends.len(), 3);
        assert_eq!(d.conflicts.len(), 1);
        assert_eq!(d.conflicts[0].kept.service, key("a"));
        assert_eq!(d.conflicts[0].dropped.service, key("b"));
    }

    #[test]
    fn backend_value_is_network_order() {
        let b = DesiredBackend {
            addr: Ipv4Addr::new(10, 244, 1, 5),
            port: 8080,
            flags: L,
        }
        .to_backend();
        assert_eq!(b.addr_be.to_ne_bytes(), [10, 244, 1, 5]);
        assert_eq!(b.port_be.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(
            describe_frontend(&frontend_key(Ipv4Addr::new(10, 96, 0, 10), 53, PROTO_UDP)),
            "10.96.0.10:53/UDP"
        );
    }
}
