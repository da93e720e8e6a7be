//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them) and
//! ways to run code inside one.
//!
//! Three ways in, for three purposes:
//! - [`Netns::run`]: a Rust closure on a helper thread that has `setns`'d
//!   into the namespace; sockets it creates live there. The calling thread
//!   never changes namespace.
//! - [`Netns::command`]: a [`Command`] prefixed with
//!   `nsenter --net=/run/netns/NAME --`, for long-running processes. Unlike
//!   `ip netns exec`, `nsenter` changes only the network namespace, so the
//!   process still sees the host's `/sys/fs/bpf`.
//! - [`Netns::ip`]: `ip -n NAME ...` for configuration.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;

use crate::util::{run_checked, run_output};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates the namespace `name` with `ip netns add` and brings its `lo` up.
    ///
    /// Panics if it already exists or cannot be created.
    #[must_use]
    pub fn create(name: &str) -> Netns {
        // `ip netns add` turns /run/netns into a shared mount point the first
        // time; two of those racing can stack mounts. Serialise creations.
        static CREATE: Mutex<()> = Mutex::new(());
        crate::require_root();
        {
            let _guard = CREATE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            assert!(
                !Netns::exists(name),
                "network namespace {name} already exists"
            );
            run_checked(Command::new("ip").args(["netns", "add", name]));
        }
        let ns = Netns {
            name: name.to_owned(),
            path: Path::new(NETNS_RUN_DIR).join(name),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Whether a namespace called `name` exists in `/run/netns`.
    #[must_use]
    pub fn exists(name: &str) -> bool {
        Path::new(NETNS_RUN_DIR).join(name).exists()
    }

    /// The names of all namespaces `ip netns list` reports.
    #[must_use]
    pub fn list() -> Vec<String> {
        let out = run_checked(Command::new("ip").args(["netns", "list"]));
        // Lines look like "name" or "name (id: 3)".
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the handle `nsenter --net=` and `setns` take.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a helper thread inside this namespace and returns its
    /// result. Sockets created by `f` belong to the namespace. A panic in `f`
    /// propagates to the caller.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let handle = File::open(&self.path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.path.display()));
        let name = &self.name;
        thread::scope(|s| {
            let worker = thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(s, move || {
                    enter(&handle, name);
                    drop(handle);
                    f()
                })
                .unwrap_or_else(|e| panic!("cannot spawn a thread: {e}"));
            match worker.join() {
                Ok(r) => r,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// A command that runs `program` inside this namespace (through
    /// `nsenter --net=/run/netns/NAME --`); add arguments and spawn it.
    #[must_use]
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program args...` inside the namespace to completion; panics
    /// with its stderr if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) {
        run_checked(self.command(program).args(args));
    }

    /// Like [`Netns::exec`], returning stdout.
    #[must_use]
    pub fn exec_stdout(&self, program: &str, args: &[&str]) -> String {
        run_checked(self.command(program).args(args))
    }

    /// Runs `program args...` inside the namespace and returns its output
    /// whatever the exit status.
    #[must_use]
    pub fn try_exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        run_output(self.command(program).args(args))
    }

    /// `ip -n NAME args...`; panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Like [`Netns::ip`], returning stdout.
    #[must_use]
    pub fn ip_stdout(&self, args: &[&str]) -> String {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Sets a sysctl of this namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let path = sysctl_path(key);
        self.run(|| fs::write(&path, value))
            .unwrap_or_else(|e| panic!("{}: cannot set {key}={value}: {e}", self.name));
    }

    /// Reads a sysctl of this namespace (trimmed).
    #[must_use]
    pub fn sysctl(&self, key: &str) -> String {
        let path = sysctl_path(key);
        self.run(|| fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("{}: cannot read {key}: {e}", self.name))
            .trim()
            .to_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "nodeport-tests: ip netns delete {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim_end()
            ),
            Err(e) => eprintln!(
                "nodeport-tests: cannot run ip netns delete {}: {e}",
                self.name
            ),
        }
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Moves the calling thread into the network namespace behind `handle`.
fn enter(handle: &File, name: &str) {
    // SAFETY: the fd is valid for the duration of the call; setns only
    // changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    assert!(
        rc == 0,
        "setns into network namespace {name} failed: {}",
        io::Error::last_os_error()
    );
}
