//! Kubernetes terms the agent uses, defined once: labels, annotations,
//! Service types and policies, protocols, address types, defaults.

use nodeport_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// Ties an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Services (and slices) with this label belong to another proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Headless Services' slices (kube-proxy's watch selector excludes them).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The time of the change that triggered an EndpointSlice's last update.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

pub const TYPE_CLUSTER_IP: &str = "ClusterIP";
pub const TYPE_NODE_PORT: &str = "NodePort";
pub const TYPE_LOAD_BALANCER: &str = "LoadBalancer";
pub const TYPE_EXTERNAL_NAME: &str = "ExternalName";
/// `clusterIP: None`: a headless Service.
pub const CLUSTER_IP_NONE: &str = "None";

pub const POLICY_LOCAL: &str = "Local";
pub const POLICY_CLUSTER: &str = "Cluster";
pub const AFFINITY_CLIENT_IP: &str = "ClientIP";
pub const AFFINITY_NONE: &str = "None";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when absent.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// `status.loadBalancer.ingress[].ipMode` (KEP-1860): `VIP` (the default)
/// is served on the nodes like an externalIP; `Proxy` is the load
/// balancer's own, which forwards to the nodePorts, and is not served.
pub const IP_MODE_VIP: &str = "VIP";
pub const IP_MODE_PROXY: &str = "Proxy";
/// `spec.trafficDistribution` values (the EndpointSlice controller turns
/// them into the hints the datapath follows).
pub const TRAFFIC_DISTRIBUTIONS: [&str; 3] = ["PreferClose", "PreferSameNode", "PreferSameZone"];
/// The Node label that names its zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The older way to give `loadBalancerSourceRanges` (comma-separated CIDRs),
/// used when the field is empty.
pub const ANNOTATION_SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

pub const ADDRESS_TYPE_IPV4: &str = "IPv4";
pub const ADDRESS_TYPE_IPV6: &str = "IPv6";
pub const ADDRESS_TYPE_FQDN: &str = "FQDN";

/// A Node address type that `--nodeport-addresses primary` selects.
pub const NODE_INTERNAL_IP: &str = "InternalIP";

/// A Kubernetes protocol name (absent: TCP) as an IP protocol number.
#[must_use]
pub fn protocol_number(protocol: Option<&str>) -> Option<u8> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

/// An IP protocol number as Kubernetes names it (`TCP`, `UDP`, `SCTP`), or
/// the number.
#[must_use]
pub fn protocol_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_SCTP => "SCTP".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_round_trip() {
        for name in ["TCP", "UDP", "SCTP"] {
            let n = protocol_number(Some(name)).expect(name);
            assert_eq!(protocol_name(n), name);
        }
        assert_eq!(protocol_number(None), Some(PROTO_TCP));
        assert_eq!(protocol_number(Some("tcp")), None);
        assert_eq!(protocol_name(47), "47");
    }
}
