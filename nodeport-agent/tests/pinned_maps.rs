//! The loader's pins: every map pinned under the bpffs root with BTF, so
//! `bpftool map dump pinned` prints field names; a second load adopts the
//! pinned maps (their contents survive); `cleanup` removes every pin. And
//! the BTF of the built object agrees with `nodeport_common`'s layouts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use nodeport_agent::loader::{self, Datapath, MapSizes};
use nodeport_agent::maps::fill::PinnedMaps;
use nodeport_agent::maps::{MapWriter as _, TableWrite, Write, bpf::BpfMaps};
use nodeport_common::{
    CtEntry, FlowKey, Frontend, FrontendKey, LAYOUTS, PROTO_TCP, RevNat, ServiceStats,
    ServiceStatsKey, ServiceStatsSlot, SourceRange, SourceRangeKey, names,
};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "these tests load BPF programs and pin maps, which needs root: run them as root, e.g. `cargo xtask test`"
    );
}

fn bpftool(args: &[&str]) -> String {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool is installed (`cargo xtask test` installs it)");
    assert!(
        out.status.success(),
        "bpftool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique bpffs root, removed (with its pins) on drop.
struct Root(PathBuf);
impl Root {
    fn new() -> Self {
        let mut b = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .expect("urandom");
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/np-test-{:08x}",
            u32::from_ne_bytes(b)
        )))
    }
}
impl Drop for Root {
    fn drop(&mut self) {
        let _ = loader::cleanup(&self.0);
    }
}

fn frontend(port: u16) -> (FrontendKey, Frontend) {
    (
        FrontendKey {
            addr_be: 0,
            port_be: port.to_be(),
            proto: PROTO_TCP,
            pad: 0,
        },
        Frontend {
            service_id: u32::from(port),
            backend_count: 1,
            flags: 0,
            affinity_timeout_s: 0,
        },
    )
}

/// `write_all` carries runs of puts in batches: the map ends up holding
/// exactly what single writes would leave, and a full map stops the run
/// at the first entry that does not fit, with that entry's error.
#[test]
fn batched_writes_equal_single_writes_and_stop_where_the_map_is_full() {
    require_root();
    let root = Root::new();
    let sizes = MapSizes {
        frontends: 1000,
        ..MapSizes::default()
    };
    let _dp = Datapath::load(&root.0, sizes).expect("load and pin");
    let mut maps = BpfMaps::open(&root.0).expect("open pinned maps");

    // A delete of an absent key, then more puts than the map holds.
    let (absent, _) = frontend(1);
    let mut writes = vec![TableWrite::Frontend(Write::Delete(absent))];
    writes.extend((2..=1501).map(|p| {
        let (k, v) = frontend(p);
        TableWrite::Frontend(Write::Put(k, v))
    }));
    let stopped = maps
        .write_all(&writes)
        .expect_err("1,500 puts do not fit a map of 1,000");
    assert_eq!(
        stopped.written, 1001,
        "the delete and 1,000 puts went in, the next put failed: {}",
        stopped.error
    );
    assert_eq!(stopped.error.map, names::FRONTENDS);
    let state = maps.read_state().expect("read state");
    let expected: BTreeMap<_, _> = (2..=1001).map(frontend).collect();
    assert_eq!(
        state.frontends, expected,
        "the map holds the first 1,000 puts"
    );
    assert_eq!(
        maps.batched_entries(),
        1000,
        "the puts went in batches (Linux 5.6 and later take them)"
    );

    // Deletes and puts mixed: the outcome equals writing them one by one.
    let mut writes = Vec::new();
    for p in (2..=1001).step_by(2) {
        writes.push(TableWrite::Frontend(Write::Delete(frontend(p).0)));
    }
    for p in 3000..3300 {
        let (k, v) = frontend(p);
        writes.push(TableWrite::Frontend(Write::Put(k, v)));
    }
    writes.push(TableWrite::Frontend(Write::Delete(frontend(3).0)));
    maps.write_all(&writes).expect("mixed writes fit");
    let state = maps.read_state().expect("read state");
    let expected: BTreeMap<_, _> = (5..=1001)
        .step_by(2)
        .chain(3000..3300)
        .map(frontend)
        .collect();
    assert_eq!(
        state.frontends, expected,
        "deletes and puts applied in order"
    );
}

/// Writes `service_stats` entries as the datapath makes them: each value
/// on every CPU.
fn put_counters(root: &Root, entries: &[(ServiceStatsKey, ServiceStats)]) {
    let data = aya::maps::MapData::from_pin(root.0.join(names::SERVICE_STATS))
        .expect("open service_stats");
    let mut stats: aya::maps::PerCpuHashMap<_, ServiceStatsKey, ServiceStats> =
        aya::maps::PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(data))
            .expect("a per-CPU hash");
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    for &(key, value) in entries {
        let values = aya::maps::PerCpuValues::try_from(vec![value; cpus]).expect("per CPU");
        stats.insert(key, values, 0).expect("insert counters");
    }
}

/// Writes `entries` into their `svc_stats_cache` slots, on every CPU.
fn put_cached(root: &Root, entries: &[(ServiceStatsKey, ServiceStats)]) {
    let data = aya::maps::MapData::from_pin(root.0.join(names::SERVICE_STATS_CACHE))
        .expect("open svc_stats_cache");
    let mut cache: aya::maps::PerCpuArray<_, ServiceStatsSlot> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .expect("a per-CPU array");
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    for &(key, stats) in entries {
        let slot = ServiceStatsSlot { key, stats };
        let values = aya::maps::PerCpuValues::try_from(vec![slot; cpus]).expect("per CPU");
        cache
            .set(ServiceStatsSlot::index(&key), values, 0)
            .expect("write a cache slot");
    }
}

/// The fill of every map but the arrays is its exact entry count, read in
/// batches from hash maps (a map of more entries than one batch holds
/// included), key by key from the source-range trie, and from per-CPU
/// maps; capacities are what `--map-size` asked for.
#[test]
fn fill_counts_the_entries_of_every_kind_of_map() {
    require_root();
    let root = Root::new();
    let sizes = MapSizes::with(&[(names::FRONTENDS, 20_000), (names::CONNTRACK, 777)]);
    let _dp = Datapath::load(&root.0, sizes).expect("load and pin");
    let mut maps = BpfMaps::open(&root.0).expect("open pinned maps");
    let mut writes: Vec<TableWrite> = (1..=9_000)
        .map(|p| {
            let (k, v) = frontend(p);
            TableWrite::Frontend(Write::Put(k, v))
        })
        .collect();
    writes.extend((0..5u32).map(|i| {
        TableWrite::SourceRange(Write::Put(
            SourceRangeKey {
                prefix_len: 32 + 24,
                service_id: 7,
                addr_be: u32::from(std::net::Ipv4Addr::new(10, 0, u8::try_from(i).unwrap(), 0))
                    .to_be(),
            },
            SourceRange { allowed: 1 },
        ))
    }));
    maps.write_all(&writes).expect("writes fit");
    let none = |service_id| ServiceStatsKey {
        service_id,
        backend_id: 0,
    };
    put_counters(
        &root,
        &[1, 2, 3].map(|id| (none(id), ServiceStats::default())),
    );

    let fill: BTreeMap<&str, (u64, u32)> = PinnedMaps::open(&root.0)
        .expect("open pinned maps for counting")
        .read()
        .expect("count entries")
        .into_iter()
        .map(|m| (m.map, (m.entries, m.max_entries)))
        .collect();
    assert_eq!(fill[names::FRONTENDS], (9_000, 20_000), "{fill:?}");
    assert_eq!(fill[names::SOURCE_RANGES].0, 5, "{fill:?}");
    assert_eq!(fill[names::SERVICE_STATS].0, 3, "{fill:?}");
    assert_eq!(fill[names::CONNTRACK], (0, 777), "{fill:?}");
    let arrays = [
        names::STATS,
        names::CONFIG,
        names::TX_ARMED,
        names::XDP_OPTIONS,
        names::XDP_RESTORE,
        names::TC_OPTIONS,
        names::OPTIONS_STASH,
        names::SERVICE_STATS_CACHE,
    ];
    for array in arrays {
        assert!(
            !fill.contains_key(array),
            "arrays are always full: {fill:?}"
        );
    }
    assert_eq!(
        fill.len(),
        names::ALL.len() - arrays.len(),
        "every map but the arrays: {fill:?}"
    );
}

/// Walks read every entry of maps larger than one batch: the conntrack and
/// reverse-NAT entries the flow purges and the SNAT pool figures see are
/// exactly those in the maps.
#[test]
fn walks_read_every_entry_of_maps_larger_than_a_batch() {
    require_root();
    let root = Root::new();
    let sizes = MapSizes::with(&[(names::CONNTRACK, 20_000), (names::REV_NAT, 20_000)]);
    let _dp = Datapath::load(&root.0, sizes).expect("load and pin");
    let open = |name: &str| {
        let data = aya::maps::MapData::from_pin(root.0.join(name)).expect("open pinned map");
        aya::maps::Map::LruHashMap(data)
    };
    let mut conntrack: aya::maps::HashMap<_, FlowKey, CtEntry> =
        aya::maps::HashMap::try_from(open(names::CONNTRACK)).expect("conntrack is a hash");
    let mut rev_nat: aya::maps::HashMap<_, FlowKey, RevNat> =
        aya::maps::HashMap::try_from(open(names::REV_NAT)).expect("rev_nat is a hash");
    let flow = |i: u32| FlowKey {
        saddr_be: (0x0a00_0000 | i).to_be(),
        daddr_be: 0xc0a8_0101_u32.to_be(),
        sport_be: u16::try_from(i % 60_000 + 1).unwrap().to_be(),
        dport_be: 30_080u16.to_be(),
        proto: nodeport_common::PROTO_UDP,
        pad: [0; 3],
    };
    let mut want_ct = BTreeMap::new();
    let mut want_rev = BTreeMap::new();
    for i in 0..9_000u32 {
        let ct = CtEntry {
            backend_id: i % 7 + 1,
            service_id: i % 3 + 1,
            snat_addr_be: 0,
            snat_port_be: 0,
            flags: 0,
            pad: 0,
            last_seen_ns: u64::from(i),
            backend_addr_be: 0x0a01_0001_u32.to_be(),
            backend_port_be: 8080u16.to_be(),
            pad2: 0,
        };
        conntrack.insert(flow(i), ct, 0).expect("insert conntrack");
        want_ct.insert(flow(i), ct);
        let rev = RevNat {
            saddr_be: 0xc0a8_0101_u32.to_be(),
            daddr_be: (0x0a00_0000 | i).to_be(),
            sport_be: 30_080u16.to_be(),
            dport_be: flow(i).sport_be,
        };
        rev_nat
            .insert(flow(i + 100_000), rev, 0)
            .expect("insert rev_nat");
        want_rev.insert(flow(i + 100_000), rev);
    }

    let maps = BpfMaps::open(&root.0).expect("open pinned maps");
    let got_ct: BTreeMap<FlowKey, CtEntry> = maps
        .conntrack()
        .expect("walk conntrack")
        .into_iter()
        .collect();
    assert_eq!(got_ct.len(), 9_000, "every conntrack entry, each once");
    assert!(got_ct == want_ct, "conntrack read back as written");
    let got_rev: Vec<(FlowKey, RevNat)> = maps.rev_nat().expect("walk rev_nat");
    assert_eq!(got_rev.len(), 9_000, "every reverse-NAT entry, each once");
    assert!(
        got_rev.into_iter().collect::<BTreeMap<_, _>>() == want_rev,
        "rev_nat read back as written"
    );
}

/// Forgetting a freed backend's counters keeps the sums of the services
/// that counted towards it (its entries and cache slots move to each
/// service's no-backend entry); forgetting a service deletes all of its
/// entries and empties its slots; other slots are kept.
#[test]
fn forgetting_a_backend_keeps_its_services_sums() {
    require_root();
    let root = Root::new();
    let _dp = Datapath::load(&root.0, MapSizes::default()).expect("load and pin");
    let mut maps = BpfMaps::open(&root.0).expect("open pinned maps");
    let entry = |service_id, backend_id, packets, rejected| {
        let key = ServiceStatsKey {
            service_id,
            backend_id,
        };
        let value = ServiceStats {
            packets,
            bytes: packets * 100,
            new_flows: 1,
            rejected,
            ..ServiceStats::default()
        };
        (key, value)
    };
    put_counters(
        &root,
        &[entry(7, 3, 5, 0), entry(7, 0, 1, 1), entry(8, 3, 4, 0)],
    );
    let slot_keys = [entry(7, 3, 2, 0), entry(9, 4, 6, 0)];
    assert_ne!(
        ServiceStatsSlot::index(&slot_keys[0].0),
        ServiceStatsSlot::index(&slot_keys[1].0)
    );
    put_cached(&root, &slot_keys);
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    let (before, backends) = maps.counter_sums().expect("sums");
    assert_eq!(
        backends[&3].packets,
        11 * cpus as u64,
        "backend 3 counts both services, in the hash and in the cache"
    );
    assert_eq!(
        before[&7].packets,
        8 * cpus as u64,
        "service 7: hash and cache"
    );
    assert_eq!(
        before[&9].packets,
        6 * cpus as u64,
        "service 9: the cache only"
    );

    maps.forget_counters(&BTreeSet::new(), &BTreeSet::from([3]))
        .expect("forget backend 3");
    let (services, backends) = maps.counter_sums().expect("sums");
    assert_eq!(services, before, "the services' sums are kept");
    assert!(
        !backends.contains_key(&3),
        "backend 3 has no counters: {backends:?}"
    );
    assert_eq!(
        maps.counter_ids().expect("ids"),
        (BTreeSet::from([7, 8, 9]), BTreeSet::from([4]))
    );

    maps.forget_counters(&BTreeSet::from([7, 9]), &BTreeSet::new())
        .expect("forget services 7 and 9");
    let (services, backends) = maps.counter_sums().expect("sums");
    assert_eq!(services.keys().copied().collect::<Vec<_>>(), [8]);
    assert_eq!(services[&8], before[&8]);
    assert!(backends.is_empty(), "{backends:?}");
}

/// `--map-size` takes only the maps it can size and capacities from 1 to
/// 2^24.
#[test]
fn map_sizes_parse_with_clear_errors() {
    assert_eq!(
        loader::parse_map_size("conntrack=1048576"),
        Ok((names::CONNTRACK, 1 << 20))
    );
    assert_eq!(
        loader::parse_map_size(" rev_nat = 10 "),
        Ok((names::REV_NAT, 10))
    );
    for (bad, says) in [
        ("conntrack", "is not NAME=ENTRIES"),
        (
            "stats=10",
            "is not a map that can be sized (one of: frontends, backend_slots",
        ),
        ("conntrack=0", "from 1 to 16777216"),
        ("conntrack=16777217", "from 1 to 16777216"),
        ("conntrack=-1", "from 1 to 16777216"),
    ] {
        let e = loader::parse_map_size(bad).expect_err(bad).to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    let sizes = MapSizes::with(&[(names::AFFINITY, 5), (names::FRAGMENTS, 6)]);
    assert_eq!((sizes.affinity, sizes.fragments), (5, 6));
    assert_eq!(sizes.conntrack, MapSizes::default().conntrack);
}

#[test]
fn maps_are_pinned_with_field_names_and_adopted_on_reload() {
    require_root();
    let root = Root::new();
    let key = FrontendKey {
        addr_be: 0,
        port_be: 31000u16.to_be(),
        proto: PROTO_TCP,
        pad: 0,
    };
    let value = Frontend {
        service_id: 7,
        backend_count: 2,
        flags: 0,
        affinity_timeout_s: 0,
    };
    {
        let _dp = Datapath::load(&root.0, MapSizes::default()).expect("load and pin");
        let mut maps = BpfMaps::open(&root.0).expect("open pinned maps");
        maps.write(&TableWrite::Frontend(Write::Put(key, value)))
            .expect("write frontend");
    }
    for name in names::ALL {
        assert!(root.0.join(name).exists(), "map {name} is pinned");
    }

    let dump = bpftool(&[
        "map",
        "dump",
        "pinned",
        &root.0.join(names::FRONTENDS).to_string_lossy(),
    ]);
    for field in [
        "addr_be",
        "port_be",
        "proto",
        "service_id",
        "backend_count",
        "flags",
        "affinity_timeout_s",
    ] {
        assert!(
            dump.contains(&format!("\"{field}\"")),
            "bpftool dump names field {field}:\n{dump}"
        );
    }

    // A new load adopts the pinned maps: the entry is still there.
    let _dp = Datapath::load(&root.0, MapSizes::default()).expect("reload");
    let maps = BpfMaps::open(&root.0).expect("reopen");
    let state = maps.read_state().expect("read state");
    assert_eq!(
        state.frontends.get(&key),
        Some(&value),
        "pinned map adopted, contents kept"
    );
    drop(maps);

    let removed = loader::cleanup(&root.0).expect("cleanup");
    assert!(
        removed.len() >= names::ALL.len(),
        "cleanup removed every map pin: {removed:?}"
    );
    assert!(!root.0.exists(), "cleanup removed the root");
}

/// Parses `bpftool btf dump file … format raw` into struct → (size, field → byte offset).
fn btf_structs(raw: &str) -> BTreeMap<String, (usize, BTreeMap<String, usize>)> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in raw.lines() {
        if line.starts_with('[') {
            current = None;
            if let Some(rest) = line.split("STRUCT '").nth(1) {
                let name = rest.split('\'').next().unwrap_or_default().to_string();
                let size = rest
                    .split("size=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                out.insert(name.clone(), (size, BTreeMap::new()));
                current = Some(name);
            }
        } else if let Some(name) = &current {
            let t = line.trim();
            if let (Some(field), Some(bits)) = (
                t.strip_prefix('\'').and_then(|s| s.split('\'').next()),
                t.split("bits_offset=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next()),
            ) {
                let bits: usize = bits.parse().expect("bits_offset");
                out.get_mut(name)
                    .expect("struct")
                    .1
                    .insert(field.to_string(), bits / 8);
            }
        }
    }
    out
}

#[test]
fn btf_of_the_object_matches_the_shared_layouts() {
    let dir = std::env::temp_dir().join(format!("np-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let obj = dir.join("nodeport.o");
    std::fs::write(&obj, loader::object()).expect("write object");
    let raw = bpftool(&[
        "btf",
        "dump",
        "file",
        &obj.to_string_lossy(),
        "format",
        "raw",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let structs = btf_structs(&raw);
    for (name, size, fields) in LAYOUTS {
        let (btf_size, btf_fields) = structs
            .get(*name)
            .unwrap_or_else(|| panic!("struct {name} is missing from the object's BTF"));
        assert_eq!(btf_size, size, "size of {name}");
        for (field, offset) in *fields {
            assert_eq!(
                btf_fields.get(*field),
                Some(offset),
                "offset of {name}.{field} (BTF has {btf_fields:?})"
            );
        }
        assert_eq!(
            btf_fields.len(),
            fields.len(),
            "field count of {name}: {btf_fields:?}"
        );
    }
}
