//! Synthetic Services and EndpointSlices: the same definitions become the
//! agent's manifests and kube-proxy's iptables and nftables rules, so every
//! datapath is programmed with exactly the same Services.

use std::net::Ipv4Addr;

use nodeport_tests::objects::{
    READY, ServiceBuilder, SliceBuilder, Target, ToYaml as _, endpoint, service_port,
};

/// Namespace of every synthetic object.
pub const NAMESPACE: &str = "bench";
/// The Service CIDR the ClusterIPs come from (kube-proxy's nftables mode
/// drops traffic to unallocated addresses in it).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The cluster's pod CIDR (kube-proxy masquerades ClusterIP traffic from
/// outside it).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// First nodePort handed out.
pub const NODE_PORT_BASE: u16 = 30_000;

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// `TCP` / `UDP`, as the Kubernetes API spells it.
    #[must_use]
    pub fn api(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }

    /// `tcp` / `udp`, as iptables and nft spell it.
    #[must_use]
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDef {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
    pub target_port: u16,
    pub node_port: Option<u16>,
}

/// An endpoint: pod address and the node it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDef {
    pub addr: Ipv4Addr,
    pub node: String,
}

/// An EndpointSlice: endpoints serving some of the Service's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceDef {
    /// Indices into [`ServiceDef::ports`].
    pub ports: Vec<usize>,
    pub endpoints: Vec<EndpointDef>,
}

/// A Service of type NodePort (when any port has a nodePort) or ClusterIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<PortDef>,
    pub slices: Vec<SliceDef>,
}

impl ServiceDef {
    /// `namespace/name:port`, kube-proxy's name of a service port.
    #[must_use]
    pub fn port_name(&self, port: &PortDef) -> String {
        format!("{NAMESPACE}/{}:{}", self.name, port.name)
    }

    /// The endpoints serving port `index`, deduplicated, in slice order.
    #[must_use]
    pub fn endpoints_of(&self, index: usize) -> Vec<(Ipv4Addr, u16)> {
        let target = self.ports[index].target_port;
        let mut out: Vec<(Ipv4Addr, u16)> = Vec::new();
        for slice in self.slices.iter().filter(|s| s.ports.contains(&index)) {
            for ep in &slice.endpoints {
                if !out.contains(&(ep.addr, target)) {
                    out.push((ep.addr, target));
                }
            }
        }
        out
    }
}

/// The `i`-th address after `base`.
#[must_use]
pub fn offset(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("address offset fits in u32");
    Ipv4Addr::from(u32::from(base) + i)
}

/// ClusterIP of filler Service `i`: 10.96.0.1 and up.
#[must_use]
pub fn filler_cluster_ip(i: usize) -> Ipv4Addr {
    offset(Ipv4Addr::new(10, 96, 0, 1), i)
}

/// A filler Service with one TCP port 80 → `target_port`, a nodePort when
/// given, and `endpoints`.
#[must_use]
pub fn filler(
    i: usize,
    node_port: Option<u16>,
    target_port: u16,
    endpoints: Vec<EndpointDef>,
) -> ServiceDef {
    ServiceDef {
        name: format!("svc-{i}"),
        cluster_ip: filler_cluster_ip(i),
        ports: vec![PortDef {
            name: "http".into(),
            proto: Proto::Tcp,
            port: 80,
            target_port,
            node_port,
        }],
        slices: vec![SliceDef {
            ports: vec![0],
            endpoints,
        }],
    }
}

/// The control-plane benchmark's Services: `n` Services with `endpoints`
/// endpoints each (distinct pod addresses from 10.128.0.0, spread over
/// `node1` and `node2`). The first `node_ports` of them are of type NodePort
/// (nodePorts from [`NODE_PORT_BASE`]), the rest ClusterIP.
#[must_use]
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "used by the control-plane benchmark, built into the example and the tests"
    )
)]
pub fn control_plane_services(n: usize, endpoints: usize, node_ports: usize) -> Vec<ServiceDef> {
    (0..n)
        .map(|i| {
            let eps = (0..endpoints)
                .map(|j| EndpointDef {
                    addr: offset(Ipv4Addr::new(10, 128, 0, 0), i * endpoints + j),
                    node: format!("node{}", 1 + (i + j) % 2),
                })
                .collect();
            let node_port = (i < node_ports).then(|| node_port(i));
            filler(i, node_port, 8080, eps)
        })
        .collect()
}

/// The `i`-th nodePort from [`NODE_PORT_BASE`].
#[must_use]
pub fn node_port(i: usize) -> u16 {
    NODE_PORT_BASE + u16::try_from(i).expect("nodePort index fits in u16")
}

/// `svc` as a Service object: NodePort when any port has a nodePort,
/// ClusterIP otherwise.
fn service(svc: &ServiceDef) -> ServiceBuilder {
    let type_ = if svc.ports.iter().any(|p| p.node_port.is_some()) {
        "NodePort"
    } else {
        "ClusterIP"
    };
    let object = ServiceBuilder::new(NAMESPACE, &svc.name, type_).cluster_ip(svc.cluster_ip);
    svc.ports.iter().fold(object, |object, p| {
        object.port(service_port(
            &p.name,
            p.proto.api(),
            p.port,
            Target::Port(p.target_port),
            p.node_port,
        ))
    })
}

/// Slice `index` of `svc` as an EndpointSlice object `<name>-<index>`, every
/// endpoint ready.
fn slice(svc: &ServiceDef, index: usize, slice: &SliceDef) -> SliceBuilder {
    let name = format!("{}-{index}", svc.name);
    let object = slice.ports.iter().map(|&p| &svc.ports[p]).fold(
        SliceBuilder::new(NAMESPACE, &svc.name, &name),
        |object, p| object.port(&p.name, p.proto.api(), p.target_port),
    );
    slice.endpoints.iter().fold(object, |object, ep| {
        object.endpoint(endpoint(ep.addr, &ep.node, READY))
    })
}

/// The Services and their EndpointSlices as one multi-document YAML file.
#[must_use]
pub fn manifests_yaml(services: &[ServiceDef]) -> String {
    let mut out = String::new();
    for svc in services {
        service(svc).write_yaml(&mut out);
        for (i, s) in svc.slices.iter().enumerate() {
            slice(svc, i, s).write_yaml(&mut out);
        }
    }
    out
}

/// The nodePort range that holds every nodePort of `services`, at least the
/// Kubernetes default (30000-32767).
#[must_use]
pub fn node_port_range(services: &[ServiceDef]) -> (u16, u16) {
    let max = services
        .iter()
        .flat_map(|s| s.ports.iter().filter_map(|p| p.node_port))
        .max()
        .unwrap_or(NODE_PORT_BASE);
    (NODE_PORT_BASE, max.max(32_767))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_services_are_distinct() {
        let s = control_plane_services(30, 10, 20);
        assert_eq!(s.len(), 30);
        assert_eq!(
            s.iter().filter(|s| s.ports[0].node_port.is_some()).count(),
            20
        );
        let mut eps: Vec<_> = s.iter().flat_map(|s| s.endpoints_of(0)).collect();
        let n = eps.len();
        eps.sort_unstable();
        eps.dedup();
        assert_eq!(eps.len(), n, "every endpoint address is distinct");
        assert_eq!(n, 300);
        assert_eq!(node_port_range(&s), (30_000, 32_767));
    }

    #[test]
    fn yaml_has_every_object() {
        let s = control_plane_services(3, 2, 1);
        let y = manifests_yaml(&s);
        assert_eq!(y.matches("---\n").count(), 5, "{y}");
        assert_eq!(y.matches("kind: Service\n").count(), 3);
        assert_eq!(y.matches("kind: EndpointSlice\n").count(), 3);
        assert_eq!(y.matches("type: NodePort").count(), 1);
        assert_eq!(y.matches("type: ClusterIP").count(), 2);
        assert_eq!(y.matches("nodePort:").count(), 1);
        assert!(y.contains("nodePort: 30000"));
        assert!(y.contains("name: svc-2-0\n"));
        assert!(y.contains("kubernetes.io/service-name: svc-2"));
        assert!(y.contains("\"10.128.0.5\""), "{y}");
        assert_eq!(y.matches("terminating: false").count(), 6);
    }
}
