//! BENCHMARKS.md: the goals with the measured figures, the tables, the
//! plots and how each figure was taken.

use std::fmt::Write as _;
use std::time::Duration;

use nodeport_tests::Veths;

use super::e2e::{E2e, Mode, veths_label, veths_short};
use super::machine::Machine;
use super::program_cost;
use super::program_cost::{Case, ProgramCost};
use super::results::ControlPlaneResults;
use super::snat::{self, SnatRow};
use super::svg::{self, BarChart, Series};

/// One figure of a control-plane row.
type RowFigure = fn(&super::results::ControlPlaneRow) -> u64;

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
    pub name: String,
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
                name: name.into(),
                measured: format!("{ratio:.1}× (worst size: {})", services_label(n)),
                met: Some(ratio <= 3.0),
            },
            None => Goal {
                name: name.into(),
                measured: "not measured".into(),
                met: None,
            },
        });
    }
    let counters = pc.and_then(|pc| {
        pc.counter_cost
            .iter()
            .map(|c| (c.added_ns, c.services))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    });
    let name = "Per-service and per-backend counters add < 10 ns to an established flow";
    out.push(match counters {
        Some((d, n)) => Goal {
            name: name.into(),
            measured: format!("{d:+.1} ns (worst size: {})", services_label(n)),
            met: Some(d < 10.0),
        },
        None => Goal {
            name: name.into(),
            measured: "not measured".into(),
            met: None,
        },
    });
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
            name: "Cost flat within 10% from 1 to 100k Services".into(),
            measured: format!(
                "largest change 1 → {}: {:+.1}% ({})",
                size_label(hi),
                d * 100.0,
                case.label()
            ),
            met: Some(d.abs() <= 0.10),
        },
        None => Goal {
            name: "Cost flat within 10% from 1 to 100k Services".into(),
            measured: "not measured (needs 1 and 100k Services)".into(),
            met: None,
        },
    });
    let e2e = r.e2e.as_ref();
    for (e, veths) in e2e
        .iter()
        .flat_map(|e| e.config.variants.iter().map(move |&v| (*e, v)))
    {
        let variant = variant_label(e, veths);
        for (n, factor, what) in [
            (1, 1.0, "≥ kube-proxy iptables mode at 1 Service"),
            (10_000, 2.0, "≥ 2× kube-proxy iptables mode at 10k Services"),
        ] {
            let name = format!("New-connection rate {what} ({variant})");
            let ratio = (|| {
                let np = e.row(veths, Mode::Nodeport, n)?.conn_per_s;
                let ipt = e.row(veths, Mode::Iptables, n)?.conn_per_s;
                Some((np, ipt))
            })();
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
        if e.config.snat.is_some() {
            out.extend(snat_goals(e, veths));
        }
    }
    let cp = |n: usize| {
        r.control
            .as_ref()
            .and_then(|c| c.rows.iter().find(|row| row.services == n))
    };
    let missing = |name: String| Goal {
        name,
        measured: "not measured".into(),
        met: None,
    };
    let name =
        "10k Services × 10 endpoints parsed, validated and programmed cold in < 1 s".to_string();
    out.push(match cp(10_000) {
        Some(row) => Goal {
            name,
            measured: format!(
                "{:.0} ms (parse + validate {:.0} ms, compute {:.0} ms, apply {:.0} ms, {} map writes)",
                row.cold_ms(),
                row.parse_ms,
                row.compute_ms,
                row.apply_ms,
                int(row.map_writes)
            ),
            met: Some(row.cold_ms() < 1_000.0),
        },
        None => missing(name),
    });
    for (n, label) in [(10_000, "10k"), (50_000, "50k")] {
        let name = format!("One endpoint change written in < 5 ms at p99 ({label} Services)");
        out.push(match cp(n) {
            Some(row) => Goal {
                name,
                measured: format!(
                    "p99 {:.2} ms, p50 {:.2} ms, max {:.2} ms ({} changes)",
                    row.change_p99_ms, row.change_p50_ms, row.change_max_ms, row.change_samples
                ),
                met: Some(row.change_p99_ms < 5.0),
            },
            None => missing(name),
        });
    }
    for (n, label, limit) in [(10_000, "10k", 100.0), (50_000, "50k", 400.0)] {
        let sources: [(&str, RowFigure); 2] = [
            ("Kubernetes source: the pipeline alone", |r| {
                r.pipeline_rss_kib
            }),
            ("manifests source and pipeline", |r| r.rss_kib),
        ];
        for (source, kib) in sources {
            let name = format!(
                "Control-plane memory < {limit:.0} MiB at {label} Services × 10 ({source})"
            );
            out.push(match cp(n).map(kib) {
                Some(kib) if kib > 0 => Goal {
                    name,
                    measured: format!("{:.1} MiB", mib(kib)),
                    met: Some(mib(kib) < limit),
                },
                _ => missing(name),
            });
        }
    }
    // The larger of the variants' (the agent is the same on both).
    let agent = e2e.and_then(|e| {
        e.agents
            .iter()
            .filter(|a| a.services == 10_000)
            .max_by_key(|a| a.rss_kib)
    });
    out.push(match agent {
        Some(a) => Goal {
            name: "Agent RSS < 100 MiB at 10k Services".into(),
            measured: format!("{:.1} MiB (peak {:.1} MiB)", mib(a.rss_kib), mib(a.hwm_kib)),
            met: Some(mib(a.rss_kib) < 100.0),
        },
        None => Goal {
            name: "Agent RSS < 100 MiB at 10k Services".into(),
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
    if !pc.counter_cost.is_empty() {
        s.push_str("| added by the service counters (paired runs) |");
        for &n in &sizes {
            match pc.counter_cost.iter().find(|c| c.services == n) {
                Some(c) => {
                    let _ = write!(
                        s,
                        " {:+.1} ns ({:+.1} .. {:+.1}) |",
                        c.added_ns, c.q1_ns, c.q3_ns
                    );
                }
                None => s.push_str(" – |"),
            }
        }
        s.push_str(" paired |\n");
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

/// The variant and the XDP mode nodeport ran in on it.
fn variant_label(e: &E2e, veths: Veths) -> String {
    match e.xdp_mode(veths) {
        Some(m) => format!("{}, nodeport in {} XDP", veths_label(veths), m.label()),
        None => veths_label(veths).into(),
    }
}

/// Every (variant, size) pair of the run, in order.
fn variant_sizes(e: &E2e) -> Vec<(Veths, usize)> {
    e.config
        .variants
        .iter()
        .flat_map(|&v| e.config.sizes.iter().map(move |&n| (v, n.max(1))))
        .collect()
}

fn e2e_table(e: &E2e) -> String {
    let mut s = String::from(
        "| veths | Services | datapath | new conn/s | vs iptables | request p50 | request p99 | new conn/s, server closes first (SYNs refused by TIME_WAIT) | RTT p50 | RTT p99 | TCP Gbit/s | UDP pps received (sent) | connections completed (failed) |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (veths, n) in variant_sizes(e) {
        for &mode in &e.config.modes {
            let Some(row) = e.row(veths, mode, n) else {
                continue;
            };
            let vs = e.row(veths, Mode::Iptables, n).map_or_else(
                || "–".into(),
                |i| format!("{:.2}×", row.conn_per_s / i.conn_per_s),
            );
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {vs} | {} µs | {} µs | {} ({}) | {} µs | {} µs | {} | {} ({}) | {} ({}) |",
                veths_label(veths),
                size_label(n),
                row.label(),
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
                int(row.connections_completed()),
                row.conn_errors + row.latency_errors + row.conn_server_close_errors
            );
        }
    }
    s
}

/// The datapath label of a SNAT-path row (with nodeport's XDP mode).
fn snat_label(e: &E2e, r: &SnatRow) -> String {
    e.row(r.veths, r.mode, r.services)
        .map_or_else(|| r.mode.label().into(), super::e2e::Row::label)
}

fn opt_int(v: Option<u64>) -> String {
    v.map_or_else(|| "–".into(), int)
}

fn snat_concurrent_table(e: &E2e) -> String {
    let target = e.snat.first().map_or(0, |r| r.concurrent.target);
    let mut s = format!(
        "| veths | datapath | held open at once (tried at most) | first failure | drops until {} held | drops in all (counter) | acknowledged at the end | established at the pod | opening took |\n|---|---|---:|---|---:|---:|---:|---:|---:|\n",
        int(target)
    );
    for r in &e.snat {
        let c = &r.concurrent;
        let _ = writeln!(
            s,
            "| {} | {} | **{}** ({}) | {} | {} | {} ({}) | {} | {} | {:.1} s |",
            veths_label(r.veths),
            snat_label(e, r),
            int(c.held),
            int(c.max),
            c.first_failure
                .as_deref()
                .map_or_else(|| "none".into(), |f| f.replace('|', "/")),
            opt_int(c.drops_at_target),
            opt_int(c.drops),
            if c.drop_counter.is_empty() {
                "none"
            } else {
                c.drop_counter
            },
            int(c.acknowledged),
            int(c.accepted),
            c.open_s
        );
    }
    s
}

fn snat_server_close_table(e: &E2e) -> String {
    let rate = e.config.snat.as_ref().map_or(0.0, |c| c.paced_rate);
    let mut s = format!(
        "| veths | datapath | paced at {}/s: conn/s | SYNs refused by TIME_WAIT | failed | request p50 / p99 | unpaced: conn/s | vs direct | SYNs refused by TIME_WAIT | failed | SNAT ports taken before their rest ended (paced, unpaced) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        thousands(rate)
    );
    for r in &e.snat {
        let direct = e.snat_row(r.veths, Mode::Direct);
        let vs = direct.map_or_else(
            || "–".into(),
            |d| format!("{:.2}×", r.unpaced.per_s / d.unpaced.per_s),
        );
        let early = match (r.paced.early_reuse, r.unpaced.early_reuse) {
            (None, None) => "–".to_string(),
            (p, u) => format!("{}, {}", opt_int(p), opt_int(u)),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | **{}** | {} | {} / {} µs | {} | **{vs}** | {} | {} | {early} |",
            veths_label(r.veths),
            snat_label(e, r),
            thousands(r.paced.per_s),
            int(r.paced.paws_rejects),
            int(r.paced.errors),
            thousands(r.paced.latency_p50_us),
            thousands(r.paced.latency_p99_us),
            thousands(r.unpaced.per_s),
            int(r.unpaced.paws_rejects),
            int(r.unpaced.errors),
        );
    }
    s
}

/// The SNAT-path goals of one variant.
fn snat_goals(e: &E2e, veths: Veths) -> Vec<Goal> {
    let Some(c) = e.config.snat.as_ref() else {
        return Vec::new();
    };
    let variant = variant_label(e, veths);
    let np = e.snat_row(veths, Mode::Nodeport);
    let ipt = e.snat_row(veths, Mode::Iptables);
    let direct = e.snat_row(veths, Mode::Direct);
    vec![
        concurrent_goal(c, &variant, np, ipt),
        paced_goal(c, &variant, np, ipt),
        unpaced_goal(&variant, np, ipt, direct),
    ]
}

fn not_measured(name: String) -> Goal {
    Goal {
        name,
        measured: "not measured".into(),
        met: None,
    }
}

fn concurrent_goal(
    c: &snat::Config,
    variant: &str,
    np: Option<&SnatRow>,
    ipt: Option<&SnatRow>,
) -> Goal {
    let target = c.target_flows;
    let name = format!(
        "Concurrent flows to one remote backend ≥ {} with no SNAT drop until {} are held ({variant})",
        int(target),
        int(target)
    );
    let Some(r) = np else {
        return not_measured(name);
    };
    let k = &r.concurrent;
    let baseline = ipt.map_or_else(String::new, |i| {
        format!("; iptables {} held", int(i.concurrent.held))
    });
    Goal {
        name,
        measured: format!(
            "{} held ({} acknowledged at the end; first failure: {}), `{}` +{} until {}, +{} in all{baseline}",
            int(k.held),
            int(k.acknowledged),
            k.first_failure.as_deref().unwrap_or("none"),
            snat::SNAT_EXHAUSTED,
            opt_int(k.drops_at_target),
            int(target),
            opt_int(k.drops)
        ),
        met: Some(k.held >= target && k.acknowledged >= target && k.drops_at_target == Some(0)),
    }
}

fn paced_goal(
    c: &snat::Config,
    variant: &str,
    np: Option<&SnatRow>,
    ipt: Option<&SnatRow>,
) -> Goal {
    let name = format!(
        "Server closes first, remote backend, paced at {}/s: no SYN refused by TIME_WAIT, no connection failed ({variant})",
        thousands(c.paced_rate)
    );
    let Some(r) = np else {
        return not_measured(name);
    };
    let p = &r.paced;
    let baseline = ipt.map_or_else(String::new, |i| {
        format!("; iptables {} refused", int(i.paced.paws_rejects))
    });
    Goal {
        name,
        measured: format!(
            "{} refused over {} connections ({} failed){baseline}",
            int(p.paws_rejects),
            int(p.ok + p.errors),
            int(p.errors)
        ),
        met: Some(p.paws_rejects == 0 && p.errors == 0 && p.ok > 0),
    }
}

fn unpaced_goal(
    variant: &str,
    np: Option<&SnatRow>,
    ipt: Option<&SnatRow>,
    direct: Option<&SnatRow>,
) -> Goal {
    let name = format!(
        "Server closes first, remote backend, unpaced ≥ 0.8× direct to the pod ({variant})"
    );
    let (Some(r), Some(d)) = (np, direct) else {
        return not_measured(name);
    };
    let baseline = ipt.map_or_else(String::new, |i| {
        format!(
            "; iptables {} ({:.2}×)",
            thousands(i.unpaced.per_s),
            i.unpaced.per_s / d.unpaced.per_s
        )
    });
    Goal {
        name,
        measured: format!(
            "{} vs {} conn/s: {:.2}× ({} SYNs refused by TIME_WAIT){baseline}",
            thousands(r.unpaced.per_s),
            thousands(d.unpaced.per_s),
            r.unpaced.per_s / d.unpaced.per_s,
            int(r.unpaced.paws_rejects)
        ),
        met: Some(r.unpaced.per_s >= 0.8 * d.unpaced.per_s),
    }
}

fn programming_table(e: &E2e) -> String {
    let mut s = String::from(
        "| veths | Services | nodeport agent: start → datapath ready | `iptables-restore` | `nft -f` |\n|---|---:|---:|---:|---:|\n",
    );
    for (veths, n) in variant_sizes(e) {
        let get = |m: Mode| {
            e.row(veths, m, n)
                .and_then(|r| r.programming_ms)
                .map_or_else(|| "–".into(), |v| format!("{} ms", thousands(v)))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            veths_label(veths),
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
        "| veths | Services | XDP mode (after the traffic) | start → ready | VmRSS | VmHWM (peak) | BPF maps (memlock) | maps per Service | drop counters after the traffic |\n|---|---:|---|---:|---:|---:|---:|---:|---|\n",
    );
    for a in &e.agents {
        #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        let per = a.map_bytes as f64 / a.services as f64;
        let drops = a.drops();
        let drops = if drops.is_empty() {
            "none".to_string()
        } else {
            drops
                .iter()
                .map(|(n, v)| format!("{n} {}", int(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mode = |m: Option<super::counters::XdpMode>| {
            m.map_or("unknown", super::counters::XdpMode::label)
        };
        #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        let maps_mib = a.map_bytes as f64 / 1024.0 / 1024.0;
        let _ = writeln!(
            s,
            "| {} | {} | {} ({}) | {} ms | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} KiB | {drops} |",
            veths_label(a.veths),
            size_label(a.services),
            mode(a.xdp_mode),
            mode(a.xdp_mode_end),
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
        "| Services × endpoints | frontends / backends / slots | parse + validate manifests | compute | apply (map writes, µs per write) | cold total | one change p50 | p99 | max (changes timed) | RSS (live heap): manifests source + pipeline | RSS (live heap): pipeline alone |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &c.rows {
        let _ = writeln!(
            s,
            "| {} × {} | {} / {} / {} | {} ms | {} ms | {} ms ({}, {} µs) | **{} ms** | {} ms | **{} ms** | {} ms ({}) | {:.1} MiB ({:.1}) | {:.1} MiB ({:.1}) |",
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
            r.change_samples,
            mib(r.rss_kib),
            mib(r.heap_kib),
            mib(r.pipeline_rss_kib),
            mib(r.pipeline_heap_kib)
        );
    }
    for (n, why) in &c.skipped {
        let _ = writeln!(s, "| {} × – | {why} | | | | | | | | | |", size_label(*n));
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
        if !e.snat.is_empty() {
            let _ = writeln!(
                s,
                "SNAT path: concurrent flows to one remote backend\n\n{}",
                snat_concurrent_table(e)
            );
            let _ = writeln!(
                s,
                "SNAT path: server closes first, remote backend\n\n{}",
                snat_server_close_table(e)
            );
        }
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
        let cells = variant_sizes(e);
        let groups: Vec<String> = cells
            .iter()
            .map(|&(v, n)| format!("{} · {}", services_label(n), veths_short(v)))
            .collect();
        let by_mode = |f: &dyn Fn(&super::e2e::Row) -> f64| -> Vec<Series> {
            e.config
                .modes
                .iter()
                .map(|&m| Series {
                    name: m.label().into(),
                    values: cells.iter().map(|&(v, n)| e.row(v, m, n).map(f)).collect(),
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
        if let Some(sc) = &e.config.snat {
            let snat_groups: Vec<String> = e
                .config
                .variants
                .iter()
                .map(|&v| veths_label(v).to_string())
                .collect();
            let by_snat_mode = |f: &dyn Fn(&SnatRow) -> f64| -> Vec<Series> {
                sc.modes
                    .iter()
                    .map(|&m| Series {
                        name: m.label().into(),
                        values: e
                            .config
                            .variants
                            .iter()
                            .map(|&v| e.snat_row(v, m).map(f))
                            .collect(),
                    })
                    .collect()
            };
            #[allow(
                clippy::cast_precision_loss,
                reason = "connection counts far below 2^52"
            )]
            let held = |r: &SnatRow| r.concurrent.held as f64;
            out.push((
                "e2e-snat-concurrent.svg".into(),
                svg::bar_chart(&BarChart {
                    title: "TCP connections to one remote backend held open at once".into(),
                    y_label: "connections".into(),
                    groups: snat_groups.clone(),
                    series: by_snat_mode(&held),
                }),
            ));
            out.push((
                "e2e-snat-server-close.svg".into(),
                svg::bar_chart(&BarChart {
                    title: "New connections per second to one remote backend, the server closing first (unpaced)".into(),
                    y_label: "connections / s".into(),
                    groups: snat_groups,
                    series: by_snat_mode(&|r: &SnatRow| r.unpaced.per_s),
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
                        values: cells
                            .iter()
                            .map(|&(v, n)| e.row(v, m, n).and_then(|r| r.programming_ms))
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
                    series("parse + compute + apply", &|r| r.cold_ms()),
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
- **paired** — what the per-service and per-backend counters add: {pairs} pairs of repeat \
runs of the established local flow, one with the counters on and one with them off \
(`CONFIG_F_NO_SERVICE_COUNTERS`), back to back on the same loaded program, alternating which \
goes first; the median of the pairs' differences, quartiles in brackets. Taking the \
difference within each pair keeps the machine's drift out of it, which two separate medians \
of the rows above do not.
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
        pairs = c.counter_pairs,
    )
}

/// The veth variants of the run, one bullet each.
fn variants_text(e: &E2e) -> String {
    let mut s = String::new();
    for &v in &e.config.variants {
        let what = match v {
            Veths::KernelDefaults => {
                "every veth end as the kernel makes it: GRO off, TX checksum offload on (frames from the client and the pods carry partial checksums), as on the host side of a kind node or a container's veth. A node's native `XDP_TX` or redirect does not deliver here (the LAN-side peer has neither GRO nor an XDP program), so `--xdp-mode auto` is expected to attach in generic mode."
            }
            Veths::LanGro => {
                "the same, with GRO on on the LAN side of each node's veth, so a node's native XDP transmits deliver, as on a physical NIC; `--xdp-mode auto` is expected to attach natively."
            }
        };
        let attached = e.xdp_mode(v).map_or_else(String::new, |m| {
            format!(
                " In this run node 1's agent attached in **{}** mode.",
                m.label()
            )
        });
        let _ = writeln!(s, "- **{}** — {what}{attached}", veths_label(v));
    }
    s
}

/// The SNAT-path subsection: tables, plots and how each figure is taken.
fn snat_section(e: &E2e) -> String {
    let Some(c) = &e.config.snat else {
        return String::new();
    };
    if e.snat.is_empty() {
        return String::new();
    }
    let modes: Vec<&str> = c.modes.iter().map(|m| m.label()).collect();
    let size = e.config.sizes.first().copied().unwrap_or(1).max(1);
    let paced = c.paced_window * u32::try_from(c.paced_windows).unwrap_or(u32::MAX);
    let pool = super::program_cost::snat_pool_size();
    let rest_s = nodeport_common::config::DEFAULT_SNAT_REST_S;
    let mut s = String::new();
    let _ = write!(
        s,
        "### SNAT path: one remote backend\n\n\
Traffic to Service ports of `bench` whose only endpoint is the pod on node 2, through `node1:nodePort`: node 1 rewrites the source of every flow (nodeport SNATs it to a port of its pool for that node address, backend and protocol; kube-proxy's rules MASQUERADE it, `--random-fully`), so these figures are the SNAT path's alone. \"Direct\" reaches the same pod at its own address, routed through node 1, with nothing rewritten. Run at {size} on each veth variant, for {modes} (`xtask/src/bench/snat.rs`); each test has a server port of its own, so it meets only the TIME_WAIT sockets it left itself and, on nodeport, draws on a pool of its own. The Goals table above reads each figure against its target.\n\n\
**Concurrent flows to one remote backend until the first drop.**\n\n{}\n![Connections held open at once](benchmarks/e2e-snat-concurrent.svg)\n\n\
- **How** — the client opens TCP connections to the hold port one after the other and keeps every one open, up to {max}; a connection fails when `connect` errs or its handshake takes over 3 s (one SYN retransmission fits). *Held open at once* is the number open when the first failed (or the maximum, \"first failure: none\"). The pod's server (`xtask/src/bench/hold.rs`) is one listening socket (backlog 65,535, the pod's `somaxconn` raised to match) that does not accept: the pod's kernel completes each handshake, keeps the connection in the accept queue and acknowledges its data, so one descriptor holds them all (*established at the pod* is the queue's length at the end). The client's connections are held by `np-client hold` processes in the client's namespace, as many connections each as its descriptor limit allows (this machine's hard `RLIMIT_NOFILE` may be 20,000, and the benchmark may not raise it); the client's `ip_local_port_range` is widened to 10000-60999 (51,000 ports) for this test.\n\
- **Drops** — nodeport: node 1's `{exhausted}` counter (`nodeport-agent inspect stats -o json`), read before the first connection, when {target} were held, and at the end; kube-proxy: node 1's conntrack `insert_failed` + `drop` + `early_drop` (`/proc/net/stat/nf_conntrack`, where NAT port clashes show), read the same way.\n\
- **Acknowledged at the end** — once all are open, one byte is sent on every held connection; those still established whose byte the pod acknowledged within 5 s (`TCP_INFO`, `SIOCOUTQ`): the path carries data both ways on all of them at once (a port taken from an open flow would break the earlier one). Then the client resets every connection (`SO_LINGER` 0, no TIME_WAIT) and the pod closes its ends.\n\
- **Target** — at least {target} held at once, acknowledged at the end, and no `{exhausted}` until {target} were held (Goals). kube-proxy's iptables rules in the same run are the baseline.\n\n\
**Server closes first to the remote backend.**\n\n{}\n![New connections per second to one remote backend, the server closing first](benchmarks/e2e-snat-server-close.svg)\n\n\
- **How** — as the \"server closes first\" column above (connect, 64 B request and answer, the pod closes first and keeps the TIME_WAIT state), to the remote backend only; the client's `ip_local_port_range` is 20000-39999 (20,000 ports) in both regimes. SYNs the pods' TIME_WAIT sockets refused during each test are counted (`TcpExtPAWSTimewait`), and for nodeport the `{early}` counter (a port taken from a closed flow before its rest ended).\n\
- **Paced** — {rate} new connections per second for {paced_s} s ({paced_n} connections, each started on schedule by one of {workers} threads, so a refused SYN delays no other request): below what the agent's default pool of {pool} ports resting {rest} s after close sustains ({sustain}/s), and with fewer connections than client ports, so no client tuple recurs. conn/s is the median of {paced_windows} windows of {paced_window} s; request p50/p99 from connect to the server's close. **Target: no SYN refused by TIME_WAIT and no connection failed.**\n\
- **Unpaced** — {threads} client threads as fast as they go: {warm} s warm-up, then the median of {windows} windows of {window} s, and its ratio to direct to the same pod in the same run (\"vs direct\"). **Target: at least 0.8× direct.**\n\n",
        snat_concurrent_table(e),
        snat_server_close_table(e),
        size = services_label(size),
        modes = modes.join(", "),
        max = int(c.max_flows),
        target = int(c.target_flows),
        exhausted = snat::SNAT_EXHAUSTED,
        early = snat::SNAT_EARLY_REUSE,
        rate = thousands(c.paced_rate),
        paced_s = f1(paced.as_secs_f64()),
        paced_n = thousands(c.paced_rate * paced.as_secs_f64()),
        workers = c.paced_workers,
        pool = int(pool),
        rest = rest_s,
        sustain = thousands(f64::from(u32::try_from(pool).unwrap_or(u32::MAX)) / f64::from(rest_s)),
        paced_windows = c.paced_windows,
        paced_window = f1(c.paced_window.as_secs_f64()),
        threads = e.config.conn_threads,
        warm = f1(e.config.warmup.as_secs_f64()),
        windows = e.config.windows,
        window = f1(e.config.window.as_secs_f64()),
    );
    s
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
        let span = super::program_cost::snat_pool_size();
        let _ = writeln!(
            s,
            "**SNAT ports.** New TCP flows from distinct clients to a Service with one remote backend, sent back to back (every earlier flow still open): {} got an SNAT port before the first was dropped for want of one (`drop_snat_exhausted`); the SNAT range holds {} ports per node address and backend. The end-to-end SNAT-path tests below take the same path through the whole stack: connections held open at once to one remote backend, and new connections whose server closes first.",
            int(pc.snat_ports_per_backend),
            int(span)
        );
    }

    if let Some(e) = &r.e2e {
        let c = &e.config;
        let _ = write!(
            s,
            "\n## 2. End to end\n\nTraffic from the client namespace to `node1:nodePort` on the namespace test cluster (two nodes, one pod each, a client; veth pairs on a bridge; `xtask/src/bench/e2e.rs`), on each veth variant below, a cluster each (the `veths` column; figures are compared within a variant):\n\n{}\nThe agents run with their default `--xdp-mode auto`. The mode node 1's agent attached in is read from its device (`ip -j link show`, `xdp.mode`) once it is ready and again after the traffic, and is named in the nodeport rows (\"native → generic\" where the agent moved the device while the traffic ran). The same Services are programmed on both nodes by the nodeport agent, by kube-proxy's iptables rules (`iptables-restore`) and by its nftables rules (`nft -f`); \"direct\" sends to the pods' own addresses, routed through node 1, with no Service in the way. The measured Service sits in the middle of the others (kube-proxy lists Services in no particular order).\n\n{}\n![New connections per second](benchmarks/e2e-connections.svg)\n![New connections per second, the server closing first](benchmarks/e2e-connections-server-close.svg)\n![Request latency p99](benchmarks/e2e-latency-p99.svg)\n![TCP throughput](benchmarks/e2e-throughput.svg)\n![UDP datagrams per second](benchmarks/e2e-udp.svg)\n\n",
            variants_text(e),
            e2e_table(e)
        );
        let _ = write!(
            s,
            "How these are taken: the servers and clients are threads of the benchmark (`xtask/src/bench/traffic.rs`), the servers' sockets made inside the pods' namespaces, the clients' inside the client's.\n\n\
- **new conn/s** — {threads} client threads, each connecting, sending 64 B, reading the 64 B answer and resetting the connection (`SO_LINGER` 0), in a loop; {warm} s warm-up, then the median of {windows} windows of {window} s. The Service's two endpoints (one local to node 1, one on node 2) share the load as the datapath picks them; \"direct\" alternates between the two pods. With a reset no side keeps TIME_WAIT state, so the figure is the datapath's.\n\
- **request p50/p99** — {lat} such requests one after the other from one thread.\n\
- **new conn/s, server closes first** — the same, but the server closes first and the pod keeps the TIME_WAIT state, as an HTTP server closing its side does (run after the other TCP tests, on another server port). As in the first column, the Service's two endpoints share the connections, so only those the datapath sends to the pod on node 2 are SNATed; the SNAT path alone is measured below. Where a node rewrites the source address and port (kube-proxy masquerades NodePort traffic to random ports; nodeport SNATs flows to the remote backend), new connections can meet the pod's TIME_WAIT sockets of earlier connections under the same addresses and ports; the pod refuses those SYNs whose timestamps are older (counted in brackets: `TcpExtPAWSTimewait` of both pods during this test) and the client retries about 10 ms later, so the rate falls the longer the test runs. This column shows that effect more than the datapath's cost.\n\
- **RTT p50/p99** — 64 B round trips on {rttc} established connections to an echo server ({rtt} in all).\n\
- **TCP Gbit/s** — `iperf3 -c` for {iperf} s after one omitted second, to the pod on node 2 (the Service's iperf port has that one endpoint).\n\
- **UDP pps** — {udp} senders (one socket and flow each) sending 64 B datagrams as fast as they can; datagrams received by the pods' sinks per second, median of {windows} windows (sent in brackets).\n\
- The client uses 3,000 source ports per datapath (40000-42999 direct, 43000-45999 nodeport, 46000-48999 iptables, 49000-51999 nftables) and reuses them; separate ranges keep one datapath's connections from meeting the TIME_WAIT sockets an earlier one left in the pods. A caveat of reused ports: a reused port's SYN may find nodeport's conntrack entry of its earlier connection and take the established path, while kube-proxy's conntrack entry of a reset connection is closed and the SYN is a new connection again; per the program-cost table the difference is a few hundred nanoseconds per connection.\n\
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
        s.push_str(&snat_section(e));
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
            "\n## 3. Control plane\n\nThe agent's own pipeline (`xtask/src/bench/control_plane.rs`, run as the `bench-control-plane` example because it links the agent's library): manifests written to a directory → `ManifestsSource::scan_changes` (parse and validate) → `Pipeline` (the store of object models and the incremental desired state) → the reconciler's writes into freshly created maps pinned on bpffs (`maps::bpf::BpfMaps`, the kernel maps the datapath reads). Each Service has a ClusterIP, a NodePort (the first 20,000; the rest are ClusterIP Services) and ten endpoints with addresses of their own, half of them on this node. A change gives one endpoint of a random Service a new address and is timed from the changed EndpointSlice reaching the pipeline to the last map write: the Service's share of the desired state recomputed and only its difference written, as the agent's loop does on a change (the sources' delivery is not included: the manifests source's 200 ms scan interval, the API server's watch). RSS is the benchmark process's resident set, on the agent's allocator (jemalloc), after the cold programming and `memory::release_free` (a purge of the allocator's free pages, as the agent does after a large delivery); the live heap beside it is what is allocated and not freed, counted by the example's allocator: with the manifests source, its objects and the pipeline's models, desired state and map views, as an agent serving a directory holds them; and the pipeline alone, once the source and its objects are dropped, as an agent on the Kubernetes source holds them (that source keeps each object's resourceVersion only; its initial list is decoded at once, as here). The counters of ids an endpoint change frees are deleted by the agent's loop once a second, not by the change, and are not timed. Changes are timed for up to 45 s per size; once a cold apply takes more than 30 s, larger sizes are not run (the table says so).\n\nMap capacities: {} (the agent's defaults hold 65,536 frontends and 262,144 backends, so 50k Services × 10 endpoints need larger maps than the agent creates today).\n\n{}\n![Cold programming](benchmarks/control-plane-cold.svg)\n![One change](benchmarks/control-plane-change.svg)\n",
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
- **Many clients on one SNAT pool.** The SNAT-path tests come from one client address; many clients sharing a backend's pool, and several backends at once, are not measured (each (node address, backend, protocol) has a pool of its own).\n\
- **The Kubernetes API source.** The control plane is fed from a manifests directory; an API watch would replace the scan, not compute or apply.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::counters::XdpMode;
    use crate::bench::e2e::{Config, Row};
    use crate::bench::snat::{Concurrent, ServerClose};

    fn row(veths: Veths, mode: Mode, conn_per_s: f64) -> Row {
        Row {
            veths,
            mode,
            services: 1,
            xdp_mode: (mode == Mode::Nodeport).then_some(XdpMode::Generic),
            xdp_mode_end: (mode == Mode::Nodeport).then_some(XdpMode::Generic),
            conn_per_s,
            conn_ok: 10,
            conn_errors: 0,
            conn_server_close_per_s: 5.0,
            conn_server_close_ok: 5,
            conn_server_close_errors: 0,
            paws_rejects: 0,
            latency_p50_us: 100.0,
            latency_p99_us: 200.0,
            latency_ok: 3,
            latency_errors: 0,
            rtt_p50_us: 50.0,
            rtt_p99_us: 80.0,
            rtt_ok: 4,
            throughput_gbit: 2.0,
            udp_sent_pps: 1_000.0,
            udp_received_pps: 900.0,
            udp_received: 900,
            programming_ms: Some(10.0),
        }
    }

    fn server_close(per_s: f64, paws_rejects: u64) -> ServerClose {
        ServerClose {
            per_s,
            ok: 100,
            errors: 0,
            paws_rejects,
            latency_p50_us: 100.0,
            latency_p99_us: 300.0,
            early_reuse: None,
        }
    }

    fn snat_row(veths: Veths, mode: Mode, held: usize, unpaced: f64, paws: u64) -> SnatRow {
        SnatRow {
            veths,
            mode,
            services: 1,
            paced: server_close(300.0, paws),
            unpaced: server_close(unpaced, paws),
            concurrent: Concurrent {
                max: 25_000,
                target: 20_000,
                held,
                first_failure: (held < 25_000).then(|| "connection 2 | timed out".to_string()),
                acknowledged: held,
                accepted: held as u64,
                drop_counter: "drop_snat_exhausted",
                drops_at_target: (held >= 20_000).then_some(0),
                drops: Some(u64::from(held < 25_000)),
                open_s: 1.0,
            },
        }
    }

    /// The SNAT goals and tables read the figures of each variant: met
    /// where the figure reaches its target, not met where it does not.
    #[test]
    fn snat_goals_and_tables_per_variant() {
        let mut config = crate::bench::quick_e2e_config();
        config.variants = vec![Veths::KernelDefaults, Veths::LanGro];
        config.modes = vec![Mode::Direct, Mode::Nodeport, Mode::Iptables];
        let snat_config = config.snat.as_mut().expect("quick SNAT config");
        snat_config.target_flows = 20_000;
        snat_config.max_flows = 25_000;
        let mut e = E2e {
            rows: Vec::new(),
            agents: Vec::new(),
            snat: Vec::new(),
            config: Config { ..config },
        };
        for v in [Veths::KernelDefaults, Veths::LanGro] {
            for m in [Mode::Direct, Mode::Nodeport, Mode::Iptables] {
                e.rows.push(row(v, m, 1_000.0));
            }
        }
        // Kernel defaults: everything met; LAN GRO: nothing.
        e.snat = vec![
            snat_row(Veths::KernelDefaults, Mode::Direct, 25_000, 1_000.0, 0),
            snat_row(Veths::KernelDefaults, Mode::Nodeport, 25_000, 900.0, 0),
            snat_row(Veths::KernelDefaults, Mode::Iptables, 25_000, 500.0, 3),
            snat_row(Veths::LanGro, Mode::Direct, 25_000, 1_000.0, 0),
            snat_row(Veths::LanGro, Mode::Nodeport, 2_512, 100.0, 7),
            snat_row(Veths::LanGro, Mode::Iptables, 25_000, 500.0, 3),
        ];
        let goals = snat_goals(&e, Veths::KernelDefaults);
        assert_eq!(goals.len(), 3);
        assert!(
            goals.iter().all(|g| g.met == Some(true)),
            "{:?}",
            goals.iter().map(|g| &g.measured).collect::<Vec<_>>()
        );
        assert!(goals[0].name.contains("kernel-default veths"));
        let goals = snat_goals(&e, Veths::LanGro);
        assert!(goals.iter().all(|g| g.met == Some(false)));
        assert!(goals[2].measured.contains("0.10×"), "{}", goals[2].measured);
        let t = snat_concurrent_table(&e);
        assert_eq!(t.lines().count(), 2 + 6);
        assert!(t.contains("nodeport (XDP generic)"), "{t}");
        // A failure message cannot break the table.
        assert!(t.contains("connection 2 / timed out"), "{t}");
        let t = snat_server_close_table(&e);
        assert!(t.contains("**0.90×**") && t.contains("**0.10×**"), "{t}");
        let r = Report {
            machine: Machine::default(),
            program: None,
            control: None,
            e2e: Some(e),
            quick: true,
            duration: Duration::from_secs(1),
            loads: Vec::new(),
        };
        let md = markdown(&r);
        assert!(md.contains("### SNAT path: one remote backend"));
        assert!(md.contains("Concurrent flows to one remote backend ≥ 20,000"));
        assert!(md.contains("| kernel-default veths | 1 | nodeport (XDP generic) |"));
        let names: Vec<String> = plots(&r).into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"e2e-snat-concurrent.svg".to_string()));
    }

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
