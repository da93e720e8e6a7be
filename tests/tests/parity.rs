//! End-to-end tests of Service behaviours kube-proxy has beyond plain
//! NodePorts and ClusterIPs, on the namespace test cluster with real
//! traffic: `externalIPs` and LoadBalancer ingress IPs,
//! `loadBalancerSourceRanges`; `trafficDistribution` with zone hints;
//! `internalTrafficPolicy: Local`; an allocated nodePort cannot be
//! taken by a process of the node (its bind fails with EADDRINUSE) while the
//! NodePort keeps serving, and the NodePort range is kept out of the node's
//! ephemeral ports.
//!
//! Needs root. Run with `cargo xtask test`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, ForNode, ForZone};
use nodeport_tests::cluster::{CLIENT_ADDR, node_addr, pod_name};
use nodeport_tests::objects::{READY, ServiceBuilder, Target, pod_endpoint, service_port, to_yaml};
use nodeport_tests::server::client_binary;
use nodeport_tests::{AgentOptions, Answer, Cluster, ClusterConfig, Veths, eventually};

const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 31_600;
/// In the NodePort range, allocated to no Service.
const FREE_NODE_PORT: u16 = 31_601;
/// `EADDRINUSE`.
const ADDR_IN_USE: &str = "errno=98";
/// `EHOSTUNREACH`, as `std::io::Error` shows it.
const HOST_UNREACHABLE: &str = "os error 113";
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const LB_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const LB_PROXY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const LB_NODE_PORT: u16 = 31_603;
const RANGED_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const RANGED_NODE_PORT: u16 = 31_604;
const ZONED_NODE_PORT: u16 = 31_605;
const MIXED_NODE_PORT: u16 = 31_606;
/// A second address of the client, outside the first's /32 range.
const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 3);
const ITP_NODE_PORT: u16 = 31_602;

fn cluster() -> Cluster {
    Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 1,
        pod_tcp_ports: vec![POD_PORT],
        pod_udp_ports: vec![POD_PORT],
        veths: Veths::KernelDefaults,
        ..ClusterConfig::default()
    })
}

/// `np-client bind-tcp|bind-udp ADDR PORT` as a process of node `i`: in its
/// network namespace and its cgroup (where the agent's hooks are attached).
fn node_bind(c: &Cluster, i: usize, kind: &str, addr: Ipv4Addr, port: u16) -> Output {
    let mut cmd = c.node(i).netns().command(client_binary());
    nodeport_tests::cgroup::join_on_exec(&mut cmd, c.node_cgroup(i));
    cmd.args([kind, &addr.to_string(), &port.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run np-client: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "{} stdout {:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Whether the kernel port list `list` (`1024-32767,61000`) holds every
/// port of `ports` (the kernel merges adjacent ranges).
fn reserves(list: &str, ports: std::ops::RangeInclusive<u16>) -> bool {
    let ranges: Vec<(u16, u16)> = list
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let port = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .unwrap_or_else(|e| panic!("reserved ports {list:?}: {e}"))
            };
            (port(a), port(b))
        })
        .collect();
    ports
        .into_iter()
        .all(|p| ranges.iter().any(|&(a, b)| (a..=b).contains(&p)))
}

fn assert_refused(out: &Output, what: &str) {
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(ADDR_IN_USE),
        "{what}: the bind fails with EADDRINUSE: {}",
        describe(out)
    );
}

fn assert_bound(out: &Output, what: &str) {
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("bound"),
        "{what}: the bind succeeds: {}",
        describe(out)
    );
}

/// An `externalIPs` address and a LoadBalancer ingress IP (`ipMode: VIP`)
/// are served like a NodePort by whichever node the traffic arrives at
/// (TCP and UDP, the local backend with the client's address, the remote
/// one through SNAT to the node's address, the reply from the Service's
/// address), and from pods through socket load balancing; an ingress IP of
/// `ipMode: Proxy` is the load balancer's, not served on the nodes.
#[test]
fn external_ips_and_load_balancer_ips_are_served_through_every_node() {
    let c = cluster();
    let ext = ServiceBuilder::new("default", "ext", "ClusterIP")
        .port(service_port("tcp", "TCP", 80, Target::Port(POD_PORT), None))
        .port(service_port("udp", "UDP", 80, Target::Port(POD_PORT), None))
        .external_ips(&[EXTERNAL_IP]);
    let lb = ServiceBuilder::new("default", "lb", "LoadBalancer")
        .tcp("tcp", 80, POD_PORT, LB_NODE_PORT)
        .load_balancer_ingress(LB_VIP, Some("VIP"))
        .load_balancer_ingress(LB_PROXY, Some("Proxy"));
    let endpoints = [(1, 1, true), (2, 1, true)];
    c.manifests().write(
        "external.yaml",
        &to_yaml(&[
            &ext,
            &ext.slice("x1").pods(&endpoints),
            &lb,
            &lb.slice("x1").pods(&endpoints),
        ]),
    );
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    let client = c.client_netns();
    for node in [1, 2] {
        // The upstream router sends the external addresses to this node.
        for addr in [EXTERNAL_IP, LB_VIP, LB_PROXY] {
            client.ip(&[
                "route",
                "replace",
                &format!("{addr}/32"),
                "via",
                &node_addr(node).to_string(),
            ]);
        }
        eventually(Duration::from_secs(5), || {
            c.client().tcp_request(EXTERNAL_IP, 80).ok()
        })
        .unwrap_or_else(|| panic!("the externalIP answers through node {node}"));
        for (addr, what) in [(EXTERNAL_IP, "externalIP"), (LB_VIP, "LoadBalancer IP")] {
            let mut seen = BTreeSet::new();
            for round in 0..24 {
                let a = Answer::expect(
                    c.client().tcp_request(addr, 80),
                    &format!("TCP {round} to the {what} through node {node}"),
                );
                assert_eq!(a.local_port, POD_PORT);
                let expected_peer = if a.server == pod_name(node, 1) {
                    CLIENT_ADDR
                } else {
                    node_addr(node)
                };
                assert_eq!(
                    a.peer.ip(),
                    expected_peer,
                    "the local backend sees the client, the remote one node {node} (SNAT): {a:?}"
                );
                seen.insert(a.server);
            }
            assert_eq!(
                seen,
                BTreeSet::from([pod_name(1, 1), pod_name(2, 1)]),
                "the {what} through node {node} reaches both endpoints"
            );
        }
        Answer::expect(
            c.client().udp_request(EXTERNAL_IP, 80, None),
            &format!("UDP to the externalIP through node {node}"),
        );
        assert!(
            c.client().tcp_request(LB_PROXY, 80).is_err(),
            "an ingress IP of ipMode Proxy is not served on node {node}"
        );
    }
    // From a pod: socket load balancing.
    let line = c
        .pod_request(1, 1, "tcp", EXTERNAL_IP, 80)
        .unwrap_or_else(|e| panic!("a pod reaches the externalIP: {e}"));
    let a: Answer = line.parse().expect("an answer");
    assert!(
        [pod_name(1, 1), pod_name(2, 1)].contains(&a.server),
        "{a:?}"
    );
}

/// `loadBalancerSourceRanges`: a client inside the ranges reaches the
/// LoadBalancer IP and the Service's nodePort, one outside is dropped on
/// both (counted, no answer at all); a change of the ranges applies at once.
#[test]
fn load_balancer_source_ranges_admit_clients_inside_and_drop_the_rest() {
    let c = cluster();
    let client = c.client_netns();
    client.ip(&["addr", "add", &format!("{OTHER_CLIENT}/24"), "dev", "eth0"]);
    client.ip(&[
        "route",
        "replace",
        &format!("{RANGED_VIP}/32"),
        "via",
        &node_addr(1).to_string(),
    ]);
    let manifest = |allowed: Ipv4Addr| {
        let svc = ServiceBuilder::new("default", "ranged", "LoadBalancer")
            .tcp("tcp", 80, POD_PORT, RANGED_NODE_PORT)
            .load_balancer_ingress(RANGED_VIP, None)
            .load_balancer_source_ranges(&[&format!("{allowed}/32")]);
        to_yaml(&[&svc, &svc.slice("x1").pods(&[(1, 1, true), (2, 1, true)])])
    };
    c.manifests().write("ranged.yaml", &manifest(CLIENT_ADDR));
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    let quick = || c.client().with_timeout(Duration::from_millis(700));
    let from = |addr: Ipv4Addr, to: Ipv4Addr, port: u16| {
        quick().tcp_request_from(SocketAddr::new(addr.into(), 0), to, port)
    };
    eventually(Duration::from_secs(5), || {
        from(CLIENT_ADDR, RANGED_VIP, 80).ok()
    })
    .expect("the client inside the range reaches the LoadBalancer IP");
    let targets = [
        (RANGED_VIP, 80, "the LoadBalancer IP"),
        (node_addr(1), RANGED_NODE_PORT, "the nodePort"),
    ];
    for (to, port, what) in targets {
        for round in 0..5 {
            Answer::expect(
                from(CLIENT_ADDR, to, port),
                &format!("{round}: the client inside the range to {what}"),
            );
        }
        let e = from(OTHER_CLIENT, to, port).expect_err("a client outside is dropped");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::TimedOut,
            "{what}: dropped, not refused: {e}"
        );
    }
    assert!(
        agent1
            .metric("nodeport_datapath_packets_total{reason=\"drop_source_range\"}")
            .is_some_and(|n| n >= 2.0),
        "the drops are counted"
    );

    // The ranges change: now only the other address is admitted.
    let writes = agent1.map_writes();
    c.manifests().write("ranged.yaml", &manifest(OTHER_CLIENT));
    agent1.wait_for_map_writes_since(writes, Duration::from_secs(5));
    eventually(Duration::from_secs(5), || {
        from(OTHER_CLIENT, RANGED_VIP, 80).ok()
    })
    .expect("the newly admitted client reaches the LoadBalancer IP");
    for (to, port, what) in targets {
        Answer::expect(
            from(OTHER_CLIENT, to, port),
            &format!("the admitted client to {what}"),
        );
        let e = from(CLIENT_ADDR, to, port).expect_err("the client now outside is dropped");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{what}: {e}");
    }
}

/// Topology-aware routing from the EndpointSlice's hints (as the
/// controller writes them for `trafficDistribution`): with zone hints each
/// node sends the NodePort's traffic to the endpoint hinted for its own
/// zone (its Node's `topology.kubernetes.io/zone`); with node hints
/// (`PreferSameNode`) to the one hinted for itself, though both share a
/// zone; once an endpoint has no hints, kube-proxy's fallback applies and
/// every endpoint serves.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one cluster, each zone and node case in turn"
)]
fn traffic_distribution_keeps_traffic_in_the_nodes_zone_or_on_the_node() {
    let c = cluster();
    let zoned_node = |i: usize, zone: &str| {
        let mut node = nodeport_tests::objects::node(&format!("node{i}"), node_addr(i));
        node.metadata.labels =
            Some([("topology.kubernetes.io/zone".to_owned(), zone.to_owned())].into());
        node
    };
    let svc = ServiceBuilder::node_port("zoned")
        .tcp("tcp", 80, POD_PORT, ZONED_NODE_PORT)
        .traffic_distribution("PreferClose");
    // Endpoint of node `node`'s pod with zone hint `zone` and, with
    // `for_node`, a node hint for its own node.
    let hinted = |node: usize, zone: Option<&str>, for_node: bool| {
        let mut ep = pod_endpoint(node, 1, READY);
        ep.hints = zone.map(|z| EndpointHints {
            for_zones: Some(vec![ForZone { name: z.to_owned() }]),
            for_nodes: for_node.then(|| {
                vec![ForNode {
                    name: format!("node{node}"),
                }]
            }),
        });
        ep
    };
    let manifest = |zone_of_2: &str, endpoints: &[Endpoint]| {
        to_yaml(&[
            &zoned_node(1, "zone-a"),
            &zoned_node(2, zone_of_2),
            &svc,
            &svc.slice("x1").endpoints(endpoints),
        ])
    };
    c.manifests().write(
        "zoned.yaml",
        &manifest(
            "zone-b",
            &[
                hinted(1, Some("zone-a"), false),
                hinted(2, Some("zone-b"), false),
            ],
        ),
    );
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    let servers_through = |node: usize| -> BTreeSet<String> {
        (0..24)
            .map(|round| {
                Answer::expect(
                    c.client().tcp_request(node_addr(node), ZONED_NODE_PORT),
                    &format!("{round} through node {node}"),
                )
                .server
            })
            .collect()
    };
    let own = |node: usize| BTreeSet::from([pod_name(node, 1)]);
    let both = BTreeSet::from([pod_name(1, 1), pod_name(2, 1)]);
    eventually(Duration::from_secs(5), || {
        c.client().tcp_request(node_addr(1), ZONED_NODE_PORT).ok()
    })
    .expect("the NodePort answers");
    for node in [1, 2] {
        assert_eq!(
            servers_through(node),
            own(node),
            "node {node} keeps the traffic in its zone"
        );
    }

    // One zone for both nodes and endpoints, and node hints: each node
    // keeps the traffic on itself.
    let edit = |text: String, what: &str, want: &dyn Fn(usize) -> BTreeSet<String>| {
        // Both agents read the edit (not every edit changes every node's
        // maps).
        let loads = "nodeport_manifests_loads_total";
        let marks = [agent1.metric_sum(loads), agent2.metric_sum(loads)];
        c.manifests().write("zoned.yaml", &text);
        for (agent, mark) in [&agent1, &agent2].into_iter().zip(marks) {
            agent.wait_for_metric_above(loads, mark.unwrap_or(0.0), Duration::from_secs(5));
        }
        for node in [1, 2] {
            assert!(
                eventually(Duration::from_secs(5), || {
                    (servers_through(node) == want(node)).then_some(())
                })
                .is_some(),
                "{what}: through node {node}"
            );
        }
    };
    edit(
        manifest(
            "zone-a",
            &[
                hinted(1, Some("zone-a"), true),
                hinted(2, Some("zone-a"), true),
            ],
        ),
        "node hints keep the traffic on the node",
        &own,
    );
    // Node 2's endpoint loses its hints: every endpoint serves everywhere.
    edit(
        manifest(
            "zone-a",
            &[hinted(1, Some("zone-a"), true), hinted(2, None, false)],
        ),
        "without hints on every endpoint, traffic spreads",
        &|_| both.clone(),
    );
}

/// SCTP ports are not silently ignored: the agent says it does not serve
/// them (this kernel, like the test machines', has no SCTP to test a
/// datapath for them with), and the Service's TCP port is served.
#[test]
fn sctp_ports_are_reported_unserved_and_the_rest_is_served() {
    let c = cluster();
    let svc = ServiceBuilder::node_port("mixed")
        .tcp("tcp", 80, POD_PORT, MIXED_NODE_PORT)
        .port(service_port(
            "sctp",
            "SCTP",
            80,
            Target::Port(POD_PORT),
            Some(MIXED_NODE_PORT),
        ));
    c.manifests().write(
        "mixed.yaml",
        &to_yaml(&[&svc, &svc.slice("x1").pods(&[(1, 1, true)])]),
    );
    let agent = c.start_agent(1, c.manifests().dir());
    agent.wait_ready();
    agent.wait_for_log(
        "SCTP ports are not served (the datapath serves TCP and UDP)",
        Duration::from_secs(5),
    );
    eventually(Duration::from_secs(5), || {
        c.client().tcp_request(node_addr(1), MIXED_NODE_PORT).ok()
    })
    .expect("the Service's TCP port is served");
}

/// `internalTrafficPolicy: Local`: a pod's connections to the ClusterIP
/// (TCP and UDP) reach only endpoints on its own node; on a node whose
/// endpoints are all gone elsewhere they fail at once (kube-proxy drops
/// them), while the NodePort (`externalTrafficPolicy: Cluster`) still
/// reaches every endpoint from outside.
#[test]
fn internal_traffic_policy_local_keeps_cluster_ip_traffic_on_the_node() {
    let c = cluster();
    let svc = ServiceBuilder::node_port("itp")
        .tcp("tcp", 80, POD_PORT, ITP_NODE_PORT)
        .udp("udp", 80, POD_PORT, ITP_NODE_PORT)
        .cluster_ip(CLUSTER_IP)
        .internal_traffic_policy("Local");
    let both = to_yaml(&[&svc, &svc.slice("x1").pods(&[(1, 1, true), (2, 1, true)])]);
    c.manifests().write("itp.yaml", &both);
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    let from_pod = |node: usize, proto: &str| -> Result<Answer, String> {
        c.pod_request(node, 1, proto, CLUSTER_IP, 80).map(|line| {
            line.parse()
                .unwrap_or_else(|e| panic!("answer of {proto} from pod {node}/1: {e}"))
        })
    };
    eventually(Duration::from_secs(5), || from_pod(1, "tcp").ok())
        .expect("pod 1 of node 1 reaches the ClusterIP");
    for node in [1, 2] {
        for round in 0..16 {
            for proto in ["tcp", "udp"] {
                let a = from_pod(node, proto)
                    .unwrap_or_else(|e| panic!("{proto} {round} from node {node}'s pod: {e}"));
                assert_eq!(
                    a.server,
                    pod_name(node, 1),
                    "{proto} from node {node}'s pod stays on node {node}"
                );
            }
        }
    }

    // Only node 1 has an endpoint left: node 2's pods are refused.
    let writes = agent2.map_writes();
    c.manifests().write(
        "itp.yaml",
        &to_yaml(&[&svc, &svc.slice("x1").pods(&[(1, 1, true)])]),
    );
    agent2.wait_for_map_writes_since(writes, Duration::from_secs(5));
    let refused = eventually(Duration::from_secs(5), || from_pod(2, "tcp").err())
        .expect("node 2's pod is refused once node 2 has no endpoint");
    assert!(refused.contains(HOST_UNREACHABLE), "TCP: {refused}");
    let refused = from_pod(2, "udp").expect_err("UDP from node 2's pod is refused");
    assert!(refused.contains(HOST_UNREACHABLE), "UDP: {refused}");
    assert!(
        agent2
            .metric("nodeport_datapath_packets_total{reason=\"sock_no_local_backend\"}")
            .is_some_and(|n| n >= 2.0),
        "the refusals are counted"
    );
    let a = from_pod(1, "tcp").expect("node 1's pod still reaches its own endpoint");
    assert_eq!(a.server, pod_name(1, 1));
    // External traffic to the NodePort is not internal: every endpoint.
    let a = Answer::expect(
        c.client().tcp_request(node_addr(2), ITP_NODE_PORT),
        "the NodePort through node 2",
    );
    assert_eq!(a.server, pod_name(1, 1), "reached through SNAT");
}

/// kube-proxy holds every allocated nodePort on the node's addresses, so
/// no other process of the node can take it: a bind of the nodePort (TCP
/// and UDP, on the node address and the wildcard address) by a process of
/// the node gets EADDRINUSE, while the NodePort keeps answering; a port of
/// the range that no Service has binds, a pod binds the number in its own
/// namespace, the port binds again once its Service is gone, and
/// `--node-port-bind-protection=false` lets every bind through. The range
/// is reserved from the node's ephemeral ports until `cleanup`.
#[test]
fn binding_an_allocated_node_port_on_the_node_fails_while_the_node_port_serves() {
    let c = cluster();
    let svc = ServiceBuilder::node_port("held").ports(&[
        ("tcp", "TCP", 80, POD_PORT, NODE_PORT),
        ("udp", "UDP", 80, POD_PORT, NODE_PORT),
    ]);
    c.manifests().write(
        "held.yaml",
        &to_yaml(&[&svc, &svc.slice("x1").pods(&[(1, 1, true), (2, 1, true)])]),
    );
    let node1 = c.node(1).netns();
    let before = node1.sysctl("net.ipv4.ip_local_reserved_ports");
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent_with(
        2,
        &AgentOptions::new(c.manifests().dir()).arg("--node-port-bind-protection=false"),
    );
    agent1.wait_ready();
    agent2.wait_ready();
    eventually(Duration::from_secs(5), || {
        c.client().tcp_request(node_addr(1), NODE_PORT).ok()
    })
    .expect("the NodePort answers through node 1");

    for (kind, addr) in [
        ("bind-tcp", node_addr(1)),
        ("bind-tcp", Ipv4Addr::UNSPECIFIED),
        ("bind-udp", node_addr(1)),
        ("bind-udp", Ipv4Addr::UNSPECIFIED),
    ] {
        assert_refused(
            &node_bind(&c, 1, kind, addr, NODE_PORT),
            &format!("node 1 {kind} {addr}:{NODE_PORT}"),
        );
    }
    assert!(
        agent1
            .metric("nodeport_datapath_packets_total{reason=\"bind_refused\"}")
            .is_some_and(|n| n >= 4.0),
        "the refused binds are counted"
    );
    assert_bound(
        &node_bind(&c, 1, "bind-tcp", node_addr(1), FREE_NODE_PORT),
        "node 1 binds a port of the range that no Service has",
    );
    let mut pod_bind = c.pod_command(1, 1, client_binary());
    let out = pod_bind
        .args(["bind-tcp", "0.0.0.0", &NODE_PORT.to_string()])
        .output()
        .expect("run np-client in the pod");
    assert_bound(
        &out,
        "a pod binds the nodePort's number in its own namespace",
    );
    assert_bound(
        &node_bind(&c, 2, "bind-tcp", node_addr(2), NODE_PORT),
        "node 2 runs without bind protection",
    );

    // The NodePort serves as before, TCP and UDP.
    for _ in 0..10 {
        let a = Answer::expect(
            c.client().tcp_request(node_addr(1), NODE_PORT),
            "TCP through node 1",
        );
        assert!(
            [pod_name(1, 1), pod_name(2, 1)].contains(&a.server),
            "{a:?}"
        );
        Answer::expect(
            c.client().udp_request(node_addr(1), NODE_PORT, None),
            "UDP through node 1",
        );
    }
    let reserved = node1.sysctl("net.ipv4.ip_local_reserved_ports");
    assert!(
        reserves(&reserved, 30_000..=32_767),
        "the NodePort range is reserved from node 1's ephemeral ports: {reserved:?}"
    );

    // Once the Service is gone, its port is free again.
    let writes = agent1.map_writes();
    c.manifests().remove("held.yaml");
    agent1.wait_for_map_writes_since(writes, Duration::from_secs(5));
    let freed = eventually(Duration::from_secs(5), || {
        let out = node_bind(&c, 1, "bind-tcp", node_addr(1), NODE_PORT);
        out.status.success().then_some(out)
    });
    assert!(
        freed.is_some(),
        "the nodePort binds once its Service is deleted"
    );

    drop(agent1);
    c.cleanup_node(1);
    assert_eq!(
        node1.sysctl("net.ipv4.ip_local_reserved_ports"),
        before,
        "cleanup restores the reserved ports"
    );
}
