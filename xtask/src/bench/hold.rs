//! Many TCP connections held open at once, more than one process may hold
//! descriptors for (the machine's `RLIMIT_NOFILE` hard limit may be as low
//! as 20,000, and a process without `CAP_SYS_RESOURCE` cannot raise it).
//!
//! - [`HoldServer`]: a listening socket in a pod's namespace that never
//!   accepts. The pod's kernel completes every handshake, keeps the
//!   connection in the listener's accept queue (backlog 65,535) and
//!   acknowledges the data it receives, so the server holds any number of
//!   connections with one descriptor. [`HoldServer::queued`] reads the
//!   queue's length; [`HoldServer::release`] accepts and closes whatever
//!   is queued.
//! - [`HoldClients`]: worker processes (this binary's hidden `hold-client`
//!   command, run inside the client's namespace) that open connections one
//!   after the other and keep each, [`WORKER_CAPACITY`] per process; they
//!   answer one command per line on stdin (see [`worker`]).
//! - [`acknowledged`]: sends one byte on every held connection and counts
//!   those whose byte the peer acknowledged.

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd as _;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nodeport_tests::Netns;
use nodeport_tests::hold::linger_zero;

/// Port of the hold server (in the pod on node 2).
pub const HOLD_PORT: u16 = 8085;

/// The listening socket's backlog (the pod namespace's `somaxconn` is
/// raised to match, as `listen` caps the backlog at it): the most
/// connections the server holds.
const BACKLOG: i32 = 65_535;

/// Holds connections in the accept queue of a listening socket.
pub struct HoldServer {
    listener: TcpListener,
}

impl HoldServer {
    /// Listens on `port` inside `pod`.
    pub fn start(pod: &Netns, port: u16) -> Result<Self> {
        pod.set_sysctl("net.core.somaxconn", &BACKLOG.to_string());
        let listener = pod
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .with_context(|| format!("binding the hold server on port {port} in {}", pod.name()))?;
        // std listens with a small backlog; listen(2) again raises it.
        // SAFETY: a valid listening socket.
        if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
            return Err(io::Error::last_os_error()).context("listen on the hold server");
        }
        listener.set_nonblocking(true)?;
        Ok(Self { listener })
    }

    /// Connections the pod's kernel established and holds for the server
    /// (the accept queue's length: `TCP_INFO`'s `tcpi_unacked` of a
    /// listening socket).
    #[must_use]
    pub fn queued(&self) -> u64 {
        // SAFETY: tcp_info is plain data; zero is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let Ok(mut len) = libc::socklen_t::try_from(size_of::<libc::tcp_info>()) else {
            return 0;
        };
        // SAFETY: a valid socket and a buffer of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &raw mut len,
            )
        };
        if rc == 0 {
            u64::from(info.tcpi_unacked)
        } else {
            0
        }
    }

    /// Accepts and resets every queued connection; how many there were.
    pub fn release(&self) -> usize {
        let mut n = 0;
        while let Ok((s, _)) = self.listener.accept() {
            linger_zero(&s);
            n += 1;
        }
        n
    }
}

impl Drop for HoldServer {
    fn drop(&mut self) {
        self.release();
    }
}

/// One `np-client hold` process.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    capacity: usize,
    held: usize,
}

impl Worker {
    fn spawn(client: &Netns, to: SocketAddr) -> Result<Self> {
        let program = nodeport_tests::server::client_binary();
        let mut child = client
            .command(&program)
            .args(["hold", &to.ip().to_string(), &to.port().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} hold in {}", program.display(), client.name()))?;
        let stdin = child.stdin.take().context("the worker's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the worker's stdout")?);
        let mut worker = Self {
            child,
            stdin: Some(stdin),
            stdout,
            capacity: 0,
            held: 0,
        };
        let ready = worker.answer()?;
        worker.capacity = ready
            .strip_prefix("ready ")
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("the hold worker said {ready:?}, not `ready CAPACITY`"))?;
        if worker.capacity == 0 {
            bail!("the hold worker can hold no connection (descriptor limit)");
        }
        Ok(worker)
    }

    fn send(&mut self, command: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the worker's stdin is closed")?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .context("writing to the hold worker")
    }

    fn answer(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .context("reading from the hold worker")?;
        if n == 0 {
            bail!("the hold worker ended ({:?})", self.child.try_wait());
        }
        Ok(line.trim_end().to_owned())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The end of its input: it resets its connections and ends.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Connections from the client's namespace, held by as many worker
/// processes as their descriptor limits need.
pub struct HoldClients<'a> {
    client: &'a Netns,
    to: SocketAddr,
    workers: Vec<Worker>,
    /// Why the first connection that failed failed.
    pub first_failure: Option<String>,
    /// Time spent opening.
    pub opening: Duration,
}

impl<'a> HoldClients<'a> {
    #[must_use]
    pub fn new(client: &'a Netns, to: SocketAddr) -> Self {
        Self {
            client,
            to,
            workers: Vec::new(),
            first_failure: None,
            opening: Duration::ZERO,
        }
    }

    /// Connections held now.
    #[must_use]
    pub fn held(&self) -> usize {
        self.workers.iter().map(|w| w.held).sum()
    }

    /// Opens connections one after the other until `upto` are held, one
    /// fails (no handshake within `timeout`; nothing more is opened after
    /// it) or `deadline` passes.
    pub fn open_more(&mut self, upto: usize, timeout: Duration, deadline: Instant) -> Result<()> {
        while self.held() < upto && self.first_failure.is_none() {
            let budget = deadline.saturating_duration_since(Instant::now());
            if budget.is_zero() {
                self.first_failure = Some("the time allowed for opening ran out".into());
                break;
            }
            if self.workers.last().is_none_or(|w| w.held >= w.capacity) {
                self.workers.push(Worker::spawn(self.client, self.to)?);
            }
            let others = self.held() - self.workers.last().map_or(0, |w| w.held);
            let worker = self.workers.last_mut().context("a worker")?;
            let want = (upto - others).min(worker.capacity);
            worker.send(&format!(
                "open {want} {} {}",
                timeout.as_millis(),
                budget.as_millis()
            ))?;
            let answer = worker.answer()?;
            let (held, ms, failure) = parse_held(&answer)
                .with_context(|| format!("the hold worker answered {answer:?}"))?;
            worker.held = held;
            self.opening += Duration::from_millis(ms);
            if let Some(why) = failure {
                // Numbered among all connections, not the worker's own.
                self.first_failure = Some(renumber(&why, others));
            }
        }
        Ok(())
    }

    /// Sends one byte on every held connection (all workers at once) and
    /// waits up to `wait` for the acknowledgements: how many connections
    /// are still established with their byte acknowledged.
    pub fn acknowledged(&mut self, wait: Duration) -> Result<usize> {
        let command = format!("ack {}", wait.as_millis());
        for w in &mut self.workers {
            w.send(&command)?;
        }
        let mut acknowledged = 0;
        for w in &mut self.workers {
            let answer = w.answer()?;
            acknowledged += answer
                .strip_prefix("acknowledged ")
                .and_then(|n| n.parse::<usize>().ok())
                .with_context(|| format!("the hold worker answered {answer:?}"))?;
        }
        Ok(acknowledged)
    }

    /// Resets every held connection and ends the workers.
    pub fn reset_all(&mut self) -> Result<()> {
        for w in &mut self.workers {
            w.send("reset")?;
        }
        for w in &mut self.workers {
            let answer = w.answer()?;
            if answer != "reset" {
                bail!("the hold worker answered {answer:?} to a reset");
            }
        }
        self.workers.clear();
        Ok(())
    }
}

/// `held H OPENING_MS [failure REASON]`.
fn parse_held(answer: &str) -> Option<(usize, u64, Option<String>)> {
    let rest = answer.strip_prefix("held ")?;
    let mut words = rest.splitn(3, ' ');
    let held = words.next()?.parse().ok()?;
    let ms = words.next()?.parse().ok()?;
    let failure = match words.next() {
        None => None,
        Some(tail) => Some(tail.strip_prefix("failure ")?.to_owned()),
    };
    Some((held, ms, failure))
}

/// A worker's "connection N: …" as the Nth after `before` others.
fn renumber(why: &str, before: usize) -> String {
    why.strip_prefix("connection ")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(n, tail)| Some((n.parse::<usize>().ok()?, tail)))
        .map_or_else(
            || why.to_owned(),
            |(n, tail)| format!("connection {}:{tail}", n + before),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_answers_parse() {
        assert_eq!(parse_held("held 5 120"), Some((5, 120, None)));
        assert_eq!(
            parse_held("held 7 3 failure connection 8: timed out"),
            Some((7, 3, Some("connection 8: timed out".into())))
        );
        assert_eq!(parse_held("held x 3"), None);
        assert_eq!(parse_held("held 1 2 oops"), None);
        assert_eq!(parse_held("ready 10"), None);
        assert_eq!(
            renumber("connection 8: timed out", 15_000),
            "connection 15008: timed out"
        );
        assert_eq!(renumber("the time ran out", 3), "the time ran out");
    }

    /// One namespace, server and client on its loopback: every connection
    /// is held, acknowledged by the pod's kernel and queued for the server
    /// (counts, exact), across two workers when each may hold only part; a
    /// port nobody listens on is a first failure with nothing held.
    #[test]
    fn holds_connections_in_worker_processes() {
        crate::bench::require_root_for_tests();
        let ns = Netns::create(&format!("np-hold-{}", nodeport_tests::random_hex(3)));
        let server = HoldServer::start(&ns, HOLD_PORT).expect("hold server");
        let to: SocketAddr = (Ipv4Addr::LOCALHOST, HOLD_PORT).into();
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut clients = HoldClients::new(&ns, to);
        clients
            .open_more(300, Duration::from_secs(3), deadline)
            .expect("open");
        assert_eq!(clients.held(), 300, "{:?}", clients.first_failure);
        // A worker that is full: the next connections go to another one.
        clients.workers[0].capacity = 300;
        clients
            .open_more(500, Duration::from_secs(3), deadline)
            .expect("open more");
        assert_eq!(clients.held(), 500, "{:?}", clients.first_failure);
        assert_eq!(clients.workers.len(), 2);
        assert!(clients.first_failure.is_none());
        assert_eq!(
            clients.acknowledged(Duration::from_secs(5)).expect("ack"),
            500
        );
        assert_eq!(server.queued(), 500);
        clients.reset_all().expect("reset");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(server.release(), 500);
        assert_eq!(server.queued(), 0);

        let nobody: SocketAddr = (Ipv4Addr::LOCALHOST, HOLD_PORT + 1).into();
        let mut refused = HoldClients::new(&ns, nobody);
        refused
            .open_more(10, Duration::from_secs(3), deadline)
            .expect("open");
        assert_eq!(refused.held(), 0);
        assert!(
            refused
                .first_failure
                .as_deref()
                .is_some_and(|f| f.starts_with("connection 1:")),
            "{:?}",
            refused.first_failure
        );
    }
}
