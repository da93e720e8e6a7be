//! Tests of the test-cluster harness itself; none needs the agent.
//!
//! Run as root: `cargo test -p nodeport-tests --test harness`.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodeport_tests::cluster::{CLIENT_ADDR, node_addr, pod_addr};
use nodeport_tests::{
    AgentOptions, Answer, Cluster, ClusterConfig, ConnectResult, Netns, ServerSpec,
};

/// A port nothing listens on anywhere in the cluster.
const CLOSED_PORT: u16 = 7999;
/// An address on the LAN that no namespace has.
const NOBODY: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 99);

fn small() -> ClusterConfig {
    ClusterConfig {
        nodes: 1,
        pods_per_node: 0,
        ..ClusterConfig::default()
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn cluster_comes_up() {
    let cluster = Cluster::new(2);
    let listed = Netns::list();
    let names = cluster.netns_names();
    assert_eq!(names.len(), 2 + 2 + 2 * 2, "{names:?}");
    for name in &names {
        assert!(
            listed.contains(name),
            "{name} missing from ip netns list: {listed:?}"
        );
        assert!(name.starts_with(cluster.id()), "{name}");
        assert!(name.len() <= 15, "{name} is longer than an interface name");
    }

    for node in cluster.nodes() {
        let ns = node.netns();
        let eth0 = ns.ip_stdout(&["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            eth0.contains(&format!("{}/24", node.addr)),
            "{}: {eth0}",
            node.name
        );
        let cni0 = ns.ip_stdout(&["-4", "-o", "addr", "show", "dev", "cni0"]);
        assert!(
            cni0.contains(&format!("{}/24", node.gateway)),
            "{}: {cni0}",
            node.name
        );
        assert_eq!(ns.sysctl("net.ipv4.ip_forward"), "1", "{}", node.name);
        // Kernel defaults on both ends: GRO off, TX checksum offload on.
        let features = ns.exec_stdout("ethtool", &["-k", "eth0"]);
        assert!(
            features.contains("generic-receive-offload: off"),
            "{features}"
        );
        assert!(features.contains("tx-checksumming: on"), "{features}");
        let lan_side = cluster
            .lan_netns()
            .exec_stdout("ethtool", &["-k", &format!("veth-n{}", node.index)]);
        assert!(
            lan_side.contains("generic-receive-offload: off"),
            "{lan_side}"
        );
        for other in cluster.nodes().iter().filter(|o| o.index != node.index) {
            let route = ns.ip_stdout(&["route", "show", &other.pod_cidr]);
            assert!(
                route.contains(&format!("via {} dev eth0", other.addr)),
                "{}: route to {}: {route}",
                node.name,
                other.pod_cidr
            );
        }
        for pod in node.pods() {
            let eth0 = pod
                .netns()
                .ip_stdout(&["-4", "-o", "addr", "show", "dev", "eth0"]);
            assert!(
                eth0.contains(&format!("{}/24", pod.addr)),
                "{}: {eth0}",
                pod.name
            );
            let server = pod.server().expect("pod servers are on by default");
            assert_eq!(server.name(), pod.name);
        }
    }
    // The sysctl above was read inside each node: the client (a fresh
    // namespace) does not forward.
    assert_eq!(cluster.client_netns().sysctl("net.ipv4.ip_forward"), "0");

    // The client reaches services only through node addresses.
    let route = cluster
        .client_netns()
        .try_exec("ip", &["route", "get", &pod_addr(1, 1).to_string()]);
    assert!(
        !route.status.success(),
        "the client has a route to pods: {}",
        String::from_utf8_lossy(&route.stdout)
    );

    assert!(cluster.bpffs_dir().is_dir());
    assert!(cluster.node_bpffs(1).starts_with(cluster.bpffs_dir()));
    assert!(cluster.manifests().dir().is_dir());
}

#[test]
fn client_reaches_every_node() {
    let cluster = Cluster::new(2);
    let client = cluster.client();
    let mut servers = Vec::new();
    for node in cluster.nodes() {
        client
            .ping(node.addr)
            .unwrap_or_else(|e| panic!("ping {}: {e}", node.name));
        let spec = ServerSpec::new(&format!("{}-host", node.name))
            .tcp(&[7000])
            .udp(&[7000]);
        servers.push(cluster.start_server(node.netns(), &spec));
    }
    for node in cluster.nodes() {
        let host = format!("{}-host", node.name);
        let tcp = Answer::expect(client.tcp_request(node.addr, 7000), "tcp to node");
        assert_eq!(tcp.server, host);
        assert_eq!(tcp.peer.ip(), IpAddr::V4(CLIENT_ADDR));
        assert_eq!(tcp.local_port, 7000);
        let udp = Answer::expect(client.udp_request(node.addr, 7000, None), "udp to node");
        assert_eq!(udp.server, host);
        assert_eq!(udp.peer.ip(), IpAddr::V4(CLIENT_ADDR));
        assert_eq!(udp.local_port, 7000);
    }
    // The servers log what they served.
    assert!(
        servers[0].log().contains("tcp 10.200.0.2:"),
        "{}",
        servers[0].log()
    );
    assert!(
        servers[0].log().contains("udp 10.200.0.2:"),
        "{}",
        servers[0].log()
    );
}

#[test]
fn pods_reach_pods_across_nodes() {
    let cluster = Cluster::new(2);
    let from = cluster.pod(1, 1);
    for to in [cluster.pod(2, 1), cluster.pod(2, 2), cluster.pod(1, 2)] {
        let tcp = Answer::expect(from.client().tcp_request(to.addr, 8080), "pod to pod tcp");
        assert_eq!(tcp.server, to.name);
        assert_eq!(tcp.peer.ip(), IpAddr::V4(from.addr));
        assert_eq!(tcp.local_port, 8080);
        let udp = Answer::expect(
            from.client().udp_request(to.addr, 8081, None),
            "pod to pod udp",
        );
        assert_eq!(udp.server, to.name);
        assert_eq!(udp.peer.ip(), IpAddr::V4(from.addr));
        assert_eq!(udp.local_port, 8081);
        let echoed = from
            .client()
            .tcp_echo(to.addr, 9000, 256 * 1024)
            .unwrap_or_else(|e| panic!("echo to {}: {e}", to.name));
        assert!(echoed.starts_with(&to.name), "{echoed}");
    }
    // The other direction, and a node reaching a remote pod (from its LAN
    // address, the source of its route to the other pod CIDR).
    let back = Answer::expect(
        cluster.pod(2, 2).client().tcp_request(pod_addr(1, 1), 8080),
        "pod to pod tcp",
    );
    assert_eq!(back.peer.ip(), IpAddr::V4(pod_addr(2, 2)));
    let from_node = Answer::expect(
        cluster.node(1).client().tcp_request(pod_addr(2, 1), 8080),
        "node to remote pod",
    );
    assert_eq!(from_node.server, "node2-pod1");
    assert_eq!(from_node.peer.ip(), IpAddr::V4(node_addr(1)));

    // The client has no route to pods.
    match cluster.client().tcp_connect_result(pod_addr(1, 1), 8080) {
        ConnectResult::Failed(e) if e.kind() == ErrorKind::NetworkUnreachable => {}
        other => panic!("client to pod: expected network unreachable, got {other:?}"),
    }
}

#[test]
fn servers_report_the_client_address() {
    let cluster = Cluster::with_config(small());
    let node = cluster.node(1);
    let _server = cluster.start_server(
        node.netns(),
        &ServerSpec::new("plain")
            .tcp(&[7000])
            .udp(&[7000])
            .tcp_echo(&[7001]),
    );
    let client = cluster.client();
    let expected_peer = |port| SocketAddr::new(IpAddr::V4(CLIENT_ADDR), port);

    let udp = Answer::expect(client.udp_request(node.addr, 7000, Some(40001)), "udp");
    assert_eq!(udp.to_string(), "plain 10.200.0.2:40001 7000");
    // The same source port again, at once.
    let udp = Answer::expect(
        client.udp_request(node.addr, 7000, Some(40001)),
        "udp again",
    );
    assert_eq!(udp.peer, expected_peer(40001));

    let local = expected_peer(40002);
    for round in 0..2 {
        let tcp = Answer::expect(client.tcp_request_from(local, node.addr, 7000), "tcp");
        assert_eq!(tcp.peer, local, "round {round}");
        assert_eq!(tcp.local_port, 7000);
    }
    let tcp = Answer::expect(client.tcp_request(node.addr, 7000), "tcp, any port");
    assert_eq!(tcp.peer.ip(), IpAddr::V4(CLIENT_ADDR));
    assert_ne!(tcp.peer.port(), 0);

    let echoed = client
        .tcp_echo(node.addr, 7001, 1 << 20)
        .unwrap_or_else(|e| panic!("echo: {e}"));
    let echoed: Answer = echoed.parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(echoed.local_port, 7001);
}

#[test]
fn closed_ports_are_refused_and_silence_times_out() {
    let cluster = Cluster::with_config(small());
    let client = cluster.client();
    let node = node_addr(1);

    let udp = client
        .udp_request(node, CLOSED_PORT, None)
        .expect_err("nothing listens");
    assert_eq!(udp.kind(), ErrorKind::ConnectionRefused, "{udp}");
    let tcp = client.tcp_connect_result(node, CLOSED_PORT);
    assert!(tcp.is_refused(), "{tcp:?}");
    let tcp = client
        .tcp_request(node, CLOSED_PORT)
        .expect_err("nothing listens");
    assert_eq!(tcp.kind(), ErrorKind::ConnectionRefused, "{tcp}");

    // Nobody answers at all: a timeout, not a refusal.
    let quick = client.with_timeout(Duration::from_millis(500));
    let tcp = quick.tcp_connect_result(NOBODY, 80);
    assert!(tcp.is_timed_out(), "{tcp:?}");
    let udp = quick
        .udp_request(NOBODY, 53, None)
        .expect_err("nobody is there");
    assert_eq!(udp.kind(), ErrorKind::TimedOut, "{udp}");
    let ping = quick.ping(NOBODY).expect_err("nobody is there");
    assert_eq!(ping.kind(), ErrorKind::TimedOut, "{ping}");
}

#[test]
fn netns_run_isolates_sockets() {
    let cluster = Cluster::with_config(small());
    let node = node_addr(1);
    let bind = || TcpListener::bind((node, 0)).map(|l| l.local_addr().map(|a| a.ip()));
    let inside = cluster
        .node(1)
        .netns()
        .run(bind)
        .unwrap_or_else(|e| panic!("bind in the node: {e}"));
    assert_eq!(inside.ok(), Some(IpAddr::V4(node)));
    let in_client = cluster
        .client_netns()
        .run(bind)
        .expect_err("not the client's address");
    assert_eq!(in_client.kind(), ErrorKind::AddrNotAvailable);
    // The calling thread never left its namespace.
    let here = bind().expect_err("not the host's address");
    assert_eq!(here.kind(), ErrorKind::AddrNotAvailable);

    let caught = catch_unwind(AssertUnwindSafe(|| {
        cluster.client_netns().run(|| panic!("boom inside"));
    }))
    .expect_err("the panic propagates");
    assert_eq!(panic_message(&*caught), "boom inside");
}

#[test]
fn two_clusters_coexist_and_drop_cleans_up() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Cluster::new(2));
        let b = s.spawn(|| {
            Cluster::with_config(ClusterConfig {
                nodes: 1,
                pods_per_node: 1,
                ..ClusterConfig::default()
            })
        });
        (
            a.join().expect("cluster a builds"),
            b.join().expect("cluster b builds"),
        )
    });
    assert_ne!(a.id(), b.id());

    // Same addresses, separate worlds.
    let server_a = a.start_server(a.node(1).netns(), &ServerSpec::new("in-a").tcp(&[7000]));
    let server_b = b.start_server(b.node(1).netns(), &ServerSpec::new("in-b").tcp(&[7000]));
    assert_eq!(
        Answer::expect(a.client().tcp_request(node_addr(1), 7000), "a").server,
        "in-a"
    );
    assert_eq!(
        Answer::expect(b.client().tcp_request(node_addr(1), 7000), "b").server,
        "in-b"
    );
    assert_eq!(
        Answer::expect(
            b.pod(1, 1).client().tcp_request(pod_addr(1, 1), 8080),
            "b pod"
        )
        .server,
        "node1-pod1"
    );

    let mut names = a.netns_names();
    names.extend(b.netns_names());
    let dirs: Vec<PathBuf> = [&a, &b]
        .iter()
        .flat_map(|c| [c.temp_dir().to_owned(), c.bpffs_dir().to_owned()])
        .collect();
    let pids: Vec<u32> = a
        .pods()
        .chain(b.pods())
        .filter_map(|p| p.server().map(nodeport_tests::PodServer::pid))
        .collect();
    assert_eq!(pids.len(), 5);
    drop(server_a);
    drop(server_b);
    drop(a);
    drop(b);

    let listed = Netns::list();
    for name in &names {
        assert!(
            !listed.contains(name),
            "{name} survived the drop: {listed:?}"
        );
        assert!(!Netns::exists(name), "/run/netns/{name} survived the drop");
    }
    for dir in &dirs {
        assert!(!dir.exists(), "{} survived the drop", dir.display());
    }
    for pid in pids {
        let pid = libc::pid_t::try_from(pid).expect("pid fits");
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "server pid {pid} survived the drop");
    }
}

#[test]
fn manifests_are_replaced_atomically() {
    let cluster = Cluster::with_config(small());
    let m = cluster.manifests();
    m.write("svc.yaml", "first");
    assert_eq!(m.read("svc.yaml").as_deref(), Some("first"));
    m.write("svc.yaml", "second");
    assert_eq!(m.read("svc.yaml").as_deref(), Some("second"));
    m.write("eps.yaml", "endpoints");
    // No temporary files ever show up in the directory.
    assert_eq!(m.list(), ["eps.yaml", "svc.yaml"]);
    m.remove("svc.yaml");
    assert_eq!(m.list(), ["eps.yaml"]);
    let other = cluster.new_manifests("node2");
    assert_ne!(other.dir(), m.dir());
    assert!(other.list().is_empty());
}

/// Writes an executable shell script standing in for the agent.
fn fake_agent(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn agents_get_the_contract_command_line() {
    let cluster = Cluster::with_config(small());
    let script = fake_agent(
        cluster.temp_dir(),
        "fake-agent",
        r#"echo "argv: $*"
echo "addr: $(ip -4 -o addr show dev eth0)"
echo "bpffs: $(stat -f -c %T /sys/fs/bpf)"
echo "to stderr" >&2
echo "datapath ready"
exec sleep 600"#,
    );
    let manifests = cluster.manifests().dir();
    let agent = cluster.start_agent_with(
        1,
        &AgentOptions::new(manifests)
            .binary(&script)
            .arg("--xdp-mode")
            .arg("native"),
    );
    // The fake agent serves no /livez: wait for its last line instead.
    agent.wait_for_log("datapath ready", Duration::from_secs(10));
    assert!(agent.is_running());
    assert_eq!(agent.node_name(), "node1");
    assert_eq!(agent.bpffs(), cluster.node_bpffs(1));
    assert_eq!(agent.healthz_addr().ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(agent.healthz_addr(), agent.metrics_addr());
    let log = agent.log();
    let expected = format!(
        "argv: run --node-name node1 --manifests {} --interfaces eth0 --bpffs {}/node1 \
         --cgroup-root {} --healthz-bind-address {} --metrics-bind-address {} --xdp-mode native",
        manifests.display(),
        cluster.bpffs_dir().display(),
        cluster.node_cgroup(1).display(),
        agent.healthz_addr(),
        agent.metrics_addr()
    );
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
    // It runs in the node's network namespace, and sees the host's bpffs
    // (which `ip netns exec` would hide).
    assert!(log.contains("inet 10.200.0.11/24"), "{log}");
    assert!(log.contains("bpffs: bpf_fs"), "{log}");
    assert!(log.contains("to stderr"), "{log}");

    let mark = agent.log_mark();
    assert!(
        agent
            .try_wait_for_log_since(mark, "datapath ready", Duration::from_millis(200))
            .is_err(),
        "nothing new was logged after the mark"
    );
    let status = agent.stop();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
}

#[test]
fn an_agent_that_dies_fails_wait_ready_with_its_log() {
    let cluster = Cluster::with_config(small());
    let script = fake_agent(
        cluster.temp_dir(),
        "dying-agent",
        "echo 'error: cannot attach XDP'; exit 3",
    );
    let agent = cluster.start_agent_with(
        1,
        &AgentOptions::new(cluster.manifests().dir()).binary(&script),
    );
    let caught = catch_unwind(AssertUnwindSafe(|| agent.wait_ready())).expect_err("it died");
    let message = panic_message(&*caught);
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("cannot attach XDP"), "{message}");
    assert!(!agent.is_running());
}

#[test]
#[should_panic(expected = "cargo build -p nodeport-agent")]
fn a_missing_agent_binary_says_how_to_build_it() {
    let cluster = Cluster::with_config(small());
    let missing = cluster.temp_dir().join("no-such-agent");
    let _agent = cluster.start_agent_with(
        1,
        &AgentOptions::new(cluster.manifests().dir()).binary(missing),
    );
}
