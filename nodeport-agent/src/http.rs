//! The agent's HTTP servers: `/healthz` and `/livez`, `/metrics`, and one
//! server per `healthCheckNodePort`. hyper's HTTP/1.1 server on the agent's
//! one tokio runtime ([`crate::runtime`]): a listening socket is one task,
//! every connection another; no thread per server or per connection.
//!
//! Clients are probes, load balancers and Prometheus: GET (and HEAD: the
//! same status and headers, no body) of a small response computed from
//! shared state. A [`Handler`] is a plain closure from the [`Request`] to
//! the [`Response`]; it runs on the runtime's thread, or on its blocking
//! pool for handlers that make slow syscalls ([`Server::bind_blocking`]).
//! Other methods get 405, a request hyper cannot parse 400. Header names
//! go out in the canonical case Go's servers (kube-proxy) use.
//!
//! A [`Server`] closes its port when dropped: it stops accepting at once
//! (a synchronous caller returns only when the listening socket is closed,
//! so the port can be bound again right away: a health check that moves,
//! a restart) and lets open connections finish their request, briefly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::debug;

/// How long a connection may take to send a request head, and how long an
/// idle kept-alive connection stays open.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per server; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// How long open connections may take to finish once their server stops.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// How long dropping a server waits for its listening socket to close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (out of file descriptors, say).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// A server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve {what} on {addr}")]
pub struct BindError {
    pub what: String,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
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

    /// 404 for paths a server does not serve (Go's body, as kube-proxy's).
    #[must_use]
    pub fn not_found() -> Self {
        Self::text(404, "404 page not found\n")
    }

    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut builder = hyper::Response::builder().status(self.status);
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder
            .body(Full::new(Bytes::from(self.body)))
            .unwrap_or_else(|e| {
                debug!(error = %e, "handler returned an invalid response");
                let mut r =
                    hyper::Response::new(Full::new(Bytes::from_static(b"invalid response\n")));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            })
    }
}

/// What a server answers with.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A running server; dropping it closes the port.
pub struct Server {
    addr: SocketAddr,
    what: String,
    /// Sending (or dropping) stops the accept loop and the connections.
    stop: watch::Sender<()>,
    /// Disconnected once the accept loop closed the listening socket.
    closed: mpsc::Receiver<()>,
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
    /// Binds `addr` and serves `handler` on `runtime`, calling it on the
    /// runtime's thread: for handlers that only read memory. `what` names
    /// the server in logs and errors.
    pub fn bind(
        runtime: &Handle,
        addr: SocketAddr,
        what: &str,
        handler: Handler,
    ) -> Result<Self, BindError> {
        Self::start(runtime, addr, what, handler, Work::Inline, MAX_CONNECTIONS)
    }

    /// Like [`Server::bind`], calling `handler` on the runtime's blocking
    /// pool: for handlers that make syscalls that may take a while (reading
    /// the datapath's maps).
    pub fn bind_blocking(
        runtime: &Handle,
        addr: SocketAddr,
        what: &str,
        handler: Handler,
    ) -> Result<Self, BindError> {
        Self::start(
            runtime,
            addr,
            what,
            handler,
            Work::Blocking,
            MAX_CONNECTIONS,
        )
    }

    fn start(
        runtime: &Handle,
        addr: SocketAddr,
        what: &str,
        handler: Handler,
        work: Work,
        max_connections: usize,
    ) -> Result<Self, BindError> {
        let bind_err = |source| BindError {
            what: what.to_owned(),
            addr,
            source,
        };
        // Bound here, not in the task: the caller learns of a taken port
        // (and of the port chosen for port 0) at once.
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener).map_err(bind_err)?
        };
        let (stop, stopped) = watch::channel(());
        let (closed_tx, closed) = mpsc::channel();
        let serving = Serving {
            handler,
            work,
            stop: stopped,
        };
        runtime.spawn(accept_loop(
            listener,
            serving,
            max_connections,
            closed_tx,
            what.to_owned(),
        ));
        Ok(Self {
            addr: local,
            what: what.to_owned(),
            stop,
            closed,
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
        let _ = self.stop.send(());
        // A synchronous caller (the run loop) waits for the listening socket
        // to close, so that the port is free when drop returns; a task on the
        // runtime must not block it.
        if Handle::try_current().is_err() {
            let _ = self.closed.recv_timeout(CLOSE_WAIT);
        }
        debug!(addr = %self.addr, what = %self.what, "HTTP server closed");
    }
}

/// Where a handler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Inline,
    Blocking,
}

/// What every connection of a server shares.
#[derive(Clone)]
struct Serving {
    handler: Handler,
    work: Work,
    stop: watch::Receiver<()>,
}

async fn accept_loop(
    listener: TcpListener,
    serving: Serving,
    max_connections: usize,
    closed: mpsc::Sender<()>,
    what: String,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut stop = serving.stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(what, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(what, %peer, "too many open connections; closing a new one");
            continue;
        };
        tokio::spawn(serve_connection(stream, peer, serving.clone(), slot));
    }
    drop(listener);
    drop(closed);
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    serving: Serving,
    _slot: OwnedSemaphorePermit,
) {
    let Serving {
        handler,
        work,
        mut stop,
    } = serving;
    let service = service_fn(move |req| {
        let handler = Arc::clone(&handler);
        async move { Ok::<_, Infallible>(answer(&req, handler, work).await.into_hyper()) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(STOP_GRACE, conn.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "HTTP connection failed");
    }
}

/// The handler's answer to `req` (GET and HEAD; hyper leaves out the body
/// of a HEAD response), 405 for other methods.
async fn answer(req: &hyper::Request<Incoming>, handler: Handler, work: Work) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Response::text(405, "method not allowed\n").with_header("Allow", "GET, HEAD");
    }
    let request = Request {
        method: req.method().as_str().to_owned(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or_default().to_owned(),
    };
    match work {
        Work::Inline => handler(&request),
        Work::Blocking => tokio::task::spawn_blocking(move || handler(&request))
            .await
            .unwrap_or_else(|e| {
                debug!(error = %e, "HTTP handler failed");
                Response::text(500, "internal error\n")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Runtime;
    use std::collections::BTreeSet;
    use std::io::{Read as _, Write as _};
    use std::sync::Mutex;
    use std::time::Instant;

    fn exchange(addr: SocketAddr, raw: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(raw.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    fn hello() -> Handler {
        Arc::new(|r: &Request| {
            if r.path == "/hello" {
                Response::text(200, format!("hi {}\n", r.query)).with_header("X-Test", "1")
            } else {
                Response::not_found()
            }
        })
    }

    #[test]
    fn serves_get_and_head_refuses_the_rest_and_frees_the_port() {
        let rt = Runtime::start().unwrap();
        let server =
            Server::bind(rt.handle(), "127.0.0.1:0".parse().unwrap(), "test", hello()).unwrap();
        let addr = server.local_addr();

        let out = exchange(
            addr,
            "GET /hello?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"),
            "{out}"
        );
        assert!(out.contains("\r\nX-Test: 1\r\n"), "{out}");
        assert!(out.contains("\r\nContent-Length: 7\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhi x=1\n"), "{out}");

        let out = exchange(addr, "HEAD /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("\r\nContent-Length: 4\r\n"),
            "the GET's length: {out}"
        );
        assert!(out.contains("\r\nX-Test: 1\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "no body: {out}");

        let out = exchange(addr, "GET /nope HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("HTTP/1.0 404 Not Found\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n404 page not found\n"), "{out}");
        let out = exchange(
            addr,
            "POST /hello HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nab",
        );
        assert!(
            out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{out}"
        );
        assert!(out.contains("\r\nAllow: GET, HEAD\r\n"), "{out}");
        let out = exchange(addr, "garbage\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");

        // Kept alive: two requests on one connection.
        let out = exchange(
            addr,
            "GET /hello?a HTTP/1.1\r\nHost: a\r\n\r\nGET /hello?b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{out}");
        assert!(out.contains("hi a\n") && out.ends_with("hi b\n"), "{out}");

        // An idle connection does not keep the port: dropped, it is free at
        // once and can be bound again.
        let mut idle = std::net::TcpStream::connect(addr).unwrap();
        drop(server);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "closed after drop"
        );
        let again = Server::bind(rt.handle(), addr, "test", hello()).expect("the port is free");
        assert_eq!(again.local_addr(), addr);
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        assert!(
            matches!(idle.read_to_end(&mut rest), Ok(0) | Err(_)),
            "the idle connection was closed"
        );
    }

    #[test]
    fn many_connections_are_served_by_the_runtime_thread() {
        let rt = Runtime::start().unwrap();
        let threads = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = Arc::clone(&threads);
        let handler: Handler = Arc::new(move |_: &Request| {
            seen.lock()
                .unwrap()
                .insert(std::thread::current().name().unwrap_or("").to_owned());
            Response::text(200, "ok\n")
        });
        let server =
            Server::bind(rt.handle(), "127.0.0.1:0".parse().unwrap(), "test", handler).unwrap();
        let addr = server.local_addr();
        // All open at once, far more than a thread per connection would allow.
        let mut conns: Vec<std::net::TcpStream> = (0..200)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        for c in &mut conns {
            c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        for c in &mut conns {
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        }
        assert_eq!(
            *threads.lock().unwrap(),
            BTreeSet::from(["nodeport-rt".to_owned()]),
            "every request answered on the runtime's one thread"
        );
    }

    #[test]
    fn blocking_handlers_run_on_the_blocking_pool() {
        let rt = Runtime::start().unwrap();
        let handler: Handler = Arc::new(|_: &Request| {
            Response::text(200, std::thread::current().name().unwrap_or("").to_owned())
        });
        let server =
            Server::bind_blocking(rt.handle(), "127.0.0.1:0".parse().unwrap(), "test", handler)
                .unwrap();
        let out = exchange(
            server.local_addr(),
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(out.ends_with("\r\n\r\nnodeport-blocking"), "{out}");
    }

    #[test]
    fn connections_beyond_the_cap_are_closed() {
        const CAP: usize = 8;
        let rt = Runtime::start().unwrap();
        let server = Server::start(
            rt.handle(),
            "127.0.0.1:0".parse().unwrap(),
            "test",
            Arc::new(|_: &Request| Response::text(200, "ok\n")),
            Work::Inline,
            CAP,
        )
        .unwrap();
        let addr = server.local_addr();
        let idle: Vec<std::net::TcpStream> = (0..CAP)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        // Once every slot holds an idle connection, a new one is closed
        // unanswered.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            if matches!(s.read_to_string(&mut out), Ok(0) | Err(_)) && out.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "never refused: {out}");
        }
        drop(idle);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "not served again");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn bind_error_names_the_server() {
        let rt = Runtime::start().unwrap();
        let first =
            Server::bind(rt.handle(), "127.0.0.1:0".parse().unwrap(), "a", hello()).unwrap();
        let e = Server::bind(rt.handle(), first.local_addr(), "metrics", hello())
            .expect_err("port taken");
        assert!(
            e.to_string()
                .starts_with("cannot serve metrics on 127.0.0.1:"),
            "{e}"
        );
    }
}
