//! The end-to-end workload: servers in the pods and load generators in the
//! client, all threads of this process. A socket belongs to the network
//! namespace it was created in, so the servers' sockets are made inside the
//! pods' namespaces and then served from ordinary threads; the clients run
//! inside the client's namespace (threads inherit it from the thread that
//! starts them). Every loop is bounded by a deadline, and every socket
//! operation by a timeout.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nodeport_tests::Netns;
use nodeport_tests::hold::linger_zero;

/// Bytes of every request and response.
pub const MESSAGE: usize = 64;
/// Port of the one-request-per-connection server in every pod that closes
/// first (its side keeps the TIME_WAIT state).
pub const ONESHOT_PORT: u16 = 8080;
/// Port of the one-request-per-connection server that waits for the client
/// to close (the benchmark's clients reset: no TIME_WAIT state anywhere).
pub const RESET_PORT: u16 = 8082;
/// Port of the echo server in every pod.
pub const ECHO_PORT: u16 = 8081;
/// Ports of two more servers like [`ONESHOT_PORT`]'s (the server closes
/// first), for the paced and the unpaced test of the SNAT path: each test
/// meets only the TIME_WAIT sockets it left itself.
pub const CLOSE_PACED_PORT: u16 = 8083;
pub const CLOSE_UNPACED_PORT: u16 = 8084;
/// Port of the UDP sink in every pod.
pub const UDP_PORT: u16 = 9000;
/// Port of iperf3's server.
pub const IPERF_PORT: u16 = 5201;

const IO_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_INTERVAL_MS: i32 = 100;

/// Waits up to 100 ms for `fd` to be readable.
fn readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&raw mut p, 1, POLL_INTERVAL_MS) > 0 }
}

fn set_rcvbuf(fd: i32, bytes: i32) {
    // SAFETY: a valid socket and an int option.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const bytes).cast(),
            size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Servers in the pods, stopped and joined on drop.
pub struct PodServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Datagrams each pod's UDP sink received.
    pub udp_received: Vec<Arc<AtomicU64>>,
}

impl PodServers {
    /// Binds the servers inside each pod's namespace and starts serving.
    pub fn start(pods: &[&Netns]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = PodServers {
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            udp_received: Vec::new(),
        };
        for pod in pods {
            let (oneshots, reset, echo, udp) = pod.run(|| -> io::Result<_> {
                Ok((
                    [ONESHOT_PORT, CLOSE_PACED_PORT, CLOSE_UNPACED_PORT]
                        .map(|p| TcpListener::bind((Ipv4Addr::UNSPECIFIED, p))),
                    TcpListener::bind((Ipv4Addr::UNSPECIFIED, RESET_PORT))?,
                    TcpListener::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT))?,
                    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT))?,
                ))
            })?;
            for oneshot in oneshots {
                let oneshot = oneshot?;
                for listener in [oneshot.try_clone()?, oneshot] {
                    listener.set_nonblocking(true)?;
                    let stop = Arc::clone(&stop);
                    servers.threads.push(thread::spawn(move || {
                        accept_loop(&listener, &stop, oneshot_conn);
                    }));
                }
            }
            for listener in [reset.try_clone()?, reset] {
                listener.set_nonblocking(true)?;
                let stop = Arc::clone(&stop);
                servers.threads.push(thread::spawn(move || {
                    accept_loop(&listener, &stop, reset_conn);
                }));
            }
            echo.set_nonblocking(true)?;
            let stop_echo = Arc::clone(&stop);
            servers.threads.push(thread::spawn(move || {
                accept_loop(&echo, &stop_echo, |s| {
                    thread::spawn(move || echo_conn(&s));
                });
            }));
            set_rcvbuf(udp.as_raw_fd(), 4 << 20);
            udp.set_read_timeout(Some(Duration::from_millis(100)))?;
            let count = Arc::new(AtomicU64::new(0));
            servers.udp_received.push(Arc::clone(&count));
            let stop_udp = Arc::clone(&stop);
            servers.threads.push(thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop_udp.load(Ordering::Relaxed) {
                    if udp.recv(&mut buf).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(servers)
    }

    /// Datagrams received by all sinks so far.
    #[must_use]
    pub fn udp_total(&self) -> u64 {
        self.udp_received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for PodServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, handle: impl Fn(TcpStream)) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener.as_raw_fd()) {
            continue;
        }
        if let Ok((s, _)) = listener.accept() {
            if s.set_nonblocking(false).is_err() {
                continue;
            }
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
            handle(s);
        }
    }
}

/// One request, one response, then the server closes (so the TIME_WAIT
/// state stays on the server side, as with an HTTP server closing).
fn oneshot_conn(mut s: TcpStream) {
    let mut buf = [0u8; MESSAGE];
    if s.read_exact(&mut buf).is_ok() {
        let _ = s.write_all(&buf);
    }
}

/// One request, one response, then waits for the client's close (a reset
/// from the benchmark's clients).
fn reset_conn(mut s: TcpStream) {
    let mut buf = [0u8; MESSAGE];
    if s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Echoes until the client closes (or 2 s of silence).
fn echo_conn(s: &TcpStream) {
    let mut buf = [0u8; 4096];
    let mut r = s;
    let mut w = s;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if w.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// How a request's connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The server closes first and keeps TIME_WAIT; the client reads its
    /// close (to [`ONESHOT_PORT`]).
    ServerFirst,
    /// The client resets the connection after the response (to
    /// [`RESET_PORT`]): no TIME_WAIT state anywhere.
    ClientReset,
}

/// One request on a new connection: connect, send, read the response, end
/// the connection as `close` says. In the calling thread's namespace.
pub fn request(to: SocketAddr, close: Close) -> io::Result<()> {
    let mut s = nodeport_tests::client::tcp_connect(to, None, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&[7u8; MESSAGE])?;
    let mut buf = [0u8; MESSAGE];
    s.read_exact(&mut buf)?;
    match close {
        Close::ServerFirst => {
            let mut rest = [0u8; 16];
            while s.read(&mut rest)? > 0 {}
        }
        Close::ClientReset => linger_zero(&s),
    }
    Ok(())
}

/// Connections per second: `threads` clients making requests to `targets`
/// (round robin) for `warmup`, then `windows` windows of `window` each.
#[derive(Clone, Debug, Default)]
pub struct Rate {
    /// Completions per second in each window.
    pub per_window: Vec<f64>,
    pub ok: u64,
    pub errors: u64,
}

impl Rate {
    #[must_use]
    pub fn median(&self) -> f64 {
        super::stats::median(&self.per_window).unwrap_or(0.0)
    }
}

/// Samples `counter` at window boundaries; returns per-second rates.
fn windows(counter: &dyn Fn() -> u64, warmup: Duration, window: Duration, n: usize) -> Vec<f64> {
    thread::sleep(warmup);
    let mut last = counter();
    let mut t = Instant::now();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        thread::sleep(window);
        let now = counter();
        let dt = t.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        out.push((now - last) as f64 / dt);
        last = now;
        t = Instant::now();
    }
    out
}

/// The latest a load loop may run: warm-up, windows and 5 s to spare.
fn deadline(warmup: Duration, window: Duration, n: usize) -> Instant {
    Instant::now() + warmup + window * u32::try_from(n).unwrap_or(u32::MAX) + Duration::from_secs(5)
}

/// New TCP connections per second, in the calling thread's namespace.
#[must_use]
pub fn connection_rate(
    targets: &[SocketAddr],
    close: Close,
    threads: usize,
    warmup: Duration,
    window: Duration,
    n: usize,
) -> Rate {
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let deadline = deadline(warmup, window, n);
    let per_window = thread::scope(|s| {
        for t in 0..threads {
            let (ok, errors, stop) = (&ok, &errors, &stop);
            s.spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let to = targets[i % targets.len()];
                    i += 1;
                    if request(to, close).is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let w = windows(&|| ok.load(Ordering::Relaxed), warmup, window, n);
        stop.store(true, Ordering::Relaxed);
        w
    });
    Rate {
        per_window,
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Requests at a fixed rate: what [`paced_requests`] measured.
#[derive(Clone, Debug, Default)]
pub struct Paced {
    /// Completions per second in each window.
    pub per_window: Vec<f64>,
    pub ok: u64,
    pub errors: u64,
    /// Durations of the completed requests.
    pub latencies: Vec<Duration>,
}

impl Paced {
    #[must_use]
    pub fn median(&self) -> f64 {
        super::stats::median(&self.per_window).unwrap_or(f64::NAN)
    }
}

/// Requests to `targets` (round robin) started at `rate` per second for
/// `windows` windows of `window` each, in the calling thread's namespace:
/// request `k` is due `k / rate` seconds after the start and is made by one
/// of `workers` threads, so a slow request (a SYN retransmitted after a
/// refusal) delays no other. A worker that falls behind catches up without
/// sleeping; none starts later than 5 s after the last window (where
/// requests keep failing slowly, fewer are made than were due).
#[must_use]
pub fn paced_requests(
    targets: &[SocketAddr],
    close: Close,
    rate: f64,
    workers: usize,
    window: Duration,
    n: usize,
) -> Paced {
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let end = start + window * u32::try_from(n).unwrap_or(u32::MAX);
    let last_start = end + Duration::from_secs(5);
    let (per_window, latencies) = thread::scope(|s| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                let (ok, errors, next) = (&ok, &errors, &next);
                s.spawn(move || {
                    let mut lat = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
                        let due = start + Duration::from_secs_f64(k as f64 / rate);
                        if due >= end || Instant::now() > last_start {
                            break;
                        }
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                        let to = targets[usize::try_from(k).unwrap_or(0) % targets.len()];
                        let t = Instant::now();
                        if request(to, close).is_ok() {
                            lat.push(t.elapsed());
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    lat
                })
            })
            .collect();
        let w = windows(&|| ok.load(Ordering::Relaxed), Duration::ZERO, window, n);
        let lat: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        (w, lat)
    });
    Paced {
        per_window,
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        latencies,
    }
}

/// Latencies of sequential requests, each on a new connection (round robin
/// over `targets`); failed requests are counted, not timed.
#[must_use]
pub fn request_latencies(
    targets: &[SocketAddr],
    close: Close,
    samples: usize,
) -> (Vec<Duration>, u64) {
    let mut out = Vec::with_capacity(samples);
    let mut errors = 0;
    let deadline = Instant::now() + Duration::from_mins(1);
    for i in 0..samples {
        if Instant::now() > deadline {
            break;
        }
        let t = Instant::now();
        match request(targets[i % targets.len()], close) {
            Ok(()) => out.push(t.elapsed()),
            Err(_) => errors += 1,
        }
    }
    (out, errors)
}

/// Round trips of `MESSAGE` bytes on established connections to echo
/// servers: `connections` connections (round robin over `targets`), each
/// used for `samples / connections` round trips.
pub fn round_trips(
    targets: &[SocketAddr],
    connections: usize,
    samples: usize,
) -> io::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(samples);
    let deadline = Instant::now() + Duration::from_mins(1);
    for c in 0..connections {
        let mut s =
            nodeport_tests::client::tcp_connect(targets[c % targets.len()], None, IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let msg = [3u8; MESSAGE];
        let mut buf = [0u8; MESSAGE];
        for _ in 0..samples / connections {
            if Instant::now() > deadline {
                break;
            }
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut buf)?;
            out.push(t.elapsed());
        }
    }
    Ok(out)
}

/// UDP datagrams per second sent by `threads` senders (each its own socket,
/// so its own flow; thread `t` sends to `targets[t % len]`) and received by
/// the sinks (`received` counts them).
#[derive(Clone, Debug, Default)]
pub struct UdpRate {
    pub sent_per_window: Vec<f64>,
    pub received_per_window: Vec<f64>,
}

#[must_use]
pub fn udp_rate(
    targets: &[SocketAddr],
    threads: usize,
    received: &(dyn Fn() -> u64 + Sync),
    warmup: Duration,
    window: Duration,
    n: usize,
) -> UdpRate {
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let deadline = deadline(warmup, window, n);
    // Both counters are sampled at the same boundaries.
    let both = || (sent.load(Ordering::Relaxed), received());
    let (sent_w, recv_w) = thread::scope(|s| {
        for t in 0..threads {
            let (sent, stop) = (&sent, &stop);
            let to = targets[t % targets.len()];
            s.spawn(move || {
                let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
                    return;
                };
                if sock.connect(to).is_err() {
                    return;
                }
                let msg = [5u8; MESSAGE];
                let mut batch = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Errors (a full queue, an ICMP error) are not sends.
                    if sock.send(&msg).is_ok() {
                        batch += 1;
                    }
                    if batch == 64 {
                        sent.fetch_add(batch, Ordering::Relaxed);
                        batch = 0;
                        if Instant::now() > deadline {
                            break;
                        }
                    }
                }
                sent.fetch_add(batch, Ordering::Relaxed);
            });
        }
        thread::sleep(warmup);
        let mut last = both();
        let mut t = Instant::now();
        let (mut sw, mut rw) = (Vec::new(), Vec::new());
        for _ in 0..n {
            thread::sleep(window);
            let now = both();
            let dt = t.elapsed().as_secs_f64();
            #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            {
                sw.push((now.0 - last.0) as f64 / dt);
                rw.push((now.1 - last.1) as f64 / dt);
            }
            last = now;
            t = Instant::now();
        }
        stop.store(true, Ordering::Relaxed);
        (sw, rw)
    });
    UdpRate {
        sent_per_window: sent_w,
        received_per_window: recv_w,
    }
}

/// An `iperf3 -s` in a namespace, killed on drop.
pub struct IperfServer {
    child: std::process::Child,
}

impl IperfServer {
    pub fn start(ns: &Netns) -> Result<Self> {
        let mut child = ns
            .command("iperf3")
            .args(["-s", "--forceflush", "-p", &IPERF_PORT.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        let stdout = child.stdout.take().context("iperf3 stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut reader = io::BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match io::BufRead::read_line(&mut reader, &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if line.contains("Server listening") {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        });
        let server = Self { child };
        rx.recv_timeout(Duration::from_secs(10))
            .context("iperf3 -s did not start listening within 10 s")?;
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `iperf3 -c` from `ns` for `seconds` (after one omitted second): the
/// receiver's throughput in Gbit/s.
pub fn iperf(ns: &Netns, to: SocketAddr, seconds: u32) -> Result<f64> {
    let out = ns
        .command("iperf3")
        .args([
            "-c",
            &to.ip().to_string(),
            "-p",
            &to.port().to_string(),
            "-t",
            &seconds.to_string(),
            "-O",
            "1",
            "-J",
            "--connect-timeout",
            "3000",
        ])
        .output()
        .context("running iperf3 -c")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 -c {to} printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = json.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3 -c {to}: {e}");
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 -c {to}: no end.sum_received in its JSON"))?;
    Ok(bps / 1e9)
}
