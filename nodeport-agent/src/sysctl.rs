//! The node's sysctls the agent reads and writes (`net/ipv4/...` under
//! `/proc/sys`). Their root is a setting (`--sysctl-dir`): a container
//! whose `/proc/sys` is read-only (any but a privileged one) mounts the
//! host's `/proc/sys/net` writable elsewhere, e.g. `/host/proc/sys/net`
//! with `--sysctl-dir=/host/proc/sys`. Network sysctls act on the network
//! namespace of the process that opens them, so such a mount reaches the
//! node's own settings from a `hostNetwork` pod.

use std::path::{Path, PathBuf};

/// The default root: the process's own `/proc/sys`.
pub const DEFAULT_DIR: &str = "/proc/sys";

/// A sysctl that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct SysctlError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Where the sysctls are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctls {
    root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self::new(Path::new(DEFAULT_DIR))
    }
}

impl Sysctls {
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// The file of sysctl `key`, given as a path (`net/ipv4/conf/eth0/forwarding`:
    /// device names may hold dots).
    #[must_use]
    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The value of `key`.
    pub fn read(&self, key: &str) -> Result<String, SysctlError> {
        let path = self.path(key);
        std::fs::read_to_string(&path).map_err(|source| SysctlError { path, source })
    }

    /// Sets `key` to `value`.
    pub fn write(&self, key: &str, value: &str) -> Result<(), SysctlError> {
        let path = self.path(key);
        std::fs::write(&path, value).map_err(|source| SysctlError { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_paths_under_the_root() {
        let s = Sysctls::new(Path::new("/host/proc/sys"));
        assert_eq!(
            s.path("net/ipv4/conf/eth0.100/forwarding"),
            Path::new("/host/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        let e = Sysctls::new(Path::new("/nonexistent"))
            .read("net/ipv4/ip_local_port_range")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/net/ipv4/ip_local_port_range: "),
            "{e}"
        );
    }
}
