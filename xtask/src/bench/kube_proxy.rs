//! The rules kube-proxy writes for the same Services, in its iptables mode
//! (`iptables-restore` input) and its nftables mode (`nft -f` input), so
//! that the benchmark compares nodeport against what kube-proxy would
//! program on the node.
//!
//! They follow kube-proxy's proxiers (pkg/proxy/iptables and
//! pkg/proxy/nftables, v1.31+) for NodePort Services with
//! `externalTrafficPolicy: Cluster` and ready endpoints: the
//! KUBE-SERVICES / KUBE-NODEPORTS / KUBE-EXT-* / KUBE-SVC-* / KUBE-SEP-*
//! chains with `statistic --mode random --probability` and the
//! KUBE-MARK-MASQ / KUBE-POSTROUTING masquerade mark; and the `kube-proxy`
//! nft table with its `service-ips` / `service-nodeports` verdict maps,
//! `numgen random` endpoint choice and `mark-for-masquerade`. Chain names
//! carry a hash of the service port name as kube-proxy's do (a different
//! hash function: only uniqueness matters). Load-balancer, external-IP,
//! firewall, affinity and no-endpoint rules are left out: the benchmark's
//! Services use none of them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::synthetic::{CLUSTER_CIDR, PortDef, SERVICE_CIDR, ServiceDef};

/// 64-bit FNV-1a.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `len` characters of base32 (RFC 4648 alphabet) of the hash of `s`, as
/// kube-proxy names its chains.
fn hash32(s: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h = fnv(s);
    let mut h2 = fnv(&format!("{s}#"));
    (0..len)
        .map(|_| {
            let c = ALPHABET[(h & 31) as usize];
            h = (h >> 5) | (h2 << 59);
            h2 >>= 5;
            char::from(c)
        })
        .collect()
}

/// kube-proxy's chain name suffix of a service port:
/// `servicePortName + protocol`.
fn port_hash(svc: &ServiceDef, port: &PortDef) -> String {
    hash32(
        &format!("{}{}", svc.port_name(port), port.proto.lower()),
        16,
    )
}

/// `iptables-restore` input for the filter and nat tables of a node.
#[must_use]
#[allow(clippy::too_many_lines, reason = "kube-proxy's rules, in order")]
pub fn iptables_restore(services: &[ServiceDef]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut services_rules = String::new();
    let mut nodeports_rules = String::new();

    for svc in services {
        for (index, port) in svc.ports.iter().enumerate() {
            let name = svc.port_name(port);
            let hash = port_hash(svc, port);
            let svc_chain = format!("KUBE-SVC-{hash}");
            let ext_chain = format!("KUBE-EXT-{hash}");
            let proto = port.proto.lower();
            let _ = writeln!(chains, ":{svc_chain} - [0:0]");
            let _ = writeln!(
                services_rules,
                "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {} --dport {} -j {svc_chain}",
                svc.cluster_ip, port.port
            );
            if let Some(node_port) = port.node_port {
                let _ = writeln!(chains, ":{ext_chain} - [0:0]");
                let _ = writeln!(
                    nodeports_rules,
                    "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext_chain}"
                );
                let _ = writeln!(
                    rules,
                    "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n-A {ext_chain} -j {svc_chain}"
                );
            }
            let _ = writeln!(
                rules,
                "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {} --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
                svc.cluster_ip, port.port
            );
            let endpoints = svc.endpoints_of(index);
            let n = endpoints.len();
            for (i, (addr, target)) in endpoints.iter().enumerate() {
                let sep = format!(
                    "KUBE-SEP-{}",
                    hash32(&format!("{name}{proto}{addr}:{target}"), 16)
                );
                let _ = writeln!(chains, ":{sep} - [0:0]");
                if i + 1 < n {
                    #[allow(clippy::cast_precision_loss, reason = "endpoint counts are small")]
                    let p = 1.0 / (n - i) as f64;
                    let _ = writeln!(
                        rules,
                        "-A {svc_chain} -m comment --comment \"{name} -> {addr}:{target}\" -m statistic --mode random --probability {p:.10} -j {sep}"
                    );
                } else {
                    let _ = writeln!(
                        rules,
                        "-A {svc_chain} -m comment --comment \"{name} -> {addr}:{target}\" -j {sep}"
                    );
                }
                let _ = writeln!(
                    rules,
                    "-A {sep} -m comment --comment {name} -s {addr}/32 -j KUBE-MARK-MASQ\n-A {sep} -m comment --comment {name} -m {proto} -p {proto} -j DNAT --to-destination {addr}:{target}"
                );
            }
        }
    }

    let mut out = String::with_capacity(chains.len() + rules.len() + services_rules.len() * 2);
    out.push_str(
        "*filter\n\
         :KUBE-EXTERNAL-SERVICES - [0:0]\n\
         :KUBE-FIREWALL - [0:0]\n\
         :KUBE-FORWARD - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-PROXY-FIREWALL - [0:0]\n\
         :KUBE-SERVICES - [0:0]\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A INPUT -j KUBE-FIREWALL\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -j KUBE-FIREWALL\n\
         -A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n\
         *nat\n\
         :KUBE-MARK-MASQ - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n\
         :KUBE-SERVICES - [0:0]\n",
    );
    out.push_str(&chains);
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    out.push_str(&nodeports_rules);
    out.push_str(&services_rules);
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// `nft -f` input: kube-proxy's `ip kube-proxy` table.
#[must_use]
#[allow(clippy::too_many_lines, reason = "kube-proxy's rules, in order")]
pub fn nft_ruleset(services: &[ServiceDef], node_ips: &[Ipv4Addr]) -> String {
    let mut out = String::new();
    out.push_str(
        "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
         add set ip kube-proxy cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }\n\
         add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }\n\
         add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }\n\
         add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }\n\
         add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }\n\
         add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }\n\
         add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }\n\
         add chain ip kube-proxy cluster-ips-check\n\
         add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }\n\
         add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }\n\
         add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }\n\
         add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }\n\
         add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }\n\
         add chain ip kube-proxy firewall-check\n\
         add chain ip kube-proxy mark-for-masquerade\n\
         add chain ip kube-proxy masquerading\n\
         add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
         add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n\
         add chain ip kube-proxy nodeport-endpoints-check\n\
         add chain ip kube-proxy reject-chain { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }\n\
         add chain ip kube-proxy services\n\
         add chain ip kube-proxy service-endpoints-check\n\
         add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n",
    );
    let _ = writeln!(
        out,
        "add rule ip kube-proxy cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
    );
    out.push_str(
        "add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check\n\
         add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check\n\
         add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check\n\
         add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check\n\
         add rule ip kube-proxy filter-input ct state new jump service-endpoints-check\n\
         add rule ip kube-proxy filter-output ct state new jump service-endpoints-check\n\
         add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check\n\
         add rule ip kube-proxy filter-output ct state new jump cluster-ips-check\n\
         add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
         add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n\
         add rule ip kube-proxy masquerading mark set mark xor 0x4000\n\
         add rule ip kube-proxy masquerading masquerade fully-random\n\
         add rule ip kube-proxy nat-output jump services\n\
         add rule ip kube-proxy nat-postrouting jump masquerading\n\
         add rule ip kube-proxy nat-prerouting jump services\n\
         add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add rule ip kube-proxy reject-chain reject\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
         add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n",
    );
    for ip in node_ips {
        let _ = writeln!(out, "add element ip kube-proxy nodeport-ips {{ {ip} }}");
    }

    // One transaction: every chain is added before a rule jumps to it.
    let mut chains = String::new();
    let mut rules = String::new();
    for svc in services {
        for (index, port) in svc.ports.iter().enumerate() {
            let hash = &port_hash(svc, port)[..8];
            let proto = port.proto.lower();
            let base = format!(
                "{}/{}/{proto}/{}",
                super::synthetic::NAMESPACE,
                svc.name,
                port.name
            );
            let svc_chain = format!("service-{hash}-{base}");
            let endpoints = svc.endpoints_of(index);
            let ep_chains: Vec<String> = endpoints
                .iter()
                .map(|(addr, target)| {
                    let h = &hash32(&format!("{base}{addr}:{target}"), 8);
                    format!("endpoint-{h}-{base}__{addr}/{target}")
                })
                .collect();
            let _ = writeln!(chains, "add chain ip kube-proxy {svc_chain}");
            let _ = writeln!(
                rules,
                "add rule ip kube-proxy {svc_chain} ip daddr {} {proto} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
                svc.cluster_ip, port.port
            );
            let vmap: Vec<String> = ep_chains
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{i} : goto {c}"))
                .collect();
            let _ = writeln!(
                rules,
                "add rule ip kube-proxy {svc_chain} numgen random mod {} vmap {{ {} }}",
                ep_chains.len(),
                vmap.join(" , ")
            );
            for (chain, (addr, target)) in ep_chains.iter().zip(&endpoints) {
                let _ = writeln!(chains, "add chain ip kube-proxy {chain}");
                let _ = writeln!(
                    rules,
                    "add rule ip kube-proxy {chain} ip saddr {addr} jump mark-for-masquerade\n\
                     add rule ip kube-proxy {chain} meta l4proto {proto} dnat to {addr}:{target}"
                );
            }
            let _ = writeln!(
                rules,
                "add element ip kube-proxy cluster-ips {{ {} }}\n\
                 add element ip kube-proxy service-ips {{ {} . {proto} . {} : goto {svc_chain} }}",
                svc.cluster_ip, svc.cluster_ip, port.port
            );
            if let Some(node_port) = port.node_port {
                let ext_chain = format!("external-{hash}-{base}");
                let _ = writeln!(chains, "add chain ip kube-proxy {ext_chain}");
                let _ = writeln!(
                    rules,
                    "add rule ip kube-proxy {ext_chain} jump mark-for-masquerade\n\
                     add rule ip kube-proxy {ext_chain} goto {svc_chain}\n\
                     add element ip kube-proxy service-nodeports {{ {proto} . {node_port} : goto {ext_chain} }}"
                );
            }
        }
    }
    out.push_str(&chains);
    out.push_str(&rules);
    out
}

#[cfg(test)]
mod tests {
    use super::super::synthetic::{EndpointDef, filler};
    use super::*;

    fn two() -> Vec<ServiceDef> {
        let ep = |a: [u8; 4], n: &str| EndpointDef {
            addr: Ipv4Addr::from(a),
            node: n.into(),
        };
        vec![
            filler(
                0,
                Some(30_000),
                8080,
                vec![ep([10, 244, 1, 10], "node1"), ep([10, 244, 2, 10], "node2")],
            ),
            filler(1, None, 8080, vec![ep([10, 244, 1, 11], "node1")]),
        ]
    }

    #[test]
    fn iptables_rules_have_kube_proxy_shape() {
        let text = iptables_restore(&two());
        assert!(text.starts_with("*filter\n"));
        assert_eq!(text.matches("COMMIT\n").count(), 2);
        // ClusterIP rules for both, a NodePort rule for the first only.
        assert_eq!(
            text.matches("-A KUBE-SERVICES -m comment --comment \"bench/svc-")
                .count(),
            2
        );
        assert_eq!(text.matches("-A KUBE-NODEPORTS ").count(), 1);
        assert!(text.contains("--dport 30000 -j KUBE-EXT-"));
        // Two endpoints: the first with probability 1/2, the last without.
        assert!(
            text.contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-")
        );
        assert!(text.contains("-j DNAT --to-destination 10.244.2.10:8080"));
        assert!(text.contains("-j MASQUERADE --random-fully"));
        // The NodePort jump is the last rule of KUBE-SERVICES.
        let services: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .collect();
        assert!(
            services
                .last()
                .is_some_and(|l| l.contains("-j KUBE-NODEPORTS"))
        );
        // Every nat chain used is declared once in the nat table.
        let nat = &text[text.find("*nat\n").unwrap()..];
        for line in nat.lines().filter(|l| l.starts_with("-A KUBE-")) {
            let chain = line.split_whitespace().nth(1).unwrap();
            assert_eq!(
                nat.matches(&format!(":{chain} - [0:0]\n")).count(),
                1,
                "{chain}"
            );
        }
    }

    #[test]
    fn nft_rules_have_kube_proxy_shape() {
        let text = nft_ruleset(&two(), &[Ipv4Addr::new(10, 200, 0, 11)]);
        assert!(text.contains("add element ip kube-proxy nodeport-ips { 10.200.0.11 }"));
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
        assert!(text.contains("numgen random mod 1 vmap"));
        assert!(text.contains(
            "add element ip kube-proxy service-nodeports { tcp . 30000 : goto external-"
        ));
        assert_eq!(
            text.matches("add element ip kube-proxy service-ips")
                .count(),
            2
        );
        assert!(text.contains("meta l4proto tcp dnat to 10.244.1.10:8080"));
    }

    #[test]
    fn chain_hashes_are_stable_and_distinct() {
        assert_eq!(hash32("a", 16), hash32("a", 16));
        assert_ne!(hash32("a", 16), hash32("b", 16));
        assert_eq!(hash32("x", 16).len(), 16);
    }
}
