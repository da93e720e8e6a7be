//! End-to-end tests of the NodePort behaviours kube-proxy has: traffic
//! policies, session affinity, endpoint conditions, ports by name,
//! LoadBalancer nodePorts, type changes (and manifest edits that the API
//! server's update rules accept), `--nodeport-addresses primary` and stale
//! UDP flows. Real traffic on the namespace test cluster; the pods
//! report which pod answered and the client address they saw.
//!
//! Needs root. Run with `cargo xtask test`.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::Endpoint;
use nodeport_tests::cluster::{CLIENT_ADDR, node_addr, pod_name};
use nodeport_tests::http::get;
use nodeport_tests::objects::{
    NOT_READY, READY, ServiceBuilder, TERMINATING, Target, pod_endpoint, service_port, to_yaml,
};
use nodeport_tests::{
    Agent, AgentOptions, Answer, Cluster, ClusterConfig, ConnectResult, eventually,
};

const POD_PORT: u16 = 8080;
const NAMED_PORT: u16 = 8081;

/// `svc` and its EndpointSlice `<name>-abcde` of `endpoints` in one file.
fn with_slice(svc: &ServiceBuilder, endpoints: &[Endpoint]) -> String {
    to_yaml(&[svc, &svc.slice("abcde").endpoints(endpoints)])
}

fn cluster() -> Cluster {
    Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 2,
        pod_tcp_ports: vec![POD_PORT, NAMED_PORT],
        pod_udp_ports: vec![POD_PORT],
        ..ClusterConfig::default()
    })
}

fn agents_with<'c>(c: &'c Cluster, extra: &[&str]) -> Vec<Agent<'c>> {
    let agents: Vec<Agent<'c>> = (1..=c.nodes().len())
        .map(|i| {
            c.start_agent_with(
                i,
                &AgentOptions {
                    manifests_dir: c.manifests().dir().to_path_buf(),
                    extra_args: extra.iter().map(Into::into).collect(),
                    ..Default::default()
                },
            )
        })
        .collect();
    for a in &agents {
        a.wait_ready();
    }
    agents
}

fn agents(c: &Cluster) -> Vec<Agent<'_>> {
    agents_with(c, &[])
}

fn parse(r: io::Result<String>, what: &str) -> Answer {
    let line = r.unwrap_or_else(|e| panic!("{what}: {e}"));
    line.parse().unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn tcp(c: &Cluster, node: usize, port: u16) -> Answer {
    parse(
        c.client().tcp_request(node_addr(node), port),
        &format!("TCP via node{node}:{port}"),
    )
}

/// Who answers `n` new TCP connections through `node`.
fn servers(c: &Cluster, node: usize, port: u16, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| tcp(c, node, port).server).collect()
}

/// As [`servers`], `None` when any connection fails (while converging).
fn try_servers(c: &Cluster, node: usize, port: u16, n: usize) -> Option<BTreeSet<String>> {
    (0..n)
        .map(|_| {
            c.client()
                .tcp_request(node_addr(node), port)
                .ok()
                .and_then(|l| l.parse::<Answer>().ok())
                .map(|a| a.server)
        })
        .collect()
}

/// Waits (at most 3 s) until `f` holds.
fn converges(what: &str, mut f: impl FnMut() -> bool) {
    eventually(Duration::from_secs(3), || f().then_some(()))
        .unwrap_or_else(|| panic!("{what}: not within 3 s"));
}

fn dropped(c: &Cluster, node: usize, port: u16) -> bool {
    c.client()
        .with_timeout(Duration::from_millis(600))
        .tcp_connect_result(node_addr(node), port)
        .is_timed_out()
}

/// `externalTrafficPolicy: Local`: only local endpoints serve, the client
/// address is kept, a node without local endpoints drops; switching the
/// policy live works both ways.
#[test]
fn external_traffic_policy_local_and_live_switch() {
    let c = cluster();
    let eps = [pod_endpoint(2, 1, READY)];
    let mut svc = ServiceBuilder::node_port("local")
        .tcp("tcp", 80, POD_PORT, 31090)
        .external_traffic_policy("Local");
    c.manifests().write("local.yaml", &with_slice(&svc, &eps));
    let _agents = agents(&c);

    for _ in 0..5 {
        let a = tcp(&c, 2, 31090);
        assert_eq!(a.server, pod_name(2, 1));
        assert_eq!(a.peer.ip(), CLIENT_ADDR, "Local keeps the client address");
    }
    assert!(
        dropped(&c, 1, 31090),
        "a node without local endpoints drops (kube-proxy does)"
    );

    svc = svc.external_traffic_policy("Cluster");
    c.manifests().write("local.yaml", &with_slice(&svc, &eps));
    converges("Cluster serves through node 1", || {
        c.client().tcp_request(node_addr(1), 31090).is_ok()
    });
    let a = tcp(&c, 1, 31090);
    assert_eq!(a.server, pod_name(2, 1));
    assert_eq!(a.peer.ip(), node_addr(1), "Cluster SNATs to the node");

    svc = svc.external_traffic_policy("Local");
    c.manifests().write("local.yaml", &with_slice(&svc, &eps));
    converges("Local drops again on node 1", || dropped(&c, 1, 31090));
    assert_eq!(tcp(&c, 2, 31090).peer.ip(), CLIENT_ADDR);
}

/// `sessionAffinity: ClientIP`: one client sticks to one backend; switching
/// affinity off spreads it again, on makes it stick again.
#[test]
fn session_affinity_client_ip_sticks_and_switches_live() {
    let c = cluster();
    let eps = [
        pod_endpoint(1, 1, READY),
        pod_endpoint(1, 2, READY),
        pod_endpoint(2, 1, READY),
        pod_endpoint(2, 2, READY),
    ];
    let mut svc = ServiceBuilder::node_port("sticky")
        .tcp("tcp", 80, POD_PORT, 31091)
        .session_affinity_client_ip(10_800);
    c.manifests().write("sticky.yaml", &with_slice(&svc, &eps));
    let _agents = agents(&c);

    for node in [1, 2] {
        let s = servers(&c, node, 31091, 20);
        assert_eq!(s.len(), 1, "ClientIP affinity via node{node}: {s:?}");
    }

    svc = svc.without_session_affinity();
    c.manifests().write("sticky.yaml", &with_slice(&svc, &eps));
    converges("affinity off spreads the client", || {
        try_servers(&c, 1, 31091, 20).is_some_and(|s| s.len() >= 2)
    });

    svc = svc.session_affinity_client_ip(60);
    c.manifests().write("sticky.yaml", &with_slice(&svc, &eps));
    converges("affinity on again", || {
        try_servers(&c, 1, 31091, 20).is_some_and(|s| s.len() == 1)
    });
}

/// Ready endpoints serve; with none ready, serving-and-terminating ones do;
/// not-serving ones never do; `publishNotReadyAddresses` serves them all.
#[test]
fn endpoint_conditions_decide_who_serves() {
    let c = cluster();
    let mut svc = ServiceBuilder::node_port("cond").tcp("tcp", 80, POD_PORT, 31092);
    let write = |svc: &ServiceBuilder, eps: &[Endpoint]| {
        c.manifests().write("cond.yaml", &with_slice(svc, eps));
    };
    write(
        &svc,
        &[pod_endpoint(1, 1, READY), pod_endpoint(2, 1, NOT_READY)],
    );
    let _agents = agents(&c);
    let only = |who: &str| BTreeSet::from([who.to_string()]);

    assert_eq!(
        servers(&c, 1, 31092, 20),
        only(&pod_name(1, 1)),
        "ready serves, not ready does not"
    );
    assert_eq!(servers(&c, 2, 31092, 20), only(&pod_name(1, 1)));

    // No ready endpoint: the serving, terminating one takes the traffic.
    write(
        &svc,
        &[
            pod_endpoint(1, 1, TERMINATING),
            pod_endpoint(2, 1, NOT_READY),
        ],
    );
    converges("terminating fallback", || {
        c.client().tcp_request(node_addr(2), 31092).is_ok()
    });
    assert_eq!(
        servers(&c, 2, 31092, 10),
        only(&pod_name(1, 1)),
        "terminating fallback"
    );

    // Nothing serving: rejected.
    write(
        &svc,
        &[pod_endpoint(1, 1, NOT_READY), pod_endpoint(2, 1, NOT_READY)],
    );
    converges("no serving endpoint rejects", || {
        matches!(
            c.client().tcp_connect_result(node_addr(1), 31092),
            ConnectResult::Refused
        )
    });

    // publishNotReadyAddresses: every endpoint serves whatever its conditions.
    svc = svc.publish_not_ready_addresses();
    write(
        &svc,
        &[pod_endpoint(1, 1, NOT_READY), pod_endpoint(2, 1, NOT_READY)],
    );
    converges("publishNotReadyAddresses serves all", || {
        try_servers(&c, 1, 31092, 30).is_some_and(|s| s.len() == 2)
    });
}

/// A named targetPort is resolved from the EndpointSlice's ports; a
/// LoadBalancer's nodePort is served; a Service changed to ClusterIP stops
/// answering on its old nodePort.
#[test]
fn named_target_port_load_balancer_and_type_change() {
    let c = cluster();
    let named = ServiceBuilder::node_port("named").port(service_port(
        "http",
        "TCP",
        80,
        Target::Name("web"),
        Some(31093),
    ));
    // The slice carries the service port's name with the container's number.
    let named_slice = named
        .slice("abcde")
        .port("http", "TCP", NAMED_PORT)
        .endpoints(&[pod_endpoint(1, 1, READY), pod_endpoint(2, 1, READY)]);
    c.manifests()
        .write("named.yaml", &to_yaml(&[&named, &named_slice]));
    let mut lb =
        ServiceBuilder::new("default", "lb", "LoadBalancer").tcp("tcp", 80, POD_PORT, 31094);
    let lb_eps = [pod_endpoint(2, 2, READY)];
    c.manifests().write("lb.yaml", &with_slice(&lb, &lb_eps));
    let _agents = agents(&c);

    for node in [1, 2] {
        assert_eq!(
            tcp(&c, node, 31093).local_port,
            NAMED_PORT,
            "named targetPort via node{node}"
        );
        assert_eq!(
            tcp(&c, node, 31094).server,
            pod_name(2, 2),
            "LoadBalancer nodePort via node{node}"
        );
    }

    lb = lb.type_("ClusterIP").without_node_ports();
    c.manifests().write("lb.yaml", &with_slice(&lb, &lb_eps));
    converges("ClusterIP no longer answers on the old nodePort", || {
        [1, 2].iter().all(|n| {
            c.client()
                .tcp_connect_result(node_addr(*n), 31094)
                .is_refused()
        })
    });
    assert_eq!(
        tcp(&c, 1, 31093).local_port,
        NAMED_PORT,
        "the other service is untouched"
    );
}

/// `--nodeport-addresses primary`: only the primary address serves.
#[test]
fn nodeport_addresses_primary_serves_only_the_primary_address() {
    let c = cluster();
    c.manifests().write(
        "svc.yaml",
        &with_slice(
            &ServiceBuilder::node_port("svc").tcp("tcp", 80, POD_PORT, 31095),
            &[pod_endpoint(1, 1, READY)],
        ),
    );
    let secondary = Ipv4Addr::new(10, 200, 0, 111);
    c.node(1)
        .netns()
        .ip(&["addr", "add", "10.200.0.111/24", "dev", "eth0"]);
    let _agents = agents_with(&c, &["--nodeport-addresses", "primary"]);
    assert_eq!(
        tcp(&c, 1, 31095).server,
        pod_name(1, 1),
        "the primary address serves"
    );
    assert!(
        c.client().tcp_connect_result(secondary, 31095).is_refused(),
        "a secondary address is left to the stack (nothing listens there)"
    );
}

/// A UDP client with a fixed source port reaches the new backend on its
/// next packet once its backend is gone (no blackhole of stale flows).
#[test]
fn stale_udp_flow_moves_to_the_new_backend_at_once() {
    let c = cluster();
    let svc = ServiceBuilder::node_port("dns").udp("udp", 53, POD_PORT, 31096);
    c.manifests()
        .write("dns.yaml", &with_slice(&svc, &[pod_endpoint(1, 1, READY)]));
    let agents = agents(&c);
    let from = Some(45_000);
    for node in [1, 2] {
        let a = parse(
            c.client().udp_request(node_addr(node), 31096, from),
            "UDP before",
        );
        assert_eq!(a.server, pod_name(1, 1));
    }

    let mark = agents[0].map_writes();
    c.manifests()
        .write("dns.yaml", &with_slice(&svc, &[pod_endpoint(2, 2, READY)]));
    agents[0].wait_for_map_writes_since(mark, Duration::from_secs(2));
    for node in [1, 2] {
        converges("the same client port reaches the new backend", || {
            c.client()
                .udp_request(node_addr(node), 31096, from)
                .ok()
                .and_then(|l| l.parse::<Answer>().ok())
                .is_some_and(|a| a.server == pod_name(2, 2))
        });
    }
}

/// Hairpin: a pod reaches its own Service through its node's address and
/// nodePort, and gets answers from itself and from the other endpoint; its
/// connections to another node's nodePort and to the ClusterIP work too.
/// Socket load balancing points the pod's sockets at a backend before any
/// packet leaves it, so no hairpin NAT is involved.
#[test]
fn hairpin_pod_reaches_its_own_service() {
    let c = cluster();
    let svc = ServiceBuilder::node_port("hair")
        .tcp("tcp", 80, POD_PORT, 31097)
        .udp("udp", 80, POD_PORT, 31097)
        .cluster_ip(Ipv4Addr::new(10, 96, 0, 30));
    c.manifests().write(
        "hair.yaml",
        &with_slice(
            &svc,
            &[pod_endpoint(1, 1, READY), pod_endpoint(2, 1, READY)],
        ),
    );
    let _agents = agents(&c);
    let me = pod_name(1, 1);
    let answer = |proto: &str, addr: Ipv4Addr, port: u16| -> Answer {
        let line = c
            .pod_request(1, 1, proto, addr, port)
            .unwrap_or_else(|e| panic!("{proto} from {me} to {addr}:{port}: {e}"));
        line.parse()
            .unwrap_or_else(|e| panic!("{proto} answer: {e}"))
    };

    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        let a = answer("tcp", node_addr(1), 31097);
        assert_eq!(a.local_port, POD_PORT);
        seen.insert(a.server);
    }
    assert_eq!(
        seen,
        BTreeSet::from([me.clone(), pod_name(2, 1)]),
        "the pod is answered by itself and by the other endpoint"
    );
    let a = answer("udp", node_addr(1), 31097);
    assert!(
        [me.clone(), pod_name(2, 1)].contains(&a.server),
        "UDP hairpin: {a:?}"
    );
    let a = answer("tcp", node_addr(2), 31097);
    assert!(
        [me.clone(), pod_name(2, 1)].contains(&a.server),
        "another node's nodePort: {a:?}"
    );
    let a = answer("tcp", Ipv4Addr::new(10, 96, 0, 30), 80);
    assert!(
        [me.clone(), pod_name(2, 1)].contains(&a.server),
        "the ClusterIP: {a:?}"
    );
}

/// A UDP flow whose backend left its Service but still serves another
/// Service is purged too: the same client port reaches the new backend.
#[test]
fn stale_udp_flow_to_a_backend_shared_with_another_service_moves() {
    let c = cluster();
    let a = ServiceBuilder::node_port("svc-a").udp("udp", 53, POD_PORT, 31098);
    let b = ServiceBuilder::node_port("svc-b").udp("udp", 53, POD_PORT, 31099);
    c.manifests()
        .write("a.yaml", &with_slice(&a, &[pod_endpoint(1, 1, READY)]));
    c.manifests()
        .write("b.yaml", &with_slice(&b, &[pod_endpoint(1, 1, READY)]));
    let agents = agents(&c);
    let from = Some(45_001);
    let via = |node: usize, port: u16| {
        parse(c.client().udp_request(node_addr(node), port, from), "UDP").server
    };
    assert_eq!(via(1, 31098), pod_name(1, 1));
    assert_eq!(via(2, 31098), pod_name(1, 1));

    let marks: Vec<f64> = agents.iter().map(Agent::map_writes).collect();
    c.manifests()
        .write("a.yaml", &with_slice(&a, &[pod_endpoint(2, 2, READY)]));
    for (agent, mark) in agents.iter().zip(marks) {
        agent.wait_for_map_writes_since(mark, Duration::from_secs(2));
    }
    assert_eq!(
        via(1, 31098),
        pod_name(2, 2),
        "node 1: the same client port reaches the new backend"
    );
    assert_eq!(
        via(2, 31098),
        pod_name(2, 2),
        "node 2: the same client port reaches the new backend"
    );
    assert_eq!(
        via(1, 31099),
        pod_name(1, 1),
        "the other service keeps the shared backend"
    );
}

/// `--xdp-mode generic` (the fallback where native XDP is unavailable)
/// serves the same: local and remote backends, TCP and UDP, and rejects.
#[test]
fn generic_xdp_mode_serves_the_same() {
    let c = cluster();
    c.manifests().write(
        "svc.yaml",
        &with_slice(
            &ServiceBuilder::node_port("svc")
                .tcp("tcp", 80, POD_PORT, 31100)
                .udp("udp", 80, POD_PORT, 31100),
            &[pod_endpoint(2, 1, READY)],
        ),
    );
    c.manifests().write(
        "empty.yaml",
        &with_slice(
            &ServiceBuilder::node_port("empty").tcp("tcp", 80, POD_PORT, 31101),
            &[],
        ),
    );
    let _agents = agents_with(&c, &["--xdp-mode", "generic"]);
    let link = c
        .node(1)
        .netns()
        .ip_stdout(&["link", "show", "dev", "eth0"]);
    assert!(
        link.contains("xdpgeneric"),
        "attached in generic mode:\n{link}"
    );
    for node in [1, 2] {
        let a = tcp(&c, node, 31100);
        assert_eq!(a.server, pod_name(2, 1));
        let want = if node == 1 { node_addr(1) } else { CLIENT_ADDR };
        assert_eq!(a.peer.ip(), want, "via node{node}");
        let u = parse(c.client().udp_request(node_addr(node), 31100, None), "UDP");
        assert_eq!(u.server, pod_name(2, 1));
        assert!(
            matches!(
                c.client().tcp_connect_result(node_addr(node), 31101),
                ConnectResult::Refused
            ),
            "empty service rejected via node{node}"
        );
    }
}

/// Waits (at most 3 s) until `check` passes; panics with its last complaint.
fn converges_or(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within 3 s; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The manifests reads each agent has made that found a change
/// (`nodeport_manifests_loads_total`).
fn load_marks(agents: &[Agent<'_>]) -> Vec<f64> {
    agents
        .iter()
        .map(|a| a.metric("nodeport_manifests_loads_total").unwrap_or(0.0))
        .collect()
}

/// Waits until every agent has read the manifests changed after `marks`
/// (values of [`load_marks`]), and checks that none of them rejected
/// anything in them (`nodeport_manifests_rejected`).
fn edit_applied(agents: &[Agent<'_>], marks: &[f64], what: &str) {
    for (agent, &mark) in agents.iter().zip(marks) {
        agent.wait_for_metric_above(
            "nodeport_manifests_loads_total",
            mark,
            Duration::from_secs(3),
        );
        assert_eq!(
            agent.metric("nodeport_manifests_rejected"),
            Some(0.0),
            "{what}: the agent of {} rejected the edit:\n{}",
            agent.node_name(),
            agent.log()
        );
    }
}

/// The status of `GET /` on healthCheckNodePort `port` of node `node`, from
/// the client.
fn health_check(c: &Cluster, node: usize, port: u16) -> io::Result<u16> {
    get(
        c.client_netns(),
        SocketAddr::new(IpAddr::V4(node_addr(node)), port),
        "/",
    )
    .map(|r| r.status)
}

/// A LoadBalancer edited from `externalTrafficPolicy: Local` to `Cluster`
/// that leaves its healthCheckNodePort in the file is applied, as the API
/// server applies it (the unchanged port is released): the health check
/// closes on every node and a node without local endpoints now serves,
/// SNATing to the remote one.
#[test]
fn edit_to_cluster_policy_leaving_the_health_check_node_port_is_applied() {
    let c = cluster();
    let eps = [pod_endpoint(2, 1, READY)];
    let mut svc = ServiceBuilder::new("default", "hc", "LoadBalancer")
        .tcp("tcp", 80, POD_PORT, 31102)
        .external_traffic_policy("Local")
        .health_check_node_port(32110);
    c.manifests().write("hc.yaml", &with_slice(&svc, &eps));
    let agents = agents(&c);
    converges_or("the health check reports the local endpoints", || {
        match (health_check(&c, 1, 32110), health_check(&c, 2, 32110)) {
            (Ok(503), Ok(200)) => Ok(()),
            other => Err(format!("node 1, node 2: {other:?}")),
        }
    });
    assert!(
        dropped(&c, 1, 31102),
        "Local: node 1 has no local endpoint and drops"
    );

    let marks = load_marks(&agents);
    svc = svc.external_traffic_policy("Cluster");
    c.manifests().write("hc.yaml", &with_slice(&svc, &eps));
    let written = c.manifests().read("hc.yaml").unwrap_or_default();
    assert!(
        written.contains("healthCheckNodePort: 32110") && written.contains("Cluster"),
        "the edit leaves the healthCheckNodePort:\n{written}"
    );
    edit_applied(&agents, &marks, "Local -> Cluster");
    converges_or("the health check closes on every node", || {
        for node in [1, 2] {
            match health_check(&c, node, 32110) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                other => return Err(format!("node {node}: {other:?}")),
            }
        }
        Ok(())
    });
    converges_or("node 1 serves with Cluster", || {
        c.client()
            .tcp_request(node_addr(1), 31102)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    for _ in 0..5 {
        let a = tcp(&c, 1, 31102);
        assert_eq!(a.server, pod_name(2, 1));
        assert_eq!(a.peer.ip(), node_addr(1), "Cluster SNATs to the node");
    }
}

/// A NodePort Service edited to `type: ClusterIP` that leaves its nodePorts
/// in the file is applied, as the API server applies it (the unchanged
/// nodePorts are released): the old nodePort stops answering on every node
/// and the ClusterIP keeps serving pods.
#[test]
fn edit_to_cluster_ip_leaving_the_node_ports_is_applied() {
    let c = cluster();
    let eps = [pod_endpoint(1, 1, READY), pod_endpoint(2, 1, READY)];
    let endpoints = [pod_name(1, 1), pod_name(2, 1)];
    let cluster_ip = Ipv4Addr::new(10, 96, 0, 31);
    let mut svc = ServiceBuilder::node_port("clip")
        .tcp("tcp", 80, POD_PORT, 31103)
        .cluster_ip(cluster_ip);
    c.manifests().write("clip.yaml", &with_slice(&svc, &eps));
    let agents = agents(&c);
    for node in [1, 2] {
        let a = tcp(&c, node, 31103);
        assert!(endpoints.contains(&a.server), "via node{node}: {a:?}");
    }

    let marks = load_marks(&agents);
    // Only the type changes: the nodePorts stay in the file.
    svc = svc.type_("ClusterIP");
    c.manifests().write("clip.yaml", &with_slice(&svc, &eps));
    let written = c.manifests().read("clip.yaml").unwrap_or_default();
    assert!(
        written.contains("type: ClusterIP") && written.contains("nodePort: 31103"),
        "the edit leaves the nodePort:\n{written}"
    );
    edit_applied(&agents, &marks, "NodePort -> ClusterIP");
    let quick = c.client().with_timeout(Duration::from_millis(600));
    converges_or("the old nodePort stops answering on every node", || {
        for node in [1, 2] {
            let r = quick.tcp_connect_result(node_addr(node), 31103);
            if r.is_connected() {
                return Err(format!("node {node} still answers"));
            }
        }
        Ok(())
    });
    for node in [1, 2] {
        let r = quick.tcp_connect_result(node_addr(node), 31103);
        assert!(
            r.is_refused() || r.is_timed_out(),
            "node {node}: the old nodePort: {r:?}"
        );
    }

    // The ClusterIP serves a pod that is not an endpoint (socket LB).
    for _ in 0..5 {
        let line = c
            .pod_request(1, 2, "tcp", cluster_ip, 80)
            .unwrap_or_else(|e| panic!("TCP from {} to {cluster_ip}:80: {e}", pod_name(1, 2)));
        let a: Answer = line
            .parse()
            .unwrap_or_else(|e| panic!("answer {line:?}: {e}"));
        assert!(endpoints.contains(&a.server), "the ClusterIP: {a:?}");
    }
}
