//! The real XDP and TC programs run through `BPF_PROG_TEST_RUN`: table-driven
//! input frames with their exact expected output and verdict. Every
//! rewritten frame's checksums are also verified by an independent parser.
//!
//! Needs root (loading BPF programs). Each test runs in its own network
//! namespace (entered by a thread of the test's own) so that FIB lookups see
//! a small topology (`nodeport_tests::datapath::PrivateNetns`): node address
//! 10.200.0.11 on device `np0`, a neighbouring node 10.200.0.12 routing pod
//! CIDR 10.244.2.0/24, and the client 10.200.0.2; here 10.200.0.13 routes
//! pod CIDR 10.244.3.0/24 too and, like the client 10.200.0.3, has no
//! neighbour entry.

use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};

use nodeport_agent::loader;
use nodeport_common::{
    BACKEND_F_LOCAL, BackendKey, CT_F_CLOSING, CT_F_SNAT, Config, CtEntry, DEVICE_F_REDIRECT_TX,
    DEVICE_F_SKB_MODE, FRONTEND_F_AFFINITY, FRONTEND_F_DROP_EMPTY, FlowKey, PROTO_TCP, PROTO_UDP,
    PortRange, RevNat, ServiceStatsKey, ServiceStatsSlot, SnatPool, programs,
};
use nodeport_tests::datapath::{
    CLIENT, CLIENT_MAC, Datapath, Frame, NODE, NODE_MAC, OTHER_NODE, OTHER_NODE_MAC, PrivateNetns,
    TC_ACT_OK, TC_ACT_UNSPEC, TCP_ACK, TCP_PSH, TCP_SYN, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
    assert_checksums, assert_partial_seed, backend, be, flow, icmp_error, node_port, on_own_thread,
    reassemble,
};

const LOCAL_POD: [u8; 4] = [10, 244, 1, 10];
const REMOTE_POD: [u8; 4] = [10, 244, 2, 10];
const NODE_PORT: u16 = 31000;
const EMPTY_PORT: u16 = 31002;
const DROP_PORT: u16 = 31003;

/// The programs loaded (maps unpinned, private to the test) in a fresh
/// network namespace of the calling thread.
struct Fixture {
    dp: Datapath,
    _netns: PrivateNetns,
}

impl Deref for Fixture {
    type Target = Datapath;

    fn deref(&self) -> &Datapath {
        &self.dp
    }
}

impl DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }
}

impl Fixture {
    fn new() -> Self {
        let netns = PrivateNetns::enter().expect("a private network namespace");
        netns
            .sh("ip route add 10.244.3.0/24 via 10.200.0.13")
            .expect("a route via a next hop without a neighbour entry");
        let mut progs = vec![
            programs::XDP_INGRESS,
            programs::TC_EGRESS,
            programs::TC_INGRESS,
        ];
        progs.extend(programs::TX_TRACEPOINTS.iter().map(|(name, _)| *name));
        let dp = Datapath::load(loader::object(), netns.ifindex(), &progs, &[])
            .expect("the datapath object loads and the verifier accepts its programs");
        let mut f = Self { dp, _netns: netns };
        f.dp.node_addr(NODE).expect("node address");
        f.device(0);
        f
    }

    /// The NodePort's TCP service (id 1) with one local backend (id 7,
    /// port 8080) and its UDP service (id 2) with one (id 8, port 5353).
    fn local_tcp_and_udp(&mut self) {
        self.service(
            1,
            NODE_PORT,
            PROTO_TCP,
            0,
            &[(7, LOCAL_POD, 8080, BACKEND_F_LOCAL)],
        );
        self.service(
            2,
            NODE_PORT,
            PROTO_UDP,
            0,
            &[(8, LOCAL_POD, 5353, BACKEND_F_LOCAL)],
        );
    }

    /// Describes np0 to the datapath: its MAC and `flags`.
    fn device(&mut self, flags: u32) {
        self.dp.device(NODE_MAC, flags).expect("device");
    }

    /// Sets the SNAT pool (and the rest of closed flows' ports).
    fn snat_pool(&mut self, ranges: [PortRange; 2], rest_s: u32) {
        self.dp.snat_pool(ranges, rest_s).expect("config");
    }

    /// A NodePort frontend with the given backends (id, addr, port, flags).
    fn service(
        &mut self,
        service_id: u32,
        node_port: u16,
        proto: u8,
        flags: u32,
        backends: &[(u32, [u8; 4], u16, u8)],
    ) {
        self.service_with_affinity(service_id, node_port, proto, flags, 0, backends);
    }

    /// As [`Self::service`], with a ClientIP affinity timeout.
    fn service_with_affinity(
        &mut self,
        service_id: u32,
        port: u16,
        proto: u8,
        flags: u32,
        affinity_timeout_s: u32,
        backends: &[(u32, [u8; 4], u16, u8)],
    ) {
        let backends: Vec<_> = backends
            .iter()
            .map(|(id, addr, port, bflags)| (*id, backend(*addr, *port, *bflags)))
            .collect();
        self.dp
            .service(
                service_id,
                node_port(port, proto),
                flags,
                affinity_timeout_s,
                &backends,
            )
            .expect("service");
    }
}

fn in_fixture(test: impl FnOnce(&mut Fixture) + Send) {
    // A thread of its own, so the namespace never touches the harness's thread.
    on_own_thread(|| test(&mut Fixture::new())).unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// The SNAT port the default pool offers a client first.
fn preferred_port(f: &Frame) -> u16 {
    SnatPool::of(&Config::default()).preferred(be(f.saddr.octets()), f.sport)
}

/// Frames the program must pass untouched.
#[test]
#[allow(clippy::too_many_lines, reason = "one table of cases")]
fn packets_that_are_not_ours_pass_untouched() {
    in_fixture(|f| {
        f.service(
            1,
            NODE_PORT,
            PROTO_TCP,
            0,
            &[(1, LOCAL_POD, 80, BACKEND_F_LOCAL)],
        );
        let mut arp = Vec::new();
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&0x0806u16.to_be_bytes());
        arp.extend_from_slice(&[0u8; 28]);
        let mut ipv6 = Frame::tcp(CLIENT, 40000, NODE, NODE_PORT).bytes();
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let later_fragment = Frame {
            frag: 0x0010,
            ..Frame::tcp(CLIENT, 40000, NODE, NODE_PORT)
        };
        let full = Frame::tcp(CLIENT, 40000, NODE, NODE_PORT).bytes();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("ARP", arp),
            ("IPv6 ethertype", ipv6),
            (
                "not a NodePort",
                Frame::tcp(CLIENT, 40000, NODE, 22).bytes(),
            ),
            (
                "NodePort on another protocol",
                Frame::udp(CLIENT, 40000, NODE, NODE_PORT).bytes(),
            ),
            (
                "not a node address",
                Frame::tcp(CLIENT, 40000, [10, 200, 0, 99], NODE_PORT).bytes(),
            ),
            ("ICMP", {
                let mut b = Frame::tcp(CLIENT, 40000, NODE, NODE_PORT).bytes();
                b[23] = 1;
                b
            }),
            ("later fragment without its first", later_fragment.bytes()),
            // (BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header.)
            ("Ethernet header only", full[..14].to_vec()),
            ("truncated IPv4", full[..14 + 12].to_vec()),
            ("truncated TCP", full[..14 + 20 + 10].to_vec()),
            (
                "IP options with a loose source route",
                Frame {
                    ip_options: vec![1, 131, 7, 4, 10, 0, 0, 1],
                    ..Frame::tcp(CLIENT, 40000, NODE, NODE_PORT)
                }
                .bytes(),
            ),
            (
                "IP options with a strict source route",
                Frame {
                    ip_options: vec![137, 7, 4, 10, 0, 0, 1, 0],
                    ..Frame::tcp(CLIENT, 40000, NODE, NODE_PORT)
                }
                .bytes(),
            ),
            (
                "IP option longer than the header",
                Frame {
                    ip_options: vec![1, 68, 12, 5],
                    ..Frame::tcp(CLIENT, 40000, NODE, NODE_PORT)
                }
                .bytes(),
            ),
            (
                "IP option of length 1",
                Frame {
                    ip_options: vec![7, 1, 0, 0],
                    ..Frame::tcp(CLIENT, 40000, NODE, NODE_PORT)
                }
                .bytes(),
            ),
            ("IHL below 5", {
                let mut b = full.clone();
                b[14] = 0x44;
                b
            }),
            ("IHL beyond the frame", {
                let mut b = full[..14 + 24].to_vec();
                b[14] = 0x4f;
                b
            }),
            ("IP total length beyond the frame", {
                let mut b = full.clone();
                b[16..18].copy_from_slice(&60u16.to_be_bytes());
                b
            }),
            ("TCP data offset below 5", {
                let mut b = full.clone();
                b[14 + 20 + 12] = 4 << 4;
                b
            }),
            ("TCP data offset beyond the segment", {
                let mut b = full.clone();
                b[14 + 20 + 12] = 15 << 4;
                b
            }),
            ("addressed to another host's MAC", {
                let mut b = full.clone();
                b[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
                b
            }),
            ("L2 broadcast", {
                let mut b = full.clone();
                b[0..6].copy_from_slice(&[0xff; 6]);
                b
            }),
        ];
        for (name, input) in cases {
            let (rc, out) = f.xdp(&input);
            assert_eq!(rc, XDP_PASS, "{name}: verdict");
            assert_eq!(out, input, "{name}: frame must be untouched");
        }
        assert!(
            f.conntrack_entries().is_empty(),
            "no flow state for foreign packets"
        );
    });
}

/// NodePort → local backend: DNAT, client address kept, XDP_PASS; the
/// reply is translated back at TC egress.
#[test]
fn local_backend_dnat_and_reply() {
    in_fixture(|f| {
        f.local_tcp_and_udp();
        let cases = vec![
            (
                "TCP SYN",
                Frame::tcp(CLIENT, 40000, NODE, NODE_PORT),
                8080u16,
            ),
            (
                "TCP with payload",
                Frame {
                    tcp_flags: TCP_ACK | TCP_PSH,
                    seq: 7,
                    ack: 99,
                    payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                    ..Frame::tcp(CLIENT, 40001, NODE, NODE_PORT)
                },
                8080,
            ),
            ("UDP", Frame::udp(CLIENT, 40002, NODE, NODE_PORT), 5353),
            (
                "UDP without checksum",
                Frame {
                    udp_no_checksum: true,
                    ..Frame::udp(CLIENT, 40003, NODE, NODE_PORT)
                },
                5353,
            ),
            (
                "TTL 1 (the stack forwards it)",
                Frame {
                    ttl: 1,
                    ..Frame::tcp(CLIENT, 40005, NODE, NODE_PORT)
                },
                8080,
            ),
        ];
        for (name, input, target) in cases {
            let (rc, out) = f.xdp(&input.bytes());
            assert_eq!(rc, XDP_PASS, "{name}: verdict");
            let want = Frame {
                daddr: LOCAL_POD.into(),
                dport: target,
                ..input.clone()
            };
            assert_eq!(out, want.bytes(), "{name}: DNAT output");
            assert_checksums(&out);

            // The pod's reply leaves through the device: source back to the NodePort.
            let reply = Frame {
                saddr: LOCAL_POD.into(),
                sport: target,
                daddr: input.saddr,
                dport: input.sport,
                src_mac: NODE_MAC,
                dst_mac: CLIENT_MAC,
                tcp_flags: TCP_SYN | TCP_ACK,
                ip_options: Vec::new(),
                ..input.clone()
            };
            let (rc, out) = f.tc(&reply.bytes());
            assert_eq!(rc, TC_ACT_OK, "{name}: TC verdict");
            let want = Frame {
                saddr: NODE.into(),
                sport: NODE_PORT,
                ..reply
            };
            assert_eq!(out, want.bytes(), "{name}: reverse NAT output");
            assert_checksums(&out);
        }
        let ct = f.conntrack_entries();
        assert_eq!(ct.len(), 5, "one flow per case");
        assert!(
            ct.iter().all(|(_, e)| e.snat_addr_be == 0),
            "local flows are not SNATed"
        );
    });
}

/// A TC packet that is no reply of ours continues untouched.
#[test]
fn tc_passes_unrelated_packets() {
    in_fixture(|f| {
        let input = Frame::tcp(LOCAL_POD, 8080, CLIENT, 40000).bytes();
        let (rc, out) = f.tc(&input);
        assert_eq!(rc, TC_ACT_UNSPEC);
        assert_eq!(out, input);

        // A reverse entry left behind by an ended flow (no conntrack entry)
        // must not rewrite a connection that reuses the tuple; it goes.
        f.rev_nat
            .insert(
                flow(LOCAL_POD, 8080, CLIENT, 40000, PROTO_TCP),
                RevNat {
                    saddr_be: be(NODE),
                    daddr_be: be(CLIENT),
                    sport_be: NODE_PORT.to_be(),
                    dport_be: 40000u16.to_be(),
                },
                0,
            )
            .expect("stale reverse entry");
        let (rc, out) = f.tc(&input);
        assert_eq!(
            rc, TC_ACT_UNSPEC,
            "a stale reverse entry translates nothing"
        );
        assert_eq!(out, input);
        assert!(
            f.rev_nat_entries().is_empty(),
            "the stale reverse entry is removed"
        );
    });
}

/// NodePort → backend on another node: DNAT + SNAT to an allocated port,
/// next-hop MACs from the FIB, TTL decremented, XDP_TX; the backend's reply
/// is translated back to NodePort → client and sent out again.
#[test]
fn remote_backend_snat_forward_and_reply() {
    in_fixture(|f| {
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[(9, REMOTE_POD, 80, 0)]);
        f.service(2, NODE_PORT, PROTO_UDP, 0, &[(10, REMOTE_POD, 53, 0)]);
        for input in [
            Frame::tcp(CLIENT, 40000, NODE, NODE_PORT),
            Frame::udp(CLIENT, 40001, NODE, NODE_PORT),
        ] {
            let name = if input.proto == PROTO_TCP {
                "TCP"
            } else {
                "UDP"
            };
            let snat_port = preferred_port(&input);
            let (rc, out) = f.xdp(&input.bytes());
            assert_eq!(rc, XDP_TX, "{name}: verdict (counters: {:?})", f.stats());
            let target = if input.proto == PROTO_TCP { 80 } else { 53 };
            let want = Frame {
                src_mac: NODE_MAC,
                dst_mac: OTHER_NODE_MAC,
                saddr: NODE.into(),
                sport: snat_port,
                daddr: REMOTE_POD.into(),
                dport: target,
                ttl: input.ttl - 1,
                ..input.clone()
            };
            assert_eq!(out, want.bytes(), "{name}: forwarded frame");
            assert_checksums(&out);

            let reply = Frame {
                src_mac: OTHER_NODE_MAC,
                dst_mac: NODE_MAC,
                saddr: REMOTE_POD.into(),
                sport: target,
                daddr: NODE.into(),
                dport: snat_port,
                ttl: 63,
                tcp_flags: TCP_SYN | TCP_ACK,
                ..input.clone()
            };
            let (rc, out) = f.xdp(&reply.bytes());
            assert_eq!(rc, XDP_TX, "{name}: reply verdict");
            let want = Frame {
                src_mac: NODE_MAC,
                dst_mac: CLIENT_MAC,
                saddr: NODE.into(),
                sport: NODE_PORT,
                daddr: CLIENT.into(),
                dport: input.sport,
                ttl: 62,
                ..reply
            };
            assert_eq!(out, want.bytes(), "{name}: reply to the client");
            assert_checksums(&out);

            // The flow keeps its backend and SNAT port.
            let again = Frame {
                tcp_flags: TCP_ACK,
                seq: 1001,
                ack: 5,
                ..input.clone()
            };
            let (rc, out) = f.xdp(&again.bytes());
            assert_eq!(rc, XDP_TX, "{name}: established verdict");
            assert_eq!(
                &out[34..36],
                &snat_port.to_be_bytes(),
                "{name}: same SNAT port"
            );
        }
        assert_eq!(
            f.rev_nat_entries().len(),
            2,
            "one reverse entry per SNATed flow"
        );
    });
}

/// IPv4 headers with options (record route, timestamps, router alert; IHL
/// 6 to 15) are served on every path, their options kept: DNAT to a local
/// backend and its reply at TC egress, SNAT to a remote backend and its
/// reply; every checksum equals a from-scratch computation.
#[test]
#[allow(clippy::too_many_lines, reason = "one walk through every path")]
fn ip_options_are_served_and_kept_on_every_path() {
    in_fixture(|f| {
        f.local_tcp_and_udp();
        let remote_port = 31004;
        f.service(3, remote_port, PROTO_TCP, 0, &[(9, REMOTE_POD, 80, 0)]);
        let record_route = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut timestamps = vec![68, 40, 5, 0];
        timestamps.resize(40, 0);
        let router_alert = vec![148, 4, 0, 0];
        let cases = vec![
            (
                "TCP, record route",
                Frame {
                    ip_options: record_route.clone(),
                    ..Frame::tcp(CLIENT, 41000, NODE, NODE_PORT)
                },
                8080u16,
            ),
            (
                "UDP, 40 bytes of timestamps",
                Frame {
                    ip_options: timestamps.clone(),
                    ..Frame::udp(CLIENT, 41001, NODE, NODE_PORT)
                },
                5353,
            ),
            (
                "TCP with payload, router alert",
                Frame {
                    ip_options: router_alert.clone(),
                    tcp_flags: TCP_ACK | TCP_PSH,
                    payload: b"hello".to_vec(),
                    ..Frame::tcp(CLIENT, 41002, NODE, NODE_PORT)
                },
                8080,
            ),
        ];
        for (name, input, target) in cases {
            let (rc, out) = f.xdp(&input.bytes());
            assert_eq!(rc, XDP_PASS, "{name}: verdict (counters: {:?})", f.stats());
            let want = Frame {
                daddr: LOCAL_POD.into(),
                dport: target,
                ..input.clone()
            };
            assert_eq!(out, want.bytes(), "{name}: DNAT output, options kept");
            assert_checksums(&out);

            // The pod's reply echoes the options (as Linux does).
            let reply = Frame {
                saddr: LOCAL_POD.into(),
                sport: target,
                daddr: input.saddr,
                dport: input.sport,
                src_mac: NODE_MAC,
                dst_mac: CLIENT_MAC,
                tcp_flags: TCP_SYN | TCP_ACK,
                ..input.clone()
            };
            let (rc, out) = f.tc(&reply.bytes());
            assert_eq!(rc, TC_ACT_OK, "{name}: TC verdict");
            let want = Frame {
                saddr: NODE.into(),
                sport: NODE_PORT,
                ..reply
            };
            assert_eq!(out, want.bytes(), "{name}: reverse NAT output");
            assert_checksums(&out);
        }

        let input = Frame {
            ip_options: record_route,
            ..Frame::tcp(CLIENT, 41003, NODE, remote_port)
        };
        let snat_port = preferred_port(&input);
        let (rc, out) = f.xdp(&input.bytes());
        assert_eq!(rc, XDP_TX, "remote: verdict (counters: {:?})", f.stats());
        let want = Frame {
            src_mac: NODE_MAC,
            dst_mac: OTHER_NODE_MAC,
            saddr: NODE.into(),
            sport: snat_port,
            daddr: REMOTE_POD.into(),
            dport: 80,
            ttl: input.ttl - 1,
            ..input.clone()
        };
        assert_eq!(out, want.bytes(), "remote: forwarded frame, options kept");
        assert_checksums(&out);
        let reply = Frame {
            src_mac: OTHER_NODE_MAC,
            dst_mac: NODE_MAC,
            saddr: REMOTE_POD.into(),
            sport: 80,
            daddr: NODE.into(),
            dport: snat_port,
            ttl: 63,
            tcp_flags: TCP_SYN | TCP_ACK,
            ip_options: timestamps,
            ..input.clone()
        };
        let (rc, out) = f.xdp(&reply.bytes());
        assert_eq!(rc, XDP_TX, "remote: reply verdict");
        let want = Frame {
            src_mac: NODE_MAC,
            dst_mac: CLIENT_MAC,
            saddr: NODE.into(),
            sport: remote_port,
            daddr: CLIENT.into(),
            dport: input.sport,
            ttl: 62,
            ..reply
        };
        assert_eq!(
            out,
            want.bytes(),
            "remote: reply to the client, options kept"
        );
        assert_checksums(&out);
        let stats = f.stats();
        assert!(
            !stats.iter().any(|(n, _)| *n == "pass_ip_options"),
            "every packet with options was served: {stats:?}"
        );
        assert_eq!(
            f.counter_named("ip_options_served"),
            5,
            "each XDP frame with options (three local, one remote and its reply): {stats:?}"
        );
    });
}

/// An ICMP error from a router between the nodes about a packet SNATed to
/// a remote backend (fragmentation needed for a TCP segment quoted whole,
/// or quoted by its first 8 bytes; time exceeded for a UDP datagram) goes
/// to the client as if about the client's own packet to the NodePort: from
/// the node address, quoting client:port → node:NodePort, with every
/// checksum (outer IPv4, ICMP, the quoted IPv4 and segment where quoted)
/// equal to a from-scratch computation.
#[test]
fn icmp_errors_about_snat_flows_reach_the_client_translated() {
    in_fixture(|f| {
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[(9, REMOTE_POD, 80, 0)]);
        f.service(2, NODE_PORT, PROTO_UDP, 0, &[(10, REMOTE_POD, 53, 0)]);
        let frag_needed = (3u8, 4u8, [0, 0, 0x05, 0x78]);
        let time_exceeded = (11u8, 0u8, [0; 4]);
        // (case, client packet, ICMP type/code/rest, bytes quoted: all or 28)
        let cases = [
            (
                "TCP, fragmentation needed, whole quote",
                Frame {
                    payload: vec![7; 1200],
                    ..Frame::tcp(CLIENT, 40100, NODE, NODE_PORT)
                },
                frag_needed,
                None,
            ),
            (
                "TCP, fragmentation needed, 8 bytes quoted",
                Frame::tcp(CLIENT, 40101, NODE, NODE_PORT),
                frag_needed,
                Some(28),
            ),
            (
                "UDP, time exceeded",
                Frame::udp(CLIENT, 40102, NODE, NODE_PORT),
                time_exceeded,
                Some(28),
            ),
        ];
        for (name, input, (icmp_type, code, rest), quote_len) in cases {
            let (rc, sent) = f.xdp(&input.bytes());
            assert_eq!(rc, XDP_TX, "{name}: the client's packet is forwarded");
            let quote = &sent[14..quote_len.map_or(sent.len(), |n| 14 + n)];
            let error = icmp_error(
                (NODE_MAC, OTHER_NODE_MAC),
                OTHER_NODE,
                NODE,
                64,
                icmp_type,
                code,
                rest,
                quote,
            );
            let before = f.counter_named("icmp_error_to_client");
            let (rc, out) = f.xdp(&error);
            assert_eq!(rc, XDP_TX, "{name}: verdict (counters: {:?})", f.stats());
            // What the client sent, as the router saw it (one hop on).
            let as_sent = Frame {
                ttl: input.ttl - 1,
                ..input.clone()
            }
            .bytes();
            let want = icmp_error(
                (CLIENT_MAC, NODE_MAC),
                NODE,
                CLIENT,
                63,
                icmp_type,
                code,
                rest,
                &as_sent[14..quote_len.map_or(as_sent.len(), |n| 14 + n)],
            );
            assert_eq!(out, want, "{name}: the error the client gets");
            assert_checksums(&out);
            assert_eq!(
                f.counter_named("icmp_error_to_client"),
                before + 1,
                "{name}"
            );
        }
    });
}

/// A local backend's own ICMP error about a client's flow (port
/// unreachable for a UDP datagram, fragmentation needed for a TCP
/// segment), leaving through the device at TC egress, is rewritten as
/// about the client's packet to the NodePort: from the node address,
/// quoting client:port → node:NodePort, checksums equal to a from-scratch
/// computation. Once the flow is gone, an error quoting it is left alone.
#[test]
fn icmp_errors_of_local_backends_leave_translated() {
    in_fixture(|f| {
        f.local_tcp_and_udp();
        let port_unreachable = (3u8, 3u8, [0; 4]);
        let frag_needed = (3u8, 4u8, [0, 0, 0x05, 0x14]);
        for (name, input, (icmp_type, code, rest)) in [
            (
                "UDP, port unreachable",
                Frame::udp(CLIENT, 40200, NODE, NODE_PORT),
                port_unreachable,
            ),
            (
                "TCP, fragmentation needed",
                Frame {
                    tcp_flags: TCP_ACK | TCP_PSH,
                    payload: vec![9; 1400],
                    ..Frame::tcp(CLIENT, 40201, NODE, NODE_PORT)
                },
                frag_needed,
            ),
        ] {
            let (rc, delivered) = f.xdp(&input.bytes());
            assert_eq!(rc, XDP_PASS, "{name}: DNAT to the local pod");
            // The pod quotes what it got (as Linux does, up to 576 bytes).
            let quote = &delivered[14..delivered.len().min(14 + 548)];
            let error = icmp_error(
                (CLIENT_MAC, NODE_MAC),
                LOCAL_POD,
                CLIENT,
                63,
                icmp_type,
                code,
                rest,
                quote,
            );
            let before = f.counter_named("icmp_error_to_client");
            let (rc, out) = f.tc(&error);
            assert_eq!(
                rc,
                TC_ACT_OK,
                "{name}: TC verdict (counters: {:?})",
                f.stats()
            );
            let sent = input.bytes();
            let want = icmp_error(
                (CLIENT_MAC, NODE_MAC),
                NODE,
                CLIENT,
                63,
                icmp_type,
                code,
                rest,
                &sent[14..sent.len().min(14 + 548)],
            );
            assert_eq!(out, want, "{name}: the error the client gets");
            assert_checksums(&out);
            assert_eq!(
                f.counter_named("icmp_error_to_client"),
                before + 1,
                "{name}"
            );
        }

        // The flow ended: its conntrack entry is gone, the error stays as it is.
        let input = Frame::udp(CLIENT, 40202, NODE, NODE_PORT);
        let (_, delivered) = f.xdp(&input.bytes());
        let client_flow = flow(CLIENT, 40202, NODE, NODE_PORT, PROTO_UDP);
        f.conntrack.remove(&client_flow).expect("remove the flow");
        let error = icmp_error(
            (CLIENT_MAC, NODE_MAC),
            LOCAL_POD,
            CLIENT,
            63,
            3,
            3,
            [0; 4],
            &delivered[14..],
        );
        let (rc, out) = f.tc(&error);
        assert_eq!(
            (rc, out),
            (TC_ACT_UNSPEC, error),
            "an ended flow's error passes"
        );
    });
}

/// An ICMP error from the client's side about a reply it got from the
/// NodePort goes to the flow's backend as about the backend's own reply:
/// to a remote backend from the node's SNAT address and port (forwarded),
/// to a local one from the client (passed to the stack), every checksum
/// equal to a from-scratch computation.
#[test]
fn icmp_errors_about_replies_go_to_the_backend() {
    in_fixture(|f| {
        f.service(1, NODE_PORT, PROTO_UDP, 0, &[(9, REMOTE_POD, 53, 0)]);
        f.service(
            2,
            NODE_PORT,
            PROTO_TCP,
            0,
            &[(7, LOCAL_POD, 8080, BACKEND_F_LOCAL)],
        );
        for (name, input, backend_port) in [
            (
                "remote UDP",
                Frame::udp(CLIENT, 40300, NODE, NODE_PORT),
                53u16,
            ),
            (
                "local TCP",
                Frame::tcp(CLIENT, 40301, NODE, NODE_PORT),
                8080,
            ),
        ] {
            let remote = input.proto == PROTO_UDP;
            let (_, sent) = f.xdp(&input.bytes());
            // The backend's reply as the backend sent it, and as the client
            // got it.
            let (peer, peer_port) = if remote {
                (NODE, u16::from_be_bytes([sent[34], sent[35]]))
            } else {
                (CLIENT, input.sport)
            };
            let backend_addr = if remote { REMOTE_POD } else { LOCAL_POD };
            let reply = Frame {
                saddr: backend_addr.into(),
                sport: backend_port,
                daddr: peer.into(),
                dport: peer_port,
                tcp_flags: TCP_SYN | TCP_ACK,
                ttl: 63,
                ..input.clone()
            };
            let got = Frame {
                saddr: NODE.into(),
                sport: NODE_PORT,
                daddr: CLIENT.into(),
                dport: input.sport,
                ..reply.clone()
            }
            .bytes();
            let error = icmp_error(
                (NODE_MAC, CLIENT_MAC),
                CLIENT,
                NODE,
                64,
                3,
                4,
                [0, 0, 0x05, 0x00],
                &got[14..],
            );
            let before = f.counter_named("icmp_error_to_backend");
            let (rc, out) = f.xdp(&error);
            let as_sent = reply.bytes();
            let (verdict, macs, from, ttl) = if remote {
                (XDP_TX, (OTHER_NODE_MAC, NODE_MAC), NODE, 63)
            } else {
                (XDP_PASS, (NODE_MAC, CLIENT_MAC), CLIENT, 64)
            };
            assert_eq!(rc, verdict, "{name}: verdict (counters: {:?})", f.stats());
            let want = icmp_error(
                macs,
                from,
                backend_addr,
                ttl,
                3,
                4,
                [0, 0, 0x05, 0x00],
                &as_sent[14..],
            );
            assert_eq!(out, want, "{name}: the error the backend gets");
            assert_checksums(&out);
            assert_eq!(
                f.counter_named("icmp_error_to_backend"),
                before + 1,
                "{name}"
            );
        }
    });
}

/// An ICMP error about no flow the datapath translated, an ICMP message
/// that is no error, and errors about a translated flow that are another
/// host's, quote a later fragment or are shorter than their quote pass
/// untouched.
#[test]
fn icmp_that_is_not_about_a_translated_flow_passes() {
    in_fixture(|f| {
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[(9, REMOTE_POD, 80, 0)]);
        // About a flow the datapath never translated, and not an error.
        let unknown = Frame::tcp(NODE, 45_000, REMOTE_POD, 80).bytes();
        let echo = icmp_error(
            (NODE_MAC, CLIENT_MAC),
            CLIENT,
            NODE,
            64,
            8,
            0,
            [0, 1, 0, 1],
            b"ping payload",
        );
        for (name, frame) in [
            (
                "an error about an unknown flow",
                icmp_error(
                    (NODE_MAC, OTHER_NODE_MAC),
                    OTHER_NODE,
                    NODE,
                    64,
                    3,
                    4,
                    [0, 0, 0x05, 0x78],
                    &unknown[14..42],
                ),
            ),
            ("an echo request", echo),
        ] {
            let (rc, out) = f.xdp(&frame);
            assert_eq!((rc, out), (XDP_PASS, frame), "{name} passes untouched");
        }

        // About a translated flow, but wrong: to another host's MAC, quoting
        // a later fragment, or with a datagram shorter than its quote.
        let (_, sent) = f.xdp(&Frame::tcp(CLIENT, 40400, NODE, NODE_PORT).bytes());
        let about = |quote: &[u8]| {
            icmp_error(
                (NODE_MAC, OTHER_NODE_MAC),
                OTHER_NODE,
                NODE,
                64,
                3,
                4,
                [0, 0, 0x05, 0x78],
                quote,
            )
        };
        let mut other_host = about(&sent[14..]);
        other_host[0..6].copy_from_slice(&CLIENT_MAC);
        let mut later_fragment = sent[14..].to_vec();
        later_fragment[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        let later_fragment = about(&later_fragment);
        let mut short = about(&sent[14..42]);
        short[16..18].copy_from_slice(&50u16.to_be_bytes());
        for (name, frame) in [
            ("to another host's MAC", other_host),
            ("quoting a later fragment", later_fragment),
            ("shorter than its quote", short),
        ] {
            let (rc, out) = f.xdp(&frame);
            assert_eq!(
                (rc, out),
                (XDP_PASS, frame),
                "an error {name} passes untouched"
            );
        }
        assert_eq!(
            f.counter_named("icmp_error_to_client"),
            0,
            "none translated"
        );
    });
}

/// On a device flagged for it (veth), packets going back out of the
/// ingress device are redirected to it instead of `XDP_TX`ed.
#[test]
fn redirect_tx_devices_use_a_redirect() {
    in_fixture(|f| {
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[(9, REMOTE_POD, 80, 0)]);
        f.service(2, EMPTY_PORT, PROTO_TCP, 0, &[]);
        f.device(DEVICE_F_REDIRECT_TX);
        let (rc, out) = f.xdp(&Frame::tcp(CLIENT, 40000, NODE, NODE_PORT).bytes());
        assert_eq!(rc, XDP_REDIRECT, "forward to a remote backend");
        assert_checksums(&out);
        let (rc, _) = f.xdp(&Frame::tcp(CLIENT, 40001, NODE, EMPTY_PORT).bytes());
        assert_eq!(rc, XDP_REDIRECT, "reject");
        // Generic mode: XDP_TX, whose transmit path takes GSO skbs (a
        // generic redirect refuses anything over the MTU).
        f.device(DEVICE_F_REDIRECT_TX | DEVICE_F_SKB_MODE);
        let (rc, _) = f.xdp(&Frame::tcp(CLIENT, 40002, NODE, NODE_PORT).bytes());
        assert_eq!(rc, XDP_TX, "forward in generic mode");
    });
}

fn monotonic_ns() -> u64 {
    // SAFETY: zeroed timespec is a valid out-parameter.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) },
        0
    );
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

/// Holds SNAT port `port` of a pool towards REMOTE_POD:80 by a flow of
/// client `client`:40000, closed `closed_s_ago` seconds ago (`None`: live).
fn hold_port(f: &mut Fixture, port: u16, client: [u8; 4], closed_s_ago: Option<u64>) -> FlowKey {
    let ct_key = flow(client, 40000, NODE, NODE_PORT, PROTO_TCP);
    f.rev_nat
        .insert(
            flow(REMOTE_POD, 80, NODE, port, PROTO_TCP),
            RevNat {
                saddr_be: be(NODE),
                daddr_be: be(client),
                sport_be: NODE_PORT.to_be(),
                dport_be: 40000u16.to_be(),
            },
            0,
        )
        .expect("rev entry");
    let now = monotonic_ns();
    f.conntrack
        .insert(
            ct_key,
            CtEntry {
                backend_id: 9,
                service_id: 1,
                snat_addr_be: be(NODE),
                snat_port_be: port.to_be(),
                flags: CT_F_SNAT
                    | if closed_s_ago.is_some() {
                        CT_F_CLOSING
                    } else {
                        0
                    },
                pad: 0,
                last_seen_ns: now - closed_s_ago.unwrap_or(0) * 1_000_000_000,
                backend_addr_be: be(REMOTE_POD),
                backend_port_be: 80u16.to_be(),
                pad2: 0,
            },
            0,
        )
        .expect("conntrack entry");
    ct_key
}

fn counter(f: &mut Fixture, name: &str) -> u64 {
    f.counter_named(name)
}

/// SNAT ports of live flows are never taken; a closed flow's port rests
/// (60 s by default) before another client gets it, unless every port is
/// held, and then the longest-rested goes first; a port whose flow state is
/// gone is free; the same client tuple gets its own port back at once.
#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn snat_ports_rest_after_close_and_live_ones_are_never_taken() {
    in_fixture(|f| {
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[(9, REMOTE_POD, 80, 0)]);
        // A pool of 8 ports: 128 random probes find every port.
        let ports: Vec<u16> = (5000..5008).collect();
        f.snat_pool([PortRange::new(5000, 5007), PortRange::EMPTY], 60);
        let clients: Vec<[u8; 4]> = (0..8).map(|i| [10, 200, 1, 10 + i]).collect();
        for (port, client) in ports.iter().zip(&clients) {
            hold_port(f, *port, *client, None);
        }
        let newcomer = Frame::tcp(CLIENT, 50000, NODE, NODE_PORT);
        let (rc, _) = f.xdp(&newcomer.bytes());
        assert_eq!(rc, XDP_DROP, "every port held by a live flow: dropped");
        assert_eq!(counter(f, "drop_snat_exhausted"), 1, "{:?}", f.stats());

        // Two flows closed 5 s and 20 s ago (still resting): under pressure
        // the one closed longest ago is taken, and counted as early reuse.
        hold_port(f, 5002, clients[2], Some(5));
        let stale = hold_port(f, 5005, clients[5], Some(20));
        let (rc, out) = f.xdp(&newcomer.bytes());
        assert_eq!(rc, XDP_TX, "{:?}", f.stats());
        assert_eq!(
            u16::from_be_bytes([out[34], out[35]]),
            5005,
            "longest-rested port"
        );
        assert_checksums(&out);
        assert_eq!(counter(f, "snat_port_early_reuse"), 1, "{:?}", f.stats());
        assert!(
            !f.conntrack_entries().iter().any(|(k, _)| *k == stale),
            "the old flow's conntrack entry went with its port"
        );

        // A flow closed 61 s ago has rested: taken without early reuse.
        hold_port(f, 5006, clients[6], Some(61));
        let second = Frame::tcp(CLIENT, 50001, NODE, NODE_PORT);
        let (rc, out) = f.xdp(&second.bytes());
        assert_eq!(rc, XDP_TX, "{:?}", f.stats());
        assert_eq!(
            u16::from_be_bytes([out[34], out[35]]),
            5006,
            "the rested port"
        );
        assert_eq!(counter(f, "snat_port_early_reuse"), 1, "no early reuse");

        // A port whose flow state vanished (conntrack evicted) is free.
        let gone = hold_port(f, 5003, clients[3], None);
        f.conntrack.remove(&gone).expect("remove");
        let third = Frame::tcp(CLIENT, 50002, NODE, NODE_PORT);
        let (rc, out) = f.xdp(&third.bytes());
        assert_eq!(rc, XDP_TX, "{:?}", f.stats());
        assert_eq!(u16::from_be_bytes([out[34], out[35]]), 5003);
        assert_eq!(counter(f, "snat_port_early_reuse"), 1, "no early reuse");
    });
}

/// The same client tuple reopening its connection gets its own SNAT port
/// back at once (its timestamps are newer than the backend's TIME_WAIT of
/// it); a client's port inside the pool is kept.
#[test]
fn the_same_client_tuple_gets_its_snat_port_back() {
    in_fixture(|f| {
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[(9, REMOTE_POD, 80, 0)]);
        let syn = Frame::tcp(CLIENT, 62_000, NODE, NODE_PORT);
        assert_eq!(preferred_port(&syn), 62_000, "a pool port is kept");
        let (rc, out) = f.xdp(&syn.bytes());
        assert_eq!(rc, XDP_TX);
        assert_eq!(u16::from_be_bytes([out[34], out[35]]), 62_000);
        let fin = Frame {
            tcp_flags: 0x01 | TCP_ACK,
            ..syn.clone()
        };
        let (rc, _) = f.xdp(&fin.bytes());
        assert_eq!(rc, XDP_TX);
        let (rc, out) = f.xdp(&syn.bytes());
        assert_eq!(rc, XDP_TX, "{:?}", f.stats());
        assert_eq!(
            u16::from_be_bytes([out[34], out[35]]),
            62_000,
            "the reopened tuple keeps its port"
        );
        assert_eq!(counter(f, "snat_port_early_reuse"), 0, "{:?}", f.stats());
        // A client port outside the pool maps to its fixed image in it.
        let other = Frame::tcp(CLIENT, 45_000, NODE, NODE_PORT);
        let (rc, out) = f.xdp(&other.bytes());
        assert_eq!(rc, XDP_TX);
        assert_eq!(
            u16::from_be_bytes([out[34], out[35]]),
            preferred_port(&other)
        );
    });
}

/// Frames from a sender with checksum offload carry a partial checksum (the
/// pseudo-header seed): a frame that stays an skb (local DNAT, generic
/// mode) gets the seed for its new addresses, one that leaves as an XDP
/// frame gets the complete checksum. A complete checksum that happens to
/// equal the seed is still updated as a checksum.
#[test]
#[allow(clippy::too_many_lines, reason = "one table per path")]
fn partial_checksums_are_completed_or_kept_as_seeds() {
    in_fixture(|f| {
        f.local_tcp_and_udp();
        f.service(3, NODE_PORT + 10, PROTO_TCP, 0, &[(9, REMOTE_POD, 80, 0)]);
        f.service(4, NODE_PORT + 10, PROTO_UDP, 0, &[(10, REMOTE_POD, 53, 0)]);
        let partial = |frame: Frame| Frame {
            partial_checksum: true,
            ..frame
        };
        let payload = |frame: Frame| Frame {
            tcp_flags: TCP_ACK | TCP_PSH,
            payload: (0..=255u8).cycle().take(1300).collect(),
            ..frame
        };
        // Local backends: the frame stays an skb; the seed follows the DNAT.
        for (name, input) in [
            (
                "TCP SYN",
                partial(Frame::tcp(CLIENT, 41000, NODE, NODE_PORT)),
            ),
            (
                "TCP data",
                partial(payload(Frame::tcp(CLIENT, 41001, NODE, NODE_PORT))),
            ),
            ("UDP", partial(Frame::udp(CLIENT, 41002, NODE, NODE_PORT))),
        ] {
            let (rc, out) = f.xdp(&input.bytes());
            assert_eq!(rc, XDP_PASS, "{name}");
            let target = if input.proto == PROTO_TCP { 8080 } else { 5353 };
            let want = Frame {
                daddr: LOCAL_POD.into(),
                dport: target,
                ..input.clone()
            };
            assert_eq!(out, want.bytes(), "{name}: DNAT with the new seed");
            assert_partial_seed(&out);
        }
        // Remote backends in native mode: the frame leaves as an XDP frame,
        // so its checksum must be complete.
        for (name, input) in [
            (
                "TCP SYN",
                partial(Frame::tcp(CLIENT, 42000, NODE, NODE_PORT + 10)),
            ),
            (
                "TCP data",
                partial(payload(Frame::tcp(CLIENT, 42001, NODE, NODE_PORT + 10))),
            ),
            (
                "UDP",
                partial(Frame::udp(CLIENT, 42002, NODE, NODE_PORT + 10)),
            ),
            (
                "odd-length UDP",
                partial(Frame {
                    payload: b"odd".to_vec(),
                    ..Frame::udp(CLIENT, 42003, NODE, NODE_PORT + 10)
                }),
            ),
        ] {
            let (rc, out) = f.xdp(&input.bytes());
            assert_eq!(rc, XDP_TX, "{name}: {:?}", f.stats());
            assert_checksums(&out);
            let target = if input.proto == PROTO_TCP { 80 } else { 53 };
            let want = Frame {
                src_mac: NODE_MAC,
                dst_mac: OTHER_NODE_MAC,
                saddr: NODE.into(),
                sport: preferred_port(&input),
                daddr: REMOTE_POD.into(),
                dport: target,
                ttl: input.ttl - 1,
                partial_checksum: false,
                ..input.clone()
            };
            assert_eq!(
                out,
                want.bytes(),
                "{name}: forwarded with a complete checksum"
            );
        }
        // Generic mode: every frame stays an skb, so the seed is kept.
        f.device(DEVICE_F_SKB_MODE);
        let input = partial(payload(Frame::tcp(CLIENT, 43000, NODE, NODE_PORT + 10)));
        let (rc, out) = f.xdp(&input.bytes());
        assert_eq!(rc, XDP_TX, "{:?}", f.stats());
        assert_partial_seed(&out);
        f.device(0);
        // A complete checksum equal to the seed (found by varying two payload
        // bytes) is a checksum: updated, not taken for a seed.
        let base = Frame::tcp(CLIENT, 44000, NODE, NODE_PORT + 10);
        let lookalike = (0..=u16::MAX)
            .map(|v| Frame {
                tcp_flags: TCP_ACK | TCP_PSH,
                payload: v.to_be_bytes().to_vec(),
                ..base.clone()
            })
            .find(|fr| {
                let b = fr.bytes();
                b[50..52] == fr.seed(b.len() - 34)
            })
            .expect("a payload whose checksum equals the seed");
        let (rc, out) = f.xdp(&lookalike.bytes());
        assert_eq!(rc, XDP_TX, "{:?}", f.stats());
        assert_checksums(&out);
        assert!(counter(f, "csum_partial") >= 8, "{:?}", f.stats());
    });
}

/// A next hop without a neighbour entry: the rewritten frame is handed to
/// TC ingress (`XDP_PASS` with the next hop in its metadata) instead of
/// being dropped.
#[test]
fn next_hop_without_a_neighbour_is_handed_to_tc() {
    in_fixture(|f| {
        let unresolved_pod = [10, 244, 3, 10];
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[(9, unresolved_pod, 80, 0)]);
        let input = Frame::tcp(CLIENT, 40000, NODE, NODE_PORT);
        let (rc, out) = f.xdp(&input.bytes());
        assert_eq!(rc, XDP_PASS, "{:?}", f.stats());
        assert_eq!(counter(f, "forward_via_neigh"), 1, "{:?}", f.stats());
        let want = Frame {
            saddr: NODE.into(),
            sport: preferred_port(&input),
            daddr: unresolved_pod.into(),
            dport: 80,
            ttl: input.ttl - 1,
            ..input.clone()
        };
        // BPF_PROG_TEST_RUN returns the metadata in front of the frame: the
        // handoff TC ingress reads ("npNH", egress device, next hop).
        let mut handoff = 0x6e70_4e48u32.to_ne_bytes().to_vec();
        handoff.extend_from_slice(&0u32.to_ne_bytes()); // the token (unset here)
        handoff.extend_from_slice(&f.ifindex.to_ne_bytes());
        handoff.extend_from_slice(&[10, 200, 0, 13]);
        assert_eq!(&out[..16], &handoff[..], "handoff metadata");
        let out = out[16..].to_vec();
        assert_eq!(
            out,
            want.bytes(),
            "SNATed, MACs left to the neighbour layer"
        );
        assert_checksums(&out);
        // A reject to a client the node has no neighbour entry for.
        f.service(2, EMPTY_PORT, PROTO_TCP, 0, &[]);
        let (rc, out) = f.xdp(&Frame::tcp([10, 200, 0, 3], 40001, NODE, EMPTY_PORT).bytes());
        assert_eq!(rc, XDP_PASS, "{:?}", f.stats());
        assert_eq!(counter(f, "forward_via_neigh"), 2);
        assert_eq!(
            &out[12..16],
            &[10, 200, 0, 3],
            "the client is its own next hop"
        );
        let out = out[16..].to_vec();
        assert_eq!(out[47] & 0x04, 0x04, "a RST");
        assert_checksums(&out);
    });
}

/// A TTL that would expire on a forwarded packet: dropped, not forwarded.
#[test]
fn remote_backend_ttl_expiry_drops() {
    in_fixture(|f| {
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[(9, REMOTE_POD, 80, 0)]);
        let input = Frame {
            ttl: 1,
            ..Frame::tcp(CLIENT, 40000, NODE, NODE_PORT)
        };
        let (rc, _) = f.xdp(&input.bytes());
        assert_eq!(rc, XDP_DROP);
    });
}

/// New flows spread over every slot; an established flow keeps its backend
/// when the slots change under it.
#[test]
fn backend_choice_spreads_and_sticks() {
    in_fixture(|f| {
        let backends = [
            (1, [10, 244, 1, 10], 80, BACKEND_F_LOCAL),
            (2, [10, 244, 1, 11], 80, BACKEND_F_LOCAL),
            (3, [10, 244, 1, 12], 80, BACKEND_F_LOCAL),
        ];
        f.service(1, NODE_PORT, PROTO_TCP, 0, &backends);
        let mut seen = std::collections::BTreeSet::new();
        for port in 40000..40060 {
            let (rc, out) = f.xdp(&Frame::tcp(CLIENT, port, NODE, NODE_PORT).bytes());
            assert_eq!(rc, XDP_PASS);
            seen.insert(Ipv4Addr::new(out[30], out[31], out[32], out[33]));
        }
        assert_eq!(seen.len(), 3, "60 flows reach every backend: {seen:?}");

        let first = Frame::tcp(CLIENT, 40000, NODE, NODE_PORT);
        let (_, out) = f.xdp(&first.bytes());
        let chosen = out[30..34].to_vec();
        // Reverse the slot order: a new flow hash would now pick differently.
        f.service(
            1,
            NODE_PORT,
            PROTO_TCP,
            0,
            &[backends[2], backends[1], backends[0]],
        );
        let (_, out) = f.xdp(
            &Frame {
                tcp_flags: TCP_ACK,
                ..first
            }
            .bytes(),
        );
        assert_eq!(
            out[30..34].to_vec(),
            chosen,
            "established flow keeps its backend"
        );
    });
}

/// ClientIP affinity: every new flow of a client goes to one backend while
/// the entry is fresh and its slot still names that backend; without
/// affinity (or once it timed out) flows spread again.
#[test]
fn client_ip_affinity_sticks_and_ends() {
    in_fixture(|f| {
        let backends = [
            (1, [10, 244, 1, 10], 80, BACKEND_F_LOCAL),
            (2, [10, 244, 1, 11], 80, BACKEND_F_LOCAL),
            (3, [10, 244, 1, 12], 80, BACKEND_F_LOCAL),
        ];
        f.service_with_affinity(
            1,
            NODE_PORT,
            PROTO_TCP,
            FRONTEND_F_AFFINITY,
            10_800,
            &backends,
        );
        let dst = |f: &Fixture, client: [u8; 4], port: u16| {
            let (rc, out) = f.xdp(&Frame::tcp(client, port, NODE, NODE_PORT).bytes());
            assert_eq!(rc, XDP_PASS);
            Ipv4Addr::new(out[30], out[31], out[32], out[33])
        };
        let first = dst(f, CLIENT, 40000);
        for port in 40001..40030 {
            assert_eq!(
                dst(f, CLIENT, port),
                first,
                "every flow of the client sticks"
            );
        }
        let mut others = std::collections::BTreeSet::new();
        for c in 3..40u8 {
            others.insert(dst(f, [10, 200, 0, c], 40000));
        }
        assert_eq!(others.len(), 3, "other clients spread: {others:?}");

        // The backend leaves the slots (the others take them): affinity ends.
        let remaining: Vec<_> = backends
            .iter()
            .copied()
            .filter(|b| Ipv4Addr::from(b.1) != first)
            .collect();
        f.service_with_affinity(
            1,
            NODE_PORT,
            PROTO_TCP,
            FRONTEND_F_AFFINITY,
            10_800,
            &remaining,
        );
        let moved = dst(f, CLIENT, 41000);
        assert_ne!(moved, first, "affinity ends with the backend's slot");
        for port in 41001..41010 {
            assert_eq!(dst(f, CLIENT, port), moved, "new affinity sticks");
        }

        // A timeout of 0 keeps nothing: flows spread.
        f.service_with_affinity(1, NODE_PORT, PROTO_TCP, FRONTEND_F_AFFINITY, 0, &backends);
        let spread: std::collections::BTreeSet<_> =
            (42000..42060).map(|p| dst(f, CLIENT, p)).collect();
        assert_eq!(
            spread.len(),
            3,
            "expired affinity does not hold: {spread:?}"
        );
    });
}

/// An established TCP connection keeps its backend when the endpoint leaves
/// the service (kube-proxy's conntrack does the same); a SYN on the tuple of
/// a closed connection, or of one whose endpoint is gone, gets a current
/// backend; a retransmitted SYN of a live connection keeps its backend.
#[test]
fn tcp_connections_keep_their_backend_and_reopened_tuples_move() {
    in_fixture(|f| {
        let a = (1, [10, 244, 1, 10], 80, BACKEND_F_LOCAL);
        let b = (2, [10, 244, 1, 11], 80, BACKEND_F_LOCAL);
        let c = (3, [10, 244, 1, 12], 80, BACKEND_F_LOCAL);
        let dst = |f: &Fixture, frame: Frame| {
            let (rc, out) = f.xdp(&frame.bytes());
            assert_eq!(rc, XDP_PASS);
            Ipv4Addr::new(out[30], out[31], out[32], out[33])
        };
        let syn = |port| Frame::tcp(CLIENT, port, NODE, NODE_PORT);
        let ack = |port| Frame {
            tcp_flags: TCP_ACK,
            ..Frame::tcp(CLIENT, port, NODE, NODE_PORT)
        };
        let fin = |port| Frame {
            tcp_flags: TCP_ACK | 0x01,
            ..Frame::tcp(CLIENT, port, NODE, NODE_PORT)
        };

        f.service(1, NODE_PORT, PROTO_TCP, 0, &[a]);
        assert_eq!(dst(f, syn(40000)), Ipv4Addr::from(a.1));
        // Endpoint a leaves; its backend entry is deleted.
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[b]);
        f.backends
            .remove(&BackendKey { backend_id: 1 })
            .expect("remove backend");
        assert_eq!(
            dst(f, ack(40000)),
            Ipv4Addr::from(a.1),
            "the connection keeps its backend"
        );
        assert_eq!(
            dst(f, syn(40000)),
            Ipv4Addr::from(b.1),
            "a new connection on the tuple moves"
        );

        // A live connection's retransmitted SYN keeps its backend...
        assert_eq!(dst(f, syn(40001)), Ipv4Addr::from(b.1));
        f.service(1, NODE_PORT, PROTO_TCP, 0, &[c]);
        assert_eq!(dst(f, syn(40001)), Ipv4Addr::from(b.1), "retransmitted SYN");
        // ...a closed one's tuple, reopened, gets a current backend.
        assert_eq!(
            dst(f, fin(40001)),
            Ipv4Addr::from(b.1),
            "FIN still to its backend"
        );
        assert_eq!(
            dst(f, syn(40001)),
            Ipv4Addr::from(c.1),
            "reopened after FIN"
        );
    });
}

/// No endpoints: TCP is answered with a RST, UDP with ICMP port unreachable;
/// `externalTrafficPolicy: Local` without local endpoints drops.
#[test]
fn empty_service_rejects() {
    in_fixture(|f| {
        f.service(1, EMPTY_PORT, PROTO_TCP, 0, &[]);
        f.service(2, EMPTY_PORT, PROTO_UDP, 0, &[]);
        f.service(3, DROP_PORT, PROTO_TCP, FRONTEND_F_DROP_EMPTY, &[]);

        let syn = Frame {
            seq: 5000,
            ..Frame::tcp(CLIENT, 40000, NODE, EMPTY_PORT)
        };
        let (rc, out) = f.xdp(&syn.bytes());
        assert_eq!(rc, XDP_TX, "SYN: verdict");
        let want = Frame {
            src_mac: NODE_MAC,
            dst_mac: CLIENT_MAC,
            saddr: NODE.into(),
            daddr: CLIENT.into(),
            sport: EMPTY_PORT,
            dport: 40000,
            seq: 0,
            ack: 5001,
            tcp_flags: 0x04 | TCP_ACK,
            window: 0,
            ip_id: 0,
            frag: 0,
            ..syn.clone()
        };
        assert_eq!(out, want.bytes(), "RST bytes");
        assert_checksums(&out);

        let data = Frame {
            tcp_flags: TCP_ACK | TCP_PSH,
            seq: 1,
            ack: 777,
            payload: vec![0; 100],
            ..Frame::tcp(CLIENT, 40001, NODE, EMPTY_PORT)
        };
        let (rc, out) = f.xdp(&data.bytes());
        assert_eq!(rc, XDP_TX, "ACK: verdict");
        assert_eq!(out.len(), 54, "payload trimmed");
        assert_eq!(
            u32::from_be_bytes(out[38..42].try_into().unwrap()),
            777,
            "RST seq = their ACK"
        );
        assert_eq!(out[47], 0x04, "RST only");
        assert_checksums(&out);

        let rst = Frame {
            tcp_flags: 0x04,
            ..Frame::tcp(CLIENT, 40002, NODE, EMPTY_PORT)
        };
        let (rc, _) = f.xdp(&rst.bytes());
        assert_eq!(rc, XDP_DROP, "a RST is never answered");

        let udp = Frame::udp(CLIENT, 40003, NODE, EMPTY_PORT);
        let input = udp.bytes();
        let (rc, out) = f.xdp(&input);
        assert_eq!(rc, XDP_TX, "UDP: verdict");
        assert_eq!(out.len(), 14 + 20 + 8 + 28, "ICMP length");
        assert_eq!(&out[0..6], &CLIENT_MAC);
        assert_eq!(&out[6..12], &NODE_MAC);
        assert_eq!(out[23], 1, "ICMP");
        assert_eq!(&out[26..30], &NODE);
        assert_eq!(&out[30..34], &CLIENT);
        assert_eq!(&out[34..36], &[3, 3], "port unreachable");
        assert_eq!(
            &out[42..70],
            &input[14..42],
            "quotes the datagram's IP header and 8 bytes"
        );
        assert_checksums(&out);

        let (rc, _) = f.xdp(&Frame::tcp(CLIENT, 40004, NODE, DROP_PORT).bytes());
        assert_eq!(rc, XDP_DROP, "Local policy without local endpoints drops");
        assert!(
            f.conntrack_entries().is_empty(),
            "rejected flows leave no state"
        );
    });
}

/// A RST or ICMP error is sent only for a frame the kernel would answer:
/// to this host's MAC, from a unicast MAC and a single-host source address,
/// with correct checksums and lengths (RFC 1122 3.2.2). Everything else is
/// dropped and counted; a partial checksum is one the kernel accepts.
#[test]
#[allow(clippy::too_many_lines, reason = "one table")]
fn rejects_only_what_the_kernel_would_answer() {
    in_fixture(|f| {
        f.service(1, EMPTY_PORT, PROTO_TCP, 0, &[]);
        f.service(2, EMPTY_PORT, PROTO_UDP, 0, &[]);
        let syn = |src: [u8; 4]| Frame::tcp(src, 40000, NODE, EMPTY_PORT);
        let corrupt = |mut b: Vec<u8>, at: usize| {
            b[at] ^= 0x5a;
            b
        };
        let dropped: Vec<(&str, Vec<u8>)> = vec![
            (
                "multicast source MAC",
                Frame {
                    src_mac: [0x01, 0, 0x5e, 0, 0, 1],
                    ..syn(CLIENT)
                }
                .bytes(),
            ),
            (
                "zero source MAC",
                Frame {
                    src_mac: [0; 6],
                    ..syn(CLIENT)
                }
                .bytes(),
            ),
            ("source 0.0.0.0", syn([0, 0, 0, 0]).bytes()),
            ("source 127.0.0.1", syn([127, 0, 0, 1]).bytes()),
            ("multicast source 224.0.0.1", syn([224, 0, 0, 1]).bytes()),
            ("reserved source 240.0.0.1", syn([240, 0, 0, 1]).bytes()),
            ("broadcast source", syn([255, 255, 255, 255]).bytes()),
            ("subnet broadcast source", syn([10, 200, 0, 255]).bytes()),
            ("the node's own address as source", syn(NODE).bytes()),
            (
                "bad IPv4 header checksum",
                corrupt(syn(CLIENT).bytes(), 14 + 10),
            ),
            ("bad TCP checksum", corrupt(syn(CLIENT).bytes(), 34 + 16)),
            (
                "bad UDP checksum",
                corrupt(Frame::udp(CLIENT, 40001, NODE, EMPTY_PORT).bytes(), 34 + 6),
            ),
            ("UDP length beyond the segment", {
                let mut b = Frame {
                    udp_no_checksum: true,
                    ..Frame::udp(CLIENT, 40002, NODE, EMPTY_PORT)
                }
                .bytes();
                b[34 + 4..34 + 6].copy_from_slice(&200u16.to_be_bytes());
                b
            }),
        ];
        let n = dropped.len() as u64;
        for (name, input) in dropped {
            let (rc, _) = f.xdp(&input);
            assert_eq!(rc, XDP_DROP, "{name}: no answer ({:?})", f.stats());
        }
        assert_eq!(counter(f, "drop_reject_invalid"), n, "{:?}", f.stats());
        assert_eq!(counter(f, "reject_no_backend"), 0, "{:?}", f.stats());

        // A partial checksum (the client's checksum offload) is answered.
        let partial = Frame {
            partial_checksum: true,
            ..syn(CLIENT)
        };
        let (rc, out) = f.xdp(&partial.bytes());
        assert_eq!(rc, XDP_TX, "{:?}", f.stats());
        assert_eq!(out[47] & 0x04, 0x04, "a RST");
        assert_checksums(&out);
        let (rc, out) = f.xdp(
            &Frame {
                partial_checksum: true,
                ..Frame::udp(CLIENT, 40003, NODE, EMPTY_PORT)
            }
            .bytes(),
        );
        assert_eq!(rc, XDP_TX, "{:?}", f.stats());
        assert_eq!(&out[34..36], &[3, 3], "port unreachable");
        assert_checksums(&out);
        assert_eq!(counter(f, "reject_no_backend"), 2);
    });
}

/// A UDP datagram of 3,000 bytes in three fragments: every fragment is
/// translated as its first one (local DNAT, SNAT to a remote backend, and
/// both replies), also when the later ones come out of order; a later
/// fragment whose first was never seen passes untouched.
#[test]
#[allow(clippy::too_many_lines, reason = "one datagram through every path")]
fn fragmented_datagrams_follow_their_first_fragment() {
    const CHUNK: usize = 1480;
    in_fixture(|f| {
        f.service(
            1,
            NODE_PORT,
            PROTO_UDP,
            0,
            &[(7, LOCAL_POD, 5353, BACKEND_F_LOCAL)],
        );
        f.service(2, NODE_PORT + 1, PROTO_UDP, 0, &[(8, REMOTE_POD, 53, 0)]);
        let big = |sport: u16, dport: u16, ip_id: u16| Frame {
            payload: (0..3000u32).map(|i| (i % 251) as u8).collect(),
            ip_id,
            frag: 0,
            ..Frame::udp(CLIENT, sport, NODE, dport)
        };
        let through = |f: &Fixture, name: &str, input: &Frame, order: &[usize], tc: bool| {
            let frags = input.fragments(CHUNK);
            assert_eq!(frags.len(), 3, "{name}: three fragments");
            order
                .iter()
                .map(|&i| {
                    let (rc, out) = if tc {
                        f.tc(&frags[i])
                    } else {
                        f.xdp(&frags[i])
                    };
                    (i, rc, out)
                })
                .collect::<Vec<_>>()
        };

        // Local backend: DNAT of each fragment, the later two out of order.
        let input = big(40000, NODE_PORT, 0x100);
        let want = Frame {
            daddr: LOCAL_POD.into(),
            dport: 5353,
            ..input.clone()
        };
        let outs = through(f, "to a local backend", &input, &[0, 2, 1], false);
        for (i, rc, out) in &outs {
            assert_eq!(
                *rc,
                XDP_PASS,
                "local fragment {i}: verdict ({:?})",
                f.stats()
            );
            assert_eq!(
                out,
                &want.fragments(CHUNK)[*i],
                "local fragment {i}: DNAT bytes"
            );
        }
        let whole = reassemble(&outs.into_iter().map(|(_, _, o)| o).collect::<Vec<_>>());
        assert_eq!(
            whole,
            want.bytes(),
            "the reassembled datagram is the DNATed one"
        );
        assert_checksums(&whole);

        // The pod's fragmented reply leaves through TC as from the NodePort.
        let reply = Frame {
            src_mac: NODE_MAC,
            dst_mac: CLIENT_MAC,
            saddr: LOCAL_POD.into(),
            sport: 5353,
            daddr: CLIENT.into(),
            dport: 40000,
            ip_id: 0x200,
            ..input.clone()
        };
        let want = Frame {
            saddr: NODE.into(),
            sport: NODE_PORT,
            ..reply.clone()
        };
        for (i, rc, out) in through(f, "local reply", &reply, &[0, 1, 2], true) {
            assert_eq!(
                rc,
                TC_ACT_OK,
                "reply fragment {i}: verdict ({:?})",
                f.stats()
            );
            assert_eq!(
                out,
                want.fragments(CHUNK)[i],
                "reply fragment {i}: reverse NAT bytes"
            );
        }

        // Remote backend: SNAT and forward each fragment.
        let input = big(40001, NODE_PORT + 1, 0x300);
        let snat_port = preferred_port(&input);
        let want = Frame {
            src_mac: NODE_MAC,
            dst_mac: OTHER_NODE_MAC,
            saddr: NODE.into(),
            sport: snat_port,
            daddr: REMOTE_POD.into(),
            dport: 53,
            ttl: input.ttl - 1,
            ..input.clone()
        };
        let outs = through(f, "to a remote backend", &input, &[0, 1, 2], false);
        for (i, rc, out) in &outs {
            assert_eq!(
                *rc,
                XDP_TX,
                "remote fragment {i}: verdict ({:?})",
                f.stats()
            );
            assert_eq!(
                out,
                &want.fragments(CHUNK)[*i],
                "remote fragment {i}: SNAT bytes"
            );
        }
        assert_checksums(&reassemble(
            &outs.into_iter().map(|(_, _, o)| o).collect::<Vec<_>>(),
        ));

        // The remote backend's fragmented reply goes back to the client.
        let reply = Frame {
            src_mac: OTHER_NODE_MAC,
            dst_mac: NODE_MAC,
            saddr: REMOTE_POD.into(),
            sport: 53,
            daddr: NODE.into(),
            dport: snat_port,
            ttl: 63,
            ip_id: 0x400,
            ..input.clone()
        };
        let want = Frame {
            src_mac: NODE_MAC,
            dst_mac: CLIENT_MAC,
            saddr: NODE.into(),
            sport: NODE_PORT + 1,
            daddr: CLIENT.into(),
            dport: 40001,
            ttl: 62,
            ..reply.clone()
        };
        for (i, rc, out) in through(f, "remote reply", &reply, &[0, 2, 1], false) {
            assert_eq!(
                rc,
                XDP_TX,
                "remote reply fragment {i}: verdict ({:?})",
                f.stats()
            );
            assert_eq!(
                out,
                want.fragments(CHUNK)[i],
                "remote reply fragment {i}: bytes"
            );
        }
        assert_eq!(counter(f, "fragment_first"), 4, "{:?}", f.stats());
        assert_eq!(counter(f, "fragment_followed"), 8, "{:?}", f.stats());

        // A later fragment before (without) its first: passed untouched.
        let lost = big(40002, NODE_PORT, 0x500).fragments(CHUNK);
        let before = counter(f, "pass_fragment");
        let (rc, out) = f.xdp(&lost[1]);
        assert_eq!(rc, XDP_PASS, "a later fragment without its first");
        assert_eq!(out, lost[1], "untouched");
        assert_eq!(counter(f, "pass_fragment"), before + 1);
        assert_eq!(
            f.service_stats(1).packets,
            3,
            "the unseen datagram counts nothing"
        );
    });
}

/// Per-service and per-backend counters move by exactly the packets sent,
/// with their outcome.
/// Two (service, backend) keys that share a cache slot take it from each
/// other on every switch: each moves the other's counters to the
/// `service_stats` hash, and no packet is lost or counted twice.
#[test]
fn counters_stay_exact_when_two_keys_share_a_cache_slot() {
    let first = ServiceStatsKey {
        service_id: 1,
        backend_id: 7,
    };
    let other = (2..1_000_000)
        .map(|service_id| ServiceStatsKey {
            service_id,
            backend_id: 9,
        })
        .find(|k| ServiceStatsSlot::index(k) == ServiceStatsSlot::index(&first))
        .expect("a service id whose key shares the slot of (1, 7)");
    in_fixture(|f| {
        f.service(
            first.service_id,
            NODE_PORT,
            PROTO_TCP,
            0,
            &[(7, LOCAL_POD, 8080, BACKEND_F_LOCAL)],
        );
        f.service(
            other.service_id,
            EMPTY_PORT,
            PROTO_TCP,
            0,
            &[(9, LOCAL_POD, 8081, BACKEND_F_LOCAL)],
        );
        for round in 0..5u16 {
            for port in [NODE_PORT, EMPTY_PORT] {
                let frame = Frame::tcp(CLIENT, 40_000 + round, NODE, port);
                assert_eq!(
                    f.xdp(&frame.bytes()).0,
                    XDP_PASS,
                    "round {round}, port {port}"
                );
            }
        }
        let hashed = f.hashed_counter_keys();
        assert!(
            hashed.contains(&first) && hashed.contains(&other),
            "each key moved the other's counters to service_stats: {hashed:?}"
        );
        for (key, backend) in [(first, 7), (other, 9)] {
            let s = f.service_stats(key.service_id);
            assert_eq!((s.packets, s.new_flows, s.bytes), (5, 5, 5 * 40), "{key:?}");
            assert_eq!(f.backend_stats(backend).packets, 5, "backend {backend}");
        }
    });
}

#[test]
fn service_and_backend_counters_count_packets_flows_and_drops() {
    in_fixture(|f| {
        f.service(
            1,
            NODE_PORT,
            PROTO_TCP,
            0,
            &[(7, LOCAL_POD, 8080, BACKEND_F_LOCAL)],
        );
        f.service(2, NODE_PORT, PROTO_UDP, 0, &[(8, REMOTE_POD, 53, 0)]);
        f.service(3, EMPTY_PORT, PROTO_TCP, 0, &[]);
        f.service(4, DROP_PORT, PROTO_TCP, FRONTEND_F_DROP_EMPTY, &[]);
        let syn = Frame::tcp(CLIENT, 40000, NODE, NODE_PORT);
        let ack = Frame {
            tcp_flags: TCP_ACK | TCP_PSH,
            payload: vec![7; 100],
            ..syn.clone()
        };
        for frame in [&syn, &ack, &ack] {
            assert_eq!(f.xdp(&frame.bytes()).0, XDP_PASS);
        }
        let tcp = f.service_stats(1);
        assert_eq!(
            (tcp.packets, tcp.bytes, tcp.new_flows),
            (3, 40 + 2 * 140, 1),
            "TCP frontend: packets, IPv4 bytes, flows"
        );
        let b = f.backend_stats(7);
        assert_eq!(
            (b.packets, b.bytes, b.new_flows),
            (3, 320, 1),
            "its backend"
        );

        for port in [41000, 41001] {
            assert_eq!(
                f.xdp(&Frame::udp(CLIENT, port, NODE, NODE_PORT).bytes()).0,
                XDP_TX
            );
        }
        let udp = f.service_stats(2);
        assert_eq!((udp.packets, udp.new_flows), (2, 2), "UDP frontend");
        assert_eq!(f.backend_stats(8).packets, 2, "the remote backend");

        assert_eq!(
            f.xdp(&Frame::tcp(CLIENT, 42000, NODE, EMPTY_PORT).bytes())
                .0,
            XDP_TX
        );
        let empty = f.service_stats(3);
        assert_eq!(
            (empty.packets, empty.rejected, empty.new_flows),
            (1, 1, 0),
            "rejected"
        );
        assert_eq!(
            f.xdp(&Frame::tcp(CLIENT, 42001, NODE, DROP_PORT).bytes()).0,
            XDP_DROP
        );
        let dropped = f.service_stats(4);
        assert_eq!(
            (
                dropped.packets,
                dropped.drop_no_local_backend,
                dropped.drop_other
            ),
            (1, 1, 0),
            "dropped for want of a local endpoint"
        );
        assert_eq!(
            f.service_stats(99).packets,
            0,
            "no counters for an unknown service"
        );
    });
}
