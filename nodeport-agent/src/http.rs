//! A tiny HTTP/1.1 server on std sockets for the agent's own endpoints:
//! `/healthz` and `/livez`, `/metrics`, and one server per
//! `healthCheckNodePort`. Clients of these endpoints are probes, load
//! balancers and Prometheus: one short GET per connection, so each
//! connection serves one request and closes (`Connection: close`).
//!
//! A [`Server`] owns its listening socket and accept thread; dropping it
//! stops accepting and closes the port before `drop` returns, so a port can
//! be rebound at once (a health check that moves, a restart).

use std::fmt::Write as _;
use std::io::{self, BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::debug;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Request heads larger than this are refused.
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once per server; more are closed at once (each
/// holds a thread for at most [`READ_TIMEOUT`] while its client is slow).
const MAX_CONNECTIONS: usize = 64;
/// How often the accept loop checks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(100);

/// A server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve {what} on {addr}")]
pub struct BindError {
    pub what: String,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// The parts of a request the handlers look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The query string (after `?`), undecoded; empty when absent.
    pub query: String,
}

/// A complete response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `Content-Type: content_type`.
    #[must_use]
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// A JSON response (`Content-Type: application/json`).
    #[must_use]
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }

    /// A plain-text response.
    #[must_use]
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }

    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// 404 for paths a server does not serve.
    #[must_use]
    pub fn not_found() -> Self {
        Self::text(404, "404 page not found\n")
    }

    fn write_to(&self, w: &mut impl io::Write, head_only: bool) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        let _ = write!(
            head,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        );
        w.write_all(head.as_bytes())?;
        if !head_only {
            w.write_all(&self.body)?;
        }
        w.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What a server answers with.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A running server; dropping it closes the port.
pub struct Server {
    addr: SocketAddr,
    what: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `addr` and serves `handler` on a thread of its own. `what`
    /// names the server in logs and errors.
    pub fn bind(addr: SocketAddr, what: &str, handler: Handler) -> Result<Self, BindError> {
        let bind_err = |source| BindError {
            what: what.to_owned(),
            addr,
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let what = what.to_owned();
            std::thread::Builder::new()
                .name(format!("http-{}", local.port()))
                .spawn(move || accept_loop(&listener, &stop, &handler, &what))
                .map_err(bind_err)?
        };
        Ok(Self {
            addr: local,
            what: what.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (with the actual port when bound to port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        debug!(addr = %self.addr, what = %self.what, "HTTP server closed");
    }
}

/// Waits up to `timeout` for the listener to become readable.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&raw mut pfd, 1, ms) > 0 }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, handler: &Handler, what: &str) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener, STOP_POLL) {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    debug!(what, %peer, "too many open connections; closing a new one");
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                let handler = Arc::clone(handler);
                let done = Arc::clone(&active);
                let spawned =
                    std::thread::Builder::new()
                        .name("http-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve_connection(&stream, &handler) {
                                debug!(%peer, error = %e, "HTTP connection failed");
                            }
                            done.fetch_sub(1, Ordering::Relaxed);
                        });
                if let Err(e) = spawned {
                    active.fetch_sub(1, Ordering::Relaxed);
                    debug!(what, error = %e, "cannot spawn an HTTP connection thread");
                }
            }
            Err(e) => debug!(what, error = %e, "accept failed"),
        }
    }
}

/// Reads one request head and answers it.
fn serve_connection(stream: &TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Ok(()); // closed before a complete head
        }
        if head.len() > MAX_HEAD {
            return Response::text(400, "request head too large\n").write_to(&mut &*stream, false);
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let Some(req) = parse_head(&head) else {
        return Response::text(400, "bad request\n").write_to(&mut &*stream, false);
    };
    let resp = match req.method.as_str() {
        "GET" | "HEAD" => handler(&req),
        _ => Response::text(405, "method not allowed\n").with_header("Allow", "GET, HEAD"),
    };
    resp.write_to(&mut &*stream, req.method == "HEAD")
}

/// Parses `METHOD target HTTP/x.y` (headers are not needed).
fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let first = text.lines().next()?;
    let mut parts = first.split_whitespace();
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn get(addr: SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(raw.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn serves_closes_and_frees_the_port() {
        let handler: Handler = Arc::new(|r: &Request| {
            if r.path == "/hello" {
                Response::text(200, format!("hi {}\n", r.query))
            } else {
                Response::not_found()
            }
        });
        let server =
            Server::bind("127.0.0.1:0".parse().unwrap(), "test", handler.clone()).expect("bind");
        let addr = server.local_addr();
        let out = get(addr, "GET /hello?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Length: 7\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhi x=1\n"), "{out}");
        let out = get(addr, "HEAD /hello HTTP/1.1\r\n\r\n");
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("\r\n\r\n"),
            "{out}"
        );
        let out = get(addr, "GET /nope HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        let out = get(addr, "POST /hello HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 405 "), "{out}");
        let out = get(addr, "garbage\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");

        drop(server);
        assert!(TcpStream::connect(addr).is_err(), "closed after drop");
        let again = Server::bind(addr, "test", handler).expect("the port is free again");
        assert_eq!(again.local_addr(), addr);
    }

    #[test]
    fn idle_connections_are_capped() {
        let server = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            "test",
            Arc::new(|_: &Request| Response::text(200, "ok\n")),
        )
        .expect("bind");
        let addr = server.local_addr();
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        // Once every idle connection holds a thread, a new one is closed
        // unanswered.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
            let mut out = String::new();
            // Closed unanswered: EOF, or a reset for the unread request.
            if matches!(s.read_to_string(&mut out), Ok(0) | Err(_)) && out.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never refused: {out}");
        }
        drop(idle);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = TcpStream::connect(addr).expect("connect");
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not served again");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn bind_error_names_the_server() {
        let first = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            "a",
            Arc::new(|_: &Request| Response::not_found()),
        )
        .expect("bind");
        let e = Server::bind(
            first.local_addr(),
            "metrics",
            Arc::new(|_: &Request| Response::not_found()),
        )
        .expect_err("port taken");
        assert!(
            e.to_string()
                .starts_with("cannot serve metrics on 127.0.0.1:"),
            "{e}"
        );
    }
}
