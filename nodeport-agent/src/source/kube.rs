//! Kubernetes API source: watchers of Services, EndpointSlices
//! (`discovery.k8s.io/v1`) and this agent's own Node, feeding the same
//! store → desired → reconcile pipeline as the manifests source.
//!
//! The watchers (kube-runtime's list+watch state machine) run on the
//! agent's one tokio runtime and update one shared [`Watched`] state;
//! [`KubeSource::poll_changes`] (called by the synchronous run loop) hands
//! out the objects that changed since its last call, moving them out: the
//! source keeps only each object's `resourceVersion`, the agent's store the
//! rest. Semantics:
//!
//! - Filtered at the API as kube-proxy does: Services and EndpointSlices with
//!   the label selector `!service.kubernetes.io/service-proxy-name,
//!   !service.kubernetes.io/headless`; the Node by field selector
//!   `metadata.name=<node>`.
//! - A full (re-)list is buffered and replaces the objects of its kind only
//!   when complete: whatever was not listed again is deleted then. An
//!   expired resourceVersion (410 Gone) makes the watcher re-list.
//! - Nothing is handed out before all three initial lists completed: a new
//!   agent adopting a serving datapath must not write a partial view over it.
//! - A failed list or watch (API server away, connection lost) is retried
//!   with a capped, jittered exponential backoff (200 ms → 2 s), so the
//!   agent converges within seconds after the API server returns. Meanwhile
//!   the last known state stays, and so does the datapath.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::{Changes, SourceError};
use crate::metrics::Metrics;
use crate::store::ObjectKey;

/// kube-proxy's selector for Services and EndpointSlices it serves.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// First retry delay after a failed list or watch.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Where to find the API server and which node this is.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// `--kubeconfig`; else `KUBECONFIG`, `~/.kube/config`, in-cluster.
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
}

/// One kind of object as the watchers last saw it: each object's version,
/// and the objects changed since the last hand-out.
#[derive(Debug)]
struct Objects<K> {
    /// `resourceVersion` of every visible object.
    current: BTreeMap<ObjectKey, String>,
    /// Changed since the last hand-out: the new object, `None` if deleted.
    changed: BTreeMap<ObjectKey, Option<K>>,
    /// A list in progress: replaces `current` when complete.
    listing: Option<BTreeMap<ObjectKey, K>>,
    /// A list completed at least once.
    synced: bool,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Self {
            current: BTreeMap::new(),
            changed: BTreeMap::new(),
            listing: None,
            synced: false,
        }
    }
}

fn version_of<K: Resource>(obj: &K) -> String {
    obj.meta().resource_version.clone().unwrap_or_default()
}

fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    let meta = obj.meta();
    ObjectKey {
        namespace: meta.namespace.clone().unwrap_or_default().into(),
        name: meta.name.clone().unwrap_or_default().into(),
    }
}

impl<K: Resource + PartialEq> Objects<K> {
    /// Applies one watcher event; returns whether the visible objects changed.
    fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key_of(&obj), obj);
                false
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let first = !self.synced;
                self.synced = true;
                let mut changed = false;
                // What the list no longer has is gone.
                let gone: Vec<ObjectKey> = self
                    .current
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    self.current.remove(&k);
                    self.changed.insert(k, None);
                    changed = true;
                }
                for (k, obj) in listed {
                    changed |= self.put(k, obj);
                }
                changed || first
            }
            watcher::Event::Apply(obj) => self.put(key_of(&obj), obj),
            watcher::Event::Delete(obj) => {
                let key = key_of(&obj);
                if self.current.remove(&key).is_some() {
                    self.changed.insert(key, None);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Records `obj` unless the same version is already visible.
    fn put(&mut self, key: ObjectKey, obj: K) -> bool {
        let version = version_of(&obj);
        if !version.is_empty() && self.current.get(&key) == Some(&version) {
            return false;
        }
        self.current.insert(key.clone(), version);
        self.changed.insert(key, Some(obj));
        true
    }

    /// The changes since the last call.
    fn take_changed(&mut self) -> BTreeMap<ObjectKey, Option<Arc<K>>> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|(k, v)| (k, v.map(Arc::new)))
            .collect()
    }
}

/// What the watchers maintain.
#[derive(Debug, Default)]
struct Watched {
    services: Objects<Service>,
    slices: Objects<EndpointSlice>,
    nodes: Objects<Node>,
    /// Bumped on every visible change.
    generation: u64,
}

impl Watched {
    fn synced(&self) -> bool {
        self.services.synced && self.slices.synced && self.nodes.synced
    }

    /// Moves out every change not yet handed out.
    fn take_changes(&mut self) -> Changes {
        Changes {
            services: self.services.take_changed(),
            endpoint_slices: self.slices.take_changed(),
            nodes: self
                .nodes
                .take_changed()
                .into_iter()
                .map(|(k, v)| (k.name.to_string(), v))
                .collect(),
        }
    }
}

/// The watchers' state and a condition variable signalled on every change.
#[derive(Debug, Default)]
struct SharedState {
    watched: Mutex<Watched>,
    changed: Condvar,
}

type Shared = Arc<SharedState>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Watched> {
    shared
        .watched
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The Kubernetes API source; see the module docs.
pub struct KubeSource {
    shared: Shared,
    seen: Option<u64>,
    server: String,
    waiting_logged: bool,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// Reads the client configuration and starts the watchers on
    /// `runtime`. Fails when no configuration can be found or read;
    /// an unreachable API server is not an error (the watchers retry).
    pub fn start(
        options: &KubeOptions,
        metrics: Arc<Metrics>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, SourceError> {
        let (client, cluster) = runtime.block_on(client(options.kubeconfig.as_ref()))?;
        let shared: Shared = Arc::default();
        let node = options.node_name.clone();
        let watched = Arc::clone(&shared);
        runtime.spawn(async move { watch_all(client, &node, &watched, &metrics).await });
        Ok(Self {
            shared,
            seen: None,
            server: cluster,
            waiting_logged: false,
        })
    }

    /// What changed since the last call once every initial list has
    /// completed (the first call: every object); `None` otherwise.
    pub fn poll_changes(&mut self) -> Option<Changes> {
        let mut w = lock(&self.shared);
        if !w.synced() {
            if !self.waiting_logged {
                self.waiting_logged = true;
                info!("waiting for the initial lists of Services, EndpointSlices and the Node");
            }
            return None;
        }
        if self.seen == Some(w.generation) {
            return None;
        }
        self.seen = Some(w.generation);
        let changes = w.take_changes();
        drop(w);
        debug!(
            services = changes.services.len(),
            endpoint_slices = changes.endpoint_slices.len(),
            nodes = changes.nodes.len(),
            "cluster objects changed"
        );
        Some(changes)
    }

    /// Blocks until the watchers changed something not yet handed out by
    /// [`Self::poll_changes`], or `timeout` passed.
    pub fn wait(&self, timeout: Duration) {
        let w = lock(&self.shared);
        if self.seen != Some(w.generation) && w.synced() {
            return;
        }
        let _ = self
            .shared
            .changed
            .wait_timeout(w, timeout)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// What the source reads, for logs.
    #[must_use]
    pub fn server(&self) -> &str {
        &self.server
    }
}

/// A client from `--kubeconfig`, or inferred (KUBECONFIG, ~/.kube/config,
/// in-cluster service account).
async fn client(kubeconfig: Option<&PathBuf>) -> Result<(Client, String), SourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |source| SourceError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(bad)?
        }
        None => kube::Config::infer()
            .await
            .map_err(SourceError::NoClientConfig)?,
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(SourceError::Client)?;
    Ok((client, url))
}

async fn watch_all(client: Client, node: &str, shared: &Shared, metrics: &Metrics) {
    let selected = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let services = watch(
        Api::<Service>::all(client.clone()),
        selected.clone(),
        "services",
        shared,
        metrics,
        |w| &mut w.services,
    );
    let slices = watch(
        Api::<EndpointSlice>::all(client.clone()),
        selected,
        "endpointslices",
        shared,
        metrics,
        |w| &mut w.slices,
    );
    let nodes = watch(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
        "nodes",
        shared,
        metrics,
        |w| &mut w.nodes,
    );
    futures::join!(services, slices, nodes);
}

/// Runs one watcher for ever, applying its events to `shared`.
async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    shared: &Shared,
    metrics: &Metrics,
    pick: fn(&mut Watched) -> &mut Objects<K>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + PartialEq + Send + 'static,
{
    let mut events = watcher(api, config)
        .backoff(RetryBackoff::default())
        .boxed();
    let mut failing = false;
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => {
                if failing {
                    failing = false;
                    info!(resource, "list/watch resumed");
                }
                let event = event.modify(|o| o.managed_fields_mut().clear());
                let mut w = lock(shared);
                if pick(&mut w).apply(event) {
                    w.generation += 1;
                    shared.changed.notify_all();
                }
            }
            Err(e) => {
                metrics.source_error(resource);
                if failing {
                    debug!(resource, error = %e, "list/watch failed again");
                } else {
                    failing = true;
                    warn!(resource, error = %e, "list/watch failed; retrying, the datapath keeps the last known state");
                }
            }
        }
    }
}

/// Exponential backoff from [`BACKOFF_MIN`] to [`BACKOFF_MAX`] with ±20 %
/// jitter, so that many agents do not reconnect in lockstep.
#[derive(Debug)]
struct RetryBackoff {
    next: Duration,
    seed: u64,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()) | 1);
        Self {
            next: BACKOFF_MIN,
            seed,
        }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // xorshift64: plenty for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.8 + 0.4 * (f64::from((self.seed >> 11) as u32) / f64::from(u32::MAX));
        let delay = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Some(delay)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, rv: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    fn names(o: &Objects<Service>) -> Vec<String> {
        o.current.keys().map(ToString::to_string).collect()
    }

    /// The changes handed out now: `name` for a new version, `-name` for a
    /// deletion.
    fn taken(o: &mut Objects<Service>) -> Vec<String> {
        o.take_changed()
            .into_iter()
            .map(|(k, v)| match v {
                Some(_) => k.name.to_string(),
                None => format!("-{}", k.name),
            })
            .collect()
    }

    #[test]
    fn relist_replaces_atomically_and_deletes_what_was_not_seen() {
        let mut o = Objects::<Service>::default();
        assert!(!o.apply(watcher::Event::Init));
        assert!(!o.apply(watcher::Event::InitApply(svc("a", "1"))));
        assert!(!o.apply(watcher::Event::InitApply(svc("b", "2"))));
        assert!(
            !o.synced && o.current.is_empty(),
            "nothing visible mid-list"
        );
        assert!(o.apply(watcher::Event::InitDone));
        assert!(o.synced);
        assert_eq!(names(&o), ["default/a", "default/b"]);
        assert_eq!(
            taken(&mut o),
            ["a", "b"],
            "the first list hands out everything"
        );

        assert!(o.apply(watcher::Event::Apply(svc("c", "3"))));
        assert!(!o.apply(watcher::Event::Apply(svc("c", "3"))), "unchanged");
        assert!(o.apply(watcher::Event::Delete(svc("a", "4"))));
        assert!(!o.apply(watcher::Event::Delete(svc("a", "4"))));
        assert_eq!(names(&o), ["default/b", "default/c"]);
        assert_eq!(taken(&mut o), ["-a", "c"]);
        assert!(taken(&mut o).is_empty(), "handed out once");

        // A re-list (after a 410) that no longer has b: b goes, at InitDone.
        assert!(!o.apply(watcher::Event::Init));
        assert!(!o.apply(watcher::Event::InitApply(svc("c", "3"))));
        assert!(!o.apply(watcher::Event::InitApply(svc("d", "5"))));
        assert_eq!(names(&o), ["default/b", "default/c"], "old view until done");
        assert!(taken(&mut o).is_empty(), "nothing handed out mid-list");
        assert!(o.apply(watcher::Event::InitDone));
        assert_eq!(names(&o), ["default/c", "default/d"]);
        assert_eq!(taken(&mut o), ["-b", "d"], "only the difference");

        // A re-list with the same objects changes nothing.
        o.apply(watcher::Event::Init);
        o.apply(watcher::Event::InitApply(svc("c", "3")));
        o.apply(watcher::Event::InitApply(svc("d", "5")));
        assert!(!o.apply(watcher::Event::InitDone));
        assert!(taken(&mut o).is_empty());
    }

    #[test]
    fn state_waits_for_every_kind() {
        let mut w = Watched::default();
        w.services.apply(watcher::Event::Init);
        w.services.apply(watcher::Event::InitDone);
        w.slices.apply(watcher::Event::Init);
        w.slices.apply(watcher::Event::InitDone);
        assert!(!w.synced());
        w.nodes.apply(watcher::Event::Init);
        w.nodes.apply(watcher::Event::InitDone);
        assert!(w.synced());
    }

    #[test]
    fn wait_wakes_on_a_change_and_poll_hands_it_out_once() {
        let shared: Shared = Arc::default();
        {
            let mut w = lock(&shared);
            w.services.apply(watcher::Event::Init);
            w.services.apply(watcher::Event::InitDone);
            w.slices.apply(watcher::Event::Init);
            w.slices.apply(watcher::Event::InitDone);
            w.nodes.apply(watcher::Event::Init);
            w.nodes.apply(watcher::Event::InitDone);
            w.generation = 1;
        }
        let mut source = KubeSource {
            shared: Arc::clone(&shared),
            seen: None,
            server: String::new(),
            waiting_logged: false,
        };
        let start = std::time::Instant::now();
        source.wait(Duration::from_secs(5));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "a pending change: no wait"
        );
        assert!(source.poll_changes().is_some());
        assert!(source.poll_changes().is_none(), "handed out once");

        let bumper = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut w = lock(&shared);
                w.services.apply(watcher::Event::Apply(svc("a", "1")));
                w.generation += 1;
                shared.changed.notify_all();
            })
        };
        let start = std::time::Instant::now();
        source.wait(Duration::from_secs(5));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "woken by the change"
        );
        bumper.join().unwrap();
        let changes = source.poll_changes().expect("the change");
        assert_eq!(changes.services.len(), 1);

        let start = std::time::Instant::now();
        source.wait(Duration::from_millis(100));
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "nothing new: times out"
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = RetryBackoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next().unwrap()).collect();
        assert!(delays[0] >= BACKOFF_MIN.mul_f64(0.8) && delays[0] <= BACKOFF_MIN.mul_f64(1.2));
        for d in &delays {
            assert!(*d <= BACKOFF_MAX.mul_f64(1.2), "{delays:?}");
        }
        assert!(delays[7] >= BACKOFF_MAX.mul_f64(0.8), "{delays:?}");
        b.reset();
        assert!(b.next().unwrap() <= BACKOFF_MIN.mul_f64(1.2));
    }
}
