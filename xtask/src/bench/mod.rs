//! `cargo xtask bench`: the datapath's cost per packet (`BPF_PROG_TEST_RUN`),
//! end-to-end traffic on the namespace test cluster beside kube-proxy's
//! iptables and nftables rules, and the control plane's programming time;
//! writes BENCHMARKS.md with tables and SVG plots and prints the tables.
//!
//! `--quick` runs every part at a tiny size (what xtask's tests run, so the
//! harness cannot rot); its figures say the harness works, nothing more.

#[cfg(test)]
mod control_plane;
mod counters;
mod e2e;
#[cfg(test)]
#[allow(
    dead_code,
    reason = "the example's global allocator; the tests compile control_plane.rs, which reads only the count"
)]
mod heap;
mod hold;
mod kube_proxy;
mod machine;
mod program_cost;
mod report;
mod results;
mod snat;
mod stats;
mod svg;
mod synthetic;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nodeport_tests::Veths;

#[cfg(test)]
use crate::toolchain;
use crate::{test, util};

/// Which parts to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Cost per packet of the XDP program (`BPF_PROG_TEST_RUN`).
    Program,
    /// Traffic through the test cluster: nodeport, iptables, nftables, direct.
    E2e,
    /// Programming time and single-change latency of the agent's pipeline.
    ControlPlane,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Every part at a tiny size, in seconds: checks the harness, the
    /// figures mean nothing. Writes under target/bench-quick/.
    #[arg(long)]
    pub quick: bool,
    /// The report to write (default: BENCHMARKS.md at the workspace root;
    /// with --quick, target/bench-quick/BENCHMARKS.md). The plots go to a
    /// `benchmarks/` directory beside it.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Run only these parts (comma-separated); default: all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Part>,
}

/// Sizes and durations of a run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub program: program_cost::Config,
    pub e2e: e2e::Config,
    pub control_sizes: Vec<usize>,
    pub endpoints_per_service: usize,
}

/// The veth variants the end-to-end part runs on, side by side: the
/// kernel's defaults (where native `XDP_TX` does not deliver and the
/// agent's `--xdp-mode auto` is expected to pick generic XDP) and GRO on
/// the LAN side of each node's veth (where native XDP delivers).
const VARIANTS: [Veths; 2] = [Veths::KernelDefaults, Veths::LanGro];

/// The datapaths of the SNAT-path tests: nodeport, kube-proxy's iptables
/// rules as the baseline, and the pod reached directly.
const SNAT_MODES: [e2e::Mode; 3] = [e2e::Mode::Direct, e2e::Mode::Nodeport, e2e::Mode::Iptables];

/// The CPU the program-cost benchmark runs on: the last one.
fn bench_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1
}

fn full_plan() -> Plan {
    Plan {
        program: program_cost::Config {
            sizes: vec![1, 1_000, 10_000, 100_000],
            repeat: 1_000_000,
            runs: 5,
            calls: 20_000,
            cpu: bench_cpu(),
            counter_pairs: 21,
        },
        e2e: e2e::Config {
            sizes: vec![1, 1_000, 10_000],
            variants: VARIANTS.to_vec(),
            modes: e2e::Mode::ALL.to_vec(),
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(1),
            windows: 3,
            conn_threads: 4,
            latency_samples: 1_000,
            rtt_connections: 4,
            rtt_samples: 2_000,
            udp_threads: 2,
            iperf_seconds: 3,
            snat: Some(snat::Config {
                modes: SNAT_MODES.to_vec(),
                max_flows: 25_000,
                target_flows: 20_000,
                open_budget: Duration::from_mins(3),
                paced_rate: 300.0,
                paced_workers: 16,
                paced_window: Duration::from_secs(5),
                paced_windows: 4,
            }),
        },
        control_sizes: vec![1_000, 10_000, 50_000],
        endpoints_per_service: 10,
    }
}

/// The end-to-end part of a quick run (also what its test runs).
pub(crate) fn quick_e2e_config() -> e2e::Config {
    e2e::Config {
        sizes: vec![1],
        variants: VARIANTS.to_vec(),
        modes: e2e::Mode::ALL.to_vec(),
        warmup: Duration::from_millis(100),
        window: Duration::from_millis(300),
        windows: 2,
        conn_threads: 2,
        latency_samples: 50,
        rtt_connections: 2,
        rtt_samples: 50,
        udp_threads: 2,
        iperf_seconds: 1,
        snat: Some(snat::Config {
            modes: SNAT_MODES.to_vec(),
            max_flows: 300,
            target_flows: 200,
            open_budget: Duration::from_secs(30),
            paced_rate: 300.0,
            paced_workers: 8,
            paced_window: Duration::from_millis(300),
            paced_windows: 2,
        }),
    }
}

fn quick_plan() -> Plan {
    Plan {
        program: program_cost::Config {
            sizes: vec![1],
            repeat: 10_000,
            runs: 3,
            calls: 200,
            cpu: bench_cpu(),
            counter_pairs: 3,
        },
        e2e: quick_e2e_config(),
        control_sizes: vec![20],
        endpoints_per_service: 10,
    }
}

/// Builds what the benchmarks run (release): the eBPF object, the agent, the
/// harness binaries and the control-plane example. Returns the object.
fn prepare() -> Result<Vec<u8>> {
    let object = test::prepare("bench", test::Profile::Release)?;
    eprintln!("bench: building the control-plane benchmark (release)");
    util::run(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "xtask",
        "--example",
        "bench-control-plane",
    ]))?;
    std::fs::read(&object).with_context(|| format!("reading {}", object.display()))
}

/// Runs the control-plane example and reads its figures.
fn control_plane(plan: &Plan, quick: bool) -> Result<results::ControlPlaneResults> {
    let bin = util::target_dir()
        .join("release")
        .join("examples")
        .join("bench-control-plane");
    let work =
        std::env::temp_dir().join(format!("nodeport-bench-{}", nodeport_tests::random_hex(4)));
    let sizes: Vec<String> = plan.control_sizes.iter().map(usize::to_string).collect();
    let mut cmd = Command::new(&bin);
    cmd.arg("--sizes")
        .arg(sizes.join(","))
        .arg("--endpoints")
        .arg(plan.endpoints_per_service.to_string())
        .arg("--work-dir")
        .arg(&work)
        .stderr(Stdio::inherit());
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", bin.display()));
    let _ = std::fs::remove_dir_all(&work);
    let out = out?;
    if !out.status.success() {
        bail!("{} failed with {}", bin.display(), out.status);
    }
    serde_json::from_slice(&out.stdout).context("reading the control-plane figures")
}

fn default_output(quick: bool) -> PathBuf {
    if quick {
        util::target_dir().join("bench-quick").join("BENCHMARKS.md")
    } else {
        util::workspace_root().join("BENCHMARKS.md")
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    let object = prepare()?;
    let plan = if args.quick {
        quick_plan()
    } else {
        full_plan()
    };
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let machine = machine::describe();
    let mut loads = Vec::new();

    let program = if wants(Part::Program) {
        loads.push(("program cost", machine::load_average()));
        eprintln!("bench: program cost through BPF_PROG_TEST_RUN");
        Some(program_cost::run(&object, &plan.program)?)
    } else {
        None
    };
    let control = if wants(Part::ControlPlane) {
        loads.push(("control plane", machine::load_average()));
        Some(control_plane(&plan, args.quick)?)
    } else {
        None
    };
    let e2e = if wants(Part::E2e) {
        loads.push(("end to end", machine::load_average()));
        Some(e2e::run(&plan.e2e)?)
    } else {
        None
    };
    loads.push(("end", machine::load_average()));
    let report = report::Report {
        machine,
        program,
        control,
        e2e,
        quick: args.quick,
        duration: started.elapsed(),
        loads,
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(args.quick));
    write(&report, &output)?;
    println!("{}", report::tables(&report));
    eprintln!(
        "bench: wrote {} (in {:.0} s)",
        output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes the report and its plots (into `benchmarks/` beside it).
fn write(report: &report::Report, output: &Path) -> Result<()> {
    let dir = output.parent().unwrap_or_else(|| Path::new("."));
    let plots = dir.join("benchmarks");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    for (name, svg) in report::plots(report) {
        let path = plots.join(&name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::write(output, report::markdown(report))
        .with_context(|| format!("writing {}", output.display()))
}

/// Tests that load BPF programs or build namespaces need root: fail loudly
/// rather than skip.
#[cfg(test)]
pub(crate) fn require_root_for_tests() {
    assert!(
        toolchain::is_root(),
        "the benchmark harness tests load BPF programs and build network namespaces: run them as root, e.g. `cargo xtask test`"
    );
}

/// The datapath object, as the agent embeds it.
#[cfg(test)]
pub(crate) fn object_for_tests() -> Vec<u8> {
    nodeport_agent::loader::object().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run of the control plane through the agent's whole pipeline:
    /// the entries it wrote (counts, exact) and finite figures; nothing
    /// that depends on the machine's speed or load. (Here rather than in
    /// `control_plane.rs`, which the example compiles too.)
    #[test]
    fn quick_control_plane_run_gives_sane_figures() {
        require_root_for_tests();
        let work = std::env::temp_dir().join(format!(
            "nodeport-bench-test-{}",
            nodeport_tests::random_hex(4)
        ));
        let results = control_plane::run(&control_plane::Config {
            sizes: vec![5],
            endpoints_per_service: 3,
            changes: |_| 5,
            change_budget: Duration::from_secs(5),
            apply_budget: Duration::from_secs(30),
            work_dir: work.clone(),
        });
        let _ = std::fs::remove_dir_all(&work);
        let results = results.expect("control-plane run");
        let row = &results.rows[0];
        assert_eq!(row.services, 5);
        // A ClusterIP and a NodePort frontend per Service.
        assert_eq!(row.frontends, 10);
        assert_eq!(row.backends, 15);
        assert_eq!(row.slots, 30);
        // As many changes as fit in the time budget: at least the first.
        assert!((1..=5).contains(&row.change_samples), "{row:?}");
        for v in [
            row.parse_ms,
            row.compute_ms,
            row.apply_ms,
            row.change_p50_ms,
            row.change_p99_ms,
        ] {
            assert!(v.is_finite() && v >= 0.0, "{row:?}");
        }
        // Order statistics of the same samples.
        assert!(row.change_p50_ms <= row.change_p99_ms);
        assert!(row.change_writes >= 2);
    }

    #[test]
    fn quick_plan_is_small() {
        let p = quick_plan();
        assert_eq!(p.program.sizes, vec![1]);
        assert!(p.program.repeat <= 10_000);
        assert_eq!(p.e2e.sizes, vec![1]);
        let quick_snat = p.e2e.snat.as_ref().expect("quick SNAT tests");
        assert!(quick_snat.max_flows <= 1_000);
        let f = full_plan();
        let snat = f.e2e.snat.as_ref().expect("SNAT tests");
        assert_eq!((snat.max_flows, snat.target_flows), (25_000, 20_000));
        assert_eq!(f.e2e.variants, VARIANTS.to_vec());
        assert!(f.program.repeat >= 1_000_000 && f.program.runs >= 5);
        assert_eq!(f.program.sizes, vec![1, 1_000, 10_000, 100_000]);
    }
}
