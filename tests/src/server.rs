//! `np-podserver` processes: the workload in the test cluster's pods, and
//! "ordinary" servers anywhere else (e.g. in a node namespace).
//!
//! Protocol (see `src/bin/np-podserver.rs`): on every TCP connection and UDP
//! datagram the server answers `"<NAME> <peer_ip>:<peer_port> <local_port>\n"`;
//! TCP closes after the line, TCP echo ports echo everything after it.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError, mpsc};
use std::thread;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::netns::Netns;
use crate::util::{describe, read_lossy, sibling_of_deps, tail};

/// How long a server may take to bind its sockets.
pub const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A server's answer, `"<NAME> <peer_ip>:<peer_port> <local_port>"`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Which server answered (a pod's name, e.g. `node2-pod1`).
    pub server: String,
    /// The client address the server saw.
    pub peer: SocketAddr,
    /// The port the request arrived on (the target port after DNAT).
    pub local_port: u16,
}

impl Answer {
    /// The answer a request got; panics naming `what` when the request
    /// failed or the line is not an answer.
    #[allow(
        clippy::must_use_candidate,
        reason = "a caller may want only the check that the request was answered"
    )]
    pub fn expect(r: io::Result<String>, what: &str) -> Self {
        let line = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        line.parse().unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

impl FromStr for Answer {
    type Err = String;

    fn from_str(line: &str) -> Result<Answer, String> {
        let bad = || format!("not a server answer: {line:?}");
        let mut words = line.split_whitespace();
        let (Some(server), Some(peer), Some(port), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(bad());
        };
        Ok(Answer {
            server: server.to_owned(),
            peer: peer.parse().map_err(|_| bad())?,
            local_port: port.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{} {}",
            self.server,
            self.peer.ip(),
            self.peer.port(),
            self.local_port
        )
    }
}

/// What a server is called and which ports it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Reported as the first word of every answer.
    pub name: String,
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    /// TCP ports that answer the line and then echo until EOF.
    pub tcp_echo: Vec<u16>,
    /// Address to bind instead of all addresses.
    pub bind: Option<std::net::IpAddr>,
}

impl ServerSpec {
    #[must_use]
    pub fn new(name: &str) -> ServerSpec {
        ServerSpec {
            name: name.to_owned(),
            tcp: Vec::new(),
            udp: Vec::new(),
            tcp_echo: Vec::new(),
            bind: None,
        }
    }

    #[must_use]
    pub fn bind(mut self, addr: std::net::IpAddr) -> ServerSpec {
        self.bind = Some(addr);
        self
    }

    #[must_use]
    pub fn tcp(mut self, ports: &[u16]) -> ServerSpec {
        self.tcp.extend_from_slice(ports);
        self
    }

    #[must_use]
    pub fn udp(mut self, ports: &[u16]) -> ServerSpec {
        self.udp.extend_from_slice(ports);
        self
    }

    #[must_use]
    pub fn tcp_echo(mut self, ports: &[u16]) -> ServerSpec {
        self.tcp_echo.extend_from_slice(ports);
        self
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec!["--name".to_owned(), self.name.clone()];
        if let Some(addr) = self.bind {
            args.push("--bind".to_owned());
            args.push(addr.to_string());
        }
        for (flag, ports) in [
            ("--tcp", &self.tcp),
            ("--udp", &self.udp),
            ("--tcp-echo", &self.tcp_echo),
        ] {
            if !ports.is_empty() {
                args.push(flag.to_owned());
                args.push(
                    ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
        }
        args
    }
}

/// The `np-podserver` binary: env `NODEPORT_PODSERVER_BIN`, else next to the
/// test executable's `deps/` directory (where cargo puts the package's bins).
#[must_use]
pub fn podserver_binary() -> PathBuf {
    let path = std::env::var_os("NODEPORT_PODSERVER_BIN")
        .map_or_else(|| sibling_of_deps("np-podserver"), PathBuf::from);
    assert!(
        path.is_file(),
        "np-podserver not found at {}: build it with `cargo build -p nodeport-tests --bins` \
         (cargo test -p nodeport-tests does it), or set NODEPORT_PODSERVER_BIN",
        path.display()
    );
    path
}

/// The `np-client` binary: env `NODEPORT_CLIENT_BIN`, else next to the
/// test executable's `deps/` directory.
#[must_use]
pub fn client_binary() -> PathBuf {
    let path = std::env::var_os("NODEPORT_CLIENT_BIN")
        .map_or_else(|| sibling_of_deps("np-client"), PathBuf::from);
    assert!(
        path.is_file(),
        "np-client not found at {}: build it with `cargo build -p nodeport-tests --bins`, or set NODEPORT_CLIENT_BIN",
        path.display()
    );
    path
}

/// A running `np-podserver`, killed on drop.
#[derive(Debug)]
pub struct PodServer {
    spec: ServerSpec,
    netns: String,
    child: Child,
    log_path: PathBuf,
    // In a mutex only to keep the server `Sync` (tests share the cluster
    // across threads); used once, through `&mut self`.
    ready: Mutex<Option<mpsc::Receiver<io::Result<String>>>>,
}

impl PodServer {
    /// Starts a server inside `ns`, its stderr going to `log_path`. Call
    /// [`PodServer::wait_ready`] before sending it traffic.
    #[must_use]
    pub fn spawn(ns: &Netns, spec: &ServerSpec, log_path: &Path) -> PodServer {
        let log = File::create(log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let mut cmd = ns.command(podserver_binary());
        cmd.args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", describe(&cmd)));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send(first);
            // Keep draining so the server never blocks on (or dies of) a
            // full or closed pipe.
            let _ = io::copy(&mut reader, &mut io::sink());
        });
        PodServer {
            spec: spec.clone(),
            netns: ns.name().to_owned(),
            child,
            log_path: log_path.to_owned(),
            ready: Mutex::new(Some(rx)),
        }
    }

    /// Waits until the server has printed `ready` (all sockets bound);
    /// panics with its log if it does not within `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let ready = self.ready.get_mut().unwrap_or_else(PoisonError::into_inner);
        let Some(rx) = ready.take() else {
            return;
        };
        let problem = match rx.recv_timeout(timeout) {
            Ok(Ok(line)) if line.trim() == "ready" => return,
            Ok(Ok(line)) if line.is_empty() => "exited before becoming ready".to_owned(),
            Ok(Ok(line)) => format!("printed {line:?} instead of \"ready\""),
            Ok(Err(e)) => format!("stdout read failed: {e}"),
            Err(_) => format!("not ready after {timeout:?}"),
        };
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!(" ({status})"),
            _ => String::new(),
        };
        panic!(
            "server {} in {}: {problem}{status}; log {}:\n{}",
            self.spec.name,
            self.netns,
            self.log_path.display(),
            self.log()
        );
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    #[must_use]
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's stderr: one line per request served, and any errors.
    #[must_use]
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Kills the server and waits for it.
    pub fn stop(mut self) {
        self.kill_and_wait();
    }

    fn kill_and_wait(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        self.kill_and_wait();
        if thread::panicking() {
            let log = self.log();
            if !log.is_empty() {
                eprintln!(
                    "---- server {} ({}) log, last lines ----\n{}",
                    self.spec.name,
                    self.netns,
                    tail(&log, 20)
                );
            }
        }
    }
}

/// A server started by [`Cluster::start_server`]; it cannot outlive the
/// cluster, and is killed on drop.
#[derive(Debug)]
pub struct Server<'c> {
    inner: PodServer,
    _cluster: PhantomData<&'c Cluster>,
}

impl Server<'_> {
    pub(crate) fn new(inner: PodServer) -> Self {
        Server {
            inner,
            _cluster: PhantomData,
        }
    }

    /// Kills the server and waits for it.
    pub fn stop(self) {
        self.inner.stop();
    }
}

impl Deref for Server<'_> {
    type Target = PodServer;

    fn deref(&self) -> &PodServer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() {
        let a: Answer = "node1-pod2 10.200.0.2:40001 8080".parse().expect("valid");
        assert_eq!(a.server, "node1-pod2");
        assert_eq!(a.peer, "10.200.0.2:40001".parse().expect("valid"));
        assert_eq!(a.local_port, 8080);
        assert_eq!(a.to_string(), "node1-pod2 10.200.0.2:40001 8080");
        assert!("node1-pod2 10.200.0.2 8080".parse::<Answer>().is_err());
        assert!("a b:1 2 3".parse::<Answer>().is_err());
    }

    #[test]
    fn spec_arguments() {
        let spec = ServerSpec::new("x").tcp(&[1, 2]).udp(&[3]);
        assert_eq!(spec.args(), ["--name", "x", "--tcp", "1,2", "--udp", "3"]);
    }
}
