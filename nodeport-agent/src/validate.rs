//! Validation of Services, `EndpointSlice`s and Nodes as the Kubernetes API
//! server performs it, for sources (the manifests directory) that have no API
//! server in front of them.
//!
//! Everything here is pure: no I/O, no logging. The per-object functions
//! apply the API server's defaults ([`normalize_service`],
//! [`normalize_endpoint_slice`], [`normalize_node`]) and then check the object
//! on its own ([`validate_service`], [`validate_endpoint_slice`],
//! [`validate_node`]). [`NodePortAllocator`] checks the whole set of Services
//! together: it keeps nodePorts unique, allocates one where a port omits it
//! and remembers both across rounds, as the API server's allocator does.
//!
//! These are the rules of a *create*. An update (a manifest that replaces a
//! Service accepted before) first goes through the API server's update rules
//! in [`crate::update_rules`], then through the same checks.
//!
//! Messages follow the API server's `field: reason` style so that operators
//! recognise them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Node, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::store::ObjectKey;

/// Namespace of namespaced objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Label that ties an `EndpointSlice` to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when `ClientIP` affinity omits it.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: i32 = 10_800;
/// Largest `sessionAffinityConfig.clientIP.timeoutSeconds` the API server accepts.
pub const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86_400;
/// Most addresses one endpoint of an `EndpointSlice` may carry.
const MAX_ENDPOINT_ADDRESSES: usize = 100;

/// One reason an object is invalid: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.ports[0].nodePort`; empty for the whole object.
    pub field: String,
    pub detail: String,
}

impl FieldError {
    fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.detail)
        } else {
            write!(f, "{}: {}", self.field, self.detail)
        }
    }
}

/// Every reason an object was rejected (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(pub Vec<FieldError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

fn finish<T>(errors: Vec<FieldError>, value: T) -> Result<T, Invalid> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(Invalid(errors))
    }
}

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

/// `addressType` of an `EndpointSlice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressType {
    Ipv4,
    Ipv6,
    Fqdn,
}

impl AddressType {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
            Self::Fqdn => "FQDN",
        }
    }
}

// ---------------------------------------------------------------------------
// Names

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character, at most 63 characters";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character, at most 63 characters";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character, at most 253 characters";
const IANA_SVC_NAME_MSG: &str = "must be a port number or an IANA_SVC_NAME: at most 15 lower case alphanumeric characters or '-', with at least one letter, not starting or ending with '-' and without '--'";

fn is_label_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
}

/// An RFC 1123 label: namespaces, port names.
#[must_use]
pub fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|&c| is_label_char(c))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A DNS-1035 label (starts with a letter): Service names.
#[must_use]
pub fn is_dns1035_label(name: &str) -> bool {
    is_dns1123_label(name) && name.as_bytes()[0].is_ascii_lowercase()
}

/// An RFC 1123 subdomain: `EndpointSlice` and Node names.
#[must_use]
pub fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.iter().all(|&c| is_label_char(c))
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        })
}

/// An IANA service name: named `targetPort`s.
#[must_use]
pub fn is_iana_svc_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 15
        && bytes.iter().all(|&c| is_label_char(c))
        && bytes.iter().any(u8::is_ascii_lowercase)
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !name.contains("--")
}

fn check_name(
    errors: &mut Vec<FieldError>,
    field: &str,
    name: Option<&str>,
    valid: fn(&str) -> bool,
    message: &str,
) {
    match name {
        None | Some("") => errors.push(FieldError::new(field, "Required value: name is required")),
        Some(name) if !valid(name) => {
            errors.push(FieldError::new(
                field,
                format!("Invalid value: \"{name}\": {message}"),
            ));
        }
        Some(_) => {}
    }
}

fn check_namespace(errors: &mut Vec<FieldError>, namespace: Option<&str>) {
    if let Some(namespace) = namespace
        && !is_dns1123_label(namespace)
    {
        errors.push(FieldError::new(
            "metadata.namespace",
            format!("Invalid value: \"{namespace}\": {DNS1123_LABEL_MSG}"),
        ));
    }
}

fn in_port_range(port: i32) -> bool {
    (1..=65_535).contains(&port)
}

fn port_range_error(field: String, port: i32) -> FieldError {
    FieldError::new(
        field,
        format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
    )
}

fn in_node_port_range(port: i32, range: &RangeInclusive<u16>) -> bool {
    u16::try_from(port).is_ok_and(|port| range.contains(&port))
}

/// `30000-32767`.
#[must_use]
pub fn format_range(range: &RangeInclusive<u16>) -> String {
    format!("{}-{}", range.start(), range.end())
}

fn unsupported(field: &str, value: &str, supported: &[&str]) -> FieldError {
    let supported: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    FieldError::new(
        field,
        format!(
            "Unsupported value: \"{value}\": supported values: {}",
            supported.join(", ")
        ),
    )
}

// ---------------------------------------------------------------------------
// Service

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
/// business of [`NodePortAllocator`].
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

    finish(errors, ())
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

// ---------------------------------------------------------------------------
// `EndpointSlice`

/// Applies the API server's defaults to an `EndpointSlice`: namespace
/// `default`, port protocol `TCP`.
pub fn normalize_endpoint_slice(slice: &mut EndpointSlice) {
    if slice
        .metadata
        .namespace
        .as_deref()
        .is_none_or(str::is_empty)
    {
        slice.metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
    for port in slice.ports.iter_mut().flatten() {
        port.protocol
            .get_or_insert_with(|| Protocol::Tcp.as_str().to_owned());
    }
}

/// Checks one `EndpointSlice`, after [`normalize_endpoint_slice`], and returns
/// its address type (the datapath serves only [`AddressType::Ipv4`]).
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Result<AddressType, Invalid> {
    let mut errors = Vec::new();
    check_name(
        &mut errors,
        "metadata.name",
        slice.metadata.name.as_deref(),
        is_dns1123_subdomain,
        DNS1123_SUBDOMAIN_MSG,
    );
    check_namespace(&mut errors, slice.metadata.namespace.as_deref());
    match slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
    {
        None => errors.push(FieldError::new(
            "metadata.labels",
            format!("Required value: label {SERVICE_NAME_LABEL} must name the Service this slice belongs to"),
        )),
        Some(name) if !is_dns1035_label(name) => errors.push(FieldError::new(
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            format!("Invalid value: \"{name}\": {DNS1035_LABEL_MSG}"),
        )),
        Some(_) => {}
    }

    let address_type = match slice.address_type.as_str() {
        "IPv4" => Some(AddressType::Ipv4),
        "IPv6" => Some(AddressType::Ipv6),
        "FQDN" => Some(AddressType::Fqdn),
        "" => {
            errors.push(FieldError::new("addressType", "Required value"));
            None
        }
        other => {
            errors.push(unsupported("addressType", other, &["FQDN", "IPv4", "IPv6"]));
            None
        }
    };

    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        if endpoint.addresses.is_empty() || endpoint.addresses.len() > MAX_ENDPOINT_ADDRESSES {
            errors.push(FieldError::new(
                format!("{at}.addresses"),
                format!(
                    "Invalid value: must contain between 1 and {MAX_ENDPOINT_ADDRESSES} addresses"
                ),
            ));
        }
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let valid = match address_type {
                Some(AddressType::Ipv4) => address.parse::<Ipv4Addr>().is_ok(),
                Some(AddressType::Ipv6) => address.parse::<Ipv6Addr>().is_ok(),
                Some(AddressType::Fqdn) => is_dns1123_subdomain(address),
                None => true,
            };
            if !valid && let Some(address_type) = address_type {
                errors.push(FieldError::new(
                    format!("{at}.addresses[{j}]"),
                    format!(
                        "Invalid value: \"{address}\": must be a valid {} address",
                        address_type.as_str()
                    ),
                ));
            }
        }
        if let Some(node) = endpoint.node_name.as_deref()
            && !is_dns1123_subdomain(node)
        {
            errors.push(FieldError::new(
                format!("{at}.nodeName"),
                format!("Invalid value: \"{node}\": {DNS1123_SUBDOMAIN_MSG}"),
            ));
        }
    }

    validate_endpoint_ports(&mut errors, slice);

    match address_type {
        Some(address_type) if errors.is_empty() => Ok(address_type),
        _ => Err(Invalid(errors)),
    }
}

fn validate_endpoint_ports(errors: &mut Vec<FieldError>, slice: &EndpointSlice) {
    let mut names = BTreeSet::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        let at = format!("ports[{i}]");
        if let Some(number) = port.port
            && !in_port_range(number)
        {
            errors.push(port_range_error(format!("{at}.port"), number));
        }
        if Protocol::from_field(port.protocol.as_deref()).is_none() {
            errors.push(unsupported(
                &format!("{at}.protocol"),
                port.protocol.as_deref().unwrap_or_default(),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        let name = port.name.as_deref().unwrap_or_default();
        if !name.is_empty() && !is_dns1123_label(name) {
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

// ---------------------------------------------------------------------------
// Node

/// Nodes are cluster-scoped: a namespace in a manifest is dropped.
pub fn normalize_node(node: &mut Node) {
    node.metadata.namespace = None;
}

/// Checks one Node: it needs a valid name.
pub fn validate_node(node: &Node) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    check_name(
        &mut errors,
        "metadata.name",
        node.metadata.name.as_deref(),
        is_dns1123_subdomain,
        DNS1123_SUBDOMAIN_MSG,
    );
    finish(errors, ())
}

// ---------------------------------------------------------------------------
// nodePort allocation

/// The port of a Service that holds a nodePort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldBy {
    /// A service port (`name` is empty for the single unnamed port).
    Port {
        name: String,
        port: i32,
        protocol: Protocol,
    },
    /// The Service's `healthCheckNodePort`.
    HealthCheck,
}

impl fmt::Display for HeldBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Port { name, .. } if !name.is_empty() => write!(f, "port {name}"),
            Self::Port { port, protocol, .. } => write!(f, "port {port}/{protocol}"),
            Self::HealthCheck => f.write_str("healthCheckNodePort"),
        }
    }
}

/// Who holds a nodePort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHolder {
    pub service: ObjectKey,
    pub held_by: HeldBy,
}

/// What an allocation is remembered by: the Service and its port name (ports
/// of one Service have unique names), or its health check.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Port(String),
    HealthCheck,
}

/// One Service to place, with the versions that may be served in order of
/// preference (typically the current manifest, then the last good one).
#[derive(Clone, Debug)]
pub struct Candidate {
    pub key: ObjectKey,
    /// Normalized and individually valid versions; the first that fits is used.
    pub versions: Vec<Service>,
}

/// What became of a [`Candidate`].
#[derive(Clone, Debug, Default)]
pub struct Assignment {
    /// Index of the version that is served, and that version with every
    /// nodePort (and an allocated `healthCheckNodePort`) filled in.
    pub accepted: Option<(usize, Service)>,
    /// Versions that were tried and refused, with the reason.
    pub refused: Vec<(usize, Invalid)>,
}

/// A nodePort a version names explicitly.
#[derive(Debug)]
struct Fixed {
    port: u16,
    held_by: HeldBy,
    field: String,
}

/// A group of ports of one Service that need one allocated nodePort (ports
/// that share a port number share a nodePort, as in the API server), or its
/// health check.
#[derive(Debug)]
struct Wanted {
    slots: Vec<Slot>,
    /// Indices into `spec.ports`; empty for the health check.
    ports: Vec<usize>,
    held_by: HeldBy,
    /// The port allocated to this group before, if any.
    previous: Option<u16>,
    port: Option<u16>,
}

/// The outcome of one [`NodePortAllocator::round`].
struct Round {
    assignments: Vec<Assignment>,
    claimed: BTreeMap<u16, PortHolder>,
    allocations: BTreeMap<(ObjectKey, Slot), u16>,
}

#[derive(Debug, Default)]
struct Plan {
    fixed: Vec<Fixed>,
    wanted: Vec<Wanted>,
    /// Ports without a nodePort that take the explicit one of a port with the same number.
    shared: Vec<(usize, i32)>,
}

/// Keeps nodePorts unique across Services and allocates the omitted ones,
/// remembering both from one round to the next.
///
/// A nodePort number belongs to one Service, whatever the protocol (the API
/// server has one allocator for all protocols); inside one Service, ports
/// with the same port number share a nodePort (e.g. DNS on 53/TCP and
/// 53/UDP). A Service that held a port in the previous round keeps it against
/// newcomers (unless it gives the port up); otherwise the first candidate
/// wins. Omitted nodePorts get the lowest free port of the range, and keep it
/// while the Service exists.
#[derive(Clone, Debug)]
pub struct NodePortAllocator {
    range: RangeInclusive<u16>,
    holders: BTreeMap<u16, PortHolder>,
    allocations: BTreeMap<(ObjectKey, Slot), u16>,
}

impl NodePortAllocator {
    #[must_use]
    pub fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            range,
            holders: BTreeMap::new(),
            allocations: BTreeMap::new(),
        }
    }

    #[must_use]
    pub fn range(&self) -> &RangeInclusive<u16> {
        &self.range
    }

    /// Who holds `port` after the last round.
    #[must_use]
    pub fn holder(&self, port: u16) -> Option<&PortHolder> {
        self.holders.get(&port)
    }

    /// Places a whole set of Services (every Service there is: a Service
    /// missing from `candidates` releases its ports). Returns one
    /// [`Assignment`] per candidate, in the same order, and remembers the
    /// outcome for the next round.
    pub fn assign(&mut self, candidates: &[Candidate]) -> Vec<Assignment> {
        // Ports held last round stay with their holder while it is still
        // there. A holder that ends up not using a reserved port (it changed
        // or was refused) releases it, and the round is run again: the
        // reservations only shrink, so this ends.
        let present: BTreeSet<&ObjectKey> = candidates.iter().map(|c| &c.key).collect();
        let mut reserved: BTreeMap<u16, ObjectKey> = self
            .holders
            .iter()
            .filter(|(_, holder)| present.contains(&holder.service))
            .map(|(&port, holder)| (port, holder.service.clone()))
            .collect();
        loop {
            let round = self.round(candidates, &reserved);
            let before = reserved.len();
            reserved
                .retain(|port, owner| round.claimed.get(port).is_some_and(|h| h.service == *owner));
            if reserved.len() == before {
                self.holders = round.claimed;
                self.allocations = round.allocations;
                return round.assignments;
            }
        }
    }

    /// One attempt at placing `candidates`, in order, with `reserved` ports
    /// kept for their previous holders.
    fn round(&self, candidates: &[Candidate], reserved: &BTreeMap<u16, ObjectKey>) -> Round {
        let mut assignments = vec![Assignment::default(); candidates.len()];
        let mut plans: Vec<Option<Plan>> = (0..candidates.len()).map(|_| None).collect();
        let mut claimed: BTreeMap<u16, PortHolder> = BTreeMap::new();

        // Explicit ports and the allocations made before.
        for (index, candidate) in candidates.iter().enumerate() {
            for (version, service) in candidate.versions.iter().enumerate() {
                let mut plan = self.plan(&candidate.key, service);
                let conflicts: Vec<FieldError> = plan
                    .fixed
                    .iter()
                    .filter_map(|fixed| {
                        let holder = self.taken(fixed.port, &candidate.key, &claimed, reserved)?;
                        let what = match &fixed.held_by {
                            HeldBy::Port { protocol, .. } => {
                                format!("nodePort {}/{protocol}", fixed.port)
                            }
                            HeldBy::HealthCheck => format!("healthCheckNodePort {}", fixed.port),
                        };
                        Some(FieldError::new(
                            fixed.field.clone(),
                            format!(
                                "{what} is already allocated to {} ({})",
                                holder.service, holder.held_by
                            ),
                        ))
                    })
                    .collect();
                if !conflicts.is_empty() {
                    assignments[index]
                        .refused
                        .push((version, Invalid(conflicts)));
                    continue;
                }
                for fixed in &plan.fixed {
                    claimed.insert(fixed.port, holder(&candidate.key, &fixed.held_by));
                }
                for wanted in &mut plan.wanted {
                    if let Some(port) = wanted.previous
                        && !claimed.contains_key(&port)
                        && self
                            .taken(port, &candidate.key, &claimed, reserved)
                            .is_none()
                    {
                        claimed.insert(port, holder(&candidate.key, &wanted.held_by));
                        wanted.port = Some(port);
                    }
                }
                plans[index] = Some(plan);
                assignments[index].accepted = Some((version, service.clone()));
                break;
            }
        }

        let allocations = self.allocate_new(
            candidates,
            &mut plans,
            &mut claimed,
            reserved,
            &mut assignments,
        );
        Round {
            assignments,
            claimed,
            allocations,
        }
    }

    /// Allocates the lowest free port to every port still without one, in
    /// the order given; refuses a Service when the range is exhausted.
    fn allocate_new(
        &self,
        candidates: &[Candidate],
        plans: &mut [Option<Plan>],
        claimed: &mut BTreeMap<u16, PortHolder>,
        reserved: &BTreeMap<u16, ObjectKey>,
        assignments: &mut [Assignment],
    ) -> BTreeMap<(ObjectKey, Slot), u16> {
        let mut allocations = BTreeMap::new();
        for (index, candidate) in candidates.iter().enumerate() {
            let Some(plan) = plans[index].as_mut() else {
                continue;
            };
            let mut exhausted = false;
            for wanted in plan.wanted.iter_mut().filter(|w| w.port.is_none()) {
                let free = self.range.clone().find(|port| {
                    !claimed.contains_key(port)
                        && self
                            .taken(*port, &candidate.key, claimed, reserved)
                            .is_none()
                });
                let Some(port) = free else {
                    exhausted = true;
                    break;
                };
                claimed.insert(port, holder(&candidate.key, &wanted.held_by));
                wanted.port = Some(port);
            }
            let assignment = &mut assignments[index];
            if exhausted {
                claimed.retain(|_, h| h.service != candidate.key);
                if let Some((version, _)) = assignment.accepted.take() {
                    assignment.refused.push((
                        version,
                        Invalid(vec![FieldError::new(
                            "spec.ports",
                            format!(
                                "no free nodePort left in the range {}",
                                format_range(&self.range)
                            ),
                        )]),
                    ));
                }
                continue;
            }
            if let Some((_, service)) = assignment.accepted.as_mut() {
                apply(plan, service);
                for wanted in &plan.wanted {
                    if let Some(port) = wanted.port {
                        for slot in &wanted.slots {
                            allocations.insert((candidate.key.clone(), slot.clone()), port);
                        }
                    }
                }
            }
        }
        allocations
    }

    /// Who keeps `key` from using `port` this round, if anyone.
    fn taken(
        &self,
        port: u16,
        key: &ObjectKey,
        claimed: &BTreeMap<u16, PortHolder>,
        reserved: &BTreeMap<u16, ObjectKey>,
    ) -> Option<PortHolder> {
        if let Some(holder) = claimed.get(&port).filter(|h| h.service != *key) {
            return Some(holder.clone());
        }
        if reserved.get(&port).is_some_and(|owner| owner != key) {
            return self.holders.get(&port).cloned();
        }
        None
    }

    /// The nodePorts a Service names and those it needs allocated.
    fn plan(&self, key: &ObjectKey, service: &Service) -> Plan {
        let mut plan = Plan::default();
        let Some(spec) = service.spec.as_ref() else {
            return plan;
        };
        let Some(service_type) = ServiceType::from_field(spec.type_.as_deref()) else {
            return plan;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let allocate = service_type.has_node_ports()
            && !(service_type == ServiceType::LoadBalancer
                && spec.allocate_load_balancer_node_ports == Some(false));

        for (i, port) in ports.iter().enumerate() {
            let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            if plan.fixed.iter().any(|f| f.port == node_port) {
                continue;
            }
            plan.fixed.push(Fixed {
                port: node_port,
                held_by: held_by_port(port),
                field: format!("spec.ports[{i}]"),
            });
        }
        if let Some(health) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
        {
            plan.fixed.push(Fixed {
                port: health,
                held_by: HeldBy::HealthCheck,
                field: "spec.healthCheckNodePort".to_owned(),
            });
        }
        let own: BTreeSet<u16> = plan.fixed.iter().map(|f| f.port).collect();
        let previous = |slots: &[Slot]| {
            slots
                .iter()
                .find_map(|slot| self.allocations.get(&(key.clone(), slot.clone())).copied())
                .filter(|port| self.range.contains(port) && !own.contains(port))
        };

        if allocate {
            let mut groups: BTreeMap<i32, usize> = BTreeMap::new();
            for (i, port) in ports.iter().enumerate() {
                if port.node_port.is_some() {
                    continue;
                }
                if let Some(sibling) = ports
                    .iter()
                    .find_map(|p| p.node_port.filter(|_| p.port == port.port))
                {
                    plan.shared.push((i, sibling));
                    continue;
                }
                let slot = Slot::Port(port.name.clone().unwrap_or_default());
                if let Some(&group) = groups.get(&port.port) {
                    let wanted = &mut plan.wanted[group];
                    wanted.slots.push(slot);
                    wanted.ports.push(i);
                } else {
                    groups.insert(port.port, plan.wanted.len());
                    plan.wanted.push(Wanted {
                        slots: vec![slot],
                        ports: vec![i],
                        held_by: held_by_port(port),
                        previous: None,
                        port: None,
                    });
                }
            }
        }
        let needs_health_check = service_type == ServiceType::LoadBalancer
            && spec.external_traffic_policy.as_deref() == Some("Local")
            && spec.health_check_node_port.is_none();
        if needs_health_check {
            plan.wanted.push(Wanted {
                slots: vec![Slot::HealthCheck],
                ports: Vec::new(),
                held_by: HeldBy::HealthCheck,
                previous: None,
                port: None,
            });
        }
        for wanted in &mut plan.wanted {
            wanted.previous = previous(&wanted.slots);
        }
        plan
    }
}

fn held_by_port(port: &ServicePort) -> HeldBy {
    HeldBy::Port {
        name: port.name.clone().unwrap_or_default(),
        port: port.port,
        protocol: Protocol::from_field(port.protocol.as_deref()).unwrap_or(Protocol::Tcp),
    }
}

fn holder(key: &ObjectKey, held_by: &HeldBy) -> PortHolder {
    PortHolder {
        service: key.clone(),
        held_by: held_by.clone(),
    }
}

/// Writes the allocated and shared nodePorts of `plan` into `service`.
fn apply(plan: &Plan, service: &mut Service) {
    let Some(spec) = service.spec.as_mut() else {
        return;
    };
    for wanted in &plan.wanted {
        let Some(port) = wanted.port else {
            continue;
        };
        if wanted.slots.contains(&Slot::HealthCheck) {
            spec.health_check_node_port = Some(i32::from(port));
        }
        for &i in &wanted.ports {
            if let Some(service_port) = spec.ports.as_mut().and_then(|ports| ports.get_mut(i)) {
                service_port.node_port = Some(i32::from(port));
            }
        }
    }
    for &(i, node_port) in &plan.shared {
        if let Some(service_port) = spec.ports.as_mut().and_then(|ports| ports.get_mut(i)) {
            service_port.node_port = Some(node_port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::Endpoint;
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

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            name: name.to_owned(),
        }
    }

    fn node_ports(service: &Service) -> Vec<Option<i32>> {
        service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|ports| ports.iter().map(|p| p.node_port).collect())
            .unwrap_or_default()
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

    #[test]
    fn name_checks() {
        assert!(is_iana_svc_name("http"));
        assert!(is_iana_svc_name("h2-c"));
        assert!(!is_iana_svc_name("8080"));
        assert!(!is_iana_svc_name("a--b"));
        assert!(!is_iana_svc_name("-http"));
        assert!(!is_iana_svc_name("abcdefghijklmnop"));
        assert!(is_dns1035_label("web-1"));
        assert!(!is_dns1035_label("1web"));
        assert!(is_dns1123_label("1web"));
        assert!(is_dns1123_subdomain("node-1.example"));
        assert!(!is_dns1123_subdomain("node..1"));
    }

    fn slice(address_type: &str, addresses: &[&str], labelled: bool) -> EndpointSlice {
        let mut slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-abc".to_owned()),
                labels: labelled
                    .then(|| [(SERVICE_NAME_LABEL.to_owned(), "web".to_owned())].into()),
                ..ObjectMeta::default()
            },
            address_type: address_type.to_owned(),
            endpoints: vec![Endpoint {
                addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
                ..Endpoint::default()
            }],
            ports: None,
        };
        normalize_endpoint_slice(&mut slice);
        slice
    }

    #[test]
    fn endpoint_slices() {
        assert_eq!(
            validate_endpoint_slice(&slice("IPv4", &["10.1.0.5"], true)),
            Ok(AddressType::Ipv4)
        );
        assert_eq!(
            validate_endpoint_slice(&slice("IPv6", &["fd00::5"], true)),
            Ok(AddressType::Ipv6)
        );
        let message = validate_endpoint_slice(&slice("IPv4", &["10.1.0.300"], false))
            .expect_err("invalid")
            .to_string();
        assert!(
            message.contains("label kubernetes.io/service-name"),
            "{message}"
        );
        assert!(
            message.contains("endpoints[0].addresses[0]: Invalid value: \"10.1.0.300\""),
            "{message}"
        );
        let message = validate_endpoint_slice(&slice("IPX", &["10.1.0.5"], true))
            .expect_err("invalid")
            .to_string();
        assert!(
            message.contains("addressType: Unsupported value: \"IPX\""),
            "{message}"
        );
    }

    #[test]
    fn nodes_need_a_name() {
        assert!(validate_node(&Node::default()).is_err());
        let node = Node {
            metadata: ObjectMeta {
                name: Some("node-a".to_owned()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        assert_eq!(validate_node(&node), Ok(()));
    }

    fn candidate(service: Service) -> Candidate {
        let name = service.metadata.name.clone().unwrap_or_default();
        Candidate {
            key: key(&name),
            versions: vec![service],
        }
    }

    #[test]
    fn collisions_first_wins_then_holder_keeps_it() {
        let mut allocator = NodePortAllocator::new(RANGE);
        let a = service("a", "NodePort", vec![port("http", 80, "TCP", Some(31000))]);
        let b = service("b", "NodePort", vec![port("dns", 53, "UDP", Some(31000))]);
        let out = allocator.assign(&[candidate(a.clone()), candidate(b.clone())]);
        assert!(out[0].accepted.is_some());
        assert!(out[1].accepted.is_none());
        let message = out[1].refused[0].1.to_string();
        assert_eq!(
            message,
            "spec.ports[0]: nodePort 31000/UDP is already allocated to default/a (port http)"
        );

        // Next round, b comes first: a held the port and keeps it.
        let out = allocator.assign(&[candidate(b), candidate(a)]);
        assert!(out[0].accepted.is_none());
        assert!(out[1].accepted.is_some());
    }

    #[test]
    fn a_holder_that_moves_releases_its_port_in_the_same_round() {
        let mut allocator = NodePortAllocator::new(RANGE);
        let a = service("a", "NodePort", vec![port("", 80, "TCP", Some(31000))]);
        allocator.assign(&[candidate(a)]);
        let t = service("t", "NodePort", vec![port("", 80, "TCP", Some(31000))]);
        let a_moved = service("a", "NodePort", vec![port("", 80, "TCP", Some(31001))]);
        let out = allocator.assign(&[candidate(t), candidate(a_moved)]);
        assert_eq!(
            node_ports(&out[0].accepted.clone().expect("t").1),
            vec![Some(31000)]
        );
        assert_eq!(
            node_ports(&out[1].accepted.clone().expect("a").1),
            vec![Some(31001)]
        );
        assert!(out[0].refused.is_empty());
        assert_eq!(
            allocator.holder(31000).map(|h| h.service.name.as_str()),
            Some("t")
        );
    }

    #[test]
    fn allocation_is_stable_and_freed() {
        let mut allocator = NodePortAllocator::new(RANGE);
        let a = service("a", "NodePort", vec![port("http", 80, "TCP", None)]);
        let out = allocator.assign(&[candidate(a.clone())]);
        let (_, served) = out[0].accepted.clone().expect("accepted");
        assert_eq!(node_ports(&served), vec![Some(30000)]);

        // A newcomer listed first gets the next port; a keeps its own.
        let z = service("z", "NodePort", vec![port("http", 80, "TCP", None)]);
        let out = allocator.assign(&[candidate(z.clone()), candidate(a.clone())]);
        assert_eq!(
            node_ports(&out[0].accepted.clone().expect("z").1),
            vec![Some(30001)]
        );
        assert_eq!(
            node_ports(&out[1].accepted.clone().expect("a").1),
            vec![Some(30000)]
        );

        // An explicit claim on a's allocated port is refused.
        let x = service("x", "NodePort", vec![port("", 80, "TCP", Some(30000))]);
        let out = allocator.assign(&[candidate(x.clone()), candidate(z.clone()), candidate(a)]);
        assert!(out[0].accepted.is_none());
        assert!(
            out[0].refused[0]
                .1
                .to_string()
                .contains("already allocated to default/a (port http)")
        );

        // a goes away: its port is free again.
        let out = allocator.assign(&[candidate(z), candidate(x)]);
        assert_eq!(
            node_ports(&out[0].accepted.clone().expect("z").1),
            vec![Some(30001)]
        );
        assert_eq!(
            node_ports(&out[1].accepted.clone().expect("x").1),
            vec![Some(30000)]
        );
    }

    #[test]
    fn same_port_number_shares_one_allocation() {
        let mut allocator = NodePortAllocator::new(RANGE);
        let dns = service(
            "dns",
            "NodePort",
            vec![
                port("dns", 53, "UDP", None),
                port("dns-tcp", 53, "TCP", None),
                port("metrics", 9153, "TCP", None),
            ],
        );
        let out = allocator.assign(&[candidate(dns)]);
        let served = out[0].accepted.clone().expect("accepted").1;
        assert_eq!(
            node_ports(&served),
            vec![Some(30000), Some(30000), Some(30001)]
        );

        let mixed = service(
            "mixed",
            "NodePort",
            vec![
                port("udp", 53, "UDP", None),
                port("tcp", 53, "TCP", Some(30500)),
            ],
        );
        let mut allocator = NodePortAllocator::new(RANGE);
        let out = allocator.assign(&[candidate(mixed)]);
        assert_eq!(
            node_ports(&out[0].accepted.clone().expect("mixed").1),
            vec![Some(30500), Some(30500)]
        );
    }

    #[test]
    fn health_check_port_is_allocated_for_local_load_balancers() {
        let mut allocator = NodePortAllocator::new(RANGE);
        let mut lb = service("lb", "LoadBalancer", vec![port("", 80, "TCP", Some(30000))]);
        lb.spec.as_mut().expect("spec").external_traffic_policy = Some("Local".to_owned());
        let out = allocator.assign(&[candidate(lb)]);
        let served = out[0].accepted.clone().expect("accepted").1;
        assert_eq!(
            served.spec.as_ref().and_then(|s| s.health_check_node_port),
            Some(30001)
        );
        assert_eq!(
            allocator.holder(30001).map(|h| h.held_by.clone()),
            Some(HeldBy::HealthCheck)
        );
    }

    #[test]
    fn refused_version_falls_back_to_the_next() {
        let mut allocator = NodePortAllocator::new(RANGE);
        let a = service("a", "NodePort", vec![port("", 80, "TCP", Some(31000))]);
        let b_old = service("b", "NodePort", vec![port("", 80, "TCP", Some(31001))]);
        allocator.assign(&[candidate(a.clone()), candidate(b_old.clone())]);
        let b_new = service("b", "NodePort", vec![port("", 80, "TCP", Some(31000))]);
        let out = allocator.assign(&[
            candidate(a),
            Candidate {
                key: key("b"),
                versions: vec![b_new, b_old],
            },
        ]);
        assert_eq!(out[1].accepted.as_ref().map(|(v, _)| *v), Some(1));
        assert_eq!(out[1].refused.len(), 1);
        assert_eq!(out[1].refused[0].0, 0);
    }

    #[test]
    fn exhausted_range_is_reported() {
        let mut allocator = NodePortAllocator::new(30000..=30000);
        let a = service("a", "NodePort", vec![port("", 80, "TCP", None)]);
        let b = service("b", "NodePort", vec![port("", 80, "TCP", None)]);
        let out = allocator.assign(&[candidate(a), candidate(b)]);
        assert!(out[0].accepted.is_some());
        assert!(out[1].accepted.is_none());
        assert!(
            out[1].refused[0]
                .1
                .to_string()
                .contains("no free nodePort left in the range 30000-30000")
        );
    }
}
