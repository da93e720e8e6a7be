//! Service, EndpointSlice and Node objects, built as k8s-openapi values and
//! written as YAML for the manifests directory or the test API server alike.
//!
//! Fields a builder is not asked for stay unset, so they are left out of the
//! YAML as a user would leave them out of a manifest.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus,
    Service, ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Serialize, Serializer};

use crate::cluster::pod_addr;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One port of a Service: `(name, protocol, port, targetPort, nodePort)`.
pub type SvcPort<'a> = (&'a str, &'a str, u16, u16, u16);

/// One endpoint: `(node index, pod index, ready)`.
pub type Ep = (usize, usize, bool);

/// Ready, serving, not terminating.
pub const READY: EndpointConditions = conditions(true, true, false);
/// Neither ready nor serving.
pub const NOT_READY: EndpointConditions = conditions(false, false, false);
/// Terminating but still serving (graceful shutdown).
pub const TERMINATING: EndpointConditions = conditions(false, true, true);

/// Endpoint conditions with all three set.
#[must_use]
pub const fn conditions(ready: bool, serving: bool, terminating: bool) -> EndpointConditions {
    EndpointConditions {
        ready: Some(ready),
        serving: Some(serving),
        terminating: Some(terminating),
    }
}

/// Endpoint conditions with only `ready` set.
#[must_use]
pub const fn only_ready(ready: bool) -> EndpointConditions {
    EndpointConditions {
        ready: Some(ready),
        serving: None,
        terminating: None,
    }
}

/// A Service's targetPort: a number, or the name of a port in its
/// EndpointSlices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Port(u16),
    Name(&'a str),
}

impl From<Target<'_>> for IntOrString {
    fn from(target: Target<'_>) -> Self {
        match target {
            Target::Port(port) => IntOrString::Int(port.into()),
            Target::Name(name) => IntOrString::String(name.to_owned()),
        }
    }
}

/// A Service port `name`: `protocol` `port` to `target`, with a nodePort
/// when given.
#[must_use]
pub fn service_port(
    name: &str,
    protocol: &str,
    port: u16,
    target: Target<'_>,
    node_port: Option<u16>,
) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        protocol: Some(protocol.to_owned()),
        port: port.into(),
        target_port: Some(target.into()),
        node_port: node_port.map(i32::from),
        ..ServicePort::default()
    }
}

fn metadata(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectMeta::default()
    }
}

/// A Service, built up field by field.
#[derive(Clone, Debug)]
#[must_use]
pub struct ServiceBuilder {
    service: Service,
}

impl ServiceBuilder {
    /// A Service `namespace/name` of type `type_` (`NodePort`, `ClusterIP`,
    /// `LoadBalancer`), without ports.
    pub fn new(namespace: &str, name: &str, type_: &str) -> Self {
        Self {
            service: Service {
                metadata: metadata(namespace, name),
                spec: Some(ServiceSpec {
                    type_: Some(type_.to_owned()),
                    ..ServiceSpec::default()
                }),
                status: None,
            },
        }
    }

    /// A Service `default/name` of type NodePort, without ports.
    pub fn node_port(name: &str) -> Self {
        Self::new("default", name, "NodePort")
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.service.spec.get_or_insert_with(ServiceSpec::default)
    }

    /// `metadata.name`.
    #[must_use]
    pub fn name(&self) -> &str {
        self.service.metadata.name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`.
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.service
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
    }

    /// Changes `type` alone: the ports keep their nodePorts, as an edit that
    /// only changes the type leaves them.
    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.to_owned());
        self
    }

    /// Drops every port's nodePort.
    pub fn without_node_ports(mut self) -> Self {
        for port in self.spec().ports.iter_mut().flatten() {
            port.node_port = None;
        }
        self
    }

    pub fn cluster_ip(mut self, ip: Ipv4Addr) -> Self {
        self.spec().cluster_ip = Some(ip.to_string());
        self
    }

    pub fn port(mut self, port: ServicePort) -> Self {
        self.spec().ports.get_or_insert_with(Vec::new).push(port);
        self
    }

    /// Ports `(name, protocol, port, targetPort, nodePort)`.
    pub fn ports(self, ports: &[SvcPort<'_>]) -> Self {
        ports
            .iter()
            .fold(self, |svc, &(name, protocol, port, target, node_port)| {
                svc.port(service_port(
                    name,
                    protocol,
                    port,
                    Target::Port(target),
                    Some(node_port),
                ))
            })
    }

    /// A TCP port `name`: `port` to targetPort `target` on nodePort
    /// `node_port`.
    pub fn tcp(self, name: &str, port: u16, target: u16, node_port: u16) -> Self {
        self.port(service_port(
            name,
            "TCP",
            port,
            Target::Port(target),
            Some(node_port),
        ))
    }

    /// As [`ServiceBuilder::tcp`], for UDP.
    pub fn udp(self, name: &str, port: u16, target: u16, node_port: u16) -> Self {
        self.port(service_port(
            name,
            "UDP",
            port,
            Target::Port(target),
            Some(node_port),
        ))
    }

    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.to_owned());
        self
    }

    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().internal_traffic_policy = Some(policy.to_owned());
        self
    }

    /// `spec.externalIPs`.
    pub fn external_ips(mut self, ips: &[Ipv4Addr]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(ToString::to_string).collect());
        self
    }

    /// `spec.trafficDistribution` (`PreferClose`, ...).
    pub fn traffic_distribution(mut self, distribution: &str) -> Self {
        self.spec().traffic_distribution = Some(distribution.to_owned());
        self
    }

    /// `spec.loadBalancerSourceRanges`.
    pub fn load_balancer_source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges =
            Some(ranges.iter().map(|r| (*r).to_owned()).collect());
        self
    }

    /// One more `status.loadBalancer.ingress` entry: `ip`, with `ipMode`
    /// when given (`VIP`, `Proxy`).
    pub fn load_balancer_ingress(mut self, ip: Ipv4Addr, ip_mode: Option<&str>) -> Self {
        let status = self.service.status.get_or_insert_with(ServiceStatus::default);
        status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default)
            .ingress
            .get_or_insert_with(Vec::new)
            .push(LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ip_mode: ip_mode.map(str::to_owned),
                ..LoadBalancerIngress::default()
            });
        self
    }

    pub fn health_check_node_port(mut self, port: u16) -> Self {
        self.spec().health_check_node_port = Some(port.into());
        self
    }

    /// `sessionAffinity: ClientIP` with `timeoutSeconds`.
    pub fn session_affinity_client_ip(mut self, timeout_seconds: u32) -> Self {
        let timeout = i32::try_from(timeout_seconds).expect("timeoutSeconds fits in i32");
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".to_owned());
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(timeout),
            }),
        });
        self
    }

    /// No `sessionAffinity` (nor its config) at all.
    pub fn without_session_affinity(mut self) -> Self {
        let spec = self.spec();
        spec.session_affinity = None;
        spec.session_affinity_config = None;
        self
    }

    /// `publishNotReadyAddresses: true`.
    pub fn publish_not_ready_addresses(mut self) -> Self {
        self.spec().publish_not_ready_addresses = Some(true);
        self
    }

    /// A `metadata.labels` entry.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.service
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// An EndpointSlice `<name>-<suffix>` of this Service with a port for
    /// each Service port that has a numeric targetPort (the Service port's
    /// name and protocol, the targetPort as port), and no endpoints.
    pub fn slice(&self, suffix: &str) -> SliceBuilder {
        let name = self.name();
        let mut slice = SliceBuilder::new(self.namespace(), name, &format!("{name}-{suffix}"));
        let ports = self
            .service
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten());
        for port in ports {
            if let Some(IntOrString::Int(target)) = port.target_port {
                let target = u16::try_from(target).expect("targetPort is a port number");
                slice = slice.port(
                    port.name.as_deref().unwrap_or_default(),
                    port.protocol.as_deref().unwrap_or("TCP"),
                    target,
                );
            }
        }
        slice
    }

    #[must_use]
    pub fn build(self) -> Service {
        self.service
    }
}

impl Serialize for ServiceBuilder {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.service.serialize(serializer)
    }
}

/// The endpoint of pod `pod` of node `node` of the test cluster.
#[must_use]
pub fn pod_endpoint(node: usize, pod: usize, conditions: EndpointConditions) -> Endpoint {
    endpoint(pod_addr(node, pod), &format!("node{node}"), conditions)
}

/// An endpoint at `addr` on node `node_name`.
#[must_use]
pub fn endpoint(addr: Ipv4Addr, node_name: &str, conditions: EndpointConditions) -> Endpoint {
    Endpoint {
        addresses: vec![addr.to_string()],
        node_name: Some(node_name.to_owned()),
        conditions: Some(conditions),
        ..Endpoint::default()
    }
}

/// An IPv4 EndpointSlice, built up port by port and endpoint by endpoint.
#[derive(Clone, Debug)]
#[must_use]
pub struct SliceBuilder {
    slice: EndpointSlice,
}

impl SliceBuilder {
    /// An EndpointSlice `namespace/name` of Service `service`, without ports
    /// or endpoints (written as `endpoints: []`).
    pub fn new(namespace: &str, service: &str, name: &str) -> Self {
        let mut metadata = metadata(namespace, name);
        metadata.labels = Some(BTreeMap::from([(
            SERVICE_NAME_LABEL.to_owned(),
            service.to_owned(),
        )]));
        Self {
            slice: EndpointSlice {
                metadata,
                address_type: "IPv4".to_owned(),
                endpoints: Vec::new(),
                ports: None,
            },
        }
    }

    /// A port `name`: `protocol` `port`.
    pub fn port(mut self, name: &str, protocol: &str, port: u16) -> Self {
        self.slice
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: Some(name.to_owned()),
                protocol: Some(protocol.to_owned()),
                port: Some(port.into()),
                app_protocol: None,
            });
        self
    }

    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.slice.endpoints.push(endpoint);
        self
    }

    pub fn endpoints(mut self, endpoints: &[Endpoint]) -> Self {
        self.slice.endpoints.extend_from_slice(endpoints);
        self
    }

    /// Endpoints of the test cluster's pods `(node, pod, ready)`, with only
    /// the `ready` condition.
    pub fn pods(mut self, pods: &[Ep]) -> Self {
        self.slice.endpoints.extend(
            pods.iter()
                .map(|&(node, pod, ready)| pod_endpoint(node, pod, only_ready(ready))),
        );
        self
    }

    #[must_use]
    pub fn build(self) -> EndpointSlice {
        self.slice
    }
}

impl Serialize for SliceBuilder {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.slice.serialize(serializer)
    }
}

/// A Node `name` with `internal_ip` as its `InternalIP` and its name as its
/// `Hostname`.
#[must_use]
pub fn node(name: &str, internal_ip: Ipv4Addr) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_owned(),
                    address: internal_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".to_owned(),
                    address: name.to_owned(),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

/// Something [`to_yaml`] writes as one YAML document: any serializable
/// object, a k8s-openapi value or one of the builders.
pub trait ToYaml {
    /// Appends `self` to `out` as one more document (after a `---` when
    /// `out` already holds one).
    fn write_yaml(&self, out: &mut String);

    /// `self` as one YAML document.
    #[must_use]
    fn yaml(&self) -> String {
        let mut out = String::new();
        self.write_yaml(&mut out);
        out
    }
}

impl<T: Serialize> ToYaml for T {
    fn write_yaml(&self, out: &mut String) {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        serde_saphyr::to_fmt_writer(out, self).expect("an object serializes to YAML");
    }
}

/// `objects` as one multi-document YAML string, in order.
#[must_use]
pub fn to_yaml(objects: &[&dyn ToYaml]) -> String {
    let mut out = String::new();
    for object in objects {
        object.write_yaml(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_parses_as_kubernetes_objects() {
        let svc = ServiceBuilder::node_port("web")
            .tcp("tcp", 80, 8080, 30080)
            .udp("udp", 80, 8080, 30080)
            .port(service_port("named", "TCP", 81, Target::Name("web"), None))
            .external_traffic_policy("Local")
            .internal_traffic_policy("Cluster")
            .health_check_node_port(32000)
            .session_affinity_client_ip(60)
            .publish_not_ready_addresses()
            .cluster_ip(Ipv4Addr::new(10, 96, 0, 30))
            .label("app", "web")
            .label("flag", "true");
        let slice = svc
            .slice("x1")
            .pods(&[(1, 1, true), (2, 1, false)])
            .endpoint(pod_endpoint(2, 2, TERMINATING));
        let empty = svc.slice("x2");
        let yaml = to_yaml(&[
            &svc,
            &slice,
            &empty,
            &node("node1", Ipv4Addr::new(10, 200, 0, 11)),
        ]);
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("yaml");
        assert_eq!(docs.len(), 4, "{yaml}");

        let parsed: Service = serde_json::from_value(docs[0].clone()).expect("a Service");
        assert_eq!(parsed, svc.clone().build(), "{yaml}");
        let s = parsed.spec.unwrap();
        assert_eq!(s.type_.as_deref(), Some("NodePort"));
        assert_eq!(s.health_check_node_port, Some(32000));
        let ports = s.ports.unwrap();
        assert_eq!(ports[1].node_port, Some(30080));
        assert_eq!(ports[1].target_port, Some(IntOrString::Int(8080)));
        assert_eq!(
            ports[2].target_port,
            Some(IntOrString::String("web".into()))
        );
        assert_eq!(ports[2].node_port, None);
        assert_eq!(docs[0]["spec"]["ports"][0]["port"], 80, "a number");
        assert_eq!(docs[0]["metadata"]["labels"]["flag"], "true", "a string");
        assert!(docs[0].get("status").is_none(), "{yaml}");
        assert!(docs[0]["spec"].get("selector").is_none(), "{yaml}");

        let parsed: EndpointSlice =
            serde_json::from_value(docs[1].clone()).expect("an EndpointSlice");
        assert_eq!(parsed, slice.build());
        assert_eq!(parsed.metadata.name.as_deref(), Some("web-x1"));
        let ports = parsed.ports.unwrap();
        assert_eq!(ports.len(), 2, "no port for the named targetPort");
        assert_eq!(ports[0].port, Some(8080));
        assert_eq!(parsed.endpoints.len(), 3);
        assert_eq!(parsed.endpoints[0].addresses, ["10.244.1.11"]);
        assert_eq!(parsed.endpoints[1].node_name.as_deref(), Some("node2"));
        assert_eq!(parsed.endpoints[1].conditions, Some(only_ready(false)));
        assert!(
            docs[1]["endpoints"][1]["conditions"]
                .get("serving")
                .is_none(),
            "{yaml}"
        );
        assert_eq!(parsed.endpoints[2].conditions, Some(TERMINATING));

        assert_eq!(docs[2]["endpoints"], serde_json::json!([]), "{yaml}");

        let parsed: Node = serde_json::from_value(docs[3].clone()).expect("a Node");
        let addresses = parsed.status.unwrap().addresses.unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "10.200.0.11");
        assert_eq!(addresses[1].address, "node1");
    }

    #[test]
    fn edits_keep_or_drop_fields() {
        let svc = ServiceBuilder::node_port("lb")
            .tcp("tcp", 80, 8080, 31094)
            .session_affinity_client_ip(10)
            .type_("ClusterIP");
        let spec = svc.clone().build().spec.unwrap();
        assert_eq!(spec.ports.unwrap()[0].node_port, Some(31094));
        let spec = svc
            .without_node_ports()
            .without_session_affinity()
            .build()
            .spec
            .unwrap();
        assert_eq!(spec.ports.unwrap()[0].node_port, None);
        assert_eq!(spec.session_affinity, None);
        assert_eq!(spec.session_affinity_config, None);
    }
}
