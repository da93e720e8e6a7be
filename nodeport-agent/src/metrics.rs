//! Prometheus metrics of the agent, through `prometheus-client` and served in
//! the Prometheus text format 0.0.4 (what kube-proxy serves by default). The
//! project's own metrics are under the `nodeport_` prefix; where kube-proxy
//! has a metric for the same thing, it is exported under kube-proxy's name
//! too, with kube-proxy's buckets, so dashboards and alerts written for
//! kube-proxy keep working. The run loop records into [`Metrics`]; the
//! metrics endpoint encodes its registry, reading the datapath's per-CPU
//! counters and figures from the maps at scrape time (a collector).
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
//! | `nodeport_map_writes_total{op}` | counter | map entries written (`put`) and deleted (`delete`) by syncs |
//! | `nodeport_map_write_errors_total{map,op}` | counter | failed map writes |
//! | `nodeport_source_errors_total{resource}` | counter | failed list/watch requests of the Kubernetes source |
//! | `nodeport_manifests_loads_total` | counter | reads of the manifests directory that found a changed file (the first read counts) |
//! | `nodeport_manifests_rejected` | gauge | documents and files the last read of the manifests directory rejected (their last good version, if any, is still served) |
//! | `nodeport_health_check_servers` | gauge | healthCheckNodePort servers listening |
//! | `nodeport_datapath_packets_total{reason}` | counter | the datapath's `stats` map, summed over CPUs |
//! | `nodeport_service_packets_total{namespace,name,port,protocol}` | counter | packets the datapath received for a Service port (all its frontends), summed over CPUs |
//! | `nodeport_service_bytes_total{namespace,name,port,protocol}` | counter | their IPv4 bytes |
//! | `nodeport_service_new_flows_total{namespace,name,port,protocol}` | counter | flows given a backend |
//! | `nodeport_service_rejected_total{namespace,name,port,protocol}` | counter | packets answered with a reject (no endpoints) |
//! | `nodeport_service_drops_total{namespace,name,port,protocol,reason}` | counter | packets dropped: `no_local_backend`, `source_range`, `snat_exhausted`, `other` |
//! | `nodeport_backend_packets_total{backend}` | counter | packets sent to an endpoint (address:port) |
//! | `nodeport_backend_bytes_total{backend}` | counter | their IPv4 bytes |
//! | `nodeport_backend_new_flows_total{backend}` | counter | flows given that endpoint |
//! | `nodeport_xdp_transmitted_total{device}` | counter | frames the datapath sent back out that the kernel transmitted (native mode) |
//! | `nodeport_xdp_transmit_failures_total{device}` | counter | frames the datapath sent back out that the kernel dropped |
//! | `nodeport_xdp_mode{device,mode}` | gauge | 1 for the XDP mode each device is attached in |
//! | `nodeport_failing_devices` | gauge | devices whose transmits keep failing (`/healthz` is 503 meanwhile) |
//! | `nodeport_snat_pool_ports` | gauge | SNAT ports per node address, backend and protocol |
//! | `nodeport_snat_ports_in_use{backend,node_addr}` | gauge | SNAT ports held by flows to each remote backend |
//! | `nodeport_snat_pool_pressure{backend,node_addr}` | gauge | share of its SNAT pool each remote backend uses (0 to 1) |
//! | `nodeport_bpf_map_pressure{map}` | gauge | how full each map is (entries / max_entries, 0 to 1; arrays left out), Cilium's name |
//! | `nodeport_bpf_map_entries{map}` | gauge | entries of each map |
//! | `nodeport_bpf_map_max_entries{map}` | gauge | capacity of each map (`--map-size`) |
//! | `nodeport_map_pressure_warnings_total{map}` | counter | times a map or (`snat_pool`) a backend's SNAT pool went above 90% full, each also logged as a warning |
//! | `nodeport_memory_resident_bytes` | gauge | the agent's resident set |
//! | `nodeport_memory_cgroup_bytes` | gauge | memory charged to its cgroup, the BPF maps it created included (0: unknown) |
//! | `nodeport_memory_limit_bytes` | gauge | its cgroup's memory limit (0: none) |
//! | `kubeproxy_sync_proxy_rules_duration_seconds` | histogram | kube-proxy's name for every sync, failed ones too (1 ms doubling to ~16 s) |
//! | `kubeproxy_sync_proxy_rules_last_timestamp_seconds` | gauge | kube-proxy's name for the last successful sync |
//! | `kubeproxy_network_programming_duration_seconds` | histogram | kube-proxy's name and buckets (0, 0.25 s, 0.5 s, 1 s … 59 s, 60 s … 115 s, 2 min … 5 min) for the network programming latency |
//! | `kubeproxy_proxy_healthz_total{code}` | counter | `/healthz` answers by status code |
//! | `kubeproxy_proxy_livez_total{code}` | counter | `/livez` answers by status code |

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric, MetricEncoder, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::{Metric, Registry};
use tracing::{info, warn};

use crate::http::{Handler, Request, Response};

/// Reads the datapath counters (name, packets) at scrape time.
pub type StatsReader =
    Box<dyn Fn() -> Result<Vec<(&'static str, u64)>, crate::maps::MapError> + Send + Sync>;
/// Reads the named per-service and per-backend counters at scrape time.
pub type CountersReader =
    Box<dyn Fn() -> Result<crate::counters::Counters, crate::maps::MapError> + Send + Sync>;
/// Reads per-device transmits and SNAT pool use at scrape time.
pub type FiguresReader =
    Box<dyn Fn() -> Result<crate::figures::Figures, crate::maps::MapError> + Send + Sync>;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds of the sync duration buckets (seconds): 1 ms doubling to
/// ~16 s, as kube-proxy's `sync_proxy_rules_duration_seconds`.
fn sync_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// Upper bounds of the project's network programming latency buckets.
const PROGRAMMING_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// kube-proxy's `network_programming_duration_seconds` buckets: component-
/// base's `MergeBuckets` (which starts with a 0 bucket) of 0.25 s and 0.5 s,
/// 1 s to 59 s, 60 s to 115 s by 5 s and 2 min to 5 min by 30 s.
fn kube_proxy_programming_buckets() -> impl Iterator<Item = f64> {
    std::iter::once(0.0)
        .chain(linear_buckets(0.25, 0.25, 2))
        .chain(linear_buckets(1.0, 1.0, 59))
        .chain(linear_buckets(60.0, 5.0, 12))
        .chain(linear_buckets(120.0, 30.0, 7))
}

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type Codes = [(&'static str, u16); 1];
type FloatGauge = Gauge<f64, AtomicU64>;

/// A metric whose `# HELP` and `# TYPE` are written even without samples
/// (a family before its first sample), so that a scrape always shows it.
#[derive(Clone, Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Registers a copy of `metric` (metrics share their values with their
/// clones) and returns it.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// What the maps hold after a successful sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub services: usize,
    pub frontends: usize,
    pub endpoints: usize,
}

/// The agent's metrics; shared between the run loop, the Kubernetes source
/// and the endpoints.
pub struct Metrics {
    registry: Registry,
    own: Own,
    kube_proxy: KubeProxy,
    datapath: Arc<DatapathCollector>,
}

/// The project's own metrics (`nodeport_*`).
struct Own {
    sync_duration: Histogram,
    last_sync: FloatGauge,
    syncs: Family<Labels1, Counter>,
    map_writes: Family<Labels1, Counter>,
    network_programming: Histogram,
    services: Gauge,
    frontends: Gauge,
    endpoints: Gauge,
    health_check_servers: Gauge,
    failing_devices: Gauge,
    memory_resident: Gauge,
    memory_cgroup: Gauge,
    memory_limit: Gauge,
    map_write_errors: Family<Labels2, Counter>,
    map_pressure_warnings: Family<Labels1, Counter>,
    source_errors: Family<Labels1, Counter>,
    manifests_loads: Counter,
    manifests_rejected: Gauge,
}

/// kube-proxy's metrics for the same measurements (`kubeproxy_*`).
struct KubeProxy {
    sync_duration: Histogram,
    last_sync: FloatGauge,
    network_programming: Histogram,
    healthz: Family<Codes, Counter>,
    livez: Family<Codes, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Own {
    #[allow(
        clippy::too_many_lines,
        reason = "one registration per metric, in the order they are listed"
    )]
    fn register(r: &mut Registry) -> Self {
        let syncs = Family::<Labels1, Counter>::default();
        for result in ["success", "error"] {
            drop(syncs.get_or_create(&[("result", result)]));
        }
        Self {
            sync_duration: register(
                r,
                "nodeport_sync_duration_seconds",
                "Duration of one sync: desired state computed and its differences written to the maps",
                Histogram::new(sync_buckets()),
            ),
            last_sync: register(
                r,
                "nodeport_sync_last_timestamp_seconds",
                "Unix time of the last successful sync",
                FloatGauge::default(),
            ),
            syncs: register(r, "nodeport_syncs", "Syncs by result", syncs),
            map_writes: register(
                r,
                "nodeport_map_writes",
                "Map entries written (put) and deleted (delete) by syncs",
                {
                    let f = Family::<Labels1, Counter>::default();
                    for op in ["put", "delete"] {
                        drop(f.get_or_create(&[("op", op)]));
                    }
                    f
                },
            ),
            network_programming: register(
                r,
                "nodeport_network_programming_duration_seconds",
                "From an EndpointSlice's last-change-trigger-time to the maps holding the change",
                Histogram::new(PROGRAMMING_BUCKETS),
            ),
            services: register(
                r,
                "nodeport_services",
                "Services with frontends in the datapath",
                Gauge::default(),
            ),
            frontends: register(
                r,
                "nodeport_frontends",
                "Frontends (NodePort and ClusterIP) in the datapath",
                Gauge::default(),
            ),
            endpoints: register(
                r,
                "nodeport_endpoints",
                "Backends (pod address and port) in the datapath",
                Gauge::default(),
            ),
            health_check_servers: register(
                r,
                "nodeport_health_check_servers",
                "healthCheckNodePort servers listening",
                Gauge::default(),
            ),
            failing_devices: register(
                r,
                "nodeport_failing_devices",
                "Devices whose transmits keep failing (/healthz is 503 meanwhile)",
                Gauge::default(),
            ),
            memory_resident: register(
                r,
                "nodeport_memory_resident_bytes",
                "Resident set of the agent",
                Gauge::default(),
            ),
            memory_cgroup: register(
                r,
                "nodeport_memory_cgroup_bytes",
                "Memory charged to the agent's cgroup, BPF maps included (0: unknown)",
                Gauge::default(),
            ),
            memory_limit: register(
                r,
                "nodeport_memory_limit_bytes",
                "Memory limit of the agent's cgroup (0: none)",
                Gauge::default(),
            ),
            map_write_errors: register(
                r,
                "nodeport_map_write_errors",
                "Failed map writes",
                Listed(Family::default()),
            )
            .0,
            map_pressure_warnings: register(
                r,
                "nodeport_map_pressure_warnings",
                "Times a map or a backend's SNAT pool (snat_pool) went above 90% full",
                Listed(Family::default()),
            )
            .0,
            source_errors: register(
                r,
                "nodeport_source_errors",
                "Failed list or watch requests of the Kubernetes source",
                Listed(Family::default()),
            )
            .0,
            manifests_loads: register(
                r,
                "nodeport_manifests_loads",
                "Reads of the manifests directory that found a changed file",
                Counter::default(),
            ),
            manifests_rejected: register(
                r,
                "nodeport_manifests_rejected",
                "Documents and files the last read of the manifests directory rejected",
                Gauge::default(),
            ),
        }
    }
}

impl KubeProxy {
    fn register(r: &mut Registry) -> Self {
        Self {
            sync_duration: register(
                r,
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                Histogram::new(sync_buckets()),
            ),
            last_sync: register(
                r,
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                FloatGauge::default(),
            ),
            network_programming: register(
                r,
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                Histogram::new(kube_proxy_programming_buckets()),
            ),
            healthz: register(
                r,
                "kubeproxy_proxy_healthz",
                "Cumulative proxy healthz HTTP status",
                Family::default(),
            ),
            livez: register(
                r,
                "kubeproxy_proxy_livez",
                "Cumulative proxy livez HTTP status",
                Family::default(),
            ),
        }
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let own = Own::register(&mut registry);
        let kube_proxy = KubeProxy::register(&mut registry);
        let datapath = Arc::new(DatapathCollector::default());
        registry.register_collector(Box::new(Arc::clone(&datapath)));
        Self {
            registry,
            own,
            kube_proxy,
            datapath,
        }
    }

    /// Where the datapath counters come from.
    pub fn set_stats_reader(&self, reader: StatsReader) {
        *self
            .datapath
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reader);
    }

    /// Where the per-service and per-backend counters come from (none:
    /// they are not exported).
    pub fn set_counters_reader(&self, reader: CountersReader) {
        *self
            .datapath
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reader);
    }

    /// Where per-device transmits and SNAT pool use come from.
    pub fn set_figures_reader(&self, reader: FiguresReader) {
        *self
            .datapath
            .figures
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reader);
    }

    fn synced(&self, took: Duration) {
        self.own.sync_duration.observe(took.as_secs_f64());
        self.kube_proxy.sync_duration.observe(took.as_secs_f64());
    }

    /// A sync that wrote the maps up to date in `took`.
    /// Entries a successful sync put and deleted.
    pub fn map_writes(&self, puts: usize, deletes: usize) {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        self.own
            .map_writes
            .get_or_create(&[("op", "put")])
            .inc_by(n(puts));
        self.own
            .map_writes
            .get_or_create(&[("op", "delete")])
            .inc_by(n(deletes));
    }

    pub fn sync_succeeded(&self, took: Duration, served: Served) {
        self.synced(took);
        self.own.syncs.get_or_create(&[("result", "success")]).inc();
        let now = unix_seconds(SystemTime::now());
        self.own.last_sync.set(now);
        self.kube_proxy.last_sync.set(now);
        self.own.services.set(gauge_value(served.services));
        self.own.frontends.set(gauge_value(served.frontends));
        self.own.endpoints.set(gauge_value(served.endpoints));
    }

    /// A sync that stopped at a failed map write.
    pub fn sync_failed(&self, took: Duration, map: &'static str, op: &'static str) {
        self.synced(took);
        self.own.syncs.get_or_create(&[("result", "error")]).inc();
        self.own
            .map_write_errors
            .get_or_create(&[("map", map), ("op", op)])
            .inc();
    }

    /// The time from an endpoint change (its trigger time) to the maps.
    pub fn network_programmed(&self, latency: Duration) {
        self.own.network_programming.observe(latency.as_secs_f64());
        self.kube_proxy
            .network_programming
            .observe(latency.as_secs_f64());
    }

    /// A failed list or watch of `resource`.
    pub fn source_error(&self, resource: &'static str) {
        self.own
            .source_errors
            .get_or_create(&[("resource", resource)])
            .inc();
    }

    /// The manifests source read a changed directory and rejected
    /// `rejected` documents and files in it.
    pub fn manifests_loaded(&self, rejected: usize) {
        self.own.manifests_loads.inc();
        self.own.manifests_rejected.set(gauge_value(rejected));
    }

    pub fn set_health_check_servers(&self, n: usize) {
        self.own.health_check_servers.set(gauge_value(n));
    }

    pub fn set_failing_devices(&self, n: usize) {
        self.own.failing_devices.set(gauge_value(n));
    }

    /// The agent's resident set, its cgroup's charge and limit.
    pub fn set_memory(&self, reading: &crate::memory::Reading) {
        let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        self.own.memory_resident.set(bytes(reading.resident));
        self.own.memory_cgroup.set(reading.charged.map_or(0, bytes));
        self.own.memory_limit.set(reading.limit.map_or(0, bytes));
    }

    /// Map `map` (or [`crate::pressure::SNAT_POOL`]) went above the
    /// pressure warning's ratio.
    pub fn map_pressure_warned(&self, map: &'static str) {
        self.own
            .map_pressure_warnings
            .get_or_create(&[("map", map)])
            .inc();
    }

    /// `/healthz` answered with `status`.
    pub fn healthz_answered(&self, status: u16) {
        self.kube_proxy
            .healthz
            .get_or_create(&[("code", status)])
            .inc();
    }

    /// `/livez` answered with `status`.
    pub fn livez_answered(&self, status: u16) {
        self.kube_proxy
            .livez
            .get_or_create(&[("code", status)])
            .inc();
    }

    /// Everything in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]),
    /// the datapath's counters read from its maps now.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a collector's error would only
        // cut the text short.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The handler of the metrics server: `/metrics`. It reads the maps:
    /// serve it with [`crate::http::Server::bind_blocking`].
    #[must_use]
    pub fn handler(self: &Arc<Self>) -> Handler {
        let metrics = Arc::clone(self);
        Arc::new(move |req: &Request| match req.path.as_str() {
            "/metrics" => Response::new(200, CONTENT_TYPE, metrics.render()),
            _ => Response::not_found(),
        })
    }
}

/// The datapath's counters and figures, read from the maps at every scrape.
#[derive(Default)]
struct DatapathCollector {
    stats: Mutex<Option<StatsReader>>,
    figures: Mutex<Option<FiguresReader>>,
    counters: Mutex<Option<CountersReader>>,
    stats_failing: AtomicBool,
    figures_failing: AtomicBool,
    counters_failing: AtomicBool,
}

impl fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatapathCollector").finish_non_exhaustive()
    }
}

/// Reports a failing reader once when it starts failing and once when it
/// recovers, not at every scrape.
fn report<T>(
    read: Result<T, crate::maps::MapError>,
    failing: &AtomicBool,
    what: &str,
) -> Option<T> {
    match read {
        Ok(v) => {
            if failing.swap(false, Ordering::Relaxed) {
                info!(what, "reading the datapath for metrics works again");
            }
            Some(v)
        }
        Err(e) => {
            if !failing.swap(true, Ordering::Relaxed) {
                warn!(what, error = %e, "reading the datapath for metrics failed; its samples are left out");
            }
            None
        }
    }
}

/// One family of samples, one per label set.
fn family<L, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result<(), fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    V: EncodeSample,
{
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        value.encode_sample(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A value encoded as the sample of a counter or a gauge family.
trait EncodeSample {
    fn encode_sample(self, encoder: MetricEncoder) -> Result<(), fmt::Error>;
}

/// A counter's value.
struct Count(u64);
/// A gauge's value.
struct Level(u64);

impl EncodeSample for Count {
    fn encode_sample(self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        ConstCounter::new(self.0).encode(encoder)
    }
}

/// A gauge's value that is a share (0 to 1).
struct Ratio(f64);

impl EncodeSample for Ratio {
    fn encode_sample(self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        ConstGauge::new(self.0).encode(encoder)
    }
}

impl EncodeSample for Level {
    fn encode_sample(self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        ConstGauge::new(self.0).encode(encoder)
    }
}

/// The labels of a Service port's counters.
fn service_labels(l: &crate::counters::ServiceLabel) -> [(&'static str, &str); 4] {
    [
        ("namespace", &l.namespace),
        ("name", &l.name),
        ("port", &l.port),
        ("protocol", &l.protocol),
    ]
}

/// The per-service and per-backend counter families.
fn encode_counters(
    encoder: &mut DescriptorEncoder,
    c: &crate::counters::Counters,
) -> Result<(), fmt::Error> {
    type Field = fn(&nodeport_common::ServiceStats) -> u64;
    type BackendField = fn(&nodeport_common::BackendStats) -> u64;
    let service: [(&str, &str, Field); 4] = [
        (
            "nodeport_service_packets",
            "Packets the datapath received for a Service port.",
            |s| s.packets,
        ),
        (
            "nodeport_service_bytes",
            "IPv4 bytes the datapath received for a Service port.",
            |s| s.bytes,
        ),
        (
            "nodeport_service_new_flows",
            "Flows of a Service port given a backend.",
            |s| s.new_flows,
        ),
        (
            "nodeport_service_rejected",
            "Packets to a Service port answered with a reject (no endpoints).",
            |s| s.rejected,
        ),
    ];
    for (name, help, field) in service {
        family(
            encoder,
            name,
            help,
            MetricType::Counter,
            c.services
                .iter()
                .map(|(l, s)| (service_labels(l), Count(field(s)))),
        )?;
    }
    let drops: [(&str, Field); 4] = [
        ("no_local_backend", |s| s.drop_no_local_backend),
        ("source_range", |s| s.drop_source_range),
        ("snat_exhausted", |s| s.drop_snat_exhausted),
        ("other", |s| s.drop_other),
    ];
    family(
        encoder,
        "nodeport_service_drops",
        "Packets to a Service port the datapath dropped, by reason.",
        MetricType::Counter,
        c.services.iter().flat_map(|(l, s)| {
            drops.iter().map(move |(reason, field)| {
                let [a, b, c, d] = service_labels(l);
                ([a, b, c, d, ("reason", *reason)], Count(field(s)))
            })
        }),
    )?;
    let backend: [(&str, &str, BackendField); 3] = [
        (
            "nodeport_backend_packets",
            "Packets the datapath sent to an endpoint.",
            |s| s.packets,
        ),
        (
            "nodeport_backend_bytes",
            "IPv4 bytes the datapath sent to an endpoint.",
            |s| s.bytes,
        ),
        (
            "nodeport_backend_new_flows",
            "Flows given an endpoint.",
            |s| s.new_flows,
        ),
    ];
    for (name, help, field) in backend {
        family(
            encoder,
            name,
            help,
            MetricType::Counter,
            c.backends
                .iter()
                .map(|(a, s)| ([("backend", a.to_string())], Count(field(s)))),
        )?;
    }
    Ok(())
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = {
            let reader = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
            reader.as_ref().map(|read| read())
        };
        let counters = stats
            .and_then(|s| report(s, &self.stats_failing, "stats"))
            .unwrap_or_default();
        family(
            &mut encoder,
            "nodeport_datapath_packets",
            "Packets by datapath verdict reason, summed over CPUs.",
            MetricType::Counter,
            counters
                .into_iter()
                .map(|(reason, n)| ([("reason", reason)], Count(n))),
        )?;

        let counters = {
            let reader = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            reader.as_ref().map(|read| read())
        };
        if let Some(c) = counters.and_then(|c| report(c, &self.counters_failing, "counters")) {
            encode_counters(&mut encoder, &c)?;
        }

        let figures = {
            let reader = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
            reader.as_ref().map(|read| read())
        };
        let Some(f) = figures.and_then(|f| report(f, &self.figures_failing, "figures")) else {
            return Ok(());
        };
        family(
            &mut encoder,
            "nodeport_xdp_transmitted",
            "Frames the datapath sent back out that the kernel transmitted (native XDP).",
            MetricType::Counter,
            f.devices
                .iter()
                .map(|d| ([("device", d.device.as_str())], Count(d.tx_sent))),
        )?;
        family(
            &mut encoder,
            "nodeport_xdp_transmit_failures",
            "Frames the datapath sent back out that the kernel dropped.",
            MetricType::Counter,
            f.devices
                .iter()
                .map(|d| ([("device", d.device.as_str())], Count(d.tx_failed))),
        )?;
        family(
            &mut encoder,
            "nodeport_xdp_mode",
            "The XDP mode each device is attached in.",
            MetricType::Gauge,
            f.devices.iter().map(|d| {
                (
                    [("device", d.device.as_str()), ("mode", d.xdp_mode)],
                    Level(1),
                )
            }),
        )?;
        ConstGauge::new(f.snat.pool_size).encode(encoder.encode_descriptor(
            "nodeport_snat_pool_ports",
            "SNAT ports per node address, backend and protocol.",
            None,
            MetricType::Gauge,
        )?)?;
        family(
            &mut encoder,
            "nodeport_snat_ports_in_use",
            "SNAT ports held by flows to each remote backend.",
            MetricType::Gauge,
            f.snat.backends.iter().map(|b| {
                (
                    [
                        ("backend", b.backend.as_str()),
                        ("node_addr", b.node_addr.as_str()),
                    ],
                    Level(b.ports_in_use),
                )
            }),
        )?;
        family(
            &mut encoder,
            "nodeport_snat_pool_pressure",
            "Share of its SNAT pool each remote backend uses.",
            MetricType::Gauge,
            f.snat.backends.iter().map(|b| {
                (
                    [
                        ("backend", b.backend.as_str()),
                        ("node_addr", b.node_addr.as_str()),
                    ],
                    Ratio(f.snat.ratio(b)),
                )
            }),
        )?;
        encode_map_fill(&mut encoder, &f.maps)
    }
}

/// How full each map is.
fn encode_map_fill(
    encoder: &mut DescriptorEncoder,
    maps: &[crate::maps::fill::MapFill],
) -> Result<(), fmt::Error> {
    family(
        encoder,
        "nodeport_bpf_map_pressure",
        "How full each map is: entries / max_entries.",
        MetricType::Gauge,
        maps.iter().map(|m| ([("map", m.map)], Ratio(m.ratio()))),
    )?;
    family(
        encoder,
        "nodeport_bpf_map_entries",
        "Entries of each map.",
        MetricType::Gauge,
        maps.iter().map(|m| ([("map", m.map)], Level(m.entries))),
    )?;
    family(
        encoder,
        "nodeport_bpf_map_max_entries",
        "Capacity of each map.",
        MetricType::Gauge,
        maps.iter()
            .map(|m| ([("map", m.map)], Level(u64::from(m.max_entries)))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::{DeviceFigures, Figures, SnatBackend, SnatUsage};

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    fn assert_has(text: &str, expected: &[&str]) {
        let have = lines(text);
        for line in expected {
            assert!(have.contains(line), "{line:?} missing in:\n{text}");
        }
    }

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
        m.manifests_loaded(0);
        m.manifests_loaded(2);
        m.healthz_answered(503);
        m.healthz_answered(200);
        m.healthz_answered(200);
        m.livez_answered(200);
        m.map_pressure_warned("conntrack");
        m.map_pressure_warned(crate::pressure::SNAT_POOL);
        m.map_pressure_warned("conntrack");
        m.set_stats_reader(Box::new(|| {
            Ok(vec![("pass_not_ipv4", 7), ("tx_remote", 2)])
        }));
        let text = m.render();
        assert_has(
            &text,
            &[
                "# TYPE nodeport_sync_duration_seconds histogram",
                "nodeport_sync_duration_seconds_bucket{le=\"0.002\"} 0",
                "nodeport_sync_duration_seconds_bucket{le=\"0.004\"} 1",
                "nodeport_sync_duration_seconds_bucket{le=\"0.032\"} 2",
                "nodeport_sync_duration_seconds_bucket{le=\"+Inf\"} 2",
                "nodeport_sync_duration_seconds_count 2",
                "# TYPE nodeport_syncs_total counter",
                "nodeport_syncs_total{result=\"success\"} 1",
                "nodeport_syncs_total{result=\"error\"} 1",
                "nodeport_network_programming_duration_seconds_bucket{le=\"0.5\"} 0",
                "nodeport_network_programming_duration_seconds_bucket{le=\"1\"} 1",
                "nodeport_network_programming_duration_seconds_count 1",
                "# TYPE nodeport_services gauge",
                "nodeport_services 2",
                "nodeport_frontends 4",
                "nodeport_endpoints 3",
                "# TYPE nodeport_map_write_errors_total counter",
                "nodeport_map_write_errors_total{map=\"frontends\",op=\"put\"} 1",
                "# TYPE nodeport_map_pressure_warnings_total counter",
                "nodeport_map_pressure_warnings_total{map=\"conntrack\"} 2",
                "nodeport_map_pressure_warnings_total{map=\"snat_pool\"} 1",
                "nodeport_source_errors_total{resource=\"services\"} 1",
                "# TYPE nodeport_manifests_loads_total counter",
                "nodeport_manifests_loads_total 2",
                "# TYPE nodeport_manifests_rejected gauge",
                "nodeport_manifests_rejected 2",
                "# TYPE nodeport_datapath_packets_total counter",
                "nodeport_datapath_packets_total{reason=\"pass_not_ipv4\"} 7",
                "nodeport_datapath_packets_total{reason=\"tx_remote\"} 2",
                // kube-proxy's names, with kube-proxy's buckets.
                "# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds.",
                "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
                "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 0",
                "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"16.384\"} 2",
                "kubeproxy_sync_proxy_rules_duration_seconds_count 2",
                "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge",
                "# TYPE kubeproxy_network_programming_duration_seconds histogram",
                "kubeproxy_network_programming_duration_seconds_bucket{le=\"0\"} 0",
                "kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\"} 0",
                "kubeproxy_network_programming_duration_seconds_bucket{le=\"1\"} 1",
                "kubeproxy_network_programming_duration_seconds_bucket{le=\"115\"} 1",
                "kubeproxy_network_programming_duration_seconds_bucket{le=\"300\"} 1",
                "kubeproxy_network_programming_duration_seconds_count 1",
                "# TYPE kubeproxy_proxy_healthz_total counter",
                "kubeproxy_proxy_healthz_total{code=\"200\"} 2",
                "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
                "kubeproxy_proxy_livez_total{code=\"200\"} 1",
            ],
        );
        let buckets = |name: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
                .count()
        };
        assert_eq!(buckets("kubeproxy_sync_proxy_rules_duration_seconds"), 16);
        assert_eq!(
            buckets("kubeproxy_network_programming_duration_seconds"),
            82
        );
        let last = text
            .lines()
            .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_last_timestamp_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("timestamp");
        assert!(last > 1.0e9, "{last}");
        // Every sample line is `name{labels} value` with a numeric value,
        // and every family has its HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    #[test]
    fn families_are_listed_before_their_first_sample() {
        let m = Metrics::new();
        let text = m.render();
        assert_has(
            &text,
            &[
                "nodeport_syncs_total{result=\"success\"} 0",
                "nodeport_syncs_total{result=\"error\"} 0",
                "nodeport_sync_last_timestamp_seconds 0.0",
                "# TYPE nodeport_map_pressure_warnings_total counter",
                "# TYPE nodeport_map_write_errors_total counter",
                "# TYPE nodeport_source_errors_total counter",
                "# TYPE nodeport_datapath_packets_total counter",
                "nodeport_health_check_servers 0",
                "nodeport_manifests_loads_total 0",
                "nodeport_manifests_rejected 0",
                "nodeport_memory_cgroup_bytes 0",
            ],
        );
    }

    #[test]
    fn datapath_figures_are_read_at_scrape_time() {
        let m = Metrics::new();
        let n = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let reads = Arc::clone(&n);
        m.set_figures_reader(Box::new(move || {
            Ok(Figures {
                devices: vec![DeviceFigures {
                    device: "eth0".into(),
                    ifindex: 2,
                    xdp_mode: "native",
                    tx_sent: reads.fetch_add(1, Ordering::Relaxed),
                    tx_failed: 0,
                }],
                snat: SnatUsage {
                    pool_size: 33_000,
                    backends: vec![SnatBackend {
                        backend: "10.0.2.5".into(),
                        node_addr: "10.0.0.1".into(),
                        ports_in_use: 3,
                    }],
                },
                maps: vec![crate::maps::fill::MapFill {
                    map: "conntrack",
                    entries: 1000,
                    max_entries: 4000,
                }],
            })
        }));
        assert_has(
            &m.render(),
            &[
                "nodeport_xdp_transmitted_total{device=\"eth0\"} 1",
                "nodeport_xdp_transmit_failures_total{device=\"eth0\"} 0",
                "nodeport_xdp_mode{device=\"eth0\",mode=\"native\"} 1",
                "# TYPE nodeport_snat_pool_ports gauge",
                "nodeport_snat_pool_ports 33000",
                "nodeport_snat_ports_in_use{backend=\"10.0.2.5\",node_addr=\"10.0.0.1\"} 3",
                "nodeport_snat_pool_pressure{backend=\"10.0.2.5\",node_addr=\"10.0.0.1\"} 0.0000909090909090909",
                "# TYPE nodeport_bpf_map_pressure gauge",
                "nodeport_bpf_map_pressure{map=\"conntrack\"} 0.25",
                "nodeport_bpf_map_entries{map=\"conntrack\"} 1000",
                "nodeport_bpf_map_max_entries{map=\"conntrack\"} 4000",
            ],
        );
        assert_has(
            &m.render(),
            &["nodeport_xdp_transmitted_total{device=\"eth0\"} 2"],
        );

        // A failing reader leaves its samples out; the rest stays.
        m.set_stats_reader(Box::new(|| {
            Err(crate::maps::MapError {
                map: "stats",
                op: "lookup",
                key: "0".into(),
                source: "map gone".into(),
            })
        }));
        let text = m.render();
        assert_has(&text, &["# TYPE nodeport_datapath_packets_total counter"]);
        assert!(!text.contains("nodeport_datapath_packets_total{"), "{text}");
        assert!(text.contains("nodeport_xdp_mode{"), "{text}");
    }
}
