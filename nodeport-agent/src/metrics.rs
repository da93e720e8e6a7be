//! Prometheus metrics of the agent, in the text exposition format, modelled
//! on kube-proxy's (`sync_proxy_rules_duration_seconds`,
//! `network_programming_duration_seconds`, ...), under the `nodeport_`
//! prefix. The run loop records into [`Metrics`]; the metrics endpoint
//! renders it, reading the datapath's per-CPU counters at scrape time.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `nodeport_sync_duration_seconds` | histogram | one sync: desired state computed and differences written |
//! | `nodeport_sync_last_timestamp_seconds` | gauge | Unix time of the last successful sync |
//! | `nodeport_syncs_total{result}` | counter | syncs by `success` / `error` |
//! | `nodeport_network_programming_duration_seconds` | histogram | EndpointSlice `endpoints.kubernetes.io/last-change-trigger-time` → maps written |
//! | `nodeport_services` | gauge | Services with at least one frontend in the maps |
//! | `nodeport_frontends` | gauge | frontends (NodePort and ClusterIP) in the maps |
//! | `nodeport_endpoints` | gauge | backends (pod address and port) in the maps |
//! | `nodeport_map_write_errors_total{map,op}` | counter | failed map writes |
//! | `nodeport_source_errors_total{resource}` | counter | failed list/watch requests of the Kubernetes source |
//! | `nodeport_health_check_servers` | gauge | healthCheckNodePort servers listening |
//! | `nodeport_datapath_packets_total{reason}` | counter | the datapath's `stats` map, summed over CPUs |
//! | `nodeport_xdp_transmitted_total{device}` | counter | frames the datapath sent back out that the kernel transmitted (native mode) |
//! | `nodeport_xdp_transmit_failures_total{device}` | counter | frames the datapath sent back out that the kernel dropped |
//! | `nodeport_xdp_mode{device,mode}` | gauge | 1 for the XDP mode each device is attached in |
//! | `nodeport_failing_devices` | gauge | devices whose transmits keep failing (`/healthz` is 503 meanwhile) |
//! | `nodeport_snat_pool_ports` | gauge | SNAT ports per node address, backend and protocol |
//! | `nodeport_snat_ports_in_use{backend,node_addr}` | gauge | SNAT ports held by flows to each remote backend |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Reads the datapath counters (name, packets) at scrape time.
pub type StatsReader = Box<dyn Fn() -> Result<Vec<(&'static str, u64)>, String> + Send + Sync>;
/// Reads per-device transmits and SNAT pool use at scrape time.
pub type FiguresReader =
    Box<dyn Fn() -> Result<crate::figures::Figures, String> + Send + Sync>;

/// Upper bounds of the sync duration buckets (seconds): 1 ms doubling to ~16 s,
/// as kube-proxy's `sync_proxy_rules_duration_seconds`.
const SYNC_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];
/// Upper bounds of the network programming latency buckets (seconds).
const PROGRAMMING_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| format!("{b}"));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug)]
struct Inner {
    sync_duration: Histogram,
    network_programming: Histogram,
    last_sync: Option<SystemTime>,
    syncs_ok: u64,
    syncs_failed: u64,
    services: usize,
    frontends: usize,
    endpoints: usize,
    health_check_servers: usize,
    failing_devices: usize,
    map_write_errors: BTreeMap<(&'static str, &'static str), u64>,
    source_errors: BTreeMap<&'static str, u64>,
}

/// One metric family with labelled samples: `# HELP`, `# TYPE`, then
/// `name{labels} value` per sample.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn render_figures(out: &mut String, f: &crate::figures::Figures) {
    let device = |d: &crate::figures::DeviceFigures| format!("device=\"{}\"", d.device);
    family(
        out,
        "nodeport_xdp_transmitted_total",
        "counter",
        "Frames the datapath sent back out that the kernel transmitted (native XDP).",
        f.devices.iter().map(|d| (device(d), d.tx_sent)),
    );
    family(
        out,
        "nodeport_xdp_transmit_failures_total",
        "counter",
        "Frames the datapath sent back out that the kernel dropped.",
        f.devices.iter().map(|d| (device(d), d.tx_failed)),
    );
    family(
        out,
        "nodeport_xdp_mode",
        "gauge",
        "The XDP mode each device is attached in.",
        f.devices
            .iter()
            .map(|d| (format!("{},mode=\"{}\"", device(d), d.xdp_mode), 1)),
    );
    gauge(
        out,
        "nodeport_snat_pool_ports",
        "SNAT ports per node address, backend and protocol.",
        f64::from(f.snat.pool_size),
    );
    family(
        out,
        "nodeport_snat_ports_in_use",
        "gauge",
        "SNAT ports held by flows to each remote backend.",
        f.snat.backends.iter().map(|b| {
            (
                format!("backend=\"{}\",node_addr=\"{}\"", b.backend, b.node_addr),
                b.ports_in_use,
            )
        }),
    );
}

/// The agent's metrics; shared between the run loop and the endpoint.
pub struct Metrics {
    inner: Mutex<Inner>,
    stats: Mutex<Option<StatsReader>>,
    figures: Mutex<Option<FiguresReader>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What the maps hold after a successful sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub services: usize,
    pub frontends: usize,
    pub endpoints: usize,
}

impl Metrics {
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                sync_duration: Histogram::new(&SYNC_BUCKETS),
                network_programming: Histogram::new(&PROGRAMMING_BUCKETS),
                last_sync: None,
                syncs_ok: 0,
                syncs_failed: 0,
                services: 0,
                frontends: 0,
                endpoints: 0,
                health_check_servers: 0,
                failing_devices: 0,
                map_write_errors: BTreeMap::new(),
                source_errors: BTreeMap::new(),
            }),
            stats: Mutex::new(None),
            figures: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the datapath counters come from.
    pub fn set_stats_reader(&self, reader: StatsReader) {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reader);
    }

    /// A sync that wrote the maps up to date in `took`.
    pub fn sync_succeeded(&self, took: Duration, served: Served) {
        let mut m = self.lock();
        m.sync_duration.observe(took.as_secs_f64());
        m.syncs_ok += 1;
        m.last_sync = Some(SystemTime::now());
        m.services = served.services;
        m.frontends = served.frontends;
        m.endpoints = served.endpoints;
    }

    /// A sync that stopped at a failed map write.
    pub fn sync_failed(&self, took: Duration, map: &'static str, op: &'static str) {
        let mut m = self.lock();
        m.sync_duration.observe(took.as_secs_f64());
        m.syncs_failed += 1;
        *m.map_write_errors.entry((map, op)).or_default() += 1;
    }

    /// The time from an endpoint change (its trigger time) to the maps.
    pub fn network_programmed(&self, latency: Duration) {
        self.lock()
            .network_programming
            .observe(latency.as_secs_f64());
    }

    /// A failed list or watch of `resource`.
    pub fn source_error(&self, resource: &'static str) {
        *self.lock().source_errors.entry(resource).or_default() += 1;
    }

    pub fn set_health_check_servers(&self, n: usize) {
        self.lock().health_check_servers = n;
    }

    pub fn set_failing_devices(&self, n: usize) {
        self.lock().failing_devices = n;
    }

    /// Where per-device transmits and SNAT pool use come from.
    pub fn set_figures_reader(&self, reader: FiguresReader) {
        *self
            .figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reader);
    }

    /// The text exposition format (version 0.0.4).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        {
            let m = self.lock();
            m.sync_duration.render(
                &mut out,
                "nodeport_sync_duration_seconds",
                "Duration of one sync: desired state computed and its differences written to the maps.",
            );
            gauge(
                &mut out,
                "nodeport_sync_last_timestamp_seconds",
                "Unix time of the last successful sync.",
                m.last_sync
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64()),
            );
            let _ = writeln!(
                out,
                "# HELP nodeport_syncs_total Syncs by result.\n# TYPE nodeport_syncs_total counter\n\
                 nodeport_syncs_total{{result=\"success\"}} {}\nnodeport_syncs_total{{result=\"error\"}} {}",
                m.syncs_ok, m.syncs_failed
            );
            m.network_programming.render(
                &mut out,
                "nodeport_network_programming_duration_seconds",
                "From an EndpointSlice's last-change-trigger-time to the maps holding the change.",
            );
            #[allow(
                clippy::cast_precision_loss,
                reason = "object counts are far below 2^52"
            )]
            for (name, help, v) in [
                (
                    "nodeport_services",
                    "Services with frontends in the datapath.",
                    m.services,
                ),
                (
                    "nodeport_frontends",
                    "Frontends (NodePort and ClusterIP) in the datapath.",
                    m.frontends,
                ),
                (
                    "nodeport_endpoints",
                    "Backends (pod address and port) in the datapath.",
                    m.endpoints,
                ),
                (
                    "nodeport_health_check_servers",
                    "healthCheckNodePort servers listening.",
                    m.health_check_servers,
                ),
                (
                    "nodeport_failing_devices",
                    "Devices whose transmits keep failing (/healthz is 503 meanwhile).",
                    m.failing_devices,
                ),
            ] {
                gauge(&mut out, name, help, v as f64);
            }
            let _ = writeln!(
                out,
                "# HELP nodeport_map_write_errors_total Failed map writes.\n# TYPE nodeport_map_write_errors_total counter"
            );
            for ((map, op), n) in &m.map_write_errors {
                let _ = writeln!(
                    out,
                    "nodeport_map_write_errors_total{{map=\"{map}\",op=\"{op}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP nodeport_source_errors_total Failed list or watch requests of the Kubernetes source.\n# TYPE nodeport_source_errors_total counter"
            );
            for (resource, n) in &m.source_errors {
                let _ = writeln!(
                    out,
                    "nodeport_source_errors_total{{resource=\"{resource}\"}} {n}"
                );
            }
        }
        self.render_datapath(&mut out);
        out
    }

    /// The datapath's counters and figures, read from its maps now.
    fn render_datapath(&self, out: &mut String) {
        let stats = self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP nodeport_datapath_packets_total Packets by datapath verdict reason, summed over CPUs.\n# TYPE nodeport_datapath_packets_total counter"
        );
        match stats.as_ref().map(|read| read()) {
            Some(Ok(counters)) => {
                for (reason, n) in counters {
                    let _ = writeln!(
                        out,
                        "nodeport_datapath_packets_total{{reason=\"{reason}\"}} {n}"
                    );
                }
            }
            Some(Err(e)) => {
                let _ = writeln!(out, "# reading the stats map failed: {e}");
            }
            None => {}
        }
        drop(stats);
        let figures = self
            .figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match figures.as_ref().map(|read| read()) {
            Some(Ok(f)) => render_figures(out, &f),
            Some(Err(e)) => {
                let _ = writeln!(out, "# reading the device and SNAT figures failed: {e}");
            }
            None => {}
        }
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exposition_format() {
        let m = Metrics::new();
        m.sync_succeeded(
            Duration::from_millis(3),
            Served {
                services: 2,
                frontends: 4,
                endpoints: 3,
            },
        );
        m.sync_failed(Duration::from_millis(20), "frontends", "put");
        m.network_programmed(Duration::from_millis(700));
        m.source_error("services");
        m.set_stats_reader(Box::new(|| {
            Ok(vec![("pass_not_ipv4", 7), ("tx_remote", 2)])
        }));
        let text = m.render();
        for line in [
            "# TYPE nodeport_sync_duration_seconds histogram",
            "nodeport_sync_duration_seconds_bucket{le=\"0.002\"} 0",
            "nodeport_sync_duration_seconds_bucket{le=\"0.004\"} 1",
            "nodeport_sync_duration_seconds_bucket{le=\"0.032\"} 2",
            "nodeport_sync_duration_seconds_bucket{le=\"+Inf\"} 2",
            "nodeport_sync_duration_seconds_count 2",
            "nodeport_syncs_total{result=\"success\"} 1",
            "nodeport_syncs_total{result=\"error\"} 1",
            "nodeport_network_programming_duration_seconds_bucket{le=\"0.5\"} 0",
            "nodeport_network_programming_duration_seconds_bucket{le=\"1\"} 1",
            "nodeport_network_programming_duration_seconds_count 1",
            "nodeport_services 2",
            "nodeport_frontends 4",
            "nodeport_endpoints 3",
            "nodeport_map_write_errors_total{map=\"frontends\",op=\"put\"} 1",
            "nodeport_source_errors_total{resource=\"services\"} 1",
            "nodeport_datapath_packets_total{reason=\"pass_not_ipv4\"} 7",
            "nodeport_datapath_packets_total{reason=\"tx_remote\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
