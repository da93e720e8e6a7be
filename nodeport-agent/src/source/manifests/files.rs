//! The manifest files of the directory: listed and stat'ed on every scan,
//! read and decoded again only when their metadata (size, times, inode)
//! says they may have changed, and then taken as changed only when their
//! bytes did.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{BuildHasher as _, RandomState};
use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use super::decode::{self, FileError, Parsed};
use crate::source::SourceError;

/// A file modified less than this long before it was read is read again on
/// the next scan even if its metadata looks unchanged: file timestamps are
/// coarse, so a rewrite of the same size right after our read could keep the
/// same modification time.
pub const RACY_WINDOW: Duration = Duration::from_secs(3);

/// A file that was just emptied is most likely being rewritten in place
/// (truncated, then written): its objects stay until it has been empty this
/// long, so that a scan between the two steps does not withdraw them.
pub const EMPTY_GRACE: Duration = Duration::from_millis(500);

/// File metadata that changes whenever the file is rewritten or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    pub len: u64,
    pub modified: Option<SystemTime>,
    pub inode: u64,
    pub device: u64,
    pub ctime: (i64, i64),
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
#[derive(Debug)]
pub struct ReadError(io::Error);

impl PartialEq for ReadError {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

/// What is kept of a file's bytes to tell whether they changed: their
/// length and two 64-bit hashes under keys of their own (random per
/// process), not the bytes (at 10k Services the files are megabytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    len: usize,
    hashes: [u64; 2],
}

impl Fingerprint {
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        static KEYS: LazyLock<[RandomState; 2]> =
            LazyLock::new(|| [RandomState::new(), RandomState::new()]);
        Self {
            len: bytes.len(),
            hashes: KEYS.each_ref().map(|keys| keys.hash_one(bytes)),
        }
    }
}

/// The fingerprint of a file's bytes, or why they could not be read.
pub type Content = Result<Fingerprint, ReadError>;

/// One manifest file as last read.
#[derive(Debug)]
pub struct FileEntry {
    pub path: PathBuf,
    pub signature: Option<Signature>,
    pub read_at: SystemTime,
    pub content: Content,
    pub parsed: Parsed,
}

impl FileEntry {
    /// Whether the file can be trusted to be unchanged given its metadata.
    #[must_use]
    pub fn unchanged(&self, signature: Option<&Signature>) -> bool {
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

/// A file whose content changed (or that appeared or went away).
#[derive(Debug)]
pub struct FileChange {
    pub name: String,
    /// What it held before (`None`: it is new).
    pub old: Option<Parsed>,
}

/// A file whose content changed, to be decoded.
struct Fresh {
    name: String,
    path: PathBuf,
    signature: Option<Signature>,
    read_at: SystemTime,
    content: Content,
    /// `None` when the file could not be read.
    bytes: Option<Vec<u8>>,
}

/// Brings `files` up to date with the directory: re-reads the files whose
/// metadata changed, decodes those whose content changed, drops the ones
/// that are gone. `provides(name)` says whether a file provides objects (an
/// emptied one keeps them for a moment). Returns the files that changed.
pub fn refresh(
    files: &mut BTreeMap<String, FileEntry>,
    dir: &Path,
    range: &RangeInclusive<u16>,
    provides: impl Fn(&str) -> bool,
) -> Result<Vec<FileChange>, SourceError> {
    let listing = list_manifests(dir)?;
    let mut previous = std::mem::take(files);
    let mut changes = Vec::new();
    // Files whose content changed, decoded together below.
    let mut fresh: Vec<Fresh> = Vec::new();
    for (name, path, metadata) in listing {
        let old = previous.remove(&name);
        let signature = metadata.as_ref().map(Signature::of);
        let unchanged = old
            .as_ref()
            .is_some_and(|old| old.path == path && old.unchanged(signature.as_ref()));
        if unchanged && let Some(old) = old {
            files.insert(name, old);
            continue;
        }
        let read_at = SystemTime::now();
        // The bytes (to decode, then dropped) and what is kept of them.
        let (content, bytes): (Content, Option<Vec<u8>>) = match fs::read(&path) {
            Ok(bytes) => (Ok(Fingerprint::of(&bytes)), Some(bytes)),
            Err(e) => (Err(ReadError(e)), None),
        };
        let just_emptied = bytes.as_ref().is_some_and(Vec::is_empty)
            && old.is_some()
            && provides(&name)
            && signature
                .and_then(|s| s.modified)
                .and_then(|modified| read_at.duration_since(modified).ok())
                .is_none_or(|age| age < EMPTY_GRACE);
        match old {
            // Keep the old entry (and its old signature, so that the file is
            // looked at again on the next scan).
            Some(old) if just_emptied => {
                files.insert(name, old);
            }
            Some(mut old) if old.content == content => {
                old.path = path;
                old.signature = signature;
                old.read_at = read_at;
                files.insert(name, old);
            }
            old => {
                changes.push(FileChange {
                    name: name.clone(),
                    old: old.map(|o| o.parsed),
                });
                fresh.push(Fresh {
                    name,
                    path,
                    signature,
                    read_at,
                    content,
                    bytes,
                });
            }
        }
    }
    // Files that disappeared take their objects with them.
    for (name, old) in previous {
        changes.push(FileChange {
            name,
            old: Some(old.parsed),
        });
    }

    let readable: Vec<&[u8]> = fresh.iter().filter_map(|f| f.bytes.as_deref()).collect();
    let mut decoded = decode::decode_files(&readable, range).into_iter();
    for Fresh {
        name,
        path,
        signature,
        read_at,
        content,
        bytes,
    } in fresh
    {
        // The bytes go once decoded: only their fingerprint is kept.
        drop(bytes);
        let parsed = match &content {
            Ok(_) => decoded.next().expect("one decoded file per readable file"),
            Err(ReadError(e)) => {
                Parsed::Broken(FileError::Read(io::Error::new(e.kind(), e.to_string())))
            }
        };
        files.insert(
            name,
            FileEntry {
                path,
                signature,
                read_at,
                content,
                parsed,
            },
        );
    }
    changes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(changes)
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

#[cfg(test)]
mod tests {
    use super::*;

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
            content: Ok(Fingerprint::of(&[])),
            parsed: Parsed::Documents(Vec::new()),
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
}
