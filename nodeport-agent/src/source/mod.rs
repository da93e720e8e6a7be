//! Where the agent's cluster objects come from.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::store::{ClusterState, ObjectKey};

pub mod kube;
pub mod manifests;

/// A source could not be read at all (as opposed to single bad objects,
/// which are reported and skipped while the rest keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the manifests directory {}: {source}", path.display())]
    ManifestsDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A kubeconfig could not be read or used.
    #[error("kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    /// No client configuration was found.
    #[error("no Kubernetes client configuration (--kubeconfig, KUBECONFIG or in-cluster)")]
    NoClientConfig(#[source] ::kube::config::InferConfigError),
    /// The client could not be built from its configuration.
    #[error("creating the Kubernetes client")]
    Client(#[source] ::kube::Error),
}

/// What a source delivers.
#[derive(Debug)]
pub enum Update {
    /// Everything it knows (a manifests scan): what the agent holds and
    /// this lacks is gone.
    Full(ClusterState),
    /// The objects that changed since the last delivery (`None`: deleted);
    /// the first delivery of a source that sends changes holds every object.
    Changes(Changes),
}

/// Objects changed since the last delivery, each with its new version or
/// `None` when it was deleted. Shared with the source (`Arc`), not copied.
#[derive(Debug, Default)]
pub struct Changes {
    pub services: BTreeMap<ObjectKey, Option<Arc<Service>>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Option<Arc<EndpointSlice>>>,
    pub nodes: BTreeMap<String, Option<Arc<Node>>>,
}

impl Changes {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.endpoint_slices.is_empty() && self.nodes.is_empty()
    }
}

impl Update {
    /// The objects it holds.
    #[must_use]
    pub fn objects(&self) -> usize {
        match self {
            Self::Full(s) => s.services.len() + s.endpoint_slices.len() + s.nodes.len(),
            Self::Changes(c) => c.services.len() + c.endpoint_slices.len() + c.nodes.len(),
        }
    }
}

/// A source of cluster objects: the Kubernetes API or a manifests
/// directory. The agent's loop polls it; everything after it (store
/// → desired state → reconcile) is the same whatever the source.
pub trait Source {
    /// What changed since the last call (the first call delivers
    /// everything), `None` when nothing did.
    fn poll(&mut self) -> Result<Option<Update>, SourceError>;

    /// What this source reads, for logs.
    fn describe(&self) -> String;

    /// Blocks until the source may have something new, or for `timeout`.
    /// Sources that are polled (the manifests directory) just sleep.
    fn wait(&self, timeout: std::time::Duration) {
        std::thread::sleep(timeout);
    }
}

impl Source for manifests::ManifestsSource {
    fn poll(&mut self) -> Result<Option<Update>, SourceError> {
        Ok(self.poll_changes()?.map(Update::Changes))
    }

    fn describe(&self) -> String {
        format!("manifests in {}", self.dir().display())
    }
}

impl Source for kube::KubeSource {
    fn poll(&mut self) -> Result<Option<Update>, SourceError> {
        Ok(self.poll_changes().map(Update::Changes))
    }

    fn describe(&self) -> String {
        format!("the Kubernetes API at {}", self.server())
    }

    fn wait(&self, timeout: std::time::Duration) {
        kube::KubeSource::wait(self, timeout);
    }
}
