//! Counters the end-to-end benchmark reads from the test cluster's
//! namespaces: the nodeport datapath's own (`nodeport-agent inspect stats
//! -o json`, the agent's contract, so the benchmark does not depend on the
//! layout of the `stats` map), the kernel's conntrack statistics of a node
//! (what kube-proxy's rules drop or fail to insert) and a pod's
//! `TcpExtPAWSTimewait`.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use nodeport_tests::{Cluster, Netns};

/// The datapath's counters of node `i` by name (summed over CPUs), as
/// `nodeport-agent inspect stats -o json` prints them:
/// `[{"counter": NAME, "packets": N}, ...]`.
pub fn datapath(cluster: &Cluster, i: usize) -> Result<BTreeMap<String, u64>> {
    let bpffs = cluster.node_bpffs(i);
    let out = cluster.agent_cli(
        i,
        &[
            "inspect",
            "stats",
            "--bpffs",
            &bpffs.to_string_lossy(),
            "-o",
            "json",
        ],
    );
    ensure!(
        out.status.success(),
        "nodeport-agent inspect stats on node {i} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    parse_stats(&out.stdout)
        .with_context(|| format!("reading nodeport-agent inspect stats -o json of node {i}"))
}

fn parse_stats(json: &[u8]) -> Result<BTreeMap<String, u64>> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    let rows = v.as_array().context("not a JSON array")?;
    let mut out = BTreeMap::new();
    for r in rows {
        let name = r["counter"].as_str().context("a row without `counter`")?;
        let n = r["packets"].as_u64().context("a row without `packets`")?;
        out.insert(name.to_string(), n);
    }
    Ok(out)
}

/// One datapath counter of node `i`; `None` if it cannot be read or the
/// datapath has no counter of that name (the reason is printed).
pub fn datapath_counter(cluster: &Cluster, i: usize, name: &str) -> Option<u64> {
    match datapath(cluster, i) {
        Ok(c) => {
            let v = c.get(name).copied();
            if v.is_none() {
                eprintln!("bench:   node {i}'s datapath has no counter {name}");
            }
            v
        }
        Err(e) => {
            eprintln!("bench:   {e:#}");
            None
        }
    }
}

/// Lines of `/proc/net/stat/nf_conntrack`: a header of names, then one line
/// of hexadecimal values per CPU.
fn parse_conntrack_stats(text: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut out = BTreeMap::new();
    for line in lines {
        for (name, v) in names.iter().zip(line.split_whitespace()) {
            let v = u64::from_str_radix(v, 16).unwrap_or(0);
            if *name == "entries" {
                // The same global count on every CPU's line.
                out.insert((*name).to_string(), v);
            } else {
                *out.entry((*name).to_string()).or_insert(0) += v;
            }
        }
    }
    out
}

/// What the kernel's conntrack of a namespace dropped or could not insert
/// (`insert_failed` — among them NAT port clashes — `drop` and
/// `early_drop` of `/proc/net/stat/nf_conntrack`, summed over CPUs); `None`
/// where conntrack is not loaded.
pub fn conntrack_drops(ns: &Netns) -> Option<u64> {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack"));
    let stats = parse_conntrack_stats(&text.ok()?);
    Some(
        ["insert_failed", "drop", "early_drop"]
            .iter()
            .map(|k| stats.get(*k).copied().unwrap_or(0))
            .sum(),
    )
}

/// `TcpExt: PAWSTimewait` of the namespace (read from the thread's own
/// view of `/proc/net`): SYNs its TIME_WAIT sockets refused because their
/// timestamps were older than the last connection's.
pub fn paws_timewait(ns: &Netns) -> u64 {
    ns.run(|| {
        let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap_or_default();
        netstat_value(&text, "TcpExt:", "PAWSTimewait").unwrap_or(0)
    })
}

fn netstat_value(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// `TcpExtPAWSTimewait` of every pod of the cluster, summed.
pub fn pods_paws(cluster: &Cluster) -> u64 {
    cluster.pods().map(|p| paws_timewait(p.netns())).sum()
}

/// How XDP is attached to a device, as `ip -j link show` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`XDP_ATTACHED_DRV`).
    Native,
    /// On the skb path (`XDP_ATTACHED_SKB`).
    Generic,
    /// Offloaded, or several programs at once.
    Other,
}

impl XdpMode {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Other => "offload/multi",
        }
    }
}

/// The XDP mode of `dev` in `ns`; `None` when no program is attached or
/// `ip` says nothing readable.
pub fn xdp_mode(ns: &Netns, dev: &str) -> Option<XdpMode> {
    let out = ns.try_exec("ip", &["-j", "link", "show", "dev", dev]);
    if !out.status.success() {
        return None;
    }
    parse_xdp_mode(&out.stdout)
}

fn parse_xdp_mode(json: &[u8]) -> Option<XdpMode> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    // XDP_ATTACHED_NONE 0, DRV 1, SKB 2, HW 3, MULTI 4 (linux/if_link.h).
    match v.get(0)?.get("xdp")?.get("mode")?.as_u64()? {
        1 => Some(XdpMode::Native),
        2 => Some(XdpMode::Generic),
        0 => None,
        _ => Some(XdpMode::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_stats_json() {
        let c = parse_stats(
            br#"[{"counter":"forward_remote","packets":12},{"counter":"drop_snat_exhausted","packets":0}]"#,
        )
        .expect("parses");
        assert_eq!(c["forward_remote"], 12);
        assert_eq!(c["drop_snat_exhausted"], 0);
        assert!(parse_stats(b"{}").is_err());
    }

    #[test]
    fn sums_conntrack_stats_over_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
0000002a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003 00000001 00000000 00000000  00000000 00000000 00000000 00000000\n\
0000002a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000000 00000010 00000000  00000000 00000000 00000000 00000000\n";
        let s = parse_conntrack_stats(text);
        assert_eq!(s["entries"], 42);
        assert_eq!(s["insert_failed"], 5);
        assert_eq!(s["drop"], 1);
        assert_eq!(s["early_drop"], 16);
    }

    #[test]
    fn reads_netstat_and_xdp_modes() {
        let text = "TcpExt: SyncookiesSent PAWSTimewait\nTcpExt: 0 7\nIpExt: X\nIpExt: 1\n";
        assert_eq!(netstat_value(text, "TcpExt:", "PAWSTimewait"), Some(7));
        assert_eq!(netstat_value(text, "TcpExt:", "Nope"), None);
        assert_eq!(
            parse_xdp_mode(br#"[{"ifname":"eth0","xdp":{"mode":2,"prog":{"id":7}}}]"#),
            Some(XdpMode::Generic)
        );
        assert_eq!(
            parse_xdp_mode(br#"[{"ifname":"eth0","xdp":{"mode":1,"prog":{"id":7}}}]"#),
            Some(XdpMode::Native)
        );
        assert_eq!(parse_xdp_mode(br#"[{"ifname":"eth0"}]"#), None);
    }
}
