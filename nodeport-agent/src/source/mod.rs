//! Where the agent's cluster objects come from.

use std::path::PathBuf;

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
    /// The Kubernetes API source could not start (configuration, client).
    #[error("Kubernetes API source: {0}")]
    Kube(String),
}

/// A source of cluster objects: the Kubernetes API or a manifests
/// directory. The agent's loop polls it; everything after it (store
/// → desired state → reconcile) is the same whatever the source.
pub trait Source {
    /// The complete current state when anything changed since the last
    /// call (the first call always returns it), `None` when nothing did.
    fn poll(&mut self) -> Result<Option<crate::store::ClusterState>, SourceError>;

    /// What this source reads, for logs.
    fn describe(&self) -> String;

    /// Blocks until the source may have something new, or for `timeout`.
    /// Sources that are polled (the manifests directory) just sleep.
    fn wait(&self, timeout: std::time::Duration) {
        std::thread::sleep(timeout);
    }
}

impl Source for manifests::ManifestsSource {
    fn poll(&mut self) -> Result<Option<crate::store::ClusterState>, SourceError> {
        self.scan()
    }

    fn describe(&self) -> String {
        format!("manifests in {}", self.dir().display())
    }
}

impl Source for kube::KubeSource {
    fn poll(&mut self) -> Result<Option<crate::store::ClusterState>, SourceError> {
        Ok(self.poll_state())
    }

    fn describe(&self) -> String {
        format!("the Kubernetes API at {}", self.server())
    }

    fn wait(&self, timeout: std::time::Duration) {
        kube::KubeSource::wait(self, timeout);
    }
}
