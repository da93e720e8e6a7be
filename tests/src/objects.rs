//! Service, EndpointSlice and Node manifests as YAML, for the manifests
//! directory or the test API server alike.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::cluster::pod_addr;

/// One port of a Service: `(name, protocol, port, targetPort, nodePort)`.
pub type SvcPort<'a> = (&'a str, &'a str, u16, u16, u16);

/// One endpoint: `(node index, pod index, ready)`.
pub type Ep = (usize, usize, bool);

/// A Service of type NodePort and its EndpointSlice.
#[derive(Clone, Debug)]
pub struct ServiceSpec<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub ports: Vec<SvcPort<'a>>,
    pub endpoints: Vec<Ep>,
    /// `externalTrafficPolicy: Local` with this `healthCheckNodePort`.
    pub local_health_check: Option<u16>,
    /// Extra `metadata.labels` of the Service.
    pub labels: Vec<(&'a str, &'a str)>,
}

impl<'a> ServiceSpec<'a> {
    #[must_use]
    pub fn new(name: &'a str, ports: &[SvcPort<'a>], endpoints: &[Ep]) -> Self {
        Self {
            name,
            namespace: "default",
            ports: ports.to_vec(),
            endpoints: endpoints.to_vec(),
            local_health_check: None,
            labels: Vec::new(),
        }
    }

    /// `externalTrafficPolicy: Local` with `healthCheckNodePort: port`.
    #[must_use]
    pub fn local(mut self, health_check_node_port: u16) -> Self {
        self.local_health_check = Some(health_check_node_port);
        self
    }

    #[must_use]
    pub fn label(mut self, key: &'a str, value: &'a str) -> Self {
        self.labels.push((key, value));
        self
    }

    /// The Service alone.
    #[must_use]
    pub fn service_yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\n",
            self.name, self.namespace
        );
        if !self.labels.is_empty() {
            y.push_str("  labels:\n");
            for (k, v) in &self.labels {
                let _ = writeln!(y, "    {k}: \"{v}\"");
            }
        }
        y.push_str("spec:\n  type: NodePort\n");
        if let Some(port) = self.local_health_check {
            let _ = write!(
                y,
                "  externalTrafficPolicy: Local\n  healthCheckNodePort: {port}\n"
            );
        }
        y.push_str("  ports:\n");
        for (pname, proto, port, target, node_port) in &self.ports {
            let _ = write!(
                y,
                "  - name: {pname}\n    protocol: {proto}\n    port: {port}\n    targetPort: {target}\n    nodePort: {node_port}\n"
            );
        }
        y
    }

    /// The EndpointSlice alone (`<name>-x1`).
    #[must_use]
    pub fn slice_yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-x1\n  namespace: {}\n  labels:\n    kubernetes.io/service-name: {}\naddressType: IPv4\nports:\n",
            self.name, self.namespace, self.name
        );
        for (pname, proto, _, target, _) in &self.ports {
            let _ = write!(
                y,
                "  - name: {pname}\n    protocol: {proto}\n    port: {target}\n"
            );
        }
        y.push_str("endpoints:\n");
        if self.endpoints.is_empty() {
            y.push_str("  []\n");
        }
        for (node, pod, ready) in &self.endpoints {
            let _ = write!(
                y,
                "  - addresses: [\"{}\"]\n    nodeName: node{node}\n    conditions:\n      ready: {ready}\n",
                pod_addr(*node, *pod)
            );
        }
        y
    }

    /// The Service and its EndpointSlice as two documents.
    #[must_use]
    pub fn yaml(&self) -> String {
        format!("{}---\n{}", self.service_yaml(), self.slice_yaml())
    }
}

/// A Node with an `InternalIP`.
#[must_use]
pub fn node_yaml(name: &str, internal_ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: \"{internal_ip}\"\n  - type: Hostname\n    address: {name}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_parses_as_kubernetes_objects() {
        let spec = ServiceSpec::new(
            "web",
            &[
                ("tcp", "TCP", 80, 8080, 30080),
                ("udp", "UDP", 80, 8080, 30080),
            ],
            &[(1, 1, true), (2, 1, false)],
        )
        .local(32000)
        .label("app", "web");
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&spec.yaml()).expect("yaml");
        assert_eq!(docs.len(), 2);
        let svc: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(docs[0].clone()).expect("a Service");
        let s = svc.spec.unwrap();
        assert_eq!(s.health_check_node_port, Some(32000));
        assert_eq!(s.ports.unwrap()[1].node_port, Some(30080));
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(docs[1].clone()).expect("an EndpointSlice");
        assert_eq!(slice.endpoints.len(), 2);
        assert_eq!(slice.endpoints[0].addresses, ["10.244.1.11"]);
        let node: k8s_openapi::api::core::v1::Node =
            serde_saphyr::from_str(&node_yaml("node1", Ipv4Addr::new(10, 200, 0, 11)))
                .expect("a Node");
        assert_eq!(
            node.status.unwrap().addresses.unwrap()[0].type_,
            "InternalIP"
        );
    }
}
