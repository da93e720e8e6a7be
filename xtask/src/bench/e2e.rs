//! End-to-end traffic on the namespace test cluster: the same Services
//! served by nodeport, by kube-proxy's iptables rules and by its nftables
//! rules, and the pods reached directly as the floor.
//!
//! One cluster per size: two nodes with one pod each, a client on the LAN.
//! The measured Service `bench` has five ports (TCP one request per
//! connection, the client resetting or the server closing first, TCP echo,
//! UDP, iperf3) with both pods as endpoints (iperf3's port: the pod on node 2
//! only, as its control and data connections must meet the same server); the other Services are fillers with endpoints that
//! take no traffic. Traffic enters node 1 at `node1:nodePort`. Every mode
//! programs both nodes, as a DaemonSet would.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::{Map, MapData, PerCpuArray};
use nodeport_common::{names, stat};
use nodeport_tests::cluster::{node_addr, pod_addr};
use nodeport_tests::{AgentOptions, Cluster, ClusterConfig, Netns};

use super::synthetic::{self, EndpointDef, PortDef, Proto, ServiceDef, SliceDef};
use super::traffic::{
    self, Close, ECHO_PORT, IPERF_PORT, ONESHOT_PORT, PodServers, RESET_PORT, UDP_PORT,
};
use super::{kube_proxy, stats};

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
}

/// One mode at one size.
#[derive(Clone, Debug)]
pub struct Row {
    pub mode: Mode,
    pub services: usize,
    /// New connections per second, the client resetting each after the
    /// response (median over the windows).
    pub conn_per_s: f64,
    pub conn_ok: u64,
    pub conn_errors: u64,
    /// The same with the server closing first (TIME_WAIT in the pods).
    pub conn_server_close_per_s: f64,
    pub conn_server_close_errors: u64,
    /// SYNs the pods' TIME_WAIT sockets refused meanwhile
    /// (`TcpExtPAWSTimewait`, both pods).
    pub paws_rejects: u64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_errors: u64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub throughput_gbit: f64,
    pub udp_sent_pps: f64,
    pub udp_received_pps: f64,
    /// Time to program node 1 (agent start to ready, `iptables-restore`,
    /// `nft -f`).
    pub programming_ms: Option<f64>,
}

/// The nodeport agent of node 1 at one size.
#[derive(Clone, Debug)]
pub struct AgentFigures {
    pub services: usize,
    /// Process start to "datapath ready" (load, attach, read the manifests,
    /// program the maps).
    pub ready_ms: f64,
    /// Resident set after the traffic, and its peak.
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Locked memory of the agent's pinned maps (`bpftool map show`).
    pub map_bytes: u64,
    /// Counters of node 1's datapath after the traffic that are drops.
    pub drops: Vec<(String, u64)>,
}

/// Everything the end-to-end benchmark measured.
#[derive(Clone, Debug)]
pub struct E2e {
    pub rows: Vec<Row>,
    pub agents: Vec<AgentFigures>,
    pub config: Config,
}

impl E2e {
    #[must_use]
    pub fn row(&self, mode: Mode, services: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.mode == mode && r.services == services)
    }
}

/// ClusterIP of the measured Service.
const BENCH_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
/// Client source ports, a range of 3,000 per mode. Separate ranges keep
/// one mode's connections from meeting the TIME_WAIT sockets another mode
/// left in the pods under the same address and port pair (a SYN the pod's
/// TIME_WAIT socket refuses costs the client a retransmission). 3,000 ports
/// keep nodeport's SNAT ports per remote backend from running out (see
/// BENCHMARKS.md).
fn client_ports(mode: Mode) -> &'static str {
    match mode {
        Mode::Direct => "40000 42999",
        Mode::Nodeport => "43000 45999",
        Mode::Iptables => "46000 48999",
        Mode::Nftables => "49000 51999",
    }
}

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
        ],
        slices: vec![
            SliceDef {
                ports: vec![0, 1, 2, 4],
                endpoints: vec![pod_endpoint(1), pod_endpoint(2)],
            },
            SliceDef {
                ports: vec![3],
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
                Some(synthetic::node_port(5 + i)),
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
        },
        _ => Targets {
            oneshot: vec![(node, synthetic::node_port(0)).into()],
            reset: vec![(node, synthetic::node_port(4)).into()],
            echo: vec![(node, synthetic::node_port(1)).into()],
            udp: vec![(node, synthetic::node_port(2)).into()],
            iperf: (node, synthetic::node_port(3)).into(),
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

/// `TcpExt: PAWSTimewait` of the namespace (read from the thread's own
/// view of `/proc/net`).
fn paws_timewait(ns: &Netns) -> u64 {
    ns.run(|| {
        let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap_or_default();
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return 0;
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "PAWSTimewait")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    })
}

fn pods_paws(cluster: &Cluster) -> u64 {
    paws_timewait(cluster.pod(1, 1).netns()) + paws_timewait(cluster.pod(2, 1).netns())
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

/// Non-zero drop counters of the datapath pinned under `bpffs`.
fn drop_counters(bpffs: &Path) -> Result<Vec<(String, u64)>> {
    let data = MapData::from_pin(bpffs.join(names::STATS)).context("the stats map")?;
    let map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::from_map_data(data)?).context("the stats map")?;
    let mut out = Vec::new();
    for (i, name) in stat::NAMES.iter().enumerate() {
        let v: u64 = map.get(&u32::try_from(i)?, 0)?.iter().sum();
        if v > 0 && name.starts_with("drop_") {
            out.push(((*name).to_string(), v));
        }
    }
    Ok(out)
}

fn measure(
    cluster: &Cluster,
    servers: &PodServers,
    mode: Mode,
    services: usize,
    config: &Config,
) -> Result<Row> {
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
    let rtt = client
        .run(|| traffic::round_trips(&t.echo, config.rtt_connections, config.rtt_samples))
        .with_context(|| format!("{}: round trips", mode.label()))?;
    eprintln!("bench:   {}: UDP", mode.label());
    let received = || servers.udp_total();
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
    // Last of the TCP tests: it leaves TIME_WAIT sockets in the pods.
    eprintln!(
        "bench:   {}: connections, server closing first",
        mode.label()
    );
    let paws_before = pods_paws(cluster);
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
    let paws_rejects = pods_paws(cluster) - paws_before;
    eprintln!("bench:   {}: iperf3", mode.label());
    let gbit = traffic::iperf(client, t.iperf, config.iperf_seconds)
        .with_context(|| format!("{}: iperf3", mode.label()))?;
    let lat = stats::micros(&lat);
    let rtt = stats::micros(&rtt);
    let row = Row {
        mode,
        services,
        conn_per_s: rate.median(),
        conn_ok: rate.ok,
        conn_errors: rate.errors,
        conn_server_close_per_s: server_close.median(),
        conn_server_close_errors: server_close.errors,
        paws_rejects,
        latency_p50_us: stats::median(&lat).unwrap_or(f64::NAN),
        latency_p99_us: stats::quantile(&lat, 0.99).unwrap_or(f64::NAN),
        latency_errors: lat_errors,
        rtt_p50_us: stats::median(&rtt).unwrap_or(f64::NAN),
        rtt_p99_us: stats::quantile(&rtt, 0.99).unwrap_or(f64::NAN),
        throughput_gbit: gbit,
        udp_sent_pps: stats::median(&udp.sent_per_window).unwrap_or(0.0),
        udp_received_pps: stats::median(&udp.received_per_window).unwrap_or(0.0),
        programming_ms: None,
    };
    eprintln!(
        "bench:   {}: {:.0} conn/s ({} errors; server closing first {:.0}, {} SYNs refused by TIME_WAIT), request p50 {:.0} µs p99 {:.0} µs, RTT p50 {:.0} µs, {:.2} Gbit/s, UDP {:.0} pps received",
        mode.label(),
        row.conn_per_s,
        row.conn_errors,
        row.conn_server_close_per_s,
        row.paws_rejects,
        row.latency_p50_us,
        row.latency_p99_us,
        row.rtt_p50_us,
        row.throughput_gbit,
        row.udp_received_pps
    );
    Ok(row)
}

/// Starts the agents (node 1 timed alone, then node 2), measures, stops
/// them and removes their datapath.
fn nodeport_mode(
    cluster: &Cluster,
    servers: &PodServers,
    svcs: &[ServiceDef],
    n: usize,
    config: &Config,
) -> Result<(Row, AgentFigures)> {
    cluster
        .manifests()
        .write("services.yaml", &synthetic::manifests_yaml(svcs));
    let (lo, hi) = synthetic::node_port_range(svcs);
    let opts = AgentOptions::new(cluster.manifests().dir())
        .arg("--service-node-port-range")
        .arg(format!("{lo}-{hi}"));
    let t = Instant::now();
    let agent1 = cluster.start_agent_with(1, &opts);
    agent1.wait_ready();
    let ready = t.elapsed();
    let agent2 = cluster.start_agent_with(2, &opts);
    agent2.wait_ready();
    let result = (|| {
        wait_serving(cluster.client_netns(), targets(Mode::Nodeport).reset[0])?;
        let mut row = measure(cluster, servers, Mode::Nodeport, n, config)?;
        row.programming_ms = Some(ready.as_secs_f64() * 1e3);
        let bpffs = cluster.node_bpffs(1);
        let agent = AgentFigures {
            services: n,
            ready_ms: ready.as_secs_f64() * 1e3,
            rss_kib: status_kib(agent1.pid(), "VmRSS:")?,
            hwm_kib: status_kib(agent1.pid(), "VmHWM:")?,
            map_bytes: map_bytes(&bpffs)?,
            drops: drop_counters(&bpffs)?,
        };
        eprintln!(
            "bench:   nodeport agent: ready in {:.0} ms, VmRSS {} KiB, drops {:?}",
            agent.ready_ms, agent.rss_kib, agent.drops
        );
        Ok((row, agent))
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

fn rules_mode(
    cluster: &Cluster,
    servers: &PodServers,
    svcs: &[ServiceDef],
    mode: Mode,
    n: usize,
    config: &Config,
) -> Result<Row> {
    let mut programming = None;
    for (i, node) in cluster.nodes().iter().enumerate() {
        let (program, args, text): (&str, &[&str], String) = match mode {
            Mode::Iptables => ("iptables-restore", &[], kube_proxy::iptables_restore(svcs)),
            Mode::Nftables => (
                "nft",
                &["-f", "-"],
                kube_proxy::nft_ruleset(svcs, &[node_addr(i + 1)]),
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
        let mut row = measure(cluster, servers, mode, n, config)?;
        row.programming_ms = programming;
        Ok(row)
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

fn run_size(n: usize, config: &Config, out: &mut E2e) -> Result<()> {
    eprintln!("bench: end to end, {n} Services: building the test cluster");
    let cluster = Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 1,
        pod_tcp_ports: Vec::new(),
        pod_udp_ports: Vec::new(),
        pod_tcp_echo_ports: Vec::new(),
        start_pod_servers: false,
        ..ClusterConfig::default()
    });
    prepare_namespaces(&cluster);
    let servers = PodServers::start(&[cluster.pod(1, 1).netns(), cluster.pod(2, 1).netns()])?;
    let _iperf = traffic::IperfServer::start(cluster.pod(2, 1).netns())?;
    let svcs = services(n);
    for &mode in &config.modes {
        eprintln!("bench: end to end, {n} Services, {}", mode.label());
        let row = match mode {
            Mode::Direct => {
                wait_serving(cluster.client_netns(), targets(Mode::Direct).reset[1])?;
                measure(&cluster, &servers, mode, n, config)?
            }
            Mode::Nodeport => {
                let (row, agent) = nodeport_mode(&cluster, &servers, &svcs, n, config)?;
                out.agents.push(agent);
                row
            }
            Mode::Iptables | Mode::Nftables => {
                rules_mode(&cluster, &servers, &svcs, mode, n, config)?
            }
        };
        out.rows.push(row);
    }
    Ok(())
}

/// Runs every size and mode.
pub fn run(config: &Config) -> Result<E2e> {
    let mut out = E2e {
        rows: Vec::new(),
        agents: Vec::new(),
        config: config.clone(),
    };
    for &n in &config.sizes {
        run_size(n.max(1), config, &mut out)?;
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
        assert_eq!(s[2].endpoints_of(3), vec![(pod_addr(2, 1), IPERF_PORT)]);
    }

    /// Every mode at one Service, briefly: the figures are there and sane.
    #[test]
    fn quick_end_to_end_run_gives_sane_figures() {
        crate::bench::require_root_for_tests();
        let config = super::super::quick_e2e_config();
        let r = run(&config).expect("end-to-end run");
        assert_eq!(r.rows.len(), Mode::ALL.len());
        for row in &r.rows {
            assert!(row.conn_per_s > 0.0, "{row:?}");
            assert!(row.conn_ok > 0, "{row:?}");
            assert!(row.conn_server_close_per_s > 0.0, "{row:?}");
            assert!(
                row.latency_p50_us > 0.0 && row.latency_p50_us.is_finite(),
                "{row:?}"
            );
            assert!(row.latency_p99_us >= row.latency_p50_us, "{row:?}");
            assert!(
                row.rtt_p50_us > 0.0 && row.rtt_p50_us.is_finite(),
                "{row:?}"
            );
            assert!(row.throughput_gbit > 0.0, "{row:?}");
            assert!(row.udp_received_pps > 0.0, "{row:?}");
        }
        let agent = &r.agents[0];
        assert!(agent.ready_ms > 0.0 && agent.rss_kib > 0 && agent.map_bytes > 0);
    }
}
