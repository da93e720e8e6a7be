//! End-to-end tests of what arrives in pieces: UDP datagrams larger than
//! the path's MTU (fragmented by the client's stack, and the pod's answer
//! fragmented by the pod's) through a NodePort to a local and to a remote
//! backend; and path-MTU discovery through a NodePort to a remote backend
//! behind a smaller MTU (the router's "fragmentation needed" relayed to the
//! client), a local and a remote pod's own ICMP errors, and errors from
//! the client's side reaching the backend. Real traffic on the namespace test cluster, kernel defaults on
//! every veth.
//!
//! Needs root. Run with `cargo xtask test`.

use std::time::Duration;

use nodeport_tests::cluster::{CLIENT_ADDR, node_addr, pod_addr, pod_name};
use nodeport_tests::objects::{ServiceBuilder, to_yaml};
use nodeport_tests::{Answer, Cluster, ClusterConfig, Veths, eventually};

const POD_PORT: u16 = 8080;
const LOCAL_NODE_PORT: u16 = 31_700;
const REMOTE_NODE_PORT: u16 = 31_701;
const ECHO_NODE_PORT: u16 = 31_702;
const CLOSED_LOCAL_NODE_PORT: u16 = 31_703;
const CLOSED_REMOTE_NODE_PORT: u16 = 31_704;
const UDP_LOCAL_NODE_PORT: u16 = 31_705;
const UDP_REMOTE_NODE_PORT: u16 = 31_706;
/// A port the test cluster's pods do not listen on.
const CLOSED_POD_PORT: u16 = 8999;
/// The TCP echo port of the test cluster's pods.
const ECHO_PORT: u16 = 9000;
/// The MTU node 2 forwards to its pod with: less than the LAN's 1,500.
const SMALL_MTU: u16 = 1300;
/// Larger than two 1,500-byte frames: three fragments each way.
const DATAGRAM: usize = 3_000;

fn cluster() -> Cluster {
    cluster_on(Veths::KernelDefaults)
}

fn cluster_on(veths: Veths) -> Cluster {
    Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 1,
        pod_tcp_ports: vec![POD_PORT],
        pod_udp_ports: vec![POD_PORT],
        veths,
        ..ClusterConfig::default()
    })
}

/// Through node 1: a Service whose one endpoint is on node 1 (local) and
/// one whose endpoint is on node 2 (remote, SNAT). Each answers fragmented
/// datagrams both ways; the datapath's fragment counters show the
/// fragments were translated by it, not left to the stack.
#[test]
fn fragmented_datagrams_are_served_by_local_and_remote_backends() {
    let c = cluster();
    local_and_remote_udp(&c, "frag", POD_PORT, (LOCAL_NODE_PORT, REMOTE_NODE_PORT));
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    let node = node_addr(1);
    let cases = [
        (
            LOCAL_NODE_PORT,
            pod_name(1, 1),
            CLIENT_ADDR,
            "local backend",
        ),
        (REMOTE_NODE_PORT, pod_name(2, 1), node, "remote backend"),
    ];
    for (port, pod, peer, what) in &cases {
        eventually(Duration::from_secs(5), || {
            c.client().udp_request(node, *port, None).ok()
        })
        .unwrap_or_else(|| panic!("the NodePort of the {what} answers a small datagram"));
        let before = agent1.metric("nodeport_datapath_packets_total{reason=\"fragment_followed\"}");
        for round in 0..5 {
            let a = Answer::expect(
                c.client().udp_echo(node, *port, DATAGRAM),
                &format!("{DATAGRAM}-byte datagram {round} to the {what}"),
            );
            assert_eq!(&a.server, pod, "the {what} answers: {a:?}");
            assert_eq!(
                a.peer.ip(),
                *peer,
                "the {what} sees the expected source: {a:?}"
            );
        }
        let after = agent1.metric("nodeport_datapath_packets_total{reason=\"fragment_followed\"}");
        assert!(
            after.unwrap_or(0.0) >= before.unwrap_or(0.0) + 10.0,
            "the {what}: the later fragments (two per datagram each way) followed their first \
             through the datapath: {before:?} → {after:?}"
        );
    }
}

/// Path-MTU discovery through a NodePort to a remote backend: node 2
/// forwards to its pod with an MTU of 1,300 (a locked route MTU, so the
/// pod itself still advertises an MSS for 1,500), so the client's full
/// segments, SNATed by node 1, meet "fragmentation needed" at node 2.
/// Node 2 sends that error to node 1's address; node 1's datapath must
/// relay it to the client as about the client's own packet to the
/// NodePort, or the transfer black-holes. A 1 MiB TCP echo completes and
/// the relay counter moved. On kernel-default veths (generic XDP).
#[test]
fn path_mtu_discovery_works_through_a_node_port_to_a_remote_backend() {
    path_mtu_discovery_on(&cluster(), "generic");
}

/// The same on veths with LAN-side GRO, where node 1's XDP runs natively
/// and relays the error with `XDP_TX`.
#[test]
fn path_mtu_discovery_works_through_a_node_port_to_a_remote_backend_native() {
    path_mtu_discovery_on(&cluster_on(Veths::LanGro), "native");
}

/// `mode`: the XDP mode node 1's agent must have chosen for its device.
fn path_mtu_discovery_on(c: &Cluster, mode: &str) {
    let svc = ServiceBuilder::new("default", "pmtu", "NodePort").tcp(
        "echo",
        80,
        ECHO_PORT,
        ECHO_NODE_PORT,
    );
    c.manifests().write(
        "pmtu.yaml",
        &to_yaml(&[&svc, &svc.slice("x1").pods(&[(2, 1, true)])]),
    );
    let pod = pod_addr(2, 1).to_string();
    c.node(2).netns().ip(&[
        "route",
        "add",
        &format!("{pod}/32"),
        "dev",
        "cni0",
        "mtu",
        "lock",
        &SMALL_MTU.to_string(),
    ]);
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    let node = node_addr(1);
    eventually(Duration::from_secs(5), || {
        c.client().tcp_request(node, ECHO_NODE_PORT).ok()
    })
    .expect("the NodePort answers a small request");
    assert_eq!(
        agent1.metric(&format!(
            "nodeport_xdp_mode{{device=\"eth0\",mode=\"{mode}\"}}"
        )),
        Some(1.0),
        "node 1 serves in {mode} XDP"
    );
    let relayed = || agent1.datapath_count("icmp_error_to_client");
    let before = relayed();
    let answer = c
        .client()
        .with_timeout(Duration::from_secs(20))
        .tcp_echo(node, ECHO_NODE_PORT, 1 << 20)
        .unwrap_or_else(|e| {
            panic!(
                "a 1 MiB echo through node 1 to the pod behind MTU {SMALL_MTU}: {e} \
                 (ICMP errors relayed: {})",
                relayed() - before
            )
        });
    let a = Answer::expect(Ok(answer), "the echo's greeting");
    assert_eq!(a.server, pod_name(2, 1), "the remote pod echoed");
    assert!(
        relayed() > before,
        "node 2's fragmentation-needed errors were relayed by node 1's datapath"
    );
}

/// Writes two UDP NodePort Services with target port `target`:
/// `NAME-local` on `ports.0` (its endpoint the pod on node 1) and
/// `NAME-remote` on `ports.1` (the pod on node 2).
fn local_and_remote_udp(c: &Cluster, name: &str, target: u16, ports: (u16, u16)) {
    let svc = |side: &str, port: u16| {
        ServiceBuilder::new("default", &format!("{name}-{side}"), "NodePort")
            .udp("udp", 80, target, port)
    };
    let (local, remote) = (svc("local", ports.0), svc("remote", ports.1));
    c.manifests().write(
        &format!("{name}.yaml"),
        &to_yaml(&[
            &local,
            &local.slice("x1").pods(&[(1, 1, true)]),
            &remote,
            &remote.slice("x1").pods(&[(2, 1, true)]),
        ]),
    );
}

/// A pod's own ICMP error reaches the client translated, from a local and
/// from a remote backend: a UDP NodePort whose target port the pod does
/// not listen on gets the pod's port unreachable. The remote pod's goes to
/// node 1's SNAT address and node 1's XDP relays it; the local pod's
/// leaves node 1 through TC egress, rewritten. The client's socket sees
/// the refusal at once (untranslated, it would only time out).
#[test]
fn a_pods_port_unreachable_reaches_the_client() {
    let c = cluster();
    local_and_remote_udp(
        &c,
        "closed",
        CLOSED_POD_PORT,
        (CLOSED_LOCAL_NODE_PORT, CLOSED_REMOTE_NODE_PORT),
    );
    let agent1 = c.start_agent(1, c.manifests().dir());
    agent1.wait_ready();
    let relayed = || agent1.datapath_count("icmp_error_to_client");
    for (port, what) in [
        (CLOSED_LOCAL_NODE_PORT, "local"),
        (CLOSED_REMOTE_NODE_PORT, "remote"),
    ] {
        let before = relayed();
        let e = c
            .client()
            .with_timeout(Duration::from_secs(3))
            .udp_request(node_addr(1), port, None)
            .expect_err("nothing listens on the target port");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "the {what} pod's port unreachable, translated by node 1: {e}"
        );
        assert!(
            relayed() > before,
            "the {what} pod's error was translated by the datapath"
        );
    }
}

/// The route MTU that `ip route get DST` in `ns` shows (a path-MTU
/// exception the kernel learnt), if any.
fn learnt_mtu(ns: &nodeport_tests::Netns, dst: std::net::Ipv4Addr) -> Option<u16> {
    let out = ns.ip_stdout(&["route", "get", &dst.to_string()]);
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mtu" {
            return words.next().and_then(|m| m.parse().ok());
        }
    }
    None
}

/// "Fragmentation needed" from the client's side about the reply it got
/// from a NodePort reaches the flow's backend as about the backend's own
/// reply, and the backend's kernel learns the path MTU: towards node 1's
/// SNAT address for a remote pod, towards the client for a local one.
#[test]
fn an_error_from_the_clients_side_reaches_the_backend() {
    let c = cluster();
    local_and_remote_udp(
        &c,
        "udp",
        POD_PORT,
        (UDP_LOCAL_NODE_PORT, UDP_REMOTE_NODE_PORT),
    );
    let agent1 = c.start_agent(1, c.manifests().dir());
    agent1.wait_ready();
    let node = node_addr(1);
    let translated = || agent1.datapath_count("icmp_error_to_backend");
    for (port, (pod_node, pod), peer, from_port) in [
        (UDP_LOCAL_NODE_PORT, (1, 1), CLIENT_ADDR, 42_500u16),
        (UDP_REMOTE_NODE_PORT, (2, 1), node, 42_501),
    ] {
        let what = format!("pod {}", pod_name(pod_node, pod));
        let from = std::net::SocketAddr::new(CLIENT_ADDR.into(), from_port);
        let answer = c.client().udp_request_from(from, node, port);
        let a = Answer::expect(answer, &format!("UDP to the NodePort of {what}"));
        assert_eq!(a.server, pod_name(pod_node, pod));
        let pod_ns = c.pod(pod_node, pod).netns();
        assert_eq!(
            learnt_mtu(pod_ns, peer),
            None,
            "{what}: no path MTU learnt yet"
        );
        let before = translated();
        c.client()
            .send_frag_needed(
                node,
                1_280,
                std::net::SocketAddr::new(node.into(), port),
                from,
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mtu = eventually(Duration::from_secs(5), || learnt_mtu(pod_ns, peer));
        assert_eq!(
            mtu,
            Some(1_280),
            "{what} learnt the path MTU towards {peer}"
        );
        assert!(
            translated() > before,
            "{what}: the datapath translated the error"
        );
    }
}
