//! Keep-last-good: every object of the state with the file and document
//! that provided it. What a file provided is offered again behind a
//! document of it that no longer validates (matched by kind, namespace and
//! name), and in place of the whole file when it no longer parses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use super::objects::{Object, TypedKey};

/// An object of the state.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The file that provides it, and the document of that file.
    pub file: String,
    pub document: usize,
    /// As validated (for a Service: after the update rules, if it was an update).
    pub object: Object,
    /// For a Service: the document as written (defaulted), before the update rules.
    pub written: Option<Arc<Service>>,
    /// As served (for a Service: with the nodePorts the allocator filled in).
    pub served: Object,
}

/// A version of an object that may be served: a document's, or the last
/// good one.
#[derive(Clone, Debug)]
pub struct Version {
    pub object: Object,
    pub written: Option<Arc<Service>>,
    pub document: usize,
    /// The last good version rather than the file's current content.
    pub kept: bool,
}

impl Version {
    /// The last good version `accepted`.
    #[must_use]
    pub fn kept(accepted: &Accepted) -> Self {
        Self {
            object: accepted.object.clone(),
            written: accepted.written.clone(),
            document: accepted.document,
            kept: true,
        }
    }

    /// This version, accepted from `file` and served as `served`.
    #[must_use]
    pub fn accept(&self, file: &str, served: Object) -> Accepted {
        Accepted {
            file: file.to_owned(),
            document: self.document,
            object: self.object.clone(),
            written: self.written.clone(),
            served,
        }
    }
}

/// The objects of the state, and which file provides which.
#[derive(Debug, Default)]
pub struct LastGood {
    accepted: BTreeMap<TypedKey, Accepted>,
    by_file: BTreeMap<String, BTreeSet<TypedKey>>,
}

impl LastGood {
    #[must_use]
    pub fn get(&self, key: &TypedKey) -> Option<&Accepted> {
        self.accepted.get(key)
    }

    /// The last good version of `key` that `file` provided, if it provides it.
    #[must_use]
    pub fn kept(&self, file: &str, key: &TypedKey) -> Option<&Accepted> {
        self.accepted.get(key).filter(|a| a.file == file)
    }

    /// The objects `file` provides.
    pub fn provided_by(&self, file: &str) -> impl Iterator<Item = &TypedKey> {
        self.by_file.get(file).into_iter().flatten()
    }

    /// Whether `file` provides anything.
    #[must_use]
    pub fn provides(&self, file: &str) -> bool {
        self.by_file.contains_key(file)
    }

    /// Sets (or with `None` removes) `key`; returns what it was.
    pub fn set(&mut self, key: &TypedKey, accepted: Option<Accepted>) -> Option<Accepted> {
        let old = match accepted {
            Some(accepted) => {
                self.by_file
                    .entry(accepted.file.clone())
                    .or_default()
                    .insert(key.clone());
                self.accepted.insert(key.clone(), accepted)
            }
            None => self.accepted.remove(key),
        };
        if let Some(old) = &old {
            let moved = self
                .accepted
                .get(key)
                .is_none_or(|now| now.file != old.file);
            if moved && let Some(keys) = self.by_file.get_mut(&old.file) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_file.remove(&old.file);
                }
            }
        }
        old
    }

    /// Every object of the state, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&TypedKey, &Accepted)> {
        self.accepted.iter()
    }
}
