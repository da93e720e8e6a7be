//! `nodeport-agent run`: load and attach the datapath, then keep its maps
//! equal to what the cluster asks for. One loop: poll the source (the
//! Kubernetes API watchers or the manifests directory), recompute the
//! desired state when anything changed, and let the reconciler write the
//! difference. A failed write is logged and retried on the next tick; the
//! datapath keeps serving what it has meanwhile. Every pass that leaves the
//! maps up to date refreshes the health state behind `/healthz`; the
//! healthCheckNodePort servers and the metrics follow each sync.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Node;
use nodeport_common::PortRange;
use tracing::{error, info, warn};

use crate::attached::AttachedDevices;
use crate::cli::RunArgs;
use crate::config::{InterfaceAddr, NodePortAddresses};
use crate::health::{HealthCheckServers, ProxyHealth};
use crate::http::Server;
use crate::loader::{Datapath, MapSizes};
use crate::maps::fill::PinnedMaps;
use crate::maps::{MapWriter as _, bpf::BpfMaps};
use crate::metrics::{Metrics, Served};
use crate::pipeline::Pipeline;
use crate::reconcile::Reconciler;
use crate::runtime::Runtime;
use crate::source::kube::{KubeOptions, KubeSource};
use crate::source::{Source, Update, manifests::ManifestsSource};
use crate::store::ObjectKey;
use crate::sysctl::Sysctls;
use crate::{neighbours, node_addrs, snat_pool};

/// How often the source is polled and the node's addresses re-read (a
/// change of the Kubernetes source wakes the loop earlier).
const TICK: Duration = Duration::from_millis(200);
/// How long the loop lets a burst of source changes settle before a sync.
const SETTLE: Duration = Duration::from_millis(10);
/// How often the next hops of remote backends are refreshed.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(30);
/// How often the attached devices are checked (XDP mode, transmit failures).
const DEVICE_CHECK: Duration = Duration::from_secs(1);
/// How often the agent's memory is read.
const MEMORY_CHECK: Duration = Duration::from_secs(10);
/// How often the counters of freed ids are deleted.
const FORGET_COUNTERS: Duration = Duration::from_secs(1);
/// How often the maps' fill is counted for the pressure warning.
const PRESSURE_CHECK: Duration = Duration::from_secs(5);

/// Why `nodeport-agent run` could not start (once running, failures are
/// logged and retried, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the hostname for the default --node-name")]
    Hostname(#[source] std::io::Error),
    #[error("reading /proc/net/route for the default --interfaces")]
    Routes(#[source] std::io::Error),
    #[error("no default route to pick devices from: pass --interfaces")]
    NoDefaultRoute,
    #[error("listing the node's addresses")]
    Addresses(#[source] std::io::Error),
    #[error("--nodeport-addresses {value}")]
    NodePortAddresses {
        value: String,
        #[source]
        source: crate::config::ConfigError,
    },
    #[error("starting the {what} source")]
    Source {
        what: &'static str,
        #[source]
        source: crate::source::SourceError,
    },
    #[error("handling {signal}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    #[error(transparent)]
    Map(#[from] crate::maps::MapError),
    #[error(transparent)]
    Attach(#[from] crate::attached::AttachError),
    #[error(transparent)]
    SnatPool(#[from] crate::snat_pool::PoolError),
    #[error(transparent)]
    Bind(#[from] crate::http::BindError),
}

type Result<T> = std::result::Result<T, RunError>;

fn node_name(args: &RunArgs) -> Result<String> {
    if let Some(n) = &args.node_name {
        return Ok(n.clone());
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(RunError::Hostname)?;
    Ok(name.trim().to_string())
}

fn interfaces(args: &RunArgs) -> Result<Vec<String>> {
    if !args.interfaces.is_empty() {
        return Ok(args.interfaces.clone());
    }
    let devs = node_addrs::default_route_devices().map_err(RunError::Routes)?;
    if devs.is_empty() {
        return Err(RunError::NoDefaultRoute);
    }
    Ok(devs)
}

/// The node's addresses. The primary one is the Node's `InternalIP` when
/// it is an address of this node (known from the Kubernetes API), else the
/// first address of the first default-route device (or of the first
/// attached device).
fn interface_addrs(primary_dev: &str, internal_ip: Option<Ipv4Addr>) -> Result<Vec<InterfaceAddr>> {
    let all = node_addrs::local_ipv4().map_err(RunError::Addresses)?;
    let primary = internal_ip
        .filter(|ip| all.iter().any(|a| a.addr == *ip))
        .or_else(|| all.iter().find(|a| a.iface == primary_dev).map(|a| a.addr));
    Ok(all
        .iter()
        .map(|a| InterfaceAddr {
            addr: a.addr,
            primary: Some(a.addr) == primary,
        })
        .collect())
}

/// The first `InternalIP` of the Node object named `node`, if known.
fn node_internal_ip(nodes: &BTreeMap<String, Node>, node: &str) -> Option<Ipv4Addr> {
    nodes
        .get(node)?
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == crate::k8s::NODE_INTERNAL_IP)
        .find_map(|a| a.address.parse().ok())
}

/// The Kubernetes API (the default) or the manifests directory.
fn open_source(
    args: &RunArgs,
    node: &str,
    metrics: &Arc<Metrics>,
    runtime: &tokio::runtime::Handle,
) -> Result<Box<dyn Source>> {
    Ok(match &args.manifests {
        Some(dir) => Box::new(
            ManifestsSource::new(dir.clone(), args.service_node_port_range.clone())
                .with_metrics(Arc::clone(metrics)),
        ),
        None => Box::new(
            KubeSource::start(
                &KubeOptions {
                    kubeconfig: args.kubeconfig.clone(),
                    node_name: node.to_owned(),
                },
                Arc::clone(metrics),
                runtime,
            )
            .map_err(|source| RunError::Source {
                what: "Kubernetes API",
                source,
            })?,
        ),
    })
}

/// `/healthz` and `/livez` on `--healthz-bind-address`, `/metrics` on
/// `--metrics-bind-address` (with the datapath counters of the maps pinned
/// under `root`, read on the runtime's blocking pool, and the per-service
/// counters named by `names` unless they are off), both on `runtime`.
/// They serve until the returned servers are dropped.
fn serve_health_and_metrics(
    args: &RunArgs,
    health: &Arc<ProxyHealth>,
    metrics: &Arc<Metrics>,
    root: &std::path::Path,
    names: Option<crate::counters::CounterNames>,
    runtime: &tokio::runtime::Handle,
) -> Result<[Server; 2]> {
    let stats = Arc::new(std::sync::Mutex::new(BpfMaps::open(root)?));
    let figures = Arc::clone(&stats);
    let pinned = PinnedMaps::open(root)?;
    if let Some(names) = names {
        let maps = Arc::clone(&stats);
        metrics.set_counters_reader(Box::new(move || {
            crate::counters::read(
                &maps
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                &names,
            )
        }));
    }
    metrics.set_stats_reader(Box::new(move || {
        stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stats()
    }));
    metrics.set_figures_reader(Box::new(move || {
        crate::figures::read(
            &figures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            &pinned,
        )
    }));
    let healthz = Server::bind(
        runtime,
        args.healthz_bind_address,
        "healthz",
        health.handler(metrics),
    )?;
    let metrics = Server::bind_blocking(
        runtime,
        args.metrics_bind_address,
        "metrics",
        metrics.handler(),
    )?;
    Ok([healthz, metrics])
}

#[allow(
    clippy::too_many_lines,
    reason = "the agent's start-up steps in order, read top to bottom"
)]
pub fn run(args: &RunArgs) -> Result<()> {
    let node = node_name(args)?;
    // Dropped last: the servers and the watchers on it stop with it.
    let runtime = Runtime::start()?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ProxyHealth::default());
    let source = open_source(args, &node, &metrics, runtime.handle())?;
    let selection: NodePortAddresses = match &args.nodeport_addresses {
        Some(s) => s.parse().map_err(|source| RunError::NodePortAddresses {
            value: s.clone(),
            source,
        })?,
        None => NodePortAddresses::All,
    };
    let ifaces = interfaces(args)?;
    let primary_dev = node_addrs::default_route_devices()
        .ok()
        .and_then(|d| d.into_iter().next())
        .unwrap_or_else(|| ifaces[0].clone());

    let mut datapath = Datapath::load(&args.bpffs, MapSizes::with(&args.map_size))?;
    let mut maps = BpfMaps::open(datapath.root())?;
    configure_snat(args, &mut maps)?;
    configure_counters(args, &mut maps)?;
    for iface in &ifaces {
        enable_forwarding(&Sysctls::new(&args.sysctl_dir), iface);
    }
    let attached = AttachedDevices::attach(&mut datapath, &mut maps, &ifaces, args.xdp_mode)?;
    if let Err(e) = datapath.attach_tx_tracepoints() {
        warn!(error = %e, "transmit failures of the datapath are not counted (tracepoints unavailable)");
    }
    if let Some(cgroup) = socket_lb_cgroup(args) {
        datapath.attach_socket_lb(&cgroup, args.node_port_bind_protection)?;
        info!(
            cgroup = %cgroup.display(),
            bind_protection = args.node_port_bind_protection,
            "attached socket load balancing"
        );
    } else {
        warn!(
            "no cgroup v2 hierarchy: connections from the node and its pods to a NodePort of this node are not load balanced"
        );
    }
    let pipeline = Pipeline::new(&node, Reconciler::adopt(maps.read_state()?));
    let names = args
        .service_counters
        .then(|| pipeline.reconciler().counter_names());
    let _servers = serve_health_and_metrics(
        args,
        &health,
        &metrics,
        datapath.root(),
        names,
        runtime.handle(),
    )?;
    info!(
        node = %node,
        source = %source.describe(),
        bpffs = %args.bpffs.display(),
        healthz = %args.healthz_bind_address,
        metrics = %args.metrics_bind_address,
        "agent started"
    );

    let stop = stop_on_signals(runtime.handle())?;
    let pinned = PinnedMaps::open(datapath.root())?;
    let mut sync = Sync {
        health_checks: HealthCheckServers::new(
            Ipv4Addr::UNSPECIFIED,
            Arc::clone(&health),
            runtime.handle().clone(),
        ),
        health,
        metrics,
        started: SystemTime::now(),
        programmed: BTreeMap::new(),
        health_checks_complete: true,
        source_delivered: false,
        node,
        selection,
        primary_dev,
        source,
        maps,
        pipeline,
        nodes: BTreeMap::new(),
        addrs: Vec::new(),
        dirty: true,
        ready: false,
        remote: BTreeSet::new(),
        last_warm: Instant::now(),
        datapath,
        attached,
        last_device_check: Instant::now(),
        memory: crate::memory::Watch::default(),
        last_memory_check: None,
        pinned,
        pressure: crate::pressure::Watch::default(),
        last_pressure_check: None,
        last_counters_forgotten: Instant::now(),
        trim_after_apply: false,
    };
    while !stop.load(Ordering::Relaxed) {
        sync.tick();
        // Woken early by a change of the source: a moment more lets the
        // events of one change (a Service and its EndpointSlice) land in
        // one sync.
        let waited = Instant::now();
        sync.source.wait(TICK);
        if waited.elapsed() < TICK {
            std::thread::sleep(SETTLE);
        }
    }
    info!(
        "stopping; programs and maps stay pinned and keep serving (`nodeport-agent cleanup` removes them)"
    );
    Ok(())
}

/// The agent's loop state: what it last read and what it last wrote.
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent facts of the loop, each read in one place"
)]
struct Sync {
    node: String,
    selection: NodePortAddresses,
    primary_dev: String,
    source: Box<dyn Source>,
    maps: BpfMaps,
    /// Objects → desired state → map writes, change by change.
    pipeline: Pipeline,
    /// The Node objects (this node's: InternalIP, deletion).
    nodes: BTreeMap<String, Node>,
    addrs: Vec<Ipv4Addr>,
    /// Something changed (or the last write failed): recompute and apply.
    dirty: bool,
    ready: bool,
    /// Remote backend addresses whose next hops are kept resolved.
    remote: BTreeSet<Ipv4Addr>,
    last_warm: Instant,
    health: Arc<ProxyHealth>,
    metrics: Arc<Metrics>,
    health_checks: HealthCheckServers,
    /// The source has delivered a complete state at least once.
    source_delivered: bool,
    /// Some healthCheckNodePort server could not bind: retry.
    health_checks_complete: bool,
    /// When the agent started: older endpoint changes are not measured.
    started: SystemTime,
    /// Trigger times of EndpointSlices already measured, by slice.
    programmed: BTreeMap<ObjectKey, Arc<str>>,
    datapath: Datapath,
    attached: AttachedDevices,
    last_device_check: Instant,
    memory: crate::memory::Watch,
    last_memory_check: Option<Instant>,
    /// The maps whose fill the pressure check counts.
    pinned: PinnedMaps,
    pressure: crate::pressure::Watch,
    last_pressure_check: Option<Instant>,
    last_counters_forgotten: Instant,
    /// A large delivery was taken: free memory goes back to the kernel
    /// once it is written.
    trim_after_apply: bool,
}

impl Sync {
    /// One pass: read the source and the node's addresses, and when
    /// anything changed, write the difference into the maps.
    fn tick(&mut self) {
        match self.source.poll() {
            Ok(Some(update)) => {
                self.trim_after_apply |= update.objects() >= crate::memory::TRIM_AFTER_OBJECTS;
                match update {
                    Update::Full(state) => {
                        self.pipeline
                            .set_zone(crate::store::node_zone(state.nodes.get(&self.node)));
                        self.pipeline.replace_state(&state);
                        self.nodes = state.nodes;
                    }
                    Update::Changes(changes) => {
                        for (key, svc) in &changes.services {
                            self.pipeline.set_service(key, svc.as_deref());
                        }
                        for (key, slice) in &changes.endpoint_slices {
                            self.pipeline.set_slice(key, slice.as_deref());
                        }
                        for (name, node) in changes.nodes {
                            match node {
                                Some(n) => self.nodes.insert(name, Arc::unwrap_or_clone(n)),
                                None => self.nodes.remove(&name),
                            };
                        }
                        self.pipeline
                            .set_zone(crate::store::node_zone(self.nodes.get(&self.node)));
                    }
                }
                self.source_delivered = true;
                self.health.set_node(self.nodes.get(&self.node));
                self.dirty |= self.pipeline.has_pending();
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "reading the source failed; serving the last known state"),
        }
        match interface_addrs(&self.primary_dev, node_internal_ip(&self.nodes, &self.node)) {
            Ok(a) => {
                let selected = self.selection.select(&a);
                if selected != self.addrs {
                    self.addrs = selected;
                    self.pipeline.set_node_addrs(&self.addrs);
                    self.dirty = true;
                }
            }
            Err(e) => warn!(error = %e, "reading node addresses failed"),
        }
        if self.dirty && self.source_ready() {
            self.apply();
            if self.trim_after_apply && !self.dirty {
                self.trim_after_apply = false;
                crate::memory::release_free();
            }
        } else if !self.health_checks_complete {
            let wanted = self.pipeline.health_checks().clone();
            self.health_checks_complete = self.health_checks.update(&wanted);
            self.metrics
                .set_health_check_servers(self.health_checks.len());
        }
        if self.ready && !self.dirty {
            self.health.updated();
        }
        if self.last_warm.elapsed() >= NEIGHBOUR_REFRESH {
            self.last_warm = Instant::now();
            neighbours::warm(&self.remote);
        }
        if self.last_device_check.elapsed() >= DEVICE_CHECK {
            self.last_device_check = Instant::now();
            let failing = self.attached.check(&mut self.datapath, &mut self.maps);
            self.metrics.set_failing_devices(failing.len());
            self.health.set_failing_devices(failing);
        }
        if self
            .last_memory_check
            .is_none_or(|t| t.elapsed() >= MEMORY_CHECK)
        {
            self.last_memory_check = Some(Instant::now());
            if let Some(reading) = self.memory.check() {
                self.metrics.set_memory(&reading);
            }
        }
        if self.last_counters_forgotten.elapsed() >= FORGET_COUNTERS {
            self.last_counters_forgotten = Instant::now();
            if let Err(e) = self.pipeline.forget_freed_counters(&mut self.maps) {
                warn!(error = %e, "deleting the counters of removed services and backends failed; retrying");
            }
        }
        if self
            .last_pressure_check
            .is_none_or(|t| t.elapsed() >= PRESSURE_CHECK)
        {
            self.last_pressure_check = Some(Instant::now());
            match crate::figures::read(&self.maps, &self.pinned) {
                Ok(figures) => {
                    for crossing in self.pressure.check(&figures) {
                        self.metrics.map_pressure_warned(crossing.map);
                    }
                }
                Err(e) => warn!(error = %e, "reading how full the maps are failed"),
            }
        }
    }

    /// Whether the source has delivered a first complete state: until then
    /// nothing is written, so a restarted agent never replaces a serving
    /// datapath's entries with a partial view.
    fn source_ready(&self) -> bool {
        self.source_delivered
    }

    fn apply(&mut self) {
        let start = Instant::now();
        match self.pipeline.apply(&mut self.maps) {
            Ok(applied) => {
                self.dirty = false;
                let took = start.elapsed();
                for c in &applied.conflicts {
                    warn!(conflict = ?c, "frontend claimed twice");
                }
                let (frontends, services, endpoints) = self.pipeline.served();
                self.metrics.sync_succeeded(
                    took,
                    Served {
                        services,
                        frontends,
                        endpoints,
                    },
                );
                self.record_programming_latency(&applied.slices);
                let wanted = self.pipeline.health_checks().clone();
                self.health_checks_complete = self.health_checks.update(&wanted);
                self.metrics
                    .set_health_check_servers(self.health_checks.len());
                let report = &applied.report;
                for key in &report.changed_services {
                    let sctp = self.pipeline.sctp_ports(key);
                    if !sctp.is_empty() {
                        warn!(
                            service = %key,
                            ports = ?sctp,
                            "SCTP ports are not served (the datapath serves TCP and UDP)"
                        );
                    }
                }
                self.metrics.map_writes(report.puts, report.deletes);
                if !report.is_empty() {
                    info!(
                        puts = report.puts,
                        deletes = report.deletes,
                        purged_flows = report.purged_flows,
                        services = report.changed_services.len(),
                        "datapath updated"
                    );
                }
                if applied.remote_changed {
                    neighbours::warm(self.pipeline.remote_backends());
                }
                if !self.ready {
                    self.ready = true;
                    info!(frontends, node_addrs = self.addrs.len(), "datapath ready");
                }
            }
            Err(e) => {
                self.metrics.sync_failed(start.elapsed(), e.map(), e.op());
                error!(error = %e, "writing the datapath maps failed; retrying");
            }
        }
    }

    /// Records, for every EndpointSlice whose trigger time is new since the
    /// last sync (and after the agent started), how long the change took to
    /// reach the maps, as kube-proxy's `network_programming_duration_seconds`.
    fn record_programming_latency(&mut self, slices: &[ObjectKey]) {
        let now = SystemTime::now();
        for key in slices {
            let Some(trigger) = self.pipeline.trigger_time(key) else {
                self.programmed.remove(key);
                continue;
            };
            if self.programmed.get(key) != Some(&trigger)
                && let Ok(t) = k8s_openapi::chrono::DateTime::parse_from_rfc3339(&trigger)
            {
                let t = SystemTime::from(t);
                if t >= self.started
                    && let Ok(latency) = now.duration_since(t)
                {
                    self.metrics.network_programmed(latency);
                }
            }
            self.programmed.insert(key.clone(), trigger);
        }
    }
}

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// The cgroup the socket-LB programs attach to: `--cgroup-root`, else the
/// cgroup v2 root (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid
/// hierarchies); `None` when disabled or there is none.
fn socket_lb_cgroup(args: &RunArgs) -> Option<std::path::PathBuf> {
    if let Some(p) = &args.cgroup_root {
        return (p.as_os_str() != "none").then(|| p.clone());
    }
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| crate::loader::fs_magic(p).is_ok_and(|m| m == CGROUP2_MAGIC))
}

/// Writes the SNAT port pool into the datapath's settings: `--snat-port-range`
/// Turns the datapath's per-service and per-backend counters on or off
/// (`--service-counters`).
fn configure_counters(args: &RunArgs, maps: &mut BpfMaps) -> Result<()> {
    let mut config = maps.config()?;
    if args.service_counters {
        config.flags &= !nodeport_common::CONFIG_F_NO_SERVICE_COUNTERS;
    } else {
        config.flags |= nodeport_common::CONFIG_F_NO_SERVICE_COUNTERS;
    }
    maps.put_config(config)?;
    Ok(())
}

/// or the default around the NodePort and ephemeral ranges, reserved from
/// the host's own ephemeral use (`snat_pool`).
fn configure_snat(args: &RunArgs, maps: &mut BpfMaps) -> Result<()> {
    let ranges = match &args.snat_port_range {
        Some(s) => snat_pool::parse_ranges(s)?,
        None => snat_pool::default_ranges(
            &args.service_node_port_range,
            &snat_pool::host_ephemeral_range(&Sysctls::new(&args.sysctl_dir))?,
        )?,
    };
    snat_pool::check(&ranges, &args.service_node_port_range)?;
    // Keep what an earlier agent recorded as reserved by it.
    let mut config = maps.config().unwrap_or_default();
    config.snat_ranges = ranges;
    config.snat_rest_s = args.snat_port_rest_seconds;
    if config.handoff_token == 0 {
        config.handoff_token = random_token();
    }
    let mut reserve = ranges.to_vec();
    config.bind_protect_netns = 0;
    if args.node_port_bind_protection {
        if socket_lb_cgroup(args).is_none() {
            warn!(
                "nodePorts are not protected from binds on the node: bind protection needs the socket load balancing cgroup (--cgroup-root)"
            );
        } else {
            match own_netns_cookie() {
                Ok(cookie) => {
                    config.bind_protect_netns = cookie;
                    let node_ports = &args.service_node_port_range;
                    reserve.push(PortRange::new(*node_ports.start(), *node_ports.end()));
                }
                Err(e) => warn!(
                    error = %e,
                    "nodePorts are not protected from binds on the node: this kernel does not name network namespaces (SO_NETNS_COOKIE, Linux 5.14)"
                ),
            }
        }
    }
    match snat_pool::reserve(&Sysctls::new(&args.sysctl_dir), &mut config, &reserve) {
        Ok(added) if added > 0 => info!(
            added,
            "reserved the SNAT ports (and the NodePort range, with bind protection) from the host's ephemeral use"
        ),
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "cannot reserve the SNAT ports and the NodePort range (net.ipv4.ip_local_reserved_ports)");
        }
    }
    maps.put_config(config)?;
    let pool = nodeport_common::SnatPool::of(&config);
    info!(
        ranges = ?ranges.iter().filter(|r| !r.is_empty()).map(|r| format!("{}-{}", r.min, r.max)).collect::<Vec<_>>(),
        ports = pool.size(),
        rest_s = config.snat_rest_s,
        "SNAT port pool"
    );
    Ok(())
}

/// The cookie of the agent's network namespace (the node's), which the
/// datapath's bind hook protects.
fn own_netns_cookie() -> std::io::Result<u64> {
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for the 8 bytes the kernel writes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// A random non-zero 32-bit value (from the kernel's random source).
fn random_token() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom fills the 4-byte buffer it is given.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let v = u32::from_ne_bytes(b);
    if n == 4 && v != 0 {
        v
    } else {
        // Never zero, the value of an unwritten entry.
        std::process::id() | 1
    }
}

/// The datapath forwards packets between the node's devices and its pods
/// (and `bpf_fib_lookup` refuses to answer otherwise): make sure IPv4
/// forwarding is on for a device it serves.
fn enable_forwarding(sysctls: &Sysctls, iface: &str) {
    let key = format!("net/ipv4/conf/{iface}/forwarding");
    match sysctls.read(&key) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match sysctls.write(&key, "1") {
            Ok(()) => info!(iface, "enabled IPv4 forwarding"),
            Err(e) => {
                warn!(iface, error = %e, "IPv4 forwarding is off and cannot be enabled; NodePorts to other nodes will fail");
            }
        },
        Err(e) => warn!(iface, error = %e, "cannot read the IPv4 forwarding setting"),
    }
}

/// A flag the run loop reads, set when SIGTERM or SIGINT arrives (tokio's
/// signal handling, on the agent's runtime). The handlers are installed
/// when this returns.
fn stop_on_signals(runtime: &tokio::runtime::Handle) -> Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::terminate()).map_err(|source| RunError::Signal {
                signal: "SIGTERM",
                source,
            })?,
            signal(SignalKind::interrupt()).map_err(|source| RunError::Signal {
                signal: "SIGINT",
                source,
            })?,
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    runtime.spawn(async move {
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal, "stop requested");
        flag.store(true, Ordering::Relaxed);
    });
    Ok(stop)
}
