//! BENCHMARKS.md: the goals with the measured figures, the tables, the
//! plots and how each figure was taken.

use std::fmt::Write as _;
use std::time::Duration;

use super::e2e::{E2e, Mode};
use super::machine::Machine;
use super::program_cost;
use super::program_cost::{Case, ProgramCost};
use super::results::ControlPlaneResults;
use super::svg::{self, BarChart, Series};

/// Everything one run measured.
pub struct Report {
    pub machine: Machine,
    pub program: Option<ProgramCost>,
    pub control: Option<ControlPlaneResults>,
    pub e2e: Option<E2e>,
    pub quick: bool,
    pub duration: Duration,
    /// `(moment, 1-minute load average)`.
    pub loads: Vec<(&'static str, f64)>,
}

/// A goal the figures are read against.
pub struct Goal {
    pub name: &'static str,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

/// `1 Service`, `1k Services`.
#[must_use]
pub fn services_label(n: usize) -> String {
    if n == 1 {
        "1 Service".into()
    } else {
        format!("{} Services", size_label(n))
    }
}

/// `1`, `1k`, `10k`, `100k`.
#[must_use]
pub fn size_label(n: usize) -> String {
    if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "rounded display of a non-negative figure"
    )]
    let n = v.round().max(0.0) as u64;
    int(n)
}

/// An integer with thousands separators.
fn int(n: impl TryInto<u64>) -> String {
    let s = n
        .try_into()
        .map_or_else(|_| "?".to_string(), |n| n.to_string());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn f1(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1_000.0 {
        thousands(v)
    } else if v.is_finite() {
        format!("{v:.1}")
    } else {
        "–".into()
    }
}

fn f2(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1_000.0 {
        thousands(v)
    } else if v.is_finite() {
        format!("{v:.2}")
    } else {
        "–".into()
    }
}

fn mib(kib: u64) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "memory sizes far below 2^52")]
    let v = kib as f64 / 1024.0;
    v
}

/// The goals, each with its measured figure.
#[must_use]
#[allow(clippy::too_many_lines, reason = "one goal after the other")]
pub fn goals(r: &Report) -> Vec<Goal> {
    let mut out = Vec::new();
    let pc = r.program.as_ref();
    for (case, name) in [
        (
            Case::EstablishedLocal,
            "Established flow (local backend) ≤ 3× the trivial XDP_PASS program",
        ),
        (
            Case::EstablishedRemote,
            "Established flow (remote backend) ≤ 3× the trivial XDP_PASS program",
        ),
    ] {
        let worst = pc.and_then(|pc| {
            pc.cells
                .iter()
                .filter(|c| c.case == case)
                .map(|c| (c.ratio, c.services))
                .max_by(|a, b| a.0.total_cmp(&b.0))
        });
        out.push(match worst {
            Some((ratio, n)) => Goal {
                name,
                measured: format!("{ratio:.1}× (worst size: {})", services_label(n)),
                met: Some(ratio <= 3.0),
            },
            None => Goal {
                name,
                measured: "not measured".into(),
                met: None,
            },
        });
    }
    let flat = pc.and_then(|pc| {
        let lo = *pc.config.sizes.iter().min()?;
        let hi = *pc.config.sizes.iter().max()?;
        (lo == 1 && hi >= 100_000).then_some(())?;
        Case::ALL
            .iter()
            .filter_map(|&case| {
                let a = pc.cell(case, lo)?.ns;
                let b = pc.cell(case, hi)?.ns;
                Some((case, b / a - 1.0))
            })
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(case, d)| (case, d, hi))
    });
    out.push(match flat {
        Some((case, d, hi)) => Goal {
            name: "Cost flat within 10% from 1 to 100k Services",
            measured: format!(
                "largest change 1 → {}: {:+.1}% ({})",
                size_label(hi),
                d * 100.0,
                case.label()
            ),
            met: Some(d.abs() <= 0.10),
        },
        None => Goal {
            name: "Cost flat within 10% from 1 to 100k Services",
            measured: "not measured (needs 1 and 100k Services)".into(),
            met: None,
        },
    });
    let e2e = r.e2e.as_ref();
    for (n, factor, name) in [
        (
            1,
            1.0,
            "New-connection rate ≥ kube-proxy iptables mode at 1 Service",
        ),
        (
            10_000,
            2.0,
            "New-connection rate ≥ 2× kube-proxy iptables mode at 10k Services",
        ),
    ] {
        let ratio = e2e.and_then(|e| {
            let np = e.row(Mode::Nodeport, n)?.conn_per_s;
            let ipt = e.row(Mode::Iptables, n)?.conn_per_s;
            Some((np, ipt))
        });
        out.push(match ratio {
            Some((np, ipt)) => Goal {
                name,
                measured: format!(
                    "{} vs {} conn/s: {:.2}×",
                    thousands(np),
                    thousands(ipt),
                    np / ipt
                ),
                met: Some(np >= factor * ipt),
            },
            None => Goal {
                name,
                measured: "not measured".into(),
                met: None,
            },
        });
    }
    let cp10k = r
        .control
        .as_ref()
        .and_then(|c| c.rows.iter().find(|row| row.services == 10_000));
    out.push(match cp10k {
        Some(row) => Goal {
            name: "10k Services × 10 endpoints programmed in < 2 s",
            measured: format!(
                "{:.0} ms (compute {:.0} ms + apply {:.0} ms, {} map writes)",
                row.cold_ms(),
                row.compute_ms,
                row.apply_ms,
                int(row.map_writes)
            ),
            met: Some(row.cold_ms() < 2_000.0),
        },
        None => Goal {
            name: "10k Services × 10 endpoints programmed in < 2 s",
            measured: "not measured".into(),
            met: None,
        },
    });
    out.push(match cp10k {
        Some(row) => Goal {
            name: "One endpoint change written in < 10 ms at p99 (10k Services)",
            measured: format!(
                "p99 {:.2} ms, p50 {:.2} ms ({} changes)",
                row.change_p99_ms, row.change_p50_ms, row.change_samples
            ),
            met: Some(row.change_p99_ms < 10.0),
        },
        None => Goal {
            name: "One endpoint change written in < 10 ms at p99 (10k Services)",
            measured: "not measured".into(),
            met: None,
        },
    });
    let agent = e2e.and_then(|e| e.agents.iter().find(|a| a.services == 10_000));
    out.push(match agent {
        Some(a) => Goal {
            name: "Agent RSS < 100 MiB at 10k Services",
            measured: format!("{:.1} MiB (peak {:.1} MiB)", mib(a.rss_kib), mib(a.hwm_kib)),
            met: Some(mib(a.rss_kib) < 100.0),
        },
        None => Goal {
            name: "Agent RSS < 100 MiB at 10k Services",
            measured: "not measured".into(),
            met: None,
        },
    });
    out
}

fn goals_table(r: &Report) -> String {
    let mut s = String::from("| goal | measured | |\n|---|---|---|\n");
    for g in goals(r) {
        let met = match g.met {
            Some(true) => "**met**",
            Some(false) => "**not met**",
            None => "n/a",
        };
        let _ = writeln!(s, "| {} | {} | {met} |", g.name, g.measured);
    }
    s
}

fn program_table(pc: &ProgramCost) -> String {
    let mut sizes = pc.config.sizes.clone();
    sizes.sort_unstable();
    let mut s = String::from("| packet |");
    for &n in &sizes {
        let _ = write!(s, " {} |", services_label(n));
    }
    s.push_str(" method |\n|---|");
    for _ in &sizes {
        s.push_str("---:|");
    }
    s.push_str("---|\n| trivial XDP_PASS program |");
    for &n in &sizes {
        let b = pc.baselines.iter().find(|b| b.services == n);
        let _ = write!(
            s,
            " {} ns |",
            b.map_or_else(|| "–".into(), |b| f1(b.repeat_ns))
        );
    }
    s.push_str(" repeat |\n");
    for case in Case::ALL {
        let _ = write!(s, "| {} |", case.label());
        for &n in &sizes {
            match pc.cell(case, n) {
                Some(c) => {
                    let _ = write!(s, " {} ns ({:.1}×) |", f1(c.ns), c.ratio);
                }
                None => s.push_str(" – |"),
            }
        }
        let method = if pc
            .cells
            .iter()
            .any(|c| c.case == case && c.repeat_ns.is_some())
        {
            "repeat"
        } else {
            "single"
        };
        let _ = writeln!(s, " {method} |");
    }
    s
}

fn cross_check_table(pc: &ProgramCost) -> String {
    let mut s = String::from(
        "| packet | Services | repeat method | single-call estimate | difference |\n|---|---:|---:|---:|---:|\n",
    );
    for c in pc.cells.iter().filter(|c| c.repeat_ns.is_some()) {
        let Some(base) = pc.baselines.iter().find(|b| b.services == c.services) else {
            continue;
        };
        let repeat = c.repeat_ns.unwrap_or(f64::NAN);
        let estimate = c.single_ns - base.single_ns + base.repeat_ns;
        let _ = writeln!(
            s,
            "| {} | {} | {} ns | {} ns | {:+.0}% |",
            c.case.label(),
            size_label(c.services),
            f1(repeat),
            f1(estimate),
            (estimate / repeat - 1.0) * 100.0
        );
    }
    s
}

fn raw_single_table(pc: &ProgramCost) -> String {
    let mut sizes = pc.config.sizes.clone();
    sizes.sort_unstable();
    let mut s = String::from("| packet |");
    for &n in &sizes {
        let _ = write!(s, " {} |", size_label(n));
    }
    s.push_str("\n|---|");
    for _ in &sizes {
        s.push_str("---:|");
    }
    s.push_str("\n| trivial XDP_PASS program |");
    for &n in &sizes {
        let b = pc.baselines.iter().find(|b| b.services == n);
        let _ = write!(
            s,
            " {} |",
            b.map_or_else(|| "–".into(), |b| f1(b.single_ns))
        );
    }
    s.push('\n');
    for case in Case::ALL {
        let _ = write!(s, "| {} |", case.label());
        for &n in &sizes {
            let _ = write!(
                s,
                " {} |",
                pc.cell(case, n)
                    .map_or_else(|| "–".into(), |c| f1(c.single_ns))
            );
        }
        s.push('\n');
    }
    s
}

fn e2e_table(e: &E2e) -> String {
    let mut s = String::from(
        "| Services | datapath | new conn/s | vs iptables | request p50 | request p99 | new conn/s, server closes first (SYNs refused by TIME_WAIT) | RTT p50 | RTT p99 | TCP Gbit/s | UDP pps received (sent) | requests (failed) |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &n in &e.config.sizes {
        for &mode in &e.config.modes {
            let Some(row) = e.row(mode, n) else { continue };
            let vs = e.row(Mode::Iptables, n).map_or_else(
                || "–".into(),
                |i| format!("{:.2}×", row.conn_per_s / i.conn_per_s),
            );
            let _ = writeln!(
                s,
                "| {} | {} | {} | {vs} | {} µs | {} µs | {} ({}) | {} µs | {} µs | {} | {} ({}) | {} ({}) |",
                size_label(n),
                mode.label(),
                thousands(row.conn_per_s),
                thousands(row.latency_p50_us),
                thousands(row.latency_p99_us),
                thousands(row.conn_server_close_per_s),
                int(row.paws_rejects),
                thousands(row.rtt_p50_us),
                thousands(row.rtt_p99_us),
                f2(row.throughput_gbit),
                thousands(row.udp_received_pps),
                thousands(row.udp_sent_pps),
                int(row.conn_ok),
                row.conn_errors + row.latency_errors + row.conn_server_close_errors
            );
        }
    }
    s
}

fn programming_table(e: &E2e) -> String {
    let mut s = String::from(
        "| Services | nodeport agent: start → datapath ready | `iptables-restore` | `nft -f` |\n|---:|---:|---:|---:|\n",
    );
    for &n in &e.config.sizes {
        let get = |m: Mode| {
            e.row(m, n)
                .and_then(|r| r.programming_ms)
                .map_or_else(|| "–".into(), |v| format!("{} ms", thousands(v)))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            size_label(n),
            get(Mode::Nodeport),
            get(Mode::Iptables),
            get(Mode::Nftables)
        );
    }
    s
}

fn agent_table(e: &E2e) -> String {
    let mut s = String::from(
        "| Services | start → ready | VmRSS | VmHWM (peak) | BPF maps (memlock) | maps per Service | drop counters after the traffic |\n|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for a in &e.agents {
        #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        let per = a.map_bytes as f64 / a.services as f64;
        let drops = if a.drops.is_empty() {
            "none".to_string()
        } else {
            a.drops
                .iter()
                .map(|(n, v)| format!("{n} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        let maps_mib = a.map_bytes as f64 / 1024.0 / 1024.0;
        let _ = writeln!(
            s,
            "| {} | {} ms | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} KiB | {drops} |",
            size_label(a.services),
            thousands(a.ready_ms),
            mib(a.rss_kib),
            mib(a.hwm_kib),
            maps_mib,
            thousands(per / 1024.0)
        );
    }
    s
}

fn per_write_us(r: &super::results::ControlPlaneRow) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "write counts far below 2^52")]
    let writes = r.map_writes.max(1) as f64;
    r.apply_ms * 1e3 / writes
}

fn control_table(c: &ControlPlaneResults) -> String {
    let mut s = String::from(
        "| Services × endpoints | frontends / backends / slots | parse + validate manifests | compute | apply (map writes, µs per write) | cold total (compute + apply) | one change p50 | p99 | max (changes timed) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &c.rows {
        let _ = writeln!(
            s,
            "| {} × {} | {} / {} / {} | {} ms | {} ms | {} ms ({}, {} µs) | **{} ms** | {} ms | **{} ms** | {} ms ({}) |",
            size_label(r.services),
            r.endpoints_per_service,
            int(r.frontends),
            int(r.backends),
            int(r.slots),
            thousands(r.parse_ms),
            f1(r.compute_ms),
            f1(r.apply_ms),
            int(r.map_writes),
            f1(per_write_us(r)),
            thousands(r.cold_ms()),
            f2(r.change_p50_ms),
            f2(r.change_p99_ms),
            f2(r.change_max_ms),
            r.change_samples
        );
    }
    for (n, why) in &c.skipped {
        let _ = writeln!(s, "| {} × – | {why} | | | | | | | |", size_label(*n));
    }
    s
}

/// The tables, as printed at the end of a run.
#[must_use]
pub fn tables(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Goals\n\n{}", goals_table(r));
    if let Some(pc) = &r.program {
        let _ = writeln!(
            s,
            "Program cost per packet (BPF_PROG_TEST_RUN)\n\n{}",
            program_table(pc)
        );
    }
    if let Some(e) = &r.e2e {
        let _ = writeln!(s, "End to end through node1:nodePort\n\n{}", e2e_table(e));
        let _ = writeln!(
            s,
            "Programming the Services on a node\n\n{}",
            programming_table(e)
        );
        let _ = writeln!(s, "Agent memory\n\n{}", agent_table(e));
    }
    if let Some(c) = &r.control {
        let _ = writeln!(s, "Control plane\n\n{}", control_table(c));
    }
    s
}

/// The SVG plots, by file name.
#[must_use]
#[allow(clippy::too_many_lines, reason = "one plot after the other")]
pub fn plots(r: &Report) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(pc) = &r.program {
        let mut sizes = pc.config.sizes.clone();
        sizes.sort_unstable();
        let mut groups = vec!["trivial XDP_PASS".to_string()];
        groups.extend(Case::ALL.iter().map(|c| c.short().to_string()));
        let series = sizes
            .iter()
            .map(|&n| {
                let mut values = vec![
                    pc.baselines
                        .iter()
                        .find(|b| b.services == n)
                        .map(|b| b.repeat_ns),
                ];
                values.extend(Case::ALL.iter().map(|&c| pc.cell(c, n).map(|c| c.ns)));
                Series {
                    name: services_label(n),
                    values,
                }
            })
            .collect();
        out.push((
            "program-cost.svg".into(),
            svg::bar_chart(&BarChart {
                title: "XDP program cost per packet (BPF_PROG_TEST_RUN, one CPU)".into(),
                y_label: "ns per packet".into(),
                groups,
                series,
            }),
        ));
    }
    if let Some(e) = &r.e2e {
        let groups: Vec<String> = e.config.sizes.iter().map(|&n| services_label(n)).collect();
        let by_mode = |f: &dyn Fn(&super::e2e::Row) -> f64| -> Vec<Series> {
            e.config
                .modes
                .iter()
                .map(|&m| Series {
                    name: m.label().into(),
                    values: e.config.sizes.iter().map(|&n| e.row(m, n).map(f)).collect(),
                })
                .collect()
        };
        for (file, title, y, f) in [
            (
                "e2e-connections.svg",
                "New TCP connections per second through node1:nodePort",
                "connections / s",
                (&|r: &super::e2e::Row| r.conn_per_s) as &dyn Fn(&super::e2e::Row) -> f64,
            ),
            (
                "e2e-connections-server-close.svg",
                "New TCP connections per second, the server closing first (TIME_WAIT in the pods)",
                "connections / s",
                &|r: &super::e2e::Row| r.conn_server_close_per_s,
            ),
            (
                "e2e-latency-p99.svg",
                "Request latency p99 (new connection, 64 B request and response, reset)",
                "µs",
                &|r: &super::e2e::Row| r.latency_p99_us,
            ),
            (
                "e2e-throughput.svg",
                "TCP throughput (iperf3, one stream)",
                "Gbit/s",
                &|r: &super::e2e::Row| r.throughput_gbit,
            ),
            (
                "e2e-udp.svg",
                "UDP datagrams received per second (64 B)",
                "datagrams / s",
                &|r: &super::e2e::Row| r.udp_received_pps,
            ),
        ] {
            out.push((
                file.into(),
                svg::bar_chart(&BarChart {
                    title: title.into(),
                    y_label: y.into(),
                    groups: groups.clone(),
                    series: by_mode(f),
                }),
            ));
        }
        let prog_modes = [Mode::Nodeport, Mode::Iptables, Mode::Nftables];
        out.push((
            "programming.svg".into(),
            svg::bar_chart(&BarChart {
                title: "Programming the Services on a node".into(),
                y_label: "ms".into(),
                groups,
                series: prog_modes
                    .iter()
                    .map(|&m| Series {
                        name: match m {
                            Mode::Nodeport => "nodeport agent start → ready".into(),
                            Mode::Iptables => "iptables-restore".into(),
                            _ => "nft -f".into(),
                        },
                        values: e
                            .config
                            .sizes
                            .iter()
                            .map(|&n| e.row(m, n).and_then(|r| r.programming_ms))
                            .collect(),
                    })
                    .collect(),
            }),
        ));
    }
    if let Some(c) = &r.control {
        let groups: Vec<String> = c
            .rows
            .iter()
            .map(|r| format!("{} × {}", size_label(r.services), r.endpoints_per_service))
            .collect();
        let series = |name: &str, f: &dyn Fn(&super::results::ControlPlaneRow) -> f64| Series {
            name: name.into(),
            values: c.rows.iter().map(|r| Some(f(r))).collect(),
        };
        out.push((
            "control-plane-cold.svg".into(),
            svg::bar_chart(&BarChart {
                title: "Cold programming through the agent's pipeline".into(),
                y_label: "ms".into(),
                groups: groups.clone(),
                series: vec![
                    series("parse + validate manifests", &|r| r.parse_ms),
                    series("compute", &|r| r.compute_ms),
                    series("apply (map writes)", &|r| r.apply_ms),
                    series("compute + apply", &|r| r.cold_ms()),
                ],
            }),
        ));
        out.push((
            "control-plane-change.svg".into(),
            svg::bar_chart(&BarChart {
                title: "One endpoint change → maps written".into(),
                y_label: "ms".into(),
                groups,
                series: vec![
                    series("p50", &|r| r.change_p50_ms),
                    series("p99", &|r| r.change_p99_ms),
                ],
            }),
        ));
    }
    out
}

fn machine_section(r: &Report) -> String {
    let m = &r.machine;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- CPU: {} — {} logical CPUs; memory {:.0} GiB\n- Kernel: {}; {}\n- Code: commit {}\n- Run: {}, `cargo xtask bench{}`, {:.0} s in all\n- Load average (1 min) when each part started and at the end: {} — the machine is shared, other processes run beside the benchmark",
        m.cpu_model,
        m.cpus,
        m.memory_gib,
        m.kernel,
        m.os,
        m.commit,
        m.date,
        if r.quick { " --quick" } else { "" },
        r.duration.as_secs_f64(),
        r.loads
            .iter()
            .map(|(what, l)| format!("{what} {l:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (tool, version) in &m.tools {
        let _ = writeln!(s, "- `{tool}`: {version}");
    }
    s
}

fn program_method(pc: &ProgramCost) -> String {
    let c = &pc.config;
    format!(
        "How these are taken (`xtask/src/bench/program_cost.rs`): the datapath object is loaded \
with its maps private to the run, in a network namespace of its own (a veth `np0` with the node \
address 10.200.0.11, neighbours and a route to the other node's pod CIDR, so `bpf_fib_lookup` \
answers as on a node), on one thread pinned to CPU {cpu}. The maps are filled directly: every \
Service is a ClusterIP frontend with {per} backends of its own; the measured Services are \
NodePorts with {per} backends (local pods, or pods on the other node). The trivial program is \
the object's `nodeport_xdp_pass`, timed in the same runs the same way.

- **repeat** — one `BPF_PROG_TEST_RUN` call with {repeat} repetitions; per packet = the \
kernel's reported average (whole nanoseconds, rounded down; the call's wall time is no measure, \
as it includes the kernel swapping the XDP dispatcher's program around the timed loop, which \
waits for RCU grace periods). Used only where the \
program leaves the packet on the same path when it sees its own output again, because the \
kernel runs every repetition on the same buffer: the trivial program, a packet that is no \
Service's, and an established flow to a local backend whose address is the node's own \
NodePort (its DNAT rewrites the packet to itself: the same lookups and rewrite as for any \
local pod). A DNAT to another address, an SNAT, a TTL decrement would send the second \
repetition down another path.
- **single** — {calls} calls with one repetition each; the median of the kernel-reported \
durations. Every case is also timed this way; new flows get their conntrack and reverse-NAT \
entries deleted after each call (outside the timed run), so each call is a new flow on an \
otherwise quiet table. A single-call duration includes the kernel's timer overhead, which \
the trivial program timed the same way has too: the cost shown is single(case) − \
single(trivial) + repeat(trivial). The table below checks that estimate against the repeat \
figure where both exist.
- Each figure is the median of {runs} runs. Every call's verdict is checked, and so are the \
program's own per-path counters: a figure is the cost of the path it is named after.
- Every call sends one of a few flows, so their map entries stay in the CPU's caches: a flat \
cost across Service counts says the lookups do not slow down as the maps fill, not how the \
program fares when many flows compete for the caches.",
        cpu = c.cpu,
        per = program_cost::BACKENDS_PER_SERVICE,
        repeat = thousands(f64::from(c.repeat)),
        calls = int(c.calls),
        runs = c.runs,
    )
}

/// The whole BENCHMARKS.md.
#[must_use]
#[allow(clippy::too_many_lines, reason = "one document, section by section")]
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    if r.quick {
        s.push_str("> **Quick run**: every benchmark at a tiny size, to check the harness. These figures say nothing about performance.\n\n");
    }
    s.push_str(
        "Written by `cargo xtask bench` (as root; it installs what it needs, builds everything in \
release mode, runs for several minutes and rewrites this file and the plots in `benchmarks/`). \
Every figure below comes from that one run on the machine described here. These machines are \
shared and small, so figures are medians and comparisons are ratios taken in the same run; \
expect some noise between runs.\n\n## Machine\n\n",
    );
    s.push_str(&machine_section(r));
    let _ = write!(
        s,
        "\n## Goals\n\nThe targets the figures are read against (reported here, never asserted by the tests).\n\n{}",
        goals_table(r)
    );

    if let Some(pc) = &r.program {
        let _ = write!(
            s,
            "\n## 1. Datapath cost per packet\n\nThe XDP program through `BPF_PROG_TEST_RUN`, in ns per packet and as a multiple of the trivial `XDP_PASS` program measured in the same run.\n\n{}\n![XDP program cost per packet](benchmarks/program-cost.svg)\n\n{}\n\nCross-check of the single-call estimate:\n\n{}\nRaw single-call medians (ns, timer overhead included):\n\n{}\n",
            program_table(pc),
            program_method(pc),
            cross_check_table(pc),
            raw_single_table(pc)
        );
        let span = usize::from(nodeport_common::SNAT_PORT_MAX - nodeport_common::SNAT_PORT_MIN) + 1;
        let _ = writeln!(
            s,
            "**SNAT ports.** New TCP flows from distinct clients to a Service with one remote backend, sent back to back (every earlier flow still open): {} got an SNAT port before the first was dropped for want of one (`drop_snat_exhausted`); the SNAT range holds {} ports per node address and backend. The end-to-end client below therefore uses 3,000 source ports per datapath (see there).",
            int(pc.snat_ports_per_backend),
            int(span)
        );
    }

    if let Some(e) = &r.e2e {
        let c = &e.config;
        let _ = write!(
            s,
            "\n## 2. End to end\n\nTraffic from the client namespace to `node1:nodePort` on the namespace test cluster (two nodes, one pod each, a client; veth pairs on a bridge, TX checksum offload off as the test cluster runs them; `xtask/src/bench/e2e.rs`). The same Services are programmed on both nodes by the nodeport agent, by kube-proxy's iptables rules (`iptables-restore`) and by its nftables rules (`nft -f`); \"direct\" sends to the pods' own addresses, routed through node 1, with no Service in the way. The measured Service sits in the middle of the others (kube-proxy lists Services in no particular order).\n\n{}\n![New connections per second](benchmarks/e2e-connections.svg)\n![New connections per second, the server closing first](benchmarks/e2e-connections-server-close.svg)\n![Request latency p99](benchmarks/e2e-latency-p99.svg)\n![TCP throughput](benchmarks/e2e-throughput.svg)\n![UDP datagrams per second](benchmarks/e2e-udp.svg)\n\n",
            e2e_table(e)
        );
        let _ = write!(
            s,
            "How these are taken: the servers and clients are threads of the benchmark (`xtask/src/bench/traffic.rs`), the servers' sockets made inside the pods' namespaces, the clients' inside the client's.\n\n\
- **new conn/s** — {threads} client threads, each connecting, sending 64 B, reading the 64 B answer and resetting the connection (`SO_LINGER` 0), in a loop; {warm} s warm-up, then the median of {windows} windows of {window} s. The Service's two endpoints (one local to node 1, one on node 2) share the load as the datapath picks them; \"direct\" alternates between the two pods. With a reset no side keeps TIME_WAIT state, so the figure is the datapath's.\n\
- **request p50/p99** — {lat} such requests one after the other from one thread.\n\
- **new conn/s, server closes first** — the same, but the server closes first and the pod keeps the TIME_WAIT state, as an HTTP server closing its side does (run after the other TCP tests, on another server port). Where a node rewrites the source address and port (kube-proxy masquerades NodePort traffic to random ports; nodeport SNATs flows to the remote backend), new connections can meet the pod's TIME_WAIT sockets of earlier connections under the same addresses and ports; the pod refuses those SYNs whose timestamps are older (counted in brackets: `TcpExtPAWSTimewait` of both pods during this test) and the client retries about 10 ms later, so the rate falls the longer the test runs. This column shows that effect more than the datapath's cost.\n\
- **RTT p50/p99** — 64 B round trips on {rttc} established connections to an echo server ({rtt} in all).\n\
- **TCP Gbit/s** — `iperf3 -c` for {iperf} s after one omitted second, to the pod on node 2 (the Service's iperf port has that one endpoint).\n\
- **UDP pps** — {udp} senders (one socket and flow each) sending 64 B datagrams as fast as they can; datagrams received by the pods' sinks per second, median of {windows} windows (sent in brackets).\n\
- The client uses 3,000 source ports per datapath (40000-42999 direct, 43000-45999 nodeport, 46000-48999 iptables, 49000-51999 nftables) and reuses them, so that nodeport's SNAT ports for the remote backend (see the SNAT note above) do not run out during a run; separate ranges keep one datapath's connections from meeting the TIME_WAIT sockets an earlier one left in the pods. A caveat of reused ports: a reused port's SYN may find nodeport's conntrack entry of its earlier connection and take the established path, while kube-proxy's conntrack entry of a reset connection is closed and the SYN is a new connection again; per the program-cost table the difference is a few hundred nanoseconds per connection.\n\
- Everything shares the machine's {cpus} CPUs: client, nodes, pods and servers.\n\n",
            threads = c.conn_threads,
            warm = f1(c.warmup.as_secs_f64()),
            windows = c.windows,
            window = f1(c.window.as_secs_f64()),
            lat = c.latency_samples,
            rttc = c.rtt_connections,
            rtt = c.rtt_samples,
            iperf = c.iperf_seconds,
            udp = c.udp_threads,
            cpus = r.machine.cpus,
        );
        let _ = write!(
            s,
            "### Programming the Services on a node\n\nTime until node 1 serves the Services: the nodeport agent from process start to \"datapath ready\" (loading and attaching the programs, reading the manifests, writing the maps), `iptables-restore` and `nft -f` of kube-proxy's rules. The Services here have two endpoints each. Most of `nft -f`'s time at 10k Services goes to the per-Service `numgen random mod N vmap {{ … : goto … }}` rules (their anonymous verdict maps); the same ruleset without them loads in seconds.\n\n{}\n![Programming time](benchmarks/programming.svg)\n\n### Agent memory\n\nThe node 1 agent after the traffic (`/proc/<pid>/status`), and the locked memory of its pinned maps (`bpftool map show`: hash maps are preallocated to their capacity, so this does not grow with Services).\n\n{}\n",
            programming_table(e),
            agent_table(e)
        );
    }

    if let Some(c) = &r.control {
        let caps: Vec<String> = c
            .capacities
            .iter()
            .map(|(n, v)| format!("{n} {}", thousands(f64::from(*v))))
            .collect();
        let _ = write!(
            s,
            "\n## 3. Control plane\n\nThe agent's own pipeline (`xtask/src/bench/control_plane.rs`, run as the `bench-control-plane` example because it links the agent's library): manifests written to a directory → `ManifestsSource::scan` (parse and validate) → `desired::compute` → `Reconciler::apply` into freshly created maps pinned on bpffs (`maps::bpf::BpfMaps`, the kernel maps the datapath reads). Each Service has a ClusterIP, a NodePort (the first 20,000; the rest are ClusterIP Services) and ten endpoints with addresses of their own, half of them on this node. A change gives one endpoint of a random Service a new address and is timed from the changed cluster state to the maps written: `desired::compute` over the whole state and `Reconciler::apply`, as the agent's loop does on any change (the manifests source's 200 ms scan interval is not included). Changes are timed for up to 45 s per size; once a cold apply takes more than 30 s, larger sizes are not run (the table says so).\n\nMap capacities: {} (the agent's defaults hold 65,536 frontends and 262,144 backends, so 50k Services × 10 endpoints need larger maps than the agent creates today).\n\n{}\n![Cold programming](benchmarks/control-plane-cold.svg)\n![One change](benchmarks/control-plane-change.svg)\n",
            caps.join(", "),
            control_table(c)
        );
    }

    s.push_str(
        "\n## Left out\n\n\
- **Multi-queue, NIC drivers, line rate.** Everything runs on veth pairs in network namespaces on a 2-CPU machine; native XDP on a physical NIC (and the cost of the driver around the program) is not measured. Packet rates here are the whole machine's, shared by client, nodes and servers.\n\
- **IPVS mode** of kube-proxy, and kube-proxy's own process (its sync loop, its conntrack cleanup): only the rules it writes are measured, loaded with `iptables-restore` / `nft -f` as kube-proxy does.\n\
- **iptables-legacy.** `iptables-restore` is Debian's default, the nf_tables backend (version above); kube-proxy picks the same backend as the host.\n\
- **Conntrack-heavy state.** New flows are timed on quiet tables; a node with a full conntrack or reverse-NAT map (LRU eviction) is not measured.\n\
- **The Kubernetes API source.** The control plane is fed from a manifests directory; an API watch would replace the scan, not compute or apply.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_numbers() {
        assert_eq!(size_label(1), "1");
        assert_eq!(size_label(10_000), "10k");
        assert_eq!(size_label(1_500), "1500");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(f64::NAN), "–");
    }
}
