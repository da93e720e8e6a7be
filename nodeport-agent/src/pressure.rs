//! Map pressure: a warning (and `nodeport_map_pressure_warnings_total`)
//! when a map or a backend's SNAT pool is more than [`WARN_RATIO`] full,
//! once each time it crosses, before new flows start to push out live ones
//! (an LRU map evicts its oldest flows when full) or to be dropped
//! (`drop_snat_exhausted`).

use std::collections::BTreeSet;

use crate::figures::Figures;

/// Fill above which a warning is logged.
pub const WARN_RATIO: f64 = 0.9;

/// The name under which SNAT pool pressure is counted.
pub const SNAT_POOL: &str = "snat_pool";

/// What is full now, to warn once per crossing.
#[derive(Debug, Default)]
pub struct Watch {
    /// Maps (by name) and SNAT pools (by `backend@node address`) above
    /// the ratio at the last check.
    high: BTreeSet<String>,
}

/// One crossing above [`WARN_RATIO`].
#[derive(Clone, Debug, PartialEq)]
pub struct Crossing {
    /// A map's name or [`SNAT_POOL`].
    pub map: &'static str,
    /// What filled: the map, or the backend and node address of the pool.
    pub what: String,
    pub ratio: f64,
}

impl Watch {
    /// Logs a warning for every map and SNAT pool that crossed above
    /// [`WARN_RATIO`] since the last check, and returns them.
    pub fn check(&mut self, figures: &Figures) -> Vec<Crossing> {
        let mut now = BTreeSet::new();
        let mut crossed = Vec::new();
        for m in &figures.maps {
            let ratio = m.ratio();
            if ratio > WARN_RATIO {
                now.insert(m.map.to_string());
                if !self.high.contains(m.map) {
                    tracing::warn!(
                        map = m.map,
                        entries = m.entries,
                        max_entries = m.max_entries,
                        "map is {:.0}% full; {}",
                        ratio * 100.0,
                        advice(m.map),
                    );
                    crossed.push(Crossing {
                        map: m.map,
                        what: m.map.to_string(),
                        ratio,
                    });
                }
            }
        }
        for b in &figures.snat.backends {
            let ratio = figures.snat.ratio(b);
            if ratio > WARN_RATIO {
                let what = format!("{}@{}", b.backend, b.node_addr);
                if !self.high.contains(&what) {
                    tracing::warn!(
                        backend = %b.backend,
                        node_addr = %b.node_addr,
                        ports_in_use = b.ports_in_use,
                        pool_ports = figures.snat.pool_size,
                        "SNAT pool towards the backend is {:.0}% full; new flows to it are dropped when it is full \
                         (more node addresses or a wider net.ipv4.ip_local_port_range give it more ports)",
                        ratio * 100.0,
                    );
                    crossed.push(Crossing {
                        map: SNAT_POOL,
                        what: what.clone(),
                        ratio,
                    });
                }
                now.insert(what);
            }
        }
        self.high = now;
        crossed
    }
}

/// What an operator can do about a full map.
fn advice(map: &str) -> String {
    match map {
        nodeport_common::names::CONNTRACK | nodeport_common::names::REV_NAT => format!(
            "when full, new flows push out the oldest live ones; raise it with --map-size {map}=N"
        ),
        other => format!("raise it with --map-size {other}=N where it can be sized"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::{SnatBackend, SnatUsage};
    use crate::maps::fill::MapFill;
    use nodeport_common::names;

    fn figures(conntrack: u64, snat_in_use: u64) -> Figures {
        Figures {
            devices: Vec::new(),
            snat: SnatUsage {
                pool_size: 100,
                backends: vec![SnatBackend {
                    backend: "10.0.2.5:8080/tcp".into(),
                    node_addr: "10.0.0.1".into(),
                    ports_in_use: snat_in_use,
                }],
            },
            maps: vec![
                MapFill {
                    map: names::CONNTRACK,
                    entries: conntrack,
                    max_entries: 1000,
                },
                MapFill {
                    map: names::FRONTENDS,
                    entries: 3,
                    max_entries: 1000,
                },
            ],
        }
    }

    #[test]
    fn a_map_or_pool_is_reported_once_per_crossing() {
        let mut w = Watch::default();
        assert_eq!(
            w.check(&figures(900, 90)),
            Vec::new(),
            "90% is not above the ratio"
        );
        let crossed = w.check(&figures(901, 95));
        assert_eq!(
            crossed
                .iter()
                .map(|c| (c.map, c.what.as_str()))
                .collect::<Vec<_>>(),
            [
                (names::CONNTRACK, names::CONNTRACK),
                (SNAT_POOL, "10.0.2.5:8080/tcp@10.0.0.1")
            ]
        );
        assert!((crossed[0].ratio - 0.901).abs() < 1e-9);
        assert_eq!(
            w.check(&figures(1000, 100)),
            Vec::new(),
            "still full: reported already"
        );
        assert_eq!(w.check(&figures(500, 100)).len(), 0);
        let again = w.check(&figures(950, 10));
        assert_eq!(again.len(), 1, "conntrack fell below and crossed again");
        assert_eq!(again[0].map, names::CONNTRACK);
    }
}
