//! Services as the API server defaults and validates them on a *create*:
//! [`normalize_service`], then [`validate_service`] (names, type, cluster
//! IPs, ports and their nodePorts against the range, traffic policies,
//! session affinity). An update first goes through
//! [`super::update_rules`]; collisions with other Services are the
//! business of [`super::node_ports`].
//!
//! Everything here is pure: no I/O, no logging.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::invalid::{
    FieldError, Invalid, finish, format_range, in_node_port_range, in_port_range, port_range_error,
    unsupported,
};
use super::names::{
    DEFAULT_NAMESPACE, DNS1035_LABEL_MSG, DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG,
    IANA_SVC_NAME_MSG, check_name, check_namespace, is_dns1035_label, is_dns1123_label,
    is_dns1123_subdomain, is_iana_svc_name,
};
use crate::k8s;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when `ClientIP` affinity omits it.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: i32 = 10_800;
/// Largest `sessionAffinityConfig.clientIP.timeoutSeconds` the API server accepts.
pub const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86_400;

/// L4 protocol of a Service or `EndpointSlice` port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The protocol named as in the Kubernetes API (`TCP`, `UDP`, `SCTP`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The protocol of an optional API field, `TCP` when omitted.
    #[must_use]
    pub fn from_field(field: Option<&str>) -> Option<Self> {
        field.map_or(Some(Self::Tcp), Self::from_name)
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.type` of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    /// The type named as in the Kubernetes API; `ClusterIP` when omitted.
    #[must_use]
    pub fn from_field(field: Option<&str>) -> Option<Self> {
        match field {
            None | Some("ClusterIP") => Some(Self::ClusterIp),
            Some("NodePort") => Some(Self::NodePort),
            Some("LoadBalancer") => Some(Self::LoadBalancer),
            Some("ExternalName") => Some(Self::ExternalName),
            Some(_) => None,
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalName => "ExternalName",
        }
    }

    /// Whether Services of this type get nodePorts.
    #[must_use]
    pub const fn has_node_ports(self) -> bool {
        matches!(self, Self::NodePort | Self::LoadBalancer)
    }
}

/// Applies the API server's defaults to a Service: namespace `default`, type
/// `ClusterIP`, protocol `TCP`, `targetPort` = `port`, `sessionAffinity`
/// `None` (and the 10800 s timeout for `ClientIP`), traffic policies
/// `Cluster`. A `nodePort` or `healthCheckNodePort` of 0 means "not set".
pub fn normalize_service(service: &mut Service) {
    if service
        .metadata
        .namespace
        .as_deref()
        .is_none_or(str::is_empty)
    {
        service.metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
    let spec = service.spec.get_or_insert_with(Default::default);
    let service_type = spec
        .type_
        .get_or_insert_with(|| ServiceType::ClusterIp.as_str().to_owned());
    let service_type = ServiceType::from_field(Some(service_type.as_str()));
    for port in spec.ports.iter_mut().flatten() {
        port.protocol
            .get_or_insert_with(|| Protocol::Tcp.as_str().to_owned());
        let target_unset = match &port.target_port {
            None => true,
            Some(IntOrString::Int(target)) => *target == 0,
            Some(IntOrString::String(target)) => target.is_empty(),
        };
        if target_unset {
            port.target_port = Some(IntOrString::Int(port.port));
        }
        if port.node_port == Some(0) {
            port.node_port = None;
        }
    }
    if spec.health_check_node_port == Some(0) {
        spec.health_check_node_port = None;
    }
    let affinity = spec
        .session_affinity
        .get_or_insert_with(|| "None".to_owned());
    if affinity == "ClientIP" {
        let config = spec
            .session_affinity_config
            .get_or_insert_with(SessionAffinityConfig::default)
            .client_ip
            .get_or_insert_with(ClientIPConfig::default);
        config
            .timeout_seconds
            .get_or_insert(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    }
    if service_type.is_some_and(ServiceType::has_node_ports) {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".to_owned());
    }
    if service_type != Some(ServiceType::ExternalName) {
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".to_owned());
    }
}

/// Checks one Service on its own, after [`normalize_service`]: names, type,
/// cluster IPs, ports and their nodePorts against `node_port_range`, traffic
/// policies and session affinity. Collisions with other Services are the
/// business of [`super::node_ports::NodePortAllocator`].
pub fn validate_service(
    service: &Service,
    node_port_range: &RangeInclusive<u16>,
) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    check_name(
        &mut errors,
        "metadata.name",
        service.metadata.name.as_deref(),
        is_dns1035_label,
        DNS1035_LABEL_MSG,
    );
    check_namespace(&mut errors, service.metadata.namespace.as_deref());
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);

    let service_type = ServiceType::from_field(spec.type_.as_deref());
    if service_type.is_none() {
        errors.push(unsupported(
            "spec.type",
            spec.type_.as_deref().unwrap_or_default(),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }

    let headless = validate_cluster_ips(&mut errors, spec, service_type);

    if service_type == Some(ServiceType::ExternalName) {
        check_name(
            &mut errors,
            "spec.externalName",
            spec.external_name.as_deref(),
            is_dns1123_subdomain,
            DNS1123_SUBDOMAIN_MSG,
        );
    }

    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && service_type != Some(ServiceType::ExternalName) && !headless {
        errors.push(FieldError::new("spec.ports", "Required value"));
    }
    validate_service_ports(&mut errors, ports, service_type, node_port_range);

    validate_health_check(&mut errors, spec, service_type, node_port_range);
    validate_load_balancer_fields(&mut errors, spec, service_type);
    validate_policies(&mut errors, spec, service_type);
    validate_external_addresses(&mut errors, service, spec);

    finish(errors, ())
}

/// Why `addr` may not be an external address (the API server's
/// `ValidateNonSpecialIP`), if it may not.
fn special_ip(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        return Some("may not be unspecified (0.0.0.0, ::)");
    }
    if addr.is_loopback() {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    let link_local = match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    };
    if link_local {
        return Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)");
    }
    let link_local_multicast = match addr {
        IpAddr::V4(a) => a.octets()[..3] == [224, 0, 0],
        IpAddr::V6(a) => a.segments()[0] & 0xff0f == 0xff02,
    };
    if link_local_multicast {
        return Some("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)");
    }
    None
}

/// Whether `text` is an IPv4 or IPv6 CIDR (`addr/len`).
fn is_cidr(text: &str) -> bool {
    let Some((addr, len)) = text.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => len <= 32,
        Ok(IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

/// Checks `spec.externalIPs`, `spec.loadBalancerSourceRanges` (and its
/// annotation) and `status.loadBalancer.ingress`, as the API server does.
fn validate_external_addresses(
    errors: &mut Vec<FieldError>,
    service: &Service,
    spec: &ServiceSpec,
) {
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let at = format!("spec.externalIPs[{i}]");
        match ip.parse::<IpAddr>() {
            Err(_) => errors.push(FieldError::new(
                at,
                format!("Invalid value: \"{ip}\": must be a valid IP address"),
            )),
            Ok(addr) => {
                if let Some(why) = special_ip(addr) {
                    errors.push(FieldError::new(
                        at,
                        format!("Invalid value: \"{ip}\": {why}"),
                    ));
                }
            }
        }
    }
    for (i, range) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        if !is_cidr(range.trim()) {
            errors.push(FieldError::new(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("Invalid value: \"{range}\": must be a valid CIDR (e.g. 10.0.0.0/8)"),
            ));
        }
    }
    if let Some(ranges) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(k8s::ANNOTATION_SOURCE_RANGES))
        && !ranges
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .all(is_cidr)
    {
        errors.push(FieldError::new(
            format!("metadata.annotations[{}]", k8s::ANNOTATION_SOURCE_RANGES),
            format!("Invalid value: \"{ranges}\": must be a list of CIDRs"),
        ));
    }
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let at = format!("status.loadBalancer.ingress[{i}]");
        if let Some(ip) = ing.ip.as_deref()
            && ip.parse::<IpAddr>().is_err()
        {
            errors.push(FieldError::new(
                format!("{at}.ip"),
                format!("Invalid value: \"{ip}\": must be a valid IP address"),
            ));
        }
        match (ing.ip_mode.as_deref(), ing.ip.is_some()) {
            (Some(_), false) => errors.push(FieldError::new(
                format!("{at}.ipMode"),
                "Forbidden: may not be specified when `ip` is not",
            )),
            (Some(mode), true) if mode != k8s::IP_MODE_VIP && mode != k8s::IP_MODE_PROXY => {
                errors.push(unsupported(
                    &format!("{at}.ipMode"),
                    mode,
                    &[k8s::IP_MODE_PROXY, k8s::IP_MODE_VIP],
                ));
            }
            _ => {}
        }
    }
}

/// Checks `clusterIP` and `clusterIPs`; says whether the Service is headless.
fn validate_cluster_ips(
    errors: &mut Vec<FieldError>,
    spec: &ServiceSpec,
    service_type: Option<ServiceType>,
) -> bool {
    let cluster_ip = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    let headless = cluster_ip == Some("None");
    if let Some(ip) = cluster_ip
        && ip != "None"
        && ip.parse::<Ipv4Addr>().is_err()
    {
        errors.push(FieldError::new(
            "spec.clusterIP",
            format!("Invalid value: \"{ip}\": must be a valid IPv4 address or \"None\""),
        ));
    }
    for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
        if ip != "None" && ip.parse::<Ipv4Addr>().is_err() && ip.parse::<Ipv6Addr>().is_err() {
            errors.push(FieldError::new(
                format!("spec.clusterIPs[{i}]"),
                format!("Invalid value: \"{ip}\": must be a valid IP address or \"None\""),
            ));
        }
    }
    if let (Some(ip), Some(first)) = (
        cluster_ip,
        spec.cluster_ips.as_ref().and_then(|ips| ips.first()),
    ) && ip != first
    {
        errors.push(FieldError::new(
            "spec.clusterIPs[0]",
            format!("Invalid value: \"{first}\": must match spec.clusterIP \"{ip}\""),
        ));
    }
    if service_type == Some(ServiceType::ExternalName) {
        // Even "None" is a value: an ExternalName Service has no cluster IP.
        let set = [
            ("spec.clusterIP", cluster_ip.is_some()),
            (
                "spec.clusterIPs",
                spec.cluster_ips.as_ref().is_some_and(|ips| !ips.is_empty()),
            ),
            (
                "spec.ipFamilies",
                spec.ip_families.as_ref().is_some_and(|f| !f.is_empty()),
            ),
            ("spec.ipFamilyPolicy", spec.ip_family_policy.is_some()),
        ];
        for (field, _) in set.into_iter().filter(|(_, set)| *set) {
            errors.push(FieldError::new(
                field,
                "Forbidden: may not be set for ExternalName services",
            ));
        }
    }
    if headless && let Some(t) = service_type.filter(|t| t.has_node_ports()) {
        errors.push(FieldError::new(
            "spec.clusterIP",
            format!(
                "Invalid value: \"None\": may not be set to 'None' for {} services",
                t.as_str()
            ),
        ));
    }
    headless
}

fn validate_health_check(
    errors: &mut Vec<FieldError>,
    spec: &ServiceSpec,
    service_type: Option<ServiceType>,
    node_port_range: &RangeInclusive<u16>,
) {
    let ports = spec.ports.as_deref().unwrap_or_default();
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    if let Some(health) = spec.health_check_node_port {
        let field = "spec.healthCheckNodePort";
        if service_type != Some(ServiceType::LoadBalancer) || !local {
            errors.push(FieldError::new(
                field,
                format!("Invalid value: {health}: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"),
            ));
        } else if !in_node_port_range(health, node_port_range) {
            errors.push(FieldError::new(
                field,
                format!(
                    "healthCheckNodePort {health} is outside the range {}",
                    format_range(node_port_range)
                ),
            ));
        } else if let Some(i) = ports.iter().position(|p| p.node_port == Some(health)) {
            errors.push(FieldError::new(
                field,
                format!("Invalid value: {health}: already used by spec.ports[{i}].nodePort"),
            ));
        }
    }
}

/// `allocateLoadBalancerNodePorts` and `loadBalancerClass` belong to
/// LoadBalancer Services only.
fn validate_load_balancer_fields(
    errors: &mut Vec<FieldError>,
    spec: &ServiceSpec,
    service_type: Option<ServiceType>,
) {
    if service_type.is_none_or(|t| t == ServiceType::LoadBalancer) {
        return;
    }
    let set = [
        (
            "spec.allocateLoadBalancerNodePorts",
            spec.allocate_load_balancer_node_ports.is_some(),
        ),
        ("spec.loadBalancerClass", spec.load_balancer_class.is_some()),
        (
            "spec.loadBalancerSourceRanges",
            spec.load_balancer_source_ranges
                .as_ref()
                .is_some_and(|r| !r.is_empty()),
        ),
    ];
    for (field, _) in set.into_iter().filter(|(_, set)| *set) {
        errors.push(FieldError::new(
            field,
            "Forbidden: may only be used when `type` is 'LoadBalancer'",
        ));
    }
}

/// Checks the traffic policies and session affinity.
fn validate_policies(
    errors: &mut Vec<FieldError>,
    spec: &ServiceSpec,
    service_type: Option<ServiceType>,
) {
    // Traffic policies.
    if let Some(policy) = spec.external_traffic_policy.as_deref() {
        if policy != "Cluster" && policy != "Local" {
            errors.push(unsupported(
                "spec.externalTrafficPolicy",
                policy,
                &["Cluster", "Local"],
            ));
        } else if service_type.is_some_and(|t| !t.has_node_ports())
            && spec
                .external_ips
                .as_deref()
                .is_none_or(<[String]>::is_empty)
        {
            errors.push(FieldError::new(
                "spec.externalTrafficPolicy",
                "Invalid value: may only be set for externally-accessible services",
            ));
        }
    }
    if let Some(distribution) = spec.traffic_distribution.as_deref()
        && !k8s::TRAFFIC_DISTRIBUTIONS.contains(&distribution)
    {
        errors.push(unsupported(
            "spec.trafficDistribution",
            distribution,
            &k8s::TRAFFIC_DISTRIBUTIONS,
        ));
    }
    if let Some(policy) = spec.internal_traffic_policy.as_deref()
        && policy != "Cluster"
        && policy != "Local"
    {
        errors.push(unsupported(
            "spec.internalTrafficPolicy",
            policy,
            &["Cluster", "Local"],
        ));
    }

    // Session affinity.
    match spec.session_affinity.as_deref() {
        None | Some("None") => {
            if spec.session_affinity_config.is_some() {
                errors.push(FieldError::new(
                    "spec.sessionAffinityConfig",
                    "Invalid value: must not be set when `sessionAffinity` is None",
                ));
            }
        }
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
            if !(1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&timeout) {
                errors.push(FieldError::new(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("Invalid value: {timeout}: must be greater than 0 and at most {MAX_AFFINITY_TIMEOUT_SECONDS}"),
                ));
            }
        }
        Some(other) => errors.push(unsupported(
            "spec.sessionAffinity",
            other,
            &["ClientIP", "None"],
        )),
    }
}

/// A port name: required when there are several ports, a DNS label, unique.
fn check_port_name<'a>(
    errors: &mut Vec<FieldError>,
    at: &str,
    name: Option<&'a str>,
    port_count: usize,
    names: &mut BTreeSet<&'a str>,
) {
    match name.filter(|n| !n.is_empty()) {
        None if port_count > 1 => errors.push(FieldError::new(
            format!("{at}.name"),
            "Required value: every port must be named when a Service has more than one",
        )),
        None => {}
        Some(name) => {
            if !is_dns1123_label(name) {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    format!("Invalid value: \"{name}\": {DNS1123_LABEL_MSG}"),
                ));
            }
            if !names.insert(name) {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    format!("Duplicate value: \"{name}\""),
                ));
            }
        }
    }
}

/// `targetPort`: a port number or an IANA service name.
fn check_target_port(errors: &mut Vec<FieldError>, at: &str, target: Option<&IntOrString>) {
    match target {
        Some(IntOrString::Int(target)) if !in_port_range(*target) => {
            errors.push(port_range_error(format!("{at}.targetPort"), *target));
        }
        Some(IntOrString::String(target)) if !is_iana_svc_name(target) => {
            errors.push(FieldError::new(
                format!("{at}.targetPort"),
                format!("Invalid value: \"{target}\": {IANA_SVC_NAME_MSG}"),
            ));
        }
        _ => {}
    }
}

fn validate_service_ports(
    errors: &mut Vec<FieldError>,
    ports: &[ServicePort],
    service_type: Option<ServiceType>,
    node_port_range: &RangeInclusive<u16>,
) {
    let mut names = BTreeSet::new();
    let mut port_protocols = BTreeSet::new();
    let mut node_port_protocols = BTreeSet::new();
    // nodePort number → (index, port) of the first port that uses it.
    let mut node_port_users: BTreeMap<i32, (usize, i32)> = BTreeMap::new();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        check_port_name(errors, &at, port.name.as_deref(), ports.len(), &mut names);
        if !in_port_range(port.port) {
            errors.push(port_range_error(format!("{at}.port"), port.port));
        }
        let protocol = Protocol::from_field(port.protocol.as_deref());
        if protocol.is_none() {
            errors.push(unsupported(
                &format!("{at}.protocol"),
                port.protocol.as_deref().unwrap_or_default(),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        check_target_port(errors, &at, port.target_port.as_ref());
        if let Some(protocol) = protocol
            && !port_protocols.insert((port.port, protocol))
        {
            errors.push(FieldError::new(
                at.clone(),
                format!("Duplicate value: port {}/{protocol}", port.port),
            ));
        }

        let Some(node_port) = port.node_port else {
            continue;
        };
        match service_type {
            Some(ServiceType::ClusterIp) => errors.push(FieldError::new(
                format!("{at}.nodePort"),
                "Forbidden: may not be used when `type` is 'ClusterIP'",
            )),
            Some(ServiceType::ExternalName) => errors.push(FieldError::new(
                format!("{at}.nodePort"),
                "Forbidden: may not be used when `type` is 'ExternalName'",
            )),
            _ => {}
        }
        if !in_node_port_range(node_port, node_port_range) {
            errors.push(FieldError::new(
                at.clone(),
                format!(
                    "nodePort {node_port} is outside the range {}",
                    format_range(node_port_range)
                ),
            ));
            continue;
        }
        if let Some(protocol) = protocol
            && !node_port_protocols.insert((node_port, protocol))
        {
            errors.push(FieldError::new(
                format!("{at}.nodePort"),
                format!("Duplicate value: {node_port}/{protocol}"),
            ));
            continue;
        }
        match node_port_users.get(&node_port) {
            None => {
                node_port_users.insert(node_port, (i, port.port));
            }
            Some(&(first, first_port)) if first_port != port.port => errors.push(FieldError::new(
                format!("{at}.nodePort"),
                format!(
                    "Invalid value: {node_port}: already used by spec.ports[{first}] (only ports with the same port number may share a nodePort)"
                ),
            )),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const RANGE: RangeInclusive<u16> = 30000..=32767;

    fn port(name: &str, number: i32, protocol: &str, node_port: Option<i32>) -> ServicePort {
        ServicePort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            port: number,
            protocol: Some(protocol.to_owned()),
            node_port,
            ..ServicePort::default()
        }
    }

    fn service(name: &str, service_type: &str, ports: Vec<ServicePort>) -> Service {
        let mut service = Service {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(service_type.to_owned()),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        normalize_service(&mut service);
        service
    }

    fn errors(result: Result<(), Invalid>) -> String {
        result
            .expect_err("expected the object to be invalid")
            .to_string()
    }

    #[test]
    fn defaults_are_applied() {
        let mut svc = Service {
            metadata: ObjectMeta {
                name: Some("web".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 80,
                    node_port: Some(0),
                    ..ServicePort::default()
                }]),
                session_affinity: Some("ClientIP".to_owned()),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        normalize_service(&mut svc);
        assert_eq!(svc.metadata.namespace.as_deref(), Some("default"));
        let spec = svc.spec.as_ref().expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let p = &spec.ports.as_ref().expect("ports")[0];
        assert_eq!(p.protocol.as_deref(), Some("TCP"));
        assert_eq!(p.target_port, Some(IntOrString::Int(80)));
        assert_eq!(p.node_port, None);
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        assert_eq!(timeout, Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS));
        assert_eq!(validate_service(&svc, &RANGE), Ok(()));
    }

    #[test]
    fn node_port_out_of_range() {
        let svc = service("web", "NodePort", vec![port("", 80, "TCP", Some(40000))]);
        let message = errors(validate_service(&svc, &RANGE));
        assert!(
            message.contains("nodePort 40000 is outside the range 30000-32767"),
            "{message}"
        );
    }

    #[test]
    fn node_port_forbidden_on_cluster_ip() {
        let svc = service("web", "ClusterIP", vec![port("", 80, "TCP", Some(30080))]);
        let message = errors(validate_service(&svc, &RANGE));
        assert!(
            message.contains(
                "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
            ),
            "{message}"
        );
    }

    #[test]
    fn ports_are_checked() {
        let mut svc = service(
            "web",
            "NodePort",
            vec![
                port("http", 0, "TCP", None),
                port("", 81, "tcp", None),
                port("http", 82, "TCP", None),
            ],
        );
        svc.spec
            .as_mut()
            .expect("spec")
            .ports
            .as_mut()
            .expect("ports")[2]
            .target_port = Some(IntOrString::String("Bad_Name".to_owned()));
        let message = errors(validate_service(&svc, &RANGE));
        for expected in [
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.ports[1].name: Required value",
            "spec.ports[1].protocol: Unsupported value: \"tcp\"",
            "spec.ports[2].name: Duplicate value: \"http\"",
            "spec.ports[2].targetPort: Invalid value: \"Bad_Name\"",
        ] {
            assert!(
                message.contains(expected),
                "missing {expected:?} in {message}"
            );
        }

        let dup = service(
            "dup",
            "NodePort",
            vec![
                port("a", 80, "TCP", Some(30080)),
                port("b", 80, "TCP", Some(30081)),
            ],
        );
        let message = errors(validate_service(&dup, &RANGE));
        assert!(
            message.contains("spec.ports[1]: Duplicate value: port 80/TCP"),
            "{message}"
        );
    }

    #[test]
    fn same_node_port_shared_only_by_same_port_number() {
        let dns = service(
            "dns",
            "NodePort",
            vec![
                port("dns", 53, "UDP", Some(30053)),
                port("dns-tcp", 53, "TCP", Some(30053)),
            ],
        );
        assert_eq!(validate_service(&dns, &RANGE), Ok(()));
        let bad = service(
            "bad",
            "NodePort",
            vec![
                port("a", 53, "UDP", Some(30053)),
                port("b", 54, "TCP", Some(30053)),
            ],
        );
        let message = errors(validate_service(&bad, &RANGE));
        assert!(
            message.contains("spec.ports[1].nodePort: Invalid value: 30053"),
            "{message}"
        );
    }

    #[test]
    fn cluster_ip_and_names() {
        let mut svc = service("Web", "NodePort", vec![port("", 80, "TCP", None)]);
        svc.spec.as_mut().expect("spec").cluster_ip = Some("10.0.0.300".to_owned());
        let message = errors(validate_service(&svc, &RANGE));
        assert!(
            message.contains("metadata.name: Invalid value: \"Web\""),
            "{message}"
        );
        assert!(
            message.contains("spec.clusterIP: Invalid value: \"10.0.0.300\""),
            "{message}"
        );

        let mut headless = service("db", "ClusterIP", vec![]);
        headless.spec.as_mut().expect("spec").cluster_ip = Some("None".to_owned());
        assert_eq!(validate_service(&headless, &RANGE), Ok(()));
        headless.spec.as_mut().expect("spec").type_ = Some("NodePort".to_owned());
        let message = errors(validate_service(&headless, &RANGE));
        assert!(
            message.contains("may not be set to 'None' for NodePort services"),
            "{message}"
        );

        let no_ports = service("empty", "NodePort", vec![]);
        assert!(errors(validate_service(&no_ports, &RANGE)).contains("spec.ports: Required value"));
    }

    #[test]
    fn external_addresses_are_checked() {
        let mut svc = service("web", "LoadBalancer", vec![port("", 80, "TCP", None)]);
        svc.spec.as_mut().expect("spec").external_ips = Some(
            [
                "192.0.2.10",
                "2001:db8::1",
                "not-an-ip",
                "0.0.0.0",
                "127.0.0.2",
                "169.254.1.1",
                "224.0.0.5",
            ]
            .map(str::to_owned)
            .to_vec(),
        );
        let ingress = |ip: Option<&str>, mode: Option<&str>| LoadBalancerIngress {
            ip: ip.map(str::to_owned),
            ip_mode: mode.map(str::to_owned),
            ..LoadBalancerIngress::default()
        };
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    ingress(Some("198.51.100.7"), Some("VIP")),
                    ingress(Some("198.51.100.8"), Some("Proxy")),
                    ingress(Some("198.51.100.300"), None),
                    ingress(None, Some("VIP")),
                    ingress(Some("198.51.100.9"), Some("Tunnel")),
                ]),
            }),
            ..ServiceStatus::default()
        });
        svc.spec.as_mut().expect("spec").load_balancer_source_ranges = Some(
            ["10.0.0.0/8", "2001:db8::/32", "10.0.0.0/33", "10.0.0.1"]
                .map(str::to_owned)
                .to_vec(),
        );
        svc.metadata.annotations = Some(
            [(
                k8s::ANNOTATION_SOURCE_RANGES.to_owned(),
                "192.0.2.0/24,bad".to_owned(),
            )]
            .into(),
        );
        let message = errors(validate_service(&svc, &RANGE));
        for want in [
            "spec.loadBalancerSourceRanges[2]: Invalid value: \"10.0.0.0/33\"",
            "spec.loadBalancerSourceRanges[3]: Invalid value: \"10.0.0.1\"",
            "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]: Invalid value",
            "spec.externalIPs[2]: Invalid value: \"not-an-ip\": must be a valid IP address",
            "spec.externalIPs[3]: Invalid value: \"0.0.0.0\": may not be unspecified",
            "spec.externalIPs[4]: Invalid value: \"127.0.0.2\": may not be in the loopback range",
            "spec.externalIPs[5]: Invalid value: \"169.254.1.1\": may not be in the link-local range",
            "spec.externalIPs[6]: Invalid value: \"224.0.0.5\": may not be in the link-local multicast range",
            "status.loadBalancer.ingress[2].ip: Invalid value: \"198.51.100.300\"",
            "status.loadBalancer.ingress[3].ipMode: Forbidden",
            "status.loadBalancer.ingress[4].ipMode: Unsupported value: \"Tunnel\"",
        ] {
            assert!(message.contains(want), "{want} in {message}");
        }
        for fine in [
            "externalIPs[0]",
            "externalIPs[1]",
            "ingress[0]",
            "ingress[1]",
            "SourceRanges[0]",
            "SourceRanges[1]",
        ] {
            assert!(!message.contains(fine), "{fine} is valid: {message}");
        }
        let mut node_port = service("np", "NodePort", vec![port("", 80, "TCP", None)]);
        node_port
            .spec
            .as_mut()
            .expect("spec")
            .load_balancer_source_ranges = Some(vec!["10.0.0.0/8".to_owned()]);
        assert!(
            errors(validate_service(&node_port, &RANGE)).contains(
                "spec.loadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'"
            )
        );
    }

    #[test]
    fn health_check_node_port_rules() {
        let mut svc = service("web", "NodePort", vec![port("", 80, "TCP", None)]);
        svc.spec.as_mut().expect("spec").health_check_node_port = Some(30100);
        assert!(
            errors(validate_service(&svc, &RANGE))
                .contains("may only be set when `type` is 'LoadBalancer'")
        );
        let spec = svc.spec.as_mut().expect("spec");
        spec.type_ = Some("LoadBalancer".to_owned());
        spec.external_traffic_policy = Some("Local".to_owned());
        assert_eq!(validate_service(&svc, &RANGE), Ok(()));
        svc.spec.as_mut().expect("spec").health_check_node_port = Some(29999);
        assert!(
            errors(validate_service(&svc, &RANGE))
                .contains("healthCheckNodePort 29999 is outside the range 30000-32767")
        );
    }
}
