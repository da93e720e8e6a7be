//! The nodePort allocator: keeps nodePorts unique across Services and fills
//! in omitted ones, remembering both from one change to the next.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};

use super::invalid::{FieldError, Invalid, format_range};
use super::service::{Protocol, ServiceType};
use crate::store::ObjectKey;

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
    pub versions: Vec<Arc<Service>>,
}

/// What became of a [`Candidate`].
#[derive(Clone, Debug, Default)]
pub struct Assignment {
    /// Index of the version that is served, and that version with every
    /// nodePort (and an allocated `healthCheckNodePort`) filled in.
    pub accepted: Option<(usize, Arc<Service>)>,
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

impl Plan {
    /// Whether applying the plan writes anything into the Service.
    fn fills_in(&self) -> bool {
        !self.shared.is_empty() || self.wanted.iter().any(|w| w.port.is_some())
    }
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
///
/// [`Self::assign_changed`] places only the Services that changed: the
/// ports of every other Service stay theirs, looked up in the index of
/// allocated ports, so a change costs what the changed Services cost.
/// [`Self::assign`] places a whole set.
#[derive(Clone, Debug)]
pub struct NodePortAllocator {
    range: RangeInclusive<u16>,
    /// Every allocated nodePort and who holds it.
    holders: BTreeMap<u16, PortHolder>,
    /// The ports each Service holds (`holders` by Service).
    held: BTreeMap<ObjectKey, BTreeSet<u16>>,
    /// The ports allocated to each Service's slots (ports without a
    /// nodePort of their own, the health check).
    allocations: BTreeMap<ObjectKey, BTreeMap<Slot, u16>>,
}

/// Who may not be given which port in one round.
struct Claims<'a> {
    /// Claimed this round.
    claimed: BTreeMap<u16, PortHolder>,
    /// Ports that candidates held before, kept for them.
    reserved: &'a BTreeMap<u16, ObjectKey>,
    /// The Services being placed (the ports of every other one are fixed).
    candidates: &'a BTreeSet<&'a ObjectKey>,
    /// Every port below this one is claimed, fixed or reserved.
    cursor: u32,
}

impl NodePortAllocator {
    #[must_use]
    pub fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            range,
            holders: BTreeMap::new(),
            held: BTreeMap::new(),
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
        let present: BTreeSet<&ObjectKey> = candidates.iter().map(|c| &c.key).collect();
        let gone: Vec<ObjectKey> = self
            .held
            .keys()
            .chain(self.allocations.keys())
            .filter(|key| !present.contains(key))
            .cloned()
            .collect();
        for key in gone {
            self.release(&key);
        }
        self.assign_changed(candidates)
    }

    /// Forgets Service `key`: its ports are free.
    pub fn release(&mut self, key: &ObjectKey) {
        for port in self.held.remove(key).into_iter().flatten() {
            self.holders.remove(&port);
        }
        self.allocations.remove(key);
    }

    /// Places the Services in `candidates` (in order of precedence) while
    /// every other Service keeps what it holds. Returns one [`Assignment`]
    /// per candidate, in the same order, and remembers the outcome.
    pub fn assign_changed(&mut self, candidates: &[Candidate]) -> Vec<Assignment> {
        // Ports held last round stay with their holder while it is still
        // there. A holder that ends up not using a reserved port (it changed
        // or was refused) releases it, and the round is run again: the
        // reservations only shrink, so this ends.
        let keys: BTreeSet<&ObjectKey> = candidates.iter().map(|c| &c.key).collect();
        let mut reserved: BTreeMap<u16, ObjectKey> = candidates
            .iter()
            .flat_map(|c| {
                self.held
                    .get(&c.key)
                    .into_iter()
                    .flatten()
                    .map(|&port| (port, c.key.clone()))
            })
            .collect();
        loop {
            let round = self.round(candidates, &reserved, &keys);
            let before = reserved.len();
            reserved
                .retain(|port, owner| round.claimed.get(port).is_some_and(|h| h.service == *owner));
            if reserved.len() == before {
                for candidate in candidates {
                    self.release(&candidate.key);
                }
                for (port, holder) in round.claimed {
                    self.held
                        .entry(holder.service.clone())
                        .or_default()
                        .insert(port);
                    self.holders.insert(port, holder);
                }
                for ((key, slot), port) in round.allocations {
                    self.allocations.entry(key).or_default().insert(slot, port);
                }
                return round.assignments;
            }
        }
    }

    /// One attempt at placing `candidates`, in order, with `reserved` ports
    /// kept for their previous holders.
    fn round(
        &self,
        candidates: &[Candidate],
        reserved: &BTreeMap<u16, ObjectKey>,
        keys: &BTreeSet<&ObjectKey>,
    ) -> Round {
        let mut assignments = vec![Assignment::default(); candidates.len()];
        let mut plans: Vec<Option<Plan>> = (0..candidates.len()).map(|_| None).collect();
        let mut claims = Claims {
            claimed: BTreeMap::new(),
            reserved,
            candidates: keys,
            cursor: u32::from(*self.range.start()),
        };

        // Explicit ports and the allocations made before.
        for (index, candidate) in candidates.iter().enumerate() {
            for (version, service) in candidate.versions.iter().enumerate() {
                let mut plan = self.plan(&candidate.key, service);
                let conflicts: Vec<FieldError> = plan
                    .fixed
                    .iter()
                    .filter_map(|fixed| {
                        let holder = self.taken(fixed.port, &candidate.key, &claims)?;
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
                    claims
                        .claimed
                        .insert(fixed.port, holder(&candidate.key, &fixed.held_by));
                }
                for wanted in &mut plan.wanted {
                    if let Some(port) = wanted.previous
                        && !claims.claimed.contains_key(&port)
                        && self.taken(port, &candidate.key, &claims).is_none()
                    {
                        claims
                            .claimed
                            .insert(port, holder(&candidate.key, &wanted.held_by));
                        wanted.port = Some(port);
                    }
                }
                plans[index] = Some(plan);
                assignments[index].accepted = Some((version, Arc::clone(service)));
                break;
            }
        }

        let allocations = self.allocate_new(candidates, &mut plans, &mut claims, &mut assignments);
        Round {
            assignments,
            claimed: claims.claimed,
            allocations,
        }
    }

    /// Allocates the lowest free port to every port still without one, in
    /// the order given; refuses a Service when the range is exhausted.
    fn allocate_new(
        &self,
        candidates: &[Candidate],
        plans: &mut [Option<Plan>],
        claims: &mut Claims<'_>,
        assignments: &mut [Assignment],
    ) -> BTreeMap<(ObjectKey, Slot), u16> {
        let mut allocations = BTreeMap::new();
        for (index, candidate) in candidates.iter().enumerate() {
            let Some(plan) = plans[index].as_mut() else {
                continue;
            };
            let mut exhausted = false;
            for wanted in plan.wanted.iter_mut().filter(|w| w.port.is_none()) {
                let Some(port) = self.lowest_free(&candidate.key, claims) else {
                    exhausted = true;
                    break;
                };
                claims
                    .claimed
                    .insert(port, holder(&candidate.key, &wanted.held_by));
                wanted.port = Some(port);
            }
            let assignment = &mut assignments[index];
            if exhausted {
                claims.claimed.retain(|_, h| h.service != candidate.key);
                claims.cursor = u32::from(*self.range.start());
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
                if plan.fills_in() {
                    apply(plan, Arc::make_mut(service));
                }
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

    /// The lowest port of the range `key` may be given, if any.
    fn lowest_free(&self, key: &ObjectKey, claims: &mut Claims<'_>) -> Option<u16> {
        // Ports below the cursor are unavailable to everyone but, for a
        // reserved one, its owner: those are looked up apart.
        let own = claims
            .reserved
            .iter()
            .filter(|&(port, owner)| {
                owner == key
                    && u32::from(*port) < claims.cursor
                    && !claims.claimed.contains_key(port)
            })
            .map(|(&port, _)| port)
            .next();
        if own.is_some() {
            return own;
        }
        let end = u32::from(*self.range.end());
        while claims.cursor <= end {
            let port = u16::try_from(claims.cursor).ok()?;
            if !claims.claimed.contains_key(&port) && self.taken(port, key, claims).is_none() {
                return Some(port);
            }
            // Claimed or fixed for everyone; reserved for another owner
            // (`key` is not it: its own reserved ports were looked at).
            claims.cursor += 1;
        }
        None
    }

    /// Who keeps `key` from using `port` this round, if anyone.
    fn taken(&self, port: u16, key: &ObjectKey, claims: &Claims<'_>) -> Option<PortHolder> {
        if let Some(holder) = claims.claimed.get(&port).filter(|h| h.service != *key) {
            return Some(holder.clone());
        }
        let held = self.holders.get(&port);
        // A Service that is not placed this round keeps its ports.
        if let Some(holder) = held.filter(|h| !claims.candidates.contains(&h.service)) {
            return Some(holder.clone());
        }
        if claims.reserved.get(&port).is_some_and(|owner| owner != key) {
            return held.cloned();
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
                .find_map(|slot| self.allocations.get(key)?.get(slot).copied())
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
    use super::super::names::DEFAULT_NAMESPACE;
    use super::super::service::normalize_service;
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
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
            namespace: DEFAULT_NAMESPACE.into(),
            name: name.into(),
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

    fn candidate(service: Service) -> Candidate {
        let name = service.metadata.name.clone().unwrap_or_default();
        Candidate {
            key: key(&name),
            versions: vec![Arc::new(service)],
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
            allocator.holder(31000).map(|h| h.service.name.as_ref()),
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
                versions: vec![Arc::new(b_new), Arc::new(b_old)],
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
