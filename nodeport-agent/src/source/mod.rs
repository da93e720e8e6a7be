//! Where the agent's cluster objects come from.

use std::path::PathBuf;

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
}
