//! End-to-end tests of what a user's host is like and the test cluster used
//! to hide: veth peers without GRO (native XDP_TX would be dropped), next
//! hops the node has no neighbour entry for, the node's own connections to
//! backend pods beside SNATed flows, and devices whose transmits fail.
//!
//! Needs root. Run with `cargo xtask test`.

use std::net::Ipv4Addr;
use std::time::Duration;

use nodeport_tests::cluster::{node_addr, pod_addr, pod_name};
use nodeport_tests::http::get;
use nodeport_tests::objects::{ServiceBuilder, to_yaml};
use nodeport_tests::{AgentOptions, Answer, Cluster, ClusterConfig, Netns, Veths, eventually};

const POD_PORT: u16 = 8080;
const ECHO_PORT: u16 = 9000;
const NODE_PORT: u16 = 31_500;
const ECHO_NODE_PORT: u16 = 31_501;

fn cluster(veths: Veths) -> Cluster {
    Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 1,
        pod_tcp_ports: vec![POD_PORT],
        pod_udp_ports: vec![POD_PORT],
        pod_tcp_echo_ports: vec![ECHO_PORT],
        veths,
        ..ClusterConfig::default()
    })
}

/// A NodePort Service (TCP and UDP) whose only endpoint is pod 1 of node 2,
/// so that node 1 SNATs every flow to it.
fn remote_only_service(c: &Cluster) {
    let svc = ServiceBuilder::node_port("remote").ports(&[
        ("tcp", "TCP", 80, POD_PORT, NODE_PORT),
        ("udp", "UDP", 80, POD_PORT, NODE_PORT),
    ]);
    c.manifests().write(
        "remote.yaml",
        &to_yaml(&[&svc, &svc.slice("x1").pods(&[(2, 1, true)])]),
    );
}

/// One `TcpExt` / `Tcp` counter of the namespace (`/proc/net/netstat`,
/// `/proc/net/snmp`), read from inside it.
fn tcp_counter(ns: &Netns, name: &str) -> u64 {
    let name = name.to_string();
    ns.run(move || {
        for file in ["/proc/net/netstat", "/proc/net/snmp"] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let [head, values] = pair else { continue };
                let names = head.split_whitespace();
                let vals = values.split_whitespace();
                for (n, v) in names.zip(vals) {
                    if n == name {
                        return v.parse().unwrap_or(0);
                    }
                }
            }
        }
        panic!("no counter {name} in /proc/net/netstat or /proc/net/snmp")
    })
}

/// Node `i`'s datapath counter `name` (`inspect stats`).
fn datapath_counter(c: &Cluster, i: usize, name: &str) -> u64 {
    let out = c.agent_cli(
        i,
        &[
            "inspect",
            "stats",
            "--bpffs",
            &c.node_bpffs(i).to_string_lossy(),
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "inspect stats on node{i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("inspect stats -o json is JSON");
    rows.as_array()
        .expect("an array")
        .iter()
        .find(|r| r["counter"] == name)
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or(0)
}

/// Node `i`'s non-zero datapath counters, for failure messages.
fn stats_text(c: &Cluster, i: usize) -> String {
    let out = c.agent_cli(
        i,
        &[
            "inspect",
            "stats",
            "--bpffs",
            &c.node_bpffs(i).to_string_lossy(),
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim_end().ends_with(" 0"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client address the node has never seen reaches a remote backend
/// through it on the first try: the replies to it and the frames to the
/// backend's node go out although the node has no neighbour entry for
/// either (the datapath hands them to TC, which resolves the neighbour);
/// no SYN is retransmitted.
#[test]
fn a_client_the_node_has_never_seen_reaches_a_remote_backend_at_once() {
    let c = cluster(Veths::KernelDefaults);
    remote_only_service(&c);
    let _agents = c.start_all_agents(c.manifests().dir());
    // A second client address, used as the source of everything it sends.
    let second = Ipv4Addr::new(10, 200, 0, 3);
    let client = c.client_netns();
    client.ip(&["addr", "add", &format!("{second}/24"), "dev", "eth0"]);
    client.ip(&[
        "route",
        "replace",
        "10.200.0.0/24",
        "dev",
        "eth0",
        "src",
        &second.to_string(),
    ]);
    for i in 1..=2 {
        c.node(i).netns().ip(&["neigh", "flush", "all"]);
    }
    let retrans_before = tcp_counter(client, "TCPSynRetrans");
    let handed_before = datapath_counter(&c, 1, "neigh_redirect");
    let a = Answer::expect(
        c.client().tcp_request(node_addr(1), NODE_PORT),
        "TCP from a new client address via node1",
    );
    assert_eq!(a.server, pod_name(2, 1));
    assert_eq!(a.peer.ip(), node_addr(1), "SNATed to node 1's address");
    assert_eq!(
        tcp_counter(client, "TCPSynRetrans"),
        retrans_before,
        "the first SYN got its answer: no retransmission"
    );
    assert!(
        datapath_counter(&c, 1, "neigh_redirect") > handed_before,
        "node 1 sent frames through TC's neighbour resolution"
    );
    // UDP too, from the same new address.
    c.node(1).netns().ip(&["neigh", "flush", "all"]);
    let udp = c.client().udp_request(node_addr(1), NODE_PORT, None);
    let a = Answer::expect(
        udp.map_err(|e| {
            std::io::Error::other(format!(
                "{e}\nnode1:\n{}\nnode2:\n{}",
                stats_text(&c, 1),
                stats_text(&c, 2)
            ))
        }),
        "UDP from a new client address via node1",
    );
    assert_eq!(a.server, pod_name(2, 1));
}

/// The node's own connections to a backend pod keep working while SNATed
/// flows to that pod run: the SNAT pool is reserved from the node's
/// ephemeral ports (here an explicit pool inside a widened ephemeral range,
/// the case reservation exists for), and `cleanup` gives the ports back.
#[test]
fn node_connections_to_a_backend_pod_work_beside_snat_flows() {
    let c = cluster(Veths::KernelDefaults);
    remote_only_service(&c);
    let node1 = c.node(1).netns();
    node1.set_sysctl("net.ipv4.ip_local_port_range", "1024 65000");
    let before = node1.sysctl("net.ipv4.ip_local_reserved_ports");
    let pool = 40_000..=40_999u16;
    let options = AgentOptions::new(c.manifests().dir())
        .arg("--snat-port-range")
        .arg(format!("{}-{}", pool.start(), pool.end()));
    let agent1 = c.start_agent_with(1, &options);
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    let reserved = node1.sysctl("net.ipv4.ip_local_reserved_ports");
    assert!(
        reserved.contains("40000-40999"),
        "the pool is reserved from the node's ephemeral ports: {reserved:?}"
    );

    // Interleave SNATed client flows and the node's own connections to the
    // same pod and port.
    let pod = pod_addr(2, 1);
    for round in 0..150 {
        let via_node = Answer::expect(
            c.client().tcp_request(node_addr(1), NODE_PORT),
            &format!("client flow {round} via node1"),
        );
        assert_eq!(via_node.peer.ip(), node_addr(1));
        assert!(
            pool.contains(&via_node.peer.port()),
            "SNAT port {} from the pool",
            via_node.peer.port()
        );
        let own = Answer::expect(
            c.node(1).client().tcp_request(pod, POD_PORT),
            &format!("node1's own connection {round} to {pod}"),
        );
        assert_eq!(own.server, pod_name(2, 1));
        assert!(
            !pool.contains(&own.peer.port()),
            "the node never picks a pool port: {}",
            own.peer.port()
        );
    }
    drop(agent1);
    c.cleanup_node(1);
    assert_eq!(
        node1.sysctl("net.ipv4.ip_local_reserved_ports"),
        before,
        "cleanup restores the reserved ports"
    );
}

/// `--xdp-mode native` on a veth whose peer has neither GRO nor an XDP
/// program: the frames the datapath sends back out are dropped by the
/// kernel. The agent counts them (`tx_failed`, the metric), names the device
/// in a log line with the fix, and `/healthz` answers 503 with it.
#[test]
fn failing_native_transmits_are_counted_and_turn_healthz_unhealthy() {
    let c = cluster(Veths::KernelDefaults);
    remote_only_service(&c);
    let options = AgentOptions::new(c.manifests().dir())
        .arg("--xdp-mode")
        .arg("native");
    let agent1 = c.start_agent_with(1, &options);
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    // Keep sending new flows to the remote backend through node 1.
    let failing = eventually(Duration::from_secs(20), || {
        let _ = c
            .client()
            .with_timeout(Duration::from_millis(200))
            .tcp_request(node_addr(1), NODE_PORT);
        let r = get(agent1.netns(), agent1.healthz_addr(), "/healthz").ok()?;
        (r.status == 503).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "/healthz never turned 503 while transmits failed; tx_failed={}\n{}",
            datapath_counter(&c, 1, "tx_failed:eth0"),
            agent1.log()
        )
    });
    let body = failing.json();
    assert_eq!(body["failingDevices"][0], "eth0", "{body}");
    assert!(datapath_counter(&c, 1, "tx_failed:eth0") > 0);
    agent1.wait_for_log("keep failing", Duration::from_secs(5));
    let metrics = get(agent1.netns(), agent1.metrics_addr(), "/metrics")
        .expect("metrics")
        .body;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("nodeport_xdp_transmit_failures_total{device=\"eth0\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// `auto` follows delivery while it runs: on a veth whose peer has GRO the
/// agent attaches natively; when the peer's GRO is turned off, it moves the
/// device to generic XDP, and remote backends keep being reached.
#[test]
fn auto_mode_follows_the_peer_as_it_changes() {
    let c = cluster(Veths::LanGro);
    remote_only_service(&c);
    let agents = c.start_all_agents(c.manifests().dir());
    assert_eq!(
        datapath_counter(&c, 1, "xdp_mode:eth0:native"),
        1,
        "native at start"
    );
    let a = Answer::expect(c.client().tcp_request(node_addr(1), NODE_PORT), "native");
    assert_eq!(a.server, pod_name(2, 1));
    assert!(
        datapath_counter(&c, 1, "tx_sent:eth0") > 0,
        "the kernel reported the native transmits"
    );

    let mark = agents[0].log_mark();
    c.lan_netns()
        .exec("ethtool", &["-K", "veth-n1", "gro", "off"]);
    agents[0].wait_for_log_since(mark, "re-attaching XDP", Duration::from_secs(10));
    eventually(Duration::from_secs(5), || {
        (datapath_counter(&c, 1, "xdp_mode:eth0:generic") == 1).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "node1 is not generic after re-attaching:\n{}",
            agents[0].log()
        )
    });
    for i in 0..5 {
        let a = Answer::expect(
            c.client().tcp_request(node_addr(1), NODE_PORT),
            &format!("generic, request {i}"),
        );
        assert_eq!(a.server, pod_name(2, 1));
    }
    drop(agents);
}

/// Bulk TCP through the NodePort in both directions (the pod echoes 8 MiB)
/// to a remote backend (SNAT) and a local one, on `veths`: large segments
/// (GSO and GRO skbs in generic mode, partial checksums from the senders'
/// offload) get through intact.
fn bulk_transfers_complete(veths: Veths) {
    let c = cluster(veths);
    let svc = ServiceBuilder::node_port("echo").tcp("echo", 9000, ECHO_PORT, ECHO_NODE_PORT);
    c.manifests().write(
        "echo.yaml",
        &to_yaml(&[&svc, &svc.slice("x1").pods(&[(2, 1, true)])]),
    );
    let _agents = c.start_all_agents(c.manifests().dir());
    let client = c.client().with_timeout(Duration::from_secs(20));
    for node in [1, 2] {
        let line = client
            .tcp_echo(node_addr(node), ECHO_NODE_PORT, 8 << 20)
            .unwrap_or_else(|e| {
                panic!(
                    "8 MiB echoed through node{node} on {veths:?} veths: {e}\nnode{node}:\n{}",
                    stats_text(&c, node)
                )
            });
        assert!(line.starts_with(&pod_name(2, 1)), "{line}");
    }
}

#[test]
fn bulk_transfers_complete_on_default_veths() {
    bulk_transfers_complete(Veths::KernelDefaults);
}

#[test]
fn bulk_transfers_complete_with_native_xdp() {
    bulk_transfers_complete(Veths::LanGro);
}
