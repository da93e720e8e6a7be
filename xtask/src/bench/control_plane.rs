//! Control-plane benchmark through the agent's own pipeline, as its loop
//! runs it: manifests → `ManifestsSource::scan_changes` (parse, validate) →
//! `Pipeline` (store, incremental desired state) → the reconciler's writes
//! into freshly created, pinned BPF maps (`maps::bpf::BpfMaps`); then single
//! endpoint changes, each timed from the changed EndpointSlice reaching the
//! pipeline to the last map write, and the agent process's memory.
//!
//! Built into the `bench-control-plane` example (which `cargo xtask bench`
//! runs) and into xtask's tests; it links the agent's library, whose build
//! needs the eBPF toolchain.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use nodeport_agent::loader::{self, Datapath, MapSizes};
use nodeport_agent::maps::{MapWriter as _, bpf::BpfMaps};
use nodeport_agent::pipeline::Pipeline;
use nodeport_agent::reconcile::Reconciler;
use nodeport_agent::source::manifests::ManifestsSource;
use nodeport_agent::store::ObjectKey;

use super::results::{ControlPlaneResults, ControlPlaneRow};
use super::stats;
use super::synthetic::{self, NAMESPACE};

/// The node whose datapath is programmed, and its address.
const NODE: &str = "node1";
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
/// At most this many Services are of type NodePort (nodePorts 30000-49999);
/// the rest are ClusterIP Services.
pub const MAX_NODE_PORTS: usize = 20_000;
/// Capacities the maps are created with: room for 50k Services × 10
/// endpoints (the agent's defaults hold 65,536 frontends and 262,144
/// backends).
fn sizes() -> MapSizes {
    MapSizes {
        frontends: 131_072,
        backend_slots: 1_048_576,
        backends: 524_288,
        ..MapSizes::default()
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Config {
    /// Service counts.
    pub sizes: Vec<usize>,
    pub endpoints_per_service: usize,
    /// Endpoint changes timed at a size of `n` Services (at most; see
    /// `change_budget`).
    pub changes: fn(usize) -> usize,
    /// Changes stop being timed after this long at one size.
    pub change_budget: Duration,
    /// Larger sizes are skipped once a cold apply took longer than this.
    pub apply_budget: Duration,
    /// Where the manifests are written.
    pub work_dir: PathBuf,
}

/// Runs every size.
pub fn run(config: &Config) -> Result<ControlPlaneResults> {
    let sizes = sizes();
    let mut results = ControlPlaneResults {
        rows: Vec::new(),
        capacities: vec![
            ("frontends".into(), sizes.frontends),
            ("backends".into(), sizes.backends),
            ("backend_slots".into(), sizes.backend_slots),
        ],
        skipped: Vec::new(),
    };
    for &n in &config.sizes {
        if let Some(last) = results.rows.last()
            && last.apply_ms > config.apply_budget.as_secs_f64() * 1e3
        {
            let why = format!(
                "not run: the cold apply of {} Services took {:.0} s, over the run's budget of {:.0} s for one apply",
                last.services,
                last.apply_ms / 1e3,
                config.apply_budget.as_secs_f64()
            );
            eprintln!("bench: control plane, {n} Services {why}");
            results.skipped.push((n, why));
            continue;
        }
        eprintln!(
            "bench: control plane, {n} Services × {} endpoints",
            config.endpoints_per_service
        );
        let row = run_size(
            n,
            config.endpoints_per_service,
            (config.changes)(n),
            config.change_budget,
            &config.work_dir,
        )?;
        eprintln!(
            "bench:   parse {:.0} ms, compute {:.1} ms, apply {:.1} ms, one change p50 {:.2} ms p99 {:.2} ms",
            row.parse_ms, row.compute_ms, row.apply_ms, row.change_p50_ms, row.change_p99_ms
        );
        results.rows.push(row);
    }
    Ok(results)
}

/// Pinned maps under a private bpffs directory, removed on drop.
struct PinnedMaps {
    root: PathBuf,
    _datapath: Datapath,
    maps: BpfMaps,
}

impl PinnedMaps {
    fn create() -> Result<Self> {
        nodeport_tests::ensure_bpffs();
        let root = Path::new(nodeport_tests::BPFFS_ROOT)
            .join(format!("np-bench-{}", nodeport_tests::random_hex(4)));
        let datapath = Datapath::load(&root, sizes())
            .with_context(|| format!("creating the maps under {}", root.display()))?;
        let maps = BpfMaps::open(&root).context("opening the pinned maps")?;
        Ok(Self {
            root,
            _datapath: datapath,
            maps,
        })
    }
}

impl Drop for PinnedMaps {
    fn drop(&mut self) {
        if let Err(e) = loader::cleanup(&self.root) {
            eprintln!("bench: removing {}: {e}", self.root.display());
        }
    }
}

/// This process's resident set (the pipeline's objects, desired state and
/// map views, as the agent holds them), `VmRSS` of `/proc/self/status`.
fn resident_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// Live heap of this process (KiB), as the example's counting allocator
/// sees it.
fn live_heap_kib() -> u64 {
    u64::try_from(super::heap::live_bytes() / 1024).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A small deterministic generator (xorshift64*), so every run changes the
/// same endpoints.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        usize::try_from(x % (n as u64)).expect("below n")
    }
}

/// Cold programming of `n` Services and up to `changes` single-endpoint
/// changes (as many as fit in `change_budget`).
#[allow(
    clippy::too_many_lines,
    reason = "one measurement, cold then changes, read top to bottom"
)]
pub fn run_size(
    n: usize,
    endpoints: usize,
    changes_wanted: usize,
    change_budget: Duration,
    work_dir: &Path,
) -> Result<ControlPlaneRow> {
    ensure!(
        n > 0 && endpoints > 0,
        "need at least one Service and endpoint"
    );
    let services = synthetic::control_plane_services(n, endpoints, MAX_NODE_PORTS);
    let dir = work_dir.join(format!("control-plane-{n}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("services.yaml"),
        synthetic::manifests_yaml(&services),
    )
    .context("writing the manifests")?;
    let (lo, hi) = synthetic::node_port_range(&services);

    let t = Instant::now();
    let mut source = ManifestsSource::new(dir.clone(), lo..=hi);
    let changes = source
        .scan_changes()
        .context("reading the manifests")?
        .context("the first scan returns every object")?;
    let parse = t.elapsed();
    if let Some(p) = source.problems().first() {
        bail!("the manifests have problems, e.g. {p:?}");
    }
    ensure!(
        changes.services.len() == n,
        "{} of {n} Services were accepted",
        changes.services.len()
    );

    let mut pinned = PinnedMaps::create()?;
    let mut pipeline = Pipeline::new(
        NODE,
        Reconciler::adopt(pinned.maps.read_state().context("reading the maps")?),
    );
    pipeline.set_node_addrs(&[NODE_ADDR]);

    let t = Instant::now();
    for (key, svc) in &changes.services {
        pipeline.set_service(key, svc.as_deref());
    }
    for (key, slice) in &changes.endpoint_slices {
        pipeline.set_slice(key, slice.as_deref());
    }
    let compute = t.elapsed();
    let t = Instant::now();
    let applied = pipeline.apply(&mut pinned.maps).context("cold apply")?;
    let apply = t.elapsed();
    // Only the report is kept: the slices' keys (for the programming
    // latency) go now, as in the agent's loop.
    let nodeport_agent::pipeline::Applied { report, slices, .. } = applied;
    drop(slices);
    let written = pinned.maps.read_state().context("reading the maps back")?;
    let (frontends, _, _) = pipeline.served();
    ensure!(
        written.frontends.len() == frontends,
        "the maps hold {} frontends, {frontends} wanted",
        written.frontends.len(),
    );
    let (frontends, backends, slots) = (
        written.frontends.len(),
        written.backends.len(),
        written.slots.len(),
    );
    drop(written);
    // What stays allocated, not what the allocator keeps from the cold
    // scan's peak (the agent trims the same way after a large delivery).
    nodeport_agent::memory::release_free();
    let rss_kib = resident_kib()?;
    let heap_kib = live_heap_kib();

    // Single endpoint changes: a new address for one endpoint of a random
    // Service, timed from the changed EndpointSlice reaching the pipeline
    // to the maps written.
    let mut slices = changes.endpoint_slices;
    drop(changes.services);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let mut samples = Vec::with_capacity(changes_wanted);
    let mut writes = Vec::with_capacity(changes_wanted);
    let started = Instant::now();
    for c in 0..changes_wanted {
        if c > 0 && started.elapsed() > change_budget {
            break;
        }
        let svc = rng.below(n);
        let ep = rng.below(endpoints);
        let key = ObjectKey {
            namespace: NAMESPACE.into(),
            name: format!("svc-{svc}-0").into(),
        };
        let slice = slices
            .get_mut(&key)
            .and_then(Option::as_mut)
            .with_context(|| format!("EndpointSlice {key} is missing"))?;
        let fresh = synthetic::offset(Ipv4Addr::new(10, 192, 0, 0), c);
        std::sync::Arc::make_mut(slice).endpoints[ep].addresses = vec![fresh.to_string()];

        let t = Instant::now();
        pipeline.set_slice(&key, Some(slice));
        let report = pipeline
            .apply(&mut pinned.maps)
            .context("applying a change")?
            .report;
        samples.push(t.elapsed());
        ensure!(
            report.puts > 0 && report.deletes > 0,
            "a changed endpoint writes the new backend and deletes the old one ({report:?})"
        );
        writes.push(report.puts + report.deletes);
    }
    // The pipeline alone: what an agent on the Kubernetes source holds (that
    // source keeps only resourceVersions, not the objects).
    drop(slices);
    drop(source);
    nodeport_agent::memory::release_free();
    let pipeline_rss_kib = resident_kib()?;
    let pipeline_heap_kib = live_heap_kib();
    let change_ms = stats::millis(&samples);
    let mut sorted_writes = writes.clone();
    sorted_writes.sort_unstable();

    Ok(ControlPlaneRow {
        services: n,
        endpoints_per_service: endpoints,
        frontends,
        backends,
        rss_kib,
        pipeline_rss_kib,
        heap_kib,
        pipeline_heap_kib,
        slots,
        map_writes: report.puts,
        parse_ms: ms(parse),
        compute_ms: ms(compute),
        apply_ms: ms(apply),
        change_samples: samples.len(),
        change_p50_ms: stats::median(&change_ms).unwrap_or(f64::NAN),
        change_p99_ms: stats::quantile(&change_ms, 0.99).unwrap_or(f64::NAN),
        change_max_ms: stats::quantile(&change_ms, 1.0).unwrap_or(f64::NAN),
        change_writes: sorted_writes
            .get(sorted_writes.len() / 2)
            .copied()
            .unwrap_or(0),
    })
}
