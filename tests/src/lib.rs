//! End-to-end test harness for nodeport: a small Kubernetes-like cluster made
//! of network namespaces on this machine, with real TCP/UDP workloads in the
//! pods and one `nodeport-agent` per node.
//!
//! Topology (flannel host-gw style), see [`cluster`] for the details:
//!
//! ```text
//!   client ns (10.200.0.2) ──┐
//!                            ├── LAN ns: bridge br0 (10.200.0.0/24)
//!   node1 ns (10.200.0.11) ──┤
//!   node2 ns (10.200.0.12) ──┘
//!   nodeI: cni0 10.244.I.1/24 ── podK of nodeI (10.244.I.(10+K))
//! ```
//!
//! Everything runs as root: network namespaces, veth pairs and bpffs need
//! `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`. Every resource is owned by a guard
//! that tears it down on drop, also when a test panics.

pub mod agent;
pub mod apiserver;
pub mod cgroup;
pub mod client;
pub mod cluster;
pub mod datapath;
pub mod hold;
pub mod http;
pub mod manifests;
pub mod netns;
pub mod objects;
pub mod server;
mod util;

pub use agent::{Agent, AgentOptions, LEAST_PRIVILEGE_CAPABILITIES};
pub use apiserver::ApiServer;
pub use client::{Client, ConnectResult};
pub use cluster::{Cluster, ClusterConfig, Node, Pod, Veths};
pub use manifests::Manifests;
pub use netns::Netns;
pub use server::{Answer, PodServer, Server, ServerSpec};
pub use util::{eventually, random_hex};

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// Where the harness expects (and if necessary mounts) the BPF filesystem.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPFFS_ROOT_C: &CStr = c"/sys/fs/bpf";

/// Panics unless the process runs as root.
///
/// Every entry point of the harness that touches the system calls this first,
/// so that a test run without privileges fails loudly instead of skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN): run as root, e.g. via `cargo xtask test`"
    );
}

/// Makes sure `/sys/fs/bpf` is a BPF filesystem, mounting one if not.
///
/// Agents pin their maps and links under `/sys/fs/bpf/<cluster>/<node>`; on a
/// machine without systemd nothing mounts bpffs, and sysfs does not allow
/// creating directories there. The mount is left in place afterwards (it is
/// the standard system layout).
pub fn ensure_bpffs() {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Serialise with other test processes too: two concurrent mounts would
    // stack and hide each other's pins.
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/nodeport-tests.lock")
        .unwrap_or_else(|e| panic!("cannot open /run/nodeport-tests.lock: {e}"));
    let _flock = Flock::exclusive(&lock_file);

    if is_bpffs(BPFFS_ROOT_C) {
        return;
    }
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            BPFFS_ROOT_C.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert!(
        rc == 0,
        "mounting bpffs on {BPFFS_ROOT} failed: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        is_bpffs(BPFFS_ROOT_C),
        "{BPFFS_ROOT} is still not a bpffs after mounting one"
    );
}

fn is_bpffs(path: &CStr) -> bool {
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated and st is a valid out pointer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &raw mut st) };
    rc == 0 && st.f_type == libc::BPF_FS_MAGIC
}

/// An exclusive `flock` held until drop.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn exclusive(file: &'a File) -> Self {
        // SAFETY: the fd is open for the lifetime of `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert!(rc == 0, "flock failed: {}", std::io::Error::last_os_error());
        Flock(file)
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // SAFETY: the fd is open for the lifetime of the borrowed file.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handles_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<crate::Cluster>();
        shareable::<crate::Agent<'_>>();
        shareable::<crate::Server<'_>>();
        shareable::<crate::Client<'_>>();
    }
}
