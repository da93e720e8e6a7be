//! Service and EndpointSlice manifests for the end-to-end tests, written as
//! YAML the way a user would.

use std::fmt::Write as _;

use nodeport_tests::cluster::pod_addr;

/// A target port: a number or the name of a port in the EndpointSlice.
#[derive(Clone, Debug)]
pub enum Target {
    Port(u16),
    Name(&'static str),
}

/// One port of a Service.
#[derive(Clone, Debug)]
#[allow(clippy::struct_field_names, reason = "the Kubernetes field names")]
pub struct Port {
    pub name: &'static str,
    pub protocol: &'static str,
    pub port: u16,
    pub target: Target,
    pub node_port: Option<u16>,
}

impl Port {
    pub fn tcp(name: &'static str, port: u16, target: u16, node_port: u16) -> Self {
        Self {
            name,
            protocol: "TCP",
            port,
            target: Target::Port(target),
            node_port: Some(node_port),
        }
    }

    pub fn udp(name: &'static str, port: u16, target: u16, node_port: u16) -> Self {
        Self {
            protocol: "UDP",
            ..Self::tcp(name, port, target, node_port)
        }
    }
}

/// A Service.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: &'static str,
    pub kind: &'static str,
    pub external_traffic_policy: Option<&'static str>,
    pub affinity_timeout: Option<u32>,
    pub publish_not_ready: bool,
    pub cluster_ip: Option<&'static str>,
    pub health_check_node_port: Option<u16>,
    /// Write the ports' nodePorts even when `kind` is ClusterIP, as an edit
    /// that only changes `type` leaves them (otherwise they are left out).
    pub leave_node_ports: bool,
    pub ports: Vec<Port>,
}

impl Service {
    pub fn node_port(name: &'static str, ports: Vec<Port>) -> Self {
        Self {
            name,
            kind: "NodePort",
            external_traffic_policy: None,
            affinity_timeout: None,
            publish_not_ready: false,
            cluster_ip: None,
            health_check_node_port: None,
            leave_node_ports: false,
            ports,
        }
    }

    pub fn yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: default\nspec:\n  type: {}\n",
            self.name, self.kind
        );
        if let Some(ip) = self.cluster_ip {
            let _ = writeln!(y, "  clusterIP: {ip}");
        }
        if let Some(p) = self.external_traffic_policy {
            let _ = writeln!(y, "  externalTrafficPolicy: {p}");
        }
        if let Some(p) = self.health_check_node_port {
            let _ = writeln!(y, "  healthCheckNodePort: {p}");
        }
        if let Some(t) = self.affinity_timeout {
            let _ = write!(
                y,
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}\n"
            );
        }
        if self.publish_not_ready {
            y.push_str("  publishNotReadyAddresses: true\n");
        }
        y.push_str("  ports:\n");
        for p in &self.ports {
            let _ = write!(
                y,
                "  - name: {}\n    protocol: {}\n    port: {}\n",
                p.name, p.protocol, p.port
            );
            match &p.target {
                Target::Port(n) => {
                    let _ = writeln!(y, "    targetPort: {n}");
                }
                Target::Name(n) => {
                    let _ = writeln!(y, "    targetPort: {n}");
                }
            }
            if let Some(np) = p.node_port
                && (self.kind != "ClusterIP" || self.leave_node_ports)
            {
                let _ = writeln!(y, "    nodePort: {np}");
            }
        }
        y
    }
}

/// An endpoint: a pod of the test cluster and its conditions.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub node: usize,
    pub pod: usize,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl Endpoint {
    pub fn ready(node: usize, pod: usize) -> Self {
        Self {
            node,
            pod,
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }
    }

    pub fn not_ready(node: usize, pod: usize) -> Self {
        Self {
            ready: Some(false),
            serving: Some(false),
            ..Self::ready(node, pod)
        }
    }

    /// Terminating but still serving (graceful shutdown).
    pub fn terminating(node: usize, pod: usize) -> Self {
        Self {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
            ..Self::ready(node, pod)
        }
    }
}

/// An EndpointSlice of `service` with ports `(name, protocol, port)`.
pub fn slice(service: &str, ports: &[(&str, &str, u16)], endpoints: &[Endpoint]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-abcde\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n"
    );
    for (name, proto, port) in ports {
        let _ = write!(y, "- name: {name}\n  protocol: {proto}\n  port: {port}\n");
    }
    if endpoints.is_empty() {
        y.push_str("endpoints: []\n");
        return y;
    }
    y.push_str("endpoints:\n");
    for e in endpoints {
        let _ = write!(
            y,
            "- addresses: [\"{}\"]\n  nodeName: node{}\n  conditions:\n",
            pod_addr(e.node, e.pod),
            e.node
        );
        for (k, v) in [
            ("ready", e.ready),
            ("serving", e.serving),
            ("terminating", e.terminating),
        ] {
            if let Some(v) = v {
                let _ = writeln!(y, "    {k}: {v}");
            }
        }
    }
    y
}

/// A Service and its EndpointSlice in one file.
pub fn service_with_slice(
    svc: &Service,
    ports: &[(&str, &str, u16)],
    endpoints: &[Endpoint],
) -> String {
    format!("{}---\n{}", svc.yaml(), slice(svc.name, ports, endpoints))
}
