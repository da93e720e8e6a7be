//! A Kubernetes API server for tests: Services, EndpointSlices and Nodes
//! over real HTTP/1.1, following the API conventions the agent's watchers
//! rely on.
//!
//! - `GET /api/v1/services`, `/api/v1/namespaces/NS/services`,
//!   `/apis/discovery.k8s.io/v1/endpointslices` (and namespaced),
//!   `/api/v1/nodes`: lists with `metadata.resourceVersion`; `labelSelector`
//!   (`k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-separated) and `fieldSelector`
//!   (`metadata.name`, `metadata.namespace`, `=`/`==`/`!=`) filter; `limit`
//!   and `continue` are accepted and everything comes in one page.
//! - `?watch=true&resourceVersion=N`: a chunked stream of
//!   `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}` lines,
//!   with every change after N. A change that makes an object match (or
//!   stop matching) a selector arrives as ADDED (or DELETED), as from a real
//!   API server. `resourceVersion` absent or `0`: synthetic ADDED events for
//!   the current objects first. `allowWatchBookmarks=true`: a BOOKMARK with
//!   the current resourceVersion every second. `timeoutSeconds` ends the
//!   stream. A resourceVersion older than the last [`ApiServer::compact`]
//!   gets one ERROR event with a `410 Expired` Status, as etcd compaction
//!   causes.
//! - Every write bumps one global resourceVersion; EndpointSlices get the
//!   `endpoints.kubernetes.io/last-change-trigger-time` annotation (now)
//!   unless they carry one, as the EndpointSlice controller sets it.
//!
//! [`ApiServer::stop`] closes the port and every connection (watchers see
//! their streams end and their reconnects refused) while the objects stay
//! and can still be changed; [`ApiServer::start`] serves them again on the
//! same address.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::netns::Netns;
use crate::objects::{self, ToYaml as _};

/// Bookmark interval of watches that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// The trigger-time annotation the EndpointSlice controller sets.
pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    const ALL: [Self; 3] = [Self::Services, Self::EndpointSlices, Self::Nodes];

    #[must_use]
    pub fn kind(self) -> &'static str {
        match self {
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
            Self::Nodes => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Services | Self::Nodes => "v1",
            Self::EndpointSlices => "discovery.k8s.io/v1",
        }
    }

    /// The plural in URLs, also used in request records.
    #[must_use]
    pub fn plural(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Nodes => "nodes",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Self::Nodes)
    }

    fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.kind() == kind)
    }

    /// The group/version prefix of its URLs.
    fn prefix(self) -> &'static str {
        match self {
            Self::Services | Self::Nodes => "/api/v1",
            Self::EndpointSlices => "/apis/discovery.k8s.io/v1",
        }
    }
}

/// A request the server received, for tests to assert on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub resource: Resource,
    pub watch: bool,
    /// The `resourceVersion` parameter ("" when absent).
    pub resource_version: String,
    pub label_selector: String,
    pub field_selector: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

/// One entry of the change history.
#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    resource: Resource,
    change: Change,
    /// The object before the change (modifications only).
    old: Option<Value>,
    /// The object after the change (for deletions: as it was, with the
    /// deletion's resourceVersion).
    new: Value,
}

type Key = (Resource, String, String);

#[derive(Debug, Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
    /// Watches from a resourceVersion below this get 410.
    compacted: u64,
    /// Bumped by every stop: connections of older epochs end.
    epoch: u64,
    next_conn: u64,
    conns: BTreeMap<u64, TcpStream>,
    requests: Vec<Recorded>,
    gone_sent: usize,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The test API server; see the module docs. Stopped on drop.
pub struct ApiServer<'n> {
    ns: &'n Netns,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for ApiServer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl<'n> ApiServer<'n> {
    /// The API server of a test cluster: on the client's LAN address (every
    /// node reaches it), port 6443, holding a Node object for every node
    /// with its address as `InternalIP`.
    #[must_use]
    pub fn for_cluster(c: &'n crate::Cluster) -> ApiServer<'n> {
        let api = ApiServer::start(
            c.client_netns(),
            SocketAddr::new(crate::cluster::CLIENT_ADDR.into(), 6443),
            c.temp_dir(),
        );
        for node in c.nodes() {
            api.apply_yaml(&objects::node(&node.name, node.addr).yaml());
        }
        api
    }

    /// Starts serving on `addr` inside `ns` (the socket lives in that
    /// namespace; other namespaces reach it over their routes) and writes a
    /// kubeconfig pointing at it into `dir`.
    #[must_use]
    pub fn start(ns: &'n Netns, addr: SocketAddr, dir: &Path) -> ApiServer<'n> {
        let kubeconfig = dir.join(format!("kubeconfig-{}", addr.port()));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{addr}\n\
                 users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\n"
            ),
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", kubeconfig.display()));
        let server = ApiServer {
            ns,
            addr,
            kubeconfig,
            shared: Arc::default(),
            running: Mutex::new(None),
        };
        server.resume();
        server
    }

    /// The address served.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for `--kubeconfig`.
    #[must_use]
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn lock_running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves again after [`ApiServer::stop`] (same address, same objects).
    pub fn resume(&self) {
        let mut running = self.lock_running();
        assert!(running.is_none(), "the API server is already running");
        let addr = self.addr;
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match self.ns.run(move || TcpListener::bind(addr)) {
                Ok(l) => break l,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("test API server: cannot bind {addr}: {e}"),
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&self.shared);
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || accept_loop(&listener, &stop2, &shared))
            .unwrap_or_else(|e| panic!("cannot spawn the API server thread: {e}"));
        *running = Some(Running { stop, thread });
    }

    /// Closes the port and every open connection; objects stay and can
    /// still be changed.
    pub fn stop(&self) {
        let Some(running) = self.lock_running().take() else {
            return;
        };
        running.stop.store(true, Ordering::Relaxed);
        let _ = running.thread.join();
        let mut st = self.shared.lock();
        st.epoch += 1;
        for conn in st.conns.values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        st.conns.clear();
        drop(st);
        self.shared.changed.notify_all();
    }

    #[must_use]
    pub fn is_running(&self) -> bool {
        self.lock_running().is_some()
    }

    /// Forgets the change history: watches from any resourceVersion before
    /// now get `410 Gone` and must re-list.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.history.clear();
        st.compacted = st.rv + 1;
    }

    /// The current resourceVersion.
    #[must_use]
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Every list and watch request received so far.
    #[must_use]
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// How many watches were answered with 410 Gone.
    #[must_use]
    pub fn gone_sent(&self) -> usize {
        self.shared.lock().gone_sent
    }

    /// Creates or replaces every object of a multi-document YAML string
    /// (kinds Service, EndpointSlice, Node).
    pub fn apply_yaml(&self, yaml: &str) {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
            .unwrap_or_else(|e| panic!("test API server: bad YAML: {e}\n{yaml}"));
        for value in docs {
            if !value.is_null() {
                self.apply(value);
            }
        }
    }

    /// Creates or replaces one object (namespace `default` when absent).
    pub fn apply(&self, mut obj: Value) {
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        let resource = Resource::from_kind(&kind)
            .unwrap_or_else(|| panic!("test API server: unsupported kind {kind:?}"));
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("test API server: {kind} without metadata.name"))
            .to_owned();
        let namespace = if resource.namespaced() {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            obj["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        obj["apiVersion"] = json!(resource.api_version());
        if resource == Resource::EndpointSlices
            && obj["metadata"]["annotations"][TRIGGER_TIME].is_null()
        {
            if !obj["metadata"]["annotations"].is_object() {
                obj["metadata"]["annotations"] = json!({});
            }
            obj["metadata"]["annotations"][TRIGGER_TIME] = json!(now_rfc3339());
        }
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (resource, namespace, name.clone());
        let old = st.objects.get(&key).cloned();
        if let Some(old) = &old {
            obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
            obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        } else {
            obj["metadata"]["uid"] = json!(format!("uid-{}-{rv}", name));
            obj["metadata"]["creationTimestamp"] = json!(now_rfc3339_secs());
        }
        st.objects.insert(key, obj.clone());
        let change = if old.is_some() {
            Change::Modified
        } else {
            Change::Added
        };
        st.history.push_back(Event {
            rv,
            resource,
            change,
            old,
            new: obj,
        });
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Deletes an object; panics when it does not exist.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let resource = Resource::from_kind(kind)
            .unwrap_or_else(|| panic!("test API server: unsupported kind {kind:?}"));
        let namespace = if resource.namespaced() { namespace } else { "" };
        let mut st = self.shared.lock();
        let key = (resource, namespace.to_owned(), name.to_owned());
        let mut obj = st
            .objects
            .remove(&key)
            .unwrap_or_else(|| panic!("test API server: no {kind} {namespace}/{name}"));
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.history.push_back(Event {
            rv,
            resource,
            change: Change::Deleted,
            old: None,
            new: obj,
        });
        drop(st);
        self.shared.changed.notify_all();
    }

    /// The stored object, if any.
    #[must_use]
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = Resource::from_kind(kind)?;
        let namespace = if resource.namespaced() { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}

impl Drop for ApiServer<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn now_utc() -> k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    k8s_openapi::chrono::DateTime::from_timestamp(secs, since.subsec_nanos()).unwrap_or_default()
}

fn now_rfc3339() -> String {
    now_utc().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Millis, true)
}

fn now_rfc3339_secs() -> String {
    now_utc().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true)
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, shared: &Arc<Shared>) {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&raw mut pfd, 1, 50) } <= 0 {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let (id, epoch) = {
            let mut st = shared.lock();
            st.next_conn += 1;
            let id = st.next_conn;
            st.conns.insert(id, clone);
            (id, st.epoch)
        };
        let shared = Arc::clone(shared);
        let _ = std::thread::Builder::new()
            .name("apiserver-conn".into())
            .spawn(move || {
                let _ = serve(&stream, &shared, epoch);
                let _ = stream.shutdown(Shutdown::Both);
                shared.lock().conns.remove(&id);
            });
    }
}

/// A parsed request target.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    query: BTreeMap<String, String>,
}

fn parse_target(target: &str) -> Option<Target> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    for resource in Resource::ALL {
        let Some(rest) = path.strip_prefix(resource.prefix()) else {
            continue;
        };
        if rest == format!("/{}", resource.plural()) {
            return Some(Target {
                resource,
                namespace: None,
                query,
            });
        }
        if resource.namespaced()
            && let Some(rest) = rest.strip_prefix("/namespaces/")
            && let Some((ns, plural)) = rest.split_once('/')
            && plural == resource.plural()
        {
            return Some(Target {
                resource,
                namespace: Some(ns.to_owned()),
                query,
            });
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One term of a label or field selector.
#[derive(Debug)]
enum Term {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

fn parse_selector(s: &str) -> Result<Vec<Term>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                Ok(Term::NotEquals(k.trim().into(), v.trim().into()))
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Ok(Term::Equals(k.trim().into(), v.trim().into()))
            } else if let Some(k) = t.strip_prefix('!') {
                Ok(Term::NotExists(k.trim().into()))
            } else if t.contains(' ') || t.contains('(') {
                Err(format!("unsupported selector term {t:?}"))
            } else {
                Ok(Term::Exists(t.into()))
            }
        })
        .collect()
}

fn labels_match(obj: &Value, terms: &[Term]) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    terms.iter().all(|t| match t {
        Term::Exists(k) => get(k).is_some(),
        Term::NotExists(k) => get(k).is_none(),
        Term::Equals(k, v) => get(k) == Some(v),
        Term::NotEquals(k, v) => get(k) != Some(v),
    })
}

fn fields_match(obj: &Value, terms: &[Term]) -> bool {
    let get = |k: &str| match k {
        "metadata.name" => obj["metadata"]["name"].as_str(),
        "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
        _ => None,
    };
    terms.iter().all(|t| match t {
        Term::Equals(k, v) => get(k) == Some(v),
        Term::NotEquals(k, v) => get(k) != Some(v),
        Term::Exists(_) | Term::NotExists(_) => false,
    })
}

/// The filter of one list or watch.
struct Filter {
    resource: Resource,
    namespace: Option<String>,
    labels: Vec<Term>,
    fields: Vec<Term>,
}

impl Filter {
    fn matches(&self, resource: Resource, obj: &Value) -> bool {
        resource == self.resource
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && labels_match(obj, &self.labels)
            && fields_match(obj, &self.fields)
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn write_response(w: &mut &TcpStream, code: u16, body: &Value, close: bool) -> io::Result<()> {
    let body = body.to_string();
    let text = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Error",
    };
    write!(
        w,
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )?;
    w.flush()
}

/// Serves the requests of one connection (keep-alive) until it closes, a
/// watch ends, or the server stops.
fn serve(stream: &TcpStream, shared: &Shared, epoch: u64) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut head = Vec::new();
        loop {
            let before = head.len();
            if reader.read_until(b'\n', &mut head)? == 0 {
                return Ok(());
            }
            if head[before..] == *b"\r\n" || head[before..] == *b"\n" {
                break;
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut first = head.lines().next().unwrap_or_default().split_whitespace();
        let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let mut out = stream;
        if method != "GET" {
            write_response(
                &mut out,
                405,
                &status(405, "MethodNotAllowed", "only GET"),
                true,
            )?;
            return Ok(());
        }
        let Some(target) = parse_target(target) else {
            write_response(
                &mut out,
                404,
                &status(404, "NotFound", "no such resource"),
                false,
            )?;
            continue;
        };
        let query = |k: &str| target.query.get(k).cloned().unwrap_or_default();
        let (labels, fields) = match (
            parse_selector(&query("labelSelector")),
            parse_selector(&query("fieldSelector")),
        ) {
            (Ok(labels), Ok(fields)) => (labels, fields),
            (Err(problem), _) | (_, Err(problem)) => {
                write_response(&mut out, 400, &status(400, "BadRequest", &problem), false)?;
                continue;
            }
        };
        let watch = matches!(query("watch").as_str(), "true" | "1");
        shared.lock().requests.push(Recorded {
            resource: target.resource,
            watch,
            resource_version: query("resourceVersion"),
            label_selector: query("labelSelector"),
            field_selector: query("fieldSelector"),
        });
        let filter = Filter {
            resource: target.resource,
            namespace: target.namespace.clone(),
            labels,
            fields,
        };
        if watch {
            let timeout = query("timeoutSeconds")
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
            let bookmarks = query("allowWatchBookmarks") == "true";
            return serve_watch(
                stream,
                shared,
                epoch,
                &filter,
                &query("resourceVersion"),
                timeout,
                bookmarks,
            );
        }
        let st = shared.lock();
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((res, _, _), obj)| filter.matches(*res, obj))
            .map(|(_, obj)| {
                let mut obj = obj.clone();
                if let Some(fields) = obj.as_object_mut() {
                    fields.remove("kind");
                    fields.remove("apiVersion");
                }
                obj
            })
            .collect();
        let body = json!({
            "kind": format!("{}List", target.resource.kind()),
            "apiVersion": target.resource.api_version(),
            "metadata": { "resourceVersion": st.rv.to_string() },
            "items": items,
        });
        drop(st);
        write_response(&mut out, 200, &body, false)?;
    }
}

fn chunk(w: &mut &TcpStream, event: &Value) -> io::Result<()> {
    let line = format!("{event}\n");
    write!(w, "{:x}\r\n{line}\r\n", line.len())?;
    w.flush()
}

/// The watch event a history entry means to a watcher with `filter`.
fn event_for(filter: &Filter, e: &Event) -> Option<Value> {
    let now = filter.matches(e.resource, &e.new);
    let kind = match e.change {
        Change::Added if now => "ADDED",
        Change::Deleted if now => "DELETED",
        Change::Modified => {
            let before = e
                .old
                .as_ref()
                .is_some_and(|o| filter.matches(e.resource, o));
            match (before, now) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            }
        }
        _ => return None,
    };
    Some(json!({ "type": kind, "object": e.new }))
}

#[allow(
    clippy::too_many_arguments,
    reason = "the parameters of one watch request"
)]
fn serve_watch(
    stream: &TcpStream,
    shared: &Shared,
    epoch: u64,
    filter: &Filter,
    rv: &str,
    timeout: Option<Duration>,
    bookmarks: bool,
) -> io::Result<()> {
    let mut w = stream;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut pending: Vec<Value> = Vec::new();
    let mut last: u64;
    {
        let mut st = shared.lock();
        match rv {
            "" | "0" => {
                last = st.rv;
                pending.extend(
                    st.objects
                        .iter()
                        .filter(|((r, _, _), o)| filter.matches(*r, o))
                        .map(|(_, o)| json!({"type": "ADDED", "object": o})),
                );
            }
            n => {
                let Ok(n) = n.parse::<u64>() else {
                    drop(st);
                    write_response(
                        &mut w,
                        400,
                        &status(400, "BadRequest", "bad resourceVersion"),
                        true,
                    )?;
                    return Ok(());
                };
                if n + 1 < st.compacted {
                    st.gone_sent += 1;
                    let compacted = st.compacted;
                    drop(st);
                    w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
                    let msg = format!("too old resource version: {n} ({compacted})");
                    chunk(
                        &mut w,
                        &json!({"type": "ERROR", "object": status(410, "Expired", &msg)}),
                    )?;
                    w.write_all(b"0\r\n\r\n")?;
                    return w.flush();
                }
                last = n;
            }
        }
    }
    w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
    let mut next_bookmark = Instant::now() + BOOKMARK_EVERY;
    loop {
        for event in pending.drain(..) {
            chunk(&mut w, &event)?;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            w.write_all(b"0\r\n\r\n")?;
            return w.flush();
        }
        if bookmarks && now >= next_bookmark {
            next_bookmark = now + BOOKMARK_EVERY;
            let rv = shared.lock().rv.max(last);
            chunk(
                &mut w,
                &json!({"type": "BOOKMARK", "object": {
                    "kind": filter.resource.kind(), "apiVersion": filter.resource.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}}}),
            )?;
            last = rv;
        }
        let mut st = shared.lock();
        if st.epoch != epoch {
            return Ok(());
        }
        if !st.history.iter().any(|e| e.rv > last) {
            let mut wait = next_bookmark.saturating_duration_since(Instant::now());
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            st = shared
                .changed
                .wait_timeout(st, wait.max(Duration::from_millis(1)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if st.epoch != epoch {
                return Ok(());
            }
        }
        for e in st.history.iter().filter(|e| e.rv > last) {
            if let Some(ev) = event_for(filter, e) {
                pending.push(ev);
            }
        }
        if let Some(newest) = st.history.back() {
            last = last.max(newest.rv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_match() {
        let obj = json!({"metadata": {"name": "web", "namespace": "default",
            "labels": {"app": "web", "service.kubernetes.io/headless": ""}}});
        let sel = |s: &str| parse_selector(s).unwrap();
        assert!(labels_match(&obj, &sel("app=web")));
        assert!(labels_match(
            &obj,
            &sel("app==web,!service.kubernetes.io/service-proxy-name")
        ));
        assert!(!labels_match(&obj, &sel("!service.kubernetes.io/headless")));
        assert!(labels_match(&obj, &sel("app!=api,app")));
        assert!(fields_match(&obj, &sel("metadata.name=web")));
        assert!(!fields_match(&obj, &sel("metadata.name=api")));
        assert!(parse_selector("app in (a,b)").is_err());
    }

    #[test]
    fn targets_and_queries_decode() {
        let t = parse_target(
            "/api/v1/services?labelSelector=%21a%2C%21b&watch=true&resourceVersion=12",
        )
        .unwrap();
        assert_eq!(t.resource, Resource::Services);
        assert_eq!(t.query["labelSelector"], "!a,!b");
        assert_eq!(t.query["watch"], "true");
        let t = parse_target("/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices")
            .unwrap();
        assert_eq!(
            (t.resource, t.namespace.as_deref()),
            (Resource::EndpointSlices, Some("kube-system"))
        );
        assert!(parse_target("/api/v1/pods").is_none());
        assert!(parse_target("/api/v1/namespaces/x/nodes").is_none());
        assert_eq!(
            percent_decode("metadata.name%3Dnode1"),
            "metadata.name=node1"
        );
    }

    #[test]
    fn selector_changes_become_added_and_deleted() {
        let filter = Filter {
            resource: Resource::Services,
            namespace: None,
            labels: parse_selector("!service.kubernetes.io/service-proxy-name").unwrap(),
            fields: vec![],
        };
        let plain = json!({"metadata": {"name": "a"}});
        let other = json!({"metadata": {"name": "a", "labels": {"service.kubernetes.io/service-proxy-name": "x"}}});
        let ev = |old: Option<&Value>, new: &Value| Event {
            rv: 2,
            resource: Resource::Services,
            change: Change::Modified,
            old: old.cloned(),
            new: new.clone(),
        };
        assert_eq!(
            event_for(&filter, &ev(Some(&plain), &other)).unwrap()["type"],
            "DELETED"
        );
        assert_eq!(
            event_for(&filter, &ev(Some(&other), &plain)).unwrap()["type"],
            "ADDED"
        );
        assert_eq!(
            event_for(&filter, &ev(Some(&plain), &plain)).unwrap()["type"],
            "MODIFIED"
        );
        assert!(event_for(&filter, &ev(Some(&other), &other)).is_none());
    }
}
