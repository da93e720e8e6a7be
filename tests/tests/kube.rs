//! End-to-end tests of the Kubernetes API source: agents on the namespace
//! cluster read Services, EndpointSlices and their Node from the test API
//! server (`nodeport_tests::apiserver`) over real HTTP through a kubeconfig,
//! exactly as in a cluster; traffic is real TCP and UDP.
//!
//! The API server listens on the client namespace's LAN address
//! (10.200.0.2:6443), which every node reaches over the bridge, as nodes
//! reach a control plane.
//!
//! Needs root. Run with `cargo xtask test` (builds the agent first).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nodeport_tests::apiserver::Resource;
use nodeport_tests::cluster::{CLIENT_ADDR, node_addr, pod_name};
use nodeport_tests::objects::{ServiceBuilder, ToYaml as _, node, to_yaml};
use nodeport_tests::{Agent, AgentOptions, Answer, ApiServer, Cluster, ClusterConfig, eventually};

const POD_PORT: u16 = 8080;
const POD_PORT_2: u16 = 8081;

fn cluster() -> Cluster {
    Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 2,
        pod_tcp_ports: vec![POD_PORT, POD_PORT_2],
        pod_udp_ports: vec![POD_PORT],
        ..ClusterConfig::default()
    })
}

fn agents<'c>(c: &'c Cluster, api: &ApiServer<'_>) -> Vec<Agent<'c>> {
    let agents: Vec<Agent<'c>> = (1..=c.nodes().len())
        .map(|i| c.start_agent_with(i, &AgentOptions::kube(api.kubeconfig())))
        .collect();
    for a in &agents {
        a.wait_ready();
    }
    agents
}

fn parse(r: std::io::Result<String>, what: &str) -> Answer {
    let line = r.unwrap_or_else(|e| panic!("{what}: {e}"));
    line.parse().unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn tcp(c: &Cluster, node: usize, port: u16) -> Answer {
    parse(
        c.client().tcp_request(node_addr(node), port),
        &format!("TCP to node{node}:{port}"),
    )
}

fn udp(c: &Cluster, node: usize, port: u16) -> Answer {
    parse(
        c.client().udp_request(node_addr(node), port, None),
        &format!("UDP to node{node}:{port}"),
    )
}

/// Which pod answers a TCP request, `None` when it fails: while an endpoint
/// is being removed, a connection caught between its SYN and the removal
/// can fail (its flow is purged with the backend), so convergence loops
/// retry instead of failing.
fn server_of(c: &Cluster, node: usize, port: u16) -> Option<String> {
    let line = c.client().tcp_request(node_addr(node), port).ok()?;
    line.parse::<Answer>().ok().map(|a| a.server)
}

/// Waits until `f` holds, for at most `limit`; returns how long it took.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    eventually(limit, || f().then_some(()))
        .unwrap_or_else(|| panic!("{what}: not within {limit:?}"));
    start.elapsed()
}

/// The foundation's checks through the API path: every node IP serves the
/// NodePort over TCP and UDP with every endpoint; a backend on another node
/// is reached with SNAT and a local one keeps the client address; the
/// watchers filter at the API as kube-proxy does.
#[test]
fn api_source_serves_nodeports_with_local_and_remote_backends() {
    let c = cluster();
    let api = ApiServer::for_cluster(&c);
    let all = [(1, 1, true), (1, 2, true), (2, 1, true), (2, 2, true)];
    let echo = ServiceBuilder::node_port("echo").ports(&[
        ("tcp", "TCP", 80, POD_PORT, 31080),
        ("udp", "UDP", 80, POD_PORT, 31080),
    ]);
    api.apply_yaml(&to_yaml(&[&echo, &echo.slice("x1").pods(&all)]));
    let remote = ServiceBuilder::node_port("remote").ports(&[
        ("tcp", "TCP", 80, POD_PORT, 31081),
        ("udp", "UDP", 80, POD_PORT, 31081),
    ]);
    api.apply_yaml(&to_yaml(&[
        &remote,
        &remote.slice("x1").pods(&[(2, 1, true)]),
    ]));
    // Another proxy's Service: filtered out at the API, never served.
    let other = ServiceBuilder::node_port("other-proxy")
        .tcp("tcp", 80, POD_PORT, 31082)
        .label("service.kubernetes.io/service-proxy-name", "other");
    api.apply_yaml(&to_yaml(&[&other, &other.slice("x1").pods(&all)]));
    let _agents = agents(&c, &api);

    let mut seen = BTreeSet::new();
    for i in 0..40 {
        let a = tcp(&c, 1 + i % 2, 31080);
        assert_eq!(a.local_port, POD_PORT);
        seen.insert(a.server);
    }
    let want: BTreeSet<String> = all.iter().map(|(n, p, _)| pod_name(*n, *p)).collect();
    assert_eq!(seen, want, "every endpoint answers over 40 TCP connections");
    let udp_seen: BTreeSet<String> = (0..30).map(|i| udp(&c, 1 + i % 2, 31080).server).collect();
    assert!(udp_seen.len() >= 3, "UDP spreads: {udp_seen:?}");

    for _ in 0..3 {
        let via1 = tcp(&c, 1, 31081);
        assert_eq!(via1.server, pod_name(2, 1));
        assert_eq!(via1.peer.ip(), node_addr(1), "SNAT to node 1's address");
        let via2 = tcp(&c, 2, 31081);
        assert_eq!(via2.peer.ip(), CLIENT_ADDR, "client address preserved");
        assert_eq!(udp(&c, 1, 31081).peer.ip(), node_addr(1));
        assert_eq!(udp(&c, 2, 31081).peer.ip(), CLIENT_ADDR);
    }

    // Not served: the port reaches node 1's stack, where nothing listens.
    assert!(
        c.client()
            .tcp_connect_result(node_addr(1), 31082)
            .is_refused(),
        "a service-proxy-name Service is not served"
    );

    // The watchers asked for what kube-proxy asks for.
    let requests = api.requests();
    for r in [Resource::Services, Resource::EndpointSlices] {
        let listed = requests.iter().find(|q| q.resource == r && !q.watch);
        let listed = listed.unwrap_or_else(|| panic!("no list of {r:?}: {requests:?}"));
        assert_eq!(
            listed.label_selector,
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
        assert!(
            requests.iter().any(|q| q.resource == r && q.watch),
            "no watch of {r:?}"
        );
    }
    let node_fields: BTreeSet<&str> = requests
        .iter()
        .filter(|q| q.resource == Resource::Nodes)
        .map(|q| q.field_selector.as_str())
        .collect();
    assert_eq!(
        node_fields,
        BTreeSet::from(["metadata.name=node1", "metadata.name=node2"])
    );
}

/// Endpoint removal and addition and Service deletion through the API take
/// effect within a second; another Service keeps serving throughout.
#[test]
fn api_changes_apply_within_a_second() {
    let c = cluster();
    let api = ApiServer::for_cluster(&c);
    let svc = ServiceBuilder::node_port("svc").tcp("tcp", 80, POD_PORT, 31083);
    api.apply_yaml(&to_yaml(&[
        &svc,
        &svc.slice("x1").pods(&[(1, 1, true), (2, 1, true)]),
    ]));
    let other = ServiceBuilder::node_port("other").tcp("tcp", 80, POD_PORT_2, 31084);
    api.apply_yaml(&to_yaml(&[
        &other,
        &other.slice("x1").pods(&[(1, 2, true)]),
    ]));
    let agents = agents(&c, &api);
    let other_ok = || {
        for node in [1, 2] {
            assert_eq!(tcp(&c, node, 31084).server, pod_name(1, 2));
        }
    };
    other_ok();

    // Applied means every agent has written the change: a probe of a few
    // requests can pass on a node whose agent has not yet (each picks the
    // remaining pod half the time).
    let writes: Vec<f64> = agents.iter().map(Agent::map_writes).collect();
    api.apply_yaml(&svc.slice("x1").pods(&[(1, 1, true)]).yaml());
    let took = within(Duration::from_secs(1), "removed endpoint unused", || {
        agents.iter().zip(&writes).all(|(a, w)| a.map_writes() > *w)
            && (0..10).all(|i| server_of(&c, 1 + i % 2, 31083) == Some(pod_name(1, 1)))
    });
    eprintln!("endpoint removal through the API applied in {took:?}");
    for i in 0..20 {
        assert_eq!(tcp(&c, 1 + i % 2, 31083).server, pod_name(1, 1));
    }
    other_ok();

    api.apply_yaml(&svc.slice("x1").pods(&[(1, 1, true), (2, 2, true)]).yaml());
    within(Duration::from_secs(2), "added endpoint used", || {
        (0..20).any(|i| server_of(&c, 1 + i % 2, 31083) == Some(pod_name(2, 2)))
    });
    other_ok();

    api.delete("Service", "default", "svc");
    api.delete("EndpointSlice", "default", "svc-x1");
    within(Duration::from_secs(1), "deleted service refused", || {
        [1, 2].iter().all(|n| {
            c.client()
                .tcp_connect_result(node_addr(*n), 31083)
                .is_refused()
        })
    });
    other_ok();
}

/// Requests against both nodes until `until`; every one must succeed.
fn keep_serving(c: &Cluster, port: u16, for_: Duration, allowed: &BTreeSet<String>) -> usize {
    let end = Instant::now() + for_;
    let mut n = 0;
    while Instant::now() < end {
        for node in [1, 2] {
            let a = tcp(c, node, port);
            assert!(allowed.contains(&a.server), "{} answered", a.server);
            udp(c, node, port);
            n += 2;
            // Paced: every UDP request is a new flow, and a remote backend's
            // SNAT ports (61000-65535) are only freed as flows age out.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    n
}

/// The API server goes away mid-test: traffic keeps flowing on the last
/// known state; changes made meanwhile are applied within 5 s of its
/// return. Then the same with the history compacted while it is away: the
/// watchers get 410 Gone, re-list, and deleted objects go away.
#[test]
fn api_server_outage_keeps_traffic_and_converges_after_return() {
    let c = cluster();
    let api = ApiServer::for_cluster(&c);
    let svc = ServiceBuilder::node_port("svc").ports(&[
        ("tcp", "TCP", 80, POD_PORT, 31085),
        ("udp", "UDP", 80, POD_PORT, 31085),
    ]);
    api.apply_yaml(&to_yaml(&[
        &svc,
        &svc.slice("x1").pods(&[(1, 1, true), (2, 1, true)]),
    ]));
    let agents = agents(&c, &api);
    let both: BTreeSet<String> = [pod_name(1, 1), pod_name(2, 1)].into();

    // Away: the datapath keeps serving what it has.
    let source_errors = |a: &Agent<'_>| a.metric_sum("nodeport_source_errors_total").unwrap_or(0.0);
    let marks: Vec<f64> = agents.iter().map(source_errors).collect();
    api.stop();
    let n = keep_serving(&c, 31085, Duration::from_secs(2), &both);
    eprintln!("{n} requests served while the API server was away");
    for (a, &mark) in agents.iter().zip(&marks) {
        a.wait_for_metric_above("nodeport_source_errors_total", mark, Duration::from_secs(5));
    }
    let log = agents[0].log();
    assert!(
        log.contains("list/watch failed"),
        "the agent logs the failed list/watch:\n{log}"
    );
    // Changes while away: an endpoint goes, a Service comes.
    api.apply_yaml(&svc.slice("x1").pods(&[(1, 1, true)]).yaml());
    let late = ServiceBuilder::node_port("late").tcp("tcp", 80, POD_PORT_2, 31086);
    api.apply_yaml(&to_yaml(&[&late, &late.slice("x1").pods(&[(2, 2, true)])]));
    keep_serving(&c, 31085, Duration::from_millis(500), &both);
    assert!(
        c.client()
            .tcp_connect_result(node_addr(1), 31086)
            .is_refused(),
        "not known yet"
    );

    api.resume();
    let back = Instant::now();
    within(
        Duration::from_secs(5),
        "converged after the API server returned",
        || {
            [1, 2].iter().all(|n| {
                c.client().tcp_request(node_addr(*n), 31086).is_ok()
                    && (0..6).all(|_| server_of(&c, *n, 31085) == Some(pod_name(1, 1)))
            })
        },
    );
    eprintln!(
        "converged {:?} after the API server returned",
        back.elapsed()
    );
    assert_eq!(api.gone_sent(), 0, "a plain reconnect resumes the watch");

    // Away again, and the history is compacted meanwhile: 410 → re-list.
    api.stop();
    api.delete("Service", "default", "late");
    api.delete("EndpointSlice", "default", "late-x1");
    api.apply_yaml(&svc.slice("x1").pods(&[(2, 1, true)]).yaml());
    api.compact();
    let lists_before = api.requests().iter().filter(|r| !r.watch).count();
    keep_serving(&c, 31085, Duration::from_millis(500), &both);
    api.resume();
    let back = Instant::now();
    within(Duration::from_secs(5), "converged after 410 Gone", || {
        [1, 2].iter().all(|n| {
            c.client()
                .tcp_connect_result(node_addr(*n), 31086)
                .is_refused()
                && (0..6).all(|_| server_of(&c, *n, 31085) == Some(pod_name(2, 1)))
        })
    });
    eprintln!(
        "converged {:?} after 410 Gone and a re-list",
        back.elapsed()
    );
    assert!(
        api.gone_sent() >= 2,
        "the watchers were told their version expired"
    );
    let lists_after = api.requests().iter().filter(|r| !r.watch).count();
    assert!(
        lists_after >= lists_before + 2,
        "the watchers re-listed ({lists_before} → {lists_after})"
    );
    for a in &agents {
        assert!(a.is_running());
    }
}

/// `--nodeport-addresses primary` against the API: the primary address is
/// the Node's InternalIP (here node 1's second address), not the first
/// address of the device.
#[test]
fn primary_nodeport_address_is_the_node_internal_ip() {
    let c = cluster();
    let extra = Ipv4Addr::new(10, 200, 0, 111);
    c.node(1)
        .netns()
        .ip(&["addr", "add", "10.200.0.111/24", "dev", "eth0"]);
    let api = ApiServer::start(
        c.client_netns(),
        SocketAddr::new(CLIENT_ADDR.into(), 6443),
        c.temp_dir(),
    );
    api.apply_yaml(&node("node1", extra).yaml());
    let svc = ServiceBuilder::node_port("svc").tcp("tcp", 80, POD_PORT, 31087);
    api.apply_yaml(&to_yaml(&[&svc, &svc.slice("x1").pods(&[(1, 1, true)])]));
    let agent = c.start_agent_with(
        1,
        &AgentOptions::kube(api.kubeconfig())
            .arg("--nodeport-addresses")
            .arg("primary"),
    );
    agent.wait_ready();
    let a = parse(
        c.client().tcp_request(extra, 31087),
        "TCP to the InternalIP",
    );
    assert_eq!(a.server, pod_name(1, 1));
    assert!(
        c.client()
            .tcp_connect_result(node_addr(1), 31087)
            .is_refused(),
        "the device's first address does not serve NodePorts"
    );
}
