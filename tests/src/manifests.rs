//! A directory of Kubernetes manifests, the input of an agent started with
//! `--manifests DIR`.
//!
//! Files are written to a staging directory next to it and renamed into
//! place, so an agent watching the directory only ever sees complete files
//! (and never a temporary name).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A manifests directory. It lives in the cluster's temporary directory and
/// goes away with it.
#[derive(Debug)]
pub struct Manifests {
    dir: PathBuf,
    staging: PathBuf,
}

impl Manifests {
    /// Creates `dir` (and a sibling staging directory `.staging-<name>`).
    pub(crate) fn create(dir: PathBuf) -> Manifests {
        let name = dir
            .file_name()
            .unwrap_or_else(|| panic!("{} has no file name", dir.display()))
            .to_string_lossy()
            .into_owned();
        let staging = dir.with_file_name(format!(".staging-{name}"));
        for d in [&dir, &staging] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        Manifests { dir, staging }
    }

    /// The directory to pass as `--manifests`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of manifest `file_name` in the directory.
    #[must_use]
    pub fn path(&self, file_name: &str) -> PathBuf {
        check_name(file_name);
        self.dir.join(file_name)
    }

    /// Writes (or atomically replaces) manifest `file_name` with `contents`.
    pub fn write(&self, file_name: &str, contents: &str) {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let target = self.path(file_name);
        let temp = self.staging.join(format!(
            "{file_name}.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&temp, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", temp.display()));
        fs::rename(&temp, &target).unwrap_or_else(|e| {
            panic!(
                "cannot rename {} to {}: {e}",
                temp.display(),
                target.display()
            )
        });
    }

    /// Removes manifest `file_name`; panics if it does not exist.
    pub fn remove(&self, file_name: &str) {
        let target = self.path(file_name);
        fs::remove_file(&target)
            .unwrap_or_else(|e| panic!("cannot remove {}: {e}", target.display()));
    }

    /// The current contents of manifest `file_name`, if it exists.
    #[must_use]
    pub fn read(&self, file_name: &str) -> Option<String> {
        fs::read_to_string(self.path(file_name)).ok()
    }

    /// The file names in the directory, sorted.
    #[must_use]
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", self.dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn check_name(file_name: &str) {
    assert!(
        !file_name.is_empty() && !file_name.contains('/') && file_name != "." && file_name != "..",
        "manifest name must be a plain file name, got {file_name:?}"
    );
}
