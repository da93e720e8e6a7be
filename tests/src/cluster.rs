//! The test cluster: a client and N nodes on one L2 segment, each node with a
//! pod CIDR and pods behind a bridge, routed flannel host-gw style.
//!
//! ```text
//! namespace        interface   address            notes
//! <id>-lan         br0         -                  bridge: the LAN
//!                  veth-c      -                  port of br0, peer: client eth0
//!                  veth-nI     -                  port of br0, peer: nodeI eth0
//! <id>-c           eth0        10.200.0.2/24      the external client; no route to pods
//! <id>-nI          eth0        10.200.0.(10+I)/24 nodeI, where the datapath attaches
//!                  cni0        10.244.I.1/24      bridge of the pod CIDR
//!                  veth-pK     -                  port of cni0, peer: pod K eth0
//!                  routes      10.244.J.0/24 via 10.200.0.(10+J) for every other node J
//! <id>-nIpK        eth0        10.244.I.(10+K)/24 pod K of node I, default via 10.244.I.1
//! ```
//!
//! `<id>` is `np` and 6 random hex digits, so names stay short (interface-name
//! sized) and clusters can coexist. Nodes and pods are numbered from 1. Nodes
//! forward IPv4 and have `rp_filter` off. `lo` is up everywhere.
//!
//! The veth ends keep the kernel's defaults unless [`ClusterConfig::veths`]
//! says otherwise ([`Veths`]): GRO off and TX checksum offload on, as on the
//! host side of a kind node or a container's veth. So a node's native
//! `XDP_TX` / redirect does not deliver (the LAN-side peer has neither GRO
//! nor an XDP program) and frames from the client and the pods carry
//! partial checksums (`CHECKSUM_PARTIAL`: the checksum field holds only the
//! pseudo-header sum). The datapath must cope with both; the test
//! environment is never kinder than a user's host.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::agent::{Agent, AgentOptions, AgentSetup, agent_binary};
use crate::cgroup::Cgroups;
use crate::client::Client;
use crate::manifests::Manifests;
use crate::netns::Netns;
use crate::server::{PodServer, SERVER_READY_TIMEOUT, Server, ServerSpec};
use crate::util::{DirGuard, random_hex, run_output};

/// The client's address on the LAN.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);

/// Prefix length of the LAN and of every pod CIDR.
pub const PREFIX_LEN: u8 = 24;

/// Node `i`'s address on the LAN: 10.200.0.(10+i).
#[must_use]
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, octet(10 + i))
}

/// Node `i`'s pod CIDR, `10.244.i.0/24`.
#[must_use]
pub fn pod_cidr(i: usize) -> String {
    format!("10.244.{}.0/{PREFIX_LEN}", octet(i))
}

/// Node `i`'s address on its pod bridge and the pods' gateway: 10.244.i.1.
#[must_use]
pub fn pod_gateway(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, octet(i), 1)
}

/// Pod `k` of node `i`: 10.244.i.(10+k).
#[must_use]
pub fn pod_addr(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, octet(i), octet(10 + k))
}

/// The name pod `k` of node `i` reports in its answers: `nodeI-podK`.
#[must_use]
pub fn pod_name(i: usize, k: usize) -> String {
    format!("node{i}-pod{k}")
}

fn octet(n: usize) -> u8 {
    u8::try_from(n).unwrap_or_else(|_| panic!("{n} does not fit an address octet"))
}

/// The shape of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of nodes (1..=200).
    pub nodes: usize,
    /// Pods per node (0..=200).
    pub pods_per_node: usize,
    /// TCP ports each pod's server answers on.
    pub pod_tcp_ports: Vec<u16>,
    /// UDP ports each pod's server answers on.
    pub pod_udp_ports: Vec<u16>,
    /// TCP ports where the pod's server echoes after its line.
    pub pod_tcp_echo_ports: Vec<u16>,
    /// Start an `np-podserver` in every pod.
    pub start_pod_servers: bool,
    /// How the veth ends are set up (see the module docs).
    pub veths: Veths,
    /// Agents run with only these capabilities (unless their options say
    /// otherwise); `None`: as root with every capability.
    pub agent_capabilities: Option<Vec<String>>,
}

/// How the cluster's veth ends are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Veths {
    /// Every veth end as the kernel creates it: GRO off, TX checksum offload
    /// on. A node's native `XDP_TX` / redirect does not deliver here.
    KernelDefaults,
    /// As [`Veths::KernelDefaults`], but the LAN-side end of every node's
    /// veth has GRO on, so a node's native `XDP_TX` / redirect delivers (as
    /// on a physical NIC). TX checksum offload stays on.
    LanGro,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 2,
            pods_per_node: 2,
            pod_tcp_ports: vec![8080, 8081],
            pod_udp_ports: vec![8080, 8081],
            pod_tcp_echo_ports: vec![9000],
            start_pod_servers: true,
            veths: Veths::KernelDefaults,
            agent_capabilities: None,
        }
    }
}

/// A pod: a network namespace behind its node's `cni0`.
#[derive(Debug)]
pub struct Pod {
    /// `nodeI-podK`, what its server answers with.
    pub name: String,
    /// 1-based index of its node.
    pub node_index: usize,
    /// 1-based index within its node.
    pub index: usize,
    pub addr: Ipv4Addr,
    // Dropped before the namespace.
    server: Option<PodServer>,
    netns: Netns,
}

impl Pod {
    #[must_use]
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Client helpers running inside this pod (e.g. for hairpin traffic).
    #[must_use]
    pub fn client(&self) -> Client<'_> {
        Client::new(&self.netns)
    }

    /// The pod's `np-podserver`, unless the cluster was configured without.
    #[must_use]
    pub fn server(&self) -> Option<&PodServer> {
        self.server.as_ref()
    }
}

/// A node: a network namespace on the LAN with its pods.
#[derive(Debug)]
pub struct Node {
    /// 1-based.
    pub index: usize,
    /// `nodeI`, the agent's `--node-name`.
    pub name: String,
    /// Address of `eth0` on the LAN.
    pub addr: Ipv4Addr,
    /// `10.244.I.0/24`.
    pub pod_cidr: String,
    /// Address of `cni0`, the pods' default gateway.
    pub gateway: Ipv4Addr,
    // Dropped before the namespace.
    pods: Vec<Pod>,
    netns: Netns,
}

impl Node {
    #[must_use]
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Client helpers running inside the node namespace.
    #[must_use]
    pub fn client(&self) -> Client<'_> {
        Client::new(&self.netns)
    }

    #[must_use]
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Pod `k` (1-based).
    #[must_use]
    pub fn pod(&self, k: usize) -> &Pod {
        assert!(
            (1..=self.pods.len()).contains(&k),
            "{} has pods 1..={}, not {k}",
            self.name,
            self.pods.len()
        );
        &self.pods[k - 1]
    }
}

/// The test cluster. Everything it made is torn down on drop: processes
/// killed, namespaces deleted, its bpffs directory and temporary directory
/// removed (set `NODEPORT_TESTS_KEEP=1` to keep the temporary directory with
/// its logs).
#[derive(Debug)]
pub struct Cluster {
    // Fields drop in order: processes and namespaces first, directories last.
    nodes: Vec<Node>,
    client: Netns,
    lan: Netns,
    id: String,
    config: ClusterConfig,
    manifests: Manifests,
    spawned: AtomicUsize,
    cgroups: Cgroups,
    bpffs: DirGuard,
    temp: DirGuard,
}

impl Cluster {
    /// A cluster of `nodes` nodes, otherwise [`ClusterConfig::default`].
    #[must_use]
    pub fn new(nodes: usize) -> Cluster {
        Cluster::with_config(ClusterConfig {
            nodes,
            ..ClusterConfig::default()
        })
    }

    /// Builds the cluster and starts the pod servers (waiting until they are
    /// ready). Panics with the failing step if anything goes wrong; what was
    /// built so far is torn down.
    #[must_use]
    pub fn with_config(config: ClusterConfig) -> Cluster {
        crate::require_root();
        check_tools();
        assert!(
            (1..=200).contains(&config.nodes),
            "nodes must be 1..=200, got {}",
            config.nodes
        );
        assert!(
            config.pods_per_node <= 200,
            "pods_per_node must be 0..=200, got {}",
            config.pods_per_node
        );
        crate::ensure_bpffs();

        let id = loop {
            let id = format!("np{}", random_hex(3));
            if !Netns::exists(&format!("{id}-lan"))
                && !Path::new(crate::BPFFS_ROOT).join(&id).exists()
            {
                break id;
            }
        };
        let keep =
            std::env::var_os("NODEPORT_TESTS_KEEP").is_some_and(|v| !v.is_empty() && v != "0");
        let temp = DirGuard::create(
            std::env::temp_dir().join(format!("nodeport-tests-{id}")),
            keep,
        );
        let logs = temp.path().join("logs");
        std::fs::create_dir(&logs)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", logs.display()));
        let manifests = Manifests::create(temp.path().join("manifests"));
        let bpffs = DirGuard::create(Path::new(crate::BPFFS_ROOT).join(&id), false);
        let cgroups = Cgroups::create(&id, config.nodes);
        let veths = config.veths;

        let lan = Netns::create(&format!("{id}-lan"));
        lan.ip(&["link", "add", "br0", "type", "bridge"]);
        lan.ip(&["link", "set", "br0", "up"]);

        let client = Netns::create(&format!("{id}-c"));
        attach_to_lan(&lan, "veth-c", &client, CLIENT_ADDR, false);

        let mut nodes = Vec::with_capacity(config.nodes);
        for i in 1..=config.nodes {
            nodes.push(add_node(&id, &lan, i, config.pods_per_node, veths));
        }
        for node in &nodes {
            for other in nodes.iter().filter(|o| o.index != node.index) {
                node.netns.ip(&[
                    "route",
                    "add",
                    &other.pod_cidr,
                    "via",
                    &other.addr.to_string(),
                    "dev",
                    "eth0",
                ]);
            }
        }

        let mut cluster = Cluster {
            nodes,
            client,
            lan,
            id,
            config,
            manifests,
            spawned: AtomicUsize::new(0),
            cgroups,
            bpffs,
            temp,
        };
        if cluster.config.start_pod_servers {
            cluster.start_pod_servers();
        }
        cluster
    }

    fn start_pod_servers(&mut self) {
        let logs = self.logs_dir();
        let config = self.config.clone();
        // Spawn all, then wait for all: the servers bind in parallel.
        for node in &mut self.nodes {
            for pod in &mut node.pods {
                let spec = ServerSpec::new(&pod.name)
                    .tcp(&config.pod_tcp_ports)
                    .udp(&config.pod_udp_ports)
                    .tcp_echo(&config.pod_tcp_echo_ports);
                let log = logs.join(format!("{}.log", pod.name));
                pod.server = Some(PodServer::spawn(&pod.netns, &spec, &log));
            }
        }
        for node in &mut self.nodes {
            for pod in &mut node.pods {
                if let Some(server) = pod.server.as_mut() {
                    server.wait_ready(SERVER_READY_TIMEOUT);
                }
            }
        }
    }

    /// `np` and 6 hex digits; prefix of every namespace name, and the name
    /// of the cluster's bpffs and temporary directories.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    #[must_use]
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Client helpers running in the client namespace.
    #[must_use]
    pub fn client(&self) -> Client<'_> {
        Client::new(&self.client)
    }

    #[must_use]
    pub fn client_netns(&self) -> &Netns {
        &self.client
    }

    #[must_use]
    pub fn client_addr(&self) -> Ipv4Addr {
        CLIENT_ADDR
    }

    /// The namespace holding the LAN bridge `br0` (e.g. to capture traffic).
    #[must_use]
    pub fn lan_netns(&self) -> &Netns {
        &self.lan
    }

    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i` (1-based).
    #[must_use]
    pub fn node(&self, i: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "the cluster has nodes 1..={}, not {i}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    /// Pod `k` of node `i` (both 1-based).
    #[must_use]
    pub fn pod(&self, i: usize, k: usize) -> &Pod {
        self.node(i).pod(k)
    }

    /// All pods, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// The names of all namespaces of the cluster.
    #[must_use]
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![self.lan.name().to_owned(), self.client.name().to_owned()];
        for node in &self.nodes {
            names.push(node.netns.name().to_owned());
            names.extend(node.pods.iter().map(|p| p.netns.name().to_owned()));
        }
        names
    }

    /// The cluster's temporary directory.
    #[must_use]
    pub fn temp_dir(&self) -> &Path {
        self.temp.path()
    }

    /// Where agent and server logs go.
    #[must_use]
    pub fn logs_dir(&self) -> PathBuf {
        self.temp.path().join("logs")
    }

    /// `/sys/fs/bpf/<id>`, parent of the agents' `--bpffs` directories.
    #[must_use]
    pub fn bpffs_dir(&self) -> &Path {
        self.bpffs.path()
    }

    /// Node `i`'s cgroup: its agent's `--cgroup-root`, where the processes
    /// standing for its pods run.
    #[must_use]
    pub fn node_cgroup(&self, i: usize) -> &Path {
        self.cgroups.node(i)
    }

    /// A command that runs `program` inside pod `k` of node `i`: in the
    /// pod's network namespace and the node's cgroup, as a process of that
    /// pod would (its connections get the node's socket load balancing).
    #[must_use]
    pub fn pod_command(&self, i: usize, k: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = self.pod(i, k).netns().command(program);
        crate::cgroup::join_on_exec(&mut cmd, self.node_cgroup(i));
        cmd
    }

    /// `np-client tcp|udp ADDR PORT` run inside pod `k` of node `i`: the
    /// answer line, or the client's error.
    pub fn pod_request(
        &self,
        i: usize,
        k: usize,
        proto: &str,
        addr: Ipv4Addr,
        port: u16,
    ) -> Result<String, String> {
        let out = self
            .pod_command(i, k, crate::server::client_binary())
            .args([proto, &addr.to_string(), &port.to_string()])
            .output()
            .map_err(|e| format!("cannot run np-client: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// `/sys/fs/bpf/<id>/nodeI`, node `i`'s `--bpffs`.
    #[must_use]
    pub fn node_bpffs(&self, i: usize) -> PathBuf {
        self.bpffs.path().join(&self.node(i).name)
    }

    /// The cluster's default manifests directory.
    #[must_use]
    pub fn manifests(&self) -> &Manifests {
        &self.manifests
    }

    /// Another manifests directory (e.g. to give nodes different views),
    /// `<temp>/manifests-<name>`.
    #[must_use]
    pub fn new_manifests(&self, name: &str) -> Manifests {
        Manifests::create(self.temp.path().join(format!("manifests-{name}")))
    }

    fn next_seq(&self) -> usize {
        self.spawned.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts `nodeport-agent run` on node `i` with `--manifests
    /// manifests_dir`; see [`crate::agent`] for the command line. Does not
    /// wait for it: call [`Agent::wait_ready`].
    #[must_use]
    pub fn start_agent(&self, i: usize, manifests_dir: &Path) -> Agent<'_> {
        self.start_agent_with(i, &AgentOptions::new(manifests_dir))
    }

    /// [`Cluster::start_agent`] with extra arguments, environment or binary.
    #[must_use]
    pub fn start_agent_with(&self, i: usize, options: &AgentOptions) -> Agent<'_> {
        let node = self.node(i);
        let restricted;
        let options = match &self.config.agent_capabilities {
            Some(caps) if options.capabilities.is_none() => {
                restricted = options.clone().capabilities(caps);
                &restricted
            }
            _ => options,
        };
        let setup = AgentSetup {
            ns: &node.netns,
            node_index: i,
            node_name: node.name.clone(),
            bpffs: self.node_bpffs(i),
            cgroup: self.node_cgroup(i).to_path_buf(),
            log_path: self
                .logs_dir()
                .join(format!("agent-{}-{}.log", node.name, self.next_seq())),
        };
        Agent::spawn(setup, options)
    }

    /// Starts an agent on every node with the same manifests directory and
    /// waits until all are ready.
    #[must_use]
    pub fn start_all_agents(&self, manifests_dir: &Path) -> Vec<Agent<'_>> {
        let agents: Vec<Agent<'_>> = (1..=self.nodes.len())
            .map(|i| self.start_agent(i, manifests_dir))
            .collect();
        for agent in &agents {
            agent.wait_ready();
        }
        agents
    }

    /// Runs the agent binary with `args` (e.g. `inspect`, `cleanup`) inside
    /// node `i`'s namespace and returns its output, whatever the status.
    pub fn agent_cli<S: AsRef<OsStr>>(&self, i: usize, args: &[S]) -> Output {
        run_output(self.node(i).netns.command(agent_binary()).args(args))
    }

    /// Runs `nodeport-agent cleanup` for node `i` (its `--bpffs`); panics
    /// with its stderr if it fails.
    pub fn cleanup_node(&self, i: usize) {
        let bpffs = self.node_bpffs(i);
        let out = self.agent_cli(i, &["cleanup", "--bpffs", &bpffs.to_string_lossy()]);
        assert!(
            out.status.success(),
            "cleanup of node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts an `np-podserver` in any namespace of the cluster (e.g. an
    /// ordinary server in a node namespace) and waits until it is ready.
    #[must_use]
    pub fn start_server(&self, ns: &Netns, spec: &ServerSpec) -> Server<'_> {
        let log = self
            .logs_dir()
            .join(format!("server-{}-{}.log", spec.name, self.next_seq()));
        let mut server = PodServer::spawn(ns, spec, &log);
        server.wait_ready(SERVER_READY_TIMEOUT);
        Server::new(server)
    }
}

/// Creates node `i` (namespace `<id>-nI`) on the LAN, with its pod bridge
/// and `pods` pods.
fn add_node(id: &str, lan: &Netns, i: usize, pods: usize, veths: Veths) -> Node {
    let netns = Netns::create(&format!("{id}-n{i}"));
    // Before any interface exists, so they inherit the defaults.
    netns.set_sysctl("net.ipv4.conf.all.rp_filter", "0");
    netns.set_sysctl("net.ipv4.conf.default.rp_filter", "0");
    netns.set_sysctl("net.ipv4.ip_forward", "1");
    attach_to_lan(
        lan,
        &format!("veth-n{i}"),
        &netns,
        node_addr(i),
        veths == Veths::LanGro,
    );
    let gateway = pod_gateway(i);
    netns.ip(&["link", "add", "cni0", "type", "bridge"]);
    netns.ip(&[
        "addr",
        "add",
        &format!("{gateway}/{PREFIX_LEN}"),
        "dev",
        "cni0",
    ]);
    netns.ip(&["link", "set", "cni0", "up"]);
    let mut node = Node {
        index: i,
        name: format!("node{i}"),
        addr: node_addr(i),
        pod_cidr: pod_cidr(i),
        gateway,
        pods: Vec::with_capacity(pods),
        netns,
    };
    for k in 1..=pods {
        let pod = add_pod(id, &node, k);
        node.pods.push(pod);
    }
    node
}

/// Connects `ns` to the LAN bridge with a veth (`lan_if` on the LAN side,
/// `eth0` in `ns`) and gives it `addr`; `lan_gro` turns GRO on on the LAN
/// side (see [`Veths::LanGro`]).
fn attach_to_lan(lan: &Netns, lan_if: &str, ns: &Netns, addr: Ipv4Addr, lan_gro: bool) {
    lan.ip(&[
        "link",
        "add",
        lan_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]);
    lan.ip(&["link", "set", lan_if, "master", "br0", "up"]);
    ns.ip(&[
        "addr",
        "add",
        &format!("{addr}/{PREFIX_LEN}"),
        "dev",
        "eth0",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    if lan_gro {
        lan.exec("ethtool", &["-K", lan_if, "gro", "on"]);
    }
    check_veth(lan, lan_if, lan_gro);
    check_veth(ns, "eth0", false);
}

/// Creates pod `k` of `node` (namespace `<id>-nIpK`) on its `cni0`.
fn add_pod(id: &str, node: &Node, k: usize) -> Pod {
    let i = node.index;
    let netns = Netns::create(&format!("{id}-n{i}p{k}"));
    let host_if = format!("veth-p{k}");
    let addr = pod_addr(i, k);
    node.netns.ip(&[
        "link",
        "add",
        &host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        netns.name(),
    ]);
    node.netns
        .ip(&["link", "set", &host_if, "master", "cni0", "up"]);
    netns.ip(&[
        "addr",
        "add",
        &format!("{addr}/{PREFIX_LEN}"),
        "dev",
        "eth0",
    ]);
    netns.ip(&["link", "set", "eth0", "up"]);
    netns.ip(&["route", "add", "default", "via", &node.gateway.to_string()]);
    check_veth(&node.netns, &host_if, false);
    check_veth(&netns, "eth0", false);
    Pod {
        name: pod_name(i, k),
        node_index: i,
        index: k,
        addr,
        server: None,
        netns,
    }
}

/// Asserts with `ethtool -k` that a veth end is set up as intended: GRO
/// on or off as `gro` says, TX checksum offload on (the kernel default).
fn check_veth(ns: &Netns, dev: &str, gro: bool) {
    let features = ns.exec_stdout("ethtool", &["-k", dev]);
    let has = |line: &str| features.lines().any(|l| l.trim() == line);
    let want_gro = if gro {
        "generic-receive-offload: on"
    } else {
        "generic-receive-offload: off"
    };
    assert!(
        has(want_gro),
        "{}: {dev} should have {want_gro}:\n{features}",
        ns.name()
    );
    assert!(
        has("tx-checksumming: on"),
        "{}: {dev} should keep TX checksum offload on (the kernel default):\n{features}",
        ns.name()
    );
}

/// Panics early, with an install hint, if a tool the cluster needs is missing.
fn check_tools() {
    static CHECK: Once = Once::new();
    CHECK.call_once(|| {
        for (tool, arg, package) in [
            ("ip", "-V", "iproute2"),
            ("nsenter", "--version", "util-linux"),
            ("ethtool", "--version", "ethtool"),
        ] {
            if let Err(e) = Command::new(tool).arg(arg).output() {
                panic!("`{tool}` is needed by the test cluster but cannot run ({e}): apt-get install {package}");
            }
        }
    });
}
