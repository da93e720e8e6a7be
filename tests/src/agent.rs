//! `nodeport-agent` processes, one per node namespace, as a `DaemonSet`
//! would run them.
//!
//! An agent is started with
//! `nsenter --net=/run/netns/<node ns> <agent> run --node-name nodeN
//! --manifests DIR --interfaces eth0 --bpffs /sys/fs/bpf/<cluster>/nodeN
//! --healthz-bind-address 127.0.0.1:P --metrics-bind-address 127.0.0.1:Q`,
//! stdout and stderr going to a log file in the cluster's temporary directory.
//! It is ready once its `/livez` answers 200: the maps hold the desired
//! state (kube-proxy's meaning of "healthy", whatever the node's deletion
//! state or its devices say).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::util::{describe, read_lossy, sibling_of_deps, tail};

/// How long [`Agent::wait_ready`] waits.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Agent::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Lines of the log printed when a test panics while an agent runs.
const LOG_LINES_ON_PANIC: usize = 60;

/// The `nodeport-agent` binary: env `NODEPORT_AGENT_BIN`, else
/// `<target>/<profile>/nodeport-agent` next to the test executable's `deps/`.
#[must_use]
pub fn agent_binary() -> PathBuf {
    let path = std::env::var_os("NODEPORT_AGENT_BIN")
        .map_or_else(|| sibling_of_deps("nodeport-agent"), PathBuf::from);
    check_agent_binary(&path);
    path
}

fn check_agent_binary(path: &Path) {
    assert!(
        path.is_file(),
        "nodeport-agent not found at {}: build it with `cargo build -p nodeport-agent` \
         (same profile as the tests), or set NODEPORT_AGENT_BIN",
        path.display()
    );
}

/// How to start an agent beyond the fixed arguments.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `--manifests DIR` (unless `kubeconfig` is set).
    pub manifests_dir: PathBuf,
    /// Read the Kubernetes API through this kubeconfig (`--kubeconfig
    /// PATH`) instead of a manifests directory.
    pub kubeconfig: Option<PathBuf>,
    /// Appended after the standard arguments (e.g. `--xdp-mode`, `generic`).
    pub extra_args: Vec<OsString>,
    /// Another binary than [`agent_binary`].
    pub binary: Option<PathBuf>,
    /// Extra environment variables. `RUST_LOG` defaults to `info` when
    /// neither this nor the test's environment sets it, and `NO_COLOR=1`.
    pub env: Vec<(OsString, OsString)>,
    /// Run the agent with only these capabilities (names without `CAP_`,
    /// e.g. [`LEAST_PRIVILEGE_CAPABILITIES`]) through `setpriv`; `None`: as
    /// root with every capability.
    pub capabilities: Option<Vec<String>>,
}

/// The capabilities of the least-privilege DaemonSet
/// (`deploy/least-privilege/daemonset.yaml`), which the agent needs: BPF
/// (maps, programs, BTF), `NET_ADMIN` (XDP, TC and cgroup attachment, net
/// sysctls) and PERFMON (the XDP transmit tracepoints).
pub const LEAST_PRIVILEGE_CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];

/// The number of a capability (`CAP_<name>` of `<linux/capability.h>`).
fn capability_number(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no capability number known for {other}"),
    }
}

impl AgentOptions {
    #[must_use]
    pub fn new(manifests_dir: &Path) -> AgentOptions {
        AgentOptions {
            manifests_dir: manifests_dir.to_owned(),
            ..AgentOptions::default()
        }
    }

    /// An agent reading the Kubernetes API through `kubeconfig` (e.g. the
    /// test API server's, [`crate::apiserver::ApiServer::kubeconfig`]).
    #[must_use]
    pub fn kube(kubeconfig: &Path) -> AgentOptions {
        AgentOptions {
            kubeconfig: Some(kubeconfig.to_owned()),
            ..AgentOptions::default()
        }
    }

    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> AgentOptions {
        self.extra_args.push(arg.into());
        self
    }

    #[must_use]
    pub fn binary(mut self, path: impl Into<PathBuf>) -> AgentOptions {
        self.binary = Some(path.into());
        self
    }

    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> AgentOptions {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Only `capabilities` (see [`AgentOptions::capabilities`]).
    #[must_use]
    pub fn capabilities(mut self, capabilities: &[String]) -> AgentOptions {
        self.capabilities = Some(capabilities.to_vec());
        self
    }
}

/// A running agent. It borrows the cluster so it cannot outlive its node
/// namespace; dropping it stops it (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Agent<'c> {
    ns: &'c Netns,
    node_index: usize,
    node_name: String,
    bpffs: PathBuf,
    healthz: SocketAddr,
    metrics: SocketAddr,
    log_path: PathBuf,
    command_line: String,
    pid: u32,
    child: Mutex<Option<Child>>,
    /// The effective capability set it must run with, if restricted.
    capabilities: Option<u64>,
}

/// Everything [`Agent::spawn`] needs from the cluster.
pub(crate) struct AgentSetup<'c> {
    pub ns: &'c Netns,
    pub node_index: usize,
    pub node_name: String,
    pub bpffs: PathBuf,
    /// The node's cgroup, for the socket-LB programs.
    pub cgroup: PathBuf,
    pub log_path: PathBuf,
}

impl<'c> Agent<'c> {
    pub(crate) fn spawn(setup: AgentSetup<'c>, options: &AgentOptions) -> Agent<'c> {
        let binary = options.binary.clone().unwrap_or_else(agent_binary);
        check_agent_binary(&binary);
        let (healthz, metrics) = free_local_ports(setup.ns);

        let log = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&setup.log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", setup.log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup log fd: {e}"));

        let mut cmd = match &options.capabilities {
            None => setup.ns.command(&binary),
            Some(caps) => {
                let keep: Vec<String> = caps
                    .iter()
                    .map(|c| format!("+{}", c.to_lowercase()))
                    .collect();
                let mut cmd = setup.ns.command("setpriv");
                cmd.arg("--bounding-set")
                    .arg(format!("-all,{}", keep.join(",")))
                    .arg("--inh-caps")
                    .arg("-all")
                    .arg("--")
                    .arg(&binary);
                cmd
            }
        };
        let capabilities = options.capabilities.as_ref().map(|caps| {
            caps.iter()
                .fold(0u64, |mask, c| mask | 1 << capability_number(c))
        });
        cmd.arg("run")
            .arg("--node-name")
            .arg(&setup.node_name)
            .args(match &options.kubeconfig {
                Some(k) => ["--kubeconfig".into(), k.clone().into_os_string()],
                None => [
                    "--manifests".into(),
                    options.manifests_dir.clone().into_os_string(),
                ],
            })
            .arg("--interfaces")
            .arg("eth0")
            .arg("--bpffs")
            .arg(&setup.bpffs)
            .arg("--cgroup-root")
            .arg(&setup.cgroup)
            .arg("--healthz-bind-address")
            .arg(healthz.to_string())
            .arg("--metrics-bind-address")
            .arg(metrics.to_string())
            .args(&options.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let command_line = describe(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {command_line}: {e}"));
        Agent {
            ns: setup.ns,
            node_index: setup.node_index,
            node_name: setup.node_name,
            bpffs: setup.bpffs,
            healthz,
            metrics,
            log_path: setup.log_path,
            command_line,
            pid: child.id(),
            child: Mutex::new(Some(child)),
            capabilities,
        }
    }

    /// The node namespace the agent runs in (e.g. to query its health or
    /// metrics endpoints, which listen on the node's loopback).
    #[must_use]
    pub fn netns(&self) -> &'c Netns {
        self.ns
    }

    /// 1-based node index.
    #[must_use]
    pub fn node_index(&self) -> usize {
        self.node_index
    }

    /// `nodeN`, the agent's `--node-name`.
    #[must_use]
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The agent's `--bpffs` directory.
    #[must_use]
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// `--healthz-bind-address`, on the node namespace's loopback.
    #[must_use]
    pub fn healthz_addr(&self) -> SocketAddr {
        self.healthz
    }

    /// `--metrics-bind-address`, on the node namespace's loopback.
    #[must_use]
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line the agent was started with.
    #[must_use]
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the agent has written to stdout and stderr so far.
    #[must_use]
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// The current length of the log in bytes, to wait for something logged
    /// after this point with [`Agent::wait_for_log_since`].
    #[must_use]
    pub fn log_mark(&self) -> usize {
        self.log().len()
    }

    /// Waits until the log contains `pattern` (a substring); panics with the
    /// log if it does not within `timeout` or if the agent exits first.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) {
        self.wait_for_log_since(0, pattern, timeout);
    }

    /// Like [`Agent::wait_for_log`], only looking at the log after `mark`
    /// (from [`Agent::log_mark`]).
    pub fn wait_for_log_since(&self, mark: usize, pattern: &str, timeout: Duration) {
        if let Err(problem) = self.try_wait_for_log_since(mark, pattern, timeout) {
            let log = self.log();
            panic!(
                "agent {} (pid {}): {problem}\ncommand: {}\nlog {}, last lines:\n{}",
                self.node_name,
                self.pid,
                self.command_line,
                self.log_path.display(),
                tail(&log, LOG_LINES_ON_PANIC)
            );
        }
    }

    /// Whether `pattern` shows up in the log after `mark` within `timeout`,
    /// without panicking. `Err` says why not (timeout or exit).
    pub fn try_wait_for_log_since(
        &self,
        mark: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check for an exit before reading, so a final line is not missed.
            let exited = self.exit_status();
            let log = self.log();
            if log.get(mark..).is_some_and(|s| s.contains(pattern)) {
                return Ok(());
            }
            if let Some(status) = exited {
                return Err(format!("exited ({status}) before logging {pattern:?}"));
            }
            if Instant::now() >= deadline {
                return Err(format!("did not log {pattern:?} within {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of sample `sample` (`name` or `name{labels}`) of the
    /// agent's `/metrics`, if it answers and has it.
    #[must_use]
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let r = crate::http::get(self.ns, self.metrics, "/metrics").ok()?;
        r.body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
    }

    /// The sum of every sample of family `name` (all its label sets) of the
    /// agent's `/metrics`, if it answers and has one.
    #[must_use]
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        let r = crate::http::get(self.ns, self.metrics, "/metrics").ok()?;
        let values: Vec<f64> = r
            .body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let rest = match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} ")?.1,
                    None => rest.strip_prefix(' ')?,
                };
                rest.trim().parse().ok()
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Waits until the sum of family `name` (see [`Agent::metric_sum`]) is
    /// above `mark`; panics with the log after `timeout`.
    pub fn wait_for_metric_above(&self, name: &str, mark: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.metric_sum(name).is_none_or(|v| v <= mark) {
            assert!(
                Instant::now() < deadline && self.exit_status().is_none(),
                "agent {}: {name} did not rise above {mark} within {timeout:?}\nlog {}, last lines:\n{}",
                self.node_name,
                self.log_path.display(),
                tail(&self.log(), LOG_LINES_ON_PANIC)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The datapath's counter `reason` on this node
    /// (`nodeport_datapath_packets_total{reason}`), 0 when absent.
    #[must_use]
    pub fn datapath_count(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "nodeport_datapath_packets_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
    }

    /// Map entries the agent has written and deleted so far
    /// (`nodeport_map_writes_total`).
    #[must_use]
    pub fn map_writes(&self) -> f64 {
        // Its `put` and `delete` samples.
        self.metric_sum("nodeport_map_writes_total").unwrap_or(0.0)
    }

    /// Waits until the agent has written to its maps since `before` (a value
    /// of [`Agent::map_writes`]); panics with the log after `timeout`.
    pub fn wait_for_map_writes_since(&self, before: f64, timeout: Duration) {
        self.wait_for_metric_above("nodeport_map_writes_total", before, timeout);
    }

    /// Waits until `/livez` answers 200 (up to [`READY_TIMEOUT`]); panics
    /// with the log if it does not, or if the agent exits first.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self.exit_status();
            if crate::http::get(self.ns, self.healthz, "/livez").is_ok_and(|r| r.status == 200) {
                self.check_capabilities();
                return;
            }
            let problem = match exited {
                Some(status) => format!("exited ({status}) before /livez answered 200"),
                None if Instant::now() >= deadline => {
                    format!("/livez did not answer 200 within {READY_TIMEOUT:?}")
                }
                None => {
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            panic!(
                "agent {} (pid {}): {problem}\ncommand: {}\nlog {}, last lines:\n{}",
                self.node_name,
                self.pid,
                self.command_line,
                self.log_path.display(),
                tail(&self.log(), LOG_LINES_ON_PANIC)
            );
        }
    }

    /// With restricted capabilities: the running agent's effective set
    /// (`CapEff` of `/proc/<pid>/status`) is exactly the one asked for.
    fn check_capabilities(&self) {
        let Some(want) = self.capabilities else {
            return;
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("agent {}: cannot read its status: {e}", self.node_name));
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("agent {}: no CapEff in its status", self.node_name));
        assert_eq!(
            effective, want,
            "agent {} runs with capabilities {effective:#x}, not exactly {want:#x}",
            self.node_name
        );
        // Nothing it does on start was refused for want of a capability.
        let log = self.log();
        assert!(
            !log.contains(" WARN ") && !log.contains(" ERROR "),
            "agent {} with capabilities {want:#x} warned on start:\n{}",
            self.node_name,
            tail(&log, LOG_LINES_ON_PANIC)
        );
    }

    /// The exit status, if the agent has exited.
    #[must_use]
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.lock_child();
        match child.as_mut()?.try_wait() {
            Ok(status) => status,
            Err(e) => panic!("waiting for agent {}: {e}", self.node_name),
        }
    }

    #[must_use]
    pub fn is_running(&self) -> bool {
        let mut child = self.lock_child();
        child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns the exit status.
    pub fn stop(self) -> ExitStatus {
        self.terminate(STOP_GRACE)
            .unwrap_or_else(|| panic!("agent {} was already stopped", self.node_name))
    }

    /// SIGKILL, as a crash would; returns the exit status.
    pub fn kill(self) -> ExitStatus {
        let mut child = self
            .lock_child()
            .take()
            .unwrap_or_else(|| panic!("agent {} was already stopped", self.node_name));
        let _ = child.kill();
        child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for agent {}: {e}", self.node_name))
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the agent.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.lock_child();
        assert!(child.is_some(), "agent {} is stopped", self.node_name);
        let pid = libc::pid_t::try_from(self.pid).expect("pid fits pid_t");
        // SAFETY: the child has not been reaped (we hold it), so the pid is ours.
        let rc = unsafe { libc::kill(pid, signal) };
        assert!(
            rc == 0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.lock_child().take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: the child has not been reaped, so the pid is ours.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "nodeport-tests: agent {} did not exit {grace:?} after SIGTERM; killing it",
            self.node_name
        );
        let _ = child.kill();
        child.wait().ok()
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        // While unwinding, do not wait long for a graceful exit.
        let grace = if panicking {
            Duration::from_secs(2)
        } else {
            STOP_GRACE
        };
        self.terminate(grace);
        if panicking {
            eprintln!(
                "---- agent {} log ({}), last lines ----\n{}",
                self.node_name,
                self.log_path.display(),
                tail(&self.log(), LOG_LINES_ON_PANIC)
            );
        }
    }
}

/// Two distinct free TCP ports on 127.0.0.1 inside `ns`.
fn free_local_ports(ns: &Netns) -> (SocketAddr, SocketAddr) {
    ns.run(|| {
        let bind = || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"))
        };
        let (a, b) = (bind(), bind());
        let addr = |l: &TcpListener| l.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
        (addr(&a), addr(&b))
    })
}
