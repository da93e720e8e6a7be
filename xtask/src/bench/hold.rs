//! Many TCP connections held open at once, without a thread per
//! connection: [`HoldServer`] accepts on a listening socket made in a pod's
//! namespace and keeps every connection (one thread, a nonblocking accept
//! loop); [`open_more`] opens connections from the client's namespace one
//! after the other and keeps each; [`acknowledged`] checks that every held
//! connection still carries data both ways. Everything is a thread of the
//! benchmark, so this process holds both ends: [`raise_nofile`] lifts its
//! descriptor limit first.

use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nodeport_tests::Netns;

/// Port of the accept-and-hold server (in the pod on node 2).
pub const HOLD_PORT: u16 = 8085;

/// The listening socket's backlog (the pod namespace's `somaxconn` is
/// raised to match, as `listen` caps the backlog at it).
const BACKLOG: i32 = 65_535;

/// Accepts connections and holds them until [`HoldServer::release`].
pub struct HoldServer {
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl HoldServer {
    /// Listens on `port` inside `pod` and starts accepting.
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
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, held, accepted) =
                (Arc::clone(&stop), Arc::clone(&held), Arc::clone(&accepted));
            thread::spawn(move || accept_and_hold(&listener, &stop, &held, &accepted))
        };
        Ok(Self {
            stop,
            held,
            accepted,
            thread: Some(thread),
        })
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Closes every held connection; how many there were.
    pub fn release(&self) -> usize {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(PoisonError::into_inner));
        held.len()
    }
}

impl Drop for HoldServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.release();
    }
}

fn accept_and_hold(
    listener: &TcpListener,
    stop: &AtomicBool,
    held: &Mutex<Vec<TcpStream>>,
    accepted: &AtomicU64,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut p = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&raw mut p, 1, 100) } <= 0 {
            continue;
        }
        // Everything queued, then back to poll.
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    held.lock().unwrap_or_else(PoisonError::into_inner).push(s);
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // Out of descriptors or memory: the connection stays
                    // queued; try again shortly.
                    thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
    }
}

/// Raises this process's `RLIMIT_NOFILE` (soft and, as root, hard) to at
/// least `want` descriptors; returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
        return want;
    }
    // Not allowed to raise the hard limit: up to it.
    let capped = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const capped) } == 0 {
        lim.rlim_max
    } else {
        lim.rlim_cur
    }
}

/// Client connections held open, and the first that failed.
#[derive(Debug, Default)]
pub struct Held {
    pub streams: Vec<TcpStream>,
    /// Why the first connection that failed failed (nothing is opened after
    /// it).
    pub first_failure: Option<String>,
    /// Time spent opening.
    pub opening: Duration,
}

impl Held {
    /// Resets every held connection (`SO_LINGER` 0: no TIME_WAIT state on
    /// either side) and closes it.
    pub fn reset_all(&mut self) {
        for s in self.streams.drain(..) {
            super::traffic::linger_zero(&s);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.reset_all();
    }
}

/// Opens connections to `to` one after the other, in the calling thread's
/// namespace, keeping each, until `held` holds `upto`, one fails (connect
/// error, or no answer within `timeout`; recorded and nothing more opened)
/// or `deadline` passes.
pub fn open_more(
    held: &mut Held,
    to: SocketAddr,
    upto: usize,
    timeout: Duration,
    deadline: Instant,
) {
    let t = Instant::now();
    while held.streams.len() < upto && held.first_failure.is_none() {
        if Instant::now() > deadline {
            held.first_failure = Some("the time allowed for opening ran out".into());
            break;
        }
        match nodeport_tests::client::tcp_connect(to, None, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                held.streams.push(s);
            }
            Err(e) => {
                held.first_failure = Some(format!("connection {}: {e}", held.streams.len() + 1));
            }
        }
    }
    held.opening += t.elapsed();
}

/// The TCP state of a socket (`TCP_INFO`) and the bytes of its send queue
/// not yet acknowledged by the peer (`SIOCOUTQ`: sent or not).
fn tcp_state(s: &TcpStream) -> Option<(u8, i32)> {
    // SAFETY: tcp_info is plain data; zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(size_of::<libc::tcp_info>()).ok()?;
    // SAFETY: a valid socket and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let mut outq: libc::c_int = 0;
    // SAFETY: a valid socket and an int for the ioctl's answer.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &raw mut outq) } != 0 {
        return None;
    }
    Some((info.tcpi_state, outq))
}

/// Sends one byte on every connection and waits up to `wait` for the
/// peer's acknowledgements: how many connections are still established
/// with their byte acknowledged (the path carries data both ways on all of
/// them at once).
pub fn acknowledged(streams: &[TcpStream], wait: Duration) -> usize {
    const TCP_ESTABLISHED: u8 = 1;
    let mut pending: Vec<&TcpStream> = streams
        .iter()
        .filter(|s| {
            let mut w: &TcpStream = s;
            w.write(&[1]).is_ok_and(|n| n == 1)
        })
        .collect();
    let sent = pending.len();
    let deadline = Instant::now() + wait;
    loop {
        pending.retain(|s| !matches!(tcp_state(s), Some((TCP_ESTABLISHED, 0))));
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Established with nothing unacknowledged, at the last look.
    let gone = pending.len();
    sent - gone
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One namespace, server and client on its loopback: every connection
    /// is held and acknowledged, the server accepted each (counts, exact);
    /// a port nobody listens on is a first failure with nothing held.
    #[test]
    fn holds_connections_without_a_thread_each() {
        crate::bench::require_root_for_tests();
        let ns = Netns::create(&format!("np-hold-{}", nodeport_tests::random_hex(3)));
        assert!(raise_nofile(4_096) >= 4_096);
        let server = HoldServer::start(&ns, HOLD_PORT).expect("hold server");
        let to: SocketAddr = (Ipv4Addr::LOCALHOST, HOLD_PORT).into();
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut held = Held::default();
        ns.run(|| open_more(&mut held, to, 500, Duration::from_secs(3), deadline));
        assert_eq!(held.streams.len(), 500, "{:?}", held.first_failure);
        assert!(held.first_failure.is_none());
        assert_eq!(acknowledged(&held.streams, Duration::from_secs(5)), 500);
        // The accept loop catches up with the queue.
        let until = Instant::now() + Duration::from_secs(10);
        while server.accepted() < 500 && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(server.accepted(), 500);
        held.reset_all();
        assert_eq!(server.release(), 500);

        let mut refused = Held::default();
        let nobody: SocketAddr = (Ipv4Addr::LOCALHOST, HOLD_PORT + 1).into();
        ns.run(|| open_more(&mut refused, nobody, 10, Duration::from_secs(3), deadline));
        assert!(refused.streams.is_empty());
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
