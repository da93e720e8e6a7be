//! kube-proxy compatible health endpoints.
//!
//! - [`ProxyHealth`]: `/healthz` and `/livez` on `--healthz-bind-address`.
//!   200 while the datapath maps were confirmed equal to the desired state
//!   within [`HEALTH_TIMEOUT`] (the run loop confirms it on every pass that
//!   leaves nothing unwritten), 503 before the first sync, when writes keep
//!   failing or when the loop stalls. `/healthz` also answers 503 while this
//!   node is being deleted (`deletionTimestamp`, or the cluster
//!   autoscaler's `ToBeDeletedByClusterAutoscaler` taint), so load balancers
//!   drain it; `/livez` ignores that. `/healthz` is 503 too while frames
//!   the datapath sends out of a device keep failing (`attached`), named in
//!   an extra `failingDevices` field. Body, as kube-proxy's:
//!   `{"lastUpdated": "...", "currentTime": "...", "nodeEligible": true}`
//!   (RFC 3339 times; `lastUpdated` empty before the first sync).
//! - [`HealthCheckServers`]: one HTTP server per `healthCheckNodePort` of an
//!   `externalTrafficPolicy: Local` Service, on every node address: 200
//!   when this node has ready local endpoints (and the agent is healthy),
//!   503 otherwise, with kube-proxy's body and headers. Servers follow the
//!   desired state: a changed port moves, a Service deleted or switched to
//!   `Cluster` closes its port.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use tracing::{info, warn};

use tokio::runtime::Handle;

use crate::desired::HealthCheck;
use crate::http::{Handler, Request, Response, Server};
use crate::metrics::Metrics;
use crate::store::ObjectKey;

/// How long a confirmed sync keeps the agent healthy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(15);

/// The taint the cluster autoscaler puts on nodes it is about to delete.
const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The agent's own health (kube-proxy's "proxier health").
#[derive(Debug)]
pub struct ProxyHealth {
    last_updated: Mutex<Option<SystemTime>>,
    node_deleting: AtomicBool,
    failing_devices: Mutex<Vec<String>>,
    timeout: Duration,
}

impl Default for ProxyHealth {
    fn default() -> Self {
        Self::new(HEALTH_TIMEOUT)
    }
}

impl ProxyHealth {
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self {
            last_updated: Mutex::new(None),
            node_deleting: AtomicBool::new(false),
            failing_devices: Mutex::new(Vec::new()),
            timeout,
        }
    }

    /// The maps were just confirmed up to date.
    pub fn updated(&self) {
        *self
            .last_updated
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(SystemTime::now());
    }

    /// Records whether this node is being deleted (from its Node object).
    pub fn set_node(&self, node: Option<&Node>) {
        let deleting = node.is_some_and(|n| {
            n.metadata.deletion_timestamp.is_some()
                || n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED))
        });
        if self.node_deleting.swap(deleting, Ordering::Relaxed) != deleting {
            info!(deleting, "node deletion state changed; /healthz follows it");
        }
    }

    /// Records the devices whose transmits keep failing (empty: none).
    pub fn set_failing_devices(&self, devices: Vec<String>) {
        *self
            .failing_devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = devices;
    }

    fn failing_devices(&self) -> Vec<String> {
        self.failing_devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Synced within the timeout.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.last_updated().is_some_and(|t| {
            SystemTime::now()
                .duration_since(t)
                .map_or(true, |age| age <= self.timeout)
        })
    }

    fn last_updated(&self) -> Option<SystemTime> {
        *self
            .last_updated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `/healthz` (node eligibility counts) or `/livez` (it does not).
    #[must_use]
    pub fn respond(&self, with_node: bool) -> Response {
        let healthy = self.is_healthy();
        let eligible = !self.node_deleting.load(Ordering::Relaxed);
        let failing = if with_node {
            self.failing_devices()
        } else {
            Vec::new()
        };
        let ok = healthy && (!with_node || eligible) && failing.is_empty();
        let mut body = json!({
            "lastUpdated": self.last_updated().map(rfc3339).unwrap_or_default(),
            "currentTime": rfc3339(SystemTime::now()),
        });
        if with_node {
            body["nodeEligible"] = json!(eligible);
        }
        if !failing.is_empty() {
            body["failingDevices"] = json!(failing);
        }
        Response::json(if ok { 200 } else { 503 }, &body)
            .with_header("X-Content-Type-Options", "nosniff")
    }

    /// The handler of the healthz server: `/healthz` and `/livez`, their
    /// answers counted as kube-proxy counts them (`kubeproxy_proxy_healthz_total`,
    /// `kubeproxy_proxy_livez_total`).
    #[must_use]
    pub fn handler(self: &Arc<Self>, metrics: &Arc<Metrics>) -> Handler {
        let health = Arc::clone(self);
        let metrics = Arc::clone(metrics);
        Arc::new(move |req: &Request| match req.path.as_str() {
            "/healthz" => {
                let r = health.respond(true);
                metrics.healthz_answered(r.status);
                r
            }
            "/livez" => {
                let r = health.respond(false);
                metrics.livez_answered(r.status);
                r
            }
            _ => Response::not_found(),
        })
    }
}

/// The state one health check server answers from.
#[derive(Debug)]
struct CheckState {
    service: ObjectKey,
    local_endpoints: AtomicUsize,
}

/// kube-proxy's answer for one Service.
fn check_response(state: &CheckState, proxy: &ProxyHealth) -> Response {
    let n = state.local_endpoints.load(Ordering::Relaxed);
    let healthy = proxy.is_healthy();
    let body = json!({
        "service": { "namespace": state.service.namespace, "name": state.service.name },
        "localEndpoints": n,
        "serviceProxyHealthy": healthy,
    });
    Response::json(if n > 0 && healthy { 200 } else { 503 }, &body)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("X-Load-Balancing-Endpoint-Weight", n.to_string())
}

struct Running {
    port: u16,
    state: Arc<CheckState>,
    _server: Server,
}

/// The healthCheckNodePort servers of this node, on the agent's runtime.
pub struct HealthCheckServers {
    bind: Ipv4Addr,
    proxy: Arc<ProxyHealth>,
    runtime: Handle,
    running: BTreeMap<ObjectKey, Running>,
}

impl std::fmt::Debug for HealthCheckServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.running.iter().map(|(k, r)| (k, r.port)))
            .finish()
    }
}

impl HealthCheckServers {
    /// Servers bind `bind` (all addresses: `0.0.0.0`), run on `runtime` and
    /// report `serviceProxyHealthy` from `proxy`.
    #[must_use]
    pub fn new(bind: Ipv4Addr, proxy: Arc<ProxyHealth>, runtime: Handle) -> Self {
        Self {
            bind,
            proxy,
            runtime,
            running: BTreeMap::new(),
        }
    }

    /// The ports served now, by Service.
    #[must_use]
    pub fn ports(&self) -> BTreeMap<ObjectKey, u16> {
        self.running
            .iter()
            .map(|(k, r)| (k.clone(), r.port))
            .collect()
    }

    /// Makes the servers match `wanted`: updates counts, opens new ports,
    /// moves changed ones, closes those no longer wanted. A port that
    /// cannot be bound is reported and retried by the next call; returns
    /// whether every wanted server runs.
    pub fn update(&mut self, wanted: &BTreeMap<ObjectKey, HealthCheck>) -> bool {
        self.running.retain(|k, r| {
            let keep = wanted.get(k).is_some_and(|w| w.node_port == r.port);
            if !keep {
                info!(service = %k, port = r.port, "health check server closed");
            }
            keep
        });
        let mut complete = true;
        for (key, check) in wanted {
            if let Some(r) = self.running.get(key) {
                r.state
                    .local_endpoints
                    .store(check.local_endpoints, Ordering::Relaxed);
                continue;
            }
            let state = Arc::new(CheckState {
                service: key.clone(),
                local_endpoints: AtomicUsize::new(check.local_endpoints),
            });
            let handler: Handler = {
                let state = Arc::clone(&state);
                let proxy = Arc::clone(&self.proxy);
                Arc::new(move |_: &Request| check_response(&state, &proxy))
            };
            let addr = SocketAddr::V4(SocketAddrV4::new(self.bind, check.node_port));
            match Server::bind(
                &self.runtime,
                addr,
                &format!("health check of {key}"),
                handler,
            ) {
                Ok(server) => {
                    info!(service = %key, port = check.node_port, local_endpoints = check.local_endpoints, "health check server listening");
                    self.running.insert(
                        key.clone(),
                        Running {
                            port: check.node_port,
                            state,
                            _server: server,
                        },
                    );
                }
                Err(e) => {
                    complete = false;
                    warn!(error = %e, source = %e.source, "health check server not started; retrying");
                }
            }
        }
        complete
    }

    /// How many servers run.
    #[must_use]
    pub fn len(&self) -> usize {
        self.running.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;

    fn get(port: u16, path: &str) -> (u16, String, String) {
        request(port, "GET", path)
    }

    fn request(port: u16, method: &str, path: &str) -> (u16, String, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn proxy_health_follows_updates_and_node() {
        let h = ProxyHealth::new(Duration::from_millis(300));
        let r = h.respond(true);
        assert_eq!(r.status, 503, "not synced yet");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["lastUpdated"], "");
        assert!(body["currentTime"].as_str().unwrap().ends_with('Z'));
        h.updated();
        assert_eq!(h.respond(true).status, 200);
        assert_eq!(h.respond(false).status, 200);
        let mut node = Node::default();
        node.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Utc::now()),
        );
        h.set_node(Some(&node));
        assert_eq!(h.respond(true).status, 503, "node being deleted");
        assert_eq!(h.respond(false).status, 200, "livez ignores the node");
        h.set_node(None);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(h.respond(false).status, 503, "stale");
    }

    #[test]
    fn healthz_server_answers_get_and_head_as_kube_proxy_and_counts() {
        let rt = crate::runtime::Runtime::start().unwrap();
        let health = Arc::new(ProxyHealth::default());
        let metrics = Arc::new(Metrics::new());
        let server = Server::bind(
            rt.handle(),
            "127.0.0.1:0".parse().unwrap(),
            "healthz",
            health.handler(&metrics),
        )
        .unwrap();
        let port = server.local_addr().port();
        let (status, head, body) = get(port, "/healthz");
        assert_eq!(status, 503, "not synced yet");
        assert!(
            head.contains("\r\nContent-Type: application/json\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nX-Content-Type-Options: nosniff\r\n"),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["lastUpdated"], "");
        assert_eq!(v["nodeEligible"], true);
        health.updated();
        let (status, head, body) = request(port, "HEAD", "/healthz");
        assert_eq!(status, 200);
        assert!(
            head.contains("\r\nX-Content-Type-Options: nosniff\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nContent-Length: "), "{head}");
        assert!(body.is_empty(), "HEAD: no body: {body}");
        let (status, _, body) = get(port, "/livez");
        assert_eq!(status, 200);
        assert!(!body.contains("nodeEligible"), "{body}");
        assert_eq!(get(port, "/nope").0, 404);
        assert_eq!(request(port, "DELETE", "/healthz").0, 405);

        let text = metrics.render();
        for line in [
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn servers_open_move_and_close() {
        let rt = crate::runtime::Runtime::start().unwrap();
        let proxy = Arc::new(ProxyHealth::default());
        proxy.updated();
        let mut s =
            HealthCheckServers::new(Ipv4Addr::LOCALHOST, Arc::clone(&proxy), rt.handle().clone());
        let key = ObjectKey {
            namespace: "default".into(),
            name: "web".into(),
        };
        let (p1, p2) = (free_port(), free_port());
        let mut wanted = BTreeMap::from([(
            key.clone(),
            HealthCheck {
                node_port: p1,
                local_endpoints: 2,
            },
        )]);
        assert!(s.update(&wanted));
        let (status, head, body) = get(p1, "/");
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: application/json"), "{head}");
        assert!(head.contains("X-Content-Type-Options: nosniff"), "{head}");
        assert!(
            head.contains("X-Load-Balancing-Endpoint-Weight: 2"),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({"service": {"namespace": "default", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );

        let (status, head, body) = request(p1, "HEAD", "/");
        assert_eq!(status, 200);
        assert!(
            head.contains("X-Load-Balancing-Endpoint-Weight: 2"),
            "{head}"
        );
        assert!(body.is_empty(), "HEAD: no body: {body}");

        wanted.get_mut(&key).unwrap().local_endpoints = 0;
        assert!(s.update(&wanted));
        assert_eq!(get(p1, "/healthz").0, 503);

        wanted.get_mut(&key).unwrap().node_port = p2;
        assert!(s.update(&wanted));
        assert!(
            TcpStream::connect(("127.0.0.1", p1)).is_err(),
            "old port closed"
        );
        assert_eq!(get(p2, "/").0, 503);
        assert_eq!(s.ports(), BTreeMap::from([(key, p2)]));

        assert!(s.update(&BTreeMap::new()));
        assert!(s.is_empty());
        assert!(TcpStream::connect(("127.0.0.1", p2)).is_err(), "closed");
    }
}
