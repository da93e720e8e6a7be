//! What the desired-state computation needs of each cluster object, and
//! nothing more: a Service's serving settings and ports, an EndpointSlice's
//! service, ports and endpoints (with locality decided against this node).
//! The store keeps these instead of whole k8s-openapi objects (a slice of
//! ten endpoints is a few hundred bytes here, kilobytes as an object), and
//! shares them (`Arc`) rather than copying them on every change.

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::k8s;

/// A Service as served by this proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    /// `None` for a Service this proxy does not serve (ExternalName,
    /// headless, labelled for another proxy, without a spec).
    pub served: Option<Served>,
}

/// How a served Service is served.
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent settings of the spec"
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The IPv4 cluster IP, if any.
    pub cluster_ip: Option<Ipv4Addr>,
    /// The IPv4 `externalIPs`, sorted, without duplicates: served to
    /// traffic from outside like a `NodePort`, on the Service's ports.
    pub external_ips: Vec<Ipv4Addr>,
    /// The IPv4 LoadBalancer ingress IPs but those of `ipMode: Proxy`,
    /// sorted, without duplicates: served as `external_ips` are, within
    /// `source_ranges`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// IPv4 `loadBalancerSourceRanges` of a LoadBalancer (network address,
    /// prefix length), sorted: only clients in them reach its ingress IPs
    /// and nodePorts. Empty: every client.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// NodePort or LoadBalancer: its ports' `nodePort`s are served.
    pub node_ports: bool,
    /// `externalTrafficPolicy: Local` (on a Service with node ports).
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP` with its timeout.
    pub affinity_timeout_s: Option<u32>,
    pub publish_not_ready: bool,
    pub health_check_node_port: Option<u16>,
    /// The ports that can be served (valid protocol and port), in order.
    pub ports: Vec<PortModel>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortModel {
    /// Empty for a single unnamed port.
    pub name: String,
    pub proto: u8,
    pub port: u16,
    pub node_port: Option<u16>,
    /// The numeric target port when a slice does not say (the `targetPort`
    /// number, or `port` when absent); `None` for a named or invalid one.
    pub numeric_target: Option<u16>,
}

/// An EndpointSlice as the desired state reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceModel {
    /// The Service it belongs to (`kubernetes.io/service-name`), when it is
    /// an IPv4 slice this proxy serves; `None` otherwise.
    pub service: Option<Arc<str>>,
    /// `None`: the slice lists no ports (every service port's numeric
    /// target applies).
    pub ports: Option<Vec<SlicePortModel>>,
    pub endpoints: Vec<EndpointModel>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`, for the network
    /// programming latency.
    pub trigger_time: Option<Arc<str>>,
}

/// A port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePortModel {
    pub name: String,
    /// `None`: an unknown protocol (matches no service port).
    pub proto: Option<u8>,
    pub number: SlicePortNumber,
}

/// The number of a slice port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlicePortNumber {
    /// Absent: "any port", the service port's numeric target applies.
    Absent,
    Valid(u16),
    /// Out of range: the slice serves nothing on this port.
    Invalid,
}

/// One endpoint (its first address).
#[allow(
    clippy::struct_excessive_bools,
    reason = "the API's endpoint conditions"
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointModel {
    pub addr: Ipv4Addr,
    /// `ready` (absent means ready).
    pub ready: bool,
    /// `serving` (absent defers to `ready`).
    pub serving: bool,
    pub terminating: bool,
    /// Its `nodeName` is this node.
    pub local: bool,
    /// `hints.forZones` (`None`: no hints), for topology-aware routing.
    pub zone_hints: Option<Box<[Arc<str>]>>,
    /// `hints.forNodes`: `None` without, else whether they name this node.
    pub for_this_node: Option<bool>,
}

/// A port number from the API (1..=65535).
#[must_use]
pub fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

impl ServiceModel {
    #[must_use]
    pub fn from_service(svc: &Service) -> Self {
        Self {
            served: Served::from_service(svc),
        }
    }
}

impl Served {
    fn from_service(svc: &Service) -> Option<Self> {
        if svc
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(k8s::LABEL_SERVICE_PROXY_NAME))
        {
            return None;
        }
        let spec = svc.spec.as_ref()?;
        let node_ports = match spec.type_.as_deref().unwrap_or(k8s::TYPE_CLUSTER_IP) {
            k8s::TYPE_CLUSTER_IP => false,
            k8s::TYPE_NODE_PORT | k8s::TYPE_LOAD_BALANCER => true,
            _ => return None,
        };
        if spec.cluster_ip.as_deref() == Some(k8s::CLUSTER_IP_NONE) {
            return None;
        }
        let cluster_ip = spec
            .cluster_ip
            .iter()
            .chain(spec.cluster_ips.iter().flatten())
            .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| !ip.is_unspecified());
        let affinity_timeout_s =
            (spec.session_affinity.as_deref() == Some(k8s::AFFINITY_CLIENT_IP)).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|t| *t > 0)
                    .unwrap_or(k8s::DEFAULT_AFFINITY_TIMEOUT_S)
            });
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(PortModel::from_port)
            .collect();
        let (external_ips, load_balancer_ips) = external_ips(svc);
        let source_ranges = if spec.type_.as_deref() == Some(k8s::TYPE_LOAD_BALANCER) {
            source_ranges(svc)
        } else {
            Vec::new()
        };
        Some(Self {
            cluster_ip,
            node_ports,
            external_local: (node_ports || !external_ips.is_empty())
                && spec.external_traffic_policy.as_deref() == Some(k8s::POLICY_LOCAL),
            external_ips,
            load_balancer_ips,
            source_ranges,
            internal_local: spec.internal_traffic_policy.as_deref() == Some(k8s::POLICY_LOCAL),
            affinity_timeout_s,
            publish_not_ready: spec.publish_not_ready_addresses == Some(true),
            health_check_node_port: spec.health_check_node_port.and_then(valid_port),
            ports,
        })
    }
}

/// The external addresses of `svc` that are served: its IPv4
/// `externalIPs`, and for a LoadBalancer its ingress IPs but those of
/// `ipMode: Proxy`.
fn external_ips(svc: &Service) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    let spec = svc.spec.as_ref();
    let load_balancer = spec.and_then(|s| s.type_.as_deref()) == Some(k8s::TYPE_LOAD_BALANCER);
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .filter(|_| load_balancer)
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some(k8s::IP_MODE_PROXY))
        .filter_map(|i| i.ip.as_deref());
    let external = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str);
    (ipv4_set(external), ipv4_set(ingress))
}

/// The IPv4 addresses of `ips`, sorted, without duplicates or 0.0.0.0.
fn ipv4_set<'a>(ips: impl Iterator<Item = &'a str>) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = ips
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The IPv4 `loadBalancerSourceRanges` of `svc` (or, when the field is
/// empty, of its `service.beta.kubernetes.io/load-balancer-source-ranges`
/// annotation, as kube-proxy reads it), as network address and prefix
/// length. Ranges of the other family are not this datapath's.
fn source_ranges(svc: &Service) -> Vec<(Ipv4Addr, u8)> {
    let field = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.clone())
        .unwrap_or_default();
    let annotation = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(k8s::ANNOTATION_SOURCE_RANGES));
    let texts: Vec<&str> = if field.is_empty() {
        annotation
            .map(|a| {
                a.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        field.iter().map(|s| s.trim()).collect()
    };
    let mut out: Vec<(Ipv4Addr, u8)> = texts.into_iter().filter_map(parse_ipv4_cidr).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `a.b.c.d/n` as its network address and `n`.
#[must_use]
pub fn parse_ipv4_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Some((Ipv4Addr::from(u32::from(addr) & mask), len))
}

impl PortModel {
    fn from_port(port: &ServicePort) -> Option<Self> {
        let proto = k8s::protocol_number(port.protocol.as_deref())?;
        let number = valid_port(port.port)?;
        let numeric_target = match &port.target_port {
            None => Some(number),
            Some(IntOrString::Int(n)) => valid_port(*n),
            Some(IntOrString::String(_)) => None,
        };
        Some(Self {
            name: port.name.clone().unwrap_or_default(),
            proto,
            port: number,
            node_port: port.node_port.and_then(valid_port),
            numeric_target,
        })
    }
}

impl SliceModel {
    /// The slice as seen from node `node_name`.
    #[must_use]
    pub fn from_slice(slice: &EndpointSlice, node_name: &str) -> Self {
        let labels = slice.metadata.labels.as_ref();
        let service = if slice.address_type == k8s::ADDRESS_TYPE_IPV4
            && labels.is_some_and(|l| !l.contains_key(k8s::LABEL_SERVICE_PROXY_NAME))
        {
            labels
                .and_then(|l| l.get(k8s::LABEL_SERVICE_NAME))
                .map(|s| Arc::from(s.as_str()))
        } else {
            None
        };
        let ports = slice.ports.as_ref().filter(|p| !p.is_empty()).map(|ports| {
            ports
                .iter()
                .map(|p| SlicePortModel {
                    name: p.name.clone().unwrap_or_default(),
                    proto: k8s::protocol_number(p.protocol.as_deref()),
                    number: match p.port {
                        None => SlicePortNumber::Absent,
                        Some(n) => {
                            valid_port(n).map_or(SlicePortNumber::Invalid, SlicePortNumber::Valid)
                        }
                    },
                })
                .collect()
        });
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|ep| {
                let addr = ep.addresses.first()?.parse::<Ipv4Addr>().ok()?;
                let cond = ep.conditions.clone().unwrap_or_default();
                let ready = cond.ready.unwrap_or(true);
                Some(EndpointModel {
                    addr,
                    ready,
                    serving: cond.serving.unwrap_or(ready),
                    terminating: cond.terminating.unwrap_or(false),
                    local: ep.node_name.as_deref() == Some(node_name),
                    zone_hints: ep
                        .hints
                        .as_ref()
                        .and_then(|h| h.for_zones.as_ref())
                        .filter(|zones| !zones.is_empty())
                        .map(|zones| zones.iter().map(|z| Arc::from(z.name.as_str())).collect()),
                    for_this_node: ep
                        .hints
                        .as_ref()
                        .and_then(|h| h.for_nodes.as_ref())
                        .filter(|nodes| !nodes.is_empty())
                        .map(|nodes| nodes.iter().any(|n| n.name == node_name)),
                })
            })
            .collect();
        let trigger_time = slice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k8s::ANNOTATION_TRIGGER_TIME))
            .map(|s| Arc::from(s.as_str()));
        Self {
            service,
            ports,
            endpoints,
            trigger_time,
        }
    }

    /// The target port of service port `port` in this slice: the number of
    /// the slice port with the same name and protocol; the numeric target
    /// when the slice names no ports or the matching one has no number;
    /// `None` when the slice serves nothing for it.
    #[must_use]
    pub fn target_port(&self, port: &PortModel) -> Option<u16> {
        let Some(ports) = &self.ports else {
            return port.numeric_target;
        };
        let matching = ports
            .iter()
            .find(|p| p.name == port.name && p.proto == Some(port.proto))?;
        match matching.number {
            SlicePortNumber::Valid(n) => Some(n),
            SlicePortNumber::Absent => port.numeric_target,
            SlicePortNumber::Invalid => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    #[test]
    fn source_ranges_are_networks_of_the_field_or_else_the_annotation() {
        assert_eq!(
            parse_ipv4_cidr("10.200.0.7/24"),
            Some((Ipv4Addr::new(10, 200, 0, 0), 24))
        );
        assert_eq!(
            parse_ipv4_cidr("0.0.0.0/0"),
            Some((Ipv4Addr::UNSPECIFIED, 0))
        );
        assert_eq!(
            parse_ipv4_cidr("10.1.2.3/32"),
            Some((Ipv4Addr::new(10, 1, 2, 3), 32))
        );
        for bad in ["10.0.0.0", "10.0.0.0/33", "2001:db8::/32", "x/8"] {
            assert_eq!(parse_ipv4_cidr(bad), None, "{bad}");
        }
        let mut svc = Service::default();
        svc.metadata.annotations = Some(
            [(
                k8s::ANNOTATION_SOURCE_RANGES.to_owned(),
                "192.0.2.0/24, 10.0.0.0/8".to_owned(),
            )]
            .into(),
        );
        assert_eq!(
            source_ranges(&svc),
            [
                (Ipv4Addr::new(10, 0, 0, 0), 8),
                (Ipv4Addr::new(192, 0, 2, 0), 24)
            ]
        );
        svc.spec = Some(ServiceSpec {
            load_balancer_source_ranges: Some(vec!["198.51.100.0/25".to_owned()]),
            ..ServiceSpec::default()
        });
        assert_eq!(
            source_ranges(&svc),
            [(Ipv4Addr::new(198, 51, 100, 0), 25)],
            "the field wins over the annotation"
        );
    }
}
