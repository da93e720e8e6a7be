//! TCP, UDP and ICMP client helpers with timeouts everywhere.
//!
//! The free functions work in the calling thread's network namespace (use
//! them inside [`Netns::run`]); [`Client`] wraps them to run in a given
//! namespace: the cluster's client, a node, or a pod.
//!
//! Errors keep a meaningful [`io::ErrorKind`] and name the target:
//! - `ConnectionRefused`: TCP RST to the SYN, or (UDP) an ICMP port
//!   unreachable, which a connected UDP socket reports on `recv`;
//! - `TimedOut`: no answer within the timeout (dropped somewhere);
//! - `HostUnreachable` / `NetworkUnreachable`: ICMP or routing errors;
//! - `ConnectionReset`: RST after the connection was established.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// Default timeout of every client operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a TCP connection attempt ended.
#[derive(Debug)]
pub enum ConnectResult {
    /// The handshake completed.
    Connected,
    /// The SYN was answered with RST (or ICMP port unreachable).
    Refused,
    /// Nothing came back within the timeout.
    TimedOut,
    /// Anything else, e.g. host or network unreachable.
    Failed(io::Error),
}

impl ConnectResult {
    #[must_use]
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectResult::Connected)
    }

    #[must_use]
    pub fn is_refused(&self) -> bool {
        matches!(self, ConnectResult::Refused)
    }

    #[must_use]
    pub fn is_timed_out(&self) -> bool {
        matches!(self, ConnectResult::TimedOut)
    }
}

/// The client helpers, run inside one network namespace.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    ns: &'a Netns,
    timeout: Duration,
}

impl<'a> Client<'a> {
    #[must_use]
    pub fn new(ns: &'a Netns) -> Client<'a> {
        Client {
            ns,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another timeout for each operation.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Client<'a> {
        Client { timeout, ..self }
    }

    #[must_use]
    pub fn netns(&self) -> &'a Netns {
        self.ns
    }

    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connects to `addr:port`, reads the first line the server sends and
    /// returns it without the newline.
    pub fn tcp_request(&self, addr: impl Into<IpAddr>, port: u16) -> io::Result<String> {
        let to = SocketAddr::new(addr.into(), port);
        let timeout = self.timeout;
        self.ns.run(move || tcp_request(to, None, timeout))
    }

    /// [`Client::tcp_request`] from a given local address and/or port
    /// (`SO_REUSEADDR` is set, so a port can be reused at once).
    pub fn tcp_request_from(
        &self,
        local: SocketAddr,
        addr: impl Into<IpAddr>,
        port: u16,
    ) -> io::Result<String> {
        let to = SocketAddr::new(addr.into(), port);
        let timeout = self.timeout;
        self.ns.run(move || tcp_request(to, Some(local), timeout))
    }

    /// Only the TCP handshake: connected, refused (RST) or timed out.
    #[must_use]
    pub fn tcp_connect_result(&self, addr: impl Into<IpAddr>, port: u16) -> ConnectResult {
        let to = SocketAddr::new(addr.into(), port);
        let timeout = self.timeout;
        self.ns.run(move || tcp_connect_result(to, timeout))
    }

    /// Against an `np-podserver` echo port: reads the greeting line, sends
    /// `len` bytes, checks they come back unchanged, returns the line.
    pub fn tcp_echo(&self, addr: impl Into<IpAddr>, port: u16, len: usize) -> io::Result<String> {
        let to = SocketAddr::new(addr.into(), port);
        let timeout = self.timeout;
        self.ns.run(move || tcp_echo(to, len, timeout))
    }

    /// Sends one datagram to `addr:port` from a connected socket (bound to
    /// `from_port` when given) and returns the answer without the newline.
    /// ICMP port unreachable gives `ConnectionRefused`, silence `TimedOut`.
    pub fn udp_request(
        &self,
        addr: impl Into<IpAddr>,
        port: u16,
        from_port: Option<u16>,
    ) -> io::Result<String> {
        let to = SocketAddr::new(addr.into(), port);
        let local = SocketAddr::new(unspecified_like(to.ip()), from_port.unwrap_or(0));
        let timeout = self.timeout;
        self.ns.run(move || udp_request(to, local, timeout))
    }

    /// Sends one datagram of `len` bytes after a first line (larger than an
    /// MTU: the client's stack fragments it) and checks that the server
    /// echoes them after its answer line, which is returned.
    pub fn udp_echo(&self, addr: impl Into<IpAddr>, port: u16, len: usize) -> io::Result<String> {
        let to = SocketAddr::new(addr.into(), port);
        let timeout = self.timeout;
        self.ns.run(move || udp_echo(to, len, timeout))
    }

    /// [`Client::tcp_request`] and [`Client::udp_request`] with IPv4
    /// options (`IP_OPTIONS`) on every packet the client sends: TCP or UDP
    /// by `udp`.
    pub fn request_with_ip_options(
        &self,
        addr: Ipv4Addr,
        port: u16,
        udp: bool,
        options: &[u8],
    ) -> io::Result<String> {
        let to = SocketAddr::new(IpAddr::V4(addr), port);
        let timeout = self.timeout;
        let options = options.to_vec();
        self.ns
            .run(move || request_with_ip_options(to, udp, &options, timeout))
    }

    /// [`Client::udp_request`] from a given local address and port.
    pub fn udp_request_from(
        &self,
        local: SocketAddr,
        addr: impl Into<IpAddr>,
        port: u16,
    ) -> io::Result<String> {
        let to = SocketAddr::new(addr.into(), port);
        let timeout = self.timeout;
        self.ns.run(move || udp_request(to, local, timeout))
    }

    /// ICMP echo to `addr`; returns the round-trip time.
    pub fn ping(&self, addr: Ipv4Addr) -> io::Result<Duration> {
        let timeout = self.timeout;
        self.ns.run(move || ping(addr, timeout))
    }

    /// Sends "fragmentation needed" (next-hop MTU `mtu`) to `addr`,
    /// quoting a UDP datagram from `quoted_from` to `quoted_to` (its IPv4
    /// header and UDP header, checksum none), as a host or router on the
    /// datagram's path would.
    pub fn send_frag_needed(
        &self,
        addr: Ipv4Addr,
        mtu: u16,
        quoted_from: SocketAddr,
        quoted_to: SocketAddr,
    ) -> io::Result<()> {
        self.ns
            .run(move || send_frag_needed(addr, mtu, quoted_from, quoted_to))
    }
}

/// See [`Client::send_frag_needed`]; in the calling thread's network
/// namespace.
pub fn send_frag_needed(
    addr: Ipv4Addr,
    mtu: u16,
    quoted_from: SocketAddr,
    quoted_to: SocketAddr,
) -> io::Result<()> {
    let (IpAddr::V4(from), IpAddr::V4(to)) = (quoted_from.ip(), quoted_to.ip()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    let udp_len: u16 = 8 + 512;
    let mut quoted = vec![0x45, 0];
    quoted.extend_from_slice(&(20 + udp_len).to_be_bytes());
    quoted.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    quoted.extend_from_slice(&from.octets());
    quoted.extend_from_slice(&to.octets());
    let c = inet_checksum(&quoted);
    quoted[10..12].copy_from_slice(&c.to_be_bytes());
    quoted.extend_from_slice(&quoted_from.port().to_be_bytes());
    quoted.extend_from_slice(&quoted_to.port().to_be_bytes());
    quoted.extend_from_slice(&udp_len.to_be_bytes());
    quoted.extend_from_slice(&[0, 0]);
    let mut packet = vec![3, 4, 0, 0, 0, 0];
    packet.extend_from_slice(&mtu.to_be_bytes());
    packet.extend_from_slice(&quoted);
    let sum = inet_checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());

    let dest = SocketAddr::new(IpAddr::V4(addr), 0);
    let fd = icmp_socket().map_err(|e| context(&e, "ICMP socket for", dest))?;
    let (sa, len) = sockaddr(dest);
    // SAFETY: packet and sa are valid buffers of the given lengths.
    cvt_size(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const sa).cast(),
            len,
        )
    })
    .map_err(|e| context(&e, "ICMP send to", dest))?;
    Ok(())
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// Adds the operation and target to an error, keeping its kind.
fn context(e: &io::Error, what: &str, to: SocketAddr) -> io::Error {
    let kind = match e.kind() {
        // A socket read timeout surfaces as EAGAIN on Linux.
        io::ErrorKind::WouldBlock => io::ErrorKind::TimedOut,
        k => k,
    };
    io::Error::new(kind, format!("{what} {to}: {e}"))
}

/// Connects (optionally from `local`) with a timeout; in the calling
/// thread's network namespace.
///
/// With a fixed `local` address, "address in use" is retried until the
/// timeout: the previous socket on that port may still be held for a moment
/// by a child process that another thread forked before closing it.
pub fn tcp_connect(
    to: SocketAddr,
    local: Option<SocketAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tcp_connect_once(to, local, left) {
            Err(e) if local.is_some() && is_addr_busy(&e) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn is_addr_busy(e: &io::Error) -> bool {
    // EADDRNOTAVAIL is also what connect says when the 4-tuple is taken.
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
    )
}

fn tcp_connect_once(
    to: SocketAddr,
    local: Option<SocketAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(local) = local {
        set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        let (addr, len) = sockaddr(local);
        // SAFETY: addr is a valid sockaddr of length len.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
    }
    let (addr, len) = sockaddr(to);
    // SAFETY: addr is a valid sockaddr of length len.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        if !poll_one(fd.as_raw_fd(), libc::POLLOUT, timeout)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer to the SYN within {timeout:?}"),
            ));
        }
        let so_error = get_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR)?;
        if so_error != 0 {
            return Err(io::Error::from_raw_os_error(so_error));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// See [`Client::tcp_request`]; in the calling thread's network namespace.
pub fn tcp_request(
    to: SocketAddr,
    local: Option<SocketAddr>,
    timeout: Duration,
) -> io::Result<String> {
    let stream = tcp_connect(to, local, timeout).map_err(|e| context(&e, "tcp connect", to))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| context(&e, "tcp", to))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| context(&e, "tcp read from", to))?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("tcp read from {to}: connection closed without an answer"),
        ));
    }
    // Let the server close first (np-podserver does at once), so the
    // client's end does not linger in TIME_WAIT and the same source port
    // can be used again right away.
    let mut rest = [0u8; 512];
    let mut reader = &stream;
    while matches!(reader.read(&mut rest), Ok(n) if n > 0) {}
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// See [`Client::tcp_connect_result`].
#[must_use]
pub fn tcp_connect_result(to: SocketAddr, timeout: Duration) -> ConnectResult {
    match tcp_connect(to, None, timeout) {
        Ok(_) => ConnectResult::Connected,
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectResult::Refused,
            io::ErrorKind::TimedOut => ConnectResult::TimedOut,
            _ => ConnectResult::Failed(context(&e, "tcp connect", to)),
        },
    }
}

/// See [`Client::tcp_echo`].
pub fn tcp_echo(to: SocketAddr, len: usize, timeout: Duration) -> io::Result<String> {
    let stream = tcp_connect(to, None, timeout).map_err(|e| context(&e, "tcp connect", to))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let payload: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(7) % 251) as u8).collect();
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| context(&e, "tcp read from", to))?;
    let (echoed, written) = thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut w = &stream;
            w.write_all(&payload)?;
            stream.shutdown(Shutdown::Write)
        });
        let mut echoed = Vec::with_capacity(len);
        let read = reader.read_to_end(&mut echoed).map(|_| echoed);
        (
            read,
            writer
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    });
    written.map_err(|e| context(&e, "tcp write to", to))?;
    let echoed = echoed.map_err(|e| context(&e, "tcp read from", to))?;
    if echoed != payload {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "tcp echo {to}: sent {len} bytes, got {} back{}",
                echoed.len(),
                if echoed.len() == len {
                    " (different)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// See [`Client::udp_request`]; in the calling thread's network namespace.
///
/// A busy fixed local port is retried until the timeout (see [`tcp_connect`]).
pub fn udp_request(to: SocketAddr, local: SocketAddr, timeout: Duration) -> io::Result<String> {
    let deadline = Instant::now() + timeout;
    let socket = loop {
        match UdpSocket::bind(local) {
            Err(e)
                if local.port() != 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(20));
            }
            result => break result.map_err(|e| context(&e, "udp bind for", to))?,
        }
    };
    socket
        .connect(to)
        .map_err(|e| context(&e, "udp connect", to))?;
    socket.set_read_timeout(Some(timeout))?;
    socket
        .send(b"hello\n")
        .map_err(|e| context(&e, "udp send to", to))?;
    let mut buf = [0u8; 2048];
    let n = socket
        .recv(&mut buf)
        .map_err(|e| context(&e, "udp recv from", to))?;
    Ok(String::from_utf8_lossy(&buf[..n])
        .trim_end_matches(['\n', '\r'])
        .to_owned())
}

/// See [`Client::request_with_ip_options`]; in the calling thread's
/// network namespace.
pub fn request_with_ip_options(
    to: SocketAddr,
    udp: bool,
    options: &[u8],
    timeout: Duration,
) -> io::Result<String> {
    let kind = if udp {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: plain socket(2) call.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) })
        .map_err(|e| context(&e, "socket for", to))?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let set = |level, name, value: *const libc::c_void, len: usize| {
        // SAFETY: `value` points to `len` readable bytes.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                value,
                libc::socklen_t::try_from(len).unwrap_or(0),
            )
        })
    };
    set(
        libc::IPPROTO_IP,
        libc::IP_OPTIONS,
        options.as_ptr().cast(),
        options.len(),
    )
    .map_err(|e| context(&e, "IP_OPTIONS for", to))?;
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(5),
        tv_usec: 0,
    };
    for name in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
        set(
            libc::SOL_SOCKET,
            name,
            (&raw const tv).cast(),
            size_of::<libc::timeval>(),
        )
        .map_err(|e| context(&e, "socket timeouts for", to))?;
    }
    let (sa, len) = sockaddr(to);
    // SAFETY: sa is a valid sockaddr of length len.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) })
        .map_err(|e| context(&e, "connect", to))?;
    let mut buf = [0u8; 2048];
    let n = if udp {
        let socket = UdpSocket::from(fd);
        socket
            .send(b"hello\n")
            .map_err(|e| context(&e, "udp send to", to))?;
        socket
            .recv(&mut buf)
            .map_err(|e| context(&e, "udp recv from", to))?
    } else {
        let mut stream = TcpStream::from(fd);
        let n = stream
            .read(&mut buf)
            .map_err(|e| context(&e, "tcp read from", to))?;
        let mut rest = [0u8; 512];
        while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
        n
    };
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// See [`Client::udp_echo`]; in the calling thread's network namespace.
pub fn udp_echo(to: SocketAddr, len: usize, timeout: Duration) -> io::Result<String> {
    let socket = UdpSocket::bind(SocketAddr::new(unspecified_like(to.ip()), 0))?;
    socket
        .connect(to)
        .map_err(|e| context(&e, "udp connect", to))?;
    socket.set_read_timeout(Some(timeout))?;
    let payload: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(13) % 251) as u8).collect();
    let mut datagram = b"echo\n".to_vec();
    datagram.extend_from_slice(&payload);
    socket
        .send(&datagram)
        .map_err(|e| context(&e, "udp send to", to))?;
    let mut buf = vec![0u8; 65536];
    let n = socket
        .recv(&mut buf)
        .map_err(|e| context(&e, "udp recv from", to))?;
    let nl = buf[..n].iter().position(|b| *b == b'\n').ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("udp echo {to}: no answer line"),
        )
    })?;
    if buf[nl + 1..n] != payload[..] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "udp echo {to}: sent {len} bytes, {} came back{}",
                n - nl - 1,
                if n - nl - 1 == len { ", altered" } else { "" }
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&buf[..nl]).into_owned())
}

/// A raw ICMP socket (the kernel adds the IPv4 header to what is sent).
fn icmp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// See [`Client::ping`]: ICMP echo over a raw socket.
pub fn ping(addr: Ipv4Addr, timeout: Duration) -> io::Result<Duration> {
    let to = SocketAddr::new(IpAddr::V4(addr), 0);
    let fd = icmp_socket().map_err(|e| context(&e, "ping socket for", to))?;
    // Only receive from addr.
    let (sa, len) = sockaddr(to);
    // SAFETY: sa is a valid sockaddr of length len.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) })
        .map_err(|e| context(&e, "ping connect", to))?;

    let id = (std::process::id() as u16) ^ (thread_token() as u16);
    let seq: u16 = 1;
    let mut packet = [0u8; 24];
    packet[0] = 8; // echo request
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    packet[8..].copy_from_slice(b"nodeport-tests!!");
    let sum = inet_checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());

    let start = Instant::now();
    // SAFETY: packet is a valid buffer of the given length.
    cvt_size(unsafe { libc::send(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0) })
        .map_err(|e| context(&e, "ping send to", to))?;
    let deadline = start + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline || !poll_one(fd.as_raw_fd(), libc::POLLIN, deadline - now)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("ping {addr}: no echo reply within {timeout:?}"),
            ));
        }
        // SAFETY: buf is a valid buffer of the given length.
        let n =
            cvt_size(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })
                .map_err(|e| context(&e, "ping recv from", to))?;
        // Raw IPv4 sockets deliver the IP header too.
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let icmp = &buf[ihl.min(n)..n];
        if icmp.len() >= 8
            && icmp[0] == 0
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(start.elapsed());
        }
    }
}

/// A per-thread number, to tell concurrent pings apart.
fn thread_token() -> u32 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    tid.cast_unsigned()
}

/// The Internet checksum (RFC 1071) of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt_size(rc: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Waits until `fd` has one of `events`; `Ok(false)` on timeout.
fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd array of length 1.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        match rc {
            0 if Instant::now() >= deadline => return Ok(false),
            0 => {}
            r if r > 0 => return Ok(true),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a valid c_int of the given size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            socklen_of::<libc::c_int>(),
        )
    })
    .map(drop)
}

fn get_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: value and len are valid out pointers of matching size.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) })?;
    Ok(value)
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).expect("small type")
}

/// `addr` as a `sockaddr_storage` and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            (storage, socklen_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            (storage, socklen_of::<libc::sockaddr_in6>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_icmp_echo() {
        // Echo request, id 0x1234, seq 1, no payload: checksum 0xe5ca.
        let mut p = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
        let sum = inet_checksum(&p);
        assert_eq!(sum, 0xe5ca);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(inet_checksum(&p), 0);
    }

    #[test]
    fn timeouts_are_reported_as_timed_out() {
        let e = io::Error::from(io::ErrorKind::WouldBlock);
        let to: SocketAddr = "10.0.0.1:80".parse().expect("valid");
        assert_eq!(
            context(&e, "tcp read from", to).kind(),
            io::ErrorKind::TimedOut
        );
    }
}
