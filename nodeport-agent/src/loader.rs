//! Loading the embedded datapath object: maps created (or adopted) and
//! pinned under the bpffs root, programs attached to the node's devices
//! with their links pinned, so the datapath keeps serving while the agent
//! is down and a new agent takes it over.
//!
//! Layout under the root:
//! - `<map name>` for every map (`frontends`, `backends`, ...);
//! - `links/xdp-<ifname>`, `links/tc-egress-<ifname>`,
//!   `links/tc-ingress-<ifname>` and `links/cgroup-<program>`.
//!
//! The transmit tracepoints (`device_tx` counters) are attached for as
//! long as the agent runs; they are diagnostics, not part of the datapath.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, ProgramArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramFd, SchedClassifier, TcAttachType,
        TracePoint, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
        xdp::XdpLink,
    },
};
use nodeport_common::{MAP_SIZES, capacity, names, programs};
use tracing::{info, warn};

use crate::netlink::{self, XdpAttached};
use crate::xdp_mode::Mode;

/// The datapath object built by `cargo xtask build-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NODEPORT_EBPF_OBJECT"));

/// The embedded datapath object (ELF with BTF), for loading and for tests
/// that run its programs through `BPF_PROG_TEST_RUN`.
#[must_use]
pub fn object() -> &'static [u8] {
    OBJECT
}

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bpffs root {path}: {source}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the datapath object (maps pinned under {root})")]
    Load {
        root: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the object")]
    MissingMap { name: &'static str },
    #[error("map {map}, index {index}: {source}")]
    ProgramArray {
        map: &'static str,
        index: u32,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("attaching {what} to {iface}: {source}")]
    Attach {
        what: &'static str,
        iface: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How XDP is attached (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
    /// Native, falling back to generic with a warning.
    Auto,
}

/// Map capacities, overriding the object's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub frontends: u32,
    pub backend_slots: u32,
    pub backends: u32,
    pub conntrack: u32,
    pub rev_nat: u32,
    pub affinity: u32,
    pub fragments: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            frontends: capacity::FRONTENDS,
            backend_slots: capacity::BACKEND_SLOTS,
            backends: capacity::BACKENDS,
            conntrack: capacity::CONNTRACK,
            rev_nat: capacity::REV_NAT,
            affinity: capacity::AFFINITY,
            fragments: capacity::FRAGMENTS,
        }
    }
}

/// The largest capacity `--map-size` takes (2^24 entries).
pub const MAX_MAP_SIZE: u32 = 1 << 24;

/// A `--map-size` that does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapSizeError {
    #[error("`{0}` is not NAME=ENTRIES")]
    Shape(String),
    #[error("`{0}` is not a map that can be sized (one of: {known})", known = MapSizes::NAMES.join(", "))]
    Name(String),
    #[error("`{0}` is not a number of entries from 1 to {MAX_MAP_SIZE}")]
    Entries(String),
}

impl MapSizes {
    /// The maps `--map-size` sizes.
    pub const NAMES: [&'static str; 7] = [
        names::FRONTENDS,
        names::BACKEND_SLOTS,
        names::BACKENDS,
        names::CONNTRACK,
        names::REV_NAT,
        names::AFFINITY,
        names::FRAGMENTS,
    ];

    /// Every sized map with its capacity.
    #[must_use]
    pub fn entries(&self) -> [(&'static str, u32); 7] {
        [
            (names::FRONTENDS, self.frontends),
            (names::BACKEND_SLOTS, self.backend_slots),
            (names::BACKENDS, self.backends),
            (names::CONNTRACK, self.conntrack),
            (names::REV_NAT, self.rev_nat),
            (names::AFFINITY, self.affinity),
            (names::FRAGMENTS, self.fragments),
        ]
    }

    /// The defaults with each `(map, entries)` of `overrides` in place.
    #[must_use]
    pub fn with(overrides: &[(&'static str, u32)]) -> Self {
        let mut sizes = Self::default();
        for &(name, n) in overrides {
            let field = match name {
                names::FRONTENDS => &mut sizes.frontends,
                names::BACKEND_SLOTS => &mut sizes.backend_slots,
                names::BACKENDS => &mut sizes.backends,
                names::CONNTRACK => &mut sizes.conntrack,
                names::REV_NAT => &mut sizes.rev_nat,
                names::AFFINITY => &mut sizes.affinity,
                names::FRAGMENTS => &mut sizes.fragments,
                _ => continue,
            };
            *field = n;
        }
        sizes
    }
}

/// Parses one `NAME=ENTRIES` of `--map-size`.
pub fn parse_map_size(s: &str) -> Result<(&'static str, u32), MapSizeError> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| MapSizeError::Shape(s.to_string()))?;
    let name = MapSizes::NAMES
        .into_iter()
        .find(|m| *m == name.trim())
        .ok_or_else(|| MapSizeError::Name(name.to_string()))?;
    let n: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_MAP_SIZE).contains(n))
        .ok_or_else(|| MapSizeError::Entries(n.to_string()))?;
    Ok((name, n))
}

/// The loaded datapath; dropping it leaves maps and links pinned.
pub struct Datapath {
    ebpf: Ebpf,
    root: PathBuf,
    /// The program arrays filled since the load (once each, not per device).
    filled_arrays: BTreeSet<&'static str>,
}

/// Program `name` of the object as a `T`, loaded into the kernel.
fn loaded<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    T: LoadProgram + 'a,
{
    let prog: &mut T = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })?;
    if !prog.is_loaded() {
        prog.load_it()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    Ok(prog)
}

/// The load step every program type shares (aya gives each its own).
trait LoadProgram {
    fn is_loaded(&self) -> bool;
    fn load_it(&mut self) -> Result<(), aya::programs::ProgramError>;
    /// A descriptor of the loaded program of its own.
    fn program_fd(&self) -> Result<ProgramFd, aya::programs::ProgramError>;
}

macro_rules! load_program {
    ($($t:ty),*) => {$(
        impl LoadProgram for $t {
            fn is_loaded(&self) -> bool {
                self.fd().is_ok()
            }
            fn load_it(&mut self) -> Result<(), aya::programs::ProgramError> {
                self.load()
            }
            fn program_fd(&self) -> Result<ProgramFd, aya::programs::ProgramError> {
                self.fd()?.try_clone().map_err(aya::programs::ProgramError::from)
            }
        }
    )*};
}
load_program!(Xdp, SchedClassifier, TracePoint, CgroupSockAddr);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Bpffs {
        path: path.to_path_buf(),
        source,
    }
}

/// The filesystem magic number of `path` (`statfs(2)`'s `f_type`).
pub fn fs_magic(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(
        clippy::useless_conversion,
        reason = "f_type's width differs between libcs"
    )]
    Ok(i64::from(st.f_type))
}

/// The standard bpffs mount point; on machines where nothing mounted it the
/// agent mounts it there itself.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC)
}

fn mount_bpffs(at: &Path) -> Result<(), LoadError> {
    info!(at = %at.display(), "mounting bpffs");
    let target = CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|e| io_err(at)(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: valid C strings; a plain bpffs mount.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io_err(at)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes sure `root` exists on a bpffs. When it is not on one, the agent
/// mounts bpffs itself: on `/sys/fs/bpf` when the root lies below that
/// standard mount point, else on `root`.
pub fn ensure_bpffs(root: &Path) -> Result<(), LoadError> {
    if root.exists() {
        if !is_bpffs(root) {
            mount_bpffs(root)?;
        }
        return Ok(());
    }
    let ancestor = root
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or_else(|| Path::new("/"));
    if !is_bpffs(ancestor) {
        let sys = Path::new(SYS_FS_BPF);
        if root.starts_with(sys) && sys.exists() && !is_bpffs(sys) {
            mount_bpffs(sys)?;
        } else {
            std::fs::create_dir_all(root).map_err(io_err(root))?;
            return mount_bpffs(root);
        }
    }
    std::fs::create_dir_all(root).map_err(io_err(root))
}

impl Datapath {
    /// Loads the object, creating every map pinned under `root` or adopting
    /// the ones already pinned there (a pinned map of another layout, left
    /// by an older agent, is replaced by a new one).
    pub fn load(root: &Path, sizes: MapSizes) -> Result<Self, LoadError> {
        ensure_bpffs(root)?;
        std::fs::create_dir_all(root.join("links")).map_err(io_err(root))?;
        drop_foreign_maps(root);
        let mut loader = EbpfLoader::new();
        let pins: Vec<(&str, PathBuf)> = names::ALL.iter().map(|n| (*n, root.join(n))).collect();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, n) in sizes.entries() {
            loader.map_max_entries(name, n);
        }
        let ebpf = loader.load(OBJECT).map_err(|source| LoadError::Load {
            root: root.to_path_buf(),
            source: Box::new(source),
        })?;
        report_pinned_sizes(root, &sizes);
        Ok(Self {
            ebpf,
            root: root.to_path_buf(),
            filled_arrays: BTreeSet::new(),
        })
    }

    /// Fills every program array that `caller` tail-calls into
    /// (`programs::PROGRAM_ARRAYS`, the programs serving IPv4 headers with
    /// options), once per load; its entries are `T` programs.
    fn fill_program_arrays<T: LoadProgram>(&mut self, caller: &str) -> Result<(), LoadError>
    where
        for<'a> &'a mut T:
            TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        for (map, c, entries) in programs::PROGRAM_ARRAYS {
            if c == caller && !self.filled_arrays.contains(map) {
                self.fill_program_array::<T>(map, entries)?;
                self.filled_arrays.insert(map);
            }
        }
        Ok(())
    }

    /// Loads programs `entries` (index, name) and puts them at their index
    /// in the program array `map`. The arrays are pinned: they keep their
    /// programs while no agent runs, and a new agent's programs replace an
    /// older agent's.
    fn fill_program_array<T: LoadProgram>(
        &mut self,
        map: &'static str,
        entries: &[(u32, &'static str)],
    ) -> Result<(), LoadError>
    where
        for<'a> &'a mut T:
            TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let mut fds = Vec::new();
        for &(index, name) in entries {
            let prog: &mut T = loaded(&mut self.ebpf, name)?;
            let fd = prog
                .program_fd()
                .map_err(|source| LoadError::Program { name, source })?;
            fds.push((index, fd));
        }
        let array = self
            .ebpf
            .map_mut(map)
            .ok_or(LoadError::MissingMap { name: map })?;
        let mut array =
            ProgramArray::try_from(array).map_err(|source| LoadError::ProgramArray {
                map,
                index: 0,
                source,
            })?;
        for (index, fd) in &fds {
            array
                .set(*index, fd, 0)
                .map_err(|source| LoadError::ProgramArray {
                    map,
                    index: *index,
                    source,
                })?;
        }
        Ok(())
    }

    fn link_path(&self, kind: &str, iface: &str) -> PathBuf {
        self.root.join("links").join(format!("{kind}-{iface}"))
    }

    /// Attaches the XDP program to `iface` in `mode`, replacing the program
    /// of a link pinned by an earlier agent atomically when that link has
    /// the same mode (else it is detached first). With `fallback`, a device
    /// that refuses native XDP gets generic XDP. Returns the mode attached.
    pub fn attach_xdp(
        &mut self,
        iface: &str,
        mode: Mode,
        fallback: bool,
    ) -> Result<Mode, LoadError> {
        let pin = self.link_path("xdp", iface);
        let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| LoadError::Attach {
            what: "XDP",
            iface: iface.to_string(),
            source,
        };
        // Options are set aside (index IHL), the packet served (index 0),
        // and the options put back (`XDP_RESTORE`).
        self.fill_program_arrays::<Xdp>(programs::XDP_INGRESS)?;
        let prog: &mut Xdp = loaded(&mut self.ebpf, programs::XDP_INGRESS)?;
        let attached_now = crate::devices::ifindex(iface)
            .ok()
            .and_then(|i| netlink::xdp_attached(i).ok());
        let same_mode = matches!(
            (attached_now, mode),
            (Some(XdpAttached::Driver), Mode::Native) | (Some(XdpAttached::Skb), Mode::Generic)
        );
        let adopted = if same_mode {
            PinnedLink::from_pin(&pin).ok()
        } else {
            // A link in the other mode (or none): detach it by dropping its
            // pin, then attach anew.
            let _ = std::fs::remove_file(&pin);
            None
        };
        let (id, got) = if let Some(old) = adopted {
            let link = XdpLink::try_from(FdLink::from(old)).map_err(|e| attach_err(e.into()))?;
            info!(
                iface,
                mode = mode.as_str(),
                "replacing the program of the pinned XDP link"
            );
            (
                prog.attach_to_link(link)
                    .map_err(|e| attach_err(e.into()))?,
                mode,
            )
        } else {
            match mode {
                Mode::Generic => (
                    prog.attach(iface, XdpMode::Skb)
                        .map_err(|e| attach_err(e.into()))?,
                    Mode::Generic,
                ),
                Mode::Native => match prog.attach(iface, XdpMode::Driver) {
                    Ok(id) => (id, Mode::Native),
                    Err(e) if fallback => {
                        warn!(iface, error = %e, "native XDP unavailable, attaching generic XDP");
                        (
                            prog.attach(iface, XdpMode::Skb)
                                .map_err(|e| attach_err(e.into()))?,
                            Mode::Generic,
                        )
                    }
                    Err(e) => return Err(attach_err(e.into())),
                },
            }
        };
        let link = prog.take_link(id).map_err(|e| attach_err(e.into()))?;
        let fd_link = FdLink::try_from(link).map_err(|e| attach_err(e.into()))?;
        let _ = std::fs::remove_file(&pin);
        fd_link.pin(&pin).map_err(|e| attach_err(e.into()))?;
        Ok(got)
    }

    /// Attaches the TC egress program (replies of local backends) to
    /// `iface` (tcx), adopting a pinned link as [`Self::attach_xdp`] does.
    pub fn attach_tc_egress(&mut self, iface: &str) -> Result<(), LoadError> {
        self.fill_program_arrays::<SchedClassifier>(programs::TC_EGRESS)?;
        self.attach_tc(
            iface,
            programs::TC_EGRESS,
            TcAttachType::Egress,
            "tc-egress",
        )
    }

    /// Attaches the TC ingress program (frames handed over for neighbour
    /// resolution) to `iface` (tcx).
    pub fn attach_tc_ingress(&mut self, iface: &str) -> Result<(), LoadError> {
        self.attach_tc(
            iface,
            programs::TC_INGRESS,
            TcAttachType::Ingress,
            "tc-ingress",
        )
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        name: &'static str,
        direction: TcAttachType,
        kind: &'static str,
    ) -> Result<(), LoadError> {
        let pin = self.link_path(kind, iface);
        let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| LoadError::Attach {
            what: kind,
            iface: iface.to_string(),
            source,
        };
        let prog: &mut SchedClassifier = loaded(&mut self.ebpf, name)?;
        let id = if let Ok(old) = PinnedLink::from_pin(&pin) {
            let link = FdLink::from(old)
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| attach_err(e.into()))?;
            prog.attach_to_link(link)
                .map_err(|e| attach_err(e.into()))?
        } else {
            prog.attach_with_options(
                iface,
                direction,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| attach_err(e.into()))?
        };
        let link = prog.take_link(id).map_err(|e| attach_err(e.into()))?;
        let fd_link = FdLink::try_from(link).map_err(|e| attach_err(e.into()))?;
        let _ = std::fs::remove_file(&pin);
        fd_link.pin(&pin).map_err(|e| attach_err(e.into()))?;
        Ok(())
    }

    /// Attaches the transmit tracepoints that count the datapath's own
    /// transmit failures per device (`device_tx`), mounting tracefs when it
    /// is not mounted. They stay attached while this value lives.
    pub fn attach_tx_tracepoints(&mut self) -> Result<(), LoadError> {
        ensure_tracefs();
        for (name, event) in programs::TX_TRACEPOINTS {
            let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| LoadError::Attach {
                what: "tracepoint",
                iface: format!("xdp:{event}"),
                source,
            };
            let prog: &mut TracePoint = loaded(&mut self.ebpf, name)?;
            prog.attach("xdp", event)
                .map_err(|e| attach_err(e.into()))?;
        }
        Ok(())
    }

    /// Attaches the socket-LB programs (`connect4`, `sendmsg4`, `recvmsg4`)
    /// to the cgroup v2 directory `cgroup`, so connections started by its
    /// processes (the node's, its pods') to a frontend go to a backend
    /// directly. A link pinned by an earlier agent is replaced after the new
    /// one is attached, so no connect() goes untranslated in between. With
    /// `bind_protection`, the bind hook too (`bind_protect` of the datapath).
    pub fn attach_socket_lb(
        &mut self,
        cgroup: &Path,
        bind_protection: bool,
    ) -> Result<(), LoadError> {
        let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| LoadError::Attach {
            what: "socket LB",
            iface: cgroup.display().to_string(),
            source,
        };
        let dir = std::fs::File::open(cgroup).map_err(|e| attach_err(e.into()))?;
        let mut hooks = vec![
            programs::SOCK_CONNECT4,
            programs::SOCK_SENDMSG4,
            programs::SOCK_RECVMSG4,
        ];
        if bind_protection {
            hooks.push(programs::SOCK_BIND4);
        } else {
            // An earlier agent's bind hook goes with its pin.
            let _ = std::fs::remove_file(self.link_path("cgroup", programs::SOCK_BIND4));
        }
        for name in hooks {
            let pin = self.link_path("cgroup", name);
            let prog: &mut CgroupSockAddr = loaded(&mut self.ebpf, name)?;
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| attach_err(e.into()))?;
            let link = prog.take_link(id).map_err(|e| attach_err(e.into()))?;
            let fd_link = FdLink::try_from(link).map_err(|e| attach_err(e.into()))?;
            // A bpf_link never excludes others on the cgroup; the old link (if
            // any) goes only now: removing its pin detaches it.
            let _ = std::fs::remove_file(&pin);
            fd_link.pin(&pin).map_err(|e| attach_err(e.into()))?;
        }
        Ok(())
    }

    /// The bpffs root everything is pinned under.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Warns where an adopted pinned map has another capacity than asked
/// for: it keeps its size (resizing would drop the flows it holds) until
/// `nodeport-agent cleanup` removes it.
fn report_pinned_sizes(root: &Path, sizes: &MapSizes) {
    for (name, wanted) in sizes.entries() {
        let Ok(info) = MapData::from_pin(root.join(name)).and_then(|m| m.info()) else {
            continue;
        };
        if info.max_entries() != wanted {
            warn!(
                map = name,
                pinned_max_entries = info.max_entries(),
                wanted_max_entries = wanted,
                "the pinned map keeps its size; the new size applies after `nodeport-agent cleanup` and a restart"
            );
        }
    }
}

/// Removes pinned maps whose key or value size is not what this object
/// expects (left by an agent of another version): they are created anew.
/// Maps this datapath no longer has (`names::RETIRED`) are removed.
fn drop_foreign_maps(root: &Path) {
    for name in names::RETIRED {
        if std::fs::remove_file(root.join(name)).is_ok() {
            info!(
                map = name,
                "removed a map an older agent pinned that this datapath no longer has"
            );
        }
    }
    for (name, key, value) in MAP_SIZES {
        let path = root.join(name);
        let Ok(map) = MapData::from_pin(&path) else {
            continue;
        };
        let Ok(info) = map.info() else { continue };
        // The counters' array grows with the counters of a newer datapath.
        let entries_differ =
            name == names::STATS && info.max_entries() != nodeport_common::stat::COUNT;
        if info.key_size() as usize != key || info.value_size() as usize != value || entries_differ
        {
            warn!(
                map = name,
                key_size = info.key_size(),
                value_size = info.value_size(),
                expected_key = key,
                expected_value = value,
                "pinned map has another layout (an older agent's); recreating it"
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// `TRACEFS_MAGIC` from `linux/magic.h`.
const TRACEFS_MAGIC: i64 = 0x7472_6163;
const SYS_KERNEL_TRACING: &str = "/sys/kernel/tracing";

/// Mounts tracefs on `/sys/kernel/tracing` when it is not there (attaching
/// a tracepoint reads its id from tracefs).
fn ensure_tracefs() {
    let at = Path::new(SYS_KERNEL_TRACING);
    if fs_magic(at).is_ok_and(|m| m == TRACEFS_MAGIC)
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return;
    }
    // SAFETY: valid C strings; a plain tracefs mount.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        info!(at = SYS_KERNEL_TRACING, "mounted tracefs");
    } else {
        warn!(
            at = SYS_KERNEL_TRACING,
            error = %std::io::Error::last_os_error(),
            "cannot mount tracefs"
        );
    }
}

/// Detaches every pinned link and removes every pin under `root`
/// (`nodeport-agent cleanup`). Returns what was removed.
pub fn cleanup(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let links = root.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            // Removing the pin drops the last reference: the link detaches.
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
        std::fs::remove_dir(&links)?;
    }
    for name in names::ALL.iter().chain(&names::RETIRED) {
        let p = root.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    // The root may be a bpffs the agent mounted itself (its parent is not
    // a bpffs): unmount that one, never a bpffs it did not mount.
    let parent_is_bpffs = root.parent().is_some_and(is_bpffs);
    if !parent_is_bpffs
        && is_bpffs(root)
        && let Ok(c) = CString::new(root.as_os_str().as_encoded_bytes())
    {
        // SAFETY: valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    match std::fs::remove_dir(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(removed)
}
