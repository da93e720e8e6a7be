//! Per-node cgroups of the test cluster. Each node's agent attaches its
//! socket-LB programs to `<cgroup2>/<cluster id>/<node>`, and the processes
//! that stand for the node's pods run in it, so socket load balancing covers
//! them and nothing else on the machine (other clusters in parallel tests
//! use the same node addresses).

use std::ffi::CString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `CGROUP2_SUPER_MAGIC`.
const CGROUP2_MAGIC: i64 = 0x6367_7270;

fn fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: zeroed statfs is a valid out-parameter; valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::statfs(c.as_ptr(), &raw mut st) } == 0).then(|| {
        #[allow(
            clippy::useless_conversion,
            reason = "f_type's width differs between libcs"
        )]
        i64::from(st.f_type)
    })
}

/// The machine's cgroup v2 hierarchy (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid setups).
#[must_use]
pub fn cgroup2_root() -> PathBuf {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| fs_magic(p) == Some(CGROUP2_MAGIC))
        .unwrap_or_else(|| {
            panic!("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
        })
}

/// The cluster's cgroup directory and one child per node, removed on drop
/// (after the cluster's processes are gone).
#[derive(Debug)]
pub struct Cgroups {
    dir: PathBuf,
    nodes: Vec<PathBuf>,
}

impl Cgroups {
    pub(crate) fn create(id: &str, nodes: usize) -> Cgroups {
        let dir = cgroup2_root().join(id);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
        let nodes = (1..=nodes)
            .map(|i| {
                let p = dir.join(format!("node{i}"));
                std::fs::create_dir(&p)
                    .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", p.display()));
                p
            })
            .collect();
        Cgroups { dir, nodes }
    }

    /// Node `i`'s cgroup (1-based).
    #[must_use]
    pub fn node(&self, i: usize) -> &Path {
        &self.nodes[i - 1]
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for p in self.nodes.iter().chain(std::iter::once(&self.dir)) {
            // A cgroup goes once its last process has; wait briefly for
            // killed processes to be reaped.
            for _ in 0..50 {
                match std::fs::remove_dir(p) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
    }
}

/// Makes `cmd`'s process join the cgroup `dir` before it executes.
pub fn join_on_exec(cmd: &mut Command, dir: &Path) {
    let procs = CString::new(
        dir.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("cgroup path without NUL");
    // SAFETY: only async-signal-safe calls (open, write, close) run in the
    // child between fork and exec, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if ok { Ok(()) } else { Err(err) }
        });
    }
}
