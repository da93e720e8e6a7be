//! What the Kubernetes API server does to a Service on an *update*, before
//! it validates it: the rules that let an edit change `type` or
//! `externalTrafficPolicy` without also deleting by hand the values that
//! belonged to the old setting, and that keep the values allocated before
//! when an edit omits them.
//!
//! A create is validated as written ([`super::service::validate_service`]).
//! An update — a manifest that replaces a Service accepted before — first
//! goes through [`prepare_update`], then through the same validation and the
//! nodePort allocator. [`prepare_update`] applies, in the API server's order:
//!
//! 1. [`patch_allocated_values`], `patchAllocatedValues`
//!    (`pkg/registry/core/service/storage`, called from `beginUpdate`): an
//!    omitted clusterIP, nodePort or healthCheckNodePort keeps the old value
//!    when the old and the new Service both need one;
//! 2. [`normalize_cluster_ips`], the update case of `normalizeClusterIPs`
//!    (same package): keeps `clusterIP` and `clusterIPs` in step;
//! 3. [`drop_type_dependent_fields`], `dropTypeDependentFields`
//!    (`pkg/registry/core/service/strategy.go`, called from
//!    `PrepareForUpdate`): a field the new type or policy does not allow is
//!    cleared when the edit left it as it was, so that the edit is accepted
//!    and the value released; a field the edit *changed* is left for
//!    validation to reject, as on a create.
//!
//! Not mirrored: `PrepareForUpdate` also copies the old status into the new
//! object, because controllers, not users, write the status; a manifests
//! directory has no controllers, so the status is the file's (only
//! `status.loadBalancer` is cleared, as `dropTypeDependentFields` does).
//! `ValidateServiceUpdate`'s own checks (an immutable clusterIP) are not done.
//!
//! Everything here is pure: no I/O, no logging. Omitted values are `None`
//! (after [`super::service::normalize_service`], a nodePort of 0 is `None`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::service::ServiceType;

/// Turns `new`, a Service as its manifest writes it (defaulted by
/// [`super::service::normalize_service`]), into what the API server would
/// validate when it replaces `old`, the Service as it is served (with its
/// allocated nodePorts). See the module documentation for the steps.
pub fn prepare_update(new: &mut Service, old: &Service) {
    patch_allocated_values(new, old);
    normalize_cluster_ips(new, old);
    drop_type_dependent_fields(new, old);
}

/// `patchAllocatedValues`: values the API server allocated (or the user set)
/// before are kept when the edit omits them, so that resubmitting the YAML
/// of the create succeeds and changes nothing.
///
/// - Both need a clusterIP: an omitted `clusterIP` / `clusterIPs` keeps the old one.
/// - Both need nodePorts: a port without a nodePort takes the old nodePort
///   of the port with the same name, unless a port of the new Service
///   already uses that value (and the old one did too).
/// - Both need a healthCheckNodePort: an omitted one keeps the old one.
pub fn patch_allocated_values(new: &mut Service, old: &Service) {
    let cluster_ip = needs_cluster_ip(old) && needs_cluster_ip(new);
    let node_ports = needs_node_port(old) && needs_node_port(new);
    let health_check = needs_health_check_node_port(old) && needs_health_check_node_port(new);
    let (Some(spec), Some(old_spec)) = (new.spec.as_mut(), old.spec.as_ref()) else {
        return;
    };

    if cluster_ip {
        if is_empty(spec.cluster_ip.as_deref()) {
            spec.cluster_ip.clone_from(&old_spec.cluster_ip);
        }
        if cluster_ips(spec).is_empty() && !cluster_ips(old_spec).is_empty() {
            spec.cluster_ips.clone_from(&old_spec.cluster_ips);
        }
    }

    if node_ports {
        // Values both versions use cannot be patched in: they are taken.
        let old_used = node_ports_used(old_spec);
        let used: BTreeSet<i32> = node_ports_used(spec)
            .intersection(&old_used)
            .copied()
            .collect();
        // By name: the user may have changed the port's other properties.
        let by_name: BTreeMap<&str, Option<i32>> = old_spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref().unwrap_or_default(), p.node_port))
            .collect();
        for port in spec.ports.iter_mut().flatten() {
            if port.node_port.is_some() {
                continue;
            }
            let name = port.name.as_deref().unwrap_or_default();
            if let Some(&Some(old_value)) = by_name.get(name)
                && !used.contains(&old_value)
            {
                port.node_port = Some(old_value);
            }
        }
    }

    if health_check && spec.health_check_node_port.is_none() {
        spec.health_check_node_port = old_spec.health_check_node_port;
    }
}

/// The update case of `normalizeClusterIPs`: guesses what the edit meant for
/// the linked `clusterIP` and `clusterIPs` fields.
///
/// - `clusterIPs` omitted and `clusterIP` unchanged: `clusterIPs` keeps its
///   old value (a client that only knows the singular field).
/// - `clusterIP` cleared and `clusterIPs` unchanged: `clusterIPs` is cleared too.
/// - `clusterIP` changed and `clusterIPs` unchanged: `clusterIPs` follows it.
pub fn normalize_cluster_ips(new: &mut Service, old: &Service) {
    let (Some(spec), Some(old_spec)) = (new.spec.as_mut(), old.spec.as_ref()) else {
        return;
    };
    let old_ip = old_spec.cluster_ip.as_deref().unwrap_or_default();
    let new_ip = spec.cluster_ip.clone().unwrap_or_default();

    if !cluster_ips(old_spec).is_empty() && cluster_ips(spec).is_empty() && old_ip == new_ip {
        spec.cluster_ips.clone_from(&old_spec.cluster_ips);
    }
    if old_ip != new_ip && cluster_ips(old_spec) == cluster_ips(spec) {
        spec.cluster_ips = if !old_ip.is_empty() && new_ip.is_empty() {
            None
        } else {
            Some(vec![new_ip])
        };
    }
}

/// `dropTypeDependentFields`: when the edit switches to a type (or policy)
/// that does not use a field, and leaves that field as it was, the field is
/// cleared (and its value released) instead of failing validation. A field
/// the edit changed is kept, for validation to reject as on a create.
///
/// - away from a type that needs a clusterIP (to ExternalName): unchanged
///   `clusterIP` + `clusterIPs`, `ipFamilies`, `ipFamilyPolicy`;
/// - away from a type with nodePorts (to ClusterIP or ExternalName): every
///   nodePort, when the new ones are a subset of the old ones;
/// - away from LoadBalancer with `externalTrafficPolicy: Local` (the policy
///   or the type changes): an unchanged `healthCheckNodePort`;
/// - away from LoadBalancer: an unchanged `allocateLoadBalancerNodePorts`
///   (when both set it), an unchanged `loadBalancerClass`;
/// - to a Service that is not externally accessible: an unchanged
///   `externalTrafficPolicy`;
/// - any type but LoadBalancer: `status.loadBalancer`.
pub fn drop_type_dependent_fields(new: &mut Service, old: &Service) {
    let Some(old_spec) = old.spec.as_ref() else {
        return;
    };

    if needs_cluster_ip(old) && !needs_cluster_ip(new) {
        let spec = spec_mut(new);
        if same_cluster_ips(old_spec, spec) {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        }
        if ip_families(old_spec) == ip_families(spec) {
            spec.ip_families = None;
        }
        if old_spec.ip_family_policy.as_deref().unwrap_or_default()
            == spec.ip_family_policy.as_deref().unwrap_or_default()
        {
            spec.ip_family_policy = None;
        }
    }

    if needs_node_port(old) && !needs_node_port(new) {
        let spec = spec_mut(new);
        // Ports may be added, removed or changed, as long as no nodePort is new.
        if node_ports_used(spec).is_subset(&node_ports_used(old_spec)) {
            for port in spec.ports.iter_mut().flatten() {
                port.node_port = None;
            }
        }
    }

    if needs_health_check_node_port(old) && !needs_health_check_node_port(new) {
        let spec = spec_mut(new);
        if spec.health_check_node_port == old_spec.health_check_node_port {
            spec.health_check_node_port = None;
        }
    }

    let was_load_balancer = can_set_load_balancer_class(old);
    if was_load_balancer && !can_set_load_balancer_class(new) {
        let spec = spec_mut(new);
        if let (Some(old_value), Some(new_value)) = (
            old_spec.allocate_load_balancer_node_ports,
            spec.allocate_load_balancer_node_ports,
        ) && old_value == new_value
        {
            spec.allocate_load_balancer_node_ports = None;
        }
        if spec.load_balancer_class == old_spec.load_balancer_class {
            spec.load_balancer_class = None;
        }
    }

    if externally_accessible(old) && !externally_accessible(new) {
        let spec = spec_mut(new);
        if spec.external_traffic_policy == old_spec.external_traffic_policy {
            spec.external_traffic_policy = None;
        }
    }

    // Load balancer de-provisioning is asynchronous, but the status need not say so.
    if type_of(new) != Some(ServiceType::LoadBalancer)
        && let Some(status) = new.status.as_mut()
    {
        status.load_balancer = None;
    }
}

/// The Service's type; `None` for a type the API does not know.
fn type_of(service: &Service) -> Option<ServiceType> {
    ServiceType::from_field(service.spec.as_ref().and_then(|s| s.type_.as_deref()))
}

/// `needsClusterIP`: every type but ExternalName has a clusterIP (even
/// `None`, headless, counts as one).
fn needs_cluster_ip(service: &Service) -> bool {
    type_of(service) != Some(ServiceType::ExternalName)
}

/// `needsNodePort`: NodePort and LoadBalancer Services have nodePorts.
fn needs_node_port(service: &Service) -> bool {
    type_of(service).is_some_and(ServiceType::has_node_ports)
}

/// `needsHCNodePort`: a LoadBalancer with `externalTrafficPolicy: Local`
/// has a healthCheckNodePort.
fn needs_health_check_node_port(service: &Service) -> bool {
    type_of(service) == Some(ServiceType::LoadBalancer)
        && service
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.as_deref())
            == Some("Local")
}

/// `canSetLoadBalancerClass`: only a LoadBalancer has a class.
fn can_set_load_balancer_class(service: &Service) -> bool {
    type_of(service) == Some(ServiceType::LoadBalancer)
}

/// `ExternallyAccessible` (`pkg/api/service/util.go`): NodePort,
/// LoadBalancer, and ClusterIP with external IPs; only these may set
/// `externalTrafficPolicy`.
fn externally_accessible(service: &Service) -> bool {
    match type_of(service) {
        Some(ServiceType::NodePort | ServiceType::LoadBalancer) => true,
        Some(ServiceType::ClusterIp) => service
            .spec
            .as_ref()
            .and_then(|s| s.external_ips.as_ref())
            .is_some_and(|ips| !ips.is_empty()),
        _ => false,
    }
}

/// The spec of a Service, created empty if missing (normalized Services always have one).
fn spec_mut(service: &mut Service) -> &mut ServiceSpec {
    service.spec.get_or_insert_with(ServiceSpec::default)
}

fn is_empty(value: Option<&str>) -> bool {
    value.is_none_or(str::is_empty)
}

fn cluster_ips(spec: &ServiceSpec) -> &[String] {
    spec.cluster_ips.as_deref().unwrap_or_default()
}

fn ip_families(spec: &ServiceSpec) -> &[String] {
    spec.ip_families.as_deref().unwrap_or_default()
}

/// `sameClusterIPs` of strategy.go: the same `clusterIP` and `clusterIPs`.
fn same_cluster_ips(old: &ServiceSpec, new: &ServiceSpec) -> bool {
    old.cluster_ip.as_deref().unwrap_or_default() == new.cluster_ip.as_deref().unwrap_or_default()
        && cluster_ips(old) == cluster_ips(new)
}

/// The nodePort values a spec names.
fn node_ports_used(spec: &ServiceSpec) -> BTreeSet<i32> {
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::service::{normalize_service, validate_service};
    use super::*;
    use std::ops::RangeInclusive;

    const RANGE: RangeInclusive<u16> = 30000..=32767;

    /// A Service named `web` from the YAML flow-style fields after its
    /// metadata (`spec: {…}` and maybe `status: {…}`), defaulted.
    fn service(body: &str) -> Service {
        let yaml = format!("{{apiVersion: v1, kind: Service, metadata: {{name: web}}, {body}}}");
        let mut service: Service =
            serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("bad test YAML {yaml}: {e}"));
        normalize_service(&mut service);
        service
    }

    /// What one row expects.
    enum Expect {
        /// Accepted, and equal to this Service (`spec: {…}`, defaulted).
        Valid(&'static str),
        /// Rejected with a message containing this.
        Invalid(&'static str),
    }

    /// One case: the Service as it is served (`None`: a create), the
    /// Service as the manifest now writes it, and the outcome.
    struct Row {
        what: &'static str,
        old: Option<&'static str>,
        new: &'static str,
        expect: Expect,
    }

    /// What the manifests source does with a document: the update rules when
    /// it replaces `old`, then validation.
    fn outcome(old: Option<&str>, new: &str) -> Result<Service, String> {
        let mut new = service(new);
        if let Some(old) = old {
            prepare_update(&mut new, &service(old));
        }
        validate_service(&new, &RANGE).map_err(|e| e.to_string())?;
        Ok(new)
    }

    const LB_LOCAL: &str = "spec: {type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 30500, ports: [{name: http, port: 80, nodePort: 30080}]}";
    const NODE_PORT: &str =
        "spec: {type: NodePort, ports: [{name: http, port: 80, nodePort: 30080}]}";
    const CLUSTER_IP: &str = "spec: {type: ClusterIP, ports: [{name: http, port: 80}]}";
    const WITH_IPS: &str = "spec: {type: ClusterIP, clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ipFamilies: [IPv4], ipFamilyPolicy: SingleStack, ports: [{name: http, port: 80}]}";
    const LB_FIELDS: &str = "spec: {type: LoadBalancer, allocateLoadBalancerNodePorts: true, loadBalancerClass: example.com/lb, ports: [{name: http, port: 80, nodePort: 30080}]}";

    #[allow(clippy::too_many_lines, reason = "one table, one row per case")]
    fn rows() -> Vec<Row> {
        use Expect::{Invalid, Valid};
        vec![
            // healthCheckNodePort
            Row {
                what: "create: a healthCheckNodePort without the Local policy",
                old: None,
                new: "spec: {type: LoadBalancer, externalTrafficPolicy: Cluster, healthCheckNodePort: 30500, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Invalid(
                    "spec.healthCheckNodePort: Invalid value: 30500: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
                ),
            },
            Row {
                what: "update Local -> Cluster, healthCheckNodePort left as it was: cleared",
                old: Some(LB_LOCAL),
                new: "spec: {type: LoadBalancer, externalTrafficPolicy: Cluster, healthCheckNodePort: 30500, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Valid(
                    "spec: {type: LoadBalancer, externalTrafficPolicy: Cluster, ports: [{name: http, port: 80, nodePort: 30080}]}",
                ),
            },
            Row {
                what: "update Local -> Cluster with a changed healthCheckNodePort: rejected",
                old: Some(LB_LOCAL),
                new: "spec: {type: LoadBalancer, externalTrafficPolicy: Cluster, healthCheckNodePort: 30501, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Invalid("spec.healthCheckNodePort: Invalid value: 30501: may only be set"),
            },
            Row {
                what: "update LoadBalancer -> NodePort, healthCheckNodePort left: cleared",
                old: Some(LB_LOCAL),
                new: "spec: {type: NodePort, externalTrafficPolicy: Local, healthCheckNodePort: 30500, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Valid(
                    "spec: {type: NodePort, externalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}",
                ),
            },
            Row {
                what: "update Local -> Local, healthCheckNodePort omitted: kept",
                old: Some(LB_LOCAL),
                new: "spec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Valid(LB_LOCAL),
            },
            Row {
                what: "create Local, healthCheckNodePort omitted: left to the allocator",
                old: None,
                new: "spec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Valid(
                    "spec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}",
                ),
            },
            // nodePorts
            Row {
                what: "create: nodePorts on a ClusterIP Service",
                old: None,
                new: "spec: {type: ClusterIP, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Invalid(
                    "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                ),
            },
            Row {
                what: "update NodePort -> ClusterIP, nodePorts left as they were: cleared",
                old: Some(NODE_PORT),
                new: "spec: {type: ClusterIP, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Valid(CLUSTER_IP),
            },
            Row {
                what: "update NodePort -> ClusterIP, a port removed, the rest left: cleared",
                old: Some(
                    "spec: {type: NodePort, ports: [{name: http, port: 80, nodePort: 30080}, {name: https, port: 443, nodePort: 30443}]}",
                ),
                new: "spec: {type: ClusterIP, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Valid(CLUSTER_IP),
            },
            Row {
                what: "update NodePort -> ClusterIP with a changed nodePort: rejected",
                old: Some(NODE_PORT),
                new: "spec: {type: ClusterIP, ports: [{name: http, port: 80, nodePort: 30081}]}",
                expect: Invalid(
                    "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                ),
            },
            Row {
                what: "update LoadBalancer -> ExternalName, nodePorts left: cleared",
                old: Some(
                    "spec: {type: LoadBalancer, ports: [{name: http, port: 80, nodePort: 30080}]}",
                ),
                new: "spec: {type: ExternalName, externalName: db.example.com, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Valid(
                    "spec: {type: ExternalName, externalName: db.example.com, ports: [{name: http, port: 80}]}",
                ),
            },
            Row {
                what: "update NodePort -> NodePort, nodePort omitted: the old one of the same name",
                old: Some(NODE_PORT),
                new: "spec: {type: NodePort, ports: [{name: http, port: 8080}]}",
                expect: Valid(
                    "spec: {type: NodePort, ports: [{name: http, port: 8080, nodePort: 30080}]}",
                ),
            },
            Row {
                what: "update NodePort -> LoadBalancer, nodePort omitted: kept",
                old: Some(NODE_PORT),
                new: "spec: {type: LoadBalancer, ports: [{name: http, port: 80}]}",
                expect: Valid(
                    "spec: {type: LoadBalancer, ports: [{name: http, port: 80, nodePort: 30080}]}",
                ),
            },
            Row {
                what: "update, nodePort omitted but its old value now used by another port: not patched",
                old: Some(
                    "spec: {type: NodePort, ports: [{name: http, port: 80, nodePort: 30080}, {name: dns, port: 53, nodePort: 30053}]}",
                ),
                new: "spec: {type: NodePort, ports: [{name: http, port: 80}, {name: dns, port: 53, nodePort: 30080}]}",
                expect: Valid(
                    "spec: {type: NodePort, ports: [{name: http, port: 80}, {name: dns, port: 53, nodePort: 30080}]}",
                ),
            },
            Row {
                what: "update, a renamed port with its nodePort omitted: not patched",
                old: Some(NODE_PORT),
                new: "spec: {type: NodePort, ports: [{name: web, port: 80}]}",
                expect: Valid("spec: {type: NodePort, ports: [{name: web, port: 80}]}"),
            },
            Row {
                what: "update ClusterIP -> NodePort, nodePort omitted: left to the allocator",
                old: Some(CLUSTER_IP),
                new: "spec: {type: NodePort, ports: [{name: http, port: 80}]}",
                expect: Valid("spec: {type: NodePort, ports: [{name: http, port: 80}]}"),
            },
            Row {
                what: "create NodePort, nodePort omitted: left to the allocator",
                old: None,
                new: "spec: {type: NodePort, ports: [{name: http, port: 80}]}",
                expect: Valid("spec: {type: NodePort, ports: [{name: http, port: 80}]}"),
            },
            // clusterIP, clusterIPs, ipFamilies, ipFamilyPolicy
            Row {
                what: "create: cluster IP fields on an ExternalName Service",
                old: None,
                new: "spec: {type: ExternalName, externalName: db.example.com, clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ipFamilies: [IPv4], ipFamilyPolicy: SingleStack}",
                expect: Invalid(
                    "spec.clusterIP: Forbidden: may not be set for ExternalName services; spec.clusterIPs: Forbidden: may not be set for ExternalName services; spec.ipFamilies: Forbidden: may not be set for ExternalName services; spec.ipFamilyPolicy: Forbidden",
                ),
            },
            Row {
                what: "update ClusterIP -> ExternalName, cluster IP fields left: cleared",
                old: Some(WITH_IPS),
                new: "spec: {type: ExternalName, externalName: db.example.com, clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ipFamilies: [IPv4], ipFamilyPolicy: SingleStack, ports: [{name: http, port: 80}]}",
                expect: Valid(
                    "spec: {type: ExternalName, externalName: db.example.com, ports: [{name: http, port: 80}]}",
                ),
            },
            Row {
                what: "update ClusterIP -> ExternalName with a changed clusterIP: rejected",
                old: Some(WITH_IPS),
                new: "spec: {type: ExternalName, externalName: db.example.com, clusterIP: 10.96.0.11, ipFamilies: [IPv4], ipFamilyPolicy: SingleStack}",
                expect: Invalid(
                    "spec.clusterIP: Forbidden: may not be set for ExternalName services",
                ),
            },
            Row {
                what: "update, clusterIP and clusterIPs omitted: kept",
                old: Some(WITH_IPS),
                new: "spec: {type: NodePort, ipFamilies: [IPv4], ipFamilyPolicy: SingleStack, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Valid(
                    "spec: {type: NodePort, clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ipFamilies: [IPv4], ipFamilyPolicy: SingleStack, ports: [{name: http, port: 80, nodePort: 30080}]}",
                ),
            },
            Row {
                what: "update, clusterIP changed and clusterIPs omitted: clusterIPs follows",
                old: Some(WITH_IPS),
                new: "spec: {type: ClusterIP, clusterIP: 10.96.0.11, ports: [{name: http, port: 80}]}",
                expect: Valid(
                    "spec: {type: ClusterIP, clusterIP: 10.96.0.11, clusterIPs: [10.96.0.11], ports: [{name: http, port: 80}]}",
                ),
            },
            Row {
                what: "create, clusterIP omitted: none",
                old: None,
                new: CLUSTER_IP,
                expect: Valid(CLUSTER_IP),
            },
            // allocateLoadBalancerNodePorts, loadBalancerClass
            Row {
                what: "create: LoadBalancer fields on a NodePort Service",
                old: None,
                new: "spec: {type: NodePort, allocateLoadBalancerNodePorts: true, loadBalancerClass: example.com/lb, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Invalid(
                    "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'; spec.loadBalancerClass: Forbidden: may only be used when `type` is 'LoadBalancer'",
                ),
            },
            Row {
                what: "update LoadBalancer -> NodePort, LoadBalancer fields left: cleared",
                old: Some(LB_FIELDS),
                new: "spec: {type: NodePort, allocateLoadBalancerNodePorts: true, loadBalancerClass: example.com/lb, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Valid(NODE_PORT),
            },
            Row {
                what: "update LoadBalancer -> NodePort with a changed loadBalancerClass: rejected",
                old: Some(LB_FIELDS),
                new: "spec: {type: NodePort, allocateLoadBalancerNodePorts: true, loadBalancerClass: example.com/other, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Invalid(
                    "spec.loadBalancerClass: Forbidden: may only be used when `type` is 'LoadBalancer'",
                ),
            },
            Row {
                what: "update LoadBalancer -> NodePort with a changed allocateLoadBalancerNodePorts: rejected",
                old: Some(LB_FIELDS),
                new: "spec: {type: NodePort, allocateLoadBalancerNodePorts: false, loadBalancerClass: example.com/lb, ports: [{name: http, port: 80, nodePort: 30080}]}",
                expect: Invalid(
                    "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'",
                ),
            },
            // externalTrafficPolicy
            Row {
                what: "create: externalTrafficPolicy on a ClusterIP Service",
                old: None,
                new: "spec: {type: ClusterIP, externalTrafficPolicy: Local, ports: [{name: http, port: 80}]}",
                expect: Invalid(
                    "spec.externalTrafficPolicy: Invalid value: may only be set for externally-accessible services",
                ),
            },
            Row {
                what: "update NodePort -> ClusterIP, externalTrafficPolicy left: cleared",
                old: Some(
                    "spec: {type: NodePort, externalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}",
                ),
                new: "spec: {type: ClusterIP, externalTrafficPolicy: Local, ports: [{name: http, port: 80}]}",
                expect: Valid(CLUSTER_IP),
            },
            Row {
                what: "update NodePort -> ClusterIP with a changed externalTrafficPolicy: rejected",
                old: Some(
                    "spec: {type: NodePort, externalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}",
                ),
                new: "spec: {type: ClusterIP, externalTrafficPolicy: Cluster, ports: [{name: http, port: 80}]}",
                expect: Invalid("spec.externalTrafficPolicy: Invalid value: may only be set"),
            },
            Row {
                what: "update NodePort -> ClusterIP with external IPs: still externally accessible, kept",
                old: Some(
                    "spec: {type: NodePort, externalTrafficPolicy: Local, externalIPs: [192.0.2.1], ports: [{name: http, port: 80, nodePort: 30080}]}",
                ),
                new: "spec: {type: ClusterIP, externalTrafficPolicy: Local, externalIPs: [192.0.2.1], ports: [{name: http, port: 80}]}",
                expect: Valid(
                    "spec: {type: ClusterIP, externalTrafficPolicy: Local, externalIPs: [192.0.2.1], ports: [{name: http, port: 80}]}",
                ),
            },
            // status.loadBalancer
            Row {
                what: "update LoadBalancer -> NodePort: status.loadBalancer cleared",
                old: Some(
                    "spec: {type: LoadBalancer, ports: [{name: http, port: 80, nodePort: 30080}]}, status: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}",
                ),
                new: "spec: {type: NodePort, ports: [{name: http, port: 80, nodePort: 30080}]}, status: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}",
                expect: Valid(
                    "spec: {type: NodePort, ports: [{name: http, port: 80, nodePort: 30080}]}, status: {}",
                ),
            },
            Row {
                what: "update LoadBalancer -> LoadBalancer: status.loadBalancer kept",
                old: Some(
                    "spec: {type: LoadBalancer, ports: [{name: http, port: 80, nodePort: 30080}]}, status: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}",
                ),
                new: "spec: {type: LoadBalancer, ports: [{name: http, port: 80, nodePort: 30080}]}, status: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}",
                expect: Valid(
                    "spec: {type: LoadBalancer, ports: [{name: http, port: 80, nodePort: 30080}]}, status: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}",
                ),
            },
            Row {
                what: "create NodePort with a status: kept as written",
                old: None,
                new: "spec: {type: NodePort, ports: [{name: http, port: 80, nodePort: 30080}]}, status: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}",
                expect: Valid(
                    "spec: {type: NodePort, ports: [{name: http, port: 80, nodePort: 30080}]}, status: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}",
                ),
            },
        ]
    }

    #[test]
    fn create_and_update_of_every_type_dependent_field() {
        let mut failures = Vec::new();
        for row in rows() {
            let got = outcome(row.old, row.new);
            let ok = match (&row.expect, &got) {
                (Expect::Valid(want), Ok(service)) => *service == self::service(want),
                (Expect::Invalid(want), Err(message)) => message.contains(want),
                _ => false,
            };
            if !ok {
                let want = match row.expect {
                    Expect::Valid(want) => format!("accepted as {want}"),
                    Expect::Invalid(want) => format!("rejected with {want:?}"),
                };
                let got = match got {
                    Ok(service) => format!(
                        "accepted as {}",
                        serde_json::to_string(&service).unwrap_or_default()
                    ),
                    Err(message) => format!("rejected: {message}"),
                };
                failures.push(format!("{}:\n  want {want}\n  got  {got}", row.what));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn an_unchanged_resubmission_is_unchanged() {
        // Every valid served version, resubmitted as served, stays as it is.
        for old in [LB_LOCAL, NODE_PORT, CLUSTER_IP, WITH_IPS, LB_FIELDS] {
            let served = service(old);
            let mut new = served.clone();
            prepare_update(&mut new, &served);
            assert_eq!(new, served, "{old}");
        }
    }
}
