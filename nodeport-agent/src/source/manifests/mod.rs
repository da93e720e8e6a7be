//! Manifests source: Services, `EndpointSlice`s and Nodes read from the YAML
//! files of one directory, standing in for the API server on a machine
//! without a cluster.
//!
//! Every `*.yaml` / `*.yml` file of the directory (not recursive; hidden
//! files are skipped) is a stream of `---` separated documents of kind
//! `Service` (`v1`), `EndpointSlice` (`discovery.k8s.io/v1`) or `Node` (`v1`).
//! Files are taken in name order. Each document is defaulted and validated as
//! the API server would ([`service`], [`endpoint_slice`], [`node`], with the
//! name rules of [`names`]); the Services then go through the nodePort
//! allocator ([`node_ports`]), which rejects colliding nodePorts and fills in
//! omitted ones.
//!
//! A Service document that replaces a Service of the last state (the same
//! namespace and name, from whichever file) is an *update*: before it is
//! validated it goes through the API server's update rules
//! ([`update_rules`]) against the served version, so that e.g. an edit to
//! `type: ClusterIP` that leaves the old nodePorts in the file releases them
//! instead of being rejected. Any other document is a create. A document
//! unchanged since its version was accepted is not an update again: it keeps
//! the outcome it had.
//!
//! A bad document is reported (file, document, reason) and skipped; the rest
//! keeps serving. A file that turns bad keeps its last good objects
//! ([`last_good`]): a file that no longer parses keeps everything it last
//! provided, and a document that no longer validates keeps the last good
//! version of its object (matched by kind, namespace and name). A deleted
//! file's objects go away.
//!
//! Work is proportional to what changed. [`files`] stats every file on each
//! scan and reads (and [`decode`]s) only the files whose size, times or
//! inode changed. Only the objects those files offered before or offer now
//! are validated again; the Services whose nodePorts were refused are placed
//! again when anything may have freed a port; every other Service keeps its
//! ports in the allocator's index. [`ManifestsSource::scan_changes`] says
//! which objects changed; the first scan holds every object.

pub mod decode;
pub mod endpoint_slice;
pub mod files;
pub mod invalid;
pub mod last_good;
pub mod names;
pub mod node;
pub mod node_ports;
pub mod objects;
pub mod scalars;
pub mod service;
pub mod update_rules;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use tracing::{error, info, warn};

use self::decode::{Document, Outcome, Parsed};
use self::files::FileEntry;
use self::invalid::Invalid;
use self::last_good::{Accepted, LastGood, Version};
use self::node_ports::{Candidate, NodePortAllocator};
use self::objects::{Kind, Object, TypedKey};
use super::{Changes, SourceError};
use crate::metrics::Metrics;
use crate::store::ClusterState;

/// How serious a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The document is valid but not served (e.g. an IPv6 `EndpointSlice`).
    Warning,
    /// The document (or file) was rejected.
    Error,
}

/// Something wrong with a manifest, found by the last scan.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    pub file: PathBuf,
    /// Position of the document in the file, from 1 (empty documents count);
    /// `None` when the problem concerns the whole file.
    pub document: Option<usize>,
    pub severity: Severity,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(document) = self.document {
            write!(f, " (document {document})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// One object offered by one file, with the versions that may be served.
struct Entry {
    key: TypedKey,
    file: String,
    /// Where the entry stands among all entries (file, then document order).
    document: usize,
    versions: Vec<Version>,
}

/// Services, `EndpointSlice`s and Nodes from the YAML files of a directory.
#[derive(Debug)]
pub struct ManifestsSource {
    dir: PathBuf,
    node_port_range: RangeInclusive<u16>,
    files: BTreeMap<String, FileEntry>,
    scanned: bool,
    /// A first delivery was made (`poll_changes`).
    delivered: bool,
    allocator: NodePortAllocator,
    /// Which documents (file, index into its documents) offer each object.
    offered: BTreeMap<TypedKey, Vec<(String, usize)>>,
    /// The objects of the last state, with their providers.
    last_good: LastGood,
    /// Services with a version the allocator refused: placed again when a
    /// port may have been freed.
    contended: BTreeSet<TypedKey>,
    /// Problems of whole files and of documents that name no object.
    file_problems: BTreeMap<String, Vec<Problem>>,
    /// Problems found when an object was last looked at.
    key_problems: BTreeMap<TypedKey, Vec<Problem>>,
    problems: Vec<Problem>,
    reported: BTreeSet<Problem>,
    /// Where each read that found a change is counted.
    metrics: Option<Arc<Metrics>>,
}

impl ManifestsSource {
    #[must_use]
    pub fn new(dir: PathBuf, node_port_range: RangeInclusive<u16>) -> Self {
        Self {
            dir,
            allocator: NodePortAllocator::new(node_port_range.clone()),
            node_port_range,
            files: BTreeMap::new(),
            scanned: false,
            delivered: false,
            offered: BTreeMap::new(),
            last_good: LastGood::default(),
            contended: BTreeSet::new(),
            file_problems: BTreeMap::new(),
            key_problems: BTreeMap::new(),
            problems: Vec::new(),
            reported: BTreeSet::new(),
            metrics: None,
        }
    }

    /// Counts each read that finds a change, and what it rejected, in
    /// `metrics` (`nodeport_manifests_loads_total`,
    /// `nodeport_manifests_rejected`).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The problems found by the last scan that saw a change (bad documents,
    /// rejected objects, ignored objects), in file order.
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Reads the directory. Returns the complete new state when any file
    /// changed since the last scan (always on the first), `None` otherwise.
    /// Fails only when the directory itself cannot be read; bad files and
    /// documents are reported through [`Self::problems`] and the log.
    pub fn scan(&mut self) -> Result<Option<ClusterState>, SourceError> {
        Ok(self.scan_changes()?.map(|_| self.state()))
    }

    /// Reads the directory. Returns the objects that changed when any file
    /// changed since the last scan (always on the first: then every object),
    /// `None` otherwise.
    pub fn scan_changes(&mut self) -> Result<Option<Changes>, SourceError> {
        let last_good = &self.last_good;
        let files_changed =
            files::refresh(&mut self.files, &self.dir, &self.node_port_range, |name| {
                last_good.provides(name)
            })?;
        if files_changed.is_empty() && self.scanned {
            return Ok(None);
        }
        self.scanned = true;
        let changes = self.apply(files_changed);
        self.report();
        let mut counts = [0usize; 3];
        for (key, _) in self.last_good.iter() {
            counts[key.kind as usize] += 1;
        }
        info!(
            dir = %self.dir.display(),
            files = self.files.len(),
            services = counts[Kind::Service as usize],
            endpoint_slices = counts[Kind::EndpointSlice as usize],
            nodes = counts[Kind::Node as usize],
            changed = changes.services.len() + changes.endpoint_slices.len() + changes.nodes.len(),
            problems = self.problems.len(),
            "manifests loaded"
        );
        if let Some(metrics) = &self.metrics {
            let rejected = self
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            metrics.manifests_loaded(rejected);
        }
        Ok(Some(changes))
    }

    /// What the agent's loop takes: the objects that changed since the last
    /// delivery (the first delivery holds every object, even none).
    pub fn poll_changes(&mut self) -> Result<Option<Changes>, SourceError> {
        let changes = self
            .scan_changes()?
            .filter(|changes| !self.delivered || !changes.is_empty());
        self.delivered |= changes.is_some();
        Ok(changes)
    }

    /// Every object of the current state.
    #[must_use]
    pub fn state(&self) -> ClusterState {
        let mut state = ClusterState::default();
        for (key, accepted) in self.last_good.iter() {
            match &accepted.served {
                Object::Service(s) => {
                    state.services.insert(key.key.clone(), s.as_ref().clone());
                }
                Object::EndpointSlice(s) => {
                    state
                        .endpoint_slices
                        .insert(key.key.clone(), s.as_ref().clone());
                }
                Object::Node(n) => {
                    state
                        .nodes
                        .insert(key.key.name.to_string(), n.as_ref().clone());
                }
            }
        }
        state
    }

    /// Takes in the files that changed: their objects (those they offered
    /// before and those they offer now) are looked at again.
    fn apply(&mut self, changed: Vec<files::FileChange>) -> Changes {
        let mut dirty = BTreeSet::new();
        for change in changed {
            let name = change.name;
            dirty.extend(self.last_good.provided_by(&name).cloned());
            if let Some(old) = &change.old {
                for key in old.keys() {
                    if let Some(offers) = self.offered.get_mut(key) {
                        offers.retain(|(file, _)| *file != name);
                        if offers.is_empty() {
                            self.offered.remove(key);
                        }
                    }
                    dirty.insert(key.clone());
                }
            }
            let Some(file) = self.files.get(&name) else {
                self.file_problems.remove(&name);
                continue;
            };
            let mut problems = Vec::new();
            match &file.parsed {
                Parsed::Broken(e) => {
                    let kept = self.last_good.provided_by(&name).count();
                    let reason = if kept == 0 {
                        e.to_string()
                    } else {
                        format!("{e}; keeping the {kept} object(s) it last provided")
                    };
                    problems.push(self.problem(&name, None, Severity::Error, reason));
                }
                Parsed::Documents(documents) => {
                    for (i, document) in documents.iter().enumerate() {
                        match &document.outcome {
                            Outcome::Ignored { reason } => problems.push(self.problem(
                                &name,
                                Some(document.index),
                                Severity::Warning,
                                reason.clone(),
                            )),
                            Outcome::Invalid { key: None, reason } => {
                                problems.push(self.problem(
                                    &name,
                                    Some(document.index),
                                    Severity::Error,
                                    reason.clone(),
                                ));
                            }
                            outcome => {
                                if let Some(key) = outcome.key() {
                                    let offers = self.offered.entry(key.clone()).or_default();
                                    let at = offers
                                        .binary_search_by(|(f, d)| {
                                            (f.as_str(), *d).cmp(&(name.as_str(), i))
                                        })
                                        .unwrap_or_else(|at| at);
                                    offers.insert(at, (name.clone(), i));
                                    dirty.insert(key.clone());
                                }
                            }
                        }
                    }
                }
            }
            if problems.is_empty() {
                self.file_problems.remove(&name);
            } else {
                self.file_problems.insert(name, problems);
            }
        }
        self.evaluate(dirty)
    }

    /// Looks at `dirty` objects again: which file provides each, which
    /// version is valid, and (for Services) which nodePorts they get.
    /// Returns the objects whose served version changed.
    fn evaluate(&mut self, mut dirty: BTreeSet<TypedKey>) -> Changes {
        if dirty.iter().any(|k| k.kind == Kind::Service) {
            dirty.extend(self.contended.iter().cloned());
        }
        let mut outcomes: Vec<(TypedKey, Option<Accepted>)> = Vec::with_capacity(dirty.len());
        let mut services = Vec::new();
        for key in &dirty {
            let mut problems = Vec::new();
            let entries = self.entries_of(key, &mut problems);
            let winner = self.resolve_duplicates(entries, &mut problems);
            match winner {
                Some(entry) if key.kind == Kind::Service => services.push(entry),
                Some(entry) => {
                    let version = &entry.versions[0];
                    let accepted = version.accept(&entry.file, version.object.clone());
                    outcomes.push((key.clone(), Some(accepted)));
                }
                None => {
                    if key.kind == Kind::Service {
                        self.allocator.release(&key.key);
                        self.contended.remove(key);
                    }
                    outcomes.push((key.clone(), None));
                }
            }
            self.set_key_problems(key, problems);
        }

        // Services go through the nodePort allocator together, in file order.
        services.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        let candidates: Vec<Candidate> = services
            .iter()
            .map(|entry| Candidate {
                key: entry.key.key.clone(),
                versions: entry
                    .versions
                    .iter()
                    .filter_map(|v| match &v.object {
                        Object::Service(s) => Some(Arc::clone(s)),
                        _ => None,
                    })
                    .collect(),
            })
            .collect();
        let assignments = self.allocator.assign_changed(&candidates);
        for (entry, assignment) in services.into_iter().zip(assignments) {
            let mut problems = self.key_problems.remove(&entry.key).unwrap_or_default();
            for (version, invalid) in &assignment.refused {
                let refused = &entry.versions[*version];
                let reason = if refused.kept {
                    format!(
                        "the last good version of {} cannot be kept: {invalid}",
                        entry.key
                    )
                } else if assignment.accepted.is_some() {
                    format!(
                        "invalid {}: {invalid}; keeping its last good version",
                        entry.key
                    )
                } else {
                    format!("invalid {}: {invalid}", entry.key)
                };
                problems.push(self.problem(
                    &entry.file,
                    Some(refused.document),
                    Severity::Error,
                    reason,
                ));
            }
            if assignment.refused.is_empty() {
                self.contended.remove(&entry.key);
            } else {
                self.contended.insert(entry.key.clone());
            }
            let accepted = assignment.accepted.map(|(version, served)| {
                entry.versions[version].accept(&entry.file, Object::Service(served))
            });
            self.set_key_problems(&entry.key, problems);
            outcomes.push((entry.key, accepted));
        }

        self.take_outcomes(outcomes)
    }

    /// Makes `outcomes` the state; returns the objects whose served version
    /// changed.
    fn take_outcomes(&mut self, outcomes: Vec<(TypedKey, Option<Accepted>)>) -> Changes {
        let mut changes = Changes::default();
        for (key, accepted) in outcomes {
            let new = accepted.as_ref().map(|a| a.served.clone());
            let old = self.last_good.set(&key, accepted).map(|a| a.served);
            let same = match (&old, &new) {
                (Some(old), Some(new)) => old.same(new),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            match new {
                Some(Object::Service(s)) => {
                    changes.services.insert(key.key, Some(Arc::clone(&s)));
                }
                Some(Object::EndpointSlice(s)) => {
                    changes
                        .endpoint_slices
                        .insert(key.key, Some(Arc::clone(&s)));
                }
                Some(Object::Node(n)) => {
                    changes
                        .nodes
                        .insert(key.key.name.to_string(), Some(Arc::clone(&n)));
                }
                None => match key.kind {
                    Kind::Service => {
                        changes.services.insert(key.key, None);
                    }
                    Kind::EndpointSlice => {
                        changes.endpoint_slices.insert(key.key, None);
                    }
                    Kind::Node => {
                        changes.nodes.insert(key.key.name.to_string(), None);
                    }
                },
            }
        }
        changes
    }

    fn set_key_problems(&mut self, key: &TypedKey, problems: Vec<Problem>) {
        if problems.is_empty() {
            self.key_problems.remove(key);
        } else {
            self.key_problems.insert(key.clone(), problems);
        }
    }

    /// Every entry of `key`, in file and document order: one per document
    /// that names it (with the last good version behind a current one that
    /// may be refused), and the kept version where a broken file provided it.
    fn entries_of(&self, key: &TypedKey, problems: &mut Vec<Problem>) -> Vec<Entry> {
        let mut entries = Vec::new();
        if let Some(kept) = self.last_good.get(key)
            && self
                .files
                .get(&kept.file)
                .is_some_and(|f| matches!(f.parsed, Parsed::Broken(_)))
        {
            entries.push(Entry {
                key: key.clone(),
                file: kept.file.clone(),
                document: kept.document,
                versions: vec![Version::kept(kept)],
            });
        }
        for (name, i) in self.offered.get(key).into_iter().flatten() {
            let Some(FileEntry {
                parsed: Parsed::Documents(documents),
                ..
            }) = self.files.get(name)
            else {
                continue;
            };
            if let Some(entry) = self.document_entry(name, key, &documents[*i], problems) {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        entries
    }

    /// The entry one document of file `name` offers for `key` (with the
    /// last good version behind it), if any; reports what is wrong with it.
    fn document_entry(
        &self,
        name: &str,
        key: &TypedKey,
        document: &Document,
        problems: &mut Vec<Problem>,
    ) -> Option<Entry> {
        let version = match &document.outcome {
            Outcome::Object { object, .. } => Version {
                object: object.clone(),
                written: None,
                document: document.index,
                kept: false,
            },
            Outcome::Service {
                service, created, ..
            } => match self.prepare_service(key, service, created) {
                Ok(validated) => Version {
                    object: Object::Service(validated),
                    written: Some(Arc::clone(service)),
                    document: document.index,
                    kept: false,
                },
                Err(reason) => {
                    return self.invalid_document(name, key, document, reason, problems);
                }
            },
            Outcome::Invalid { reason, .. } => {
                return self.invalid_document(name, key, document, reason.clone(), problems);
            }
            Outcome::Ignored { .. } => return None,
        };
        let mut versions = vec![version];
        if let Some(kept) = self.last_good.kept(name, key)
            && !kept.object.same(&versions[0].object)
        {
            versions.push(Version::kept(kept));
        }
        Some(Entry {
            key: key.clone(),
            file: name.to_owned(),
            document: document.index,
            versions,
        })
    }

    /// Reports a rejected document; its object's last good version, if the
    /// file has one, is the entry that stands in for it.
    fn invalid_document(
        &self,
        name: &str,
        key: &TypedKey,
        document: &Document,
        reason: String,
        problems: &mut Vec<Problem>,
    ) -> Option<Entry> {
        let (entry, reason) = match self.last_good.kept(name, key) {
            Some(kept) => (
                Some(Entry {
                    key: key.clone(),
                    file: name.to_owned(),
                    document: document.index,
                    versions: vec![Version::kept(kept)],
                }),
                format!("{reason}; keeping its last good version"),
            ),
            None => (None, reason),
        };
        problems.push(self.problem(name, Some(document.index), Severity::Error, reason));
        entry
    }

    /// The Service a document asks for, validated: as written on a create;
    /// after the API server's update rules against the served version when
    /// it replaces a Service of the last state, unless it is the very
    /// document that version came from (the rules were applied then).
    fn prepare_service(
        &self,
        key: &TypedKey,
        written: &Arc<Service>,
        created: &Result<(), Invalid>,
    ) -> Result<Arc<Service>, String> {
        if let Some(previous) = self.last_good.get(key)
            && let (Some(previous_written), Object::Service(validated), Object::Service(served)) =
                (&previous.written, &previous.object, &previous.served)
        {
            if Arc::ptr_eq(previous_written, written) || **previous_written == **written {
                return Ok(Arc::clone(validated));
            }
            let mut service = written.as_ref().clone();
            update_rules::prepare_update(&mut service, served);
            service::validate_service(&service, &self.node_port_range)
                .map_err(|e| format!("invalid {key}: {e}"))?;
            return Ok(Arc::new(service));
        }
        match created {
            Ok(()) => Ok(Arc::clone(written)),
            Err(e) => Err(format!("invalid {key}: {e}")),
        }
    }

    /// Picks one entry per object: the file that provided it last time keeps
    /// it, otherwise the first. Reports the others.
    fn resolve_duplicates(
        &self,
        entries: Vec<Entry>,
        problems: &mut Vec<Problem>,
    ) -> Option<Entry> {
        let provider = entries
            .first()
            .and_then(|e| self.last_good.get(&e.key))
            .map(|a| a.file.as_str());
        let winner = entries
            .iter()
            .position(|e| Some(e.file.as_str()) == provider)
            .unwrap_or(0);
        let holder = entries.get(winner)?;
        let (holder_file, holder_document) = (holder.file.clone(), holder.versions[0].document);
        let mut chosen = None;
        for (index, entry) in entries.into_iter().enumerate() {
            if index == winner {
                chosen = Some(entry);
                continue;
            }
            let reason = format!(
                "duplicate object: {} is already defined in {holder_file} (document {holder_document})",
                entry.key
            );
            problems.push(self.problem(
                &entry.file,
                Some(entry.versions[0].document),
                Severity::Error,
                reason,
            ));
        }
        chosen
    }

    fn problem(
        &self,
        file: &str,
        document: Option<usize>,
        severity: Severity,
        reason: String,
    ) -> Problem {
        Problem {
            file: self.dir.join(file),
            document,
            severity,
            reason,
        }
    }

    /// Gathers the current problems; logs those that are new since the last
    /// report, and those that went away.
    fn report(&mut self) {
        let mut problems: Vec<Problem> = self
            .file_problems
            .values()
            .chain(self.key_problems.values())
            .flatten()
            .cloned()
            .collect();
        problems.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        let current: BTreeSet<Problem> = problems.iter().cloned().collect();
        for problem in problems.iter().filter(|p| !self.reported.contains(*p)) {
            let file = problem.file.display();
            match problem.severity {
                Severity::Error => error!(
                    file = %file,
                    document = problem.document,
                    reason = %problem.reason,
                    "invalid manifest"
                ),
                Severity::Warning => warn!(
                    file = %file,
                    document = problem.document,
                    reason = %problem.reason,
                    "manifest ignored"
                ),
            }
        }
        for gone in self.reported.difference(&current) {
            info!(
                file = %gone.file.display(),
                document = gone.document,
                reason = %gone.reason,
                "manifest problem resolved"
            );
        }
        self.reported = current;
        self.problems = problems;
    }
}

#[cfg(test)]
mod tests {
    use super::files::{EMPTY_GRACE, RACY_WINDOW};
    use super::*;
    use crate::store::ObjectKey;
    use std::fs;
    use std::io;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    const RANGE: RangeInclusive<u16> = 30000..=32767;

    /// A scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            let path = std::env::temp_dir().join(format!(
                "nodeport-manifests-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }

        fn write(&self, name: &str, text: &str) {
            fs::write(self.0.join(name), text).expect("write manifest");
        }

        fn remove(&self, name: &str) {
            fs::remove_file(self.0.join(name)).expect("remove manifest");
        }

        fn source(&self) -> ManifestsSource {
            ManifestsSource::new(self.0.clone(), RANGE)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn service(name: &str, node_port: Option<u16>) -> String {
        let node_port = node_port
            .map(|p| format!("\n      nodePort: {p}"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  type: NodePort
  selector:
    app: {name}
  ports:
    - name: http
      port: 80
      targetPort: 8080{node_port}
"
        )
    }

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
  - name: http
    port: 8080
endpoints:
  - addresses: [\"10.1.1.5\"]
    nodeName: node-a
    conditions: {ready: true}
  - addresses: [\"10.1.2.5\"]
    nodeName: node-b
";

    const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-a
";

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn node_port(state: &ClusterState, name: &str) -> Option<i32> {
        state
            .services
            .get(&key(name))?
            .spec
            .as_ref()?
            .ports
            .as_ref()?
            .first()?
            .node_port
    }

    fn scan(source: &mut ManifestsSource) -> ClusterState {
        source.scan().expect("scan").expect("a changed state")
    }

    /// The problems of the last scan as `file-name#document: reason`.
    fn problems(source: &ManifestsSource) -> Vec<String> {
        source
            .problems()
            .iter()
            .map(|p| {
                let file = p
                    .file
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("{file}#{}: {}", p.document.unwrap_or(0), p.reason)
            })
            .collect()
    }

    fn assert_problem(source: &ManifestsSource, prefix: &str, text: &str) {
        let all = problems(source);
        assert!(
            all.iter()
                .any(|p| p.starts_with(prefix) && p.contains(text)),
            "no problem {prefix}… containing {text:?} in {all:#?}"
        );
    }

    #[test]
    fn good_multi_document_file() {
        let dir = TempDir::new();
        dir.write(
            "app.yaml",
            &format!(
                "---\n{}---\n# just a comment\n---\n{SLICE}---\n{NODE}",
                service("web", Some(30080))
            ),
        );
        let mut source = dir.source();
        let state = scan(&mut source);
        assert!(source.problems().is_empty(), "{:?}", problems(&source));

        let web = &state.services[&key("web")];
        assert_eq!(web.metadata.namespace.as_deref(), Some("default"));
        let port = &web
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .expect("ports")[0];
        assert_eq!(port.node_port, Some(30080));
        assert_eq!(port.protocol.as_deref(), Some("TCP"));

        let slice = &state.endpoint_slices[&key("web-abc")];
        assert_eq!(slice.endpoints.len(), 2);
        assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(
            slice.ports.as_ref().and_then(|p| p[0].protocol.as_deref()),
            Some("TCP")
        );
        assert!(state.nodes.contains_key("node-a"));
    }

    #[test]
    fn node_port_out_of_range_is_reported_and_the_rest_serves() {
        let dir = TempDir::new();
        dir.write(
            "svc.yaml",
            &format!(
                "{}---\n{}",
                service("bad", Some(40000)),
                service("good", Some(30001))
            ),
        );
        let mut source = dir.source();
        let state = scan(&mut source);
        assert!(!state.services.contains_key(&key("bad")));
        assert_eq!(node_port(&state, "good"), Some(30001));
        assert_problem(
            &source,
            "svc.yaml#1",
            "nodePort 40000 is outside the range 30000-32767",
        );
        assert_eq!(source.problems().len(), 1);
        assert_eq!(source.problems()[0].severity, Severity::Error);
    }

    #[test]
    fn duplicate_node_port_first_keeps_it() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service("first", Some(31000)));
        dir.write("b.yaml", &service("second", Some(31000)));
        let mut source = dir.source();
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "first"), Some(31000));
        assert!(!state.services.contains_key(&key("second")));
        assert_problem(
            &source,
            "b.yaml#1",
            "nodePort 31000/TCP is already allocated to default/first (port http)",
        );

        // A newcomer in a file that sorts first does not take the port from its holder.
        dir.write("0.yaml", &service("zeroth", Some(31000)));
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "first"), Some(31000));
        assert!(!state.services.contains_key(&key("zeroth")));
        assert_problem(&source, "0.yaml#1", "already allocated to default/first");
        assert_problem(&source, "b.yaml#1", "already allocated to default/first");

        // Once the holder is gone, the port goes to the first claimant.
        dir.remove("a.yaml");
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "zeroth"), Some(31000));
        assert!(!state.services.contains_key(&key("first")));
        assert!(!state.services.contains_key(&key("second")));
    }

    #[test]
    fn duplicate_object_across_files() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service("web", Some(30080)));
        dir.write(
            "b.yaml",
            &format!("{NODE}---\n{}", service("web", Some(30081))),
        );
        let mut source = dir.source();
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "web"), Some(30080));
        assert!(state.nodes.contains_key("node-a"));
        assert_problem(
            &source,
            "b.yaml#2",
            "duplicate object: Service default/web is already defined in a.yaml (document 1)",
        );
    }

    #[test]
    fn malformed_file_keeps_last_good_objects() {
        let dir = TempDir::new();
        dir.write(
            "app.yaml",
            &format!("{}---\n{SLICE}", service("web", Some(30080))),
        );
        dir.write("other.yaml", NODE);
        let mut source = dir.source();
        let state = scan(&mut source);
        assert_eq!(state.services.len(), 1);

        dir.write(
            "app.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: [web\n",
        );
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "web"), Some(30080));
        assert!(state.endpoint_slices.contains_key(&key("web-abc")));
        assert!(state.nodes.contains_key("node-a"));
        assert_problem(&source, "app.yaml#0", "malformed YAML: ");
        assert_problem(&source, "app.yaml#0", "line 4");
        assert_problem(
            &source,
            "app.yaml#0",
            "keeping the 2 object(s) it last provided",
        );
        assert_eq!(source.problems()[0].document, None);

        // Fixed: the new content replaces the kept objects.
        dir.write("app.yaml", &service("web2", Some(30090)));
        let state = scan(&mut source);
        assert!(!state.services.contains_key(&key("web")));
        assert!(state.endpoint_slices.is_empty());
        assert_eq!(node_port(&state, "web2"), Some(30090));
        assert!(source.problems().is_empty(), "{:?}", problems(&source));
    }

    #[test]
    fn malformed_new_file_provides_nothing() {
        let dir = TempDir::new();
        dir.write("bad.yml", "kind: Service\n  name: : x\n");
        dir.write("node.yml", NODE);
        let mut source = dir.source();
        let state = scan(&mut source);
        assert!(state.services.is_empty());
        assert!(state.nodes.contains_key("node-a"));
        assert_problem(&source, "bad.yml#0", "malformed YAML: ");
    }

    #[test]
    fn invalid_document_keeps_last_good_version() {
        let dir = TempDir::new();
        dir.write("svc.yaml", &service("web", Some(30080)));
        let mut source = dir.source();
        assert_eq!(node_port(&scan(&mut source), "web"), Some(30080));

        dir.write(
            "svc.yaml",
            &format!(
                "{}---\n{}",
                service("web", Some(40000)),
                service("new", Some(99))
            ),
        );
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "web"), Some(30080));
        assert!(!state.services.contains_key(&key("new")));
        assert_problem(
            &source,
            "svc.yaml#1",
            "nodePort 40000 is outside the range 30000-32767",
        );
        assert_problem(&source, "svc.yaml#1", "keeping its last good version");
        assert_problem(&source, "svc.yaml#2", "nodePort 99 is outside the range");

        // A nodePort collision also keeps the last good version.
        dir.write("other.yaml", &service("other", Some(30500)));
        dir.write("svc.yaml", &service("web", Some(30500)));
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "web"), Some(30080));
        assert_eq!(node_port(&state, "other"), Some(30500));
        assert_problem(
            &source,
            "svc.yaml#1",
            "already allocated to default/other (port http)",
        );
    }

    #[test]
    fn unknown_kind_and_bad_headers() {
        let dir = TempDir::new();
        dir.write(
            "mixed.yaml",
            &format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n---\n\
                 apiVersion: v2\nkind: Service\nmetadata: {{name: s}}\n---\n\
                 metadata: {{name: nokind}}\n---\n\
                 - just\n- a list\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {{name: typed}}\nspec:\n  ports:\n  - port: eighty\n---\n\
                 {NODE}"
            ),
        );
        let mut source = dir.source();
        let state = scan(&mut source);
        assert!(state.services.is_empty());
        assert!(state.nodes.contains_key("node-a"));
        assert_problem(&source, "mixed.yaml#1", "unknown kind Deployment");
        assert_problem(
            &source,
            "mixed.yaml#2",
            "apiVersion v2 is not supported for kind Service",
        );
        assert_problem(&source, "mixed.yaml#3", "missing apiVersion/kind");
        assert_problem(&source, "mixed.yaml#4", "found a list");
        assert_problem(
            &source,
            "mixed.yaml#5",
            "invalid Service default/typed: spec.ports[0].port: invalid type",
        );
        assert_problem(&source, "mixed.yaml#5", "at line 19 column 11");
        assert_eq!(source.problems().len(), 5, "{:#?}", problems(&source));
    }

    #[test]
    fn ipv6_slice_is_ignored_with_a_warning() {
        let dir = TempDir::new();
        let v6 = SLICE
            .replace("IPv4", "IPv6")
            .replace("10.1.1.5", "fd00::5")
            .replace("10.1.2.5", "fd00::6");
        dir.write("v6.yaml", &v6);
        let mut source = dir.source();
        let state = scan(&mut source);
        assert!(state.endpoint_slices.is_empty());
        assert_problem(
            &source,
            "v6.yaml#1",
            "addressType IPv6; only IPv4 is served",
        );
        assert_eq!(source.problems()[0].severity, Severity::Warning);

        dir.write(
            "v6.yaml",
            &SLICE.replace("    kubernetes.io/service-name: web\n", "    app: web\n"),
        );
        scan(&mut source);
        assert_problem(&source, "v6.yaml#1", "label kubernetes.io/service-name");
    }

    #[test]
    fn omitted_node_port_is_allocated_stable_and_freed() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service("alpha", None));
        let mut source = dir.source();
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "alpha"), Some(30000));

        // A newcomer sorting first gets the next free port; alpha keeps its own.
        dir.write("0.yaml", &service("zulu", None));
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "zulu"), Some(30001));
        assert_eq!(node_port(&state, "alpha"), Some(30000));

        // Unrelated edits do not move them either.
        dir.write("n.yaml", NODE);
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "zulu"), Some(30001));
        assert_eq!(node_port(&state, "alpha"), Some(30000));

        // alpha goes away: its port is free for the next service.
        dir.remove("a.yaml");
        let state = scan(&mut source);
        assert!(!state.services.contains_key(&key("alpha")));
        dir.write("c.yaml", &service("charlie", None));
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "charlie"), Some(30000));
        assert_eq!(node_port(&state, "zulu"), Some(30001));
    }

    #[test]
    fn scan_reports_changes_only() {
        let dir = TempDir::new();
        dir.write("svc.yaml", &service("web", Some(30080)));
        let mut source = dir.source();
        assert_eq!(node_port(&scan(&mut source), "web"), Some(30080));
        assert!(source.scan().expect("scan").is_none());
        assert!(source.scan().expect("scan").is_none());

        // Same size, written right after the last read: still seen at once.
        dir.write("svc.yaml", &service("web", Some(30081)));
        assert_eq!(node_port(&scan(&mut source), "web"), Some(30081));
        assert!(source.scan().expect("scan").is_none());

        // Rewriting identical content is not a change.
        dir.write("svc.yaml", &service("web", Some(30081)));
        assert!(source.scan().expect("scan").is_none());

        // Files that are not manifests are not looked at.
        dir.write("notes.txt", "hello");
        dir.write(".hidden.yaml", "not: [valid");
        assert!(source.scan().expect("scan").is_none());
    }

    #[test]
    fn a_file_emptied_for_a_rewrite_keeps_its_objects_briefly() {
        let dir = TempDir::new();
        dir.write("svc.yaml", &service("web", Some(30080)));
        let mut source = dir.source();
        scan(&mut source);

        // Caught between truncate and write: nothing changes yet.
        dir.write("svc.yaml", "");
        assert!(source.scan().expect("scan").is_none());
        dir.write("svc.yaml", &service("web", Some(30081)));
        assert_eq!(node_port(&scan(&mut source), "web"), Some(30081));

        // Empty for longer than the grace period: the objects go.
        dir.write("svc.yaml", "");
        assert!(source.scan().expect("scan").is_none());
        let file = fs::File::options()
            .write(true)
            .open(dir.0.join("svc.yaml"))
            .expect("open");
        file.set_modified(SystemTime::now() - EMPTY_GRACE * 2)
            .expect("set mtime");
        let state = scan(&mut source);
        assert!(state.services.is_empty());
        assert!(source.problems().is_empty());
    }

    #[test]
    fn settled_files_are_not_read_again() {
        let dir = TempDir::new();
        dir.write("svc.yaml", &service("web", Some(30080)));
        let mut source = dir.source();
        scan(&mut source);
        // Pretend the file was read long after it was written.
        for entry in source.files.values_mut() {
            entry.read_at += RACY_WINDOW;
        }
        assert!(source.scan().expect("scan").is_none());
        let before = source.files["svc.yaml"].read_at;
        assert!(source.scan().expect("scan").is_none());
        assert_eq!(
            source.files["svc.yaml"].read_at, before,
            "a settled file was read again"
        );
    }

    #[test]
    fn deleted_file_objects_disappear() {
        let dir = TempDir::new();
        dir.write(
            "web.yaml",
            &format!("{}---\n{SLICE}", service("web", Some(30080))),
        );
        dir.write("node.yaml", NODE);
        let mut source = dir.source();
        let state = scan(&mut source);
        assert_eq!(state.services.len(), 1);
        assert_eq!(state.endpoint_slices.len(), 1);

        dir.remove("web.yaml");
        let state = scan(&mut source);
        assert!(state.services.is_empty());
        assert!(state.endpoint_slices.is_empty());
        assert!(state.nodes.contains_key("node-a"));

        // A deleted bad file takes its kept objects and its problems along.
        dir.write("web.yaml", &service("web", Some(30080)));
        scan(&mut source);
        dir.write("web.yaml", "not: [yaml");
        assert_eq!(scan(&mut source).services.len(), 1);
        dir.remove("web.yaml");
        let state = scan(&mut source);
        assert!(state.services.is_empty());
        assert!(source.problems().is_empty());
    }

    #[test]
    fn unreadable_directory_is_an_error() {
        let dir = TempDir::new();
        let missing = dir.0.join("missing");
        let mut source = ManifestsSource::new(missing.clone(), RANGE);
        let err = source.scan().expect_err("missing directory");
        assert!(matches!(&err, SourceError::ManifestsDir { path, .. } if *path == missing));
        assert!(err.to_string().contains(&missing.display().to_string()));
    }

    /// Captures what the source logs.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Log {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("log lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Log {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
        }
    }

    #[test]
    fn problems_are_logged_once_with_file_and_reason() {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let dir = TempDir::new();
            dir.write("bad.yaml", &service("bad", Some(40000)));
            let mut source = dir.source();
            scan(&mut source);
            // Other files change; the bad one does not.
            dir.write("n.yaml", NODE);
            scan(&mut source);
            dir.write("n.yaml", &NODE.replace("node-a", "node-b"));
            scan(&mut source);
            assert!(source.scan().expect("scan").is_none());
            let text = log.text();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("invalid manifest"))
                .collect();
            assert_eq!(lines.len(), 1, "{text}");
            assert!(lines[0].contains("bad.yaml"), "{text}");
            assert!(
                lines[0].contains("nodePort 40000 is outside the range 30000-32767"),
                "{text}"
            );

            // A changed problem is reported again; a fixed one is resolved.
            dir.write("bad.yaml", &service("bad", Some(40001)));
            scan(&mut source);
            dir.write("bad.yaml", &service("bad", Some(30001)));
            scan(&mut source);
            let text = log.text();
            assert_eq!(
                text.lines()
                    .filter(|l| l.contains("invalid manifest"))
                    .count(),
                2,
                "{text}"
            );
            assert!(text.contains("nodePort 40001 is outside"), "{text}");
            assert!(text.contains("manifest problem resolved"), "{text}");
        });
    }

    /// A Service `name` with the given lines of its spec (indented by 2).
    fn service_spec(name: &str, spec: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}")
    }

    const LB_LOCAL: &str = "  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 30500
  ports:
    - {name: http, port: 80, nodePort: 30080}
";

    fn spec<'s>(
        state: &'s ClusterState,
        name: &str,
    ) -> &'s k8s_openapi::api::core::v1::ServiceSpec {
        state.services[&key(name)].spec.as_ref().expect("spec")
    }

    #[test]
    fn edit_to_cluster_policy_releases_the_health_check_node_port() {
        let dir = TempDir::new();
        dir.write("svc.yaml", &service_spec("web", LB_LOCAL));
        let mut source = dir.source();
        let state = scan(&mut source);
        assert_eq!(spec(&state, "web").health_check_node_port, Some(30500));

        // The policy changes; the healthCheckNodePort stays in the file.
        let cluster = LB_LOCAL.replace("Local", "Cluster");
        dir.write("svc.yaml", &service_spec("web", &cluster));
        let state = scan(&mut source);
        assert!(source.problems().is_empty(), "{:?}", problems(&source));
        let web = spec(&state, "web");
        assert_eq!(web.external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(web.health_check_node_port, None, "released");

        // Later scans keep the outcome: the unchanged document is not an
        // update of its own result.
        dir.write("n.yaml", NODE);
        let state = scan(&mut source);
        assert!(source.problems().is_empty(), "{:?}", problems(&source));
        assert_eq!(spec(&state, "web").health_check_node_port, None);

        // The port is free for another Service.
        dir.write("other.yaml", &service("other", Some(30500)));
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "other"), Some(30500));
        assert!(source.problems().is_empty(), "{:?}", problems(&source));

        // A create is checked as written: the same document for a new Service fails.
        dir.write(
            "new.yaml",
            &service_spec("fresh", &cluster.replace("30080", "30081")),
        );
        let state = scan(&mut source);
        assert!(!state.services.contains_key(&key("fresh")));
        assert_problem(
            &source,
            "new.yaml#1",
            "invalid Service default/fresh: spec.healthCheckNodePort: Invalid value: 30500: may only be set",
        );
    }

    #[test]
    fn edit_to_cluster_ip_releases_unchanged_node_ports() {
        let dir = TempDir::new();
        dir.write("web.yaml", &service("web", Some(30080)));
        let mut source = dir.source();
        assert_eq!(node_port(&scan(&mut source), "web"), Some(30080));

        // A changed nodePort is rejected as on a create: the old version serves on.
        let changed = service("web", Some(30081)).replace("NodePort", "ClusterIP");
        dir.write("web.yaml", &changed);
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "web"), Some(30080));
        assert_problem(
            &source,
            "web.yaml#1",
            "invalid Service default/web: spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'; keeping its last good version",
        );

        // Only the type changes: the nodePorts are wiped.
        let cluster_ip = service("web", Some(30080)).replace("NodePort", "ClusterIP");
        dir.write("web.yaml", &cluster_ip);
        let state = scan(&mut source);
        assert!(source.problems().is_empty(), "{:?}", problems(&source));
        assert_eq!(spec(&state, "web").type_.as_deref(), Some("ClusterIP"));
        assert_eq!(node_port(&state, "web"), None);
        dir.write("n.yaml", NODE);
        let state = scan(&mut source);
        assert!(source.problems().is_empty(), "{:?}", problems(&source));
        assert_eq!(node_port(&state, "web"), None);

        // The update is against the served ClusterIP version now: a new nodePort fails.
        dir.write("web.yaml", &changed);
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "web"), None);
        assert_problem(
            &source,
            "web.yaml#1",
            "may not be used when `type` is 'ClusterIP'",
        );

        // The released port is free for another Service.
        dir.write("web.yaml", &cluster_ip);
        dir.write("other.yaml", &service("other", Some(30080)));
        let state = scan(&mut source);
        assert!(source.problems().is_empty(), "{:?}", problems(&source));
        assert_eq!(node_port(&state, "other"), Some(30080));

        // Deleted and written again: a create, checked as written.
        dir.remove("web.yaml");
        scan(&mut source);
        dir.write(
            "web.yaml",
            &service("web", Some(30090)).replace("NodePort", "ClusterIP"),
        );
        let state = scan(&mut source);
        assert!(!state.services.contains_key(&key("web")));
        assert_problem(
            &source,
            "web.yaml#1",
            "may not be used when `type` is 'ClusterIP'",
        );
    }

    #[test]
    fn omitted_node_port_keeps_the_old_value_of_its_port_name_from_any_file() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service("web", Some(30500)));
        let mut source = dir.source();
        assert_eq!(node_port(&scan(&mut source), "web"), Some(30500));

        // The nodePort is dropped from the file: the Service keeps 30500
        // (a fresh allocation would take 30000).
        dir.write("a.yaml", &service("web", None));
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "web"), Some(30500));

        // Moved to another file in the same edit: still an update.
        dir.remove("a.yaml");
        dir.write(
            "b.yaml",
            &service("web", None).replace("port: 80", "port: 8080"),
        );
        let state = scan(&mut source);
        assert!(source.problems().is_empty(), "{:?}", problems(&source));
        assert_eq!(node_port(&state, "web"), Some(30500));

        // A renamed port is a new port: it gets a fresh one.
        dir.write(
            "b.yaml",
            &service("web", None).replace("name: http", "name: web"),
        );
        let state = scan(&mut source);
        assert_eq!(node_port(&state, "web"), Some(30000));
    }

    #[test]
    fn broken_file_keeps_the_update_it_last_provided() {
        let dir = TempDir::new();
        dir.write("svc.yaml", &service_spec("web", LB_LOCAL));
        let mut source = dir.source();
        scan(&mut source);
        dir.write(
            "svc.yaml",
            &service_spec("web", &LB_LOCAL.replace("Local", "Cluster")),
        );
        assert_eq!(spec(&scan(&mut source), "web").health_check_node_port, None);

        // The file breaks: its kept (updated) version serves on.
        dir.write("svc.yaml", "not: [yaml");
        let state = scan(&mut source);
        let web = spec(&state, "web");
        assert_eq!(web.external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(web.health_check_node_port, None);
        assert_problem(
            &source,
            "svc.yaml#0",
            "keeping the 1 object(s) it last provided",
        );

        // Fixed with the same content: the same outcome, no problem.
        dir.write(
            "svc.yaml",
            &service_spec("web", &LB_LOCAL.replace("Local", "Cluster")),
        );
        let state = scan(&mut source);
        assert!(source.problems().is_empty(), "{:?}", problems(&source));
        assert_eq!(spec(&state, "web").health_check_node_port, None);
    }

    /// The control-plane benchmark's manifests (as `xtask/src/bench/synthetic.rs`
    /// writes them): `n` Services, each with one EndpointSlice of
    /// `endpoints` endpoints.
    fn synthetic(n: usize, endpoints: usize, node_ports: usize) -> Vec<String> {
        use std::fmt::Write as _;
        (0..n)
            .map(|i| {
                let mut out = String::new();
                let np = i < node_ports;
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32);
                let _ = write!(
                    out,
                    "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: bench\nspec:\n  type: {}\n  clusterIP: {ip}\n  ports:\n    - name: http\n      protocol: TCP\n      port: 80\n      targetPort: 8080\n",
                    if np { "NodePort" } else { "ClusterIP" },
                );
                if np {
                    let _ = writeln!(out, "      nodePort: {}", 30000 + i);
                }
                let _ = write!(
                    out,
                    "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-0\n  namespace: bench\n  labels:\n    kubernetes.io/service-name: svc-{i}\naddressType: IPv4\nports:\n  - name: http\n    protocol: TCP\n    port: 8080\nendpoints:\n"
                );
                for j in 0..endpoints {
                    let addr = Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * endpoints + j) as u32,
                    );
                    let _ = write!(
                        out,
                        "  - addresses: [\"{addr}\"]\n    conditions: {{ ready: true, serving: true, terminating: false }}\n    nodeName: node{}\n",
                        1 + (i + j) % 2
                    );
                }
                out
            })
            .collect()
    }

    /// Cold scan and one edited file at 10k Services × 10 endpoints, in one
    /// file and in a file per Service. A timing harness, not a test: run
    /// with `cargo test --release -p nodeport-agent --lib -- --ignored
    /// --nocapture manifests_timing`.
    #[test]
    #[ignore = "timing harness"]
    fn manifests_timing() {
        use std::time::Instant;
        let n = 10_000;
        let docs = synthetic(n, 10, 20_000);
        let range = 30000..=40000;
        let all = docs.concat();
        let t = Instant::now();
        let parsed = decode::decode_files(&[all.as_bytes()], &range);
        assert!(matches!(&parsed[0], Parsed::Documents(d) if d.len() == 2 * n));
        eprintln!(
            "decoding {} MB: {:.0} ms",
            all.len() / 1_000_000,
            t.elapsed().as_secs_f64() * 1e3
        );
        for layout in ["one file", "a file per Service"] {
            let dir = TempDir::new();
            if layout == "one file" {
                dir.write("services.yaml", &docs.concat());
            } else {
                for (i, doc) in docs.iter().enumerate() {
                    dir.write(&format!("svc-{i:05}.yaml"), doc);
                }
            }
            // Written a while ago: trusted on their metadata.
            for entry in fs::read_dir(&dir.0).expect("list") {
                let file = fs::File::options()
                    .write(true)
                    .open(entry.expect("entry").path())
                    .expect("open");
                file.set_modified(SystemTime::now() - RACY_WINDOW * 2)
                    .expect("set mtime");
            }
            let mut source = ManifestsSource::new(dir.0.clone(), range.clone());
            let t = Instant::now();
            let changes = source.scan_changes().expect("scan").expect("changes");
            let cold = t.elapsed();
            assert_eq!(changes.services.len(), n);
            assert_eq!(changes.endpoint_slices.len(), n);
            assert!(source.problems().is_empty(), "{:?}", source.problems());
            let t = Instant::now();
            assert_eq!(source.state().services.len(), n);
            let state = t.elapsed();
            let t = Instant::now();
            assert!(source.scan_changes().expect("scan").is_none());
            let idle = t.elapsed();
            let edited = if layout == "one file" {
                dir.write(
                    "services.yaml",
                    &docs.concat().replace("10.128.0.7\"", "10.192.0.7\""),
                );
                "services.yaml".to_owned()
            } else {
                dir.write(
                    "svc-00000.yaml",
                    &docs[0].replace("10.128.0.7\"", "10.192.0.7\""),
                );
                "svc-00000.yaml".to_owned()
            };
            let t = Instant::now();
            let edit = source.scan_changes().expect("scan").expect("changes");
            let change = t.elapsed();
            assert_eq!(edit.endpoint_slices.len(), 1);
            assert!(edit.services.is_empty());
            eprintln!(
                "{layout}: cold scan {:.0} ms (+ {:.0} ms for a full copy of the state), idle scan {:.1} ms, edit of {edited} {:.1} ms",
                cold.as_secs_f64() * 1e3,
                state.as_secs_f64() * 1e3,
                idle.as_secs_f64() * 1e3,
                change.as_secs_f64() * 1e3
            );
        }
    }
}
