//! Cost of the XDP program per packet through `BPF_PROG_TEST_RUN`, beside
//! the object's trivial `XDP_PASS` program measured in the same run.
//!
//! Two ways of timing, because the kernel runs every repetition of one
//! `BPF_PROG_TEST_RUN` call on the same packet buffer and the program
//! rewrites packets in place:
//!
//! - **repeat** (`repeat` ≥ 1,000,000 repetitions per call): only for packets
//!   the program leaves on the same path when it sees its own output again:
//!   the trivial program, a packet that is not for a Service, and an
//!   established flow to a local backend whose address and port are the
//!   node's own NodePort (the DNAT rewrites the packet to itself: the same
//!   lookups and the same rewrite as any local backend). Per packet: the
//!   kernel's reported average (whole nanoseconds; the call's wall time
//!   also holds the kernel's swap of the XDP dispatcher, milliseconds of
//!   RCU grace periods).
//! - **single** (one repetition per call, `calls` calls): everything, each
//!   call with a fresh copy of the packet. A new flow has its conntrack and
//!   reverse-NAT entries deleted after each call (between calls, outside the
//!   timed run), so every call is a new flow. Per packet: the median of the
//!   kernel-reported durations. Each of those carries the timer's own
//!   overhead; the trivial program timed the same way has it too, so the
//!   cost is estimated as `single(case) - single(trivial) +
//!   repeat(trivial)`, and the estimate is checked against the repeat
//!   figure for the cases that have both.
//!
//! Every call's verdict and the program's own counters are checked, so a
//! figure is always the cost of the path it is named after.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use nodeport_common::{
    BACKEND_F_LOCAL, Backend, CT_F_SNAT, FlowKey, FrontendKey, PROTO_TCP, names, programs, stat,
};
use nodeport_tests::datapath::{
    CLIENT, Datapath, Frame, NODE, OTHER_NODE_MAC, PrivateNetns, TCP_ACK, TCP_SYN, XDP_PASS,
    XDP_TX, backend, be, flow, node_port, on_own_thread,
};

use super::stats;
/// Backends per Service (filler and measured).
pub const BACKENDS_PER_SERVICE: usize = 10;

/// The measured Services (NodePorts) and their ids, apart from the fillers'.
const LOCAL_PORT: u16 = 31_000;
const SELF_PORT: u16 = 31_001;
const REMOTE_PORT: u16 = 31_002;
const PROBE_PORT: u16 = 31_003;
const MEASURED_SERVICE_ID: u32 = 1 << 30;
const MEASURED_BACKEND_ID: u32 = 1 << 30;

/// A packet path whose cost is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Case {
    /// TCP to a node address on a port that is no NodePort: `XDP_PASS`.
    Pass,
    /// Established flow to a local backend: conntrack hit, DNAT, `XDP_PASS`.
    EstablishedLocal,
    /// Established flow to a backend on another node: conntrack hit, DNAT +
    /// SNAT, FIB lookup, MACs, `XDP_TX`.
    EstablishedRemote,
    /// As [`Case::EstablishedLocal`] with the per-service and per-backend
    /// counters off (`CONFIG_F_NO_SERVICE_COUNTERS`): the difference is
    /// what those counters cost.
    EstablishedLocalUncounted,
    /// New flow to a local backend: backend choice, conntrack and reverse
    /// entries created, DNAT.
    NewLocal,
    /// New flow to a remote backend: as above plus SNAT port allocation and
    /// forwarding.
    NewRemote,
    /// A remote backend's reply: reverse-NAT lookup, rewrite, FIB, `XDP_TX`.
    Reply,
}

impl Case {
    pub const ALL: [Case; 7] = [
        Case::Pass,
        Case::EstablishedLocal,
        Case::EstablishedLocalUncounted,
        Case::EstablishedRemote,
        Case::NewLocal,
        Case::NewRemote,
        Case::Reply,
    ];

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Case::Pass => "non-service packet (pass)",
            Case::EstablishedLocal => "established flow, local backend",
            Case::EstablishedLocalUncounted => "established flow, local, no service counters",
            Case::EstablishedRemote => "established flow, remote backend",
            Case::NewLocal => "new flow, local backend",
            Case::NewRemote => "new flow, remote backend",
            Case::Reply => "reply of a remote backend",
        }
    }

    #[must_use]
    pub fn short(self) -> &'static str {
        match self {
            Case::Pass => "pass",
            Case::EstablishedLocal => "est. local",
            Case::EstablishedLocalUncounted => "est. local uncounted",
            Case::EstablishedRemote => "est. remote",
            Case::NewLocal => "new local",
            Case::NewRemote => "new remote",
            Case::Reply => "reply",
        }
    }

    /// Whether the packet is a fixed point of the program (measurable with
    /// many repetitions per call).
    fn repeatable(self) -> bool {
        matches!(
            self,
            Case::Pass | Case::EstablishedLocal | Case::EstablishedLocalUncounted
        )
    }

    fn verdict(self) -> u32 {
        match self {
            Case::Pass
            | Case::EstablishedLocal
            | Case::EstablishedLocalUncounted
            | Case::NewLocal => XDP_PASS,
            Case::EstablishedRemote | Case::NewRemote | Case::Reply => XDP_TX,
        }
    }

    fn counter(self) -> u32 {
        match self {
            Case::Pass => stat::PASS_NOT_SERVICE,
            Case::EstablishedLocal | Case::EstablishedLocalUncounted | Case::NewLocal => {
                stat::DNAT_LOCAL
            }
            Case::EstablishedRemote | Case::NewRemote => stat::FORWARD_REMOTE,
            Case::Reply => stat::REPLY_REMOTE,
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Service counts the maps are filled to.
    pub sizes: Vec<usize>,
    /// Repetitions per call for the repeat method.
    pub repeat: u32,
    /// Runs per figure (the median is reported).
    pub runs: usize,
    /// Calls per run for the single method.
    pub calls: usize,
    /// The CPU everything runs on.
    pub cpu: usize,
    /// Alternating counted / uncounted runs of the established local flow
    /// per size, for the counters' cost ([`CounterCost`]).
    pub counter_pairs: usize,
}

/// What the per-service and per-backend counters add to an established
/// flow at one size: `pairs` back-to-back repeat runs of the same frame
/// with the counters on and off (alternating which goes first), so that
/// both halves of a pair see the same machine.
#[derive(Clone, Debug)]
pub struct CounterCost {
    pub services: usize,
    /// Median of the pairs' differences (on − off), ns per packet.
    pub added_ns: f64,
    /// Quartiles of those differences.
    pub q1_ns: f64,
    pub q3_ns: f64,
    pub pairs: usize,
}

/// One figure: a case at a size.
#[derive(Clone, Debug)]
pub struct Cell {
    pub case: Case,
    pub services: usize,
    /// Estimated cost per packet (ns): the repeat figure where there is one,
    /// else the single-method estimate.
    pub ns: f64,
    /// `ns` / the trivial program's repeat figure.
    pub ratio: f64,
    /// Median per-call kernel duration with one repetition (ns).
    pub single_ns: f64,
    /// The repeat figure (ns), for repeatable cases.
    pub repeat_ns: Option<f64>,
}

/// The trivial program at one size.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub services: usize,
    pub repeat_ns: f64,
    pub single_ns: f64,
}

/// Everything the program-cost benchmark measured.
#[derive(Clone, Debug)]
pub struct ProgramCost {
    pub cells: Vec<Cell>,
    pub baselines: Vec<Baseline>,
    pub config: Config,
    /// New flows to one remote backend that got an SNAT port before the
    /// first was dropped for want of one.
    pub snat_ports_per_backend: usize,
    /// The counters' cost, by size.
    pub counter_cost: Vec<CounterCost>,
}

impl ProgramCost {
    #[must_use]
    pub fn cell(&self, case: Case, services: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.case == case && c.services == services)
    }
}

/// A TCP segment of the benchmark's flows: sequence 1000, acknowledgment
/// 7 with the ACK flag (0 without), from the client's MAC to the node's.
fn segment(
    saddr: impl Into<Ipv4Addr>,
    sport: u16,
    daddr: impl Into<Ipv4Addr>,
    dport: u16,
    flags: u8,
) -> Frame {
    Frame {
        tcp_flags: flags,
        ack: if flags & TCP_ACK != 0 { 7 } else { 0 },
        ..Frame::tcp(saddr, sport, daddr, dport)
    }
}

fn client_frame(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    segment(CLIENT, sport, NODE, dport, flags).bytes()
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            bail!(
                "sched_setaffinity(CPU {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The loaded programs and the measured backends.
struct Bench {
    dp: Datapath,
    /// Filler Services in the maps.
    fillers: usize,
    /// Measured backends: id → (address, port).
    measured: Vec<(u32, Ipv4Addr, u16)>,
}

impl Bench {
    fn load(object: &[u8], ifindex: u32, max_services: usize) -> Result<Self> {
        let backends = u32::try_from((max_services + 16) * BACKENDS_PER_SERVICE)?
            .max(nodeport_common::capacity::BACKENDS);
        let frontends = u32::try_from(max_services + 16)?.max(nodeport_common::capacity::FRONTENDS);
        let mut dp = Datapath::load(
            object,
            ifindex,
            &[programs::XDP_INGRESS, programs::XDP_PASS_BASELINE],
            &[
                (names::FRONTENDS, frontends),
                (names::BACKENDS, backends),
                (
                    names::BACKEND_SLOTS,
                    backends.max(nodeport_common::capacity::BACKEND_SLOTS),
                ),
            ],
        )?;
        dp.node_addr(NODE)?;
        let mut bench = Self {
            dp,
            fillers: 0,
            measured: Vec::new(),
        };
        bench.measured_services()?;
        Ok(bench)
    }

    /// A NodePort frontend with the given backends.
    fn service(
        &mut self,
        service_id: u32,
        key: FrontendKey,
        backends: &[(u32, Backend)],
    ) -> Result<()> {
        Ok(self.dp.service(service_id, key, 0, 0, backends)?)
    }

    fn measured_services(&mut self) -> Result<()> {
        let key = |port: u16| node_port(port, PROTO_TCP);
        let mut next_id = MEASURED_BACKEND_ID;
        let mut make = |bench: &mut Self, addrs: &[(Ipv4Addr, u16, u8)]| {
            let list: Vec<(u32, Backend)> = addrs
                .iter()
                .map(|(a, p, f)| {
                    next_id += 1;
                    bench.measured.push((next_id, *a, *p));
                    (next_id, backend(*a, *p, *f))
                })
                .collect();
            list
        };
        let pods = |third: u8, flags: u8| -> Vec<(Ipv4Addr, u16, u8)> {
            (0..BACKENDS_PER_SERVICE)
                .map(|k| (Ipv4Addr::new(10, 244, third, 10 + k as u8), 8080, flags))
                .collect()
        };
        let local = make(self, &pods(1, BACKEND_F_LOCAL));
        self.service(MEASURED_SERVICE_ID + 1, key(LOCAL_PORT), &local)?;
        let remote = make(self, &pods(2, 0));
        self.service(MEASURED_SERVICE_ID + 2, key(REMOTE_PORT), &remote)?;
        // The node's own NodePort as the backend: the DNAT of an
        // established flow rewrites the packet to itself.
        let itself = make(self, &[(NODE.into(), SELF_PORT, BACKEND_F_LOCAL)]);
        self.service(MEASURED_SERVICE_ID + 3, key(SELF_PORT), &itself)?;
        // One remote backend, for counting SNAT ports.
        let one = make(self, &[(Ipv4Addr::new(10, 244, 2, 99), 8080, 0)]);
        self.service(MEASURED_SERVICE_ID + 4, key(PROBE_PORT), &one)?;
        Ok(())
    }

    /// Adds filler Services up to `n`: a ClusterIP frontend each with
    /// [`BACKENDS_PER_SERVICE`] backends of their own.
    fn fill_to(&mut self, n: usize) -> Result<()> {
        while self.fillers < n {
            let i = self.fillers;
            let sid = u32::try_from(i + 1)?;
            let key = FrontendKey {
                addr_be: be(super::synthetic::filler_cluster_ip(i)),
                port_be: 80u16.to_be(),
                proto: PROTO_TCP,
                pad: 0,
            };
            let backends: Vec<(u32, Backend)> = (0..BACKENDS_PER_SERVICE)
                .map(|j| {
                    let n = i * BACKENDS_PER_SERVICE + j;
                    let id = u32::try_from(n + 1).expect("backend id fits");
                    let addr = super::synthetic::offset(Ipv4Addr::new(10, 128, 0, 0), n);
                    let flags = if j % 2 == 0 { BACKEND_F_LOCAL } else { 0 };
                    (id, backend(addr, 8080, flags))
                })
                .collect();
            self.service(sid, key, &backends)?;
            self.fillers += 1;
        }
        Ok(())
    }

    fn counter(&self, index: u32) -> Result<u64> {
        Ok(self.dp.counter(index)?)
    }

    /// One `BPF_PROG_TEST_RUN` call; verdict and kernel-reported duration.
    fn call(&self, prog: &str, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let mut out = [0u8; 256];
        let r = self.dp.run_xdp(prog, frame, repeat, &mut out)?;
        Ok((r.verdict, r.duration))
    }

    /// ns per packet of one call with `repeat` repetitions: the kernel's
    /// average (whole ns). The call's wall time is no measure: around the
    /// timed loop the kernel swaps the XDP dispatcher's program, which
    /// waits for RCU grace periods (milliseconds).
    fn repeat_ns(&self, prog: &str, frame: &[u8], repeat: u32, verdict: u32) -> Result<f64> {
        let (rc, kernel) = self.call(prog, frame, repeat)?;
        ensure!(rc == verdict, "{prog}: verdict {rc}, expected {verdict}");
        Ok(kernel.as_secs_f64() * 1e9)
    }

    /// Median kernel-reported ns of `calls` single calls; `after` runs
    /// after each call (untimed).
    fn single_ns(
        &mut self,
        prog: &str,
        frame: &[u8],
        calls: usize,
        verdict: u32,
        mut after: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<f64> {
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let (rc, kernel) = self.call(prog, frame, 1)?;
            ensure!(rc == verdict, "{prog}: verdict {rc}, expected {verdict}");
            samples.push(kernel.as_secs_f64() * 1e9);
            after(self)?;
        }
        stats::median(&samples).context("no samples")
    }

    /// Deletes a flow's conntrack entry and the reverse entry it made.
    fn forget_flow(&mut self, key: &FlowKey) -> Result<()> {
        let ct = self
            .dp
            .conntrack
            .get(key, 0)
            .context("the new flow's conntrack entry")?;
        let &(_, addr, port) = self
            .measured
            .iter()
            .find(|(id, _, _)| *id == ct.backend_id)
            .context("the flow's backend")?;
        let rev = if ct.flags & CT_F_SNAT != 0 {
            FlowKey {
                dport_be: ct.snat_port_be,
                ..flow(addr, port, NODE, 0, PROTO_TCP)
            }
        } else {
            FlowKey {
                daddr_be: key.saddr_be,
                dport_be: key.sport_be,
                ..flow(addr, port, NODE, 0, PROTO_TCP)
            }
        };
        self.dp.conntrack.remove(key)?;
        self.dp.rev_nat.remove(&rev)?;
        Ok(())
    }
}

/// The frames of each case, with the flows they need set up.
struct Frames {
    pass: Vec<u8>,
    est_local: Vec<u8>,
    est_remote: Vec<u8>,
    new_local: (Vec<u8>, FlowKey),
    new_remote: (Vec<u8>, FlowKey),
    reply: Vec<u8>,
}

const SYN: u8 = TCP_SYN;
const ACK: u8 = TCP_ACK;

fn frames(b: &mut Bench) -> Result<Frames> {
    let xdp = programs::XDP_INGRESS;
    // Established flows: the first packet creates them.
    let est_local = client_frame(40_001, SELF_PORT, ACK);
    b.call(xdp, &client_frame(40_001, SELF_PORT, SYN), 1)?;
    b.call(xdp, &client_frame(40_002, REMOTE_PORT, SYN), 1)?;
    let est_remote = client_frame(40_002, REMOTE_PORT, ACK);
    let ct =
        b.dp.conntrack
            .get(&flow(CLIENT, 40_002, NODE, REMOTE_PORT, PROTO_TCP), 0)
            .context("the remote flow's conntrack entry")?;
    ensure!(ct.flags & CT_F_SNAT != 0, "the remote flow is SNATed");
    let &(_, backend, backend_port) = b
        .measured
        .iter()
        .find(|(id, _, _)| *id == ct.backend_id)
        .context("the remote flow's backend")?;
    let reply = Frame {
        src_mac: OTHER_NODE_MAC,
        ttl: 63,
        ..segment(
            backend,
            backend_port,
            NODE,
            u16::from_be(ct.snat_port_be),
            SYN | ACK,
        )
    }
    .bytes();
    Ok(Frames {
        pass: client_frame(40_000, 22, SYN),
        est_local,
        est_remote,
        new_local: (
            client_frame(40_003, LOCAL_PORT, SYN),
            flow(CLIENT, 40_003, NODE, LOCAL_PORT, PROTO_TCP),
        ),
        new_remote: (
            client_frame(40_004, REMOTE_PORT, SYN),
            flow(CLIENT, 40_004, NODE, REMOTE_PORT, PROTO_TCP),
        ),
        reply,
    })
}

/// Raw figures of one run at one size.
#[derive(Default)]
struct RunFigures {
    base_repeat: f64,
    base_single: f64,
    repeat: Vec<(Case, f64)>,
    single: Vec<(Case, f64)>,
}

fn one_run(b: &mut Bench, f: &Frames, config: &Config) -> Result<RunFigures> {
    let xdp = programs::XDP_INGRESS;
    let base = programs::XDP_PASS_BASELINE;
    let mut r = RunFigures {
        base_repeat: b.repeat_ns(base, &f.pass, config.repeat, XDP_PASS)?,
        base_single: b.single_ns(base, &f.pass, config.calls, XDP_PASS, |_| Ok(()))?,
        ..RunFigures::default()
    };
    for case in Case::ALL {
        let uncounted = case == Case::EstablishedLocalUncounted;
        if uncounted {
            b.dp.config_flags(nodeport_common::CONFIG_F_NO_SERVICE_COUNTERS)?;
        }
        let before = b.counter(case.counter())?;
        let mut expected = 0u64;
        if case.repeatable() {
            let frame = if case == Case::Pass {
                &f.pass
            } else {
                &f.est_local
            };
            r.repeat.push((
                case,
                b.repeat_ns(xdp, frame, config.repeat, case.verdict())?,
            ));
            expected += u64::from(config.repeat);
        }
        let ns = match case {
            Case::Pass => b.single_ns(xdp, &f.pass, config.calls, XDP_PASS, |_| Ok(()))?,
            Case::EstablishedLocal | Case::EstablishedLocalUncounted => {
                b.single_ns(xdp, &f.est_local, config.calls, XDP_PASS, |_| Ok(()))?
            }
            Case::EstablishedRemote => {
                b.single_ns(xdp, &f.est_remote, config.calls, XDP_TX, |_| Ok(()))?
            }
            Case::Reply => b.single_ns(xdp, &f.reply, config.calls, XDP_TX, |_| Ok(()))?,
            Case::NewLocal => {
                let (frame, key) = &f.new_local;
                b.single_ns(xdp, frame, config.calls, XDP_PASS, |b| b.forget_flow(key))?
            }
            Case::NewRemote => {
                let (frame, key) = &f.new_remote;
                b.single_ns(xdp, frame, config.calls, XDP_TX, |b| b.forget_flow(key))?
            }
        };
        r.single.push((case, ns));
        if uncounted {
            b.dp.config_flags(0)?;
        }
        expected += config.calls as u64;
        let got = b.counter(case.counter())? - before;
        ensure!(
            got == expected,
            "{}: the program counted {got} packets on this path ({}), expected {expected}",
            case.label(),
            stat::NAMES[case.counter() as usize]
        );
    }
    Ok(r)
}

/// Alternating runs of the established local flow with the counters on
/// and off ([`CounterCost`]).
fn counter_cost(
    b: &mut Bench,
    f: &Frames,
    config: &Config,
    services: usize,
) -> Result<CounterCost> {
    let xdp = programs::XDP_INGRESS;
    let mut diffs = Vec::with_capacity(config.counter_pairs);
    for i in 0..config.counter_pairs {
        let mut on = 0.0;
        let mut off = 0.0;
        for counted in [i % 2 == 0, i % 2 != 0] {
            let flags = if counted {
                0
            } else {
                nodeport_common::CONFIG_F_NO_SERVICE_COUNTERS
            };
            b.dp.config_flags(flags)?;
            let ns = b.repeat_ns(xdp, &f.est_local, config.repeat, XDP_PASS)?;
            if counted { on = ns } else { off = ns }
        }
        diffs.push(on - off);
    }
    b.dp.config_flags(0)?;
    let at = |q: f64| stats::quantile(&diffs, q).unwrap_or(f64::NAN);
    Ok(CounterCost {
        services,
        added_ns: at(0.5),
        q1_ns: at(0.25),
        q3_ns: at(0.75),
        pairs: diffs.len(),
    })
}

/// Ports of the default SNAT pool per (node address, backend, protocol).
pub fn snat_pool_size() -> usize {
    nodeport_common::SnatPool::of(&nodeport_common::Config::default()).size() as usize
}

/// New flows to a Service with one remote backend until the first is
/// dropped for want of an SNAT port; how many got one.
fn snat_ports_per_backend(b: &mut Bench) -> Result<usize> {
    let xdp = programs::XDP_INGRESS;
    let span = snat_pool_size();
    let before = b.counter(stat::DROP_SNAT_EXHAUSTED)?;
    for i in 0..span + 64 {
        // Distinct clients: one flow each.
        let client = super::synthetic::offset(Ipv4Addr::new(10, 201, 0, 0), i);
        let frame = segment(client, 50_000, NODE, PROBE_PORT, SYN).bytes();
        let (rc, _) = b.call(xdp, &frame, 1)?;
        if b.counter(stat::DROP_SNAT_EXHAUSTED)? > before {
            return Ok(i);
        }
        ensure!(
            rc == XDP_TX,
            "new flow {i} to the probe Service: verdict {rc}"
        );
    }
    Ok(span + 64)
}

/// Runs the benchmark on a thread of its own (in a private network
/// namespace, pinned to one CPU).
pub fn run(object: &[u8], config: &Config) -> Result<ProgramCost> {
    on_own_thread(|| run_here(object, config.clone()))
        .map_err(|_| anyhow::anyhow!("the program-cost thread panicked"))?
}

fn run_here(object: &[u8], config: Config) -> Result<ProgramCost> {
    let netns = PrivateNetns::enter()?;
    pin_to_cpu(config.cpu)?;
    let max = config.sizes.iter().copied().max().unwrap_or(1);
    let mut b = Bench::load(object, netns.ifindex(), max)?;
    let f = frames(&mut b)?;
    let mut sizes = config.sizes.clone();
    sizes.sort_unstable();
    let mut cells = Vec::new();
    let mut baselines = Vec::new();
    let mut counter_costs = Vec::new();
    for &n in &sizes {
        let t = Instant::now();
        b.fill_to(n)?;
        eprintln!(
            "bench: program cost at {n} Services (maps filled in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let runs: Vec<RunFigures> = (0..config.runs)
            .map(|_| one_run(&mut b, &f, &config))
            .collect::<Result<_>>()?;
        let cc = counter_cost(&mut b, &f, &config, n)?;
        eprintln!(
            "bench:   service counters add {:+.1} ns (quartiles {:+.1} .. {:+.1}, {} pairs)",
            cc.added_ns, cc.q1_ns, cc.q3_ns, cc.pairs
        );
        counter_costs.push(cc);
        let med = |v: Vec<f64>| stats::median(&v).unwrap_or(f64::NAN);
        let base_repeat = med(runs.iter().map(|r| r.base_repeat).collect());
        let base_single = med(runs.iter().map(|r| r.base_single).collect());
        baselines.push(Baseline {
            services: n,
            repeat_ns: base_repeat,
            single_ns: base_single,
        });
        for case in Case::ALL {
            let pick = |list: &[(Case, f64)]| list.iter().find(|(c, _)| *c == case).map(|x| x.1);
            let single = med(runs.iter().filter_map(|r| pick(&r.single)).collect());
            let repeat = case
                .repeatable()
                .then(|| med(runs.iter().filter_map(|r| pick(&r.repeat)).collect()));
            let ns = repeat.unwrap_or(single - base_single + base_repeat);
            eprintln!(
                "bench:   {:<34} {ns:7.1} ns  ({:.1}× XDP_PASS at {base_repeat:.1} ns; single-call median {single:.0} ns, XDP_PASS {base_single:.0} ns)",
                case.label(),
                ns / base_repeat
            );
            cells.push(Cell {
                case,
                services: n,
                ns,
                ratio: ns / base_repeat,
                single_ns: single,
                repeat_ns: repeat,
            });
        }
    }
    let snat_ports_per_backend = snat_ports_per_backend(&mut b)?;
    Ok(ProgramCost {
        cells,
        baselines,
        config,
        snat_ports_per_backend,
        counter_cost: counter_costs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums() {
        let f = client_frame(40_000, 31_000, SYN);
        assert_eq!(f.len(), 54);
        nodeport_tests::datapath::assert_checksums(&f);
    }

    /// A tiny run on the real object: every figure is there and finite
    /// (the run itself checks each call's verdict and the program's
    /// per-path counters); nothing that depends on the machine's speed.
    #[test]
    fn quick_program_cost_run_gives_sane_figures() {
        crate::bench::require_root_for_tests();
        let object = crate::bench::object_for_tests();
        let r = run(
            &object,
            &Config {
                sizes: vec![1],
                repeat: 10_000,
                runs: 3,
                calls: 200,
                cpu: 0,
                counter_pairs: 3,
            },
        )
        .expect("program-cost run");
        assert_eq!(r.cells.len(), Case::ALL.len());
        for c in &r.cells {
            assert!(c.ns.is_finite(), "{c:?}");
            assert!(c.ratio.is_finite(), "{c:?}");
            assert!(c.single_ns.is_finite(), "{c:?}");
        }
        assert!(r.baselines[0].repeat_ns.is_finite());
        assert!((1..=snat_pool_size()).contains(&r.snat_ports_per_backend));
        assert_eq!(r.counter_cost.len(), 1);
        assert_eq!(r.counter_cost[0].pairs, 3);
        assert!(r.counter_cost[0].added_ns.is_finite());
    }
}
