//! The datapath's per-service and per-backend counters (`service_stats`,
//! one entry per service and backend) as an operator reads them: [`CounterNames`] says which
//! Service port and which endpoint each id stands for (the reconciler keeps
//! it as it gives out and frees ids), and [`read`] sums the counters of a
//! Service port's frontends (NodePort, ClusterIP, external addresses) under
//! its namespace, name, port name and protocol.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex, PoisonError};

use nodeport_common::{BackendStats, ServiceStats};

use crate::maps::MapError;
use crate::maps::bpf::BpfMaps;

/// The Service port a service id counts for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceLabel {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The port's name; empty for a single unnamed port.
    pub port: String,
    /// `TCP`, `UDP`, …
    pub protocol: String,
}

#[derive(Debug, Default)]
struct Names {
    services: BTreeMap<u32, ServiceLabel>,
    backends: BTreeMap<u32, SocketAddrV4>,
}

/// Names of the ids that have counters; shared between the reconciler,
/// which writes them, and the metrics, which read them at scrape time.
#[derive(Clone, Debug, Default)]
pub struct CounterNames(Arc<Mutex<Names>>);

impl CounterNames {
    fn with<T>(&self, f: impl FnOnce(&mut Names) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Service id `id` counts for `label` (`None`: it names nothing now).
    pub fn set_service(&self, id: u32, label: Option<ServiceLabel>) {
        self.with(|n| match label {
            Some(l) => n.services.insert(id, l),
            None => n.services.remove(&id),
        });
    }

    /// Backend id `id` is the endpoint `addr` (`None`: it names nothing now).
    pub fn set_backend(&self, id: u32, addr: Option<SocketAddrV4>) {
        self.with(|n| match addr {
            Some(a) => n.backends.insert(id, a),
            None => n.backends.remove(&id),
        });
    }

    /// Keeps only the ids `keep` accepts (after a full sync).
    pub fn retain(&self, keep_service: impl Fn(u32) -> bool, keep_backend: impl Fn(u32) -> bool) {
        self.with(|n| {
            n.services.retain(|id, _| keep_service(*id));
            n.backends.retain(|id, _| keep_backend(*id));
        });
    }
}

/// The counters of every Service port and endpoint with a name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub services: Vec<(ServiceLabel, ServiceStats)>,
    pub backends: Vec<(SocketAddrV4, BackendStats)>,
}

/// Sums per Service port and per endpoint what `services` and `backends`
/// (by id) hold; ids without a name (freed, or not yet named) are left out.
#[must_use]
pub fn label(
    names: &CounterNames,
    services: &BTreeMap<u32, ServiceStats>,
    backends: &BTreeMap<u32, BackendStats>,
) -> Counters {
    names.with(|n| {
        let mut by_port: BTreeMap<&ServiceLabel, ServiceStats> = BTreeMap::new();
        for (id, s) in services {
            if let Some(l) = n.services.get(id) {
                let sum = by_port.entry(l).or_default();
                *sum = sum.plus(s);
            }
        }
        let mut by_addr: BTreeMap<SocketAddrV4, BackendStats> = BTreeMap::new();
        for (id, s) in backends {
            if let Some(a) = n.backends.get(id) {
                let sum = by_addr.entry(*a).or_default();
                *sum = sum.plus(s);
            }
        }
        Counters {
            services: by_port.into_iter().map(|(l, s)| (l.clone(), s)).collect(),
            backends: by_addr.into_iter().collect(),
        }
    })
}

/// Reads and names the counters from the pinned maps.
pub fn read(maps: &BpfMaps, names: &CounterNames) -> Result<Counters, MapError> {
    let (services, backends) = maps.counter_sums()?;
    Ok(label(names, &services, &backends))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(port: &str) -> ServiceLabel {
        ServiceLabel {
            namespace: "default".into(),
            name: "web".into(),
            port: port.into(),
            protocol: "TCP".into(),
        }
    }

    fn packets(n: u64) -> ServiceStats {
        ServiceStats {
            packets: n,
            bytes: n * 100,
            ..ServiceStats::default()
        }
    }

    #[test]
    fn frontends_of_one_port_are_summed_and_unnamed_ids_left_out() {
        let names = CounterNames::default();
        names.set_service(1, Some(web("http")));
        names.set_service(2, Some(web("http")));
        names.set_service(3, Some(web("https")));
        names.set_service(4, Some(web("gone")));
        names.set_service(4, None);
        let be: SocketAddrV4 = "10.244.1.10:8080".parse().unwrap();
        names.set_backend(7, Some(be));
        let services = BTreeMap::from([
            (1, packets(2)),
            (2, packets(3)),
            (3, packets(1)),
            (4, packets(9)),
        ]);
        let backends = BTreeMap::from([
            (
                7,
                BackendStats {
                    packets: 4,
                    bytes: 40,
                    new_flows: 1,
                },
            ),
            (
                8,
                BackendStats {
                    packets: 1,
                    bytes: 1,
                    new_flows: 1,
                },
            ),
        ]);
        let c = label(&names, &services, &backends);
        assert_eq!(
            c.services,
            vec![(web("http"), packets(5)), (web("https"), packets(1))]
        );
        assert_eq!(
            c.backends,
            vec![(
                be,
                BackendStats {
                    packets: 4,
                    bytes: 40,
                    new_flows: 1
                }
            )]
        );

        names.retain(|id| id == 3, |_| false);
        let c = label(&names, &services, &backends);
        assert_eq!(c.services, vec![(web("https"), packets(1))]);
        assert!(c.backends.is_empty());
    }
}
