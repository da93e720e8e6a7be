//! The agent's HTTP endpoints: `/healthz` and `/livez` (kube-proxy's
//! status codes and JSON body), `/metrics` (Prometheus text with the
//! documented metric names, the datapath counters among them), and the
//! healthCheckNodePort servers of `externalTrafficPolicy: Local` Services
//! (200/503 by local endpoints, kube-proxy's body and headers; they move
//! with the port and close with the Service).
//!
//! Needs root. Run with `cargo xtask test` (builds the agent first).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use nodeport_tests::cluster::{node_addr, pod_name};
use nodeport_tests::http::{HttpResponse, get};
use nodeport_tests::objects::{Ep, ServiceBuilder, ToYaml as _, node, to_yaml};
use nodeport_tests::{Agent, AgentOptions, ApiServer, Cluster, ClusterConfig, eventually};

const POD_PORT: u16 = 8080;

fn cluster() -> Cluster {
    Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 2,
        pod_tcp_ports: vec![POD_PORT],
        pod_udp_ports: vec![],
        pod_tcp_echo_ports: vec![],
        ..ClusterConfig::default()
    })
}

fn agent_get(a: &Agent<'_>, addr: SocketAddr, path: &str) -> HttpResponse {
    get(a.netns(), addr, path).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

/// Waits until `f` holds, for at most `limit`.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    eventually(limit, || f().then_some(()))
        .unwrap_or_else(|| panic!("{what}: not within {limit:?}"));
    start.elapsed()
}

/// The value of the sample `line_prefix` (`name{labels}`) in metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn healthz_livez_and_metrics_follow_the_sync_state() {
    let c = cluster();
    let api = ApiServer::for_cluster(&c);
    let web = ServiceBuilder::node_port("web").tcp("tcp", 80, POD_PORT, 31100);
    api.apply_yaml(&to_yaml(&[
        &web,
        &web.slice("x1").pods(&[(1, 1, true), (2, 1, true)]),
    ]));
    // The API server is away when the agent starts: no sync, so unhealthy.
    api.stop();
    let agent = c.start_agent_with(1, &AgentOptions::kube(api.kubeconfig()));
    let healthz = agent.healthz_addr();
    let metrics = agent.metrics_addr();
    let r = eventually(Duration::from_secs(10), || {
        get(agent.netns(), healthz, "/healthz").ok()
    })
    .expect("the healthz server answers before the first sync");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["lastUpdated"], "", "{body}");
    assert!(
        body["currentTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    assert_eq!(body["nodeEligible"], true);
    assert_eq!(agent_get(&agent, healthz, "/livez").status, 503);
    assert_eq!(agent_get(&agent, healthz, "/nope").status, 404);
    let m = agent_get(&agent, metrics, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{m:?}"
    );
    assert_eq!(
        sample(&m.body, "nodeport_syncs_total{result=\"success\"}"),
        Some(0.0)
    );
    assert!(
        sample(
            &m.body,
            "nodeport_source_errors_total{resource=\"services\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "failed lists are counted:\n{}",
        m.body
    );

    // It returns: the agent syncs and turns healthy.
    api.resume();
    agent.wait_ready();
    within(
        Duration::from_secs(2),
        "healthz 200 after the first sync",
        || agent_get(&agent, healthz, "/healthz").status == 200,
    );
    let body = agent_get(&agent, healthz, "/healthz").json();
    assert!(
        body["lastUpdated"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    assert_eq!(agent_get(&agent, healthz, "/livez").status, 200);

    // Traffic, and an endpoint change after the start (its trigger time is
    // set by the API server): the latency of programming it is measured.
    for _ in 0..5 {
        c.client()
            .tcp_request(node_addr(1), 31100)
            .expect("TCP through node 1");
    }
    api.apply_yaml(
        &web.slice("x1")
            .pods(&[(1, 1, true), (1, 2, true), (2, 1, true)])
            .yaml(),
    );
    within(Duration::from_secs(2), "latency measured", || {
        let m = agent_get(&agent, metrics, "/metrics");
        sample(
            &m.body,
            "nodeport_network_programming_duration_seconds_count",
        ) == Some(1.0)
    });
    let text = agent_get(&agent, metrics, "/metrics").body;
    for name in [
        "# TYPE nodeport_sync_duration_seconds histogram",
        "# TYPE nodeport_network_programming_duration_seconds histogram",
        "# TYPE nodeport_sync_last_timestamp_seconds gauge",
        "# TYPE nodeport_services gauge",
        "# TYPE nodeport_endpoints gauge",
        "# TYPE nodeport_map_write_errors_total counter",
        "# TYPE nodeport_datapath_packets_total counter",
        "# TYPE nodeport_memory_cgroup_bytes gauge",
        "# TYPE nodeport_memory_limit_bytes gauge",
    ] {
        assert!(text.lines().any(|l| l == name), "{name} missing:\n{text}");
    }
    // Read on the loop's first pass: a resident set of at least a MiB.
    let resident = sample(&text, "nodeport_memory_resident_bytes").unwrap_or(0.0);
    assert!(resident > 1.0e6, "nodeport_memory_resident_bytes {resident}:\n{text}");
    assert_eq!(sample(&text, "nodeport_services"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "nodeport_frontends"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "nodeport_endpoints"), Some(3.0), "{text}");
    assert!(sample(&text, "nodeport_sync_duration_seconds_count").unwrap_or(0.0) >= 2.0);
    assert!(sample(&text, "nodeport_sync_last_timestamp_seconds").unwrap_or(0.0) > 1.0e9);
    let latency = sample(&text, "nodeport_network_programming_duration_seconds_sum").unwrap();
    eprintln!("network programming latency of one EndpointSlice change: {latency} s");
    // A figure exists and is plausible (the change was written, well
    // within the test's own deadlines); not a speed.
    assert!(latency > 0.0 && latency < 30.0, "latency {latency} s");
    let forwarded: f64 = text
        .lines()
        .filter(|l| l.starts_with("nodeport_datapath_packets_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        forwarded >= 10.0,
        "the datapath counters are exported:\n{text}"
    );

    // The node is being deleted: /healthz fails (load balancers drain it),
    // /livez does not (the agent is fine).
    let mut node = serde_json::to_value(node("node1", node_addr(1))).expect("a Node");
    node["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z".into();
    api.apply(node);
    within(
        Duration::from_secs(2),
        "healthz 503 while the node is deleted",
        || agent_get(&agent, healthz, "/healthz").status == 503,
    );
    assert_eq!(
        agent_get(&agent, healthz, "/healthz").json()["nodeEligible"],
        false
    );
    assert_eq!(agent_get(&agent, healthz, "/livez").status, 200);
}

/// GET `/` on a healthCheckNodePort of node `i`, from the client.
fn check(c: &Cluster, node: usize, port: u16) -> std::io::Result<HttpResponse> {
    get(
        c.client_netns(),
        SocketAddr::new(IpAddr::V4(node_addr(node)), port),
        "/",
    )
}

fn expect_check(c: &Cluster, node: usize, port: u16, status: u16, local: u64) -> bool {
    check(c, node, port).is_ok_and(|r| {
        r.status == status
            && r.json()
                == serde_json::json!({
                    "service": {"namespace": "default", "name": "web"},
                    "localEndpoints": local,
                    "serviceProxyHealthy": true,
                })
            && r.header("content-type") == Some("application/json")
            && r.header("x-content-type-options") == Some("nosniff")
            && r.header("x-load-balancing-endpoint-weight") == Some(&local.to_string())
    })
}

#[test]
fn health_check_node_port_reports_local_endpoints_moves_and_closes() {
    let c = cluster();
    let api = ApiServer::for_cluster(&c);
    let web = ServiceBuilder::node_port("web").tcp("tcp", 80, POD_PORT, 31101);
    let local = |hc: u16| {
        web.clone()
            .external_traffic_policy("Local")
            .health_check_node_port(hc)
    };
    let slice = |eps: &[Ep]| web.slice("x1").pods(eps);
    api.apply_yaml(&to_yaml(&[
        &local(32100),
        &slice(&[(1, 1, true), (1, 2, true), (2, 1, false)]),
    ]));
    let agents: Vec<Agent<'_>> = (1..=2)
        .map(|i| c.start_agent_with(i, &AgentOptions::kube(api.kubeconfig())))
        .collect();
    for a in &agents {
        a.wait_ready();
    }
    within(
        Duration::from_secs(2),
        "node 1: two local endpoints",
        || expect_check(&c, 1, 32100, 200, 2),
    );
    assert!(
        expect_check(&c, 2, 32100, 503, 0),
        "node 2: none ready: {:?}",
        check(&c, 2, 32100)
    );
    // The Local NodePort itself serves from node 1's pods.
    let a: nodeport_tests::Answer = c
        .client()
        .tcp_request(node_addr(1), 31101)
        .expect("TCP via node 1")
        .parse()
        .expect("answer");
    assert!(a.server.starts_with("node1-"), "{a:?}");

    // The endpoints move to node 2.
    api.apply_yaml(&slice(&[(1, 1, false), (2, 1, true)]).yaml());
    within(
        Duration::from_secs(1),
        "the checks follow the endpoints",
        || expect_check(&c, 1, 32100, 503, 0) && expect_check(&c, 2, 32100, 200, 1),
    );
    let a: nodeport_tests::Answer = c
        .client()
        .tcp_request(node_addr(2), 31101)
        .expect("TCP via node 2")
        .parse()
        .expect("answer");
    assert_eq!(a.server, pod_name(2, 1));

    // The port changes: the old one closes, the new one answers.
    api.apply_yaml(&local(32101).yaml());
    within(Duration::from_secs(1), "the check moved", || {
        [1, 2].iter().all(|n| {
            check(&c, *n, 32100).is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        }) && expect_check(&c, 2, 32101, 200, 1)
            && expect_check(&c, 1, 32101, 503, 0)
    });

    // Switched to Cluster: no health check any more.
    api.apply_yaml(&web.yaml());
    within(
        Duration::from_secs(1),
        "closed with the Local policy",
        || [1, 2].iter().all(|n| check(&c, *n, 32101).is_err()),
    );

    // Local again, then the Service goes away: closed again.
    api.apply_yaml(&local(32102).yaml());
    within(Duration::from_secs(1), "open again", || {
        expect_check(&c, 2, 32102, 200, 1)
    });
    api.delete("Service", "default", "web");
    within(Duration::from_secs(1), "closed with the Service", || {
        [1, 2].iter().all(|n| check(&c, *n, 32102).is_err())
    });
}
