//! `nodeport-agent inspect`: what the pinned maps hold, as a table or JSON.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use nodeport_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, CT_F_SNAT, FRONTEND_F_AFFINITY, FRONTEND_F_DROP_EMPTY,
    FRONTEND_F_LOCAL_ONLY, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SlotKey,
};
use serde_json::json;

use crate::cli::{InspectArgs, InspectWhat, OutputFormat};
use crate::maps::fill::PinnedMaps;
use crate::maps::{MapWriter as _, bpf::BpfMaps};

fn ip(addr_be: u32) -> Ipv4Addr {
    nodeport_common::addr::from_be(addr_be)
}

fn proto(p: u8) -> String {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_SCTP => "SCTP".into(),
        other => other.to_string(),
    }
}

fn flag_names(flags: u32, table: &[(u32, &'static str)]) -> Vec<&'static str> {
    table
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Why `inspect` could not print.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("opening the maps pinned under {}", path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: crate::maps::MapError,
    },
    #[error(transparent)]
    Map(#[from] crate::maps::MapError),
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
}

type Result<T> = std::result::Result<T, InspectError>;

pub fn inspect(args: &InspectArgs) -> Result<()> {
    let open_err = |source| InspectError::Open {
        path: args.bpffs.clone(),
        source,
    };
    let maps = BpfMaps::open(&args.bpffs).map_err(open_err)?;
    let value = match args.what {
        InspectWhat::Services => services(&maps)?,
        InspectWhat::Backends => backends(&maps)?,
        InspectWhat::Conntrack => conntrack(&maps)?,
        InspectWhat::Stats => stats(&maps, &PinnedMaps::open(&args.bpffs).map_err(open_err)?)?,
        InspectWhat::Maps => fill(&PinnedMaps::open(&args.bpffs).map_err(open_err)?)?,
    };
    let columns: &[&str] = match args.what {
        InspectWhat::Services => &[
            "frontend",
            "service_id",
            "backend_count",
            "flags",
            "affinity_timeout_s",
            "packets",
            "bytes",
            "new_flows",
            "rejected",
            "drops",
            "backends",
        ],
        InspectWhat::Backends => &["backend_id", "address", "flags"],
        InspectWhat::Conntrack => &[
            "proto",
            "client",
            "frontend",
            "service_id",
            "backend_id",
            "snat",
        ],
        InspectWhat::Stats => &["counter", "packets"],
        InspectWhat::Maps => &["map", "entries", "max_entries", "fill"],
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        OutputFormat::Table => print!("{}", table(&value, columns)),
    }
    Ok(())
}

/// Every frontend with its backends and its counters (`service_stats`,
/// summed over CPUs; drops of every reason added up in `drops`, by reason
/// in JSON).
fn services(maps: &BpfMaps) -> Result<serde_json::Value> {
    let state = maps.read_state()?;
    let counters = maps.service_stats()?;
    let mut rows = Vec::new();
    for (key, fe) in &state.frontends {
        let frontend = if key.addr_be == 0 {
            format!("*:{}/{}", u16::from_be(key.port_be), proto(key.proto))
        } else {
            format!(
                "{}:{}/{}",
                ip(key.addr_be),
                u16::from_be(key.port_be),
                proto(key.proto)
            )
        };
        let backends: Vec<String> = (0..fe.backend_count)
            .filter_map(|slot| {
                let s = state.slots.get(&SlotKey {
                    service_id: fe.service_id,
                    slot,
                })?;
                let b = state.backends.get(&nodeport_common::BackendKey {
                    backend_id: s.backend_id,
                })?;
                Some(format!("{}:{}", ip(b.addr_be), u16::from_be(b.port_be)))
            })
            .collect();
        let st = counters.get(&fe.service_id).copied().unwrap_or_default();
        rows.push(json!({
            "frontend": frontend,
            "service_id": fe.service_id,
            "backend_count": fe.backend_count,
            "flags": flag_names(fe.flags, &[
                (FRONTEND_F_LOCAL_ONLY, "local"),
                (FRONTEND_F_AFFINITY, "affinity"),
                (FRONTEND_F_DROP_EMPTY, "drop-empty"),
            ]).join(","),
            "affinity_timeout_s": fe.affinity_timeout_s,
            "packets": st.packets,
            "bytes": st.bytes,
            "new_flows": st.new_flows,
            "rejected": st.rejected,
            "drops": st.drop_no_local_backend
                + st.drop_source_range
                + st.drop_snat_exhausted
                + st.drop_other,
            "drops_by_reason": {
                "no_local_backend": st.drop_no_local_backend,
                "source_range": st.drop_source_range,
                "snat_exhausted": st.drop_snat_exhausted,
                "other": st.drop_other,
            },
            "backends": backends.join(" "),
        }));
    }
    Ok(serde_json::Value::Array(rows))
}

fn backends(maps: &BpfMaps) -> Result<serde_json::Value> {
    let state = maps.read_state()?;
    let rows = state
        .backends
        .iter()
        .map(|(k, b)| {
            json!({
                "backend_id": k.backend_id,
                "address": format!("{}:{}", ip(b.addr_be), u16::from_be(b.port_be)),
                "flags": flag_names(u32::from(b.flags), &[
                    (u32::from(BACKEND_F_LOCAL), "local"),
                    (u32::from(BACKEND_F_TERMINATING), "terminating"),
                ]).join(","),
            })
        })
        .collect();
    Ok(serde_json::Value::Array(rows))
}

fn conntrack(maps: &BpfMaps) -> Result<serde_json::Value> {
    let rows = maps
        .conntrack()?
        .into_iter()
        .map(|(k, e)| {
            json!({
                "proto": proto(k.proto),
                "client": format!("{}:{}", ip(k.saddr_be), u16::from_be(k.sport_be)),
                "frontend": format!("{}:{}", ip(k.daddr_be), u16::from_be(k.dport_be)),
                "service_id": e.service_id,
                "backend_id": e.backend_id,
                "snat": if e.flags & CT_F_SNAT != 0 {
                    format!("{}:{}", ip(e.snat_addr_be), u16::from_be(e.snat_port_be))
                } else {
                    String::from("-")
                },
            })
        })
        .collect();
    Ok(serde_json::Value::Array(rows))
}

/// The per-reason counters, then per device the frames sent back out that
/// the kernel transmitted or dropped (`tx_sent:DEV`, `tx_failed:DEV`, with
/// `xdp_mode:DEV:MODE` = 1), then the SNAT pool size and the ports each
/// remote backend holds (`snat_ports_in_use:BACKEND@NODE_ADDR`).
fn stats(maps: &BpfMaps, pinned: &PinnedMaps) -> Result<serde_json::Value> {
    let mut rows: Vec<serde_json::Value> = maps
        .stats()?
        .into_iter()
        .map(|(name, v)| json!({ "counter": name, "packets": v }))
        .collect();
    let f = crate::figures::read(maps, pinned)?;
    for d in &f.devices {
        rows.push(
            json!({ "counter": format!("xdp_mode:{}:{}", d.device, d.xdp_mode), "packets": 1 }),
        );
        rows.push(json!({ "counter": format!("tx_sent:{}", d.device), "packets": d.tx_sent }));
        rows.push(json!({ "counter": format!("tx_failed:{}", d.device), "packets": d.tx_failed }));
    }
    rows.push(json!({ "counter": "snat_pool_ports", "packets": f.snat.pool_size }));
    for b in &f.snat.backends {
        rows.push(json!({
            "counter": format!("snat_ports_in_use:{}@{}", b.backend, b.node_addr),
            "packets": b.ports_in_use,
        }));
    }
    Ok(serde_json::Value::Array(rows))
}

/// Every map but the arrays: its entries, its capacity and the share of
/// it in use (`fill`, 0 to 1, what `nodeport_bpf_map_pressure` exports).
fn fill(pinned: &PinnedMaps) -> Result<serde_json::Value> {
    let rows = pinned
        .read()?
        .into_iter()
        .map(|m| {
            json!({
                "map": m.map,
                "entries": m.entries,
                "max_entries": m.max_entries,
                "fill": (m.ratio() * 1000.0).round() / 1000.0,
            })
        })
        .collect();
    Ok(serde_json::Value::Array(rows))
}

/// Renders an array of flat JSON objects as an aligned text table.
fn table(value: &serde_json::Value, cols: &[&str]) -> String {
    let Some(rows) = value.as_array() else {
        return String::new();
    };
    if rows.is_empty() {
        return "(empty)\n".into();
    }
    let cell = |r: &serde_json::Value, c: &str| match &r[c] {
        serde_json::Value::String(s) if s.is_empty() => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let mut out = String::new();
    for (c, w) in cols.iter().zip(&widths) {
        let _ = write!(out, "{:<w$}  ", c.to_uppercase());
    }
    out.push('\n');
    for r in rows {
        for (c, w) in cols.iter().zip(&widths) {
            let _ = write!(out, "{:<w$}  ", cell(r, c));
        }
        out.push('\n');
    }
    out
}
