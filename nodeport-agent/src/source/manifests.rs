//! Manifests source: Services, `EndpointSlice`s and Nodes read from the YAML
//! files of one directory, standing in for the API server on a machine
//! without a cluster.
//!
//! Every `*.yaml` / `*.yml` file of the directory (not recursive; hidden
//! files are skipped) is a stream of `---` separated documents of kind
//! `Service` (`v1`), `EndpointSlice` (`discovery.k8s.io/v1`) or `Node` (`v1`).
//! Files are read in name order. Each document is defaulted and validated as
//! the API server would ([`crate::validate`]); the whole set then goes
//! through the nodePort allocator, which rejects colliding nodePorts and
//! fills in omitted ones.
//!
//! A Service document that replaces a Service of the last state (the same
//! namespace and name, from whichever file) is an *update*: before it is
//! validated it goes through the API server's update rules
//! ([`crate::update_rules`]) against the served version, so that e.g. an
//! edit to `type: ClusterIP` that leaves the old nodePorts in the file
//! releases them instead of being rejected. Any other document is a create.
//! A document unchanged since its version was accepted is not an update
//! again: it keeps the outcome it had.
//!
//! A bad document is reported (file, document, reason) and skipped; the rest
//! keeps serving. A file that turns bad keeps its last good objects: a file
//! that no longer parses keeps everything it last provided, and a document
//! that no longer validates keeps the last good version of its object
//! (matched by kind, namespace and name). A deleted file's objects go away.
//!
//! [`ManifestsSource::scan`] is cheap when nothing changed: it compares each
//! file's size, times and inode with the previous scan and only reads files
//! that changed (or were modified so recently that a same-tick rewrite could
//! hide behind an unchanged timestamp).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use tracing::{error, info, warn};

use super::SourceError;
use crate::store::{ClusterState, ObjectKey};
use crate::update_rules;
use crate::validate::{self, AddressType, Candidate, DEFAULT_NAMESPACE, NodePortAllocator};

/// A file modified less than this long before it was read is read again on
/// the next scan even if its metadata looks unchanged: file timestamps are
/// coarse, so a rewrite of the same size right after our read could keep the
/// same modification time.
const RACY_WINDOW: Duration = Duration::from_secs(3);

/// A file that was just emptied is most likely being rewritten in place
/// (truncated, then written): its objects stay until it has been empty this
/// long, so that a scan between the two steps does not withdraw them.
const EMPTY_GRACE: Duration = Duration::from_millis(500);

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

/// The kinds a manifest may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    const ALL: [Self; 3] = [Self::Service, Self::EndpointSlice, Self::Node];

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        }
    }

    const fn api_version(self) -> &'static str {
        match self {
            Self::Service | Self::Node => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    const fn namespaced(self) -> bool {
        !matches!(self, Self::Node)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Kind, namespace and name: what identifies an object across documents.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct TypedKey {
    kind: Kind,
    key: ObjectKey,
}

impl fmt::Display for TypedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
}

/// What one document of a file amounts to.
#[derive(Debug)]
enum Outcome {
    /// A valid object (not a Service).
    Object { key: TypedKey, object: Object },
    /// A defaulted Service, not validated yet: whether it is valid depends
    /// on the version it replaces, if any (the update rules), which only the
    /// whole directory tells.
    Service {
        key: TypedKey,
        service: Box<Service>,
    },
    /// A valid object that is not served.
    Ignored { reason: String },
    /// A rejected document; `key` when it names an object.
    Invalid {
        key: Option<TypedKey>,
        reason: String,
    },
}

#[derive(Debug)]
struct Document {
    /// From 1.
    index: usize,
    outcome: Outcome,
}

#[derive(Debug)]
enum Parsed {
    /// The file could not be read, or is not YAML: nothing in it can be trusted.
    Broken(String),
    Documents(Vec<Document>),
}

/// File metadata that changes whenever the file is rewritten or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Signature {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    device: u64,
    ctime: (i64, i64),
}

impl Signature {
    fn of(metadata: &fs::Metadata) -> Self {
        Self {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode: metadata.ino(),
            device: metadata.dev(),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// Why a file could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ReadError {
    kind: io::ErrorKind,
    message: String,
}

/// The bytes of a file, or why they could not be read.
type Content = Result<Vec<u8>, ReadError>;

/// An object a file provided to the last state, kept for when the file turns bad.
#[derive(Clone, Debug)]
struct Kept {
    document: usize,
    object: Object,
    /// For a Service: the document as written, before the update rules.
    written: Option<Box<Service>>,
}

/// A Service of the last state, in its three forms.
#[derive(Clone, Debug)]
struct AcceptedService {
    /// As its document wrote it (defaulted).
    written: Service,
    /// As it was validated: after the update rules, if it was an update.
    validated: Service,
    /// As it is served: with the nodePorts the allocator filled in.
    served: Service,
}

#[derive(Debug)]
struct FileEntry {
    path: PathBuf,
    signature: Option<Signature>,
    read_at: SystemTime,
    content: Content,
    parsed: Parsed,
    last_good: BTreeMap<TypedKey, Kept>,
}

impl FileEntry {
    /// Whether the file can be trusted to be unchanged given its metadata.
    fn unchanged(&self, signature: Option<&Signature>) -> bool {
        let (Some(old), Some(new)) = (self.signature.as_ref(), signature) else {
            return false;
        };
        let settled = old
            .modified
            .and_then(|modified| self.read_at.duration_since(modified).ok())
            .is_some_and(|age| age >= RACY_WINDOW);
        old == new && settled
    }
}

/// One object offered by one file, with the versions that may be served.
struct Entry {
    key: TypedKey,
    file: String,
    versions: Vec<Version>,
}

struct Version {
    /// The object as validated (for a Service, after the update rules).
    object: Object,
    /// For a Service: the document as written, before the update rules.
    written: Option<Box<Service>>,
    document: usize,
    /// The last good version rather than the file's current content.
    kept: bool,
}

/// Services, `EndpointSlice`s and Nodes from the YAML files of a directory.
#[derive(Debug)]
pub struct ManifestsSource {
    dir: PathBuf,
    node_port_range: RangeInclusive<u16>,
    files: BTreeMap<String, FileEntry>,
    scanned: bool,
    allocator: NodePortAllocator,
    /// Which file provided each object of the last state.
    providers: BTreeMap<TypedKey, String>,
    /// The Services of the last state: what an edit of one is an update of.
    services: BTreeMap<ObjectKey, AcceptedService>,
    problems: Vec<Problem>,
    reported: BTreeSet<Problem>,
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
            providers: BTreeMap::new(),
            services: BTreeMap::new(),
            problems: Vec::new(),
            reported: BTreeSet::new(),
        }
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

    /// Reads the directory. Returns the complete new state when anything
    /// changed since the last scan (always on the first), `None` otherwise.
    /// Fails only when the directory itself cannot be read; bad files and
    /// documents are reported through [`Self::problems`] and the log.
    pub fn scan(&mut self) -> Result<Option<ClusterState>, SourceError> {
        let listing = list_manifests(&self.dir)?;
        let mut previous = std::mem::take(&mut self.files);
        let mut changed = !self.scanned;
        for (name, path, metadata) in listing {
            let old = previous.remove(&name);
            let (entry, entry_changed) = self.refresh(path, metadata.as_ref(), old);
            changed |= entry_changed;
            self.files.insert(name, entry);
        }
        // Files that disappeared take their objects with them.
        changed |= !previous.is_empty();
        if !changed {
            return Ok(None);
        }
        self.scanned = true;
        Ok(Some(self.rebuild()))
    }

    /// Brings one file's entry up to date; says whether its content changed.
    fn refresh(
        &self,
        path: PathBuf,
        metadata: Option<&fs::Metadata>,
        old: Option<FileEntry>,
    ) -> (FileEntry, bool) {
        let signature = metadata.map(Signature::of);
        let unchanged = old
            .as_ref()
            .is_some_and(|old| old.path == path && old.unchanged(signature.as_ref()));
        if unchanged && let Some(old) = old {
            return (old, false);
        }
        let read_at = SystemTime::now();
        let content: Content = fs::read(&path).map_err(|e| ReadError {
            kind: e.kind(),
            message: e.to_string(),
        });
        let just_emptied = matches!(&content, Ok(bytes) if bytes.is_empty())
            && old.as_ref().is_some_and(|old| !old.last_good.is_empty())
            && signature
                .and_then(|s| s.modified)
                .and_then(|modified| read_at.duration_since(modified).ok())
                .is_none_or(|age| age < EMPTY_GRACE);
        if just_emptied && let Some(old) = old {
            // Keep the old entry (and its old signature, so that the file is
            // looked at again on the next scan).
            return (old, false);
        }
        let last_good = match old {
            Some(mut old) if old.content == content => {
                old.path = path;
                old.signature = signature;
                old.read_at = read_at;
                return (old, false);
            }
            Some(old) => old.last_good,
            None => BTreeMap::new(),
        };
        let parsed = match &content {
            Ok(bytes) => parse_file(bytes, &self.node_port_range),
            Err(e) => Parsed::Broken(format!("cannot read the file: {}", e.message)),
        };
        let entry = FileEntry {
            path,
            signature,
            read_at,
            content,
            parsed,
            last_good,
        };
        (entry, true)
    }

    /// Computes the state from every file's documents and the last good
    /// objects, checks the set as a whole and reports what is wrong.
    fn rebuild(&mut self) -> ClusterState {
        let mut problems = Vec::new();
        let entries = self.collect_entries(&mut problems);
        let winners = self.resolve_duplicates(&entries, &mut problems);

        let mut state = ClusterState::default();
        let mut last_good: BTreeMap<String, BTreeMap<TypedKey, Kept>> = BTreeMap::new();
        let mut providers = BTreeMap::new();
        let mut accepted_services = BTreeMap::new();
        let mut accept = |entry: &Entry, version: usize| {
            let chosen = &entry.versions[version];
            last_good.entry(entry.file.clone()).or_default().insert(
                entry.key.clone(),
                Kept {
                    document: chosen.document,
                    object: chosen.object.clone(),
                    written: chosen.written.clone(),
                },
            );
            providers.insert(entry.key.clone(), entry.file.clone());
        };

        // Services go through the nodePort allocator together.
        let mut services = Vec::new();
        let mut candidates = Vec::new();
        for entry in winners.iter().map(|&i| &entries[i]) {
            match &entry.versions[0].object {
                Object::Service(_) => {
                    candidates.push(Candidate {
                        key: entry.key.key.clone(),
                        versions: entry.services(),
                    });
                    services.push(entry);
                }
                Object::EndpointSlice(slice) => {
                    state
                        .endpoint_slices
                        .insert(entry.key.key.clone(), slice.as_ref().clone());
                    accept(entry, 0);
                }
                Object::Node(node) => {
                    state
                        .nodes
                        .insert(entry.key.key.name.clone(), node.as_ref().clone());
                    accept(entry, 0);
                }
            }
        }
        let assignments = self.allocator.assign(&candidates);
        for (entry, assignment) in services.into_iter().zip(assignments) {
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
            if let Some((version, service)) = assignment.accepted {
                if let Some(accepted) = entry.versions[version].accepted_service(&service) {
                    accepted_services.insert(entry.key.key.clone(), accepted);
                }
                state.services.insert(entry.key.key.clone(), service);
                accept(entry, version);
            }
        }

        for (name, file) in &mut self.files {
            file.last_good = last_good.remove(name.as_str()).unwrap_or_default();
        }
        self.providers = providers;
        self.services = accepted_services;
        self.report(problems);
        info!(
            dir = %self.dir.display(),
            files = self.files.len(),
            services = state.services.len(),
            endpoint_slices = state.endpoint_slices.len(),
            nodes = state.nodes.len(),
            problems = self.problems.len(),
            "manifests loaded"
        );
        state
    }

    /// Every object every file offers, in file and document order, with the
    /// last good version behind a current one that may be refused.
    fn collect_entries(&self, problems: &mut Vec<Problem>) -> Vec<Entry> {
        let mut entries = Vec::new();
        for (name, file) in &self.files {
            match &file.parsed {
                Parsed::Broken(reason) => {
                    let reason = if file.last_good.is_empty() {
                        reason.clone()
                    } else {
                        format!(
                            "{reason}; keeping the {} object(s) it last provided",
                            file.last_good.len()
                        )
                    };
                    problems.push(self.problem(name, None, Severity::Error, reason));
                    for (key, kept) in &file.last_good {
                        entries.push(Entry {
                            key: key.clone(),
                            file: name.clone(),
                            versions: vec![Version::kept(kept)],
                        });
                    }
                }
                Parsed::Documents(documents) => {
                    for document in documents {
                        entries.extend(self.document_entry(name, file, document, problems));
                    }
                }
            }
        }
        entries
    }

    /// The entry one document of `file` offers (with the last good version
    /// behind it), if any; reports what is wrong with it.
    fn document_entry(
        &self,
        name: &str,
        file: &FileEntry,
        document: &Document,
        problems: &mut Vec<Problem>,
    ) -> Option<Entry> {
        let (key, version) = match &document.outcome {
            Outcome::Object { key, object } => (
                key,
                Version {
                    object: object.clone(),
                    written: None,
                    document: document.index,
                    kept: false,
                },
            ),
            Outcome::Service { key, service } => match self.prepare_service(key, service) {
                Ok(validated) => (
                    key,
                    Version {
                        object: Object::Service(Box::new(validated)),
                        written: Some(service.clone()),
                        document: document.index,
                        kept: false,
                    },
                ),
                Err(reason) => {
                    return self.invalid_document(
                        name,
                        file,
                        document,
                        Some(key),
                        reason,
                        problems,
                    );
                }
            },
            Outcome::Ignored { reason } => {
                problems.push(self.problem(
                    name,
                    Some(document.index),
                    Severity::Warning,
                    reason.clone(),
                ));
                return None;
            }
            Outcome::Invalid { key, reason } => {
                return self.invalid_document(
                    name,
                    file,
                    document,
                    key.as_ref(),
                    reason.clone(),
                    problems,
                );
            }
        };
        let mut versions = vec![version];
        if let Some(kept) = file.last_good.get(key)
            && kept.object != versions[0].object
        {
            versions.push(Version::kept(kept));
        }
        Some(Entry {
            key: key.clone(),
            file: name.to_owned(),
            versions,
        })
    }

    /// Reports a rejected document; its object's last good version, if the
    /// file has one, is the entry that stands in for it.
    fn invalid_document(
        &self,
        name: &str,
        file: &FileEntry,
        document: &Document,
        key: Option<&TypedKey>,
        reason: String,
        problems: &mut Vec<Problem>,
    ) -> Option<Entry> {
        let kept = key.and_then(|k| Some((k, file.last_good.get(k)?)));
        let (entry, reason) = match kept {
            Some((key, kept)) => (
                Some(Entry {
                    key: key.clone(),
                    file: name.to_owned(),
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
    fn prepare_service(&self, key: &TypedKey, written: &Service) -> Result<Service, String> {
        let mut service = written.clone();
        if let Some(previous) = self.services.get(&key.key) {
            if previous.written == *written {
                return Ok(previous.validated.clone());
            }
            update_rules::prepare_update(&mut service, &previous.served);
        }
        validate::validate_service(&service, &self.node_port_range)
            .map_err(|e| format!("invalid {key}: {e}"))?;
        Ok(service)
    }

    /// Picks one entry per object: the file that provided it last time keeps
    /// it, otherwise the first. Returns the indices of the chosen entries, in
    /// order, and reports the others.
    fn resolve_duplicates(&self, entries: &[Entry], problems: &mut Vec<Problem>) -> Vec<usize> {
        let mut chosen: BTreeMap<&TypedKey, usize> = BTreeMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let provider = self.providers.get(&entry.key);
            chosen
                .entry(&entry.key)
                .and_modify(|current| {
                    let current_is_provider = provider == Some(&entries[*current].file);
                    if !current_is_provider && provider == Some(&entry.file) {
                        *current = index;
                    }
                })
                .or_insert(index);
        }
        let mut winners = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let winner = chosen[&entry.key];
            if winner == index {
                winners.push(index);
                continue;
            }
            let holder = &entries[winner];
            let reason = format!(
                "duplicate object: {} is already defined in {} (document {})",
                entry.key, holder.file, holder.versions[0].document
            );
            problems.push(self.problem(
                &entry.file,
                Some(entry.versions[0].document),
                Severity::Error,
                reason,
            ));
        }
        winners
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

    /// Logs the problems that are new since the last report, and those that went away.
    fn report(&mut self, mut problems: Vec<Problem>) {
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

impl Entry {
    /// The Service versions of a Service entry.
    fn services(&self) -> Vec<Service> {
        self.versions
            .iter()
            .filter_map(|v| match &v.object {
                Object::Service(service) => Some(service.as_ref().clone()),
                _ => None,
            })
            .collect()
    }
}

impl Version {
    /// This version of a Service, accepted and served as `served`.
    fn accepted_service(&self, served: &Service) -> Option<AcceptedService> {
        let (Object::Service(validated), Some(written)) = (&self.object, &self.written) else {
            return None;
        };
        Some(AcceptedService {
            written: written.as_ref().clone(),
            validated: validated.as_ref().clone(),
            served: served.clone(),
        })
    }

    fn kept(kept: &Kept) -> Self {
        Self {
            object: kept.object.clone(),
            written: kept.written.clone(),
            document: kept.document,
            kept: true,
        }
    }
}

/// The manifest files of `dir`, sorted by name, with their metadata
/// (following symlinks; `None` when it cannot be read).
fn list_manifests(dir: &Path) -> Result<Vec<(String, PathBuf, Option<fs::Metadata>)>, SourceError> {
    let dir_error = |source| SourceError::ManifestsDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(dir_error)? {
        let entry = entry.map_err(dir_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let extension = Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if name.starts_with('.') || !matches!(extension.as_deref(), Some("yaml" | "yml")) {
            continue;
        }
        let path = entry.path();
        let metadata = match fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => Some(metadata),
            // Directories and the like are not manifests.
            Ok(_) => continue,
            // Deleted since listed, or a dangling symlink.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => None,
        };
        files.push((name, path, metadata));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Parses one file into its documents. A file that is not valid YAML as a
/// whole is [`Parsed::Broken`].
fn parse_file(bytes: &[u8], node_port_range: &RangeInclusive<u16>) -> Parsed {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return Parsed::Broken(format!("malformed YAML: the file is not valid UTF-8: {e}"));
        }
    };
    // First pass: is every document well-formed YAML? (The document iterator
    // repeats its error forever, so stop at the first.)
    let mut values = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            Ok(value) => values.push(value),
            Err(e) if e.location().is_some() => {
                return Parsed::Broken(format!("malformed YAML: {e}"));
            }
            Err(e) => return Parsed::Broken(format!("malformed YAML in document {}: {e}", i + 1)),
        }
    }
    // Second pass: typed objects, deserialized from the text itself so that
    // errors carry the field path and the line in the file.
    let documents = serde_yaml::Deserializer::from_str(text)
        .zip(values)
        .enumerate()
        .filter_map(|(i, (document, value))| {
            let outcome = parse_document(document, &value, node_port_range)?;
            Some(Document {
                index: i + 1,
                outcome,
            })
        })
        .collect();
    Parsed::Documents(documents)
}

/// One document; `None` for an empty one.
fn parse_document(
    document: serde_yaml::Deserializer<'_>,
    value: &Value,
    node_port_range: &RangeInclusive<u16>,
) -> Option<Outcome> {
    let invalid = |key: Option<TypedKey>, reason: String| Some(Outcome::Invalid { key, reason });
    let map = match value {
        Value::Null => return None,
        Value::Mapping(map) => map,
        other => {
            return invalid(
                None,
                format!(
                    "expected a Kubernetes object (a mapping), found {}",
                    describe(other)
                ),
            );
        }
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str);
    let kind = map.get("kind").and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return invalid(None, "missing apiVersion/kind".to_owned());
    };
    let Some(kind) = Kind::from_name(kind) else {
        return invalid(
            None,
            format!("unknown kind {kind} (supported: Service, EndpointSlice, Node)"),
        );
    };
    if api_version != kind.api_version() {
        return invalid(
            None,
            format!(
                "apiVersion {api_version} is not supported for kind {kind} (expected {})",
                kind.api_version()
            ),
        );
    }
    let key = key_of(kind, map);
    let described = key
        .as_ref()
        .map_or_else(|| kind.to_string(), ToString::to_string);
    let mut address_type = AddressType::Ipv4;
    let parsed: Result<Object, String> = match kind {
        Kind::Service => {
            let mut service = match Service::deserialize(document) {
                Ok(service) => service,
                Err(e) => return invalid(key, format!("invalid {described}: {e}")),
            };
            validate::normalize_service(&mut service);
            // Validated with the whole directory at hand (an update is
            // checked against the version it replaces); a document without
            // a name cannot replace anything and is invalid anyway.
            if let Some(key) = key {
                return Some(Outcome::Service {
                    key,
                    service: Box::new(service),
                });
            }
            let reason = validate::validate_service(&service, node_port_range)
                .err()
                .map_or_else(
                    || "metadata.name: Required value: name is required".to_owned(),
                    |e| e.to_string(),
                );
            return invalid(None, format!("invalid {described}: {reason}"));
        }
        Kind::EndpointSlice => EndpointSlice::deserialize(document)
            .map_err(|e| e.to_string())
            .and_then(|mut slice| {
                validate::normalize_endpoint_slice(&mut slice);
                address_type =
                    validate::validate_endpoint_slice(&slice).map_err(|e| e.to_string())?;
                Ok(Object::EndpointSlice(Box::new(slice)))
            }),
        Kind::Node => Node::deserialize(document)
            .map_err(|e| e.to_string())
            .and_then(|mut node| {
                validate::normalize_node(&mut node);
                validate::validate_node(&node).map_err(|e| e.to_string())?;
                Ok(Object::Node(Box::new(node)))
            }),
    };
    let object = match parsed {
        Ok(object) => object,
        Err(reason) => return invalid(key, format!("invalid {described}: {reason}")),
    };
    if address_type != AddressType::Ipv4 {
        return Some(Outcome::Ignored {
            reason: format!(
                "{described} has addressType {}; only IPv4 is served, ignoring it",
                address_type.as_str()
            ),
        });
    }
    let key = key_of_object(kind, &object)?;
    Some(Outcome::Object { key, object })
}

/// The key a document names, read before it is known to be valid.
fn key_of(kind: Kind, map: &Mapping) -> Option<TypedKey> {
    let metadata = map.get("metadata")?;
    let name = metadata.get("name")?.as_str()?.to_owned();
    let namespace = if kind.namespaced() {
        metadata
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned()
    } else {
        String::new()
    };
    Some(TypedKey {
        kind,
        key: ObjectKey { namespace, name },
    })
}

/// The key of a validated (hence named) object.
fn key_of_object(kind: Kind, object: &Object) -> Option<TypedKey> {
    let metadata = match object {
        Object::Service(service) => &service.metadata,
        Object::EndpointSlice(slice) => &slice.metadata,
        Object::Node(node) => &node.metadata,
    };
    Some(TypedKey {
        kind,
        key: ObjectKey {
            namespace: metadata.namespace.clone().unwrap_or_default(),
            name: metadata.name.clone()?,
        },
    })
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

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
            namespace: "default".to_owned(),
            name: name.to_owned(),
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
    fn recently_modified_files_are_not_trusted_on_metadata_alone() {
        let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let signature = Signature {
            len: 10,
            modified: Some(modified),
            inode: 1,
            device: 1,
            ctime: (1_000_000, 0),
        };
        let mut entry = FileEntry {
            path: PathBuf::from("x.yaml"),
            signature: Some(signature),
            read_at: modified + Duration::from_millis(1),
            content: Ok(Vec::new()),
            parsed: Parsed::Documents(Vec::new()),
            last_good: BTreeMap::new(),
        };
        // Read in the same timestamp tick as the write: could hide a rewrite.
        assert!(!entry.unchanged(Some(&signature)));
        entry.read_at = modified + RACY_WINDOW;
        assert!(entry.unchanged(Some(&signature)));
        let grown = Signature {
            len: 11,
            ..signature
        };
        assert!(!entry.unchanged(Some(&grown)));
        assert!(!entry.unchanged(None));
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
}
