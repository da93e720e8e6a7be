//! End-to-end traffic on the namespace test cluster: the same Services
//! served by nodeport, by kube-proxy's iptables rules and by its nftables
//! rules, and the pods reached directly as the floor.
//!
//! One cluster per veth variant ([`Veths`]) and size: two nodes with one pod
//! each, a client on the LAN. The measured Service `bench` has eight ports:
//! TCP one request per connection (the client resetting or the server
//! closing first), TCP echo and UDP with both pods as endpoints; iperf3, two
//! more server-closes-first servers and an accept-and-hold server with only
//! the pod on node 2 (iperf3's control and data connections must meet the
//! same server; the others are the SNAT path, [`super::snat`]). The other
//! Services are fillers with endpoints that take no traffic. Traffic enters
//! node 1 at `node1:nodePort`. Every mode programs both nodes, as a
//! DaemonSet would. The nodeport agents run with their default
//! `--xdp-mode auto`; the mode they attached in is read from node 1's
//! device.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use nodeport_common::names;
use nodeport_tests::cluster::{node_addr, pod_addr};
use nodeport_tests::{AgentOptions, Cluster, ClusterConfig, Netns, Veths};

use super::counters::{self, XdpMode};
use super::hold::{HOLD_PORT, HoldServer};
use super::snat::{self, SnatRow};
use super::synthetic::{self, EndpointDef, PortDef, Proto, ServiceDef, SliceDef};
use super::traffic::{
    self, CLOSE_PACED_PORT, CLOSE_UNPACED_PORT, Close, ECHO_PORT, IPERF_PORT, ONESHOT_PORT,
    PodServers, RESET_PORT, UDP_PORT,
};
use super::{kube_proxy, stats};

/// How a veth variant is named in the report.
#[must_use]
pub fn veths_label(v: Veths) -> &'static str {
    match v {
        Veths::KernelDefaults => "kernel-default veths",
        Veths::LanGro => "veths with LAN-side GRO",
    }
}

/// A short name of a veth variant, for plot labels.
#[must_use]
pub fn veths_short(v: Veths) -> &'static str {
    match v {
        Veths::KernelDefaults => "default veths",
        Veths::LanGro => "LAN GRO",
    }
}

/// How a Service reaches its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// No Service: the client sends to the pods, routed through node 1.
    Direct,
    Nodeport,
    Iptables,
    Nftables,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Direct, Mode::Nodeport, Mode::Iptables, Mode::Nftables];

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct to pod (floor)",
            Mode::Nodeport => "nodeport (XDP)",
            Mode::Iptables => "kube-proxy iptables",
            Mode::Nftables => "kube-proxy nftables",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub sizes: Vec<usize>,
    /// Every size is run on each of these (a cluster each).
    pub variants: Vec<Veths>,
    pub modes: Vec<Mode>,
    pub warmup: Duration,
    pub window: Duration,
    pub windows: usize,
    pub conn_threads: usize,
    pub latency_samples: usize,
    pub rtt_connections: usize,
    pub rtt_samples: usize,
    pub udp_threads: usize,
    pub iperf_seconds: u32,
    /// The SNAT-path tests, run at the first size of each variant.
    pub snat: Option<snat::Config>,
}

/// One mode at one size on one veth variant.
#[derive(Clone, Debug)]
pub struct Row {
    pub veths: Veths,
    pub mode: Mode,
    pub services: usize,
    /// nodeport: the XDP mode node 1's agent attached in, and the mode at
    /// the end of the traffic (the agent may move a device whose native
    /// transmits fail to generic while it runs).
    pub xdp_mode: Option<XdpMode>,
    pub xdp_mode_end: Option<XdpMode>,
    /// New connections per second, the client resetting each after the
    /// response (median over the windows).
    pub conn_per_s: f64,
    pub conn_ok: u64,
    pub conn_errors: u64,
    /// The same with the server closing first (TIME_WAIT in the pods).
    pub conn_server_close_per_s: f64,
    pub conn_server_close_ok: u64,
    pub conn_server_close_errors: u64,
    /// SYNs the pods' TIME_WAIT sockets refused meanwhile
    /// (`TcpExtPAWSTimewait`, both pods).
    pub paws_rejects: u64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    /// Requests of the latency test completed and failed.
    pub latency_ok: u64,
    pub latency_errors: u64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    /// Round trips completed.
    pub rtt_ok: u64,
    pub throughput_gbit: f64,
    pub udp_sent_pps: f64,
    pub udp_received_pps: f64,
    /// Datagrams the pods' sinks received over the whole UDP test.
    pub udp_received: u64,
    /// Time to program node 1 (agent start to ready, `iptables-restore`,
    /// `nft -f`).
    pub programming_ms: Option<f64>,
}

impl Row {
    /// TCP connections completed over all of this row's tests (a count over
    /// the whole row, not a rate).
    #[must_use]
    pub fn connections_completed(&self) -> u64 {
        self.conn_ok + self.conn_server_close_ok + self.latency_ok
    }

    /// The datapath's label, with the XDP mode for nodeport.
    #[must_use]
    pub fn label(&self) -> String {
        let mode = |m: Option<XdpMode>| m.map_or("mode unknown", XdpMode::label);
        match self.mode {
            Mode::Nodeport if self.xdp_mode == self.xdp_mode_end => {
                format!("nodeport (XDP {})", mode(self.xdp_mode))
            }
            Mode::Nodeport => format!(
                "nodeport (XDP {} → {})",
                mode(self.xdp_mode),
                mode(self.xdp_mode_end)
            ),
            m => m.label().into(),
        }
    }
}

/// The nodeport agent of node 1 at one size.
#[derive(Clone, Debug)]
pub struct AgentFigures {
    pub veths: Veths,
    pub services: usize,
    /// The XDP mode it attached in (`--xdp-mode auto`), and the mode after
    /// the traffic.
    pub xdp_mode: Option<XdpMode>,
    pub xdp_mode_end: Option<XdpMode>,
    /// Process start to "datapath ready" (load, attach, read the manifests,
    /// program the maps).
    pub ready_ms: f64,
    /// Resident set after the traffic, and its peak.
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Locked memory of the agent's pinned maps (`bpftool map show`).
    pub map_bytes: u64,
    /// Every counter of node 1's datapath after the traffic.
    pub counters: BTreeMap<String, u64>,
}

impl AgentFigures {
    /// The counters that are drops (the program's own, and frames the
    /// kernel failed to transmit for it) and are not zero.
    #[must_use]
    pub fn drops(&self) -> Vec<(&str, u64)> {
        self.counters
            .iter()
            .filter(|(n, v)| (n.starts_with("drop_") || n.starts_with("tx_failed")) && **v > 0)
            .map(|(n, v)| (n.as_str(), *v))
            .collect()
    }
}

/// Everything the end-to-end benchmark measured.
#[derive(Clone, Debug)]
pub struct E2e {
    pub rows: Vec<Row>,
    pub agents: Vec<AgentFigures>,
    pub snat: Vec<SnatRow>,
    pub config: Config,
}

impl E2e {
    #[must_use]
    pub fn row(&self, veths: Veths, mode: Mode, services: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.veths == veths && r.mode == mode && r.services == services)
    }

    #[must_use]
    pub fn snat_row(&self, veths: Veths, mode: Mode) -> Option<&SnatRow> {
        self.snat
            .iter()
            .find(|r| r.veths == veths && r.mode == mode)
    }

    /// The XDP mode nodeport ran in on `veths` (the first size's).
    #[must_use]
    pub fn xdp_mode(&self, veths: Veths) -> Option<XdpMode> {
        self.agents
            .iter()
            .find(|a| a.veths == veths)
            .and_then(|a| a.xdp_mode)
    }
}

/// ClusterIP of the measured Service.
const BENCH_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
/// Client source ports, a range of 3,000 per mode. Separate ranges keep
/// one mode's connections from meeting the TIME_WAIT sockets another mode
/// left in the pods under the same address and port pair (a SYN the pod's
/// TIME_WAIT socket refuses costs the client a retransmission). The
/// SNAT-path tests ([`snat`]) set ranges of their own.
fn client_ports(mode: Mode) -> &'static str {
    match mode {
        Mode::Direct => "40000 42999",
        Mode::Nodeport => "43000 45999",
        Mode::Iptables => "46000 48999",
        Mode::Nftables => "49000 51999",
    }
}

/// The fillers' nodePorts start at this index ([`synthetic::node_port`]);
/// the ones below are the measured Service's.
const FILLER_NODE_PORTS: usize = 16;

fn pod_endpoint(node: usize) -> EndpointDef {
    EndpointDef {
        addr: pod_addr(node, 1),
        node: format!("node{node}"),
    }
}

/// The measured Service and `n - 1` fillers, the measured one in the middle
/// (kube-proxy's chains list Services in no particular order: the middle is
/// where a lookup ends on average).
#[must_use]
pub fn services(n: usize) -> Vec<ServiceDef> {
    let port = |name: &str, proto, port, node_port| PortDef {
        name: name.into(),
        proto,
        port,
        target_port: port,
        node_port: Some(synthetic::node_port(node_port)),
    };
    let bench = ServiceDef {
        name: "bench".into(),
        cluster_ip: BENCH_CLUSTER_IP,
        ports: vec![
            PortDef {
                port: 80,
                ..port("oneshot", Proto::Tcp, ONESHOT_PORT, 0)
            },
            PortDef {
                port: 81,
                ..port("echo", Proto::Tcp, ECHO_PORT, 1)
            },
            port("udp", Proto::Udp, UDP_PORT, 2),
            port("iperf", Proto::Tcp, IPERF_PORT, 3),
            PortDef {
                port: 82,
                ..port("reset", Proto::Tcp, RESET_PORT, 4)
            },
            PortDef {
                port: 83,
                ..port("close-paced", Proto::Tcp, CLOSE_PACED_PORT, 5)
            },
            PortDef {
                port: 84,
                ..port("close-unpaced", Proto::Tcp, CLOSE_UNPACED_PORT, 6)
            },
            PortDef {
                port: 85,
                ..port("hold", Proto::Tcp, HOLD_PORT, 7)
            },
        ],
        slices: vec![
            SliceDef {
                ports: vec![0, 1, 2, 4],
                endpoints: vec![pod_endpoint(1), pod_endpoint(2)],
            },
            SliceDef {
                ports: vec![3, 5, 6, 7],
                endpoints: vec![pod_endpoint(2)],
            },
        ],
    };
    let fillers: Vec<ServiceDef> = (0..n.saturating_sub(1))
        .map(|i| {
            // Endpoints that take no traffic, distinct per Service.
            let host = 100 + u8::try_from(i % 150).expect("< 150");
            let target = 10_000 + u16::try_from(i / 150).expect("fits");
            synthetic::filler(
                i,
                Some(synthetic::node_port(FILLER_NODE_PORTS + i)),
                target,
                vec![
                    EndpointDef {
                        addr: Ipv4Addr::new(10, 244, 1, host),
                        node: "node1".into(),
                    },
                    EndpointDef {
                        addr: Ipv4Addr::new(10, 244, 2, host),
                        node: "node2".into(),
                    },
                ],
            )
        })
        .collect();
    let half = fillers.len() / 2;
    let mut all = fillers;
    all.insert(half, bench);
    all
}

/// Where each measurement sends its traffic.
struct Targets {
    oneshot: Vec<SocketAddr>,
    reset: Vec<SocketAddr>,
    echo: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
    iperf: SocketAddr,
    /// The SNAT path: the pod on node 2 only.
    snat: snat::Targets,
}

fn targets(mode: Mode) -> Targets {
    let pods = [pod_addr(1, 1), pod_addr(2, 1)];
    let node = node_addr(1);
    match mode {
        Mode::Direct => Targets {
            oneshot: pods.iter().map(|&p| (p, ONESHOT_PORT).into()).collect(),
            reset: pods.iter().map(|&p| (p, RESET_PORT).into()).collect(),
            echo: pods.iter().map(|&p| (p, ECHO_PORT).into()).collect(),
            udp: pods.iter().map(|&p| (p, UDP_PORT).into()).collect(),
            iperf: (pods[1], IPERF_PORT).into(),
            snat: snat::Targets {
                paced: (pods[1], CLOSE_PACED_PORT).into(),
                unpaced: (pods[1], CLOSE_UNPACED_PORT).into(),
                hold: (pods[1], HOLD_PORT).into(),
            },
        },
        _ => Targets {
            oneshot: vec![(node, synthetic::node_port(0)).into()],
            reset: vec![(node, synthetic::node_port(4)).into()],
            echo: vec![(node, synthetic::node_port(1)).into()],
            udp: vec![(node, synthetic::node_port(2)).into()],
            iperf: (node, synthetic::node_port(3)).into(),
            snat: snat::Targets {
                paced: (node, synthetic::node_port(5)).into(),
                unpaced: (node, synthetic::node_port(6)).into(),
                hold: (node, synthetic::node_port(7)).into(),
            },
        },
    }
}

fn run_checked(mut cmd: Command, input: Option<&str>) -> Result<Duration> {
    let line = format!("{cmd:?}");
    let t = Instant::now();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {line}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("feeding {line}"))?;
    }
    let out = child.wait_with_output()?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{line} failed ({}): {}",
            out.status,
            err.lines().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(elapsed)
}

fn flush_netfilter(cluster: &Cluster) -> Result<()> {
    for node in cluster.nodes() {
        let mut cmd = node.netns().command("nft");
        cmd.args(["flush", "ruleset"]);
        run_checked(cmd, None)?;
    }
    Ok(())
}

/// Waits until one request through `to` succeeds (the rules or maps are
/// live), up to 10 s.
fn wait_serving(client: &Netns, to: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.run(|| traffic::request(to, Close::ClientReset)) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("no answer through {to} within 10 s: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// Locked bytes of every map pinned under `bpffs`.
fn map_bytes(bpffs: &Path) -> Result<u64> {
    let mut total = 0;
    for name in names::ALL {
        let pin = bpffs.join(name);
        if !pin.exists() {
            continue;
        }
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&pin)
            .output()
            .context("running bpftool")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("bpftool map show pinned {}", pin.display()))?;
        total += v["bytes_memlock"]
            .as_u64()
            .with_context(|| format!("bytes_memlock of {}", pin.display()))?;
    }
    Ok(total)
}

/// What every mode of one cluster shares.
struct Bench<'a> {
    cluster: &'a Cluster,
    servers: &'a PodServers,
    hold: &'a HoldServer,
    svcs: &'a [ServiceDef],
    veths: Veths,
    services: usize,
    config: &'a Config,
    /// Whether this cluster runs the SNAT-path tests.
    snat: bool,
}

/// Datagrams the sinks received, once they stopped counting more (the
/// sink threads may still be reading what the senders sent last): at most
/// 2 s.
fn udp_settled(servers: &PodServers) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = servers.udp_total();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = servers.udp_total();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn measure(b: &Bench, mode: Mode) -> (Row, Option<SnatRow>) {
    let (cluster, config) = (b.cluster, b.config);
    let client = cluster.client_netns();
    client.set_sysctl("net.ipv4.ip_local_port_range", client_ports(mode));
    let t = targets(mode);
    eprintln!("bench:   {}: connections", mode.label());
    let rate = client.run(|| {
        traffic::connection_rate(
            &t.reset,
            Close::ClientReset,
            config.conn_threads,
            config.warmup,
            config.window,
            config.windows,
        )
    });
    eprintln!("bench:   {}: latency", mode.label());
    let (lat, lat_errors) = client
        .run(|| traffic::request_latencies(&t.reset, Close::ClientReset, config.latency_samples));
    // A path that fails leaves its figures out (NaN, "–" in the report);
    // the run goes on.
    let rtt = client
        .run(|| traffic::round_trips(&t.echo, config.rtt_connections, config.rtt_samples))
        .unwrap_or_else(|e| {
            eprintln!("bench:   {}: round trips failed: {e}", mode.label());
            Vec::new()
        });
    eprintln!("bench:   {}: UDP", mode.label());
    let received = || b.servers.udp_total();
    let udp_before = b.servers.udp_total();
    let udp = client.run(|| {
        traffic::udp_rate(
            &t.udp,
            config.udp_threads,
            &received,
            config.warmup,
            config.window,
            config.windows,
        )
    });
    let udp_received = udp_settled(b.servers) - udp_before;
    // Last of these TCP tests: it leaves TIME_WAIT sockets in the pods.
    eprintln!(
        "bench:   {}: connections, server closing first",
        mode.label()
    );
    let paws_before = counters::pods_paws(cluster);
    let server_close = client.run(|| {
        traffic::connection_rate(
            &t.oneshot,
            Close::ServerFirst,
            config.conn_threads,
            config.warmup,
            config.window,
            config.windows,
        )
    });
    let paws_rejects = counters::pods_paws(cluster).saturating_sub(paws_before);
    eprintln!("bench:   {}: iperf3", mode.label());
    let gbit = traffic::iperf(client, t.iperf, config.iperf_seconds).unwrap_or_else(|e| {
        eprintln!("bench:   {}: iperf3 failed: {e:#}", mode.label());
        f64::NAN
    });
    let lat = stats::micros(&lat);
    let rtt = stats::micros(&rtt);
    let row = Row {
        veths: b.veths,
        mode,
        services: b.services,
        xdp_mode: None,
        xdp_mode_end: None,
        conn_per_s: rate.median(),
        conn_ok: rate.ok,
        conn_errors: rate.errors,
        conn_server_close_per_s: server_close.median(),
        conn_server_close_ok: server_close.ok,
        conn_server_close_errors: server_close.errors,
        paws_rejects,
        latency_p50_us: stats::median(&lat).unwrap_or(f64::NAN),
        latency_p99_us: stats::quantile(&lat, 0.99).unwrap_or(f64::NAN),
        latency_ok: lat.len() as u64,
        latency_errors: lat_errors,
        rtt_p50_us: stats::median(&rtt).unwrap_or(f64::NAN),
        rtt_p99_us: stats::quantile(&rtt, 0.99).unwrap_or(f64::NAN),
        rtt_ok: rtt.len() as u64,
        throughput_gbit: gbit,
        udp_sent_pps: stats::median(&udp.sent_per_window).unwrap_or(f64::NAN),
        udp_received_pps: stats::median(&udp.received_per_window).unwrap_or(f64::NAN),
        udp_received,
        programming_ms: None,
    };
    print_row(&row);
    let snat = snat_figures(b, mode, t.snat);
    (row, snat)
}

fn print_row(row: &Row) {
    eprintln!(
        "bench:   {}: {:.0} conn/s ({} errors; server closing first {:.0}, {} SYNs refused by TIME_WAIT), request p50 {:.0} µs p99 {:.0} µs, RTT p50 {:.0} µs ({} round trips), {:.2} Gbit/s, UDP {:.0} pps received ({} datagrams); {} connections completed",
        row.mode.label(),
        row.conn_per_s,
        row.conn_errors,
        row.conn_server_close_per_s,
        row.paws_rejects,
        row.latency_p50_us,
        row.latency_p99_us,
        row.rtt_p50_us,
        row.rtt_ok,
        row.throughput_gbit,
        row.udp_received_pps,
        row.udp_received,
        row.connections_completed()
    );
}

/// The SNAT-path tests, where this cluster and mode run them.
fn snat_figures(b: &Bench, mode: Mode, targets: snat::Targets) -> Option<SnatRow> {
    let config = b.config.snat.as_ref()?;
    (b.snat && config.modes.contains(&mode)).then(|| {
        snat::measure(
            &snat::Bench {
                cluster: b.cluster,
                hold: b.hold,
                veths: b.veths,
                services: b.services,
                config,
                e2e: b.config,
            },
            mode,
            targets,
        )
    })
}

/// Starts the agents (node 1 timed alone, then node 2), measures, stops
/// them and removes their datapath.
fn nodeport_mode(b: &Bench) -> Result<(Row, Option<SnatRow>, AgentFigures)> {
    let cluster = b.cluster;
    cluster
        .manifests()
        .write("services.yaml", &synthetic::manifests_yaml(b.svcs));
    let (lo, hi) = synthetic::node_port_range(b.svcs);
    let opts = AgentOptions::new(cluster.manifests().dir())
        .arg("--service-node-port-range")
        .arg(format!("{lo}-{hi}"));
    let t = Instant::now();
    let agent1 = cluster.start_agent_with(1, &opts);
    agent1.wait_ready();
    let ready = t.elapsed();
    let agent2 = cluster.start_agent_with(2, &opts);
    agent2.wait_ready();
    let xdp_mode = counters::xdp_mode(cluster.node(1).netns(), "eth0");
    eprintln!(
        "bench:   nodeport agent on node 1 attached XDP in {} mode ({})",
        xdp_mode.map_or("an unknown", XdpMode::label),
        veths_label(b.veths)
    );
    let result = (|| {
        wait_serving(cluster.client_netns(), targets(Mode::Nodeport).reset[0])?;
        let (mut row, snat_row) = measure(b, Mode::Nodeport);
        row.programming_ms = Some(ready.as_secs_f64() * 1e3);
        let xdp_mode_end = counters::xdp_mode(cluster.node(1).netns(), "eth0");
        if xdp_mode_end != xdp_mode {
            eprintln!(
                "bench:   node 1's XDP mode changed during the traffic: now {}",
                xdp_mode_end.map_or("unknown", XdpMode::label)
            );
        }
        row.xdp_mode = xdp_mode;
        row.xdp_mode_end = xdp_mode_end;
        let bpffs = cluster.node_bpffs(1);
        let agent = AgentFigures {
            veths: b.veths,
            services: b.services,
            xdp_mode,
            xdp_mode_end,
            ready_ms: ready.as_secs_f64() * 1e3,
            rss_kib: status_kib(agent1.pid(), "VmRSS:")?,
            hwm_kib: status_kib(agent1.pid(), "VmHWM:")?,
            map_bytes: map_bytes(&bpffs)?,
            counters: counters::datapath(cluster, 1)?,
        };
        eprintln!(
            "bench:   nodeport agent: ready in {:.0} ms, VmRSS {} KiB, drops {:?}",
            agent.ready_ms,
            agent.rss_kib,
            agent.drops()
        );
        Ok((row, snat_row, agent))
    })();
    drop(agent1);
    drop(agent2);
    for i in 1..=2 {
        let bpffs = cluster.node_bpffs(i);
        let out = cluster.agent_cli(i, &["cleanup", "--bpffs", &bpffs.to_string_lossy()]);
        ensure!(
            out.status.success(),
            "nodeport-agent cleanup on node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    result
}

fn rules_mode(b: &Bench, mode: Mode) -> Result<(Row, Option<SnatRow>)> {
    let cluster = b.cluster;
    let mut programming = None;
    for (i, node) in cluster.nodes().iter().enumerate() {
        let (program, args, text): (&str, &[&str], String) = match mode {
            Mode::Iptables => (
                "iptables-restore",
                &[],
                kube_proxy::iptables_restore(b.svcs),
            ),
            Mode::Nftables => (
                "nft",
                &["-f", "-"],
                kube_proxy::nft_ruleset(b.svcs, &[node_addr(i + 1)]),
            ),
            _ => unreachable!("rules modes only"),
        };
        let mut cmd = node.netns().command(program);
        cmd.args(args);
        let took = run_checked(cmd, Some(&text))?;
        if i == 0 {
            programming = Some(took.as_secs_f64() * 1e3);
        }
    }
    let result = (|| {
        wait_serving(cluster.client_netns(), targets(mode).reset[0])?;
        let (mut row, snat_row) = measure(b, mode);
        row.programming_ms = programming;
        Ok((row, snat_row))
    })();
    flush_netfilter(cluster)?;
    result
}

fn prepare_namespaces(cluster: &Cluster) {
    for node in cluster.nodes() {
        // Node 1 forwards the direct traffic to node 2's pod out of the
        // device it came in on: no ICMP redirects to the client.
        node.netns()
            .set_sysctl("net.ipv4.conf.all.send_redirects", "0");
        node.netns()
            .set_sysctl("net.ipv4.conf.eth0.send_redirects", "0");
    }
    let client = cluster.client_netns();
    client.ip(&[
        "route",
        "add",
        "10.244.0.0/16",
        "via",
        &node_addr(1).to_string(),
    ]);
}

fn run_size(veths: Veths, n: usize, snat: bool, config: &Config, out: &mut E2e) -> Result<()> {
    let variant = veths_label(veths);
    eprintln!("bench: end to end, {n} Services, {variant}: building the test cluster");
    let cluster = Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 1,
        pod_tcp_ports: Vec::new(),
        pod_udp_ports: Vec::new(),
        pod_tcp_echo_ports: Vec::new(),
        start_pod_servers: false,
        veths,
        agent_capabilities: None,
    });
    prepare_namespaces(&cluster);
    let servers = PodServers::start(&[cluster.pod(1, 1).netns(), cluster.pod(2, 1).netns()])?;
    let hold = HoldServer::start(cluster.pod(2, 1).netns(), HOLD_PORT)?;
    let _iperf = traffic::IperfServer::start(cluster.pod(2, 1).netns())?;
    let svcs = services(n);
    let b = Bench {
        cluster: &cluster,
        servers: &servers,
        hold: &hold,
        svcs: &svcs,
        veths,
        services: n,
        config,
        snat,
    };
    for &mode in &config.modes {
        eprintln!(
            "bench: end to end, {n} Services, {variant}, {}",
            mode.label()
        );
        let (row, snat_row) = match mode {
            Mode::Direct => {
                wait_serving(cluster.client_netns(), targets(Mode::Direct).reset[1])?;
                measure(&b, mode)
            }
            Mode::Nodeport => {
                let (row, snat_row, agent) = nodeport_mode(&b)?;
                out.agents.push(agent);
                (row, snat_row)
            }
            Mode::Iptables | Mode::Nftables => rules_mode(&b, mode)?,
        };
        out.rows.push(row);
        out.snat.extend(snat_row);
    }
    Ok(())
}

/// Runs every variant, size and mode.
pub fn run(config: &Config) -> Result<E2e> {
    let mut out = E2e {
        rows: Vec::new(),
        agents: Vec::new(),
        snat: Vec::new(),
        config: config.clone(),
    };
    for &veths in &config.variants {
        for (k, &n) in config.sizes.iter().enumerate() {
            run_size(veths, n.max(1), k == 0, config, &mut out)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_service_sits_in_the_middle() {
        let s = services(5);
        assert_eq!(s.len(), 5);
        assert_eq!(s[2].name, "bench");
        let nps: Vec<u16> = s
            .iter()
            .flat_map(|s| s.ports.iter().filter_map(|p| p.node_port))
            .collect();
        let mut dedup = nps.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), nps.len(), "nodePorts are distinct");
        assert_eq!(services(1).len(), 1);
        // iperf3 and the SNAT path: the pod on node 2 only.
        for (port, target) in [
            (3, IPERF_PORT),
            (5, CLOSE_PACED_PORT),
            (6, CLOSE_UNPACED_PORT),
            (7, HOLD_PORT),
        ] {
            assert_eq!(s[2].endpoints_of(port), vec![(pod_addr(2, 1), target)]);
        }
        let t = targets(Mode::Nodeport);
        assert_eq!(t.snat.hold, (node_addr(1), synthetic::node_port(7)).into());
        assert_eq!(
            targets(Mode::Direct).snat.hold,
            (pod_addr(2, 1), HOLD_PORT).into()
        );
    }

    /// Every variant and mode at one Service, briefly. Asserts only what
    /// noise on a loaded machine cannot break: every row is there, every
    /// figure is finite, every path carried traffic over its whole test (a
    /// count of completed connections or datagrams, never a rate in a short
    /// window), and nodeport's SNAT path was taken (its own counters).
    #[test]
    fn quick_end_to_end_run_gives_sane_figures() {
        crate::bench::require_root_for_tests();
        let config = super::super::quick_e2e_config();
        let r = run(&config).expect("end-to-end run");
        assert_eq!(r.rows.len(), config.variants.len() * config.modes.len());
        for row in &r.rows {
            for v in [
                row.conn_per_s,
                row.conn_server_close_per_s,
                row.latency_p50_us,
                row.latency_p99_us,
                row.rtt_p50_us,
                row.rtt_p99_us,
                row.throughput_gbit,
                row.udp_sent_pps,
                row.udp_received_pps,
            ] {
                assert!(v.is_finite(), "{row:?}");
            }
            assert!(row.connections_completed() > 0, "{row:?}");
            assert!(row.rtt_ok > 0, "{row:?}");
            assert!(row.udp_received > 0, "{row:?}");
            if row.mode == Mode::Nodeport {
                assert!(row.xdp_mode.is_some(), "XDP attached on node 1: {row:?}");
                assert!(row.programming_ms.is_some_and(f64::is_finite), "{row:?}");
            }
        }
        assert_eq!(r.agents.len(), config.variants.len());
        for agent in &r.agents {
            assert!(agent.ready_ms.is_finite() && agent.rss_kib > 0 && agent.map_bytes > 0);
            for counter in ["forward_remote", "reply_remote"] {
                assert!(
                    agent.counters.get(counter).is_some_and(|&n| n > 0),
                    "{counter} counted over the run: {:?}",
                    agent.counters
                );
            }
        }
        let snat = config.snat.as_ref().expect("the quick run has SNAT tests");
        assert_eq!(r.snat.len(), config.variants.len() * snat.modes.len());
        for row in &r.snat {
            assert!(row.paced.per_s.is_finite(), "{row:?}");
            assert!(row.unpaced.per_s.is_finite(), "{row:?}");
            // A count over the three tests, not a rate.
            let completed = row.paced.ok + row.unpaced.ok + row.concurrent.held as u64;
            assert!(completed > 0, "{row:?}");
            let c = &row.concurrent;
            assert!(c.held <= c.max && c.acknowledged <= c.held, "{row:?}");
            if row.mode == Mode::Nodeport {
                assert!(c.drops.is_some(), "{} read: {row:?}", c.drop_counter);
            }
        }
    }
}
