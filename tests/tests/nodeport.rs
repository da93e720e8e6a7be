//! End-to-end tests of the datapath and the agent on the namespace test
//! cluster, with real TCP and UDP traffic: the pods report which pod
//! answered and the client address they saw.
//!
//! Needs root. Run with `cargo xtask test` (builds the agent first).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use nodeport_tests::cluster::{CLIENT_ADDR, node_addr, pod_name};
use nodeport_tests::objects::{Ep, ServiceBuilder, SvcPort, to_yaml};
use nodeport_tests::{
    Agent, Answer, Cluster, ClusterConfig, ConnectResult, LEAST_PRIVILEGE_CAPABILITIES, ServerSpec,
    Veths,
};

/// TCP and UDP port every pod serves (and answers with its name).
const POD_PORT: u16 = 8080;
/// A second pod port, for multi-port services.
const POD_PORT_2: u16 = 8081;

/// A Service of type `NodePort` with ports `(name, protocol, port,
/// targetPort, nodePort)` and one `EndpointSlice` of `(node, pod, ready)`.
fn service(name: &str, ports: &[SvcPort<'_>], endpoints: &[Ep]) -> String {
    let svc = ServiceBuilder::node_port(name).ports(ports);
    to_yaml(&[&svc, &svc.slice("x1").pods(endpoints)])
}

fn cluster() -> Cluster {
    cluster_on(Veths::KernelDefaults)
}

fn cluster_on(veths: Veths) -> Cluster {
    Cluster::with_config(config_on(veths))
}

fn config_on(veths: Veths) -> ClusterConfig {
    ClusterConfig {
        nodes: 2,
        pods_per_node: 2,
        pod_tcp_ports: vec![80, POD_PORT, POD_PORT_2],
        pod_udp_ports: vec![POD_PORT],
        veths,
        ..ClusterConfig::default()
    }
}

/// Agents with only the capabilities of the least-privilege DaemonSet
/// (`deploy/least-privilege/daemonset.yaml`), on kernel-default veths.
fn least_privilege_cluster() -> Cluster {
    Cluster::with_config(ClusterConfig {
        agent_capabilities: Some(
            LEAST_PRIVILEGE_CAPABILITIES
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
        ),
        ..config_on(Veths::KernelDefaults)
    })
}

/// The XDP mode `auto` must pick on the nodes' veths: generic where the
/// LAN-side peer keeps the kernel's defaults (native XDP_TX would be
/// dropped), native where it has GRO.
fn expected_mode(veths: Veths) -> &'static str {
    match veths {
        Veths::KernelDefaults => "generic",
        Veths::LanGro => "native",
    }
}

fn agents(c: &Cluster) -> Vec<Agent<'_>> {
    let agents = c.start_all_agents(c.manifests().dir());
    for a in &agents {
        a.wait_ready();
    }
    let want = expected_mode(c.config().veths);
    for node in 1..=c.nodes().len() {
        let stats = c.agent_cli(
            node,
            &[
                "inspect",
                "stats",
                "--bpffs",
                &c.node_bpffs(node).to_string_lossy(),
            ],
        );
        let text = String::from_utf8_lossy(&stats.stdout);
        assert!(
            text.contains(&format!("xdp_mode:eth0:{want} ")),
            "node{node} must attach {want} XDP on {:?} veths:\n{text}",
            c.config().veths
        );
    }
    agents
}

/// The datapath's counters and flows on every node, for failure messages.
fn datapath_state(c: &Cluster) -> String {
    let mut out = String::new();
    for node in 1..=c.nodes().len() {
        for what in ["stats", "conntrack"] {
            let o = c.agent_cli(
                node,
                &[
                    "inspect",
                    what,
                    "--bpffs",
                    &c.node_bpffs(node).to_string_lossy(),
                ],
            );
            let _ = write!(
                out,
                "\n--- node{node} {what} ---\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    out
}

fn tcp(c: &Cluster, node: usize, port: u16) -> Answer {
    let r = c.client().tcp_request(node_addr(node), port);
    if let Err(e) = &r {
        panic!(
            "TCP to node{node} {}:{port}: {e}{}",
            node_addr(node),
            datapath_state(c)
        );
    }
    Answer::expect(r, "TCP")
}

fn udp(c: &Cluster, node: usize, port: u16) -> Answer {
    let r = c.client().udp_request(node_addr(node), port, None);
    if let Err(e) = &r {
        panic!(
            "UDP to node{node} {}:{port}: {e}{}",
            node_addr(node),
            datapath_state(c)
        );
    }
    Answer::expect(r, "UDP")
}

/// (a) Every node IP serves the `NodePort`, TCP and UDP; the replies come
/// from nodeIP:nodePort (connected sockets accept nothing else); over 60
/// new connections every endpoint answers.
#[test]
fn nodeport_serves_on_every_node_ip_tcp_and_udp() {
    nodeport_serves_on_every_node_ip_tcp_and_udp_on(&cluster_on(Veths::KernelDefaults));
}

/// As [`nodeport_serves_on_every_node_ip_tcp_and_udp`], with native XDP (GRO on the LAN side of each node's veth).
#[test]
fn nodeport_serves_on_every_node_ip_tcp_and_udp_native_xdp() {
    nodeport_serves_on_every_node_ip_tcp_and_udp_on(&cluster_on(Veths::LanGro));
}

/// The same with agents that hold only the least-privilege capability set
/// (checked in the agents' `/proc/<pid>/status` once they are ready).
#[test]
fn nodeport_serves_on_every_node_ip_tcp_and_udp_least_privilege() {
    let c = least_privilege_cluster();
    nodeport_serves_on_every_node_ip_tcp_and_udp_on(&c);
}

fn nodeport_serves_on_every_node_ip_tcp_and_udp_on(c: &Cluster) {
    let all: Vec<Ep> = vec![(1, 1, true), (1, 2, true), (2, 1, true), (2, 2, true)];
    c.manifests().write(
        "echo.yaml",
        &service(
            "echo",
            &[
                ("tcp", "TCP", 80, POD_PORT, 31080),
                ("udp", "UDP", 80, POD_PORT, 31080),
            ],
            &all,
        ),
    );
    let _agents = agents(c);

    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let node = 1 + i % 2;
        let a = tcp(c, node, 31080);
        assert_eq!(a.local_port, POD_PORT, "DNAT to the targetPort");
        seen.insert(a.server);
    }
    let want: BTreeSet<String> = all.iter().map(|(n, p, _)| pod_name(*n, *p)).collect();
    assert_eq!(seen, want, "every endpoint answers over 60 TCP connections");

    let mut seen_udp = BTreeSet::new();
    for i in 0..40 {
        let a = udp(c, 1 + i % 2, 31080);
        assert_eq!(a.local_port, POD_PORT);
        seen_udp.insert(a.server);
    }
    assert!(
        seen_udp.len() >= 3,
        "UDP flows spread over endpoints: {seen_udp:?}"
    );

    // `inspect` reads the pinned maps.
    let out = c.agent_cli(
        1,
        &[
            "inspect",
            "services",
            "--bpffs",
            &c.node_bpffs(1).to_string_lossy(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("*:31080/TCP") && text.contains("*:31080/UDP"),
        "inspect services:\n{text}"
    );
}

/// (b) An endpoint only on node 2: through node 1 it is reached with SNAT
/// (the pod sees node 1's address), through node 2 the pod sees the client.
#[test]
fn remote_backend_is_reached_with_snat_and_local_keeps_client_ip() {
    remote_backend_is_reached_with_snat_and_local_keeps_client_ip_on(&cluster_on(
        Veths::KernelDefaults,
    ));
}

/// As [`remote_backend_is_reached_with_snat_and_local_keeps_client_ip`], with native XDP (GRO on the LAN side of each node's veth).
#[test]
fn remote_backend_is_reached_with_snat_and_local_keeps_client_ip_native_xdp() {
    remote_backend_is_reached_with_snat_and_local_keeps_client_ip_on(&cluster_on(Veths::LanGro));
}

/// The same with agents that hold only the least-privilege capability set
/// (checked in the agents' `/proc/<pid>/status` once they are ready).
#[test]
fn remote_backend_is_reached_with_snat_and_local_keeps_client_ip_least_privilege() {
    let c = least_privilege_cluster();
    remote_backend_is_reached_with_snat_and_local_keeps_client_ip_on(&c);
}

fn remote_backend_is_reached_with_snat_and_local_keeps_client_ip_on(c: &Cluster) {
    c.manifests().write(
        "remote.yaml",
        &service(
            "remote",
            &[
                ("tcp", "TCP", 80, POD_PORT, 31081),
                ("udp", "UDP", 80, POD_PORT, 31081),
            ],
            &[(2, 1, true)],
        ),
    );
    let _agents = agents(c);
    for _ in 0..5 {
        let via1 = tcp(c, 1, 31081);
        assert_eq!(via1.server, pod_name(2, 1));
        assert_eq!(via1.peer.ip(), node_addr(1), "SNAT to node 1's address");
        let via2 = tcp(c, 2, 31081);
        assert_eq!(via2.server, pod_name(2, 1));
        assert_eq!(via2.peer.ip(), CLIENT_ADDR, "client address preserved");

        let via1 = udp(c, 1, 31081);
        assert_eq!(via1.peer.ip(), node_addr(1), "UDP SNAT to node 1's address");
        let via2 = udp(c, 2, 31081);
        assert_eq!(via2.peer.ip(), CLIENT_ADDR, "UDP client address preserved");
    }
}

/// Packets with IPv4 options (record route on TCP, timestamps on UDP; the
/// client's kernel puts them on every packet, the pods' kernels echo them)
/// are served through the NodePort: to the local pod with the client's
/// address kept, to the remote pod with SNAT, in generic and native XDP.
/// Passed to the nodes' stacks they would be refused: nothing listens on
/// the nodePort there.
#[test]
fn packets_with_ip_options_are_served_locally_and_remotely() {
    packets_with_ip_options_are_served_on(&cluster_on(Veths::KernelDefaults));
}

/// As [`packets_with_ip_options_are_served_locally_and_remotely`], in native XDP.
#[test]
fn packets_with_ip_options_are_served_locally_and_remotely_native_xdp() {
    packets_with_ip_options_are_served_on(&cluster_on(Veths::LanGro));
}

fn packets_with_ip_options_are_served_on(c: &Cluster) {
    c.manifests().write(
        "options.yaml",
        &service(
            "options",
            &[
                ("tcp", "TCP", 80, POD_PORT, 31085),
                ("udp", "UDP", 80, POD_PORT, 31085),
            ],
            &[(1, 1, true)],
        ),
    );
    let agents = agents(c);
    let served = || {
        agents
            .iter()
            .map(|a| a.datapath_count("ip_options_served"))
            .sum::<f64>()
    };
    let before = served();
    let record_route = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let timestamps = [68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for (node, peer) in [(1, CLIENT_ADDR), (2, node_addr(2))] {
        for (udp, options) in [(false, &record_route), (true, &timestamps)] {
            let what = format!(
                "{} with IP options via node{node}",
                if udp { "UDP" } else { "TCP" }
            );
            let line = c
                .client()
                .request_with_ip_options(node_addr(node), 31085, udp, options)
                .unwrap_or_else(|e| panic!("{what}: {e}\n{}", datapath_state(c)));
            let a: Answer = line
                .parse()
                .unwrap_or_else(|e| panic!("{what}: {e}: {line:?}"));
            assert_eq!(a.server, pod_name(1, 1), "{what}");
            assert_eq!(a.peer.ip(), peer, "{what}: the address the pod saw");
        }
    }
    // Every packet of the client's carried options, and so did the pods'
    // replies on their way back through node 2 (the remote pod's, SNATed).
    assert!(
        served() - before >= 8.0,
        "the packets went through the options path: {} of them\n{}",
        served() - before,
        datapath_state(c)
    );
}

/// (c) The multi-port example: each nodePort reaches its own targetPort.
#[test]
fn multi_port_service_reaches_each_target_port() {
    let c = cluster();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/multi-port/web-service.yaml"
    ))
    .expect("examples/multi-port/web-service.yaml");
    c.manifests().write("web-service.yaml", &example);
    let _agents = agents(&c);
    for node in [1, 2] {
        for _ in 0..4 {
            assert_eq!(tcp(&c, node, 31000).local_port, 80, "http nodePort → 80");
            assert_eq!(
                tcp(&c, node, 31001).local_port,
                8080,
                "metrics nodePort → 8080"
            );
        }
    }
}

/// (d) Endpoint removal and addition and Service deletion take effect
/// within 1 s; another Service keeps serving throughout.
#[test]
fn endpoint_and_service_changes_apply_within_a_second() {
    let c = cluster();
    let ports = [("tcp", "TCP", 80, POD_PORT, 31082)];
    c.manifests().write(
        "svc.yaml",
        &service("svc", &ports, &[(1, 1, true), (2, 1, true)]),
    );
    c.manifests().write(
        "other.yaml",
        &service(
            "other",
            &[("tcp", "TCP", 80, POD_PORT_2, 31083)],
            &[(1, 2, true)],
        ),
    );
    let agents = agents(&c);
    // Writes a manifest change and waits until every agent has applied it,
    // which must take less than a second.
    let apply = |what: &str, change: &dyn Fn()| {
        let marks: Vec<f64> = agents.iter().map(Agent::map_writes).collect();
        let start = Instant::now();
        change();
        for (a, m) in agents.iter().zip(marks) {
            a.wait_for_map_writes_since(m, Duration::from_secs(1));
        }
        eprintln!("{what} applied on every node in {:?}", start.elapsed());
    };
    let other_ok = |c: &Cluster| {
        for node in [1, 2] {
            assert_eq!(
                tcp(c, node, 31083).server,
                pod_name(1, 2),
                "other service keeps serving"
            );
        }
    };
    other_ok(&c);

    // Remove node2-pod1: within 1 s no new connection reaches it.
    apply("endpoint removal", &|| {
        c.manifests()
            .write("svc.yaml", &service("svc", &ports, &[(1, 1, true)]));
    });
    for i in 0..30 {
        assert_eq!(
            tcp(&c, 1 + i % 2, 31082).server,
            pod_name(1, 1),
            "no new connection to the removed endpoint"
        );
    }
    other_ok(&c);

    // Add node2-pod2: it gets traffic.
    apply("endpoint addition", &|| {
        c.manifests().write(
            "svc.yaml",
            &service("svc", &ports, &[(1, 1, true), (2, 2, true)]),
        );
    });
    assert!(
        (0..30).any(|i| tcp(&c, 1 + i % 2, 31082).server == pod_name(2, 2)),
        "the added endpoint receives new connections"
    );
    other_ok(&c);

    // Delete the Service: its nodePort is refused.
    apply("service deletion", &|| c.manifests().remove("svc.yaml"));
    for n in [1, 2] {
        assert!(
            c.client()
                .tcp_connect_result(node_addr(n), 31082)
                .is_refused(),
            "the deleted service's nodePort is refused via node{n}"
        );
    }
    other_ok(&c);
}

/// (e) A Service without endpoints: TCP is refused at once (RST), UDP gets
/// ICMP port unreachable.
#[test]
fn service_without_endpoints_is_rejected() {
    service_without_endpoints_is_rejected_on(&cluster_on(Veths::KernelDefaults));
}

/// As [`service_without_endpoints_is_rejected`], with native XDP (GRO on the LAN side of each node's veth).
#[test]
fn service_without_endpoints_is_rejected_native_xdp() {
    service_without_endpoints_is_rejected_on(&cluster_on(Veths::LanGro));
}

/// The same with agents that hold only the least-privilege capability set
/// (checked in the agents' `/proc/<pid>/status` once they are ready).
#[test]
fn service_without_endpoints_is_rejected_least_privilege() {
    let c = least_privilege_cluster();
    service_without_endpoints_is_rejected_on(&c);
}

fn service_without_endpoints_is_rejected_on(c: &Cluster) {
    c.manifests().write(
        "empty.yaml",
        &service(
            "empty",
            &[
                ("tcp", "TCP", 80, POD_PORT, 31084),
                ("udp", "UDP", 80, POD_PORT, 31084),
            ],
            &[],
        ),
    );
    let agents = agents(c);
    for node in [1, 2] {
        let start = Instant::now();
        let r = c.client().tcp_connect_result(node_addr(node), 31084);
        assert!(
            matches!(r, ConnectResult::Refused),
            "TCP to an empty service via node{node}: {r:?}"
        );
        assert!(
            // Before the client's first SYN retransmission (1 s): the
            // first SYN was answered.
            start.elapsed() < Duration::from_millis(900),
            "refused at once, took {:?}",
            start.elapsed()
        );
        let e = c
            .client()
            .udp_request(node_addr(node), 31084, None)
            .expect_err("UDP must fail");
        assert_eq!(
            e.kind(),
            ErrorKind::ConnectionRefused,
            "ICMP port unreachable via node{node}: {e}"
        );
    }
    // The datapath answered, not the node's stack.
    let out = c.agent_cli(
        1,
        &[
            "inspect",
            "stats",
            "--bpffs",
            &c.node_bpffs(1).to_string_lossy(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rejected = text
        .lines()
        .find(|l| l.contains("reject_no_backend"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(rejected >= 2, "reject counter counts the answers:\n{text}");
    drop(agents);
}

/// (f) Traffic that is not for a `NodePort`, and `NodePort` numbers on
/// addresses that do not serve `NodePorts`, reach the node untouched.
#[test]
fn other_traffic_is_untouched() {
    let c = cluster();
    c.manifests().write(
        "svc.yaml",
        &service(
            "svc",
            &[
                ("tcp", "TCP", 80, POD_PORT, 31085),
                ("udp", "UDP", 80, POD_PORT, 31085),
            ],
            &[(1, 1, true)],
        ),
    );
    // A second address on node 1 that --nodeport-addresses leaves out.
    let extra = Ipv4Addr::new(10, 200, 0, 111);
    c.node(1)
        .netns()
        .ip(&["addr", "add", "10.200.0.111/24", "dev", "eth0"]);
    let opts1 = nodeport_tests::AgentOptions {
        manifests_dir: c.manifests().dir().to_path_buf(),
        extra_args: vec!["--nodeport-addresses".into(), "10.200.0.11/32".into()],
        ..Default::default()
    };
    let a1 = c.start_agent_with(1, &opts1);
    a1.wait_ready();
    // Ordinary servers in node 1's namespace: one on a non-NodePort port,
    // one on the NodePort number but bound to the unselected address.
    let _s1 = c.start_server(
        c.node(1).netns(),
        &ServerSpec::new("node1-host").tcp(&[2222]).udp(&[2222]),
    );
    let _s2 = c.start_server(
        c.node(1).netns(),
        &ServerSpec::new("node1-extra")
            .tcp(&[31085])
            .udp(&[31085])
            .bind(extra.into()),
    );
    for _ in 0..3 {
        let a = Answer::expect(
            c.client().tcp_request(node_addr(1), 2222),
            "TCP to a non-NodePort port",
        );
        assert_eq!(a.server, "node1-host");
        assert_eq!(a.peer.ip(), CLIENT_ADDR);
        let a = Answer::expect(
            c.client().udp_request(node_addr(1), 2222, None),
            "UDP to a non-NodePort port",
        );
        assert_eq!(a.server, "node1-host");
        let a = Answer::expect(
            c.client().tcp_request(extra, 31085),
            "TCP to an unselected address",
        );
        assert_eq!(
            a.server, "node1-extra",
            "not translated on an address outside --nodeport-addresses"
        );
        let a = Answer::expect(
            c.client().udp_request(extra, 31085, None),
            "UDP to an unselected address",
        );
        assert_eq!(a.server, "node1-extra");
        // …while the selected address serves the NodePort.
        assert_eq!(tcp(&c, 1, 31085).server, pod_name(1, 1));
    }
    // The client still reaches node 1 by ping (ICMP is untouched).
    c.client().ping(node_addr(1)).expect("ping node 1");
}

/// (g) Bad manifests are reported with file and reason; everything else
/// keeps serving, and a bad object takes nothing over.
#[test]
fn bad_manifests_are_reported_and_change_nothing() {
    let c = cluster();
    c.manifests().write(
        "good.yaml",
        &service(
            "good",
            &[("tcp", "TCP", 80, POD_PORT, 31086)],
            &[(1, 1, true)],
        ),
    );
    let agents = agents(&c);
    assert_eq!(tcp(&c, 1, 31086).server, pod_name(1, 1));
    let mark = agents[0].log_mark();

    c.manifests().write(
        "range.yaml",
        &service(
            "range",
            &[("tcp", "TCP", 80, POD_PORT, 40000)],
            &[(2, 1, true)],
        ),
    );
    c.manifests().write(
        "dup.yaml",
        &service(
            "dup",
            &[("tcp", "TCP", 80, POD_PORT, 31086)],
            &[(2, 1, true)],
        ),
    );
    c.manifests().write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n",
    );
    c.manifests().write(
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
    );

    for (file, reason) in [
        ("range.yaml", "40000"),
        ("range.yaml", "range"),
        ("dup.yaml", "31086"),
        ("dup.yaml", "default/good"),
        ("broken.yaml", "YAML"),
        ("deploy.yaml", "Deployment"),
    ] {
        let pattern = file.to_string();
        agents[0].wait_for_log_since(mark, &pattern, Duration::from_secs(3));
        let log = agents[0].log();
        assert!(
            log.lines().any(|l| l.contains(file) && l.contains(reason)),
            "the agent's log names {file} with `{reason}`:\n{log}"
        );
    }
    // The out-of-range port, the duplicate nodePort and the broken file at
    // least are rejected, and the metric says so.
    let rejected = agents[0].metric("nodeport_manifests_rejected");
    assert!(
        rejected.is_some_and(|n| n >= 3.0),
        "nodeport_manifests_rejected is {rejected:?}"
    );
    for _ in 0..10 {
        for node in [1, 2] {
            assert_eq!(
                tcp(&c, node, 31086).server,
                pod_name(1, 1),
                "the good service keeps its nodePort"
            );
        }
    }
    assert!(
        c.client()
            .tcp_connect_result(node_addr(1), 40000)
            .is_refused(),
        "out-of-range port not served"
    );
}

/// The datapath outlives its agent (programs and maps stay pinned and keep
/// serving); `nodeport-agent cleanup` detaches the programs and removes
/// every pin, after which the nodePort is the stack's again.
#[test]
fn datapath_outlives_the_agent_until_cleanup() {
    let c = cluster();
    c.manifests().write(
        "svc.yaml",
        &service(
            "svc",
            &[("tcp", "TCP", 80, POD_PORT, 31087)],
            &[(1, 1, true)],
        ),
    );
    let mut agents = agents(&c);
    assert_eq!(tcp(&c, 1, 31087).server, pod_name(1, 1));
    let status = agents.remove(0).stop();
    assert!(
        status.success(),
        "the agent exits cleanly on SIGTERM: {status}"
    );
    for _ in 0..5 {
        assert_eq!(
            tcp(&c, 1, 31087).server,
            pod_name(1, 1),
            "served while the agent is down"
        );
    }

    c.cleanup_node(1);
    let bpffs = c.node_bpffs(1);
    let link = c
        .node(1)
        .netns()
        .ip_stdout(&["link", "show", "dev", "eth0"]);
    assert!(!link.contains("xdp"), "XDP detached:\n{link}");
    assert!(
        !bpffs.exists() || std::fs::read_dir(&bpffs).is_ok_and(|mut d| d.next().is_none()),
        "pins removed"
    );
    assert!(
        c.client()
            .tcp_connect_result(node_addr(1), 31087)
            .is_refused(),
        "after cleanup the nodePort is the stack's (nothing listens)"
    );
    assert_eq!(
        tcp(&c, 2, 31087).server,
        pod_name(1, 1),
        "node 2 still serves"
    );
}
