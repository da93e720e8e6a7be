//! End-to-end tests of the tools an operator acts on, on the namespace test
//! cluster with real traffic: `nodeport-agent explain` predicts, from the
//! live maps, what a packet will get, and a real packet then gets exactly
//! that; the per-Service counters move by exactly the packets sent; map
//! pressure rises as conntrack fills.
//!
//! Needs root. Run with `cargo xtask test`.

use std::net::SocketAddr;
use std::time::Duration;

use nodeport_tests::cluster::{CLIENT_ADDR, node_addr, pod_addr, pod_name};
use nodeport_tests::objects::{ServiceBuilder, to_yaml};
use nodeport_tests::{AgentOptions, Answer, Cluster, ClusterConfig, Veths, eventually};
use serde_json::Value;

const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 31_700;
const EMPTY_NODE_PORT: u16 = 31_701;
const STICKY_NODE_PORT: u16 = 31_702;

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

/// `nodeport-agent ARGS --bpffs <node 1's> -o json` on node 1, parsed.
fn agent_json(c: &Cluster, args: &[&str]) -> Value {
    let bpffs = c.node_bpffs(1).to_string_lossy().into_owned();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--bpffs", &bpffs, "-o", "json"]);
    let out = c.agent_cli(1, &all);
    assert!(
        out.status.success(),
        "nodeport-agent {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "nodeport-agent {all:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `explain -o json` on node 1 for a packet from `from` to `to`.
fn explain(c: &Cluster, proto: &str, from: SocketAddr, to: SocketAddr) -> Value {
    agent_json(
        c,
        &[
            "explain",
            "--proto",
            proto,
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
            "--interface",
            "eth0",
        ],
    )
}

/// The pod `node<i>-pod<k>` as `addr:port`.
fn backend_of(server: &str) -> String {
    let (node, pod) = server
        .strip_prefix("node")
        .and_then(|s| s.split_once("-pod"))
        .unwrap_or_else(|| panic!("not a pod name: {server}"));
    let addr = pod_addr(node.parse().expect("node"), pod.parse().expect("pod"));
    format!("{addr}:{POD_PORT}")
}

/// For new TCP and UDP flows from many client ports, `explain` names the
/// backend, NAT and counter, and the real flow then reaches exactly that
/// backend with exactly that source; afterwards the same tuple is explained
/// as established. Under ClientIP affinity another tuple of the same client
/// is explained as held by the affinity, and gets that backend. A port that
/// is no Service's passes untouched, a Service without endpoints is
/// rejected, as predicted.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one cluster, every kind of prediction"
)]
fn explain_predicts_what_a_real_packet_then_gets() {
    let c = cluster();
    let svc = ServiceBuilder::node_port("explained")
        .tcp("tcp", 80, POD_PORT, NODE_PORT)
        .udp("udp", 80, POD_PORT, NODE_PORT);
    let empty = ServiceBuilder::node_port("empty").tcp("tcp", 80, POD_PORT, EMPTY_NODE_PORT);
    let sticky = ServiceBuilder::node_port("sticky")
        .tcp("tcp", 80, POD_PORT, STICKY_NODE_PORT)
        .session_affinity_client_ip(600);
    c.manifests().write(
        "explained.yaml",
        &to_yaml(&[
            &svc,
            &svc.slice("x1").pods(&[(1, 1, true), (2, 1, true)]),
            &empty,
            &empty.slice("x1").pods(&[]),
            &sticky,
            &sticky.slice("x1").pods(&[(1, 1, true), (2, 1, true)]),
        ]),
    );
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    let to = SocketAddr::new(node_addr(1).into(), NODE_PORT);
    eventually(Duration::from_secs(5), || {
        c.client().tcp_request(node_addr(1), NODE_PORT).ok()
    })
    .expect("the NodePort answers");

    let mut counters = std::collections::BTreeSet::new();
    for (i, port) in (41_000u16..41_016).enumerate() {
        let proto = if i % 2 == 0 { "tcp" } else { "udp" };
        let from = SocketAddr::new(CLIENT_ADDR.into(), port);
        let e = explain(&c, proto, from, to);
        assert_eq!(e["flow"], "new", "{e}");
        assert_eq!(
            e["frontend"],
            format!("nodePort {NODE_PORT}/{}", proto.to_uppercase())
        );
        let backend = e["backend"].as_str().expect("a backend").to_owned();
        let line = match proto {
            "tcp" => c.client().tcp_request_from(from, node_addr(1), NODE_PORT),
            _ => c.client().udp_request_from(from, node_addr(1), NODE_PORT),
        }
        .unwrap_or_else(|err| panic!("{proto} from {from}: {err}"));
        let a: Answer = line.parse().expect("an answer");
        assert_eq!(
            backend_of(&a.server),
            backend,
            "{proto} from {from}: explain said {e}"
        );
        let local = a.server == pod_name(1, 1);
        let (counter, source) = if local {
            ("dnat_local", from.ip())
        } else {
            ("forward_remote", node_addr(1).into())
        };
        assert_eq!(e["counter"], counter, "{e}");
        assert_eq!(
            a.peer.ip(),
            source,
            "the source the pod saw, as explained: {e}"
        );
        counters.insert(counter);
        if proto == "udp" {
            let again = explain(&c, proto, from, to);
            assert_eq!(again["flow"], "established", "{again}");
            assert_eq!(again["backend"], backend.as_str(), "{again}");
        }
    }
    assert_eq!(
        counters.len(),
        2,
        "both a local and a remote backend were explained"
    );

    // ClientIP affinity: after a first connection, every tuple of the
    // client is held to its backend.
    let sticky_to = SocketAddr::new(node_addr(1).into(), STICKY_NODE_PORT);
    let first = SocketAddr::new(CLIENT_ADDR.into(), 41_200);
    let line = c
        .client()
        .tcp_request_from(first, node_addr(1), STICKY_NODE_PORT)
        .expect("the first sticky connection");
    let held: Answer = line.parse().expect("an answer");
    for port in 41_201u16..41_205 {
        let from = SocketAddr::new(CLIENT_ADDR.into(), port);
        let e = explain(&c, "tcp", from, sticky_to);
        assert_eq!(e["flow"], "affinity", "{e}");
        assert_eq!(e["backend"], backend_of(&held.server).as_str(), "{e}");
        let line = c
            .client()
            .tcp_request_from(from, node_addr(1), STICKY_NODE_PORT)
            .unwrap_or_else(|err| panic!("sticky from {from}: {err}"));
        let a: Answer = line.parse().expect("an answer");
        assert_eq!(a.server, held.server, "held to the explained backend");
    }

    let e = explain(
        &c,
        "tcp",
        SocketAddr::new(CLIENT_ADDR.into(), 41_100),
        SocketAddr::new(node_addr(1).into(), 22),
    );
    assert_eq!(e["counter"], "pass_not_service", "{e}");
    assert!(e["frontend"].is_null(), "{e}");

    let empty_to = SocketAddr::new(node_addr(1).into(), EMPTY_NODE_PORT);
    let e = explain(
        &c,
        "tcp",
        SocketAddr::new(CLIENT_ADDR.into(), 41_101),
        empty_to,
    );
    assert_eq!(e["counter"], "reject_no_backend", "{e}");
    assert!(
        c.client()
            .tcp_connect_result(node_addr(1), EMPTY_NODE_PORT)
            .is_refused(),
        "the rejection explain predicted"
    );
}

const COUNTED_NODE_PORT: u16 = 31_703;

/// The per-Service-port and per-endpoint metrics move by exactly the
/// packets sent: ten UDP datagrams from ten client ports are ten packets
/// and ten new flows of the Service port, and each endpoint's packets are
/// the datagrams its pod answered; a SYN to a Service without endpoints is
/// one rejected packet.
#[test]
#[allow(clippy::too_many_lines, reason = "one cluster, every counter")]
#[allow(clippy::float_cmp, reason = "the samples are whole counts")]
fn service_and_backend_counters_move_by_the_packets_sent() {
    let c = cluster();
    let svc = ServiceBuilder::node_port("counted").udp("udp", 80, POD_PORT, COUNTED_NODE_PORT);
    let empty = ServiceBuilder::node_port("empty").tcp("tcp", 80, POD_PORT, EMPTY_NODE_PORT);
    c.manifests().write(
        "counted.yaml",
        &to_yaml(&[
            &svc,
            &svc.slice("x1").pods(&[(1, 1, true), (2, 1, true)]),
            &empty,
            &empty.slice("x1").pods(&[]),
        ]),
    );
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    eventually(Duration::from_secs(5), || {
        c.client()
            .udp_request(node_addr(1), COUNTED_NODE_PORT, None)
            .ok()
    })
    .expect("the NodePort answers");

    let labels = "namespace=\"default\",name=\"counted\",port=\"udp\",protocol=\"UDP\"";
    let service = |what: &str| {
        agent1
            .metric(&format!("nodeport_service_{what}_total{{{labels}}}"))
            .unwrap_or_else(|| panic!("nodeport_service_{what}_total of the counted Service"))
    };
    let backend = |node: usize| {
        let addr = pod_addr(node, 1);
        agent1
            .metric(&format!(
                "nodeport_backend_packets_total{{backend=\"{addr}:{POD_PORT}\"}}"
            ))
            .unwrap_or(0.0)
    };
    let (packets, flows) = (service("packets"), service("new_flows"));
    let (to1, to2) = (backend(1), backend(2));
    let mut answered = [0.0, 0.0];
    for port in 42_000u16..42_010 {
        let from = SocketAddr::new(CLIENT_ADDR.into(), port);
        let line = c
            .client()
            .udp_request_from(from, node_addr(1), COUNTED_NODE_PORT)
            .unwrap_or_else(|e| panic!("udp from {from}: {e}"));
        let a: Answer = line.parse().expect("an answer");
        answered[usize::from(a.server != pod_name(1, 1))] += 1.0;
    }
    assert_eq!(service("packets"), packets + 10.0, "ten datagrams");
    assert_eq!(
        service("new_flows"),
        flows + 10.0,
        "ten client ports, ten flows"
    );
    assert_eq!(
        (backend(1) - to1, backend(2) - to2),
        (answered[0], answered[1]),
        "each endpoint counts the datagrams its pod answered"
    );
    assert!(
        agent1
            .metric(&format!(
                "nodeport_service_drops_total{{{labels},reason=\"other\"}}"
            ))
            .is_some(),
        "the drop reasons are listed"
    );

    // `inspect services` shows the NodePort frontend's own counters.
    let rows = agent_json(&c, &["inspect", "services"]);
    let row = rows
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|r| r["frontend"] == format!("*:{COUNTED_NODE_PORT}/UDP"))
        })
        .unwrap_or_else(|| panic!("the counted NodePort in {rows}"));
    assert!(
        row["packets"].as_u64() >= Some(10) && row["new_flows"].as_u64() >= Some(10),
        "inspect services counts the datagrams: {row}"
    );

    let empty_labels = "namespace=\"default\",name=\"empty\",port=\"tcp\",protocol=\"TCP\"";
    let rejected = || {
        agent1
            .metric(&format!(
                "nodeport_service_rejected_total{{{empty_labels}}}"
            ))
            .unwrap_or(0.0)
    };
    let before = rejected();
    assert!(
        c.client()
            .tcp_request(node_addr(1), EMPTY_NODE_PORT)
            .is_err(),
        "a Service without endpoints refuses"
    );
    assert_eq!(rejected(), before + 1.0, "one SYN, one reject");
}

const FILL_NODE_PORT: u16 = 31_704;
/// The conntrack capacity the pressure test gives the agent.
const SMALL_CONNTRACK: u32 = 8_192;

/// As conntrack fills with UDP flows, `nodeport_bpf_map_pressure` of
/// conntrack rises from near 0 to above 90% (an LRU map that overflows
/// stays within a few per-CPU batches of full), `inspect maps` shows the
/// same fill and the `--map-size` capacity, and going above 90% is warned
/// once: a log line and `nodeport_map_pressure_warnings_total`.
#[test]
fn map_pressure_rises_as_conntrack_fills() {
    let c = cluster();
    let svc = ServiceBuilder::node_port("filling").udp("udp", 80, POD_PORT, FILL_NODE_PORT);
    c.manifests().write(
        "filling.yaml",
        &to_yaml(&[&svc, &svc.slice("x1").pods(&[(1, 1, true)])]),
    );
    let agent = c.start_agent_with(
        1,
        &AgentOptions {
            manifests_dir: c.manifests().dir().to_path_buf(),
            extra_args: vec![
                "--map-size".into(),
                format!("conntrack={SMALL_CONNTRACK}").into(),
            ],
            ..Default::default()
        },
    );
    agent.wait_ready();
    eventually(Duration::from_secs(5), || {
        c.client()
            .udp_request(node_addr(1), FILL_NODE_PORT, None)
            .ok()
    })
    .expect("the NodePort answers");
    let sample = |name: &str| {
        agent
            .metric(&format!("{name}{{map=\"conntrack\"}}"))
            .unwrap_or_else(|| panic!("{name} of conntrack is exported"))
    };
    let capacity = sample("nodeport_bpf_map_max_entries");
    assert!(
        (capacity - f64::from(SMALL_CONNTRACK)).abs() < 0.5,
        "--map-size sized conntrack: {capacity}"
    );
    let before = sample("nodeport_bpf_map_pressure");
    assert!(before < 0.1, "a few flows barely fill conntrack: {before}");
    assert_eq!(
        agent.metric("nodeport_map_pressure_warnings_total{map=\"conntrack\"}"),
        None,
        "nothing is full yet"
    );

    // A quarter more new UDP flows than conntrack holds, each from its own
    // client port.
    let flows = SMALL_CONNTRACK + SMALL_CONNTRACK / 4;
    let to = SocketAddr::new(node_addr(1).into(), FILL_NODE_PORT);
    c.client_netns().run(|| {
        for port in 10_000..10_000 + flows {
            let from = SocketAddr::new(CLIENT_ADDR.into(), u16::try_from(port).expect("a port"));
            let s = std::net::UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
            s.send_to(b"fill", to)
                .unwrap_or_else(|e| panic!("send from {from}: {e}"));
        }
    });
    let full = eventually(Duration::from_secs(10), || {
        let p = sample("nodeport_bpf_map_pressure");
        (p > 0.9).then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "conntrack pressure after {flows} flows: {}",
            sample("nodeport_bpf_map_pressure")
        )
    });
    assert!(full <= 1.0, "a share: {full}");

    let maps = agent_json(&c, &["inspect", "maps"]);
    let row = maps
        .as_array()
        .and_then(|r| r.iter().find(|r| r["map"] == "conntrack"))
        .unwrap_or_else(|| panic!("conntrack in {maps}"));
    assert_eq!(row["max_entries"], SMALL_CONNTRACK, "{row}");
    let entries = row["entries"].as_u64().expect("entries");
    assert!(
        entries * 10 > u64::from(SMALL_CONNTRACK) * 9 && entries <= u64::from(SMALL_CONNTRACK),
        "inspect maps shows conntrack above 90% full: {row}"
    );

    let warned = eventually(Duration::from_secs(15), || {
        agent.metric("nodeport_map_pressure_warnings_total{map=\"conntrack\"}")
    });
    assert_eq!(warned, Some(1.0), "one crossing, one warning");
    agent.wait_for_log("map is", Duration::from_secs(1));
    assert!(
        agent.log().contains("map=\"conntrack\"") || agent.log().contains("map=conntrack"),
        "the warning names conntrack:\n{}",
        agent.log()
    );
}
